"""Reference labels as class-index arrays: index rasters, colour-coded masks, or vector polygons."""

from __future__ import annotations

import contextvars
import json
import logging
import math
import os
import re
import shlex
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from geoseg.errors import InputError, catch_warnings
from geoseg.files import whitespace_note

__all__ = ["IGNORE", "GRID_TOLERANCE", "LABEL_PLACEHOLDERS", "LabelFormat", "RENAME_IN_CONFIG", "RENAME_LABEL_NAMES",
           "STRAY_IN_CONFIG", "STRAY_IN_EVALUATE", "VectorLabels", "check_label_grid", "check_label_template",
           "grid_offset", "ids_by_name", "read_labels", "LabelNotes", "fractions_error", "warn_stray_colours",
           "label_class_names", "label_file", "label_nodata", "label_warnings", "read_vector_labels", "vector_source",
           "TEXT_ID"]

IGNORE = 255
TEXT_ID = re.compile(r"\s*[0-9]{1,3}\s*")  # a class id written as text in a vector field ('1')
LabelFormat = Literal["index", "color", "vector"]
LABEL_PLACEHOLDERS = ("stem", "name", "image_dir")  # what a labels template may hold: {stem}, {name}, {image_dir}
GRID_TOLERANCE = 0.01  # px: georeferenced labels farther than this from their image's grid are refused
# the fix for polygons none of whose class values is a class: in a training config, and in geoseg evaluate
RENAME_IN_CONFIG = ("Rename the classes in the config to the values of the file, or point vector_field at the field "
                    "that holds them.")
# the fix for colours of no class: in a training config, and in geoseg evaluate
STRAY_IN_CONFIG = "List the colours that mark unlabelled pixels in ignore_colors, or fix the classes' colours."
STRAY_IN_EVALUATE = ("If they are classes, pass --label-names and --label-colors (label_names=, label_colors=) "
                     "with the mask's classes and colours; if they mark unlabelled pixels, --ignore-colors "
                     "(ignore_colors=).")
RENAME_LABEL_NAMES = ("Pass --label-names (label_names=) with the names the file uses (they are matched to the "
                      "model's classes by name), or point --vector-field (vector_field=) at the field that holds them.")

log = logging.getLogger(__name__)
_WARNED: set[tuple] = set()  # (file, what) warned about already: once per file, not once per image or window


class LabelNotes:
    """What `label_warnings` collected: messages, and the colours of no class over all colour masks read."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.colours: dict[int, int] = {}  # 0xRRGGBB -> pixels, over every file
        self.files: dict[str, str] = {}  # file -> its own message, of the files that had such colours
        self.pixels = 0  # pixels of those files
        self.fix = ""

    def notes(self) -> list[str]:
        """The messages, and one note on the colours of no class: a file's own, or a sum over the files
        (a report over 18 Dubai masks held 16 notes on #9B9B9B)."""
        if len(self.files) == 1:
            return [*self.said, *self.files.values()]
        if not self.files:
            return list(self.said)
        stray = sorted(((n, v) for v, n in self.colours.items()), reverse=True)
        shown = ", ".join(f"#{v:06X} ({n / self.pixels:.1%})" for n, v in stray[:5]) + (", ..." if len(stray) > 5 else "")
        return [*self.said, f"{len(self.files)} label files have pixels of colour(s) of no class, left unlabelled: "
                            f"{100 * sum(self.colours.values()) / self.pixels:.1f}% of their pixels ({shown}). "
                            f"{self.fix}"]


_HEARD: contextvars.ContextVar[LabelNotes | None] = contextvars.ContextVar("geoseg_label_warnings", default=None)


@contextmanager
def label_warnings() -> Iterator[LabelNotes]:
    """Collect what is said about label files inside (polygons or colours of no class, a CLASS_NAMES tag
    of ids the file lacks), each once, for a report's notes, instead of logging it (the log says each
    once per file and process: a second report of the file said nothing)."""
    heard = LabelNotes()
    token = _HEARD.set(heard)
    try:
        yield heard
    finally:
        _HEARD.reset(token)


def _warn_once(key: tuple, message: str, *args: Any) -> None:
    heard = _HEARD.get()
    if heard is not None:  # the report's notes say it: the log said it twice on the terminal
        if (message % args) not in heard.said:
            heard.said.append(message % args)
        return
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message, *args)


