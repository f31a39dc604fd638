"""Write SYNTHETIC sample imagery for `make demo`: a procedurally drawn, Dubai-like scene.

The repository may not carry the real imagery it was trained on, so the demo
draws its own in that imagery's colours: pale sand, a road grid, small
flat-roofed buildings with shadows, clumps of trees and a dark sea, at 0.5 m in
UTM zone 40N with a nodata corner. It is not real imagery and says so in its
metadata and file name. (The default model finds the sea, roads and land in it;
it calls some of its schematic buildings and trees so, not all.)

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

# colours of the Dubai aerial imagery the default model learned from (medians per class)
SAND = (192, 190, 202)
ROAD = (118, 117, 134)
SEA = (14, 24, 24)
GREEN = (52, 66, 48)
ROOFS = ((228, 228, 236), (204, 206, 222), (176, 178, 196), (236, 232, 226))


def _noise(rng, shape, sigma, amount):
    n = gaussian_filter(rng.normal(size=shape), sigma)
    return n / (n.std() + 1e-9) * amount


def draw_scene(size: int, seed: int = 0) -> np.ndarray:
    """Return (3, size, size) uint8 RGB of a synthetic built-up coast."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.float32)
    img[:] = SAND
    img += _noise(rng, (size, size, 1), 12, 8) + _noise(rng, (size, size, 1), 1, 5)
    yy, xx = np.mgrid[0:size, 0:size]
    coast = size * 0.78 + _noise(rng, (size,), 40, size * 0.03)[None, :] + 0.08 * (xx - size / 2)
    block, road_w = 192, 14
    roads = ((yy % block) < road_w) | ((xx % block) < road_w)
    roads &= yy < coast - 30
    img[roads] = ROAD
    img[roads & (((yy % block) == road_w // 2) | ((xx % block) == road_w // 2)) & ((xx + yy) % 24 < 12)] = (200, 200, 205)
    for by in range(0, size, block):
        for bx in range(0, size, block):
            _fill_block(img, rng, by + road_w + 6, bx + road_w + 6, block - road_w - 12, coast)
    sea = yy >= coast
    shade = np.clip((yy - coast) / 120.0, 0, 1)[..., None]
    img[sea] = (np.array(SEA) * (1 - 0.35 * shade) + _noise(rng, (size, size, 1), 3, 3))[sea]
    beach = (yy >= coast - 30) & ~sea
    img[beach] = (np.array((214, 210, 214)) + _noise(rng, (size, size, 1), 2, 5))[beach]
    return np.clip(img, 1, 255).astype(np.uint8).transpose(2, 0, 1)


def _fill_block(img, rng, top, left, span, coast):
    size = img.shape[0]
    kind = rng.choice(["buildings", "buildings", "park", "sand"], p=[0.45, 0.25, 0.2, 0.1])
    if kind == "sand":
        return
    if kind == "park":
        yy, xx = np.mgrid[top : min(top + span, size), left : min(left + span, size)]
        clumps = gaussian_filter(rng.normal(size=yy.shape), 4) > 0.02  # tree crowns in clumps
        keep = (yy < coast[0, np.clip(xx, 0, size - 1)] - 40) & clumps
        patch = np.array(GREEN) + _noise(rng, yy.shape + (1,), 1.5, 10)
        region = img[top : top + span, left : left + span]
        region[keep] = patch[keep]
        return
    for _ in range(rng.integers(6, 14)):
        h, w = rng.integers(14, 40), rng.integers(14, 40)
        r, c = top + rng.integers(0, span - h), left + rng.integers(0, span - w)
        if r + h >= size or c + w >= size or r + h > coast[0, min(c, size - 1)] - 40:
            continue
        img[r + 4 : r + h + 4, c + 4 : c + w + 4] *= 0.45  # shadow
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
