"""Segmentation metrics from a confusion matrix: IoU, F1, precision, recall, accuracy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["confusion_matrix", "json_ready", "scores"]


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n_classes: int, *, ignore: int = 255) -> np.ndarray:
    """Count (truth, prediction) pairs; pixels where either is `ignore` or out of range are skipped.

    Returns
    -------
    numpy.ndarray
        (n_classes, n_classes) int64, rows are truth, columns prediction.

    Examples
    --------
    >>> confusion_matrix(np.array([0, 1, 1, 255]), np.array([0, 1, 0, 1]), 2).tolist()
    [[1, 0], [1, 1]]
    """
    truth, pred = np.ravel(truth).astype(np.int64), np.ravel(pred).astype(np.int64)
    keep = (truth != ignore) & (pred != ignore) & (truth < n_classes) & (pred < n_classes)
    flat = truth[keep] * n_classes + pred[keep]
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def scores(matrix: np.ndarray, beyond: np.ndarray | None = None) -> dict[str, np.ndarray | float]:
    """Per-class IoU, F1, precision and recall, mean IoU over classes present, pixel accuracy.

    Classes absent from both truth and prediction get NaN and are left out of the mean. `beyond` counts, per
    predicted class, pixels whose truth is known to be none of the matrix's classes (a label class the model
    lacks): false positives of that class, outside the matrix and the pixel accuracy.

    >>> s = scores(np.array([[1, 0], [1, 1]]))
    >>> s["iou"].round(3).tolist(), round(s["mean_iou"], 3)
    ([0.5, 0.5], 0.5)

    Rows are truth, columns prediction: class 0 below has 3 right, 1 missed, none falsely found.

    >>> s = scores(np.array([[3, 1], [0, 2]]))
    >>> [s[k].round(3).tolist() for k in ("precision", "recall", "f1", "iou")], s["pixel_accuracy"]
    ([[1.0, 0.667], [0.75, 1.0], [0.857, 0.8], [0.75, 0.667]], 0.8333333333333334)

    Class 1 found on 2 more pixels that are known to be neither class: 2 right of 5 found.

    >>> scores(np.array([[3, 1], [0, 2]]), beyond=[0, 2])["precision"].round(3).tolist()
    [1.0, 0.4]
    """
    matrix = np.asarray(matrix, np.float64)
    tp = np.diag(matrix)
    fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
    if beyond is not None:
        fp = fp + np.asarray(beyond, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    total = matrix.sum()
    return {
        "iou": iou,
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
    }


def json_ready(value: Any, digits: int | None = None) -> Any:
    """`value` (a number, or lists, tuples and dicts of them) with NaN and infinities as None, floats
    optionally rounded to `digits`: JSON has no NaN, and `scores` gives NaN to classes absent from both
    truth and prediction, so a card holding one was not valid JSON. Reports write such a class as null.

    >>> json_ready({"iou": [0.51234, float("nan")], "mean_iou": np.float64(0.5)}, 2)
    {'iou': [0.51, None], 'mean_iou': 0.5}
    """
    if isinstance(value, dict):
        return {k: json_ready(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(v, digits) for v in value]
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return None
        return float(value) if digits is None else round(float(value), digits)
    if isinstance(value, np.integer):
        return int(value)
    return value