def label_class_names(path: str | os.PathLike) -> list[str | None] | None:
    """Class names stored in an index raster's metadata (as geoseg writes them), if any.

    Item ``i`` names class id ``i``; an id the table skips is None (unlabelled): ``{"0": "a", "2": "b"}``
    gives ``["a", None, "b"]``, so that value 2 stays class b (squeezing the gap out scored it as nothing,
    and value 1 as b).
    """
    with _open_label(path) as ds:
        names = ds.tags().get("CLASS_NAMES")
    if not names:
        return None
    try:
        table = {int(k): v for k, v in json.loads(names).items()}
    except (ValueError, TypeError, AttributeError, RecursionError):
        raise InputError(f"{path}: its CLASS_NAMES tag is not a JSON object of class id -> name "
                         f"(received {names[:80]!r}); pass --label-names instead.") from None
    bad = sorted(k for k in table if not 0 <= k < IGNORE)
    if bad or not table or not all(isinstance(v, str) and v for v in table.values()):
        raise InputError(f"{path}: its CLASS_NAMES tag must map class ids 0 to {IGNORE - 1} ({IGNORE} is unlabelled) "
                         f"to non-empty names (received {names[:80]!r}); pass --label-names instead.")
    return [table.get(i) for i in range(max(table) + 1)]


def ids_by_name(path: str | os.PathLike, classes: Sequence[dict[str, Any]]) -> np.ndarray | None:
    """A lookup from an index label's ids to the ids of `classes`, by the names of its CLASS_NAMES tag
    (a geoseg mask's), a name that differs only in case matching; None when it has no tag or names the
    classes in their own order.

    Masks of a model whose classes are ``other, water, vegetation`` trained a config listing ``water,
    vegetation, other`` to call `other` water. Names the classes lack become unlabelled, with a
    warning; a tag that names none of them is refused.
    """
    names = label_class_names(path)
    wanted = [c["name"] for c in classes]
    if names is None or (len(names) <= len(wanted) and all(n == w for n, w in zip(names, wanted))):
        return None
    folded: dict[str, list[int]] = {}
    for i, name in enumerate(wanted):
        folded.setdefault(class_key(name), []).append(i)
    lut = np.full(256, IGNORE, np.uint8)  # ids the tag leaves unnamed stay unlabelled, as evaluate reads them
    others = []
    for i, name in enumerate(names):
        if name is None:
            continue
        if name in wanted:
            lut[i] = wanted.index(name)
        elif len(folded.get(class_key(name), [])) == 1:  # 'Other' is other, as evaluate matches names
            lut[i] = folded[class_key(name)][0]
        else:
            others.append(name)
    if len(others) == len([n for n in names if n is not None]):
        raise InputError(f"{path}: its CLASS_NAMES tag names its ids {', '.join(n for n in names if n)}, none of "
                         f"which is a class here ({', '.join(wanted)}); name the classes as the labels do.")
    if others:
        _warn_once((os.path.abspath(path), "names"), "%s: its CLASS_NAMES tag names ids of %s, which are not "
                   "classes here; those pixels are left unlabelled.", path, ", ".join(others))
    return lut


def check_label_template(template: str, where: str) -> None:
    """Refuse a labels template that `str.format` cannot fill from `LABEL_PLACEHOLDERS`; `where` names it
    in the message (``"--labels"``, ``"train.toml: labels"``).

    >>> check_label_template("{image_dir}/../masks/{stem}.png", "--labels")
    >>> check_label_template("{dir}/{stem}.png", "--labels")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    geoseg.errors.InputError: --labels '{dir}/{stem}.png': unknown placeholder {dir}; it may use {stem}, ...
    """
    try:
        template.format(**{key: key for key in LABEL_PLACEHOLDERS})
    except KeyError as exc:
        reason = f"unknown placeholder {{{exc.args[0]}}}"
    except IndexError:  # "{0}" or "{}"
        reason = "a placeholder needs a name"
    except (ValueError, AttributeError, TypeError) as exc:  # "{stem", "{stem.x}", "{stem!z}"
        reason = f"not a template ({exc})"
    else:
        return
    allowed = ", ".join(f"{{{key}}}" for key in LABEL_PLACEHOLDERS[:-1]) + f" and {{{LABEL_PLACEHOLDERS[-1]}}}"
    raise InputError(f"{where} {template!r}: {reason}; it may use {allowed} (and {{{{ or }}}} for a brace).")


