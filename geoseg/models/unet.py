"""U-Net builders and the receptive field that sets a model's tiling margin."""

from __future__ import annotations

__all__ = ["build_unet", "unet_receptive_radius"]


def unet_receptive_radius(depth: int, *, convs_per_level: int = 2, kernel_size: int = 3) -> int:
    """Return the receptive-field radius, in input pixels, of a U-Net from `build_unet`.

    An output pixel depends only on input pixels at most this far away (Chebyshev
    distance). Tiling with a margin of at least this radius makes every kept pixel
    identical to a whole-image prediction.

    Parameters
    ----------
    depth : int
        Number of 2x down-sampling steps.
    convs_per_level : int
        Convolutions per level (encoder, bottleneck and decoder alike).
    kernel_size : int
        Odd convolution kernel size.

    Returns
    -------
    int

    Notes
    -----
    Each convolution at a level with jump ``2**l`` widens the field by
    ``(kernel_size - 1) / 2 * 2**l``; each 2x2 max-pool by ``2**l``. Nearest
    up-sampling and the skip concatenations do not widen it.

    Examples
    --------
    >>> unet_receptive_radius(4)
    107
    >>> unet_receptive_radius(1, convs_per_level=1)
    5
    """
    half = (kernel_size - 1) // 2
    conv = convs_per_level * half
    encoder = sum(conv * 2**level + 2**level for level in range(depth))
    bottleneck = conv * 2**depth
    decoder = sum(conv * 2**level for level in range(depth))
    return encoder + bottleneck + decoder


def build_unet(
    n_classes: int,
    n_bands: int,
    *,
    depth: int = 4,
    filters: int = 16,
    batch_norm: bool = True,
    dropout: float = 0.0,
    tile_size: int | None = None,
    name: str = "unet",
):
    """Build a U-Net that maps (N, H, W, n_bands) float32 to (N, H, W, n_classes) softmax.

    Parameters
    ----------
    n_classes, n_bands : int
        Output classes and input bands.
    depth : int
        Down-sampling steps; H and W must be multiples of ``2**depth``.
    filters : int
        Filters at the first level; doubled at each level down.
    batch_norm : bool
        Batch normalisation after each convolution.
    dropout : float
        Spatial dropout rate at the bottleneck (0 disables it).
    tile_size : int or None
        Fixed input size; None builds a fully convolutional model.
    name : str
        Keras model name.

    Returns
    -------
    keras.Model
    """
    import keras
    from keras import layers

    if tile_size is not None and tile_size % 2**depth:
        raise ValueError(
            f"tile_size must be a multiple of 2**depth={2**depth}. Received: tile_size={tile_size}"
        )

    def block(x, n):
        for _ in range(2):
            x = layers.Conv2D(n, 3, padding="same", use_bias=not batch_norm)(x)
            if batch_norm:
                x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        return x

    inputs = keras.Input((tile_size, tile_size, n_bands), name="image")
    x, skips = inputs, []
    for level in range(depth):
        x = block(x, filters * 2**level)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = block(x, filters * 2**depth)
    if dropout:
        x = layers.SpatialDropout2D(dropout)(x)
    for level in reversed(range(depth)):
        x = layers.UpSampling2D(2, interpolation="nearest")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = block(x, filters * 2**level)
    outputs = layers.Conv2D(n_classes, 1, activation="softmax", dtype="float32", name="proba")(x)
    return keras.Model(inputs, outputs, name=name)

