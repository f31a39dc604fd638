"""Tile geometry: chunk lengths, mirrored margins, size coercion, the overlap graph."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geoseg.errors import TilingError
from geoseg.tiling import chunk_lengths, coerce_size, mirror_pad, pad_to_multiple, windowed_map


@given(length=st.integers(1, 5000), chunk=st.integers(1, 700), margin=st.integers(0, 300))
def test_chunk_lengths_cover_axis_on_the_chunk_grid(length, chunk, margin):
    sizes = chunk_lengths(length, chunk, margin)
    assert sum(sizes) == length
    starts = np.cumsum((0,) + sizes[:-1])
    assert all(s % chunk == 0 for s in starts)  # every chunk starts on the whole-image grid
    if len(sizes) > 1:
        assert min(sizes) >= min(margin, chunk)  # each neighbour can lend a full margin


@pytest.mark.parametrize(
    "value, expected",
    [
        (512, (512, 512)),  # int -> square
        ((256, 128), (256, 128)),  # pair kept
        (np.int64(64), (64, 64)),  # numpy ints accepted
    ],
)
def test_coerce_size(value, expected):
    assert coerce_size(value, "chunk", default=(1, 1)) == expected


@pytest.mark.parametrize("bad", [0, -3, (1, 2, 3), "big", (4.5, 2)])
def test_coerce_size_rejects(bad):
    with pytest.raises(TilingError, match="chunk"):
        coerce_size(bad, "chunk", default=(1, 1))


@pytest.mark.parametrize(
    "shape, pads",
    [
        ((5, 7), ((3, 3), (2, 2))),  # ordinary
        ((2, 9), ((6, 6), (0, 0))),  # pad wider than the axis: repeated reflection
        ((1, 4), ((2, 2), (1, 1))),  # one-pixel axis falls back to edge
    ],
)
def test_mirror_pad_shapes_and_centre(shape, pads):
    block = np.arange(np.prod(shape)).reshape(shape + (1,))
    out = mirror_pad(block, pads)
    assert out.shape == (shape[0] + sum(pads[0]), shape[1] + sum(pads[1]), 1)
    top, left = pads[0][0], pads[1][0]
    np.testing.assert_array_equal(out[top : top + shape[0], left : left + shape[1]], block)


def test_mirror_pad_reflects_without_repeating_edge():
    assert mirror_pad(np.array([[1, 2, 3]]), ((0, 0), (2, 0))).tolist() == [[3, 2, 1, 2, 3]]


def test_pad_to_multiple():
    assert pad_to_multiple(np.zeros((17, 32, 2)), 16).shape == (32, 32, 2)


def _core_plus_one(block, valid, *, margin):
    rows, cols = block.shape[0] - 2 * margin, block.shape[1] - 2 * margin
    return (block[margin : margin + rows, margin : margin + cols, :1] + 1).astype(np.uint8)


def _neighbour_sum(block, valid, *, margin):
    # depends on pixels `margin` away: equals a whole-array reference only if margins are right
    padded = block[..., 0].astype(np.int64)
    rows, cols = padded.shape[0] - 2 * margin, padded.shape[1] - 2 * margin
    out = (padded[:rows, margin : margin + cols] + padded[2 * margin :, margin : margin + cols]
           + padded[margin : margin + rows, :cols] + padded[margin : margin + rows, 2 * margin :])
    return (out % 251).astype(np.uint8)[..., None]


class _ArrayRead:
    """A `windowed_map` reader over an in-memory array, counting what it reads."""

    def __init__(self, image):
        self.image, self.pixels = image, 0

    def __call__(self, rows, cols):
        block = self.image[rows, cols]
        self.pixels += block.shape[0] * block.shape[1]
        return block, np.ones(block.shape[:2] + (1,), bool)


@pytest.mark.parametrize("chunk", [5, 8, 13, 64])
@pytest.mark.parametrize("shape", [(37, 23), (4, 50), (1, 1)])
def test_windowed_map_matches_whole_array(chunk, shape):
    margin = 4
    image = np.random.default_rng(0).integers(0, 200, shape + (2,)).astype(np.uint8)
    chunks = (chunk_lengths(shape[0], chunk, margin), chunk_lengths(shape[1], chunk, margin))
    read = _ArrayRead(image)
    tiled = windowed_map(_neighbour_sum, read, shape, chunks, margin=margin, out_bands=1).compute()
    whole = _neighbour_sum(mirror_pad(image, ((margin, margin), (margin, margin))), None, margin=margin)
    np.testing.assert_array_equal(tiled, whole)
    plain = windowed_map(_core_plus_one, read, shape, chunks, margin=margin, out_bands=1).compute()
    np.testing.assert_array_equal(plain[..., 0], image[..., 0] + 1)


def test_two_rasters_computed_together_keep_their_own_chunks():
    """Every raster's chunk (i, j) had the same task key, so rasters run at once on one cluster (survey --jobs 2
    on a client, two runs on one --scheduler) got each other's chunks: wrong masks without an error."""
    import dask

    chunks = (chunk_lengths(20, 8, 2), chunk_lengths(20, 8, 2))
    images = [np.full((20, 20, 1), value, np.uint8) for value in (10, 200)]
    arrays = [windowed_map(_core_plus_one, _ArrayRead(image), (20, 20), chunks, margin=2, out_bands=1)
              for image in images]
    first, second = dask.compute(*arrays)  # one graph of both, as a scheduler holds them
    assert (first == 11).all() and (second == 201).all()


def test_errors_of_a_task_reach_a_distributed_client_as_geoseg_errors(tmp_path):
    """A raster moved mid-run raised RasterReadError in a worker with rasterio's error in its chain, which tblib
    cannot rebuild: the client got a bare Exception, and the CLI a traceback that stopped the batch."""
    from distributed.core import error_message
    from distributed.protocol import pickle

    from geoseg.errors import InputError, RasterReadError
    from geoseg.raster import WindowSource
    from geoseg.tiling.graph import _read_and_call

    def sent(exc):
        message = error_message(exc)["exception"]
        return pickle.loads(getattr(message, "data", message))

    with pytest.raises(RasterReadError) as raised:  # a try/except passed when nothing was raised
        WindowSource(str(tmp_path / "gone.tif"), [1, 2, 3], has_mask=False)(slice(0, 8), slice(0, 8))
    assert isinstance(sent(raised.value), RasterReadError) and "could not be opened again" in str(sent(raised.value))

    class Unbuildable(Exception):  # as rasterio's CPLE errors: tblib cannot set its args
        @property
        def args(self):
            return ("gdal",)

    def read(rows, cols):
        try:
            raise Unbuildable()
        except Unbuildable:
            raise InputError("a window could not be read")

    with pytest.raises(InputError) as caught:
        _read_and_call([(0, 4), (0, 4)], func=_core_plus_one, read=read, shape=(4, 4), margin=0, kwargs={})
    assert isinstance(sent(caught.value), InputError)


def test_windowed_map_tasks_are_independent():
    """No task depends on another: each reads its own window, so nothing but results travels."""
    shape, chunks = (64, 64), ((16,) * 4, (16,) * 4)
    array = windowed_map(_core_plus_one, _ArrayRead(np.zeros(shape + (1,), np.uint8)), shape, chunks, margin=3,
                         out_bands=1)
    graph = dict(array.__dask_graph__())
    assert len(graph) == 16
