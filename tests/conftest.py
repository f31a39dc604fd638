"""Fixtures: tiny GeoTIFFs with real CRSs and transforms, and tiny real Keras bundles."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run end-to-end tests with the default model")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _dask_scheduler_kept():
    """Put dask's default scheduler back as each test found it. A Client sets it to itself and its close sets it
    back only where no other Client of the process is alive (distributed's global client): one left alive by an
    earlier test (a connection given up on) left "dask.distributed" set after a later test's clean close, and 13
    tests of another file failed with "no Client active", in one order of the suite and not another. The CLI's
    own leak of it is tested where it was found (`test_a_server_that_sends_eight_bytes...`)."""
    import dask

    before = dask.config.get("scheduler", None)
    yield
    if dask.config.get("scheduler", None) != before:
        if before is None:
            dask.config.config.pop("scheduler", None)
        else:
            dask.config.config["scheduler"] = before


def smooth_image(shape, bands, dtype="uint8", seed=0) -> np.ndarray:
    """(bands, rows, cols) smooth random field scaled to the dtype, so models see structure."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=(bands,) + tuple(shape)), sigma=(0, 4, 4))
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    top = {"uint8": 255, "int8": 127, "uint16": 4000, "int16": 3000, "float32": 1.0}[str(dtype)]
    return (field * top).astype(dtype)


@pytest.fixture
def make_raster(tmp_path):
    """Factory: write a GeoTIFF and return its path."""

    def make(name="image.tif", shape=(64, 80), bands=3, dtype="uint8", crs="EPSG:32640", transform=None,
             nodata=None, data=None, internal_mask=None, seed=0, **profile):
        data = smooth_image(shape, bands, dtype, seed) if data is None else data
        transform = transform or from_origin(500000.0, 2800000.0, 0.5, 0.5)
        path = tmp_path / name
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                           count=data.shape[0], dtype=data.dtype, crs=crs, transform=transform,
                           nodata=nodata, **profile) as ds:
            ds.write(data)
            if internal_mask is not None:
                ds.write_mask(internal_mask.astype(np.uint8) * 255)
        return path

    return make


@pytest.fixture
def make_multi_gpkg(make_raster, tmp_path):
    """Factory: a GeoPackage of two raster tables (as QGIS's or gdal_translate's APPEND_SUBDATASET writes them), each
    a copy of one `make_raster` image; returns (the GeoPackage, the image)."""

    def make(name="multi.gpkg", tables=("scene_a", "scene_b"), shape=(40, 48)):
        image = make_raster(shape=shape)
        with rasterio.open(image) as src:
            data, profile = src.read(), src.profile
        path = tmp_path / name
        for i, table in enumerate(tables):
            with rasterio.open(path, "w", driver="GPKG", width=shape[1], height=shape[0], count=3, dtype="uint8",
                               crs=profile["crs"], transform=profile["transform"], RASTER_TABLE=table,
                               APPEND_SUBDATASET="YES" if i else "NO", TILE_FORMAT="PNG") as ds:
                ds.write(data)
        return path, image

    return make


def _save_bundle(folder: Path, model, card: dict) -> Path:
    from geoseg.models import ModelCard, write_card

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{card['name']}.keras"
    model.save(path)
    write_card(ModelCard.from_dict(card), path.with_suffix(".json"))
    return path


def _tiny_card(name, *, depth, n_classes=3, bands=(1, 2, 3), tile=None, margin=None):
    from geoseg.models import unet_receptive_radius

    return {
        "name": name,
        "version": "test",
        "classes": [{"id": i, "name": f"class{i}", "color": f"#{40 * i:02X}8040"} for i in range(n_classes)],
        "bands": list(bands),
        "normalization": {"method": "scale", "scale": 1 / 255, "offset": 0.0},
        "margin": unet_receptive_radius(depth) if margin is None else margin,
        "tile_size": tile,
        "multiple_of": 2**depth,
    }


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A folder of tiny real Keras bundles with random weights (fixed seed)."""
    import keras

    from geoseg.models import build_unet

    folder = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(1)
    _save_bundle(folder, build_unet(3, 3, depth=2, filters=4, name="tiny"), _tiny_card("tiny-fcn", depth=2))
    keras.utils.set_random_seed(2)
    _save_bundle(folder, build_unet(3, 3, depth=1, filters=4, tile_size=48, name="tiled"),
                 _tiny_card("tiny-tiled", depth=1, tile=48))
    keras.utils.set_random_seed(3)
    _save_bundle(folder, build_unet(2, 1, depth=2, filters=4, name="one"),
                 _tiny_card("tiny-1band", depth=2, n_classes=2, bands=(1,)))
    return folder


@pytest.fixture(scope="session")
def tiny_fcn(model_dir) -> Path:
    return model_dir / "tiny-fcn.keras"


@pytest.fixture(scope="session")
def tiny_tiled(model_dir) -> Path:
    return model_dir / "tiny-tiled.keras"


@pytest.fixture(scope="session")
def tiny_1band(model_dir) -> Path:
    return model_dir / "tiny-1band.keras"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