def check_label_grid(path: str | os.PathLike, fmt: LabelFormat, image: str | os.PathLike, *,
                     name: str | None = None, image_name: str | None = None, file_name: str | None = None,
                     polygons: bool = True) -> None:
    """Fail early unless `path` holds labels on `image`'s pixel grid: present, readable, the same size,
    georeferenced alike where both are georeferenced, and not three or more bands (colours) when they
    should be class ids.

    Polygons are rasterised onto the image's grid, so for ``fmt="vector"`` only the file's
    presence is checked. A label raster without georeferencing (a PNG mask beside a JPEG)
    is taken to be on its image's grid when it has its size. `name` and `image_name` are
    how messages call the two files (default their path and file name), `file_name` the label
    in the command they suggest (default its file name; the web page passes the upload's). `polygons`:
    whether the message may suggest polygon labels instead (the web page takes none).
    """
    from geoseg.raster import inspect_raster

    name = name or str(path)
    if not os.path.exists(label_file(path)):
        note = whitespace_note(label_file(path))
        raise InputError(f"{repr(name) if note else name}: label file not found (labels for {image}).{note}")
    if fmt == "vector":
        vector_source(path)  # a bad '|...' after the file
        return
    with _open_label(path, name) as ds:
        size, bands, crs, transform = (ds.width, ds.height), ds.count, ds.crs, ds.transform
    if fmt == "index" and bands >= 3:  # a second band may be alpha; three or more are colours
        raise InputError(f"{name}: labels have {bands} bands, but index labels are one band of class ids. "
                         "For a colour-coded mask use the colour format (--label-format color, or "
                         "label_format = \"color\" in a training config).")
    info = inspect_raster(image)
    # the CRS and grid first: a label warped to EPSG:4326 (another size too) was "the label of another image?"
    _check_georeferencing(name, crs, transform, info, image_name or os.path.basename(image),
                          file_name or os.path.basename(path), polygons, fill=fmt == "index")
    expected = (info.width, info.height)
    if size != expected:
        raise InputError(f"{name}: labels are {size[0]} x {size[1]} px but their image "
                         f"{image_name or os.path.basename(image)} is "
                         f"{expected[0]} x {expected[1]} px; labels must be on the image's pixel grid "
                         "(is this the label of another image?).")


def _georeferenced(crs, transform) -> bool:
    return crs is not None and not transform.is_identity and not transform.is_degenerate


def grid_offset(image_transform, label_transform, width: int, height: int) -> float:
    """The largest distance, in label pixels along a row or column, between an image's corners and the
    same places on the label's pixel grid (0 when both transforms are the same).

    >>> from affine import Affine
    >>> grid_offset(Affine(0.5, 0, 100, 0, -0.5, 200), Affine(0.5, 0, 125, 0, -0.5, 200), 80, 60)
    50.0
    """
    to_label = ~label_transform @ image_transform
    corners = [(0, 0), (width, 0), (0, height), (width, height)]
    return max(max(abs(lx - x), abs(ly - y)) for (x, y), (lx, ly) in zip(corners, (to_label @ c for c in corners)))


def _check_georeferencing(name: str, crs, transform, info, image_name: str, file_name: str,
                          polygons: bool = True, fill: bool = False) -> None:
    """Labels that say where they lie must lie on their image's grid: the same size alone let labels of
    another place, or shifted by 50 m, score IoU 1.0 as if they were the image's."""
    if not (_georeferenced(crs, transform) and _georeferenced(info.crs, info.transform)):
        return
    if crs == info.crs:
        offset = grid_offset(info.transform, transform, info.width, info.height)
        if offset <= GRID_TOLERANCE:
            return
        why = f"their pixel grid is {offset:,.0f} px off the image's" if offset >= 10 else \
            f"their pixel grid is {offset:.2g} px off the image's"  # '6e+04 px' read poorly
        sizes = [(abs(t.a) or abs(t.b), abs(t.e) or abs(t.d)) for t in (transform, info.transform)]
        if any(abs(a - b) > 1e-3 * b for a, b in zip(*sizes)):  # '398 px off' read as a shift (h109)
            unit = " m" if crs is not None and crs.is_projected and (crs.linear_units or "").startswith("met") else ""
            label_size, image_size = (f"{x:.6g}{unit}" if x == y else f"{x:.6g} x {y:.6g}{unit}" for x, y in sizes)
            why = f"their pixels are {label_size}, the image's {image_size}"
    else:
        why = f"their CRS {_crs_text(crs)} is not the image's {_crs_text(info.crs)}"
    from rasterio.transform import array_bounds

    west, south, east, north = (f"{v:.10g}" for v in array_bounds(info.height, info.width, info.transform))
    epsg = info.crs.to_epsg()
    target = f"-t_srs EPSG:{epsg} " if epsg else ""
    # index labels: what they do not cover is 255, unlabelled; gdalwarp's own fill of a label without nodata is 0,
    # a class, which scored a label of part of the image as that class over the rest (h109)
    nodata = "-dstnodata 255 " if fill else ""
    warp = (f"gdalwarp {target}-te {west} {south} {east} {north} -ts {info.width} {info.height} -r near {nodata}"
            f"{shlex.quote(file_name)} on_grid.tif")
    raise InputError(f"{name}: labels must be on the pixel grid of their image {image_name}, but {why}. Warp them "
                     f"onto it ({warp})" + (" or give polygons (--label-format vector), which are rasterised onto "
                                            "each image." if polygons else "."))


def _crs_text(crs) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else repr(crs.to_string()[:60])


def _open_label(path: str | os.PathLike, name: str | None = None):
    import rasterio

    with catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"{name or path}: labels are not a raster GDAL can read ({exc}).{_vector_hint(path)}"
                             ) from None


