"""`geoseg evaluate` and `geoseg compare`: models scored on whole rasters through the real pipeline."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl

import click

from geoseg.cli.options import (BandsType, NormalizationType, PathParam, chunk_option, emit_json, fail_cleanly,
                                only_with, precision_option, resample_option, sieve_option, tta_option)

__all__ = ["evaluate", "compare"]


def _pairs(images: tuple[str, ...], labels: tuple[str, ...] | None,
           label_format: str = "index") -> tuple[list[str], list[str] | None]:
    """The images and a label file for each. Polygons (``--label-format vector``) may be one layer for every
    image, given once (the layer of a study area, over its tiles), as training and the Python API take it."""
    from geoseg.errors import InputError
    from geoseg.models.labels import check_label_template
    from geoseg.raster import raster_stem
    from geoseg.workflows.survey import expand_inputs

    image_paths = expand_inputs(images)
    if not image_paths:  # said "0 image(s) but 1 label file(s)"
        raise InputError(f"--images {' '.join(images)}: no image found; check the paths and quote globs.")
    if not labels:
        return image_paths, None
    if len(labels) == 1 and "{" in labels[0]:
        template = labels[0]
        check_label_template(template, "--labels")
        label_paths = [template.format(stem=raster_stem(p), name=Path(p).name, image_dir=str(Path(p).parent))
                       for p in image_paths]
        if label_format != "vector":  # one layer over several images is what polygons are for
            _check_one_label_each(template, image_paths, label_paths)
        return image_paths, label_paths
    label_paths = expand_inputs(labels)
    if label_format == "vector" and len(set(label_paths)) == 1:
        return image_paths, label_paths[:1] * len(image_paths)
    if len(label_paths) != len(image_paths):
        raise InputError(f"{len(image_paths)} image(s) but {len(label_paths)} label file(s). Pass as many labels, "
                         "a template such as '{image_dir}/../masks/{stem}.png', or one layer of polygons for all "
                         "(--label-format vector).")
    return image_paths, label_paths


def _check_one_label_each(template: str, images: list[str], labels: list[str]) -> None:
    """A template that gives two images one label file (``masks/{stem}.png`` for ``t2/a.jpg`` and ``t3/a.jpg``)
    would score both against the same labels."""
    from geoseg.errors import InputError

    first: dict[str, str] = {}
    for image, label in zip(images, labels):
        if label in first:
            raise InputError(f"--labels {template} gives {first[label]} and {image} the same label file {label}; "
                             "images that share a file name need their folder in the template, such as "
                             "'{image_dir}/../masks/{stem}.png'.")
        first[label] = image


def _check_writable(path: str | None, option: str) -> None:
    """Fail before the long part when an output file's folder is missing or read-only."""
    from geoseg.errors import InputError
    from geoseg.files import refuse_stray_whitespace

    if path is None:
        return
    refuse_stray_whitespace(path, f"{option} report")  # "report.md " made a file of that name
    folder = Path(path).resolve().parent
    if folder.exists() and not folder.is_dir():  # was "the folder ... does not exist" (h118)
        raise InputError(f"{option} {path}: {folder} is a file, not a folder; pick another path.")
    if not folder.is_dir():
        raise InputError(f"{option} {path}: the folder {folder} does not exist; create it or pick another path.")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{option} {path}: the folder {folder} is not writable; pick another path.")


def _check_report(path: str | None, overwrite: bool, model, images: list[str], labels: list[str] | None) -> None:
    """The report may replace neither an input (the image, a label, the model's files: `--markdown img.tif`
    turned the image into text) nor, without --overwrite, a file that exists."""
    from geoseg.errors import OutputError
    from geoseg.models.registry import BUILTIN, resolve_model
    from geoseg.pipeline import refuse_inputs_as_outputs

    if path is None:
        return
    ref = resolve_model(model).partition("?")[0]
    card = dict(parse_qsl(resolve_model(model).partition("?")[2])).get("card")
    bundle = [] if ref.startswith(BUILTIN) else [ref, str(Path(ref).with_suffix(".json")), *([card] if card else [])]
    try:
        refuse_inputs_as_outputs({"report": Path(path)}, [*images, *(labels or []), *bundle],
                                 fix="Pick another path for the report (evaluate has no -o).")
    except OutputError as exc:
        raise OutputError(f"--markdown {exc}") from None
    if Path(path).exists() and not overwrite:
        raise OutputError(f"--markdown {path} already exists. Pass --overwrite to replace it, or pick another path.")


