"""Model cards, bundles, the U-Net receptive field and the registry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geoseg.errors import CardError, ModelError, ModelNotFoundError
from geoseg.models import ModelCard, build_unet, load_bundle, resolve_model, unet_receptive_radius

CARD = {
    "name": "m",
    "classes": [{"id": 0, "name": "a", "color": "#000000"}, {"id": 1, "name": "b", "color": "#FFFFFF"}],
    "bands": [1, 2, 3],
    "normalization": {"method": "scale", "scale": 0.5},
    "margin": 4,
}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"schema_version": 9}, "schema_version"),  # from a newer geoseg
        ({"schema_version": "1"}, "'schema_version' must be a whole number"),  # was "is '1'; this geoseg reads 1"
        # near misses ran with the default: scale 1.0 on 8-bit data, every pixel one class, and no warning
        ({"normalization": {"method": "scale", "scael": 0.0039}}, r"unknown field\(s\) 'scael' in 'normalization'; "
                                                                 "method 'scale' takes scale, offset"),
        ({"multiple-of": 32}, "unknown field 'multiple-of'; did you mean 'multiple_of'"),
        ({"tilesize": 256}, "did you mean 'tile_size'"),  # ('description_fr' beside 'description' is no typo)
        ({"margin": -1}, "margin"),
        ({"bands": []}, "bands"),
        ({"bands": [0, 1]}, "bands"),  # bands are 1-based
        ({"normalization": {"method": "zscore"}}, "normalization.method"),
        ({"normalization": {"method": "meanstd", "mean": [1], "std": [1, 1, 1]}}, "normalization.mean"),
        ({"normalization": {"method": "meanstd", "mean": [1, 2, 3], "std": [1, 0, 1]}}, "normalization.std' must be above 0"),
        ({"normalization": {"method": "scale", "scale": "1/255"}}, "normalization.scale' must be a finite number"),
        ({"normalization": {"method": "scale", "offset": -1.0}}, r"method 'scale' needs field 'normalization.scale' "
                                                                 r"\(x \* scale \+ offset\)"),
        ({"normalization": {"method": "percentile", "low": 98, "high": 2}}, "0 <= low < high <= 100"),
        ({"classes": [{"id": 1, "name": "a"}]}, r"classes\[0\]"),  # ids out of order
        ({"classes": [{"id": 0, "name": "a", "color": "red"}]}, "color"),
        ({"classes": [{"id": 0, "name": " "}]}, r"classes\[0\].name must be a non-empty text, such as 'water'. "
                                                "Received: ' '"),
        ({"classes": [{"id": 0, "name": 7}]}, r"classes\[0\].name must be a non-empty text"),
        ({"tile_size": 6}, "tile_size"),  # no room for the margin
        # wrong types gave TypeErrors, which stopped `geoseg models` instead of skipping the bundle
        ({"classes": 5}, "field 'classes' must be a list"),
        ({"multiple_of": None}, "multiple_of"),
        ({"multiple_of": "x"}, "multiple_of"),
        ({"pixel_size": [1, 1]}, "pixel_size"),
        ({"training": None}, "field 'training' must be an object"),
        ({"metrics": [1]}, "field 'metrics' must be an object"),
        # two classes of one name: labels matched the name to one of them, and the other scored nothing
        ({"classes": [{"name": "a"}, {"name": "a"}, {"name": "b"}]}, "own name.*; 'a' is classes 0, 1"),
        # two classes of one label colour: a colour label gave all its pixels to the later one; `models check` passed it
        ({"classes": [{"name": "a", "label_color": "#112233"}, {"name": "b", "label_color": "#112233"}]},
         "own 'label_color'.*; #112233 is the colour of 'a', 'b'"),
        ({"classes": [{"name": "a", "color": "#112233"}, {"name": "b", "color": "#000000", "label_color": "#112233"}]},
         "#112233 is the colour of 'a', 'b'"),
        # sizes past any model: multiple_of 100000 allocated 447 GiB in `models check`, margin 10**9 failed in segment
        ({"multiple_of": 100000}, "'multiple_of' must be an int from 1 to 1024"),
        ({"margin": 10**9}, "'margin' must be an int from 0 to 2048"),
        ({"tile_size": 10**12}, "'tile_size' must be an int from 1 to 2048"),
        ({"margin": True}, "'margin' must be an int"),
        # names -m NAME cannot pick: '?' starts options, ',' splits --models, a suffix is taken for a file
        ({"name": "my?model"}, "field 'name' must start with an ASCII letter or digit and hold only ASCII letters"),
        ({"name": "a,b"}, "field 'name'"),
        ({"name": "v1.keras"}, "not end in .keras, .json or .h5"),
        ({"name": None}, "field 'name'"),
        # class 255 was written as nodata (a mask all nodata, without a word); 256 classes and on, a traceback
        ({"classes": [{"name": f"c{i}"} for i in range(256)]}, "lists 256 classes; a mask holds at most 255"),
        # finite in float64, 0 or infinite in the float32 the model computes in: every pixel one class
        ({"normalization": {"method": "scale", "scale": 1e-320}}, "'normalization.scale' is 1e-320, which is 0 or "
                                                                  "infinite in the 32-bit floats"),
        ({"normalization": {"method": "scale", "scale": 1e308}}, "'normalization.scale' is 1e.308"),
        ({"normalization": {"method": "meanstd", "mean": [0, 0, 0], "std": [1e-300, 1, 1]}}, "'normalization.std'"),
        ({"normalization": {"method": "meanstd", "mean": [1e300, 0, 0], "std": [1, 1, 1]}}, "'normalization.mean'"),
        ({"band_names": ["red", "green"]}, "'band_names' must list a name for each of the 3 band"),
        ({"band_names": "rgb"}, "'band_names' must list a name"),
        ({"band_names": ["red", "", "blue"]}, "'band_names' must list a name"),
    ],
)
def test_card_validation_names_the_field(change, match):
    with pytest.raises(CardError, match=match):
        ModelCard.from_dict({**CARD, **change}, source="x.json")


@pytest.mark.parametrize("field", ["name", "classes", "bands", "normalization", "margin"])
def test_card_missing_field(field):
    data = {k: v for k, v in CARD.items() if k != field}
    # one who brings a model knows no receptive field: how to find the margin, and what a normalization looks like
    how = {"margin": ".*put a guess such as 64, then `geoseg models check NAME --image RASTER` measures",
           "normalization": '.*"method": "none"'}.get(field, "")
    with pytest.raises(CardError, match=f"'{field}' is missing{how}"):
        ModelCard.from_dict(data, source="x.json")


def test_card_round_trip_and_normalize():
    card = ModelCard.from_dict(CARD)
    assert ModelCard.from_dict(card.to_dict()) == card
    assert "band_names" not in card.to_dict()  # a card without them is written without them
    named = ModelCard.from_dict({**CARD, "band_names": ["Red", "green ", "NIR"]})
    assert named.band_names == ("red", "green", "nir") and ModelCard.from_dict(named.to_dict()) == named
    # a file's own scales and offsets, one per band (`declared_scaling`)
    per_band = ModelCard.from_dict({**CARD, "normalization": {"method": "none"}})
    assert per_band.normalize(np.array([[10, 20, 30]], np.uint16), {"method": "scale", "scale": [0.5, 1, 2],
                                                                     "offset": [0, -1, 1]}).tolist() == [[5, 19, 61]]
    assert card.normalize(np.array([[2, 4]], np.uint8)).tolist() == [[1.0, 2.0]]
    mean_std = ModelCard.from_dict({**CARD, "normalization": {"method": "meanstd", "mean": [1, 2, 3],
                                                              "std": [1, 2, 4]}})
    assert mean_std.normalize(np.array([[3, 4, 7]])).tolist() == [[2.0, 1.0, 1.0]]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_receptive_radius_is_tight(depth):
    """Perturbing a pixel at the radius changes the centre output; one pixel further never does."""
    import keras

    keras.utils.set_random_seed(depth)
    model = build_unet(2, 1, depth=depth, filters=2, batch_norm=False)
    radius = unet_receptive_radius(depth)
    size = (2 * radius // 2**depth + 4) * 2**depth
    x = np.random.default_rng(0).random((1, size, size, 1)).astype("float32")
    reach = 0
    for start in range(0, size, 32):  # 32 rows bumped at once, one image each: a model call per row took 26 s
        rows = np.arange(start, min(start + 32, size))
        bumped = np.repeat(x, rows.size, axis=0)
        bumped[np.arange(rows.size), rows, :, 0] += 10
        same = model(np.repeat(x, rows.size, axis=0)).numpy()[..., 0]  # the same batch shape: exact zeros
        moved = np.abs(model(bumped).numpy()[..., 0] - same).max(axis=2) > 0  # (bumped row, output row)
        for row, changed in zip(rows, moved):
            if changed.any():
                reach = max(reach, np.abs(np.nonzero(changed)[0] - row).max())
    assert reach <= radius
    assert reach >= radius - 2**depth  # within one pooling step of the bound


def test_bundle_checks_model_against_card(tmp_path):
    from geoseg.models import write_card

    model = build_unet(2, 3, depth=1, filters=2)
    model.save(tmp_path / "m.keras")
    write_card(ModelCard.from_dict({**CARD, "classes": CARD["classes"] + [{"id": 2, "name": "c"}]}),
               tmp_path / "m.json")
    with pytest.raises(ModelError, match=r"m.keras \(card .*m.json\): the model outputs 2 channel\(s\) but its card lists 3"):
        load_bundle(tmp_path / "m.keras")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        load_bundle(tmp_path / "m.keras")
    (tmp_path / "m.json").unlink()
    with pytest.raises(CardError, match="card not found"):
        load_bundle(tmp_path / "m.keras")


@pytest.mark.parametrize("ending, match", [
    ("logits", r"outputs are not probabilities \(from -.* to .*\).*softmax"),  # confidence wrapped in uint8
    ("nan", "NaN or infinity"),
    ("half", "maps a 65x65 input to 32x32"),
    # a softmax over one channel: 1 everywhere, so every pixel the second class (the one-class advice led there)
    ("softmax1", "one output channel is 1 everywhere.*a softmax over one channel is always 1"),
    # scores under 1 on noise of the probe, 20 on 8-bit pixels: a confidence of 2000% wrapped to 208
    ("relu", r"outputs are not probabilities \(from 0 to .*\)"),
])
def test_bundle_refuses_outputs_that_are_not_probabilities(tmp_path, ending, match):
    import keras

    from geoseg.models import write_card

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(2, 3, padding="same", kernel_initializer=keras.initializers.Constant(5.0))(inputs)
    if ending == "nan":
        x = keras.layers.Softmax()(keras.layers.Rescaling(float("nan"))(x))
    elif ending == "half":
        x = keras.layers.Softmax()(keras.layers.MaxPooling2D()(x))
    elif ending == "relu":
        x = keras.layers.Conv2D(2, 1, activation="relu", kernel_initializer=keras.initializers.Constant(0.01),
                                bias_initializer=keras.initializers.Constant(0.1))(inputs)
    elif ending == "softmax1":
        x = keras.layers.Softmax()(keras.layers.Conv2D(1, 1)(inputs))
    keras.Model(inputs, x).save(tmp_path / "m.keras")
    write_card(ModelCard.from_dict(CARD), tmp_path / "m.json")
    with pytest.raises(ModelError, match=match):
        load_bundle(tmp_path / "m.keras")


def test_bundles_of_models_geoseg_cannot_check_or_run_are_refused_with_the_fix(tmp_path):
    """A subclassed keras.Model was an AttributeError traceback that stopped `geoseg models check` for every model;
    a U-Net whose card understates 'multiple_of' passed the check at 64 px and failed in segment with a TensorFlow
    traceback; a channels-first model of any size was told to fix 'bands'."""
    import keras

    from geoseg.models import build_unet, write_card

    @keras.saving.register_keras_serializable(package="geoseg_tests")
    class Seg(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(2, 1, activation="softmax")

        def call(self, x):
            return self.conv(x)

    model = Seg()
    model(np.zeros((1, 8, 8, 3), np.float32))
    model.save(tmp_path / "sub.keras")
    write_card(ModelCard.from_dict({**CARD, "name": "sub"}), tmp_path / "sub.json")
    with pytest.raises(ModelError, match="a subclassed keras.Model.*keras.Model\(inputs, model\(inputs\)\)"):
        load_bundle(tmp_path / "sub.keras")
    build_unet(2, 3, depth=3, filters=2).save(tmp_path / "deep.keras")  # sides must be multiples of 8
    for multiple in (1, 4):
        write_card(ModelCard.from_dict({**CARD, "name": "deep", "multiple_of": multiple}), tmp_path / "deep.json")
        with pytest.raises(ModelError, match=r"the model fails on a \d+x\d+ input.*It runs on sides that are "
                                              r"multiples of 8: set 'multiple_of': 8 in the card"):  # the value (h117)
            load_bundle(tmp_path / "deep.keras")
    write_card(ModelCard.from_dict({**CARD, "name": "deep", "multiple_of": 8}), tmp_path / "deep.json")
    load_bundle(tmp_path / "deep.keras")
    inputs = keras.Input((3, None, None))
    x = keras.layers.Conv2D(2, 1, activation="softmax", data_format="channels_first")(inputs)
    keras.Model(inputs, x).save(tmp_path / "first.keras")
    write_card(ModelCard.from_dict({**CARD, "name": "first"}), tmp_path / "first.json")
    with pytest.raises(ModelError, match=r"looks channels-first: it takes \(3, None, None\).*Rebuild it channels-last"):
        load_bundle(tmp_path / "first.keras")  # no card can fix it: 'Fix bands in the card' was the advice (h117)
    rect_in = keras.Input((128, 256, 3))
    keras.Model(rect_in, keras.layers.Conv2D(2, 1, activation="softmax")(rect_in)).save(tmp_path / "rect.keras")
    write_card(ModelCard.from_dict({**CARD, "name": "rect", "tile_size": 128}), tmp_path / "rect.json")
    with pytest.raises(ModelError, match=r"takes 128x256 inputs; geoseg cuts square tiles"):  # 'check tile_size'
        load_bundle(tmp_path / "rect.keras")


def _binary_model(path):
    """One sigmoid channel: P(water) = sigmoid(band 1 - 0.5), so water where band 1 is over 0.5."""
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer=keras.initializers.Constant([[[[1.0], [0.0],
                            [0.0]]]]), bias_initializer=keras.initializers.Constant(-0.5))(inputs)
    keras.Model(inputs, x).save(path)
    return path


def test_a_one_channel_sigmoid_model_is_the_second_of_two_classes(tmp_path, make_raster):
    """A one-channel model's argmax was always 0: every pixel 'water', even those below 0.5; a card of two
    classes was refused ("outputs 1 channels but its card lists 2 classes")."""
    import rasterio

    from geoseg import segment
    from geoseg.models import write_card

    _binary_model(tmp_path / "bin.keras")
    card = {**CARD, "normalization": {"method": "scale", "scale": 1 / 255},
            "classes": [{"id": 0, "name": "land"}, {"id": 1, "name": "water"}], "margin": 0}
    write_card(ModelCard.from_dict({**card, "classes": [{"id": 0, "name": "water"}]}), tmp_path / "bin.json")
    with pytest.raises(ModelError, match="outputs one channel, which geoseg reads as the probability of the second of "
                                         r"two classes .* but its card lists 1 class\(es\). List two classes"):
        load_bundle(tmp_path / "bin.keras")
    write_card(ModelCard.from_dict(card), tmp_path / "bin.json")
    image = make_raster(shape=(40, 50), seed=4)
    result = segment(image, tmp_path / "out", model=str(tmp_path / "bin.keras"), confidence=True, probabilities=True)
    with rasterio.open(image) as src:
        p = 1 / (1 + np.exp(-(src.read(1).astype(np.float64) / 255 - 0.5)))
    with rasterio.open(result.outputs["mask"]) as ds:
        assert (ds.read(1) == (p > 0.5)).mean() > 0.999  # float32 ties at 0.5 aside
    with rasterio.open(result.outputs["confidence"]) as ds:
        assert np.abs(ds.read(1).astype(int) - np.rint(100 * np.maximum(p, 1 - p))).max() <= 1
    with rasterio.open(result.outputs["probabilities"]) as ds:
        assert ds.count == 2 and np.abs(ds.read(2).astype(int) - np.rint(100 * p)).max() <= 1


def test_a_model_of_two_outputs_is_told_so(tmp_path):
    """It got "fails on a 64x64 input ... Check 'tile_size'" or "outputs 1 channels" of its second head."""
    import keras

    from geoseg.models import write_card

    inputs = keras.Input((None, None, 3))
    seg = keras.layers.Conv2D(2, 1, activation="softmax")(inputs)
    aux = keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs)
    keras.Model(inputs, [seg, aux]).save(tmp_path / "m.keras")
    write_card(ModelCard.from_dict(CARD), tmp_path / "m.json")
    with pytest.raises(ModelError, match=r"the model has 1 input\(s\) and 2 output\(s\); geoseg needs one"):
        load_bundle(tmp_path / "m.keras")


def test_code_in_a_model_is_refused_and_an_unknown_layer_named(tmp_path):
    """Loading never runs a model's code (Keras safe mode), with geoseg's words: Keras's own advised
    safe_mode=False, which no geoseg user can pass, or dumped a custom layer's whole config."""
    import subprocess
    import sys

    from geoseg.models import write_card

    build = ("import sys, keras; i = keras.Input((None, None, 3)); x = keras.layers.Conv2D(2, 1, activation='softmax')(i)\n"
             "keras.Model(i, keras.layers.Lambda(lambda t: t * 1.0)(x)).save(sys.argv[1] + '/code.keras')\n"
             "@keras.saving.register_keras_serializable(package='elsewhere')\n"
             "class Gain(keras.layers.Layer):\n    def call(self, t):\n        return t\n"
             "keras.Model(i, Gain()(x)).save(sys.argv[1] + '/custom.keras')\n")
    subprocess.run([sys.executable, "-c", build, str(tmp_path)], check=True, timeout=300)  # Gain unknown here
    for name in ("code", "custom"):
        write_card(ModelCard.from_dict({**CARD, "name": name}), tmp_path / f"{name}.json")
    with pytest.raises(ModelError, match=r"code.keras: the model holds a Lambda layer \(Python code\), which geoseg "
                                         "does not load") as refused:
        load_bundle(tmp_path / "code.keras")
    assert "safe_mode" not in str(refused.value)
    with pytest.raises(ModelError, match=r"custom.keras: the model uses the layer class '.*Gain', which no installed "
                                         r"package registers. Install the package .* as a geoseg.models plugin"):
        load_bundle(tmp_path / "custom.keras")
    # a layer of a package: the file records its module, which the error names (h117)
    (tmp_path / "gainpack").mkdir()
    (tmp_path / "gainpack" / "__init__.py").write_text("")
    (tmp_path / "gainpack" / "layers.py").write_text(
        "import keras\n@keras.saving.register_keras_serializable(package='gainpack')\n"
        "class Gain(keras.layers.Layer):\n    def call(self, t):\n        return t\n")
    packaged = ("import sys, keras; sys.path.insert(0, sys.argv[1]); from gainpack.layers import Gain\n"
                "i = keras.Input((None, None, 3)); x = keras.layers.Conv2D(2, 1, activation='softmax')(i)\n"
                "keras.Model(i, Gain()(x)).save(sys.argv[1] + '/packaged.keras')\n")
    subprocess.run([sys.executable, "-c", packaged, str(tmp_path)], check=True, timeout=300)
    write_card(ModelCard.from_dict({**CARD, "name": "packaged"}), tmp_path / "packaged.json")
    with pytest.raises(ModelError, match=r"which no installed package registers. The model was saved with it from "
                                         r"the Python module 'gainpack.layers': install the package that provides "
                                         r"that module, as a geoseg.models plugin"):
        load_bundle(tmp_path / "packaged.keras")


