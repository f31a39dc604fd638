"""The model card: plain JSON beside the weights that says how to feed and read a model."""

from __future__ import annotations

import difflib
from collections import Counter
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.errors import CardError
from geoseg.files import replaced_atomically

__all__ = ["LIMITS", "NAME_PATTERN", "OUTPUTS", "SCHEMA_VERSION", "ClassInfo", "ModelCard", "check_model_name",
           "default_color", "hex_rgb", "normalization_from_text", "parse_normalization", "read_card", "resolve_normalization", "write_card"]

SCHEMA_VERSION = 1
_COLOUR = re.compile(r"^#[0-9A-Fa-f]{6}$")
_NORMALISATIONS = ("scale", "meanstd", "percentile", "stretch", "none")
OUTPUTS = ("classes", "regions")  # what a model's output channels mean (ModelCard.output)
# A model's name, as `-m NAME` resolves it: a name with '?' (options follow it), ',' (--models A,B), a space or a
# file suffix (taken for a path) was listed by `geoseg models` and could never be picked. As `geoseg train` names.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PATH_SUFFIXES = (".keras", ".json", ".h5")  # `resolve_model` reads a reference ending so as a file
# Upper bounds of a card's sizes (px): past them a card is damaged, not a model. Training chooses margins up to
# 512 px and multiples up to 256 (2**8); `multiple_of: 100000` made `geoseg models check` allocate 447 GiB,
# and `margin: 10**9` made segment fail with "array is too big".
LIMITS = {"margin": (0, 2048), "multiple_of": (1, 1024), "tile_size": (1, 2048)}


