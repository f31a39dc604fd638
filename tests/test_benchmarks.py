"""The benchmarks are run by hand, rarely: each runs here on tiny inputs so that it still runs when someone needs it.

`bench_pipeline.py` died on `geoseg.models` once `import geoseg` became lazy, and nobody saw it for a day.
"""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _bench(name: str, *args, cwd) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_the_pipeline_benchmark_runs_on_a_tiny_raster(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from bench_pipeline import cheap_model
    finally:
        sys.path.remove(str(BENCHMARKS))
    model = cheap_model(tmp_path)
    out = _bench("bench_pipeline.py", "--size", 384, "--chunk", 64, "--samples", 2, "--memory-sizes", 256,
                 "--model", model, "--model-calls", "1", cwd=tmp_path)
    assert "ratio pipeline (1 call(s)) / model only" in out and "256x256" in out, out


def test_the_vectorisation_benchmark_runs_on_a_tiny_mask(tmp_path):
    out = _bench("bench_vectorize.py", "--size", 256, "--blocks", 128, "--min-area", 0, cwd=tmp_path)
    assert out.count("clean") >= 1 and out.count("noisy") >= 1, out
