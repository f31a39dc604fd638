"""segment(): seams, georeferencing, nodata, dtypes, band selection, atomic outputs, COG."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp, Resampling
import shapely
from rasterio.transform import from_origin

from geoseg import segment
from geoseg.errors import BandError, InputError, OutputError, RasterReadError, TilingError
from geoseg.inference import predict_image
from geoseg.models import get_segmenter


def _read(path, band=1):
    with rasterio.open(path) as ds:
        return ds.read(band)


def _whole_image_mask(model, path, bands=None):
    segmenter = get_segmenter(model)
    with rasterio.open(path) as ds:
        image = np.moveaxis(ds.read(list(bands or segmenter.card.bands)), 0, -1)
    return predict_image(segmenter, image).argmax(-1)


@pytest.mark.parametrize(
    "shape, chunk",
    [
        ((150, 170), 32),  # many chunks, neither side a multiple of the chunk
        ((150, 170), 64),  # fewer, larger chunks
        ((97, 203), 48),  # chunk not a multiple of the model's step: rounded up
        ((150, 170), 1024),  # a single chunk
        ((131, 140), 40),  # last chunk shorter than the margin: merged into its neighbour
    ],
)
def test_tiled_run_equals_whole_image_run(make_raster, tiny_fcn, tmp_path, shape, chunk):
    path = make_raster(shape=shape, seed=shape[0])
    result = segment(path, tmp_path / "out", model=tiny_fcn, chunk=chunk, preview=False)
    mask = _read(result.outputs["mask"])
    reference = _whole_image_mask(tiny_fcn, path)
    identical = (mask == reference).mean()
    assert identical >= 0.9999, f"identical fraction {identical}"
    assert len(np.unique(reference)) > 1  # the check is not vacuous


def test_tiled_run_equals_keras_on_the_whole_image_without_geoseg(make_raster, tiny_fcn, tmp_path):
    """The reference above is geoseg's own predict_image, which shares its normalisation and crop with the
    pipeline: a bug in both passed. Here Keras sees the image as numpy mirrors and scales it, with a
    --normalize override that the pipeline must apply in every chunk (dropping it in the chunks passed)."""
    import keras

    path = make_raster(shape=(150, 170), seed=3)
    norm = {"method": "scale", "scale": 0.004, "offset": -0.3}  # not the card's 1/255
    result = segment(path, tmp_path / "out", model=tiny_fcn, chunk=48, normalization=norm, preview=False)
    default = segment(path, tmp_path / "default", model=tiny_fcn, chunk=48, preview=False)
    margin = result.plan["margin"]
    with rasterio.open(path) as ds:
        image = np.moveaxis(ds.read(), 0, -1).astype(np.float32) * 0.004 - 0.3
    x = np.pad(image, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")  # the raster's edge mirrored
    x = np.pad(x, ((0, -x.shape[0] % 4), (0, -x.shape[1] % 4), (0, 0)))  # the U-Net's step; past the margin
    probabilities = keras.saving.load_model(tiny_fcn, compile=False).predict(x[None], verbose=0)[0]
    reference = probabilities[margin : margin + 150, margin : margin + 170].argmax(-1)
    mask = _read(result.outputs["mask"])
    assert (mask == reference).mean() >= 0.999
    assert (_read(default.outputs["mask"]) != mask).mean() > 0.01  # the override changed the answer


@pytest.mark.parametrize("chunk", [30, 60, 90])
def test_fixed_tile_model_is_independent_of_chunk(make_raster, tiny_tiled, tmp_path, chunk):
    path = make_raster(shape=(101, 77), seed=4)
    result = segment(path, tmp_path / f"out{chunk}", model=tiny_tiled, chunk=chunk, preview=False)
    reference = _whole_image_mask(tiny_tiled, path)
    assert (_read(result.outputs["mask"]) == reference).mean() >= 0.9999
    assert result.plan["tile"] == 48


@pytest.mark.parametrize("tile", [70, 94])  # cores of 24 and 48 px, inputs padded to the pooling step
def test_fully_convolutional_model_fed_tiles(make_raster, tiny_fcn, tmp_path, tile):
    path = make_raster(shape=(123, 99), seed=7)
    result = segment(path, tmp_path / "out", model=tiny_fcn, chunk=96, tile=tile, batch_size=3, preview=False)
    assert (_read(result.outputs["mask"]) == _whole_image_mask(tiny_fcn, path)).mean() >= 0.9999


def test_output_keeps_georeferencing_and_describes_classes(make_raster, tiny_fcn, tmp_path):
    transform = from_origin(300000.0, 5000000.0, 2.0, 2.0)
    path = make_raster(shape=(600, 700), crs="EPSG:32633", transform=transform)
    result = segment(path, tmp_path / "out", model=tiny_fcn, chunk=256, confidence=True, probabilities=True)
    with rasterio.open(path) as src, rasterio.open(result.outputs["mask"]) as ds:
        assert (ds.width, ds.height, ds.crs, ds.transform) == (src.width, src.height, src.crs, src.transform)
        assert ds.dtypes == ("uint8",) and ds.nodata == 255
        assert ds.colormap(1)[0][:3] == (0, 128, 64)
        assert json.loads(ds.tags()["CLASS_NAMES"]) == {"0": "class0", "1": "class1", "2": "class2"}
        assert ds.profile["tiled"] and ds.compression.name.lower() == "deflate"
        assert ds.overviews(1), "COG should carry overviews"
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    with rasterio.open(result.outputs["probabilities"]) as ds:
        proba = ds.read()
        assert ds.colorinterp[0] == ColorInterp.gray  # 3 byte bands: GDAL's RGB, which QGIS showed as a colour image
        assert ds.units == ("%", "%", "%")  # the band unit QGIS shows; the UNITS tag alone was geoseg's (h144)
    with rasterio.open(result.outputs["confidence"]) as ds:
        assert ds.units == ("%",)
    assert proba.shape[0] == 3
    assert np.abs(proba.astype(int).sum(0) - 100).max() <= 2  # percent, rounding
    confidence = _read(result.outputs["confidence"])
    assert (confidence == proba.max(0)).all()
    areas = {c["name"]: c["area_m2"] for c in result.classes}
    pixels = {c["name"]: c["pixels"] for c in result.classes}
    assert sum(pixels.values()) == 600 * 700
    assert all(areas[k] == pytest.approx(4.0 * pixels[k]) for k in areas)  # 2 m pixels


@pytest.mark.parametrize("how", ["nodata", "internal_mask", "alpha"])
def test_nodata_becomes_255(make_raster, tiny_fcn, tmp_path, how):
    data = np.full((3, 70, 90), 120, np.uint8)
    data[:, :, :30] = 200
    hole = np.zeros((70, 90), bool)
    hole[10:30, 40:70] = True
    kwargs = {}
    if how == "nodata":
        data[:, hole] = 0
        kwargs["nodata"] = 0
    elif how == "internal_mask":
        kwargs["internal_mask"] = ~hole
    else:
        data = np.concatenate([data, np.where(hole, 0, 255).astype(np.uint8)[None]])
        kwargs["photometric"] = "rgb"
        kwargs["alpha"] = "YES"
    path = make_raster(data=data, **kwargs)
    result = segment(path, tmp_path / "out", model=tiny_fcn, chunk=32, confidence=True)
    mask = _read(result.outputs["mask"])
    assert (mask[hole] == 255).all()
    assert (mask[~hole] < 3).all()
    assert (_read(result.outputs["confidence"])[hole] == 255).all()
    assert sum(c["pixels"] for c in result.classes) == (~hole).sum()


def test_nodata_is_filled_with_the_data_mirrored_across_the_footprints_edge():
    """Zeros at a footprint's edge (a flat mid-grey to a -1..1 model) cost 1.8 points of pixel accuracy within 20 px
    of the edge on held-out tiles; the raster's own edge is mirrored, and so is a footprint's now."""
    from geoseg.pipeline import fill_nodata

    x = np.random.default_rng(0).normal(size=(6, 10, 2)).astype(np.float32)
    valid = np.ones((6, 10), bool)
    assert fill_nodata(x.copy(), valid).tobytes() == x.tobytes()  # no nodata: untouched
    valid[:, 6:] = False  # columns 6-9 nodata: column 6 mirrors 4, 7 mirrors 3, ...
    filled = fill_nodata(x.copy(), valid)
    assert (filled[:, :6] == x[:, :6]).all()
    assert all((filled[:, c] == x[:, 10 - c]).all() for c in range(6, 10))
    valid[:, :] = False
    valid[2, 2] = True  # the mirror of most pixels is nodata too: the nearest valid pixel
    filled = fill_nodata(x.copy(), valid)
    assert (filled == x[2, 2]).all()
    assert (fill_nodata(x.copy(), np.zeros((6, 10), bool)) == 0).all()


def test_chunks_without_data_of_their_own_call_no_model(make_raster, tiny_fcn, tmp_path, monkeypatch):
    """A drone ortho mostly outside its flight's footprint ran the U-Net over every empty chunk: 90.9 s against
    14.4 s for its data alone. Chunks whose own pixels are all nodata now skip the model, with the same mask."""
    import geoseg.pipeline as pipeline_module

    data = np.full((3, 128, 160), 120, np.uint8)
    data[:, :, 70:] = 200
    data[:, 40:, :] = 0  # data in the top 40 rows only: the chunks below have none of their own
    path = make_raster(data=data, nodata=0)
    calls = []
    predict = pipeline_module.predict_block
    monkeypatch.setattr(pipeline_module, "predict_block", lambda *a, **k: (calls.append(1), predict(*a, **k))[1])
    skipped = segment(path, tmp_path / "skipped", model=tiny_fcn, chunk=32, confidence=True, probabilities=True)
    assert len(calls) == 10  # the two rows of chunks that hold rows 0-39, of four rows of five
    full = segment(path, tmp_path / "full", model=tiny_fcn, chunk=128, confidence=True, probabilities=True)
    for name in ("mask", "confidence", "probabilities"):
        with rasterio.open(skipped.outputs[name]) as a, rasterio.open(full.outputs[name]) as b:
            first, second = a.read(), b.read()
            assert first.shape == second.shape and (first[:, 40:] == 255).all()
            assert (first[:, :40] == second[:, :40]).all(), name
    assert sum(c["pixels"] for c in skipped.classes) == 40 * 160


def test_an_alpha_band_read_as_data_is_warned_of_and_still_marks_nodata(make_raster, tmp_path, caplog):
    """An RGBA drone ortho through a four-band model: its alpha was read as a band of data, every pixel valid
    (the fill outside the footprint classed, 512,556 px of it 'water'), and nothing said so."""
    data = np.random.default_rng(0).integers(30, 200, (4, 40, 50)).astype(np.uint8)
    data[3] = 255
    data[3, :, 30:] = 0  # outside the footprint
    data[:3, :, 30:] = 0
    path = make_raster(data=data, photometric="rgb", alpha="YES")
    result = segment(path, tmp_path / "out", model="threshold-nir", preview=False)
    assert "band 4, which the model reads as its band 4, is tagged alpha (transparency)" in caplog.text
    mask = _read(result.outputs["mask"])
    assert (mask[:, 30:] == 255).all() and (mask[:, :30] != 255).all()
    # R,G,B,NIR,alpha (a multispectral ortho): GDAL makes no mask of an alpha that is not the last of 2 or 4 bands,
    # and the transparent half was classed even with the alpha left unread
    five = np.concatenate([data[:3], data[:1], data[3:]])
    path = make_raster(name="five.tif", data=five)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined,
                          ColorInterp.alpha]
    mask = _read(segment(path, tmp_path / "five", model="threshold-nir", preview=False).outputs["mask"])
    assert (mask[:, 30:] == 255).all() and (mask[:, :30] != 255).all()


def test_an_alpha_band_beside_a_nodata_value_both_mark_nodata_without_rasterios_warning(make_raster, tmp_path):
    """An RGBA ortho with nodata 0 as well: every read printed rasterio's NodataShadowWarning, that the nodata value
    decides the mask, twice per run and with the source line of geoseg's read, while geoseg reads the alpha
    too. Both mark nodata: the transparent pixels and those of value 0; the preview's whole-raster sample (the
    baselines' calibration) took the transparent ones as data."""
    from geoseg.raster import read_preview

    data = np.random.default_rng(0).integers(30, 200, (4, 40, 50)).astype(np.uint8)
    data[3] = 255
    data[3, :, 30:] = 0  # transparent, its colours not 0
    data[:, :10, :10] = 0  # of the nodata value
    path = make_raster(data=data, photometric="rgb", alpha="YES", nodata=0)
    result = segment(path, tmp_path / "out", model="threshold", preview=True)  # warnings are errors here
    mask = _read(result.outputs["mask"])
    nodata = np.zeros((40, 50), bool)
    nodata[:, 30:] = nodata[:10, :10] = True
    assert ((mask == 255) == nodata).all()
    valid = read_preview(path, [1, 2, 3], 50, min_side=1, mask=True)
    assert (valid == ~nodata).all()