@dataclass(frozen=True)
class ClassInfo:
    """One output class: its index in the model output, name and display colour, and its colour in
    colour-coded label masks when that differs (the Dubai labels draw water orange; maps draw it blue)."""

    id: int
    name: str
    color: str
    label_color: str | None = None

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The colour as an (r, g, b) tuple of 0-255 ints."""
        return hex_rgb(self.color)

    @property
    def in_labels(self) -> str:
        """The colour that stands for this class in colour-coded label masks."""
        return self.label_color or self.color


ALIGNMENT = 128  # bytes; TensorFlow takes a float32 array at a multiple of 64 (Eigen's) without copying it


def aligned_empty(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts at a multiple of `ALIGNMENT` bytes.

    NumPy's large arrays start 16 bytes into their pages, so TensorFlow copied every model input
    (`geoseg.models.segmenter._model_input` shares an aligned one instead)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = np.empty(size + ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT
    return buffer[start : start + size].view(dtype).reshape(shape)


def hex_rgb(color: str) -> tuple[int, int, int]:
    """``"#RRGGBB"`` as an (r, g, b) tuple of 0-255 ints."""
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelCard:
    """What a model needs as input and what its output means.

    Attributes
    ----------
    name, version : str
        Registry name and version of the weights.
    classes : tuple of ClassInfo
        Output channels in order; ``classes[i].id == i``.
    bands : tuple of int
        1-based band indexes of the input raster the model reads, in model order.
    normalization : dict
        ``{"method": "scale", "scale": s, "offset": o}`` (x * s + o),
        ``{"method": "meanstd", "mean": [...], "std": [...]}`` per band, or
        ``{"method": "none"}``.
    tile_size : int or None
        Fixed input size in pixels, or None for a fully convolutional model.
    multiple_of : int
        Input height and width must be multiples of this (``2**depth`` for a U-Net).
    margin : int
        Receptive-field radius in pixels: the context each side of a kept pixel.
    band_names : tuple of str or None
        What each band read is (``("red", "green", "blue")``), or None: bands read against a raster's
        band descriptions or colour tags that say otherwise are warned of.
    output : {"classes", "regions"}
        What the output channels mean: ``classes`` (land cover, say), or ``regions``:
        unlabeled regions, each drawn in one of the "classes" as a colour that its
        neighbours do not share (`geoseg evaluate` gives each its majority label class).
    """

    name: str
    version: str
    classes: tuple[ClassInfo, ...]
    bands: tuple[int, ...]
    normalization: dict[str, Any]
    margin: int
    tile_size: int | None = None
    multiple_of: int = 1
    description: str = ""
    pixel_size: float | None = None
    # (lowest, highest) ground metres per pixel of the imagery a model without a pixel_size suits: rasters far
    # outside are warned of (a 300 m Landsat scene through the sub-metre default model: 90% "water", no word)
    pixel_size_range: tuple[float, float] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    output: str = "classes"
    # what each band read is ("red", "green", "blue", "nir"...), where the card says: a raster whose band
    # descriptions or colour tags say otherwise is warned of (a Landsat stack read as coastal, blue, green)
    band_names: tuple[str, ...] | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # fields of the card's owner (a licence, an author): kept

    @property
    def n_classes(self) -> int:
        """Number of output channels."""
        return len(self.classes)

    @property
    def n_bands(self) -> int:
        """Number of input bands."""
        return len(self.bands)

    def normalize(self, block: np.ndarray, normalization: dict[str, Any] | None = None) -> np.ndarray:
        """Return `block` (..., bands) as float32 normalised as the card (or `normalization`) says.

        A ``percentile`` declaration must first be turned into a ``stretch`` for the
        raster at hand by `resolve_normalization`.
        """
        norm = normalization or self.normalization
        method = norm["method"]
        if method == "percentile":
            raise CardError("a 'percentile' normalisation must be resolved on the raster first "
                            "(resolve_normalization); segment() does this.")
        if method == "scale":
            # one number, or one per band (a file's own scales and offsets, `declared_scaling`)
            steps = [(np.multiply, np.asarray(norm.get("scale", 1.0), np.float32)),
                     (np.add, np.asarray(norm.get("offset", 0.0), np.float32))]
        elif method == "meanstd":
            steps = [(np.subtract, np.asarray(norm["mean"], np.float32)),
                     (np.divide, np.asarray(norm["std"], np.float32))]
        elif method == "stretch":
            low, high = np.asarray(norm["low"], np.float32), np.asarray(norm["high"], np.float32)
            steps = [(np.subtract, low), (np.divide, np.maximum(high - low, 1e-6))]
        else:
            return block.astype(np.float32, copy=False)
        if any(np.broadcast_shapes(block.shape, v.shape) != block.shape for _, v in steps):  # the values would widen
            x = block.astype(np.float32, copy=False)  # the block: not in place
            for op, value in steps:
                x = op(x, value)
            return np.clip(x, 0.0, 1.0) if method == "stretch" else x
        # The same float32 operations in the same order, in place in one buffer that TensorFlow takes without a copy
        # (`aligned_empty`): a 2624² RGB chunk of the default model made two more 82 MB arrays, and its model call
        # copied the input twice more (peak RSS of one model call 3142 MB, now 2905 MB; benchmarks/bench_input_copy.py)
        x = aligned_empty(block.shape, np.float32)
        np.copyto(x, block, casting="unsafe")  # as astype(float32)
        for op, value in steps:
            op(x, value, out=x)
        if method == "stretch":
            np.clip(x, 0.0, 1.0, out=x)
        return x

    def to_dict(self) -> dict[str, Any]:
        """Return the card as plain JSON-ready data."""
        data = asdict(self)
        extra = data.pop("extra")
        data["classes"] = [{k: v for k, v in asdict(c).items() if v is not None} for c in self.classes]
        data["bands"] = list(self.bands)
        if self.band_names is None:
            del data["band_names"]
        else:
            data["band_names"] = list(self.band_names)
        if self.pixel_size_range is None:
            del data["pixel_size_range"]
        else:
            data["pixel_size_range"] = list(self.pixel_size_range)
        return {**data, **{k: v for k, v in extra.items() if k not in data}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "card") -> "ModelCard":
        """Validate `data` and build a card; `source` names the file in error messages."""
        if not isinstance(data, dict):
            raise CardError(f"{source}: a model card must be a JSON object, got {type(data).__name__}.")
        version = data.get("schema_version", SCHEMA_VERSION)
        if not _is_int(version):  # "1" was told "is '1'; this geoseg reads version 1"
            raise CardError(f"{source}: field 'schema_version' must be a whole number (this geoseg reads "
                            f"{SCHEMA_VERSION}, without quotes). Received: {version!r}")
        if version != SCHEMA_VERSION:
            raise CardError(
                f"{source}: field 'schema_version' is {version!r}; this geoseg reads version "
                f"{SCHEMA_VERSION}. Upgrade geoseg or rewrite the card."
            )
        _check_typos(data, _FIELDS, source)
        for key in ("name", "classes", "bands", "normalization", "margin"):
            if key not in data:
                how = {"margin": " It is the context in pixels each side of a chunk, about the model's receptive "
                                 "field: put a guess such as 64, then `geoseg models check NAME --image RASTER` "
                                 "measures how many pixels agree with one whole chunk and suggests one.",
                       "normalization": " How pixels are scaled for the model, e.g. {\"method\": \"scale\", "
                                        "\"scale\": 0.00392156862745098} for 8-bit data in 0..1, or {\"method\": "
                                        "\"none\"} for a model that takes raw values."}.get(key, "")
                raise CardError(f"{source}: required field '{key}' is missing from the model card.{how}")
        if not isinstance(data["classes"], list):
            raise CardError(f"{source}: field 'classes' must be a list of objects with 'id', 'name' and 'color'. "
                            f"Received: classes={data['classes']!r}")
        if len(data["classes"]) > MAX_CLASSES:  # class 255 was written as nodata; 256 and on, a traceback
            raise CardError(f"{source}: field 'classes' lists {len(data['classes'])} classes; a mask holds at most "
                            f"{MAX_CLASSES} (ids 0-{MAX_CLASSES - 1} in one byte, 255 is nodata).")
        check_model_name(data["name"], source)
        taken = [str(c["color"]) for c in data["classes"] if isinstance(c, dict) and c.get("color")]
        classes = tuple(_parse_class(i, c, source, taken) for i, c in enumerate(data["classes"]))
        if not classes:
            raise CardError(f"{source}: field 'classes' is empty; list at least one class.")
        _check_distinct_names(classes, source)
        _check_distinct_label_colors(classes, source)
        bands = data["bands"]
        if not (isinstance(bands, list) and bands and all(_is_int(b) and b >= 1 for b in bands)):
            raise CardError(
                f"{source}: field 'bands' must be a non-empty list of 1-based band indexes. "
                f"Received: bands={bands!r}"
            )
        norm = _parse_normalization(data["normalization"], len(bands), source)
        band_names = data.get("band_names")
        if band_names is not None and not (isinstance(band_names, list) and len(band_names) == len(bands)
                                           and all(isinstance(n, str) and n.strip() for n in band_names)):
            raise CardError(f"{source}: field 'band_names' must list a name for each of the {len(bands)} band(s) read "
                            f"(e.g. [\"red\", \"green\", \"blue\"]) or be absent. Received: band_names={band_names!r}")
        margin = _bounded(data, "margin", None, source)
        tile_size = _bounded(data, "tile_size", None, source)
        if tile_size is not None and tile_size <= 2 * margin:
            raise CardError(
                f"{source}: field 'tile_size' must be an int larger than 2 * margin ({2 * margin}). "
                f"Received: tile_size={tile_size!r}"
            )
        multiple_of = _bounded(data, "multiple_of", 1, source)
        pixel_size = data.get("pixel_size")
        if pixel_size is not None and not (_is_number(pixel_size) and pixel_size > 0):
            raise CardError(f"{source}: field 'pixel_size' must be a number above 0 (ground metres per pixel) or absent. "
                            f"Received: pixel_size={pixel_size!r}")
        suits = data.get("pixel_size_range")
        suits = list(suits) if isinstance(suits, tuple) else suits  # (0.1, 2) in Python, as normalization= takes
        if suits is not None and not (isinstance(suits, list) and len(suits) == 2 and all(map(_is_number, suits))
                                      and 0 < suits[0] <= suits[1]):
            raise CardError(f"{source}: field 'pixel_size_range' must be [lowest, highest] ground metres per pixel of "
                            f"the imagery the model suits, 0 < lowest <= highest, or absent. Received: {suits!r}")
        output = data.get("output", "classes")
        if output not in OUTPUTS:
            raise CardError(f"{source}: field 'output' must be one of {', '.join(OUTPUTS)} or absent. "
                            f"Received: output={output!r}")
        for key in ("training", "metrics"):
            if not isinstance(data.get(key, {}), dict):
                raise CardError(f"{source}: field '{key}' must be an object or absent. Received: {key}={data[key]!r}")
        return cls(
            name=str(data["name"]),
            version=str(data.get("version", "0")),
            classes=classes,
            bands=tuple(bands),
            normalization=norm,
            margin=margin,
            tile_size=tile_size,
            multiple_of=multiple_of,
            description=str(data.get("description", "")),
            pixel_size=pixel_size,
            pixel_size_range=None if suits is None else (float(suits[0]), float(suits[1])),
            training=dict(data.get("training", {})),
            metrics=dict(data.get("metrics", {})),
            output=output,
            band_names=None if band_names is None else tuple(n.strip().lower() for n in band_names),
            extra={str(k): v for k, v in data.items() if k not in _FIELDS},
        )


def check_model_name(name: Any, source: str = "card") -> None:
    """Refuse a model name that `-m NAME` could never pick (`source` names the file in the message).

    >>> check_model_name("landcover-unet")
    >>> check_model_name("my?model", "x.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    geoseg.errors.CardError: x.json: field 'name' must start with an ASCII letter or digit and hold only ...
    """
    if isinstance(name, str) and NAME_PATTERN.fullmatch(name) and not name.lower().endswith(PATH_SUFFIXES):
        return
    raise CardError(f"{source}: field 'name' must start with an ASCII letter or digit and hold only ASCII letters, digits, "
                    f"'_', '.' and '-', and not end in {', '.join(PATH_SUFFIXES[:-1])} or {PATH_SUFFIXES[-1]} (a model is picked by this name "
                    f"with -m NAME, and such a name cannot be picked). Received: name={name!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounded(data: dict[str, Any], key: str, default: int | None, source: str) -> int | None:
    """`data[key]`, an int within `LIMITS[key]`, or `default` when absent (None: may be null)."""
    value = data.get(key, default)
    if value is None and default is None and key != "margin":
        return None
    low, high = LIMITS[key]
    if not (_is_int(value) and low <= value <= high):
        shown = f"{value!r}" if not isinstance(value, int) or abs(value) < 10**12 else f"{str(value)[:12]}..."
        raise CardError(f"{source}: field '{key}' must be an int from {low} to {high} (pixels). "
                        f"Received: {key}={shown}")
    return value


def _check_distinct_names(classes: tuple[ClassInfo, ...], source: str) -> None:
    """Two classes of one name were scored as one: labels matched the name to only one of them."""
    counts = Counter(c.name for c in classes)
    twice = sorted(name for name, n in counts.items() if n > 1)
    if twice:
        ids = "; ".join(f"{n!r} is classes {', '.join(str(c.id) for c in classes if c.name == n)}" for n in twice)
        raise CardError(f"{source}: field 'classes' must give each class its own name, since labels and other "
                        f"models are matched to classes by name; {ids}. Rename them.")


def _check_distinct_label_colors(classes: tuple[ClassInfo, ...], source: str) -> None:
    """Two classes of one given ``label_color``: a colour-coded label gave every pixel of it to the later class.
    Display colours (``color``) alone may repeat: a card may draw two classes alike."""
    by_colour: dict[str, list[ClassInfo]] = {}
    for c in classes:
        if c.in_labels:
            by_colour.setdefault(c.in_labels.upper(), []).append(c)
    twice = {colour: cs for colour, cs in sorted(by_colour.items())
             if len(cs) > 1 and any(c.label_color for c in cs)}
    if twice:
        which = "; ".join(f"{colour} is the colour of {', '.join(repr(c.name) for c in cs)}" for colour, cs in twice.items())
        raise CardError(f"{source}: field 'classes' must give each class its own 'label_color' (or 'color' where it "
                        f"has none), the colour that tells its pixels apart in colour-coded labels; {which}. "
                        "Fix the label_color of those classes.")


# Tableau 10, then two more: for classes whose card or training config gives no colour (all were #808080,
# so masks, previews and QGIS styles showed every class in one grey)
_DEFAULT_COLOURS = ("#4E79A7", "#F28E2B", "#E15759", "#76B7B2", "#59A14F", "#EDC948", "#B07AA1", "#FF9DA7",
                    "#9C755F", "#BAB0AC", "#17BECF", "#BCBD22")


def default_color(index: int, taken: Sequence[str] = ()) -> str:
    """The colour of class `index` when none is given: the first palette colour from `index` on that no other
    class has (`taken`, as '#RRGGBB')."""
    import colorsys

    used = {c.upper() for c in taken}
    for step in range(len(_DEFAULT_COLOURS)):
        colour = _DEFAULT_COLOURS[(index + step) % len(_DEFAULT_COLOURS)]
        if colour not in used:
            return colour
    # the palette is used up (a card of 30 classes drew class 12 as class 0): hues a golden angle apart, at three
    # lightnesses, the first that no class has
    for k in range(index, index + 4096):
        r, g, b = colorsys.hls_to_rgb((k * 0.618033988749895) % 1.0, (0.45, 0.65, 0.3)[k % 3], 0.65)
        colour = f"#{round(r * 255):02X}{round(g * 255):02X}{round(b * 255):02X}"
        if colour not in used:
            return colour
    return _DEFAULT_COLOURS[index % len(_DEFAULT_COLOURS)]


def _parse_class(index: int, data: Any, source: str, taken: list[str] | None = None) -> ClassInfo:
    """Class `index` of a card; one without a colour gets a palette colour no other class has (`taken`,
    which grows by it)."""
    if not isinstance(data, dict) or "name" not in data:
        raise CardError(f"{source}: classes[{index}] must be an object with 'id', 'name' and 'color'.")
    if data.get("id", index) != index:
        raise CardError(
            f"{source}: classes[{index}] has id {data.get('id')!r}; ids must be 0, 1, 2, ... in "
            "the order of the model's output channels."
        )
    _check_typos(data, ("id", "name", "color", "label_color"), f"{source}: classes[{index}]")  # 'colour' was dropped
    if not isinstance(data["name"], str) or not data["name"].strip():  # "" headed tables and layers' fields as "_m2"
        raise CardError(f"{source}: classes[{index}].name must be a non-empty text, such as 'water'. "
                        f"Received: {data['name']!r}")
    color = data.get("color")
    if color is None:
        color = default_color(index, taken or ())
        if taken is not None:
            taken.append(color)
    label_color = data.get("label_color")
    for key, value in (("color", color), ("label_color", "#000000" if label_color is None else label_color)):
        if not _COLOUR.match(str(value)):
            raise CardError(f"{source}: classes[{index}].{key} must look like '#3C1098'. Received: {value!r}")
    return ClassInfo(index, str(data["name"]), str(color).upper(),
                     None if label_color is None else str(label_color).upper())


def _parse_normalization(data: Any, n_bands: int, source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CardError(f"{source}: a normalisation is a dict such as {{'method': 'scale', 'scale': 0.0001}} "
                        f"(the command line's METHOD:ARGS is --normalize's syntax). Received: {data!r}")
    data = {key: _plain(value) for key, value in data.items()}  # a notebook's numpy statistics, tuples (h133)
    method = data.get("method")
    if method not in _NORMALISATIONS:
        raise CardError(
            f"{source}: field 'normalization.method' must be one of {', '.join(_NORMALISATIONS)}. "
            f"Received: {method!r}"
        )
    if method in ("meanstd", "stretch"):
        for key in ("mean", "std") if method == "meanstd" else ("low", "high"):
            values = data.get(key)
            if not isinstance(values, list) or len(values) != n_bands or not all(map(_is_number, values)):
                raise CardError(
                    f"{source}: field 'normalization.{key}' needs one number per band ({n_bands}). "
                    f"Received: {values!r}"
                )
        if method == "meanstd" and any(v <= 0 for v in data["std"]):
            raise CardError(f"{source}: field 'normalization.std' must be above 0 in every band. "
                            f"Received: {data['std']!r}")
    unknown = sorted(set(map(str, data)) - {"method", *_NORMALISATION_FIELDS[method]})
    if unknown:  # {"method": "scale", "scael": 0.0039} ran with scale 1.0
        allowed = ", ".join(_NORMALISATION_FIELDS[method]) or "no other field"
        raise CardError(f"{source}: unknown field(s) {', '.join(map(repr, unknown))} in 'normalization'; method "
                        f"{method!r} takes {allowed}.")
    if method == "scale" and "scale" not in data:  # it ran as scale 1, which is 'none', without a word
        raise CardError(f"{source}: method 'scale' needs field 'normalization.scale' (x * scale + offset), e.g. "
                        "0.00392156862745098 to take 8-bit values to 0..1; use {'method': 'none'} for no scaling.")
    keys = {"scale": ("scale", "offset"), "percentile": ("low", "high")}.get(method, ())
    for key in keys:
        if key in data and not _is_number(data[key]):
            raise CardError(f"{source}: field 'normalization.{key}' must be a finite number. Received: {data[key]!r}")
    if method == "scale" and not (math.isfinite(data["scale"]) and data["scale"] != 0
                                  and math.isfinite(data.get("offset", 0.0))):  # scale 0: every pixel 0, one class
        raise CardError(f"{source}: 'normalization.scale' must be a finite number other than 0, and 'offset' finite. "
                        f"Received: scale={data['scale']!r}, offset={data.get('offset', 0.0)!r}")
    _check_float32(data, method, source)
    if method == "percentile" and not 0 <= data.get("low", 2) < data.get("high", 98) <= 100:
        raise CardError(f"{source}: percentiles must satisfy 0 <= low < high <= 100. "
                        f"Received: low={data.get('low', 2)!r}, high={data.get('high', 98)!r}")
    return dict(data)


def _check_float32(data: dict[str, Any], method: str, source: str) -> None:
    """Values finite as float64 that the pipeline's float32 makes 0 or infinite: scale 1e-320 (0), scale 1e308 or
    std 1e-300 (inf) gave every pixel one class, with only NumPy's RuntimeWarning."""
    with np.errstate(over="ignore", under="ignore", divide="ignore"):
        for key in ("scale", "offset", "mean", "std", "low", "high"):
            if key not in data or (method == "percentile" and key in ("low", "high")):
                continue
            values = np.atleast_1d(np.asarray(data[key], np.float64)).astype(np.float32)
            bad = not np.isfinite(values).all() or (key in ("scale", "std") and not (
                (values != 0).all() and np.isfinite(np.float32(1) / values).all()))
            if bad:
                raise CardError(f"{source}: field 'normalization.{key}' is {data[key]!r}, which is 0 or infinite in "
                                "the 32-bit floats the model computes in (they hold magnitudes of about 1e-38 to "
                                "3e38). Check the value.")


MAX_CLASSES = 255  # a mask's byte holds ids 0-254; 255 is nodata (and a label's "ignore")
_FIELDS = ("schema_version", "name", "version", "classes", "bands", "normalization", "margin", "tile_size",
           "multiple_of", "description", "pixel_size", "pixel_size_range", "output", "training", "metrics", "band_names")
_NORMALISATION_FIELDS = {"scale": ("scale", "offset"), "meanstd": ("mean", "std"), "percentile": ("low", "high"),
                         "stretch": ("low", "high", "from"), "none": ()}


def _check_typos(data: dict[str, Any], fields: Sequence[str], source: str) -> None:
    """Refuse a field that is a near miss of a known one ('multiple-of', 'tilesize'): it was ignored, and the
    model ran with the default. Other extra fields (a licence, an author) are the card owner's to add."""
    for key in data:  # 'description_fr' beside 'description', or 'margins' beside 'margin', are extra fields
        near = difflib.get_close_matches(str(key).replace("-", "_").lower(), fields, 1, 0.8)
        if key not in fields and near and near[0] not in data:
            raise CardError(f"{source}: unknown field {key!r}; did you mean {near[0]!r}?")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _plain(value: Any) -> Any:
    """A normalisation field's value as JSON holds it: NumPy scalars and arrays and tuples of numbers as Python
    numbers and lists (``a.mean(axis=(1, 2))`` was refused as not "one number per band"); anything else as it is,
    for the checks to name."""
    if isinstance(value, np.generic) and not isinstance(value, np.bool_):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)) and np.ndim(value) == 1:
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    return value