def test_a_bundle_of_a_newer_keras_asks_for_that_keras(tiny_fcn, tmp_path):
    """The default model, saved by Keras 3.15, failed on Keras 3.3-3.14 with "GlorotUniform.__init__() got an
    unexpected keyword argument 'input_axes'" and nothing on what to do."""
    import zipfile

    with zipfile.ZipFile(tiny_fcn) as old, zipfile.ZipFile(tmp_path / "new.keras", "w") as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename == "config.json":  # an option of a later Keras's initializer
                data = data.replace(b'"seed": null', b'"seed": null, "future_axes": [0]', 1)
                assert b"future_axes" in data
            elif item.filename == "metadata.json":
                data = json.dumps({**json.loads(data), "keras_version": "99.1.0"}).encode()
            new.writestr(item, data)
    card = json.loads(tiny_fcn.with_suffix(".json").read_text())
    (tmp_path / "new.json").write_text(json.dumps({**card, "name": "new"}))
    with pytest.raises(ModelError, match=r"new.keras: saved by Keras 99.1.0, which this Keras \(3[.0-9]+\) cannot read "
                                         r"\(GlorotUniform.__init__\(\) got an unexpected keyword argument 'future_axes'\). Upgrade it: pip install 'keras>=99.1.0'"):
        load_bundle(tmp_path / "new.keras")


