"""U-Nets on keras.applications encoders: weights from a local file, segmentation through the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.errors import ModelError
from geoseg.models.encoders import build_encoder_unet, measured_receptive_radius


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


def test_measured_radius_matches_the_closed_form_for_a_plain_unet():
    from geoseg.models import build_unet, unet_receptive_radius

    model = build_unet(2, 1, depth=2, filters=4, batch_norm=False)
    full = measured_receptive_radius(model, 1, size=96, tolerance=0)
    assert unet_receptive_radius(2) - 2 <= full <= unet_receptive_radius(2)
    assert 0 < measured_receptive_radius(model, 1, size=96) <= full
