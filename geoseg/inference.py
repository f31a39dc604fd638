"""Batched prediction over one block: tiles, batches, margins cropped."""

from __future__ import annotations

import logging
import sys

import numpy as np

from geoseg.models.segmenter import Segmenter
from geoseg.tiling.grid import mirror_pad, pad_to_multiple, tile_offsets

__all__ = ["predict_block", "predict_image", "top_of", "describe_device"]

log = logging.getLogger(__name__)


def predict_block(
    segmenter: Segmenter,
    block: np.ndarray,
    *,
    margin: int,
    tile: int | None = None,
    batch_size: int = 8,
    top: bool = False,
) -> np.ndarray:
    """Predict the core of a normalised block that carries `margin` pixels of context.

    Parameters
    ----------
    segmenter : Segmenter
        The model.
    block : numpy.ndarray
        (rows + 2 margin, cols + 2 margin, bands), float32, already normalised.
    margin : int
        Context each side; only the core is returned.
    tile : int or None
        Model input size. None feeds the whole block at once (fully convolutional
        models); otherwise the core is cut into cores of ``tile - 2 margin`` pixels,
        each predicted with its margin, in batches of `batch_size`.
    batch_size : int
        Tiles per model call.
    top : bool
        Return only each pixel's winning class and its probability, which is all a mask and
        its confidence need. A segmenter with ``predict_top`` computes them where the model
        runs: on a GPU the call then sends back 2 values a pixel instead of one per class.

    Returns
    -------
    numpy.ndarray
        (rows, cols, classes) float32 probabilities of the core; with `top`, (rows, cols, 2)
        float32: the class id (a whole number) and its probability.
    """
    rows, cols = block.shape[0] - 2 * margin, block.shape[1] - 2 * margin
    multiple = segmenter.card.multiple_of
    predict = _top_of(segmenter) if top else segmenter.predict_proba
    if tile is None:
        padded = pad_to_multiple(block, multiple)
        proba = predict(padded[None])[0]
        return proba[margin : margin + rows, margin : margin + cols]
    step = tile - 2 * margin
    need = ((0, max(0, tile - block.shape[0])), (0, max(0, tile - block.shape[1])))
    block = mirror_pad(block, need) if any(b for _, b in need) else block
    offsets = [(r, c) for r in tile_offsets(rows, step) for c in tile_offsets(cols, step)]
    out = np.empty((rows, cols, 2 if top else segmenter.card.n_classes), np.float32)
    for start in range(0, len(offsets), batch_size):
        batch_offsets = offsets[start : start + batch_size]
        batch = np.stack([_tile_at(block, r, c, tile) for r, c in batch_offsets], axis=0)
        if multiple > 1 and tile % multiple:
            batch = np.moveaxis(pad_to_multiple(np.moveaxis(batch, 0, -1), multiple), -1, 0)
        proba = predict(batch)
        for (r, c), p in zip(batch_offsets, proba):
            h, w = min(step, rows - r), min(step, cols - c)
            out[r : r + h, c : c + w] = p[margin : margin + h, margin : margin + w]
    return out


def _top_of(segmenter: Segmenter):
    """The segmenter's own ``predict_top``, or one computed from its probabilities."""
    if hasattr(segmenter, "predict_top"):
        return segmenter.predict_top
    return lambda batch: top_of(segmenter.predict_proba(batch))


def top_of(proba: np.ndarray) -> np.ndarray:
    """(..., classes) probabilities to (..., 2) float32: the winning class (first of equals) and its probability."""
    return np.stack([proba.argmax(-1).astype(np.float32), proba.max(-1)], axis=-1)


def _tile_at(block: np.ndarray, row: int, col: int, tile: int) -> np.ndarray:
    window = block[row : row + tile, col : col + tile]
    short = (tile - window.shape[0], tile - window.shape[1])
    return mirror_pad(window, ((0, short[0]), (0, short[1]))) if any(short) else window


def predict_image(segmenter: Segmenter, image: np.ndarray, *, margin: int | None = None, tile: int | None = None,
                  batch_size: int = 8) -> np.ndarray:
    """Predict a whole in-memory image (rows, cols, bands) of raw values in one go.

    The image is normalised as the card says and mirrored by `margin` at its edges,
    exactly as a tiled run mirrors the raster's outer edge, so a tiled run of the
    same model must return the same probabilities. Use it for small images and as
    the reference in tests.

    Returns
    -------
    numpy.ndarray
        (rows, cols, classes) float32 probabilities.
    """
    card = segmenter.card
    margin = card.margin if margin is None else margin
    tile = card.tile_size if tile is None else tile
    norm = card.normalization
    if norm["method"] == "percentile":  # the stretch of this image, as segment() takes the raster's
        from geoseg.models.card import resolve_normalization

        norm = resolve_normalization(norm, image, np.ones(image.shape[:2], bool))
    block = mirror_pad(card.normalize(image, norm), ((margin, margin), (margin, margin)))
    return predict_block(segmenter, block, margin=margin, tile=tile, batch_size=batch_size)


def describe_device() -> str:
    """Return 'GPU: <name>' when TensorFlow sees a GPU, else 'CPU'.

    A process that has not imported TensorFlow ran no Keras model (classical baselines are
    numpy): 'CPU', without paying TensorFlow's import (3 s and 550 MB) to say so.
    """
    if "tensorflow" not in sys.modules:
        return "CPU"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"GPU: {gpus[0].name}" if gpus else "CPU"