def test_bundle_rejects_a_non_keras_file(tmp_path):
    (tmp_path / "m.keras").write_text("junk")
    (tmp_path / "m.json").write_text(json.dumps(CARD))
    with pytest.raises(ModelError, match="not a Keras .keras file .* damaged or cut short"):  # Keras: "File not found"
        load_bundle(tmp_path / "m.keras")


def test_resolve_unknown_model_lists_names(model_dir, monkeypatch):
    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(model_dir))
    with pytest.raises(ModelNotFoundError, match="Available: .*tiny-fcn"):
        resolve_model("nope")
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model("/no/such/model.keras")


def _legacy_h5(tmp_path):
    """A model in the original system's shape: 128x128x3 input, softmax over 6 classes, saved as .h5."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((128, 128, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(6, 1, activation="softmax")(x)
    path = tmp_path / "custom_unet_v1.h5"
    keras.Model(inputs, outputs).save(path)
    return path


LEGACY_CARD = {
    "name": "legacy-unet", "bands": [1, 2, 3], "tile_size": 128, "margin": 8,
    "normalization": {"method": "scale", "scale": 1 / 255},
    "classes": [{"id": i, "name": n, "color": "#808080"}
                for i, n in enumerate(["building", "land", "road", "vegetation", "water", "unlabeled"])],
}


def test_legacy_h5_needs_a_card_then_segments(tmp_path, make_raster):
    from click.testing import CliRunner

    from geoseg.cli import main

    h5 = _legacy_h5(tmp_path)
    image = make_raster(shape=(150, 170))
    no_card = CliRunner().invoke(main, ["segment", str(image), "-o", str(tmp_path / "a"), "-m", str(h5)])
    assert no_card.exit_code == 1 and "carries no card" in no_card.output and "--card" in no_card.output
    card = tmp_path / "card.json"
    typo = CliRunner().invoke(main, ["segment", str(image), "-o", str(tmp_path / "a"), "-m", str(h5), "--card",
                                     str(card)])  # was "carries no card... save it as card.json"
    assert typo.exit_code == 1 and f"{card}: card file not found" in typo.output
    card.write_text(json.dumps(LEGACY_CARD))
    ok = CliRunner().invoke(main, ["segment", str(image), "-o", str(tmp_path / "b"), "-m", str(h5),
                                   "--card", str(card), "--json", "--quiet"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["plan"]["tile"] == 128 and sum(c["pixels"] for c in data["classes"]) == 150 * 170
    (tmp_path / "custom_unet_v1.json").write_text(json.dumps(LEGACY_CARD))  # a card beside it works too
    assert load_bundle(h5).card.tile_size == 128
    # `models show` reads the card only, as of a .keras bundle: a card that does not fit its model is shown
    (tmp_path / "custom_unet_v1.json").write_text(json.dumps({**LEGACY_CARD, "bands": [1, 2, 3, 4]}))
    shown = CliRunner().invoke(main, ["models", "show", str(h5)])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["bands"] == [1, 2, 3, 4]
    # a card given with a built-in baseline was dropped without a word
    baseline = CliRunner().invoke(main, ["segment", str(image), "-o", str(tmp_path / "c"), "-m", "threshold",
                                         "--card", str(card)])
    assert baseline.exit_code == 1 and "threshold is a built-in baseline with its own card" in baseline.output
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("calls", [1, 2])
def test_concurrent_model_calls_are_bounded(monkeypatch, calls):
    """Dask runs a chunk per core; only MODEL_CALLS of them may hold a model call's activations at once."""
    import threading

    import geoseg.models.segmenter as segmenter

    monkeypatch.setattr(segmenter, "MODEL_CALLS", calls)
    seg = segmenter.KerasSegmenter(build_unet(2, 3, depth=1, filters=2), ModelCard.from_dict(CARD))
    running, most, guard, full = [0], [0], threading.Lock(), threading.Event()

    def fake(batch):  # each call holds on until `calls` of them run at once: no sleep to hope they overlap
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
            if running[0] == calls:
                full.set()
        full.wait(10)
        with guard:
            running[0] -= 1
        return batch

    seg._fn = fake
    threads = [threading.Thread(target=seg.predict_proba, args=(np.zeros((1, 8, 8, 3)),)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == calls


def test_model_calls_from_the_environment(monkeypatch):
    from geoseg.models.segmenter import model_calls

    monkeypatch.setenv("GEOSEG_MODEL_CALLS", "3")
    assert model_calls() == 3
    monkeypatch.setenv("GEOSEG_MODEL_CALLS", "lots")
    with pytest.raises(ModelError, match="GEOSEG_MODEL_CALLS must be a whole number of at least 1. Received: 'lots'"):
        model_calls()


@pytest.mark.parametrize("text", [
    '{"name": "m", "margin": ' + "9" * 5000 + "}",  # ValueError: Python's int digit limit
    '{"name": "m", "training": ' + "[" * 100000 + "]" * 100000 + "}",  # RecursionError
])
def test_unreadable_cards_are_skipped_and_hide_no_other_bundle(tmp_path, monkeypatch, text):
    """A card of a huge integer or deep nesting crashed `geoseg models` and every model lookup."""
    from geoseg.models.card import read_card
    from geoseg.models.registry import Problem, list_models

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad.json").write_text(text)
    (bad / "bad.keras").write_bytes(b"")
    good = tmp_path / "good"
    good.mkdir()
    (good / "good.json").write_text(json.dumps({**CARD, "name": "good"}))
    (good / "good.keras").write_bytes(b"")
    with pytest.raises(CardError, match="bad.json: not a usable model card"):
        read_card(bad / "bad.json")
    monkeypatch.setenv("GEOSEG_MODEL_PATH", f"{bad}{__import__('os').pathsep}{good}")
    problems: list[Problem] = []
    assert "good" in [e.name for e in list_models(problems)]
    assert [p.path.name for p in problems] == ["bad.json"]
    assert resolve_model("good").endswith("good.keras")


def test_model_files_without_a_card_are_reported_and_legacy_h5_with_one_is_listed(tmp_path, monkeypatch):
    """nocard.keras was neither listed nor skipped ("no model named"); old.h5 with old.json was not found."""
    from geoseg.models.registry import Problem, list_models

    (tmp_path / "nocard.keras").write_bytes(b"")
    (tmp_path / "encoder.weights.h5").write_bytes(b"")  # weights alone: no model, and no problem
    (tmp_path / "old.h5").write_bytes(b"")
    (tmp_path / "old.json").write_text(json.dumps({**CARD, "name": "old"}))
    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(tmp_path))
    problems: list[Problem] = []
    entries = {e.name: e for e in list_models(problems)}
    assert entries["old"].path == tmp_path / "old.h5" and resolve_model("old").endswith("old.h5")
    # the file that is there, as `geoseg models --json` lists it (the missing card was given, h112)
    assert [p.path.name for p in problems] == ["nocard.keras"] and "no card nocard.json beside it" in problems[0].message
    with pytest.raises(ModelError, match="nocard.keras: no card nocard.json beside it"):
        resolve_model("nocard")


def test_model_files_of_upper_case_extensions_are_named_with_the_fix(tmp_path, monkeypatch):
    """A Windows copy's UPPER.KERAS + UPPER.JSON was left out of `geoseg models` without a word, and -m UPPER.KERAS
    said "no model named 'UPPER.KERAS' ... Pass the path of a .keras bundle", which is what was passed (h105)."""
    from geoseg.models.registry import Problem, list_models

    (tmp_path / "UPPER.KERAS").write_bytes(b"")
    (tmp_path / "UPPER.JSON").write_text(json.dumps({**CARD, "name": "upper"}))
    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(tmp_path))
    (tmp_path / "encoder.weights.H5").write_bytes(b"")  # weights alone, and any other JSON: no model (h114)
    (tmp_path / "NOTES.JSON").write_text("{}")
    problems: list[Problem] = []
    list_models(problems)
    assert sorted(p.path.name for p in problems) == ["UPPER.JSON", "UPPER.KERAS"]
    assert "Rename it UPPER.keras, and its card or model beside it likewise" in problems[1].message
    for given in ("UPPER.KERAS", "LEGACY.H5"):
        with pytest.raises(ModelNotFoundError, match=rf"{given}: model files are found by their lower-case extensions"):
            resolve_model(str(tmp_path / given))


