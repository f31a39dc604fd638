"""The web app: routes and errors with Flask's test client, and one run in a real headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import contextlib
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from geoseg.web import create_app


@pytest.fixture
def app(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(model_dir))
    return create_app({"GEOSEG_DATA_DIR": str(tmp_path / "web"), "GEOSEG_MAX_PIXELS": 200_000,
                       "MAX_CONTENT_LENGTH": 5 * 1024 * 1024, "TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()


def _png(rows=60, cols=80, seed=0, flat=False, grey=False, paletted=False) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    pixels = np.zeros((rows, cols, 3), np.uint8) if flat else rng.integers(0, 255, (rows, cols, 3), np.uint8)
    image = Image.fromarray(pixels[..., 0] if grey else pixels)
    (image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16) if paletted else image).save(buffer, format="PNG")
    return buffer.getvalue()


def _short_png(cols, rows) -> bytes:
    """A PNG whose header says `cols` x `rows` RGB pixels but whose pixel data (IDAT) is 10 zero bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", cols, rows, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))


def _wait_for(condition, timeout=60):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _wait(client, job_id, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").get_json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError("job did not finish")


def test_models_api_lists_registry(client):
    models = {m["name"]: m for m in client.get("/api/models").get_json()["models"]}
    assert {"tiny-fcn", "threshold", "edges-watershed"} <= set(models)
    assert models["tiny-fcn"]["download"] == "/models/tiny-fcn/download" and models["threshold"]["download"] is None
    # the default first, as `geoseg models` lists it (it came last, under 8 baselines), and first on the page
    listed = client.get("/api/models").get_json()["models"]
    assert listed[0]["name"] == "landcover-unet" and listed[0]["default"]
    page = client.get("/").get_data(as_text=True)
    assert page.index('value="landcover-unet"') < page.index('value="threshold"')


def test_segment_compare_and_download(client, make_raster, tmp_path):
    tif = make_raster(shape=(60, 80))
    label = io.BytesIO()
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(label, format="PNG")
    response = client.post("/api/segment", data={
        "image": (io.BytesIO(tif.read_bytes()), "../../etc/passwd.tif"), "models": "tiny-fcn,threshold,watershed-regions",
        "label": (io.BytesIO(label.getvalue()), "label.png")}, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done", job["error"]
    assert job["name"] == "passwd.tif"  # the user's name is sanitised: its last part, no path
    assert [m["model"] for m in job["result"]["models"]] == ["tiny-fcn", "threshold", "watershed-regions"]
    assert 0 <= job["result"]["agreement_pct"] <= 100
    assert {r["model"] for r in job["result"]["iou"]} == {"tiny-fcn", "threshold"}  # regions have no classes
    with client.get(job["files"]["m0_mask.tif"]) as mask:
        assert mask.status_code == 200
        with rasterio.MemoryFile(mask.data) as memfile, memfile.open() as ds, rasterio.open(tif) as src:
            assert (ds.crs, ds.transform) == (src.crs, src.transform)  # georeferenced like the upload
    with client.get(job["files"]["m0_polygons.gpkg"]) as gpkg:
        assert gpkg.status_code == 200 and gpkg.data[:15] == b"SQLite format 3"
        import pyogrio

        (tmp_path / "p.gpkg").write_bytes(gpkg.data)
        assert [name for name, _ in pyogrio.list_layers(tmp_path / "p.gpkg")] == ["passwd_polygons"]  # was input_
    with client.get(job["files"]["input"]) as upload:
        assert "passwd.tif" in upload.headers["Content-Disposition"]  # was "etc_passwd_input", no extension
    assert [m["keras"] for m in job["result"]["models"]] == [True, False, False]  # tta/precision apply to the first
    with client.get(job["files"]["m1_polygons.geojson"]) as geojson:  # RFC 7946: longitude and latitude
        data = geojson.get_json()
        assert data["type"] == "FeatureCollection" and data["crs"]["properties"]["name"].endswith("CRS84")
        lon, lat = data["features"][0]["geometry"]["coordinates"][0][0]
        assert -180 <= lon <= 180 and -90 <= lat <= 90  # it held the upload's UTM metres
    with client.get(job["files"]["m1_mask.tif"]) as mask:  # saved files say which model made them
        assert "passwd_threshold_mask.tif" in mask.headers["Content-Disposition"]
    with client.get(job["files"]["m1_mask.zip"]) as bundle:  # the GeoTIFF alone opened in QGIS with no class named
        assert "passwd_threshold_mask.zip" in bundle.headers["Content-Disposition"]
        archive = zipfile.ZipFile(io.BytesIO(bundle.data))
        assert sorted(archive.namelist()) == ["passwd_threshold_mask.qml", "passwd_threshold_mask.tif",
                                              "passwd_threshold_mask.tif.aux.xml"]
        archive.extractall(tmp_path / "qgis")
    import xml.etree.ElementTree as ET

    threshold = next(m for m in job["result"]["models"] if m["model"] == "threshold")
    sidecar = ET.parse(tmp_path / "qgis" / "passwd_threshold_mask.tif.aux.xml").getroot()
    assert [c.text for c in sidecar.iter("Category")] == [c["name"] for c in threshold["classes"]]
    with client.get("/models/tiny-fcn/download") as bundle:
        assert sorted(zipfile.ZipFile(io.BytesIO(bundle.data)).namelist()) == ["tiny-fcn.json", "tiny-fcn.keras"]


def test_a_legacy_h5_model_downloads_with_its_card(tmp_path, model_dir, monkeypatch):
    """The page lists a legacy NAME.h5 with a download link, which answered 500: it zipped NAME.keras."""
    import keras

    folder = tmp_path / "legacy"
    folder.mkdir()
    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.Conv2D(3, 1, activation="softmax")(inputs)).save(folder / "old.h5")
    card = json.loads((model_dir / "tiny-fcn.json").read_text())
    (folder / "old.json").write_text(json.dumps({**card, "name": "old", "margin": 0}))
    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(folder))
    client = create_app({"GEOSEG_DATA_DIR": str(tmp_path / "web"), "TESTING": True}).test_client()
    with client.get("/models/old/download") as bundle:
        assert bundle.status_code == 200
        assert sorted(zipfile.ZipFile(io.BytesIO(bundle.data)).namelist()) == ["old.h5", "old.json"]


