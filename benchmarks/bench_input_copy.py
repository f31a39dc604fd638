"""Model input without copies: peak RSS, CPU and wall of the old and new ways of feeding a Keras model.

Before, each chunk was normalised into three full-size float32 arrays (astype, x * scale, + offset) and the
NumPy batch was handed to TensorFlow, which copied it (twice where, as NumPy's large arrays, it did not start
at a multiple of 64 bytes). Now the chunk is normalised in place in one aligned buffer, which TensorFlow
shares through DLPack (`ModelCard.normalize`, `segmenter._model_input`). The outputs must be byte-identical.

    python benchmarks/bench_input_copy.py                       # 4096² raster, default model, 2 rounds
    python benchmarks/bench_input_copy.py --raster my.tif --rounds 3 --only model

Each measurement runs in a fresh process (peak RSS is its own); "old" and "new" alternate, and the table gives
medians and new/old ratios: on a shared machine compare the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _old_ways() -> None:
    """Put back the way before: plain normalisation expressions, NumPy batches handed to TensorFlow."""
    import numpy as np

    from geoseg.models import card, segmenter

    def normalize(self, block, normalization=None):
        x = block.astype(np.float32, copy=False)
        norm = normalization or self.normalization
        if norm["method"] == "scale":
            return x * np.asarray(norm.get("scale", 1.0), np.float32) + np.asarray(norm.get("offset", 0.0), np.float32)
        if norm["method"] == "meanstd":
            return (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
        if norm["method"] == "stretch":
            low, high = np.asarray(norm["low"], np.float32), np.asarray(norm["high"], np.float32)
            return np.clip((x - low) / np.maximum(high - low, 1e-6), 0.0, 1.0)
        return x

    card.ModelCard.normalize = normalize
    segmenter._model_input = lambda batch: np.ascontiguousarray(batch, np.float32)


def child_model(raster: str, model: str, way: str) -> dict:
    """One model call on the raster's first chunk with its margins, as segment() makes it."""
    import numpy as np

    import geoseg
    from geoseg.pipeline import plan_run
    from geoseg.raster import WindowSource, inspect_raster

    if way == "old":
        _old_ways()
    seg = geoseg.models.get_segmenter(model)
    info = inspect_raster(raster)
    plan = plan_run(info, seg.card)
    multiple = max(1, seg.card.multiple_of)  # a raster smaller than a chunk: as much of it as the model takes
    side = min(plan.chunk[0] + 2 * plan.margin, info.height, info.width) // multiple * multiple
    seg.predict_top(seg.card.normalize(np.zeros((1, 64, 64, seg.card.n_bands), np.uint8)))  # trace the graph
    raw, _ = WindowSource(info.path, plan.bands, has_mask=False)(slice(0, side), slice(0, side))
    before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    c0, t0 = os.times(), time.perf_counter()
    out = seg.predict_top(seg.card.normalize(raw)[None])
    seconds, c1 = time.perf_counter() - t0, os.times()
    return {"seconds": seconds, "cpu": c1.user - c0.user + c1.system - c0.system, "rss_before_mb": before,
            "digest": hashlib.md5(out.tobytes()).hexdigest(), "side": side}


def child_pipeline(raster: str, model: str, way: str, out: str) -> dict:
    import numpy as np
    import rasterio

    import geoseg

    if way == "old":
        _old_ways()
    geoseg.models.get_segmenter(model)  # loaded outside the timing
    c0 = os.times()
    result = geoseg.segment(raster, out, model=model, preview=False, overwrite=True, confidence=True)
    c1 = os.times()
    digests = {}
    for name in ("mask", "confidence"):
        with rasterio.open(result.outputs[name]) as ds:
            digests[name] = hashlib.md5(np.ascontiguousarray(ds.read()).tobytes()).hexdigest()
    return {"seconds": result.seconds, "cpu": c1.user - c0.user + c1.system - c0.system, "digest": digests}


def run_child(kind: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_raster(path: Path, size: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_pipeline import make_raster as smooth

    smooth(path, size)


def table(title: str, runs: dict[str, list[dict]], keys: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    print(f"{'':<6}" + "".join(f"{label:>16}" for _, label in keys) + f"{'runs':>6}")
    med = {way: {k: statistics.median(r[k] for r in rs) for k, _ in keys} for way, rs in runs.items()}
    for way in runs:
        print(f"{way:<6}" + "".join(f"{med[way][k]:>16.2f}" for k, _ in keys) + f"{len(runs[way]):>6}")
    print(f"{'new/old':<6}" + "".join(f"{med['new'][k] / med['old'][k]:>16.3f}" for k, _ in keys))
    for way, rs in runs.items():  # every run, in the order run
        print(f"{way} runs: " + "; ".join(", ".join(f"{r[k]:.1f}" for k, _ in keys) for r in rs))
    digests = {json.dumps(r["digest"], sort_keys=True) for rs in runs.values() for r in rs}
    print("outputs byte-identical across every run: " + ("yes" if len(digests) == 1 else f"NO ({len(digests)} kinds)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raster", help="a GeoTIFF; default: a smooth synthetic one of --size")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--model", default="landcover-unet")
    parser.add_argument("--rounds", type=int, default=2, help="old/new pairs, alternating which goes first")
    parser.add_argument("--only", choices=["model", "pipeline"])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, rest = args.child[0], args.child[1:]
        out = (child_model if kind == "model" else child_pipeline)(*rest)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        raster = args.raster
        if raster is None:
            raster = str(Path(tmp) / f"bench_{args.size}.tif")
            make_raster(Path(raster), args.size)
        order = [("old", "new") if r % 2 == 0 else ("new", "old") for r in range(args.rounds)]
        keys = [("peak_rss_mb", "peak RSS MB"), ("cpu", "CPU s"), ("seconds", "wall s")]
        if args.only != "pipeline":
            runs = {"old": [], "new": []}
            for pair in order:
                for way in pair:
                    runs[way].append(run_child("model", raster, args.model, way))
            table(f"One model call ({runs['new'][0]['side']}² with margins), {args.model}, {os.cpu_count()} CPUs",
                  runs, keys)
        if args.only != "model":
            runs = {"old": [], "new": []}
            for pair in order:
                for way in pair:
                    runs[way].append(run_child("pipeline", raster, args.model, way, str(Path(tmp) / f"out-{way}")))
            table(f"geoseg.segment --confidence of {Path(raster).name}, {args.model}, {os.cpu_count()} CPUs", runs, keys)


if __name__ == "__main__":
    main()