def parse_normalization(data: Any, n_bands: int, *, source: str = "normalization") -> dict[str, Any]:
    """Validate a normalisation declaration (as in a card) and return it as a dict."""
    return _parse_normalization(data, n_bands, source)


NORMALIZATION_SYNTAX = "scale:0.0001[,OFFSET], percentile:2,98, meanstd:M1,M2,M3/S1,S2,S3 or none"


def normalization_from_text(text: str) -> dict[str, Any]:
    """``scale:S[,OFFSET]``, ``percentile:LOW,HIGH``, ``meanstd:M1,M2,../S1,S2,..`` or ``none`` (the command
    line's --normalize, the web page's field) as a declaration; ValueError naming the syntax otherwise.

    >>> normalization_from_text("scale:0.00392156862745098,-0.5")
    {'method': 'scale', 'scale': 0.00392156862745098, 'offset': -0.5}
    """
    method, _, args = text.strip().partition(":")
    try:
        if method == "none" and not args:
            return {"method": "none"}
        if method == "scale":
            numbers = [float(v) for v in args.split(",")]
            if len(numbers) <= 2:
                return _checked_text({"method": "scale", "scale": numbers[0],
                                      "offset": numbers[1] if len(numbers) > 1 else 0.0}, text)
        if method == "percentile":
            low, high = (float(v) for v in args.split(","))
            return _checked_text({"method": "percentile", "low": low, "high": high}, text)
        if method == "meanstd":
            mean, std = args.split("/")
            means, stds = [float(v) for v in mean.split(",")], [float(v) for v in std.split(",")]
            if len(means) != len(stds):  # "needs one number per band (2)" for a 3-band model: the 2 means typed (h131)
                raise _Refused(f"meanstd takes one mean and one standard deviation per band, the means before '/', "
                               f"the standard deviations after: {len(means)} mean(s) but {len(stds)} standard "
                               f"deviation(s) ({text!r})")
            return _checked_text({"method": "meanstd", "mean": means, "std": stds}, text)
    except _Refused:
        raise
    except ValueError:
        pass
    raise ValueError(f"use {NORMALIZATION_SYNTAX}. Received: {text!r}")