def test_region_colours_stay_out_of_the_agreement(client, make_raster, tmp_path):
    from geoseg.models import get_segmenter
    from geoseg.web.jobs import _agreement

    response = client.post("/api/segment", data={
        "image": (io.BytesIO(make_raster(shape=(60, 80)).read_bytes()), "a.tif"),
        "models": "threshold,region-growing,watershed-regions"}, content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done", job["error"]
    masks = []
    for key, model in (("m0", "threshold"), ("m1", "region-growing")):
        with client.get(job["files"][f"{key}_mask.tif"]) as mask:
            (tmp_path / f"{key}.tif").write_bytes(mask.data)
        masks.append((tmp_path / f"{key}.tif", get_segmenter(model).card))
    # counted with the regions, whose colours share no name with a class, the models would agree nowhere
    assert job["result"]["agreement_pct"] == _agreement(masks) > 50


def test_the_agreement_is_counted_on_the_whole_masks(client, make_raster, tmp_path):
    """It was counted on the page's pictures of the masks, of at most 1024 px (64% of a 1280 x 1000 upload's
    pixels); `geoseg compare` counts every pixel."""
    from geoseg.models import get_segmenter
    from geoseg.workflows.evaluate import _Disagreement

    data = np.random.default_rng(3).integers(0, 256, (3, 40, 1500), dtype=np.uint8)
    response = client.post("/api/segment", data={
        "image": (io.BytesIO(make_raster(data=data).read_bytes()), "wide.tif"),
        "models": "threshold,region-growing"}, content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done", job["error"]
    masks = []
    for key in ("m0", "m1"):
        with client.get(job["files"][f"{key}_mask.tif"]) as mask, rasterio.MemoryFile(mask.data) as memfile, \
                memfile.open() as ds:
            masks.append(ds.read(1))
    count = _Disagreement([get_segmenter(m).card for m in ("threshold", "region-growing")])(np.stack(masks))
    assert job["result"]["agreement_pct"] == round(100 * (count == 0).sum() / (count != 255).sum(), 2)


def test_colour_label_upload_is_scored_by_the_models_colours(client, make_raster):
    from geoseg.models import get_segmenter

    water = get_segmenter("threshold").card.classes[1]
    tif = make_raster(shape=(60, 80))
    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[:] = [int(water.in_labels[i:i + 2], 16) for i in (1, 3, 5)]  # the colour labels give water
    label = io.BytesIO()
    Image.fromarray(rgb).save(label, format="PNG")
    response = client.post("/api/segment", data={
        "image": (io.BytesIO(tif.read_bytes()), "a.tif"), "models": "threshold",
        "label": (io.BytesIO(label.getvalue()), "label.png")}, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done", job["error"]
    iou = job["result"]["iou"][0]["iou"]
    assert set(iou) == {c.name for c in get_segmenter("threshold").card.classes}
    assert iou[water.name] is not None  # every pixel labelled water, so water is scored (0 if never predicted)


def test_a_geoseg_mask_or_a_label_in_the_colours_the_page_shows_is_scored(client, make_raster):
    """Once a class's label colour differed from the colour the page draws, the page's own mask download as the
    label scored nothing (it had scored 1.0), nor did a label drawn in the legend's colours (review, helper h76)."""
    from geoseg.models import get_segmenter

    tif = make_raster(shape=(60, 80))

    def run(label, name):
        response = client.post("/api/segment", data={
            "image": (io.BytesIO(tif.read_bytes()), "a.tif"), "models": "threshold",
            "label": (io.BytesIO(label), name)}, content_type="multipart/form-data")
        assert response.status_code == 202, response.get_json()
        job = _wait(client, response.get_json()["id"])
        assert job["status"] == "done", job["error"]
        return job

    first = run(tif.read_bytes(), "a.tif")  # any label: this run gives the mask
    with client.get(first["files"]["m0_mask.tif"]) as mask:
        own = run(mask.data, "a_threshold_mask.tif")
    assert own["result"]["iou"][0]["mean_iou"] == 1.0 and own["warnings"] == [], own
    water = get_segmenter("threshold").card.classes[1]
    assert water.label_color and water.label_color != water.color
    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[:] = [int(water.color[i:i + 2], 16) for i in (1, 3, 5)]  # as the legend draws water
    label = io.BytesIO()
    Image.fromarray(rgb).save(label, format="PNG")
    drawn = run(label.getvalue(), "drawn.png")
    assert drawn["result"]["iou"][0]["iou"]["water"] is not None and not any("nothing" in w for w in drawn["warnings"])
    models = client.get("/api/models").get_json()["models"]
    threshold = next(m for m in models if m["name"] == "threshold")
    assert threshold["classes"][1] == {"name": "water", "color": water.color, "label_color": water.label_color}


def _label_in_colours(classes) -> io.BytesIO:
    """A 60 x 80 PNG label of three bands of rows, in the colours of the first three `classes`."""
    rgb = np.zeros((60, 80, 3), np.uint8)
    for i, rows in enumerate((slice(0, 20), slice(20, 40), slice(40, 60))):
        rgb[rows] = [int(classes[i].color[k:k + 2], 16) for k in (1, 3, 5)]
    label = io.BytesIO()
    Image.fromarray(rgb).save(label, format="PNG")
    return label


def test_a_label_is_read_in_the_colours_of_the_model_it_matches_whatever_the_order(client, make_raster):
    """The label was read by the first ticked model's colours, and the page lists the baselines first: a
    label in the U-Net's colours then scored it 0 (or nothing), and the IoU changed with the model order."""
    from geoseg.models import get_segmenter

    classes = get_segmenter("tiny-fcn").card.classes
    label = _label_in_colours(classes)
    rows = {}
    for order in ("threshold,tiny-fcn", "tiny-fcn,threshold"):
        response = client.post("/api/segment", data={
            "image": (io.BytesIO(make_raster(shape=(60, 80)).read_bytes()), "a.tif"), "models": order,
            "label": (io.BytesIO(label.getvalue()), "truth.png")}, content_type="multipart/form-data")
        job = _wait(client, response.get_json()["id"])
        assert job["status"] == "done", job["error"]
        assert job["result"]["label_read_as"] == "tiny-fcn" and job["warnings"] == []
        rows[order] = {r["model"]: r for r in job["result"]["iou"]}
    assert rows["threshold,tiny-fcn"] == rows["tiny-fcn,threshold"]
    assert all(v is not None for v in rows["threshold,tiny-fcn"]["tiny-fcn"]["iou"].values())


def test_a_baseline_alone_reads_the_label_colours_it_lacks_by_another_cards_names(client, make_raster):
    """A Dubai label under threshold alone was read by its water and vegetation colours only: land and building were
    unlabelled, 'other' scored nothing, and the IoU differed from compare's and evaluate's (h168)."""
    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[:20], rgb[20:40], rgb[40:] = (0xE2, 0xA9, 0x29), (0x84, 0x29, 0xF6), (0x3C, 0x10, 0x98)  # water, land, building
    label = io.BytesIO()
    Image.fromarray(rgb).save(label, format="PNG")
    response = client.post("/api/segment", data={
        "image": (io.BytesIO(make_raster(shape=(60, 80)).read_bytes()), "a.tif"), "models": "threshold",
        "label": (io.BytesIO(label.getvalue()), "truth.png")}, content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done", job["error"]
    said = " ".join(job["warnings"])
    assert "were read as landcover-unet's classes building, land, as geoseg evaluate and compare read them" in said
    assert "only 33%" not in said and "--label-names" not in said
    assert job["result"]["iou"][0]["iou"]["other"] is not None


def test_a_model_that_draws_two_classes_alike_is_left_out_of_reading_a_colour_label(tmp_path, model_dir, make_raster,
                                                                                     monkeypatch):
    """A card that draws two classes in one colour (and gives no label_color) cannot read a colour label: that
    failed the whole job, the other model's masks and scores with it."""
    from geoseg.models import get_segmenter

    alike = tmp_path / "alike"
    alike.mkdir()
    shutil.copy(model_dir / "tiny-fcn.keras", alike / "tiny-alike.keras")
    card = json.loads((model_dir / "tiny-fcn.json").read_text())
    card["name"], card["classes"][1]["color"] = "tiny-alike", card["classes"][0]["color"]
    (alike / "tiny-alike.json").write_text(json.dumps(card))
    monkeypatch.setenv("GEOSEG_MODEL_PATH", f"{model_dir}{os.pathsep}{alike}")
    client = create_app({"GEOSEG_DATA_DIR": str(tmp_path / "web"), "GEOSEG_MAX_PIXELS": 200_000,
                         "TESTING": True}).test_client()
    classes = get_segmenter("tiny-fcn").card.classes
    label = _label_in_colours(classes)
    for order in ("tiny-alike,tiny-fcn", "tiny-fcn,tiny-alike"):
        response = client.post("/api/segment", data={
            "image": (io.BytesIO(make_raster(shape=(60, 80)).read_bytes()), "a.tif"), "models": order,
            "label": (io.BytesIO(label.getvalue()), "truth.png")}, content_type="multipart/form-data")
        job = _wait(client, response.get_json()["id"])
        assert job["status"] == "done", job["error"]
        assert job["result"]["label_read_as"] == "tiny-fcn"
        assert {r["model"] for r in job["result"]["iou"]} == {"tiny-fcn", "tiny-alike"}
    response = client.post("/api/segment", data={  # alone, it says which colour two classes share
        "image": (io.BytesIO(make_raster(shape=(60, 80)).read_bytes()), "a.tif"), "models": "tiny-alike",
        "label": (io.BytesIO(label.getvalue()), "truth.png")}, content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "failed" and f"{classes[0].color} is the colour of 'class0', 'class1'" in job["error"]
    assert "the classes' label_color in the training config or the model's card" in job["error"]


def test_a_label_in_no_model_colours_says_so_instead_of_a_table_of_dashes(client, make_raster):
    label = io.BytesIO()
    Image.fromarray(np.full((60, 80, 3), [1, 2, 3], np.uint8)).save(label, format="PNG")
    response = client.post("/api/segment", data={
        "image": (io.BytesIO(make_raster(shape=(60, 80)).read_bytes()), "a.tif"), "models": "threshold",
        "label": (io.BytesIO(label.getvalue()), "grey truth.png")}, content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done", job["error"]
    assert job["result"]["iou"] == []
    assert job["warnings"] == ["no pixel of the label grey truth.png is in a class colour of threshold's classes, so "
                               "nothing is scored: upload a label in a model's label colours (its class colours where "
                               "it has none; GET /api/models lists both), or an index raster of its class ids (255 for "
                               "unlabelled)."]


def test_minimum_region_sieves_each_class_model(client):
    from skimage.measure import label

    response = client.post("/api/segment", data={"image": (io.BytesIO(_png(120, 120)), "noise.png"),
                                                 "models": "threshold", "sieve": "30"},
                           content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done" and job["sieve"] == 30, job["error"]
    with client.get(job["files"]["m0_mask.tif"]) as mask, rasterio.MemoryFile(mask.data) as memfile, \
            memfile.open() as ds:
        regions = label(ds.read(1), background=255, connectivity=2)
    assert np.bincount(regions.ravel())[1:].min() >= 30  # random pixels: thousands of specks without it


def test_a_label_off_the_image_grid_is_refused_naming_the_uploaded_file(client, make_raster, tmp_path):
    """The gdalwarp command in the message named the server's stored copy, label.tif."""
    from rasterio.transform import from_origin

    tif = make_raster(shape=(60, 80))
    shifted = make_raster(name="truth.tif", shape=(60, 80), bands=1,
                          transform=from_origin(500050.0, 2800000.0, 0.5, 0.5))  # 100 px east of the image
    response = client.post("/api/segment", data={
        "image": (io.BytesIO(tif.read_bytes()), "scene.tif"), "models": "threshold",
        "label": (io.BytesIO(shifted.read_bytes()), "flood truth.tif")}, content_type="multipart/form-data")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert "label flood truth.tif: labels must be on the pixel grid of their image scene.tif" in error
    assert "-r near 'flood truth.tif' on_grid.tif)." in error and "label.tif" not in error
    assert "100 px off" in error and "--label-format" not in error  # the page takes no polygons


@pytest.mark.parametrize(
    "data, status, message",
    [
        ({}, 400, "no image"),
        ({"image": (io.BytesIO(b"hello, not an image"), "photo.png")}, 415, "checked from its content"),
        ({"image": (io.BytesIO(_png(600, 600, flat=True)), "big.png")}, 413, "= 360,000 pixels (0.36 Mpx); this server takes at most 200,000 pixels (0.2 Mpx)"),
        ({"image": (io.BytesIO(_png()), "a.png"), "models": "nope"}, 400, "unknown model"),
        ({"image": (io.BytesIO(_png()), "a.png"), "tta": "rotations"}, 400, "tta must be one of none, flips"),
        ({"image": (io.BytesIO(_png()), "a.png"), "precision": "int8"}, 400, "precision must be one of float32"),
        ({"image": (io.BytesIO(_png()), "a.png"), "sieve": "-3"}, 400, "sieve (minimum region) is a whole number"),
        ({"image": (io.BytesIO(_png()), "a.png"), "normalize": "scale:1/255"}, 400,
         "normalisation: use scale:0.0001[,OFFSET], percentile:2,98, meanstd:M1,M2,M3/S1,S2,S3 or none. Received"),
        ({"image": (io.BytesIO(_png()), "a.png"), "sieve": "²"}, 400, "sieve (minimum region) is a whole number"),
        # values the syntax takes but a model cannot: were a 202, then a failed job after the other models ran
        ({"image": (io.BytesIO(_png()), "a.png"), "models": "threshold,tiny-fcn", "normalize": "scale:nan"}, 400,
         "normalisation: field 'normalization.scale' must be a finite number. Received: nan ('scale:nan')"),
        ({"image": (io.BytesIO(_png()), "a.png"), "models": "tiny-fcn", "normalize": "percentile:98,2"}, 400,
         "percentiles must satisfy 0 <= low < high <= 100"),
        ({"models": ["threshold"] * 1200}, 413,
         "the form's fields are too large or too many"),  # said "larger than this server's limit of 5 MB"
        ({"image": (io.BytesIO(_png()), "a.png"), "label": (io.BytesIO(_png(40, 80)), "l.png")}, 400,
         "label l.png: labels are 80 x 40 px but their image a.png is 80 x 60 px"),
        # the header read fine, the pixels did not: was a 500 HTML page that left the page stuck on "Uploading"
        ({"image": (io.BytesIO(_png(200, 200)[:2000]), "cut.png")}, 400,
         "cut.png: the file looks like an image, but its pixels cannot be read: it looks truncated or damaged"),
        ({"image": (io.BytesIO(b""), "empty.png")}, 400, "the image file is empty"),
        ({"image": (io.BytesIO(_png(200, 200, paletted=True)[:700]), "cut.png")}, 400, "looks truncated or damaged"),
        # 10 bytes of pixel data for 400 x 400 px: GDAL filled the rest with zeros after some earlier requests
        ({"image": (io.BytesIO(_short_png(400, 400)), "short.png")}, 400, "short.png: the file looks like an image"),
        ({"image": (io.BytesIO(_png()), "a.png"), "label": (io.BytesIO(b"nope"), "l.png")}, 415,
         "the label file is not a PNG"),
        # a model that cannot read the upload: was a failed job after the other models ran, with the server's path
        ({"image": (io.BytesIO(_png(grey=True)), "grey.png"), "models": "threshold,tiny-fcn"}, 400,
         "grey.png has 1 band(s), but threshold reads band(s) 1, 2, 3; tiny-fcn reads band(s) 1, 2, 3. Untick"),
    ],
)
def test_upload_errors(client, data, status, message):
    with client.post("/api/segment", data=data, content_type="multipart/form-data") as response:
        assert response.status_code == status
        assert message in response.get_json()["error"]


def test_a_one_band_upload_that_no_model_reads_is_said_so(tmp_path, monkeypatch):
    """Untick that model, or upload more bands' said the error, where every model of the server (built-ins and the
    zoo) reads 3 bands or more: nothing could be unticked to run it (h116)."""
    monkeypatch.delenv("GEOSEG_MODEL_PATH", raising=False)
    client = create_app({"GEOSEG_DATA_DIR": str(tmp_path / "web"), "TESTING": True}).test_client()
    data = {"image": (io.BytesIO(_png(grey=True)), "grey.png"), "models": "threshold"}
    with client.post("/api/segment", data=data, content_type="multipart/form-data") as response:
        body = response.get_json()
    assert response.status_code == 400 and body["field"] == "image", body
    assert body["error"].startswith("grey.png has 1 band(s), and every model here reads more") and "Untick" not in body["error"]


def test_an_upload_error_names_the_form_field_at_fault(client):
    """The page marks and focuses the field an error is about (the error was only in the status line, with the
    focus on Segment, for a screen reader far from the field); errors of no field name none."""
    cases = [({"sieve": "-3"}, "sieve"), ({"tta": "rotations"}, "tta"), ({"models": "nope"}, "models"),
             ({"models": "tiny-fcn", "normalize": "scale:nan"}, "normalize"),
             ({"image": (io.BytesIO(_png(200, 200)[:2000]), "cut.png")}, "image"),
             ({"label": (io.BytesIO(b"nope"), "l.png")}, "label"),
             ({"image": (io.BytesIO(_png(grey=True)), "grey.png"), "models": "threshold"}, "models")]
    for data, field in cases:
        data = {"image": (io.BytesIO(_png()), "a.png"), **data}
        with client.post("/api/segment", data=data, content_type="multipart/form-data") as response:
            assert response.status_code >= 400 and response.get_json().get("field") == field, (data, field)
    with client.post("/api/segment", data={"models": ["threshold"] * 1200}, content_type="multipart/form-data") as r:
        assert r.status_code == 413 and "field" not in r.get_json()


def test_geojson_is_written_in_a_process_of_its_own(client, make_raster, monkeypatch):
    """GDAL's GeoJSON writer holds Python's lock for the whole write: every request to the server waited 9 to 22 s
    while a 2000² upload's polygons were written (h104). The server's own vectorize writes the GeoPackage alone."""
    import geoseg.vector

    real = geoseg.vector.vectorize

    def gpkg_only(mask, out, **kwargs):
        assert not str(out).endswith(".geojson"), "GeoJSON written in the server's process"
        return real(mask, out, **kwargs)

    monkeypatch.setattr(geoseg.vector, "vectorize", gpkg_only)
    tif = make_raster(name="field.tif")
    response = client.post("/api/segment", data={"image": (io.BytesIO(tif.read_bytes()), "field.tif"),
                                                 "models": "threshold"}, content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done" and job["warnings"] == [], job
    with client.get(job["files"]["m0_polygons.geojson"]) as geojson:
        lon, lat = geojson.get_json()["features"][0]["geometry"]["coordinates"][0][0]
        assert 50 < lon < 60 and 20 < lat < 30  # EPSG:32640 near 500000 E, 2800000 N


def test_a_cancel_stops_the_geojson_process(make_raster, tmp_path):
    """A cancelled job held its worker until its GeoJSON process ended: 40 of the 77 s from Cancel to "cancelled"
    for a 7000² upload. The job's check runs while the process does, and a cancel ends the process."""
    from geoseg.web.jobs import Cancelled, _geojson_apart

    mask = make_raster(name="mask.tif", bands=1, data=np.zeros((1, 64, 80), np.uint8))
    calls = []

    def cancelled():
        calls.append(time.time())
        raise Cancelled("job")

    started = time.time()
    with pytest.raises(Cancelled):
        _geojson_apart(mask, tmp_path / "polygons.geojson", cancelled)
    assert calls and calls[0] - started < 2 and not (tmp_path / "polygons.geojson").exists()


def test_the_page_names_its_normalisation_field_where_a_warning_starts_a_sentence_with_the_option():
    """The 0-1 float warning's fix starts a sentence ('Pass --normalize ...'): the page showed the command line's
    option and the Python keyword, which a web user cannot pass (h104)."""
    from geoseg.web.jobs import Job, _for_user

    job = Job.__new__(Job)
    job.files, job.label_name, job.folder, job.name = {"input": Path("/srv/j/in.tif")}, None, Path("/srv/j"), "a.tif"
    said = _for_user("/srv/j/in.tif: expect nearly one class. Pass --normalize scale:255,0 (normalization={'method': "
                     "'scale', 'scale': 255, 'offset': 0} in Python), which maps 1 where the card maps 255.", job)
    assert said == "a.tif: expect nearly one class. Set Normalisation to scale:255,0, which maps 1 where the card maps 255."
    assert _for_user("or pass --normalize (normalization= in Python) with a scale", job) == \
        "or set Normalisation with a scale"


def test_warnings_reach_the_page(client, make_raster):
    """A 16-bit upload into a model of 8-bit imagery ran silently; the warning was only in the server's log."""
    tif = make_raster(name="survey16.tif", dtype="uint16")
    response = client.post("/api/segment", data={"image": (io.BytesIO(tif.read_bytes()), "survey16.tif"),
                                                 "models": "tiny-fcn"}, content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done", job["error"]
    assert len(job["warnings"]) == 1 and job["warnings"][0].startswith("survey16.tif: after the model's normalisation")
    assert "far outside what tiny-fcn was trained on" in job["warnings"][0]
    # the fix it names is the page's field, not the command line's --normalize, which a web user cannot pass
    assert "--normalize" not in job["warnings"][0] and "normalization=" not in job["warnings"][0]
    value = re.search(r"set Normalisation to (scale:\S+?), which maps", job["warnings"][0])[1]
    response = client.post("/api/segment", data={"image": (io.BytesIO(tif.read_bytes()), "survey16.tif"),
                                                 "models": "tiny-fcn,threshold", "normalize": value},
                           content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done" and job["normalize"] == value and job["warnings"] == [], job


def test_file_names_in_any_script_are_kept(client):
    """werkzeug's secure_filename turned 文件.png into 'png'."""
    from geoseg.web.uploads import display_name

    assert display_name("文件 (1).png") == "文件 (1).png" and display_name("../../x/.a.tif") == "a.tif"
    assert display_name("..") == display_name("") == "upload"
    long = display_name("文" * 130 + ".png")  # was a 500 (and 80 of them a failed job): file names end at 255 bytes
    assert long.endswith(".png") and len(long.encode()) <= 160
    response = client.post("/api/segment", data={"image": (io.BytesIO(_png()), "洪水 map.png"), "models": "threshold"},
                           content_type="multipart/form-data")
    job_id = response.get_json()["id"]
    job = _wait(client, job_id)
    assert job["status"] == "done", job["error"]
    assert job["name"] == "洪水 map.png"
    with client.get(job["files"]["m0_mask.tif"]) as mask:
        assert mask.status_code == 200 and "%E6%B4%AA%E6%B0%B4" in mask.headers["Content-Disposition"]
        # the plain filename= (curl -OJ's) was " map_threshold_mask.tif"; for 文件.png ".png", a hidden file
        assert f'filename="map-{job_id[:8]}_threshold_mask.tif"' in mask.headers["Content-Disposition"]
    response = client.post("/api/segment", data={"image": (io.BytesIO(_png()), "文件.png"), "models": "threshold"},
                           content_type="multipart/form-data")
    job_id = response.get_json()["id"]
    job = _wait(client, job_id)
    with client.get(job["files"]["input"]) as upload:
        assert f'filename="upload-{job_id[:8]}.png"; filename*=UTF-8\'\'%E6%96%87%E4%BB%B6.png' in \
            upload.headers["Content-Disposition"]


def test_what_scripts_send_and_fetch_gets_the_right_answer(client, make_raster):
    """From a script's view (h72): the label downloaded as `scene_label`, without its type; a chunked upload over
    the limit was told its form's fields were too many; a form werkzeug could not parse (a Latin-1 file name) was
    "no image in the request"."""
    tif = make_raster(shape=(60, 80))
    label = io.BytesIO()
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(label, format="PNG")
    response = client.post("/api/segment", data={"image": (io.BytesIO(tif.read_bytes()), "scene.tif"),
                                                 "models": "threshold", "label": (io.BytesIO(label.getvalue()), "truth.png")},
                           content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done" and job["running"] is None, job
    with client.get(job["files"]["label"]) as got:
        assert "filename=scene_label.png" in got.headers["Content-Disposition"]
    limit = client.application.config["MAX_CONTENT_LENGTH"]
    chunked = client.post("/api/segment", input_stream=io.BytesIO(b"x" * (limit + 10)),
                          headers={"Transfer-Encoding": "chunked", "Content-Type": "multipart/form-data; boundary=b"},
                          environ_overrides={"wsgi.input_terminated": True})  # as werkzeug's server marks it
    assert chunked.status_code == 413, chunked.get_json()
    assert "larger than this server's limit" in chunked.get_json()["error"]
    body = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="caf\xe9.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + _png() + b"\r\n--b--\r\n")
    latin = client.post("/api/segment", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert latin.status_code == 400, latin.get_json()
    assert "the multipart form could not be read (is a file name not UTF-8?)" in latin.get_json()["error"]


def test_errors_of_api_and_file_routes_are_json(client):
    for method, url, status in (("get", "/api/nothing", 404), ("get", "/api/segment", 405),
                                ("get", "/jobs/abc/files/m0_mask.tif", 404), ("get", "/models/threshold/download", 404),
                                ("get", "/api", 404), ("get", "/api/models/", 404)):  # /api was an HTML page
        with getattr(client, method)(url) as response:
            assert response.status_code == status and response.is_json and response.get_json()["error"]
    assert client.get("/nothing").status_code == 404


def test_paletted_png_is_segmented_as_the_colours_it_shows(client):
    """A 256-colour PNG was refused with gdal_translate advice naming the server's copy of the file."""
    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[:, 40:] = [30, 90, 200]
    paletted = io.BytesIO()
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(paletted, format="PNG")
    response = client.post("/api/segment", data={"image": (io.BytesIO(paletted.getvalue()), "map.png"),
                                                 "models": " tiny-fcn , threshold,tiny-fcn"},
                           content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done", job["error"]
    assert job["models"] == ["tiny-fcn", "threshold"]  # spaces stripped, each model once
    with client.get(job["files"]["original.png"]) as png:
        original = np.asarray(Image.open(io.BytesIO(png.data)).convert("RGB"))
    assert (original[:, -1] == [30, 90, 200]).all()
    assert "m0_polygons.geojson" not in job["files"]  # no CRS: GeoJSON would put pixel coordinates at lon/lat
    assert "m0_polygons.gpkg" in job["files"]


def test_a_paletted_upload_placed_by_ground_control_points_keeps_them(client, tmp_path):
    """A scanned map in 256 colours, placed by GCPs, lost them when expanded to RGB: its mask had no
    georeferencing and no GeoJSON, while the same image in RGB kept both."""
    from rasterio.control import GroundControlPoint

    index = np.zeros((60, 80), np.uint8)
    index[:, 40:] = 1
    path = tmp_path / "scan.tif"
    gcps = [GroundControlPoint(row, col, 500000.0 + col, 2800000.0 - row) for row, col in ((0, 0), (0, 80), (60, 0), (60, 80))]
    with rasterio.open(path, "w", driver="GTiff", width=80, height=60, count=1, dtype="uint8") as ds:
        ds.write(index, 1)
        ds.write_colormap(1, {0: (200, 180, 140, 255), 1: (30, 90, 200, 255)})
        ds.gcps = (gcps, rasterio.crs.CRS.from_epsg(32640))
    response = client.post("/api/segment", data={"image": (io.BytesIO(path.read_bytes()), "scan.tif"),
                                                 "models": "threshold"}, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done", job["error"]
    assert "m0_polygons.geojson" in job["files"]
    with client.get(job["files"]["m0_mask.tif"]) as mask:
        (tmp_path / "mask.tif").write_bytes(mask.data)
    with rasterio.open(tmp_path / "mask.tif") as ds:
        placed, crs = ds.gcps
        assert len(placed) == 4 and crs == "EPSG:32640"


def test_an_upload_of_many_bands_is_refused_by_its_decoded_size(client, make_raster):
    """The limit counted pixels only: 3000 float64 bands of 1024 x 1024 px in a 400 KB file asked the request
    for 23 GB (a 500, or the server killed for memory)."""
    tif = make_raster(data=np.zeros((50, 100, 100), np.float64), compress="deflate")  # 4 MB decoded, 3.2 MB allowed
    assert tif.stat().st_size < 100_000
    response = client.post("/api/segment", data={"image": (io.BytesIO(tif.read_bytes()), "bands.tif"),
                                                 "models": "threshold"}, content_type="multipart/form-data")
    assert response.status_code == 413, response.get_json()
    assert response.get_json()["error"].startswith("bands.tif has 50 band(s) of 100x100 px, 4.0 MB decoded; this "
                                                   "server takes at most 3.2 MB")


@pytest.mark.parametrize("data, limit, said", [
    # 40 float64 bands of 101x100 px: 3.23 MB decoded against 3.2 MB read "3.2 MB decoded; ... at most 3.2 MB"
    (np.zeros((40, 100, 101), np.float64), 200_000, "3.23 MB decoded; this server takes at most 3.20 MB"),
    # serve --max-mpx 0.01: 0.20 MB against 0.16 MB read "0.2 MB decoded; ... at most 0.2 MB"
    (np.zeros((5, 100, 100), np.float32), 10_000, "0.20 MB decoded; this server takes at most 0.16 MB"),
    # 101x100 px against 10,000 px read "(0.01 Mpx); ... (0.01 Mpx)"
    (np.zeros((1, 100, 101), np.uint8), 10_000, "10,100 pixels (0.0101 Mpx); this server takes at most 10,000 "
                                                "pixels (0.01 Mpx)"),
    (np.zeros((1, 100, 2010), np.uint8), 200_000, "201,000 pixels (0.201 Mpx); this server takes at most 200,000 "
                                                  "pixels (0.2 Mpx)"),
])
def test_a_refused_upload_s_size_and_the_limit_read_differently(make_raster, data, limit, said):
    """Both figures of a refusal were rounded to the same decimals, so an upload over the limit read as the limit."""
    from geoseg.web.uploads import UploadError, check_pixels

    with pytest.raises(UploadError) as refused:
        check_pixels(make_raster(data=data), limit, name="up.tif")
    assert said in str(refused.value)


def test_apart_reads_two_amounts_at_the_fewest_decimals_that_tell_them_apart():
    from geoseg.errors import apart

    assert apart(0.2, 0.16) == ("0.20", "0.16")
    assert apart(2.5, 1.0) == ("2.5", "1.0")  # one decimal at least, as before
    assert apart(1.04, 1.02) == ("1.04", "1.02")  # a disk-space refusal's "1.0 MB needed, 1.0 MB free"
    assert apart(1234.04, 1234.0) == ("1,234.04", "1,234.00")
    assert apart(3.0, 3.0) == ("3.0", "3.0")  # equal amounts: as at the least decimals


def test_an_upload_stored_in_a_block_far_larger_than_itself_is_refused(client, make_raster, monkeypatch):
    """100 x 100 px in one 16384² tile: 0.8 MB on disk passed every check, then took 1.7 GB and 36 s of CPU to
    decode in the request's thread; three at once took a server to 5 GB (h94)."""
    import geoseg.web.uploads as uploads

    monkeypatch.setattr(uploads, "BLOCK_BYTES", 1_000_000)  # a 1 MB block here, as a 64 MB one on a server
    tif = make_raster(shape=(100, 100), tiled=True, blockxsize=1024, blockysize=1024, compress="deflate")
    response = client.post("/api/segment", data={"image": (io.BytesIO(tif.read_bytes()), "tiny.tif"),
                                                 "models": "threshold"}, content_type="multipart/form-data")
    assert response.status_code == 413, response.get_json()
    assert response.get_json()["error"].startswith("tiny.tif is 100x100 px but stored in blocks of 3 MB decoded")
    fine = make_raster(name="fine.tif", shape=(100, 100), tiled=True, blockxsize=128, blockysize=128)
    response = client.post("/api/segment", data={"image": (io.BytesIO(fine.read_bytes()), "fine.tif"),
                                                 "models": "threshold"}, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()  # a tile a little larger than the image is common


def test_a_south_up_upload_is_shown_north_up(client, make_raster):
    """A south-up raster (rows running north) was shown upside down on the page, unlike QGIS."""
    from affine import Affine

    north = np.arange(60)[:, None].repeat(80, 1) >= 45  # rows 45-59 are the north of a south-up grid
    data = np.where(north, 240, 20)[None].repeat(3, 0).astype(np.uint8)
    tif = make_raster(data=data, transform=Affine(0.5, 0, 500000.0, 0, 0.5, 2799970.0))
    response = client.post("/api/segment", data={"image": (io.BytesIO(tif.read_bytes()), "a.tif"),
                                                 "models": "threshold"}, content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done", job["error"]
    with client.get(job["files"]["original.png"]) as png:
        shown = np.asarray(Image.open(io.BytesIO(png.data)).convert("L"))
    assert shown[: shown.shape[0] // 5].mean() > 200 and shown[-shown.shape[0] // 5 :].mean() < 60


def test_two_servers_sharing_a_folder_keep_their_own_jobs(tmp_path, model_dir, monkeypatch, make_raster):
    """Each server used to sweep every folder it did not know that was older than its own --ttl."""
    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(model_dir))
    apps = [create_app({"GEOSEG_DATA_DIR": str(tmp_path / "web"), "GEOSEG_RESULT_TTL": ttl, "TESTING": True})
            for ttl in (0.0, 3600)]
    short, long = (a.test_client() for a in apps)
    response = long.post("/api/segment", data={"image": (io.BytesIO(make_raster().read_bytes()), "a.tif"),
                                               "models": "threshold"}, content_type="multipart/form-data")
    job = _wait(long, response.get_json()["id"])
    time.sleep(0.05)
    assert short.get("/api/jobs/other").status_code == 404  # the short-lived server expires its own jobs
    with long.get(job["files"]["m0_mask.tif"]) as mask:
        assert mask.status_code == 200
    shutil.rmtree(apps[1].extensions["geoseg_jobs"].root / job["id"] / "m0")
    with long.get(job["files"]["m0_mask.tif"]) as gone:  # was a 500 with a FileNotFoundError traceback
        assert gone.status_code == 404 and "is gone" in gone.get_json()["error"]


def test_tta_and_precision_reach_the_model(client, make_raster):
    tif = make_raster(shape=(60, 80))
    masks = {}
    for tta in ("none", "flips"):
        response = client.post("/api/segment", data={"image": (io.BytesIO(tif.read_bytes()), "a.tif"),
                                                     "models": "tiny-fcn", "tta": tta},
                               content_type="multipart/form-data")
        job = _wait(client, response.get_json()["id"])
        assert job["status"] == "done", job["error"]
        assert (job["tta"], job["precision"]) == (tta, "float32")
        with client.get(job["files"]["m0_mask.tif"]) as mask, rasterio.MemoryFile(mask.data) as memfile, \
                memfile.open() as ds:
            masks[tta] = ds.read(1)
    assert (masks["none"] != masks["flips"]).any()  # the untrained tiny-fcn is not flip-invariant


def test_too_many_bytes(client):
    # the request announces 6 MB; the server refuses it from the header, before reading the body
    with client.post("/api/segment", data=b"--x--", content_type="multipart/form-data; boundary=x",
                     environ_overrides={"CONTENT_LENGTH": str(6 * 1024 * 1024)}) as response:
        assert response.status_code == 413 and "limit of 5 MB" in response.get_json()["error"]
        assert response.get_json()["field"] == "image"  # the page marks the field, as for too many megapixels


def test_no_user_path_reaches_the_filesystem(client):
    response = client.post("/api/segment", data={"image": (io.BytesIO(_png()), "a.png"), "models": "tiny-fcn"},
                           content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done", job["error"]
    for name in ("../../../etc/passwd", "..%2f..%2finput.png", "input.png"):
        assert client.get(f"/jobs/{job['id']}/files/{name}").status_code == 404
    assert client.get("/api/jobs/not-a-job").status_code == 404
    assert client.get("/models/threshold/download").status_code == 404  # built-ins have no bundle


def test_a_poll_while_the_worker_adds_a_file_is_answered(tmp_path):
    """The worker adds files to a job while polls list them: iterating the dict itself raised "dictionary changed
    size during iteration" (1 poll in ~40,000 under load), a 500 that ended the page's polling of a running job."""
    from geoseg.web.jobs import Job

    job = Job("0" * 32, tmp_path, "a.png", ["threshold"], False, status="running")

    class AddedMeanwhile(str):  # formatted into its URL as the poll lists the files: the worker adds one then
        def __format__(self, spec):
            job.files["m0_mask.tif"] = tmp_path / "mask.tif"
            return str.__format__(self, spec)

    job.files[AddedMeanwhile("input")] = tmp_path / "a.png"
    assert "input" in job.to_dict()["files"]


def test_a_download_while_the_job_is_cancelled_is_no_server_error(app, client):
    """A cancel replaces the job's files with {} while a download looks its file up: the route read job.files twice
    (`name in`, then `[name]`), and a KeyError between them was a 500."""
    from geoseg.web.jobs import Job

    jobs = app.extensions["geoseg_jobs"]
    job_id, folder = jobs.new_folder()
    job = Job(job_id, folder, "a.png", ["threshold"], False, status="running")
    (folder / "a.png").write_bytes(_png())

    class CancelledMeanwhile(dict):
        def __contains__(self, key):
            found = dict.__contains__(self, key)
            job.files = {}  # what _remove_files does for a cancel, between the route's two reads
            return found

    job.files = CancelledMeanwhile(input=folder / "a.png")
    jobs.jobs[job_id] = job
    with client.get(f"/jobs/{job_id}/files/input") as response:
        assert response.status_code in (200, 404), response.get_json()


def test_results_expire(app, client):
    response = client.post("/api/segment", data={"image": (io.BytesIO(_png()), "a.png"), "models": "tiny-fcn"},
                           content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    app.extensions["geoseg_jobs"].ttl = 0.0
    folder = next(Path(app.extensions["geoseg_jobs"].root).iterdir())
    time.sleep(0.05)
    with client.get(f"/api/jobs/{job['id']}") as gone, client.get(job["files"]["m0_mask.tif"]) as link:
        for answer in (gone, link):  # the link said "Not Found ... check your spelling"
            assert answer.status_code == 410 and "has expired: this server deletes uploads and results 0 s after" \
                in answer.get_json()["error"]
    assert not folder.exists()


def test_results_live_ttl_seconds_from_the_job_s_end_not_its_upload(tmp_path):
    """A job that ran longer than --ttl lost its results as soon as it finished: expiry counted from the upload."""
    from geoseg.web.jobs import Job, JobManager

    jobs = JobManager(tmp_path / "jobs", workers=1, ttl=50)
    job_id, folder = jobs.new_folder()
    job = Job(job_id, folder, "a.png", ["threshold"], False, created=time.time() - 100, ended=time.time(), status="done")
    jobs.jobs[job_id] = job
    jobs.expire()
    assert jobs.get(job_id) is job and folder.exists()
    job.ended = time.time() - 60
    jobs.expire()
    assert jobs.get(job_id) is None and not folder.exists() and job_id in jobs.expired


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("GEOSEG_REQUIRE_BROWSER"):  # CI: a skipped browser test is no pass
    raise RuntimeError("GEOSEG_REQUIRE_BROWSER is set but Debian's chromium is not installed (make browser).")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_in_a_real_browser(app, make_raster, tmp_path):
    """Upload, switch model, compare, download the mask: in headless Chromium, with screenshots."""
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    image = make_raster(name="field.tif", shape=(120, 160))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"])
            page = browser.new_page(viewport={"width": 390, "height": 844}, accept_downloads=True)  # phone width
            page.goto(url)
            page.screenshot(path=shots / "1-start.png", full_page=True)
            # the empty file input was `required`, which a screen reader announced as "invalid entry" at load
            assert page.evaluate("document.querySelector('#image').matches(':invalid')") is False
            assert page.get_attribute("#image", "aria-required") == "true"
            page.click("#go")  # no image: said, marked and focused as the server's errors are
            page.wait_for_selector("#message.error")
            assert page.inner_text("#message") == "Choose an image to segment."
            assert page.evaluate("document.activeElement.id") == "image"
            assert page.get_attribute("#image", "aria-invalid") == "true"
            page.set_input_files("#image", str(image))
            page.check("input[value='threshold']")
            page.check("input[value='tiny-fcn']")
            page.check("input[value='watershed-regions']")
            chosen = page.locator("input[name='models']:checked").count()  # the default model is pre-checked
            page.select_option("#tta", "flips")
            page.fill("#sieve", "4")  # the region model ignores it
            label = tmp_path / "truth.png"
            Image.fromarray(np.zeros((120, 160), np.uint8)).save(label)  # class 0 everywhere
            page.set_input_files("#label", str(label))
            dropped = []  # one answer lost on the way (a Wi-Fi blip) ended the page's polling for good

            def flaky(route):
                if not dropped:
                    dropped.append(route.request.url)
                    route.abort()
                else:
                    route.continue_()

            page.route("**/api/jobs/*", flaky)
            page.click("#go")
            page.wait_for_selector("#results:not([hidden])", timeout=180_000)
            assert dropped and page.inner_text("#message").startswith("Done (flips TTA, regions of 4 px or more).")
            page.unroute("**/api/jobs/*")
            # the first view is a trained model's, not a baseline's that comes first in the form
            assert page.evaluate("job.result.models[Number(document.getElementById('view-model').value)].keras")
            page.screenshot(path=shots / "2-results.png", full_page=True)
            # the focus was lost to <body> when the button it was on was disabled, for the whole job
            assert page.evaluate("document.activeElement.id") == "results-heading"
            # the download links ran together ("mask GeoTIFFGeoPackage...") and pushed the page 66 px past a phone
            assert page.inner_text("#downloads").startswith("Download: mask GeoTIFF mask for QGIS (zip) GeoPackage")
            assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
            # the alt text says what the mask shows, not only whose it is
            assert re.fullmatch(r"\S+'s mask: .+ [0-9.]+%", page.get_attribute("#overlay", "alt"))
            # a checkbox is named by its model alone (it was the whole card, swatches run together: "buildingland…")
            assert page.get_by_role("checkbox", name="threshold", exact=True).is_checked()
            # read down a model's column, a class share is read with its class: row headers
            assert page.locator("#areas th[scope=row]").count() >= 2 and page.locator("#iou th[scope=row]").count() >= 2
            assert page.locator("#compare figure").count() == chosen >= 2
            assert "agree" in page.inner_text("#agreement")
            assert page.inner_text("#iou caption").startswith("IoU against the label, read as ")
            page.reload()  # the results stay: the job is in the address (#job=ID)
            page.wait_for_selector("#results:not([hidden])")
            assert page.locator("#compare figure").count() == chosen and page.is_enabled("#go")
            # which image, and which label: the file inputs are empty after a reload (h116)
            assert page.inner_text("#results-heading") == f"Results for {image.name}, scored against truth.png"
            # and the form is the job's, not the page's defaults: the next upload runs what the results show
            assert page.locator("input[name='models']:checked").count() == chosen
            assert page.input_value("#tta") == "flips" and page.input_value("#sieve") == "4"
            job_url = page.url
            page.evaluate("location.hash = '#job=0123abc'")  # a pasted link of another job: was ignored
            page.wait_for_selector("#message.error")
            assert "no job '0123abc' on this server" in page.inner_text("#message")
            page.go_back()
            page.wait_for_selector("#results:not([hidden])")
            assert page.url == job_url and page.is_enabled("#go")
            page.go_back()  # the page before any job: its results went on showing
            page.wait_for_selector("#results", state="hidden")
            page.go_forward()
            page.wait_for_selector("#results:not([hidden])")
            shown = page.get_attribute("#overlay", "src")
            page.select_option("#view-model", index=1)  # switch model
            assert page.get_attribute("#overlay", "src").endswith("/m1_mask.png") and not shown.endswith("/m1_mask.png")
            page.select_option("#view-model", label="threshold")
            assert "%" in page.inner_text("#legend")  # class shares
            page.select_option("#view-model", label="watershed-regions")
            assert page.inner_text("#legend") == "unlabeled regions: colours only tell neighbouring regions apart"
            page.fill("#opacity", "0.2")
            page.screenshot(path=shots / "3-switched.png", full_page=True)
            with page.expect_download() as download:
                page.click("#downloads a:has-text('mask GeoTIFF')")
            saved = tmp_path / "mask.tif"
            download.value.save_as(saved)
            with rasterio.open(saved) as ds, rasterio.open(image) as src:
                assert ds.shape == src.shape and ds.crs == src.crs
            assert page.is_enabled("#go")  # disabled while a job runs (a double click posted two jobs)
            cut = tmp_path / "cut.png"
            cut.write_bytes(_png(200, 200)[:2000])
            page.set_input_files("#image", str(cut))
            page.click("#go")
            page.wait_for_selector("#message.error")  # was stuck on "Uploading…" after a 500 HTML page
            assert "truncated" in page.inner_text("#message") and page.is_enabled("#go")
            # the field at fault is marked, described by the message, and has the focus
            assert page.evaluate("document.activeElement.id") == "image"
            assert page.get_attribute("#image", "aria-invalid") == "true"
            assert "message" in page.get_attribute("#image", "aria-describedby")
            assert page.is_visible("#results")  # a refused upload hid the results of the job before it
            browser.close()
    finally:
        server.shutdown()
    assert len(list(shots.glob("*.png"))) == 3


def test_page_stays_responsive_while_a_job_runs(client):
    """A slow job runs in the pool; the page and the API answer meanwhile."""
    response = client.post("/api/segment", data={"image": (io.BytesIO(_png(400, 400)), "a.png"),
                                                 "models": "tiny-fcn,threshold,edges-watershed"},
                           content_type="multipart/form-data")
    job_id = response.get_json()["id"]
    started = time.perf_counter()
    assert client.get("/").status_code == 200
    assert client.get("/api/models").status_code == 200
    first = client.get(f"/api/jobs/{job_id}").get_json()
    assert time.perf_counter() - started < 2.0
    assert first["status"] in ("queued", "running", "done")
    assert _wait(client, job_id)["status"] == "done"


def test_agreement_compares_class_names_not_ids(tmp_path):
    from geoseg.models.card import ClassInfo
    from geoseg.web.jobs import _agreement

    class Card:
        def __init__(self, names):
            self.classes = [ClassInfo(i, n, "#000000") for i, n in enumerate(names)]

    a = np.array([[0, 1], [1, 255]], np.uint8)  # water, land, land, nodata
    b = np.array([[1, 0], [2, 2]], np.uint8)  # water, land, other, other
    for name, data in (("a", a), ("b", b)):
        with rasterio.open(tmp_path / f"{name}.tif", "w", driver="GTiff", width=2, height=2, count=1, dtype="uint8",
                           nodata=255) as ds:
            ds.write(data, 1)
    assert _agreement([(tmp_path / "a.tif", Card(["water", "land"])),
                       (tmp_path / "b.tif", Card(["land", "water", "other"]))]) == 66.67  # 2 of 3 valid pixels


def test_request_errors_name_the_upload_not_the_server_path(app, client, make_raster):
    """An int64 GeoTIFF was refused with the server's copy: '/tmp/.../upload/a.tif: data type int64 ...'."""
    tif = make_raster(data=np.zeros((3, 60, 80), np.int64))
    with client.post("/api/segment", data={"image": (io.BytesIO(tif.read_bytes()), "a.tif"), "models": "threshold"},
                     content_type="multipart/form-data") as response:
        error = response.get_json()["error"]
    assert response.status_code == 400 and error.startswith("a.tif: data type int64 is not supported; use one of")
    assert str(app.extensions["geoseg_jobs"].root) not in error and "/upload/" not in error
    assert "gdal_translate -ot Int32 a.tif converted.tif" in error  # the fix, on the upload's own name (h135)


def test_a_truncated_cog_is_refused_before_any_model_runs(client, tmp_path):
    """Its overviews (first in the file) made the preview, so it was accepted; the job then failed."""
    import rasterio.shutil

    pixels = np.random.default_rng(0).integers(0, 255, (3, 60, 2100), np.uint8)  # noise: deflate keeps its size
    with rasterio.MemoryFile() as memfile:
        with memfile.open(driver="GTiff", width=2100, height=60, count=3, dtype="uint8") as ds:
            ds.write(pixels)
        rasterio.shutil.copy(memfile.name, tmp_path / "cog.tif", driver="COG", blocksize=256, compress="deflate")
    data = (tmp_path / "cog.tif").read_bytes()
    with client.post("/api/segment", data={"image": (io.BytesIO(data[:len(data) * 4 // 5]), "ortho.tif"),
                                           "models": "threshold"}, content_type="multipart/form-data") as response:
        assert response.status_code == 400
        assert response.get_json()["error"].startswith("ortho.tif: the file looks like an image, but its pixels "
                                                       "cannot be read: it looks truncated or damaged.")


@pytest.mark.parametrize("kind", ["png", "tif"])
def test_a_truncated_label_is_refused_naming_the_upload(client, make_raster, kind):
    """A PNG label cut to 300 bytes was scored on GDAL's garbage; a TIFF one cut in half failed the job
    after every model ran, naming the server's label.tif."""
    tif = make_raster(shape=(60, 80))
    ids = np.random.default_rng(0).integers(0, 3, (60, 80), np.uint8)
    if kind == "png":
        buffer = io.BytesIO()
        Image.fromarray(ids).save(buffer, format="PNG")
        label = buffer.getvalue()[:300]
    else:
        full = make_raster(name="truth.tif", data=ids[None]).read_bytes()
        label = full[:len(full) // 2]
    with client.post("/api/segment", data={"image": (io.BytesIO(tif.read_bytes()), "a.tif"), "models": "threshold",
                                           "label": (io.BytesIO(label), f"truth.{kind}")},
                     content_type="multipart/form-data") as response:
        assert response.status_code == 400
        assert response.get_json()["error"].startswith(f"label truth.{kind}: the file looks like an image, but")


def test_a_short_png_is_refused_whatever_gdal_read_before(client):
    """After a PNG that GDAL cannot open, one with 10 bytes of pixel data was taken for a black image."""
    answers = []
    for png in (_short_png(2**31 - 1, 1), _short_png(400, 400)):  # GDAL cannot open the first
        with client.post("/api/segment", data={"image": (io.BytesIO(png), "a.png"), "models": "threshold"},
                         content_type="multipart/form-data") as response:
            answers.append((response.status_code, response.get_json()["error"] or ""))
    assert [status for status, _ in answers] == [400, 400]
    assert all(error.startswith("a.png: the file looks like an image, but") for _, error in answers)


def test_server_log_lines_never_become_warnings(client, monkeypatch):
    """The server's 'job ID failed' (with its traceback in the log) was shown on the page as a warning."""
    def fail(job):
        raise RuntimeError(f"boom in {job.folder}")

    monkeypatch.setattr("geoseg.web.jobs.run_job", fail)
    response = client.post("/api/segment", data={"image": (io.BytesIO(_png()), "a.png"), "models": "threshold"},
                           content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert (job["status"], job["warnings"]) == ("failed", [])
    assert job["error"] == "the server failed on this job; its log has the details."


def test_a_geoseg_error_in_a_job_reaches_the_page_by_the_upload_name(client, monkeypatch):
    """A read that fails in the job (a file damaged past the upload check) says why, not 'the server failed'."""
    from geoseg.errors import RasterReadError

    def segment(path, *args, **kwargs):
        raise RasterReadError(f"{path}: cannot read rows 0-59; the file looks truncated.")

    monkeypatch.setattr("geoseg.segment", segment)
    response = client.post("/api/segment", data={"image": (io.BytesIO(_png()), "a.png"), "models": "threshold"},
                           content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert (job["status"], job["error"]) == ("failed", "threshold: a.png: cannot read rows 0-59; the file looks truncated.")


def test_a_failed_label_read_in_a_job_names_the_label_upload(client, monkeypatch):
    """Errors of the label in a job named the server's copy, label.png."""
    from geoseg.errors import InputError

    def read_labels(path, **kwargs):
        raise InputError(f"{path}: cannot read rows 0-59; the file looks truncated.")

    monkeypatch.setattr("geoseg.models.labels.read_labels", read_labels)
    label = io.BytesIO()
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(label, format="PNG")
    response = client.post("/api/segment", data={"image": (io.BytesIO(_png()), "a.png"), "models": "threshold",
                                                 "label": (io.BytesIO(label.getvalue()), "my truth.png")},
                           content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert (job["status"], job["error"]) == ("failed", "my truth.png: cannot read rows 0-59; the file looks truncated.")


def test_a_label_is_scored_as_compare_scores_it_paletted_or_not(client, make_raster, tmp_path):
    """A paletted PNG label (as the Dubai masks of tiles 2 and 4) was read as class ids, its palette indexes,
    and each model read the label by its own colours, so threshold left the U-Net's classes unscored; the
    agreement counted threshold's `other` as a class of its own."""
    from geoseg.models import get_segmenter
    from geoseg.workflows.evaluate import compare

    tif = make_raster(shape=(60, 80))
    classes = get_segmenter("tiny-fcn").card.classes
    ids = (np.arange(80)[None, :] // 27 + np.zeros((60, 1), int)).astype(np.uint8)  # three bands of classes
    paletted = Image.fromarray(ids[:, ::-1].copy(), "P")  # palette index i is class 2 - i: not the class ids
    paletted.putpalette([v for c in classes[::-1] for v in (int(c.color[k:k + 2], 16) for k in (1, 3, 5))])
    rgb = paletted.convert("RGB")
    expected = compare(["tiny-fcn", "threshold"], [str(tif)], labels=[str(_saved(rgb, tmp_path / "l.png"))],
                       label_format="color")["evaluations"]
    for label in (paletted, rgb):
        response = client.post("/api/segment", data={
            "image": (io.BytesIO(tif.read_bytes()), "a.tif"), "models": "tiny-fcn,threshold",
            "label": (io.BytesIO(_saved(label, tmp_path / "upload.png").read_bytes()), "label.png")},
            content_type="multipart/form-data")
        job = _wait(client, response.get_json()["id"])
        assert job["status"] == "done", job["error"]
        for row, evaluation in zip(job["result"]["iou"], expected):
            assert row["model"] == evaluation["model"]
            assert row["iou"] == {name: scores["iou"] for name, scores in evaluation["per_class"].items()
                                  if name in row["iou"]}
    assert job["result"]["agreement_pct"] > 0


def test_a_label_of_a_class_the_model_lacks_is_scored_as_evaluate_scores_it(client, make_raster, tmp_path):
    """A model's class found on a label's 'background' is a false positive in evaluate and compare; the page
    still left it out, and read a higher IoU than compare for the same files (h97)."""
    from geoseg.workflows.evaluate import evaluate

    tif = make_raster(shape=(60, 80))
    label = tmp_path / "label.tif"
    with rasterio.open(label, "w", driver="GTiff", width=80, height=60, count=1, dtype="uint8") as ds:
        ds.write((np.arange(80)[None, :] // 27 + np.zeros((60, 1), int)).astype(np.uint8), 1)
        ds.update_tags(CLASS_NAMES=json.dumps({"0": "background", "1": "class0", "2": "class1"}))
    expected = evaluate("tiny-fcn", [tif], [label])
    assert sum(expected.predicted_on_not_scored)  # the case at hand: the model found its classes on background
    response = client.post("/api/segment", data={"image": (io.BytesIO(tif.read_bytes()), "a.tif"),
                                                 "models": "tiny-fcn", "label": (io.BytesIO(label.read_bytes()),
                                                                                 "label.tif")},
                           content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done", job["error"]
    (row,) = job["result"]["iou"]
    assert row["iou"] == {name: scores["iou"] for name, scores in expected.per_class.items()}
    assert row["mean_iou"] == expected.mean_iou


def _saved(image, path):
    image.save(path, format="PNG")
    return path


def test_a_truncated_12_bit_jpeg_is_refused(client, tmp_path):
    """Pillow cannot open 12-bit JPEGs, so GDAL reads them, and libjpeg only warned on a cut one: accepted."""
    from rasterio.shutil import copy

    with rasterio.open(tmp_path / "src.tif", "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16") as ds:
        ds.write(np.random.default_rng(0).integers(0, 4095, (1, 64, 64)).astype(np.uint16))
    copy(tmp_path / "src.tif", tmp_path / "j12.jpg", driver="JPEG", NBITS=12)
    whole = (tmp_path / "j12.jpg").read_bytes()
    unreadable = "scan.jpg: the file looks like an image, but its pixels cannot be read"
    answers = [client.post("/api/segment", data={"image": (io.BytesIO(data), "scan.jpg"), "models": "threshold"},
                           content_type="multipart/form-data").get_json()
               for data in (whole, whole[: len(whole) * 6 // 10])]
    assert unreadable not in answers[0].get("error", "")  # whole: read (then refused for its one band)
    assert answers[1]["error"].startswith(unreadable)


def test_a_mask_of_too_many_regions_gets_no_polygons(client, make_raster, monkeypatch):
    """Polygons were unbounded: a 27 KB checkerboard upload cost 2.5 GB and 46 s, and 2000 x 2000 ran out of
    memory. Past MAX_POLYGONS regions the job keeps its mask and says why it has no polygons."""
    import geoseg.web.jobs as jobs
    from geoseg.vector import count_regions

    board = (np.indices((60, 80)) // 4).sum(0) % 2  # 15 x 20 squares of 4 px, alike ones touching at corners
    assert count_regions(make_raster(name="board.tif", bands=1, data=board[None].astype(np.uint8))) == 300
    assert count_regions(make_raster(name="board.tif", bands=1, data=board[None].astype(np.uint8)), block=40) == 300
    tif = make_raster()
    for cap, polygons in ((0, False), (100_000, True)):
        monkeypatch.setattr(jobs, "MAX_POLYGONS", cap)
        response = client.post("/api/segment", data={"image": (io.BytesIO(tif.read_bytes()), "a.tif"),
                                                     "models": "threshold"}, content_type="multipart/form-data")
        job = _wait(client, response.get_json()["id"])
        assert job["status"] == "done", job["error"]
        assert "m0_mask.tif" in job["files"] and ("m0_polygons.gpkg" in job["files"]) is polygons
        warned = any("regions, too many for polygons on this server (at most 0)" in w for w in job["warnings"])
        assert warned is not polygons


def test_a_full_queue_refuses_uploads_until_a_worker_is_free(tmp_path, model_dir, monkeypatch, make_raster):
    """Every upload used to be queued: a burst of them filled the disk before any ran. Then uploads being received
    counted as waiting even when a worker was free: four uploads to an idle server of two workers and a queue of
    three refused one, saying three jobs were waiting."""
    import geoseg.web.jobs as module

    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(model_dir))
    app = create_app({"GEOSEG_DATA_DIR": str(tmp_path / "web"), "GEOSEG_WORKERS": 1, "GEOSEG_MAX_QUEUED": 1,
                      "TESTING": True})
    client, jobs = app.test_client(), app.extensions["geoseg_jobs"]
    busy, run_job = threading.Event(), module.run_job
    monkeypatch.setattr(module, "run_job", lambda job: busy.wait(60) and run_job(job))  # each job waits for `busy`
    tif = make_raster().read_bytes()

    def post():
        return client.post("/api/segment", data={"image": (io.BytesIO(tif), "a.tif"), "models": "threshold"},
                           content_type="multipart/form-data")

    def status(response):
        return client.get(f"/api/jobs/{response.get_json()['id']}").get_json()["status"]

    running = post()  # the one worker is free: it takes this job
    assert running.status_code == 202
    _wait_for(lambda: status(running) == "running")
    first = post()
    assert first.status_code == 202 and first.get_json()["status"] == "queued" and first.get_json()["ahead"] == 0
    folders = sorted(p.name for p in jobs.root.iterdir())
    refused = post()
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "60"
    assert "its workers and the queue's 1 place are all taken (by jobs, or by uploads still arriving)" in \
        refused.get_json()["error"]
    assert sorted(p.name for p in jobs.root.iterdir()) == folders  # nothing of the refused upload was kept
    busy.set()
    done = _wait(client, first.get_json()["id"])
    assert done["status"] == "done" and done["running"] is None and 3590 < done["expires_in"] <= 3600
    assert _wait(client, running.get_json()["id"])["status"] == "done"
    # uploads at the same moment to an idle server: each was checked against the jobs queued before it was
    # saved, and all passed; now one runs, one waits and the rest are refused
    busy.clear()
    codes = []
    burst = [threading.Thread(target=lambda: codes.append(post().status_code)) for _ in range(6)]
    for t in burst:
        t.start()
    for t in burst:
        t.join()
    busy.set()
    assert sorted(codes) == [202] * 2 + [503] * 4


def _held(monkeypatch, module):
    """Each job waits for the returned event, or a cancel, before it runs: it stays "running" meanwhile."""
    go, run_job = threading.Event(), module.run_job

    def held(job):
        deadline = time.time() + 60
        while not (go.is_set() or getattr(job, "cancel", False)) and time.time() < deadline:
            time.sleep(0.02)
        return run_job(job)

    monkeypatch.setattr(module, "run_job", held)
    return go


def _until(client, job_id, *statuses, timeout=60):
    _wait_for(lambda: client.get(f"/api/jobs/{job_id}").get_json()["status"] in statuses, timeout)
    return client.get(f"/api/jobs/{job_id}").get_json()


def test_a_job_can_be_cancelled_queued_or_running(tmp_path, model_dir, monkeypatch, make_raster):
    """DELETE /api/jobs/ID answered 405: a job whose page was closed or replaced kept its worker, or its place in
    the queue, until it ended, and one user who left mid-job again and again kept others' uploads at 503."""
    import geoseg.web.jobs as module

    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(model_dir))
    app = create_app({"GEOSEG_DATA_DIR": str(tmp_path / "web"), "GEOSEG_WORKERS": 1, "GEOSEG_MAX_QUEUED": 1,
                      "TESTING": True})
    client, jobs = app.test_client(), app.extensions["geoseg_jobs"]
    go = _held(monkeypatch, module)
    tif = make_raster().read_bytes()

    def post():
        return client.post("/api/segment", data={"image": (io.BytesIO(tif), "a.tif"), "models": "threshold"},
                           content_type="multipart/form-data")

    running = post().get_json()["id"]
    _until(client, running, "running")
    queued = post().get_json()["id"]
    assert post().status_code == 503
    answer = client.delete(f"/api/jobs/{queued}")  # off the queue at once, its upload deleted
    assert answer.status_code == 200 and answer.get_json()["status"] == "cancelled", answer.get_json()
    assert answer.get_json()["files"] == {} and not (jobs.root / queued).exists()
    assert client.delete(f"/api/jobs/{queued}").status_code == 200  # again (the page left after its Cancel): no error
    waiting = post()  # its place is free
    assert waiting.status_code == 202, waiting.get_json()
    answer = client.delete(f"/api/jobs/{running}")  # stops at its next model or progress report
    assert answer.status_code in (200, 202) and answer.get_json()["status"] in ("running", "cancelled")
    assert answer.status_code == 200 or answer.get_json()["cancelling"] is True
    cancelled = _until(client, running, "cancelled", "done", "failed")
    assert cancelled["status"] == "cancelled" and cancelled["error"] is None and not (jobs.root / running).exists()
    go.set()  # the worker is free for the job that waited
    done = _wait(client, waiting.get_json()["id"])
    assert done["status"] == "done", done["error"]
    ended = client.delete(f"/api/jobs/{done['id']}")
    assert ended.status_code == 409 and "has already ended (done): there is nothing to cancel" in ended.get_json()["error"]
    assert _wait(client, done["id"])["status"] == "done" and (jobs.root / done["id"]).exists()  # unchanged
    assert client.delete("/api/jobs/not-a-job").status_code == 404


def test_a_running_job_stops_at_its_next_progress_report_and_its_partial_files_go(client, app, monkeypatch):
    """A cancel only between models would wait for a whole model's run (minutes on a large image)."""
    import geoseg

    started = threading.Event()

    def slow(image, out, *, progress, **options):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "partial.tif").write_bytes(b"staged")
        started.set()
        for _ in range(600):
            progress(0.5)
            time.sleep(0.05)
        raise AssertionError("the job ran on after it was cancelled")

    monkeypatch.setattr(geoseg, "segment", slow)
    response = client.post("/api/segment", data={"image": (io.BytesIO(_png()), "a.png"),
                                                 "models": "threshold,edges-watershed"},
                           content_type="multipart/form-data")
    job_id = response.get_json()["id"]
    assert started.wait(60)
    folder = app.extensions["geoseg_jobs"].root / job_id
    assert (folder / "m0" / "partial.tif").exists()
    answer = client.delete(f"/api/jobs/{job_id}")
    assert answer.status_code == 202 and answer.get_json()["cancelling"] is True
    job = _until(client, job_id, "cancelled", "done", "failed", timeout=20)
    assert job["status"] == "cancelled" and job["error"] is None and job["files"] == {} and job["running"] is None
    assert not folder.exists()


def test_a_queued_job_nobody_asks_about_is_dropped(tmp_path, model_dir, monkeypatch, make_raster):
    """A tab closed while its job waited left the job in the queue: it held a place, then a worker, for nobody."""
    import geoseg.web.jobs as module
    from geoseg.web.jobs import Job, JobManager

    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(model_dir))
    app = create_app({"GEOSEG_DATA_DIR": str(tmp_path / "web"), "GEOSEG_WORKERS": 1, "GEOSEG_MAX_QUEUED": 2,
                      "GEOSEG_ABANDON_AFTER": 2, "TESTING": True})
    client, jobs = app.test_client(), app.extensions["geoseg_jobs"]
    go = _held(monkeypatch, module)
    tif = make_raster().read_bytes()

    def post():
        return client.post("/api/segment", data={"image": (io.BytesIO(tif), "a.tif"), "models": "threshold"},
                           content_type="multipart/form-data").get_json()["id"]

    running = post()
    _until(client, running, "running")
    polled, left = post(), post()
    deadline = time.time() + 3  # 2 s was as long as a poll took under load 10
    while time.time() < deadline:  # the page of `left` was closed: nobody asks about it
        assert client.get(f"/api/jobs/{polled}").get_json()["status"] == "queued"
        assert client.get(f"/api/jobs/{running}").get_json()["status"] == "running"
        time.sleep(0.1)
    dropped = client.get(f"/api/jobs/{left}").get_json()
    assert dropped["status"] == "cancelled" and "nobody asked about this job for 2 s" in dropped["error"]
    assert not (jobs.root / left).exists()
    go.set()
    ended = {}

    def both_ended():  # both asked about meanwhile, as their pages do
        ended.update({j: client.get(f"/api/jobs/{j}").get_json()["status"] for j in (running, polled)})
        return all(status in ("done", "failed", "cancelled") for status in ended.values())

    _wait_for(both_ended, 120)
    assert ended == {running: "done", polled: "done"}
    # a running job nobody asks about stops at its next step (the held one checks as its first model starts)
    go.clear()
    unpolled = post()
    _wait_for(lambda: jobs.jobs[unpolled].status == "running")  # read here: no request asks about it
    time.sleep(2.5)
    go.set()
    _wait_for(lambda: jobs.jobs[unpolled].status in ("cancelled", "done", "failed"))
    stopped = client.get(f"/api/jobs/{unpolled}").get_json()
    assert stopped["status"] == "cancelled" and "nobody asked about this job for 2 s while it ran" in stopped["error"]
    # and when a worker reaches it before any request does
    manager = JobManager(tmp_path / "alone", workers=1, abandon_after=0.5)
    try:
        job_id, folder = manager.new_folder()
        job = Job(job_id, folder, "a.png", ["threshold"], False, polled=time.time() - 1)
        ran = []
        monkeypatch.setattr(module, "run_job", ran.append)
        manager.submit(job).future.result(10)
        assert job.status == "cancelled" and "nobody asked" in job.error and not ran and not folder.exists()
    finally:
        manager.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_page_cancels_its_job_by_button_also_after_a_reload(app, make_raster, monkeypatch):
    """The page had no way to stop a job: one left running held a worker until its end."""
    import geoseg.web.jobs as module
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    run_job = module.run_job

    def held(job):  # running until cancelled, then a model call of 2 s more, as a one-chunk image's (h116)
        deadline = time.time() + 60
        while not getattr(job, "cancel", False) and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(2)
        return run_job(job)

    monkeypatch.setattr(module, "run_job", held)
    jobs = app.extensions["geoseg_jobs"]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    image = make_raster(shape=(60, 80))

    def status(job_id):
        return jobs.jobs[job_id].status

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_port}/")
            assert page.is_hidden("#cancel")
            page.set_input_files("#image", str(image))
            page.click("#go")
            page.wait_for_selector("#cancel:not([hidden])")
            first = page.evaluate("job.id")
            # running, and no part of its model call reported yet: the bar moves without a share (it stood at 0%)
            page.wait_for_function("document.getElementById('message').textContent.startsWith('Segmenting with')")
            assert not page.evaluate("document.getElementById('bar').hasAttribute('value')")
            assert not page.inner_text("#message").endswith("0%")
            page.focus("#cancel")  # by keyboard
            page.keyboard.press("Enter")
            # the worker is busy until its step ends: the page said "Cancelled." at once, and the next upload
            # waited for a free worker without a word (h116)
            page.wait_for_function("document.getElementById('message').textContent.startsWith('Cancelling')")
            assert status(first) == "running"
            page.wait_for_function("document.getElementById('message').textContent === 'Cancelled.'")
            assert page.is_hidden("#cancel") and page.is_enabled("#go")
            assert page.evaluate("document.activeElement.id") == "go"  # not lost to <body> with the hidden button
            _wait_for(lambda: status(first) == "cancelled", 20)
            page.click("#go")
            page.wait_for_selector("#cancel:not([hidden])")
            second = page.evaluate("job.id")
            page.reload()  # a reload mid-job finds it running still, and can cancel it
            page.wait_for_selector("#cancel:not([hidden])")
            assert page.evaluate("job.id") == second and status(second) == "running"
            page.click("#cancel")
            _wait_for(lambda: status(second) == "cancelled", 20)
            browser.close()
    finally:
        server.shutdown()


def test_an_upload_of_only_nodata_has_no_shares_and_no_agreement(client, make_raster):
    """Every class was 0% (the shares summed to 0) and the models "agreed on 0% of pixels"."""
    tif = make_raster(shape=(40, 50), nodata=0, data=np.zeros((3, 40, 50), np.uint8))
    response = client.post("/api/segment", data={"image": (io.BytesIO(tif.read_bytes()), "a.tif"),
                                                 "models": "threshold,region-growing"},
                           content_type="multipart/form-data")
    job = _wait(client, response.get_json()["id"])
    assert job["status"] == "done", job["error"]
    assert job["result"]["agreement_pct"] is None
    assert all(c["share_pct"] is None for m in job["result"]["models"] for c in m["classes"])


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_page_says_when_results_expire(tmp_path, model_dir, monkeypatch, make_raster):
    """Past --ttl the download links failed silently (Chrome cancelled them) on a page that still said Done."""
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(model_dir))
    app = create_app({"GEOSEG_DATA_DIR": str(tmp_path / "web"), "GEOSEG_RESULT_TTL": 3, "TESTING": True})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_port}/")
            page.set_input_files("#image", str(make_raster(shape=(200, 20))))  # a tall strip
            page.uncheck("input[name='models']:checked")
            page.check("input[value='threshold']")
            page.check("input[value='edges-watershed']")
            page.click("#go")
            page.wait_for_selector("#results:not([hidden])", timeout=60_000)
            assert page.locator("#downloads a").count() >= 1
            # it was drawn the column's width wide, 11,000 px tall, with the legend and downloads far below
            viewer = page.evaluate("[document.getElementById('viewer').getBoundingClientRect().height, innerHeight]")
            assert viewer[0] <= 0.75 * viewer[1] + 1, viewer
            top, links = (page.locator(s).bounding_box() for s in ("#results-heading", "#downloads"))
            assert links["y"] + links["height"] - top["y"] < viewer[1]  # from the heading down, one screen
            page.wait_for_selector("#message.error", timeout=15_000)
            assert "have been deleted from the server" in page.inner_text("#message")
            assert page.locator("#downloads a").count() == 0
            assert page.is_disabled("#view-model")  # another model's mask was a broken picture
            browser.close()
    finally:
        server.shutdown()


def test_an_idle_server_still_deletes_expired_results(tmp_path):
    """Expiry ran only when a request came: an idle server kept its last hour of uploads and results."""
    import time

    from geoseg.web.jobs import Job, JobManager

    manager = JobManager(tmp_path / "root", ttl=0.5)
    try:
        job_id, folder = manager.new_folder()
        (folder / "result.png").write_bytes(b"x" * 1000)
        manager.jobs[job_id] = Job(id=job_id, folder=folder, name="a.png", models=["threshold"], has_label=False,
                                   status="done", ended=time.time())
        deadline = time.monotonic() + 10
        while folder.exists() and time.monotonic() < deadline:  # no request, no get(): the timer's doing
            time.sleep(0.1)
        assert not folder.exists() and job_id not in manager.jobs
    finally:
        manager.stop()


def test_a_server_folder_another_user_made_is_left_to_them(tmp_path, monkeypatch):
    """The first server on a machine made $TMPDIR/geoseg-web; every other user's server then failed with a
    PermissionError traceback. With no writable temporary folder at all: a traceback too."""
    import subprocess
    import tempfile

    from geoseg.errors import OutputError

    shared = tmp_path / "geoseg-web"
    shared.mkdir()
    if os.geteuid() != 0:
        shared.chmod(0o555)  # another user's, to this one
    elif subprocess.run(["chattr", "+i", str(shared)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here (a file system without it)")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    try:
        app = create_app({"TESTING": True})
        assert app.extensions["geoseg_jobs"].root.parent == tmp_path / f"geoseg-web-{os.getuid()}"
    finally:
        subprocess.run(["chattr", "-i", str(shared)], capture_output=True)
        shared.chmod(0o755)

    def nowhere():
        raise FileNotFoundError("No usable temporary directory found in ['/tmp', '/var/tmp']")

    monkeypatch.setattr(tempfile, "gettempdir", nowhere)
    with pytest.raises(OutputError, match="no writable temporary folder for the server's files .* set TMPDIR"):
        create_app({"TESTING": True})


def test_an_upload_that_fills_the_disk_is_told_so(client, monkeypatch, make_raster):
    """An upload that did not fit in the server's folder was an opaque 500, werkzeug's traceback in the log."""
    import errno

    import geoseg.web.app

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(geoseg.web.app, "_new_job", full)
    response = client.post("/api/segment", data={"image": (io.BytesIO(make_raster().read_bytes()), "a.tif"),
                                                 "models": "threshold"}, content_type="multipart/form-data")
    assert response.status_code == 507 and "no room left for the upload" in response.get_json()["error"]


@pytest.mark.parametrize("field", ["image", "label"])
def test_a_vrt_behind_an_image_magic_is_refused(client, make_raster, tmp_path, field, monkeypatch):
    """b'\\xff\\xd8\\xff<VRTDataset>' was opened by GDAL as a VRT: its sources (any local file, /vsicurl/ URLs) were
    read by the server and their pixels served back as the job's original.png."""
    secret = make_raster(name="secret.tif", shape=(60, 80))
    bands = "".join(f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="0">'
                    f'{secret}</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>'
                    for b in (1, 2, 3))
    vrt = b"\xff\xd8\xff" + f'<VRTDataset rasterXSize="80" rasterYSize="60">{bands}</VRTDataset>'.encode()
    files = {"image": (io.BytesIO(vrt), "scene.jpg")} if field == "image" else \
        {"image": (io.BytesIO(_png()), "scene.png"), "label": (io.BytesIO(vrt), "truth.jpg")}
    response = client.post("/api/segment", data={**files, "models": "threshold"}, content_type="multipart/form-data")
    assert response.status_code == 415, response.get_json()
    assert f"the {field} file starts as a JPEG but holds the text of a GDAL VRT" in response.get_json()["error"]
    root = client.application.extensions["geoseg_jobs"].root
    assert not [p for p in root.iterdir() if p.name != "tmp"]  # nothing of it kept
    # past the text check, any format GDAL would read the file as but the one its first bytes claim is refused
    import geoseg.web.uploads as uploads

    (tmp_path / "upload.jpg").write_bytes(vrt)
    monkeypatch.setattr(uploads, "LABEL_MARKERS", {})
    with pytest.raises(uploads.UploadError, match="starts as a JPEG but is not one .GDAL reads it as VRT"):
        uploads.check_driver(tmp_path / "upload.jpg", "jpg")
    uploads.check_driver(make_raster(name="fine.tif"), "tif")


def test_a_label_is_held_to_the_image_limits(client, make_raster):
    """A label of many bands was decoded whole (check_readable) with no size limit: 200 float64 bands of
    1000x1000 px, a 1.6 MB upload, took the server 3 GB; the same file as the image was refused, 413."""
    label = make_raster(name="bands.tif", shape=(60, 80), bands=100, dtype="float64",
                        data=np.zeros((100, 60, 80)), compress="deflate")  # 3.8 MB decoded, over 16 B x 200,000 px
    response = client.post("/api/segment", data={"image": (io.BytesIO(_png()), "scene.png"),
                                                 "label": (label.open("rb"), "truth.tif"), "models": "threshold"},
                           content_type="multipart/form-data")
    assert response.status_code == 413, response.get_json()
    assert "label truth.tif" in response.get_json()["error"]


def test_other_web_sites_cannot_post_or_cancel_jobs(client, app):
    """Any page the user had open could post uploads to the server on 127.0.0.1 and cancel its jobs (no Origin
    check), and with a name of its own re-pointed at 127.0.0.1 (DNS rebinding) read the answers too (h123)."""
    form = lambda: {"image": (io.BytesIO(_png()), "scene.png"), "models": "threshold"}  # noqa: E731
    foreign = client.post("/api/segment", data=form(), content_type="multipart/form-data",
                          headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "requests from other web sites (http://evil.example)" in foreign.get_json()["error"]
    assert not [p for p in app.extensions["geoseg_jobs"].root.iterdir() if p.name != "tmp"]
    own = client.post("/api/segment", data=form(), content_type="multipart/form-data",
                      headers={"Origin": "http://localhost"})  # the page's own origin (the test client's host)
    assert own.status_code == 202, own.get_json()
    job = own.get_json()["id"]
    assert client.delete(f"/api/jobs/{job}", headers={"Origin": "null"}).status_code == 403
    assert client.get(f"/api/jobs/{job}", headers={"Origin": "http://evil.example"}).status_code == 200
    assert client.delete(f"/api/jobs/{job}").status_code in (200, 202, 409)  # no Origin: curl, a script
    # the page may not be framed by another site, nor a served file's type guessed from its content
    headers = client.get("/").headers
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    # on a loopback address (serve's default) only requests to its loopback names are answered
    app.config["GEOSEG_LOCAL_ONLY"] = True
    assert client.get("/", headers={"Host": "127.0.0.1:5000"}).status_code == 200
    assert client.get("/", headers={"Host": "[::1]:5000"}).status_code == 200
    rebound = client.get(f"/api/jobs/{job}", headers={"Host": "rebind.evil.example:5000"})
    assert rebound.status_code == 403 and "not to rebind.evil.example:5000" in rebound.get_json()["error"]
    assert client.get("/", headers={"Host": "127.0.0.2:5000"}).status_code == 200  # all of 127/8 (h126)
    # behind a reverse proxy that passes its Host on (README): 403 for all until its name is allowed (h126)
    proxied = {"Host": "maps.example.org", "Origin": "https://maps.example.org"}
    assert client.get("/", headers=proxied).status_code == 403
    app.config["GEOSEG_ALLOWED_HOSTS"] = ["Maps.Example.org"]
    assert client.get("/", headers=proxied).status_code == 200
    assert client.post("/api/segment", data=form(), content_type="multipart/form-data",
                       headers=proxied).status_code == 202


def test_serve_answers_only_loopback_names_when_it_listens_on_loopback():
    from geoseg.cli.serve import _loopback

    assert [_loopback(h) for h in ("127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost", "LOCALHOST")] == [True] * 6
    assert [_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.20", "myhost")] == [False] * 4
    # a Host header's port is not compared: NAME:PORT never matched, and the 403 said to pass --allow-host (h128)
    from click.testing import CliRunner

    from geoseg.cli import main

    refused = CliRunner().invoke(main, ["serve", "--allow-host", "proxy.local:8080"])
    assert refused.exit_code == 2 and "'proxy.local:8080': give a host name alone" in refused.output


def test_at_most_two_uploads_are_decoded_at_once(app, monkeypatch):
    """Each upload is decoded whole to check it (a 7000² two-band float64 strip, 0.8 MB on disk, took 2.3 GB), and
    up to --workers + --max-queued uploads (22) were checked at once: three took the server to 7.4 GB (h123)."""
    import threading

    import geoseg.web.app as web_app

    decoding, most, lock = [0], [0], threading.Lock()
    checked = web_app.check_readable

    def slow_check(*args, **kwargs):
        with lock:
            decoding[0] += 1
            most[0] = max(most[0], decoding[0])
        time.sleep(0.3)
        try:
            return checked(*args, **kwargs)
        finally:
            with lock:
                decoding[0] -= 1

    monkeypatch.setattr(web_app, "check_readable", slow_check)
    codes = []

    def post(seed):
        codes.append(app.test_client().post("/api/segment", data={"image": (io.BytesIO(_png(seed=seed)), "a.png"),
                                                                  "models": "threshold"},
                                            content_type="multipart/form-data").status_code)

    threads = [threading.Thread(target=post, args=(seed,)) for seed in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [202] * 5 and most[0] == 2


@contextlib.contextmanager
def _served(app):
    """The app on a free local port in a thread of this process: its page's address."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_form_holds_up_in_high_contrast_text_spacing_and_without_a_mouse(app):
    """h131: forced colours (Windows high contrast) painted every class swatch black, so the legend no longer keyed the
    mask; the normalisation syntax was only in a hover tooltip; the opacity slider was read "0.6"; the file input ran
    16 px past a 320 px screen with WCAG 1.4.12 text spacing."""
    from playwright.sync_api import sync_playwright

    with _served(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 320, "height": 640})
        page.emulate_media(forced_colors="active")
        page.goto(url)
        swatches = page.evaluate("[...document.querySelectorAll('.classes i')].map((i) => "
                                 "[i.style.background, getComputedStyle(i).backgroundColor])")
        assert swatches and len({shown for _, shown in swatches}) > 1, swatches
        # the syntax reaches a screen reader (aria-describedby hides a title) and a keyboard or touch user
        assert "meanstd:" in page.inner_text("#normalize-hint")
        assert page.get_attribute("#opacity", "aria-valuetext") == "60%"
        page.add_style_tag(content="* { line-height: 1.5 !important; letter-spacing: .12em !important;"
                                   " word-spacing: .16em !important; }")
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_an_error_is_seen_beside_the_field_it_focuses(app, tmp_path):
    """h131: a refused upload focused the file input at the top of the page while its message was in the status line
    under the form, 800 px below on a phone and off a 1280 x 720 screen too: nothing seemed to happen."""
    from playwright.sync_api import sync_playwright

    bad = tmp_path / "notes.png"
    bad.write_text("hello\n")
    in_view = ("(id) => { const r = document.getElementById(id).getBoundingClientRect();"
               " return r.height > 0 && r.top >= 0 && r.bottom <= innerHeight; }")
    with _served(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 375, "height": 667})
        page.goto(url)
        page.set_input_files("#image", str(bad))
        page.focus("#go")
        page.keyboard.press("Enter")
        page.wait_for_selector("#message.error")
        assert page.evaluate("document.activeElement.id") == "image"
        assert page.evaluate(in_view, "image")
        assert page.evaluate(in_view, "field-error"), "the message is not in view beside the focused field"
        assert page.inner_text("#field-error") == page.inner_text("#message")
        assert page.get_attribute("#field-error", "aria-hidden") == "true"  # read once, from the status line
        page.uncheck("input[name='models']:checked")
        page.click("#go")  # a client-side error moves the note to the models
        page.wait_for_function("document.getElementById('message').textContent === 'Pick at least one model.'")
        assert page.locator(".field-error").count() == 1 and page.evaluate(in_view, "field-error")
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_bar_is_indeterminate_at_the_start_of_any_model_of_several(app, make_raster, monkeypatch):
    """The progress comes rounded to 3 decimals: the third of three models began at 0.667, over 2/3, so the page
    showed a bar fixed at 67% and "60%" before any part of that model ran (the h116 fix missed it)."""
    import geoseg.web.jobs as module
    from playwright.sync_api import sync_playwright

    def third_of_three(job):  # as run_job stands as the third model starts: running 2, progress 2/3
        job.models = ["threshold", "region-growing", "edges-watershed"]
        job.running, job.progress = 2, 2 / 3
        deadline = time.time() + 60
        while not getattr(job, "cancel", False) and time.time() < deadline:
            time.sleep(0.02)
        job.check()

    monkeypatch.setattr(module, "run_job", third_of_three)
    with _served(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(url)
        page.set_input_files("#image", str(make_raster(shape=(60, 80))))
        page.click("#go")
        page.wait_for_function("document.getElementById('message').textContent.includes('model 3 of 3')")
        assert not page.evaluate("document.getElementById('bar').hasAttribute('value')")
        assert not page.inner_text("#message").endswith("%")
        page.click("#cancel")
        page.wait_for_function("document.getElementById('message').textContent === 'Cancelled.'")
        browser.close()


@contextlib.contextmanager
def _compared(app, image, models, label=None, viewport=None):
    """A page showing the results of `models` on `image` (and IoU against `label`), in headless Chromium."""
    from playwright.sync_api import sync_playwright

    with _served(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport=viewport or {"width": 1280, "height": 800})
        page.goto(url)
        page.set_input_files("#image", str(image))
        if label is not None:
            page.set_input_files("#label", str(label))
        for box in page.locator("input[name='models']:checked").all():
            box.uncheck()
        for model in models:
            page.check(f"input[value='{model}']")
        page.click("#go")
        page.wait_for_selector("#results:not([hidden])", timeout=180_000)
        try:
            yield page
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_comparison_thumbnails_say_the_class_shares_they_show(app, make_raster):
    """h143: the thumbnails' alt text was "threshold's mask over the image": the shares a sighted user reads off the
    colours (and the legend of the large picture) were not there for a screen reader."""
    with _compared(app, make_raster(shape=(60, 80)), ["tiny-fcn", "threshold", "watershed-regions"]) as page:
        alts = dict(page.evaluate("[...document.querySelectorAll('#compare figure')].map((f) => "
                                  "[f.querySelector('figcaption').textContent.split(' (')[0], f.querySelector('img').alt])"))
        models = {m["model"]: m for m in page.evaluate("job.result.models")}
        for name in ("tiny-fcn", "threshold"):
            shares = ", ".join(f"{c['name']} {c['share_pct']}%" for c in models[name]["classes"])
            assert alts[name] == f"{name}'s mask over the image: {shares}", alts
        assert alts["watershed-regions"] == ("watershed-regions' mask over the image: unlabeled regions, colours only "
                                             "tell neighbouring regions apart")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_choosing_another_model_to_show_is_announced(app, make_raster):
    """h143: a screen reader said the option's name when Show changed, and nothing of the mask, legend and downloads
    that changed with it."""
    with _compared(app, make_raster(shape=(60, 80)), ["tiny-fcn", "threshold", "watershed-regions"]) as page:
        live = page.locator("#shown")
        assert live.get_attribute("role") == "status" and live.inner_text() == ""  # nothing said over the results
        page.focus("#view-model")
        page.select_option("#view-model", label="threshold")
        threshold = next(m for m in page.evaluate("job.result.models") if m["model"] == "threshold")
        shares = ", ".join(f"{c['name']} {c['share_pct']}%" for c in threshold["classes"])
        assert live.text_content() == f"Showing threshold's mask: {shares}."
        page.select_option("#view-model", label="watershed-regions")
        assert live.text_content() == ("Showing watershed-regions' mask: unlabeled regions, colours only tell "
                                       "neighbouring regions apart.")
        assert page.evaluate("document.activeElement.id") == "view-model"  # announced, not focused


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_tables_scroll_boxes_are_named_and_scroll_by_keyboard(app, make_raster, tmp_path):
    """h143: on a 320 px screen the tables of five models scroll sideways in boxes that had no role, no name and no
    place in the tab order: a keyboard could not scroll them, a screen reader passed them by unnamed."""
    label = tmp_path / "truth.png"
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(label)
    models = ["tiny-fcn", "tiny-tiled", "threshold", "region-growing", "edges-watershed"]
    image = make_raster(name="survey_2024_block_07_orthophoto.tif", shape=(60, 80))
    with _compared(app, image, models, label, {"width": 320, "height": 640}) as page:
        areas = page.get_by_role("region", name="Share of each class, by model")
        iou = page.get_by_role("region", name=re.compile("^IoU against the label"))
        assert areas.get_attribute("tabindex") == iou.get_attribute("tabindex") == "0"
        page.focus("#downloads a:last-child")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "areas-box"
        assert page.evaluate("(e) => e.scrollWidth > e.clientWidth", areas.element_handle())  # it does scroll
        page.keyboard.press("ArrowRight")
        page.wait_for_function("document.getElementById('areas-box').scrollLeft > 0")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "iou-box"
        # a long file name in the heading took the page past the screen with WCAG 1.4.12 text spacing
        page.add_style_tag(content="* { line-height: 1.5 !important; letter-spacing: .12em !important;"
                                   " word-spacing: .16em !important; }")
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    with _compared(app, make_raster(shape=(60, 80)), ["threshold"]) as page:  # no label: no empty tab stop
        assert page.is_hidden("#iou-box") and page.is_visible("#areas-box")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_agreement_says_what_it_counts_and_where_it_means_little(app, make_raster):
    """h143: "Models agree on 1.5% of pixels" of landcover-unet and threshold stood unexplained, read as a verdict on
    a model; tiny-fcn has no water and no `other`, so threshold's water could never agree with it."""
    with _compared(app, make_raster(shape=(60, 80)), ["tiny-fcn", "threshold", "watershed-regions"]) as page:
        about = page.inner_text("#agreement-about")
        assert about.startswith("The share of pixels, valid in every mask, where both models name the same class, "
                                "matched by name (watershed-regions left out: region colours are not classes).")
        assert "threshold's “other” agrees with any class it lacks (class0, class1, class2)." in about
        assert "Not meaningful where threshold finds water, vegetation: tiny-fcn has no such class" in about
        assert "tiny-fcn finds" not in about  # threshold's `other` covers tiny-fcn's classes
        assert about.endswith("not which is right.")
        # under the Comparison heading, read with the thumbnails it is about
        assert page.evaluate("document.getElementById('agreement').closest('section').querySelector('h3 + p')"
                             ".contains(document.getElementById('agreement'))")
    with _compared(app, make_raster(shape=(60, 80)), ["threshold"]) as page:  # one model: no figure, no words
        assert page.is_hidden("#agreement-about")


def test_region_colours_stay_apart_for_colour_blind_eyes_on_the_page(client):
    """h143: watershed-regions' colours 4 and 8 (#CC79A7, #999999) were CIEDE2000 6.2 apart under deuteranopia; the
    test of the palette checked its first six only."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    model = next(m for m in client.get("/api/models").get_json()["models"] if m["name"] == "watershed-regions")
    rgb = np.array([[int(c["color"][i:i + 2], 16) for i in (1, 3, 5)] for c in model["classes"]]) / 255
    assert len(rgb) == 8
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    for matrix in ([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
                   [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
                   np.eye(3)):  # Machado et al. 2009 deuteranopia and protanopia, severity 1; normal vision
        seen = np.clip(linear @ np.asarray(matrix).T, 0, 1)
        lab = rgb2lab(np.where(seen <= 0.0031308, seen * 12.92, 1.055 * seen ** (1 / 2.4) - 0.055)[None])[0]
        assert min(deltaE_ciede2000(a, b) for i, a in enumerate(lab) for b in lab[i + 1:]) > 10


def test_a_full_disk_is_the_servers_to_a_web_user_and_logged_with_its_folder(client, app, make_raster, monkeypatch,
                                                                           caplog):
    """A full disk during a job: its GeoJSON's warning blamed the CRS ("they cannot be placed in longitude and
    latitude (OutputError)"), and a failed job ended with the command line's "Free some disk space or pick another
    output folder", which a web user cannot do (h170). The administrator's log names the folder."""
    import geoseg.vector
    import geoseg.web.jobs as module
    from geoseg.errors import OutputError

    full = ("{path}: could not be written (GDAL: sqlite3_exec(COMMIT) failed: database or disk is full). Free some "
            "disk space or pick another output folder; nothing was left at that path.")
    monkeypatch.setattr(module, "_geojson_apart", lambda mask, geojson, check=None: ("OutputError",
                                                                                      full.format(path=geojson)))
    tif = make_raster(shape=(60, 80)).read_bytes()

    def post():
        answer = client.post("/api/segment", data={"image": (io.BytesIO(tif), "scene.tif"), "models": "threshold"},
                             content_type="multipart/form-data")
        assert answer.status_code == 202, answer.get_json()
        return _wait(client, answer.get_json()["id"])

    with caplog.at_level("WARNING", logger="geoseg.web.jobs"):
        job = post()
    assert job["status"] == "done" and len(job["warnings"]) == 1, job
    assert "no GeoJSON of the polygons: this server's disk is full" in job["warnings"][0]
    assert "longitude and latitude" not in job["warnings"][0] and "administrator" in job["warnings"][0]
    folder = str(app.extensions["geoseg_jobs"].root / job["id"])
    assert any(folder in r.getMessage() and "is full" in r.getMessage() for r in caplog.records)

    def failed(mask, out, **kwargs):
        raise OutputError(full.format(path=out))

    monkeypatch.setattr(geoseg.vector, "vectorize", failed)  # the GeoPackage's write, in the job's thread
    caplog.clear()
    with caplog.at_level("WARNING", logger="geoseg.web.jobs"):
        job = post()
    assert job["status"] == "failed" and job["error"] == module.DISK_FULL, job
    assert "Free some disk space" not in job["error"] and "m0_polygons.gpkg" not in job["files"]
    folder = str(app.extensions["geoseg_jobs"].root / job["id"])
    assert any(folder in r.getMessage() and "is full" in r.getMessage() for r in caplog.records)


def test_a_geojson_that_fails_for_another_reason_is_not_blamed_on_the_crs(make_raster, tmp_path, monkeypatch):
    """Only a failure to place the polygons says they cannot be placed; the server's own failure says so."""
    import geoseg.web.jobs as module

    mask = make_raster(name="a_mask.tif", bands=1, data=np.zeros((1, 40, 40), np.uint8))
    job = module.Job("j", tmp_path, "a.tif", ["threshold"], False)
    for kind, said in (("exit status -9", "the server failed to write it"), ("CRSError", "cannot be placed")):
        monkeypatch.setattr(module, "_geojson_apart", lambda mask, geojson, check=None, kind=kind: (kind, ""))
        job.warnings = []
        module._polygons(job, "m0", "threshold", mask, tmp_path)
        assert said in job.warnings[0], job.warnings


def test_a_cancel_stops_the_geopackage_write_between_blocks(make_raster, tmp_path):
    """A cancel during the polygons' GeoPackage (written in the job's thread) waited for the whole write, up to
    30 s for a large upload (h170): vectorize checks the job as each block is done."""
    from geoseg.web.jobs import Cancelled, Job, _polygons

    mask = make_raster(name="a_mask.tif", bands=1, data=np.zeros((1, 32, 4200), np.uint8))  # 3 blocks of 2048
    job = Job("j", tmp_path, "a.tif", ["threshold"], False)
    calls = []

    def check():
        calls.append(1)
        raise Cancelled("j")

    job.check = check
    with pytest.raises(Cancelled):
        _polygons(job, "m0", "threshold", mask, tmp_path)
    assert calls and "m0_polygons.gpkg" not in job.files and not (tmp_path / "a_polygons.gpkg").exists()
    assert not list(tmp_path.glob("*.gpkg")) and not list(tmp_path.glob(".*"))  # nor its temporary file


def test_a_cancelled_jobs_file_link_says_it_was_cancelled(tmp_path, model_dir, monkeypatch, make_raster):
    """A file link of a cancelled job answered the generic 404 ("... check your spelling")."""
    import geoseg.web.jobs as module

    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(model_dir))
    app = create_app({"GEOSEG_DATA_DIR": str(tmp_path / "web"), "GEOSEG_WORKERS": 1, "TESTING": True})
    client = app.test_client()
    _held(monkeypatch, module)
    answer = client.post("/api/segment", data={"image": (io.BytesIO(make_raster().read_bytes()), "a.tif"),
                                               "models": "threshold"}, content_type="multipart/form-data")
    job = answer.get_json()
    link = job["files"]["original.png"]
    _until(client, job["id"], "running")
    client.delete(f"/api/jobs/{job['id']}")
    _until(client, job["id"], "cancelled")
    gone = client.get(link)
    assert gone.status_code == 410 and f"job {job['id']} was cancelled" in gone.get_json()["error"], gone.get_json()
    assert "spelling" not in gone.get_json()["error"]
    assert client.get(f"/jobs/{job['id']}/files/no-such-file").status_code == 410  # any name: the job is gone


def test_describe_reads_the_status_and_the_jobs_ahead_at_one_time(tmp_path):
    """`describe` read the count ahead, then the status: a job taken by a worker in between was "running" with
    "ahead": 1."""
    from geoseg.web.jobs import Job, JobManager

    jobs = JobManager(tmp_path / "jobs")
    try:
        job = Job("j", tmp_path, "a.tif", ["threshold"], False)
        jobs.jobs[job.id] = job
        counted = jobs._queued

        def taken_meanwhile(before=None):  # the worker takes the job while the jobs ahead are counted
            n = counted(before)
            job.status = "running"
            return 1 if before is not None else n

        jobs._queued = taken_meanwhile
        described = jobs.describe(job)
        assert not (described["status"] == "running" and "ahead" in described), described
    finally:
        jobs.stop()


def test_an_upload_is_linked_into_the_job_folder_not_copied(client, app, make_raster, monkeypatch):
    """werkzeug spooled an upload to a temporary file, then `storage.save` copied it into the job's folder: a 150 MB
    upload needed 300 MB free (h170). Over 500 KB it is spooled in the server's folder and linked."""
    from werkzeug.datastructures import FileStorage
    from werkzeug.test import encode_multipart

    def copied(self, dst, buffer_size=16384):
        raise AssertionError("the upload was copied")

    tif = make_raster(shape=(400, 450), compress=None).read_bytes()  # 540 KB: spooled to a file
    assert len(tif) > 500 * 1024
    monkeypatch.setattr(FileStorage, "save", copied)
    # encoded here: the test client's own encoding spools a body over 500 KB to a temporary file it never closes
    boundary, body = encode_multipart({"image": FileStorage(io.BytesIO(tif), "big.tif", content_type="image/tiff"),
                                       "models": "threshold"})
    answer = client.post("/api/segment", data=body, content_type=f"multipart/form-data; boundary={boundary}")
    assert answer.status_code == 202, answer.get_json()
    root = app.extensions["geoseg_jobs"].root
    saved = root / answer.get_json()["id"] / "upload" / "big.tif"
    assert saved.read_bytes() == tif
    assert not list((root / "spool").iterdir())  # the spooled name went with the request; the job's link stays
    assert _wait(client, answer.get_json()["id"])["status"] == "done"
