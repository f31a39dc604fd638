"""Evaluate and compare models on whole rasters through the real tiled pipeline."""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack, contextmanager
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import rasterio

from geoseg.errors import BandError, InputError, OutputError, catch_warnings
from geoseg.models.labels import (IGNORE, RENAME_LABEL_NAMES, STRAY_IN_EVALUATE, TEXT_ID, LabelFormat, VectorLabels,
                                  check_label_grid, class_key, fractions_error, label_class_names, label_nodata,
                                  label_warnings, read_labels, warn_stray_colours)
from geoseg.models.metrics import confusion_matrix, scores
from geoseg.models.registry import BUILTIN, get_segmenter, resolve_model
from geoseg.pipeline import check_options, check_output_path, prepare_output_dir, segment
from geoseg.raster import (NODATA, check_bands, class_pixel_counts, gdal_edit, inspect_raster, open_quietly, raster_stem,
                           unique_stems)
from geoseg.vector import write_qml
from geoseg.workflows.common import md_cell

log = logging.getLogger(__name__)

__all__ = ["Comparison", "Evaluation", "evaluate", "compare", "disagreement_classes", "majority_classes", "markdown_table"]


@dataclass
class Evaluation:
    """Scores of one model over a set of rasters."""

    model: str
    version: str
    classes: list[str]
    per_class: dict[str, dict[str, float | None]]
    mean_iou: float | None  # None, never NaN (not JSON), when no class could be scored
    pixel_accuracy: float | None
    confusion_matrix: list[list[int]]
    pixels_scored: int
    not_scored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # per model class: pixels of label classes the model lacks (`not_scored`) where it predicted that class, false
    # positives of the classes the labels name (water found on 'background'), outside the matrix
    predicted_on_not_scored: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)

    def __str__(self) -> str:
        """A few lines for people, as `SegmentResult`'s: the model, mean IoU and pixel accuracy, each class's
        scores, what was not scored and the notes. ``repr()`` stays the dataclass's one line of every field (the
        confusion matrix in it)."""
        def score(value: float | None) -> str:
            return "–" if value is None else f"{value:.3f}"

        lines = [f"Evaluation: {self.model} {self.version}: mean IoU {score(self.mean_iou)}, pixel accuracy "
                 f"{score(self.pixel_accuracy)} over {self.pixels_scored:,} px"]
        width = max((len(name) for name in self.per_class), default=0)
        for name, s in self.per_class.items():
            lines.append(f"  {name:<{width}}  IoU {score(s.get('iou'))}  F1 {score(s.get('f1'))}  precision "
                         f"{score(s.get('precision'))}  recall {score(s.get('recall'))}")
        if self.not_scored:
            lines.append(f"  not scored (classes the model lacks): {', '.join(self.not_scored)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython and Jupyter
        printer.text(str(self))


class Comparison(dict):
    """What `compare` returns: a dict (``models``, ``evaluations``, ``disagreement``, ``agreement_pct``), as
    ``--json`` writes it, that prints as a few lines for people: the score table the command prints, and each
    disagreement raster with the share of pixels the models agree on. ``repr()`` stays the dict's."""

    def __str__(self) -> str:
        models = self.get("models", [])
        lines = [f"Comparison: {', '.join(map(str, models))}"]
        if self.get("evaluations"):
            lines += ["  " + line for line in markdown_table(self["evaluations"]).splitlines()]
            lines += [f"  note: {e.get('column', e['model'])}: {n}" for e in self["evaluations"] for n in e["notes"]]
        for path, agree in zip(self.get("disagreement", []), self.get("agreement_pct", [])):
            share = "no valid pixel" if agree is None else f"all models agree on {agree}% of the valid pixels"
            lines.append(f"  disagreement: {path} ({share})")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython and Jupyter
        printer.text(str(self))


def _label_classes(label_names: Sequence[str | None] | None, label_colors: Sequence[str] | None, card) -> list[dict]:
    """The label classes in id order; a name of None (an id an index raster's CLASS_NAMES skips) is unlabelled."""
    if label_names is None:
        return [{"name": c.name, "color": c.in_labels} for c in card.classes]
    colors = list(label_colors or [None] * len(label_names))
    return [{"name": n, "color": colors[i]} for i, n in enumerate(label_names)]


def _rounded(value: float) -> float | None:
    """A score rounded for the report, None for NaN (a class never seen), which JSON cannot hold."""
    return None if not np.isfinite(value) else round(float(value), 4)


def _folder(model) -> str:
    """The folder of a model's masks in compare: the bundle's file stem or the model's name, and the
    inference mode when not the default (``landcover-unet_tta-flips``)."""
    from urllib.parse import parse_qsl

    ref, _, query = str(model).partition("?")
    modes = [f"{k}-{v}" for k, v in parse_qsl(query) if k != "card"]
    return "_".join([Path(ref).stem, *modes])


def _folders(models: list) -> list[str]:
    """Each model's folder in compare: `_folder`, with the bundle's parent folder in front where two
    would share one (``runA_landcover-unet``, ``runB_landcover-unet``: two training runs of one name)."""
    folders = [_folder(m) for m in models]
    folders = [f"{Path(str(m).partition('?')[0]).parent.name}_{f}" if folders.count(f) > 1
               and Path(str(m).partition("?")[0]).parent.name else f for m, f in zip(models, folders)]
    twice = sorted({f for f in folders if folders.count(f) > 1})
    if twice:
        raise InputError(f"compare keeps each model's masks in a folder of its own, and "
                         f"{', '.join(str(m) for m, f in zip(models, folders) if f in twice)} would share one "
                         f"({', '.join(twice)}); name each model once, or keep bundles of the same name in "
                         "folders of different names.")
    return folders


def _mask_dir(folder: Path, image, names: dict[str, str]) -> Path:
    """Where an image's mask goes: `folder`, or a subfolder named apart (`names`, from `unique_stems`) where
    another image has its stem (``Tile 2/images/part_1.jpg`` and ``Tile 3/images/part_1.jpg``)."""
    name = names[os.fspath(image)]
    return folder if name == raster_stem(image) else folder / name


def _mask_path(folder: Path, image, names: dict[str, str]) -> Path:
    """The mask `segment` wrote of `image` into `_mask_dir(folder, ...)`."""
    return _mask_dir(folder, image, names) / f"{raster_stem(image)}_mask.tif"


STRIP_PX = 1 << 20  # pixels scored at a time: a colour label's read costs about 35 bytes a pixel


def _strips(height: int, width: int) -> Iterator[Any]:
    """Windows of whole rows, of about `STRIP_PX` pixels each, that cover a (height, width) grid top to bottom."""
    from rasterio.windows import Window

    rows = max(1, STRIP_PX // max(1, width))
    for top in range(0, height, rows):
        yield Window(0, top, width, min(rows, height - top))


def _check_fractions(label) -> None:
    """Refuse a float index label holding fractions, counting them over the whole file as a whole read does (a
    strip's read counts its own only)."""
    count, first = 0, None
    with catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with rasterio.open(label) as ds:
                if np.dtype(ds.dtypes[0]).kind != "f":
                    return
                for window in _strips(ds.height, ds.width):
                    values = ds.read(1, window=window)
                    fractions = np.isfinite(values) & (values != np.floor(values))
                    if fractions.any():
                        count += int(fractions.sum())
                        first = float(values[fractions][0]) if first is None else first
        except rasterio.errors.RasterioError:  # read_labels says why, with the file
            return
    if count:
        raise fractions_error(str(label), count, first)


def _label_strips(label, *, fmt: LabelFormat, classes: list[dict], image, shape: tuple[int, int], vector_field: str,
                  ignore_colors: Sequence[str] | None = None) -> Iterator[tuple[Any, np.ndarray]]:
    """(window, uint8 label ids) of `label` strip by strip (`_strips`): a whole read of a colour mask held ~35 bytes a
    pixel (1.9 GB at 6000 x 6000 px). What a whole read says of the whole file is said alike: the colours of no class
    once the last strip is read (with `ignore_colors`), and a float index label's fractions before the first; polygons
    are read once, not once per strip."""
    if fmt == "vector":
        polygons = VectorLabels(str(label), classes, str(image), vector_field, rename=RENAME_LABEL_NAMES)
        for window in _strips(*shape):
            yield window, polygons.window((window.height, window.width), window)
        return
    if fmt == "index":
        _check_fractions(label)
    colours: dict[int, int] | None = {} if fmt == "color" and ignore_colors is not None else None
    # a PNG, JPEG or GIF decodes from its first row for any window: read in 16 strips, a 4000² PNG was decoded 8
    # times over (1.02 s against 0.12 s whole, h156); such files are read whole, as before
    from rasterio.windows import Window

    windows = [Window(0, 0, shape[1], shape[0])] if _decoded_from_the_top(label) else _strips(*shape)
    for window in windows:
        yield window, read_labels(label, fmt=fmt, classes=classes, image=image, shape=(window.height, window.width),
                                  vector_field=vector_field, window=window, rename=RENAME_LABEL_NAMES,
                                  stray=STRAY_IN_EVALUATE, colours=colours)
    if colours is not None:
        warn_stray_colours(str(label), colours, ignore_colors, shape[0] * shape[1], STRAY_IN_EVALUATE)


SEQUENTIAL_DRIVERS = ("PNG", "JPEG", "GIF")  # GDAL decodes them from the top for a window of any row


def _decoded_from_the_top(label) -> bool:
    """Whether `label` is a PNG, JPEG or GIF, which GDAL cannot read a window of without decoding all rows above."""
    try:
        with open_quietly(label) as ds:
            return ds.driver in SEQUENTIAL_DRIVERS
    except rasterio.errors.RasterioError:  # read_labels says why, with the file
        return False


def _nodata_differs(folders: list[Path], images: list) -> bool:
    """Whether the masks in `folders` (one model's each) have no class on different pixels of any image."""
    names = unique_stems(images)
    for image in images:
        with ExitStack() as stack:  # each closed, also where a later one fails to open (h156)
            handles = [stack.enter_context(open_quietly(_mask_path(folder, image, names))) for folder in folders]
            if len({h.shape for h in handles}) > 1:
                return True
            for window in _strips(*handles[0].shape):
                first = handles[0].read(1, window=window) == NODATA
                if any(((h.read(1, window=window) == NODATA) != first).any() for h in handles[1:]):
                    return True
    return False


def _paths(paths) -> list:
    """One path stands for a list of one (a str is not a sequence of paths)."""
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def _names(value) -> list | None:
    """Label names or colours as a list: a str is split at commas, as the CLI splits ``--label-names a,b``
    (``"other,water"`` was taken for one class of that name)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()] or [value]
    return None if value is None else list(value)


def _check_label_set(label_format: str, label_names, label_colors) -> None:
    """The label names and colours make sense together, before any image is read."""
    if label_names is not None and (not label_names or not all(isinstance(n, str) and n for n in label_names)):
        raise InputError(f"label names must be non-empty names, one per label class. Received: {label_names}")
    if label_names is not None and len(set(label_names)) < len(label_names):
        raise InputError(f"label names must differ. Received: {label_names}")
    if label_colors is None:
        if label_names is not None and label_format == "color":
            raise InputError("colour-coded labels with label names need their colours too: pass --label-colors "
                             "#RRGGBB,... (label_colors=) in the order of the names.")
        return
    if label_names is None:
        raise InputError("label colours need the label names they stand for: pass --label-names "
                         "(label_names=) in the same order, or leave both out to use the model's classes.")
    if label_format != "color":
        raise InputError(f"label colours are for colour-coded labels; these are {label_format!r}. Pass "
                         "--label-format color or leave the colours out.")
    if len(label_colors) != len(label_names):
        raise InputError(f"{len(label_names)} label name(s) but {len(label_colors)} colour(s); give one "
                         "#RRGGBB colour per name.")
    bad = [c for c in label_colors if not (isinstance(c, str) and re.fullmatch(r"#[0-9A-Fa-f]{6}", c))]
    if bad:
        raise InputError(f"label colours must be #RRGGBB. Received: {', '.join(map(repr, bad))}")
    upper = [c.upper() for c in label_colors]
    twice = sorted({c for c in upper if upper.count(c) > 1})
    if twice:  # every pixel of that colour went to the later name, and the earlier one had none
        which = "; ".join(f"{c} for {' and '.join(n for n, u in zip(label_names, upper) if u == c)}" for c in twice)
        raise InputError(f"label colours must differ, one per label name, to tell the classes apart. Received: "
                         f"{which}; fix --label-colors (label_colors=).")


def _remap(label_classes: list[dict], card) -> tuple[np.ndarray, list[str]]:
    """Lookup from label ids to model ids by class name; a name that differs from one model class's
    only in case is that class ('Building' in a vector file's field: --label-names had to hold the
    file's names, and then they were no model class: no way to score such a file).

    Label classes the model lacks are scored as the model's 'other' class when it
    has one (classical baselines), else left out (255); classes of no known class ('unlabeled', clouds:
    `unknown_class`) are left out either way.
    """
    model_ids = {c.name: c.id for c in card.classes}
    folded: dict[str, list[str]] = {}
    for c in card.classes:
        folded.setdefault(class_key(c.name), []).append(c.name)
    other = model_ids.get("other", IGNORE)
    lut = np.full(256, IGNORE, np.uint8)
    missing = []
    for i, c in enumerate(label_classes):
        if c["name"] is None:  # an id the label's CLASS_NAMES skips: unlabelled
            continue
        if c["name"] in model_ids:
            lut[i] = model_ids[c["name"]]
        elif len(near := folded.get(class_key(c["name"]), [])) == 1:  # 'Water', or in another Unicode form
            lut[i] = model_ids[near[0]]
        elif unknown_class(c["name"]):  # 'unlabeled', clouds: no known class, so no 'other' either (h132: a
            missing.append(c["name"])  # baseline scored 400 px named 'unlabeled' as correct or wrong 'other')
        else:
            lut[i] = other
            missing.append(c["name"])
    return lut, missing


# label classes whose pixels are of no known class (the Dubai masks' "unlabeled", clouds): not known negatives
_UNKNOWN = {"unlabeled", "unlabelled", "unknown", "ignore", "ignored", "void", "nodata", "novalue", "cloud", "clouds",
            "unclassified", "notclassified", "undefined", "masked"}


def unknown_class(name: str) -> bool:
    """Whether a label class's name says its pixels are of no known class ('unlabeled', 'No data', 'clouds').

    >>> [unknown_class(n) for n in ("Unlabeled", "no data", "background", "other")]
    [True, True, False, False]
    """
    return re.sub(r"[^a-z]", "", class_key(name)) in _UNKNOWN


def tally(truth: np.ndarray, pred: np.ndarray, lut: np.ndarray, label_classes: list[dict], n: int, *,
          negatives: bool) -> tuple[np.ndarray, np.ndarray]:
    """The (n, n) confusion matrix of `pred` against label ids `truth` read by `lut`, and, with `negatives` (a
    model without 'other'), per model class its predictions on pixels of the label classes the model lacks.

    Those pixels are known to be none of the classes the label file names ('background' of a water mask is not
    water): a class of this file's found there is a false positive; one the file does not name may be right (its
    background may hold roads), and classes of no known class ('unlabeled', clouds: `unknown_class`) count for
    nothing. The model's water there was dropped, and a poor water map read precision 1.000 (h96)."""
    beyond = np.zeros(n, np.int64)
    lacking = [i for i, c in enumerate(label_classes)
               if c["name"] is not None and lut[i] == IGNORE and not unknown_class(c["name"])] if negatives else []
    if not lacking:
        return confusion_matrix(lut[truth], pred, n), beyond
    known = lut.copy()
    known[lacking] = n  # one more truth row: the matrix is the rest, counted in the same pass
    full = confusion_matrix(known[truth], pred, n + 1)
    named = sorted({int(v) for v in lut if v < n})  # this file's classes
    beyond[named] = full[n, named]
    return full[:n, :n], beyond


def evaluate(
    model: str | os.PathLike | None,
    images: Sequence[str | os.PathLike],
    labels: Sequence[str | os.PathLike],
    *,
    label_format: LabelFormat = "index",
    label_names: Sequence[str] | None = None,
    label_colors: Sequence[str] | None = None,
    vector_field: str = "class",
    ignore_colors: Sequence[str] | None = None,
    keep_masks: str | os.PathLike | None = None,
    **segment_options: Any,
) -> Evaluation:
    """Segment each image with `model` through the tiled pipeline and score it against its labels.

    Parameters
    ----------
    images, labels : sequences of paths
        Pairs, in the same order; a single path stands for a list of one.
    label_format : {"index", "color", "vector"}
        How labels are stored (see `geoseg.models.labels.read_labels`).
    label_names, label_colors : sequences of str, optional
        The label set, in id order (a str is split at commas: ``"other,water"``); default
        the names stored in an index raster, else the model's own classes. Classes are
        matched by name; label classes the model does not have are not scored and are
        listed in ``not_scored``.
    ignore_colors : sequence of str, optional
        Colours (``#RRGGBB``) that mark unlabelled pixels in colour-coded labels, such as the
        Dubai masks' ``#9B9B9B``: left out of the scores without the note that names colours
        of no class.
    keep_masks : path, optional
        Folder to keep the predicted masks in (default: a temporary folder).
    progress : callable, optional
        ``progress(fraction)`` of the whole evaluation, each image an equal part (in `**segment_options`).

    Returns
    -------
    Evaluation
        Per-class IoU, F1, precision and recall, mean IoU over classes present,
        pixel accuracy and the confusion matrix (rows truth, columns prediction);
        pixels labelled 255 (unlabelled) are ignored.

    Notes
    -----
    A model of unlabeled regions (card ``"output": "regions"``, e.g. ``watershed-regions``)
    is scored on the labels' own classes, which must be named: each region takes its
    majority label class (`majority_classes`) and ``notes`` says so.
    """
    # a bad label_format was a bare KeyError, and chunks= segment()'s TypeError, after the labels were read
    _check_label_format(label_format, vector_field)
    ignore_colors = _checked_ignore_colors(label_format, ignore_colors)
    progress = _progress_of(segment_options)
    ids_of = segment_options.pop("_ids_of", None)  # compare's first model, whose class ids the labels were read as
    # compare's: the warnings of each image's run go to `said`; with `masks_from`, the masks of an earlier pass are
    # scored again (not segmented), leaving out pixels where a mask in `common_with` has no class
    rescore = {k: segment_options.pop(f"_{k}", None) for k in ("said", "masks_from", "common_with")}
    check_options(segment_options, caller="evaluate()", taken=("overwrite", "preview", "progress"))
    if keep_masks is not None:  # before any label is read: "masks \n" made a folder of that name
        check_output_path(keep_masks)
    images, labels = _paths(images), _paths(labels)
    label_note = None
    if (label_format == "color" and label_names is None and label_colors is None and ids_of is None and images
            and len(images) == len(labels)):
        # colours the model's card does not name, named by another registered card (the Dubai masks' building, land
        # and road for a baseline, by the U-Net's): read as compare reads them, not left unlabelled
        names, colors, label_note = _colour_label_set([model], labels, ignore_colors)
        if label_note:
            label_names, label_colors = names, colors
    if label_format == "vector" and label_names is None and label_colors is None:
        # names in the field are the label set, matched to the model's by name as compare matches them: read by
        # the model's classes, a file's 'forest' polygons were left out unlabelled and a baseline's 'other' was
        # never scored (compare scored them as 'other'), and 'Building' was refused as no 'building'
        label_names = _vector_names(labels, vector_field) or None
    with label_warnings() as heard:  # polygons of no class were said in the log only, not in the report
        result = _evaluate(model, images, labels, heard, label_format=label_format, label_names=label_names,
                           label_colors=label_colors, vector_field=vector_field, ignore_colors=ignore_colors,
                           keep_masks=keep_masks, progress=progress, ids_of=ids_of, **rescore, **segment_options)
    if label_note:
        result.notes.insert(0, label_note)
    return result


def _progress_of(options: dict[str, Any]) -> Callable[[float], None] | None:
    """The ``progress`` callback taken out of `options` (a fraction of the whole run), checked."""
    progress = options.pop("progress", None)
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be a function of the fraction done, or None. Received: {progress!r}")
    return progress


def _part(progress: Callable[[float], None] | None, done: float, share: float) -> Callable[[float], None] | None:
    """A step's progress callback: its own fraction, as the part `share` of the whole after `done`."""
    return None if progress is None else lambda fraction: progress(done + share * fraction)


def _evaluate(model, images: list, labels: list, heard, *, label_format, label_names, label_colors,
              vector_field, ignore_colors, keep_masks, progress=None, ids_of=None, said=None, masks_from=None,
              common_with=None, **segment_options) -> Evaluation:
    card, label_sets, missing = _prepare(model, images, labels, label_format=label_format, label_names=label_names,
                                         label_colors=label_colors, vector_field=vector_field)
    taken = {str(c["color"]).upper(): c["name"] for c in label_sets[0][0] if c.get("color")}
    clash = [f"{c} (label class {taken[c]!r})" for c in ignore_colors if c in taken]
    if clash:  # a colour either names a class or marks unlabelled pixels
        raise InputError(f"ignore_colors (--ignore-colors) holds the colour of a label class: {', '.join(clash)}. "
                         "Remove it, or name the classes otherwise (--label-names, --label-colors).")
    by_ids = label_names is None and (label_format == "vector"
                                      or label_format == "index" and not all(map(label_class_names, labels)))
    _check_model_bands(model, images, segment_options.get("bands"), fix="score it on images that have those bands, "
                       "or pick a model of their bands (-m)")
    regions = card.output == "regions"
    class_names = ([c["name"] for c in label_sets[0][0] if c["name"] is not None] if regions
                   else [c.name for c in card.classes])
    n = len(class_names)
    matrix = np.zeros((n, n), np.int64)
    beyond = np.zeros(n, np.int64)  # predictions on pixels of label classes the model lacks, per class
    has_other = any(c.name == "other" for c in card.classes)  # a baseline's: label classes it lacks are 'other'
    lacking = bool(missing) and not regions and not has_other
    names = unique_stems(images)
    unnamed: dict[int, int] = {}  # index labels: pixels per value that no label name stands for (not 255, not nodata)
    unlabelled: list[str] = []  # index labels: 0/255 masks and nodata values that are class ids
    off_data = 0  # labelled pixels (of a class the model scores) where the model gives no class: image nodata
    off_others = 0  # such pixels where another model of a comparison gives none (`common_with`)
    unscored: list[str] = []  # images without a labelled pixel of a class scored: left out without a word
    warned: dict[str, list[str]] = {}  # what the runs warned of, the image's path as \0 -> the images
    with tempfile.TemporaryDirectory(prefix="geoseg-eval-") as tmp:
        out_dir = Path(keep_masks) if keep_masks else Path(tmp)
        for i, (image, label, (label_classes, lut)) in enumerate(zip(images, labels, label_sets)):
            if masks_from is None:
                result = segment(image, _mask_dir(out_dir, image, names), model=model, preview=False,
                                 overwrite=True, progress=_part(progress, i / len(images), 1 / len(images)),
                                 **_options_for(model, segment_options))
                mask_path, heard_now = result.outputs["mask"], result.warnings
                if said is not None:
                    said[str(image)] = result.warnings
            else:  # scored again on the pixels every model of a comparison gives a class
                mask_path, heard_now = _mask_path(masks_from, image, names), said.get(str(image), [])
            for line in heard_now:  # on stderr only: a fill scored as ground was missing from --json (h132)
                warned.setdefault(line.replace(str(image), "\0"), []).append(str(image))
            with ExitStack() as stack:  # strip by strip (`_strips`): whole, the labels and masks held ~35 B a pixel
                masks = [stack.enter_context(open_quietly(p))
                         for p in [mask_path, *(_mask_path(f, image, names) for f in common_with or [])]]
                shape = masks[0].shape
                # a model of regions gives each region its majority label class: regions are whole, so are their ids
                whole = (np.empty(shape, np.uint8), np.empty(shape, np.uint8)) if regions else None
                labelled = False
                # scored again: no segmentation reports progress, so each strip does (a 4000² image of 4 models
                # took 5.4 s after the bar's 100% without a word)
                rows_done = _part(progress, i / len(images), 1 / len(images)) if masks_from is not None else None
                # colours of no class (`ignore_colors`): were left out without a word
                for window, truth in _label_strips(label, fmt=label_format, classes=label_classes, image=image,
                                                   shape=shape, vector_field=vector_field, ignore_colors=ignore_colors):
                    pred = masks[0].read(1, window=window)
                    if rows_done is not None:
                        rows_done((window.row_off + window.height) / shape[0])
                    known = lut[truth] != IGNORE
                    off_data += int(((pred == IGNORE) & known).sum())
                    if common_with:
                        gone = np.zeros(pred.shape, bool)
                        for other in masks[1:]:
                            gone |= other.read(1, window=window) == NODATA
                        gone &= pred != IGNORE
                        off_others += int((gone & known).sum())
                        pred = np.where(gone, np.uint8(IGNORE), pred)
                    labelled = labelled or bool(known.any())
                    if regions:
                        rows = slice(window.row_off, window.row_off + window.height)
                        whole[0][rows], whole[1][rows] = truth, pred
                        continue
                    found, outside = tally(truth, pred, lut, label_classes, n, negatives=lacking)
                    matrix += found
                    beyond += outside
            if regions:
                truth, pred = whole
                found, outside = tally(truth, majority_classes(pred, lut[truth], n), lut, label_classes, n,
                                       negatives=lacking)
                matrix += found
                beyond += outside
            if label_format == "index":
                for value, count in _unnamed_pixels(label, label_classes, unlabelled).items():
                    unnamed[value] = unnamed.get(value, 0) + count
            if not labelled:
                unscored.append(str(image))
    if not matrix.any() and off_others:  # each model alone scored pixels, but no model's data lies where all have
        # data: "every labelled pixel falls on the nodata of its image ... Check that the labels belong" was untrue
        raise InputError(f"no pixel could be scored on all the models of the comparison: the {off_others} labelled "
                         f"pixels where {card.name} gives a class lie where another model gives none (nodata of the "
                         "bands it reads), so no pixel has a class from every model. Give the models bands whose "
                         "data overlap (--model-bands), or score each model on its own with geoseg evaluate.")
    if not matrix.any():  # every labelled pixel lay where the model gives no class: "mean_iou": NaN, exit 0
        raise InputError(_nothing_on_data(images, labels))
    s = scores(matrix, beyond if lacking else None)
    per_class = {
        name: {k: _rounded(s[k][i]) for k in ("iou", "f1", "precision", "recall")}
        for i, name in enumerate(class_names)
    }
    if regions:
        notes = ["each region was given its majority label class: the labels chose the classes, so these scores "
                 "bound what a classifier of these regions could reach; they do not measure a classifier"]
    elif missing and has_other:
        unknown = sorted(m for m in missing if unknown_class(m))
        other = sorted(set(missing) - set(unknown))
        notes = [f"label classes not in the model, scored as its 'other' class: {', '.join(other)}"] if other else []
        if unknown:
            notes.append(f"label classes of no known class, not scored: {', '.join(unknown)}")
    else:
        unknown = sorted(m for m in missing if unknown_class(m))
        notes = [f"label classes not in the model, not scored: {', '.join(sorted(missing))}"] if missing else []
        if lacking and len(unknown) < len(missing):
            notes[0] += (f"; where the model found a class its label file names on pixels of "
                         f"{', '.join(sorted(set(missing) - set(unknown)))}, that is counted as a false positive "
                         f"({int(beyond.sum())} pixels)" + (f"; {', '.join(unknown)} taken for unknown, not "
                                                            "counted" if unknown else "") +
                         "; the pixel accuracy is over the pixels of the model's classes")
    absent = [name for i, name in enumerate(class_names) if matrix[i].sum() == 0]
    if absent and not regions:
        notes.append(f"model classes absent from the labels (left out of the mean IoU unless predicted on pixels of "
                     f"the labels' classes, where they are false positives): {', '.join(absent)}")
    if unnamed:  # were left out without a word
        notes.append(_unnamed_note(unnamed, label_sets))
    notes.extend(unlabelled)
    if unscored and len(images) > 1:
        shown = ", ".join(unscored[:3]) + (f" and {len(unscored) - 3} more" if len(unscored) > 3 else "")
        notes.append(f"{len(unscored)} of the {len(images)} images have no labelled pixel of a scored class and add "
                     f"nothing to the scores: {shown}. Check that their labels cover them (polygons in another CRS "
                     "than they say, or a layer without a CRS, which is taken to be in the image's)")
    if off_data:  # were left out without a word too
        notes.append(f"{off_data} labelled pixels lie on image nodata, where the model gives no class, and were not "
                     "scored")
    if off_others:  # each model was scored on its own pixels: different sets, side by side (h132)
        notes.append(f"{off_others} labelled pixels lie where another model of the comparison gives no class (nodata "
                     "of the bands it reads), and were not scored, so that every model is scored on the same pixels")
    if by_ids and not regions:  # a file whose 1 means building was scored as the model's class 1 without a word
        ids = ", ".join(f"{c.id} {c.name}" for c in card.classes)
        notes.append(f"the labels' values were read as {card.name}'s class ids ({ids}); if they stand for other "
                     "classes, pass --label-names (label_names=) in id order")
    elif ids_of is not None and not regions:  # compare said nothing of it, for any model (h96)
        ids = ", ".join(f"{i} {name}" for i, name in enumerate(label_names))
        notes.append(f"the labels' values were read as {ids_of}'s class ids ({ids}), the first model of the "
                     "comparison, so that every model reads them alike; if they stand for other classes, pass "
                     "--label-names (label_names=) in id order")
    notes.extend(heard.notes())
    notes.extend(line.replace("\0", alike[0]) + (f" (and {len(alike) - 1} other image(s) alike)" if len(alike) > 1
                                                 else "") for line, alike in warned.items())
    not_scored = sorted(m for m in missing if unknown_class(m) or not has_other)
    return Evaluation(card.name, card.version, class_names, per_class, _rounded(s["mean_iou"]),
                      _rounded(s["pixel_accuracy"]), matrix.tolist(), int(matrix.sum()), not_scored, notes,
                      beyond.tolist() if lacking else [])


def _unnamed_note(unnamed: dict[int, int], label_sets: list) -> str:
    """The note on index label values that no label name stands for (`unnamed`: pixels per value)."""
    total = sum(unnamed.values())
    sizes = {len(label_classes) for label_classes, _ in label_sets}
    gaps = any(c["name"] is None for label_classes, _ in label_sets for c in label_classes)
    if len(sizes) == 1 and not gaps:
        k = sizes.pop()
        return (f"{total} labelled pixels have values past the {k} label names (ids {k} and up, not 255) and were "
                "not scored: name every value with --label-names (label_names=)")
    values = sorted(unnamed)
    shown = ", ".join(map(str, values[:8])) + (f" and {len(values) - 8} more" if len(values) > 8 else "")
    return (f"{total} labelled pixels have ids that no label name stands for ({shown}) and were not scored: name "
            "every id with --label-names (label_names=)")


def _nothing_on_data(images: list, labels: list) -> str:
    """Why an evaluation scored no pixel although its labels match the model's classes."""
    pairs = ", ".join(f"{label} on {image}" for image, label in list(zip(images, labels))[:3])
    more = f" and {len(images) - 3} more" if len(images) > 3 else ""
    return (f"no pixel could be scored: every labelled pixel falls on the nodata of its image (or outside its data), "
            f"where the model gives no class ({pairs}{more}). Check that the labels belong to these images, or "
            "label pixels where the images have data.")


def _prepare(model, images: list, labels: list, *, label_format: LabelFormat = "index", label_names=None,
             label_colors=None, vector_field: str = "class") -> tuple[Any, list[tuple[list[dict], np.ndarray]], set[str]]:
    """Every check that needs no segmentation: the model's card, per image its label classes and their
    lookup to model ids, and the label classes the model lacks. Raises unless some pixel can be scored."""
    if len(images) != len(labels):
        raise InputError(f"{len(images)} image(s) but {len(labels)} label file(s); pass one label file per image.")
    if not images:
        raise InputError("no images to evaluate on.")
    label_names, label_colors = _names(label_names), _names(label_colors)  # "a,b" is two names, as on the CLI
    _check_label_set(label_format, label_names, label_colors)
    for image, label in zip(images, labels):  # every label before the first image is segmented
        check_label_grid(label, label_format, image)
    card = get_segmenter(resolve_model(model)).card
    label_sets = []  # per image: its label classes and their lookup to model ids
    missing: set[str] = set()
    for label in labels:
        names = label_names or (label_class_names(label) if label_format == "index" else None)
        if label_format == "index" and names is None:
            _refuse_colour_coded(label, card)
        if card.output == "regions":
            label_sets.append(_region_label_set(card, label, names, label_colors, label_sets))
            continue
        label_classes = _label_classes(names, label_colors, card)
        lut, not_in_model = _remap(label_classes, card)
        missing.update(not_in_model)
        label_sets.append((label_classes, lut))
    scorable = False
    for image, label, (label_classes, lut) in zip(images, labels, label_sets):  # usually the first one answers
        info = inspect_raster(image)
        for _, truth in _label_strips(label, fmt=label_format, classes=label_classes, image=image,
                                      shape=(info.height, info.width), vector_field=vector_field):
            if (lut[truth] != IGNORE).any():
                scorable = True
                break
        if scorable:
            break
    if not scorable:
        named = {c["name"] for label_classes, _ in label_sets for c in label_classes if c["name"] is not None}
        if card.output != "regions" and named and named <= missing:  # said "are the label values class ids?"
            model_names = [c.name for c in card.classes]
            raise InputError(
                f"none of the label names ({', '.join(sorted(named))}) is a class of model {card.name} "
                f"({', '.join(model_names)}), so there is nothing to score. Names match whole, case aside: "
                "pass --label-names (label_names=) with the model's names.")
        raise InputError(_nothing_scored(labels, label_format, label_colors or [c.in_labels for c in card.classes]))
    return card, label_sets, missing


def _refuse_colour_coded(label, card) -> None:
    """Refuse an index label that is a paletted image with no class names (the Dubai masks): read by the default
    --label-format index, its colour-table positions were scored as class ids, mean IoU 0.055 against 0.350 read
    by colour, with only a note that values were read as ids (h130). Its reader says which it is. One whose every
    value's colour is the model's colour of that id (a geoseg mask that lost its tags, a QGIS export) is ids."""
    from rasterio.enums import Resampling

    from geoseg.models.card import hex_rgb
    from geoseg.models.labels import _palette
    from geoseg.raster import open_quietly

    if not os.path.isfile(str(label)) or card.output == "regions":
        return
    try:
        with open_quietly(label) as ds:
            palette = _palette(ds) if ds.count == 1 and "CLASS_NAMES" not in ds.tags() else None
            values = None if palette is None else np.unique(ds.read(
                1, out_shape=(min(ds.height, 512), min(ds.width, 512)), resampling=Resampling.nearest))
    except Exception:  # noqa: BLE001 - not a raster: read_labels says so
        return
    if palette is None:
        return
    ids = [int(v) for v in values if v != IGNORE]
    colours = [{hex_rgb(c.in_labels), c.rgb} for c in card.classes]
    if ids and all(v < len(colours) and tuple(palette[v]) in colours[v] for v in ids):
        return  # its colours are the model's at those ids: ids, as the colours say too
    raise InputError(f"{label}: a paletted image (a colour table) without class names, whose colours are not the "
                     "model's at those ids, so it is either a colour-coded mask or class ids of other colours. Pass "
                     "--label-format color (label_format='color') if its colours are the classes, or --label-names "
                     "(label_names=) with the classes in id order if its values are class ids.")


def _reference(model) -> str:
    """A model as the user named it, without the precision and test-time augmentation the CLI adds."""
    return str(model).partition("?")[0]


def _check_model_bands(model, images: list, bands, *, fix: str, own: bool = False) -> None:
    """Refuse an image that lacks bands the model reads before any image is segmented: the third image's
    BandError came after two segmentations, did not name the model, and suggested --bands, which evaluate
    and compare lack; `fix` says what to do instead. `own`: the bands are the model's own, from compare's
    --model-bands, whose error told the user to pass --bands, which would not change them (h138)."""
    card = get_segmenter(resolve_model(model)).card
    wanted = card.bands if bands is None else bands
    for image in images:
        info = inspect_raster(image)
        try:
            check_bands(info, wanted, needed=card.n_bands)
        except BandError as exc:
            if own:
                said = str(exc).replace("Pass --bands (bands= in Python)", f"Give {_reference(model)} in "
                                        "--model-bands (model_bands= in Python)")
                raise BandError(f"model {_reference(model)}: {said}") from None
            if bands is not None or info.paletted:  # bands= of the Python API, or colour-table indexes
                raise BandError(f"model {_reference(model)}: {exc}") from None
            raise BandError(f"model {_reference(model)} reads band(s) {list(wanted)}, but {image} has "
                            f"{info.count} band(s): {fix}.") from None


def _region_label_set(card, label, names, label_colors, earlier: list) -> tuple[list[dict], np.ndarray]:
    """A region model's label set: the labels' own classes, scored as they are (the regions have none)."""
    if names is None:
        raise InputError(f"{card.name} draws unlabeled regions and has no classes of its own, so the labels must "
                         f"name theirs: pass --label-names (label_names=), and --label-colors for colour masks; "
                         f"{label} names none.")
    label_classes = [{"name": n, "color": c} for n, c in zip(names, label_colors or [None] * len(names))]
    twice = sorted({n for n in names if n is not None and list(names).count(n) > 1})
    if twice:  # would be two scored classes of one name
        raise InputError(f"{card.name} is scored on the labels' classes, so each needs a name of its own; {label} "
                         f"names several ids {', '.join(twice)}. Pass --label-names with a name per id.")
    if earlier and [c["name"] for c in earlier[0][0]] != list(names):
        raise InputError(f"{card.name} is scored on the labels' classes, so every label file must have the same "
                         f"ones; {label} has {_listed(names)}, the first has "
                         f"{_listed(c['name'] for c in earlier[0][0])}. Pass --label-names to set them.")
    lut = np.full(256, IGNORE, np.uint8)  # label ids to scored classes: the named ones, in id order
    named = [i for i, n in enumerate(names) if n is not None]
    lut[named] = np.arange(len(named))
    return label_classes, lut


def _listed(names) -> str:
    """Label names for a message; an id without a name (a gap in CLASS_NAMES) shows as ``-``."""
    return ", ".join("-" if n is None else n for n in names)


def majority_classes(regions: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Give each connected region of `regions` its majority class in `truth` (255 = unlabelled, not counted).

    `regions` is a (rows, cols) uint8 mask of region colours in which neighbouring regions
    differ (255 = nodata); returns (rows, cols) uint8 classes, 255 where a region holds no
    labelled pixel or is nodata.

    >>> regions = np.array([[0, 0, 1], [0, 0, 1]], np.uint8)
    >>> majority_classes(regions, np.array([[2, 2, 0], [2, 1, 255]], np.uint8), 3).tolist()
    [[2, 2, 0], [2, 2, 0]]
    """
    from skimage.measure import label

    ids = label(regions.astype(np.int32) + 1, background=IGNORE + 1, connectivity=1)
    valid = (truth != IGNORE) & (ids > 0)
    counts = np.bincount(ids[valid].astype(np.int64) * n_classes + truth[valid],
                         minlength=(ids.max() + 1) * n_classes).reshape(-1, n_classes)
    lookup = np.where(counts.any(axis=1), counts.argmax(axis=1), IGNORE).astype(np.uint8)
    lookup[0] = IGNORE
    return lookup[ids]


def _unnamed_pixels(label, label_classes: list[dict], said: list[str] | None = None) -> dict[int, int]:
    """Pixels per value of an index label that no label class names (past the names, or a gap in them), not
    counting 255 (unlabelled) and the label's nodata (its nodata value, internal mask or alpha).

    Appends to `said` what a user should know of the pixels that are not scored for being unlabelled: a 0/255
    mask, whose 255 class, and a label whose nodata value is a class id, whose class was left out unseen (a
    SpaceNet road mask scored mean IoU 1.000 on its background alone)."""
    named = np.zeros(len(label_classes), bool)
    named[[i for i, c in enumerate(label_classes) if c["name"] is not None]] = True
    found: set = set()
    counts: dict = {}
    total = ignored = nodata_px = 0
    masked = None
    with catch_warnings():
        warnings.simplefilter("ignore")  # a plain PNG is not georeferenced
        with rasterio.open(label) as ds:
            nodata = ds.nodata
            for window in _strips(ds.height, ds.width):  # strip by strip, as `_evaluate` scores
                values = ds.read(1, window=window)
                masked = label_nodata(ds, window=window)
                total += values.size
                if said is not None:
                    found.update(np.unique(values).tolist())
                    ignored += int((values == IGNORE).sum())
                    nodata_px += 0 if masked is None else int(masked.sum())
                in_range = (values >= 0) & (values < len(label_classes))
                unnamed = ~in_range & (values != IGNORE) & np.isfinite(values)  # NaN is no value, as read_labels
                unnamed[in_range] = ~named[values[in_range].astype(np.int64)]  # reads it
                if masked is not None:
                    unnamed &= ~masked
                for v, k in zip(*np.unique(values[unnamed], return_counts=True)):
                    key = int(v) if float(v).is_integer() else float(v)
                    counts[key] = counts.get(key, 0) + int(k)
    if said is not None:
        if found == {0, IGNORE}:
            share = 100 * ignored / total
            said.append(f"{label} holds only 0 and 255, and 255 is unlabelled, so its pixels of 255 ({share:.1f}%) "
                        "were not scored. If 255 marks a class (a 0/255 mask), make it id 1 first: gdal_calc.py -A "
                        f"{Path(label).name} --outfile ids.tif --calc=\"A/255\" --type=Byte --NoDataValue=none")
        elif (masked is not None and nodata is not None and float(nodata).is_integer()
              and 0 <= nodata < len(label_classes) and label_classes[int(nodata)]["name"] is not None
              and nodata_px):  # an id no name stands for (CLASS_NAMES of 1 and 2, nodata 0) is no class
            name = label_classes[int(nodata)]["name"]
            said.append(f"{label}: its nodata value {nodata:g} is also label id {nodata:g} ({name}), so its pixels of "
                        f"{nodata:g} ({100 * nodata_px / total:.1f}%) were not scored. If {nodata:g} is a class, "
                        f"unset the nodata value: {gdal_edit(label, '-unsetnodata', Path(label).name)}")
    return dict(sorted(counts.items()))


def _nothing_scored(labels, label_format: str, colors: Sequence[str]) -> str:
    """Why no pixel was scored, with the colours the first mask does hold when it is colour-coded."""
    hint = {"index": "check that the label values are class ids (0, 1, ...) of the label names, 255 for unlabelled",
            "vector": "check that the polygons cover the images (in the layer's CRS; a layer without one is taken "
                      "to be in the image's), that their class field holds label names or ids, and that they are "
                      "not smaller than a pixel (polygons label the pixels whose centres they cover: buffered "
                      "points or lines narrower than 3/4 of a pixel may cover none)",
            "color": f"the label colours are {', '.join(colors)}"}[label_format]
    if label_format == "color":
        found = _common_colors(labels[0])
        if found:
            hint += f"; the most common colours in {labels[0]} are {', '.join(found)}: pass --label-names and " \
                    "--label-colors"
        else:  # one band without a colour table: it listed the model's colours alone (h109)
            hint += f"; {labels[0]} has one band and no colour table, so it holds class ids: pass --label-format index"
    where = f"{labels[0]}{' and the others' if len(labels) > 1 else ''}: "  # the message named no file
    return f"{where}no labelled pixel matched a class the model scores, so there is nothing to score: {hint}."


def _common_colors(path, n: int = 6) -> list[str]:
    from rasterio.enums import Resampling

    from geoseg.models.labels import _palette
    from geoseg.raster import open_quietly

    with open_quietly(path) as ds:  # a plain PNG is not georeferenced
        data = ds.read(out_shape=(ds.count, min(ds.height, 512), min(ds.width, 512)), resampling=Resampling.nearest)
        palette = _palette(ds) if ds.count == 1 else None
    if palette is not None:  # a palette PNG: its indexes stand for the colours of its table
        data = np.moveaxis(palette[data[0]], -1, 0)
    if data.shape[0] < 3:
        return []
    code = (data[0].astype(np.int64) << 16) | (data[1].astype(np.int64) << 8) | data[2]
    values, counts = np.unique(code, return_counts=True)
    return [f"#{v:06X}" for v in values[np.argsort(-counts)][:n]]


LABEL_OPTIONS = ("label_format", "label_names", "label_colors", "vector_field", "ignore_colors")  # compare's, not segment's


def _options_for(model, options: dict[str, Any]) -> dict[str, Any]:
    """`options` for `model`'s run: a normalisation is the Keras models'. The pipeline drops it for a baseline
    with a warning (`segment`); a comparison of a U-Net and baselines passes it on purpose, so it is dropped here
    first, without a warning per baseline and image."""
    if "normalization" in options and resolve_model(model).startswith(BUILTIN):
        return {k: v for k, v in options.items() if k != "normalization"}
    return options


def _checked_ignore_colors(label_format, ignore_colors) -> list[str]:
    """`ignore_colors` as upper-case #RRGGBB; only colour labels have colours to ignore."""
    if ignore_colors is None:
        return []
    colours = _names(ignore_colors)  # "#9B9B9B,#000000" is two, as on the command line
    if label_format != "color":
        raise InputError(f"ignore_colors (--ignore-colors) marks unlabelled pixels of colour-coded labels; these are "
                         f"{label_format!r}. Pass label_format='color' (--label-format color), or leave it out.")
    bad = [c for c in colours if not (isinstance(c, str) and re.fullmatch(r"#[0-9A-Fa-f]{6}", c))]
    if bad or not colours:
        raise InputError(f"ignore_colors (--ignore-colors) must be colours like '#9B9B9B'. Received: {ignore_colors!r}")
    return [c.upper() for c in colours]


def _check_label_format(label_format, vector_field: str = "class") -> None:
    if label_format not in ("index", "color", "vector"):
        raise InputError(f"label_format must be 'index', 'color' or 'vector' (--label-format). Received: "
                         f"{label_format!r}")
    if vector_field != "class" and label_format != "vector":  # it was ignored without a word
        raise InputError(f"vector_field (--vector-field) names the class field of vector labels; these are "
                         f"{label_format!r}. Pass label_format='vector' (--label-format vector), or leave it out.")


def compare(
    models: Sequence[str | os.PathLike],
    images: Sequence[str | os.PathLike],
    labels: Sequence[str | os.PathLike] | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    model_bands: dict[str, Sequence[int]] | None = None,
    **options: Any,
) -> Comparison:
    """Run several models on the same rasters: scores side by side (with labels) and disagreement rasters.

    `model_bands` gives a model its own bands (``{"threshold-nir": [3, 2, 1, 4]}``, by the reference in
    `models` or the card's name, which names every variant of that model), where ``bands=`` gives every other
    model theirs: a 6-band model and a NIR baseline read the same stack in different orders.

    With `output_dir`, each model's masks go to ``output_dir/MODEL/`` and each image
    gets ``STEM_disagreement.tif``: the number of different classes the models
    predicted at each pixel minus one (0 = all agree; 255 = nodata in any mask), classes
    told apart by name, not id, and a model's ``other`` agreeing with any class it lacks
    (`_Disagreement`). Images that
    share a stem (``Tile 2/images/part_1.jpg``, ``Tile 3/images/part_1.jpg``) are
    told apart by a short hash of their path: ``STEM-HASH_disagreement.tif``, with
    their masks in ``MODEL/STEM-HASH/``. It needs `labels`, `output_dir` or both; every
    model's bands are checked in every image before any model runs. Masks and disagreement rasters of an
    earlier run in `output_dir` are refused before anything runs, unless `overwrite`. ``progress=`` takes a
    callback of the fraction of the whole comparison done, each model's runs an equal part, and scoring every model
    again on the pixels all of them give a class and writing the disagreement rasters 5% of it each.

    Returns a `Comparison`, a dict of ``models``, ``evaluations`` (each model's `Evaluation` as a dict, with its
    ``column`` in the table, ``reference`` and ``bands``), ``disagreement`` (the rasters' paths) and
    ``agreement_pct`` (per raster, the share of valid pixels where every model agrees), as ``--json`` writes it;
    ``print()`` gives the score table and the rasters.
    """
    if not isinstance(overwrite, (bool, np.bool_)):  # overwrite=1 passed, where segment and evaluate refuse it
        raise InputError(f"`overwrite` must be True or False. Received: overwrite={overwrite!r}")
    models = _paths(models)
    progress = _progress_of(options)  # of the whole comparison: each model's runs a part of it
    _check_label_format(options.get("label_format", "index"), options.get("vector_field", "class"))
    _checked_ignore_colors(options.get("label_format", "index"), options.get("ignore_colors"))
    check_options({k: v for k, v in options.items() if k not in LABEL_OPTIONS},
                  caller="compare()", taken=("overwrite", "preview", "progress"))
    if len(models) < 2:
        raise InputError(f"compare needs two or more models. Received: {list(models)}")
    if output_dir is not None:  # before any model is loaded or label read: "cmp \n" made a folder of that name
        check_output_path(output_dir)
    if labels is None and output_dir is None:  # ran every model, then had nothing to show
        raise InputError("compare needs labels to score the models (--labels, labels=) or an output folder for "
                         "their masks and disagreement rasters (-o, output_dir=), or both.")
    folders = _folders(models)  # each model's masks go to a folder of its own
    regions = [str(m) for m in models if get_segmenter(resolve_model(m)).card.output == "regions"]
    if regions:
        raise InputError(f"{', '.join(regions)} draw(s) unlabeled regions, whose colours mean nothing next to "
                         "another model's classes; score it on its own with geoseg evaluate, which gives each "
                         "region its majority label class.")
    images = _paths(images)
    labels = None if labels is None else _paths(labels)
    out = Path(output_dir) if output_dir else None
    own = _model_bands(models, model_bands)
    for m in models:  # every model's bands in every image before the first model segments anything
        _check_model_bands(m, images, own.get(str(m), options.get("bands")), fix=f"leave {_reference(m)} out of "
                           "the comparison (--models), or compare on images that have those bands", own=str(m) in own)
    evaluations = []
    if labels is not None:
        shared = _shared_label_set(models, labels, options)
        ids_of = shared.pop("_ids_of", None)  # unnamed index labels or vector ids: the first model's class ids
        label_note = shared.pop("_label_note", None)  # colour labels: colours read by another registered card
        options = {**options, **shared}
        label_options = {k: options[k] for k in ("label_format", "label_names", "label_colors", "vector_field")
                         if k in options}
        first = get_segmenter(resolve_model(models[0])).card.name
        for i, m in enumerate(models):  # every model's label checks before the first one segments anything
            try:
                _prepare(m, images, labels, **label_options)
            except InputError as exc:  # "nothing to score", whose cause is the first model's classes
                by_first = i > 0 and "label_names" in shared and shared["label_names"] == [
                    c.name for c in get_segmenter(resolve_model(models[0])).card.classes]
                if not by_first:
                    raise
                raise InputError(f"{exc} The labels' values were read as class ids of {first}, the first model of "
                                 f"the comparison, so that every model reads them alike, and {_reference(m)} scores "
                                 "them by those names: put the model whose ids they are first (--models), or pass "
                                 "--label-names (label_names=) in id order.") from None
    existed = out is not None and out.exists()
    if out is not None:  # a file there was "OUT/MODEL: cannot create the output folder (Not a directory)"
        prepare_output_dir(out, lambda d: {}, overwrite=True)
    # Ctrl-C or a failure midway left this run's masks, which the same command then refused as "an earlier
    # comparison's": files and folders it made go again (those it replaced, with --overwrite, stay)
    with _made_removed_on_error(out, existed), _compare_lock(out):
        if out is not None and not overwrite:  # with the lock: two identical runs at once both passed this
            _refuse_earlier_outputs(out, folders, images)
        # the bar's shares: segmenting (with labels, the first scoring pass) takes most of it; scoring again on
        # the common pixels and writing the disagreement rasters each read every model's masks, and were silent
        # after the bar's 100% (5.4 s and 5.0 s for 4 models on a 4000² image)
        after = (RESCORE_SHARE if labels is not None else 0.0) + (WRITE_SHARE if out is not None else 0.0)
        first = 1.0 - after if labels is not None else 0.0
        if labels is not None:
            evaluations = _scored_alike(models, folders, images, labels, out, options, own, ids_of,
                                        _part(progress, 0.0, first),
                                        _part(progress, first, RESCORE_SHARE))
            if label_note:
                for e in evaluations:
                    e.notes.insert(0, label_note)
        disagreement = _disagreement(models, folders, images, out, options, scored=labels is not None,
                                     progress=_part(progress, first + (RESCORE_SHARE if labels is not None else 0),
                                                    1.0 - first - (RESCORE_SHARE if labels is not None else 0)),
                                     own=own) if out else []
        if progress is not None:
            progress(1.0)
    names = [e.model for e in evaluations]  # two runs of one name, or one model with and without --tta: the
    rows = [{**e.to_dict(), "column": folder if names.count(e.model) > 1 else e.model, "reference": str(m),
             # which bands each read: --bands, --model-bands or its card's; --json said none (h137)
             "bands": list(own.get(str(m)) or options.get("bands") or get_segmenter(resolve_model(m)).card.bands)}
            for e, m, folder in zip(evaluations, models, folders)]  # table's columns were both "tiny"
    return Comparison(models=list(models), evaluations=rows, disagreement=[path for path, _ in disagreement],
                      agreement_pct=[pct for _, pct in disagreement])


RESCORE_SHARE = 0.05  # of compare's progress: scoring every model again on the pixels all of them give a class
WRITE_SHARE = 0.05  # writing the disagreement rasters (and, without labels, what segmenting leaves of the bar)


def _scored_alike(models, folders, images, labels, out, options, own, ids_of, progress,
                  rescored=None) -> list[Evaluation]:
    """Each model's evaluation, all on the pixels where every model gives a class: a model that reads a band of
    nodata where the others' bands hold data has no class there, and each model had been scored on its own
    pixels, which only its notes showed (h132). Where the masks' nodata differ, each model's masks are scored
    again (not segmented again), leaving out the pixels any other model gives no class."""
    with tempfile.TemporaryDirectory(prefix="geoseg-compare-") as tmp:
        base = out if out is not None else Path(tmp)
        evaluations, said = [], []
        extra = {"_ids_of": ids_of} if ids_of else {}
        for k, (m, folder) in enumerate(zip(models, folders)):
            said.append({})
            evaluations.append(evaluate(m, images, labels, keep_masks=base / folder, _said=said[-1],
                                        progress=_part(progress, k / len(models), 1 / len(models)),
                                        **_with_bands(m, options, own), **extra))
        if not _nodata_differs([base / f for f in folders], images):
            return evaluations
        return [evaluate(m, images, labels, keep_masks=base / folder, _said=heard, _masks_from=base / folder,
                         _common_with=[base / f for f in folders if f != folder], **_with_bands(m, options, own),
                         progress=_part(rescored, k / len(models), 1 / len(models)), **extra)
                for k, (m, folder, heard) in enumerate(zip(models, folders, said))]


COMPARE_LOCK = ".geoseg-compare.lock"


@contextmanager
def _compare_lock(out: Path | None) -> Iterator[None]:
    """Hold ``out/.geoseg-compare.lock`` while a comparison writes there: two identical `compare` runs at once
    both found no earlier masks, segmented into the same files (with overwrite inside) and both exited 0 (h118)."""
    if out is None:
        yield
        return
    from geoseg.files import folder_lock

    with folder_lock(out / COMPARE_LOCK, lambda where, lock: (
            f"{out}: another comparison ({where}) is writing into this folder, and the two would overwrite each "
            f"other's masks. Wait for it to end, or pick another output folder (if none runs there, delete {lock}).")):
        yield


@contextmanager
def _made_removed_on_error(out: Path | None, existed: bool = True) -> Iterator[None]:
    """Remove the files and folders under `out` that the block made, if it fails or is interrupted; `out` too
    where it had not `existed` before the run, and is empty."""
    if out is None:
        yield
        return
    before = set(out.rglob("*"))
    try:
        yield
    except BaseException:
        # not the staging folders and temporary files of runs (this one's are removed by their owners as they
        # unwind): a failed comparison removed those of another one writing into the folder, which then died in a
        # FileNotFoundError traceback (h118)
        made = sorted((p for p in out.rglob("*") if p not in before
                       and not any(".geoseg-" in part for part in p.relative_to(out).parts)),
                      key=lambda p: len(p.parts), reverse=True)
        for path in made:  # the innermost first: a folder once its files are gone
            try:
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
            except OSError:  # not empty (another's files), or gone already
                pass
        if not existed:
            try:
                out.rmdir()
            except OSError:
                pass
        raise


def _refuse_earlier_outputs(out: Path, folders: list[str], images: list) -> None:
    """An earlier comparison's masks or disagreement rasters in `out`, which this one would replace: an
    OutputError naming them, raised before any model runs (as `geoseg segment` refuses its outputs)."""
    names = unique_stems(images)
    found = [path for image in images for path in
             [out / f"{names[os.fspath(image)]}_disagreement.tif"]
             + [_mask_path(out / folder, image, names) for folder in folders]
             if path.exists()]
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise OutputError(f"{', '.join(str(p) for p in found[:3])}{more} already exist(s) from an earlier "
                          "comparison. Pass --overwrite (overwrite=True) to replace them, or pick another output "
                          "folder.")


def _shared_label_set(models: list, labels: list, options: dict) -> dict:
    """Label names (and colours) that make every model of a comparison read the labels alike.

    Unnamed index labels and colour labels are read by the evaluated model's own classes. In a
    comparison each model would then read them differently (a baseline's palette matches few of a
    land-cover mask's colours, and scored 5% of the pixels the U-Net scored): the first model's
    classes name them for all, and each other model scores them by name. Colour labels are read by the
    model in whose label colours most of their pixels are, the first such model on a tie, as the web page reads
    them: by a baseline listed first, a Dubai mask's building, land and road were all unlabelled, and the U-Net
    scored 0.24 mean IoU where it scored 0.55 listed first (h109).
    """
    fmt = options.get("label_format", "index")
    if options.get("label_names") is not None or options.get("label_colors") is not None:
        return {}  # colours without names are refused by the label checks, as evaluate refuses them
    if fmt == "color":  # by the model in whose colours most pixels are, and colours it lacks by another card's
        names, colors, note = _colour_label_set(models, labels, _checked_ignore_colors(fmt, options.get("ignore_colors")))
        return {"label_names": names, "label_colors": colors, **({"_label_note": note} if note else {})}
    model = models[0]
    if fmt == "vector":  # ids were read by each model's own classes, and names refused by a model without them
        names = _vector_names(labels, options.get("vector_field", "class"))
        if names is None:
            return {}
        if names:  # the files' own names, for every model to match by name
            return {"label_names": names}
    if fmt == "index":
        try:
            named = [bool(label_class_names(label)) for label in labels]
        except InputError:  # an unreadable label: the label checks say which, and why
            return {}
        if all(named):
            return {}
        if any(named):
            raise InputError(f"{sum(named)} of the {len(labels)} label files name their classes (CLASS_NAMES) and "
                             "the others do not, so the models would read them differently; pass --label-names "
                             "(label_names=) for all of them.")
    card = get_segmenter(resolve_model(model)).card
    return {"label_names": [c.name for c in card.classes], "_ids_of": card.name}


def _label_colours(labels: list) -> list[np.ndarray]:
    """Each readable colour label's pixels as 0xRRGGBB ints, from a decimated read (at most 512 px a side); files
    that cannot be read, or hold fewer than three bands and no colour table, are left out (the label checks say
    why)."""
    from geoseg.raster import _read_decimated

    colours = []
    for label in labels:
        try:
            with open_quietly(label) as ds:
                palette = ds.count == 1 and ds.colorinterp[0] == rasterio.enums.ColorInterp.palette
                table = ds.colormap(1) if palette else None
            if not palette and ds.count < 3:
                continue
            data = _read_decimated(str(label), [1] if palette else [1, 2, 3], 512, 1, "nearest", False)
        except (OSError, ValueError, rasterio.errors.RasterioError):
            continue
        if palette:  # the colour of each index (a UInt16 table holds more than 256: an IndexError, h119)
            index = data[..., 0].astype(np.int64)
            lookup = np.zeros((max(256, int(index.max(initial=0)) + 1, max(table, default=0) + 1), 3), np.int64)
            for i, rgba in table.items():
                lookup[i] = rgba[:3]
            data = lookup[index]
        rgb = data[..., :3].astype(np.int64)
        colours.append((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    return colours


def _colour_reference(models: list, labels: list, colours: list[np.ndarray] | None = None):
    """Of `models`, the one in whose label colours most pixels of the colour `labels` are (a decimated read of each
    file); the first such on a tie, or where no file can be read (the label checks then say why)."""
    cards = [get_segmenter(resolve_model(m)).card for m in models]
    colours = _label_colours(labels) if colours is None else colours
    counts = []
    for card in cards:
        known = np.array([int(c.in_labels[1:], 16) for c in card.classes if c.in_labels], np.int64)
        counts.append(sum(int(np.isin(c, known).sum()) for c in colours))
    best = counts.index(max(counts)) if counts else 0
    if best:
        log.info("the colour labels are read by %s's classes, in whose colours most of their pixels are, for every "
                 "model of the comparison", _reference(models[best]))
    return models[best]


def _colour_label_set(models: list, labels: list, ignore_colors: Sequence[str] | None = None
                      ) -> tuple[list[str], list[str], str | None]:
    """The names and colours to read colour `labels` by, for `models` (one for evaluate, all of a comparison),
    and a note where some of them come from another card.

    The labels are read by the model in whose label colours most of their pixels are (`_colour_reference`).
    Colours that model's card does not name, but another registered model's card does, are read as that card's
    classes (the card naming most of those pixels; the first in `geoseg models`' order on a tie), so that a
    baseline scores them as its `other`: read by the threshold card's water and vegetation alone, a Dubai mask's
    land, building and road (73% of a 2000 x 1400 crop of Tile 8) were left unlabelled, and the baseline scored
    0.284 mean IoU where the same labels in compare beside the U-Net, or as polygons, gave 0.091 (h168). Colours listed in
    `ignore_colors` stay unlabelled; a name the model's card already gives another colour is not taken.
    """
    colours = _label_colours(labels)
    model = _colour_reference(models, labels, colours) if len(models) > 1 else models[0]
    return with_registered_colours(get_segmenter(resolve_model(model)).card, colours, ignore_colors)


def with_registered_colours(card, colours: list[np.ndarray], ignore_colors: Sequence[str] | None = None
                            ) -> tuple[list[str], list[str], str | None]:
    """`card`'s label names and colours, and the colours of `colours` (0xRRGGBB pixels of colour labels) that it
    does not name but another registered model's card does (the one naming most such pixels),
    with that card's names, and a note saying so (None where none is taken): see `_colour_label_set`."""
    from geoseg.models.registry import list_models

    regions = card.output == "regions"  # no classes of its own: read by the card that names most pixels
    names = [] if regions else [c.name for c in card.classes]
    colors = [] if regions else [c.in_labels for c in card.classes]
    if not regions and "other" not in names:  # a model without 'other' (the U-Net, a brought bundle) scores a label
        # class it lacks as known negatives: a colour some other bundle on GEOSEG_MODEL_PATH happens to name (#000000
        # 'background', a black no-data collar) counted the model's every class there as a false positive, and halved
        # landcover-unet's mean IoU, where those pixels were left unlabelled and said so
        return names, colors, None
    known = {int(c[1:], 16) for c in colors if c} | {int(c[1:], 16) for c in ignore_colors or []}
    values, counts = (np.unique(np.concatenate([c.ravel() for c in colours]), return_counts=True) if colours
                      else (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    stray = {int(v): int(n) for v, n in zip(values, counts) if int(v) not in known}
    if not stray:
        return names, colors, None
    best, best_count = None, 0
    for entry in list_models():
        if entry.name == card.name or entry.card.output != "classes":
            continue
        extra = {}
        for c in entry.card.classes:
            value = int(c.in_labels[1:], 16) if c.in_labels else None
            if value in stray and c.name not in names and c.name not in extra.values() \
                    and not unknown_class(c.name):
                extra[value] = c.name
        count = sum(stray[v] for v in extra)
        if count > best_count:
            best, best_count = (entry.card, extra), count
    if best is None:
        return names, colors, None
    other, extra = best
    names += list(extra.values())
    colors += [f"#{v:06X}" for v in extra]
    share = f"{100 * best_count / max(int(counts.sum()), 1):.1f}% of the labels' pixels"
    note = (f"the label colours {', '.join(f'#{v:06X}' for v in extra)} ({share})"
            + ("" if regions else f", which {card.name}'s card does not name,") +
            f" were read as {other.name}'s classes {', '.join(extra.values())}; pass --label-names and "
            "--label-colors (label_names=, label_colors=) to read them otherwise, or --ignore-colors (ignore_colors=) "
            "to leave them unlabelled")
    return names, colors, note


def _vector_names(labels: list, field: str) -> list[str] | None:
    """The class names that vector label files hold in `field`, sorted; [] where they hold class ids (also
    written as text, '1'), None where a file or its field cannot be read or the names are too many (the label
    checks then say which file, and why). A file without a value (no polygon, NULLs, blanks: a tile without
    buildings) takes no side."""
    fields = _vector_fields(labels, field)
    if fields is None:
        return None
    kinds, names = [], set()
    for label, values in zip(labels, fields):
        values = values.dropna()
        if values.dtype.kind == "b" or (len(values) and all(isinstance(v, (bool, np.bool_)) for v in values)):
            raise InputError(f"{label}: its {field!r} field holds True and False, which name no class. Pick a field "
                             "of class names or ids (--vector-field), or write one.")
        if values.dtype.kind in "iuf":
            kinds.append("ids" if len(values) else None)
            continue
        values = values.astype(str).str.strip()  # 'building ' is building, as training reads it
        values = values[values != ""]  # blanks are unlabelled, as NULLs are
        ids = values.str.fullmatch(TEXT_ID.pattern)
        if ids.any() and not ids.all():  # '1' beside 'vegetation': was an id before, a name of no class now
            raise InputError(f"{label}: its {field!r} field holds both class ids ({values[ids].iloc[0]!r}) and class "
                             f"names ({values[~ids].iloc[0]!r}), which cannot be read alike; write one or the other "
                             "throughout, or pass --label-names (label_names=) with the names in id order.")
        kinds.append(None if not len(values) else "ids" if ids.all() else "names")
        if kinds[-1] == "names":
            names.update(values)
    if "ids" in kinds and "names" in kinds:
        raise InputError(f"{kinds.count('ids')} of the {len(labels)} label files hold class ids in their field and "
                         f"{kinds.count('names')} class names, so they would be read differently; pass --label-names "
                         "(label_names=) for all of them.")
    if "ids" in kinds:
        return []
    # one class per name up to case and Unicode form ('Water' beside 'water'), as polygons are read: a model of
    # regions was scored on both as two classes, confused with each other (h96)
    alike: dict[str, str] = {}
    for name in sorted(names):
        alike.setdefault(class_key(name), name)
    names = set(alike.values())
    return sorted(names) if 0 < len(names) < IGNORE else None


def _vector_fields(labels: list, field: str) -> list | None:
    """Each vector label file's class field (a pandas Series); None where a file or its field cannot be
    read (the label checks then say which, and why)."""
    import pyogrio

    from geoseg.models.labels import vector_source

    found = []
    for label in labels:
        try:
            file, layer = vector_source(label)
            if layer is None and len(pyogrio.list_layers(file)) > 1:  # the label checks ask for one, not pyogrio
                return None
            frame = pyogrio.read_dataframe(file, layer=layer, columns=[field], read_geometry=False)
        except Exception:  # noqa: BLE001 - any reading error is reported by the label checks, with the file
            return None
        if field not in frame.columns:
            return None
        found.append(frame[field])
    return found


def _model_bands(models, model_bands) -> dict[str, list[int]]:
    """`model_bands` keyed by each model's reference as given in `models`. A key that is a card's name gives its
    bands to every model of that name (``threshold-nir`` and ``threshold-nir?water=0.1&vegetation=0.2``: the second
    read the card's bands 1, 2, 3, 4 without a word), and a model's own reference as a key overrides it."""
    if not model_bands:
        return {}
    if not isinstance(model_bands, dict):
        raise InputError(f"model_bands (--model-bands) gives models their bands, as {{'threshold-nir': [3, 2, 1, 4]}}. "
                         f"Received: {model_bands!r}")
    refs = [str(m) for m in models]
    names = {str(m): get_segmenter(resolve_model(m)).card.name for m in models}
    unknown = [name for name in model_bands if str(name) not in refs and str(name) not in names.values()]
    if unknown:
        raise InputError(f"model_bands (--model-bands) names {', '.join(map(repr, unknown))}, which is no model of "
                         f"the comparison ({', '.join(str(m) for m in models)}).")
    for name, bands in model_bands.items():  # "3,2,1,4" was read as the list of its characters, 4 a TypeError
        if (isinstance(bands, (str, bytes)) or not isinstance(bands, (Sequence, np.ndarray)) or not len(bands)
                or not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in bands)):
            raise InputError(f"model_bands (--model-bands) gives {str(name)!r} {bands!r}; give it a list of band "
                             "indexes, as {'threshold-nir': [3, 2, 1, 4]}.")
    given = {str(name): [int(b) for b in bands] for name, bands in model_bands.items()}
    return {r: given[r] if r in given else given[names[r]] for r in refs if r in given or names[r] in given}


def _with_bands(model, options: dict[str, Any], own: dict[str, list[int]]) -> dict[str, Any]:
    """`options` with `model`'s own bands, where `own` (`_model_bands`) gives it some."""
    return {**options, "bands": own[str(model)]} if str(model) in own else options


def _disagreement(models, folders, images, out: Path, options: dict, *, scored: bool,
                  progress=None, own: dict[str, list[int]] | None = None) -> list[tuple[str, float | None]]:
    """Each image's disagreement raster and the share of its valid pixels (%) on which all models agree (None
    where none is valid); `scored`: this run's evaluations already left every mask in `out`."""
    from geoseg.raster import write_class_mask

    seg_options = {k: v for k, v in options.items() if k not in LABEL_OPTIONS}
    cards = [get_segmenter(resolve_model(m)).card for m in models]
    count = _Disagreement(cards)
    classes = disagreement_classes(len(models))
    paths = []
    names = unique_stems(images)
    # each image's part: its models' runs (without labels; scored, they ran before), then its raster's writing
    segmenting = 0.0 if scored else 1.0 - WRITE_SHARE
    per_image = 1.0 / len(images)
    for i, image in enumerate(images):
        masks = []
        for j, (m, name) in enumerate(zip(models, folders)):
            folder = _mask_dir(out / name, image, names)
            mask = _mask_path(out / name, image, names)
            if not scored:  # masks from an earlier run may be of other images or settings
                segment(image, folder, model=m, preview=False, overwrite=True,
                        progress=_part(progress, (i + segmenting * j / len(models)) * per_image,
                                       segmenting * per_image / len(models)),
                        **_options_for(m, _with_bands(m, seg_options, own or {})))
            masks.append(mask)
        info = inspect_raster(masks[0])
        handles = [open_quietly(p) for p in masks]  # a JPEG's masks: no georeferencing, and no warning of it
        try:
            target = out / f"{names[os.fspath(image)]}_disagreement.tif"
            written = _part(progress, (i + segmenting) * per_image, (1.0 - segmenting) * per_image)

            def counted(window, handles=handles, written=written):
                stack = count(np.stack([h.read(1, window=window) for h in handles]))
                if written is not None:  # windows go row by row: done up to this window's end
                    written(((window.row_off * info.width) + (window.col_off + window.width) * window.height)
                            / (info.height * info.width))
                return stack

            write_class_mask(target, info, classes, counted)
            write_qml(target.with_suffix(".qml"), classes, kind="raster")  # as masks
        finally:
            for h in handles:
                h.close()
        counts = class_pixel_counts(target, len(classes)).sum(axis=0).tolist()  # Python ints: np.float64 shares
        paths.append((str(target), round(100 * counts[0] / sum(counts), 2) if sum(counts) else None))
    return paths


def disagreement_classes(n_models: int) -> list:
    """The colour table of a disagreement raster of `n_models` models: a colour and a name for each of its
    values 0 ("all agree") to ``n_models - 1`` (every model predicts another class), white to dark red."""
    from geoseg.models.card import ClassInfo

    ramp = np.array([[0xFF, 0xFF, 0xFF], [0xFD, 0xD4, 0x9E], [0xFC, 0x8D, 0x59], [0xD7, 0x30, 0x1F], [0x7F, 0, 0]])
    n = max(1, min(n_models, IGNORE))
    at = np.linspace(0, len(ramp) - 1, n) if n > len(ramp) else np.arange(n)
    rgb = [np.array([np.interp(t, np.arange(len(ramp)), ramp[:, k]) for k in range(3)]).round().astype(int) for t in at]
    return [ClassInfo(i, f"{i + 1} classes" if i else "all agree", "#{:02X}{:02X}{:02X}".format(*c))
            for i, c in enumerate(rgb)]


class _Disagreement:
    """Counts, per pixel of a (models, rows, cols) stack of masks, the classes the models predict minus one.

    Classes are told apart by name, never by id (threshold's id 1 is another class than landcover-unet's).
    A model's ``other`` stands for every class it lacks, so it agrees with a model that predicts one of
    those (``land`` of landcover-unet against ``other`` of threshold): it is a class of its own only where
    no model predicts a class it lacks. 255 where any model has nodata.
    """

    def __init__(self, cards) -> None:
        table = list(dict.fromkeys(c.name for card in cards for c in card.classes))  # every name, once
        index = {name: i for i, name in enumerate(table)}
        self.luts = []
        for card in cards:
            lut = np.full(256, IGNORE, np.int16)
            lut[[c.id for c in card.classes]] = [index[c.name] for c in card.classes]
            self.luts.append(lut)
        self.size = len(table)
        self.other = index.get("other")
        # per model with an `other`: the shared indexes of the classes it lacks, which its `other` covers
        self.covers = [None if "other" not in {c.name for c in card.classes} else
                       np.array([index[n] not in {index[c.name] for c in card.classes} for n in table] + [False])
                       for card in cards]

    def __call__(self, stack: np.ndarray) -> np.ndarray:
        shared = np.stack([lut[s] for lut, s in zip(self.luts, stack)])  # (models, rows, cols); IGNORE stays
        nodata = (shared == IGNORE).any(axis=0)
        shared[:, nodata] = self.size  # out of the way of every class
        present = np.zeros((self.size + 1,) + shared.shape[1:], bool)
        for s in shared:
            np.put_along_axis(present, s[None], True, axis=0)
        if self.other is not None:  # an `other` that another model's prediction explains is no class of its own
            alone = np.zeros(shared.shape[1:], bool)
            for i, covers in enumerate(self.covers):
                if covers is None:
                    continue
                explained = np.zeros(shared.shape[1:], bool)
                for j, s in enumerate(shared):
                    if j != i:
                        explained |= covers[s]
                alone |= (shared[i] == self.other) & ~explained
            present[self.other] = alone
        distinct = present[: self.size].sum(axis=0)
        out = np.clip(distinct - 1, 0, IGNORE - 1).astype(np.uint8)
        out[nodata] = IGNORE
        return out


def markdown_table(evaluations: Sequence[Evaluation | dict], *, notes: bool = False) -> str:
    """Per-class IoU of one or more evaluations as a Markdown table, models as columns; with `notes`,
    each evaluation's notes below it (classes not scored, majority-assigned regions)."""
    evals = [e.to_dict() if isinstance(e, Evaluation) else e for e in evaluations]
    classes = list(dict.fromkeys(c for e in evals for c in e["per_class"]))
    head = "| class | " + " | ".join(md_cell(e.get("column", e["model"])) for e in evals) + " |"
    lines = [head, "|---|" + "---:|" * len(evals)]
    for c in classes:
        cells = [e["per_class"].get(c, {}).get("iou") for e in evals]
        lines.append(f"| {md_cell(c)} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in cells) + " |")
    lines.append("| **mean IoU** | " + " | ".join("–" if e["mean_iou"] is None else f"**{e['mean_iou']:.3f}**"
                                                 for e in evals) + " |")
    lines.append("| pixel accuracy | " + " | ".join("–" if e["pixel_accuracy"] is None else f"{e['pixel_accuracy']:.3f}"
                                                   for e in evals) + " |")
    remarks = [f"{e.get('column', e['model']) + ': ' if len(evals) > 1 else ''}{n}"
               for e in evals for n in e["notes"]] if notes else []
    return "\n".join(lines + ([""] + [f"- Note: {r}" for r in remarks] if remarks else [])) + "\n"
