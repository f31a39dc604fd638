"""Pure tile geometry: chunk sizes, tile offsets and mirrored margins."""

from __future__ import annotations

import math

import numpy as np

from geoseg.errors import TilingError

__all__ = ["coerce_size", "round_up", "chunk_lengths", "tile_offsets", "mirror_pad", "pad_to_multiple"]


def coerce_size(value: int | tuple[int, int] | None, name: str, *, default: tuple[int, int]) -> tuple[int, int]:
    """Turn an int, a (rows, cols) pair or None into a (rows, cols) tuple of positive ints.

    Examples
    --------
    >>> coerce_size(512, "chunk", default=(1024, 1024))
    (512, 512)
    >>> coerce_size(None, "chunk", default=(1024, 1024))
    (1024, 1024)
    >>> coerce_size(0, "chunk", default=(1, 1))
    Traceback (most recent call last):
    ...
    geoseg.errors.TilingError: `chunk` must be positive. Received: chunk=0
    """
    if value is None:
        return default
    try:
        pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    except TypeError:  # 1.5 is not iterable
        pair = (value,)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise TilingError(f"`{name}` must be an int or a (rows, cols) pair of ints. Received: {name}={value!r}")
    if min(pair) <= 0:
        raise TilingError(f"`{name}` must be positive. Received: {name}={value!r}")
    return int(pair[0]), int(pair[1])


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= `value`.

    >>> round_up(1000, 16)
    1008
    """
    return int(math.ceil(value / multiple) * multiple)


def chunk_lengths(length: int, chunk: int, margin: int) -> tuple[int, ...]:
    """Split an axis of `length` pixels into chunks of `chunk`, merging a short last one.

    Every chunk starts at a multiple of `chunk`, which keeps a U-Net's pooling grid
    aligned with a whole-image run. A last chunk shorter than `margin` is merged into
    the one before it: a sliver would cost a full margin of context for few pixels.

    Examples
    --------
    >>> chunk_lengths(1000, 256, 240)
    (256, 256, 488)
    >>> chunk_lengths(1000, 256, 200)
    (256, 256, 256, 232)
    >>> chunk_lengths(7, 256, 64)
    (7,)
    """
    sizes = [chunk] * (length // chunk)
    rest = length - chunk * len(sizes)
    if rest:
        if sizes and rest < margin:
            sizes[-1] += rest
        else:
            sizes.append(rest)
    return tuple(sizes)


def tile_offsets(length: int, step: int) -> range:
    """Offsets of tiles that cover `length` pixels with cores of `step` pixels.

    >>> list(tile_offsets(300, 128))
    [0, 128, 256]
    """
    return range(0, length, step)


def mirror_pad(block: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Mirror `block` (rows, cols, ...) outwards by ((top, bottom), (left, right)) pixels.

    The edge pixel is not repeated (NumPy ``reflect``), as in the U-Net paper's
    overlap-tile strategy; pads wider than the block reflect repeatedly, and an
    axis of one pixel is repeated instead.

    >>> mirror_pad(np.arange(3)[None, :], ((0, 0), (2, 2))).tolist()
    [[2, 1, 0, 1, 2, 1, 0]]
    >>> mirror_pad(np.arange(4)[None, :], ((1, 1), (2, 2))).tolist()[1]  # rows repeated, columns still mirrored
    [2, 1, 0, 1, 2, 3, 2, 1]
    """
    if not any(a or b for a, b in pads):
        return block
    for axis, (a, b) in enumerate(pads):  # axis by axis: a one-pixel axis once made the other repeat its edge too
        if a or b:
            width = [(0, 0)] * block.ndim
            width[axis] = (a, b)
            block = np.pad(block, width, mode="reflect" if block.shape[axis] > 1 else "edge")
    return block


def pad_to_multiple(block: np.ndarray, multiple: int) -> np.ndarray:
    """Pad rows and cols at the bottom and right to a multiple of `multiple`, mirrored."""
    rows, cols = block.shape[:2]
    extra = (round_up(rows, multiple) - rows, round_up(cols, multiple) - cols)
    return mirror_pad(block, ((0, extra[0]), (0, extra[1])))
