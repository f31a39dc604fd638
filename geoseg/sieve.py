"""A minimum mapping unit for class masks: specks filled from their neighbours, block by block."""

from __future__ import annotations

import os

import numpy as np

from geoseg.raster import NODATA

__all__ = ["MAX_SIEVE_MARGIN", "sieve_array", "sieve_mask"]

MAX_SIEVE_MARGIN = 512  # context read around each block; see sieve_mask


def sieve_array(mask: np.ndarray, min_pixels: int, *, open_edges: tuple[bool, bool, bool, bool] = (False,) * 4
                ) -> np.ndarray:
    """Fill every 8-connected region of one class smaller than `min_pixels` from the larger regions around it.

    Specks are filled from their edges inwards, one pixel ring at a time: each pixel takes the class of
    a neighbour already known (its row and column neighbours first, then diagonal ones), so a speck
    between two classes is split between them, like QGIS's Sieve but without its bias to the
    largest neighbour. After `MAX_RINGS` rings, or at once where specks cover more than
    1/`MAX_RINGS` of the mask, they take the class of the nearest known pixel instead (one
    distance transform). Nodata (255) is never changed and never spreads; specks that touch
    only nodata keep their class.

    Parameters
    ----------
    mask : numpy.ndarray
        (rows, cols) uint8 class ids, 255 = nodata.
    min_pixels : int
        Regions of fewer pixels are specks.
    open_edges : (top, bottom, left, right)
        Edges where the mask continues beyond the array (a block of a larger mask): regions
        touching them that are small here are left as they are and fill nothing, since their
        size is unknown here.

    Returns
    -------
    numpy.ndarray
        A new mask; `mask` itself is unchanged.
    """
    from skimage.measure import label

    labels, n = label(mask, background=NODATA, connectivity=2, return_num=True)  # every class in one pass
    small = np.bincount(labels.ravel(), minlength=n + 1) < min_pixels
    small[0] = False  # nodata
    unsure = np.zeros(n + 1, bool)  # at an open edge and small here: how large they are is not known here
    for edge, is_open in zip((labels[0], labels[-1], labels[:, 0], labels[:, -1]), open_edges):
        if is_open:
            unsure[edge] = True
    unsure &= small
    small &= ~unsure  # neither specks nor sources
    speck = np.take(small, labels)
    out = mask.copy()
    known = (mask != NODATA) & ~speck & ~np.take(unsure, labels)
    rows, cols = np.nonzero(speck)
    for _ in range(MAX_RINGS):
        if not rows.size:
            return out
        if rows.size > mask.size // MAX_RINGS:  # a ring would cost more than the one pass below
            break
        fill = np.full(rows.size, NODATA, np.uint8)
        for dr, dc in NEIGHBOURS:  # from the pixels known before this ring, so the order of pixels does not matter
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < mask.shape[0]) & (c >= 0) & (c < mask.shape[1]) & (fill == NODATA)
            take = np.flatnonzero(inside)
            take = take[known[r[take], c[take]]]
            fill[take] = out[r[take], c[take]]
        done = fill != NODATA
        if not done.any():  # specks that touch only nodata keep their class
            return out
        out[rows[done], cols[done]] = fill[done]
        known[rows[done], cols[done]] = True
        rows, cols = rows[~done], cols[~done]
    if rows.size:  # a field of specks, far from any larger region: the nearest known pixel, in one pass
        from scipy import ndimage

        # within each part of the data that nodata bounds: specks never take a class from across nodata,
        # and those of a part without a known pixel keep theirs
        parts = label(mask != NODATA, connectivity=2)
        boxes = ndimage.find_objects(parts)
        part_of = parts[rows, cols]
        order = np.argsort(part_of, kind="stable")
        ids, starts = np.unique(part_of[order], return_index=True)
        for part, pick in zip(ids, np.split(order, starts[1:])):
            box = boxes[part - 1]
            sources = known[box] & (parts[box] == part)
            if not sources.any():
                continue
            nearest = ndimage.distance_transform_edt(~sources, return_distances=False, return_indices=True)
            r, c = rows[pick] - box[0].start, cols[pick] - box[1].start
            window = out[box]
            window[r, c] = window[nearest[0][r, c], nearest[1][r, c]]
    return out


NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))
MAX_RINGS = 8  # rings filled one by one; the rest of a field of specks from the nearest known pixel


def sieve_mask(src: str | os.PathLike, out, min_pixels: int, *, block: int = 2048, margin: int | None = None) -> int:
    """Write `src`, a class mask GeoTIFF, into `out`, an open dataset on its grid, with its specks filled
    (`sieve_array`), block by block.

    Each block is read with `margin` pixels of context (default ``min(min_pixels, MAX_SIEVE_MARGIN)``).
    A speck that the block's core touches spans fewer than `min_pixels` pixels, so with a margin
    of `min_pixels` it lies inside the read window and regions that reach the window's edge
    are larger: specks are found exactly as on the whole mask. Above the cap, a speck longer
    than the margin may be kept, never a larger region removed. Fills agree with the whole mask's
    except where the nearest larger region is farther than the margin (fields of specks).

    Returns
    -------
    int
        Pixels changed.
    """
    from rasterio.windows import Window

    from geoseg.raster import open_quietly

    margin = min(min_pixels, MAX_SIEVE_MARGIN) if margin is None else margin
    changed = 0
    with open_quietly(src) as ds:
        for top in range(0, ds.height, block):
            for left in range(0, ds.width, block):
                rows, cols = min(block, ds.height - top), min(block, ds.width - left)
                r0, c0 = max(0, top - margin), max(0, left - margin)
                r1, c1 = min(ds.height, top + rows + margin), min(ds.width, left + cols + margin)
                data = ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
                sieved = sieve_array(data, min_pixels, open_edges=(r0 > 0, r1 < ds.height, c0 > 0, c1 < ds.width))
                core = (slice(top - r0, top - r0 + rows), slice(left - c0, left - c0 + cols))
                changed += int((sieved[core] != data[core]).sum())
                out.write(sieved[core], 1, window=Window(left, top, cols, rows))
    return changed
