"""U-Nets on keras.applications encoders, with encoder weights from a local file (nothing downloads)."""

from __future__ import annotations

import numpy as np

from geoseg.errors import ModelError

__all__ = ["ENCODERS", "build_encoder_unet", "measured_receptive_radius"]

# encoder -> (constructor name, skip layers from 1/2 to 1/16 resolution, deepest layer at 1/32)
ENCODERS = {
    "mobilenet_v2": ("MobileNetV2", ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
                                     "block_13_expand_relu"], "out_relu"),
}


def build_encoder_unet(n_classes: int, *, encoder: str = "mobilenet_v2", weights: str | None = None,
                       alpha: float = 1.0, filters: int = 16, name: str = "encoder_unet"):
    """A U-Net whose encoder is a keras.applications network, for (N, H, W, 3) inputs, H and W multiples of 32.

    Parameters
    ----------
    encoder : str
        One of `ENCODERS`.
    weights : str, optional
        Path of the encoder's weights (e.g. the ImageNet ``*_no_top.h5`` file, saved
        beforehand): loaded from disk, never downloaded. None starts from random weights.
    alpha : float
        Width multiplier of MobileNetV2.
    filters : int
        Decoder filters at full resolution; doubled at each level down.
    """
    import keras
    from keras import layers

    if encoder not in ENCODERS:
        raise ModelError(f"encoder must be one of {', '.join(ENCODERS)}. Received: encoder={encoder!r}")
    constructor, skip_names, deepest = ENCODERS[encoder]
    base = getattr(keras.applications, constructor)(input_shape=(None, None, 3), include_top=False, weights=None,
                                                    alpha=alpha)
    if weights:
        try:
            base.load_weights(weights)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{weights}: cannot load {constructor} weights from this file ({exc}).") from None
    inputs = keras.Input((None, None, 3), name="image")
    encoder_model = keras.Model(base.input, [base.get_layer(n).output for n in skip_names + [deepest]])
    *skips, x = encoder_model(inputs)
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