def test_nan_pixels_of_a_float_raster_are_nodata(make_raster, tiny_fcn, tmp_path):
    """NaN without a nodata tag was fed to the model: it spread through every window that saw it
    (the default model called a whole raster land) and the preview came out black."""
    from scipy.ndimage import gaussian_filter

    data = gaussian_filter(np.random.default_rng(0).normal(size=(3, 70, 90)), (0, 4, 4)).astype(np.float32)
    data = (data - data.min()) / np.ptp(data) * 255
    hole = np.zeros((70, 90), bool)
    hole[10:30, 40:70] = True
    nan = data.copy()
    nan[0, hole] = np.nan  # one band is enough
    tagged = data.copy()
    tagged[:, hole] = -1.0
    runs = [segment(make_raster(name, data=d, **kw), tmp_path / f"out-{name}", model=tiny_fcn, chunk=32, preview=True)
            for name, d, kw in (("nan.tif", nan, {}), ("tagged.tif", tagged, {"nodata": -1.0}))]
    masks = [_read(r.outputs["mask"]) for r in runs]
    assert (masks[0][hole] == 255).all() and (masks[0][~hole] < 3).all()
    np.testing.assert_array_equal(masks[0], masks[1])  # as if the NaN pixels were tagged nodata
    assert runs[0].classes == runs[1].classes
    from PIL import Image

    preview = np.asarray(Image.open(tmp_path / "out-nan.tif" / "nan_preview.png").convert("L"))
    assert preview[:, : preview.shape[1] // 2].mean() > 20  # the image panel is not black


@pytest.mark.parametrize("dtype, warned", [("uint16", True), ("uint8", False)])
def test_values_far_outside_the_models_range_are_warned_about(make_raster, tiny_fcn, tmp_path, caplog, dtype, warned):
    """16-bit values through a model of 8-bit imagery ran silently and called nearly everything one class."""
    result = segment(make_raster(dtype=dtype), tmp_path / "out", model=tiny_fcn, preview=False)
    assert ("far outside what tiny-fcn was trained on" in caplog.text) == warned
    assert "uint16 pixels reach 1" in caplog.text if warned else True  # 99th percentile of 0..4000, / 255
    # and in the result, for a script or plugin without a log handler
    assert [("far outside what tiny-fcn" in w) for w in result.warnings] == ([True] if warned else [])
    assert result.to_dict()["warnings"] == result.warnings


def test_a_model_of_raw_8_bit_values_is_not_warned_about_8_bit_data(make_raster, tiny_fcn, tmp_path, caplog):
    """A card of scale 1 (a model of raw 0-255 values, its Rescaling inside) was told its correct uint8 input
    'reaches 241, far outside what it was trained on ... convert it (gdal_translate -ot Byte)' (h117)."""
    import shutil

    raw = tmp_path / "models" / "raw.keras"
    raw.parent.mkdir()
    shutil.copy(tiny_fcn, raw)
    card = json.loads(Path(tiny_fcn).with_suffix(".json").read_text())
    card.update(name="raw", normalization={"method": "scale", "scale": 1.0, "offset": 0.0})
    raw.with_suffix(".json").write_text(json.dumps(card))
    segment(make_raster(dtype="uint8"), tmp_path / "out8", model=raw, preview=False)
    assert "far outside" not in caplog.text
    segment(make_raster(name="u16.tif", dtype="uint16"), tmp_path / "out16", model=raw, preview=False)
    assert "far outside what raw was trained on" in caplog.text  # other units still are


def test_a_card_of_0_1_statistics_on_8_bit_data_is_said_to_be_in_the_card_s_units(make_raster, tiny_fcn, tmp_path,
                                                                                   caplog):
    """A meanstd card with ImageNet's 0-1 statistics on 8-bit data was blamed on the raster ("probably in other
    units ... convert it"), which was right; the card's units were not (h117)."""
    import shutil

    model = tmp_path / "models" / "imagenet.keras"
    model.parent.mkdir()
    shutil.copy(tiny_fcn, model)
    card = json.loads(Path(tiny_fcn).with_suffix(".json").read_text())
    card.update(name="imagenet", normalization={"method": "meanstd", "mean": [0.485, 0.456, 0.406],
                                                "std": [0.229, 0.224, 0.225]})
    model.with_suffix(".json").write_text(json.dumps(card))
    segment(make_raster(dtype="uint8"), tmp_path / "out", model=model, preview=False)
    assert ("imagenet's card gives means [0.485, 0.456, 0.406] and standard deviations [0.229, 0.224, 0.225], "
            "statistics of values in 0-1, while this 8-bit raster's reach 255") in caplog.text
    assert "pass --normalize meanstd:123.7,116.3,103.5/58.4,57.12,57.38" in caplog.text
    assert "probably in other units" not in caplog.text


def test_11_bit_values_through_a_model_of_8_bit_imagery_are_warned_about(make_raster, tiny_fcn, tmp_path, caplog):
    """11-bit satellite values (SpaceNet's 0..2047, most below 1500) reached 7 after /255 and passed a limit of 8."""
    data = np.random.default_rng(0).integers(0, 1500, (3, 64, 64)).astype(np.uint16)
    segment(make_raster(data=data), tmp_path / "out", model=tiny_fcn, preview=False)
    assert "far outside what tiny-fcn was trained on" in caplog.text
    assert "pass --normalize scale:0.00066" in caplog.text  # 1/255 * 255 / its 99.5th percentile (~1493), offset 0
    # in Python the dict, not the command line's text, which segment(normalization=) refuses
    assert re.search(r"normalization=\{'method': 'scale', 'scale': 0.00066\d*, 'offset': 0\} in Python", caplog.text)


def test_reflectance_in_0_1_through_a_model_of_8_bit_imagery_is_warned_about(make_raster, tiny_fcn, tmp_path, caplog):
    """Float reflectance in 0-1 filled a 255th of an 8-bit model's range: a flood's pre-event image came out all
    water (72% of the scene "receded") with no word, as it passed the check for values far above the range."""
    data = np.random.default_rng(0).uniform(0.02, 0.4, (3, 64, 64)).astype(np.float32)
    segment(make_raster(data=data), tmp_path / "out", model=tiny_fcn, preview=False)
    assert "float32 pixels lie between 0 and about 0.399 (reflectance in 0-1?)" in caplog.text
    assert "Pass --normalize scale:1,0" in caplog.text
    caplog.clear()
    segment(make_raster(name="scaled.tif", data=data * 255), tmp_path / "out2", model=tiny_fcn, preview=False)
    assert "reflectance" not in caplog.text  # float 0..255 is what the model reads


def test_signed_8_bit_imagery_through_a_model_of_0_255_is_warned_about(make_raster, tiny_fcn, tmp_path, caplog):
    """0-255 stored as int8 shifted by -128 normalises to the card's lower half, never "far outside": it was
    segmented without a word (h135). The advised --normalize maps it as the card maps 0-255."""
    from geoseg.models import get_segmenter

    data = np.random.default_rng(0).integers(-128, 128, (3, 64, 64)).astype(np.int8)
    caplog.set_level("WARNING", logger="geoseg")
    segment(make_raster(data=data), tmp_path / "out", model=tiny_fcn, preview=False)
    assert "int8 pixels reach -128" in caplog.text and "gdal_translate -ot Byte -scale -128 127 0 255" in caplog.text
    advised = caplog.text.split("pass --normalize scale:")[1].split(" ")[0]
    scale, offset = map(float, advised.split(","))
    own = get_segmenter(tiny_fcn).card.normalization
    for signed, unsigned in ((-128, 0), (127, 255)):  # the advice lands where the card puts the same 8-bit value
        assert signed * scale + offset == pytest.approx(unsigned * own["scale"] + own.get("offset", 0), abs=1e-5)
    caplog.clear()
    segment(make_raster(name="positive.tif", data=np.abs(data.astype(np.int16)).clip(0, 127).astype(np.int8)),
            tmp_path / "out2", model=tiny_fcn, preview=False)
    assert "int8" not in caplog.text


def test_an_untagged_fill_around_a_warped_image_is_warned_about(make_raster, tmp_path, caplog):
    """gdalwarp's fill without -dstnodata is 0 in every band and no nodata: segmented as ground, a flood map's
    pre-event image called it water and reported it "receded", with its coverage at 100%."""
    data = np.random.default_rng(0).integers(20, 255, (3, 120, 150)).astype(np.uint8)
    rows, cols = np.mgrid[:120, :150]
    data[:, np.abs(rows - 59.5) / 60 + np.abs(cols - 74.5) / 75 > 1] = 0  # a scene turned 45 degrees by the warp
    segment(make_raster(name="warped.tif", data=data), tmp_path / "out", model="threshold", preview=False)
    assert "of its edge is 0 in every band, and it has no nodata value" in caplog.text
    assert "gdal_edit.py -a_nodata 0" in caplog.text
    caplog.clear()
    segment(make_raster(name="tagged.tif", data=data, nodata=0), tmp_path / "out2", model="threshold", preview=False)
    assert "no nodata value" not in caplog.text
    from geoseg.workflows import scene

    report = scene(make_raster(name="scene.tif", data=data), tmp_path / "scene", model="threshold")
    assert any("of its edge is 0 in every band" in w for w in report.warnings)  # its report says so, not stderr alone
    assert json.loads((tmp_path / "scene" / "scene_scene.json").read_text())["warnings"] == report.warnings
    caplog.clear()  # a drone ortho's white fill, as a black one (it was segmented without a word)
    white = np.where(data == 0, 255, data).astype(np.uint8)
    segment(make_raster(name="white.tif", data=white), tmp_path / "white", model="threshold", preview=False)
    assert "of its edge is 255 in every band" in caplog.text and "gdal_edit.py -a_nodata 255" in caplog.text


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32", "int8"])  # GDAL's Int8 (3.7+) was refused
def test_other_dtypes(make_raster, tiny_fcn, tmp_path, dtype):
    path = make_raster(dtype=dtype, shape=(50, 60))
    result = segment(path, tmp_path / "out", model=tiny_fcn, chunk=32, preview=True)
    assert _read(result.outputs["mask"]).shape == (50, 60)
    assert (tmp_path / "out" / "image_preview.png").stat().st_size > 0


@pytest.mark.parametrize(
    "shape",
    [
        (5, 5),  # smaller than one model step and than the margin
        (3, 400),  # a thin strip
        (400, 2),  # a thin column
    ],
)
def test_tiny_and_thin_rasters(make_raster, tiny_fcn, tmp_path, shape):
    path = make_raster(shape=shape)
    result = segment(path, tmp_path / "out", model=tiny_fcn, chunk=64, preview=False)
    mask = _read(result.outputs["mask"])
    assert mask.shape == shape
    assert (mask == _whole_image_mask(tiny_fcn, path)).all()


def test_geographic_crs_areas_are_geodesic(make_raster, tiny_fcn, tmp_path):
    # 0.0001 degree pixels at 60N: about 5.57 m x 11.13 m
    path = make_raster(shape=(40, 40), crs="EPSG:4326", transform=from_origin(10.0, 60.002, 0.0001, 0.0001))
    result = segment(path, tmp_path / "out", model=tiny_fcn, preview=False)
    total = sum(c["area_m2"] for c in result.classes)
    assert total == pytest.approx(1600 * 5.58 * 11.13, rel=0.01)


def test_band_selection(make_raster, tiny_1band, tmp_path):
    path = make_raster(bands=4, dtype="uint16")
    result = segment(path, tmp_path / "out", model=tiny_1band, bands=[4], preview=False)
    assert result.plan["bands"] == [4]
    assert (_read(result.outputs["mask"]) == _whole_image_mask(tiny_1band, path, bands=[4])).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"bands": [1, 2]}, BandError, "reads 3 band"),  # wrong count
        ({"bands": [1, 2, 7]}, BandError, "has 3 band"),  # band does not exist
        ({"margin": -1}, TilingError, "margin"),
        ({"tile": 30}, TilingError, "no core"),  # tile smaller than twice the margin
        ({"tile": 72}, TilingError, "multiple of 4"),  # core not on the pooling grid
        ({"tta": "d8"}, InputError, "tta must be one of none, flips"),
        ({"precision": "int8"}, InputError, "precision must be one of float32, bfloat16"),
        # Python callers: were int()'s ValueError, a TypeError, or floats silently truncated
        ({"bands": "3,2,1"}, BandError, r"a list of 1-based band indexes, e.g. \[3, 2, 1\]"),
        ({"bands": 3}, BandError, "a list of 1-based band indexes"),
        ({"bands": [1.7, 2.2, 3.9]}, BandError, "a list of 1-based band indexes"),
        ({"bands": np.array([1, 2, 9])}, BandError, "has 3 band"),  # an array is a list of indexes too
        ({"normalization": "scale:0.01"}, InputError, "a normalisation is a dict such as"),  # said "Received: None"
        # an argument's fault: CardError ("a model card is missing a field") escaped `except InputError` (h133)
        ({"normalization": {"method": "meanstd", "mean": np.zeros(2), "std": (1, 1)}}, InputError,
         r"'normalization.mean' needs one number per band \(3\)"),
        ({"sieve": -1}, InputError, "sieve .--sieve. is a region size in pixels"),
        ({"sieve": 2.5}, InputError, "a whole number of at least 0. Received: 2.5"),
        ({"batch_size": "8"}, TilingError, "`batch_size` must be a whole number of tiles. Received: batch_size='8'"),
        ({"margin": 4.0}, TilingError, "`margin` must be a whole number of pixels"),
        ({"sieve": 9, "model": "watershed-regions"}, InputError, "would join regions that share a colour"),
    ],
)
def test_bad_options_name_the_fix(make_raster, tiny_fcn, tmp_path, kwargs, error, match):
    path = make_raster()
    with pytest.raises(error, match=match):
        segment(path, tmp_path / "out", **{"model": tiny_fcn, **kwargs})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_single_band_raster_for_rgb_model(make_raster, tiny_fcn, tmp_path):
    with pytest.raises(BandError, match="--bands"):
        segment(make_raster(bands=1), tmp_path / "out", model=tiny_fcn)
    from PIL import Image  # a 16-colour PNG: --bands 1,1,1 would feed the model colour-table indexes

    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)
    Image.fromarray(rgb).quantize(16).save(tmp_path / "pal.png")
    for bands in (None, [1, 1, 1]):
        with pytest.raises(BandError, match="a paletted image .* Expand it to RGB first: gdal_translate -expand rgb"):
            segment(tmp_path / "pal.png", tmp_path / "out", model=tiny_fcn, bands=bands)


def test_missing_and_non_raster_inputs(tmp_path, tiny_fcn):
    with pytest.raises(RasterReadError, match="no such file"):
        segment(tmp_path / "nope.tif", tmp_path / "out", model=tiny_fcn)
    with pytest.raises(TypeError, match="one raster path. Received: list; for several rasters use geoseg.survey"):
        segment([tmp_path / "a.tif", tmp_path / "b.tif"], tmp_path / "out", model=tiny_fcn)
    with pytest.raises(TypeError, match="segment takes an output folder path. Received: NoneType"):
        segment(tmp_path / "a.tif", None, model=tiny_fcn)  # was pathlib's "expected str, bytes or os.PathLike"
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(RasterReadError, match="not a raster"):
        segment(text, tmp_path / "out", model=tiny_fcn)


def test_refuses_to_overwrite(make_raster, tiny_fcn, tmp_path):
    path = make_raster()
    segment(path, tmp_path / "out", model=tiny_fcn, preview=False)
    with pytest.raises(OutputError, match="--overwrite"):
        segment(path, tmp_path / "out", model=tiny_fcn, preview=False)
    segment(path, tmp_path / "out", model=tiny_fcn, preview=False, overwrite=True)


