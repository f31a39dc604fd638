"""Evaluation and comparison through the real pipeline, against labels made beside the images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.errors import InputError, OutputError
from geoseg.workflows.evaluate import compare, evaluate


def _predicted(model, image, tmp_path):
    from geoseg import segment

    result = segment(image, tmp_path / "ref", model=model, preview=False, overwrite=True)
    with rasterio.open(result.outputs["mask"]) as ds:
        return ds.read(1), ds.profile


# the threshold baseline is deterministic to the bit; tiny random networks can flip near-ties between runs
def test_perfect_labels_score_one_and_unlabelled_is_ignored(make_raster, tmp_path):
    image = make_raster(shape=(60, 70))
    pred, profile = _predicted("threshold", image, tmp_path)
    truth = pred.copy()
    truth[:10] = 255  # unlabelled rows
    label = tmp_path / "label.tif"
    with rasterio.open(label, "w", **profile) as ds:
        ds.write(truth, 1)
    result = evaluate("threshold", [image], [label])
    assert result.pixel_accuracy == 1.0 and result.mean_iou == 1.0
    assert result.pixels_scored == 50 * 70
    assert evaluate("threshold", image, str(label)).mean_iou == 1.0  # one path each, not their characters
    truth[10:15] = 7  # values no label name stands for: were left out without a word
    with rasterio.open(label, "w", **profile) as ds:
        ds.write(truth, 1)
    result = evaluate("threshold", [image], [label])
    assert result.pixels_scored == 45 * 70 and any(
        n.startswith("350 labelled pixels have values past the 3 label names") for n in result.notes)
    # the label raster's own nodata (here a class id, 0) was scored as class 0
    truth[10:15] = 0
    with rasterio.open(label, "w", **{**profile, "nodata": 0}) as ds:
        ds.write(truth, 1)
    assert evaluate("threshold", [image], [label]).pixels_scored == int((truth[10:] != 0).sum())


def test_labels_off_the_image_grid_are_refused_before_any_segmentation(make_raster, tmp_path):
    from geoseg.errors import InputError

    image = make_raster(shape=(60, 70))
    small = tmp_path / "small.tif"
    with rasterio.open(small, "w", driver="GTiff", width=70, height=50, count=1, dtype="uint8") as ds:
        ds.write(np.zeros((50, 70), np.uint8), 1)
    broken = tmp_path / "broken.tif"
    broken.write_text("not a raster")
    out = tmp_path / "masks"
    with pytest.raises(InputError, match=r"small.tif: labels are 70 x 50 px but their image .* is 70 x 60 px"):
        evaluate("threshold", [image, image], [small, small], keep_masks=out)
    with pytest.raises(InputError, match="broken.tif: labels are not a raster GDAL can read"):
        evaluate("threshold", [image], [broken], keep_masks=out)
    with pytest.raises(InputError, match="broken.tif: not a raster GDAL can read"):
        evaluate("threshold", [broken], [small], keep_masks=out)
    assert not out.exists() or not any(out.iterdir())  # nothing was segmented
    result = CliRunner().invoke(main, ["evaluate", "--model", "threshold", "--images", str(image),
                                       "--labels", str(broken)])
    assert result.exit_code == 1 and "labels are not a raster GDAL can read" in result.output
    assert "Traceback" not in result.output


def test_labels_matched_by_name_and_wrong_pixels_counted(make_raster, tiny_fcn, tmp_path):
    image = make_raster(shape=(60, 70))
    pred, _ = _predicted(tiny_fcn, image, tmp_path)
    # a label set in another order, with a class the model lacks
    names = ["background", "class1", "class0"]
    # score against the same kept mask the evaluation makes (a tiny random network may flip near-ties between runs)
    truth = np.select([pred == 0, pred == 1], [2, 1], 0).astype(np.uint8)
    truth[:, :5] = 0  # "background": not scored, but known to be neither class0 nor class1
    wrong = np.zeros_like(pred, bool)
    wrong[30:40, 20:30] = True
    truth[wrong] = np.where(truth[wrong] == 2, 1, 2)  # 100 pixels swapped between class0 and class1
    label = tmp_path / "label.tif"
    with rasterio.open(label, "w", driver="GTiff", width=70, height=60, count=1, dtype="uint8") as ds:
        ds.write(truth, 1)
    result = evaluate(tiny_fcn, [image], [label], label_names=names, keep_masks=tmp_path / "kept")
    with rasterio.open(tmp_path / "kept" / "image_mask.tif") as ds:
        kept = ds.read(1)
    as_model = np.array([255, 1, 0], np.uint8)[truth]  # label ids -> model ids by name; background not scored
    scored = as_model != 255
    errors = int((kept[scored] != as_model[scored]).sum())
    assert result.not_scored == ["background"]
    assert result.pixels_scored == 60 * 65
    matrix = np.array(result.confusion_matrix)
    assert matrix.sum() - np.trace(matrix) == errors
    assert result.pixel_accuracy == pytest.approx(1 - errors / (60 * 65), abs=1e-4)
    assert abs(errors - 100) <= 100 * 0.5  # the 100 swapped pixels, give or take near-ties
    # every number from the masks themselves, not from geoseg's metrics: rows truth, columns prediction
    assert matrix.tolist() == [[int(((as_model == t) & (kept == p) & scored).sum()) for p in range(3)]
                               for t in range(3)]
    # a model class that a label class names, found on "background" (known to be neither): a false positive. It
    # was dropped with the background, and a water map against a water/background mask read precision 1.000 (h96)
    clouds = truth == 0
    assert result.predicted_on_not_scored == [int((clouds & (kept == c)).sum()) if c < 2 else 0 for c in range(3)]
    assert sum(result.predicted_on_not_scored) > 0
    # a class of no known class ('clouds', 'unlabeled') is no negative: its pixels count for nothing
    unknown = evaluate(tiny_fcn, [image], [label], label_names=["clouds", "class1", "class0"])
    assert unknown.predicted_on_not_scored == [0, 0, 0] and unknown.confusion_matrix == result.confusion_matrix
    for c, name in enumerate(result.classes):
        tp = int(((as_model == c) & (kept == c)).sum())
        fp = int(((as_model != c) & (scored | (clouds & (c < 2))) & (kept == c)).sum())
        fn = int(((as_model == c) & (kept != c)).sum())
        if tp + fp + fn == 0:
            continue
        got = result.per_class[name]
        assert got["iou"] == pytest.approx(tp / (tp + fp + fn), abs=1e-4)
        assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-4)
        assert got["precision"] == (pytest.approx(tp / (tp + fp), abs=1e-4) if tp + fp else None)
        assert got["recall"] == (pytest.approx(tp / (tp + fn), abs=1e-4) if tp + fn else None)


def test_compare_reads_unnamed_labels_by_the_first_model_for_every_model(make_raster, tiny_fcn, tmp_path):
    """A baseline read colour labels by its own palette and scored a few per cent of the U-Net's pixels."""
    from geoseg.models.segmenter import load_bundle

    image = make_raster(shape=(50, 60))
    pred, profile = _predicted(tiny_fcn, image, tmp_path)
    pred[:5] = 255  # a strip of unlabelled (a colour of no class)
    palette = np.array([[int(c.color[i : i + 2], 16) for i in (1, 3, 5)] for c in load_bundle(tiny_fcn).card.classes]
                       + [[155, 155, 155]] * 253, np.uint8)
    colour = tmp_path / "label_rgb.tif"
    with rasterio.open(colour, "w", **{**profile, "count": 3, "nodata": None}) as ds:
        ds.write(np.moveaxis(palette[np.minimum(pred, 3)], -1, 0))
    result = compare([str(tiny_fcn), "threshold"], [image], [colour], label_format="color")
    unet, baseline = result["evaluations"]
    assert unet["mean_iou"] == 1.0 and unet["pixels_scored"] == baseline["pixels_scored"] == 45 * 60
    assert "scored as its 'other' class: class0, class1, class2" in " ".join(baseline["notes"])
    # colour labels: by the model in whose colours they are, wherever it is listed; with the baseline first its
    # palette left every class of the U-Net's unlabelled, and the U-Net's score hung on the order (h109)
    first, second = compare(["threshold", str(tiny_fcn)], [image], [colour], label_format="color")["evaluations"]
    assert {k: first[k] for k in ("mean_iou", "pixels_scored", "confusion_matrix")} == {
        k: baseline[k] for k in ("mean_iou", "pixels_scored", "confusion_matrix")}
    assert second["mean_iou"] == 1.0 and second["pixels_scored"] == 45 * 60
    with pytest.raises(InputError, match="label colours need the label names"):  # were replaced silently
        compare([str(tiny_fcn), "threshold"], [image], [colour], label_format="color", label_colors=["#000000"])
    named, unnamed = tmp_path / "named.tif", tmp_path / "unnamed.tif"
    for path in (named, unnamed):
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(pred, 1)
    with rasterio.open(named, "r+") as ds:
        ds.update_tags(CLASS_NAMES=json.dumps({"0": "class2", "1": "class1", "2": "class0"}))
    with pytest.raises(InputError, match="1 of the 2 label files name their classes"):  # scored 0.77, not 1.0
        compare([str(tiny_fcn), "threshold"], [image, image], [named, unnamed])


def test_compare_reads_vector_ids_by_the_first_model_for_every_model(make_raster, tiny_fcn, tmp_path):
    """Polygons whose field holds ids were read by each model's own classes: class1 of the U-Net was a
    baseline's "water", without a note; names in the field were matched by name, as they still are."""
    import geopandas as gpd
    import shapely

    image = make_raster(shape=(50, 60))  # 0.5 m pixels from (500000, 2800000)
    boxes = [shapely.box(500000.0, 2799975.0, 500015.0, 2800000.0), shapely.box(500015.0, 2799975.0, 500030.0, 2800000.0)]
    for name, values in (("ids", [0, 1]), ("names", ["class0", "class1"]), ("text_ids", ["0", "1"])):
        gpd.GeoDataFrame({"class": values}, geometry=boxes, crs="EPSG:32640").to_file(tmp_path / f"{name}.gpkg")
    by_id = compare([str(tiny_fcn), "threshold"], [image], [tmp_path / "ids.gpkg"], label_format="vector")
    by_name = compare([str(tiny_fcn), "threshold"], [image], [tmp_path / "names.gpkg"], label_format="vector")
    by_text = compare([str(tiny_fcn), "threshold"], [image], [tmp_path / "text_ids.gpkg"], label_format="vector")
    assert by_text["evaluations"][0]["confusion_matrix"] == by_id["evaluations"][0]["confusion_matrix"]
    for result in (by_id, by_name, by_text):
        baseline = result["evaluations"][1]
        assert baseline["confusion_matrix"][1] == [0, 0, 0] and baseline["confusion_matrix"][2] == [0, 0, 0], baseline
        assert "scored as its 'other' class: class0, class1" in " ".join(baseline["notes"])
    assert by_id["evaluations"][0]["confusion_matrix"] == by_name["evaluations"][0]["confusion_matrix"]
    gpd.GeoDataFrame({"class": ["class0", "class1"]}, geometry=boxes, crs="EPSG:32640").to_file(tmp_path / "mixed.gpkg")
    with pytest.raises(InputError, match="1 of the 2 label files hold class ids in their field and 1 class names"):
        compare([str(tiny_fcn), "threshold"], [image, image], [tmp_path / "ids.gpkg", tmp_path / "mixed.gpkg"],
                label_format="vector")
    # in the other order, the ids are the baseline's, and the U-Net has none of its names: the error blamed the
    # polygons' cover, and the order decided whether the comparison ran at all
    with pytest.raises(InputError, match=r"read as class ids of threshold, the first model of the comparison.* put "
                                         r"the model whose ids they are first"):
        compare(["threshold", str(tiny_fcn)], [image], [tmp_path / "ids.gpkg"], label_format="vector")


def test_vector_labels_of_a_file_of_several_layers_name_their_layer(make_raster, tmp_path):
    """The first layer of a GeoPackage was read silently (a raw pyogrio warning), and 'file|layername=' was
    "label file not found"."""
    import geopandas as gpd
    import shapely

    image = make_raster(shape=(50, 60))
    box = shapely.box(500000.0, 2799975.0, 500030.0, 2800000.0)
    multi = tmp_path / "multi.gpkg"
    gpd.GeoDataFrame({"name": ["town"]}, geometry=[box], crs="EPSG:32640").to_file(multi, layer="aoi")
    gpd.GeoDataFrame({"class": ["water"]}, geometry=[box], crs="EPSG:32640").to_file(multi, layer="labels")
    with pytest.raises(InputError, match=r"multi.gpkg holds 2 layers \(aoi, labels\); name the label layer, e.g. "
                                         r"'.*multi.gpkg\|layername=labels'"):  # the one with a 'class' field
        evaluate("threshold", [image], [multi], label_format="vector")
    with pytest.raises(InputError, match=r"after '\|' name a layer as 'layername=NAME'. Received: 'layer=labels'"):
        evaluate("threshold", [image], [f"{multi}|layer=labels"], label_format="vector")  # "label file not found"
    import warnings

    with warnings.catch_warnings():  # compare named the layer itself, not pyogrio's "More than one layer found"
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="holds 2 layers"):
            compare(["threshold", "region-growing"], [image], [multi], label_format="vector")
    with pytest.raises(InputError, match="has no layer 'roofs'; its layers: aoi, labels"):
        evaluate("threshold", [image], [f"{multi}|layername=roofs"], label_format="vector")
    far = tmp_path / "far.gpkg"  # polygons elsewhere: the message named no file and ended in "?."
    gpd.GeoDataFrame({"class": ["water"]}, geometry=[shapely.box(0, 0, 10, 10)], crs="EPSG:32640").to_file(far)
    with pytest.raises(InputError, match=r"far.gpkg: no labelled pixel matched a class the model scores, so there is "
                                         r"nothing to score: check that the polygons cover the images .*names or ids, .*may cover none\)\.$"):
        evaluate("threshold", [image], [far], label_format="vector")
    result = evaluate("threshold", [image], [f"{multi}|layername=labels"], label_format="vector")
    assert result.pixels_scored == 50 * 60  # the box covers the image


