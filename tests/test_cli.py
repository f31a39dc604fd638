"""The geoseg command, driven through click's CliRunner."""

from __future__ import annotations

import contextlib
import json
import tempfile
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.raster import name_key


@pytest.fixture
def run():
    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_segment_json(run, make_raster, tiny_fcn, tmp_path):
    path = make_raster(shape=(90, 110))
    out = tmp_path / "out"
    result = run("segment", path, "-o", out, "--model", tiny_fcn, "--json", "--vector", "--confidence", "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["outputs"]) == {"mask", "confidence", "vector", "preview"}
    assert all(os.path.exists(p) for p in data["outputs"].values())
    assert sum(c["pixels"] for c in data["classes"]) == 90 * 110
    assert data["pixels_per_second"] > 0 and data["peak_memory_mb"] > 0
    assert {"area_m2", "name", "pixels"} <= set(data["classes"][0])


def test_json_runs_that_fail_still_print_one_object(run, make_raster, tmp_path):
    """`segment bad.tif --json | jq` got an empty stdout (scene and flood too), while survey and models check
    always printed an object."""
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    good = make_raster(shape=(30, 40))
    for args in (["segment", bad, "-o", tmp_path / "s", "-m", "threshold"], ["scene", bad, "-o", tmp_path / "c"],
                 ["flood", good, "-o", tmp_path / "f", "--pre", bad, "--method", "ndwi"],
                 ["segment", tmp_path / "missing.tif", "-o", tmp_path / "m"]):
        result = run(*args, "--json")
        assert result.exit_code == 1
        data = json.loads(result.stdout)
        assert data["exit_code"] == 1 and ("bad.tif" in data["error"] or "missing.tif" in data["error"]), data
    both = run("segment", good, bad, "-o", tmp_path / "two", "-m", "threshold", "--json")
    assert both.exit_code == 1 and set(json.loads(both.stdout)) == {"results", "errors"}  # one object, not two
    usage = run("segment", good, "--json", "--bogus")
    assert usage.exit_code == 2 and usage.stdout == ""


@pytest.mark.parametrize("name", ["b_mask.tif", "b_preview.png", "b_confidence.tif", "b_polygons.qml"])
def test_segment_refuses_an_input_that_another_inputs_run_would_write_or_remove(run, make_raster, tmp_path, name):
    """segment b.tif b_mask.tif -o . --overwrite wrote b's mask over the input b_mask.tif; b_preview.png was
    replaced by b's preview (exit 0); b_confidence.tif was removed as 'from an earlier run'."""
    b = make_raster(name="b.tif")
    other = tmp_path / name
    if name.endswith(".qml"):
        other.write_text("<qgis/>")
    else:
        make_raster(name=name)
    before = other.read_bytes()
    result = run("segment", b, other, "-o", tmp_path, "-m", "threshold", "--overwrite", "--quiet")
    assert result.exit_code == 1 and f"{other} is also where {b}'s run writes" in result.output
    assert other.read_bytes() == before  # nothing ran: b's mask is not there either, unless it is the input
    assert not (tmp_path / "b_mask.tif").exists() or name == "b_mask.tif"


def test_segment_without_overwrite_runs_beside_an_input_named_like_an_output_it_does_not_write(run, make_raster,
                                                                                               tmp_path):
    """Without --overwrite nothing is replaced or removed: b_confidence.tif is only at risk with --confidence."""
    b, other = make_raster(name="b.tif"), make_raster(name="b_confidence.tif")
    before = other.read_bytes()
    assert run("segment", b, other, "-o", tmp_path, "-m", "threshold", "--quiet").exit_code == 0
    assert other.read_bytes() == before and (tmp_path / "b_mask.tif").exists()
    refused = run("segment", b, other, "-o", tmp_path, "-m", "threshold", "--quiet", "--confidence")
    assert refused.exit_code == 1 and "is also where" in refused.output


def test_segment_many_inputs_one_bad(run, make_raster, tiny_fcn, tmp_path):
    good = make_raster(name="good.tif")
    bad = tmp_path / "bad.tif"
    bad.write_text("nope")
    result = run("segment", good, bad, "-o", tmp_path / "out", "-m", tiny_fcn, "--json", "--quiet")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [r["input"] for r in data["results"]] == [str(good)]
    assert "not a raster" in data["errors"][0]["error"]


def test_segment_finds_a_missing_input_or_an_earlier_output_before_the_first_run(run, make_raster, tmp_path):
    """A typo in the last of many names, or the last raster's mask from an earlier run, stopped the
    run only after the rasters before it were segmented."""
    first, last = make_raster(name="a.tif"), make_raster(name="b.tif")
    missing = run("segment", first, tmp_path / "nope.tif", last, tmp_path / "gone.tif", "-o", tmp_path / "out",
                  "-m", "threshold", "--quiet")
    assert missing.exit_code == 1 and "nope.tif, " in missing.output and "gone.tif: no such files" in missing.output
    assert "nothing was segmented" in missing.output and not (tmp_path / "out").exists()
    assert run("segment", last, "-o", tmp_path / "out", "-m", "threshold", "--quiet").exit_code == 0
    again = run("segment", first, last, "-o", tmp_path / "out", "-m", "threshold", "--quiet")
    assert again.exit_code == 1 and "b_mask.tif already exists (from an earlier run on " in again.output
    assert not (tmp_path / "out" / "a_mask.tif").exists()
    replaced = run("segment", first, last, "-o", tmp_path / "out", "-m", "threshold", "--quiet", "--overwrite")
    assert replaced.exit_code == 0 and (tmp_path / "out" / "a_mask.tif").exists()


def test_segment_refuses_inputs_of_one_name_before_writing(run, make_raster, tmp_path):
    """Tile 2/images/part_1.jpg and Tile 3/images/part_1.jpg would both write part_1_mask.tif."""
    first = make_raster(name="x.tif")
    (tmp_path / "b").mkdir()
    second = make_raster(name="b/x.tif", shape=(30, 40))
    for extra in ([], ["--overwrite"]):  # --overwrite used to keep only the second mask, silently
        result = run("segment", first, second, "-o", tmp_path / "out", "-m", "threshold", "--quiet", *extra)
        assert result.exit_code == 1 and "share a file name, so their outputs would overwrite each other" in result.output
        assert "Usage:" not in result.output  # bad input: one line and status 1, as the README says
        assert not (tmp_path / "out").exists()
    again = run("segment", first, tmp_path / ".." / tmp_path.name / "x.tif", "-o", tmp_path / "out", "-m", "threshold")
    assert again.exit_code == 1 and "x.tif is given twice (also as " in again.output


def test_many_inputs_of_shared_names_are_counted_not_listed(run, make_raster, tmp_path):
    """The Dubai set's 63 tiles of 9 names (Tile N/images/image_part_00K.jpg) were all listed in one error, a
    screenful before the advice: the first group is named, at most three of it, and the rest counted."""
    paths = []
    for folder in range(6):
        (tmp_path / f"t{folder}").mkdir()
        paths += [make_raster(name=f"t{folder}/{name}.tif", shape=(8, 8)) for name in ("a", "b")]
    result = run("segment", *paths, "-o", tmp_path / "out", "-m", "threshold", "--quiet")
    assert result.exit_code == 1 and "t2/a.tif and 3 more share a file name; 1 other name(s) are shared by 6 " \
        "more inputs, so their outputs would overwrite each other" in result.output
    assert "b.tif" not in result.output and "t4" not in result.output
    # the note on letter case goes with the names that differ so, whichever group comes first (h126)
    for folder in ("c", "d"):
        (tmp_path / folder).mkdir()
    paths = [make_raster(name="c/x.tif"), make_raster(name="d/x.tif"), make_raster(name="c/Z.tif"),
             make_raster(name="d/z.tif")]
    result = run("segment", *paths, "-o", tmp_path / "out", "-m", "threshold", "--quiet")
    assert "c/Z.tif, " in result.output and "d/z.tif share a file name (letter case or Unicode form aside: one name " \
        "on macOS and Windows drives); 1 other name(s) are shared by 2 more inputs" in result.output


def test_segment_and_survey_keep_apart_names_that_differ_in_case_or_unicode_form(run, make_raster, tmp_path):
    """On macOS and Windows drives Scene_mask.tif and scene_mask.tif are one file, as are café in its two Unicode
    forms: segment reported two masks and wrote one, and survey credited both rasters with one mask."""
    from geoseg.workflows import survey

    (tmp_path / "b").mkdir()
    for pair in (("Scene.tif", "b/scene.tif"), ("caf\u00e9.tif", "b/cafe\u0301.tif")):
        paths = [make_raster(name=pair[0]), make_raster(name=pair[1], shape=(30, 40))]
        result = run("segment", *paths, "-o", tmp_path / "out", "-m", "threshold", "--quiet", "--overwrite")
        assert result.exit_code == 1 and "share a file name (letter case or Unicode form aside" in result.output
        assert not (tmp_path / "out").exists()
        done = survey(paths, tmp_path / "survey", model="threshold", preview=False)
        folders = {Path(e["outputs"]["mask"]).parent.name for e in done.done}
        assert len(done.done) == 2 and len({name_key(f) for f in folders}) == 2, folders


def test_survey_names_the_report_an_earlier_runs_only_where_it_is(run, make_raster, tmp_path):
    """A survey of only failing rasters into a new folder said its report was "the earlier run's"."""
    (tmp_path / "bad.tif").write_bytes(b"not a raster")
    fresh = run("survey", tmp_path / "bad.tif", "-o", tmp_path / "out", "-m", "threshold")
    assert fresh.exit_code == 1 and "report: " in fresh.output and "the earlier run's" not in fresh.output
    assert run("survey", make_raster(), "-o", tmp_path / "out2", "-m", "threshold").exit_code == 0
    kept = run("survey", tmp_path / "bad.tif", "-o", tmp_path / "out2", "-m", "threshold")
    assert kept.exit_code == 1 and "(the earlier run's: no raster of this one was segmented)" in kept.output


def test_evaluate_refuses_a_label_template_that_gives_two_images_one_label(run, make_raster, tmp_path):
    (tmp_path / "t2").mkdir()
    (tmp_path / "t3").mkdir()
    images = [make_raster(name="t2/part.tif"), make_raster(name="t3/part.tif")]
    result = run("evaluate", "-m", "threshold", "--images", images[0], "--images", images[1],
                 "--labels", f"{tmp_path}/masks/{{stem}}.tif")
    assert result.exit_code == 1 and "the same label file" in result.output and "{image_dir}" in result.output
    none = run("evaluate", "-m", "threshold", "--images", f"{tmp_path}/nomatch/*.tif", "--labels", images[0])
    assert none.exit_code == 1 and "nomatch/*.tif: no image found" in none.output  # was "0 image(s) but 1 label"


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.tif"], "no such file"),
        (["--bands", "1,2", "IMG"], "reads 3 band"),
        (["--bands", "0", "IMG"], "band indexes start at 1"),
        (["--model", "no-such-model", "IMG"], "no model named 'no-such-model'"),
    ],
)
def test_segment_errors_are_one_line(run, make_raster, tiny_fcn, tmp_path, args, message):
    image = make_raster()
    args = [str(image) if a == "IMG" else a for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny_fcn)]
    result = run("segment", *args, "-o", tmp_path / "out")
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output(run, make_raster, tiny_fcn, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run("segment", make_raster(), "-o", locked, "-m", tiny_fcn)
    assert result.exit_code == 1 and "not writable" in result.output


def test_output_under_a_file_is_refused(run, make_raster, tiny_fcn, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    result = run("segment", make_raster(), "-o", blocker / "out", "-m", tiny_fcn)
    assert result.exit_code == 1 and "cannot create the output folder" in result.output


@pytest.mark.parametrize("command", [["segment"], ["scene"], ["survey"], ["flood"],
                                     ["compare", "--models", "threshold,region-growing", "--images"]])
def test_an_output_folder_that_is_a_file_is_exit_status_1(run, make_raster, tmp_path, command):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    result = run(*command, make_raster(), "-o", blocker, *([] if "compare" in command else ["-m", "threshold"]))
    assert result.exit_code == 1 and "blocker: exists and is not a folder" in result.output  # was click's usage, 2
    assert "Traceback" not in result.output and blocker.read_text() == ""


@pytest.mark.parametrize("command", ["segment", "survey"])
def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_temporary_folder(make_raster, tmp_path, command):
    """Python's default SIGTERM ended at once and left OUT/.geoseg-XXXX/ with empty GeoTIFFs behind;
    a survey then logged a traceback and recorded the raster it was on as failed, and later left the staging
    folder of the raster it was on (its thread was cut short at the exit)."""
    import signal
    import time

    image = make_raster(shape=(2500, 2500))
    out = tmp_path / "out"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("geoseg")), command, str(image), "-o", str(out),
                             "-m", "edges-watershed", "--chunk", "256", "--quiet"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    staged = ".geoseg-*" if command == "segment" else "*/.geoseg-*"  # a survey's: in a raster's folder, not the lock
    while not list(out.glob(staged)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be stopped; give it a larger raster"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr.decode()
    assert not [p for p in out.rglob("*") if p.is_file()]  # no temporary folder, no half-written output
    assert not list(out.rglob(".geoseg-*")) and "Traceback" not in stderr.decode()


def test_models_lists_zoo_and_model_path(run, model_dir, monkeypatch):
    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(model_dir))
    result = run("models", "--json")
    assert result.exit_code == 0
    names = {m["name"]: m for m in json.loads(result.stdout)["models"]}
    assert {"tiny-fcn", "tiny-tiled", "tiny-1band"} <= set(names)
    assert names["tiny-fcn"]["source"] == "GEOSEG_MODEL_PATH"
    assert names["tiny-fcn"]["classes"] == ["class0", "class1", "class2"] and names["tiny-fcn"]["bands"] == [1, 2, 3]
    assert names["tiny-1band"]["bands"] == [1] and names["threshold-nir"]["bands"] == [1, 2, 3, 4]
    listed = run("models").output
    assert "tiny-fcn" in listed and "classes: class0, class1, class2" in listed and "bands: [1]" in listed
    # the default first, with what each is for (it came last, under 8 baselines, and said nothing of itself, h130)
    assert listed.startswith("landcover-unet (default)") and "\n    Otsu thresholds: water by a water index" in listed
    # --json in the table's order: the default came last there, first in the table
    order = [m["name"] for m in json.loads(result.stdout)["models"]]
    assert order[0] == "landcover-unet" and names["landcover-unet"]["default"]
    assert order == [line.split()[0] for line in listed.splitlines() if line and not line.startswith(" ")]


def test_a_bad_bundle_or_folder_on_the_model_path_hides_nothing_else(run, make_raster, model_dir, tmp_path,
                                                                     monkeypatch):
    """One broken bundle in a shared folder used to make every command fail, the default model's too."""
    import os
    import shutil

    shared = tmp_path / "shared"
    shutil.copytree(model_dir, shared)
    (shared / "broken.json").write_text('{"name": "broken"}')
    (shared / "broken.keras").write_text("junk")
    (shared / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')  # not UTF-8
    (shared / "latin1.keras").write_text("junk")
    monkeypatch.setenv("GEOSEG_MODEL_PATH", os.pathsep.join([str(shared), str(tmp_path / "gone")]))
    listing = run("models", "--json")
    assert listing.exit_code == 0, listing.output
    assert "tiny-fcn" in {m["name"] for m in json.loads(listing.stdout)["models"]}
    reasons = [s["reason"] for s in json.loads(listing.stdout)["skipped"]]
    assert any("broken.json: required field 'classes'" in r for r in reasons)
    assert any("gone: GEOSEG_MODEL_PATH names this, but it is not a folder" in r for r in reasons)
    assert any("latin1.json: not valid JSON" in r for r in reasons)
    assert "warning: skipped:" in run("models").stderr
    ok = run("segment", make_raster(), "-o", tmp_path / "out", "-m", "tiny-fcn", "--quiet")
    assert ok.exit_code == 0, ok.output
    broken = run("segment", make_raster(), "-o", tmp_path / "out2", "-m", "broken", "--quiet")
    assert broken.exit_code == 1 and "broken.json: required field 'classes' is missing" in broken.output
    # a second bundle whose card reuses a name was hidden without a word, and "-m dupe" said "no model named"
    shutil.copy(shared / "tiny-fcn.keras", shared / "zz-copy.keras")  # found after tiny-fcn.json
    shutil.copy(shared / "tiny-fcn.json", shared / "zz-copy.json")
    reasons = [s["reason"] for s in json.loads(run("models", "--json").stdout)["skipped"]]
    assert any("zz-copy.json: its card's name 'tiny-fcn' is taken by" in r for r in reasons)
    dupe = run("segment", make_raster(), "-o", tmp_path / "out3", "-m", "zz-copy", "--quiet")
    assert dupe.exit_code == 1 and "pass this bundle by its path: -m" in dupe.output
    (shared / "zz-copy.json").write_text((shared / "zz-copy.json").read_text().replace('"tiny-fcn"', '"renamed"'))
    stem = run("segment", make_raster(), "-o", tmp_path / "out3", "-m", "zz-copy", "--quiet")
    assert stem.exit_code == 1 and "calls itself 'renamed' in its card. Pass -m renamed" in stem.output


def _logits_bundle(folder, name):
    """A bundle whose model ends without a softmax: its confidence wrapped around in uint8."""
    import keras

    from geoseg.models import ModelCard, write_card

    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(2, 3, padding="same", kernel_initializer=keras.initializers.Constant(5.0))(inputs)
    keras.Model(inputs, outputs).save(folder / f"{name}.keras")
    write_card(ModelCard.from_dict({"name": name, "bands": [1, 2, 3], "margin": 1, "normalization": {"method": "none"},
                                    "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]}),
               folder / f"{name}.json")


def test_models_check_loads_every_bundle(run, model_dir, tmp_path, monkeypatch):
    """`geoseg models` reads cards only: a bundle whose model is unusable was listed and failed when used."""
    import shutil

    shared = tmp_path / "shared"
    shutil.copytree(model_dir, shared)
    _logits_bundle(shared, "logits")
    (shared / "broken.json").write_text('{"name": "broken"}')
    (shared / "broken.keras").write_text("junk")
    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(shared))
    assert "logits" in run("models").output  # the listing cannot tell
    result = run("models", "check", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    by_name = {m["name"]: m for m in data["models"]}
    assert not data["ok"]
    assert by_name["tiny-fcn"]["ok"] and by_name["landcover-unet"]["ok"] and by_name["threshold"]["ok"]
    assert not by_name["logits"]["ok"] and "outputs are not probabilities" in by_name["logits"]["message"]
    assert not by_name["broken"]["ok"] and "required field 'classes'" in by_name["broken"]["message"]
    text = run("models", "check", "tiny-fcn", "logits", "nothere")
    assert text.exit_code == 1
    assert "ok      tiny-fcn  [GEOSEG_MODEL_PATH]: loads and predicts" in text.output
    assert "FAILED  logits" in text.output and "FAILED  nothere: no model named 'nothere'" in text.output
    assert run("models", "check", "tiny-fcn", "threshold").exit_code == 0
    shown = run("models", "show", "logits")  # the card is read, not the model: it is shown, to be fixed
    assert shown.exit_code == 0 and json.loads(shown.stdout)["name"] == "logits"


def test_models_check_finds_a_margin_too_small(run, make_raster, model_dir, tmp_path):
    """A card whose margin is below the model's reach gives seams that no message named."""
    import shutil

    image = make_raster(shape=(160, 192))
    good = run("models", "check", model_dir / "tiny-fcn.keras", "--image", image, "--chunk", "32", "--json")
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["models"][0]["seam_agreement"] == 100.0  # the U-Net's exact receptive field
    shutil.copy(model_dir / "tiny-fcn.keras", tmp_path / "narrow.keras")
    card = json.loads((model_dir / "tiny-fcn.json").read_text())
    (tmp_path / "narrow.json").write_text(json.dumps({**card, "name": "narrow", "margin": 0}))
    narrow = run("models", "check", tmp_path / "narrow.keras", "--image", image, "--chunk", "32")
    assert narrow.exit_code == 0  # a warning, not a failure
    assert "whole-window run on only" in narrow.stderr and "at the card's margin of 0 px" in narrow.stderr
    assert "on 100.0% at 64 px. Raise 'margin' in the card to 64" in narrow.stderr
    missing = run("models", "check", "tiny-fcn", "--image", tmp_path / "nothere.tif")
    assert missing.exit_code == 1 and "nothere.tif" in missing.output and "Traceback" not in missing.output
    grey = run("models", "check", model_dir / "tiny-fcn.keras", "--image", make_raster(name="grey.tif", bands=1))
    assert grey.exit_code == 0 and "seam check not run" in grey.stderr  # it said "Pass --bands", which check lacks
    assert "--bands" not in grey.stderr and "an image that has the model's bands" in grey.stderr


def test_the_zoo_on_the_model_path_is_not_a_clash_with_itself(run, monkeypatch):
    from geoseg.models.registry import ZOO

    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(ZOO))  # each bundle was reported as taking its own name
    assert json.loads(run("models", "--json").stdout)["skipped"] == []


def test_model_by_name_from_model_path(run, make_raster, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(model_dir))
    result = run("segment", make_raster(), "-o", tmp_path / "out", "-m", "tiny-tiled", "--quiet")
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "out" / "image_mask.tif") as ds:
        assert ds.read(1).max() < 3


def test_workers_runs_on_a_local_cluster(run, make_raster, tiny_fcn, tmp_path):
    """As a user runs it (a process of its own): the same mask, and only geoseg's warning on stderr. Each worker printed
    TensorFlow's C++ start-up lines, and the nanny a warning when it killed a slow-to-exit worker."""
    path = make_raster(shape=(100, 120))
    threads = run("segment", path, "-o", tmp_path / "a", "-m", tiny_fcn, "--chunk", "32", "--quiet", "--no-preview")
    cluster = subprocess.run([str(Path(sys.executable).with_name("geoseg")), "segment", str(path), "-o",
                              str(tmp_path / "b"), "-m", str(tiny_fcn), "--chunk", "32", "--quiet", "--no-preview",
                              "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert threads.exit_code == 0 and cluster.returncode == 0, cluster.stderr
    assert [line for line in cluster.stderr.splitlines() if "chunk 32x32 with a 23 px margin" not in line] == []
    with rasterio.open(tmp_path / "a" / "image_mask.tif") as a, rasterio.open(tmp_path / "b" / "image_mask.tif") as b:
        assert (a.read(1) == b.read(1)).all()


@pytest.mark.parametrize("args, message", [
    (["--method", "ndwi", "-m", "threshold"], "-m/--model only applies to --method model"),
    (["--method", "ndwi", "--water-class", "sea"], "--water-class only applies to --method model"),
    (["--ndwi-threshold", "0.3", "--green-band", "3"], "--green-band, --ndwi-threshold only apply to --method ndwi"),
    (["--method", "ndwi", "--chunk", "512", "--sieve", "4"], "--chunk only applies to --method model"),
])
def test_flood_refuses_options_of_the_other_method(run, make_raster, tmp_path, args, message):
    """They were ignored without a word: an NDWI run with -m, a model run with an NDWI cut."""
    result = run("flood", make_raster(), "-o", tmp_path / "out", *args)
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["evaluate", "-m", "threshold", "--images", "{image}", "--labels", "{image}", "--overwrite"],
     "--overwrite only applies with --markdown"),
    (["evaluate", "-m", "threshold", "--images", "{image}", "--labels", "{image}", "--vector-field", "kind"],
     "--vector-field only applies with --label-format vector"),
    (["compare", "--models", "threshold,region-growing", "--images", "{image}", "--labels", "{image}",
      "--overwrite"], "--overwrite only applies with -o/--output-dir"),
    (["compare", "--models", "threshold,region-growing", "--images", "{image}", "-o", "{out}",
      "--label-names", "water,other"], "--label-names only applies with --labels"),
    (["scene", "{image}", "-o", "{out}", "-m", "threshold", "--zone-field", "name"],
     "--zone-field only applies with --zones"),
    (["flood", "{image}", "-o", "{out}", "-m", "threshold", "--aoi-field", "name"], "--aoi-field only applies with --aoi"),
    (["models", "check", "threshold", "--window", "128"], "--window only applies with --image"),
])
def test_options_that_need_another_are_usage_errors_without_it(run, make_raster, tmp_path, args, message):
    """Each was ignored without a word (--overwrite, --vector-field, --label-names, --window) or refused with exit
    status 1 after the inputs had been read (--zone-field, --aoi-field)."""
    image = make_raster()
    result = run(*[a.format(image=image, out=tmp_path / "out") for a in args])
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value", [("--margin", "2049"), ("--tile", "8193")])
def test_segment_sizes_beyond_the_pipelines_limits_are_usage_errors(run, make_raster, tmp_path, option, value):
    """--margin 5000 exited 1 from the pipeline's own check, after the model had loaded; --help gave no limit."""
    result = run("segment", make_raster(), "-o", tmp_path / "out", "-m", "threshold", option, value)
    assert result.exit_code == 2 and f"{option}': {value} is not in the range" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, mask", [("scene", "image_mask.tif"), ("survey", "image/image_mask.tif"),
                                           ("flood", "post/image_mask.tif")])