def _vector_hint(path) -> str:
    """The advice for labels read as a raster that are a vector layer (a Shapefile of polygons, without
    --label-format vector: "not a raster GDAL can read", and no word of the option)."""
    import pyogrio

    try:
        layers = pyogrio.list_layers(label_file(str(path)))
    except Exception:  # noqa: BLE001 - not a vector file either: nothing to add
        return ""
    if not any(kind is not None for _, kind in layers):
        return ""
    return (" It is a vector layer: pass --label-format vector (label_format='vector'), and --vector-field "
            "(vector_field=) with the field that holds the class.")


def read_labels(path: str | os.PathLike, *, fmt: LabelFormat, classes: Sequence[dict[str, Any]],
                image: str | os.PathLike, shape: tuple[int, int], vector_field: str = "class",
                window=None, ignore_colors: Sequence[str] | None = None, rename: str = RENAME_IN_CONFIG,
                id_map: np.ndarray | None = None, stray: str = STRAY_IN_CONFIG,
                colours: dict[int, int] | None = None) -> np.ndarray:
    """Read labels for `image` as (rows, cols) uint8 indexes into `classes`; 255 where unlabelled.

    Parameters
    ----------
    fmt : {"index", "color", "vector"}
        An index raster (values are class ids), a colour-coded mask (colours from
        `classes`), or polygons whose `vector_field` holds a class name or id,
        rasterised onto the image's grid (the image must be georeferenced).
    classes : sequence of dict
        ``{"name": ..., "color": "#RRGGBB"}`` in class-id order.
    window : rasterio.windows.Window, optional
        Read only this window of the image's grid; `shape` is then the window's.
    ignore_colors : sequence of str, optional
        Colour labels: ``"#RRGGBB"`` colours that mark unlabelled pixels. Every colour of no
        class is left unlabelled (255) either way; given this list, a whole-file read also logs
        a warning (once per file) naming the colours that are neither a class's nor listed.
    rename : str
        Polygons: how to name the classes after the file's values, in the message that refuses a
        file none of whose values is a class (`RENAME_IN_CONFIG` or `RENAME_LABEL_NAMES`).
    stray : str
        Colour labels: the advice of the warning on colours of no class (`STRAY_IN_CONFIG` or
        `STRAY_IN_EVALUATE`).
    id_map : numpy.ndarray, optional
        Index labels: a lookup from the file's values to class ids (`ids_by_name`), applied first.
    colours : dict, optional
        Colour labels read by windows: the pixels of each colour of no class (0xRRGGBB -> count, nodata left
        out) are added to it, for `warn_stray_colours` once the last window is read (a window's read warns of
        none: the warning is over the whole file).
    """
    import rasterio

    path = str(path)
    if not os.path.exists(label_file(path)):
        note = whitespace_note(label_file(path))
        raise InputError(f"{repr(path) if note else path}: label file not found (labels for {image}).{note}")
    if fmt == "vector":
        return VectorLabels(path, classes, str(image), vector_field, rename=rename).window(shape, window)
    if fmt == "color":
        _check_distinct_colours(path, classes)
    with catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with rasterio.open(path) as ds:
                data = ds.read(window=window)
                palette = _palette(ds) if fmt == "color" and ds.count == 1 else None
                masked = label_nodata(ds, window=window, fmt=fmt)
                nodata = ds.nodata
        except rasterio.errors.RasterioIOError as exc:  # a pixel read's own text is "Read failed. See previous
            # exception for details.": GDAL's reason (a missing VRT source, a corrupt tile) is its cause (h118)
            from geoseg.raster import first_line

            raise InputError(f"{path}: labels are not a raster GDAL can read ({first_line(exc.__cause__ or exc)}). "
                             "Export or copy them again; a VRT needs every source it names.") from None
    if palette is not None:  # a palette PNG: its indexes stand for the colours of its table
        data = np.moveaxis(palette[data[0]], -1, 0)
    if fmt == "index":
        label = _whole_ids(data[0], path)
        if id_map is not None:
            label = np.where((label >= 0) & (label < len(id_map)), id_map[np.clip(label, 0, len(id_map) - 1)], IGNORE)
        out = np.where((label >= 0) & (label < len(classes)), label, IGNORE).astype(np.uint8)
    else:
        rgb = data[:3].astype(np.int64) if data.shape[0] >= 3 else np.repeat(data[:1].astype(np.int64), 3, 0)
        code = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
        out = np.full(code.shape, IGNORE, np.uint8)
        for i, c in enumerate(classes):
            out[code == int(c["color"][1:], 16)] = i
    if fmt == "index" and masked is not None and nodata is not None and float(nodata).is_integer():
        value = int(nodata)  # a 0/1 mask written with nodata 0 (a common export): its class 0 was all unlabelled, and
        # the only word was that the class had no labelled pixel (h103); also in windows, as on-disk training reads
        # (h114), and once per file: evaluate read the first label twice and said it twice (h109)
        named = id_map[value] if id_map is not None and 0 <= value < len(id_map) else value
        # evaluate's report has a note of its own on it, with the share of the pixels (h109: said three times)
        if _HEARD.get() is None and 0 <= named < len(classes) and (hidden := int((label[masked] == named).sum())):
            from geoseg.raster import gdal_edit

            name = classes[named]["name"]
            _warn_once((os.path.abspath(path), "nodata-class", value),
                       "%s: its nodata value %d is class %r's id, so %s of that value are read as unlabelled, not as "
                       "%s. If they are that class, unset the nodata value (%s).",
                       path, value, name, "its pixels" if window is not None else f"its {hidden} px", name,
                       gdal_edit(path, "-unsetnodata"))
    if masked is not None:  # the raster's nodata, internal mask or alpha: were scored as classes
        out[masked] = IGNORE
    if fmt == "color" and ((ignore_colors is not None and window is None) or colours is not None):
        unclassed = out == IGNORE if masked is None else (out == IGNORE) & ~masked
        values, counts = np.unique(code[unclassed], return_counts=True)
        if colours is not None:
            for v, n in zip(values.tolist(), counts.tolist()):
                colours[v] = colours.get(v, 0) + n
        else:
            warn_stray_colours(path, dict(zip(values.tolist(), counts.tolist())), ignore_colors, code.size, stray)
    if out.shape != tuple(shape):
        raise InputError(f"{path}: labels are {out.shape[1]} x {out.shape[0]} px where {shape[1]} x {shape[0]} px "
                         f"were expected (the pixel grid of {image}); labels must be on the image's grid.")
    return out


