"""The sieve: specks filled from their neighbours, the same block by block as on the whole mask."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from skimage.measure import label

from geoseg.sieve import sieve_array, sieve_mask


def _noisy_mask(shape=(150, 170), seed=0, noise=0.08):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 4, (shape[0] // 10 + 1, shape[1] // 10 + 1)).repeat(10, 0).repeat(10, 1)[: shape[0], : shape[1]]
    specks = rng.random(shape) < noise
    mask[specks] = rng.integers(0, 4, specks.sum())
    return mask.astype(np.uint8)


def _region_sizes(mask):
    labels = label(mask, background=255, connectivity=2)
    return np.bincount(labels.ravel())[1:]


def test_specks_take_the_classes_around_them_and_nodata_stays():
    mask = np.zeros((12, 12), np.uint8)
    mask[:, 6:] = 1
    mask[3, 2] = 2  # a one-pixel speck inside class 0
    mask[8, 5:7] = 3  # a speck on the border of 0 and 1: split between them
    mask[0:2, 10:12] = 255  # nodata
    mask[11, 11] = 255
    out = sieve_array(mask, 3)
    assert out[3, 2] == 0 and out[8, 5] == 0 and out[8, 6] == 1
    assert (out == 255).sum() == 5 and out[11, 11] == 255
    assert (out[mask < 2] == mask[mask < 2]).all()  # the large regions are untouched
    lone = np.full((5, 5), 255, np.uint8)
    lone[2, 2] = 1  # a speck that touches only nodata has nothing to take: it stays
    assert (sieve_array(lone, 3) == lone).all()


def test_no_region_below_the_size_is_left():
    mask = _noisy_mask()
    assert _region_sizes(mask).min() < 20
    out = sieve_array(mask, 20)
    assert _region_sizes(out).min() >= 20
    assert (out != mask).sum() < 0.1 * mask.size


@pytest.mark.parametrize("block", [32, 50, 64])
def test_block_by_block_equals_the_whole_mask(tmp_path, block):
    mask = _noisy_mask(seed=block)
    mask[:40, :30] = 255
    mask[70, :] = 3  # a one-pixel line of 170 px across every block: large, though each block sees a piece
    profile = dict(driver="GTiff", width=mask.shape[1], height=mask.shape[0], count=1, dtype="uint8", nodata=255,
                   tiled=True, blockxsize=16, blockysize=16, crs="EPSG:32640", transform=from_origin(0, 0, 1, 1))
    src = tmp_path / "mask.tif"
    with rasterio.open(src, "w", **profile) as ds:
        ds.write(mask, 1)
    whole = sieve_array(mask, 25)
    with rasterio.open(tmp_path / "sieved.tif", "w", **profile) as out:
        changed = sieve_mask(src, out, 25, block=block)
    with rasterio.open(tmp_path / "sieved.tif") as ds:
        got = ds.read(1)
    assert (got == whole).all() and changed == (whole != mask).sum() > 0
    assert (got[70] == 3).all()


def test_a_margin_below_the_size_never_removes_a_larger_region(tmp_path):
    """Above MAX_SIEVE_MARGIN a block sees only part of a long region; the part may be smaller than the size."""
    mask = np.zeros((120, 120), np.uint8)
    mask[:, 60:] = 1
    rows = np.arange(120)
    mask[rows, rows] = 2  # a one-pixel diagonal of 120 px: each 20 px window sees about 20 of them
    assert _region_sizes(mask).min() >= 30
    profile = dict(driver="GTiff", width=120, height=120, count=1, dtype="uint8", nodata=255, tiled=True,
                   blockxsize=16, blockysize=16, crs="EPSG:32640", transform=from_origin(0, 0, 1, 1))
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as ds:
        ds.write(mask, 1)
    with rasterio.open(tmp_path / "sieved.tif", "w", **profile) as out:
        assert sieve_mask(tmp_path / "mask.tif", out, 30, block=16, margin=2) == 0


def test_segment_sieves_the_mask_before_areas_polygons_and_preview(make_raster, tiny_fcn, tmp_path):
    import geopandas as gpd
    from click.testing import CliRunner

    from geoseg import segment
    from geoseg.cli import main

    path = make_raster(shape=(96, 110), seed=3)
    plain = segment(path, tmp_path / "plain", model=tiny_fcn, chunk=32, preview=False)
    with rasterio.open(plain.outputs["mask"]) as ds:
        before = ds.read(1)
    assert _region_sizes(before).min() < 12
    run = CliRunner().invoke(main, ["segment", str(path), "-o", str(tmp_path / "sieved"), "-m", str(tiny_fcn),
                                    "--chunk", "32", "--sieve", "12", "--vector", "--json", "--quiet"])
    assert run.exit_code == 0, run.output
    import json

    result = json.loads(run.stdout)
    with rasterio.open(result["outputs"]["mask"]) as ds:
        after = ds.read(1)
        assert ds.colormap(1)[0] == plain_colour(plain) and ds.tags()["CLASS_NAMES"]
    assert (after == sieve_array(before, 12)).all() and _region_sizes(after).min() >= 12
    assert result["plan"]["sieve"] == 12
    assert [c["pixels"] for c in result["classes"]] == [int((after == c["id"]).sum()) for c in result["classes"]]
    polygons = gpd.read_file(result["outputs"]["vector"])  # polygons are 4-connected regions
    assert len(polygons) == label(after, background=255, connectivity=1).max()


def plain_colour(result):
    with rasterio.open(result.outputs["mask"]) as ds:
        return ds.colormap(1)[0]


def test_a_field_of_specks_takes_the_nearest_larger_regions():
    rng = np.random.default_rng(4)
    mask = rng.integers(2, 20, (60, 60)).astype(np.uint8)  # salt and pepper: every region a speck
    mask[:, :8] = 0
    mask[:, -8:] = 1
    out = sieve_array(mask, 50)
    assert set(np.unique(out)) == {0, 1} and _region_sizes(out).min() >= 50
    assert (out[:, :25] == 0).all() and (out[:, -25:] == 1).all()  # split down the middle


def test_where_no_region_is_large_enough_nothing_changes_and_nodata_never_spreads():
    """With no region of the size, the distance transform had nothing to measure from and copied one corner
    pixel everywhere: a cloud-masked scene came out all nodata."""
    rng = np.random.default_rng(5)
    mask = rng.integers(0, 5, (64, 64)).astype(np.uint8)
    mask[-10:] = 255
    assert (sieve_array(mask, 1000) == mask).all()
    islands = np.full((60, 60), 255, np.uint8)  # data in islands of specks between clouds, one island larger
    islands[2:27, 2:27] = rng.integers(0, 5, (25, 25))  # more than 1/8 specks: the distance transform
    islands[30:60, 30:60] = 1
    islands[40:45, 40:45] = rng.integers(2, 5, (5, 5))
    out = sieve_array(islands, 200)
    assert (out[2:27, 2:27] == islands[2:27, 2:27]).all()  # cut off by nodata from any large region: kept
    assert (out[30:60, 30:60] == 1).all() and (out == 255).sum() == (islands == 255).sum()


def test_a_size_above_every_region_changes_nothing_block_by_block(tmp_path):
    """Regions at a block's inner edge were taken as sources: PX 10**12 rewrote most of a multi-block mask."""
    mask = _noisy_mask((150, 170), noise=0.0)  # blobs of 100 px
    profile = dict(driver="GTiff", width=170, height=150, count=1, dtype="uint8", nodata=255, tiled=True,
                   blockxsize=16, blockysize=16, crs="EPSG:32640", transform=from_origin(0, 0, 1, 1))
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as ds:
        ds.write(mask, 1)
    with rasterio.open(tmp_path / "sieved.tif", "w", **profile) as out:
        assert sieve_mask(tmp_path / "mask.tif", out, 10**12, block=48, margin=8) == 0  # as MAX_SIEVE_MARGIN on large masks


def test_specks_never_take_a_class_from_across_nodata():
    """The one-pass fill for fields of specks took the nearest known pixel, across a line of nodata."""
    rng = np.random.default_rng(7)
    mask = rng.integers(2, 20, (40, 40)).astype(np.uint8)  # a field of specks on the right
    mask[:, :10] = 1  # a large region on the left, behind
    mask[:, 10] = 255  # a line of nodata
    mask[15:25, 25:35] = 0  # the large region on the specks' side
    out = sieve_array(mask, 50)
    assert (out[:, 11:] == 0).all() and (out[:, :10] == 1).all() and (out[:, 10] == 255).all()
