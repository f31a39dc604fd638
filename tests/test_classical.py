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


def test_otsu_cuts_carry_no_float_noise():
    """A cut is a bin edge, and those of np.linspace(-1, 1, 401) (flood's NDWI bins) carry float noise: flood.json
    read "ndwi_threshold": 0.040000000000000036 where the report said 0.040."""
    from geoseg.workflows.flood import NDWI_EDGES

    centres = (NDWI_EDGES[:-1] + NDWI_EDGES[1:]) / 2
    counts = np.where(centres < 0.04, 1000 * np.exp(-((centres + 0.3) / 0.1) ** 2),
                      300 * np.exp(-((centres - 0.4) / 0.1) ** 2))
    cut = otsu_threshold(counts, NDWI_EDGES)
    assert len(repr(cut)) <= 6, repr(cut)  # 0.04, 0.035, ... as the edges' decimals are
    assert repr(otsu_threshold(np.eye(1, 400, 228)[0], NDWI_EDGES)) == "1.0"  # one value: the last edge


def test_pure_green_is_in_the_greenness_histogram(caplog):
    """Excess green reaches 2 (pure green), but the histogram stopped at 1: a scene of strong green and grey
    was said to take one value, with a cut at 1.0, and the green was then called vegetation all the same."""
    from geoseg.models.classical import ClassicalSegmenter

    scene = np.zeros((20, 50, 3), np.float32)
    scene[:, :20] = (10, 200, 10)  # greenness 1.86
    scene[:, 20:] = (100, 110, 100)  # greenness 0.06
    with caplog.at_level("WARNING"):
        cuts = ClassicalSegmenter("threshold").calibrate(scene, np.ones((20, 50), bool))
    assert "vegetation index takes one value" not in caplog.text
    assert 0.06 < cuts["vegetation"] < 1.86


@pytest.mark.parametrize("name", ["threshold", "region-growing", "edges-watershed"])
def test_baselines_on_a_grey_image_call_everything_other_and_say_why(make_raster, tmp_path, caplog, name):
    image, _ = _scene()
    path = make_raster(data=np.repeat(image[:1], 3, axis=0))  # R = G = B: every index is constant
    result = segment(path, tmp_path / "out", model=name, preview=False)  # was "All-NaN slice encountered"
    with rasterio.open(result.outputs["mask"]) as ds:
        assert (ds.read(1) == 0).all()
    assert "the water index takes one value over the whole raster" in caplog.text


@pytest.mark.parametrize("ref, message", [
    ("watershed-regions?spacing=abc", "spacing must be a number. Received: spacing=abc"),
    ("watershed-regions?foo=1", "takes the option.s. spacing and compactness. Received: foo=1"),
    ("threshold?spacing=3", "takes the option.s. water and vegetation"),
    ("threshold?water=0.1", "both cuts .water and vegetation. or neither"),
    ("landcover-unet?tta=flip", "tta must be one of none, flips"),
    ("landcover-unet?x=1", "unknown model option.s. x; a bundle takes card, precision and tta"),
    ("landcover-unet?tta=", "tta must be one of none, flips. Received: tta=''"),
    ("landcover-unet?tta=flips&tta=none", "model option.s. given twice: tta"),
    ("threshold?water=0.1&water=0.2", "water is given twice"),
    ("watershed-regions?spacing=", "spacing must be a number. Received: spacing="),
])
def test_bad_model_options_are_model_errors_before_any_chunk(make_raster, tmp_path, ref, message):
    from geoseg.errors import ModelError

    path = make_raster(data=_scene()[0])
    with pytest.raises(ModelError, match=message):  # were a TypeError or ValueError from inside Dask, or ignored
        segment(path, tmp_path / "out", model=ref)
    assert not (tmp_path / "out").exists()


# --- unlabeled regions (watershed-regions), scored by each region's majority label class --------------