def label_nodata(ds, *, window=None, fmt: LabelFormat = "index") -> np.ndarray | None:
    """(rows, cols) bool: where the open label raster `ds` has no data (its nodata value, internal mask or
    alpha band, as GDAL's masks give them), or None when every pixel has data.

    Index labels are their first band's mask; a colour pixel is nodata only where every band
    holds the nodata value (GDAL's dataset mask).
    """
    from rasterio.enums import MaskFlags

    flags = ds.mask_flag_enums
    if all(f == [MaskFlags.all_valid] for f in flags):
        return None
    if fmt == "index" or ds.count == 1 or any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags):
        return ds.read_masks(1, window=window) == 0
    return ds.dataset_mask(window=window) == 0


def _check_distinct_colours(path: str, classes: Sequence[dict[str, Any]]) -> None:
    """Two classes of one colour: every pixel of that colour went to the later class, and the earlier had none."""
    by_colour: dict[str, list[str]] = {}
    for c in classes:
        if c.get("color"):
            by_colour.setdefault(str(c["color"]).upper(), []).append(repr(c["name"]))
    twice = {colour: names for colour, names in sorted(by_colour.items()) if len(names) > 1}
    if twice:
        which = "; ".join(f"{colour} is the colour of {', '.join(names)}" for colour, names in twice.items())
        raise InputError(f"{path}: colour-coded labels need a colour per class that no other class has, to tell "
                         f"which class a pixel is; {which}. Give each class its own colour: --label-names and "
                         "--label-colors (evaluate, compare), or the classes' label_color in the training config or "
                         "the model's card.")


def warn_stray_colours(path: str, colours: dict[int, int], ignore_colors: Sequence[str], total: int,
                       fix: str) -> None:
    """Warn about colours of no class that `ignore_colors` does not list: a class colour that is a little
    off, or an anti-aliased edge, would otherwise leave those pixels unlabelled without a word. `colours`:
    pixels per colour of no class (0xRRGGBB -> count) of the whole file, `total` its pixels."""
    listed = {int(c[1:], 16) for c in ignore_colors}
    stray = sorted(((int(n), int(v)) for v, n in colours.items() if int(v) not in listed), reverse=True)
    if not stray:
        return
    heard = _HEARD.get()
    if heard is not None and os.path.abspath(path) not in heard.files:  # summed over the files of a report
        for n, v in stray:
            heard.colours[v] = heard.colours.get(v, 0) + n
        heard.pixels += total
        heard.fix = fix
    shown = ", ".join(f"#{v:06X} ({n / total:.1%})" for n, v in stray[:5]) + (", ..." if len(stray) > 5 else "")
    message = "%s: %.1f%% of the pixels have %d colour(s) of no class (%s); they are left unlabelled. %s"
    args = (path, 100 * sum(n for n, _ in stray) / total, len(stray), shown, fix)
    if heard is not None:
        heard.files.setdefault(os.path.abspath(path), message % args)
        return
    _warn_once((os.path.abspath(path), "colours", fix), message, *args)


def _palette(ds) -> np.ndarray | None:
    try:
        table = ds.colormap(1)
    except ValueError:  # no colour table: a grey mask
        return None
    # every index of the band's type: a UInt16 table holds entries past 255 (an IndexError traceback, h119)
    lut = np.zeros((max(256, max(table, default=0) + 1, 2 ** (8 * np.dtype(ds.dtypes[0]).itemsize)), 3), np.int64)
    for index, rgba in table.items():
        lut[index] = rgba[:3]
    return lut


