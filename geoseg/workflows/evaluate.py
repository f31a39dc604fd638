"""Evaluate and compare models on whole rasters through the real tiled pipeline."""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import rasterio

from geoseg.errors import BandError, InputError
from geoseg.models.labels import (IGNORE, RENAME_LABEL_NAMES, LabelFormat, check_label_grid, label_class_names,
                                  read_labels)
from geoseg.models.metrics import confusion_matrix, scores
from geoseg.models.registry import get_segmenter, resolve_model
from geoseg.pipeline import prepare_output_dir, segment
from geoseg.raster import check_bands, inspect_raster, raster_stem, unique_stems

__all__ = ["Evaluation", "evaluate", "compare", "majority_classes", "markdown_table"]


@dataclass
class Evaluation:
    """Scores of one model over a set of rasters."""

    model: str
    version: str
    classes: list[str]
    per_class: dict[str, dict[str, float | None]]
    mean_iou: float
    pixel_accuracy: float
    confusion_matrix: list[list[int]]
    pixels_scored: int
    not_scored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


def _label_classes(label_names: Sequence[str] | None, label_colors: Sequence[str] | None, card) -> list[dict]:
    if label_names is None:
        return [{"name": c.name, "color": c.color} for c in card.classes]
    colors = list(label_colors or [None] * len(label_names))
    return [{"name": n, "color": colors[i]} for i, n in enumerate(label_names)]


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


def _remap(label_classes: list[dict], card) -> tuple[np.ndarray, list[str]]:
    """Lookup from label ids to model ids by class name.

    Label classes the model lacks are scored as the model's 'other' class when it
    has one (classical baselines), else left out (255).
    """
    model_ids = {c.name: c.id for c in card.classes}
    other = model_ids.get("other", IGNORE)
    lut = np.full(256, IGNORE, np.uint8)
    missing = []
    for i, c in enumerate(label_classes):
        if c["name"] in model_ids:
            lut[i] = model_ids[c["name"]]
        else:
            lut[i] = other
            missing.append(c["name"])
    return lut, missing


