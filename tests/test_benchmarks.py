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


def test_the_benchmarks_read_the_dubai_masks_by_their_label_colours(shared_data):
    """Once the default model's display colours differed from the masks', bench_gpu_model's held-out IoU read every
    pixel as unlabelled (NaN, without an error) and bench_default_model found nothing to score (review, h76)."""
    from geoseg.models import get_segmenter
    from geoseg.models.labels import read_labels

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from bench_default_model import held_out as tiles, label_set
        from bench_gpu_model import held_out
    finally:
        sys.path.remove(str(BENCHMARKS))
    _, truth = next(held_out(shared_data / "dubai_aerial", ["Tile 2"]))
    assert (truth != 255).mean() > 0.5
    images, labels = tiles(shared_data / "dubai_aerial", ["Tile 2"])
    names, colours = label_set(get_segmenter("landcover-unet").card)
    read = read_labels(labels[0], fmt="color", classes=[{"name": n, "color": c} for n, c in zip(names, colours)],
                       image=images[0], shape=truth.shape)
    assert (read == truth).all()


@pytest.mark.slow
def test_the_input_copy_benchmark_runs_on_a_tiny_raster(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from bench_pipeline import cheap_model
    finally:
        sys.path.remove(str(BENCHMARKS))
    model = cheap_model(tmp_path)
    out = _bench("bench_input_copy.py", "--size", 256, "--rounds", 1, "--model", model, cwd=tmp_path)
    assert out.count("outputs byte-identical across every run: yes") == 2 and "new/old" in out, out