def label_file(path: str | os.PathLike) -> str:
    """The file of a label path: a vector one may name its layer after it, ``labels.gpkg|layername=roofs``."""
    text = str(path)
    head = text.split("|", 1)[0]
    return head if "|" in text and ("|layername=" in text.lower() or os.path.exists(head)) else text


def vector_source(path: str | os.PathLike) -> tuple[str, str | None]:
    """(file, layer) of a vector label path; the layer is None unless named as QGIS names it after '|'."""
    text, sep, option = str(path).partition("|")
    if not sep:
        return text, None
    key, _, layer = option.partition("=")
    if key.strip().lower() != "layername" or not layer:
        raise InputError(f"{text}: after '|' name a layer as 'layername=NAME'. Received: {option!r}")
    return text, layer


def layer_failure(path: str | os.PathLike, exc: Exception) -> str:
    """Why GDAL could not open `path` as a vector layer, in the user's terms: its own message said of a GeoPackage
    without layers (one saved empty, or all its layers deleted) and of a raster "not recognized as being in a
    supported file format ... specify the correct driver", which sent users after drivers (h145)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        head = None
    if head == b"":
        return "the file is empty (0 bytes): export the layer again"
    try:
        from geoseg.raster import open_quietly

        with open_quietly(path):
            return "it is a raster, not a vector layer: give polygons (GeoPackage, shapefile, GeoJSON, ...)"
    except Exception:  # noqa: BLE001 - not a raster either: say why it is not a layer
        pass
    if head is not None and head.startswith(b"SQLite format 3"):
        return ("a GeoPackage (or SQLite file) that holds no vector layer: save the polygons into it "
                "(`ogrinfo FILE` lists its layers)")
    return (str(exc).strip().splitlines() or [str(exc)])[0]


def read_vector_labels(path: str | os.PathLike, field: str | None = None):
    """The label layer of a vector file (a GeoDataFrame): the one named after '|layername=', or the file's
    only layer. A file of several layers needs one named: the first was read silently (pyogrio warned);
    the error suggests a layer that has `field`."""
    import geopandas as gpd
    import pyogrio

    file, layer = vector_source(path)
    try:
        layers = [name for name, kind in pyogrio.list_layers(file) if kind is not None]
    except Exception as exc:  # noqa: BLE001 - pyogrio's DataSourceError and friends
        raise InputError(f"{file}: cannot read these vector labels ({layer_failure(file, exc)}).") from None
    if layer is not None and layer not in layers:
        raise InputError(f"{file} has no layer {layer!r}; its layers: {', '.join(layers) or 'none'}.")
    if layer is None and len(layers) > 1:
        with_field = [name for name in layers if field in pyogrio.read_info(file, layer=name)["fields"]]
        raise InputError(f"{file} holds {len(layers)} layers ({', '.join(layers)}); name the label layer, "
                         f"e.g. '{file}|layername={(with_field or layers)[0]}'.")
    return gpd.read_file(file, engine="pyogrio", layer=layer)


def _whole_ids(values: np.ndarray, path: str) -> np.ndarray:
    """An index label's values as int64 class ids; NaN and infinities as -1 (unlabelled). A float label of fractions
    (2.5 from a bilinear resampling) was read as 2 and scored without a word, a complex one with NumPy's warnings."""
    if np.iscomplexobj(values):
        raise InputError(f"{path}: its values are complex numbers, and label values are whole class ids. Convert "
                         "it to an integer type (gdal_translate -ot Byte).")
    if values.dtype.kind != "f":
        return values.astype(np.int64)
    finite = np.isfinite(values)
    fractions = finite & (values != np.floor(values))
    if fractions.any():
        raise fractions_error(path, int(fractions.sum()), float(values[fractions][0]))
    # a float label's fill (-3.4028235e38, Float32's usual nodata) is no id either: cast, it raised NumPy's warning
    return np.where(finite & (np.abs(values) < 2.0**31), values, -1).astype(np.int64)


def fractions_error(path: str, count: int, first: float) -> InputError:
    """The error on an index label of `count` pixels holding fractions, `first` the first of them."""
    return InputError(f"{path}: {count} of its pixels hold fractions such as {first:g}, and label values are whole "
                      "class ids (was it resampled with other than nearest neighbour?). Resample labels with -r near "
                      "(gdalwarp, gdal_translate), or round them to ids: gdal_calc.py -A LABEL --outfile ids.tif "
                      "--calc=\"numpy.round(A)\" --type=Byte.")