def evaluate(
    model: str | os.PathLike | None,
    images: Sequence[str | os.PathLike],
    labels: Sequence[str | os.PathLike],
    *,
    label_format: LabelFormat = "index",
    label_names: Sequence[str] | None = None,
    label_colors: Sequence[str] | None = None,
    vector_field: str = "class",
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
    keep_masks : path, optional
        Folder to keep the predicted masks in (default: a temporary folder).

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
    images, labels = _paths(images), _paths(labels)
    card, label_sets, missing = _prepare(model, images, labels, label_format=label_format, label_names=label_names,
                                         label_colors=label_colors, vector_field=vector_field)
    _check_model_bands(model, images, segment_options.get("bands"), fix="score it on images that have those bands, "
                       "or pick a model of their bands (-m)")
    regions = card.output == "regions"
    class_names = [c["name"] for c in label_sets[0][0]] if regions else [c.name for c in card.classes]
    n = len(class_names)
    matrix = np.zeros((n, n), np.int64)
    names = unique_stems(images)
    unnamed = 0  # index labels: pixels whose value is past the label names, and not 255
    with tempfile.TemporaryDirectory(prefix="geoseg-eval-") as tmp:
        out_dir = Path(keep_masks) if keep_masks else Path(tmp)
        for image, label, (label_classes, lut) in zip(images, labels, label_sets):
            result = segment(image, _mask_dir(out_dir, image, names), model=model, preview=False, overwrite=True,
                             **segment_options)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # a plain JPEG's mask
                with rasterio.open(result.outputs["mask"]) as ds:
                    pred = ds.read(1)
            truth = read_labels(label, fmt=label_format, classes=label_classes, image=image, shape=pred.shape,
                                vector_field=vector_field, rename=RENAME_LABEL_NAMES)
            if label_format == "index":
                unnamed += _unnamed_pixels(label, len(label_classes))
            if regions:  # each region takes its majority label class
                pred = majority_classes(pred, lut[truth], n)
            matrix += confusion_matrix(lut[truth], pred, n)
    s = scores(matrix)
    per_class = {
        name: {k: (None if np.isnan(s[k][i]) else round(float(s[k][i]), 4)) for k in ("iou", "f1", "precision", "recall")}
        for i, name in enumerate(class_names)
    }
    if regions:
        notes = ["each region was given its majority label class: the labels chose the classes, so these scores "
                 "bound what a classifier of these regions could reach; they do not measure a classifier"]
    elif missing and any(c.name == "other" for c in card.classes):
        notes = [f"label classes not in the model, scored as its 'other' class: {', '.join(sorted(missing))}"]
    else:
        notes = [f"label classes not in the model, not scored: {', '.join(sorted(missing))}"] if missing else []
    absent = [name for i, name in enumerate(class_names) if matrix[i].sum() == 0]
    if absent and not regions:
        notes.append(f"model classes absent from the labels (left out of the mean IoU if never predicted): "
                     f"{', '.join(absent)}")
    if unnamed:  # were left out without a word
        notes.append(f"{unnamed} labelled pixels have values past the {len(label_sets[0][0])} label names (ids "
                     f"{len(label_sets[0][0])} and up, not 255) and were not scored: name every value with "
                     "--label-names (label_names=)")
    not_scored = [] if any(c.name == "other" for c in card.classes) else sorted(missing)
    return Evaluation(card.name, card.version, class_names, per_class, round(s["mean_iou"], 4),
                      round(s["pixel_accuracy"], 4), matrix.tolist(), int(matrix.sum()), not_scored, notes)


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
        truth = read_labels(label, fmt=label_format, classes=label_classes, image=image, shape=(info.height, info.width),
                            vector_field=vector_field, rename=RENAME_LABEL_NAMES)
        if (lut[truth] != IGNORE).any():
            scorable = True
            break
    if not scorable:
        named = {c["name"] for label_classes, _ in label_sets for c in label_classes}
        if card.output != "regions" and named and named <= missing:  # said "are the label values class ids?"
            model_names = [c.name for c in card.classes]
            near, sep = sorted(n for n in named if n.lower() in {m.lower() for m in model_names}), ", "
            raise InputError(
                f"none of the label names ({', '.join(sorted(named))}) is a class of model {card.name} "
                f"({', '.join(model_names)}), so there is nothing to score. Names must match exactly"
                f"{f', case included ({sep.join(near)} differ only in case)' if near else ''}: "
                "pass --label-names (label_names=) with the model's names.")
        raise InputError(_nothing_scored(labels, label_format, label_colors or [c.color for c in card.classes]))
    return card, label_sets, missing


def _reference(model) -> str:
    """A model as the user named it, without the precision and test-time augmentation the CLI adds."""
    return str(model).partition("?")[0]


def _check_model_bands(model, images: list, bands, *, fix: str) -> None:
    """Refuse an image that lacks bands the model reads before any image is segmented: the third image's
    BandError came after two segmentations, did not name the model, and suggested --bands, which evaluate
    and compare lack; `fix` says what to do instead."""
    card = get_segmenter(resolve_model(model)).card
    wanted = card.bands if bands is None else bands
    for image in images:
        info = inspect_raster(image)
        try:
            check_bands(info, wanted, needed=card.n_bands)
        except BandError as exc:
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
    if earlier and [c["name"] for c in earlier[0][0]] != list(names):
        raise InputError(f"{card.name} is scored on the labels' classes, so every label file must have the same "
                         f"ones; {label} has {', '.join(names)}, the first has "
                         f"{', '.join(c['name'] for c in earlier[0][0])}. Pass --label-names to set them.")
    lut = np.full(256, IGNORE, np.uint8)
    lut[: len(names)] = np.arange(len(names))
    return label_classes, lut


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


def _unnamed_pixels(label, n_names: int) -> int:
    """Pixels of an index label whose value names no label class (>= `n_names`) and is not 255 (unlabelled)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a plain PNG is not georeferenced
        with rasterio.open(label) as ds:
            values = ds.read(1)
    return int(((values >= n_names) & (values != IGNORE)).sum())


def _nothing_scored(labels, label_format: str, colors: Sequence[str]) -> str:
    """Why no pixel was scored, with the colours the first mask does hold when it is colour-coded."""
    hint = {"index": "are the label values class ids (0, 1, ...) of the label names, 255 for unlabelled?",
            "vector": "do the polygons cover the images, and does their class field hold label names or ids?",
            "color": f"the label colours are {', '.join(colors)}"}[label_format]
    if label_format == "color":
        found = _common_colors(labels[0])
        if found:
            hint += f"; the most common colours in {labels[0]} are {', '.join(found)}: pass --label-names and " \
                    "--label-colors"
    return f"no labelled pixel matched a class the model scores, so there is nothing to score: {hint}."


def _common_colors(path, n: int = 6) -> list[str]:
    from rasterio.enums import Resampling

    from geoseg.models.labels import _palette

    with warnings.catch_warnings(), rasterio.open(path) as ds:
        warnings.simplefilter("ignore")  # a plain PNG is not georeferenced
        data = ds.read(out_shape=(ds.count, min(ds.height, 512), min(ds.width, 512)), resampling=Resampling.nearest)
        palette = _palette(ds) if ds.count == 1 else None
    if palette is not None:  # a palette PNG: its indexes stand for the colours of its table
        data = np.moveaxis(palette[data[0]], -1, 0)
    if data.shape[0] < 3:
        return []
    code = (data[0].astype(np.int64) << 16) | (data[1].astype(np.int64) << 8) | data[2]
    values, counts = np.unique(code, return_counts=True)
    return [f"#{v:06X}" for v in values[np.argsort(-counts)][:n]]


def compare(
    models: Sequence[str],
    images: Sequence[str | os.PathLike],
    labels: Sequence[str | os.PathLike] | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run several models on the same rasters: scores side by side (with labels) and disagreement rasters.

    With `output_dir`, each model's masks go to ``output_dir/MODEL/`` and each image
    gets ``STEM_disagreement.tif``: the number of distinct classes the models
    predicted at each pixel minus one (0 = all agree; 255 = nodata). Images that
    share a stem (``Tile 2/images/part_1.jpg``, ``Tile 3/images/part_1.jpg``) are
    told apart by a short hash of their path: ``STEM-HASH_disagreement.tif``, with
    their masks in ``MODEL/STEM-HASH/``. It needs `labels`, `output_dir` or both; every
    model's bands are checked in every image before any model runs.
    """
    models = _paths(models)
    if len(models) < 2:
        raise InputError(f"compare needs two or more models. Received: {list(models)}")
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
    for m in models:  # every model's bands in every image before the first model segments anything
        _check_model_bands(m, images, options.get("bands"), fix=f"leave {_reference(m)} out of the comparison "
                           "(--models), or compare on images that have those bands")
    evaluations = []
    if labels is not None:
        options = {**options, **_shared_label_set(models[0], labels, options)}
        label_options = {k: options[k] for k in ("label_format", "label_names", "label_colors", "vector_field")
                         if k in options}
        for m in models:  # every model's label checks before the first one segments anything
            _prepare(m, images, labels, **label_options)
    if out is not None:  # a file there was "OUT/MODEL: cannot create the output folder (Not a directory)"
        prepare_output_dir(out, lambda d: {}, overwrite=True)
    if labels is not None:
        for m, folder in zip(models, folders):
            evaluations.append(evaluate(m, images, labels, keep_masks=out / folder if out else None, **options))
    disagreement = _disagreement(models, folders, images, out, options, scored=labels is not None) if out else []
    return {"models": list(models), "evaluations": [e.to_dict() for e in evaluations], "disagreement": disagreement}


def _shared_label_set(model, labels: list, options: dict) -> dict:
    """Label names (and colours) that make every model of a comparison read the labels alike.

    Unnamed index labels and colour labels are read by the evaluated model's own classes. In a
    comparison each model would then read them differently (a baseline's palette matches few of a
    land-cover mask's colours, and scored 5% of the pixels the U-Net scored): the first model's
    classes name them for all, and each other model scores them by name.
    """
    fmt = options.get("label_format", "index")
    if options.get("label_names") is not None or options.get("label_colors") is not None or fmt == "vector":
        return {}  # colours without names are refused by the label checks, as evaluate refuses them
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
    classes = get_segmenter(resolve_model(model)).card.classes
    return {"label_names": [c.name for c in classes], **({"label_colors": [c.color for c in classes]}
                                                         if fmt == "color" else {})}


def _disagreement(models, folders, images, out: Path, options: dict, *, scored: bool) -> list[str]:
    """Each image's disagreement raster; `scored`: this run's evaluations already left every mask in `out`."""
    from geoseg.models.card import ClassInfo
    from geoseg.raster import write_class_mask

    seg_options = {k: v for k, v in options.items() if k not in ("label_format", "label_names", "label_colors",
                                                                   "vector_field")}
    paths = []
    names = unique_stems(images)
    for image in images:
        masks = []
        for m, name in zip(models, folders):
            folder = _mask_dir(out / name, image, names)
            mask = folder / f"{raster_stem(image)}_mask.tif"
            if not scored:  # masks from an earlier run may be of other images or settings
                segment(image, folder, model=m, preview=False, overwrite=True, **seg_options)
            masks.append(mask)
        info = inspect_raster(masks[0])
        classes = [ClassInfo(i, f"{i + 1} classes" if i else "all agree", c)
                   for i, c in enumerate(["#FFFFFF", "#FDD49E", "#FC8D59", "#D7301F", "#7F0000"][: len(models)])]
        handles = [rasterio.open(p) for p in masks]
        try:
            def block(window):
                stack = np.stack([h.read(1, window=window) for h in handles])
                distinct = np.zeros(stack.shape[1:], np.uint8)
                for value in np.unique(stack[stack != IGNORE]):
                    distinct += (stack == value).any(axis=0)
                out_block = np.clip(distinct.astype(np.int16) - 1, 0, 254).astype(np.uint8)
                out_block[(stack == IGNORE).any(axis=0)] = IGNORE
                return out_block

            target = out / f"{names[os.fspath(image)]}_disagreement.tif"
            write_class_mask(target, info, classes, block)
        finally:
            for h in handles:
                h.close()
        paths.append(str(target))
    return paths


def markdown_table(evaluations: Sequence[Evaluation | dict]) -> str:
    """Per-class IoU of one or more evaluations as a Markdown table, models as columns."""
    evals = [e.to_dict() if isinstance(e, Evaluation) else e for e in evaluations]
    classes = list(dict.fromkeys(c for e in evals for c in e["per_class"]))
    head = "| class | " + " | ".join(e["model"] for e in evals) + " |"
    lines = [head, "|---|" + "---:|" * len(evals)]
    for c in classes:
        cells = [e["per_class"].get(c, {}).get("iou") for e in evals]
        lines.append(f"| {c} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in cells) + " |")
    lines.append("| **mean IoU** | " + " | ".join(f"**{e['mean_iou']:.3f}**" for e in evals) + " |")
    lines.append("| pixel accuracy | " + " | ".join(f"{e['pixel_accuracy']:.3f}" for e in evals) + " |")
    return "\n".join(lines) + "\n"
