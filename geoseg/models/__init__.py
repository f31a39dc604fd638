"""Models: the Segmenter protocol, cards and bundles, U-Net builders and the registry."""

from geoseg.models.card import ClassInfo, ModelCard, read_card, write_card
from geoseg.models.registry import DEFAULT_MODEL, ModelEntry, get_segmenter, list_models, resolve_model
from geoseg.models.segmenter import KerasSegmenter, Segmenter, load_bundle
from geoseg.models.unet import build_unet, unet_receptive_radius

__all__ = [
    "ClassInfo",
    "DEFAULT_MODEL",
    "KerasSegmenter",
    "ModelCard",
    "ModelEntry",
    "Segmenter",
    "build_unet",
    "get_segmenter",
    "list_models",
    "load_bundle",
    "read_card",
    "resolve_model",
    "unet_receptive_radius",
    "write_card",
]