def test_a_probe_input_that_cannot_be_made_is_a_model_error(tiny_fcn, monkeypatch):
    """The probe batch was built outside the error handling: a card's sizes could make it a MemoryError."""
    from geoseg.models import segmenter

    def fail(card, **kwargs):
        raise MemoryError("Unable to allocate 447. GiB for an array")

    monkeypatch.setattr(segmenter, "probe_batch", fail)
    with pytest.raises(ModelError, match="fails on a 68x68 input of 3 bands .*MemoryError"):
        load_bundle(tiny_fcn)


def test_classes_without_a_colour_get_distinct_ones():
    """Every class without a colour was #808080: masks, previews and QGIS styles showed them in one grey."""
    card = ModelCard.from_dict({**CARD, "classes": [{"name": "a"}, {"name": "b"}]}, source="x.json")
    assert len({c.color for c in card.classes}) == 2
    classes = [{"name": "a"}, {"name": "b", "color": "#F28E2B"}, {"name": "c"}, {"name": "d"}]  # as train passes them
    colours = [c.color for c in ModelCard.from_dict({**CARD, "classes": classes}, source="x.json").classes]
    assert len(set(colours)) == 4 and colours[1] == "#F28E2B"


def test_extra_card_fields_beside_the_field_they_resemble_are_kept():
    """'description_fr' was refused as a typo of 'description', which the card also has."""
    card = ModelCard.from_dict({**CARD, "description": "x", "description_fr": "y", "margins": [1, 2]}, source="x.json")
    assert card.name == CARD["name"]
    # the README says extra fields are kept: `models show` and a card written again dropped them
    owned = ModelCard.from_dict({**CARD, "license": "CC-BY-4.0", "author": "survey team"}).to_dict()
    assert (owned["license"], owned["author"]) == ("CC-BY-4.0", "survey team")
    assert ModelCard.from_dict(owned).to_dict() == owned