@pytest.mark.parametrize("seed", [0, 1, 2])  # random Voronoi-like regions of varied size and degree
def test_region_colours_keep_neighbours_apart(seed):
    from scipy.ndimage import distance_transform_edt
    from skimage.measure import label

    from geoseg.models.classical import colour_regions

    rng = np.random.default_rng(seed)
    seeds = np.zeros((90, 110), np.int32)
    seeds[rng.integers(0, 90, 150), rng.integers(0, 110, 150)] = np.arange(1, 151)
    _, (r, c) = distance_transform_edt(seeds == 0, return_indices=True)
    regions = label(seeds[r, c], connectivity=1)  # 4-connected regions, as the watershed draws them
    colours = colour_regions(regions)
    assert colours.max() < 6  # a planar adjacency in smallest-last order needs at most 6
    # the reference: connected components of the colours are exactly the regions again
    again = label(colours.astype(np.int32) + 1, connectivity=1)
    pairs = np.unique(np.stack([regions.ravel(), again.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(regions)) == len(np.unique(again))


def test_region_preview_legend_says_colours_are_not_classes(make_raster, tmp_path):
    from PIL import Image

    from geoseg.models.classical import RegionSegmenter
    from geoseg.preview import render_map

    image, _ = _scene(rows=130, cols=170)
    path = make_raster(data=image)
    result = segment(path, tmp_path / "out", model="watershed-regions", chunk=64)  # with its preview
    classes = RegionSegmenter().card.classes
    with Image.open(result.outputs["preview"]) as png:
        height, width = png.height, png.width
    assert width >= 400  # the legend line is ~404 px: a narrow image's 360 px canvas cut it off
    as_classes = render_map(path, result.outputs["mask"], classes, result.classes, [1, 2, 3])
    assert as_classes.height - height == 20 * (len(classes) - 1)  # one legend line, not a share per colour


def test_watershed_regions_follow_edges_and_are_scored_by_majority(make_raster, tmp_path):
    from skimage.measure import label

    from geoseg.workflows.evaluate import evaluate

    image, truth = _scene(rows=130, cols=170)
    path = make_raster(data=image)
    result = segment(path, tmp_path / "out", model="watershed-regions", chunk=64, preview=False)
    with rasterio.open(result.outputs["mask"]) as ds:
        colours = ds.read(1)
    regions = label(colours.astype(np.int32) + 1, connectivity=1)
    assert 40 < regions.max() < 200  # about one region per 16 x 16 px seed cell, cut at chunk edges
    majority_share = sum(np.bincount(truth[regions == r]).max() for r in range(1, regions.max() + 1)) / truth.size
    # regions stop at the lake's and the park's edges (0.98 in one chunk; at 64 px chunks a few regions that
    # chunk edges cut and that share a colour with their neighbour across the seam merge)
    assert majority_share > 0.95
    label_path = tmp_path / "label.tif"
    with rasterio.open(label_path, "w", driver="GTiff", width=170, height=130, count=1, dtype="uint8") as ds:
        ds.write(truth, 1)
    scored = evaluate("watershed-regions", [path], [label_path], label_names=["sand", "water", "vegetation"])
    assert scored.classes == ["sand", "water", "vegetation"]
    assert scored.per_class["water"]["iou"] > 0.9 and scored.mean_iou > 0.9
    assert "majority label class" in scored.notes[0]


def test_region_models_need_named_labels_and_stay_out_of_compare(make_raster, tmp_path):
    from geoseg.errors import InputError
    from geoseg.workflows.evaluate import compare, evaluate

    image, truth = _scene()
    path = make_raster(data=image)
    label_path = tmp_path / "label.tif"
    with rasterio.open(label_path, "w", driver="GTiff", width=150, height=120, count=1, dtype="uint8") as ds:
        ds.write(truth, 1)
    with pytest.raises(InputError, match="watershed-regions draws unlabeled regions .* pass --label-names"):
        evaluate("watershed-regions", [path], [label_path])
    with pytest.raises(InputError, match="watershed-regions draw.* score it on its own with geoseg evaluate"):
        compare(["threshold", "watershed-regions"], [path], output_dir=tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()
    from geoseg.errors import ModelError

    with pytest.raises(ModelError, match=r"spacing must be >= 1 px .* spacing=0.0"):
        segment(path, tmp_path / "out", model="watershed-regions?spacing=0")  # was a traceback from inside Dask
    assert not (tmp_path / "out").exists()


def test_card_output_is_classes_or_regions():
    from geoseg.errors import CardError
    from geoseg.models import ModelCard

    card = {"name": "m", "classes": [{"name": "a"}], "bands": [1], "normalization": {"method": "none"}, "margin": 0}
    assert ModelCard.from_dict(card).output == "classes"
    assert ModelCard.from_dict({**card, "output": "regions"}).to_dict()["output"] == "regions"
    with pytest.raises(CardError, match=r"field 'output' must be one of classes, regions .* output='objects'"):
        ModelCard.from_dict({**card, "output": "objects"})


def test_a_cards_label_color_is_checked_and_kept_only_when_given():
    from geoseg.errors import CardError
    from geoseg.models import ModelCard

    card = {"name": "m", "bands": [1], "normalization": {"method": "none"}, "margin": 0,
            "classes": [{"name": "a", "color": "#0072B2", "label_color": "#e2a929"}, {"name": "b"}]}
    a, b = ModelCard.from_dict(card).classes
    assert (a.in_labels, b.in_labels == b.color, b.label_color) == ("#E2A929", True, None)
    assert [sorted(c) for c in ModelCard.from_dict(card).to_dict()["classes"]] == [
        ["color", "id", "label_color", "name"], ["color", "id", "name"]]
    for bad in ("orange", ""):
        with pytest.raises(CardError, match=rf"classes\[0\].label_color must look like '#3C1098'. Received: '{bad}'"):
            ModelCard.from_dict({**card, "classes": [{"name": "a", "label_color": bad}]})


def _region_colours():
    from geoseg.models.classical import _REGION_COLOURS

    return _REGION_COLOURS  # all eight: a grey eighth was 6.2 from the purple under deuteranopia (h143)


def _default_model_colours():
    from pathlib import Path

    import geoseg
    from geoseg.models.card import read_card

    return [c.color for c in read_card(Path(geoseg.__file__).parent / "zoo" / "landcover-unet.json").classes]


def _baseline_colours():
    from geoseg.models.classical import _CLASSES

    return [c["color"] for c in _CLASSES]


@pytest.mark.parametrize("colours, floor", [
    (_region_colours, 10),  # Set1's blue and purple were CIEDE2000 4.2 apart under deuteranopia, its red and brown 3.1
    # the Dubai labels' colours: water #E2A929 and vegetation #FEDD3A were 10.5 apart under deuteranopia (and roads
    # were light blue); the baselines drew water and vegetation in them too
    (_default_model_colours, 15),
    (_baseline_colours, 15),
])
def test_class_and_region_colours_stay_apart_for_colour_blind_eyes(colours, floor):
    from skimage.color import deltaE_ciede2000, rgb2lab

    rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in colours()]) / 255
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    simulations = {"deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                                    [-0.011820, 0.042940, 0.968881]],  # Machado et al. 2009, severity 1
                   "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                                  [-0.003882, -0.048116, 1.051998]],
                   "normal": np.eye(3)}
    for name, matrix in simulations.items():
        seen = np.clip(linear @ np.asarray(matrix).T, 0, 1)
        lab = rgb2lab(np.where(seen <= 0.0031308, seen * 12.92, 1.055 * seen ** (1 / 2.4) - 0.055)[None])[0]
        closest = min(deltaE_ciede2000(a, b) for i, a in enumerate(lab) for b in lab[i + 1:])
        assert closest > floor, (name, closest)


def test_an_esri_float_raster_of_nodata_minus_flt_max_runs_without_numpy_warnings(make_raster, tmp_path):
    """ArcGIS writes float nodata as -3.4028235e38: the indices added it to itself, and numpy's 'overflow
    encountered in add' with its source line read as a crash (the pixels were masked all the same, h105)."""
    import warnings

    nodata = float(np.finfo(np.float32).min)
    data = np.random.default_rng(0).uniform(0, 255, (3, 40, 50)).astype(np.float32)
    data[:, :, :10] = nodata
    path = make_raster(data=data, nodata=nodata)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = segment(path, tmp_path / "out", model="threshold", preview=False)
    with rasterio.open(result.outputs["mask"]) as ds:
        mask = ds.read(1)
    assert (mask[:, :10] == 255).all() and (mask[:, 10:] != 255).all()


def test_calibration_comes_from_the_pixels_not_the_files_overviews(tmp_path):
    """The whole-raster sample was read from a file's overviews where it had some: a COG's, resampled by whoever
    built them, gave the threshold baseline another water cut than a plain GeoTIFF of the same pixels (4% of a
    4400² Dubai mask, h111). Flood's joint calibration sample was read the same way."""
    import shutil

    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from geoseg.raster import inspect_raster
    from geoseg.workflows.flood import _window_sample

    n = 2048  # more than the sample's 1024 px a side
    rng = np.random.default_rng(0)
    pick = np.indices((n, n)).sum(0) % 2 == 0  # a checkerboard: nearest-neighbour overviews see one phase only
    pick[:, : n // 3] = False
    image = np.where(pick[..., None], [40, 70, 120], [150, 130, 90]) + rng.integers(-20, 20, (n, n, 3))
    plain, with_overviews = tmp_path / "plain.tif", tmp_path / "overviews.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=n, height=n, count=3, dtype="uint8", crs="EPSG:32640",
                       transform=from_origin(500000, 2800000, 0.5, 0.5), tiled=True) as ds:
        ds.write(np.moveaxis(image.clip(0, 255).astype("uint8"), -1, 0))
    shutil.copy(plain, with_overviews)
    with rasterio.open(with_overviews, "r+") as ds:
        ds.build_overviews([2, 4, 8], Resampling.nearest)
    masks = []
    for path in (plain, with_overviews):
        result = segment(path, tmp_path / path.stem, model="threshold", preview=False)
        with rasterio.open(result.outputs["mask"]) as ds:
            masks.append(ds.read(1))
    assert np.array_equal(*masks)
    samples = [_window_sample(inspect_raster(str(p)), [1, 2, 3], Window(0, 0, n, n)) for p in (plain, with_overviews)]
    assert np.array_equal(samples[0][0], samples[1][0]) and np.array_equal(samples[0][1], samples[1][1])


def _reflectance_pair(tmp_path):
    """One scene twice: float32 reflectance of red, green, blue, NIR (water, bare soil, vegetation side by side),
    and the UInt16 counts of Landsat Collection 2 surface reflectance (reflectance = count * 2.75e-5 - 0.2)."""
    from rasterio.transform import from_origin

    rng = np.random.default_rng(1)
    refl = np.zeros((4, 96, 120), np.float32)
    for i, rgbn in enumerate([(0.04, 0.07, 0.08, 0.02), (0.25, 0.22, 0.18, 0.30), (0.05, 0.09, 0.04, 0.40)]):
        refl[:, :, i * 40:(i + 1) * 40] = np.array(rgbn, np.float32)[:, None, None]
    refl += rng.normal(0, 0.015, refl.shape).astype(np.float32)
    profile = dict(driver="GTiff", width=120, height=96, count=4, crs="EPSG:32617", transform=from_origin(0, 0, 30, 30))
    with rasterio.open(tmp_path / "refl.tif", "w", dtype="float32", **profile) as ds:
        ds.write(refl)
    with rasterio.open(tmp_path / "stored.tif", "w", dtype="uint16", **profile) as ds:
        ds.write(np.round((refl + 0.2) / 2.75e-5).astype(np.uint16))
        ds.scales, ds.offsets = [2.75e-5] * 4, [-0.2] * 4
    return tmp_path / "refl.tif", tmp_path / "stored.tif"


@pytest.mark.parametrize("name", ["threshold", "threshold-nir", "region-growing-nir", "edges-watershed-nir"])
def test_baselines_read_a_file_s_band_scales_and_offsets(tmp_path, name):
    """The indices are of reflectance: Landsat Collection 2's offset of -0.2 squeezed NDWI about 3 times on the
    stored counts, and region-growing-nir called 85% of a scene water against 38% unscaled (h121). Here 35-52% of
    the pixels took another class on the counts; now the masks of the two files are one."""
    refl, stored = _reflectance_pair(tmp_path)
    masks = []
    for path in (refl, stored):
        result = segment(path, tmp_path / path.stem, model=name, preview=False)
        with rasterio.open(result.outputs["mask"]) as ds:
            masks.append(ds.read(1))
    assert (masks[0] == masks[1]).all()
    if name != "threshold":  # the scene's three columns: water, other, vegetation
        assert [np.bincount(masks[0][:, i * 40:(i + 1) * 40].ravel()).argmax() for i in range(3)] == [1, 0, 2]


def test_bands_read_against_the_file_s_descriptions_are_warned_of(tmp_path, caplog):
    """A stack in the order nir, swir1, red, green, blue went into threshold-nir as red, green, blue, NIR from its
    first four bands (41% water, no word), and a Landsat stack into the U-Net as coastal, blue, green (h121)."""
    from rasterio.transform import from_origin

    from geoseg.errors import BandError

    image, _ = _scene(nir=True)
    r, g, b, n = image
    path = tmp_path / "stack.tif"
    with rasterio.open(path, "w", driver="GTiff", width=150, height=120, count=5, dtype="uint8", crs="EPSG:32617",
                       transform=from_origin(0, 0, 10, 10)) as ds:
        ds.write(np.stack([n, (r // 2 + n // 2), r, g, b]))
        ds.descriptions = ("NIR", "SWIR 1", "Red", "Green", "Blue")  # as a user or a download tool sets them
    caplog.set_level("WARNING", logger="geoseg")
    segment(path, tmp_path / "wrong", model="threshold-nir", preview=False)
    assert ("stack.tif: model threshold-nir reads red, green, blue, nir, but the file says otherwise (its band "
            "descriptions or colour tags): band 1, read as its red, is nir; band 2, read as its green, is swir; band 3, "
            "read as its blue, is red; band 4, read as its nir, is green. Its red, green, blue, nir are bands 3,4,5,1: "
            "pass --bands 3,4,5,1 (bands=[3, 4, 5, 1]).") in caplog.text
    caplog.clear()
    segment(path, tmp_path / "right", model="threshold-nir", bands=[3, 4, 5, 1], preview=False)
    assert "says otherwise" not in caplog.text
    # a file that does not say what its bands are (an RGB photo) is read as it is, without a word
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=150, height=120, count=3, dtype="uint8") as ds:
        ds.write(image[:3])
    segment(plain, tmp_path / "plain", model="threshold", bands=[3, 2, 1], preview=False)
    assert "says otherwise" not in caplog.text
    # an RGB image through a -nir baseline: "pass --bands with 4 indexes between 1 and 3" was followed with 1,2,3,3
    with pytest.raises(BandError, match=r"plain.tif: has 3 band\(s\), and model threshold-nir reads 4: red, green, "
                                        r"blue, nir; an image without its nir cannot give it those. Use a model of "
                                        r"the image's bands, such as threshold\."):
        segment(plain, tmp_path / "nir", model="threshold-nir")
    grey = tmp_path / "grey.tif"  # but a grey image is still told how to give its one band (h126)
    with rasterio.open(grey, "w", driver="GTiff", width=150, height=120, count=1, dtype="uint8") as ds:
        ds.write(image[:1])
    with pytest.raises(BandError, match=r"e.g. 1,1,1 to give the model its one band 3 times"):
        segment(grey, tmp_path / "grey", model="threshold")


def test_dark_water_of_reflectance_a_little_under_zero_stays_water(tmp_path):
    """Landsat Collection 2 stores reflectance a little under 0 over dark water; read by the file's offset, NIR of
    -0.008 beside green of 0.004 made NDWI's denominator negative and the index -3: 92% of the strip came out
    dry (h126). Reflectance under 0 counts as 0."""
    from rasterio.transform import from_origin

    rng = np.random.default_rng(3)
    refl = np.zeros((4, 60, 90), np.float32)  # red, green, blue, NIR
    refl[:] = np.array([0.12, 0.09, 0.06, 0.30], np.float32)[:, None, None]  # land
    refl[:, :, :30] = np.array([0.03, 0.04, 0.05, -0.005], np.float32)[:, None, None]  # water
    refl[:, :, 30:50] = np.array([0.002, 0.004, 0.008, -0.008], np.float32)[:, None, None]  # dark water
    refl += rng.normal(0, 0.001, refl.shape).astype(np.float32)
    path = tmp_path / "dark.tif"
    with rasterio.open(path, "w", driver="GTiff", width=90, height=60, count=4, dtype="uint16", crs="EPSG:32640",
                       transform=from_origin(500000, 2800000, 30, 30)) as ds:
        ds.write(np.round((refl + 0.2) / 2.75e-5).astype(np.uint16))
        ds.scales, ds.offsets = [2.75e-5] * 4, [-0.2] * 4
    result = segment(path, tmp_path / "out", model="threshold-nir", preview=False)
    with rasterio.open(result.outputs["mask"]) as ds:
        mask = ds.read(1)
    assert (mask[:, :50] == 1).mean() > 0.99 and not (mask[:, 50:] == 1).any()


def test_unusable_scales_are_said_once_per_file(tmp_path, caplog):
    """A scale of 0 (no usable number) was warned of twice per image in flood --pre (h126): once per file."""
    from geoseg.raster import declared_scaling, inspect_raster

    image, _ = _scene(nir=True)
    path = tmp_path / "zero.tif"
    with rasterio.open(path, "w", driver="GTiff", width=150, height=120, count=4, dtype="uint8") as ds:
        ds.write(image)
        ds.scales = [0.0] * 4
    info = inspect_raster(path)
    caplog.set_level("WARNING", logger="geoseg")
    assert declared_scaling(info, [1, 2, 3, 4]) is None and declared_scaling(info, [1, 2, 3, 4]) is None
    assert caplog.text.count("are not all usable numbers") == 1


def test_unusable_scales_are_said_again_in_each_run_s_own_warnings(tmp_path):
    """Said once per process, a notebook's rerun of a cell had result.warnings == [] for the same file (h133)."""
    image, _ = _scene(nir=True)
    path = tmp_path / "zero.tif"
    with rasterio.open(path, "w", driver="GTiff", width=150, height=120, count=4, dtype="uint8") as ds:
        ds.write(image)
        ds.scales = [0.0] * 4
    for run in ("a", "b"):
        result = segment(path, tmp_path / run, model="threshold-nir", preview=False)
        assert sum("are not all usable numbers" in w for w in result.warnings) == 1, (run, result.warnings)


def test_a_grey_and_alpha_image_is_told_to_repeat_its_one_band_not_to_read_the_alpha(tmp_path):
    """Grey + alpha was told "Pass --bands with 3 indexes between 1 and 2", which invites the alpha as data (h135)."""
    from rasterio.enums import ColorInterp

    from geoseg.errors import BandError

    path = tmp_path / "grey_alpha.tif"
    with rasterio.open(path, "w", driver="GTiff", width=20, height=10, count=2, dtype="uint8") as ds:
        ds.colorinterp = [ColorInterp.gray, ColorInterp.alpha]  # before the pixels: after them, GTiff kept none
        ds.write(np.stack([np.full((10, 20), 90, np.uint8), np.full((10, 20), 255, np.uint8)]))
    with pytest.raises(BandError, match=r"e.g. 1,1,1 to give the model its one band 3 times \(the alpha band stays"):
        segment(path, tmp_path / "out", model="threshold")
    result = segment(path, tmp_path / "out", model="threshold", bands=[1, 1, 1], preview=False)
    assert result.outputs["mask"]
