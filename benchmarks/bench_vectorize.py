"""Benchmark vectorisation: Mpx/s on a large noisy mask and a clean one, peak RSS, block sizes,
and speck removal (``--min-area`` with ``--specks drop`` and ``merge``, and the raster sieve of
``geoseg segment --sieve`` at the same area followed by vectorising) at the first block size.

Run by hand: ``.venv/bin/python benchmarks/bench_vectorize.py [--size 8192] [--min-area 50]``. Each run is a
fresh process so its peak RSS is its own. Compare the Mpx/s with the segmentation
throughput printed by bench_pipeline.py: the goal is that vectorising a mask never takes
longer than segmenting the image that made it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_mask(path: Path, size: int, kind: str) -> None:
    """A 5-class uint8 mask written block by block: 'noisy' (blobs of a few px) or 'clean' (large regions)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window
    from scipy.ndimage import gaussian_filter

    sigma = 1.5 if kind == "noisy" else 40
    rng = np.random.default_rng(0)
    tile = 2048
    field = gaussian_filter(rng.normal(size=(5, tile + 200, tile + 200)), (0, sigma, sigma))
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8",
                       crs="EPSG:32640", transform=from_origin(325000.0, 2788000.0, 0.5, 0.5), nodata=255,
                       tiled=True, compress="deflate") as ds:
        for r in range(0, size, tile):
            for c in range(0, size, tile):
                h, w = min(tile, size - r), min(tile, size - c)
                shift = (r // 3 + c // 7) % 200
                ds.write(field[:, shift : shift + h, shift : shift + w].argmax(0).astype("uint8"), 1,
                         window=Window(c, r, w, h))


def run(mask: str, block: int, min_area: float = 0.0, specks: str = "drop") -> dict:
    from geoseg.vector import vectorize

    started = time.perf_counter()
    sieve_seconds = 0.0
    if specks == "sieve":  # the mask sieved to the same area in pixels, then vectorised as it is
        mask, min_area, specks = sieve(mask, min_area), 0.0, "drop"
        sieve_seconds = time.perf_counter() - started
    result = vectorize(mask, Path(mask).with_name(f"layer_{block}.gpkg"), block=block, overwrite=True,
                       min_area=min_area, specks=specks)
    seconds = time.perf_counter() - started
    return {"polygons": result.polygons, "seconds": seconds, "sieve_seconds": sieve_seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def sieve(mask: str, min_area: float) -> str:
    import rasterio

    from geoseg.sieve import sieve_mask

    out = Path(mask).with_name(f"sieved-{Path(mask).name}")
    with rasterio.open(mask) as ds, rasterio.open(out, "w", **ds.profile) as dst:
        pixels = round(min_area / abs(ds.transform.a * ds.transform.e))
        sieve_mask(mask, dst, pixels)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--blocks", default="1024,2048")
    parser.add_argument("--mask", action="append", default=[], help="also time this mask (e.g. a model's output)")
    parser.add_argument("--min-area", type=float, default=50.0,
                        help="m² below which polygons are specks, for the drop and merge rows (0: no such rows)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child[0], int(args.child[1]), float(args.child[2]), args.child[3])))
        return
    print(f"Vectorisation of {args.size}x{args.size} 5-class masks ({args.size ** 2 / 1e6:.1f} Mpx) "
          f"and of {len(args.mask)} given mask(s)")
    print(f"{'mask':<8}{'block':>7}{'specks':>15}{'polygons':>10}{'seconds':>10}{'Mpx/s':>9}{'peak RSS MB':>13}")
    import rasterio

    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        masks = []
        for kind in ("clean", "noisy") if args.size else ():
            masks.append((kind, Path(tmp) / f"{kind}.tif"))
            make_mask(masks[-1][1], args.size, kind)
        for path in args.mask:  # copy: the layer is written beside the mask
            masks.append(("given", Path(tmp) / Path(path).name))
            masks[-1][1].write_bytes(Path(path).read_bytes())
        for kind, mask in masks:
            with rasterio.open(mask) as ds:
                mpx = ds.width * ds.height / 1e6
            blocks = [int(b) for b in args.blocks.split(",")]
            runs = [(b, 0.0, "drop") for b in blocks]
            if args.min_area > 0:
                runs += [(blocks[0], args.min_area, s) for s in ("drop", "merge", "sieve")]
            for block, min_area, specks in runs:
                done = subprocess.run([sys.executable, __file__, "--child", str(mask), str(block), str(min_area), specks],
                                      capture_output=True, text=True, check=True)
                r = json.loads(done.stdout.strip().splitlines()[-1])
                label = f"{specks} <{min_area:g} m²" if min_area else "kept"
                print(f"{kind:<8}{block:>7}{label:>15}{r['polygons']:>10}{r['seconds']:>10.1f}"
                      f"{mpx / r['seconds']:>9.2f}{r['peak_rss_mb']:>13.0f}"
                      + (f"  (sieve {r['sieve_seconds']:.1f} s)" if specks == "sieve" else ""))


if __name__ == "__main__":
    main()
