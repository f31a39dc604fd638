"""Train a U-Net bundle from images and labels described by a TOML config."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import glob
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import threading
import tomllib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from geoseg.errors import InputError, ModelError, OutputError, apart, catch_warnings
from geoseg.files import decoded_text
from geoseg.models.card import MAX_CLASSES, ModelCard, write_card
from geoseg.models.labels import (IGNORE, check_label_grid, check_label_template, ids_by_name, label_file,
                                  read_labels)
from geoseg.models.metrics import confusion_matrix, json_ready, scores

__all__ = ["ARCHITECTURES", "TrainConfig", "checkpoint_folder", "checkpointed_epochs", "load_config", "load_pairs",
           "seam_free_margin", "train"]

log = logging.getLogger(__name__)

ARCHITECTURES = ("unet", "mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BUNDLE_SUFFIXES = (".keras", ".toml", ".json")  # the files of a bundle, in the order they are put in place: the card last
SAMPLING = ("area", "image")  # chips per image in proportion to its area, or the same for every image
CLASS_WEIGHTING = ("none", "sqrt", "inverse")  # loss weight per class: 1, 1/sqrt(frequency), 1/frequency


@dataclass
class TrainConfig:
    """Everything a training run needs; `load_config` reads it from TOML."""

    name: str
    classes: list[dict[str, Any]]
    images: list[str]
    labels: str
    label_format: str = "index"
    validation: list[str] = field(default_factory=list)
    selection: list[str] = field(default_factory=list)
    ignore_colors: list[str] = field(default_factory=list)
    vector_field: str = "class"
    bands: list[int] = field(default_factory=lambda: [1, 2, 3])
    band_names: list[str] | None = None  # what each band is ("red", "green", "blue"): the card's band_names
    pixel_size_range: list[float] | None = None  # metres per pixel of the imagery the model suits: the card's
    normalization: dict[str, Any] = field(default_factory=lambda: {"method": "scale", "scale": 1 / 255})
    architecture: str = "unet"
    encoder_weights: str | None = None
    alpha: float = 1.0
    freeze_encoder_bn: bool = False
    depth: int = 4
    filters: int = 16
    batch_norm: bool = True
    dropout: float = 0.0
    chip: int = 256
    batch: int = 8
    steps_per_epoch: int = 100
    epochs: int = 60
    max_minutes: float | None = None
    lr: float = 2e-3
    patience: int = 12
    dice_weight: float = 1.0
    class_weighting: str = "sqrt"
    sampling: str = "area"
    scale_jitter: float = 0.0
    band_jitter: float = 0.0
    ema: float = 0.0
    seed: int = 0
    in_memory: bool = True
    validation_chips: int = 8
    init_weights: str | None = None
    version: str = ""
    description: str = ""
    data_description: str = ""
    pixel_size: float | None = None  # the card's (ground metres); default the training images' own, where they agree
    output: str = "."
    source: str = ""

    @property
    def card_classes(self) -> list[dict[str, Any]]:
        """The classes as a model card lists them; a class without a colour gets one no other class has from
        the card (all were #808080)."""
        return [{"id": i, "name": c["name"], **{k: c[k] for k in ("color", "label_color") if k in c}}
                for i, c in enumerate(self.classes)]

    @property
    def label_classes(self) -> list[dict[str, Any]]:
        """The classes as the label masks draw them: a class's `label_color` where it has one (its `color`
        is then the maps' colour only), else its `color`."""
        return _as_in_labels(self.classes)

    def resolve(self, path: str, *, pattern: bool = False) -> str:
        """A path from the config, relative to the config file; ``~`` is the home folder (``output = "~/runs"``
        made a folder named ``~``). A glob `pattern` keeps only its own wildcards: a config in ``run [2021]/``
        matched no image, its folder's brackets taken for a character class."""
        path = os.path.expanduser(path)
        if os.path.isabs(path):
            return path
        base = str(Path(self.source).parent if self.source else Path("."))
        return str(Path(glob.escape(base) if pattern else base) / path)


def card_extras(config: TrainConfig) -> dict[str, Any]:
    """The card fields a config may give beside the network's: `band_names` and `pixel_size_range` (the GPU
    bundle script dropped both, and the zoo card held them by hand, h136)."""
    return {**({"band_names": config.band_names} if config.band_names else {}),
            **({"pixel_size_range": config.pixel_size_range} if config.pixel_size_range else {})}


def load_config(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """Read a training TOML; keys may sit at the top level or in [data], [model] and [train] tables."""
    path = Path(path)
    try:
        raw = tomllib.loads(decoded_text(path.read_bytes()))  # Notepad's BOM was "Invalid statement (at line 1)"
    except FileNotFoundError:
        raise InputError(f"{path}: no such config file.") from None
    except UnicodeDecodeError as exc:  # a binary file, or text saved in another encoding
        raise InputError(f"{path}: not a UTF-8 text file (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); "
                         "a training config is TOML text: save it as UTF-8, or check the path.") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc}).") from None
    except OSError as exc:  # a folder, no permission
        raise InputError(f"{path}: cannot read the config ({exc.strerror or exc}).") from None
    tables = ("data", "model", "train")
    flat = {k: v for k, v in raw.items() if k not in tables}  # normalization = {...} may sit at the top too
    where = dict.fromkeys(flat, "the top level")
    for table in tables:
        if not isinstance(raw.get(table, {}), dict):
            raise InputError(f"{path}: '{table}' must be a table ([{table}]). Received: {raw[table]!r}")
        for key, value in raw.get(table, {}).items():
            if key in flat:  # `epochs` at the top and in [train]: the last one won, silently
                raise InputError(f"{path}: {key} is set twice, in {where[key]} and in [{table}]; keep one.")
            flat[key], where[key] = value, f"[{table}]"
    flat.update({k: v for k, v in overrides.items() if v is not None})
    known = set(TrainConfig.__dataclass_fields__) - {"source"}  # source: where the config was read from
    unknown = sorted(set(flat) - set(known))
    if unknown:
        raise InputError(f"{path}: unknown setting(s) {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
    for key in ("name", "classes", "images", "labels"):
        if key not in flat:
            raise InputError(f"{path}: required setting '{key}' is missing.")
    for key in ("images", "validation", "selection", "ignore_colors"):  # one pattern for a list of one
        if isinstance(flat.get(key), str):
            flat[key] = [flat[key]]
    _check_types(path, flat)
    if (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", flat["name"])
            or flat["name"].lower().endswith((".keras", ".json", ".h5", ".toml"))):
        where = "--name" if overrides.get("name") is not None else f"{path}: name"
        raise InputError(f"{where} must start with an ASCII letter or digit, hold only ASCII letters, digits, '_', '.' "
                         f"and '-', and not end in a file suffix (.keras, .json, .h5, .toml): it names the model "
                         f"and its files NAME.keras and NAME.json. Received: {flat['name']!r}")
    if flat.get("architecture", "unet") not in ARCHITECTURES:
        raise InputError(f"{path}: architecture must be one of {', '.join(ARCHITECTURES)}. "
                         f"Received: {flat['architecture']!r}")
    if flat.get("sampling", "area") not in SAMPLING:
        raise InputError(f"{path}: sampling must be one of {', '.join(SAMPLING)}. Received: {flat['sampling']!r}")
    for key, (low, high, closed) in _RANGES.items():
        if key in flat and not _in_range(flat[key], low, high, closed):
            raise InputError(f"{path}: {key} must be {_range_text(low, high, closed)}. Received: {flat[key]!r}")
    if flat.get("class_weighting", "sqrt") not in CLASS_WEIGHTING:
        raise InputError(f"{path}: class_weighting must be one of {', '.join(CLASS_WEIGHTING)}. "
                         f"Received: {flat['class_weighting']!r}")
    if flat.get("label_format", "index") not in ("index", "color", "vector"):
        raise InputError(f"{path}: label_format must be index, color or vector. Received: {flat['label_format']!r}")
    if not flat.get("bands", [1]):  # max(bands) of no bands was a traceback once the images were read
        raise InputError(f"{path}: bands must list at least one band (numbered from 1, as in GDAL), such as "
                         "[1, 2, 3]. Received: []")
    if any(b < 1 for b in flat.get("bands", [1])):
        raise InputError(f"{path}: bands are numbered from 1, as in GDAL. Received: {flat['bands']}")
    check_label_template(flat["labels"], f"{path}: labels")
    if "normalization" in flat:
        from geoseg.models.card import parse_normalization

        try:
            parse_normalization(flat["normalization"], len(flat.get("bands", [1, 2, 3])), source=str(path))
        except ModelError as exc:
            raise InputError(str(exc)) from None
    suits = flat.get("pixel_size_range")
    if suits is not None and not (isinstance(suits, list) and len(suits) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in suits)
            and 0 < suits[0] <= suits[1]):  # checked before any image loads, not when the card is written
        raise InputError(f"{path}: pixel_size_range must be [lowest, highest] ground metres per pixel of the imagery "
                         f"the model suits, 0 < lowest <= highest, such as [0.1, 2.0]. Received: {suits!r}")
    _check_classes(path, flat)
    _check_weight_files(path, flat)
    _check_output(path, flat, "--output" if overrides.get("output") is not None else f"{path}: output")
    plain = flat.get("architecture", "unet") == "unet"
    multiple = 2 ** flat.get("depth", 4) if plain else 32
    if flat.get("chip", 256) % multiple:
        raise InputError(f"{path}: chip must be a multiple of {multiple} for this network "
                         f"({'2^depth' if plain else 'the encoder stride'}). Received: {flat.get('chip', 256)}")
    if flat.get("selection") and not flat.get("validation"):
        raise InputError(f"{path}: selection images choose the epoch so that the validation images are scored "
                         "unseen; give validation patterns too, or leave selection out.")
    for key, default, why in (("depth", 4, "its depth is the encoder's"), ("batch_norm", True, "its decoder always has it"),
                              ("alpha", 1.0, "only MobileNetV2 has a width multiplier")):
        applies = plain if key != "alpha" else flat.get("architecture") == "mobilenet_v2"
        if key in flat and flat[key] != default and not applies:  # a run's written config holds the defaults
            fits = "mobilenet_v2" if key == "alpha" else "unet"
            raise InputError(f"{path}: {key} = {flat[key]!r} is not used by architecture = "
                             f"{flat.get('architecture', 'unet')!r} ({why}): remove it, or pick architecture = {fits!r}.")
    if flat.get("freeze_encoder_bn") and plain:
        raise InputError(f"{path}: freeze_encoder_bn needs a pretrained encoder (architecture = "
                         f"{' or '.join(repr(a) for a in ARCHITECTURES[1:])}); a plain U-Net has none.")
    _check_encoder(path, flat, plain)
    return TrainConfig(**flat, source=str(path))


_COLOUR = re.compile(r"#[0-9A-Fa-f]{6}")