@pytest.mark.parametrize("key", ["colour", "colors"])
def test_a_near_miss_of_a_class_field_is_refused(key):
    """'colour' (the README's own word) was dropped: every class took a palette colour, without a word."""
    classes = [{"id": 0, "name": "a", key: "#FF0000"}, {"id": 1, "name": "b"}]
    with pytest.raises(CardError, match=rf"x.json: classes\[0\]: unknown field '{key}'; did you mean 'color'"):
        ModelCard.from_dict({**CARD, "classes": classes}, source="x.json")


def test_the_model_cache_reloads_a_bundle_saved_again_and_keeps_few(tiny_fcn, tmp_path):
    """The cache knew a model by its path alone and kept every one: a notebook that retrained and segmented again
    got the old weights' masks, one that compared checkpoints held about 50 MB per checkpoint until it ended, and
    each raster's calibrated baseline (threshold?water=...) stayed too."""
    import shutil

    import keras

    from geoseg.models import get_segmenter
    from geoseg.models.registry import _CACHE, _CACHE_SIZE

    bundle = tmp_path / "mine.keras"
    shutil.copy(tiny_fcn, bundle), shutil.copy(tiny_fcn.with_suffix(".json"), bundle.with_suffix(".json"))
    first = get_segmenter(str(bundle))
    assert get_segmenter(str(bundle)) is first
    model = keras.models.load_model(bundle)
    model.set_weights([w * 0 for w in model.get_weights()])
    model.save(bundle)
    again = get_segmenter(str(bundle))
    assert again is not first and all((w == 0).all() for w in again.model.get_weights())
    assert sum(k[0].startswith(str(bundle)) for k in _CACHE[False]) == 1  # the old one is dropped
    for i in range(_CACHE_SIZE[False] + 2):
        copy = shutil.copy(bundle, tmp_path / f"ckpt{i}.keras")
        shutil.copy(bundle.with_suffix(".json"), tmp_path / f"ckpt{i}.json")
        get_segmenter(copy)
    assert len(_CACHE[False]) == _CACHE_SIZE[False]
    for i in range(_CACHE_SIZE[True] + 5):
        get_segmenter(f"builtin:threshold?water={i / 100}&vegetation=0.5")
    assert len(_CACHE[True]) == _CACHE_SIZE[True]


