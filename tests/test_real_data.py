"""Workflows on real georeferenced rasters from ../shared/data; skipped when the folder is absent."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from geoseg.raster import inspect_raster, pixel_areas_m2
from geoseg.vector import vectorize

pytestmark = pytest.mark.data


def _as_class_mask(src, out):
    """A 0/255 label raster as a geoseg-style class mask: 0 background, 1 object."""
    import json

    with rasterio.open(src) as ds:
        data = (ds.read(1) > 0).astype("uint8")
        profile = {**ds.profile, "nodata": 255, "dtype": "uint8", "count": 1}
    with rasterio.open(out, "w", **profile) as ds:
        ds.write(data, 1)
        ds.update_tags(CLASS_NAMES=json.dumps({"0": "background", "1": "road"}))
    return data


def test_geographic_road_mask_areas_are_geodesic(shared_data, tmp_path):
    mask = tmp_path / "roads.tif"
    data = _as_class_mask(shared_data / "spacenet_roads" / "sample_road_raster_mask.tif", mask)
    result = vectorize(mask, tmp_path / "roads.gpkg", keep=["road"], block=256)
    layer = gpd.read_file(tmp_path / "roads.gpkg")
    assert result.polygons == len(layer) > 0 and layer.crs == "EPSG:4326"
    row_areas = pixel_areas_m2(inspect_raster(mask))
    expected = float((data == 1).sum(axis=1) @ row_areas)
    assert layer.area_m2.sum() == pytest.approx(expected, rel=1e-3)
    with rasterio.open(mask) as ds:  # polygons sit on the raster's footprint: a transform round trip
        assert shapely.box(*ds.bounds).buffer(1e-9).contains(shapely.union_all(layer.geometry.values))
    # and the blockwise result equals one pass over the whole mask
    whole = vectorize(mask, tmp_path / "whole.gpkg", keep=["road"], block=4096)
    assert whole.polygons == result.polygons


def test_landsat_scene_with_zones_in_wgs84(shared_data, tmp_path):
    import rasterio.warp  # not imported by rasterio itself: the test failed when run alone

    from geoseg.workflows import scene

    path = shared_data / "landsat_rgb_byte" / "RGB.byte.tif"
    with rasterio.open(path) as ds:
        left, bottom, right, top = rasterio.warp.transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
        valid = (ds.dataset_mask() > 0).sum()
    mid = (left + right) / 2
    zones = gpd.GeoDataFrame({"half": ["west", "east"]},
                             geometry=[shapely.box(left - 1, bottom - 1, mid, top + 1),
                                       shapely.box(mid, bottom - 1, right + 1, top + 1)], crs="EPSG:4326")
    zones.to_file(tmp_path / "halves.gpkg")
    result = scene(path, tmp_path / "out", zones=tmp_path / "halves.gpkg", zone_field="half", chunk=512)
    assert sum(z["pixels"] for z in result.zones) == valid  # every valid pixel in exactly one half
    # of the ground, as QGIS's ellipsoidal $area: UTM 18N's areal scale strays over 0.1% across this scene, and
    # the planar valid * 300.0379 * 300.0418 m² is 0.12% over (h127); measured here from the valid footprint
    from pyproj import Geod
    from rasterio.features import shapes

    with rasterio.open(path) as ds:
        footprint = [shapely.segmentize(shapely.geometry.shape(g), 300.0) for g, v in
                     shapes(ds.dataset_mask(), transform=ds.transform) if v > 0]
        ground = gpd.GeoSeries(footprint, crs=ds.crs).to_crs("EPSG:4326")
    truth = sum(abs(Geod(ellps="WGS84").geometry_area_perimeter(g)[0]) for g in ground)
    assert sum(r["area_m2"] for r in result.composition) == pytest.approx(truth, rel=1e-4)
    assert abs(truth / (valid * 300.0379 * 300.0418) - 1) > 1e-3


@pytest.mark.parametrize(
    "threshold, recall, false_alarms",
    [
        ("otsu", 0.7, 0.3),  # raw digital numbers: Otsu's cut finds water, with developed land mixed in
        (0.3, 0.6, 0.03),  # a fixed cut trades a little recall for few false alarms
    ],
)
def test_ndwi_flood_on_landsat_bands(shared_data, tmp_path, threshold, recall, false_alarms):
    """Water by NDWI from Landsat 7 green (B2) and NIR (B4), checked against the labelled water polygons."""
    from geoseg.workflows import flood

    folder = shared_data / "nc_landsat"
    stack = tmp_path / "green_nir.tif"
    with rasterio.open(folder / "lsat7_2000_20.tif") as g, rasterio.open(folder / "lsat7_2000_40.tif") as n:
        profile = {**g.profile, "count": 2, "dtype": "float32"}
        with rasterio.open(stack, "w", **profile) as ds:
            ds.write(np.stack([g.read(1), n.read(1)]).astype("float32"))
    result = flood(stack, tmp_path / "out", method="ndwi", green_band=1, nir_band=2, ndwi_threshold=threshold)
    with rasterio.open(result.outputs["tif"]) as ds:
        flood_mask = ds.read(1)
    with rasterio.open(folder / "landsat96_labelled_pixels.tif") as ds:
        labels = np.where(flood_mask == 255, 0, ds.read(1))  # labels where the image has data
    water = flood_mask == 1
    assert water[labels == 6].mean() > recall  # labelled water is found
    assert water[(labels >= 1) & (labels <= 5)].mean() < false_alarms  # labelled land mostly is not