def _as_in_labels(classes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`classes` with each `label_color` (the label masks' colour) as its `color`."""
    return [{**c, **({"color": c["label_color"]} if "label_color" in c else {})} for c in classes]


def _check_classes(path: Path, flat: dict[str, Any]) -> None:
    """Names that differ; with colour labels a colour per class; `ignore_colors` only there, and no class's.
    A class's `label_color` is its colour in the label masks where that is not the maps' `color`."""
    for i, c in enumerate(flat["classes"]):
        _check_table_keys(path, f"classes[{i}]", c, ("name", "color", "label_color"))
    names = [c.get("name") for c in flat["classes"]]
    if not names:
        raise InputError(f"{path}: no classes; add a [[classes]] table with a name (and color) per class.")
    if len(names) > MAX_CLASSES:  # the masks hold ids 0-254 in a byte: 255 is nodata, and the labels' "ignore"
        raise InputError(f"{path}: {len(names)} [[classes]]; a model has at most {MAX_CLASSES}.")
    if not all(isinstance(n, str) and n.strip() for n in names) or len(set(names)) < len(names):
        raise InputError(f"{path}: every [[classes]] entry needs a name, and names must differ. Received: {names}")
    for i, c in enumerate(flat["classes"]):
        for key in ("color", "label_color"):
            if key in c and not (isinstance(c[key], str) and _COLOUR.fullmatch(c[key])):
                raise InputError(f"{path}: classes[{i}] ({c['name']}) {key} must look like '#3C1098'. "
                                 f"Received: {c[key]!r}")
    colour_labels = flat.get("label_format", "index") == "color"
    if not colour_labels and any("label_color" in c for c in flat["classes"]):  # it would be ignored
        raise InputError(f"{path}: label_color is a class's colour in colour-coded label masks "
                         f"(label_format = \"color\"); these labels are {flat.get('label_format', 'index')!r}. "
                         "Remove label_color, or set color (the maps' colour) alone.")
    in_labels = _as_in_labels(flat["classes"])
    uncoloured = [c["name"] for c in in_labels if "color" not in c]
    if colour_labels and uncoloured:
        raise InputError(f"{path}: label_format \"color\" needs a color for every class, to tell which pixels "
                         f"belong to it; class(es) {', '.join(repr(n) for n in uncoloured)} have none. Add "
                         "color = \"#RRGGBB\" (the colour of that class in the label masks) to each.")
    if colour_labels:  # a pixel of a shared colour went to the later class, and the earlier had none
        by_colour: dict[str, list[str]] = {}
        for c in in_labels:
            by_colour.setdefault(c["color"].upper(), []).append(repr(c["name"]))
        shared = [f"{colour} ({', '.join(n)})" for colour, n in by_colour.items() if len(n) > 1]
        if shared:
            raise InputError(f"{path}: label_format \"color\" tells classes apart by colour, and classes share one: "
                             f"{'; '.join(shared)}. Give each class the colour it has in the label masks.")
    ignored = flat.get("ignore_colors", [])
    if ignored and not colour_labels:
        raise InputError(f"{path}: ignore_colors applies to colour labels only (label_format = \"color\"); "
                         "index labels leave pixels unlabelled with 255 and polygons by not covering them. "
                         f"Remove ignore_colors. Received: {ignored}")
    bad = [c for c in ignored if not _COLOUR.fullmatch(c)]
    if bad:
        raise InputError(f"{path}: ignore_colors must be colours like '#000000'. Received: {bad}")
    taken = {c["color"].upper(): c["name"] for c in in_labels if "color" in c}
    clash = [f"{c} (class {taken[c.upper()]!r})" for c in ignored if c.upper() in taken]
    if clash:
        raise InputError(f"{path}: ignore_colors holds the colour of a class: {', '.join(clash)}; a colour "
                         "either names a class or marks unlabelled pixels. Remove it from one of them.")


def _check_table_keys(path: Path, where: str, table: dict[str, Any], known: typing.Iterable[str]) -> None:
    """Refuse keys a nested table does not know, as the top level does (a class's `colour`); the card's
    check refuses those of a normalisation (``scael = 0.0001`` trained with scale 1)."""
    known = sorted(known)
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(unknown)} in {where}. Known: {', '.join(known)}.")


def _check_weight_files(path: Path, flat: dict[str, Any]) -> None:
    """`encoder_weights` (unless "imagenet") and `init_weights` name files that exist, relative to the config."""
    what = {"encoder_weights": "an encoder weights file (.pth, .pt, .npz or .weights.h5) or \"imagenet\"",
            "init_weights": "a .keras bundle to fine-tune from"}
    for key, kind in what.items():
        value = flat.get(key)
        if not value or (key == "encoder_weights" and value == "imagenet"):
            continue
        resolved = value if os.path.isabs(value) else str(path.parent / value)
        if not os.path.isfile(resolved):
            raise InputError(f"{path}: {key} = {value!r}: no such file ({os.path.abspath(resolved)}). Give the path "
                             f"of {kind}, absolute or relative to the config's folder.")
        if key == "init_weights" and not _is_keras_file(resolved):  # else a traceback once all data was loaded
            raise InputError(f"{path}: init_weights = {value!r} is not a Keras model file ({os.path.abspath(resolved)}: "
                             "neither a .keras zip archive nor a legacy .h5). Give the NAME.keras of a bundle that "
                             "geoseg train wrote (not its .json card).")


def _check_encoder(path: Path, flat: dict[str, Any], plain: bool) -> None:
    """What a pretrained encoder needs, before any image loads (these were refused only once the data was read, or
    not at all): `encoder_weights` only with an encoder, "imagenet" only where a package ships them, 3 bands; and a
    warning where the normalisation is not the -1..1 that ImageNet encoders were trained on."""
    weights, architecture = flat.get("encoder_weights"), flat.get("architecture", "unet")
    if plain:
        if weights:  # ignored: a plain U-Net was trained from scratch while the card said encoder_weights = "imagenet"
            raise InputError(f"{path}: encoder_weights = {weights!r} is not used by architecture = 'unet' (a plain "
                             f"U-Net has no pretrained encoder): remove it, or pick architecture = "
                             f"{' or '.join(repr(a) for a in ARCHITECTURES[1:])}.")
        return
    from geoseg.models.encoders import IMAGENET_ENCODERS

    if weights == "imagenet" and architecture not in IMAGENET_ENCODERS:
        raise InputError(f"{path}: encoder_weights = \"imagenet\" is available for {', '.join(IMAGENET_ENCODERS)} "
                         f"only (nothing is downloaded); for architecture = {architecture!r} give the path of a local "
                         "weights file (such as mobilenet_v2_no_top.weights.h5), or leave encoder_weights out.")
    bands = flat.get("bands", [1, 2, 3])
    if len(bands) != 3:
        raise InputError(f"{path}: the {architecture} encoder takes 3 bands (its first layer is the RGB one its weights "
                         f"were trained on); the config lists {len(bands)}: {bands}. Pick 3 bands, or use "
                         "architecture = 'unet', which takes any number.")
    norm = flat.get("normalization", {"method": "scale", "scale": 1 / 255})
    nonnegative = norm.get("method") in ("percentile", "none") or (
        norm.get("method") == "scale" and norm.get("offset", 0) >= 0)
    if weights and nonnegative:
        log.warning("%s: pretrained encoder weights expect inputs in -1..1, as they were trained; this normalisation "
                    "(%s) gives 0 and above. For 8-bit imagery set normalization = { method = \"scale\", scale = "
                    "0.00784313725490196, offset = -1.0 } (0..255 to -1..1).", path,
                    "the default, scale 1/255" if "normalization" not in flat else norm.get("method"))


def _is_keras_file(path: str) -> bool:
    """Whether `path` is what ``keras.saving.load_model`` reads: a ``.keras`` zip or a legacy HDF5 ``.h5``."""
    import zipfile

    suffix = Path(path).suffix.lower()
    if suffix == ".keras":
        return zipfile.is_zipfile(path)
    if suffix in (".h5", ".hdf5"):
        with open(path, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    return False


def _check_output(path: Path, flat: dict[str, Any], where: str) -> None:
    """`output` (relative to the config) is a folder, or can become one: a file there gave a FileExistsError
    traceback once the data was loaded."""
    value = flat.get("output", ".")
    folder = Path(os.path.abspath(value if os.path.isabs(value) else path.parent / value))
    existing = next(p for p in (folder, *folder.parents) if os.path.exists(p))
    if not existing.is_dir():
        raise InputError(f"{where} = {value!r}: {existing} is a file, and the bundle goes in a folder; point output "
                         "at a folder (it is created if missing).")
    for suffix in BUNDLE_SUFFIXES:  # a folder where a bundle file goes failed after training, half the bundle written
        target = folder / f"{flat['name']}{suffix}"
        if os.path.isdir(target):
            raise InputError(f"{target} is a folder, where the bundle's {suffix} file goes; move it away, or write the "
                             "bundle elsewhere (--output, --name).")


# setting -> (lowest, highest, which bounds are allowed: True both, "low", "high", False neither); None: unbounded.
# lr: Adam's step; above 1 it only diverges (a NaN loss), so such a value is a typo
_RANGES = {
    # upper bounds far past any machine's, so that a typo is refused before the images load: chip = 1048576 failed
    # a minute later allocating 3 TiB, batch = 1000000000 hung without a word
    "epochs": (1, None, True), "batch": (1, 4096, True), "steps_per_epoch": (1, 1_000_000, True),
    "patience": (1, None, True), "validation_chips": (1, 1_000_000, True), "depth": (1, 8, True),
    "filters": (1, 1024, True), "chip": (1, 8192, True), "lr": (0, 1, "high"), "alpha": (0, None, False),
    "max_minutes": (0, None, False), "dice_weight": (0, None, True), "dropout": (0, 1, "low"),
    "ema": (0, 1, "low"), "band_jitter": (0, 1, "low"), "scale_jitter": (0, 3, True),
    "seed": (0, 2**32 - 1, True),  # what keras.utils.set_random_seed takes
    "pixel_size": (0, None, False),
}


def _in_range(value: Any, low, high, closed) -> bool:
    if value is None:
        return True
    above = value >= low if closed in (True, "low") else value > low
    below = high is None or (value <= high if closed in (True, "high") else value < high)
    return above and below


def _range_text(low, high, closed) -> str:
    if high is None:
        return f"at least {low}" if closed in (True, "low") else f"above {low}"
    if closed is True:
        return f"between {low} and {high}"
    if closed == "high":
        return f"above {low} and at most {high}"
    return f"at least {low} and below {high}"


def _check_types(path: Path, flat: dict[str, Any]) -> None:
    """Each setting has the TOML type its field declares: a clear error instead of a failure epochs later."""
    hints = typing.get_type_hints(TrainConfig)
    for key, value in flat.items():
        if not _is_a(value, hints[key]):
            raise InputError(f"{path}: {key} must be {_type_name(hints[key])}. Received: {value!r}")
        if isinstance(value, float) and not np.isfinite(value):  # TOML's inf and nan: lr = inf trained to NaN
            raise InputError(f"{path}: {key} must be a finite number. Received: {value!r}")


def _is_a(value: Any, kind: Any) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_is_a(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is type(None):
        return value is None
    return isinstance(value, kind)


def _type_name(kind: Any) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             type(None): "absent"}
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    origin = typing.get_origin(kind)
    if origin is list:
        return f"a list of {_type_name(args[0]).removeprefix('a ')}s"
    if origin is dict:
        return "a table"
    if args and origin is not None:  # X | None
        return _type_name(args[0])
    return names.get(kind, str(kind))


def _label_path(config: TrainConfig, image: str) -> str:
    p = Path(image)
    return config.resolve(config.labels.format(stem=p.stem, name=p.name, image_dir=str(p.parent)))


def _read_image(path: str, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(image, valid): the bands (rows, cols, bands), nodata filled as segment fills it, and where they are not."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    from geoseg.raster import reading_pixels

    _image_info(path, bands)
    with catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds, reading_pixels(path):  # a truncated image: named, not a traceback
            return _without_nodata(ds, bands)


def _without_nodata(ds, bands: list[int], window=None) -> tuple[np.ndarray, np.ndarray]:
    """Read `bands` of an open dataset as segment reads them: nodata where GDAL's masks say so (nodata values,
    internal masks, alpha; `geoseg.raster.valid_pixels`) or where any band is NaN or infinite. Those pixels
    hold the data mirrored across their nearest edge, as `segment` fills them (`geoseg.pipeline.fill_nodata`),
    and training leaves their labels out: a NaN collar made the loss NaN at the first step ("lower lr"), a 0
    collar was learnt as ground, and 0s the model learnt beside nodata met mirrored data at inference, so the
    card's validation IoU was not what `geoseg evaluate` measured on the same image (0.2026 against 0.1912 on a
    Landsat scene whose band 6 is nodata on 22% of it, h132). Only a window without data reads 0."""
    import warnings

    from rasterio.enums import MaskFlags  # here: scripts/gpu imports this module where rasterio is absent
    from rasterio.errors import NodataShadowWarning

    from geoseg.errors import catch_warnings
    from geoseg.raster import opaque, read_bands, valid_pixels

    data = np.moveaxis(read_bands(ds, bands, window=window), 0, -1)
    if all(MaskFlags.all_valid in ds.mask_flag_enums[b - 1] for b in bands):
        valid = np.ones(data.shape[:2], bool)
    else:
        with catch_warnings():  # "nodata shadows the alpha band": the alpha is read below as well
            warnings.simplefilter("ignore", NodataShadowWarning)
            valid = valid_pixels(ds.read_masks(bands, window=window), [ds.nodatavals[b - 1] for b in bands])
    # as segment reads it: GDAL makes no mask of an alpha beside a nodata value or not the last of 2 or 4 bands,
    # and an R,G,B,NIR,alpha ortho's transparent collar was learnt as data
    valid &= opaque(ds, window)
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(-1)
    if not valid.all():
        from geoseg.pipeline import fill_nodata

        data = fill_nodata(np.ascontiguousarray(data), valid)
    return data, valid


def _image_info(path: str, bands: list[int]):
    """`inspect_raster` of a training image, which must also have the config's `bands`."""
    from geoseg.raster import inspect_raster

    info = inspect_raster(path)
    if max(bands) > info.count:
        raise InputError(f"{path}: has {info.count} band(s) but the config's bands are {bands}.")
    return info


def _read_label(config: TrainConfig, image: str, shape: tuple[int, int]) -> np.ndarray:
    path = _label_path(config, image)
    if not os.path.exists(label_file(path)):
        raise InputError(f"{image}: its label {path} does not exist. Check 'labels' in the config.")
    if config.label_format != "vector":  # labels of another place or CRS, of the same size, were read as the image's
        check_label_grid(path, config.label_format, image)
    return read_labels(path, fmt=config.label_format, classes=config.label_classes, image=image, shape=shape,
                       vector_field=config.vector_field, ignore_colors=config.ignore_colors,
                       id_map=ids_by_name(path, config.classes) if config.label_format == "index" else None)


class LazyImage:
    """An image read by window on demand: ``image[rows, cols]`` -> (rows, cols, bands); never whole."""

    def __init__(self, path: str, bands: list[int], normalize: Callable | None = None) -> None:
        self.path, self.bands, self.normalize = path, bands, normalize
        info = _image_info(path, bands)
        self.shape, self.dtype = (info.height, info.width, len(bands)), np.dtype(info.dtype)
        # whether a window can hold nodata: its labels are then read beside the image's mask
        self.may_hold_nodata = self.dtype.kind == "f" or info.has_mask  # nodata values, masks, alpha: has_mask
        if normalize is not None:
            self.dtype = np.dtype(np.float32)
        # the `valid` of the last window read, per thread, until its labels take it: chip_stream reads a chip's
        # image and then its labels, and the labels re-read the image's window only to learn where it has data
        # (a 256 px chip of a 6000 px GeoTIFF: 40.8 ms, 19.8 ms without the re-read, h154)
        self._recent = threading.local()

    def __getstate__(self) -> dict[str, Any]:  # a thread-local cannot be pickled; a copy in a process starts empty
        return {k: v for k, v in self.__dict__.items() if k != "_recent"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _recent=threading.local())

    def normalized(self, normalize: Callable) -> "LazyImage":
        """This image normalised by `normalize`; its labels (made for this one) still take their `valid` from its
        reads without reading the window again."""
        out = copy.copy(self)
        out.normalize, out.dtype, out._recent = normalize, np.dtype(np.float32), self._recent  # (copy made a new one)
        return out

    def __getitem__(self, key) -> np.ndarray:
        chip, _ = self.read(key)
        return chip if self.normalize is None else self.normalize(chip)

    def valid(self, key) -> np.ndarray:
        """Where ``image[rows, cols]`` has data: that of the window this thread just read, else read."""
        recent, window = getattr(self._recent, "last", None), _window_key(key)
        self._recent.last = None
        if recent is not None and recent[0] == window:
            return recent[1]
        return self._read(key)[1]

    def read(self, key) -> tuple[np.ndarray, np.ndarray]:
        """(chip, valid) of ``image[rows, cols]``, as `_without_nodata` reads them."""
        chip, valid = self._read(key)
        self._recent.last = (_window_key(key), valid) if self.may_hold_nodata else None
        return chip, valid

    def _read(self, key) -> tuple[np.ndarray, np.ndarray]:
        import rasterio
        from rasterio.windows import Window

        from geoseg.raster import reading_pixels

        window = Window.from_slices(*key[:2])
        with rasterio.open(self.path) as ds, reading_pixels(self.path, window):
            chip, valid = _without_nodata(ds, self.bands, window)
            if valid.all() or not valid.any():
                return chip, valid
            # nodata in the chip: filled from the window alone, mirrors past its edge became smears of the nearest
            # pixel, unlike segment's chunks with their margins (8.5% of those pixels differed, h139); so from
            # the window with half its size around it, as far as the raster goes
            rows, cols = int(window.height), int(window.width)
            pad = max(rows, cols) // 2
            r0, c0 = max(0, int(window.row_off) - pad), max(0, int(window.col_off) - pad)
            r1 = min(ds.height, int(window.row_off) + rows + pad)
            c1 = min(ds.width, int(window.col_off) + cols + pad)
            around, _ = _without_nodata(ds, self.bands, Window(c0, r0, c1 - c0, r1 - r0))
            top, left = int(window.row_off) - r0, int(window.col_off) - c0
            return around[top:top + rows, left:left + cols], valid


def _window_key(key) -> tuple[int, int, int, int]:
    """(row, col, rows, cols) of the window ``[rows, cols]`` of `key`."""
    from rasterio.windows import Window

    window = Window.from_slices(*key[:2])
    return int(window.row_off), int(window.col_off), int(window.height), int(window.width)


class LazyLabels:
    """Labels of a `LazyImage`, read and decoded by window."""

    def __init__(self, config: TrainConfig, image: LazyImage) -> None:
        self.config, self.image, self.shape = config, image, image.shape[:2]
        self.path = _label_path(config, image.path)
        if not os.path.exists(label_file(self.path)):
            raise InputError(f"{image.path}: its label {self.path} does not exist. Check 'labels' in the config.")
        self.vector = None
        self.id_map = ids_by_name(self.path, config.classes) if config.label_format == "index" else None
        if config.label_format == "vector":  # reproject here, once: pyproj in tf.data's threads crashed (bus error)
            from geoseg.models.labels import VectorLabels

            self.vector = VectorLabels(self.path, config.classes, image.path, config.vector_field)
        else:
            check_label_grid(self.path, config.label_format, image.path)

    def __getitem__(self, key) -> np.ndarray:
        label, valid = self.read(key)
        return label if valid is None else np.where(valid, label, IGNORE).astype(np.uint8)

    def read(self, key) -> tuple[np.ndarray, np.ndarray | None]:
        """(label, valid) of ``labels[rows, cols]``: the labels as the file has them, and where the image has data
        (None where it cannot hold nodata); `__getitem__` leaves out the labels on the image's nodata."""
        from rasterio.windows import Window

        window = Window.from_slices(*key[:2])
        if self.vector is not None:
            label = self.vector.window((int(window.height), int(window.width)), window)
        else:
            label = read_labels(self.path, fmt=self.config.label_format, classes=self.config.label_classes,
                                image=self.image.path, shape=(int(window.height), int(window.width)),
                                vector_field=self.config.vector_field, window=window, id_map=self.id_map)
        if not self.image.may_hold_nodata:
            return label, None
        return label, self.image.valid(key)  # the image's nodata is no ground truth


class _LabelsOnNodata:
    """A view of `LazyLabels` whose labelled pixels on the image's nodata read as their id + 256 (int16) instead of
    255, so that the chips sampled to weigh the classes also count what nodata takes from each class."""

    def __init__(self, labels: LazyLabels) -> None:
        self.labels, self.shape = labels, labels.shape

    def __getitem__(self, key) -> np.ndarray:
        label, valid = self.labels.read(key)
        out = label.astype(np.int16)
        if valid is not None:
            out[~valid & (label != IGNORE)] += 256
        return out


def _sample_chips(pairs, chip: int, count: int, seed: int) -> list:
    """`count` times as many chips as there are `pairs`, held in memory, drawn as training draws them: by area, so
    a small image may get none (`validation_set` draws each validation image's chips on its own)."""
    stream = chip_stream(pairs, chip, seed)
    return [(x, y, f"chip {i}") for i, (x, y) in zip(range(count * len(pairs)), stream)]


# GDAL's sidecars beside an image (statistics, overviews, masks) and what file managers leave in folders
SIDECARS = (".aux.xml", ".ovr", ".msk", ".tif.xml", "thumbs.db", ".ds_store", "desktop.ini")


def training_pixel_size(paths: list[str], source: str = "") -> float | None:
    """The ground pixel size (metres) of the training images where every one has a CRS and they agree within 5%
    (their median); else None, with a line in the log where they differ."""
    from geoseg.errors import GeosegError
    from geoseg.raster import inspect_raster, pixel_sides_m

    sizes = []
    for path in paths:
        try:
            sides = pixel_sides_m(inspect_raster(path))
        except GeosegError:
            return None
        if sides is None:
            return None
        if max(sides) > 1.05 * min(sides):  # one number cannot say it: 1e-5 degree pixels at 52° N are 0.69 x 1.11 m,
            # and their mean made segment resample the training images' own kind out of shape
            log.info("%s: %s has pixels of %.3g x %.3g m, not square, so the card records no pixel size", source,
                     path, *sides)
            return None
        sizes.append(float(np.mean(sides)))
    if not sizes:
        return None
    if max(sizes) > 1.05 * min(sizes):
        log.info("%s: the training images' pixels are %.3g-%.3g m, so the card records no pixel size (set "
                 "pixel_size in [data] to have other rasters resampled to one)", source, min(sizes), max(sizes))
        return None
    return round(float(np.median(sizes)), 6)


def _pixel_size(config: TrainConfig, paths: list[str]) -> float | None:
    """The card's pixel size: the config's, which must be the training images' own where they have one (the model
    learns features at that size: a pixel_size of 0.25 for 1 m images made segment upsample every raster x4), or
    theirs."""
    measured = training_pixel_size(paths, config.source)
    if config.pixel_size is None:
        return measured
    if measured is not None and abs(config.pixel_size - measured) > 0.05 * measured:
        raise InputError(f"{config.source}: pixel_size = {config.pixel_size} m, but the training images' pixels are "
                         f"{measured:.3g} m, the size the model learns its features at. Leave pixel_size out (the "
                         "card then records theirs), or resample the images to it first (gdalwarp -tr).")
    return config.pixel_size


# where an image has no data, as training reads it (`_without_nodata`): its labels there are left out
_NODATA_TEXT = "nodata in every band, a sentinel nodata such as -9999 or NaN in any band, or a mask or alpha band"


def load_pairs(config: TrainConfig, *, with_selection: bool = False) -> tuple[list, ...]:
    """Read every (image, label, path) pair and split them by the config's validation patterns:
    (train, validation), and with `with_selection` the images of the selection patterns third.

    With ``in_memory = false`` images and labels stay on disk and are read by window
    (rasters larger than memory); `train` then validates on `validation_chips` random
    chips per validation image.
    """
    paths = sorted({os.path.abspath(p) for pattern in config.images
                    for p in glob.glob(config.resolve(pattern, pattern=True), recursive=True)})
    litter = [p for p in paths if p.lower().endswith(SIDECARS) or os.path.isdir(p)]
    if litter:  # "images/*" matched GDAL's statistics beside each image: "not a raster" stopped the run
        log.info("%s: left out %d file(s) that are no images (%s)", config.source, len(litter),
                 ", ".join(os.path.basename(p) for p in litter[:3]) + (", ..." if len(litter) > 3 else ""))
        paths = [p for p in paths if p not in litter]
    if not paths:
        # a fresh clone's configs/landcover-unet.toml: the data beside the clone was missing, and the message gave
        # neither the folder searched nor that paths are the config's own (h130)
        where = ", ".join(os.path.abspath(config.resolve(p)) for p in config.images)
        raise InputError(f"{config.source}: no images match {config.images} (relative paths are from the config's "
                         f"folder: {where}). Point the config's 'images' at your images (in a copy of the config, "
                         "for a shipped one), or put them there.")
    train, val, select = [], [], []
    n_classes = len(config.classes)
    kept, on_nodata = np.zeros(n_classes, np.int64), np.zeros(n_classes, np.int64)  # labelled pixels per class
    nodata_only = set()  # images whose labelled pixels all lie on their nodata
    for path in paths:
        if config.in_memory:
            image, valid = _read_image(path, config.bands)
            label = _read_label(config, path, image.shape[:2])
            image = image[: label.shape[0], : label.shape[1]]
            valid = valid[: label.shape[0], : label.shape[1]]
            labelled = label < n_classes
            kept += np.bincount(label[labelled & valid], minlength=n_classes)[:n_classes]
            on_nodata += np.bincount(label[labelled & ~valid], minlength=n_classes)[:n_classes]
            if labelled.any() and not (labelled & valid).any():  # labelled, but only where the image has no data
                nodata_only.add(path)
            label = np.where(valid, label, IGNORE).astype(np.uint8)
        else:
            image = LazyImage(path, config.bands)
            label = LazyLabels(config, image)
        held = any(part in path for part in config.validation)
        chosen = any(part in path for part in config.selection)
        if held and chosen:
            raise InputError(f"{config.source}: {path} matches both the validation patterns {config.validation} "
                             f"and the selection patterns {config.selection}; an image can be only one of them.")
        (val if held else select if chosen else train).append((image, label, path))
    if not train or (config.validation and not val) or (config.selection and not select):
        raise InputError(f"{config.source}: validation patterns {config.validation}"
                         f"{f' and selection patterns {config.selection}' if config.selection else ''} leave "
                         f"train={len(train)}, validation={len(val)}"
                         f"{f', selection={len(select)}' if config.selection else ''} images; each needs at least one.")
    if config.in_memory:  # labels that miss their images gave a traceback after the first epoch
        for what, pairs in (("training", train), ("validation" if val else "validation (with no validation "
                                                 "patterns, the first two training)", val or train[:2]),
                            *([("selection", select)] if select else [])):
            if not any((label != IGNORE).any() for _, label, _ in pairs):
                names = f"{', '.join(os.path.basename(p) for _, _, p in pairs[:3])}{', ...' if len(pairs) > 3 else ''}"
                if all(p in nodata_only for _, _, p in pairs):  # "check 'labels'" blamed labels that were right
                    raise InputError(
                        f"{config.source}: none of the {len(pairs)} {what} image(s) has a labelled pixel where it "
                        f"has data ({names}): their labels lie only where they have no data ({_NODATA_TEXT}). "
                        "Label them where the images have data, or leave out a band whose nodata covers them "
                        "('bands').")
                raise InputError(
                    f"{config.source}: none of the {len(pairs)} {what} image(s) has a labelled pixel ({names}). "
                    "Check 'labels' and 'label_format': polygons must cover the images, colours must be the "
                    "classes' colours, index values their ids.")
        bare = [p for _, label, p in train + val + select if not (label != IGNORE).any()]
        for which, where in (([p for p in bare if p not in nodata_only], "Check that their labels cover them."),
                             ([p for p in bare if p in nodata_only],
                              f"Their labels lie only where they have no data ({_NODATA_TEXT}).")):
            if which:  # a tile whose polygons missed it (a layer without its .prj) trained on nothing without a word
                log.warning("%s: %d of the %d images have no labelled pixel and teach nothing (%s). %s",
                            config.source, len(which), len(paths),
                            ", ".join(os.path.basename(p) for p in which[:3]) + (", ..." if len(which) > 3 else ""),
                            where)
    lost = [f"{config.classes[i]['name']} ({on_nodata[i]} px)" for i in range(n_classes) if on_nodata[i] and not kept[i]]
    # said here: class_weights' "check the labels ... add a polygon of each such class" was wrong for them (h139)
    config.lost_to_nodata = [config.classes[i]["name"] for i in range(n_classes)  # (no setting: not in the run's toml)
                             if on_nodata[i] and not kept[i]]
    if lost:  # "have no labelled pixel ... check the labels" blamed the polygons (h132: Landsat's band 6 nodata)
        log.warning("%s: every labelled pixel of class(es) %s lies where the images have no data (%s), so the "
                    "model cannot learn them. Label them where the images have data, or leave out a band whose nodata "
                    "covers them ('bands').", config.source, ", ".join(lost), _NODATA_TEXT)
    return (train, val, select) if with_selection else (train, val)


def radiometric_jitter(x, band_jitter: float = 0.0, seed=None):
    """A normalised chip (rows, cols, bands) with its contrast scaled about its mean by a gain in 0.85-1.15 and
    shifted by -0.06..0.06 (scenes differ in exposure and haze); with `band_jitter` j, each band then gets a
    gain of its own in 1 +- j (colour casts differ between scenes). TensorFlow ops, for the tf.data map.

    With `seed` (a shape-(2,) int tensor, e.g. the run's seed and the chip's index) the draws are stateless, so
    a parallel map gives each chip the same jitter whatever order its threads run in."""
    import tensorflow as tf

    if seed is None:
        gain = tf.random.uniform((), 0.85, 1.15)
        bias = tf.random.uniform((), -0.06, 0.06)
        bands = tf.random.uniform((tf.shape(x)[-1],), 1 - band_jitter, 1 + band_jitter) if band_jitter else None
    else:
        draws = tf.random.stateless_uniform((2,), seed, 0.0, 1.0)
        gain, bias = 0.85 + 0.3 * draws[0], -0.06 + 0.12 * draws[1]
        bands = (tf.random.stateless_uniform((tf.shape(x)[-1],), seed + tf.constant([0, 1], seed.dtype),
                                             1 - band_jitter, 1 + band_jitter) if band_jitter else None)
    # in float64, rounded to the chip's type once: in float32 the result hung on how the kernels were vectorised
    # (fused multiply-adds, the mean's summation order), which varied between runs, so about one chip in ten
    # differed by an ulp and two runs of one seed trained other weights
    dtype, x = x.dtype, tf.cast(x, tf.float64)
    mean = tf.reduce_mean(x)
    x = (x - mean) * tf.cast(gain, tf.float64) + mean + tf.cast(bias, tf.float64)
    if bands is not None:
        x = x * tf.cast(bands, tf.float64)
    return tf.cast(x, dtype)


def chip_stream(pairs, chip: int, seed: int, sampling: str = "area", scale_jitter: float = 0.0):
    """Endless random chips with D4 flips and rotations.

    `sampling` 'area' draws images in proportion to their area (every pixel equally
    likely); 'image' draws every image equally often, so a few large scenes do not
    crowd out many small ones. With `scale_jitter` j each chip is cut at a random
    size between chip/(1+j) and chip*(1+j) (log-uniform) and resampled to `chip`
    (bilinear image, nearest labels): ground resolutions differ between scenes.
    """
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    weights = np.array([p[0].shape[0] * p[0].shape[1] if sampling == "area" else 1 for p in pairs], np.float64)
    weights /= weights.sum()
    while True:
        image, label, _ = pairs[rng.choice(len(pairs), p=weights)]
        size = chip
        if scale_jitter:
            size = max(8, round(chip * float(np.exp(rng.uniform(-1, 1) * np.log1p(scale_jitter)))))
        if min(image.shape[:2]) < size and isinstance(image, np.ndarray):
            pad = ((0, max(0, size - image.shape[0])), (0, max(0, size - image.shape[1])))
            image, label = np.pad(image, pad + ((0, 0),), mode="reflect"), np.pad(label, pad, constant_values=IGNORE)
        h, w = min(size, image.shape[0]), min(size, image.shape[1])
        r = rng.integers(0, image.shape[0] - h + 1)
        c = rng.integers(0, image.shape[1] - w + 1)
        x, y = image[r : r + h, c : c + w], label[r : r + h, c : c + w]
        if (h, w) != (size, size):  # a lazy image smaller than the chip, padded as one held in memory is above: it
            pad = ((0, size - h), (0, size - w))  # was cut smaller and enlarged, another ground resolution
            x, y = np.pad(x, pad + ((0, 0),), mode="reflect"), np.pad(y, pad, constant_values=IGNORE)
        if size != chip:
            xr = resize(x, (chip, chip), order=1, preserve_range=True, anti_aliasing=size > chip)
            x = (np.rint(xr) if np.issubdtype(x.dtype, np.integer) else xr).astype(x.dtype)
            y = resize(y, (chip, chip), order=0, preserve_range=True, anti_aliasing=False).astype(y.dtype)
        k = rng.integers(4)
        x, y = np.rot90(x, k), np.rot90(y, k)
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        yield np.ascontiguousarray(x), np.ascontiguousarray(y)


def class_weights(pairs, n_classes: int, how: str, names: typing.Sequence[str] | None = None,
                  label_format: str = "index", said: typing.Sequence[str] = ()) -> np.ndarray:
    """Per-class loss weights: 'none', 'sqrt' (1/sqrt frequency) or 'inverse' (1/frequency), mean 1.

    A class without a labelled pixel is warned about (by its name in `names`): the model cannot learn
    it, and its weight (of a frequency floored at 1e-6) only looked like a strong one in the card.
    """
    counts = np.zeros(n_classes)
    lazy, whole = bool(pairs) and isinstance(pairs[0][1], LazyLabels), pairs
    on_nodata = np.zeros(n_classes)  # on disk: labelled pixels of the sampled chips that lie on image nodata
    if lazy:  # labels on disk: estimate from 64 random chips
        size = max(1, min(256, *(min(p[0].shape[:2]) // 2 for p in pairs)))
        pairs = _sample_chips([(image, _LabelsOnNodata(label), path) for image, label, path in pairs], size,
                              max(1, 64 // len(pairs)), 0)
    for _, label, _ in pairs:
        if lazy:
            label = np.asarray(label, np.int16)
            lost = label[label >= 256] - 256
            on_nodata += np.bincount(lost[lost < n_classes], minlength=n_classes)[:n_classes]
            label = label[label < 256]
        counts += np.bincount(label[label != IGNORE], minlength=n_classes)[:n_classes]
    lost = [i for i in range(n_classes) if on_nodata[i] and not counts[i]]
    if lost:  # in memory load_pairs says so; on disk the chips told only "check the labels", or to add polygons
        named = [names[i] if names else str(i) for i in lost]
        if [n for n in named if n not in said]:
            log.warning("every labelled pixel of class(es) %s in the chips sampled to weigh the classes lies where "
                        "the images have no data (%s), so the model cannot learn them. Label them where the images "
                        "have data, or leave out a band whose nodata covers them ('bands').",
                        ", ".join(named), _NODATA_TEXT)  # no pixel count: the chips overlap
        said = [*said, *named]
    if lazy and not counts.sum():  # in memory, load_pairs refuses it; on disk it trained at loss 0 into a bundle
        if not _holds_a_label(whole):
            if on_nodata.any():  # as load_pairs says in memory: "check 'labels'" blamed labels that were right
                raise InputError(f"none of the {len(whole)} training image(s) holds a labelled pixel where it has "
                                 f"data: the labels in the chips sampled lie only where the images have no data "
                                 f"({_NODATA_TEXT}). Label them where the images have data, or leave out a band "
                                 "whose nodata covers them ('bands').")
            raise InputError(f"none of the {len(whole)} training image(s) holds a labelled pixel. Check 'labels' and "
                             "'label_format': polygons must cover the images, colours must be the classes' colours, "
                             "index values their ids.")
        log.warning("the %d chips sampled to weigh the classes hold no labelled pixel (the labels are sparse), so "
                    "the classes are weighed equally", len(pairs))
        return np.ones(n_classes)
    absent = [names[i] if names else str(i) for i in range(n_classes) if counts[i] == 0]
    absent = [name for name in absent if name not in said]  # `said`: classes already told of (on nodata)
    if absent and counts.sum():
        # footprints of one class: the rest of each image was unlabelled, and the run trained (and scored, at mean
        # IoU 1.0) a model that paints that class everywhere, with only "check the colours, ids" to go on
        vector = (" Polygons label only the pixels they cover: outside them pixels are unlabelled, not the other "
                  "classes, so a layer of footprints alone teaches its class everywhere. Add a polygon of each such "
                  "class where it lies, e.g. one of the background class over each image's extent, first in the "
                  "file (later polygons are burnt over it)." if label_format == "vector" else "")
        log.warning("class(es) %s have no labelled pixel in the training images%s: the model cannot learn them. "
                    "Check the labels (colours, ids, class names) and that they lie where the images have data, or "
                    "leave those classes out.%s", ", ".join(absent),
                    " (in the chips sampled to weigh the classes)" if lazy else "", vector)
    freq = np.maximum(counts / max(counts.sum(), 1), 1e-6)
    weights = {"none": np.ones(n_classes), "sqrt": 1 / np.sqrt(freq), "inverse": 1 / freq}[how]
    return weights / (weights * freq).sum()


def _holds_a_label(pairs, block: int = 2048) -> bool:
    """Whether any label of (image, label, path) pairs read by window holds a labelled pixel, block by block."""
    for _, label, _ in pairs:
        rows, cols = label.shape[:2]
        for top in range(0, rows, block):
            for left in range(0, cols, block):
                window = label[top : min(top + block, rows), left : min(left + block, cols)]  # windows do not clip
                if (np.asarray(window) != IGNORE).any():
                    return True
    return False


def make_loss(n_classes: int, weights: np.ndarray, dice_weight: float) -> Callable:
    """Class-weighted cross-entropy plus soft Dice, both skipping pixels labelled 255."""
    from keras import ops

    w = ops.convert_to_tensor(weights.astype("float32"))

    def loss(y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        valid = ops.cast(ops.not_equal(y_true, IGNORE), "float32")
        onehot = ops.one_hot(ops.where(y_true == IGNORE, 0, y_true), n_classes) * valid[..., None]
        p = ops.clip(y_pred, 1e-7, 1.0)
        ce = -ops.sum(onehot * ops.log(p) * w, axis=-1)
        ce = ops.sum(ce) / ops.maximum(ops.sum(valid), 1.0)
        inter = ops.sum(p * onehot, axis=(0, 1, 2))
        total = ops.sum(p * valid[..., None], axis=(0, 1, 2)) + ops.sum(onehot, axis=(0, 1, 2))
        dice = 1.0 - ops.mean((2 * inter + 1.0) / (total + 1.0))
        return ce + dice_weight * dice

    return loss


def evaluate_pairs(segmenter, pairs, n_classes: int) -> dict[str, Any]:
    """Mean and per-class IoU of whole-image predictions against labels."""
    from geoseg.inference import predict_image

    matrix = np.zeros((n_classes, n_classes), np.int64)
    for image, label, _ in pairs:
        matrix += confusion_matrix(label, predict_image(segmenter, image).argmax(-1), n_classes)
    s = scores(matrix)
    return {"mean_iou": round(s["mean_iou"], 4), "pixel_accuracy": round(s["pixel_accuracy"], 4),
            "confusion_matrix": matrix.tolist(), "iou": s["iou"]}


def train(config: TrainConfig, *, resume: bool = True, overwrite: bool = False) -> Path:
    """Train, keep the weights with the best validation mean IoU, and write ``NAME.keras`` + ``NAME.json``.

    Checkpoints live in ``OUTPUT/NAME.checkpoints/``; with `resume` an interrupted run
    continues from its last epoch, provided its settings are the same (`max_minutes` and
    `patience` may change), else an InputError asks for ``resume=False``. A finished run
    removes its checkpoints, so the next run of the same name starts afresh; where its bundle
    is still there, that run is refused unless `overwrite` (resuming needs no `overwrite`). The config is
    written beside the model as ``NAME.toml``, its paths relative to that folder, so that it
    reproduces the run from there. ``training.seconds`` in the card adds up every session of
    a resumed run (up to each one's last checkpoint). Another process training into the same
    checkpoints meanwhile is refused (an OutputError).
    """
    try:
        return _train(config, resume=resume, overwrite=overwrite)
    finally:
        for handle in _RUN_LOCKS.__dict__.pop("held", []):  # the run's lock goes with it, as it ends or fails
            Path(handle.name).unlink(missing_ok=True)  # while still held: a run that opened it meanwhile is refused
            handle.close()


_RUN_LOCKS = threading.local()


def _train(config: TrainConfig, *, resume: bool, overwrite: bool) -> Path:
    import keras
    import tensorflow as tf

    from geoseg.models.segmenter import KerasSegmenter

    keras.utils.set_random_seed(config.seed)
    from geoseg.models.registry import builtin_names  # here: scripts/gpu loads configs where rasterio is absent

    if config.name in builtin_names():  # the bundle was then skipped by `geoseg models` as a clash, after training
        raise InputError(f"{config.source}: name {config.name!r} is a built-in baseline's, so `geoseg models` would "
                         "skip the bundle as a clash. Pick another name (name = ... or --name).")
    if len(config.classes) == 1:  # trained a 1-channel model, refused only after the data was loaded and the network
        # built, as a legacy sigmoid whose card "lists 1 class(es)", leaving NAME.checkpoints/run.json behind (h145)
        raise InputError(f"{config.source}: one class ({config.classes[0]['name']}); a model tells two or more apart. "
                         "Add a [[classes]] entry for the rest of the ground (e.g. \"background\"), in the order of "
                         "the labels' ids.")
    work = checkpoint_folder(config)
    out = work.parent
    # before any checkpoint is discarded or data read: a second run removed the first one's NAME.checkpoints (in
    # epoch 1, or with --restart) with its lock, and then both wrote there (h119). Where `out` does not exist yet
    # no run writes there; the lock is then taken as it is made, below.
    if out.is_dir():
        _lock_run(out, config.name)
    # a fresh run, before any checkpoint is discarded; a folder stopped during epoch 1 (only run.json) holds nothing
    # to resume, and an --overwrite run stopped there let the plain rerun replace the finished bundle
    if not overwrite and not (resume and (work / "state.json").exists()):
        _check_no_bundle(out, config.name)
    if not resume and work.exists():
        shutil.rmtree(work)
    if work.exists():  # before any data is read
        _check_resumable(work, config)
    # a resumed session draws other chips than the first epochs did: from the seed alone, it repeated epoch 1's
    start = checkpointed_epochs(config) if work.exists() else 0
    seed = (config.seed + 1_000_003 * start) % 2**32
    resumed = list((_read_json(work / "resumed.json") or {}).get("after_epochs", [])) if start else []
    if start:
        keras.utils.set_random_seed(seed)
        # on the card: each session draws its own chips, so a run is reproduced only by stopping it after the same
        # epochs (h122: the rerun of a resumed run's NAME.toml scored 0.487 where the run had scored 0.453)
        if resumed[-1:] != [start]:  # a resumed session killed in its first epoch resumes at the same epoch, with
            # the same chips: the card said [4, 5, 5] (h147)
            resumed = [*resumed, start]
        (work / "resumed.json").write_text(json.dumps({"after_epochs": resumed}))
    if not config.validation:
        log.warning("%s: no validation patterns, so the validation score (and the choice of the best epoch) is "
                    "measured on the first two training images and says nothing about unseen data. Hold images "
                    "out with validation = [\"PART\"] in [data]: images whose path contains PART (e.g. "
                    "\"Tile 2/\") are kept out of training and scored.", config.source)
    source = _load_init_weights(keras, config)  # a file Keras cannot read fails here, before the data is loaded
    encoder_source = _encoder_source(config)  # "imagenet" without its package fails here, before the data is loaded
    train_pairs, val_pairs, select_pairs = load_pairs(config, with_selection=True)
    n_classes, n_bands = len(config.classes), len(config.bands)
    log.info("training on %d images, validating on %d%s", len(train_pairs), len(val_pairs),
             f", choosing the epoch on {len(select_pairs)}" if select_pairs else "")
    model, margin, multiple = _build(config, n_classes, n_bands)
    card_data = {
        "name": config.name, "version": config.version or dt.date.today().isoformat(),
        "description": config.description, "bands": config.bands, "normalization": config.normalization,
        "classes": config.card_classes, **card_extras(config),
        "margin": margin, "tile_size": None, "multiple_of": multiple,
        # rasters of another pixel size are then resampled to it (segment --resample); trained on 3 cm orthos, a
        # 5 cm flight was segmented at 5 cm without a word
        "pixel_size": _pixel_size(config, [p for *_, p in train_pairs]),
    }
    card = ModelCard.from_dict(card_data, source=config.source)
    try:
        weights = class_weights(train_pairs, n_classes, config.class_weighting, [c["name"] for c in config.classes],
                                config.label_format, said=getattr(config, "lost_to_nodata", ()))
    except InputError as exc:
        raise InputError(f"{config.source}: {exc}") from None
    _check_mixed_types(config, card, [*train_pairs, *val_pairs, *select_pairs])
    chips = _stretched(train_pairs, card) if card.normalization["method"] == "percentile" else train_pairs
    # Chips go to tf.data as float32 whatever each image's type: one spec of the first image's type wrapped a
    # uint16 image's 256 to 0 after a uint8 one. float32 holds every 8- and 16-bit value exactly, and it is
    # what card.normalize computes in anyway; the conversion is per chip, so images stay in memory as read.
    spec = (tf.TensorSpec((config.chip, config.chip, n_bands), tf.float32),
            tf.TensorSpec((config.chip, config.chip), tf.uint8))

    def prepare(index, xy):
        x, y = xy
        if chips is train_pairs:
            x = tf.numpy_function(lambda a: card.normalize(a), [x], tf.float32)
        # stateless draws keyed by the chip's place in the stream: the parallel map's threads ran the stateful
        # ones in any order, so two runs of one seed jittered the chips differently and trained other weights
        key = tf.stack([tf.constant(seed % 2**31, tf.int64), 2 * index])
        return radiometric_jitter(tf.reshape(x, (config.chip, config.chip, n_bands)), config.band_jitter, key), y

    ds = (tf.data.Dataset.from_generator(lambda: ((x.astype(np.float32), y) for x, y in chip_stream(
              chips, config.chip, seed, config.sampling, config.scale_jitter)), output_signature=spec)
          .enumerate().map(prepare, num_parallel_calls=2).batch(config.batch).prefetch(4))
    if source is not None:  # fine-tune: start from a bundle of the same architecture
        try:
            model.set_weights(source.get_weights())
        except ValueError as exc:
            raise InputError(f"init_weights {config.init_weights}: not the same architecture ({exc}).") from None
        log.info("initialised from %s", config.init_weights)
    schedule = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=config.steps_per_epoch * config.epochs)
    optimizer = keras.optimizers.Adam(schedule, use_ema=bool(config.ema), ema_momentum=config.ema or 0.99)
    model.compile(optimizer=optimizer, loss=make_loss(n_classes, weights, config.dice_weight))
    scored, val_card = validation_set(config, card, train_pairs, select_pairs or val_pairs)  # chooses the epoch
    if not config.in_memory and not any((label != IGNORE).any() for _, label, _ in scored):
        which = "selection" if select_pairs else "validation"
        raise InputError(f"{config.source}: the {len(scored)} {which} chips hold no labelled pixel, so no epoch "
                         f"could be scored. Check that the {which} images' labels cover them and that the images "
                         "have data there (labels on an image's nodata, such as a band's nodata or NaN, are left "
                         "out), or raise validation_chips.")
    _check_room(out, model)  # h5py crashed (a traceback, or a segmentation fault) on a full or read-only disk
    out.mkdir(parents=True, exist_ok=True)  # after every check: a refused run left NAME.checkpoints/run.json
    if not _RUN_LOCKS.__dict__.get("held"):
        _lock_run(out, config.name)
    work.mkdir(exist_ok=True)
    (work / "run.json").write_text(json.dumps(_resume_settings(config), indent=1))
    ema = keras.callbacks.SwapEMAWeights(swap_on_epoch=True) if config.ema else None
    callback = _ValidationIoU(KerasSegmenter(model, val_card), scored, n_classes, work,
                              config.patience, time.monotonic() + 60 * config.max_minutes if config.max_minutes else None,
                              split="selection" if select_pairs else "validation", ema=ema)
    # a live bar (loss per step) on a terminal, one line per epoch in logs and where colour or cursor moves are
    # unwanted (NO_COLOR, TERM=dumb: Keras's bar wrote 64 escape codes an epoch); on stderr, as every other
    # command's progress: Keras prints to stdout, where `geoseg train ... 2>train.log` logged no epoch
    plain = os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb"
    bar = 1 if sys.stderr.isatty() and not plain else 2
    if callback.fitted:  # interrupted after the last epoch (Keras has dropped its backup): keep what it trained
        log.info("%s: the epochs were done before the interruption; finishing from the kept weights", work)
        optimizer.build(model.trainable_variables)  # the kept weights file holds the optimizer's state too
    else:
        try:  # two backups: a kill while Keras wrote one (in place) left a file that no rerun could open
            with contextlib.redirect_stdout(sys.stderr):
                model.fit(ds, steps_per_epoch=config.steps_per_epoch, epochs=config.epochs, verbose=bar, shuffle=False,
                          callbacks=[_backup(work / "backup"),
                                     # validate (and keep) the moving average of the weights, not the last step's
                                     *([ema] if ema is not None else []),
                                     callback])
        except _Diverged as exc:  # a NaN loss wrote a bundle of NaN weights that geoseg then refused to load
            raise _diverged_error(config, work, f"the loss became {exc.loss} at step {exc.step} of epoch "
                                                f"{exc.epoch}") from None
        except (OSError, RuntimeError) as exc:
            if _write_failure(exc):  # the disk filled (or went read-only) while a checkpoint was written
                from geoseg.files import write_advice
                from geoseg.raster import first_line

                raise OutputError(f"{work}: a checkpoint could not be written ({first_line(exc)[:160]}). "
                                  f"{write_advice(exc, work)}; the epochs checkpointed before are kept, and the same "
                                  "command then resumes from them.") from None
            if callback.began or not isinstance(exc, OSError):  # not the backup: an epoch was under way
                raise
            from geoseg.raster import first_line  # here: scripts/gpu imports this module where rasterio is absent
            raise InputError(f"{work / 'backup'}: the interrupted run's backup cannot be read ({first_line(exc)}; "
                             "the run was killed while it was being written). Pass --restart to train afresh."
                             ) from None
        callback.save_state(fitted=True)
    final_miou = callback.last
    if not (work / "best.weights.h5").exists():  # on disk, the validation chips held no labelled pixel
        raise InputError(f"{config.source}: no epoch could be scored: the validation chips hold no labelled pixel. "
                         "Check that the validation images' labels cover them, or raise validation_chips; then rerun "
                         "with --restart.")
    model.load_weights(work / "best.weights.h5")
    if not all(np.isfinite(w).all() for w in model.get_weights()):  # whatever the loss said: no bundle of NaN
        raise _diverged_error(config, work, "the kept weights hold NaN or infinite values")
    seams = None
    if config.architecture != "unet":  # trained weights reach further than random ones, and argmax ties further still
        impulse = max(margin, _encoder_margin(model, n_bands))
        pairs = val_pairs or train_pairs
        crops = [np.asarray(image[:SEAM_CROP, :SEAM_CROP])  # spread over the list, which runs tile by tile
                 for image, _, _ in pairs[:: max(1, len(pairs) // SEAM_IMAGES)][:SEAM_IMAGES]]
        print(f"checking the seam-free margin on {len(crops)} image crop(s), then scoring the validation images "
              "(minutes on a CPU)", flush=True)  # after Keras's last epoch line, as that bar is printed
        margin, agreement = seam_free_margin(KerasSegmenter(model, card), crops, impulse)
        seams = {"margin_px": margin, "impulse_response_px": impulse, "chunk": 256, "images": len(crops),
                 "agreement": round(agreement, 6)}
    held, held_card = validation_set(config, card, train_pairs, val_pairs) if select_pairs else (scored, val_card)
    metrics = evaluate_pairs(KerasSegmenter(model, held_card), held, n_classes)  # unseen by the choice with selection
    split = _split_text(config, train_pairs, select_pairs)
    report = json_ready({  # null, not NaN (which is not JSON), for a class absent from the labels and predictions
        # relative to the config file as its other paths are: --output (made absolute) put a home folder in the card
        "training": {"config": {**_config_dict(config), "output": _relative(config, config.resolve(config.output))
                                if os.path.isabs(config.output) else config.output},
                     # the folder those paths are relative to, from the card's: ../data/lv.tif in a card under
                     # runs/ named no file from there (h122)
                     "paths_relative_to": os.path.relpath(_config_folder(config), out.resolve()),
                     "data": config.data_description,
                     "train_images": len(train_pairs),  # and which: a card counted them only
                     "train_files": [_relative(config, p) for _, _, p in train_pairs],
                     "validation_images": [_relative(config, p) for _, _, p in val_pairs], "split": split,
                     **({"selection_images": [_relative(config, p) for _, _, p in select_pairs],
                         "selection_mean_iou": callback.best} if select_pairs else {}),
                     "epochs": callback.epoch, "best_epoch": callback.best_epoch, "stopped": callback.stopped,
                     "final_epoch_mean_iou": final_miou, "epoch_mean_iou": callback.history,
                     "seconds": round(callback.seconds()), "class_weights": weights.round(4).tolist(),
                     **({"resumed_after_epochs": resumed} if resumed else {}),
                     **({"margin_check": seams} if seams else {}),
                     **({"encoder_weights": encoder_source} if encoder_source else {})},
        "metrics": {"validation": {**{k: v for k, v in metrics.items() if k != "iou"},
                                   "iou": {c["name"]: round(float(v), 4) for c, v in zip(config.classes, metrics["iou"])}}},
    })
    card = ModelCard.from_dict({**card.to_dict(), "margin": margin, **report}, source=config.source)
    _write_bundle(config, out, model, card)
    shutil.rmtree(work)  # finished: the bundle holds the best weights, and the next run must not resume this one
    log.info("wrote %s (validation mean IoU %.4f)", out / f"{config.name}.keras", metrics["mean_iou"])
    return out / f"{config.name}.keras"


def _encoder_source(config: TrainConfig) -> dict[str, Any] | None:
    """Which file the encoder's weights came from, for the card: the package that ships "imagenet" (and its
    version) or the file relative to the config, with its SHA-256 (the card held the setting's text only, so
    another file at that path, or another package version, trained a model the card could not tell apart)."""
    if config.architecture == "unet" or not config.encoder_weights:
        return None
    import hashlib

    if config.encoder_weights == "imagenet":
        from importlib import metadata

        from geoseg.models.encoders import _IMAGENET_PACKAGES, imagenet_weights

        try:
            path = imagenet_weights(config.architecture)
        except ModelError as exc:
            raise InputError(f"{config.source}: {exc}") from None
        package = _IMAGENET_PACKAGES[config.architecture][0]
        try:
            source = {"package": f"{package}=={metadata.version(package)}", "file": os.path.basename(path)}
        except metadata.PackageNotFoundError:
            source = {"package": package, "file": os.path.basename(path)}
    else:
        path = config.resolve(config.encoder_weights)
        source = {"file": _relative(config, path)}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {**source, "sha256": digest.hexdigest()}


def _load_init_weights(keras, config: TrainConfig):
    """The model `init_weights` names, or None; a file Keras cannot load is an InputError."""
    if not config.init_weights:
        return None
    path = config.resolve(config.init_weights)
    if not os.path.isfile(path):
        raise InputError(f"{config.source}: init_weights {config.init_weights} does not exist.")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, OSError, KeyError, ... for a file that is not its model
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"{config.source}: init_weights = {config.init_weights!r}: Keras cannot load it as a model "
                         f"({reason}). Give the NAME.keras of a bundle that geoseg train wrote.") from None


MIXED_TYPES_SPREAD = 8.0  # how far the normalised values of images of different types may differ (see below)


def _check_mixed_types(config: TrainConfig, card: ModelCard, pairs) -> None:
    """Refuse images of several data types where the one normalisation cannot suit them all.

    A 'percentile' stretch maps each image by its own percentiles, so types mix freely. A
    'scale', 'meanstd' or 'none' normalisation maps raw values alike in every image: right for
    a uint16 image that holds 8-bit values beside uint8 ones, but 16-bit reflectance beside
    8-bit RGB would teach the model two scales at once, and the card's normalisation would
    then fit only one of them at inference. So where types differ, the 99th percentile of
    the normalised |values| of the first image of each type must agree within a factor of
    `MIXED_TYPES_SPREAD` (scenes of the same units differ by far less); else the error names
    two of the files, their types and values, and how to bring them to one scale.
    """
    from geoseg.raster import read_preview

    if card.normalization["method"] == "percentile":
        return
    first: dict[np.dtype, tuple[Any, str]] = {}
    for image, _, path in pairs:
        first.setdefault(np.dtype(image.dtype), (image, path))
    if len(first) < 2:
        return
    levels = []
    for dtype, (image, path) in first.items():
        sample = read_preview(path, config.bands, 256, min_side=1) if isinstance(image, LazyImage) else image[::4, ::4]
        values = np.abs(card.normalize(sample))
        level = float(np.percentile(values[np.isfinite(values)], 99)) if np.isfinite(values).any() else 0.0
        if level > 0:  # an all-zero image says nothing about its units
            levels.append((level, dtype, path))
    if len(levels) < 2:
        return
    (low, low_type, low_path), (high, high_type, high_path) = (f(levels, key=lambda t: t[0]) for f in (min, max))
    if high > MIXED_TYPES_SPREAD * low:
        raise InputError(
            f"{config.source}: images of different types need one normalisation, and {low_path} ({low_type}) and "
            f"{high_path} ({high_type}) reach {low:.3g} and {high:.3g} after it ({card.normalization}): they are in "
            "different units, and the model would learn two scales. Convert the images to one type and range (for "
            "8-bit: gdal_translate -ot Byte -scale IN.tif OUT.tif), or use normalization = {method = \"percentile\"}, "
            "which stretches each image by its own percentiles.")


def _write_bundle(config: TrainConfig, out: Path, model, card: ModelCard) -> None:
    """Write NAME.keras, NAME.toml and NAME.json as one set.

    Each is written whole in a hidden folder in `out` (a `staging_dir`: removed on an error,
    Ctrl-C or SIGTERM, and by the next run after a SIGKILL), then all are renamed into place
    with signals held, the card last, by `move_all`, which puts back what was there if a
    rename fails. So `out` holds the whole new bundle or whatever it held before.
    """
    import keras

    from geoseg.errors import GeosegError
    from geoseg.files import move_all, signals_held
    from geoseg.raster import staging_dir

    final = [out / f"{config.name}{suffix}" for suffix in BUNDLE_SUFFIXES]
    try:
        with staging_dir(out) as tmp:
            staged = [tmp / path.name for path in final]
            keras.Model(model.inputs, model.outputs, name=model.name).save(staged[0])  # weights only, no optimizer
            staged[1].write_text(_to_toml(_rebased_config(config, out)), encoding="utf-8")  # as load_config reads it
            write_card(card, staged[2])
            with signals_held():  # Ctrl-C waits for the last rename
                move_all(list(zip(staged, final)), staging=tmp)
    except GeosegError as exc:  # move_all's, which says what was kept
        raise OutputError(f"{exc} Then rerun the same command: it writes the bundle {config.name} from the "
                          f"checkpoints in {checkpoint_folder(config)} without training again.") from None
    except OSError as exc:
        where = exc.filename or out
        raise OutputError(f"{where}: cannot write the bundle {config.name} there ({exc.strerror or exc}); none of its "
                          f"files was put in place. Fix that and rerun the same command: it writes the bundle from "
                          f"the checkpoints in {checkpoint_folder(config)} without training again.") from None


def _lock_run(out: Path, name: str) -> None:
    """Hold the run's lock (`_hold_run_lock`) until `train` returns, which closes it."""
    lock = _hold_run_lock(out, name)
    if lock is not None:
        _RUN_LOCKS.__dict__.setdefault("held", []).append(lock)


def _hold_run_lock(out: Path, name: str):
    """An open file ``OUT/.NAME.geoseg-train.lock`` on which this process holds an exclusive lock for the run, or an
    OutputError when another process holds it: two runs into one output shared NAME.checkpoints/, overwrote each
    other's backups, and one died in h5py's 'unable to lock file' traceback (h118). Beside the checkpoints, not in
    them, which a run in epoch 1 or with --restart removes first. The lock goes with the file (or the process);
    None where the system has no flock (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(out / f".{name}.geoseg-train.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise OutputError(f"{out / (name + '.checkpoints')}: another geoseg train is writing this run's checkpoints, "
                          "and the two would overwrite each other's. Wait for it to end, or give this one another "
                          "--output or --name.") from None
    return handle


def _write_failure(exc: BaseException) -> bool:
    """Whether `exc` (h5py's OSError or RuntimeError among them) is a write that failed for want of room or rights."""
    import errno

    codes = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
    if isinstance(exc, OSError) and exc.errno in codes:
        return True
    text = str(exc)
    return any(f"errno = {code}," in text for code in codes) or "No space left on device" in text


def _check_room(out: Path, model) -> None:
    """OutputError before the first epoch when `out` cannot be written, or its disk cannot hold the checkpoints
    (the best weights, two backups with the optimizer's state, and the bundle): h5py, writing a checkpoint on a
    full disk, printed hundreds of tracebacks and ended in a segmentation fault, and on a read-only folder
    `os.mkdir` raised a traceback."""

    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        try:
            read_only = os.statvfs(probe).f_flag & os.ST_RDONLY
        except OSError:
            read_only = False
        raise OutputError(f"{out}: cannot be written ({'a read-only file system' if read_only else 'no permission'}"
                          f" at {probe}). Pick another output folder (--output, or output in the config).")
    weights = sum(int(np.prod(w.shape)) * np.dtype(str(getattr(w, "dtype", "float32"))).itemsize
                  for w in model.weights)
    need = 12 * weights + 2**20  # best + its temporary copy, 2 backups of weights and Adam's 2 moments, the bundle
    free = shutil.disk_usage(probe).free
    if free < need:
        needed, left = apart(need / 2**20, free / 2**20)  # 1.04 and 1.02 MB both read 1.0 MB at one decimal
        raise OutputError(f"{out}: not enough free disk space for the checkpoints and the bundle (about "
                          f"{needed} MB needed, {left} MB free). Free some disk space or pick "
                          "another output folder.")


def _backup(folder: Path):
    """Keras's BackupAndRestore (two backups: a kill while one was written, in place, left a file no rerun could
    open), whose backup a Ctrl-C or SIGTERM does not cut short, and whose rerun falls back to the backup before
    where the latest is a readable file short of weights.

    The signal's exception landed inside ``save_weights``: the HDF5 file was closed with 40 of its 161 datasets,
    Keras's fallback takes only an OSError, and every rerun ended in "A total of 13 objects could not be loaded"
    (h103)."""
    import keras

    from geoseg.files import signals_held

    class Backup(keras.callbacks.BackupAndRestore):
        def _save_model(self):
            with signals_held():  # a few seconds at most: the interrupt comes once the backup is whole
                super()._save_model()

        def on_train_begin(self, logs=None):
            try:
                with warnings.catch_warnings():  # a hundred lines of "Skipping variable loading" for a short file
                    warnings.filterwarnings("ignore", category=UserWarning, module=r"keras\.")
                    super().on_train_begin(logs)
            except (ValueError, KeyError) as exc:  # readable, but short of weights (a backup of geoseg before)
                if not os.path.exists(self._prev_weights_path):
                    raise OSError(str(exc).strip().split("\n")[0]) from None
                log.warning("%s: the latest backup was cut short; resuming from the one before it", folder)
                shutil.copyfile(self._prev_weights_path, self._weights_path)  # as Keras does after an OSError
                if os.path.exists(self._prev_training_metadata_path):
                    shutil.copyfile(self._prev_training_metadata_path, self._training_metadata_path)
                elif os.path.exists(self._training_metadata_path):
                    os.remove(self._training_metadata_path)
                try:
                    self._load_model()
                except (ValueError, KeyError) as again:
                    raise OSError(str(again).strip().split("\n")[0]) from None

    return Backup(str(folder), double_checkpoint=True)


class _Diverged(Exception):
    """Raised by the training callback at the first step whose loss is NaN or infinite."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(f"loss {loss} at step {step} of epoch {epoch}")
        self.epoch, self.step, self.loss = epoch, step, loss


def _diverged_error(config: TrainConfig, work: Path, what: str) -> InputError:
    """The error of a run whose training diverged: no bundle is written."""
    return InputError(f"{config.source}: training diverged: {what}, so no bundle was written. Lower lr (now "
                      f"{config.lr}), and check that the images hold no NaN or infinite pixels and that the "
                      f"normalisation ({config.normalization}) maps them to small values; then rerun with --restart, "
                      f"which discards the checkpoints of this run in {work}.")


def _check_no_bundle(out: Path, name: str) -> None:
    """Refuse to start a run that would replace the bundle of a finished one (rerunning a config, or
    ``geoseg train --config NAME.toml`` in the bundle's folder, replaced it without a word)."""
    found = [out / f"{name}{suffix}" for suffix in (".keras", ".json") if (out / f"{name}{suffix}").exists()]
    if found:
        raise InputError(f"{found[0]} is the bundle of a finished run, which this run would replace; pass "
                         "--overwrite (overwrite=True) to replace it, or write the new one elsewhere (--output, "
                         "--name).")


def checkpoint_folder(config: TrainConfig) -> Path:
    """``OUTPUT/NAME.checkpoints``: where a run keeps what an interrupted rerun resumes from (absolute)."""
    return Path(os.path.abspath(config.resolve(config.output))) / f"{config.name}.checkpoints"


def checkpointed_epochs(config: TrainConfig) -> int:
    """How many epochs of an interrupted run of `config` are checkpointed, so that rerunning it with
    ``resume=True`` goes on after them; 0 when there is nothing to resume (stopped during epoch 1)."""
    work = checkpoint_folder(config)
    state = _read_json(work / "state.json")
    if not state:  # stopped during epoch 1: `_check_resumable` discards the folder
        return 0
    backup = _read_json(work / "backup" / "training_metadata.json") or _read_json(
        work / "backup" / "training_metadata.json.bkp")  # Keras resumes after its backup's epoch
    return int((backup or state).get("epoch", 0))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _split_text(config: TrainConfig, train_pairs, select_pairs) -> str:
    """How the card's validation metrics were held out, in words; on disk, that they come from chips."""
    chips = "" if config.in_memory else (
        f"; scored on {config.validation_chips} random {config.chip}x{config.chip} chips of each image "
        "(in_memory = false), not the whole images: geoseg evaluate scores whole images")
    if select_pairs:
        return (f"by file: validation patterns {config.validation}, scored once after training; best epoch chosen on "
                f"the mean IoU of the selection patterns {config.selection}{chips}")
    if config.validation:
        return f"by file: validation patterns {config.validation}; best epoch chosen on validation mean IoU{chips}"
    names = ", ".join(_relative(config, p) for _, _, p in train_pairs[:2])
    return ("no held-out split (no validation patterns): validation metrics, and the choice of the best epoch, are "
            f"on the first two training images ({names}), so they say nothing about unseen data{chips}")


def _rebased_config(config: TrainConfig, folder: Path) -> dict[str, Any]:
    """The config's settings with its relative paths made relative to `folder` instead of the config's own
    folder: a copy written there reproduces the run. Absolute paths stay as they are, except `output`,
    which is always relative (``"."`` when `folder` is the output folder)."""
    source = Path(config.source).parent if config.source else Path(".")
    try:
        base = os.path.relpath(source.resolve(), Path(folder).resolve())
    except ValueError:  # another drive: no relative path leads there
        base = str(source.resolve())
    data = _config_dict(config)
    data["images"] = [_rebased(p, base, pattern=True) for p in config.images]
    if not config.labels.startswith("{image_dir}"):  # {image_dir} stands for an absolute folder
        data["labels"] = _rebased(config.labels, base)
    for key in ("init_weights", "encoder_weights"):
        if data[key] and not (key == "encoder_weights" and data[key] == "imagenet"):
            data[key] = _rebased(data[key], base)
    try:
        data["output"] = os.path.relpath(Path(config.resolve(config.output)).resolve(), Path(folder).resolve())
    except ValueError:
        data["output"] = str(Path(config.resolve(config.output)).resolve())
    return data


def _rebased(path: str, base: str, *, pattern: bool = False) -> str:
    """`path` (relative to a folder that is `base` from here) relative to here; '..' after a wildcard stays. ``~`` is
    the home folder, as `TrainConfig.resolve` reads it, and stays; a glob `pattern` gets `base` with its wildcards
    escaped (a config in 'run [1]/' wrote a copy whose images matched nothing, and '~/data' became 'run/~/data')."""
    if os.path.isabs(os.path.expanduser(path)):  # '~/data' stays so: it is anyone's home folder
        return path
    joined = os.path.join(glob.escape(base) if pattern else base, path)
    parts = Path(path).parts
    wild = next((i for i, part in enumerate(parts) if re.search(r"[*?[]", part)), len(parts))
    return joined if ".." in parts[wild:] else os.path.normpath(joined)


# settings that may change when an interrupted run resumes; any other change means another run
_RESUMABLE = ("max_minutes", "patience", "output", "description", "version", "data_description", "pixel_size")


def _resume_settings(config: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in _config_dict(config).items() if k not in _RESUMABLE}))


def _check_resumable(work: Path, config: TrainConfig) -> None:
    """Refuse to resume checkpoints that were made with other settings."""
    settings = _resume_settings(config)
    run_file = work / "run.json"
    if run_file.exists() and not (work / "state.json").exists():  # stopped during epoch 1: nothing to resume
        shutil.rmtree(work)
        return
    if run_file.exists():
        previous = json.loads(run_file.read_bytes())
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed:
            raise InputError(f"{work} holds the checkpoints of an interrupted run with other settings "
                             f"({', '.join(changed)}). Pass --restart (resume=False) to discard them and start "
                             "afresh, or put those settings back to resume it.")
    elif any(work.iterdir()):
        raise InputError(f"{work} holds checkpoints that do not say which settings made them (an older geoseg "
                         "made them, and kept them even after a finished run). Pass --restart (resume=False) to "
                         "discard them.")


def validation_set(config: TrainConfig, card: ModelCard, train_pairs, val_pairs) -> tuple[list, ModelCard]:
    """What each epoch is scored on, and the card to score it with.

    In memory: the validation images whole. On disk: `validation_chips` random chips of
    each, the same every epoch. With a percentile stretch the images (the chips' images)
    are stretched first by their own raster's percentiles of its valid pixels (as
    inference stretches a raster), not by each chip's, and scored with a card that
    normalises nothing.
    """
    scored = val_pairs or train_pairs[:2]
    if card.normalization["method"] == "percentile":  # in memory too: scored whole, the stretch counted the nodata
        # collar (read as 0) among the pixels, where training and segment leave it out: the best epoch was chosen,
        # and the card's IoU measured (0.065 against evaluate's 0.078), on other images than segment sees (h103)
        scored = _stretched(scored, card)
        card = ModelCard.from_dict({**card.to_dict(), "normalization": {"method": "none"}}, source=config.source)
    if config.in_memory:
        return scored, card
    # `validation_chips` of each image, as the card's split says: drawn by area over all of them, a small image
    # beside a large one got none and was never scored, though the card listed it among the validation images
    # (h157). The first image draws from seed + 1 as before, so a run with one validation image scores the same chips.
    return [chip for i, pair in enumerate(scored)
            for chip in _sample_chips([pair], config.chip, config.validation_chips, config.seed + 1 + i)], card


def _stretched(pairs, card: ModelCard) -> list:
    """Images stretched by their own percentiles (float32), as inference stretches each raster by its own."""
    from geoseg.models.card import resolve_normalization

    out = []
    for image, label, path in pairs:
        if isinstance(image, LazyImage):  # on disk: percentiles of a decimated read, as inference takes them
            from functools import partial

            from geoseg.raster import read_preview

            sample = read_preview(path, image.bands, 1024, min_side=1, overviews=False)  # not a COG's overviews,
            valid = read_preview(path, image.bands, 1024, min_side=1, mask=True, overviews=False)  # as segment (h119)
            norm = resolve_normalization(card.normalization, sample, valid)
            out.append((image.normalized(partial(card.normalize, normalization=norm)), label, path))
        else:  # the image's nodata (read as 0) is left out of its percentiles, as inference leaves it out
            valid = _read_image(path, list(card.bands))[1][: image.shape[0], : image.shape[1]]
            norm = resolve_normalization(card.normalization, image, valid)
            out.append((card.normalize(image, norm), label, path))
    return out


def _build(config: TrainConfig, n_classes: int, n_bands: int):
    """The network, its margin (receptive-field radius) and the multiple its input sides must be."""
    from geoseg.models.unet import build_unet, unet_receptive_radius

    if config.architecture == "unet":
        model = build_unet(n_classes, n_bands, depth=config.depth, filters=config.filters,
                           batch_norm=config.batch_norm, dropout=config.dropout, name=config.name)
        return model, unet_receptive_radius(config.depth), 2**config.depth
    from geoseg.models.encoders import build_encoder_unet

    if n_bands != 3:
        raise InputError(f"{config.source}: a {config.architecture} encoder takes 3 bands; the config lists {n_bands}.")
    weights = config.encoder_weights
    if weights and weights != "imagenet":
        weights = config.resolve(weights)
    model = build_encoder_unet(n_classes, encoder=config.architecture, weights=weights, alpha=config.alpha,
                               filters=config.filters, dropout=config.dropout, name=config.name)
    if config.freeze_encoder_bn:  # keep the encoder's ImageNet statistics: batches of 8 chips estimate them badly
        for layer in _encoder_bn_layers(model):
            layer.trainable = False
    return model, _encoder_margin(model, n_bands), 32


def _encoder_bn_layers(model) -> list:
    """The BatchNormalization layers inside the encoder sub-model of an encoder U-Net."""
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return [layer for sub in nested for layer in sub.layers if isinstance(layer, keras.layers.BatchNormalization)]


SEAM_IMAGES, SEAM_CROP = 4, 768  # what the margin of an encoder U-Net is checked on: 4 validation images, 768 px


def seam_free_margin(segmenter, images: list[np.ndarray], start: int, *, chunk: int = 256, step: int = 32,
                     target: float = 0.9999, limit: int = 512) -> tuple[int, float]:
    """The smallest margin, from `start` up in `step`s, at which tiled and whole-image masks agree.

    The impulse response (`_encoder_margin`) says where one pixel's influence fades, but an
    argmax near a tie flips on far smaller changes: on the Lite2 default model its 160 px
    left 0.04-0.18% of the pixels of 256 px chunks different from a whole-image run. So each
    image is predicted whole and cut into `chunk`-pixel chunks that carry the margin (as a
    tiled run cuts a raster), and the first margin at which the masks agree on at least
    `target` of all the images' pixels is taken; `limit` ends the search. Returns
    (margin, agreement).
    """
    from geoseg.inference import predict_image

    margin = start
    while True:
        same = sum(int((predict_image(segmenter, image, margin=margin).argmax(-1) == predict_image(
            segmenter, image, margin=margin, tile=chunk + 2 * margin, batch_size=2).argmax(-1)).sum()) for image in images)
        agreement = same / max(1, sum(image.shape[0] * image.shape[1] for image in images))
        log.info("margin %d px: tiled and whole-image masks agree on %.4f%% of the pixels", margin, 100 * agreement)
        if agreement >= target:
            return margin, float(agreement)
        if margin + step > limit:
            log.warning("tiled and whole-image masks still differ on %.4f%% of the pixels at the %d px limit; "
                        "the margin stays %d px", 100 * (1 - agreement), limit, margin)
            return margin, float(agreement)
        margin += step


def _encoder_margin(model, n_bands: int) -> int:
    """The effective receptive-field radius of an encoder U-Net, rounded up to its 32 px stride."""
    from geoseg.models.encoders import measured_receptive_radius

    radius = measured_receptive_radius(model, n_bands, size=1024)
    return int(np.ceil(max(radius, 1) / 32) * 32)


def _config_folder(config: TrainConfig) -> Path:
    """The folder of the config file, which its paths (and a card's) are relative to."""
    return (Path(config.source).parent if config.source else Path(".")).resolve()


def _relative(config: TrainConfig, path: str) -> str:
    """`path` relative to the config file, as the config's own paths are (no absolute paths in a card)."""
    return os.path.relpath(path, _config_folder(config))


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in TrainConfig.__dataclass_fields__ if k != "source"}


def _to_toml(data: dict[str, Any]) -> str:
    def dumps(value) -> str:  # JSON's escapes are TOML's, but for \uD83C\uDFE0 (surrogates), which TOML refuses
        return json.dumps(value, ensure_ascii=False)

    lines, tables = [], []
    for key, value in data.items():
        if value is None:
            continue
        if key == "classes":
            tables += ["", *sum((["[[classes]]", *(f"{k} = {dumps(v)}" for k, v in c.items())] for c in value), [])]
        elif isinstance(value, dict):
            lines.append(f"{key} = {{ " + ", ".join(f"{k} = {dumps(v)}" for k, v in value.items()) + " }")
        else:
            lines.append(f"{key} = {dumps(value)}")
    return "\n".join(lines + tables) + "\n"


class _ValidationIoU:
    """Keras callback: validation mean IoU each epoch, best weights kept, early stop, time budget."""

    def __new__(cls, *args, **kwargs):
        import keras

        class Callback(keras.callbacks.Callback):
            def __init__(self, segmenter, pairs, n_classes, work, patience, deadline, split="validation", ema=None):
                super().__init__()
                self.ema = ema  # the SwapEMAWeights callback, whose weights are the ones scored
                self.split = split  # "selection" where selection images choose the epoch: the bar and log say so
                self.segmenter, self.pairs, self.n_classes = segmenter, pairs, n_classes
                self.work, self.patience, self.deadline = work, patience, deadline
                state = json.loads((work / "state.json").read_bytes()) if (work / "state.json").exists() else {}
                self.best, self.best_epoch = state.get("best", -1.0), state.get("best_epoch", 0)
                self.last, self.epoch, self.fitted = state.get("last"), state.get("epoch", 0), state.get("fitted", False)
                self.history = state.get("history", [])  # validation mean IoU of every epoch
                self.running = self.epoch + 1  # the epoch being trained
                self.began = False  # whether this session started an epoch (a backup was restored before)
                # training time of the sessions before this one (up to their last checkpoint), and this one's start
                self.earlier, self.started = state.get("seconds", 0.0), time.monotonic()
                if deadline is not None:  # the budget is the run's: each resumed session had it afresh
                    self.deadline = deadline - self.earlier
                self.stopped = state.get("stopped", "after the last epoch")  # why training ended, for the card

            def seconds(self) -> float:
                """Seconds trained over every session of this run: the earlier ones' and this one's so far."""
                return self.earlier + time.monotonic() - self.started

            def save_state(self, fitted: bool = False) -> None:
                self.fitted = fitted
                tmp = self.work / "state.json.tmp"
                tmp.write_text(json.dumps({"best": self.best, "best_epoch": self.best_epoch, "last": self.last,
                                           "epoch": self.epoch, "fitted": fitted, "history": self.history,
                                           "seconds": round(self.seconds(), 3), "stopped": self.stopped}))
                os.replace(tmp, self.work / "state.json")

            def on_train_begin(self, logs=None):
                restored = int(getattr(self.model, "_initial_epoch", 0) or 0)  # set by BackupAndRestore
                if restored <= self.epoch:
                    return
                # killed while epoch `restored` was scored, after Keras had backed it up: score those weights now,
                # or the epoch stayed null in the card's history and could never be the one kept
                swap = getattr(self.ema, "_swap_variables", None)
                if self.ema is not None and swap is None:
                    log.warning("epoch %d was not scored before the interruption and cannot be now (this Keras "
                                "has no SwapEMAWeights._swap_variables): it cannot be the epoch kept", restored)
                    return
                if swap is not None:
                    swap()  # the moving average, as at the end of an epoch
                try:
                    self._score(restored - 1)
                finally:
                    if swap is not None:
                        swap()

            def on_epoch_begin(self, epoch, logs=None):
                self.running, self.began = epoch + 1, True

            def on_train_batch_end(self, batch, logs=None):
                loss = (logs or {}).get("loss")  # as keras.callbacks.TerminateOnNaN, but an error, not a stop
                if loss is not None and not np.isfinite(float(loss)):
                    raise _Diverged(self.running, batch + 1, float(loss))
                # within the epoch too: a long epoch ran its whole length past --max-minutes, and a batch
                # scheduler's limit killed the run instead. The part-epoch is scored and kept as epochs are.
                if self.deadline and time.monotonic() > self.deadline and not self.model.stop_training:
                    self.stopped = (f"time budget (max_minutes) reached at step {batch + 1} of "
                                    f"{self.params.get('steps') or '?'} of epoch {self.running}")
                    log.warning("%s: stopping", self.stopped)
                    self.model.stop_training = True

            def on_epoch_end(self, epoch, logs=None):
                self._score(epoch, logs)
                if epoch + 1 - self.best_epoch >= self.patience and not self.model.stop_training:
                    self.stopped = f"no gain for {self.patience} epochs (patience) after epoch {epoch + 1}"
                    log.info("%s: stopping", self.stopped)
                    self.model.stop_training = True
                if self.deadline and time.monotonic() > self.deadline and not self.model.stop_training:
                    self.stopped = f"time budget (max_minutes) reached after epoch {epoch + 1}"
                    log.warning("%s: stopping", self.stopped)
                    self.model.stop_training = True
                self.save_state(self.fitted)  # with why it stopped

            def _score(self, epoch, logs=None):
                """Score the model's weights as those of `epoch` (0-based), keep them if best, save the state."""
                self.epoch = epoch + 1
                miou = self.last = evaluate_pairs(self.segmenter, self.pairs, self.n_classes)["mean_iou"]
                self.history = [*(self.history + [None] * epoch)[:epoch], miou]  # None: not scored before a resume
                if logs is not None:
                    logs["val_mean_iou" if self.split == "validation" else f"{self.split}_mean_iou"] = miou
                if miou > self.best:
                    self.best, self.best_epoch = miou, epoch + 1
                    self.model.save_weights(self.work / "best.tmp.weights.h5")  # whole, then in place
                    os.replace(self.work / "best.tmp.weights.h5", self.work / "best.weights.h5")
                self.save_state()
                # an epoch scored on resume (its score cut off by the interruption) has no loss in this session: the
                # line said "loss nan", as a diverged run's would (h157)
                loss = (logs or {}).get("loss")
                log.info("epoch %d: %s, %s mean IoU %.4f (best %.4f at %d)", epoch + 1,
                         "scored on resume" if loss is None else f"loss {float(loss):.4f}", self.split, miou,
                         self.best, self.best_epoch)

        return Callback(*args, **kwargs)