def test_models_check_reports_a_model_that_fails_in_any_way_and_goes_on(model_dir, monkeypatch, make_raster):
    """A plugin's model that failed with an error of its own (not geoseg's) stopped the whole `models check`
    with a traceback; one that failed on the image's chunks did so in `check --image`."""
    import geoseg.models.registry as registry
    from geoseg.models.check import check_models

    monkeypatch.setenv("GEOSEG_MODEL_PATH", str(model_dir))
    real = registry.get_segmenter

    def flaky(ref, *args, **kwargs):
        if "tiny-tiled" in str(ref):
            raise AttributeError("'Plugged' object has no attribute 'inputs'")
        return real(ref, *args, **kwargs)

    monkeypatch.setattr(registry, "get_segmenter", flaky)
    results = {r.name: r for r in check_models(["tiny-tiled", "tiny-fcn"])}
    assert not results["tiny-tiled"].ok and "loading failed (AttributeError: 'Plugged' object" in results["tiny-tiled"].message
    assert results["tiny-fcn"].ok
    import geoseg.models.check as check

    monkeypatch.setattr(check, "seam_agreement", lambda *a, **k: (_ for _ in ()).throw(ValueError("ConcatOp")))
    failed = check_models(["tiny-fcn"], image=make_raster(shape=(64, 64)))[0]
    assert not failed.ok and "fails on the image's 256 px chunks (ValueError: ConcatOp)" in failed.message


def test_a_card_of_many_classes_without_colours_gets_a_colour_each():
    """The palette has 12 colours: class 12 of a 30-class card was drawn as class 0 in masks, legends and styles."""
    card = ModelCard.from_dict({**CARD, "classes": [{"id": i, "name": f"c{i}"} for i in range(30)]})
    assert len({c.color for c in card.classes}) == 30


def test_a_relative_model_path_folder_gives_absolute_references(tmp_path, monkeypatch):
    """GEOSEG_MODEL_PATH=models (relative) gave `-m NAME` the reference models/NAME.keras, which Dask workers
    started in another folder could not find: "model file models/NAME.keras not found" (h110)."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "old.h5").write_bytes(b"")
    (tmp_path / "models" / "old.json").write_text(json.dumps({**CARD, "name": "old"}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEOSEG_MODEL_PATH", "models")
    ref = resolve_model("old")
    assert ref.startswith(str(tmp_path)) and ref.endswith("old.h5")


def test_relative_archive_paths_are_made_absolute(tmp_path, monkeypatch):
    """/vsizip/data/a.zip/x.tif is read by GDAL relative to the working folder, which a Dask worker's is not (h110)."""
    from geoseg.raster import _absolute_archive

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.zip").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert _absolute_archive("/vsizip/data/a.zip/x.tif") == f"/vsizip/{tmp_path}/data/a.zip/x.tif"
    assert _absolute_archive("/vsizip/{data/a.zip}/x.tif") == f"/vsizip/{{{tmp_path}/data/a.zip}}/x.tif"
    for unchanged in ("/vsizip//abs/a.zip/x.tif", "/vsizip/vsicurl/https://h/a.zip/x.tif", "/vsizip/none.zip/x.tif",
                      "data/a.zip"):
        assert _absolute_archive(unchanged) == unchanged


def _save_bundle(model, tmp_path, name):
    path = tmp_path / f"{name}.keras"
    model.save(path)
    (tmp_path / f"{name}.json").write_text(json.dumps({**CARD, "name": name, "margin": 8, "multiple_of": 2}))
    return path


