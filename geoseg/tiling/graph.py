"""The Dask graph of a tiled run: each task reads a chunk plus margins, mirrored at the raster's edge."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any, Callable

import dask.array as da
import numpy as np

from geoseg.errors import GeosegError
from geoseg.tiling.grid import mirror_pad

__all__ = ["windowed_map"]


def windowed_map(
    func: Callable[..., np.ndarray],
    read: Callable[[slice, slice], tuple[np.ndarray, np.ndarray]],
    shape: tuple[int, int],
    chunks: tuple[tuple[int, ...], tuple[int, ...]],
    *,
    margin: int,
    out_bands: int,
    dtype: Any = np.uint8,
    **kwargs: Any,
) -> da.Array:
    """Apply `func` to every chunk of a raster with `margin` pixels of context each side, mirrored at its edge.

    Parameters
    ----------
    read : callable
        ``read(rows, cols)`` returns ``(block, valid)`` for a window given as two
        slices inside the raster: (rows, cols, bands) and (rows, cols, 1) bool. It
        must pickle (e.g. an object holding only a path) to run on distributed workers.
    shape : (rows, cols)
        Raster size.
    chunks : (row_chunks, col_chunks)
        Core sizes, as from `chunk_lengths`.

    Returns
    -------
    dask.array.Array
        (rows, cols, out_bands) of `dtype`.

    Notes
    -----
    ``func(block, valid, margin=margin, **kwargs)`` gets (rows + 2 margin, cols + 2
    margin, bands) and returns the chunk's core, (rows, cols, out_bands). It must be
    a module-level function so that distributed workers can import it.

    This is `dask.array.map_overlap` with a mirrored (``reflect``) boundary, done
    inside each task: the task reads its chunk plus margins clipped to the raster
    and mirrors what lies outside it. Unlike `map_overlap`, no task depends on its
    neighbours, so the threaded scheduler never holds their reads in memory,
    distributed workers exchange only their uint8 results, and rasters thinner
    than the margin need no special case. Margins are read by both neighbours:
    cheap next to a model.
    """
    chunk = ChunkCall(func, read, shape, margin, kwargs)
    # a name of its own per graph: one fixed name gave every raster's chunk (i, j) the same key, so rasters
    # run at once on one cluster (survey --jobs, two runs on one --scheduler) got each other's chunks
    name = f"windowed-{getattr(func, '__name__', 'func')}-{uuid.uuid4().hex}"
    array = da.map_blocks(partial(_from_block_info, chunk=chunk), chunks=chunks + ((out_bands,),), dtype=dtype,
                          meta=np.empty((0, 0, 0), dtype), name=name)
    array.chunk_call = chunk  # one chunk by its location, outside the graph (`ChunkCall`)
    return array


class ChunkCall:
    """One chunk of a `windowed_map` by its location, ``chunk_call(((r0, r1), (c0, c1)))``, outside any Dask
    graph: a cluster run submits these, since computing each chunk of a large graph on its own cost time in the
    square of the chunks (a 48000² raster sent its first chunk after 380 s). It pickles, as `read` does."""

    def __init__(self, func, read, shape, margin, kwargs) -> None:
        self.func, self.read, self.shape, self.margin, self.kwargs = func, read, shape, margin, kwargs

    def __call__(self, location) -> np.ndarray:
        return _read_and_call(location, func=self.func, read=self.read, shape=self.shape, margin=self.margin,
                              kwargs=self.kwargs)


def _from_block_info(block_info=None, *, chunk: ChunkCall) -> np.ndarray:
    return chunk(block_info[None]["array-location"][:2])


def _read_and_call(location, *, func, read, shape, margin, kwargs):
    (r0, r1), (c0, c1) = location
    rows = slice(max(0, r0 - margin), min(shape[0], r1 + margin))
    cols = slice(max(0, c0 - margin), min(shape[1], c1 + margin))
    try:
        block, valid = read(rows, cols)
        pads = ((margin - (r0 - rows.start), margin - (rows.stop - r1)),
                (margin - (c0 - cols.start), margin - (cols.stop - c1)))
        return func(mirror_pad(block, pads), mirror_pad(valid, pads), margin=margin, **kwargs)
    except GeosegError as exc:  # sent back from a Dask worker with its chain, which GDAL's errors break: the
        exc.__cause__ = exc.__context__ = None  # client then got a bare Exception, no GeosegError to report
        raise