class VectorLabels:
    """Polygons of one image, read and moved into its CRS once; `window` rasterises any window of its grid.

    Rasterising a window uses GDAL only (no pyproj), so it is safe in tf.data's
    worker threads, and only the polygons that touch the window are burnt.
    """

    def __init__(self, path: str, classes, image: str, field: str = "class", *,
                 rename: str = RENAME_IN_CONFIG) -> None:
        import shapely

        frame = read_vector_labels(path, field)
        if field not in frame.columns:
            fields = [c for c in frame.columns if c != frame.geometry.name]
            raise InputError(f"{path}: no field {field!r} holding the class. " + (
                f"Fields: {', '.join(fields)}." if fields else "The layer has no attribute fields, only shapes: add a "
                "field holding each polygon's class name or id (QGIS's Field Calculator, or ogr2ogr -sql \"SELECT "
                "*, 'building' AS class FROM layer\")."))
        from geoseg.raster import inspect_raster

        self.transform, crs = inspect_raster(image).map_georeferencing()  # a transform, or GCPs' best fit
        if crs is None:
            raise InputError(f"{image}: vector labels need a georeferenced image (a CRS, or ground control points).")
        kinds = frame.geometry.geom_type
        lines = int(kinds.isin(["LineString", "MultiLineString", "LinearRing"]).sum())
        points = int(kinds.isin(["Point", "MultiPoint"]).sum())
        if lines or points:  # centrelines labelled 0.5% of a road tile, against 3.3% for its road mask, with no word
            what = " and ".join([*([f"{lines} of its shapes are lines"] if lines else []),
                                 *([f"{points} {'are' if lines else 'of its shapes are'} points"] if points else [])])
            # once, and into a report's notes (it was logged twice, and missing from --json). The command names the
            # layer and its geometry column: 'geometry' failed on a GeoPackage's 'geom' ("no such column"), and
            # on a layer in degrees buffered by 3 degrees
            import pyogrio

            file, layer = vector_source(path)
            layer = layer or pyogrio.list_layers(file)[0][0]
            column = pyogrio.read_info(file, layer=layer).get("geometry_name") or "geometry"
            degrees = frame.crs is not None and frame.crs.is_geographic
            # polygons are burnt by pixel centre: a 3 m buffer of points on 28.5 m Landsat pixels burnt nothing,
            # and the error then blamed the CRS or the field (h132). At least 3/4 of a pixel reaches a centre.
            metre = crs.linear_units_factor[1] if crs.is_projected else None
            width = max(3, math.ceil(0.75 * math.hypot(self.transform.a, self.transform.d) * metre)) if metre else 3
            points_only = (" Points label the pixel each falls in, as a sample of points should be scored; buffer "
                           "them only where they stand for larger features." if points and not lines else "")
            _warn_once((os.path.abspath(path), "lines"), "%s: %s, burnt one pixel wide (the pixels they cross or fall "
                       "in), so they label a sliver of what they stand for.%s Buffer them to the features' width first, "
                       "in the layer's units (QGIS's Buffer, or ogr2ogr -nln %s -dialect SQLite -sql \"SELECT CASE WHEN "
                       "GeometryType(%s) LIKE '%%POLYGON%%' THEN %s ELSE ST_Buffer(%s, %d) END AS %s, * FROM "
                       "\\\"%s\\\"\" for %d m in a metric CRS, its polygons kept as they are%s)%s.", path, what,
                       points_only, shlex.quote(layer), column, column, column, width, column, layer, width,
                       f"; a buffer under 3/4 of this image's pixel ({width} m) may reach no pixel's centre and "
                       "label nothing" if width > 3 else "",
                       ", after moving the layer, which is in degrees, into a metric CRS (ogr2ogr -t_srs EPSG:...; in "
                       "degrees, 3 is 3 degrees)" if degrees else "")  # -nln: the layer kept its name (h128)
        if frame.crs is not None:
            layer_crs, native = frame.crs, frame.total_bounds
            frame = frame.to_crs(crs)
            coords = shapely.get_coordinates(np.asarray(frame.geometry.values, object))
            if coords.size and not np.isfinite(coords).all():  # make_valid's GEOSException was a traceback (h109)
                spans = ", ".join(f"{v:.10g}" for v in native)
                raise InputError(
                    f"{path}: its polygons cannot be placed on {image}: the layer says it is in "
                    f"{layer_crs.to_string()}, but it spans ({spans}), which is outside that CRS (a layer in metres "
                    "that says it is in degrees: GeoJSON without a \"crs\" member is read as WGS84 longitude and "
                    "latitude). Give the layer its real CRS (QGIS's Assign Projection, or ogr2ogr -a_srs EPSG:...).")
        else:  # a Shapefile without its .prj: lon/lat polygons then missed a UTM image without a word
            _warn_once((os.path.abspath(path), "crs"), "%s: the layer has no CRS, so its coordinates are taken to be "
                       "in the image's CRS (%s). If they are not, give the layer its CRS (its .prj; QGIS's Assign "
                       "Projection).", path, crs.to_string())
        # NULL and empty shapes label nothing (geopandas' notna() also warned about empty ones, twice)
        frame = frame[np.array([g is not None and not g.is_empty for g in frame.geometry], dtype=bool)]
        invalid = ~shapely.is_valid(np.asarray(frame.geometry.values, object))
        if invalid.any():  # a hole outside its shell was burnt over the whole grid, and lost by a window that
            # missed the shell (training with in_memory = false learnt other labels): both read it as repaired
            frame = frame.copy()
            frame.loc[invalid, frame.geometry.name] = shapely.make_valid(
                np.asarray(frame.geometry.values, object)[invalid], method="structure", keep_collapsed=False)
            _warn_once((os.path.abspath(path), "invalid"), "%s: %d of its shapes are invalid (self-intersecting, a "
                       "hole outside its shell, ...); they are read as shapely.make_valid repairs them. QGIS's Fix "
                       "Geometries repairs the layer itself.", path, int(invalid.sum()))
        ids = [_class_id(v, classes) for v in frame[field]]
        _check_matches(path, field, classes, list(frame[field]), ids, rename)
        # polygons of no class are burnt as unlabelled, in file order as the others: dropped, one over a
        # background polygon took the background's class (the warning said "left unlabelled")
        self.geometries = list(frame.geometry)
        self.values = [IGNORE if i is None else i for i in ids]
        self.tree = shapely.STRtree(self.geometries)

    def window(self, shape: tuple[int, int], window=None) -> np.ndarray:
        """(rows, cols) uint8 class ids of `window` (the whole grid when None); 255 outside every polygon."""
        import shapely
        from rasterio.features import rasterize
        from rasterio.windows import bounds

        transform = self.transform
        if window is not None:
            from rasterio.windows import transform as window_transform

            transform = window_transform(window, self.transform)
        left, bottom, right, top = bounds(((0, shape[0]), (0, shape[1])), transform)
        hits = self.tree.query(shapely.box(min(left, right), min(bottom, top), max(left, right), max(bottom, top)))
        if hits.size == 0:
            return np.full(shape, IGNORE, np.uint8)
        shapes = [(self.geometries[i], self.values[i]) for i in sorted(hits)]  # file order: later polygons win
        return rasterize(shapes, out_shape=shape, transform=transform, fill=IGNORE, dtype="uint8")