def test_a_model_of_bilinear_upsampling_runs_on_chunks_of_any_size(tmp_path):
    """Keras 3.15's bilinear UpSampling2D cannot be traced with unknown sides ("symbolic tf.Tensor as a Python
    bool"): `models check` passed such a model and `segment` ended in a TensorFlow traceback."""
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    x = keras.layers.UpSampling2D(interpolation="bilinear")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="softmax")(x))
    seg = load_bundle(_save_bundle(model, tmp_path, "bilinear"))
    for side in (32, 48):
        batch = np.random.default_rng(side).random((1, side, side, 3), np.float32)
        np.testing.assert_allclose(seg.predict_proba(batch), model(batch), atol=1e-5)  # (model.predict fails too)
        assert seg.predict_top(batch).shape == (1, side, side, 2)
    # a graph per shape, without TensorFlow's retracing warning from the fifth shape on, and not kept for good (h119)
    import logging

    from geoseg.models.segmenter import SHAPES_KEPT

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        for side in range(16, 16 + 2 * (SHAPES_KEPT + 4), 2):
            seg.predict_proba(np.zeros((1, side, side, 3), np.float32))
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert not [r for r in records if "retracing" in r.getMessage()]


def test_a_sequential_model_runs_in_bfloat16(tmp_path):
    """README: a functional or Sequential model; --precision bfloat16 rebuilt every model as a functional one,
    and a Sequential one ended in "Unrecognized keyword arguments passed to Model"."""
    import keras

    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3, padding="same"),
                              keras.layers.Conv2D(2, 1, activation="softmax")])
    seg = load_bundle(_save_bundle(model, tmp_path, "seq"), precision="bfloat16")
    batch = np.random.default_rng(0).random((1, 16, 16, 3), np.float32)
    np.testing.assert_allclose(seg.predict_proba(batch), model(batch), atol=0.02)


def test_a_raster_far_outside_a_card_s_pixel_size_range_is_warned_of(make_raster, model_dir, tmp_path, caplog):
    """A 300 m Landsat scene through the sub-metre default model came out 90% water, told with confidence and no
    word (h130): the card's pixel_size_range (metres, without resampling) says what the model suits."""
    import shutil

    from rasterio.transform import from_origin

    from geoseg import segment
    from geoseg.errors import CardError
    from geoseg.models.card import ModelCard

    card = json.loads((model_dir / "tiny-fcn.json").read_text())
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(model_dir / "tiny-fcn.keras", folder / "aerial.keras")
    (folder / "aerial.json").write_text(json.dumps({**card, "name": "aerial", "pixel_size_range": [0.1, 2.0]}))
    assert ModelCard.from_dict({**card, "pixel_size_range": [0.1, 2.0]}).to_dict()["pixel_size_range"] == [0.1, 2.0]
    assert ModelCard.from_dict({**card, "pixel_size_range": (0.1, 2)}).pixel_size_range == (0.1, 2.0)  # Python's
    for bad in ([2.0, 0.1], [0, 1], "0.1-2", [0.1]):
        with pytest.raises(CardError, match="field 'pixel_size_range' must be"):
            ModelCard.from_dict({**card, "pixel_size_range": bad})
    coarse = make_raster(shape=(40, 50), transform=from_origin(500000.0, 2800000.0, 30.0, 30.0))
    result = segment(coarse, tmp_path / "out", model=folder / "aerial.keras", preview=False)
    assert any("its pixels are 30 m, while model aerial suits imagery of about 0.1-2 m pixels" in w
               for w in result.warnings)
    fine = segment(make_raster(name="fine.tif", shape=(40, 50)), tmp_path / "fine", model=folder / "aerial.keras",
                   preview=False)  # 0.5 m
    assert not any("suits imagery" in w for w in fine.warnings)


def test_meanstd_text_of_unequal_means_and_deviations_says_so():
    """meanstd:1,2/3 was told "'normalization.std' needs one number per band (2)", the 2 being the means typed,
    while the model read 3 bands (h131)."""
    from geoseg.models.card import normalization_from_text

    with pytest.raises(ValueError, match=r"one mean and one standard deviation per band.*2 mean\(s\) but 1 standard"):
        normalization_from_text("meanstd:1,2/3")
    assert normalization_from_text("meanstd:1,2/3,4") == {"method": "meanstd", "mean": [1.0, 2.0], "std": [3.0, 4.0]}


def test_several_models_in_one_process_do_not_print_tensorflow_s_retracing_warning(tmp_path):
    """Each model's graph was a tf.function of the same code, so the fifth model loaded in one process (`geoseg
    compare` of five models, a notebook of checkpoints) printed "5 out of the last 5 calls to <function
    KerasSegmenter._build.<locals>.classes> triggered tf.function retracing", though each was traced once (h141)."""
    import logging

    import keras

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("tensorflow").addHandler(handler)
    batch = np.zeros((1, 16, 16, 3), np.float32)
    try:
        for k in range(7):
            inputs = keras.Input((None, None, 3))
            model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same", activation="softmax")(inputs))
            seg = load_bundle(_save_bundle(model, tmp_path, f"m{k}"))
            assert seg.predict_top(batch).shape == (1, 16, 16, 2)
            assert seg.predict_proba(batch).shape == (1, 16, 16, 2)
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert not [r.getMessage() for r in records if "retracing" in r.getMessage()]


def test_a_model_that_outputs_nan_on_a_raster_is_an_error_not_class_0(tmp_path, make_raster):
    """A mixed_float16 model overflowed (past 65504) on a 16-bit raster: every pixel came out as class 0 at 0%
    confidence, with only NumPy's "invalid value encountered in cast" (h141)."""
    import keras

    import geoseg

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((None, None, 3))
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer="ones")(inputs)
        x = keras.layers.Activation("softmax", dtype="float32")(keras.layers.Conv2D(2, 1)(x))
        model = keras.Model(inputs, x)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = tmp_path / "raw16.keras"
    model.save(path)
    (tmp_path / "raw16.json").write_text(json.dumps({**CARD, "name": "raw16", "normalization": {"method": "none"}}))
    load_bundle(path)  # noise of the check's size: probabilities
    data = np.full((3, 32, 40), 6000, np.uint16)
    raster = make_raster(data=data)
    with pytest.raises(ModelError, match=r"raw16\.keras: the model output NaN or infinity on 1280 of 1280 pixels"):
        geoseg.segment(raster, tmp_path / "out", model=path, preview=False)


