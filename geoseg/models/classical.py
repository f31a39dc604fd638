"""Classical segmentation pieces to compare deep models against: spectral indices, Otsu thresholds."""

from __future__ import annotations

import numpy as np

__all__ = ["normalized_difference", "otsu_threshold"]


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b) as float32, NaN where both are 0: NDWI is (green, nir), NDVI is (nir, red).

    >>> normalized_difference(np.array([3.0, 0.0]), np.array([1.0, 0.0])).tolist()
    [0.5, nan]
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a - b) / (a + b)


def otsu_threshold(counts: np.ndarray, edges: np.ndarray) -> float:
    """Otsu's threshold from a histogram: the cut that maximises the between-class variance.

    Working from a histogram lets a raster of any size be thresholded after one
    pass of block-wise `numpy.histogram` calls.

    >>> counts, edges = np.histogram(np.r_[np.zeros(50), np.ones(50)], bins=10, range=(0, 1))
    >>> 0.0 < otsu_threshold(counts, edges) < 1.0
    True
    """
    counts = np.asarray(counts, np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(counts)
    weight1 = weight0[-1] - weight0
    cum_mean = np.cumsum(counts * centres)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean0 = cum_mean / weight0
        mean1 = (cum_mean[-1] - cum_mean) / weight1
        between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[1:][np.nanargmax(between[:-1])])