def test_scene_survey_and_flood_take_normalize(run, make_raster, tiny_fcn, tmp_path, caplog, command, mask):
    """The pipeline's warning on 11- and 16-bit imagery told users of these commands to pass --normalize, which
    they did not have (exit 2), so a survey of uint16 rasters came out nearly one class with no way to fix it.
    A baseline keeps its own, as in evaluate, compare and on the web page (it changed 96% of threshold's mask)."""
    image = make_raster(name="image.tif", shape=(48, 64))
    masks = {}
    for model in (tiny_fcn, "threshold"):
        for out, extra in (("plain", []), ("normalized", ["--normalize", "meanstd:1,2,3/4,5,6"])):
            folder = tmp_path / Path(str(model)).stem / out
            water = ["--water-class", "class1"] if command == "flood" and model == tiny_fcn else []
            result = run(command, image, "-o", folder, "-m", model, "--quiet", *water, *extra)
            assert result.exit_code == 0, result.output
            with rasterio.open(folder / mask) as ds:
                masks[Path(str(model)).stem, out] = ds.read(1)
    assert (masks["tiny-fcn", "plain"] != masks["tiny-fcn", "normalized"]).any()  # it reached the Keras model
    assert (masks["threshold", "plain"] == masks["threshold", "normalized"]).all()
    assert "threshold keeps its own normalisation" in caplog.text