def test_compare_two_models_and_cli(make_raster, tiny_fcn, model_dir, tmp_path):
    image = make_raster(shape=(50, 60))
    other = model_dir / "tiny-tiled.keras"
    result = compare([str(tiny_fcn), str(other)], [image], output_dir=tmp_path / "cmp")
    with rasterio.open(result["disagreement"][0]) as ds:
        disagreement = ds.read(1)
    with rasterio.open(tmp_path / "cmp" / "tiny-fcn" / "image_mask.tif") as a, \
            rasterio.open(tmp_path / "cmp" / "tiny-tiled" / "image_mask.tif") as b:
        assert ((disagreement == 1) == (a.read(1) != b.read(1))).all()
    assert result["agreement_pct"] == [round(100 * float((disagreement == 0).mean()), 2)]  # no nodata here
    printed = CliRunner().invoke(main, ["compare", "--models", f"{tiny_fcn},{other}", "--images", str(image),
                                        "-o", str(tmp_path / "cmp2")])
    assert f"(all models agree on {result['agreement_pct'][0]}% of the valid pixels)" in printed.output
    pred, profile = _predicted(tiny_fcn, image, tmp_path)
    label = tmp_path / "label.tif"
    with rasterio.open(label, "w", **profile) as ds:
        ds.write(pred, 1)
    out = CliRunner().invoke(main, ["compare", "--models", f"{tiny_fcn},{other}", "--images", str(image),
                                    "--labels", str(label), "--json"])
    assert out.exit_code == 0, out.output
    scores = [e["mean_iou"] for e in json.loads(out.stdout)["evaluations"]]
    assert scores[0] == 1.0 and scores[1] < 1.0
    report = tmp_path / "cmp.md"  # as evaluate's: a comparison's report took capturing stdout (h109)
    args = ["compare", "--models", f"{tiny_fcn},{other}", "--images", str(image), "--labels", str(label),
            "--markdown", str(report)]
    written = CliRunner().invoke(main, args)
    assert written.exit_code == 0 and "| **mean IoU** | **1.000** |" in report.read_text(), written.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "already exists. Pass --overwrite" in again.output
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0
    no_labels = CliRunner().invoke(main, ["compare", "--models", f"{tiny_fcn},{other}", "--images", str(image),
                                          "-o", str(tmp_path / "cmp3"), "--markdown", str(report)])
    assert no_labels.exit_code == 2 and "--markdown only applies with --labels" in no_labels.output
    table = CliRunner().invoke(main, ["evaluate", "-m", str(tiny_fcn), "--images", str(image), "--labels",
                                      str(label)])
    assert table.exit_code == 0 and "**mean IoU**" in table.output
    from geoseg.sieve import sieve_array  # --sieve scores the masks as segment --sieve writes them

    assert (sieve_array(pred, 20) != pred).any()
    with rasterio.open(tmp_path / "sieved.tif", "w", **profile) as ds:
        ds.write(sieve_array(pred, 20), 1)
    sieved = CliRunner().invoke(main, ["evaluate", "-m", str(tiny_fcn), "--images", str(image), "--labels",
                                       str(tmp_path / "sieved.tif"), "--sieve", "20", "--json"])
    assert sieved.exit_code == 0 and json.loads(sieved.stdout)["mean_iou"] == 1.0, sieved.output
    # the same model with flips averaged is another model: it no longer reproduces the plain mask exactly;
    # a baseline beside it ignores --tta and --precision
    tta = CliRunner().invoke(main, ["compare", "--models", f"{tiny_fcn},threshold", "--images", str(image),
                                    "--labels", str(label), "--tta", "flips", "--precision", "bfloat16", "--json"])
    assert tta.exit_code == 0, tta.output
    assert json.loads(tta.stdout)["models"][0].endswith("?precision=bfloat16&tta=flips")
    assert json.loads(tta.stdout)["evaluations"][0]["mean_iou"] < 1.0
    import shutil

    shutil.copy(label, tmp_path / "label2.tif")
    bad = CliRunner().invoke(main, ["evaluate", "-m", str(tiny_fcn), "--images", str(image), "--labels",
                                    str(label), "--labels", str(tmp_path / "label2.tif")])
    assert bad.exit_code == 1 and "1 image(s) but 2 label file(s)" in bad.output