class _Refused(ValueError):
    """Read, but no card could hold it."""


def _checked_text(norm: dict[str, Any], text: str) -> dict[str, Any]:
    """What `normalization_from_text` read, refused where no card could hold it (a usage error, not a failure
    after the model has loaded): scale 0 or nan, percentiles out of order, a std of 0."""
    try:
        return _parse_normalization(norm, len(norm.get("mean", ())) or 1, "--normalize")
    except CardError as exc:
        raise _Refused(f"{str(exc).removeprefix('--normalize: ')} ({text!r})") from None


def resolve_normalization(norm: dict[str, Any], sample: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """Turn ``{"method": "percentile", "low": 2, "high": 98}`` into a per-band ``stretch`` for one raster.

    `sample` is a decimated (rows, cols, bands) read of the whole raster and `valid`
    its (rows, cols) mask, so every chunk is stretched alike. Other methods pass through.
    """
    if norm["method"] != "percentile":
        return norm
    values = sample[valid] if valid.any() else sample.reshape(-1, sample.shape[-1])
    low, high = np.percentile(values.astype(np.float64), [norm.get("low", 2), norm.get("high", 98)], axis=0)
    return {"method": "stretch", "low": low.round(6).tolist(), "high": high.round(6).tolist(),
            "from": f"percentiles {norm.get('low', 2)}-{norm.get('high', 98)} of the raster"}


def read_card(path: str | Path) -> ModelCard:
    """Read and validate the JSON card at `path`."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CardError(f"{path}: model card not found; a bundle is NAME.keras plus NAME.json.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CardError(f"{path}: not valid JSON ({exc}).") from None
    except ValueError:  # an integer of thousands of digits: Python refuses to convert it
        raise CardError(f"{path}: not a usable model card: it holds a number too long to read (over "
                        f"{sys.get_int_max_str_digits()} digits); check the card's numbers.") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise CardError(f"{path}: not a usable model card (its JSON is nested too deeply to read); "
                        "rewrite the card.") from None
    except OSError as exc:
        raise CardError(f"{path}: cannot read the model card ({exc.strerror or exc}).") from None
    return ModelCard.from_dict(data, source=str(path))


def write_card(card: ModelCard, path: str | Path) -> None:
    """Write `card` as indented JSON to `path`, atomically (a temporary file, then a rename)."""
    with replaced_atomically(path) as tmp:
        tmp.write_text(json.dumps(card.to_dict(), indent=2) + "\n")