def test_evaluate_and_compare_leave_the_baselines_normalisation_alone(run, make_raster, tmp_path):
    """--normalize is the Keras models' (the help says the baselines ignore it), but it changed 69% of threshold's
    mask beside the U-Net, and the web page ignored it for the baselines: the two disagreed."""
    image = make_raster(name="image.tif", shape=(48, 64))
    label = make_raster(name="label.tif", shape=(48, 64), bands=1, data=(np.indices((1, 48, 64))[2] // 22).astype(np.uint8))
    scores = []
    for extra in ([], ["--normalize", "meanstd:1,2,3/4,5,6"]):
        result = run("evaluate", "-m", "threshold", "--images", image, "--labels", label, "--json", *extra)
        assert result.exit_code == 0, result.output
        scores.append(json.loads(result.stdout)["confusion_matrix"])
        result = run("compare", "--models", "threshold,region-growing", "--images", image, "--labels", label, "--json",
                     *extra)
        assert result.exit_code == 0, result.output
        scores.append([e["confusion_matrix"] for e in json.loads(result.stdout)["evaluations"]])
    assert scores[0] == scores[2] and scores[1] == scores[3]


def test_segment_json_says_how_the_model_ran_and_regions_are_not_summed_as_classes(run, make_raster, tiny_fcn,
                                                                                     tmp_path):
    """`--json` of a run with --tta flips read the same as a plain run; region colours were listed as classes."""
    image = make_raster()
    flips = run("segment", image, "-o", tmp_path / "a", "-m", tiny_fcn, "--tta", "flips", "--json", "--quiet")
    plain = run("segment", image, "-o", tmp_path / "b", "-m", tiny_fcn, "--json", "--quiet")
    assert (json.loads(flips.stdout)["plan"]["tta"], json.loads(plain.stdout)["plan"]["tta"]) == ("flips", "none")
    assert json.loads(plain.stdout)["plan"]["precision"] == "float32" and json.loads(plain.stdout)["output"] == "classes"
    regions = run("segment", image, "-o", tmp_path / "c", "-m", "watershed-regions", "--no-preview")
    assert "unlabeled regions: 8 colours" in regions.stderr and "region colour 1:" not in regions.stderr


def test_a_cluster_started_while_port_8787_is_taken_leaks_no_socket():
    """distributed starts its HTTP server even without a dashboard, on 8787 by default; with another cluster
    there (two runs, or two test sessions, at once) it retried and leaked the socket: a ResourceWarning,
    which failed whichever test it surfaced in."""
    import gc
    import socket
    from contextlib import suppress

    from geoseg.cli.segment import _client

    taken = socket.socket()
    with suppress(OSError):  # taken already, by someone else: as good
        taken.bind(("127.0.0.1", 8787))
        taken.listen()
    try:
        with _client(1, None) as client:
            assert client.submit(sum, [1, 2]).result() == 3
        gc.collect()  # the leaked socket's ResourceWarning comes when it is collected
    finally:
        taken.close()


def test_an_address_that_never_answers_as_a_scheduler_is_an_error_not_a_hang(run, make_raster, tmp_path,
                                                                               monkeypatch):
    """--scheduler at a port that takes connections and says nothing (the dashboard's 8787 for 8786) hung for good
    inside Client(), whose own timeout did not end it (h95)."""
    import socket
    import time

    monkeypatch.setattr(sys.modules["geoseg.cli.segment"], "CONNECT_S", 2)  # (geoseg.cli.segment is the command)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        started = time.monotonic()
        result = run("segment", make_raster(), "-o", tmp_path / "out", "-m", "threshold", "--scheduler",
                     f"tcp://127.0.0.1:{silent.getsockname()[1]}")
        assert result.exit_code == 1 and "answered as a Dask scheduler within 2 s" in result.output, result.output
        assert time.monotonic() - started < 30 and not (tmp_path / "out").exists()
    finally:
        silent.close()


def test_an_unreachable_scheduler_is_one_line_and_status_1(run, make_raster, tmp_path):
    result = run("segment", make_raster(), "-o", tmp_path / "out", "-m", "threshold", "--scheduler", "tcp://127.0.0.1:9")
    assert result.exit_code == 1 and "cannot reach a Dask scheduler at tcp://127.0.0.1:9" in result.output
    assert "Usage:" not in result.output and not (tmp_path / "out").exists()


def test_models_show_prints_the_card(run, model_dir, monkeypatch):
    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(model_dir))
    result = run("models", "show", "tiny-tiled")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["tile_size"] == 48
    missing = run("models", "show", "nope")
    assert missing.exit_code == 1 and "no model named 'nope'" in missing.output


def test_json_puts_what_fits_on_one_line_and_reads_back_the_same():
    """`models show` printed the default card in 404 lines, a line per band number and class field (h130): lists
    and objects that fit in 100 columns are on one line, and the text is the same JSON."""
    from hypothesis import given, settings, strategies as st

    from geoseg.cli.options import JSON_WIDTH, compact_json
    from geoseg.models import get_segmenter

    card = get_segmenter("landcover-unet").card.to_dict()
    text = compact_json(card)
    assert json.loads(text) == json.loads(json.dumps(card, default=str))
    assert '  "bands": [1, 2, 3],' in text.splitlines()
    assert len(text.splitlines()) < 0.75 * len(json.dumps(card, indent=2, default=str).splitlines())
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
    values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=6)
                          | st.dictionaries(st.text(max_size=12), inner, max_size=6), max_leaves=40)

    @settings(max_examples=200, deadline=None)
    @given(values)
    def reads_back(value):
        out = compact_json(value)
        assert json.loads(out) == value
        one_line = len(json.dumps(value)) <= JSON_WIDTH or not value or not isinstance(value, (list, dict))
        assert ("\n" not in out) == one_line

    reads_back()


def test_models_from_an_installed_plugin(run, model_dir, tmp_path, monkeypatch):
    """A package that registers the geoseg.models entry point adds its folder of bundles."""
    import shutil

    site = tmp_path / "site"
    bundles = site / "geoseg_demo_plugin" / "bundles"
    bundles.mkdir(parents=True)
    for suffix in (".keras", ".json"):
        shutil.copy(model_dir / f"tiny-fcn{suffix}", bundles / f"plugged{suffix}")
    card = json.loads((bundles / "plugged.json").read_text())
    (bundles / "plugged.json").write_text(json.dumps({**card, "name": "plugged"}))
    (site / "geoseg_demo_plugin" / "__init__.py").write_text(
        "from pathlib import Path\n\ndef bundles():\n    return Path(__file__).parent / 'bundles'\n\n"
        "class Seg:\n    card = None\n\n    def predict_proba(self, x):\n        return x\n"
    )
    info = site / "geoseg_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: geoseg-demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[geoseg.models]\ndemo = geoseg_demo_plugin:bundles\n"
                                           "broken = geoseg_demo_plugin:nothing_here\n"
                                           "seg = geoseg_demo_plugin:Seg\n")
    monkeypatch.syspath_prepend(str(site))
    listing = json.loads(run("models", "--json").stdout)
    names = {m["name"]: m for m in listing["models"]}
    assert names["plugged"]["source"] == "plugin demo"  # a broken plugin beside it hides nothing
    assert any("plugin broken (geoseg_demo_plugin:nothing_here) failed" in s["reason"] for s in listing["skipped"])
    # a Segmenter class was "expected str, bytes or os.PathLike object, not type"; a name of a model that a
    # failed plugin may hold was only "no model named", without a word of the plugin
    assert any("plugin seg (geoseg_demo_plugin:Seg) gives the class Seg, not a folder" in s["reason"]
               for s in listing["skipped"])
    missing = run("models", "show", "its-model")
    assert missing.exit_code == 1 and "Skipped: plugin broken (geoseg_demo_plugin:nothing_here) failed" in missing.output