label_options = [
    click.option("--images", multiple=True, required=True, type=PathParam(), help="Images: files, folders or globs (repeatable)."),
    click.option("--label-format", type=click.Choice(["index", "color", "vector"]), default="index",
                 show_default=True, help="Index raster, colour-coded mask, or polygons with a class field."),
    click.option("--label-names", default=None, metavar="NAME,...",
                 help="Label classes in id order; matched to the model's classes by name."),
    click.option("--label-colors", default=None, metavar="#RRGGBB,...", help="Colours of --label-names (color masks)."),
    click.option("--vector-field", default="class", show_default=True, help="Class field of vector labels."),
    click.option("--ignore-colors", default=None, metavar="#RRGGBB,...",
                 help="Colours that mark unlabelled pixels in colour labels (the Dubai masks' #9B9B9B,#000000): not scored, "
                      "and not named in the note on colours of no class."),
    click.option("--bands", type=BandsType(), default=None, metavar="1,2,3",
                 help="1-based input bands in model order, for every model (the -nir baselines take red, green, "
                      "blue, NIR). Default: each card's."),
    click.option("--normalize", type=NormalizationType(), default=None, metavar="METHOD:ARGS",
                 help="Override the cards' normalisation, as for `geoseg segment` (e.g. scale:S[,OFFSET] for 11- or "
                      "16-bit imagery: a warning names the value); the baselines ignore it."),
    resample_option,  # a coarse raster's refusal names it: evaluate and compare had none (h166)
    chunk_option,
    sieve_option,
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
    precision_option,
    tta_option,
]


def _with(options):
    def wrap(f):
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


def _model_bands(ctx, param, values) -> dict[str, tuple[int, ...]]:
    """--model-bands MODEL=3,2,1 (repeatable) as {MODEL: (3, 2, 1)}."""
    given: dict[str, tuple[int, ...]] = {}
    for value in values:
        name, sep, bands = value.rpartition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"give a model and its bands as MODEL=3,2,1. Received: {value!r}",
                                     ctx=ctx, param=param)
        if name.strip() in given:  # the last one was taken without a word
            raise click.BadParameter(f"gives {name.strip()} bands twice; give each model its bands once.",
                                     ctx=ctx, param=param)
        given[name.strip()] = BandsType().convert(bands, param, ctx)
    return given


def _segment_options(chunk, sieve, bands, normalize, resample) -> dict:
    return {**({"chunk": chunk} if chunk else {}), **({"sieve": sieve} if sieve else {}),
            **({"bands": bands} if bands else {}), **({"normalization": normalize} if normalize else {}),
            **({} if resample else {"resample": False})}