def test_a_plugin_that_exits_at_import_is_skipped_not_the_end_of_the_command(tmp_path, monkeypatch):
    """README: a plugin that fails is skipped with a warning. One whose import called sys.exit (a module-level
    argparse that read geoseg's own arguments, a licence check) raised SystemExit past `except Exception`, and
    every command, `segment -m threshold` too, ended with the plugin's message alone (h141)."""
    from geoseg.models import registry

    site = tmp_path / "site"
    (site / "exitplug").mkdir(parents=True)
    (site / "exitplug" / "__init__.py").write_text("import sys\nsys.exit('exitplug: no licence key')\n")
    info = site / "exitplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: exitplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[geoseg.models]\nex = exitplug:bundles\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_PLUGINS_IMPORTED", False)
    monkeypatch.setattr(registry, "PLUGIN_FAILURES", [])
    problems = []
    names = {entry.name for entry in registry.list_models(problems)}
    assert {"threshold", "landcover-unet"} <= names
    assert any("plugin ex (exitplug:bundles) failed to give its model folder: SystemExit: exitplug: no licence key"
               in p.message for p in problems)
    registry._import_plugins()
    assert registry.PLUGIN_FAILURES == ["ex (exitplug:bundles): SystemExit: exitplug: no licence key"]


def test_an_hdf5_model_named_keras_and_a_folder_given_as_a_model_are_told_what_to_do(tmp_path, monkeypatch):
    """TF 2.x's model.save('x.keras') of old wrote HDF5, which was called "damaged or cut short"; a folder of bundles
    passed as -m was "no model named 'odd'" (h141)."""
    import keras

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="softmax")(inputs))
    model.save(tmp_path / "old.h5")
    (tmp_path / "old.h5").rename(tmp_path / "old.keras")
    (tmp_path / "old.json").write_text(json.dumps({**CARD, "name": "old"}))
    with pytest.raises(ModelError, match=r"old\.keras: an HDF5 file \(a legacy Keras \.h5 model\) named \.keras\. "
                                         r"Rename it old\.h5"):
        load_bundle(tmp_path / "old.keras")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bundles").mkdir()
    with pytest.raises(ModelNotFoundError, match="bundles is a folder; .*GEOSEG_MODEL_PATH"):
        resolve_model("bundles")


_NORMALISATIONS_OF_EVERY_KIND = [
    {"method": "scale", "scale": 1 / 127.5, "offset": -1.0},
    {"method": "scale", "scale": [0.1, 0.2, 0.3], "offset": [1.0, 2.0, 3.0]},
    {"method": "meanstd", "mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4]},
    {"method": "stretch", "low": [10.0, 20.0, 30.0], "high": [200.0, 20.0, 3000.0]},
    {"method": "none"},
]


def _plain_normalisation(block, norm):
    """ModelCard.normalize as it was written before it worked in place, the reference for its bytes."""
    x = block.astype(np.float32, copy=False)
    if norm["method"] == "scale":
        return x * np.asarray(norm.get("scale", 1.0), np.float32) + np.asarray(norm.get("offset", 0.0), np.float32)
    if norm["method"] == "meanstd":
        return (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    if norm["method"] == "stretch":
        low, high = np.asarray(norm["low"], np.float32), np.asarray(norm["high"], np.float32)
        return np.clip((x - low) / np.maximum(high - low, 1e-6), 0.0, 1.0)
    return x


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "float32", "float64"])
def test_normalize_in_place_gives_the_bytes_of_the_plain_expressions(dtype):
    """Normalising in one aligned buffer saves two full-size float32 arrays a chunk and TensorFlow's copies of
    its input; the values must stay those of the plain expressions, NaN included, and the input untouched."""
    from geoseg.models.card import ALIGNMENT

    rng = np.random.default_rng(1)
    card = ModelCard.from_dict(CARD)
    for shape in [(37, 41, 3), (2, 5, 7, 3), (0, 4, 3)]:
        if np.dtype(dtype).kind == "f":
            block = rng.normal(0, 1000, shape).astype(dtype)
            block.flat[::7] = np.nan
        else:
            info = np.iinfo(dtype)
            block = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        # also as rasterio's reads come, bands first moved last (not contiguous)
        for view in (block, np.moveaxis(np.ascontiguousarray(np.moveaxis(block, -1, 0)), 0, -1)):
            for norm in _NORMALISATIONS_OF_EVERY_KIND:
                before = view.copy()
                got, want = card.normalize(view, norm), _plain_normalisation(view, norm)
                assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
                assert got.tobytes() == want.tobytes(), (shape, norm)
                assert np.array_equal(view, before, equal_nan=True)
                if norm["method"] != "none" and got.size:
                    assert got.flags.c_contiguous and got.ctypes.data % ALIGNMENT == 0
    one_band = rng.integers(0, 255, (5, 5, 1)).astype("uint8")  # per-band values widen it: not in place
    for norm in _NORMALISATIONS_OF_EVERY_KIND[1:4]:
        assert card.normalize(one_band, norm).tobytes() == _plain_normalisation(one_band, norm).tobytes()


def test_model_input_is_shared_where_aligned_and_every_input_gives_the_same_outputs():
    """TensorFlow copied every NumPy batch (twice where unaligned): an aligned float32 one is now shared through
    DLPack, any other copied once into aligned memory. The outputs are those of the model called on a plain
    array, and no input is changed."""
    import keras

    import geoseg.models.segmenter as segmenter
    from geoseg.models.card import aligned_empty

    keras.utils.set_random_seed(3)
    seg = segmenter.KerasSegmenter(build_unet(2, 3, depth=1, filters=2), ModelCard.from_dict(CARD))
    x = seg.card.normalize(np.random.default_rng(0).integers(0, 255, (2, 24, 32, 3)).astype("uint8"))
    want_proba = np.asarray(seg.model(np.array(x), training=False))
    want_top = np.stack([want_proba.argmax(-1).astype(np.float32), want_proba.max(-1)], axis=-1)
    shared = segmenter._model_input(x)
    x[0, 0, 0, 0] += 1  # the tensor is the array's memory
    assert float(shared[0, 0, 0, 0]) == x[0, 0, 0, 0]
    x[0, 0, 0, 0] -= 1
    unaligned = np.empty(x.size + 1, np.float32)[1:].reshape(x.shape)
    unaligned[...] = x
    read_only = x.copy()
    read_only.flags.writeable = False
    flipped = np.ascontiguousarray(x[:, ::-1])[:, ::-1]
    aligned = aligned_empty(x.shape)
    aligned[...] = x
    for batch in (x, unaligned, read_only, flipped, x.astype(np.float64), aligned, x[:1]):
        before = np.array(batch)
        assert np.array_equal(seg.predict_proba(batch), want_proba[: len(batch)])
        assert np.array_equal(seg.predict_top(batch), want_top[: len(batch)])
        assert np.array_equal(batch, before)
