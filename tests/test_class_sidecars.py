"""Class names of the masks as GDAL and QGIS read them: category names and a raster attribute table in the
mask's ``.aux.xml`` (a GeoTIFF holds neither), written with the mask and replaced or removed with it."""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import rasterio

import geoseg
from geoseg.models.card import ClassInfo
from geoseg.raster import class_sidecar, write_class_mask, write_class_sidecar, inspect_raster

GDALINFO = shutil.which("gdalinfo")


def names_read(path: Path) -> tuple[list[str], list[list]]:
    """The band's category names and the attribute table's rows (value, class, r, g, b, a), as GDAL reads them
    (`gdalinfo -json`, as QGIS's GDAL does); without gdalinfo, from the sidecar's XML."""
    if GDALINFO:
        info = json.loads(subprocess.run([GDALINFO, "-json", str(path)], check=True, capture_output=True,
                                         text=True).stdout)
        return info["bands"][0].get("categories", []), [row["f"] for row in info.get("rat", {}).get("row", [])]
    band = ET.parse(class_sidecar(path)).getroot().find("PAMRasterBand")
    rows = [[f.text for f in row.iter("F")] for row in band.iter("Row")]
    return ([c.text or "" for c in band.iter("Category")],
            [[int(r[0]), r[1], *map(int, r[2:])] for r in rows])


def test_sidecar_names_classes_with_gaps_and_markup(tmp_path):
    mask = tmp_path / "m.tif"
    with rasterio.open(mask, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8", nodata=255) as ds:
        ds.write(np.zeros((1, 4, 4), np.uint8))
    classes = [ClassInfo(0, "sand & gravel", "#112233"), ClassInfo(2, "forêt <old>", "#445566")]
    write_class_sidecar(class_sidecar(mask), classes)
    categories, rows = names_read(mask)
    assert categories == ["sand & gravel", "", "forêt <old>"]  # value 1 has no class; 255 (nodata) none
    assert rows == [[0, "sand & gravel", 0x11, 0x22, 0x33, 255], [2, "forêt <old>", 0x44, 0x55, 0x66, 255]]
    with rasterio.open(mask) as ds:  # the sidecar adds names; the pixels, nodata and tags GDAL reads are the file's
        assert ds.nodata == 255 and ds.read(1).sum() == 0


def test_segment_writes_names_and_a_rerun_of_other_classes_replaces_them(make_raster, tmp_path, tiny_fcn):
    image = make_raster(shape=(64, 80))
    out = tmp_path / "out"
    result = geoseg.segment(image, out, model="threshold", confidence=True, preview=False)
    mask = Path(result.outputs["mask"])
    assert class_sidecar(mask).is_file()
    categories, rows = names_read(mask)
    assert categories == [c["name"] for c in result.classes]
    assert [r[:2] for r in rows] == [[c["id"], c["name"]] for c in result.classes]
    # GDAL's statistics of the old rasters (gdalinfo -stats) sit in the same sidecars
    confidence = Path(result.outputs["confidence"])
    class_sidecar(confidence).write_text('<PAMDataset><PAMRasterBand band="1"><Metadata><MDI key="STATISTICS_MAXIMUM">'
                                         "7</MDI></Metadata></PAMRasterBand></PAMDataset>")
    again = geoseg.segment(image, out, model=str(tiny_fcn), confidence=True, preview=False, overwrite=True)
    categories, rows = names_read(mask)
    assert categories == [c["name"] for c in again.classes] != [c["name"] for c in result.classes]
    assert len(rows) == len(again.classes)
    assert not class_sidecar(confidence).exists()  # its statistics were of the old pixels
    # no sidecar beside the staged copies, and none left in the folder but the mask's
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [mask.name, class_sidecar(mask).name, mask.with_suffix(".qml").name, confidence.name])


def test_mask_of_a_workflow_and_a_survey_mosaic_name_their_classes(make_raster, tmp_path):
    image = make_raster(shape=(40, 48))
    info = inspect_raster(image)
    classes = (ClassInfo(0, "dry", "#D9D0B8"), ClassInfo(1, "water", "#1F5FBF"))
    out = tmp_path / "flood" / "water.tif"
    out.parent.mkdir()
    write_class_mask(out, info, classes, lambda w: np.ones((w.height, w.width), np.uint8))
    assert names_read(out)[0] == ["dry", "water"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["water.tif", "water.tif.aux.xml"]  # nothing staged left

    surveyed = geoseg.survey([image], tmp_path / "survey", model="threshold", vector=False, preview=False)
    mosaic = Path(surveyed.outputs["masks"])
    categories, rows = names_read(mosaic)
    assert categories == ["other", "water", "vegetation"] and [r[1] for r in rows] == categories
    assert names_read(Path(surveyed.done[0]["outputs"]["mask"]))[0] == categories


def test_flood_method_switch_removes_the_earlier_masks_sidecar(make_raster, tmp_path):
    image = make_raster(shape=(40, 48), bands=4)
    out = tmp_path / "flood"
    geoseg.flood(image, out, model="threshold")
    earlier = next((out / "post").glob("*_mask.tif"))
    assert class_sidecar(earlier).is_file() and class_sidecar(out / "flood.tif").is_file()
    geoseg.flood(image, out, method="ndwi", green_band=2, nir_band=4, overwrite=True)
    assert not earlier.exists() and not class_sidecar(earlier).exists()
    water = next((out / "post").glob("*_water.tif"))
    assert names_read(water)[0] == ["dry", "water"]
    assert names_read(out / "flood.tif")[0] == ["dry", "water"]
