"""Benchmark the tiled pipeline against the bare model, and peak memory against raster size.

Run by hand (``make bench`` or ``.venv/bin/python benchmarks/bench_pipeline.py``); it prints
a table and ratios. Each measurement runs in its own process so that its peak RSS is its own.

    python benchmarks/bench_pipeline.py                 # 8k x 8k, default model + memory runs
    python benchmarks/bench_pipeline.py --size 4096 --memory-sizes 2048,4096
    python benchmarks/bench_pipeline.py --only throughput --model 'landcover-unet?precision=bfloat16'
    python benchmarks/bench_pipeline.py --only throughput --model-calls 1,2,4   # concurrent model calls

Measured:
- model only: the same model on the same padded chunks the pipeline feeds it, already in
  memory (no reading, no Dask, no writing), as core (output) pixels per second;
- pipeline: geoseg.segment end to end (read, Dask, predict, write, COG), output px/s;
- their ratio (goal: >= 0.85 on the CPU), the overlap overhead (pixels the model sees per
  output pixel) and peak RSS, once per number of concurrent model calls (GEOSEG_MODEL_CALLS);
- peak RSS of whole runs with a cheap model on rasters of growing size: it should stay flat.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_raster(path: Path, size: int) -> None:
    """A smooth RGB uint8 GeoTIFF of size x size written block by block (never whole in memory)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    sys.path.insert(0, str(ROOT / "scripts"))
    from make_sample import draw_scene

    scene = draw_scene(2048, seed=1)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32640", transform=from_origin(325000.0, 2788000.0, 0.5, 0.5),
                       tiled=True, compress="deflate") as ds:
        for r in range(0, size, 2048):
            for c in range(0, size, 2048):
                h, w = min(2048, size - r), min(2048, size - c)
                block = np.roll(scene, (r // 7, c // 5), axis=(1, 2))[:, :h, :w]
                ds.write(block, window=Window(c, r, w, h))


def cheap_model(folder: Path) -> Path:
    """A tiny real U-Net bundle (depth 2, 4 filters): cheap enough to show memory, not speed."""
    # geoseg before keras: GDAL must load before TensorFlow, or this process's GeoPackages lack their index
    from geoseg.models import ModelCard, build_unet, unet_receptive_radius, write_card
    import keras

    keras.utils.set_random_seed(0)
    path = folder / "cheap.keras"
    build_unet(3, 3, depth=2, filters=4).save(path)
    write_card(ModelCard.from_dict({
        "name": "cheap", "classes": [{"id": i, "name": f"c{i}"} for i in range(3)], "bands": [1, 2, 3],
        "normalization": {"method": "scale", "scale": 1 / 255}, "margin": unet_receptive_radius(2),
        "multiple_of": 4}), path.with_suffix(".json"))
    return path


def run_model_only(raster: str, model: str, chunk: int, samples: int) -> dict:
    """Predict `samples` padded chunks read beforehand; return core px/s."""

    from geoseg.inference import predict_block
    from geoseg.models import get_segmenter
    from geoseg.pipeline import plan_run
    from geoseg.raster import WindowSource, inspect_raster

    info = inspect_raster(raster)
    segmenter = get_segmenter(model)
    plan = plan_run(info, segmenter.card, chunk=chunk or None)
    reader = WindowSource(info.path, plan.bands, has_mask=info.has_mask)
    m, (ch, cw) = plan.margin, plan.chunk
    if info.height <= ch + 2 * m or info.width <= cw + 2 * m:  # the sampling below divided by <= 0
        raise SystemExit(f"--size must exceed the chunk plus its margins ({ch} + 2 x {m} = {ch + 2 * m} px) for the "
                         f"model-only samples; pass --size {2 * (ch + 2 * m)} or a smaller --chunk.")
    blocks = []
    for i in range(samples):
        r, c = (i * ch) % (info.height - ch - 2 * m), (i * 3 * cw) % (info.width - cw - 2 * m)
        raw, _ = reader(slice(r, r + ch + 2 * m), slice(c, c + cw + 2 * m))
        blocks.append(segmenter.card.normalize(raw))
    predict_block(segmenter, blocks[0], margin=m, tile=plan.tile)  # warm up (graph tracing)
    started = time.perf_counter()
    for block in blocks:
        predict_block(segmenter, block, margin=m, tile=plan.tile, batch_size=plan.batch_size)
    seconds = time.perf_counter() - started
    return {"core_px_per_s": samples * ch * cw / seconds, "seconds": seconds,
            "overlap_factor": plan.overlap_factor((info.height, info.width))}


def run_pipeline(raster: str, model: str, chunk: int, out: str) -> dict:
    import geoseg

    geoseg.models.get_segmenter(model)  # load outside the timing, as model-only does
    result = geoseg.segment(raster, out, model=model, chunk=chunk or None, preview=False, overwrite=True)
    seconds = result.seconds
    return {"px_per_s": result.width * result.height / seconds, "seconds": seconds,
            "overlap_factor": result.plan["overlap_factor"], "chunk": result.plan["chunk"][0],
            "margin": result.plan["margin"]}


def child(kind: str, args: list[str], env: dict | None = None) -> dict:
    """Run one measurement in a fresh process; return its JSON plus its peak RSS."""
    cmd = [sys.executable, __file__, "--child", kind, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode:
        sys.exit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--model", default="landcover-unet")
    parser.add_argument("--chunk", type=int, default=0, help="chunk size; 0: the pipeline's default for the model")
    parser.add_argument("--samples", type=int, default=6, help="chunks timed in the model-only run")
    parser.add_argument("--memory-sizes", default="4096,16384", help="raster sizes for the memory runs")
    parser.add_argument("--only", choices=["throughput", "memory"], help="run one of the two parts")
    parser.add_argument("--model-calls", default="1,2",
                        help="GEOSEG_MODEL_CALLS values for the pipeline runs (concurrent model calls)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, rest = args.child[0], args.child[1:]
        out = {"model": run_model_only, "pipeline": run_pipeline}[kind](
            rest[0], rest[1], int(rest[2]), int(rest[3]) if kind == "model" else rest[3])
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return

    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        tmp = Path(tmp)
        if args.only != "memory":
            throughput(args, tmp)
        if args.only != "throughput":
            memory(args, tmp)


def throughput(args, tmp: Path) -> None:
    """Model only against the whole pipeline on one raster, in one run."""
    raster = tmp / f"bench_{args.size}.tif"
    make_raster(raster, args.size)
    model_only = child("model", [str(raster), args.model, str(args.chunk), str(args.samples)])
    calls = [c.strip() for c in args.model_calls.split(",") if c.strip()]
    runs = {c: child("pipeline", [str(raster), args.model, str(args.chunk), str(tmp / "out")],
                     {"GEOSEG_MODEL_CALLS": c}) for c in calls}
    pipeline = runs[calls[0]]
    print(f"\nThroughput, {args.size}x{args.size} RGB uint8, model {args.model}, chunk {pipeline['chunk']}, "
          f"margin {pipeline['margin']}, {os.cpu_count()} CPUs")
    print(f"{'run':<28}{'Mpx/s':>10}{'seconds':>10}{'peak RSS MB':>14}")
    print(f"{'model only':<28}{model_only['core_px_per_s'] / 1e6:>10.3f}{model_only['seconds']:>10.1f}"
          f"{model_only['peak_rss_mb']:>14.0f}")
    for c, run in runs.items():
        print(f"{f'pipeline, {c} model call(s)':<28}{run['px_per_s'] / 1e6:>10.3f}{run['seconds']:>10.1f}"
              f"{run['peak_rss_mb']:>14.0f}")
    for c, run in runs.items():
        print(f"ratio pipeline ({c} call(s)) / model only: {run['px_per_s'] / model_only['core_px_per_s']:.3f} "
              "(goal >= 0.85)")
    print(f"overlap overhead: the model sees {pipeline['overlap_factor']:.3f} px per output px")
    raster.unlink()


def memory(args, tmp: Path) -> None:
    """Peak RSS of whole runs with a cheap model as the raster grows."""
    cheap = cheap_model(tmp)
    print(f"\nPeak RSS against raster size, cheap model, chunk {args.chunk or 'default'}")
    print(f"{'raster':<14}{'Mpx':>8}{'seconds':>10}{'peak RSS MB':>14}")
    for size in (int(s) for s in args.memory_sizes.split(",")):
        path = tmp / f"mem_{size}.tif"
        make_raster(path, size)
        run = child("pipeline", [str(path), str(cheap), str(args.chunk), str(tmp / f"mem_out_{size}")])
        print(f"{size}x{size:<9}{size * size / 1e6:>8.1f}{run['seconds']:>10.1f}{run['peak_rss_mb']:>14.0f}")
        path.unlink()


if __name__ == "__main__":
    main()