def test_evaluate_and_compare_report_progress_and_take_quiet(make_raster, tmp_path):
    """evaluate of 9 real tiles ran 163 s without a byte on a terminal, and --quiet was a usage error."""
    images = [make_raster(name=f"i{i}.tif", shape=(40, 50), seed=i) for i in range(3)]
    labels = []
    for i, image in enumerate(images):
        with rasterio.open(image) as ds:
            profile = {**ds.profile, "count": 1, "dtype": "uint8", "nodata": None}
        labels.append(tmp_path / f"l{i}.tif")
        with rasterio.open(labels[-1], "w", **profile) as ds:
            ds.write(np.full((40, 50), i % 2, np.uint8), 1)
    seen = []
    evaluate("threshold", images, labels, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and any(0.3 < f < 0.7 for f in seen)
    seen.clear()
    compared = compare(["threshold", "region-growing"], images[:2], labels[:2],
                       output_dir=tmp_path / "cmp", progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and any(0.4 < f < 0.6 for f in seen)
    # unnamed index labels are read as the first model's ids for every model: evaluate said so, compare did not
    assert len(compared["evaluations"]) == 2
    for e in compared["evaluations"]:
        assert any(n.startswith("the labels' values were read as threshold's class ids (0 other, 1 water, 2 "
                                "vegetation), the first model of the comparison") for n in e["notes"]), e["notes"]
    seen.clear()
    compare(["threshold", "threshold?water=0.2&vegetation=0.3"], images[:2], output_dir=tmp_path / "cmp2",
            progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    with pytest.raises(InputError, match="progress must be a function"):
        evaluate("threshold", images, labels, progress=3)
    for command in (["evaluate", "-m", "threshold"], ["compare", "--models", "threshold,threshold?water=0.2&vegetation=0.3"]):
        quiet = CliRunner().invoke(main, [*command, "--images", str(images[0]), "--labels", str(labels[0]),
                                          "--quiet"])
        assert quiet.exit_code == 0 and "**mean IoU**" in quiet.stdout, quiet.output


def test_images_of_one_name_in_two_folders_keep_their_own_masks(make_raster, tmp_path):
    """Dubai's layout: Tile 2/images/part_1.jpg and Tile 3/images/part_1.jpg. Each mask used to overwrite the
    other, and compare's disagreement of the second image was computed from the first image's masks."""
    (tmp_path / "t2").mkdir()
    (tmp_path / "t3").mkdir()
    images = [make_raster(name="t2/part.tif", shape=(40, 50), seed=1), make_raster(name="t3/part.tif", shape=(30, 60),
                                                                                   seed=2)]
    result = compare(["threshold", "region-growing"], images, output_dir=tmp_path / "cmp")
    assert len(set(result["disagreement"])) == 2
    for image, path in zip(images, result["disagreement"]):
        with rasterio.open(image) as src, rasterio.open(path) as ds:
            assert ds.shape == src.shape
        mask = _predicted("threshold", image, tmp_path)[0]
        name = Path(path).name.replace("_disagreement.tif", "")
        with rasterio.open(tmp_path / "cmp" / "threshold" / name / "part_mask.tif") as ds:
            assert (ds.read(1) == mask).all()
    # one at a time into one folder: each run segments its image instead of reusing the last run's part_mask.tif
    for image in images:
        again = compare(["threshold", "region-growing"], [image], output_dir=tmp_path / "cmp2", overwrite=True)
        with rasterio.open(image) as src, rasterio.open(again["disagreement"][0]) as ds:
            assert ds.shape == src.shape


def test_palette_png_labels_are_read_by_colour(tmp_path):
    """Some Dubai masks are palette PNGs: their indexes must go through the colour table."""
    from geoseg.models.labels import read_labels

    index = np.array([[0, 1], [2, 1]], np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette([60, 16, 152, 226, 169, 41, 155, 155, 155] + [0] * 759)  # building, water, unlabeled
    image.save(tmp_path / "mask.png")
    classes = [{"name": "building", "color": "#3C1098"}, {"name": "water", "color": "#E2A929"}]
    labels = read_labels(tmp_path / "mask.png", fmt="color", classes=classes, image=tmp_path / "mask.png", shape=(2, 2))
    assert labels.tolist() == [[0, 1], [255, 1]]


def test_label_sets_that_cannot_be_scored_are_refused_before_segmenting(make_raster, tiny_fcn, tmp_path):
    """Names without colours, bad colours, an RGB mask read as ids, nothing scorable: clear errors, nothing run."""
    from geoseg.errors import InputError

    image = make_raster(shape=(40, 50))
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[:, :30] = (0x84, 0x29, 0xF6)  # Dubai's "land" colour, which the threshold baseline's classes lack
    Image.fromarray(rgb).save(tmp_path / "mask.png")
    mask, out = tmp_path / "mask.png", tmp_path / "masks"
    cases = [
        (dict(label_format="color", label_names=["land"]), "need their colours too"),
        (dict(label_format="color", label_names=["land", "water"], label_colors=["#8429F6"]),
         "2 label name.s. but 1 colour"),
        (dict(label_format="color", label_names=["land"], label_colors=["#zzz"]), "must be #RRGGBB.*'#zzz'"),
        (dict(label_format="color", label_colors=["#8429F6"]), "need the label names"),
        (dict(label_format="color", label_names=["land", "land"], label_colors=["#8429F6"] * 2), "must differ"),
        (dict(label_format="index"), "labels have 3 bands, but index labels are one band"),
    ]
    for options, message in cases:
        with pytest.raises(InputError, match=message):
            evaluate("threshold", [image], [mask], keep_masks=out, **options)
    ids = make_raster(name="ids.tif", data=np.zeros((1, 40, 50), np.uint8))  # class ids read as colours (h109)
    with pytest.raises(InputError, match="ids.tif has one band and no colour table, so it holds class ids: pass "
                                         "--label-format index"):
        evaluate("threshold", [image], [ids], label_format="color")
    assert not out.exists()  # refused before the first segmentation
    result = evaluate("threshold", [image], [mask], label_format="color", label_names=["land"],
                      label_colors=["#8429F6"])
    assert result.pixels_scored == 40 * 30  # "land" counts as the baseline's "other"; black is unlabelled
    one = evaluate("threshold", image, mask, label_format="color", label_names="land", label_colors="#8429F6")
    assert one.pixels_scored == 40 * 30  # one name is a list of one, not four one-letter names
    for models in (["threshold", "threshold"], ["x/run/m.keras", "y/run/m.keras"]):
        with pytest.raises(InputError, match="would share one"):
            compare(models, [image], [mask])
    # land, which the baseline's card lacks, is landcover-unet's: read as that class, and scored as 'other' (h168)
    land = evaluate("threshold", [image], [mask], label_format="color")
    assert land.pixels_scored == 40 * 30 and "read as landcover-unet's classes land" in " ".join(land.notes)
    rgb[:] = (0x01, 0x02, 0x03)  # a colour of no model's
    Image.fromarray(rgb).save(tmp_path / "neither_mask.png")
    with pytest.raises(InputError, match="nothing to score: the label colours are .*most common colours in "
                                         ".*neither_mask.png are #010203"):
        evaluate("threshold", [image], [tmp_path / "neither_mask.png"], keep_masks=out, label_format="color")
    with pytest.raises(InputError, match="nothing to score: the label colours are #D9D0B8"):
        compare(["threshold", str(tiny_fcn)], [image], [tmp_path / "neither_mask.png"], label_format="color",
                output_dir=out)  # read by the first model's colours on a tie, which the mask does not hold
    assert not out.exists()  # refused before anything was segmented
    rgb[:] = (0x00, 0x80, 0x40)  # the tiny network's class0 colour, none of the baseline's
    Image.fromarray(rgb).save(tmp_path / "tiny_mask.png")
    other = tmp_path / "coast"  # the tiny network under other class names, and without 'other'
    other.mkdir()
    shutil.copy(tiny_fcn, other / "coast.keras")
    card = json.loads(tiny_fcn.with_suffix(".json").read_text())
    card["classes"] = [{**c, "name": n} for c, n in zip(card["classes"], ("sand", "sea", "trees"))]
    (other / "coast.json").write_text(json.dumps({**card, "name": "coast"}))
    tiny_mask = tmp_path / "tiny_mask.png"  # in the tiny network's colours, which the first model reads
    with pytest.raises(InputError, match="nothing to score"):
        compare([str(tiny_fcn), str(other / "coast.keras")], [image], [tiny_mask], label_format="color",
                output_dir=out)
    assert not out.exists()  # the second model's check ran before the first one segmented anything
    from geoseg.models.registry import with_card

    flips = with_card(str(tiny_fcn), tta="flips")  # a model against its own flips: two folders
    compare([str(tiny_fcn), flips], [image], output_dir=tmp_path / "cmp")
    assert {p.name for p in (tmp_path / "cmp").iterdir() if p.is_dir()} == {"tiny-fcn", "tiny-fcn_tta-flips"}
    other = tmp_path / "runB"  # two training runs of one name: folders named by their parents
    other.mkdir()
    for suffix in (".keras", ".json"):
        shutil.copy(Path(tiny_fcn).with_suffix(suffix), other)
    compare([str(tiny_fcn), str(other / Path(tiny_fcn).name)], [image], output_dir=tmp_path / "runs")
    assert {p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()} == {
        f"{Path(tiny_fcn).parent.name}_tiny-fcn", "runB_tiny-fcn"}
    cli = CliRunner().invoke(main, ["evaluate", "-m", "threshold", "--images", str(image), "--labels", str(mask),
                                    "--label-format", "color", "--label-names", "land", "--label-colors", "#8429F6",
                                    "--markdown", str(tmp_path / "missing" / "table.md")])
    assert cli.exit_code == 1 and "folder" in cli.output and "does not exist" in cli.output
    (tmp_path / "afile").write_text("x")
    cli = CliRunner().invoke(main, ["evaluate", "-m", "threshold", "--images", str(image), "--labels", str(mask),
                                    "--label-format", "color", "--label-names", "land", "--label-colors", "#8429F6",
                                    "--markdown", str(tmp_path / "afile" / "table.md")])
    assert cli.exit_code == 1 and "afile is a file, not a folder" in cli.output  # not "does not exist" (h118)
    for bad in (["--label-names", "land,water", "--label-colors", "red,#00ff00"], ["--label-colors", "#8429F6"]):
        for command in (["evaluate", "-m", "threshold"], ["compare", "--models", "threshold,region-growing"]):
            cli = CliRunner().invoke(main, [*command, "--images", str(image), "--labels", str(mask),
                                            "--label-format", "color", *bad])
            # usage errors, exit 2 with the usage line, as a blank item is; they exited 1, as a failed run (h109)
            assert cli.exit_code == 2 and "Usage:" in cli.output, cli.output
    cli = CliRunner().invoke(main, ["evaluate", "-m", "threshold", "--images", str(image), "--labels", str(mask),
                                    "--label-format", "color", "--label-names", "land", "--label-colors", "#8429F6",
                                    "--markdown", str(tmp_path / "table.md")])
    assert cli.exit_code == 0 and "| other |" in (tmp_path / "table.md").read_text()
    # with the notes, which the terminal gets on stderr
    assert "- Note: label classes not in the model, scored as its 'other' class: land" in (tmp_path / "table.md").read_text()


def test_compare_columns_of_one_model_name_are_told_apart(make_raster, tiny_fcn):
    """A model against its own flips gave the table `| tiny-fcn | tiny-fcn |`, and --json no way to tell."""
    from geoseg.models.registry import with_card
    from geoseg.workflows.evaluate import markdown_table

    image = make_raster(shape=(40, 50))
    truth = make_raster(name="truth.tif", data=np.zeros((1, 40, 50), np.uint8))
    flips = with_card(str(tiny_fcn), tta="flips")
    result = compare([str(tiny_fcn), flips], [image], [truth])
    assert [e["column"] for e in result["evaluations"]] == ["tiny-fcn", "tiny-fcn_tta-flips"]
    assert [e["reference"] for e in result["evaluations"]] == [str(tiny_fcn), flips]
    assert markdown_table(result["evaluations"]).startswith("| class | tiny-fcn | tiny-fcn_tta-flips |")
    alone = compare([str(tiny_fcn), "threshold"], [image], [truth])
    assert [e["column"] for e in alone["evaluations"]] == ["tiny-fcn", "threshold"]  # names that differ stay


def test_the_markdown_report_replaces_no_input_and_no_file_without_overwrite(make_raster, tiny_fcn, tmp_path):
    """`evaluate --markdown img.tif` turned the image (or the label, or the model's card) into a text file."""
    image = make_raster(shape=(40, 50))
    truth = make_raster(name="truth.tif", data=np.zeros((1, 40, 50), np.uint8))
    card = Path(tiny_fcn).with_suffix(".json")
    before = {p: p.read_bytes() for p in (image, truth, card)}
    for target in (image, truth, card):
        cli = CliRunner().invoke(main, ["evaluate", "-m", str(tiny_fcn), "--images", str(image), "--labels",
                                        str(truth), "--markdown", str(target)])
        assert cli.exit_code == 1 and f"--markdown {target}: is the input" in cli.output, cli.output
    assert all(p.read_bytes() == data for p, data in before.items())
    report = tmp_path / "report.md"
    report.write_text("an earlier report")
    args = ["evaluate", "-m", str(tiny_fcn), "--images", str(image), "--labels", str(truth), "--markdown", str(report)]
    cli = CliRunner().invoke(main, args)
    assert cli.exit_code == 1 and "report.md already exists. Pass --overwrite" in cli.output
    assert report.read_text() == "an earlier report"
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0 and "| class0 |" in report.read_text()


def test_label_names_match_model_classes_case_aside_and_others_say_so(make_raster, tiny_fcn, tmp_path):
    """Said "are the label values class ids (0, 1, ...)?" when no name was a model class. Names that differed
    only in case were refused, and vector labels whose field says 'Building' then had no way to be scored:
    --label-names had to hold the file's names, which were no model class."""
    from geoseg.errors import InputError

    image = make_raster(shape=(40, 50))
    truth = make_raster(name="truth.tif", data=np.zeros((1, 40, 50), np.uint8))
    cased = evaluate(tiny_fcn, [image], [truth], label_names=["Class0", "Class1"])
    exact = evaluate(tiny_fcn, [image], [truth], label_names=["class0", "class1"])
    assert cased.confusion_matrix == exact.confusion_matrix and cased.mean_iou == exact.mean_iou
    with pytest.raises(InputError, match=r"none of the label names \(forest, lake\) is a class of model "
                                         r"tiny-fcn \(class0, class1, class2\), so there is nothing to score"):
        evaluate(tiny_fcn, [image], [truth], label_names=["forest", "lake"])


def test_label_template_names_a_zipped_image_by_the_raster_inside():
    from geoseg.cli.evaluate import _pairs

    images, labels = _pairs(("zip:///data/flight.zip!scene.tif",), ("masks/{stem}.png",))
    assert labels == ["masks/scene.png"]  # not 'flight.zip!scene'


def _label_like(path, image, data, **changes):
    """A one-band label raster on `image`'s profile, with `changes` (crs, transform) applied."""
    with rasterio.open(image) as ds:
        profile = {**ds.profile, "count": 1, **changes}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data[:profile["height"], :profile["width"]], 1)
    return path


@pytest.mark.parametrize("changes, message", [
    # shifted by 50 m (100 px): the same size, the same CRS, another place
    (dict(transform=rasterio.transform.from_origin(500050.0, 2800000.0, 0.5, 0.5)), "their pixel grid is 100 px off"),
    # 1 m pixels of the same place: "35 px off the image's" read as a shift (h109)
    (dict(transform=rasterio.transform.from_origin(500000.0, 2800000.0, 1.0, 1.0), width=35, height=30),
     "their pixels are 1 m, the image's 0.5 m"),
    # labels in another CRS at another place
    (dict(crs="EPSG:4326", transform=rasterio.transform.from_origin(55.0, 25.0, 1e-5, 1e-5)),
     "their CRS EPSG:4326 is not the image's EPSG:32640"),
    # warped to another CRS, which changed its size too: was "is this the label of another image?", no gdalwarp
    (dict(crs="EPSG:4326", transform=rasterio.transform.from_origin(55.0, 25.0, 1e-5, 1e-5), width=61, height=52),
     "their CRS EPSG:4326 is not the image's EPSG:32640"),
])
def test_georeferenced_labels_off_the_image_grid_are_refused(make_raster, tmp_path, changes, message):
    """Labels of the image's size but of another place, or another CRS, scored IoU 1.0 as if they were its own."""
    image = make_raster(shape=(60, 70))
    pred, _ = _predicted("threshold", image, tmp_path)
    label = _label_like(tmp_path / "label.tif", image, pred, **changes)
    out = tmp_path / "masks"
    expected = rf"label.tif: labels must be on the pixel grid of their image image.tif, but {message}.*gdalwarp"
    with pytest.raises(InputError, match=expected):
        evaluate("threshold", [image], [label], keep_masks=out)
    with pytest.raises(InputError, match=expected):
        compare(["threshold", "region-growing"], [image], [label], output_dir=out)
    assert not out.exists()  # refused before anything was segmented
    result = CliRunner().invoke(main, ["evaluate", "-m", "threshold", "--images", str(image), "--labels", str(label)])
    assert result.exit_code == 1 and "-te 500000 2799970 500035 2800000 -ts 70 60" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_labels_on_the_grid_or_without_georeferencing_are_accepted(make_raster, tmp_path):
    image = make_raster(shape=(60, 70))
    pred, _ = _predicted("threshold", image, tmp_path)
    nudged = _label_like(tmp_path / "nudged.tif", image, pred,  # 0.001 px: rounding, not another grid
                         transform=rasterio.transform.from_origin(500000.0005, 2800000.0, 0.5, 0.5))
    assert evaluate("threshold", image, nudged).mean_iou == 1.0
    plain = tmp_path / "plain.png"  # a PNG mask beside its image: no georeferencing, taken by its size
    Image.fromarray(pred).save(plain)
    assert evaluate("threshold", image, plain).mean_iou == 1.0


def test_compare_refuses_an_earlier_comparisons_outputs_unless_overwrite(make_raster, tmp_path):
    """compare -o replaced an earlier run's masks and disagreement rasters without --overwrite, unlike segment."""
    image = make_raster(shape=(40, 50))
    out = tmp_path / "cmp"
    first = compare(["threshold", "region-growing"], [image], output_dir=out)
    before = Path(first["disagreement"][0]).stat().st_mtime_ns
    with pytest.raises(OutputError, match=r"disagreement.tif.*already exist\(s\) from an earlier comparison. Pass "
                                          r"--overwrite"):
        compare(["threshold", "edges-watershed"], [image], output_dir=out)
    assert not (out / "edges-watershed").exists() and Path(first["disagreement"][0]).stat().st_mtime_ns == before
    args = ["compare", "--models", "threshold,region-growing", "--images", str(image), "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Pass --overwrite" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, args + ["--overwrite"])
    assert result.exit_code == 0, result.output


def test_compare_interrupted_midway_leaves_nothing_and_the_same_command_runs(make_raster, tmp_path):
    """Ctrl-C during compare -o left the masks it had written, and the same command then refused them as 'from an
    earlier comparison' until --overwrite."""
    images = [make_raster(name=f"i{i}.tif", shape=(40, 50), seed=i) for i in range(2)]
    out = tmp_path / "cmp"

    def stop(fraction: float) -> None:
        if fraction >= 0.5:  # in the third of four runs: two masks written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare(["threshold", "region-growing"], images, output_dir=out, progress=stop)
    assert not out.exists()  # the folder it made, and every file in it
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt):
        compare(["threshold", "region-growing"], images, output_dir=tmp_path / "kept", progress=stop)
    assert [p.name for p in (tmp_path / "kept").rglob("*")] == ["notes.txt"]  # a folder of the user's: only theirs
    # another run's staging folder, made while this one ran, is that run's to remove: a failed comparison took
    # another's staged masks, which then died in a FileNotFoundError traceback (h118)
    other = tmp_path / "kept" / "threshold" / ".geoseg-host-1-abc"

    def stop_beside_another(fraction: float) -> None:
        other.mkdir(parents=True, exist_ok=True)
        (other / "i0_mask.tif").write_bytes(b"staged")
        stop(fraction)

    with pytest.raises(KeyboardInterrupt):
        compare(["threshold", "region-growing"], images, output_dir=tmp_path / "kept", progress=stop_beside_another)
    assert (other / "i0_mask.tif").read_bytes() == b"staged"
    done = compare(["threshold", "region-growing"], images, output_dir=out)
    assert len(done["disagreement"]) == 2


def test_compare_needs_labels_or_an_output_folder(make_raster):
    """Loaded every model, then printed nothing and exited 0."""
    image = make_raster(shape=(40, 50))
    with pytest.raises(InputError, match=r"compare needs labels .*\(--labels, labels=\) or an output folder"):
        compare(["threshold", "region-growing"], [image])
    result = CliRunner().invoke(main, ["compare", "--models", "threshold,region-growing", "--images", str(image)])
    assert result.exit_code == 1 and "needs labels to score the models (--labels" in result.output
    assert "Traceback" not in result.output


def test_compare_checks_every_models_bands_before_running_any(make_raster, tmp_path):
    """The first model segmented every image before the second one's bands failed, leaving its masks behind,
    without naming the model, and suggesting --bands, which compare lacks."""
    images = [make_raster(name="a.tif", shape=(40, 50)), make_raster(name="b.tif", shape=(40, 50), bands=4)]
    label = _label_like(tmp_path / "label.tif", images[0], np.zeros((40, 50), np.uint8))
    out = tmp_path / "cmp"
    with pytest.raises(InputError, match=r"model threshold-nir reads band\(s\) \[1, 2, 3, 4\], but .*a.tif has 3 "
                                         r"band\(s\): leave threshold-nir out of the comparison \(--models\)"):
        compare(["threshold", "threshold-nir"], images, [label, label], output_dir=out)
    assert not out.exists()
    result = CliRunner().invoke(main, ["compare", "--models", "threshold,threshold-nir", "--images", str(images[0]),
                                       "--images", str(images[1]), "-o", str(out)])
    assert result.exit_code == 1 and "model threshold-nir reads band(s)" in result.output
    assert "--bands" not in result.output and not out.exists()
    result = CliRunner().invoke(main, ["evaluate", "-m", "threshold-nir", "--images", str(images[0]),
                                       "--labels", str(label)])
    assert result.exit_code == 1 and "model threshold-nir reads band(s)" in result.output
    assert "--bands" not in result.output


@pytest.mark.parametrize("template, message", [
    ("{foo}/x.tif", "unknown placeholder {foo}"),  # a KeyError traceback
    ("{stem", "not a template (expected '}' before end of string)"),  # a ValueError traceback
    ("{0}.tif", "a placeholder needs a name"),  # an IndexError traceback
])
@pytest.mark.parametrize("command", [["evaluate", "-m", "threshold"], ["compare", "--models", "threshold,region-growing"]])
def test_label_templates_that_cannot_be_filled_are_one_line(make_raster, template, message, command):
    image = make_raster(shape=(40, 50))
    result = CliRunner().invoke(main, [*command, "--images", str(image), "--labels", template])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"--labels {template!r}: {message}; it may use {{stem}}, {{name}} and {{image_dir}}" in result.output


def test_compare_prints_the_notes_evaluate_prints(make_raster, tmp_path):
    """compare's table left out the notes evaluate prints under it."""
    image = make_raster(shape=(40, 50))
    pred, _ = _predicted("threshold", image, tmp_path)
    pred[:5] = 7  # values past the label names
    label = _label_like(tmp_path / "label.tif", image, pred)
    args = ["--images", str(image), "--labels", str(label), "--label-names", "other,water,vegetation"]
    single = CliRunner().invoke(main, ["evaluate", "-m", "threshold", *args])
    both = CliRunner().invoke(main, ["compare", "--models", "threshold,region-growing", *args])
    assert single.exit_code == both.exit_code == 0, both.output
    note = "note: 250 labelled pixels have values past the 3 label names"
    assert single.stderr.count(note) == 1 and both.stderr.count(note) == 1  # once: both models have it
    assert note not in both.stdout


def test_label_names_may_be_one_comma_separated_string(make_raster, tmp_path):
    """'other,water,vegetation' was one class of that name."""
    image = make_raster(shape=(40, 50))
    pred, _ = _predicted("threshold", image, tmp_path)
    label = _label_like(tmp_path / "label.tif", image, pred)
    result = evaluate("threshold", image, label, label_names="other, water,vegetation")
    assert result.mean_iou == 1.0 and result.pixels_scored == 40 * 50 and not result.not_scored


def test_vector_labels_of_no_class_say_how_to_fix_it_in_evaluate(make_raster, tmp_path):
    """The advice was "Rename the classes in the config", and evaluate has no config."""
    import geopandas as gpd
    import shapely

    image = make_raster(shape=(40, 50))
    gpd.GeoDataFrame({"class": [9]}, geometry=[shapely.box(500000, 2799980, 500025, 2800000)],
                     crs="EPSG:32640").to_file(tmp_path / "labels.gpkg")
    with pytest.raises(InputError, match="no polygon's 'class' value matches a class") as caught:
        evaluate("threshold", image, tmp_path / "labels.gpkg", label_format="vector")
    assert "Pass --label-names (label_names=) with the names the file uses" in str(caught.value)
    assert "config" not in str(caught.value)


def test_line_labels_are_warned_of_and_a_layer_without_fields_says_so(make_raster, tmp_path, caplog):
    """Road centrelines were burnt one pixel wide without a word (road recall 0.007); a layer with no attribute
    at all was told "Fields: ." """
    import geopandas as gpd
    import shapely

    image = make_raster(shape=(40, 50))
    road = shapely.LineString([(500000, 2799990), (500025, 2799990)])
    gpd.GeoDataFrame({"class": [1]}, geometry=[road], crs="EPSG:32640").to_file(tmp_path / "roads.gpkg")
    result = evaluate("threshold", image, tmp_path / "roads.gpkg", label_format="vector")
    # in the report's notes, once (it was logged twice and missing from --json)
    assert [n for n in result.notes if "1 of its shapes are lines, burnt one pixel wide" in n] != []
    # the command it gives names the layer's geometry column: 'geometry' failed on a GeoPackage's 'geom' (h122)
    # ... and buffers only the lines and points: polygons in the layer grew 3 m too (h126)
    assert any("ogr2ogr -nln roads -dialect SQLite -sql \"SELECT CASE WHEN GeometryType(geom) LIKE '%POLYGON%' "
               "THEN geom ELSE ST_Buffer(geom, 3) END AS geom, * "
               'FROM \\"roads\\"" for 3 m in a metric CRS, its polygons kept as they are).' in n for n in result.notes)
    gpd.GeoDataFrame({"class": [1]}, geometry=[road], crs="EPSG:32640").to_crs("EPSG:4326").to_file(
        tmp_path / "roads.geojson")
    result = evaluate("threshold", image, tmp_path / "roads.geojson", label_format="vector")
    assert any("after moving the layer, which is in degrees, into a metric CRS" in n for n in result.notes)
    gpd.GeoDataFrame({"class": [1, 1]}, geometry=[road, shapely.Point(500010, 2799985)], crs="EPSG:32640").to_file(
        tmp_path / "mixed.gpkg")
    result = evaluate("threshold", image, tmp_path / "mixed.gpkg", label_format="vector")
    assert sum("1 of its shapes are lines and 1 are points, burnt one pixel wide" in n for n in result.notes) == 1
    caplog.clear()
    gpd.GeoDataFrame(geometry=[shapely.box(500000, 2799980, 500025, 2800000)],
                     crs="EPSG:32640").to_file(tmp_path / "bare.gpkg")
    with pytest.raises(InputError, match="no field 'class' holding the class. The layer has no attribute fields"):
        evaluate("threshold", image, tmp_path / "bare.gpkg", label_format="vector")
    assert "lines" not in caplog.text


def test_vector_labels_are_read_by_their_own_names_as_compare_reads_them(make_raster, tiny_fcn, tmp_path):
    """evaluate read a field of names by the model's classes: 'lake' polygons were left out unlabelled where
    compare scored them as the baseline's 'other', 'Building' was refused, and a model without the names
    said only that polygons matched no class."""
    import geopandas as gpd
    import shapely

    image = make_raster(shape=(40, 50))
    gpd.GeoDataFrame({"class": ["Water", "lake"]},
                     geometry=[shapely.box(500000, 2799980, 500012, 2800000), shapely.box(500012, 2799980, 500025, 2800000)],
                     crs="EPSG:32640").to_file(tmp_path / "labels.gpkg")
    alone = evaluate("threshold", image, tmp_path / "labels.gpkg", label_format="vector")
    beside = compare(["threshold", "region-growing"], [image], [tmp_path / "labels.gpkg"], label_format="vector")
    assert alone.confusion_matrix == beside["evaluations"][0]["confusion_matrix"]
    assert alone.pixels_scored == 40 * 50  # both polygons, lake as 'other'
    assert "label classes not in the model, scored as its 'other' class: lake" in alone.notes
    with pytest.raises(InputError, match=r"none of the label names \(Water, lake\) is a class of model tiny"):
        evaluate(tiny_fcn, image, tmp_path / "labels.gpkg", label_format="vector")


def test_polygons_of_no_class_are_in_the_report_notes_of_every_run(make_raster, tmp_path):
    """They were said once in the log, never in the report: a second evaluation of the file said nothing."""
    import geopandas as gpd
    import shapely

    image = make_raster(shape=(40, 50))
    gpd.GeoDataFrame({"class": [1, 7]},  # ids: threshold has 0 to 2
                     geometry=[shapely.box(500000, 2799980, 500012, 2800000), shapely.box(500012, 2799980, 500025, 2800000)],
                     crs="EPSG:32640").to_file(tmp_path / "labels.gpkg")
    for _ in range(2):
        result = evaluate("threshold", image, tmp_path / "labels.gpkg", label_format="vector")
        said = [n for n in result.notes if "matches no class" in n]
        assert len(said) == 1 and "1 of 2 polygons have a 'class' value that matches no class (7)" in said[0]
    gpd.GeoDataFrame({"class": [1]}, geometry=[shapely.box(500000, 2799980, 500012, 2800000)],
                     crs="EPSG:32640").to_file(tmp_path / "clean.gpkg")
    clean = evaluate("threshold", image, tmp_path / "clean.gpkg", label_format="vector")
    assert not [n for n in clean.notes if "no class" in n]  # nothing carried over from the other file
    assert "the labels' values were read as threshold's class ids (0 other, 1 water, 2 vegetation)" in clean.notes[-1]


def _renamed_bundle(bundle, folder, name, names):
    """`bundle`'s weights under another card name and other class names (the same ids)."""
    from geoseg.models import ModelCard, read_card, write_card

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundle, folder / f"{name}.keras")
    data = read_card(bundle.with_suffix(".json")).to_dict()
    data["name"] = name
    data["classes"] = [{**c, "name": n} for c, n in zip(data["classes"], names)]
    write_card(ModelCard.from_dict(data), folder / f"{name}.json")
    return folder / f"{name}.keras"


def test_compare_disagreement_matches_classes_by_name_not_id(make_raster, tiny_fcn, tmp_path):
    """Two models of the same weights whose class tables are reversed agreed wherever their ids were equal."""
    image = make_raster(shape=(32, 40))
    reversed_ = _renamed_bundle(tiny_fcn, tmp_path / "rev", "tiny-rev", ["class2", "class1", "class0"])
    result = compare([str(tiny_fcn), str(reversed_)], [image], output_dir=tmp_path / "cmp")
    with rasterio.open(result["disagreement"][0]) as ds:
        disagreement = ds.read(1)
    with rasterio.open(tmp_path / "cmp" / "tiny-fcn" / "image_mask.tif") as ds:
        ids = ds.read(1)
    assert (ids != 1).any() and (ids == 1).any()
    # the same id means another class except for id 1 (class1 in both)
    assert ((disagreement == 1) == (ids != 1)).all()


def test_disagreement_counts_class_names_and_other_covers_the_classes_it_lacks():
    from geoseg.models import ModelCard
    from geoseg.workflows.evaluate import _Disagreement

    def card(name, classes):
        return ModelCard.from_dict({"name": name, "classes": [{"name": c} for c in classes], "bands": [1],
                                    "normalization": {"method": "none"}, "margin": 0})

    baseline = card("b", ["water", "vegetation", "other"])
    unet = card("u", ["building", "land", "water", "vegetation"])
    count = _Disagreement([baseline, unet])
    stack = np.array([[[2, 2, 0, 1, 255]],  # baseline: other, other, water, vegetation, nodata
                      [[1, 2, 2, 1, 0]]], np.uint8)  # unet: land, water, water, land, building
    # other vs land: other stands for land; other vs water: two classes; water vs water (ids 0 and 2): agree;
    # vegetation vs land (both id 1): two classes; nodata in any mask: 255
    assert count(stack).tolist() == [[0, 1, 0, 1, 255]]
    three = _Disagreement([baseline, unet, unet])  # land and road of two U-Nets stay two classes beside other
    assert three(np.array([[[2]], [[1]], [[0]]], np.uint8)).tolist() == [[1]]


def test_disagreement_raster_names_and_colours_every_value_of_six_models(make_raster, tiny_fcn, tmp_path):
    """The colour table had five entries, so six models' value 5 had no colour and no name."""
    image = make_raster(shape=(24, 24))
    models = ["threshold", "region-growing", "edges-watershed"]
    models += [str(_renamed_bundle(tiny_fcn, tmp_path / f"run{i}", "tiny", [f"c{i}{j}" for j in range(3)]))
               for i in range(3)]
    result = compare(models, [image], output_dir=tmp_path / "cmp")
    with rasterio.open(result["disagreement"][0]) as ds:
        colormap, names = ds.colormap(1), json.loads(ds.tags()["CLASS_NAMES"])
        assert ds.read(1).max() <= 5
    assert sorted(map(int, names)) == list(range(6)) and names["5"] == "6 classes"
    assert all(colormap[v][3] == 255 for v in range(6)) and len({colormap[v] for v in range(6)}) == 6


def test_index_labels_with_gaps_in_their_class_names_keep_their_ids(make_raster, tmp_path):
    """CLASS_NAMES {"0": a, "2": c}: value 2 was read as id 1 (nothing) and value 1 (unnamed) as c."""
    image = make_raster(shape=(60, 70))
    pred, profile = _predicted("threshold", image, tmp_path)
    from geoseg.models.registry import get_segmenter

    names = [c.name for c in get_segmenter("threshold").card.classes]
    assert all((pred == i).any() for i in range(3))
    label = tmp_path / "sparse.tif"
    with rasterio.open(label, "w", **profile) as ds:
        ds.write(pred, 1)
        ds.update_tags(CLASS_NAMES=json.dumps({"0": names[0], "2": names[2]}))
    result = evaluate("threshold", [image], [label])
    assert result.pixel_accuracy == 1.0 and result.pixels_scored == int((pred != 1).sum())
    assert result.confusion_matrix[2][2] == int((pred == 2).sum())
    assert f"{int((pred == 1).sum())} labelled pixels have ids that no label name stands for (1)" in \
        " ".join(result.notes)


def test_duplicate_label_colours_are_refused(make_raster, tmp_path):
    """Two names of one colour: the later took every pixel of that colour and the earlier had none."""
    from geoseg.models.labels import read_labels

    image = make_raster(shape=(20, 24))
    colour = make_raster(name="colour.tif", shape=(20, 24), data=np.full((3, 20, 24), 0x22, np.uint8))
    with pytest.raises(InputError, match="label colours must differ.*#222222 for water and other"):
        evaluate("threshold", [image], [colour], label_format="color", label_names=["water", "other"],
                 label_colors=["#222222", "#222222"])
    classes = [{"name": "a", "color": "#222222"}, {"name": "b", "color": "#222222"}, {"name": "c", "color": "#000000"}]
    with pytest.raises(InputError, match="#222222 is the colour of 'a', 'b'"):  # a card's or a training config's
        read_labels(colour, fmt="color", classes=classes, image=image, shape=(20, 24))


def test_masked_label_pixels_are_unlabelled(make_raster, tmp_path):
    """A label raster's internal mask was ignored: its masked pixels were scored as their stored value."""
    from geoseg.models.labels import read_labels

    image = make_raster(shape=(20, 24))
    mask = np.ones((20, 24), bool)
    mask[:, :10] = False
    index = make_raster(name="index.tif", shape=(20, 24), data=np.ones((1, 20, 24), np.uint8), internal_mask=mask)
    truth = read_labels(index, fmt="index", classes=[{"name": "a"}, {"name": "b"}], image=image, shape=(20, 24))
    assert (truth[:, :10] == 255).all() and (truth[:, 10:] == 1).all()
    assert evaluate("threshold", [image], [index]).pixels_scored == 20 * 14
    colour = make_raster(name="colour.tif", shape=(20, 24), data=np.full((3, 20, 24), 0x22, np.uint8),
                         internal_mask=mask)
    truth = read_labels(colour, fmt="color", classes=[{"name": "a", "color": "#222222"}], image=image,
                        shape=(20, 24))
    assert (truth[:, :10] == 255).all() and (truth[:, 10:] == 0).all()


def test_labels_only_on_the_images_nodata_are_an_error_not_nan(make_raster, tmp_path):
    """Nothing scored gave exit 0 and "mean_iou": NaN, which is not JSON, with a wrong note."""
    pixels = np.full((3, 20, 24), 120, np.uint8)
    pixels[:, :, :10] = 0
    image = make_raster(name="half.tif", shape=(20, 24), data=pixels, nodata=0)
    labels = np.full((1, 20, 24), 255, np.uint8)
    labels[0, :, :10] = 1
    label = make_raster(name="left.tif", shape=(20, 24), data=labels)
    with pytest.raises(InputError, match="every labelled pixel falls on the nodata of its image"):
        evaluate("threshold", [image], [label])
    out = CliRunner().invoke(main, ["evaluate", "-m", "threshold", "--images", str(image), "--labels", str(label),
                                    "--json"])
    assert out.exit_code == 1 and "falls on the nodata" in out.output and "NaN" not in out.output
    assert "Traceback" not in out.output


def test_label_nodata_pixels_are_not_called_unnamed(make_raster, tmp_path):
    """Pixels equal to the label's declared nodata (200) were reported as values past the label names."""
    image = make_raster(shape=(20, 24))
    labels = np.zeros((1, 20, 24), np.uint8)
    labels[0, :5] = 200
    label = make_raster(name="nd.tif", shape=(20, 24), data=labels, nodata=200)
    result = evaluate("threshold", [image], [label])
    assert result.pixels_scored == 15 * 24
    assert not any("no label name" in n or "past the" in n for n in result.notes), result.notes


def test_compare_of_plain_images_warns_nothing_about_georeferencing(tmp_path):
    """Every image of a comparison with -o printed rasterio's NotGeoreferencedWarning for its masks."""
    import warnings

    from PIL import Image

    from geoseg.workflows.evaluate import compare

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compare(["threshold", "region-growing"], [str(tmp_path / "a.png")], output_dir=tmp_path / "out")
    assert not [w for w in caught if "geotransform" in str(w.message)]


def test_bands_reach_every_model_of_evaluate_and_compare(make_raster, tmp_path):
    """evaluate and compare had no --bands: a stack in blue, green, red order was scored as red, green, blue."""
    rgb = make_raster("rgb.tif", shape=(40, 50))
    with rasterio.open(rgb) as ds:
        data = ds.read()
    bgr = make_raster("bgr.tif", data=data[::-1].copy())
    label = tmp_path / "label.tif"
    with rasterio.open(label, "w", driver="GTiff", width=50, height=40, count=1, dtype="uint8") as ds:
        ds.write(np.indices((40, 50))[1].astype(np.uint8) * 3 // 50, 1)
    as_is = json.loads(CliRunner().invoke(main, ["evaluate", "-m", "threshold", "--images", str(rgb), "--labels",
                                                 str(label), "--json"]).stdout)
    args = ["--images", str(bgr), "--labels", str(label), "--bands", "3,2,1", "--json"]
    picked = CliRunner().invoke(main, ["evaluate", "-m", "threshold", *args])
    both = CliRunner().invoke(main, ["compare", "--models", "threshold,region-growing", *args])
    assert picked.exit_code == 0 and both.exit_code == 0, picked.output + both.output
    assert json.loads(picked.stdout)["confusion_matrix"] == as_is["confusion_matrix"]
    assert json.loads(both.stdout)["evaluations"][0]["confusion_matrix"] == as_is["confusion_matrix"]
    unordered = json.loads(CliRunner().invoke(main, ["evaluate", "-m", "threshold", *args[:4], "--json"]).stdout)
    assert unordered["confusion_matrix"] != as_is["confusion_matrix"]  # the order matters on this image


def test_colours_of_no_class_are_in_the_notes(make_raster, tmp_path):
    """A land-cover mask scored against a baseline's three colours left its building, land and road pixels
    out without a word, and the scores looked better for it."""
    image = make_raster(shape=(40, 50))
    mask = np.zeros((40, 50, 3), np.uint8)
    mask[:, :25] = (0xE2, 0xA9, 0x29)  # water, a class of threshold
    mask[:, 25:] = (0x12, 0x34, 0x56)  # a colour that no model's card names (building's is read as a class now)
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = evaluate("threshold", image, tmp_path / "mask.png", label_format="color")
    assert result.pixels_scored == 40 * 25
    said = [n for n in result.notes if "colour(s) of no class" in n]
    assert len(said) == 1 and "50.0% of the pixels have 1 colour(s) of no class (#123456 (50.0%))" in said[0]
    assert "pass --label-names and --label-colors" in said[0]
    mask[:, 40:] = 0  # black: unlabelled
    Image.fromarray(mask).save(tmp_path / "mask2.png")
    both = evaluate("threshold", [image, image], [tmp_path / "mask.png", tmp_path / "mask2.png"], label_format="color")
    said = [n for n in both.notes if "colour(s) of no class" in n]  # one note for all files, not one per file
    assert said == ["2 label files have pixels of colour(s) of no class, left unlabelled: 50.0% of their pixels "
                    "(#123456 (40.0%), #000000 (10.0%)). If they are classes, pass --label-names and --label-colors "
                    "(label_names=, label_colors=) with the mask's classes and colours; if they mark unlabelled "
                    "pixels, --ignore-colors (ignore_colors=)."]
    # the Dubai masks' unlabelled #9B9B9B could not be named as such: the note came with every evaluation
    quiet = evaluate("threshold", [image, image], [tmp_path / "mask.png", tmp_path / "mask2.png"], label_format="color",
                     ignore_colors=["#123456", "#000000"])
    assert not [n for n in quiet.notes if "colour(s) of no class" in n]
    assert quiet.confusion_matrix == both.confusion_matrix  # unlabelled all the same
    cli = CliRunner().invoke(main, ["evaluate", "-m", "threshold", "--images", str(image), "--labels",
                                    str(tmp_path / "mask.png"), "--label-format", "color", "--ignore-colors",
                                    "#123456", "--json"])
    assert cli.exit_code == 0 and not [n for n in json.loads(cli.stdout)["notes"] if "of no class" in n], cli.output
    with pytest.raises(InputError, match=r"ignore_colors \(--ignore-colors\) holds the colour of a label class: "
                                         r"#E2A929 \(label class 'water'\)"):
        evaluate("threshold", image, tmp_path / "mask.png", label_format="color", ignore_colors="#e2a929")
    with pytest.raises(InputError, match=r"ignore_colors \(--ignore-colors\) marks unlabelled pixels of colour-coded "
                                         r"labels; these are 'index'"):
        evaluate("threshold", image, image, ignore_colors=["#000000"])
    with pytest.raises(InputError, match=r"must be colours like '#9B9B9B'. Received: 'grey'"):
        evaluate("threshold", image, tmp_path / "mask.png", label_format="color", ignore_colors="grey")
    refused = CliRunner().invoke(main, ["evaluate", "-m", "threshold", "--images", str(image), "--labels", str(image),
                                        "--ignore-colors", "#000000"])
    assert refused.exit_code == 2 and "--ignore-colors only applies with --label-format color" in refused.output


def test_colours_a_baseline_lacks_are_read_by_another_cards_names_as_compare_reads_them(make_raster, tmp_path):
    """A Dubai mask scored against a baseline alone was read by the baseline's water and vegetation colours: its
    building, land and road (66-73% of the pixels) were left unlabelled, 'other' was "absent", and mean IoU read
    0.284 on a Tile 8 crop where compare beside the U-Net, which reads them as the U-Net's classes and scores them as
    the baseline's 'other', gave 0.091 (h168). The colours another registered card names are its classes now, in
    evaluate and in a comparison of baselines alike."""
    image = make_raster(shape=(40, 60))
    mask = np.zeros((40, 60, 3), np.uint8)
    mask[:, :20] = (0xE2, 0xA9, 0x29)  # water, in threshold's card
    mask[:, 20:40] = (0x84, 0x29, 0xF6)  # land: landcover-unet's card names it, threshold's does not
    mask[:, 40:] = (0x3C, 0x10, 0x98)  # building, likewise
    mask[:5] = (0x9B, 0x9B, 0x9B)  # the Dubai masks' unlabelled grey
    Image.fromarray(mask).save(tmp_path / "mask.png")
    alone = evaluate("threshold", image, tmp_path / "mask.png", label_format="color", ignore_colors=["#9B9B9B"])
    named = evaluate("threshold", image, tmp_path / "mask.png", label_format="color", ignore_colors=["#9B9B9B"],
                     label_names=["building", "land", "road", "vegetation", "water"],
                     label_colors=["#3C1098", "#8429F6", "#6EC1E4", "#FEDD3A", "#E2A929"])
    assert alone.pixels_scored == named.pixels_scored == 35 * 60  # were 35 * 20, the water alone
    assert alone.confusion_matrix == named.confusion_matrix and alone.mean_iou == named.mean_iou
    said = " ".join(alone.notes)
    assert "were read as landcover-unet's classes land, building" in said or \
        "were read as landcover-unet's classes building, land" in said, alone.notes
    assert "scored as its 'other' class: building, land" in said and "of no class" not in said
    # compare of baselines alone read them so too: the same scores as evaluate's
    both = compare(["threshold", "region-growing"], [image], [tmp_path / "mask.png"], label_format="color",
                   ignore_colors=["#9B9B9B"])["evaluations"]
    assert both[0]["confusion_matrix"] == alone.confusion_matrix and both[0]["mean_iou"] == alone.mean_iou
    assert both[1]["pixels_scored"] == 35 * 60
    # the colours listed as unlabelled stay so, and no class is taken for them
    left = evaluate("threshold", image, tmp_path / "mask.png", label_format="color",
                    ignore_colors=["#9B9B9B", "#8429F6"])
    assert left.pixels_scored == 35 * 40 and "were read as landcover-unet's classes building;" in " ".join(left.notes)
    cli = CliRunner().invoke(main, ["evaluate", "-m", "threshold", "--images", str(image), "--labels",
                                    str(tmp_path / "mask.png"), "--label-format", "color", "--ignore-colors",
                                    "#9B9B9B", "--json"])
    assert cli.exit_code == 0 and json.loads(cli.stdout)["mean_iou"] == alone.mean_iou, cli.output
    # a model of regions needs its labels named: colour labels are named by the card that names most of them
    regions = evaluate("watershed-regions", image, tmp_path / "mask.png", label_format="color",
                       ignore_colors=["#9B9B9B"])
    assert regions.classes == ["building", "land", "water"] and regions.pixels_scored == 35 * 60


def test_vector_label_files_without_a_value_or_with_blanks_take_no_side(make_raster, tmp_path):
    """An empty layer (a tile without buildings) beside files of names was called a file of ids and refused; a blank value was 'label names must be non-empty', names never passed; '1' beside
    'vegetation' in one field changed meaning without a word."""
    import geopandas as gpd
    import shapely

    image = make_raster(shape=(40, 50))
    left, right = shapely.box(500000, 2799980, 500012, 2800000), shapely.box(500012, 2799980, 500025, 2800000)
    gpd.GeoDataFrame({"class": ["water", "lake"]}, geometry=[left, right], crs="EPSG:32640").to_file(tmp_path / "a.gpkg")
    gpd.GeoDataFrame({"class": ["water", ""]}, geometry=[left, right], crs="EPSG:32640").to_file(tmp_path / "blank.gpkg")
    gpd.GeoDataFrame({"class": []}, geometry=[], crs="EPSG:32640").to_file(tmp_path / "empty.gpkg")
    for other in ("blank.gpkg", "empty.gpkg"):
        result = evaluate("threshold", [image, image], [tmp_path / "a.gpkg", tmp_path / other], label_format="vector")
        assert result.pixels_scored >= 40 * 50, other  # both polygons of a.gpkg, lake as 'other'
    gpd.GeoDataFrame({"class": ["1", "vegetation"]}, geometry=[left, right], crs="EPSG:32640").to_file(
        tmp_path / "mixed.gpkg")
    with pytest.raises(InputError, match=r"mixed.gpkg: its 'class' field holds both class ids \('1'\) and class "
                                         r"names \('vegetation'\)"):
        evaluate("threshold", image, tmp_path / "mixed.gpkg", label_format="vector")


def test_one_layer_of_polygons_scores_several_tiles_and_a_tile_it_misses_is_named(make_raster, tmp_path, caplog):
    """One labels.gpkg over a study area's tiles was refused by the CLI ("2 image(s) but 1 label file(s)", or with
    a template "images that share a file name"); a tile its polygons missed (a layer without its .prj, in lon/lat)
    added nothing to the scores without a word; 'water ' with a blank, and a True/False field, were not read."""
    import geopandas as gpd
    import shapely
    from rasterio.transform import from_origin

    west = make_raster(name="west.tif", shape=(40, 50))
    east = make_raster(name="east.tif", shape=(40, 50), transform=from_origin(500025.0, 2800000.0, 0.5, 0.5))
    box = shapely.box(500000, 2799980, 500050, 2800000)
    gpd.GeoDataFrame({"class": ["water "]}, geometry=[box], crs="EPSG:32640").to_file(tmp_path / "area.gpkg")
    for labels in (["--labels", tmp_path / "area.gpkg"], ["--labels", "{image_dir}/area.gpkg"]):
        labels = [str(a) for a in labels]
        result = CliRunner().invoke(main, ["evaluate", "-m", "threshold", "--images", str(west), "--images",
                                           str(east), *labels, "--label-format", "vector", "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["pixels_scored"] == 2 * 40 * 50 and "water" not in data["not_scored"]
    gpd.GeoDataFrame({"class": ["water"]}, geometry=[shapely.box(55.9, 25.29, 55.91, 25.3)], crs="EPSG:4326").to_file(
        tmp_path / "lonlat.shp")
    (tmp_path / "lonlat.prj").unlink()  # no .prj: taken to be in the image's UTM metres, where it is no place
    with caplog.at_level("WARNING"):
        result = evaluate("threshold", [west, east], [tmp_path / "area.gpkg", tmp_path / "lonlat.shp"],
                          label_format="vector")
    assert any(f"1 of the 2 images have no labelled pixel of a scored class and add nothing to the scores: {east}" in n
               for n in result.notes)
    assert any("lonlat.shp: the layer has no CRS, so its coordinates are taken to be in the image's CRS" in n
               for n in result.notes + [caplog.text])
    gpd.GeoDataFrame({"class": [True]}, geometry=[box], crs="EPSG:32640").to_file(tmp_path / "flag.gpkg")
    with pytest.raises(InputError, match="flag.gpkg: its 'class' field holds True and False, which name no class"):
        evaluate("threshold", west, tmp_path / "flag.gpkg", label_format="vector")


def test_evaluate_and_compare_take_normalize_as_segment_does(make_raster, tiny_fcn, tmp_path):
    """evaluate's own warning said "pass --normalize scale:..." for 11-bit imagery, and it had no such option."""
    image = make_raster(shape=(40, 50))
    label = make_raster(name="label.tif", data=np.zeros((1, 40, 50), np.uint8))

    def confusion(*extra, command="evaluate"):
        models = ["-m", str(tiny_fcn)] if command == "evaluate" else ["--models", f"{tiny_fcn},threshold"]
        result = CliRunner().invoke(main, [command, *models, "--images", str(image), "--labels", str(label),
                                           "--json", *extra])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        return (data if command == "evaluate" else data["evaluations"][0])["confusion_matrix"]

    assert confusion() != confusion("--normalize", "scale:-0.02,3")
    assert confusion(command="compare") != confusion("--normalize", "scale:-0.02,3", command="compare")


def test_labels_whose_class_reads_as_unlabelled_get_a_note(make_raster, tmp_path):
    """A SpaceNet 0/255 road mask scored mean IoU 1.000 on its background alone, and building tiles whose GDAL
    nodata is 0 (their background id) were scored on 1% of their pixels: no note said so."""
    image = make_raster(shape=(40, 50))
    mask = np.zeros((1, 40, 50), np.uint8)
    mask[:, 10:20] = 255
    road = make_raster(name="road.tif", data=mask)
    result = evaluate("threshold", image, road)
    assert any("road.tif holds only 0 and 255, and 255 is unlabelled, so its pixels of 255 (25.0%) were not scored"
               in n for n in result.notes), result.notes
    mask[:, 10:20] = 1
    tiles = make_raster(name="tiles.tif", data=mask, nodata=0)
    result = evaluate("threshold", image, tiles, label_names=["other", "water"])
    assert any("tiles.tif: its nodata value 0 is also label id 0 (other), so its pixels of 0 (75.0%) were not "
               "scored. If 0 is a class, unset the nodata value: gdal_edit.py -unsetnodata tiles.tif" in n
               for n in result.notes), result.notes
    plain = make_raster(name="plain.tif", data=mask)
    assert not any("unlabelled" in n or "nodata value" in n for n in evaluate("threshold", image, plain).notes)
    # the usual layout: CLASS_NAMES for ids 1 and up, nodata 0 for the unlabelled pixels; id 0 is no class
    with rasterio.open(tiles, "r+") as ds:
        ds.update_tags(CLASS_NAMES='{"1": "water"}')
    assert not any("nodata value" in n for n in evaluate("threshold", image, tiles).notes)


def test_invalid_polygons_are_burnt_alike_whole_and_by_window(make_raster, tmp_path, caplog):
    """A polygon whose hole lies outside its shell was burnt over the whole grid (evaluate, training in memory) but
    lost by a window that missed its shell (training with in_memory = false): two sets of labels, no word."""
    import geopandas as gpd
    from rasterio.windows import Window
    from shapely.geometry import Polygon

    from geoseg.models.labels import VectorLabels

    image = make_raster(shape=(100, 100), transform=rasterio.transform.from_origin(0.0, 100.0, 1.0, 1.0))
    shell = [(10, 90), (20, 90), (20, 80), (10, 80)]
    outside = [(25, 40), (35, 40), (35, 30), (25, 30)]  # cols 25-35, rows 60-70
    gpd.GeoDataFrame({"class": ["water"]}, geometry=[Polygon(shell, [outside])], crs="EPSG:32640").to_file(
        tmp_path / "bad.gpkg")
    labels = VectorLabels(str(tmp_path / "bad.gpkg"), [{"name": "other"}, {"name": "water"}], str(image), "class")
    whole = labels.window((100, 100))
    part = labels.window((40, 40), Window(22, 55, 40, 40))
    np.testing.assert_array_equal(whole[55:95, 22:62], part)
    assert "1 of its shapes are invalid" in caplog.text


def test_vector_label_names_alike_but_for_case_are_one_class_for_a_model_of_regions(make_raster, tmp_path):
    """'water' and 'Water' polygons were scored as two classes for watershed-regions, confused with each other,
    while class models and training read them as one (h96)."""
    import geopandas as gpd
    from shapely.geometry import box

    image = make_raster(shape=(64, 80))  # 40 x 32 m from (500000, 2800000)
    x0, y0 = 500000, 2800000
    polygons = {"water": box(x0, y0 - 16, x0 + 20, y0), "Water": box(x0, y0 - 32, x0 + 20, y0 - 16),
                "other": box(x0 + 20, y0 - 32, x0 + 40, y0)}
    gpd.GeoDataFrame({"class": list(polygons)}, geometry=list(polygons.values()), crs="EPSG:32640").to_file(
        tmp_path / "labels.gpkg")
    result = evaluate("watershed-regions", [image], [tmp_path / "labels.gpkg"], label_format="vector")
    assert sorted(result.classes) == ["Water", "other"], result.classes
    assert result.pixels_scored == 64 * 80


def test_a_class_one_label_file_names_is_a_false_positive_only_on_that_files_background(make_raster, tiny_fcn,
                                                                                        tmp_path):
    """Only a third file named class1: class1 found on the background of the two others, which may well be
    class1 there, was counted against it too (h97)."""
    images = [make_raster(name=f"i{i}.tif", shape=(30, 40), seed=i) for i in range(2)]
    labels = []
    for i, names in enumerate([{"0": "background", "1": "class0"}, {"0": "background", "1": "class1"}]):
        labels.append(tmp_path / f"l{i}.tif")
        with rasterio.open(labels[-1], "w", driver="GTiff", width=40, height=30, count=1, dtype="uint8") as ds:
            ds.write(np.repeat([0, 1], 20)[None, :].repeat(30, 0).astype(np.uint8), 1)  # background left
            ds.update_tags(CLASS_NAMES=json.dumps(names))
    result = evaluate(tiny_fcn, images, labels, keep_masks=tmp_path / "kept")
    kept = [rasterio.open(tmp_path / "kept" / f"i{i}_mask.tif").read(1)[:, :20] for i in range(2)]
    assert result.predicted_on_not_scored == [int((kept[0] == 0).sum()), int((kept[1] == 1).sum()), 0]


def test_a_label_of_part_of_the_image_gets_a_gdalwarp_that_leaves_the_rest_unlabelled(make_raster, tmp_path):
    """The suggested gdalwarp had no -dstnodata: an index label of part of the image, without nodata, warped by it
    was 0 (a class) over the rest of the image, and scored so without a word (h109)."""
    image = make_raster(shape=(60, 70))
    pred, _ = _predicted("threshold", image, tmp_path)
    part = _label_like(tmp_path / "part.tif", image, pred[10:40, 20:60], width=40, height=30,
                       transform=rasterio.transform.from_origin(500010.0, 2799995.0, 0.5, 0.5))
    with pytest.raises(InputError, match=r"-r near -dstnodata 255 part.tif on_grid.tif"):
        evaluate("threshold", [image], [part])
    rgb = tmp_path / "rgb.tif"  # colour labels: gdalwarp's black fill is a colour of no class already
    with rasterio.open(image) as ds, rasterio.open(rgb, "w", **{**ds.profile, "count": 3, "dtype": "uint8",
                                                               "transform": ds.transform * ds.transform.translation(
                                                                   5, 0)}) as out:
        out.write(np.zeros((3, ds.height, ds.width), np.uint8))
    with pytest.raises(InputError, match=r"-r near rgb.tif on_grid.tif"):
        evaluate("threshold", [image], [rgb], label_format="color")


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg"])
def test_vector_labels_in_metres_that_say_they_are_in_degrees_are_an_error(make_raster, tmp_path, suffix):
    """A GeoJSON of UTM coordinates without a "crs" member (read as WGS84), or a layer given EPSG:4326 by mistake,
    was a GEOSException traceback from make_valid: its coordinates reprojected to infinity (h109)."""
    import geopandas as gpd
    import shapely

    image = make_raster(shape=(50, 60))
    box = shapely.box(500000.0, 2799975.0, 500030.0, 2800000.0)
    layer = tmp_path / f"labels{suffix}"
    gpd.GeoDataFrame({"class": ["water"]}, geometry=[box], crs="EPSG:4326").to_file(layer)
    with pytest.raises(InputError, match=r"labels.* cannot be placed on .*image.tif: the layer says it is in "
                                         r"EPSG:4326, but it spans \(500000, 2799975, 500030, 2800000\)"):
        evaluate("threshold", [image], [layer], label_format="vector")
    result = CliRunner().invoke(main, ["evaluate", "-m", "threshold", "--images", str(image), "--labels", str(layer),
                                       "--label-format", "vector"])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_a_uint16_paletted_label_with_entries_past_255_is_read_by_its_colours(make_raster, tmp_path):
    """A UInt16 paletted label whose values reach 300 was an IndexError traceback: the colour lookups held 256
    entries (h119)."""
    image = make_raster(shape=(40, 50))
    label = np.zeros((40, 50), np.uint16)
    label[:, 25:] = 300
    path = tmp_path / "palette16.tif"
    with rasterio.open(image) as ds:
        profile = {**ds.profile, "count": 1, "dtype": "uint16", "photometric": "palette", "nodata": None}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(label, 1)
        ds.write_colormap(1, {0: (0, 0, 255, 255), 300: (0, 255, 0, 255)})
    result = evaluate("threshold", [image], [path], label_format="color", label_names=["water", "vegetation"],
                      label_colors=["#0000FF", "#00FF00"])
    assert result.pixels_scored == 40 * 50
    compared = compare(["threshold", "region-growing"], [image], [path], label_format="color",
                       label_names=["water", "vegetation"], label_colors=["#0000FF", "#00FF00"])
    assert [e["pixels_scored"] for e in compared["evaluations"]] == [40 * 50] * 2
    with pytest.raises(InputError, match=r"most common colours in .*palette16.tif are #0000FF, #00FF00"):
        compare(["threshold", "region-growing"], [image], [path], label_format="color")  # by the models' colours


def test_a_second_comparison_into_a_folder_in_use_is_refused(make_raster, tmp_path):
    """Two identical compare runs at once both found no earlier masks, segmented into the same files (overwrite
    inside) and both exited 0 (h118): the folder's lock refuses the second; a lock of a dead process is taken over."""
    import socket
    import subprocess

    from geoseg.errors import OutputError
    from geoseg.workflows.evaluate import COMPARE_LOCK

    image = make_raster(shape=(30, 40))
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(["sleep", "30"])
    try:
        (out / COMPARE_LOCK).write_text(f"{socket.gethostname()} {holder.pid}\n")
        with pytest.raises(OutputError, match=rf"another comparison \(process {holder.pid}\) is writing into this "
                                              "folder"):
            compare(["threshold", "region-growing"], [image], output_dir=out)
        assert not (out / "threshold").exists()
    finally:
        holder.kill()
        holder.wait()
    done = compare(["threshold", "region-growing"], [image], output_dir=out)  # the dead holder's lock: taken over
    assert done["disagreement"] and not (out / COMPARE_LOCK).exists()


def test_a_baseline_leaves_label_classes_of_no_known_class_unscored(make_raster, tmp_path):
    """--label-names unlabeled,... (a placeholder for id 0 of labels numbered from 1): a baseline scored those
    pixels as its 'other' class, 400 px of a Landsat label's fill counted right or wrong (h132)."""
    from geoseg.models.registry import get_segmenter

    image = make_raster(shape=(60, 70))
    pred, profile = _predicted("threshold", image, tmp_path)
    truth = pred + 1
    truth[:20, :20] = 0  # fill of labels numbered from 1
    label = tmp_path / "from_one.tif"
    with rasterio.open(label, "w", **{**profile, "nodata": None}) as ds:
        ds.write(truth, 1)
    names = [c.name for c in get_segmenter("threshold").card.classes]
    result = evaluate("threshold", [image], [label], label_names=["unlabeled", *names])
    assert result.pixels_scored == 60 * 70 - 400
    assert result.mean_iou == 1.0 and result.not_scored == ["unlabeled"]
    assert "label classes of no known class, not scored: unlabeled" in result.notes
    assert not any("'other' class" in note for note in result.notes), result.notes


def test_point_labels_are_scored_one_pixel_each_and_a_buffer_is_sized_to_the_pixel(make_raster, tmp_path):
    """The note advised a 3 m buffer of points on 28.5 m Landsat pixels: polygons are burnt by pixel centre, so
    following it scored nothing, and the error then blamed the CRS or the field (h132)."""
    import geopandas as gpd
    import shapely
    from rasterio.transform import from_origin

    image = make_raster(shape=(40, 50), transform=from_origin(500000.0, 2800000.0, 28.5, 28.5))
    points = [shapely.Point(500000 + 28.5 * (c + 0.3), 2800000 - 28.5 * (r + 0.6)) for r, c in [(3, 4), (20, 30)]]
    gpd.GeoDataFrame({"class": [1, 1]}, geometry=points, crs="EPSG:32640").to_file(tmp_path / "samples.gpkg")
    result = evaluate("threshold", image, tmp_path / "samples.gpkg", label_format="vector")
    assert result.pixels_scored == 2
    note = next(n for n in result.notes if "2 of its shapes are points" in n)
    assert "Points label the pixel each falls in" in note
    assert "ST_Buffer(geom, 22) END AS geom" in note and "for 22 m in a metric CRS" in note
    assert "a buffer under 3/4 of this image's pixel (22 m) may reach no pixel's centre" in note
    gpd.GeoDataFrame({"class": [1, 1]}, geometry=[p.buffer(3) for p in points], crs="EPSG:32640").to_file(
        tmp_path / "discs.gpkg")  # what the note had advised
    with pytest.raises(InputError, match="buffered points or lines narrower than 3/4 of a pixel may cover none"):
        evaluate("threshold", image, tmp_path / "discs.gpkg", label_format="vector")


@pytest.mark.parametrize("dtype, shift, error", [("float32", 0.5, r"1200 of its pixels hold fractions such as \d\.5"),
                                                ("complex64", 0, "its values are complex numbers"),
                                                ("float32", 0, None)])
def test_index_labels_of_fractions_or_complex_numbers_are_refused(make_raster, tmp_path, dtype, shift, error):
    """A float label of fractions (a bilinear resampling's 2.5) was read as class 2 and scored without a word; a
    complex one with NumPy's ComplexWarning lines; NaN with "invalid value encountered in cast" (h135)."""
    import warnings

    image = make_raster(shape=(30, 40))
    pred, profile = _predicted("threshold", image, tmp_path)
    values = pred.astype(dtype) + shift
    if error is None:
        values[:5] = np.nan  # unlabelled, quietly
    label = tmp_path / "label.tif"
    with rasterio.open(label, "w", **{**profile, "dtype": dtype, "nodata": None}) as ds:
        ds.write(values, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if error:
            with pytest.raises(InputError, match=error):
                evaluate("threshold", [image], [label])
        else:
            result = evaluate("threshold", [image], [label])
            assert result.pixels_scored == 25 * 40 and result.mean_iou == 1.0


def test_a_float_label_s_fill_value_reads_as_unlabelled_without_a_cast_warning(make_raster, tmp_path):
    """Float32's usual fill, -3.4028235e38 (here untagged), is finite but no int64: "invalid value encountered in
    cast", as NaN gave before it was read as unlabelled (h136)."""
    import warnings

    image = make_raster(shape=(30, 40))
    pred, profile = _predicted("threshold", image, tmp_path)
    values = pred.astype("float32")
    values[:5] = np.finfo(np.float32).min
    label = tmp_path / "label.tif"
    with rasterio.open(label, "w", **{**profile, "dtype": "float32", "nodata": None}) as ds:
        ds.write(values, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate("threshold", [image], [label])
    assert result.pixels_scored == 25 * 40 and result.mean_iou == 1.0


def test_what_the_runs_warned_of_is_in_the_report_s_notes(make_raster, tmp_path):
    """A gdal_merge stack's fill (0, no nodata tag) is scored as ground: the warning went to stderr only, and the
    notes of --json and --markdown read as if all were well (h132). Images alike are said once."""
    data = np.full((3, 60, 70), 120, np.uint8)
    data[:, :, 35:] = 30
    data[:, :8], data[:, -8:], data[:, :, :8], data[:, :, -8:] = 0, 0, 0, 0  # a warp's fill, untagged
    images = [make_raster(name=f"fill{i}.tif", data=data) for i in range(2)]
    labels = []
    for i, image in enumerate(images):
        pred, profile = _predicted("threshold", image, tmp_path / f"p{i}")
        labels.append(tmp_path / f"label{i}.tif")
        with rasterio.open(labels[-1], "w", **profile) as ds:
            ds.write(pred, 1)
    result = evaluate("threshold", images, labels)
    fill = [n for n in result.notes if "fill0.tif" in n and "no nodata value" in n]
    assert len(fill) == 1 and fill[0].endswith("(and 1 other image(s) alike)"), result.notes
    assert not any("fill1.tif" in n for n in result.notes)


def test_a_vector_layer_read_as_a_raster_label_is_told_its_option(make_raster, tmp_path):
    """A Shapefile of polygons without --label-format vector: "not a raster GDAL can read", and no word of the
    option (h132)."""
    import geopandas as gpd
    import shapely

    image = make_raster(shape=(40, 50))
    gpd.GeoDataFrame({"class": ["water"]}, geometry=[shapely.box(500000, 2799980, 500025, 2800000)],
                     crs="EPSG:32640").to_file(tmp_path / "polygons.shp")
    for fmt in ("index", "color"):
        with pytest.raises(InputError, match=r"It is a vector layer: pass --label-format vector"):
            evaluate("threshold", [image], [tmp_path / "polygons.shp"], label_format=fmt)
    broken = tmp_path / "broken.tif"
    broken.write_text("not a raster")
    with pytest.raises(InputError, match=r"labels are not a raster GDAL can read \(.*\)\.$"):
        evaluate("threshold", [image], [broken])


def test_a_paletted_label_without_class_names_must_say_how_it_is_read(make_raster, tmp_path):
    """A Dubai mask (a paletted PNG) read by the default --label-format index scored its colour-table positions
    as class ids: mean IoU 0.055 against 0.350 by colour, with only a note that values were read as ids (h130)."""
    from geoseg.models.registry import get_segmenter

    image = make_raster(shape=(30, 40))
    pred, profile = _predicted("threshold", image, tmp_path)
    classes = get_segmenter("threshold").card.classes
    order = [2, 0, 1]  # the file's own palette order, not the model's ids
    label = tmp_path / "paletted.tif"
    with rasterio.open(label, "w", **{**profile, "nodata": None}) as ds:
        ds.write(np.array([order.index(v) for v in range(3)] + [255] * 253, np.uint8)[pred], 1)
        ds.write_colormap(1, {i: (*classes[c].rgb, 255) for i, c in enumerate(order)})
    with pytest.raises(InputError, match="a paletted image .* Pass --label-format color"):
        evaluate("threshold", [image], [label])
    assert evaluate("threshold", [image], [label], label_format="color").mean_iou == 1.0
    named = evaluate("threshold", [image], [label], label_names=[classes[c].name for c in order])
    assert named.mean_iou == 1.0  # ids, named in the file's order
    # ids whose colours are the model's at those ids (a geoseg mask that lost its tags): read as ids, as before (h136)
    own = tmp_path / "own_colours.tif"
    with rasterio.open(own, "w", **{**profile, "nodata": None}) as ds:
        ds.write(pred, 1)
        ds.write_colormap(1, {c.id: (*c.rgb, 255) for c in classes})
    assert evaluate("threshold", [image], [own]).mean_iou == 1.0


def test_compare_gives_a_model_its_own_bands(make_raster, tmp_path):
    """A 6-band model and threshold-nir on one stack could not be compared: --bands applied to every model, and
    'threshold-nir?bands=3,2,1,4' was cut at its commas (h132)."""
    from click.testing import CliRunner

    from geoseg.cli import main

    image = make_raster(shape=(40, 50), bands=4)
    pred, profile = _predicted("threshold", image, tmp_path)
    label = tmp_path / "label.tif"
    with rasterio.open(label, "w", **profile) as ds:
        ds.write(pred, 1)
    alone = evaluate("threshold-nir", [image], [label], bands=[3, 2, 1, 4])
    both = compare(["threshold", "threshold-nir"], [image], [label], model_bands={"threshold-nir": [3, 2, 1, 4]},
                   output_dir=tmp_path / "cmp")
    nir = next(e for e in both["evaluations"] if e["model"] == "threshold-nir")
    assert nir["confusion_matrix"] == alone.confusion_matrix
    # each row says which bands its model read (--json said none, h137)
    assert [e["bands"] for e in both["evaluations"]] == [[1, 2, 3], [3, 2, 1, 4]]
    from geoseg import segment

    reference = segment(image, tmp_path / "nir", model="threshold-nir", bands=[3, 2, 1, 4], preview=False)
    with rasterio.open(tmp_path / "cmp" / "threshold-nir" / "image_mask.tif") as ds, \
            rasterio.open(reference.outputs["mask"]) as ref:
        assert (ds.read(1) == ref.read(1)).all()  # the kept mask is of its own bands
    with pytest.raises(InputError, match="names 'unet', which is no model of the comparison"):
        compare(["threshold", "threshold-nir"], [image], [label], model_bands={"unet": [1, 2, 3]})
    from geoseg.errors import BandError

    with pytest.raises(BandError, match=r"model threshold-nir: .*Give threshold-nir in --model-bands \(model_bands= "
                                        r"in Python\) with 4"):  # it said to pass --bands, which changes the others
        compare(["threshold", "threshold-nir"], [image], [label], model_bands={"threshold-nir": [3, 2, 1]})
    result = CliRunner().invoke(main, ["compare", "--models", "threshold,threshold-nir", "--images", str(image),
                                       "--labels", str(label), "--model-bands", "threshold-nir=3,2,1,4", "--json"])
    assert result.exit_code == 0, result.output
    cli = next(e for e in json.loads(result.stdout)["evaluations"] if e["model"] == "threshold-nir")
    assert cli["confusion_matrix"] == alone.confusion_matrix
    bad = CliRunner().invoke(main, ["compare", "--models", "threshold,threshold-nir", "--images", str(image),
                                    "--labels", str(label), "--model-bands", "3,2,1,4"])
    assert bad.exit_code == 2 and "MODEL=3,2,1" in bad.output


def test_compare_gives_a_card_s_name_s_bands_to_every_variant_of_that_model(make_raster, tmp_path):
    """--model-bands threshold-nir=3,2,1,4 beside 'threshold-nir?water=..&vegetation=..' gave the bands to the first
    only: the variant read the card's 1, 2, 3, 4 without a word. A model's own reference still overrides its name."""
    from click.testing import CliRunner

    from geoseg import segment
    from geoseg.cli import main

    image = make_raster(shape=(40, 50), bands=4)
    variant = "threshold-nir?water=0.1&vegetation=0.2"
    compare(["threshold-nir", variant], [image], output_dir=tmp_path / "cmp",
            model_bands={"threshold-nir": [3, 2, 1, 4]})
    for model, folder in (("threshold-nir", "threshold-nir"), (variant, "threshold-nir_water-0.1_vegetation-0.2")):
        ref = segment(image, tmp_path / folder, model=model, bands=[3, 2, 1, 4], preview=False)
        with rasterio.open(tmp_path / "cmp" / folder / "image_mask.tif") as ds, rasterio.open(ref.outputs["mask"]) as r:
            assert (ds.read(1) == r.read(1)).all(), model
    own = compare(["threshold-nir", variant], [image], output_dir=tmp_path / "own",
                  model_bands={"threshold-nir": [3, 2, 1, 4], variant: [1, 2, 3, 4]})
    assert own["disagreement"]
    plain = segment(image, tmp_path / "plain", model=variant, preview=False)
    with rasterio.open(tmp_path / "own" / "threshold-nir_water-0.1_vegetation-0.2" / "image_mask.tif") as ds, \
            rasterio.open(plain.outputs["mask"]) as r:
        assert (ds.read(1) == r.read(1)).all()  # its own reference's bands, not its name's
    for bad in ("3,2,1,4", 4, [3.0, 2, 1, 4], []):  # a string was read as its characters, an int a TypeError
        with pytest.raises(InputError, match="give it a list of band indexes"):
            compare(["threshold", "threshold-nir"], [image], output_dir=tmp_path / "bad",
                    model_bands={"threshold-nir": bad})
    twice = CliRunner().invoke(main, ["compare", "--models", "threshold,threshold-nir", "--images", str(image),
                                      "-o", str(tmp_path / "twice"), "--model-bands", "threshold-nir=3,2,1,4",
                                      "--model-bands", "threshold-nir=1,2,3,4"])
    assert twice.exit_code == 2 and "bands twice" in twice.output


@pytest.mark.parametrize("kept", [False, True])
def test_compare_scores_every_model_on_the_same_pixels(make_raster, tiny_1band, tmp_path, kept):
    """A model of one band whose band is nodata where the others' are not gave no class there, and compare scored
    it on fewer pixels than the others, each model on its own pixels, which only its notes showed (h132). Every
    model is now scored where all of them give a class, and the notes say how many were left out so."""
    data = np.random.default_rng(0).integers(20, 250, (3, 40, 50)).astype(np.uint8)
    data[0, :, :20] = 0  # band 1 (the one-band model's) is nodata over 20 columns; bands 2 and 3 hold data there
    image = make_raster(data=data, nodata=0, photometric="MINISBLACK")
    label = tmp_path / "truth.tif"
    with rasterio.open(label, "w", driver="GTiff", width=50, height=40, count=1, dtype="uint8") as ds:
        ds.write(np.random.default_rng(1).integers(0, 2, (1, 40, 50)).astype(np.uint8))
    names = ["class0", "class1"]
    alone = {m: evaluate(m, [image], [label], label_names=names) for m in ("threshold", tiny_1band)}
    assert alone["threshold"].pixels_scored == 2000 and alone[tiny_1band].pixels_scored == 1200
    result = compare(["threshold", tiny_1band], [image], [label], label_names=names,
                     output_dir=tmp_path / "cmp" if kept else None)
    rows = result["evaluations"]
    assert [r["pixels_scored"] for r in rows] == [1200, 1200]
    assert rows[1]["confusion_matrix"] == alone[tiny_1band].confusion_matrix  # its own pixels were those already
    assert any("800 labelled pixels lie where another model of the comparison gives no class" in n
               for n in rows[0]["notes"]), rows[0]["notes"]
    assert not any("another model of the comparison" in n for n in rows[1]["notes"]), rows[1]["notes"]


def test_compare_of_models_whose_data_never_overlap_says_so_not_that_the_labels_lie_on_nodata(make_raster, tmp_path):
    """Each model alone scored its half of the image, but scored on the pixels where all give a class (bc41357) none
    was left, and the error blamed the labels ("every labelled pixel falls on the nodata of its image ... Check
    that the labels belong to these images"), which each model alone had scored."""
    data = np.random.default_rng(0).integers(20, 250, (3, 40, 60)).astype(np.uint8)
    data[0, :, :30], data[1, :, 30:] = 0, 0  # band 1 has data on the right half only, band 2 on the left only
    image = make_raster(data=data, nodata=0, photometric="MINISBLACK")
    label = tmp_path / "truth.tif"
    with rasterio.open(label, "w", driver="GTiff", width=60, height=40, count=1, dtype="uint8") as ds:
        ds.write(np.random.default_rng(1).integers(0, 3, (1, 40, 60)).astype(np.uint8))
    names = ["other", "water", "vegetation"]
    bands = {"threshold": [1, 1, 1], "region-growing": [2, 2, 2]}
    for model, own in bands.items():  # each model alone scores its own half
        assert evaluate(model, [image], [label], label_names=names, bands=own).pixels_scored == 1200
    with pytest.raises(InputError) as caught:
        compare(list(bands), [image], [label], label_names=names, model_bands=bands)
    assert "lie where another model gives none" in str(caught.value)
    assert "Check that the labels belong" not in str(caught.value)


def test_evaluate_scores_in_strips_and_says_of_the_whole_file_what_a_whole_read_said(tmp_path):
    """A whole read of a colour mask and its prediction held ~35 bytes a pixel beyond the model (1.9 GB at
    6000 x 6000 px); strips hold a few MB whatever the size, and the note on colours of no class is over the whole
    file, as it was."""
    import tracemalloc

    from geoseg.models.metrics import confusion_matrix

    size = 2000
    rows, cols = np.mgrid[0:size, 0:size]
    profile = dict(driver="GTiff", width=size, height=size, dtype="uint8", tiled=True, compress="deflate")
    image = tmp_path / "img.tif"
    with rasterio.open(image, "w", count=3, **profile) as ds:
        ds.write(np.stack([(rows % 256), (cols % 256), ((rows + cols) % 256)]).astype(np.uint8))
    truth = ((rows // 7 + cols // 11) % 3).astype(np.uint8)
    pred = ((rows // 5 + cols // 13) % 3).astype(np.uint8)
    masks = tmp_path / "masks"
    masks.mkdir()
    with rasterio.open(masks / "img_mask.tif", "w", count=1, **profile) as ds:
        ds.write(pred, 1)
    colours = np.array([[0xD9, 0xD0, 0xB8], [0xE2, 0xA9, 0x29], [0xFE, 0xDD, 0x3A]], np.uint8)
    rgb = colours[truth]
    rgb[500:1300, :50] = (0x12, 0x34, 0x56)  # a colour of no class, across strips: 40,000 px, 1.0%
    label = tmp_path / "label.tif"
    with rasterio.open(label, "w", count=3, **profile) as ds:
        ds.write(np.moveaxis(rgb, -1, 0))
    truth[500:1300, :50] = 255
    expected = confusion_matrix(truth, pred, 3).tolist()
    del rows, cols, rgb, truth, pred
    tracemalloc.start()
    try:  # the masks of a first pass, scored again as compare does: no segmentation, scoring alone
        result = evaluate("threshold", [image], [label], label_format="color", ignore_colors=["#9B9B9B"],
                          _masks_from=masks, _said={})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.confusion_matrix == expected
    assert any(n.startswith(f"{label}: 1.0% of the pixels have 1 colour(s) of no class (#123456 (1.0%))")
               for n in result.notes), result.notes
    assert peak < 80e6, f"scoring {size} x {size} px peaked at {peak / 1e6:.0f} MB"  # whole reads: 176 MB


def test_a_png_label_is_read_whole_not_decoded_again_for_every_strip(make_raster, tmp_path, monkeypatch):
    """GDAL decodes a PNG from its first row for a window of any row: read in strips, a 4000² PNG label was decoded
    8 times over, 1.02 s against 0.12 s (h156). A GeoTIFF label is still read in strips."""
    import geoseg.workflows.evaluate as ev
    from geoseg.models import labels

    monkeypatch.setattr(ev, "STRIP_PX", 50 * 20)  # strips of 20 rows of a 50 px wide image
    image = make_raster(shape=(100, 50))
    ids = np.random.default_rng(0).integers(0, 3, (100, 50)).astype(np.uint8)
    Image.fromarray(ids).save(tmp_path / "truth.png")
    with rasterio.open(tmp_path / "truth.tif", "w", driver="GTiff", width=50, height=100, count=1,
                       dtype="uint8") as ds:
        ds.write(ids[None])
    reads = []
    real = labels.read_labels
    monkeypatch.setattr(ev, "read_labels", lambda *a, **k: reads.append(k.get("window")) or real(*a, **k))
    names = ["other", "water", "vegetation"]
    png = evaluate("threshold", [image], [tmp_path / "truth.png"], label_names=names)
    assert reads and all(w is not None and (w.height, w.width) == (100, 50) for w in reads), reads
    reads.clear()
    tif = evaluate("threshold", [image], [tmp_path / "truth.tif"], label_names=names)
    assert {w.height for w in reads} == {20}, reads
    assert png.confusion_matrix == tif.confusion_matrix


@pytest.mark.parametrize("kept", [False, True])
def test_compare_reports_progress_while_it_scores_again_and_writes_disagreement(make_raster, tmp_path, monkeypatch,
                                                                                 kept):
    """After the bar reached 100%, compare scored every model again on the pixels all of them give a class, and
    wrote the disagreement rasters, without a word: 5.4 s and 5.0 s for 4 models on a 4000² image (h162). Both
    steps now have their share of the bar, which still ends at 1."""
    import geoseg.raster
    import geoseg.workflows.evaluate as workflow

    data = np.random.default_rng(0).integers(20, 250, (4, 40, 50)).astype(np.int16)
    data[3, :, :20] = -9999  # band 4 (threshold's here) is nodata over 20 columns: the masks' nodata differ
    image = make_raster(data=data, nodata=-9999, photometric="MINISBLACK")
    label = tmp_path / "truth.tif"
    with rasterio.open(label, "w", driver="GTiff", width=50, height=40, count=1, dtype="uint8") as ds:
        ds.write(np.random.default_rng(1).integers(0, 3, (1, 40, 50)).astype(np.uint8))
    seen, step = [], ["segmenting"]
    differs, write = workflow._nodata_differs, geoseg.raster.write_class_mask

    def rescoring(*args, **kwargs):
        step[0] = "scoring again"
        return differs(*args, **kwargs)

    def writing(*args, **kwargs):
        step[0] = "writing"
        return write(*args, **kwargs)

    monkeypatch.setattr(workflow, "_nodata_differs", rescoring)
    monkeypatch.setattr(geoseg.raster, "write_class_mask", writing)
    result = compare(["threshold", "region-growing"], [image], [label], model_bands={"threshold": [4, 2, 3]},
                     output_dir=tmp_path / "cmp" if kept else None,
                     progress=lambda fraction: seen.append((step[0], fraction)))
    assert [r["pixels_scored"] for r in result["evaluations"]] == [1200, 1200]  # scored again on common pixels
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0), seen
    first = max(f for s, f in seen if s == "segmenting")
    again = [f for s, f in seen if s == "scoring again"]
    assert len(again) >= 2 and first < again[0], seen  # one report per model at least, after segmenting's
    written = [f for s, f in seen if s == "writing"]
    if kept:  # the disagreement raster's windows, after scoring again
        assert written and again[-1] < 1.0 and written[0] > again[-1], seen
    else:
        assert not written and again[-1] == pytest.approx(1.0), seen


def test_compare_without_an_output_folder_says_where_its_masks_wait(make_raster, tmp_path, monkeypatch):
    """Without -o, every model's masks waited in a temporary folder until all were scored, and neither --help nor
    the README said where or how much (h162): $TMPDIR's, 0.6-0.8 MB a model for a 4000² image."""
    import tempfile

    import geoseg.workflows.evaluate as workflow

    image = make_raster(shape=(40, 50))
    label = tmp_path / "truth.tif"
    with rasterio.open(label, "w", driver="GTiff", width=50, height=40, count=1, dtype="uint8") as ds:
        ds.write(np.random.default_rng(1).integers(0, 3, (1, 40, 50)).astype(np.uint8))
    (tmp_path / "tmpdir").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmpdir"))
    held, differs = [], workflow._nodata_differs

    def looked(folders, images):
        held.extend(p for p in (tmp_path / "tmpdir").rglob("*_mask.tif"))
        return differs(folders, images)

    monkeypatch.setattr(workflow, "_nodata_differs", looked)
    compare(["threshold", "region-growing"], [image], [label])
    assert len(held) == 2 and not list((tmp_path / "tmpdir").iterdir()), held  # both there, then removed
    shown = CliRunner().invoke(main, ["compare", "--help"], terminal_width=200).output
    assert "$TMPDIR" in shown and "temporary folder" in shown, shown


def test_a_model_without_other_reads_no_label_colour_by_an_unrelated_bundle_s_card(make_raster, model_dir, tmp_path,
                                                                                  monkeypatch):
    """Colours a baseline's card lacks are read by another registered card's names and scored as its 'other'
    (h168); a model without 'other' scores such a class as known negatives instead, so a bundle on
    GEOSEG_MODEL_PATH naming #000000 'background' turned a black no-data collar, left unlabelled before, into
    false positives of every class the model found there: landcover-unet's mean IoU halved (0.25 -> 0.125) on a
    label of water and vegetation framed in black, by a model the user never ran."""
    from geoseg.models import ModelCard, read_card, write_card

    bundles = tmp_path / "bundles"
    bundles.mkdir()
    shutil.copy(model_dir / "tiny-fcn.keras", bundles / "user-bld.keras")
    card = read_card(model_dir / "tiny-fcn.json").to_dict()
    card["name"] = "user-bld"
    card["classes"] = [{"id": 0, "name": "background", "color": "#000000"},
                       {"id": 1, "name": "building", "color": "#FFFFFF"},
                       {"id": 2, "name": "tree", "color": "#00FF00"}]
    write_card(ModelCard.from_dict(card), bundles / "user-bld.json")
    image = make_raster(shape=(40, 60))
    mask = np.zeros((40, 60, 3), np.uint8)  # a black frame: no data
    mask[5:35, 5:30] = (0x00, 0x80, 0x40)  # tiny-fcn's class0
    mask[5:35, 30:55] = (0x28, 0x80, 0x40)  # tiny-fcn's class1
    Image.fromarray(mask).save(tmp_path / "mask.png")
    model = str(model_dir / "tiny-fcn.keras")
    before = evaluate(model, image, tmp_path / "mask.png", label_format="color")
    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(bundles))
    after = evaluate(model, image, tmp_path / "mask.png", label_format="color")
    assert after.pixels_scored == before.pixels_scored == 30 * 50
    assert after.confusion_matrix == before.confusion_matrix and after.mean_iou == before.mean_iou
    assert not [n for n in after.notes if "user-bld" in n], after.notes
    assert [n for n in after.notes if "colour(s) of no class (#000000" in n], after.notes
    # a baseline still reads it by that card, scored as its 'other', and says so
    baseline = evaluate("threshold", image, tmp_path / "mask.png", label_format="color")
    assert "were read as user-bld's classes background" in " ".join(baseline.notes)
