"""The Dask graph of a tiled run: chunks plus neighbours' margins, mirrored at the outer edge."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import dask.array as da
import numpy as np

from geoseg.tiling.grid import mirror_pad

__all__ = ["overlap_map"]


def overlap_map(
    func: Callable[..., np.ndarray],
    image: da.Array,
    valid: da.Array,
    *,
    margin: int,
    out_bands: int,
    dtype: Any = np.uint8,
    **kwargs: Any,
) -> da.Array:
    """Apply `func` to every chunk of `image` with `margin` pixels of context each side.

    Parameters
    ----------
    func : callable
        ``func(block, valid_block, margin=margin, **kwargs)`` gets (rows + 2 margin, cols + 2 margin,
        bands) and (..., 1) arrays and returns the chunk's core, (rows, cols, out_bands).
        It must be a module-level function so that distributed workers can import it.
    image : dask.array.Array
        (rows, cols, bands), one chunk along bands.
    valid : dask.array.Array
        (rows, cols, 1) bool, chunked like `image`; False where the input is nodata.
    margin : int
        Context width in pixels.
    out_bands : int
        Bands of the result.

    Returns
    -------
    dask.array.Array
        (rows, cols, out_bands) of `dtype`, chunked like `image` in rows and cols.

    Notes
    -----
    Neighbouring chunks lend their pixels through `dask.array.map_overlap`. At the
    raster's outer edge the block is mirrored (``reflect``) by `mirror_pad`, which,
    unlike Dask's ``boundary="reflect"``, also works when the raster is thinner than
    the margin. Chunks are at least `margin` long (see `chunk_lengths`) unless the
    axis has a single chunk, which borrows nothing.
    """
    depth = {0: margin if image.numblocks[0] > 1 else 0, 1: margin if image.numblocks[1] > 1 else 0, 2: 0}
    call = partial(_mirrored_call, func=func, margin=margin, kwargs=kwargs)
    return da.map_overlap(
        call,
        image,
        valid,
        depth=depth,
        boundary="none",
        trim=False,
        align_arrays=False,
        dtype=dtype,
        chunks=(image.chunks[0], image.chunks[1], (out_bands,)),
        meta=np.empty((0, 0, 0), dtype),
    )


def _mirrored_call(block, valid, block_info=None, *, func, margin, kwargs):
    where, count = block_info[0]["chunk-location"], block_info[0]["num-chunks"]
    pads = tuple(
        (margin if where[axis] == 0 else 0, margin if where[axis] == count[axis] - 1 else 0)
        for axis in (0, 1)
    )
    block = mirror_pad(block, pads)
    valid = mirror_pad(valid, pads)
    return func(block, valid, margin=margin, **kwargs)