def _split(value, option: str | None = None):
    """A comma list's items; with `option`, a blank item is a usage error: dropped, 'water,,other' scored
    label id 1 as other and left the real other unscored."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")]
    if option is not None and not all(items):
        raise click.BadParameter(f"{value!r} has a blank item; give one name or colour per label id, in order.",
                                 param_hint=option)
    return [v for v in items if v]


def _label_set(label_format: str, label_names, label_colors) -> tuple[list[str] | None, list[str] | None]:
    """--label-names and --label-colors split and checked as usage errors (exit 2), as a blank item is: a bad
    colour or colours without names exited 1, as a failed run does (h109)."""
    from geoseg.errors import InputError
    from geoseg.workflows.evaluate import _check_label_set

    names, colors = _split(label_names, "--label-names"), _split(label_colors, "--label-colors")
    try:
        _check_label_set(label_format, names, colors)
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    return names, colors


def _ignore_set(label_format: str, ignore_colors) -> list[str] | None:
    """--ignore-colors split and checked as a usage error (exit 2), as --label-colors are: 'zz' exited 1 (h149)."""
    from geoseg.errors import InputError
    from geoseg.workflows.evaluate import _checked_ignore_colors

    colours = _split(ignore_colors, "--ignore-colors")
    try:
        _checked_ignore_colors(label_format, ignore_colors)  # as given: "Received: 'zz'", not ['zz']
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    return colours


def _variant(model, precision: str, tta: str):
    """The model reference with the chosen precision and test-time augmentation."""
    from geoseg.models.registry import with_card

    return with_card(model, None, precision, tta)


@click.command()
@click.option("-m", "--model", default=None, metavar="NAME|PATH", help="Model; default landcover-unet.")
@click.option("--labels", multiple=True, required=True, type=PathParam(),
              help="Labels: files/globs in the images' order, or a template like '{image_dir}/../masks/{stem}.png'.")
@_with(label_options)
@click.option("--markdown", type=PathParam(dir_okay=False), default=None,
              help="Also write the table and its notes to this Markdown file.")
@click.option("--overwrite", is_flag=True, help="Replace the --markdown file when it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar; the table is still printed.")
def evaluate(model, labels, images, label_format, label_names, label_colors, vector_field, ignore_colors, bands,
             normalize, resample, chunk, sieve, as_json, precision, tta, markdown, overwrite, quiet):
    """Score a model on whole rasters: per-class IoU, F1, precision, recall, mean IoU, confusion matrix.

    Every image goes through the same tiled pipeline as `geoseg segment`. Pixels
    labelled 255 are ignored; label classes are matched to model classes by name
    and those the model lacks are reported as not scored. A model of unlabeled
    regions (watershed-regions) gives each region its majority label class, which
    the report says: a bound for classifying those regions, not a classifier.
    """
    from geoseg.cli.segment import _bar
    from geoseg.workflows.common import write_text
    from geoseg.workflows.evaluate import evaluate as run, markdown_table

    only_with("overwrite", "--markdown", markdown is not None)
    only_with("vector_field", "--label-format vector", label_format == "vector")
    only_with("ignore_colors", "--label-format color", label_format == "color")
    names, colors = _label_set(label_format, label_names, label_colors)
    ignore_colors = _ignore_set(label_format, ignore_colors)
    with fail_cleanly():
        _check_writable(markdown, "--markdown")
        image_paths, label_paths = _pairs(images, labels, label_format)
        _check_report(markdown, overwrite, model, image_paths, label_paths)
        with _bar("evaluate", quiet) as progress:  # 63 tiles ran 20 minutes without a word on a terminal
            result = run(_variant(model, precision, tta), image_paths, label_paths, label_format=label_format,
                         label_names=names, label_colors=colors, vector_field=vector_field,
                         ignore_colors=ignore_colors, progress=progress,
                         **_segment_options(chunk, sieve, bands, normalize, resample))
        if markdown:  # with the notes, which the terminal gets on stderr: a majority-assigned region score read as real
            write_text(markdown, markdown_table([result], notes=True))  # a full disk: an error, not a traceback
    table = markdown_table([result])
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(table)
        _echo_notes([result.to_dict()])


@click.command()
@click.option("--models", required=True, metavar="A,B,...", help="Two or more models, comma-separated.")
@click.option("--labels", multiple=True, default=None, type=PathParam(), help="Labels (optional): as for `geoseg evaluate`.")
@_with(label_options)
@click.option("-o", "--output-dir", type=PathParam(), default=None,
              help="Keep each model's masks and write disagreement rasters here: per pixel the number of "
                   "different classes (told apart by name) the models predict, minus one; 255 is nodata. "
                   "Without it, every model's masks wait in the system's temporary folder ($TMPDIR, else /tmp) "
                   "until all are scored: compressed, 0.6-0.8 MB a model for a 4000² image.")
@click.option("--markdown", type=PathParam(dir_okay=False), default=None,
              help="Also write the score table and its notes to this Markdown file (with --labels).")
@click.option("--overwrite", is_flag=True, help="Replace masks and disagreement rasters of an earlier comparison "
                                                "in the -o folder (otherwise they are an error), and the --markdown file.")
@click.option("--model-bands", "model_bands", multiple=True, metavar="MODEL=1,2,3", callback=_model_bands,
              help="Bands of one model, by its name in --models (repeatable); --bands gives the others theirs: a "
                   "6-band model beside threshold-nir=3,2,1,4 on one stack.")
@click.option("--quiet", is_flag=True, help="No progress bar; the table is still printed.")
def compare(models, labels, images, label_format, label_names, label_colors, vector_field, ignore_colors, bands,
            normalize, resample, chunk, sieve, as_json, precision, tta, output_dir, markdown, overwrite, model_bands,
            quiet):
    """Put models side by side on the same rasters: a score table and disagreement rasters."""
    from geoseg.cli.segment import _bar
    from geoseg.workflows.common import write_text
    from geoseg.workflows.evaluate import compare as run, markdown_table

    only_with("overwrite", "-o/--output-dir or --markdown", output_dir is not None or markdown is not None)
    for option in ("label_format", "label_names", "label_colors", "vector_field", "ignore_colors", "markdown"):
        only_with(option, "--labels", bool(labels))  # for labels: a comparison without them has no table
    only_with("vector_field", "--label-format vector", label_format == "vector")
    only_with("ignore_colors", "--label-format color", label_format == "color")
    names, colors = _label_set(label_format, label_names, label_colors)
    ignore_colors = _ignore_set(label_format, ignore_colors)
    with fail_cleanly():
        image_paths, label_paths = _pairs(images, labels, label_format)
        refs = [_variant(m, precision, tta) for m in _split(models)]
        if len(refs) < 2:  # exit 1 in the Python API's words, after loading the model
            raise click.BadParameter(f"{models!r} names {len(refs)} model(s); compare needs two or more, "
                                     "comma-separated (for one, use geoseg evaluate).", param_hint="--models")
        _check_writable(markdown, "--markdown")
        for ref in refs:  # the report replaces no input, nor an earlier report without --overwrite
            _check_report(markdown, overwrite, ref, image_paths, label_paths)
        with _bar("compare", quiet) as progress:
            result = run(refs, image_paths, label_paths, output_dir=output_dir, overwrite=overwrite,
                         **({"model_bands": model_bands} if model_bands else {}),
                         label_format=label_format, label_names=names, label_colors=colors, vector_field=vector_field,
                         **({"ignore_colors": ignore_colors} if ignore_colors else {}),
                         progress=progress, **_segment_options(chunk, sieve, bands, normalize, resample))
        if markdown:  # with the notes, as evaluate's (h109: a comparison's report took capturing stdout)
            write_text(markdown, markdown_table(result["evaluations"], notes=True))
    if as_json:
        emit_json(result)
        return
    if result["evaluations"]:
        click.echo(markdown_table(result["evaluations"]))
        _echo_notes(result["evaluations"])
    for path, agree in zip(result["disagreement"], result["agreement_pct"]):
        share = "no valid pixel" if agree is None else f"all models agree on {agree}% of the valid pixels"
        click.echo(f"disagreement: {path} ({share})", err=True)


def _echo_notes(evaluations: list[dict]) -> None:
    """Each evaluation's notes on stderr: once when every model has it, else once per model that has it."""
    shared = [n for n in evaluations[0]["notes"] if all(n in e["notes"] for e in evaluations)]
    for note in shared:
        click.echo(f"note: {note}", err=True)
    for e in evaluations:
        for note in e["notes"]:
            if note not in shared:
                click.echo(f"note: {e.get('column', e['model'])}: {note}", err=True)