def test_a_plugins_keras_layers_load_in_a_bundle_given_by_path(model_dir, tmp_path, make_raster):
    """Only listing the models imported the plugins, so a bundle with a layer a plugin registers failed by
    path, and in Dask workers ("Could not locate class 'Gain'")."""
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "gain_plugin").mkdir(parents=True)
    (site / "gain_plugin" / "__init__.py").write_text(
        "from pathlib import Path\nimport keras\n\n"
        "@keras.saving.register_keras_serializable(package='gain_plugin')\n"
        "class Gain(keras.layers.Layer):\n    def call(self, x):\n        return x * 1.0\n\n"
        "def bundles():\n    return Path(__file__).parent\n")
    info = site / "gain_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gain-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[geoseg.models]\ngain = gain_plugin:bundles\n")
    elsewhere = tmp_path / "models"
    elsewhere.mkdir()
    build = ("import sys, keras; sys.path.insert(0, sys.argv[1]); from gain_plugin import Gain; "
             "i = keras.Input((None, None, 3)); "
             "keras.Model(i, Gain()(keras.layers.Conv2D(3, 1, activation='softmax')(i))).save(sys.argv[2])")
    subprocess.run([sys.executable, "-c", build, str(site), str(elsewhere / "gain.keras")], check=True, timeout=300)
    card = json.loads((model_dir / "tiny-fcn.json").read_text())
    (elsewhere / "gain.json").write_text(json.dumps({**card, "name": "gain", "margin": 0}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([str(Path(sys.executable).with_name("geoseg")), "segment", str(make_raster(shape=(30, 40))), "-o",
                             str(tmp_path / "out"), "-m", str(elsewhere / "gain.keras"), "--quiet", "--no-preview"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "image_mask.tif").is_file()


def test_vectorize_command(run, make_raster, tiny_fcn, tmp_path):
    out = tmp_path / "out"
    assert run("segment", make_raster(shape=(80, 90)), "-o", out, "-m", tiny_fcn, "--quiet").exit_code == 0
    result = run("vectorize", out / "image_mask.tif", "-o", tmp_path / "layer.fgb", "--block", "32", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["pixels_per_second"] > 0 and data["peak_memory_mb"] > 0  # as segment --json has them (h115)
    assert data["polygons"] > 0 and (tmp_path / "layer.fgb").exists() and (tmp_path / "layer.qml").exists()
    again = run("vectorize", out / "image_mask.tif", "-o", tmp_path / "layer.fgb")
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_vectorize_takes_quiet_as_the_other_commands_do(run, make_raster, tmp_path):
    """vectorize, the one command with a summary and no --quiet, now draws a bar on a terminal (h173)."""
    out = tmp_path / "out"
    assert run("segment", make_raster(shape=(80, 90)), "-o", out, "-m", "threshold", "--quiet").exit_code == 0
    quiet = run("vectorize", out / "image_mask.tif", "-o", tmp_path / "q.gpkg", "--quiet")
    assert quiet.exit_code == 0 and quiet.output == "" and (tmp_path / "q.gpkg").exists()
    said = run("vectorize", out / "image_mask.tif", "-o", tmp_path / "s.gpkg")
    assert said.exit_code == 0 and "polygons -> " in said.output


def test_serve_refuses_a_host_it_cannot_listen_on(run):
    result = run("serve", "--host", "a..b", "--port", "5099")  # rejected before any DNS lookup or bind
    assert result.exit_code == 2 and "Invalid value for --host: 'a..b' is not an address" in result.output


def test_serve_takes_the_abandon_time_from_its_option_or_the_environment(monkeypatch):
    """GEOSEG_ABANDON_AFTER was a key of create_app's config only: nothing a user of geoseg serve could set, and a
    script polling every 5 minutes had its jobs stopped (h114)."""
    import socket

    import geoseg.web
    from geoseg.errors import OutputError

    given = []

    def app(config):
        given.append(config["GEOSEG_ABANDON_AFTER"])
        raise OutputError("stop here")

    monkeypatch.setattr(geoseg.web, "create_app", app)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    for args, env in [([], {}), (["--abandon-after", "600"], {}), ([], {"GEOSEG_ABANDON_AFTER": "3600"})]:
        result = CliRunner().invoke(main, ["serve", "--port", port, *args], env=env)
        assert result.exit_code == 1 and "stop here" in result.output
    assert given == [180, 600, 3600]
    assert "GEOSEG_ABANDON_AFTER" in CliRunner().invoke(main, ["serve", "--help"]).output


def test_ctrl_c_exits_130(run, make_raster, tmp_path, monkeypatch):
    """Click's "Aborted!" exited 1, the status of a survey with a failed raster: scripts could not tell."""
    import geoseg.pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(geoseg.pipeline, "segment", interrupted)
    result = run("segment", make_raster(), "-o", tmp_path / "out", "-m", "threshold")
    assert result.exit_code == 130 and "Interrupted" in result.stderr


@pytest.mark.parametrize("signal_exception, status", [(KeyboardInterrupt, 130), (SystemExit(143), 143)])
def test_a_signal_inside_rasterios_env_bookkeeping_still_exits_with_its_status(run, make_raster, tmp_path, monkeypatch,
                                                                               signal_exception, status):
    """SIGTERM that landed while rasterio.open left its own Env unwound half of it; the pipeline's Env then raised
    "EnvError: No GDAL environment exists" over the SystemExit: status 1 and a traceback (seen in CI)."""
    import rasterio

    import geoseg.pipeline

    def interrupted_between_delenv_and_defenv(*args, **kwargs):
        with rasterio.Env():
            rasterio.env.delenv()  # what the interrupted inner Env.__exit__ had done when the signal came
            raise signal_exception

    monkeypatch.setattr(geoseg.pipeline, "segment", interrupted_between_delenv_and_defenv)
    result = run("segment", make_raster(), "-o", tmp_path / "out", "-m", "threshold")
    assert result.exit_code == status and ("Interrupted" in result.stderr) == (status == 130)
    assert ("Terminated (SIGTERM): outputs of this run" in result.stderr) == (status == 143)  # a scheduler's log


@pytest.mark.parametrize("command, args, keras", [
    ("segment", ["a.tif", "-m", "threshold"], False),
    ("segment", ["a.tif", "-mthreshold?water=0.1"], False),
    ("segment", ["a.tif", "--model=builtin:edges-watershed"], False),
    ("segment", ["a.tif"], True),  # the default model
    ("segment", ["a.tif", "-m", "landcover-unet"], True),
    ("compare", ["--models", "threshold,landcover-unet", "--images", "a.tif"], True),
    ("compare", ["--models=threshold,edges-watershed", "--images", "a.tif"], False),
    ("compare", ["--models", "threshold,,edges-watershed,", "--images", "a.tif"], False),  # loaded it: 12 s, not 4
    ("flood", ["a.tif", "-o", "f", "--method", "ndwi"], False),
    ("flood", ["a.tif", "-o", "f"], True),
    ("evaluate", ["-h"], False),
    ("train", ["-c", "x.toml"], True),
])
def test_tensorflow_is_loaded_up_front_only_where_a_keras_model_may_run(command, args, keras):
    from geoseg.cli import _may_run_keras

    assert _may_run_keras(command, args) is keras


def test_a_baseline_run_from_the_command_line_does_not_import_tensorflow(make_raster, tmp_path):
    """Every segment/compare/flood run imported TensorFlow first (3 s, 550 MB), baselines and --help too."""

    code = ("import sys; from geoseg.cli import main\n"
            "try: main(sys.argv[1:], standalone_mode=False)\n"
            "finally: print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, "segment", str(make_raster()), "-o", str(tmp_path / "o"), "-m",
                          "threshold", "--quiet"], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False" and (tmp_path / "o" / "image_mask.tif").exists()
    # `models check` of baselines imported it too, whatever the models (5.6 s and 715 MB against 1.9 s and 157 MB)
    out = subprocess.run([sys.executable, "-c", code, "models", "check", "threshold", "edges-watershed"],
                         capture_output=True, text=True)
    assert out.stdout.split()[-1] == "False" and "ok      threshold" in out.stdout, out.stdout + out.stderr


def test_a_signal_while_python_shuts_down_after_a_run_ends_it_at_once():
    """A Ctrl-C just after a run had finished printed "Exception ignored ... KeyboardInterrupt" and exited 0."""
    code = ("import atexit, os, signal, sys; atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT)); "
            "from geoseg.cli import entry; sys.argv = ['geoseg', '--version']; entry()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          preexec_fn=_ctrl_c_as_at_a_terminal)
    assert done.returncode == 130 and "geoseg" in done.stdout
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr


def test_reports_are_written_in_utf8_whatever_the_locale(make_raster, tmp_path):
    """In a C locale without Python's UTF-8 mode, flood.md's "km²" was a UnicodeEncodeError traceback after
    the work (and a model's NAME.toml or a style of accented class names would be too)."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    image = make_raster(bands=4)
    done = subprocess.run([sys.executable, "-c", "from geoseg.cli import entry; entry()", "flood", str(image), "-o",
                           str(tmp_path / "f"), "--method", "ndwi", "--quiet"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "km²" in (tmp_path / "f" / "flood.md").read_text(encoding="utf-8")


def test_locales_and_unicode_forms_of_other_systems(tiny_fcn, make_raster, tmp_path, monkeypatch):
    """A card read in the locale's encoding garbled 'Gebäude' into every output; a stdout in cp932 made `geoseg
    models > list.txt` a traceback; a class or field name in macOS's decomposed form matched nothing; a Turkish
    locale broke GDAL's and PROJ's case-insensitive lookups."""
    import locale
    import unicodedata

    from geoseg._locale import neutral_case_rules
    from geoseg.models import read_card
    from geoseg.workflows.common import same_field
    from geoseg.workflows.evaluate import _remap

    path = tmp_path / "tiny-fcn.json"
    shutil.copy(tiny_fcn, tmp_path / tiny_fcn.name)
    base = json.loads(tiny_fcn.with_suffix(".json").read_text())
    base["classes"][0]["name"] = "Gebäude"
    path.write_bytes(json.dumps(base, ensure_ascii=False).encode("utf-8"))
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    read = subprocess.run([sys.executable, "-c", "import sys; from geoseg.models import read_card; "
                           "print(ascii([c.name for c in read_card(sys.argv[1]).classes]))", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert read.returncode == 0 and "Geb\\xe4ude" in read.stdout, read.stdout + read.stderr  # not GebÃ¤ude
    listed = subprocess.run([sys.executable, "-c", "from geoseg.cli import entry; entry()", "models"],
                            capture_output=True, timeout=300,
                            env={**os.environ, "PYTHONIOENCODING": "cp932", "GEOSEG_MODEL_PATH": str(tmp_path)})
    assert listed.returncode == 0 and b"Traceback" not in listed.stderr, listed.stderr[-800:]
    assert b"Geb\\xe4ude" in listed.stdout
    decomposed = unicodedata.normalize("NFD", "Gebäude")
    lut, missing = _remap([{"name": decomposed}], read_card(path))
    assert not missing and lut[0] == 0
    assert same_field(["Bezirk_ü", "geometry"], unicodedata.normalize("NFD", "Bezirk_ü")) == "Bezirk_ü"
    from geoseg import segment
    from geoseg.errors import InputError
    from geoseg.raster import inspect_raster

    plain = make_raster(name="plain.tif", shape=(20, 30))
    street = tmp_path / "Straße.tif"  # under de_DE.ISO-8859-1 Python decodes its name as Latin-1: GDAL said
    shutil.copy(tiny_fcn.with_suffix(".json"), street)  # "No such file" of a file that exists
    with monkeypatch.context() as latin:
        latin.setattr(sys, "getfilesystemencoding", lambda: "iso8859-1")
        with pytest.raises(InputError, match="cannot be passed to GDAL in this locale .*Run in a UTF-8 locale"):
            inspect_raster(street)
        with pytest.raises(InputError, match="the output folder's name cannot be passed to GDAL in this locale"):
            segment(plain, tmp_path / "ausgabe_ä", model="threshold")
    chosen = []
    monkeypatch.setattr(locale, "setlocale", lambda category, value=None: "tr_TR.UTF-8" if value is None
                        else chosen.append(value))
    neutral_case_rules()
    assert chosen == ["C.UTF-8"]
    chosen.clear()
    monkeypatch.setattr(locale, "setlocale", lambda category, value=None: "tr_TR.ISO-8859-9" if value is None
                        else chosen.append(value))
    neutral_case_rules()
    assert chosen == ["C"]
    chosen.clear()
    monkeypatch.setattr(locale, "setlocale", lambda category, value=None: "de_DE.UTF-8" if value is None
                        else chosen.append(value))
    neutral_case_rules()
    assert chosen == []


def test_log_lines_on_a_terminal_are_written_above_the_progress_bar(monkeypatch):
    """On a terminal a warning was glued to the bar's line ('... 00:08<00:00WARNING geoseg.pipeline: ...')."""
    import io
    import logging

    from geoseg.cli.segment import _bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    handler = logging.StreamHandler(screen)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    with _bar("big.tif", quiet=False, named=True) as progress:
        progress(0.5, "a.tif")
        progress.__self__.bar.refresh()  # shown now, not after its 1 s delay
        logging.getLogger("geoseg.pipeline").warning("no valid pixels")
        assert root.handlers != [handler]  # written through the bar meanwhile
        progress(0.9)
    assert root.handlers == [handler]
    text = screen.getvalue()
    assert "big.tif:  50%" in text and "a.tif" in text
    before = text[:text.index("WARNING geoseg.pipeline: no valid pixels")]
    assert before.endswith(("\r", "\n")), repr(text)  # on a line of its own, not after the bar's text


def test_a_long_file_name_leaves_the_bar_its_percentage_in_a_narrow_terminal(monkeypatch):
    """At 40 columns the bar of a long file name showed only the name: no percentage, no bar (h173)."""
    import io

    from geoseg.cli.segment import _bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setenv("COLUMNS", "40")
    name = "a_rather_long_file_name_for_the_bar_über.tif"
    with _bar(name, quiet=False) as progress:
        progress(0.5)
        progress.__self__.bar.refresh()
        progress.__self__.bar.ncols = 40  # tqdm measures the screen itself, which a StringIO has not
        progress.__self__.bar.refresh()
    line = screen.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert " 50%" in line and "a_rat" in line and "…" in line and ".tif" in line, line
    with _bar("short.tif", quiet=False) as progress:  # a name that fits is shown whole
        assert progress.__self__.bar.desc.startswith("short.tif")


def test_names_too_long_for_the_file_system_are_errors_not_tracebacks(run, make_raster, tmp_path):
    """A legal input name of 250 bytes gave an OSError (ENAMETOOLONG) traceback once '_mask.tif' was added."""
    image = make_raster(name="z" * 250 + ".tif", shape=(30, 40))
    for command in (["segment", str(image), "-o", str(tmp_path / "out")], ["scene", str(image), "-o", str(tmp_path / "s")]):
        result = run(*command, "-m", "threshold")
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert "a name too long for this file system" in result.output
    short = make_raster(name="m.tif", shape=(30, 40))
    mask = run("segment", str(short), "-o", str(tmp_path / "m"), "-m", "threshold", "--quiet")
    assert mask.exit_code == 0, mask.output
    longest = tmp_path / ("y" * 250 + ".gpkg")  # 255 bytes: legal, though its temporary name was not
    layer = run("vectorize", str(tmp_path / "m" / "m_mask.tif"), "-o", str(longest))
    assert layer.exit_code == 0 and longest.exists(), layer.output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_at_once_and_removes_its_folder(tmp_path, signum):
    """Jobs still running held the exit for 8-17 s and ended in 'cannot schedule new futures' tracebacks."""
    import socket
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("geoseg")), "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_ctrl_c_as_at_a_terminal)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=5) as answer:
                    assert answer.status == 200
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.5)
        assert list((tmp_path / "geoseg-web").glob("server-*"))  # the server's own folder
        # with its own temporary folder, for TensorFlow's autograph files, which os._exit left in TMPDIR
        assert list((tmp_path / "geoseg-web").glob("server-*/tmp"))
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/no-such-page", timeout=5)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == (130 if signum == signal.SIGINT else 143), stderr.decode()  # Ctrl-C was 0
    assert "Traceback" not in stderr.decode() and not list((tmp_path / "geoseg-web").glob("server-*"))
    # werkzeug coloured its request log (a 404 in yellow) into a file or pipe with escape codes
    assert '"GET /no-such-page HTTP/1.1" 404' in stderr.decode() and "\x1b[" not in stderr.decode(), stderr.decode()


def test_serve_closes_a_connection_that_sends_nothing_after_its_idle_timeout(tmp_path):
    """Each connection had a thread without a timeout: 400 half-open sockets held 426 threads for good (h123)."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).with_name("geoseg")), "serve", "--port", str(port),
                             "--idle-timeout", "2"], env={**os.environ, "TMPDIR": str(tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=5).close()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.sendall(b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
            idle.settimeout(20)
            started = time.time()
            while idle.recv(1024):  # the server closes it (a socket.timeout after 20 s, before)
                pass
            assert time.time() - started < 15
        # a request that keeps its word is still answered
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=5).close()
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert "connection closed after 2 s without a request" in stderr.decode(), stderr.decode()
    assert "ERROR" not in stderr.decode() and "Traceback" not in stderr.decode()  # an ERROR line, twice


def test_flood_threshold_out_of_range_is_a_usage_error_and_scene_prints_small_areas_in_m2(run, make_raster, tmp_path):
    """--ndwi-threshold 2 exited 1 in the Python API's words while 'abc' was a usage error (2); the scene summary
    printed 3 m² of a drone image as 0.0000 km²."""
    from rasterio.transform import from_origin

    result = run("flood", make_raster(bands=4), "-o", tmp_path / "f", "--method", "ndwi", "--ndwi-threshold", "2")
    assert result.exit_code == 2 and "Invalid value for --ndwi-threshold" in result.output
    drone = make_raster(name="drone.tif", shape=(40, 50), transform=from_origin(500000.0, 2800000.0, 0.05, 0.05))
    for command in ("scene", "segment", "flood"):  # segment's summary still did (helper h73)
        result = run(command, drone, "-o", tmp_path / command, "-m", "threshold")
        assert result.exit_code == 0 and " m²" in result.stderr and "km²" not in result.stderr, command


def test_closed_standard_streams_and_a_deleted_folder(make_raster, tmp_path):
    """Started with stderr closed (2>&-, a daemon), a survey hung for ever in its progress bar and a command that
    loads TensorFlow exited 1 without a word; --json with stdout closed wrote everything, then a traceback; in a
    folder deleted meanwhile, relative paths gave a bare FileNotFoundError traceback."""
    geoseg = str(Path(sys.executable).with_name("geoseg"))
    image = make_raster(shape=(40, 50))

    def closing(fd):
        return lambda: os.close(fd)

    done = subprocess.run([geoseg, "survey", str(image), "-o", str(tmp_path / "survey"), "-m", "threshold"],
                          preexec_fn=closing(2), stdout=subprocess.DEVNULL, timeout=120)  # it hung for ever
    assert done.returncode == 0 and (tmp_path / "survey" / "survey_report.md").exists()
    done = subprocess.run([geoseg, "segment", str(image), "-o", str(tmp_path / "json"), "-m", "threshold", "--json"],
                          preexec_fn=closing(1), stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 2 and "--json prints its object on standard output, which is closed" in done.stderr
    assert "Usage: geoseg [OPTIONS] COMMAND" not in done.stderr  # the group's usage, for a command's option
    assert not (tmp_path / "json").exists()
    for name in ("gone", "gone too"):
        (tmp_path / name).mkdir()
    done = subprocess.run([geoseg, "segment", str(image), "-o", "out", "-m", "threshold"], cwd=tmp_path / "gone",
                          preexec_fn=lambda: os.rmdir(os.getcwd()), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "the current folder no longer exists" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run([geoseg, "segment", str(image), "-o", str(tmp_path / "abs"), "-m", "threshold"],
                          cwd=tmp_path / "gone too", preexec_fn=lambda: os.rmdir(os.getcwd()), capture_output=True,
                          text=True, timeout=300)  # absolute paths need no working folder
    assert done.returncode == 0 and (tmp_path / "abs" / "image_mask.tif").exists(), done.stderr


def test_an_address_space_cap_below_what_tensorflow_reserves_is_warned_of(make_raster, tmp_path):
    """Under ulimit -v (an HPC job's vmem limit) of 3-4.5 GB the default model aborted in C++ with 'std::bad_alloc'
    and nothing of geoseg's said why; a baseline needs no warning."""
    import resource

    def capped():
        resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, resource.RLIM_INFINITY))

    geoseg, image = str(Path(sys.executable).with_name("geoseg")), str(make_raster())
    done = subprocess.run([geoseg, "segment", image, "-o", str(tmp_path / "unet"), "--no-preview"], preexec_fn=capped,
                          capture_output=True, text=True, timeout=600)
    assert "virtual memory is capped at 3.0 GB (ulimit -v)" in done.stderr and "ulimit -v unlimited" in done.stderr
    done = subprocess.run([geoseg, "segment", image, "-o", str(tmp_path / "baseline"), "-m", "threshold"],
                          preexec_fn=capped, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ulimit -v" not in done.stderr, done.stderr


def test_a_file_name_an_ascii_locale_cannot_pass_on_is_named(make_raster, tmp_path):
    """In an ASCII locale (LC_ALL=C without UTF-8 mode) a name like scène.tif was a UnicodeEncodeError traceback."""
    image = make_raster(name="scène.tif")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([str(Path(sys.executable).with_name("geoseg")), "segment", os.fsencode(image), "-o",
                           str(tmp_path / "out"), "-m", "threshold"], capture_output=True, env=env, timeout=300)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 1 and "Traceback" not in stderr, stderr
    assert "cannot be passed to GDAL in this locale" in stderr and "PYTHONUTF8=1" in stderr
    done = subprocess.run([str(Path(sys.executable).with_name("geoseg")), "segment", str(make_raster()), "-o",
                           os.fsencode(tmp_path / "sortie_é"), "-m", "threshold"], capture_output=True, env=env,
                          timeout=300)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 1 and "Traceback" not in stderr, stderr
    assert "output folder's name cannot be passed to GDAL in this locale" in stderr
    labels = make_raster(name="vérité.tif", bands=1)  # the labels of evaluate: a traceback from inside rasterio
    done = subprocess.run([str(Path(sys.executable).with_name("geoseg")), "evaluate", "--json", "-m", "threshold",
                           "--images", str(make_raster()), "--labels", os.fsencode(labels)], capture_output=True,
                          env=env, timeout=300)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 1 and "Traceback" not in stderr, stderr
    assert "cannot be passed to GDAL in this locale" in stderr and "PYTHONUTF8=1" in stderr
    assert json.loads(done.stdout)["exit_code"] == 1
    assert not (tmp_path / "sortie_é").exists()


def test_a_local_cluster_that_cannot_start_says_why_in_one_line(make_raster, tmp_path):
    """With few open files (ulimit -n 32) --workers 2 printed 197 lines of distributed's tracebacks."""
    import resource

    done = subprocess.run([str(Path(sys.executable).with_name("geoseg")), "segment", str(make_raster()), "-o",
                           str(tmp_path / "out"), "-m", "threshold", "--workers", "2"], capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32)), timeout=300)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "Error: --workers 2: the local Dask cluster could not start: this process may open only 32 files (ulimit -n). "
        "Raise the limit (ulimit -n 1024), or leave out --workers to run in threads."], done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_keras_model_runs_with_stderr_closed(make_raster, tmp_path):
    """TensorFlow's start-up lines are hidden by redirecting descriptor 2, which failed on a closed stderr: every
    command with a Keras model exited 1 without a word."""
    done = subprocess.run([str(Path(sys.executable).with_name("geoseg")), "segment", str(make_raster(shape=(64, 64))),
                           "-o", str(tmp_path / "out"), "--no-preview"], preexec_fn=lambda: os.close(2),
                          stdout=subprocess.DEVNULL, timeout=600)
    assert done.returncode == 0 and (tmp_path / "out" / "image_mask.tif").exists()


def _launched_with_a_ctrl_c_while_loading(tmp_path, *args: str, ignored: bool = False):
    """The console script's launcher, run with `args`, given a Ctrl-C as geoseg.cli is imported (its SIGINT
    ignored beforehand with `ignored`, as in `geoseg ... &` from a script)."""
    script = tmp_path / "launch.py"
    script.write_text(
        "import importlib.abc, os, signal, sys\n"
        + ("signal.signal(signal.SIGINT, signal.SIG_IGN)\n" if ignored else "")
        + "class CtrlC(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'geoseg.cli':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        return None\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        f"sys.argv = ['geoseg', *{list(args)!r}]\n"
        "from geoseg._launch import main\n"
        "main()\n")
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          preexec_fn=_ctrl_c_as_at_a_terminal)


def _ctrl_c_as_at_a_terminal() -> None:
    """A child's Ctrl-C as at a terminal, even where the suite runs with it ignored (`make test &` in a script, CI):
    Python then leaves it ignored, and these tests' Ctrl-C did nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_the_command_is_imported_exits_130_without_a_traceback(tmp_path):
    """The console script imported geoseg.cli (Dask, rasterio, click: 1-2 s) with Python's own handler: a Ctrl-C
    then printed a KeyboardInterrupt traceback."""
    done = _launched_with_a_ctrl_c_while_loading(tmp_path, "models")
    assert done.returncode == 130 and done.stderr == "" and done.stdout == ""
    assert "geoseg._launch:main" in (Path(__file__).parent.parent / "pyproject.toml").read_text()


def test_a_survey_rerun_whose_rasters_all_fail_says_so_without_a_traceback(run, make_raster, tmp_path):
    """The earlier batch files are kept then, and the command looked for this run's report: KeyError."""
    image, out = make_raster(), tmp_path / "out"
    assert run("survey", image, "-o", out, "-m", "threshold").exit_code == 0
    result = run("survey", image, "-o", out, "-m", "threshold", "--bands", "1,2,9")
    assert result.exit_code == 1 and "failed: " in result.stderr
    assert f"report: {out / 'survey_report.md'} (the earlier run's" in result.stderr


def test_a_ctrl_c_that_the_caller_ignores_stays_ignored_while_the_command_loads(tmp_path):
    """`geoseg ... &` in a script ignores the terminal's Ctrl-C; the launcher's handler ended such a run."""
    done = _launched_with_a_ctrl_c_while_loading(tmp_path, "--version", ignored=True)
    assert done.returncode == 0 and "version" in done.stdout, done.stderr


def test_an_empty_path_is_a_usage_error_not_the_working_folder(run, make_raster, tmp_path, monkeypatch):
    """`geoseg survey "$DIR"` with DIR unset segmented every raster under the working folder and exited 0;
    `evaluate --images ""` scored them all; `train --output ""` wrote into it."""
    image = make_raster(shape=(30, 40))
    monkeypatch.chdir(tmp_path)
    for args in (["survey", "", "-o", "s", "-m", "threshold"],
                 ["evaluate", "-m", "threshold", "--images", "", "--labels", image],
                 ["segment", image, "-o", "", "-m", "threshold"],
                 ["train", "-c", "x.toml", "--output", " "],
                 ["vectorize", "", "-o", "p.gpkg"]):
        result = run(*args)
        assert result.exit_code == 2 and "is empty (an unset shell variable?)" in result.output, (args, result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tif"]
    from geoseg.errors import InputError
    from geoseg.workflows import survey

    with pytest.raises(InputError, match="an empty path among the inputs"):
        survey([image, ""], tmp_path / "s", model="threshold")
    from geoseg import segment

    for call in (lambda: survey([image], "", model="threshold"), lambda: segment(image, "", model="threshold")):
        with pytest.raises(InputError, match="the output folder is an empty path"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tif"]


def test_a_blank_label_name_and_an_empty_class_list_are_usage_errors(run, make_raster, tmp_path):
    """--label-names 'water,,other' dropped the blank and scored label id 1 as other; vectorize --classes ''
    wrote an empty layer and exited 0."""
    image = make_raster(shape=(30, 40))
    result = run("evaluate", "-m", "threshold", "--images", image, "--labels", image, "--label-names", "water,,other")
    assert result.exit_code == 2 and "'water,,other' has a blank item" in result.output, result.output
    mask = run("segment", image, "-o", tmp_path / "m", "-m", "threshold", "--quiet")
    assert mask.exit_code == 0, mask.output
    for classes in ("", ","):
        result = run("vectorize", tmp_path / "m" / "image_mask.tif", "-o", tmp_path / "p.gpkg", "--classes", classes)
        assert result.exit_code == 2 and "names no class" in result.output, result.output
    assert not (tmp_path / "p.gpkg").exists()


@pytest.mark.parametrize("args", [["serve", "--max-mpx", "nan"], ["serve", "--max-mpx", "inf"],
                                  ["vectorize", "m.tif", "-o", "p.gpkg", "--min-area", "nan"],
                                  ["vectorize", "m.tif", "-o", "p.gpkg", "--simplify", "inf"],
                                  ["train", "-c", "x.toml", "--max-minutes", "nan"]])
def test_nan_and_inf_are_usage_errors(run, args):
    """click's FloatRange lets nan and inf through: serve --max-mpx nan was a ValueError traceback."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "is not a finite number" in result.output, result.output


def test_a_scheduler_address_without_a_port_is_one_line(run, make_raster, tmp_path):
    """--scheduler nonsense: 'ValueError: missing port number' as a traceback."""
    result = CliRunner().invoke(main, ["segment", str(make_raster()), "-o", str(tmp_path / "o"), "-m", "threshold",
                                       "--scheduler", "nonsense"])
    assert result.exit_code == 1 and "--scheduler: cannot reach a Dask scheduler at nonsense" in result.output
    assert not isinstance(result.exception, ValueError) and not (tmp_path / "o").exists()


@pytest.mark.parametrize("text, said", [("scale:0", "must be a finite number other than 0"),
                                        ("scale:nan", "'normalization.scale' must be a finite number"),
                                        ("percentile:98,2", "percentiles must satisfy 0 <= low < high <= 100"),
                                        ("meanstd:1,1,1/0,1,1", "must be above 0 in every band")])
def test_a_normalisation_no_card_could_hold_is_a_usage_error(run, make_raster, tmp_path, text, said):
    """--normalize scale:0 made every pixel 0 (one class, exit 0); the others failed with exit 1 after the model
    had loaded."""
    result = run("segment", make_raster(), "-o", tmp_path / "o", "-m", "threshold", "--normalize", text)
    assert result.exit_code == 2 and said in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_options_that_would_do_nothing_are_usage_errors(run, make_raster, tmp_path):
    """vectorize --specks merge without --min-area merged nothing, and --scheduler '' ran here, each without a
    word."""
    image = make_raster(shape=(30, 40))
    result = run("segment", image, "-o", tmp_path / "o", "-m", "threshold", "--scheduler", "")
    assert result.exit_code == 2 and "--scheduler" in result.output and "is empty" in result.output, result.output
    assert run("segment", image, "-o", tmp_path / "m", "-m", "threshold", "--quiet").exit_code == 0
    result = run("vectorize", tmp_path / "m" / "image_mask.tif", "-o", tmp_path / "p.gpkg", "--specks", "merge")
    assert result.exit_code == 2 and "give --min-area" in result.output, result.output


def test_compare_of_one_model_is_a_usage_error(run, make_raster):
    """It failed with exit 1 in the Python API's words, after loading the model."""
    result = run("compare", "--models", "threshold,", "--images", make_raster())
    assert result.exit_code == 2 and "compare needs two or more" in result.output, result.output


def test_the_command_puts_back_the_sigterm_handler_of_the_process_that_called_it(run):
    """CliRunner (or a notebook) kept the command's SIGTERM handler, so a CI runner's SIGTERM ended one test with
    SystemExit while the test run went on."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    assert run("models").exit_code == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_python_dash_m_geoseg_runs_the_command():
    """Where a venv's bin/ is not on PATH (cron, several venvs), `python -m geoseg` was "No module named
    geoseg.__main__" (h98)."""
    done = subprocess.run([sys.executable, "-m", "geoseg", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "geoseg" in done.stdout, done.stderr


def _interrupt_disposition() -> str:
    return str(signal.getsignal(signal.SIGINT))


def _state_machine_level() -> int:
    import logging

    return logging.getLogger("distributed.worker.state_machine").level


def test_workers_of_a_local_cluster_leave_ctrl_c_to_geoseg():
    """Ctrl-C reaches the terminal's whole process group: each worker process of --workers printed a
    KeyboardInterrupt traceback, and the state machine a warning per chunk under way, before geoseg's one line (h110)."""
    import logging

    from geoseg.cli.segment import _client

    before = signal.getsignal(signal.SIGINT)
    with _client(1, None) as client:
        assert signal.getsignal(signal.SIGINT) is before  # this process still stops on Ctrl-C
        assert set(client.run(_interrupt_disposition).values()) == {str(signal.SIG_IGN)}
        assert set(client.run(_state_machine_level).values()) == {logging.ERROR}


def test_segment_summary_gives_shares_by_area_and_one_unit(run, tmp_path):
    """On a 50-70 N geographic scene the summary gave shares of pixels (other 59.3%) where the preview, scene and the
    web page give shares of the ground (61.02%), and its nodata line picked a unit of its own (h127)."""
    from rasterio.transform import from_origin

    rgb = np.zeros((3, 200, 100), np.uint8)
    rgb[:] = np.array([200, 175, 130], np.uint8)[:, None, None]  # sand
    rgb[:, :100] = np.array([20, 60, 200], np.uint8)[:, None, None]  # water in the northern half (smaller pixels)
    rgb[:, 190:, :] = 0  # nodata along the south
    path = tmp_path / "north.tif"
    with rasterio.open(path, "w", driver="GTiff", width=100, height=200, count=3, dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(10, 70, 0.1, 0.1), nodata=0) as ds:
        ds.write(rgb)
    result = run("segment", path, "-o", tmp_path / "out", "-m", "threshold?water=0.3&vegetation=0.5", "--json")
    assert result.exit_code == 0, result.output
    classes = {c["name"]: c for c in json.loads(result.stdout)["classes"]}
    ground = classes["water"]["area_m2"] / (classes["water"]["area_m2"] + classes["other"]["area_m2"])
    pixels = classes["water"]["pixels"] / (classes["water"]["pixels"] + classes["other"]["pixels"])
    assert abs(ground - pixels) > 0.02  # the scene's pixels differ in area
    text = run("segment", path, "-o", tmp_path / "out2", "-m", "threshold?water=0.3&vegetation=0.5").stderr
    assert f"water: {100 * ground:5.1f}%" in text and "km²" in text.split("(no data)")[1]


def test_a_glob_the_shell_expanded_after_an_option_is_told_to_be_quoted(run, make_raster, tmp_path):
    """`--images tiles/*.jpg` unquoted: click listed every file after the first (63 Dubai paths) as "unexpected
    extra arguments", and said nothing of the quotes that fix it."""
    images = [str(make_raster(name=f"t{i}.tif")) for i in range(40)]
    result = run("evaluate", "-m", "threshold", "--images", *images, "--labels", "x.tif")
    assert result.exit_code == 2
    assert "quote a glob ('tiles/*.tif') so that geoseg expands it" in result.output
    assert len(result.output) < 700 and images[-1] not in result.output
    # a command of one positional raster: one too many, which quotes would not mend (h136)
    scene = run("scene", images[0], images[1], "-o", tmp_path / "z")
    assert scene.exit_code == 2 and "quote a glob" not in scene.output and "unexpected extra argument" in scene.output


def test_summaries_write_large_areas_and_counts_with_thousands_separators(run, make_raster, tmp_path):
    """30866.9017 km² beside 244,358.8 m², "(no data): 184823 px", and scene's shares to 2 decimals where
    segment's have 1 (h130)."""
    from geoseg.cli.options import area_texts

    assert [t.strip() for t in area_texts([30866.9017e6, 244358.8])] == ["30,866.9017 km²", "0.2444 km²"]
    data = np.full((3, 1200, 1100), 120, np.uint8)
    data[:, :, 900:] = 0
    image = make_raster(shape=(1200, 1100), data=data, nodata=0)
    result = run("segment", image, "-o", tmp_path / "s", "-m", "threshold", "--no-preview")
    assert result.exit_code == 0 and "(no data): 240,000 px" in result.stderr, result.stderr
    scene = run("scene", image, "-o", tmp_path / "z", "-m", "threshold")
    shares = [line for line in scene.stderr.splitlines() if "m²" in line]
    assert len(shares) == 3 and all(re.search(r": +\d+\.\d% ", line) for line in shares), scene.stderr


def test_scene_survey_and_flood_take_no_resample_which_a_coarse_raster_s_refusal_names(run, make_raster, model_dir,
                                                                                          tmp_path):
    """A raster over 8 times coarser than the card's pixel_size is refused with "pass --no-resample", an option
    that only segment had: scene and survey answered "No such option" (h136)."""
    import shutil

    from rasterio.transform import from_origin

    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(model_dir / "tiny-fcn.keras", folder / "fine.keras")
    card = json.loads((model_dir / "tiny-fcn.json").read_text())
    (folder / "fine.json").write_text(json.dumps({**card, "name": "fine", "pixel_size": 0.1}))
    coarse = str(make_raster(shape=(40, 50), transform=from_origin(500000.0, 2800000.0, 30.0, 30.0)))  # 180 Mpx
    model = str(folder / "fine.keras")
    refused = run("scene", coarse, "-o", str(tmp_path / "a"), "-m", model)
    assert refused.exit_code == 1 and "--no-resample" in refused.output
    assert run("scene", coarse, "-o", str(tmp_path / "b"), "-m", model, "--no-resample").exit_code == 0
    result = run("survey", coarse, "-o", str(tmp_path / "c"), "-m", model, "--no-resample", "--no-vector", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["failed"] == []
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert '"resample": false' in json.dumps(manifest)
    # flood was refused alike, and had no --no-resample to follow the advice with (h166); with --pre both dates
    pre = str(make_raster(name="pre.tif", shape=(40, 50), seed=3,
                          transform=from_origin(500000.0, 2800000.0, 30.0, 30.0)))
    refused = run("flood", coarse, "-o", str(tmp_path / "d"), "-m", model, "--water-class", "class1")
    assert refused.exit_code == 1 and "--no-resample (segment, scene, flood, survey, evaluate and compare" in refused.output
    flooded = run("flood", coarse, "--pre", pre, "-o", str(tmp_path / "e"), "-m", model, "--water-class", "class1",
                  "--no-resample", "--json")
    assert flooded.exit_code == 0, flooded.output
    with rasterio.open(json.loads(flooded.stdout)["outputs"]["tif"]) as ds:
        assert (ds.width, ds.height) == (50, 40)
    ndwi = run("flood", coarse, "-o", str(tmp_path / "f"), "--method", "ndwi", "--no-resample")
    assert ndwi.exit_code == 2 and "--no-resample only applies to --method model" in ndwi.output
    # evaluate and compare too: refused with the advice, and no such option
    with rasterio.open(json.loads(flooded.stdout)["outputs"]["post_mask"]) as ds:
        labels = str(tmp_path / "labels.tif")
        with rasterio.open(labels, "w", **ds.profile) as out:
            out.write(ds.read())
    scored = ["--images", coarse, "--labels", labels]
    assert "--no-resample" in run("evaluate", "-m", model, *scored).output
    assert run("evaluate", "-m", model, *scored, "--no-resample").exit_code == 0
    compared = run("compare", "--models", f"{model},threshold", *scored, "--no-resample", "--json")
    assert compared.exit_code == 0, compared.output


@contextlib.contextmanager
def _speaking_server(sent: bytes, *, hang_up: bool):
    """A local TCP port whose server sends `sent` to each connection first, then closes it (`hang_up`) or holds it:
    what a --scheduler address that is no Dask scheduler answers. Yields the port."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []

    def speak():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(sent)
            if hang_up:
                conn.close()
            else:
                held.append(conn)

    threading.Thread(target=speak, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in held:
            conn.close()


def test_a_scheduler_address_that_is_no_dask_scheduler_gets_one_line(run, make_raster, tmp_path):
    """A server that speaks first (SSH's banner) was read as a message length: "Unable to allocate 2.82 EiB", a
    69-line traceback and no JSON on stdout; a host name that does not resolve waited 10 s for a "timeout" (h134)."""
    image = make_raster(shape=(20, 20))
    with _speaking_server(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", hang_up=False) as port:
        result = run("segment", image, "-o", tmp_path / "a", "-m", "threshold", "--scheduler",
                     f"tcp://127.0.0.1:{port}", "--json")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "is not a Dask scheduler" in json.loads(result.stdout)["error"]
    typo = run("segment", image, "-o", tmp_path / "b", "-m", "threshold", "--scheduler", "tcp://nosuchhost.invalid:8786")
    assert typo.exit_code == 1 and "the host name 'nosuchhost.invalid'" in typo.output and "does not resolve" in typo.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_server_that_sends_eight_bytes_and_closes_is_no_scheduler_in_one_line(run, make_raster, tmp_path):
    """Eight zero bytes, then the connection closed, read as a Dask message of no frames: a 40-line traceback that
    ended in "struct.error: unpack_from requires a buffer of at least 8 bytes", and no JSON on stdout (h142)."""
    import dask

    before = dask.config.get("scheduler", None)
    with _speaking_server(bytes(8), hang_up=True) as port:
        result = run("segment", make_raster(shape=(20, 20)), "-o", tmp_path / "a", "-m", "threshold", "--scheduler",
                     f"tcp://127.0.0.1:{port}", "--json")
    # the failed Client had made itself dask's scheduler: later computes in the process found "no Client active"
    assert dask.config.get("scheduler", None) == before
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    error = json.loads(result.stdout)["error"]
    assert f"what answered at tcp://127.0.0.1:{port} is not a Dask scheduler" in error and "\n" not in error, error
    assert not (tmp_path / "a").exists()


def test_a_slow_resolver_is_held_to_the_scheduler_connection_s_limit(run, make_raster, tmp_path, monkeypatch):
    """The host-name lookup ran before the CONNECT_S limit began: a slow resolver held the command past it (h138)."""
    import importlib
    import socket
    import time

    command = importlib.import_module("geoseg.cli.segment")  # the module: geoseg.cli.segment is also the command
    monkeypatch.setattr(command, "CONNECT_S", 1)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: time.sleep(20))
    started = time.monotonic()
    result = run("segment", make_raster(shape=(20, 20)), "-o", tmp_path / "o", "-m", "threshold", "--scheduler",
                 "tcp://slow.example:8786")
    assert result.exit_code == 1 and "answered as a Dask scheduler within 1 s" in result.output, result.output
    assert time.monotonic() - started < 10


def test_models_check_blames_a_damaged_image_not_the_model(run, make_raster, model_dir, tmp_path):
    """An image larger than --window whose centre is cut off (a truncated download) was reported as the model
    failing: "FAILED ... fails on the image's 32 px chunks (RasterioIOError: Read failed...); check 'multiple_of'
    and 'tile_size' in the card", exit 1 (h145). It is the image's fault: a warning that names it, as for a
    damaged image that fits in the window."""
    whole = make_raster(name="whole.tif", shape=(256, 256), tiled=True, blockxsize=64, blockysize=64)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    result = run("models", "check", model_dir / "tiny-fcn.keras", "--image", cut, "--window", "128", "--chunk", "32",
                 "--json")
    assert result.exit_code == 0, result.output
    checked = json.loads(result.stdout)["models"][0]
    assert checked["ok"] and checked["seam_agreement"] is None
    assert "multiple_of" not in result.output and "RasterioIOError" not in result.output
    assert any("seam check not run" in w and "cut.tif" in w and "truncated or damaged" in w
               for w in checked["warnings"]), checked


@pytest.mark.parametrize("what", ["no layer", "raster", "empty"])
def test_a_layer_that_is_no_layer_is_named_as_such(run, make_raster, tmp_path, what):
    """A GeoPackage saved without layers (or with all of them deleted) and a raster given as --zones, --aoi or
    vector --labels were "not recognized as being in a supported file format ... specify the correct driver
    explicitly by prefixing the file path with '<DRIVER>:'", which sent users after GDAL's drivers (h145)."""
    import sqlite3

    import geopandas as gpd
    import shapely

    image = make_raster(shape=(40, 40))
    layer = tmp_path / "zones.gpkg"
    if what == "no layer":  # a GeoPackage whose only layer was deleted (ogrinfo -sql "DROP TABLE gone")
        gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)], crs="EPSG:32640").to_file(layer, layer="gone")
        con = sqlite3.connect(layer)
        for (trigger,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            con.execute(f'DROP TRIGGER "{trigger}"')
        for statement in ("DROP TABLE gone", "DELETE FROM gpkg_contents", "DELETE FROM gpkg_geometry_columns"):
            con.execute(statement)
        con.commit()
        con.close()
        expected = "holds no vector layer"
    elif what == "raster":
        layer = make_raster(name="zones.tif", shape=(10, 10))
        expected = "it is a raster, not a vector layer"
    else:
        layer.write_bytes(b"")
        expected = "the file is empty (0 bytes)"
    for args in (["scene", image, "-o", tmp_path / "s", "-m", "threshold", "--zones", layer],
                 ["flood", image, "-o", tmp_path / "f", "-m", "threshold", "--aoi", layer],
                 ["evaluate", "-m", "threshold", "--images", image, "--labels", layer, "--label-format", "vector"]):
        result = run(*args)
        assert result.exit_code == 1, result.output
        assert expected in result.output and "<DRIVER>" not in result.output, result.output


def test_train_refuses_a_config_of_one_class(run, tmp_path):
    """One [[classes]] entry loaded the data and built the network, then failed as a legacy sigmoid model whose
    card "lists 1 class(es)" ("end the model with a sigmoid"), and left NAME.checkpoints/run.json (h145)."""
    config = tmp_path / "one.toml"
    config.write_text('name = "one"\noutput = "runs"\n[data]\nimages = ["img/*.tif"]\nlabels = "{stem}.tif"\n'
                      '[[classes]]\nname = "water"\n')
    result = run("train", "--config", config)
    assert result.exit_code == 1
    assert "one class (water)" in result.output and "[[classes]]" in result.output and "sigmoid" not in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("signal_exception, status, said", [(KeyboardInterrupt, 130, "Interrupted"),
                                                            (SystemExit(143), 143, "Terminated (SIGTERM)")])
def test_a_run_with_json_that_a_signal_ends_still_prints_one_object(run, make_raster, tmp_path, monkeypatch,
                                                                     signal_exception, status, said):
    """`segment BIG.tif --json | jq` after Ctrl-C or a scheduler's SIGTERM got an empty stdout, which jq cannot parse,
    while a failed run (exit 1) prints its error as the object (h149)."""
    import geoseg.pipeline

    def interrupted(*args, **kwargs):
        raise signal_exception

    monkeypatch.setattr(geoseg.pipeline, "segment", interrupted)
    result = run("segment", make_raster(), "-o", tmp_path / "out", "-m", "threshold", "--json")
    assert result.exit_code == status and json.loads(result.stdout) == {"error": said, "exit_code": status}
    plain = run("segment", make_raster(), "-o", tmp_path / "out", "-m", "threshold")
    assert plain.exit_code == status and plain.stdout == ""  # without --json, stdout stays empty


def test_serve_stopped_by_sigterm_speaks_of_no_outputs_of_a_run(tmp_path, monkeypatch):
    """SIGTERM to `geoseg serve` said "outputs of this run that were not complete are removed", words for a
    segment or survey, which write outputs; a server writes none (h149)."""
    import socket

    import geoseg.web

    class Jobs:
        root = tmp_path / "server"

        def stop(self):
            return 0

    class App:
        extensions = {"geoseg_jobs": Jobs()}

        def run(self, **kwargs):
            raise SystemExit(143)  # what SIGTERM's handler raises inside werkzeug's loop

    monkeypatch.setattr(geoseg.web, "create_app", lambda config: App())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    before = tempfile.gettempdir()
    result = CliRunner().invoke(main, ["serve", "--port", port])
    assert result.exit_code == 143 and "Terminated (SIGTERM)" in result.stderr, result.output
    assert tempfile.gettempdir() == before  # the server's, deleted with it, failed every later test's temp folder
    assert "outputs of this run" not in result.stderr


def test_a_model_that_is_empty_a_folder_or_a_raster_is_named_as_such(run, make_raster, tmp_path):
    """`models show ''` said "`.` is a folder; -m (model=) takes ..."; a folder dir.keras was "model file dir.keras
    not found"; -m of a raster was "no model named 'small.tif'", as if a model of that name were missing (h149)."""
    empty = run("models", "show", "")
    assert empty.exit_code == 1 and "empty" in empty.output and ". is a folder" not in empty.output, empty.output
    folder = tmp_path / "dir.keras"
    folder.mkdir()
    shown = run("models", "show", folder)
    assert shown.exit_code == 1 and f"{folder} is a folder, not a model file" in shown.output, shown.output
    raster = make_raster(name="small.tif")
    for args in (["models", "show", raster], ["segment", raster, "-o", tmp_path / "out", "-m", raster]):
        result = run(*args)
        assert result.exit_code == 1 and f"{raster} is a raster, not a model" in result.output, result.output
        assert "no model named" not in result.output


def test_survey_into_its_input_folder_says_to_pick_another_output_folder(run, make_raster, tmp_path):
    """`survey sv_in -o sv_in` said only "no rasters found in sv_in outside the output folder sv_in" (h149)."""
    folder = tmp_path / "sv_in"
    folder.mkdir()
    make_raster(name="sv_in/a.tif")
    result = run("survey", folder, "-o", folder, "-m", "threshold")
    assert result.exit_code == 1 and "or pick another output folder (-o)" in result.output, result.output


def _unnamed_mask(tmp_path) -> Path:
    """A mask from elsewhere: classes 0, 1 and 2, no CLASS_NAMES tag and no colour table."""
    data = np.zeros((1, 30, 40), np.uint8)
    data[0, 5:15, 5:20], data[0, 20:28, 25:35] = 1, 2
    path = tmp_path / "foreign.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=30, count=1, dtype="uint8", crs="EPSG:32640",
                       transform=rasterio.transform.from_origin(500000, 2800000, 0.5, 0.5)) as ds:
        ds.write(data)
    return path


def test_vectorize_classes_of_a_mask_without_names_say_which_ids_it_holds(run, tmp_path, caplog):
    """On a mask without class names, --classes 99 wrote 0 polygons, exit 0 and no word; --classes nosuch said
    "Classes: none named", without the ids to pass instead (h149)."""
    mask = _unnamed_mask(tmp_path)
    missing = run("vectorize", mask, "-o", tmp_path / "a.gpkg", "--classes", "99")
    assert missing.exit_code == 0 and "holds no class 99" in caplog.text and "classes 0, 1, 2" in caplog.text
    caplog.clear()
    named = run("vectorize", mask, "-o", tmp_path / "b.gpkg", "--classes", "nosuch")
    assert named.exit_code == 1 and "none named" not in named.output and "0, 1, 2" in named.output, named.output
    kept = run("vectorize", mask, "-o", tmp_path / "c.gpkg", "--classes", "1")
    assert kept.exit_code == 0 and "holds no class" not in caplog.text, kept.output


@pytest.mark.parametrize("bands", ["1,,2", "1,2,", ""])
def test_bands_with_a_blank_item_are_refused(run, make_raster, tmp_path, bands):
    """--bands 1,,2 ran bands (1, 2), the blank dropped without a word (h149)."""
    result = run("segment", make_raster(), "-o", tmp_path / "out", "-m", "threshold", "--bands", bands)
    assert result.exit_code == 2 and "such as 1,2,3" in result.output and "empty" in result.output, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["evaluate", "-m", "threshold"],
                                     ["compare", "--models", "threshold,edges-watershed"]])
def test_a_bad_ignore_colour_is_a_usage_error_as_a_bad_label_colour_is(run, make_raster, tmp_path, command):
    """--ignore-colors zz exited 1, as a failed run does, while --label-colors red exits 2 (h149)."""
    image = make_raster()
    result = run(*command, "--images", image, "--labels", image, "--label-format", "color", "--ignore-colors", "zz")
    assert result.exit_code == 2 and "Usage:" in result.output and "'#9B9B9B'" in result.output, result.output


def test_vectorize_refuses_a_simplify_tolerance_beyond_the_mask(run, tmp_path, caplog):
    """--simplify 1e300 printed shapely's "RuntimeWarning: overflow encountered in coverage_simplify" and wrote
    the polygons unsimplified, exit 0 (h149)."""
    mask = _unnamed_mask(tmp_path)  # 20 x 15 m
    result = run("vectorize", mask, "-o", tmp_path / "v.gpkg", "--simplify", "1e300")
    assert result.exit_code == 1 and "RuntimeWarning" not in result.output, result.output
    assert "more than the mask's extent (20.0 x 15.0 m)" in result.output and not (tmp_path / "v.gpkg").exists()
    assert run("vectorize", mask, "-o", tmp_path / "v.gpkg", "--simplify", "1").exit_code == 0
    assert run("vectorize", mask, "-o", tmp_path / "w.gpkg", "--simplify", "25").exit_code == 1
    # the corner tile of a retiled mosaic at the tolerance of the rest is warned of, not refused: a loop over the
    # tiles went on (h152)
    corner = tmp_path / "corner.tif"
    with rasterio.open(corner, "w", driver="GTiff", width=3, height=2, count=1, dtype="uint8", crs="EPSG:32640",
                       transform=rasterio.transform.from_origin(500000, 2800000, 0.5, 0.5)) as ds:
        ds.write(np.ones((1, 2, 3), np.uint8))
    tile = run("vectorize", corner, "-o", tmp_path / "t.gpkg", "--simplify", "5")
    assert tile.exit_code == 0 and "more than the mask's extent (1.5 x 1.0 m)" in caplog.text, tile.output


def test_vectorize_tolerance_message_of_a_mask_placed_without_a_crs(run, tmp_path):
    """A mask with a geotransform in degrees and no CRS (a .tfw beside it, say): the refusal said "2 px is more than
    the mask's extent (0.0 x 0.0 px)" of 40 x 30 px. --simplify is in pixels there, as --min-area is (h162)."""
    data = np.zeros((1, 30, 40), np.uint8)
    data[0, 5:15, 5:20] = 1
    path = tmp_path / "placed.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=30, count=1, dtype="uint8",
                       transform=rasterio.transform.from_origin(10.0, 50.0, 0.0001, 0.0001)) as ds:
        ds.write(data)
    assert run("vectorize", path, "-o", tmp_path / "v.gpkg", "--simplify", "2").exit_code == 0  # 2 px, not 2°
    result = run("vectorize", path, "-o", tmp_path / "w.gpkg", "--simplify", "50")
    assert result.exit_code == 1, result.output
    assert "0.0 x 0.0" not in result.output, result.output
    assert "50 px (it has no CRS) is more than the mask's extent (40.0 x 30.0 px)" in result.output, result.output


def test_vectorize_warns_of_a_rotated_corner_tile_as_of_a_north_up_one(run, tmp_path, caplog):
    """TINY_TILE_PX was compared with the tile's bounds: a 12 px tile turned 45 degrees spans 17 px of them, and was
    refused where the same tile north-up is only warned of."""
    for name, transform in (("north.tif", rasterio.transform.from_origin(500000, 2800000, 0.5, 0.5)),
                            ("turned.tif", rasterio.transform.from_origin(500000, 2800000, 0.5, 0.5)
                             * rasterio.Affine.rotation(45))):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=12, height=12, count=1, dtype="uint8",
                           crs="EPSG:32640", transform=transform) as ds:
            ds.write(np.ones((1, 12, 12), np.uint8))
        result = run("vectorize", tmp_path / name, "-o", tmp_path / f"{name}.gpkg", "--simplify", "10")
        assert result.exit_code == 0, (name, result.output)


def test_a_survey_rerun_that_only_turns_previews_on_says_the_masks_were_kept(run, make_raster, tmp_path):
    """It said '2 done, 0 skipped (already done)': as if segmented again, where the masks were the earlier run's."""
    images = [make_raster(name=f"s{i}.tif", shape=(30, 40), seed=i) for i in range(2)]
    out = tmp_path / "out"
    first = run("survey", *images, "-o", out, "-m", "threshold", "--no-preview")
    assert "2 done, 0 skipped (already done), 0 failed" in first.stderr
    again = run("survey", *images, "-o", out, "-m", "threshold")
    assert again.exit_code == 0, again.output
    assert "0 done, 2 kept (the earlier run's masks; previews written), 0 skipped (already done)" in again.stderr
    data = json.loads(run("survey", *images, "-o", out, "-m", "threshold", "--no-preview", "--json").stdout)
    assert not data["done"] and [e["switched"] for e in data["kept"]] == [["preview removed"]] * 2