def class_key(name: str) -> str:
    """A class name as names are matched: one Unicode form, one case. 'Gebäude' from a macOS file name (its
    decomposed form) matched no class of a card written in the composed one, and went unscored."""
    import unicodedata

    return unicodedata.normalize("NFC", name).casefold()


def _class_id(value: Any, classes) -> int | None:
    """The class a polygon's field value stands for: a class name, or an id (a whole number, also stored as
    a real such as 1.0, or as text such as '1' when no class has that name); None for anything else."""
    if isinstance(value, str):  # a name; else an id written as text ('1' in a Shapefile's text field)
        value = value.strip()  # 'building ' from a digitising form matched no class, and the note hid why
        named = next((i for i, c in enumerate(classes) if c["name"] == value), None)
        if named is None:  # 'Building', as evaluate and index rasters' CLASS_NAMES match, where one class fits
            alike = [i for i, c in enumerate(classes) if isinstance(c["name"], str)
                     and class_key(c["name"]) == class_key(value)]
            named = alike[0] if len(alike) == 1 else None
        if named is None and TEXT_ID.fullmatch(value) and int(value) < len(classes):
            return int(value)
        return named
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    if not float(value).is_integer() or not 0 <= value < len(classes):
        return None
    return int(value)


def _check_matches(path: str, field: str, classes, values: list, ids: list, rename: str = RENAME_IN_CONFIG) -> None:
    """Refuse a file none of whose polygons is of a class; warn (once per file) about the values that match
    none, which would otherwise be dropped without a word."""
    unmatched = [v for v, i in zip(values, ids) if i is None]
    if not unmatched:
        return
    names = ", ".join(repr(c["name"]) for c in classes)
    found = _few(unmatched)
    lowered = {c["name"].lower() for c in classes}
    hint = (" Class names are case-sensitive." if any(isinstance(v, str) and v.lower() in lowered
                                                     for v in unmatched) else "")
    if len(unmatched) == len(values):
        raise InputError(f"{path}: no polygon's {field!r} value matches a class: it holds {found}, and the "
                         f"classes are {names} (or their ids 0 to {len(classes) - 1}).{hint} {rename}")
    _warn_once((os.path.abspath(path), field, tuple(c["name"] for c in classes)),
               "%s: %d of %d polygons have a %r value that matches no class (%s); they are left unlabelled. The "
               "classes are %s (or their ids 0 to %d).%s", path, len(unmatched), len(values), field, found, names,
               len(classes) - 1, hint)


def _few(values: list, limit: int = 5) -> str:
    """The distinct values, most frequent first, at most `limit` of them."""
    counts: dict[str, int] = {}
    for v in values:
        text = repr(v.item() if isinstance(v, np.generic) else v)
        counts[text] = counts.get(text, 0) + 1
    shown = sorted(counts, key=counts.get, reverse=True)
    return ", ".join(shown[:limit]) + (f" and {len(shown) - limit} more" if len(shown) > limit else "")
