"""Write SYNTHETIC sample imagery for `make demo`: a procedurally drawn, Dubai-like scene.

The repository may not carry the real imagery it was trained on, so the demo
draws its own: sand, a road grid, flat-roofed buildings with shadows, irrigated
greenery and a coastline, at 0.5 m in UTM zone 40N with a nodata corner. It is
not real imagery and says so in its metadata and file name.

    python scripts/make_sample.py demo-output/synthetic_sample.tif [--size 2048]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from scipy.ndimage import gaussian_filter

SAND = (196, 170, 130)
ROAD = (92, 94, 98)
SEA = (38, 88, 104)
GREEN = (70, 104, 48)
ROOFS = ((214, 210, 202), (186, 176, 160), (150, 150, 152), (226, 222, 214))


def _noise(rng, shape, sigma, amount):
    n = gaussian_filter(rng.normal(size=shape), sigma)
    return n / (n.std() + 1e-9) * amount


def draw_scene(size: int, seed: int = 0) -> np.ndarray:
    """Return (3, size, size) uint8 RGB of a synthetic built-up coast."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.float32)
    img[:] = SAND
    img += _noise(rng, (size, size, 1), 12, 10) + _noise(rng, (size, size, 1), 1, 4)
    yy, xx = np.mgrid[0:size, 0:size]
    coast = size * 0.78 + _noise(rng, (size,), 40, size * 0.03)[None, :] + 0.08 * (xx - size / 2)
    block, road_w = 256, 22
    roads = ((yy % block) < road_w) | ((xx % block) < road_w)
    roads &= yy < coast - 30
    img[roads] = ROAD
    img[roads & (((yy % block) == road_w // 2) | ((xx % block) == road_w // 2)) & ((xx + yy) % 24 < 12)] = (210, 210, 200)
    for by in range(0, size, block):
        for bx in range(0, size, block):
            _fill_block(img, rng, by + road_w + 6, bx + road_w + 6, block - road_w - 12, coast)
    sea = yy >= coast
    shade = np.clip((yy - coast) / 120.0, 0, 1)[..., None]
    img[sea] = (np.array(SEA) * (1 - 0.35 * shade) + _noise(rng, (size, size, 1), 3, 3))[sea]
    beach = (yy >= coast - 30) & ~sea
    img[beach] = (np.array((222, 204, 168)) + _noise(rng, (size, size, 1), 2, 5))[beach]
    return np.clip(img, 1, 255).astype(np.uint8).transpose(2, 0, 1)


def _fill_block(img, rng, top, left, span, coast):
    size = img.shape[0]
    kind = rng.choice(["buildings", "buildings", "park", "sand"], p=[0.45, 0.25, 0.2, 0.1])
    if kind == "sand":
        return
    if kind == "park":
        yy, xx = np.mgrid[top : min(top + span, size), left : min(left + span, size)]
        keep = yy < coast[0, np.clip(xx, 0, size - 1)] - 40
        patch = np.array(GREEN) + _noise(rng, yy.shape + (1,), 1.5, 14)
        region = img[top : top + span, left : left + span]
        region[keep] = patch[keep]
        return
    for _ in range(rng.integers(2, 6)):
        h, w = rng.integers(40, span // 2), rng.integers(40, span // 2)
        r, c = top + rng.integers(0, span - h), left + rng.integers(0, span - w)
        if r + h >= size or c + w >= size or r + h > coast[0, min(c, size - 1)] - 40:
            continue
        img[r + 6 : r + h + 6, c + 6 : c + w + 6] *= 0.55  # shadow
        img[r : r + h, c : c + w] = ROOFS[rng.integers(len(ROOFS))]
        img[r + 2 : r + h - 2, c + 2 : c + w - 2] += rng.normal(0, 3, (1, 1, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists():
        return
    data = draw_scene(args.size, args.seed)
    corner = np.add.outer(np.arange(args.size), np.arange(args.size)) < args.size // 5
    data[:, corner] = 0  # a nodata corner, as at the edge of a real scene's footprint
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    with rasterio.open(tmp, "w", driver="GTiff", width=args.size, height=args.size, count=3, dtype="uint8",
                       crs="EPSG:32640", transform=from_origin(325000.0, 2788000.0, 0.5, 0.5), nodata=0,
                       tiled=True, compress="deflate", photometric="RGB") as ds:
        ds.write(data)
        ds.update_tags(DESCRIPTION="SYNTHETIC scene drawn by geoseg scripts/make_sample.py; not real imagery")
    os.replace(tmp, args.out)
    print(f"wrote synthetic sample {args.out} ({args.size}x{args.size} px, 0.5 m, EPSG:32640)")


if __name__ == "__main__":
    main()
