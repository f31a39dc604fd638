"""Classical baselines as registered models, through the same tiled pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from geoseg import segment
from geoseg.models import list_models
from geoseg.models.classical import otsu_threshold


def _scene(rows=120, cols=150, nir=False, seed=0):
    """Sand with a blue-green lake and a green park; truth 0 other, 1 water, 2 vegetation."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((rows, cols), np.uint8)
    truth[20:70, 10:60] = 1
    truth[60:110, 90:140] = 2
    colours = {0: (200, 175, 130, 210), 1: (40, 90, 110, 20), 2: (70, 110, 50, 160)}  # R, G, B, NIR
    image = np.zeros((4, rows, cols), np.float32)
    for value, rgbn in colours.items():
        image[:, truth == value] = np.array(rgbn, np.float32)[:, None]
    image = np.clip(image + rng.normal(0, 6, image.shape), 1, 255).astype(np.uint8)
    return (image if nir else image[:3]), truth


@pytest.mark.parametrize("name", ["threshold", "region-growing", "edges-watershed", "threshold-nir"])
def test_baselines_find_water_and_vegetation(make_raster, tmp_path, name):
    image, truth = _scene(nir=name.endswith("nir"))
    path = make_raster(data=image)
    result = segment(path, tmp_path / "out", model=name, chunk=64, preview=False)
    with rasterio.open(result.outputs["mask"]) as ds:
        mask = ds.read(1)
    for cls in (1, 2):
        iou = ((mask == cls) & (truth == cls)).sum() / ((mask == cls) | (truth == cls)).sum()
        assert iou > 0.9, (name, cls, iou)


def test_thresholds_come_from_the_whole_raster_not_the_chunk(make_raster, tmp_path):
    """A chunk holding only sand must not split sand by its own Otsu cut."""
    image, truth = _scene()
    path = make_raster(data=image)
    chunked = segment(path, tmp_path / "a", model="threshold", chunk=16, preview=False)
    whole = segment(path, tmp_path / "b", model="threshold", chunk=1024, preview=False)
    with rasterio.open(chunked.outputs["mask"]) as a, rasterio.open(whole.outputs["mask"]) as b:
        assert (a.read(1) == b.read(1)).all()


def test_baselines_are_listed_and_evaluated_with_other(make_raster, tmp_path):
    from geoseg.workflows.evaluate import evaluate

    names = {m.name: m.source for m in list_models()}
    assert names["threshold"] == names["region-growing"] == names["edges-watershed"] == "built-in"
    image, truth = _scene()
    path = make_raster(data=image)
    # labels in a land-cover set: "land" and "building" are not baseline classes -> scored as "other"
    label = np.select([truth == 1, truth == 2], [3, 2], 0).astype(np.uint8)
    label[:5, :5] = 1
    label_path = tmp_path / "label.tif"
    with rasterio.open(label_path, "w", driver="GTiff", width=150, height=120, count=1, dtype="uint8") as ds:
        ds.write(label, 1)
    result = evaluate("threshold", [path], [label_path], label_names=["land", "building", "vegetation", "water"])
    assert result.per_class["water"]["iou"] > 0.9 and result.per_class["other"]["iou"] > 0.9
    assert "scored as its 'other' class: building, land" in result.notes[0]


def test_otsu_splits_two_modes():
    values = np.r_[np.random.default_rng(0).normal(-0.5, 0.05, 1000), np.random.default_rng(1).normal(0.4, 0.05, 300)]
    counts, edges = np.histogram(values, bins=200, range=(-1, 1))
    assert -0.35 < otsu_threshold(counts, edges) < 0.25
