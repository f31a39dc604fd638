"""Workflows end to end on small real GeoTIFFs: scene composition, zones in another CRS."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.errors import InputError
from geoseg.workflows import scene


def test_scene_with_zones_in_another_crs(make_raster, tiny_fcn, tmp_path):
    path = make_raster(shape=(100, 120))  # 0.5 m pixels from (500000, 2800000), EPSG:32640
    x0, y0 = 500000.0, 2800000.0
    zones = gpd.GeoDataFrame(
        {"district": ["west", "east"]},
        geometry=[shapely.box(x0, y0 - 50, x0 + 30, y0), shapely.box(x0 + 30, y0 - 50, x0 + 60, y0)],
        crs="EPSG:32640",
    ).to_crs("EPSG:4326")
    zones.to_file(tmp_path / "zones.gpkg")
    result = scene(path, tmp_path / "out", zones=tmp_path / "zones.gpkg", zone_field="district", model=tiny_fcn)
    assert sum(r["share_pct"] for r in result.composition) == pytest.approx(100)
    assert sum(r["area_m2"] for r in result.composition) == pytest.approx(100 * 120 * 0.25)
    by_zone = {z["zone"]: z for z in result.zones}
    assert by_zone["west"]["pixels"] == by_zone["east"]["pixels"] == 60 * 100
    with rasterio.open(result.outputs["mask"]) as ds:
        mask = ds.read(1)
    west_share = 100 * (mask[:, :60] == 0).mean()
    assert by_zone["west"]["class0_pct"] == pytest.approx(west_share, abs=1e-3)
    layer = gpd.read_file(result.outputs["zones"])
    assert {"class0_m2", "class0_pct", "district"} <= set(layer.columns) and layer.crs == "EPSG:4326"
    with open(result.outputs["report"]) as f:
        assert json.load(f)["zones"][0]["zone"] == "west"


def test_scene_cli_and_bad_zones(make_raster, tiny_fcn, tmp_path):
    path = make_raster(shape=(40, 40))
    result = CliRunner().invoke(main, ["scene", str(path), "-o", str(tmp_path / "out"), "-m", str(tiny_fcn),
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["composition"]) == 3
    (tmp_path / "zones.gpkg").write_text("not a layer")
    with pytest.raises(InputError, match="cannot read this zones layer"):
        scene(path, tmp_path / "out2", zones=tmp_path / "zones.gpkg", model=tiny_fcn)
    bad = CliRunner().invoke(main, ["scene", str(path), "-o", str(tmp_path / "o3"), "-m", str(tiny_fcn),
                                    "--zones", str(tmp_path / "missing.gpkg")])
    assert bad.exit_code == 1 and "no such zones layer" in bad.output