def test_overwrite_removes_outputs_of_an_earlier_run_that_no_longer_match(make_raster, tiny_fcn, tmp_path, caplog):
    path = make_raster()
    first = segment(path, tmp_path / "out", model=tiny_fcn, vector=True, confidence=True)
    second = segment(path, tmp_path / "out", model="threshold", preview=False, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["image_mask.qml", "image_mask.tif",
                                                                                  "image_mask.tif.aux.xml"]
    assert second.outputs["mask"] == first.outputs["mask"] and "image_polygons.gpkg: it came from an earlier" in caplog.text


@pytest.mark.parametrize("vector", [False, True])
@pytest.mark.parametrize("chunk, calls", [(None, [0.9, 0.95, 1.0]), (32, [0.225, 0.45, 0.675, 0.9, 0.95, 1.0])])
def test_progress_reports_each_chunk(make_raster, tiny_fcn, tmp_path, chunk, calls, vector):
    """A raster of one chunk (most web uploads) reported no progress at all: Dask fuses its task. The chunks are
    90% of a run: writing the outputs took 35-70% of a run after 100% had been reported. With polygons, the chunks
    are 60% and the polygons 65-97%, block by block: a noisy mask's measures took ten times the chunks' time at 95%
    (h173)."""
    reported = []
    segment(make_raster(shape=(64, 64)), tmp_path / "out", model=tiny_fcn, chunk=chunk, preview=False, vector=vector,
            progress=reported.append)
    if not vector:
        assert reported == pytest.approx(calls)
        return
    polygons = [f for f in reported if 0.65 < f < 1.0]
    assert [f for f in reported if f not in polygons] == pytest.approx([f * 0.6 / 0.9 for f in calls[:-2]]
                                                                       + [0.65, 1.0])
    assert len(polygons) >= 2 and polygons == sorted(polygons) and polygons[-1] == pytest.approx(0.97)


def test_progress_of_a_run_goes_to_its_own_callback_alone(make_raster, tmp_path):
    """segment registered its progress in Dask's process-wide callbacks, which Dask swaps without a lock: runs in
    other threads (web jobs, survey --jobs) got each other's chunks (32 calls instead of 16 in 2 rounds of 10), and
    one could stay registered. A user's own callback (a ProgressBar) still sees the run, and is not lost."""
    import threading

    from dask.callbacks import Callback

    class Other(Callback):
        tasks = 0

        def _posttask(self, *args):
            Other.tasks += 1

    reported = []
    with Other() as other:
        segment(make_raster(shape=(64, 64)), tmp_path / "out", model="threshold", chunk=32, preview=False,
                progress=reported.append)
        assert Callback.active == {other._callback}
    assert reported == pytest.approx([0.225, 0.45, 0.675, 0.9, 0.95, 1.0]) and Other.tasks >= 4
    image = make_raster(shape=(64, 64), name="threads.tif")
    for round_ in range(4):  # runs in threads at once: each its own four chunks
        calls: dict[int, list[float]] = {i: [] for i in range(3)}
        threads = [threading.Thread(target=segment, args=(image, tmp_path / f"t{round_}-{i}"),
                                    kwargs=dict(model="threshold", chunk=32, preview=False, progress=calls[i].append))
                   for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(sorted(c) == pytest.approx([0.225, 0.45, 0.675, 0.9, 0.95, 1.0]) for c in calls.values()), calls
    assert not Callback.active


@pytest.mark.parametrize("how", ["replaced", "written to"])
def test_an_input_that_changes_during_its_run_is_an_error_and_nothing_moves(make_raster, tmp_path, how):
    """Chunks open the input by its path: one replaced mid-run (mv new.tif scene.tif) gave a mask of two rasters,
    or nodata where the new one was smaller, and exit 0."""
    path = make_raster(shape=(64, 64), seed=1)
    other = make_raster(name="other.tif", shape=(40, 40), seed=2)

    def change(fraction):
        if fraction < 1 and not getattr(change, "done", False):
            change.done = True
            if how == "replaced":
                os.replace(other, path)
            else:
                with rasterio.open(path, "r+") as ds:
                    ds.write(np.zeros((ds.count, 64, 64), ds.dtypes[0]))

    with pytest.raises(RasterReadError, match="image.tif: changed while it was being segmented .*nothing was put "
                                              "in place. Run again once the file is complete"):
        segment(path, tmp_path / "out", model="threshold", chunk=32, vector=True, progress=change)
    assert not (tmp_path / "out").exists()


def test_interrupted_run_leaves_no_partial_output(make_raster, tiny_fcn, tmp_path):
    path = make_raster(shape=(200, 200))
    out = tmp_path / "out"

    def stop_midway(fraction):
        if fraction > 0.3:
            raise KeyboardInterrupt

    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        segment(path, out, model=tiny_fcn, chunk=32, progress=stop_midway)
    assert list(out.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):  # the folders it made go too, if nothing else is in them
        segment(path, tmp_path / "new" / "out", model=tiny_fcn, chunk=32, progress=stop_midway)
    assert not (tmp_path / "new").exists()


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(make_raster, tiny_fcn, tmp_path):
    """SIGKILL (or the out-of-memory killer) leaves OUT/.geoseg-*/ with partial GeoTIFFs behind."""
    import socket
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    host = socket.gethostname().replace("-", "_")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folders = {name: out / f".geoseg-{h}-{pid}-abc" for name, h, pid in
                   (("killed", host, dead.stdout.strip()), ("running", host, live.pid), ("other host", "elsewhere", 1))}
        for folder in folders.values():
            folder.mkdir()
            (folder / "image_mask.tif").write_bytes(b"partial")
        segment(make_raster(), out, model=tiny_fcn, preview=False)
    finally:
        live.kill()
        live.wait()
    assert not folders["killed"].exists() and folders["running"].exists() and folders["other host"].exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["image_mask.qml", "image_mask.tif",
                                                                                  "image_mask.tif.aux.xml"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 40 KB filesystem (tmpfs); needs root and mount, so it skips elsewhere."""
    import shutil
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(folder)],
                                                   capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_an_output_error_and_leaves_no_output(make_raster, tiny_fcn, tiny_disk):
    """GDAL reported the full disk only as a warning: a short confidence layer was renamed into place
    beside a complete mask, and the error was rasterio's."""
    noise = np.random.default_rng(0).integers(0, 255, (3, 512, 512), dtype=np.uint8)  # compresses badly
    with pytest.raises(OutputError, match="could not be written .*Free some disk space"):
        segment(make_raster(data=noise), tiny_disk, model=tiny_fcn, confidence=True, probabilities=True,
                preview=False)
    assert list(tiny_disk.iterdir()) == []


def test_a_short_layer_keeps_every_layer_from_appearing(make_raster, tiny_fcn, tmp_path, monkeypatch):
    """The same as a full disk, where no small filesystem can be mounted: the confidence copy comes out short."""
    import os

    import rasterio.shutil

    copy = rasterio.shutil.copy

    def short_confidence(src, dst, **kwargs):
        copy(src, dst, **kwargs)
        if "confidence" in str(dst):
            with open(dst, "r+b") as f:
                f.truncate(os.path.getsize(dst) // 2)

    monkeypatch.setattr(rasterio.shutil, "copy", short_confidence)
    noise = np.random.default_rng(0).integers(0, 255, (3, 512, 512), dtype=np.uint8)
    with pytest.raises(OutputError, match="image_confidence.tif: could not be written"):
        segment(make_raster(data=noise), tmp_path / "out", model=tiny_fcn, confidence=True, preview=False)
    assert not (tmp_path / "out").exists()  # not even the complete mask, nor the folder the run made


def test_unwritable_output_dir(make_raster, tiny_fcn, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        segment(make_raster(), blocker, model=tiny_fcn)


def test_each_task_reads_only_its_window(make_raster, tiny_fcn, tmp_path, monkeypatch):
    from geoseg import raster

    reads = []
    original = raster.WindowSource.__call__

    def spy(self, rows, cols):
        block, valid = original(self, rows, cols)
        reads.append(block.shape[:2])
        return block, valid

    monkeypatch.setattr(raster.WindowSource, "__call__", spy)
    result = segment(make_raster(shape=(300, 300)), tmp_path / "out", model=tiny_fcn, chunk=64, preview=False)
    margin = result.plan["margin"]
    assert reads.pop(0) == (300, 300)  # first the value-range check's central sample, at most 512 px a side
    assert len(reads) == 25  # one read per chunk: 5 x 5 chunks of 64 px (the last one 44 px)
    assert max(r * c for r, c in reads) <= (64 + 2 * margin) ** 2  # a chunk and its margins, never more


def test_percentile_normalisation_from_the_whole_raster(make_raster, tiny_fcn, tmp_path):
    """A uint16 raster stretched by its own 2-98 percentiles: same result whatever the chunk."""
    from click.testing import CliRunner

    from geoseg.cli import main

    path = make_raster(dtype="uint16", shape=(90, 100))
    norm = {"method": "percentile", "low": 2, "high": 98}
    a = segment(path, tmp_path / "a", model=tiny_fcn, chunk=32, normalization=norm, preview=False)
    b = segment(path, tmp_path / "b", model=tiny_fcn, chunk=128, normalization=norm, preview=False)
    assert a.plan["normalization"]["method"] == "stretch"
    assert (_read(a.outputs["mask"]) == _read(b.outputs["mask"])).all()
    with rasterio.open(path) as ds:
        data = ds.read()
    expected_low = np.percentile(data.reshape(3, -1), 2, axis=1)
    assert np.allclose(a.plan["normalization"]["low"], expected_low, rtol=0.05)
    result = CliRunner().invoke(main, ["segment", str(path), "-o", str(tmp_path / "c"), "-m", str(tiny_fcn),
                                       "--normalize", "percentile:2,98", "--json", "--quiet"])
    assert result.exit_code == 0 and json.loads(result.stdout)["plan"]["normalization"]["method"] == "stretch"
    bad = CliRunner().invoke(main, ["segment", str(path), "-o", str(tmp_path / "d"), "-m", str(tiny_fcn),
                                    "--normalize", "zscore"])
    assert bad.exit_code == 2 and "percentile:2,98" in bad.output


def test_bfloat16_precision_is_close_to_float32(make_raster, tiny_fcn, tmp_path):
    from click.testing import CliRunner

    from geoseg.cli import main

    path = make_raster(shape=(80, 90))
    runs = {}
    for precision in ("float32", "bfloat16"):
        result = CliRunner().invoke(main, ["segment", str(path), "-o", str(tmp_path / precision), "-m", str(tiny_fcn),
                                           "--precision", precision, "--quiet"])
        assert result.exit_code == 0, result.output
        runs[precision] = _read(tmp_path / precision / "image_mask.tif")
    assert (runs["float32"] == runs["bfloat16"]).mean() > 0.9


def test_resampled_to_the_models_pixel_size_and_back(make_raster, model_dir, tmp_path):
    """A model trained at 1 m on a 0.5 m raster: it sees a 1 m grid; the mask comes back on the 0.5 m grid."""
    import shutil

    from click.testing import CliRunner

    from geoseg.cli import main

    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(model_dir / "tiny-fcn.keras", folder / "one-metre.keras")
    card = json.loads((model_dir / "tiny-fcn.json").read_text())
    (folder / "one-metre.json").write_text(json.dumps({**card, "name": "one-metre", "pixel_size": 1.0}))
    path = make_raster(shape=(100, 120))  # 0.5 m pixels
    result = segment(path, tmp_path / "out", model=folder / "one-metre.keras", chunk=32, preview=False)
    assert result.plan["model_grid"] == {"pixel_size": 1.0, "width": 60, "height": 50}
    with rasterio.open(path) as src, rasterio.open(result.outputs["mask"]) as ds:
        assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape)
        mask = ds.read(1)
    assert (mask[0::2, 0::2] == mask[1::2, 1::2]).all()  # nearest from a grid of half the resolution
    assert len(np.unique(mask)) > 1
    # what the model saw: the raster warped to 1 m by GDAL, then Keras on it, without geoseg (a shifted or
    # wrongly scaled work grid also gave 2 x 2 blocks)
    import keras
    from rasterio.warp import Resampling, reproject

    with rasterio.open(path) as src:
        metre = np.zeros((3, 50, 60), np.float32)
        reproject(src.read().astype(np.float32), metre, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=src.transform * rasterio.Affine.scale(2), dst_crs=src.crs,
                  resampling=Resampling.bilinear)
    margin = result.plan["margin"]
    x = np.pad(np.moveaxis(metre, 0, -1) / 255, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")
    x = np.pad(x, ((0, -x.shape[0] % 4), (0, -x.shape[1] % 4), (0, 0)))
    seen = keras.saving.load_model(folder / "one-metre.keras", compile=False).predict(x[None], verbose=0)[0]
    reference = seen[margin : margin + 50, margin : margin + 60].argmax(-1).repeat(2, 0).repeat(2, 1)
    assert (mask == reference).mean() >= 0.99
    from geoseg.sieve import sieve_array  # --sieve counts the output's pixels, not the model's (4 times larger)

    sieved = segment(path, tmp_path / "sieved", model=folder / "one-metre.keras", chunk=32, preview=False, sieve=40)
    with rasterio.open(sieved.outputs["mask"]) as ds:
        assert (ds.read(1) == sieve_array(mask, 40)).all() and (sieve_array(mask, 40) != mask).any()
    plain = CliRunner().invoke(main, ["segment", str(path), "-o", str(tmp_path / "plain"), "-m",
                                      str(folder / "one-metre.keras"), "--no-resample", "--json", "--quiet"])
    assert plain.exit_code == 0 and json.loads(plain.stdout)["plan"]["model_grid"] is None
    # nodata narrower than a model pixel: the input's 3 columns of nodata got classes, and valid pixels lost theirs
    data = rasterio.open(path).read()
    data[:, :, :3] = 0
    data[:, 7, :] = 0  # one row: its model pixel's other row, valid, lost its class
    for pixel in (0.5, 0.6):
        again = make_raster(name=f"holed{pixel}.tif", data=data, nodata=0,
                            transform=from_origin(500000.0, 2800000.0, pixel, pixel))
        result = segment(again, tmp_path / f"holed{pixel}", model=folder / "one-metre.keras", chunk=32, preview=False,
                         confidence=True)
        for name in ("mask", "confidence"):
            with rasterio.open(result.outputs[name]) as ds:
                assert ((ds.read(1) == 255) == (data == 0).all(axis=0)).all(), (pixel, name)  # nodata in every band
    # a rotated grid's pixel size is not |a| and |e|: at 90 degrees they are 0, and the work grid was 1 x 1
    rotated = make_raster(name="rotated.tif", shape=(60, 80), transform=rasterio.Affine(0.0, 1.0, 500000.0,
                                                                                        1.0, 0.0, 2800000.0))
    assert segment(rotated, tmp_path / "rot", model=folder / "one-metre.keras", preview=False).plan["model_grid"] is None
    tilted = make_raster(name="tilted.tif", shape=(60, 80), transform=rasterio.Affine.translation(500000.0, 2800000.0)
                         * rasterio.Affine.rotation(30) * rasterio.Affine.scale(0.5, -0.5))
    grid = segment(tilted, tmp_path / "tilt", model=folder / "one-metre.keras", preview=False).plan["model_grid"]
    assert (grid["width"], grid["height"]) == (40, 30)  # 0.5 m pixels: half as many; it was 35 x 26 (0.433 m)
    # Web Mercator's metres at 60° N are half a ground metre: its 2 m pixels are the model's 1 m (they were
    # taken as 2 m and halved), and a raster in degrees is resampled by its pixels' ground size (it was not)
    import math

    north = 6378137.0 * math.log(math.tan(math.pi / 4 + math.radians(60) / 2))
    mercator = make_raster(name="mercator.tif", shape=(60, 80), crs="EPSG:3857",
                           transform=from_origin(1000000.0, north + 60.0, 2.0, 2.0))
    assert segment(mercator, tmp_path / "merc", model=folder / "one-metre.keras", preview=False).plan["model_grid"] \
        is None
    degrees = make_raster(name="degrees.tif", shape=(60, 80), crs="EPSG:4326",
                          transform=from_origin(55.0, 0.0003, 0.5 / 111320, 0.5 / 110574))  # 0.5 m at the equator
    grid = segment(degrees, tmp_path / "deg", model=folder / "one-metre.keras", preview=False).plan["model_grid"]
    assert (grid["width"], grid["height"]) == (40, 30)


def test_flip_tta_averages_the_four_flips_and_stays_seam_free(make_raster, tiny_fcn, tmp_path):
    from click.testing import CliRunner

    from geoseg.cli import main
    from geoseg.inference import predict_image
    from geoseg.models import load_bundle
    from geoseg.models.segmenter import FlipAveraged

    plain = load_bundle(tiny_fcn)
    tta = load_bundle(tiny_fcn, tta="flips")
    assert isinstance(tta, FlipAveraged)
    batch = np.random.default_rng(0).random((2, 32, 48, 3), dtype=np.float32)
    reference = np.mean([np.flip(plain.predict_proba(np.flip(batch, a)), a) for a in [(), (1,), (2,), (1, 2)]], 0)
    np.testing.assert_allclose(tta.predict_proba(batch), reference, rtol=1e-5, atol=1e-6)
    assert not np.allclose(reference, plain.predict_proba(batch), atol=1e-3)  # the flips do change the answer

    path = make_raster(shape=(80, 90))
    result = CliRunner().invoke(main, ["segment", str(path), "-o", str(tmp_path / "t"), "-m", str(tiny_fcn),
                                       "--tta", "flips", "--chunk", "32", "--quiet"])
    assert result.exit_code == 0, result.output
    with rasterio.open(path) as ds:
        whole = predict_image(tta, np.moveaxis(ds.read(), 0, -1)).argmax(-1)
    assert (_read(tmp_path / "t" / "image_mask.tif") == whole).all()  # tiled (32 px chunks) == whole image
    bad = CliRunner().invoke(main, ["segment", str(path), "-o", str(tmp_path / "u"), "-m", str(tiny_fcn),
                                    "--tta", "d8"])
    assert bad.exit_code == 2 and "'flips'" in bad.output


def test_python_api_takes_tta_and_precision(make_raster, tiny_fcn, tmp_path):
    from geoseg.inference import predict_image
    from geoseg.models import load_bundle

    path = make_raster(shape=(80, 90))
    with rasterio.open(path) as ds:
        image = np.moveaxis(ds.read(), 0, -1)
    tta = segment(path, tmp_path / "t", model=tiny_fcn, tta="flips", preview=False)
    assert (_read(tta.outputs["mask"]) == predict_image(load_bundle(tiny_fcn, tta="flips"), image).argmax(-1)).all()
    plain = segment(path, tmp_path / "p", model=tiny_fcn, preview=False)
    assert (_read(tta.outputs["mask"]) != _read(plain.outputs["mask"])).any()
    half = segment(path, tmp_path / "b", model=tiny_fcn, precision="bfloat16", preview=False)
    assert (_read(half.outputs["mask"]) == _read(plain.outputs["mask"])).mean() > 0.9
    baseline = segment(path, tmp_path / "c", model="threshold", tta="flips", precision="bfloat16", preview=False)
    assert baseline.outputs["mask"]  # baselines ignore both


def test_a_chunk_much_smaller_than_its_margins_is_warned_about(make_raster, tiny_fcn, tmp_path, caplog):
    from geoseg.models import load_bundle
    from geoseg.pipeline import plan_run
    from geoseg.raster import inspect_raster

    info, card = inspect_raster(make_raster(shape=(200, 200))), load_bundle(tiny_fcn).card
    with caplog.at_level("WARNING", logger="geoseg.pipeline"):
        plan_run(info, card, chunk=card.multiple_of)
    assert "the model sees" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="geoseg.pipeline"):
        plan_run(info, card)  # the default chunk
        plan_run(info, card, chunk=1024)  # larger than the raster: the chunk is the raster
    assert "the model sees" not in caplog.text and "chunks, each a task" not in caplog.text
    # a tiny chunk of a model without margins: --chunk 1 took 156 s on 128 x 128 px, without a word
    from geoseg.models import get_segmenter

    with caplog.at_level("WARNING", logger="geoseg.pipeline"):
        plan_run(info, get_segmenter("threshold").card, chunk=4)
    assert "chunk 4x4 cuts the raster into 2500 chunks, each a task" in caplog.text


def test_rasters_placed_by_gcps_or_rpcs_keep_them(make_raster, tiny_fcn, tmp_path, caplog):
    """Scanned maps and drone or satellite scenes before orthorectification carry ground control points
    or RPCs instead of a transform: the outputs used to lose them (a mask nowhere on the map)."""
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS
    from rasterio.rpc import RPC

    path = make_raster("gcp.tif", crs=None, transform=rasterio.Affine.identity())
    gcps = [GroundControlPoint(row, col, 500000.0 + col / 2, 2800000.0 - row / 2)  # 0.5 m pixels
            for row, col in ((0, 0), (0, 80), (64, 0), (64, 80))]
    with rasterio.open(path, "r+") as ds:
        ds.gcps = (gcps, CRS.from_epsg(32640))
    result = segment(path, tmp_path / "out", model=tiny_fcn, confidence=True, vector=True, preview=False)
    for output in ("mask", "confidence"):
        with rasterio.open(result.outputs[output]) as ds:
            assert ds.crs is None and ds.gcps[1] == CRS.from_epsg(32640)
            assert [(g.row, g.col, g.x, g.y) for g in ds.gcps[0]] == [(g.row, g.col, g.x, g.y) for g in gcps]
    assert sum(c["area_m2"] for c in result.classes) == pytest.approx(64 * 80 * 0.25)
    # placed on the map, though by points: crs and bounds, no transform to take for exact (all None read as a
    # photo's, h114)
    assert (result.crs, result.transform) == ("EPSG:32640", None)
    assert result.bounds == pytest.approx([500000.0, 2800000.0 - 32, 500040.0, 2800000.0])
    layer = gpd.read_file(result.outputs["vector"])
    assert layer.crs == "EPSG:32640" and layer.area_m2.sum() == pytest.approx(64 * 80 * 0.25)
    assert np.allclose(layer.total_bounds, [500000, 2800000 - 32, 500040, 2800000])
    from geoseg.workflows.evaluate import evaluate  # its own polygons, as vector labels, score 1

    scored = evaluate(tiny_fcn, path, result.outputs["vector"], label_format="vector", vector_field="class_name")
    assert scored.pixel_accuracy == 1.0 and scored.pixels_scored == 64 * 80
    from geoseg.raster import inspect_raster
    from geoseg.vector import zonal_composition  # zones are placed by the GCPs too (they used to count 0)

    west = gpd.GeoSeries([shapely.box(500000, 2800000 - 32, 500020, 2800000)], crs="EPSG:32640").to_crs(4326)
    pixels, areas = zonal_composition(result.outputs["mask"], west, 3)
    assert pixels.sum() == 64 * 40 and areas.sum() == pytest.approx(64 * 40 * 0.25)
    with rasterio.open(path, "r+") as ds:  # two points span no area: rasterio's fit would be garbage
        ds.gcps = (gcps[:2], CRS.from_epsg(32640))
    assert inspect_raster(path).map_georeferencing() == (rasterio.Affine(1, 0, 0, 0, -1, 0), None)  # as QGIS

    rpcs = RPC(height_off=0, height_scale=100, lat_off=25.2, lat_scale=0.01, line_off=32, line_scale=32,
               long_off=55.3, long_scale=0.01, line_num_coeff=[0, 0, -1] + [0] * 17,
               line_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18, samp_den_coeff=[1] + [0] * 19,
               samp_off=40, samp_scale=40)
    path = make_raster("rpc.tif", crs=None, transform=rasterio.Affine.identity(), seed=1)
    with rasterio.open(path, "r+") as ds:
        ds.rpcs = rpcs
    with caplog.at_level("WARNING", logger="geoseg.vector"):
        result = segment(path, tmp_path / "out", model=tiny_fcn, vector=True, preview=False)
    with rasterio.open(result.outputs["mask"]) as ds:
        assert ds.rpcs is not None
        kept = ds.rpcs.to_dict()
        assert all(np.allclose(kept[k], v) for k, v in rpcs.to_dict().items() if v is not None)
    assert "georeferenced by RPCs only: the polygons are in pixel coordinates" in caplog.text
    assert f"{tmp_path / 'out' / 'rpc_mask.tif'} is georeferenced" in caplog.text  # not .geoseg-…/rpc_mask.cog.tif


def test_an_image_without_georeferencing_gets_outputs_that_overlay_it_in_qgis(tmp_path):
    """QGIS places a raster without geotransform at x = column, y = -row. The mask used to carry an explicit
    y-down identity (shown upside down beside the JPEG there) and its polygons y = +row."""
    from PIL import Image
    from rasterio.errors import NotGeoreferencedWarning

    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[:, :20] = (30, 80, 110)  # water in the west half
    rgb[:, 20:] = (200, 175, 130)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    result = segment(tmp_path / "photo.png", tmp_path / "out", model="threshold?water=0&vegetation=0.5",
                     vector=True, preview=False)
    with pytest.warns(NotGeoreferencedWarning), rasterio.open(result.outputs["mask"]) as ds:
        assert ds.crs is None and not ds.gcps[0]  # no geotransform, as the input has none
    layer = gpd.read_file(result.outputs["vector"])
    water = layer[layer.class_name == "water"]
    assert np.allclose(water.total_bounds, [0, -30, 20, 0]) and water.area.sum() == 30 * 20  # y = -row


def test_a_crs_without_a_geotransform_is_placed_as_a_photo_with_a_warning(tmp_path, caplog):
    """`gdal_translate -a_srs` on a photo gives a CRS and no geotransform. Its mask got an explicit y-down identity
    (upside down beside it in QGIS) and its polygons and web GeoJSON were placed at the CRS's origin (h135)."""
    from rasterio.crs import CRS
    from rasterio.errors import NotGeoreferencedWarning

    rgb = np.zeros((3, 30, 40), np.uint8)
    rgb[:, :, :20] = np.array([30, 80, 110])[:, None, None]
    rgb[:, :, 20:] = np.array([200, 175, 130])[:, None, None]
    with pytest.warns(NotGeoreferencedWarning), rasterio.open(
            tmp_path / "tagged.tif", "w", driver="GTiff", width=40, height=30, count=3, dtype="uint8",
            crs=CRS.from_epsg(32640)) as ds:
        ds.write(rgb)
    with caplog.at_level(logging.WARNING, logger="geoseg"):
        result = segment(tmp_path / "tagged.tif", tmp_path / "out", model="threshold?water=0&vegetation=0.5",
                         vector=True, preview=False)
    assert "a CRS but no geotransform" in caplog.text
    assert result.transform is None and result.bounds is None
    with pytest.warns(NotGeoreferencedWarning), rasterio.open(result.outputs["mask"]) as ds:
        assert ds.transform.is_identity  # none written, as the input has none
    layer = gpd.read_file(result.outputs["vector"])
    water = layer[layer.class_name == "water"]
    assert np.allclose(water.total_bounds, [0, -30, 20, 0])  # y = -row, as a photo's


def test_a_geotransform_of_pixels_without_area_is_refused(tmp_path):
    """A pixel height of 0 (a world file's line of 0) gave 0 m² for every class and empty polygons, without a word."""
    from rasterio.crs import CRS

    with rasterio.open(tmp_path / "flat.tif", "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8",
                       crs=CRS.from_epsg(32640), transform=rasterio.Affine(0.5, 0, 300000, 0, 0, 2780000)) as ds:
        ds.write(np.full((3, 8, 8), 100, np.uint8))
    with pytest.raises(InputError, match="gives its pixels no area"):
        segment(tmp_path / "flat.tif", tmp_path / "out", model="threshold", preview=False)
    assert not (tmp_path / "out").exists()


def test_rasters_inside_zip_archives_through_gdal_paths(make_raster, tiny_fcn, tmp_path, monkeypatch):
    """QGIS users keep zipped rasters; GDAL reads them as /vsizip/... or rasterio's zip://...!...
    They used to be refused as 'no such file' (the path went through os.path.abspath)."""
    import zipfile

    path = make_raster("scene.tif")
    with zipfile.ZipFile(tmp_path / "survey.zip", "w") as archive:
        archive.write(path, "tiles/scene.tif")
    monkeypatch.chdir(tmp_path)  # rasterio read zip://survey.zip!... (relative, as the README writes it) as missing
    for name in (f"/vsizip/{tmp_path}/survey.zip/tiles/scene.tif", f"zip://{tmp_path}/survey.zip!tiles/scene.tif",
                 "zip://survey.zip!tiles/scene.tif", "/vsizip/survey.zip/tiles/scene.tif"):
        result = segment(name, tmp_path / "out", model=tiny_fcn, preview=False, overwrite=True)
        assert result.outputs["mask"].endswith("out/scene_mask.tif")  # named after the raster, not the archive
        assert (_read(result.outputs["mask"]) == _read(segment(path, tmp_path / "plain", model=tiny_fcn,
                                                                preview=False, overwrite=True).outputs["mask"])).all()
    with pytest.raises(RasterReadError, match="not a raster GDAL can read"):
        segment(f"/vsizip/{tmp_path}/survey.zip/tiles/missing.tif", tmp_path / "out", model=tiny_fcn)


@pytest.mark.parametrize("step", ["vectorize", "write_preview"])
def test_an_interrupted_run_leaves_nothing_and_the_same_call_runs_again(make_raster, tiny_fcn, tmp_path, monkeypatch,
                                                                         step):
    """The mask appeared before the polygons and preview were made: after Ctrl-C there, a mask without
    its polygons stayed, and the same command was refused with "already exists. Pass --overwrite"."""
    import geoseg.pipeline
    import geoseg.preview

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    path = make_raster(shape=(40, 50))
    out = tmp_path / "out"
    options = dict(model=tiny_fcn, chunk=32, vector=True, confidence=True, preview=True)
    with monkeypatch.context() as patched:
        patched.setattr(geoseg.pipeline if step == "vectorize" else geoseg.preview, step, ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            segment(path, out, **options)
    assert not out.exists()  # no output, no hidden staging folder, nor the folder the run made
    result = segment(path, out, **options)
    assert sorted(p.name for p in out.iterdir()) == [
        "image_confidence.tif", "image_mask.qml", "image_mask.tif", "image_mask.tif.aux.xml", "image_polygons.gpkg", "image_polygons.qml",
        "image_preview.png"]
    assert all(".geoseg-" not in p for p in result.outputs.values())
    assert (gpd.read_file(result.outputs["vector"])["confidence"] > 0).all()  # read from the staged confidence


def test_ctrl_c_while_the_outputs_are_moved_into_place_waits_for_the_last(make_raster, tiny_fcn, tmp_path,
                                                                         monkeypatch):
    """A signal between two of the final renames left half a set, e.g. the confidence without its mask."""
    import os
    import signal
    from pathlib import Path

    out = tmp_path / "out"
    replace, fired = os.replace, []

    def replace_then_ctrl_c(src, dst):
        replace(src, dst)
        if Path(dst).parent == out and not fired:  # the first output put in place
            fired.append(dst)
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_ctrl_c)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own: earlier tests may change it
    try:
        with pytest.raises(KeyboardInterrupt):
            segment(make_raster(shape=(40, 50)), out, model=tiny_fcn, chunk=32, vector=True, confidence=True)
    finally:
        signal.signal(signal.SIGINT, before)
    assert fired and sorted(p.name for p in out.iterdir()) == [
        "image_confidence.tif", "image_mask.qml", "image_mask.tif", "image_mask.tif.aux.xml", "image_polygons.gpkg", "image_polygons.qml",
        "image_preview.png"]  # all of them, and no staging folder


def test_a_raster_without_valid_pixels_says_so(make_raster, tiny_fcn, tmp_path, caplog):
    """Nodata everywhere gave 0 km² of every class, an empty layer and not a word."""
    path = make_raster(shape=(40, 50), nodata=0, data=np.zeros((3, 40, 50), np.uint8))
    with caplog.at_level("WARNING", logger="geoseg"):
        result = segment(path, tmp_path / "out", model=tiny_fcn, chunk=32, preview=False)
    assert not any(row["pixels"] for row in result.classes)
    assert "no valid pixels (nodata or NaN everywhere), so the mask is all nodata" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="geoseg"):
        segment(make_raster(name="fine.tif", shape=(40, 50)), tmp_path / "out", model=tiny_fcn, chunk=32, preview=False)
    assert "no valid pixels" not in caplog.text


def _truncated(path, keep=0.6):
    """Cut a GeoTIFF to `keep` of its bytes: GDAL still opens its header, and fails on the blocks cut off."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with rasterio.open(path) as ds:
        ds.read(1, window=((0, 16), (0, 16)))  # the first block is whole
        with pytest.raises(rasterio.errors.RasterioIOError):
            ds.read()
    return path


@pytest.mark.parametrize("normalization, where", [
    (None, r"rows \d+-\d+, cols \d+-\d+"),  # the card's scale: the value-range check reads a central window first
    ({"method": "none"}, r"rows \d+-\d+, cols \d+-\d+"),  # no check: a chunk read inside a Dask task fails
    ({"method": "percentile", "low": 2, "high": 98}, "its pixels"),  # the whole-raster statistics fail
])
def test_a_truncated_input_is_a_read_error_naming_the_file_and_window(make_raster, tiny_fcn, tmp_path,
                                                                        normalization, where):
    """Was rasterio's RasterioIOError "Read failed" as a traceback."""
    path = _truncated(make_raster(tiled=True, blockxsize=16, blockysize=16))
    out = tmp_path / "out"
    with pytest.raises(RasterReadError, match=rf"image\.tif: cannot read {where} \(.*IReadBlock failed.*\); the "
                                              r"file may be truncated or damaged\. Check it with gdalinfo -checksum"):
        segment(path, out, model=tiny_fcn, chunk=32, normalization=normalization, preview=False)
    assert not out.exists() or list(out.iterdir()) == []  # no half-written output


def test_a_truncated_raster_is_one_line_and_a_batch_goes_on(make_raster, tiny_fcn, tmp_path):
    """Was a traceback that ended the batch: good.tif never ran and no JSON came out."""
    from click.testing import CliRunner

    from geoseg.cli import main

    bad = _truncated(make_raster(name="bad.tif", tiled=True, blockxsize=16, blockysize=16))
    good = make_raster(name="good.tif", shape=(20, 24))

    def run(*args):
        return CliRunner().invoke(main, ["segment", *map(str, args), "-o", str(tmp_path / "out"), "-m", str(tiny_fcn),
                                         "--quiet", "--no-preview"], catch_exceptions=False)

    alone = run(bad)
    assert alone.exit_code == 1 and "Traceback" not in alone.output
    assert alone.output.startswith(f"Error: {bad}: cannot read rows ") and alone.output.count("\n") == 1
    batch = run(bad, good, "--json")
    assert batch.exit_code == 1
    data = json.loads(batch.stdout)
    assert [r["input"] for r in data["results"]] == [str(good)]
    assert [e["input"] for e in data["errors"]] == [str(bad)]
    assert "bad.tif: cannot read rows" in data["errors"][0]["error"]
    assert "truncated or damaged" in data["errors"][0]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_mask.qml", "good_mask.tif",
                                                                     "good_mask.tif.aux.xml"]


def test_a_read_error_on_a_dask_worker_reaches_the_caller_as_itself(make_raster):
    """On a cluster (--workers, --scheduler) a truncated raster came back as a bare Exception: a traceback, and
    the batch stopped. Dask's workers send errors with tblib, which could not rebuild RasterReadError (ValueError
    and OSError among its bases) nor GDAL's error in its context."""
    from distributed.core import clean_exception, error_message

    from geoseg.raster import WindowSource, inspect_raster

    info = inspect_raster(_truncated(make_raster(name="bad.tif", tiled=True, blockxsize=16, blockysize=16)))
    with pytest.raises(RasterReadError) as raised:
        WindowSource(info.path, [1, 2, 3], has_mask=info.has_mask)(slice(0, 64), slice(0, 80))
    sent = error_message(raised.value)  # what a worker sends back, pickled
    _, error, _ = clean_exception(sent["exception"].data)  # what the client raises
    assert type(error) is RasterReadError and str(error) == str(raised.value)
    assert "bad.tif: cannot read rows 0-63, cols 0-79" in str(error)


def test_output_folders_made_by_a_failed_run_go_and_those_of_others_stay(tmp_path, monkeypatch):
    """'runs/../out' left an empty runs/ behind; a run that failed removed the new folder another run had made
    and was about to write into."""
    from geoseg.pipeline import new_folders_removed_on_error, prepare_output_dir
    from geoseg.raster import staging_dir

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError), new_folders_removed_on_error("runs/../out/a"):
        prepare_output_dir("runs/../out/a", lambda d: {"mask": d / "x_mask.tif"}, False)
        raise ValueError("bad bands, found after the folder was made")
    assert list(tmp_path.iterdir()) == []
    first = new_folders_removed_on_error("out")  # two runs into one new folder, their steps interleaved
    first.__enter__()
    second = new_folders_removed_on_error("out")
    second.__enter__()
    paths = prepare_output_dir("out", lambda d: {"mask": d / "x_mask.tif"}, False)
    error = ValueError("the first run's bad input")
    first.__exit__(ValueError, error, None)  # it made out/, empty still: removed
    with staging_dir(paths["mask"].parent) as staged:  # the second goes on
        assert staged.is_dir() and staged.parent.resolve() == tmp_path / "out"
    second.__exit__(None, None, None)
    assert (tmp_path / "out").is_dir()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_models_own_top_class_is_the_argmax_of_its_probabilities(tiny_fcn, precision):
    """predict_top computes the class and its probability inside the model's graph (a GPU then sends back
    two values a pixel, not one per class); it must agree with the probabilities it replaces."""
    from geoseg.inference import top_of
    from geoseg.models import load_bundle

    segmenter = load_bundle(tiny_fcn, precision=precision)
    batch = np.random.default_rng(3).normal(size=(2, 48, 64, 3)).astype(np.float32)
    np.testing.assert_array_equal(segmenter.predict_top(batch), top_of(segmenter.predict_proba(batch)))


@pytest.mark.parametrize("model", ["tiny_fcn", "tiny_tiled"])
def test_mask_and_confidence_do_not_depend_on_writing_probabilities(make_raster, tmp_path, request, model):
    """Without --probabilities only the class and its probability come back from the model; with it, all of
    them: both ways must write the same mask and confidence, for whole-chunk and fixed-tile models."""
    image, ref = make_raster(shape=(90, 110)), request.getfixturevalue(model)
    runs = [segment(image, tmp_path / f"out{i}", model=ref, chunk=40, confidence=True, probabilities=bool(i),
                    preview=False) for i in (0, 1)]
    for name in ("mask", "confidence"):
        np.testing.assert_array_equal(*(_read(r.outputs[name]) for r in runs))


@pytest.mark.parametrize("options", [
    {"chunk": 1.5}, {"chunk": True}, {"margin": "a"}, {"margin": float("inf")}, {"margin": 1.5}, {"margin": True},
    {"margin": 10**6}, {"tile": "x"}, {"tile": 10**6}, {"batch_size": "8"}, {"batch_size": None},
    {"confidence": "yes"}, {"resample": "no"}, {"client": "tcp://127.0.0.1:1"}, {"progress": 5},
])
def test_api_arguments_of_the_wrong_kind_are_named_before_anything_runs(make_raster, tmp_path, options):
    """These raised TypeError, ValueError or OverflowError from deep inside (confidence='yes' and progress=5 only
    inside Dask), numpy asked for 10.9 TiB for margin=10**6, and margin=1.5 or resample='no' ran as something else."""
    with pytest.raises((InputError, TilingError), match=next(iter(options))):
        segment(make_raster(), tmp_path / "out", model="threshold", **options)
    assert not (tmp_path / "out").exists()


def test_zipped_input_on_a_process_cluster_is_read_by_the_workers(make_raster, tmp_path):
    """Workers were asked os.path.isfile('/vsizip/...'), always False: every zipped raster was refused on a cluster."""
    import zipfile

    from distributed import Client, LocalCluster

    from geoseg.pipeline import _check_workers_see

    with zipfile.ZipFile(tmp_path / "flight.zip", "w") as archive:
        archive.write(make_raster("a.tif"), "a.tif")
    path = f"/vsizip/{tmp_path}/flight.zip/a.tif"
    alone = segment(path, tmp_path / "alone", model="threshold", preview=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        shared = segment(path, tmp_path / "shared", model="threshold", preview=False, client=client)
        assert shared.device == "Dask workers: CPU"
        with pytest.raises(InputError, match="cannot see this file"):  # and a missing archive is still refused
            _check_workers_see(client, f"/vsizip/{tmp_path}/missing.zip/a.tif")
        # a model file one worker could not see failed the raster midway, where a chunk went to it (h110)
        with pytest.raises(InputError, match=r"gone.keras: Dask worker\(s\) .* cannot see this model file"):
            _check_workers_see(client, path, [str(tmp_path / "gone.keras")])
    np.testing.assert_array_equal(_read(alone.outputs["mask"]), _read(shared.outputs["mask"]))


def test_the_model_files_a_cluster_run_checks_on_its_workers(tmp_path, tiny_fcn):
    from geoseg.pipeline import _model_files

    assert _model_files("builtin:threshold") == []
    assert _model_files(str(tiny_fcn)) == [str(tiny_fcn), str(tiny_fcn.with_suffix(".json"))]
    legacy, card = tmp_path / "old.h5", tmp_path / "card.json"
    legacy.write_bytes(b""), card.write_text("{}")
    assert _model_files(f"{legacy}?card={card}") == [str(legacy), str(card)]


def test_a_scheduler_without_workers_is_an_error_not_a_wait_forever(make_raster, tmp_path, monkeypatch):
    """`--scheduler` at a scheduler with no workers waited forever without a word."""
    import geoseg.pipeline as pipeline
    from distributed import Client, LocalCluster

    import time

    monkeypatch.setattr(pipeline, "WORKER_WAIT_S", 4)
    monkeypatch.setattr(pipeline, "EMPTY_AGAIN_S", 0.5)
    with LocalCluster(n_workers=0, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        with pipeline.rasters_in_turn(client):
            with pytest.raises(InputError, match=r"image.tif: not segmented: the Dask scheduler .* has no workers "
                                                 r"\(none came in 4 s\). Start some"):
                segment(make_raster(), tmp_path / "out", model="threshold", preview=False, client=client)
            # the next raster (a survey's) waits less: each waited the whole time, 60 s apiece for the rest (h134)
            started = time.monotonic()
            with pytest.raises(InputError, match=r"none came in 0.5 s"):
                segment(make_raster(), tmp_path / "out", model="threshold", preview=False, client=client)
            assert time.monotonic() - started < 3.5
        # a later, unrelated run on the same Client waits the whole time again: it waited 0.5 s (5 s) for workers
        # that were still starting
        with pytest.raises(InputError, match=r"none came in 4 s"):
            segment(make_raster(), tmp_path / "out", model="threshold", preview=False, client=client)
        with pytest.raises(InputError, match=r"none came in 4 s"):  # and a run alone never marks the cluster
            segment(make_raster(), tmp_path / "out", model="threshold", preview=False, client=client)
    assert not (tmp_path / "out").exists()


def test_a_cluster_that_loses_all_its_workers_midway_fails_the_raster(make_raster, tmp_path, monkeypatch, caplog):
    """Workers gone for good mid-run (a batch job's end, preempted nodes): the run waited for ever without a word,
    and workers killed by their memory limit went unsaid for minutes of restarts (h134)."""
    import dask
    from distributed import Client, LocalCluster

    import geoseg.pipeline as pipeline
    from geoseg.errors import ClusterError

    monkeypatch.setattr(pipeline, "WORKER_WAIT_S", 1)
    monkeypatch.setattr(pipeline, "STEP_S", 0.2)
    # the worker runs in this process, whose memory after a whole suite (3.1 GB in one fresh clone) paused it first
    unpaused = {"distributed.worker.memory.pause": False, "distributed.worker.memory.spill": False,
                "distributed.worker.memory.target": False}
    with dask.config.set(unpaused), LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                                 dashboard_address="127.0.0.1:0", memory_limit="3GiB") as cluster, \
            Client(cluster) as client:
        def gone(fraction):
            if cluster.workers:
                cluster.scale(0)

        with pytest.raises(ClusterError, match="the Dask cluster has had no workers for 1 s while it was segmented"):
            segment(make_raster(shape=(256, 256)), tmp_path / "out", model="threshold", chunk=32, preview=False,
                    client=client, progress=gone)
    assert not (tmp_path / "out").exists()
    assert re.search(r"image.tif: Dask worker\(s\) \S+ left the cluster while it was segmented \(memory limit "
                     r"3.0 GiB: killed for exceeding it\?\)", caplog.text), caplog.text


def test_a_scheduler_lost_once_the_outputs_are_in_place_still_gives_the_result(make_raster, tmp_path):
    """The workers were asked what they ran on after the outputs were in place: a scheduler lost then was a 30-line
    AttributeError traceback, and that raster of a survey was reported failed with its outputs written (h161)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        def lost(fraction):
            if fraction >= 1.0:
                client.close()

        result = segment(make_raster(shape=(64, 64)), tmp_path / "out", model="threshold", chunk=32, preview=False,
                         client=client, progress=lost)
    assert result.device == "Dask workers"
    assert Path(result.outputs["mask"]).is_file()


def test_a_chunk_that_fails_on_a_cluster_leaves_no_task_behind(make_raster, tmp_path):
    """The failed chunk's task stayed on the scheduler, erred, and its Future in the client with its traceback:
    one more for every failed raster of a survey on a shared scheduler (h99)."""
    import gc
    import shutil
    import time

    from distributed import Client, LocalCluster

    source = make_raster(name="many.tif", shape=(300, 260))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        path = tmp_path / "cut.tif"
        shutil.copy(source, path)
        calls = []

        def cut(fraction):
            calls.append(fraction)
            if len(calls) == 2:
                os.truncate(path, 0)

        with pytest.raises(RasterReadError):
            segment(path, tmp_path / "out", model="threshold", chunk=16, preview=False, client=client, progress=cut)
        gc.collect()
        deadline = time.monotonic() + 10
        while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0
        assert not client.futures
    assert not (tmp_path / "out").exists()


def test_a_closed_client_is_a_cluster_error(make_raster, tmp_path):
    """A notebook's Client closed, or its cluster gone, was "AttributeError: 'NoneType' object has no attribute
    'broadcast'" from inside distributed."""
    from distributed import Client, LocalCluster

    from geoseg.errors import ClusterError

    with LocalCluster(n_workers=1, processes=False, dashboard_address="127.0.0.1:0") as cluster:
        client = Client(cluster)
        client.close()
        with pytest.raises(ClusterError, match=r"\.tif: not segmented: the Dask client is closed, not running"):
            segment(make_raster(), tmp_path / "out", model="threshold", preview=False, client=client)
    assert not (tmp_path / "out").exists()


def test_a_clusters_own_failures_are_geoseg_errors():
    """A worker killed for memory, or a scheduler lost, was distributed's traceback: the CLI stopped the batch
    there (no --json, the other inputs not segmented), and survey logged a traceback per raster."""
    from concurrent.futures import CancelledError
    from types import SimpleNamespace

    from distributed.scheduler import KilledWorker

    from geoseg.errors import ClusterError, GeosegError
    from geoseg.pipeline import _raise_cluster_error

    with pytest.raises(ClusterError, match=r"big.tif: Dask workers died running one of its chunks \(.*\). A "
                                           "worker's memory limit is the usual cause") as caught:
        _raise_cluster_error(KilledWorker("task", SimpleNamespace(address="tcp://w:1"), 3), "big.tif")
    assert isinstance(caught.value, GeosegError)
    with pytest.raises(ClusterError, match="big.tif: the Dask scheduler was lost while it was segmented"):
        _raise_cluster_error(CancelledError("scheduler-connection-lost"), "big.tif")
    with pytest.raises(ClusterError, match=r"lost while it was segmented \(3 Futures cancelled\)\. Check"):
        _raise_cluster_error(CancelledError("3 Futures cancelled:"), "big.tif")  # no dangling colon (h110)
    with pytest.raises(ZeroDivisionError):  # a bug is no cluster failure: its traceback stays
        _raise_cluster_error(ZeroDivisionError(), "big.tif")


def test_a_run_without_a_keras_model_does_not_import_tensorflow(make_raster, tmp_path):
    """Saying 'CPU' imported TensorFlow (3 s, 550 MB) after a baseline's run, and peak_memory_mb was read before it."""
    import subprocess
    import sys

    code = ("import resource, sys, geoseg; r = geoseg.segment(sys.argv[1], sys.argv[2], model='threshold', preview=False); "
            "print('tensorflow' in sys.modules, r.device, r.peak_memory_mb >= resource.getrusage(resource.RUSAGE_SELF)"
            ".ru_maxrss / 1024 - 1)")
    out = subprocess.run([sys.executable, "-c", code, str(make_raster()), str(tmp_path / "out")], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["False", "CPU", "True"]


def test_subpackages_are_reached_from_the_package_as_before_it_imported_lazily():
    """`import geoseg; geoseg.models.get_segmenter(...)` was an AttributeError once `import geoseg` became lazy."""
    import subprocess
    import sys

    code = ("import sys, geoseg; print('dask' in sys.modules, callable(geoseg.models.get_segmenter), "
            "callable(geoseg.raster.inspect_raster), 'workflows' in dir(geoseg))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "True", "True", "True"]


def test_tab_completion_of_the_package_offers_its_api_not_its_own_imports():
    """`dir(geoseg)`, which IPython and Jupyter complete `geoseg.<Tab>` from, listed `Any`, `TYPE_CHECKING`,
    `importlib`, `logging`, `neutral_case_rules` and `sys` beside the API, as if they were geoseg's (h159)."""
    import geoseg

    names = dir(geoseg)
    assert not {"Any", "TYPE_CHECKING", "importlib", "logging", "neutral_case_rules", "sys"} & set(names)
    assert set(geoseg.__all__) | {"errors", "models", "workflows"} <= set(names)
    assert {n for n in names if not n.startswith("_")} <= set(geoseg.__all__) | set(geoseg._SUBMODULES)


def test_a_full_disk_while_writing_the_preview_is_an_output_error_and_leaves_nothing(make_raster, tmp_path,
                                                                                     monkeypatch):
    """Pillow's OSError (No space left on device) came out raw, and named no file of the user's."""
    import errno

    from PIL import Image

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OutputError, match=r"out/image_preview\.png: could not be written \(.*No space left"):
        segment(make_raster(), tmp_path / "out", model="threshold")
    assert not (tmp_path / "out").exists()
    from geoseg.workflows import scene

    with pytest.raises(OutputError, match=r"sc/image_scene\.png: could not be written") as caught:  # not .geoseg-*/
        scene(make_raster(), tmp_path / "sc", model="threshold")
    assert ".geoseg-" not in str(caught.value)


def test_an_input_deleted_before_its_preview_is_a_one_line_error_and_leaves_nothing(make_raster, tmp_path):
    """An input deleted (or moved) after its chunks were read but before the preview read it again was a
    RasterioIOError traceback from `segment` and `flood` (their maps read it too)."""
    path = make_raster("gone.tif", shape=(300, 300))

    def delete_when_writing(fraction):
        if fraction > 0.9 and path.exists():
            path.unlink()

    with pytest.raises(RasterReadError, match=r"gone\.tif: could not be opened again .*Put it back and run again"):
        segment(path, tmp_path / "out", model="threshold", progress=delete_when_writing)
    assert not (tmp_path / "out").exists()


def test_tile_and_chunk_messages_give_figures_that_hold(make_raster, tiny_fcn, tmp_path, caplog):
    """'Use a tile larger than 608' was followed by 'Try tile=640' for 620; the small-chunk warning quoted the
    default chunk's overlap on a large raster (1.6x), not on the raster at hand."""
    path = make_raster()  # 64 x 80, tiny-fcn: margin 23, multiple of 4
    with pytest.raises(TilingError, match=r"Use a tile of at least 50 \(2 margins and a multiple of 4\)"):
        segment(path, tmp_path / "a", model=tiny_fcn, tile=40, preview=False)
    segment(path, tmp_path / "b", model=tiny_fcn, tile=50, preview=False)  # the figure given works
    segment(path, tmp_path / "c", model=tiny_fcn, chunk=4, preview=False)
    assert "the default chunk (64x80 on this raster) sees 2.7x" in caplog.text


def test_a_class_mask_given_as_input_is_named_as_one(make_raster, tmp_path):
    """A survey of masks.vrt advised expanding geoseg's own masks to RGB and segmenting them."""
    from geoseg.workflows import survey

    first = segment(make_raster(), tmp_path / "out", model="threshold", preview=False)
    survey([make_raster("a.tif"), make_raster("b.tif", seed=1)], tmp_path / "sv", model="threshold", vector=False)
    for mask in (first.outputs["mask"], tmp_path / "sv" / "masks.vrt"):
        with pytest.raises(BandError, match="a class mask .*not an image: segment the image it was made from"):
            segment(mask, tmp_path / "again", model="threshold", preview=False)


def test_top_class_of_a_bfloat16_model_that_ends_in_a_nested_head():
    """with_precision keeps only a top-level last layer in float32: a nested head returned bfloat16, and predict_top
    stacked it with the float32 class ids (TypeError), where predict_proba worked."""
    import keras

    from geoseg.inference import top_of
    from geoseg.models import ModelCard
    from geoseg.models.segmenter import KerasSegmenter, with_precision

    keras.utils.set_random_seed(0)
    head_in = keras.Input((None, None, 4))
    head = keras.Model(head_in, keras.layers.Softmax()(keras.layers.Conv2D(2, 1)(head_in)), name="head")
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, head(keras.layers.Conv2D(4, 3, padding="same")(inputs)))
    card = ModelCard.from_dict({"name": "m", "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}],
                                "bands": [1, 2, 3], "normalization": {"method": "scale", "scale": 0.5}, "margin": 1})
    segmenter = KerasSegmenter(with_precision(model, "bfloat16"), card)
    batch = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(segmenter.predict_top(batch), top_of(segmenter.predict_proba(batch)))


def test_the_suggested_normalisation_comes_from_the_card_whatever_was_overridden(make_raster, tiny_fcn, tmp_path,
                                                                                 caplog):
    """With normalization= given, the suggestion was built on the override's scale and offset, not the card's."""
    data = np.random.default_rng(0).integers(0, 1500, (3, 64, 64)).astype(np.uint16)
    segment(make_raster(data=data), tmp_path / "out", model=tiny_fcn, preview=False,
            normalization={"method": "scale", "scale": 0.01, "offset": -1.0})
    assert "pass --normalize scale:0.00066" in caplog.text and ",-1 (normalization" not in caplog.text
    assert "'offset': -1}" not in caplog.text


def test_a_fixed_tile_model_is_told_which_margin_fits(make_raster, tiny_tiled, tmp_path):
    """'Use a tile of at least 50' was advised for a model that takes only 48 px tiles."""
    with pytest.raises(TilingError, match="takes fixed 48px tiles.*Use a --margin of at most 23"):
        segment(make_raster(), tmp_path / "out", model=tiny_tiled, margin=24, preview=False)
    segment(make_raster(), tmp_path / "ok", model=tiny_tiled, margin=23, preview=False)


def test_a_local_engineering_crs_gets_areas_in_its_unit(make_raster, tmp_path):
    """A drone survey's site grid (LOCAL_CS) was a traceback after the segmentation had run: rasterio's
    linear_units_factor raises for a CRS neither projected nor geographic (so did vectorize --simplify)."""
    from rasterio.crs import CRS

    from geoseg import vectorize

    for unit, factor in (('"metre",1', 1.0), ('"US survey foot",0.304800609601219', 0.304800609601219)):
        crs = CRS.from_wkt(f'LOCAL_CS["site grid",UNIT[{unit}],AXIS["Easting",EAST],AXIS["Northing",NORTH]]')
        path = make_raster(name=f"site{factor}.tif", shape=(30, 40), crs=crs)
        result = segment(path, tmp_path / "out", model="threshold", preview=False, overwrite=True)
        assert sum(c["area_m2"] for c in result.classes) == pytest.approx(30 * 40 * 0.25 * factor**2, abs=0.01)
        layer = vectorize(result.outputs["mask"], tmp_path / "site.gpkg", simplify=1.0, overwrite=True)
        assert layer.polygons > 0


def test_the_legend_draws_square_metres_and_accents_and_fits_its_lines(make_raster, tmp_path):
    """Pillow's own font has no "²" nor "ê": previews read "m□" and "for□t"; a 0.25 m² class read "0 m²", and a
    long class name ran off the image."""
    from PIL import ImageFont

    from geoseg.models.card import ClassInfo
    from geoseg.preview import _area_text, _drawable, legend_font, render_map

    assert [_area_text(a) for a in (0.25, 3.5, 35, 12_345)] == [", 0.25 m²", ", 3.5 m²", ", 35 m²", ", 1.23 ha"]
    assert _drawable("1 m²", ImageFont.load_default(size=15)) == "1 m2"  # no glyph: written so it reads
    image = make_raster(shape=(20, 30))
    mask = make_raster(name="mask.tif", shape=(20, 30), bands=1, data=np.zeros((1, 20, 30), np.uint8))
    name = "forêt de feuillus et de résineux mélangés, à basse altitude"
    canvas = render_map(str(image), mask, [ClassInfo(0, name, "#00AA00")], [{"pixels": 600, "area_m2": 150.0}],
                        [1, 2, 3])
    font = legend_font(15)
    assert canvas.width >= 30 + font.getlength(f"{name}: 100.0%, 150 m²")
    if font.getname()[0] == "Aileron":
        pytest.skip("no DejaVu, Liberation, Arial or Helvetica font on this machine: Pillow's own is used")
    assert _drawable("1 m²", font) == "1 m²"


@pytest.mark.parametrize("south_up", [False, True])
def test_maps_show_a_south_up_raster_north_up_with_its_outlines(make_raster, south_up):
    """A south-up grid (rows running north) was drawn upside down, unlike QGIS, and outlines with it."""
    import geopandas as gpd
    import shapely
    from affine import Affine

    from geoseg.models.card import ClassInfo
    from geoseg.preview import render_map

    rows = np.arange(400)[:, None].repeat(300, 1)
    north = rows < 100 if not south_up else rows >= 300  # the northern quarter, wherever the grid stores it
    transform = Affine(1.0, 0, 500000.0, 0, 1.0, 2799600.0) if south_up else Affine(1.0, 0, 500000.0, 0, -1.0, 2800000.0)
    image = make_raster(shape=(400, 300), transform=transform, data=np.where(north, 250, 10)[None].repeat(3, 0).astype(np.uint8))
    mask = make_raster(name="mask.tif", shape=(400, 300), bands=1, transform=transform,
                       data=north[None].astype(np.uint8))
    zone = gpd.GeoSeries([shapely.box(500050.0, 2799920.0, 500250.0, 2799980.0)], crs="EPSG:32640")  # in the north
    classes = [ClassInfo(0, "south", "#0000FF"), ClassInfo(1, "north", "#FF0000")]
    canvas = np.asarray(render_map(str(image), mask, classes, [{"pixels": 90000}, {"pixels": 30000}], [1, 2, 3],
                                   outlines=zone))
    left = canvas[:400, :300]  # the image panel (the legend below has a red swatch)
    assert (left[20, 10] > 200).all() and (left[380, 10] < 40).all()  # the bright north at the top
    drawn = np.argwhere((left == 0).all(-1))  # outlines are black on white (the image's darkest is 10)
    assert len(drawn) and drawn[:, 0].max() < 100  # the zone's outline in the top quarter too


def test_map_outlines_are_drawn_only_over_the_raster(make_raster):
    """A district reaching past the raster's east edge was drawn on into the mask panel, and one wholly outside
    as a box over the mask; outlines were red, flood's "flooded" red (h130)."""
    import geopandas as gpd
    import shapely

    from geoseg.models.card import ClassInfo
    from geoseg.preview import render_map

    image = make_raster(shape=(100, 120), data=np.full((3, 100, 120), 120, np.uint8))
    mask = make_raster(name="mask.tif", shape=(100, 120), bands=1, data=np.zeros((1, 100, 120), np.uint8))
    classes, table = [ClassInfo(0, "flooded", "#E8282B")], [{"pixels": 12000}]

    def drawn(zones):
        return np.asarray(render_map(str(image), mask, classes, table, [1, 2, 3], outlines=gpd.GeoSeries(
            zones, crs="EPSG:32640")))

    plain = drawn([])
    # 0.5 m pixels from (500000, 2800000): the raster spans x 500000-500060, y 2799950-2800000
    outside = drawn([shapely.box(500100.0, 2799960.0, 500200.0, 2799990.0)])
    assert (outside == plain).all()
    across = drawn([shapely.box(500040.0, 2799960.0, 500200.0, 2799990.0)])  # past the east edge
    side = (across.shape[1] - 8) // 2  # each panel's width (small rasters are drawn larger)
    rows = side * 100 // 120
    mask_panel = across[:rows, side + 8:]
    black = (mask_panel == 0).all(-1)
    # the zone's west side, at 2/3 of the panel, and none spilt over into the panel's left part
    assert black.any() and not black[:, : side // 2].any()
    assert not ((across[:rows] == [255, 0, 0]).all(-1)).any()  # no red outline to take for "flooded"


def test_an_interrupted_run_makes_no_more_model_calls(make_raster, tiny_fcn, tmp_path, monkeypatch):
    """After Ctrl-C a thread waiting for the model still ran a whole chunk (45 s after "Interrupted", past a
    batch scheduler's grace period before SIGKILL); the calls of an interrupted run are now refused."""
    import geoseg.models.segmenter as segmenter_module
    import geoseg.pipeline as pipeline
    from geoseg.models.segmenter import RunCancelled, calls_of_run, cancel_run

    model = get_segmenter(str(tiny_fcn))
    batch = np.zeros((1, 32, 32, 3), np.float32)
    with calls_of_run("a"):
        assert model.predict_top(batch).shape == (1, 32, 32, 2)
    cancel_run("a")
    with calls_of_run("a"), pytest.raises(RunCancelled):
        model.predict_proba(batch)
    with calls_of_run("b"):  # another run, or none, is not held up
        model.predict_proba(batch)
    model.predict_proba(batch)

    def interrupted(self, key, value):
        raise KeyboardInterrupt

    before = set(segmenter_module._CANCELLED)
    monkeypatch.setattr(pipeline._Writer, "__setitem__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        segment(make_raster(shape=(96, 96)), tmp_path / "out", model=tiny_fcn, chunk=32, preview=False)
    assert len(segmenter_module._CANCELLED - before) == 1  # this run's queued calls are refused


def test_an_input_gone_during_the_run_is_a_read_error_naming_it(make_raster, tmp_path):
    """Deleted (or moved) mid-run: rasterio's traceback, and the run's other inputs were not segmented."""
    from geoseg.errors import RasterReadError
    from geoseg.raster import WindowSource

    path = make_raster(shape=(40, 50))
    source = WindowSource(str(path), [1, 2, 3], has_mask=False)
    assert source(slice(0, 10), slice(0, 10))[0].shape == (10, 10, 3)
    path.unlink()
    with pytest.raises(RasterReadError, match=r"image.tif: could not be opened again while it was being segmented .*"
                                              "moved, deleted or replaced during the run"):
        source(slice(0, 10), slice(0, 10))


def test_outputs_that_another_run_puts_in_place_meanwhile_are_not_replaced(make_raster, tmp_path, monkeypatch):
    """Two runs into one folder without --overwrite both succeeded, the second replacing the first's files: the
    check for existing outputs ran minutes before the moves."""
    import geoseg.pipeline as pipeline

    image, out = make_raster(shape=(40, 50)), tmp_path / "out"
    real = pipeline._class_table

    def meanwhile(card, mask, info):  # after the check at the start, before the moves
        (out / "image_mask.tif").write_text("the other run's mask")
        return real(card, mask, info)

    monkeypatch.setattr(pipeline, "_class_table", meanwhile)
    with pytest.raises(OutputError, match=r"image_mask.tif appeared while this run worked \(another run into the same "
                                          r"folder\?\); nothing of this run was put in place. Pass --overwrite"):
        segment(image, out, model="threshold")
    assert (out / "image_mask.tif").read_text() == "the other run's mask"
    assert sorted(p.name for p in out.iterdir()) == ["image_mask.tif"]  # no preview, style or staging folder
    segment(image, out, model="threshold", overwrite=True)  # --overwrite replaces it, as asked
    dangling = tmp_path / "again" / "image_preview.png"  # a link to nothing passes the first check, so the second
    dangling.parent.mkdir()
    dangling.symlink_to(tmp_path / "nothing.png")
    monkeypatch.setattr(pipeline, "_class_table", real)
    segment(image, tmp_path / "again", model="threshold")  # took it for an output that "appeared while this run worked"
    assert dangling.is_file() and not dangling.is_symlink()


def test_regrid_fills_a_valid_pixel_from_across_its_blocks_edge(make_raster, tmp_path):
    """Valid input pixels whose model pixel is nodata take the nearest class, found within each block only: in a
    block with no model value they stayed nodata, so the mask's nodata depended on where blocks fell."""
    from geoseg.raster import WindowSource, inspect_raster, regrid

    model = np.full((1, 3, 10), 255, np.uint8)
    model[:, :, :6] = 1  # the model's pixels (2 m): classes in columns 0-5, nodata after
    coarse = make_raster(name="coarse.tif", data=model, nodata=255, transform=from_origin(500000.0, 2800000.0, 2, 2))
    data = np.full((1, 6, 20), 9, np.uint8)
    data[:, :, 14:] = 0  # the input (1 m): valid in columns 0-13, two beyond the model's classes
    fine = make_raster(name="fine.tif", data=data, nodata=0, transform=from_origin(500000.0, 2800000.0, 1, 1))
    regrid(coarse, tmp_path / "out.tif", inspect_raster(fine), resampling="nearest", block=4,
           valid=WindowSource(str(fine), [1], has_mask=True))
    with rasterio.open(tmp_path / "out.tif") as ds:
        out = ds.read(1)
    assert ((out == 255) == (data[0] == 0)).all() and (out[:, :14] == 1).all()  # columns 12-13: a block of their own


def _noisy_rgb_u16(path: Path, *, block: int) -> Path:
    """A 2048^2 uint16 RGB GeoTIFF of noise, deflated in `block` px tiles, nodata 0."""
    with rasterio.open(path, "w", driver="GTiff", width=2048, height=2048, count=3, dtype="uint16", nodata=0,
                       tiled=True, blockxsize=block, blockysize=block, compress="deflate") as ds:
        ds.write(np.random.default_rng(0).integers(1, 4000, (3, 2048, 2048), dtype=np.uint16))
    return path


def bytes_read() -> int:
    """Bytes this process has read so far (Linux)."""
    return int(next(line for line in Path("/proc/self/io").read_text().splitlines()
                    if line.startswith("rchar")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts bytes read through Linux's /proc/self/io")
def test_a_decimated_read_of_a_raster_larger_than_the_cache_reads_it_once(tmp_path, monkeypatch):
    """GDAL resamples band by band: a pixel-interleaved raster larger than the block cache was read (and
    decompressed) once per band, 3x for RGB. Read in strips that fit, it is read once, to the same pixels."""
    import geoseg.raster as raster_module

    monkeypatch.setattr(raster_module, "GDAL_CACHE_MB", 4)  # a 24 MB raster against a 4 MB cache
    monkeypatch.setattr(raster_module, "STRIP_BYTES", 1024 * 1024)  # and windows of a quarter of it
    path = _noisy_rgb_u16(tmp_path / "rgb.tif", block=64)
    size = path.stat().st_size
    for mask in (False, True):
        before = bytes_read()
        got = raster_module._read_decimated(str(path), [1, 2, 3], 512, 512, "average", mask)
        assert bytes_read() - before < 1.5 * size, (mask, (bytes_read() - before) / size)
        with rasterio.open(path) as ds:
            if mask:
                assert got.shape == (512, 512) and got.all()
            else:
                assert (got == np.moveaxis(ds.read(out_shape=(3, 512, 512), resampling=Resampling.average), 0, -1)).all()
    with rasterio.open(path, "r+") as ds:  # with overviews, windows at fractions of theirs averaged otherwise
        ds.build_overviews([2, 4], Resampling.average)
    got = raster_module._read_decimated(str(path), [1, 2, 3], 700, 700, "average", False)
    with rasterio.open(path) as ds:
        assert (got == np.moveaxis(ds.read(out_shape=(3, 700, 700), resampling=Resampling.average), 0, -1)).all()


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts bytes read through Linux's /proc/self/io")
def test_a_decimated_read_reads_each_block_about_once(tmp_path):
    """GDAL_CACHEMAX=128 went to rasterio as 128 bytes of block cache: the whole-raster sample of a 4096^2
    uint16 raster with nodata read 31 GB of its 77 MB and took 127 s (0.9 s with the cache)."""
    from geoseg.raster import read_preview

    path = _noisy_rgb_u16(tmp_path / "u16.tif", block=256)
    size = path.stat().st_size
    before = bytes_read()
    valid = read_preview(str(path), [1, 2, 3], 512, min_side=1, mask=True)
    image = read_preview(str(path), [1, 2, 3], 512, min_side=1)
    assert valid.all() and image.shape == (512, 512, 3)
    assert bytes_read() - before < 6 * size, (bytes_read() - before) / size
    # the preview then reads none of it again (a raster without overviews was read whole for the calibration
    # sample, then for the preview, then for scene's map); a copy each time, and a changed file is read anew
    before = bytes_read()
    again = read_preview(str(path), [1, 2, 3], 512)  # with a preview's min_side (384): the same 512 px
    assert bytes_read() - before < 0.05 * size and (again == image).all()
    # the calibration sample reads the pixels, never overviews (`_whole_raster_sample`): where there are none,
    # that is the preview's read too, and the preview took the whole raster again (153 MiB of a 152 MiB file)
    before = bytes_read()
    sample = read_preview(str(path), [1, 2, 3], 512, min_side=1, overviews=False)
    assert bytes_read() - before < 0.05 * size and (sample == image).all()
    again[:] = 0
    assert (read_preview(str(path), [1, 2, 3], 512, min_side=1) == image).all()
    with rasterio.open(path, "r+") as ds:
        ds.write(np.full((3, 2048, 2048), 7, np.uint16))
    assert (read_preview(str(path), [1, 2, 3], 512, min_side=1) == 7).all()


@pytest.mark.parametrize("threads", ["abc", 0])
def test_a_bad_dask_num_workers_is_named(make_raster, tmp_path, threads):
    """DASK_NUM_WORKERS=abc or 0 was a TypeError or ValueError traceback from the thread pool, after the model."""
    import dask

    with dask.config.set(num_workers=threads), pytest.raises(InputError, match=rf"DASK_NUM_WORKERS.* Received: "
                                                                                 rf"{threads!r}; unset it"):
        segment(make_raster(), tmp_path / "out", model="threshold")
    assert not (tmp_path / "out").exists()


def _stacked_vrt(folder: Path, files: list[Path]) -> Path:
    """A VRT of single-band files, one band each, as `gdalbuildvrt -separate` writes it: each its own type."""
    bands = []
    for i, f in enumerate(files, 1):
        with rasterio.open(f) as ds:
            width, height, transform, crs = ds.width, ds.height, ds.transform, ds.crs
            kind = {"float32": "Float32", "int16": "Int16", "uint8": "Byte"}[ds.dtypes[0]]
            nodata = f"<NoDataValue>{ds.nodata:g}</NoDataValue>" if ds.nodata is not None else ""
        bands.append(f'<VRTRasterBand dataType="{kind}" band="{i}">{nodata}<SimpleSource><SourceFilename '
                     f'relativeToVRT="0">{f}</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>')
    path = folder / "stack.vrt"
    path.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{crs.to_wkt()}</SRS>'
                    f'<GeoTransform>{", ".join(map(str, transform.to_gdal()))}</GeoTransform>{"".join(bands)}'
                    '</VRTDataset>')
    return path


def test_a_vrt_of_bands_of_several_types_is_read_as_the_type_that_holds_them(make_raster, tmp_path):
    """QGIS's Build Virtual Raster of Landsat bands (float32 and an int16 one) ended segment and train in
    rasterio's "more than one 'dtype' found" traceback."""
    from geoseg.models.training import _without_nodata
    from geoseg.raster import WindowSource, inspect_raster

    rng = np.random.default_rng(0)
    red = make_raster(name="red.tif", data=rng.random((1, 40, 50), np.float32) * 200)
    green = make_raster(name="green.tif", data=rng.integers(0, 200, (1, 40, 50)).astype(np.int16))
    blue = make_raster(name="blue.tif", data=rng.random((1, 40, 50), np.float32) * 200)
    vrt = _stacked_vrt(tmp_path, [red, green, blue])
    assert inspect_raster(vrt).dtype == "float32"
    data, valid = WindowSource(str(vrt), [3, 2, 1], has_mask=False)(slice(0, 40), slice(0, 50))
    with rasterio.open(green) as g, rasterio.open(blue) as b:
        assert data.dtype == np.float32 and valid.all()
        assert np.array_equal(data[..., 1], g.read(1)) and np.array_equal(data[..., 0], b.read(1))
    with rasterio.open(vrt) as ds:
        trained, _ = _without_nodata(ds, [1, 2, 3])
    assert np.array_equal(trained[..., [2, 1, 0]], data)
    result = segment(vrt, tmp_path / "out", model="threshold", normalization={"method": "none"})
    with rasterio.open(result.outputs["mask"]) as ds:
        assert ds.shape == (40, 50) and (ds.read(1) != 255).all()


@pytest.mark.parametrize("dtype, nodata", [("float32", -9999), ("int16", -32768), ("float32", 3.4e38), ("uint8", 0),
                                           ("float32", 0)])
def test_a_pixel_with_one_band_at_nodata(make_raster, tmp_path, dtype, nodata):
    """One Landsat band was nodata (-99999) on 22% of a scene where the others had data; those pixels counted as
    valid, and the model read -99999 as a pixel, in segment and in training. Where the nodata value is such a
    sentinel the pixel is nodata, as one with a NaN is; where it is 0, a dark 8-bit pixel or open water's
    near-infrared 0.0 in a float raster, GDAL's rule holds (a first fix lost whole lakes)."""
    from geoseg.models.training import _without_nodata
    from geoseg.raster import WindowSource

    data = np.full((3, 30, 40), 100, dtype)
    data[2, :, :10] = nodata  # one band's nodata on the left quarter
    data[:, :5, 30:] = nodata  # every band's in a corner
    image = make_raster(data=data, nodata=nodata)
    _, valid = WindowSource(str(image), [1, 2, 3], has_mask=True)(slice(0, 30), slice(0, 40))
    with rasterio.open(image) as ds:
        _, trained = _without_nodata(ds, [1, 2, 3])
    expected = np.ones((30, 40), bool)
    expected[:5, 30:] = False
    if nodata != 0:
        expected[:, :10] = False
    assert np.array_equal(valid[..., 0], expected) and np.array_equal(trained, expected)


def test_warning_filters_set_by_overlapping_threads_are_all_put_back():
    """survey(jobs=3) left the process ignoring NotGeoreferencedWarning for good: warnings.catch_warnings() put
    back what each block had saved, so interleaved blocks left one thread's filters in place."""
    import threading
    import warnings

    from geoseg.errors import catch_warnings

    before = list(warnings.filters)
    entered, leave = threading.Event(), threading.Event()

    def first():
        with catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    entered.wait(10)
    with catch_warnings():  # enters after the first, which leaves first
        warnings.simplefilter("ignore", FutureWarning)
        leave.set()
        thread.join(10)
    assert warnings.filters == before


def test_a_signal_handler_set_outside_python_is_left_alone(monkeypatch):
    """An embedding program's own SIGTERM handler (in C: Python's signal module reports None for it) was replaced
    by SIG_DFL after the final renames, and the host's next SIGTERM ended it (h93)."""
    import signal

    from geoseg.files import signals_held

    real = signal.getsignal
    before, interrupt = real(signal.SIGTERM), real(signal.SIGINT)
    monkeypatch.setattr(signal, "getsignal", lambda sig: None if sig == signal.SIGTERM else real(sig))
    with signals_held():
        assert real(signal.SIGTERM) is before and real(signal.SIGINT) is not interrupt  # Ctrl-C is still held
    assert real(signal.SIGTERM) is before and real(signal.SIGINT) is interrupt


def test_the_result_carries_the_masks_georeferencing_and_styles(make_raster, tmp_path):
    """A script had to open the mask again to learn where it lies (h93), and `outputs` did not name the styles."""
    from affine import Affine
    from PIL import Image

    path = make_raster(transform=Affine(0.5, 0.1, 500000.0, 0.05, -0.5, 2800000.0))  # rotated, as a drone grid
    result = segment(path, tmp_path / "out", model="threshold", vector=True, preview=False)
    with rasterio.open(result.outputs["mask"]) as ds:
        assert result.crs == "EPSG:32640" and Affine(*result.transform) == ds.transform
        assert result.bounds == list(ds.bounds)
    assert result.styles == {"mask": str(tmp_path / "out" / "image_mask.qml"),
                             "vector": str(tmp_path / "out" / "image_polygons.qml")}
    assert all(Path(p).is_file() for p in result.styles.values())
    assert result.to_dict()["transform"] == result.transform
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[:, :20] = (30, 80, 110)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    photo = segment(tmp_path / "photo.png", tmp_path / "photo", model="threshold", preview=False)
    assert (photo.crs, photo.transform, photo.bounds) == (None, None, None)  # not a y-down identity
    assert list(photo.styles) == ["mask"]


def test_a_result_prints_as_a_few_lines_for_people(make_raster, tmp_path):
    """A notebook showed a SegmentResult as one line of 1,500 characters (h133): str() and IPython's pretty form
    say the model, size, speed, shares and files on lines of their own; repr() stays the dataclass's."""
    result = segment(make_raster(), tmp_path / "out", model="threshold", preview=False)
    text = str(result)
    lines = text.splitlines()
    assert lines[0] == f"SegmentResult: threshold {result.model_version} on {result.input}"
    assert f"{result.width:,} × {result.height:,} px" in lines[1] and "peak" in lines[1]
    shown = [c for c in result.classes if c["pixels"]]
    total = sum(c["pixels"] for c in result.classes)
    assert lines[2] == "  classes: " + ", ".join(
        f"{c['name']} {100 * c['pixels'] / total:.1f}% ({c['area_m2']:,.0f} m²)" for c in shown)
    assert f"  mask: {result.outputs['mask']}" in lines
    assert max(map(len, lines)) < 200
    assert repr(result).startswith("SegmentResult(input=")

    class Printer:  # IPython's RepresentationPrinter takes text()
        def __init__(self):
            self.said = []

        def text(self, s):
            self.said.append(s)

    printer = Printer()
    result._repr_pretty_(printer, False)
    assert printer.said == [text]


def test_every_result_prints_as_a_few_lines_for_people(make_raster, tmp_path):
    """Only SegmentResult printed as a few lines (h133): a SceneResult was 1.5 kB on one line (its segmentation's dict
    in it), a SurveyResult ~1.5 kB per raster (300 kB for 200), an Evaluation its confusion matrix, compare's dict
    everything. Each now prints, and shows in IPython, what was done, the key numbers and where the outputs are;
    repr() stays the dataclass's (the dict's for compare, whose result is still a dict, JSON as --json writes it)."""
    from geoseg import Comparison, compare, evaluate, flood, scene, survey, vectorize
    from geoseg.workflows.survey import SurveyResult

    class Printer:  # IPython's RepresentationPrinter takes text()
        def __init__(self):
            self.said = []

        def text(self, s):
            self.said.append(s)

    def shown(result, head: str) -> list[str]:
        text = str(result)
        printer = Printer()
        result._repr_pretty_(printer, False)
        assert printer.said == [text]
        lines = text.splitlines()
        assert lines[0].startswith(head) and max(map(len, lines)) < 200 and len(lines) < 20, text
        return lines

    path = make_raster()
    sc = scene(path, tmp_path / "sc", model="threshold")
    lines = shown(sc, f"SceneResult: threshold {sc.segment['model_version']} on {path}")
    assert lines[1] == f"  {sc.segment['width']} × {sc.segment['height']} px, 100.0% with data"
    assert lines[2] == "  classes: " + ", ".join(f"{r['class']} {r['share_pct']:.1f}% ({r['area_m2']:,.0f} m²)"
                                                 for r in sc.composition if r["pixels"])
    assert f"  composition: {sc.outputs['composition']}" in lines
    assert repr(sc).startswith("SceneResult(segment={")

    pre = make_raster(name="before.tif", seed=1)
    fl = flood(path, tmp_path / "fl", pre=pre, model="threshold")
    lines = shown(fl, f"FloodResult: {path} against {pre}")
    assert lines[1] == f"  water: {fl.water_source}"
    assert lines[2] == "  classes: " + ", ".join(f"{c['name']} {c['area_m2']:,.0f} m²" for c in fl.classes)
    assert f"  tif: {fl.outputs['tif']}" in lines and repr(fl).startswith("FloodResult(water_source=")

    sv = survey([path, tmp_path / "gone.tif"], tmp_path / "sv", model="threshold")
    lines = shown(sv, "SurveyResult: 2 rasters: 1 done, 0 skipped (done before), 1 failed")
    assert lines[1].startswith(f"  failed: {tmp_path / 'gone.tif'}: no such file")
    assert f"  report: {sv.outputs['report']}" in lines and repr(sv).startswith("SurveyResult(done=[{")
    many = SurveyResult(failed=[{"input": f"{i}.tif", "error": f"{i}.tif: bad\n" + "x" * 500} for i in range(8)])
    lines = shown(many, "SurveyResult: 8 rasters: 0 done, 0 skipped (done before), 8 failed")
    assert lines[-1] == "  ... and 3 more failed (in `failed`)" and len(lines) == 7

    mask = sc.outputs["mask"]
    ev = evaluate("threshold", [path], [mask])
    lines = shown(ev, f"Evaluation: threshold {ev.version}: mean IoU 1.000, pixel accuracy 1.000 over "
                      f"{ev.pixels_scored:,} px")
    assert [line.split()[0] for line in lines[1:]] == list(ev.per_class)
    assert "IoU 1.000  F1 1.000  precision 1.000  recall 1.000" in lines[1]
    assert repr(ev).startswith("Evaluation(model='threshold'")

    cmp = compare(["threshold", "edges-watershed"], [path], [mask], output_dir=tmp_path / "cmp")
    assert isinstance(cmp, Comparison) and isinstance(cmp, dict) and json.loads(json.dumps(cmp)) == cmp
    lines = shown(cmp, "Comparison: threshold, edges-watershed")
    assert lines[1] == "  | class | threshold | edges-watershed |" and "  | **mean IoU** | **1.000** |" in "\n".join(lines)
    assert lines[-1].startswith(f"  disagreement: {cmp['disagreement'][0]} (all models agree on ")
    assert repr(cmp).startswith("{'models': ['threshold', 'edges-watershed']")

    vec = vectorize(mask, tmp_path / "layer.gpkg")
    lines = shown(vec, f"VectorResult: {vec.polygons:,} polygons in ")
    assert lines[1] == "  per class: " + ", ".join(f"{k} {v:,}" for k, v in vec.per_class.items())
    assert lines[2] == f"  layer: {tmp_path / 'layer.gpkg'}" and repr(vec).startswith("VectorResult(path=")


def test_the_api_docstrings_say_what_it_does(make_raster, tmp_path):
    """segment's Raises left out ClusterError and TypeError; `progress` said "0 to 1 as chunks complete", where the
    chunks are the first 0.9; `resample` spoke of a projected raster's pixels, where degrees and Web Mercator are
    resampled too; SceneResult.segment, a dict without `warnings`, was not described."""
    from geoseg.workflows.scene import SceneResult

    doc = " ".join(segment.__doc__.split())
    raises = doc.split("Raises")[1]
    assert "ClusterError" in raises and "TypeError" in raises
    assert "as chunks complete" not in doc and "the chunks are the first 0.9" in doc and "1.0 comes once" in doc
    assert "a projected raster's pixels" not in doc and "degrees, Web Mercator" in doc
    with pytest.raises(TypeError, match="segment takes one raster path"):
        segment(None, tmp_path / "out")
    scene_doc = " ".join(SceneResult.__doc__.split())
    assert "SegmentResult.to_dict()" in scene_doc and "without ``warnings``" in scene_doc


def test_a_raster_placed_without_a_crs_is_warned_about(make_raster, tmp_path, caplog):
    """A GeoTIFF with a .tfw and a .prj (GDAL reads no .prj beside a GeoTIFF) gave a mask and polygons with no CRS
    and no m², and no word (h105)."""
    path = make_raster(name="world.tif", crs=None)  # a geotransform of 0.5 m pixels, no CRS
    path.with_suffix(".prj").write_text('PROJCS["WGS 84 / UTM zone 40N"]')
    caplog.set_level("WARNING", logger="geoseg")
    result = segment(path, tmp_path / "out", model="threshold", preview=False)
    assert result.crs is None and result.transform is not None
    assert (f"world.tif: it has a geotransform but no CRS (GDAL does not read the world.prj beside it), so the mask "
            f"and polygons have none and no areas in m². Give it one: gdal_edit.py -a_srs {path.with_suffix('.prj')} "
            f"{path}") in caplog.text
    caplog.clear()
    from PIL import Image

    # a JPEG with a world file, the usual case: GDAL cannot update a JPEG ("does not support update access"), and
    # the advice as given failed (h120); with -ro the CRS goes into photo.jpg.aux.xml, which GDAL and QGIS read
    Image.fromarray(np.full((30, 40, 3), 120, np.uint8)).save(tmp_path / "photo.jpg")
    (tmp_path / "photo.jgw").write_text("0.5\n0\n0\n-0.5\n500000\n2800000\n")
    segment(tmp_path / "photo.jpg", tmp_path / "photo", model="threshold", preview=False)
    assert f"Give it one: gdal_edit.py -ro -a_srs EPSG:XXXX {tmp_path / 'photo.jpg'}" in caplog.text
    caplog.clear()
    segment(make_raster(name="placed.tif"), tmp_path / "placed", model="threshold", preview=False)
    assert "no CRS" not in caplog.text


def test_a_stopped_run_writes_no_chunk_into_the_datasets_its_caller_closes():
    """dask returns at a run's first exception (a web job's Cancelled from its progress callback) while its threads
    still compute chunks; their writes into the datasets the caller then closed crashed the web server (a segfault
    in GDAL, h114)."""
    import time
    from types import SimpleNamespace

    import dask
    import dask.array as da

    from geoseg.pipeline import _store, _Writer

    def chunk(i):
        if i == 0:
            raise RuntimeError("the first chunk fails")
        time.sleep(0.5)  # still under way when the run has stopped
        return np.zeros((2, 2, 1), np.uint8)

    parts = [da.from_delayed(dask.delayed(chunk)(i), (2, 2, 1), np.uint8) for i in range(2)]
    writes = []
    writer = _Writer({"mask": SimpleNamespace(write=lambda *a, **k: writes.append(a), name="/x/y/m.tif")},
                     {"mask": slice(0, 1)})
    with dask.config.set(num_workers=2), pytest.raises(RuntimeError, match="first chunk"):
        _store(da.concatenate(parts, axis=1), writer)
    time.sleep(1.0)
    assert writes == []


def test_empty_and_home_relative_paths_and_non_bool_flags_are_named(make_raster, tmp_path, monkeypatch):
    """segment("") said "/cwd: is a folder"; "~/x.tif" said only "no such file"; vectorize(mask, None) was
    pathlib's bare TypeError; compare(overwrite=1) ran where segment refuses it (h113)."""
    from geoseg import compare, vectorize

    with pytest.raises(InputError, match="the input is an empty path"):
        segment("", tmp_path / "out", model="threshold")
    monkeypatch.setenv("HOME", str(tmp_path))
    raster = make_raster(name="home.tif")
    with pytest.raises(RasterReadError, match=r"no such file. Check the path. A leading ~ is the shell's: pass "
                                              rf"'{tmp_path}/home.tif'"):
        segment("~/home.tif", tmp_path / "out", model="threshold")
    mask = segment(raster, tmp_path / "seg", model="threshold", preview=False).outputs["mask"]
    with pytest.raises(TypeError, match="vectorize takes a path for out_path. Received: NoneType"):
        vectorize(mask, None)
    with pytest.raises(InputError, match="out_path is an empty path"):
        vectorize(mask, "")
    with pytest.raises(InputError, match=r"`overwrite` must be True or False. Received: overwrite=1"):
        compare(["threshold", "region-growing"], [raster], output_dir=tmp_path / "cmp", overwrite=1)


def test_a_file_of_several_rasters_is_named_and_one_of_them_segmented(make_multi_gpkg, tmp_path, monkeypatch):
    """A GeoPackage of two raster tables failed with a ValueError traceback (no --json answer, no GeosegError for a
    script), and QGIS's name for one of them, GPKG:multi.gpkg:scene_b, was "no such file" (h120)."""
    from click.testing import CliRunner

    from geoseg.cli import main
    from geoseg.errors import RasterReadError

    multi, image = make_multi_gpkg()
    with pytest.raises(RasterReadError, match=r"multi.gpkg: holds 2 rasters, not one; pass one of them by GDAL's name "
                                              r"for it, as QGIS does: 'GPKG:.*multi.gpkg:scene_a', 'GPKG:"):
        segment(multi, tmp_path / "out", model="threshold")
    result = CliRunner().invoke(main, ["segment", str(multi), "-o", str(tmp_path / "out"), "-m", "threshold", "--json"])
    assert result.exit_code == 1 and "holds 2 rasters" in json.loads(result.stdout)["error"]
    monkeypatch.chdir(tmp_path)  # a relative file in it, as QGIS's "Copy as path" of a layer gives
    result = CliRunner().invoke(main, ["segment", "GPKG:multi.gpkg:scene_b", "-o", "out", "-m", "threshold", "--quiet"])
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "out" / "multi_scene_b_mask.tif") as ds, rasterio.open(image) as src:
        assert ds.crs == src.crs and ds.transform == src.transform
    plain = segment(image, tmp_path / "plain", model="threshold", preview=False)
    with rasterio.open(plain.outputs["mask"]) as a, rasterio.open(tmp_path / "out" / "multi_scene_b_mask.tif") as b:
        assert (a.read(1) == b.read(1)).all()


def test_names_of_one_raster_in_a_file_of_several(tmp_path, monkeypatch):
    from geoseg.raster import is_gdal_path, raster_stem, subdataset_file

    monkeypatch.chdir(tmp_path)
    for name in ("f.nc", "a.gpkg", "b.tif", "f.h5", "AB:c.tif"):
        (tmp_path / name).write_bytes(b"x")
    assert subdataset_file('NETCDF:"f.nc":sst') == ("f.nc", "sst") and raster_stem('NETCDF:"f.nc":sst') == "f_sst"
    assert raster_stem("GPKG:a.gpkg:scene b") == "a_scene_b" and raster_stem("GTIFF_DIR:2:b.tif") == "b_2"
    assert raster_stem('HDF5:"f.h5"://grid/sst') == "f_grid_sst"
    assert not is_gdal_path("AB:c.tif")  # a file of that very name
    assert not is_gdal_path("C:/data/x.tif") and not is_gdal_path("GPKG:missing.gpkg:t")


@pytest.mark.parametrize("curve", [0.0, 3e-3])
def test_a_raster_on_curved_ground_control_points_is_said_to_place_polygons_by_their_affine_fit(make_raster, tmp_path,
                                                                                                caplog, curve):
    """9 GCPs with a few metres of curvature: GDAL and QGIS warp the mask by a polynomial, geoseg placed its
    polygons by the affine fit, 3.2 m (6 px) off, and nothing said so (h120). Points on one grid say nothing."""
    from rasterio.control import GroundControlPoint

    path = make_raster(name="gcp.tif", shape=(60, 80), crs=None)
    gcps = [GroundControlPoint(row=r, col=c, x=300000 + 0.5 * c + curve * (r - 30) ** 2,
                               y=2790000 - 0.5 * r + curve * (c - 40) ** 2)
            for c in (0, 40, 80) for r in (0, 30, 60)]
    with rasterio.open(path, "r+") as ds:
        ds.gcps = (gcps, rasterio.crs.CRS.from_epsg(32640))
    caplog.set_level("WARNING", logger="geoseg")
    segment(path, tmp_path / "out", model="threshold", preview=False)
    said = "gcp.tif: its 9 ground control points lie up to " in caplog.text
    assert said == bool(curve)
    if curve:
        assert "px off one affine grid, which its polygons and areas are placed by" in caplog.text


def test_gdal_edit_advice_is_a_command_that_works_on_the_file_s_format():
    """gdal_edit.py failed on a JPEG ("does not support update access", h120), and with -ro did nothing on a PNG's
    nodata or colour tags (exit 0, nothing written, h126): -ro where a .aux.xml keeps the edit, else a GeoTIFF copy."""
    from geoseg.raster import gdal_edit

    assert gdal_edit("a.tif", "-a_nodata 0") == "gdal_edit.py -a_nodata 0 a.tif"
    assert gdal_edit("/d/a.JPG", "-a_srs EPSG:32640", "a.JPG") == "gdal_edit.py -ro -a_srs EPSG:32640 a.JPG"
    assert gdal_edit("a.png", "-a_srs EPSG:32640") == "gdal_edit.py -ro -a_srs EPSG:32640 a.png"
    assert gdal_edit("d/a.png", "-unsetnodata") == "gdal_translate -a_nodata none d/a.png d/a.tif, and use d/a.tif"
    assert gdal_edit("a.png", "-colorinterp_4 undefined") == ("gdal_translate -colorinterp_4 undefined a.png a.tif, "
                                                              "and use a.tif")
    # a path of spaces, quoted for the shell (the Dubai set's "Tile 1" folders, h128)
    assert gdal_edit("Tile 1/a.tif", "-a_nodata 0") == "gdal_edit.py -a_nodata 0 'Tile 1/a.tif'"


def test_a_normalisation_of_numpy_statistics_and_tuples_is_taken_as_lists(make_raster, tiny_fcn, tmp_path):
    """a.mean(axis=(1, 2)) was refused as not "one number per band (3)", and np.float32(0.0078) as no finite
    number: only lists and Python floats passed (h133)."""
    path = make_raster()
    with rasterio.open(path) as ds:
        pixels = ds.read().astype(np.float32)
    mean, std = pixels.mean(axis=(1, 2)), pixels.std(axis=(1, 2))
    as_arrays = segment(path, tmp_path / "a", model=tiny_fcn, preview=False,
                        normalization={"method": "meanstd", "mean": mean, "std": tuple(std)})
    as_lists = segment(path, tmp_path / "b", model=tiny_fcn, preview=False,
                       normalization={"method": "meanstd", "mean": mean.tolist(), "std": std.tolist()})
    scaled = segment(path, tmp_path / "c", model=tiny_fcn, preview=False,
                     normalization={"method": "scale", "scale": np.float32(1 / 255), "offset": np.int64(0)})
    with rasterio.open(as_arrays.outputs["mask"]) as a, rasterio.open(as_lists.outputs["mask"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert scaled.outputs["mask"]
    json.dumps(as_arrays.to_dict())  # the run's record holds plain numbers


def test_an_output_folder_in_gdal_s_memory_is_refused_before_the_run(make_raster, tmp_path):
    """segment(x, "/vsimem/out") ran the whole model, then failed with a bare FileNotFoundError, and as root made a
    real folder /vsimem/out on disk meanwhile (h133)."""
    from geoseg import scene, survey

    path = make_raster()
    for run in (lambda: segment(path, "/vsimem/geoseg-test-out", model="threshold"),
                lambda: scene(path, "/vsimem/geoseg-test-out", model="threshold"),
                lambda: survey([path], "/vsimem/geoseg-test-out", model="threshold")):
        with pytest.raises(OutputError, match="not to GDAL's virtual file systems"):
            run()
    assert not Path("/vsimem").exists()


def test_an_output_folder_under_a_literal_tilde_is_refused_before_the_run(make_raster, tmp_path, monkeypatch):
    """Python does not expand a leading ~: segment(x, "~/out") wrote into a folder named "~" in the working folder
    (which a later `rm -rf ~` in a shell takes for the home folder), and survey(..., "~/sv") segmented every raster
    there, then died in a pyogrio DataSourceError, as geopandas expands ~ and read the polygons from $HOME/sv (h159).
    An input path with a leading ~ was already refused with the fix; an output folder now is too."""
    from geoseg import flood, scene, survey

    path = make_raster()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    for run in (lambda: segment(path, "~/out", model="threshold"),
                lambda: segment(path, Path("~/out"), model="threshold"),
                lambda: scene(path, "~/out", model="threshold"),
                lambda: flood(path, "~/out", model="threshold"),
                lambda: survey([path], "~/out", model="threshold")):
        with pytest.raises(OutputError, match=re.escape(str(home / "out"))):
            run()
    assert not (tmp_path / "~").exists() and not list(home.iterdir())
    (tmp_path / "~").mkdir()  # a folder that is really named "~" is the user's choice
    assert segment(path, "~/out", model="threshold", preview=False).outputs["mask"] == "~/out/image_mask.tif"


def test_paths_with_stray_whitespace_are_named_and_refused_as_outputs(make_raster, tmp_path, monkeypatch):
    """A path read from a text file keeps its newline: segment("scene.tif\\n", ...) printed the newline inside the
    error, a path broken over two lines with no word of it, and segment(x, "out\\n") or "out " made a folder of
    that name (a survey's GeoPackage under it then failed in SQLite). Inputs now say what is wrong with the name
    (repr'd), and every entry point refuses such an output path before anything is written."""
    from click.testing import CliRunner

    from geoseg import compare, evaluate, flood, scene, survey, vectorize
    from geoseg.cli import main

    path = make_raster()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RasterReadError, match=re.escape(repr(str(tmp_path / "image.tif\n")) + ": no such file. Check "
                                                        "the path. The path ends with a newline. Pass 'image.tif', "
                                                        "which exists (str.strip(): a line read from a file")):
        segment("image.tif\n", "out", model="threshold")
    with pytest.raises(RasterReadError, match="The path starts with a space. Pass 'image.tif', which exists"):
        segment(" image.tif", "out", model="threshold")
    mask = segment(path, "ok", model="threshold", preview=False).outputs["mask"]
    with pytest.raises(InputError, match="no such zones layer. Check the path. The path ends with a newline"):
        scene(path, "sc", model="threshold", zones="zones.gpkg\n")
    with pytest.raises(InputError, match=r"label file not found \(labels for image.tif\). The path ends with a space"):
        evaluate("threshold", ["image.tif"], [mask + " "])
    assert "The path ends with a newline" in survey(["image.tif\n"], "sv", model="threshold").failed[0]["error"]
    for bad in ("out\n", "out ", " out", Path("out "), "o/ut\nx", "new /out"):
        for run in (lambda: segment(path, bad, model="threshold"),
                    lambda: scene(path, bad, model="threshold"),
                    lambda: flood(path, bad, model="threshold"),
                    lambda: survey([path], bad, model="threshold"),
                    lambda: evaluate("threshold", [path], [mask], keep_masks=bad),
                    lambda: compare(["threshold", "edges-watershed"], [path], output_dir=bad),
                    lambda: vectorize(mask, os.path.join(bad, "layer.gpkg") if "\n" not in str(bad) else f"{bad}.gpkg")):
            with pytest.raises(OutputError, match=r"(starts|ends) with (a newline|a space)|holds a line break"):
                run()
    with pytest.raises(OutputError, match=re.escape("'layer.gpkg\\n': the output layer's path ends with a newline")):
        vectorize(mask, "layer.gpkg\n")
    assert sorted(os.listdir(tmp_path)) == ["image.tif", "ok", "sv"]  # no folder named with the whitespace
    (tmp_path / "there ").mkdir()  # a folder that really ends in a space, named inside a path, is taken
    assert segment(path, "there /out", model="threshold", preview=False).outputs["mask"] == "there /out/image_mask.tif"
    # and so is that folder itself, as "there /" was: it is there, nothing of that name is made
    assert segment(path, "there ", model="threshold", preview=False).outputs["mask"] == "there /image_mask.tif"
    cli = CliRunner().invoke(main, ["segment", "image.tif ", "-o", "cli", "--model", "threshold"])
    assert cli.exit_code == 1 and "'image.tif ': no such file" in cli.output and "ends with a space" in cli.output
    cli = CliRunner().invoke(main, ["segment", "image.tif", "-o", "cli\n", "--model", "threshold"])
    assert cli.exit_code == 1 and "'cli\\n': the output folder's path ends with a newline" in cli.output
    assert not any(name.startswith("cli") for name in os.listdir(tmp_path))
    cli = CliRunner().invoke(main, ["evaluate", "--model", "threshold", "--images", "image.tif", "--labels", mask,
                                    "--markdown", "report.md "])
    assert cli.exit_code == 1 and "'report.md ': the --markdown report's path ends with a space" in cli.output
    assert not any(name.startswith("report") for name in os.listdir(tmp_path))


def test_a_raster_far_coarser_than_the_model_s_pixels_is_refused_before_it_is_upsampled(make_raster, model_dir,
                                                                                        tmp_path, caplog):
    """A 300 m Landsat scene into a 0.1 m model planned 5e12 px and grew to 6 GB without a word (h130)."""
    import shutil

    from rasterio.transform import from_origin

    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(model_dir / "tiny-fcn.keras", folder / "fine.keras")
    card = json.loads((model_dir / "tiny-fcn.json").read_text())
    (folder / "fine.json").write_text(json.dumps({**card, "name": "fine", "pixel_size": 0.1}))
    coarse = make_raster(shape=(40, 50), transform=from_origin(500000.0, 2800000.0, 30.0, 30.0))
    with pytest.raises(InputError, match=r"its pixels are 300 times the 0.1 m of model fine's, so resampling to them "
                                         r"makes its 50 x 40 px 15000 x 12000 px.*--no-resample"):
        segment(coarse, tmp_path / "out", model=folder / "fine.keras")
    assert not (tmp_path / "out").exists()
    assert segment(coarse, tmp_path / "own", model=folder / "fine.keras", resample=False, preview=False).outputs
    somewhat = make_raster(name="somewhat.tif", shape=(40, 50), transform=from_origin(500000.0, 2800000.0, 0.4, 0.4))
    segment(somewhat, tmp_path / "four", model=folder / "fine.keras", preview=False)
    assert "its pixels are 4 times the 0.1 m" in caplog.text and "--no-resample" in caplog.text
    # ten times coarser, but a small chip: 0.2 Mpx to run is no reason to refuse it (h136)
    chip = make_raster(name="chip.tif", shape=(40, 50), transform=from_origin(500000.0, 2800000.0, 1.0, 1.0))
    assert segment(chip, tmp_path / "chip", model=folder / "fine.keras", chunk=128, preview=False).outputs
    assert "its pixels are 10 times the 0.1 m" in caplog.text


def test_workers_that_see_another_file_at_the_path_or_run_another_geoseg_are_refused(make_raster, tmp_path,
                                                                                       monkeypatch):
    """A node's stale copy at the same path (33.9 MB against 40.5 MB) gave a mask of which 12% differed, exit 0;
    a worker of an older geoseg failed with a 66-line AttributeError traceback (h134). The worker's answer is
    altered in process (a worker answers off the main thread): no second file system is to hand in a test."""
    import threading

    import geoseg.pipeline as pipeline
    from distributed import Client, LocalCluster

    from geoseg.errors import ClusterError

    sizes = pipeline._files_here

    def stale(paths):
        found = sizes(paths)
        if threading.current_thread() is threading.main_thread():  # this machine's own answer
            return found
        return [[n[0] + 1, n[1]] if isinstance(n, list) else n for n in found]

    def older(paths):  # as distributed hands it back from a process worker: a bare Exception of the text
        raise Exception("AttributeError(\"Can't get attribute '_files_here' on <module 'geoseg.pipeline'>\")")

    image = make_raster()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        monkeypatch.setattr(pipeline, "_files_here", stale)
        with pytest.raises(InputError, match=r"image.tif: Dask worker\(s\) see another file at this path \(.*: "
                                             r"[\d,]+ bytes; here [\d,]+ bytes\)"):
            segment(image, tmp_path / "out", model="threshold", preview=False, client=client)
        monkeypatch.setattr(pipeline, "_files_here", older)
        with pytest.raises(ClusterError, match="do they run another geoseg than this machine's"):
            segment(image, tmp_path / "out", model="threshold", preview=False, client=client)
        monkeypatch.setattr(pipeline, "_files_here", sizes)
        assert segment(image, tmp_path / "out", model="threshold", preview=False, client=client).outputs


def test_workers_that_see_another_file_of_the_same_size_or_in_a_gdal_path_s_file_are_refused(make_raster, tmp_path,
                                                                                             monkeypatch):
    """Sizes alone passed a stale copy of an uncompressed GeoTIFF of the same shape (16.8% of the mask differed, exit
    0), and a GDAL path's file (/vsizip/a.zip/x.tif, GPKG:a.gpkg:t) was not compared at all (8.4% and 13.7%). A
    worker that could read a file but that os.access said no to (CAP_DAC_READ_SEARCH) was refused."""
    import os
    import threading
    import zipfile

    import geoseg.pipeline as pipeline
    from distributed import Client, LocalCluster

    image = make_raster()
    with rasterio.open(image) as src:
        profile, data = src.profile, src.read()
    profile.update(compress=None)
    twin = tmp_path / "twin.tif"
    with rasterio.open(twin, "w", **profile) as dst:
        dst.write(data // 2 + 1)
    same = tmp_path / "same.tif"
    with rasterio.open(same, "w", **profile) as dst:
        dst.write(data)
    assert os.path.getsize(twin) == os.path.getsize(same)
    first, second = pipeline._files_here([str(twin), str(same)])
    assert first[0] == second[0] and first != second
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.write(same, "x.tif")
    zipped = f"/vsizip/{tmp_path}/a.zip/x.tif"
    assert pipeline._files_here([zipped, f"zip://{tmp_path}/a.zip!x.tif"]) == pipeline._files_here(
        [str(tmp_path / "a.zip")]) * 2
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # read by opening it, not by asking
    assert pipeline._files_here([str(same)])[0] is not None
    monkeypatch.undo()

    sampled = pipeline._sampled

    def other_contents(path):  # a worker's copy of the same size and other bytes
        found = sampled(path)
        if threading.current_thread() is threading.main_thread() or found is None:
            return found
        return [found[0], "0" * 32]

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        monkeypatch.setattr(pipeline, "_sampled", other_contents)
        for path in (str(same), zipped):
            with pytest.raises(InputError, match=r"Dask worker\(s\) see another file at this path \(.*: [\d,]+ bytes, "
                                                 r"other contents; here [\d,]+ bytes\)"):
                segment(path, tmp_path / "out", model="threshold", preview=False, client=client)
        monkeypatch.setattr(pipeline, "_sampled", sampled)
        assert segment(zipped, tmp_path / "out", model="threshold", preview=False, client=client).outputs


def test_a_survey_on_a_cluster_without_workers_waits_the_whole_time_once(make_raster, tmp_path, monkeypatch):
    """A survey's later rasters wait EMPTY_AGAIN_S, and the Client it was given keeps no mark of it: the user's next
    run waited 5 s, not 60 s, for workers that were still starting."""
    import time

    import geoseg.pipeline as pipeline
    from distributed import Client, LocalCluster

    from geoseg import survey

    monkeypatch.setattr(pipeline, "WORKER_WAIT_S", 3)
    monkeypatch.setattr(pipeline, "EMPTY_AGAIN_S", 0.5)
    rasters = [make_raster(name=f"r{k}.tif") for k in range(3)]
    with LocalCluster(n_workers=0, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        started = time.monotonic()
        result = survey(rasters, tmp_path / "survey", model="threshold", preview=False, client=client)
        assert len(result.failed) == 3 and 3 < time.monotonic() - started < 5.5
        assert not getattr(client, "_geoseg_found_empty", False)


def test_a_worker_that_cannot_open_the_raster_mid_run_is_named(make_raster, tmp_path, monkeypatch):
    """A worker that joined after the run checked every worker's files, and could not see the raster, failed it as
    "could not be opened again ... moved, deleted or replaced during the run?", naming no worker (h142). A worker's
    blindness is made in process (a worker runs chunks off the main thread): no second file system is to hand."""
    import pickle
    import threading

    import geoseg.raster as raster
    from distributed import Client, LocalCluster
    from rasterio.errors import RasterioIOError

    from geoseg.errors import WorkerReadError

    opened = raster.rasterio.open

    def blind(path, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            raise RasterioIOError(f"{path}: No such file or directory")
        return opened(path, *args, **kwargs)

    image = make_raster()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        monkeypatch.setattr(raster.rasterio, "open", blind)
        worker = next(iter(client.scheduler_info()["workers"]))
        with pytest.raises(RasterReadError, match=rf"image.tif: Dask worker {re.escape(worker)} cannot read this file "
                                                  r"\(No such file or directory\), which this machine reads: a worker "
                                                  r"that joined after the run"):
            segment(image, tmp_path / "out", model="threshold", preview=False, client=client)
    assert not (tmp_path / "out").exists()
    # gone from this machine too: moved or deleted meanwhile, and the worker still named; it crosses as itself
    gone = WorkerReadError(str(tmp_path / "gone.tif"), "tcp://10.0.0.7:40000", "No such file or directory")
    assert pickle.loads(pickle.dumps(gone)).worker == "tcp://10.0.0.7:40000"
    assert "Dask worker tcp://10.0.0.7:40000 cannot read this file" in str(gone) and "put it back" in str(gone)


def test_workers_without_the_memory_the_model_needs_are_named_before_the_run(make_raster, tmp_path, caplog):
    """A 1 GB worker with the default model was killed by its nanny and restarted, chunk after chunk, with only
    dask's own lines, and a 2.5 GB one at chunk 2048 likewise or paused for good (h142). Measured peaks: chunk 512
    1.43 GB, 1024 2.19 GB, 2048 3.33 GB a worker."""
    from distributed import Client, LocalCluster

    import geoseg.pipeline as pipeline
    from geoseg.errors import ClusterError
    from geoseg.models import DEFAULT_MODEL

    card = pipeline.get_segmenter(pipeline.resolve_model(DEFAULT_MODEL)).card
    plan = lambda chunk: pipeline.Plan((chunk, chunk), card.margin, None, 8, (1, 2, 3))  # noqa: E731
    peaks = {c: pipeline.worker_peak(card, pipeline._block_px((8192, 8192), plan(c))) for c in (512, 1024, 2048)}
    assert 1.43e9 < peaks[512] < 1.7e9 and 2.19e9 < peaks[1024] < 2.6e9 and 3.33e9 < peaks[2048] < 3.9e9, peaks
    assert pipeline.worker_peak(card, 10**8) > pipeline.worker_peak(card, 6_885_376)  # past the last measure
    assert pipeline.worker_peak(pipeline.get_segmenter("builtin:threshold").card, 10**6) is None
    image = make_raster(shape=(64, 64))
    for limit, chunk, expect in (("1GB", None, "refused"), ("2.5GB", 2048, "warned"), ("6GB", 2048, "fine")):
        caplog.clear()
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0",
                          memory_limit=limit) as cluster, Client(cluster) as client:
            worker = next(iter(client.scheduler_info()["workers"]))
            shape = (8192, 8192) if chunk else (64, 64)
            if expect == "refused":
                # workers of this machine (--workers N, a LocalCluster): fewer of them, not `dask worker` options
                with pytest.raises(ClusterError, match=rf"Dask worker\(s\) {re.escape(worker)} \(memory limit 1.0 GB\) "
                                                       r"cannot run model landcover-unet at any chunk.*It is this "
                                                       r"machine's one worker: run without a cluster \(leave out "
                                                       r"--workers\)"):
                    segment(image, tmp_path / "out", client=client, preview=False)
                assert not (tmp_path / "out").exists()
                with Client(cluster.scheduler_address) as remote, \
                        pytest.raises(ClusterError, match=r"at any chunk.*dask worker --memory-limit 2GB.*--scheduler"):
                    pipeline._check_worker_memory(remote, "big.tif", shape, plan(512), card)  # a cluster of others'
                continue
            pipeline._check_worker_memory(client, "big.tif", shape, plan(chunk), card)
            with Client(cluster.scheduler_address) as remote:
                pipeline._check_worker_memory(remote, "big.tif", shape, plan(chunk), card)
            said = [r.getMessage() for r in caplog.records if "may run out of memory" in r.getMessage()]
            if expect == "fine":
                assert not said, said
            else:
                assert len(said) == 2 and all(f"{worker} (memory limit 2.5 GB)" in s for s in said), said
                assert all("at chunk 2048 peaks near 3.7 GB" in s and "Pass --chunk 512" in s for s in said), said
                assert "run without a cluster (leave out --workers)" in said[0], said[0]  # one worker: fewer is none
                assert "dask worker --memory-limit 5GB" in said[1], said[1]
    caplog.clear()  # two workers of this machine: fewer of them get more memory each
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0",
                      memory_limit="2.5GB") as cluster, Client(cluster) as client:
        pipeline._check_worker_memory(client, "big.tif", (8192, 8192), plan(2048), card)
    said = [r.getMessage() for r in caplog.records if "may run out of memory" in r.getMessage()]
    assert len(said) == 1 and "start fewer workers (--workers" in said[0] and "at least 5 GB" in said[0], said


def test_a_run_on_workers_all_paused_by_their_memory_fails_not_waits_forever(make_raster, tmp_path, monkeypatch,
                                                                               caplog):
    """A worker paused by dask at 80% of its memory limit (the model's memory stays with it after a run) ran no chunk
    of the next run, which waited for ever without a word (h142)."""
    import time

    import geoseg.pipeline as pipeline
    from distributed import Client, LocalCluster

    from geoseg.errors import ClusterError

    monkeypatch.setattr(pipeline, "WORKER_WAIT_S", 1)
    monkeypatch.setattr(pipeline, "STEP_S", 0.2)
    # paused by hand: the monitor, which would resume it (this process is under its limit), is off
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        from distributed.core import Status

        for worker in cluster.workers.values():
            worker.memory_manager.memory_pause_fraction = False
            worker.status = Status.paused
        deadline = time.monotonic() + 10
        while (next(iter(client.scheduler_info()["workers"].values())).get("status") != "paused"
               and time.monotonic() < deadline):
            time.sleep(0.1)
        with pytest.raises(ClusterError, match=r"every Dask worker has been paused for 1 s while it was segmented: "
                                               r"\S+.*Dask pauses a worker whose memory is over 80% of its limit"):
            segment(make_raster(), tmp_path / "out", model="threshold", preview=False, client=client)
    assert "are paused: their memory is over the 80%" in caplog.text
    assert not (tmp_path / "out").exists()


def _segmented_by_a_worker_paused_in_each_chunk(raster, out: Path, monkeypatch, seconds: float) -> Path:
    """`raster` segmented at chunk 64 by one worker of a LocalCluster that each model call pauses for `seconds`,
    then sets running again: as dask pauses a worker while a chunk holds memory over 80% of its limit. Returns the
    mask."""
    import time

    import geoseg.pipeline as pipeline
    from distributed import Client, LocalCluster, get_worker
    from distributed.core import Status

    monkeypatch.setattr(pipeline, "WORKER_WAIT_S", 1)
    monkeypatch.setattr(pipeline, "STEP_S", 0.2)
    real = pipeline.predict_block

    def set_status(status) -> None:
        worker = get_worker()
        worker.loop.add_callback(setattr, worker, "status", status)

    def heavy(*args, **kwargs):  # paused while it holds the chunk's memory, running again once it is freed
        set_status(Status.paused)
        time.sleep(seconds)
        out = real(*args, **kwargs)
        set_status(Status.running)
        return out

    monkeypatch.setattr(pipeline, "predict_block", heavy)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        for worker in cluster.workers.values():  # the monitor would resume it: this process is under its limit
            worker.memory_manager.memory_pause_fraction = False
        result = segment(raster, out, model="threshold", chunk=64, preview=False, client=client)
    return Path(result.outputs["mask"])


def test_workers_paused_while_each_chunk_runs_but_going_on_are_not_failed(make_raster, tmp_path, monkeypatch):
    """A worker that dask pauses while a chunk holds its memory, and resumes between chunks, makes progress all the
    while; every look at the scheduler saw it paused, and the run was failed after WORKER_WAIT_S as if it hung (a
    4 GB worker at chunk 2048: peaks over 80% of its limit, back under it between chunks)."""
    # 16 chunks, 6 s or more: every look finds the worker paused
    assert _segmented_by_a_worker_paused_in_each_chunk(make_raster(shape=(256, 256)), tmp_path / "out", monkeypatch,
                                                        0.4).is_file()


def test_a_raster_deleted_mid_run_on_a_cluster_is_said_so_not_blamed_on_a_worker_that_joined(make_raster, tmp_path,
                                                                                             monkeypatch):
    """A raster moved away while `--workers N` segmented it was put down to "a worker that joined after the run
    checked its workers' files", with "run without --scheduler" (none was given): gone from this machine too, it was
    moved or deleted, as a run without a cluster says."""
    import threading

    import geoseg.raster as raster
    from distributed import Client, LocalCluster

    image = make_raster()
    opened = raster.rasterio.open

    def deleting(path, *args, **kwargs):  # the first chunk's read finds the file gone
        if threading.current_thread() is not threading.main_thread() and os.path.exists(image):
            os.remove(image)
        return opened(path, *args, **kwargs)

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        monkeypatch.setattr(raster.rasterio, "open", deleting)
        with pytest.raises(RasterReadError) as caught:
            segment(image, tmp_path / "out", model="threshold", preview=False, client=client)
    said = str(caught.value)
    assert "could not be opened again while it was being segmented" in said and "moved, deleted or replaced" in said
    assert "joined" not in said and "--scheduler" not in said, said


def test_one_chunk_longer_than_the_wait_on_a_worker_paused_all_the_while_is_not_failed(make_raster, tmp_path,
                                                                                       monkeypatch):
    """No chunk comes back before the end: only the paused worker's executing task says it is going on (the test
    above passes with either of the two resets alone)."""
    # one chunk of 4 s
    assert _segmented_by_a_worker_paused_in_each_chunk(make_raster(shape=(64, 64)), tmp_path / "out", monkeypatch,
                                                        4).is_file()


def test_a_raster_overwritten_mid_run_on_a_cluster_is_said_so_not_blamed_on_a_worker_that_joined(make_raster,
                                                                                                 tmp_path,
                                                                                                 monkeypatch):
    """A file still there but no longer a raster was "which this machine reads: a worker that joined after the run
    checked every worker's files? ... or run without --scheduler" on a --workers run."""
    import threading

    import geoseg.raster as raster
    from distributed import Client, LocalCluster

    image = make_raster()
    opened = raster.rasterio.open

    def overwriting(path, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread() and os.path.getsize(image) != 1200:
            Path(image).write_bytes(b"not a raster" * 100)
        return opened(path, *args, **kwargs)

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        monkeypatch.setattr(raster.rasterio, "open", overwriting)
        with pytest.raises(RasterReadError) as caught:
            segment(image, tmp_path / "out", model="threshold", preview=False, client=client)
    said = str(caught.value)
    assert "moved, deleted or replaced" in said and "joined" not in said and "--scheduler" not in said, said


def test_worker_memory_of_baselines_and_brought_models_is_their_own(make_raster, tmp_path, caplog):
    """The pre-run memory check knew the default model only (h161): a baseline or a brought Keras model got no
    estimate at all. Baselines peak under a tenth of the default model (0.15-0.62 GB a one-thread worker at chunk
    512-2048), a brought model by its weights and its convolutions' outputs; neither is ever refused."""
    import json

    from distributed import Client, LocalCluster

    import geoseg.pipeline as pipeline
    from geoseg.models.unet import build_unet

    def bundle(name, filters):
        build_unet(3, 3, depth=2, filters=filters, name=name).save(tmp_path / f"{name}.keras")
        (tmp_path / f"{name}.json").write_text(json.dumps({
            "name": name, "bands": [1, 2, 3], "normalization": {"method": "scale", "scale": 1 / 255, "offset": 0},
            "classes": [{"id": i, "name": c} for i, c in enumerate("abc")], "margin": 16, "multiple_of": 4}))
        return pipeline.resolve_model(str(tmp_path / f"{name}.keras"))

    plan = lambda card, chunk: pipeline.Plan((chunk, chunk), card.margin, None, 8, (1, 2, 3))  # noqa: E731
    default = pipeline.get_segmenter(pipeline.resolve_model(None)).card
    refs = {"threshold": "builtin:threshold", "edges": "builtin:edges-watershed", "narrow": bundle("narrow", 4),
            "wide": bundle("wide", 96)}
    cards = {k: pipeline.get_segmenter(ref).card for k, ref in refs.items()}
    peak = lambda k, chunk: pipeline.worker_peak(  # noqa: E731
        cards[k], pipeline._block_px((8192, 8192), plan(cards[k], chunk)), refs[k])
    base = lambda chunk: pipeline.worker_peak(  # noqa: E731
        default, pipeline._block_px((8192, 8192), plan(default, chunk)), None)
    for chunk in (512, 1024, 2048):
        assert 0.15e9 < peak("threshold", chunk) < 0.75e9 and peak("edges", chunk) < base(chunk) / 3
        block = pipeline._block_px((8192, 8192), plan(default, chunk))  # the Keras models' on blocks of one size
        at = lambda k: pipeline.worker_peak(cards[k], block, refs[k])  # noqa: E731
        assert at("narrow") < base(chunk) < at("wide"), chunk
    assert 1.0e9 < peak("narrow", 512) < 1.3e9 and peak("wide", 2048) > 5e9  # TensorFlow's own ~1 GB stays
    assert pipeline.worker_peak(cards["narrow"], 10**6) is None  # no reference: no estimate, as before
    image = make_raster(shape=(64, 64))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0",
                      memory_limit="1GB") as cluster, Client(cluster) as client:
        with pytest.raises(pipeline.ClusterError, match="cannot run model landcover-unet at any chunk"):
            pipeline._check_worker_memory(client, "big.tif", (8192, 8192), plan(default, 512), default)
        caplog.clear()  # a 1 GB worker runs a baseline at chunk 2048 (0.6 GB) and a narrow U-Net is only warned of
        pipeline._check_worker_memory(client, "big.tif", (8192, 8192), plan(cards["edges"], 2048), cards["edges"],
                                      refs["edges"])
        assert not [r for r in caplog.records if "out of memory" in r.getMessage()]
        pipeline._check_worker_memory(client, "big.tif", (8192, 8192), plan(cards["narrow"], 512), cards["narrow"],
                                      refs["narrow"])
        said = [r.getMessage() for r in caplog.records if "may run out of memory" in r.getMessage()]
        assert len(said) == 1 and "model narrow at chunk 512" in said[0], said
        caplog.clear()
        result = segment(image, tmp_path / "out", model="threshold", client=client, preview=False)
        assert result.outputs["mask"] and not [r for r in caplog.records if "out of memory" in r.getMessage()]


def test_a_worker_memory_warning_is_said_once_for_a_run_of_several_rasters(make_raster, tmp_path, caplog):
    """`geoseg survey --scheduler` of 40 rasters on small workers repeated the same memory warning 40 times, one
    per raster (h161): once for the run, and again for the next run on the same client."""
    import dask
    from distributed import Client, LocalCluster

    import geoseg.pipeline as pipeline
    from geoseg.workflows.survey import survey

    rasters = [make_raster(f"r{i}.tif", shape=(64, 64), seed=i) for i in range(3)]
    card = pipeline.get_segmenter("builtin:threshold").card
    plan = pipeline.Plan((2048, 2048), 0, None, 8, (1, 2, 3))
    said = lambda: [r.getMessage() for r in caplog.records if "may run out of memory" in r.getMessage()]  # noqa
    # a worker of 0.2 GB, under what the threshold baseline needs even for a 64² raster (0.22 GB); dask's own
    # pausing, of this test process's whole memory, is off
    off = {f"distributed.worker.memory.{k}": False for k in ("pause", "terminate", "target", "spill")}
    with dask.config.set(off), LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                            dashboard_address="127.0.0.1:0", memory_limit="0.2GB") as cluster, \
            Client(cluster) as client:
        with pipeline.rasters_in_turn(client):
            for name in ("a.tif", "b.tif", "c.tif"):
                pipeline._check_worker_memory(client, name, (8192, 8192), plan, card, "builtin:threshold")
        assert len(said()) == 1 and said()[0].startswith("a.tif: "), said()
        caplog.clear()
        for name in ("a.tif", "b.tif"):  # runs of their own, each on its own
            pipeline._check_worker_memory(client, name, (8192, 8192), plan, card, "builtin:threshold")
        assert len(said()) == 2, said()
        caplog.clear()
        result = survey(rasters, tmp_path / "survey", model="threshold", preview=False, client=client)
        assert len(result.done) == 3, result.failed
        assert len(said()) == 1, [m[-300:] + " @@ " + m[:120] for m in said()]
