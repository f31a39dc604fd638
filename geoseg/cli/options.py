"""Options and parameter types shared by geoseg commands."""

from __future__ import annotations

import errno
import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from geoseg.errors import GeosegError
from geoseg.models.segmenter import PRECISIONS, TTA_MODES

__all__ = ["BandsType", "NormalizationType", "area_texts", "check_cluster_options", "chunk_option", "fail_cleanly",
           "emit_json", "normalize_option", "only_with", "precision_option", "resample_option", "scheduler_option", "sieve_option",
           "tta_option", "workers_option"]

# choices shared by segment, evaluate and compare: the same tuples the model loader checks
precision_option = click.option(
    "--precision", type=click.Choice(PRECISIONS), default="float32", show_default=True,
    help="Compute precision; bfloat16 is faster on CPUs with AMX, slower on other CPUs (even with AVX512-BF16), "
         "and no faster for the default model on an H200 GPU (the model card says what it costs in IoU and "
         "gains in speed).")
chunk_option = click.option(
    "--chunk", type=click.IntRange(min=1), default=None, metavar="PX",
    help="Chunk (core) size in pixels; memory grows with it. Default 1024, or eight margins (at most 2048) "
         "for models with wide margins.")
resample_option = click.option(  # segment's, and where a coarse raster's refusal sends scene, flood and survey
    "--resample/--no-resample", default=True, show_default=True,
    help="Resample to the model card's pixel size (ground metres, when it gives one) and back to the input grid.")
sieve_option = click.option(
    "--sieve", type=click.IntRange(min=0), default=0, show_default=True, metavar="PX",
    help="Minimum mapping unit: regions of one class smaller than PX mask pixels (8-connected) take the classes "
         "around them, before areas and polygons are made. 0 keeps every pixel.")
tta_option = click.option(
    "--tta", type=click.Choice(TTA_MODES), default="none", show_default=True,
    help="Test-time augmentation: 'flips' averages the model over the four flips of each chunk "
         "(4x the compute; the model card says what it gains). Baselines ignore it.")


class PathParam(click.Path):
    """click.Path that refuses an empty path: ``""`` is the current folder to the file system, so ``"$DIR"`` of an
    unset variable surveyed every raster under the working folder, and ``--output ""`` trained into it."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is empty (an unset shell variable?). Give a path; '.' for the current folder.", param, ctx)
        return super().convert(value, param, ctx)


class FiniteRange(click.FloatRange):
    """click.FloatRange that refuses nan and inf, which it lets through: --max-mpx nan was a traceback, --min-area
    nan and --max-minutes nan exit 1 in the Python API's words (or not at all) after loading everything."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class BandsType(click.ParamType):
    """1-based band indexes as ``3,2,1``."""

    name = "bands"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        items = str(value).split(",")
        if not all(v.strip() for v in items):  # 1,,2 ran bands (1, 2), the blank dropped without a word
            self.fail(f"has an empty item; use comma-separated 1-based band indexes such as 1,2,3. Received: "
                      f"{value!r}", param, ctx)
        try:
            bands = tuple(int(v) for v in items)
        except ValueError:
            self.fail(f"use comma-separated 1-based band indexes such as 1,2,3. Received: {value!r}", param, ctx)
        if min(bands) < 1:
            self.fail(f"band indexes start at 1. Received: {value!r}", param, ctx)
        return bands


class NormalizationType(click.ParamType):
    """``scale:S[,OFFSET]``, ``percentile:LOW,HIGH``, ``meanstd:M1,M2,../S1,S2,..`` or ``none``."""

    name = "normalization"

    def convert(self, value, param, ctx):
        from geoseg.models.card import normalization_from_text

        if isinstance(value, dict):
            return value
        try:
            return normalization_from_text(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


normalize_option = click.option(
    "--normalize", type=NormalizationType(), default=None, metavar="METHOD:ARGS",
    help="Override the card's normalisation: scale:S[,OFFSET] (value x S + OFFSET), percentile:2,98 (of "
         "the whole raster, to 0..1), meanstd:M1,M2,M3/S1,S2,S3 or none. The model still expects the "
         "range it was trained on (the default model: -1..1, i.e. scale:0.00784313725490196,-1 of 8-bit; "
         "a warning names the value for 11- or 16-bit imagery). The baselines keep their own.")


def only_with(option: str, other: str, present: bool) -> None:
    """`option` (a parameter's name) means something only with `other` (the words for what it needs): given on
    the command line without it, a usage error. --overwrite without --markdown, --zone-field without --zones
    and --window without --image were ignored without a word, or refused after the model had loaded."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    if present or ctx.get_parameter_source(option) in (ParameterSource.DEFAULT, None):
        return
    flag = next(p.opts for p in ctx.command.params if p.name == option)[-1]
    raise click.UsageError(f"{flag} only applies with {other}; pass {other}, or leave {flag} out.")


@contextmanager
def fail_cleanly():
    """Turn a GeosegError into a one-line message and exit status 1, without a traceback."""
    try:
        yield
    except GeosegError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        # from any path test (Path.exists raises it): a traceback from segment, scene, flood, evaluate, vectorize
        longest = max(Path(str(exc.filename or "")).parts, key=lambda part: len(part.encode()), default="")
        raise click.ClickException(f"{exc.filename}: a name too long for this file system ({longest[:40]}... is "
                                   f"{len(longest.encode())} bytes; outputs add their own suffix to the input's "
                                   "name). Use a shorter name for the input or the output.") from None


def area_texts(areas_m2, missing: str = "") -> list[str]:
    """Areas in one unit for a whole list: km² where the largest is a km² or more, else m² (12 m² of a drone
    image read 0.0000 km²); `missing` for an area of None (a raster without CRS)."""
    large = max((a or 0 for a in areas_m2), default=0) >= 1e6
    # km² with thousands separators, as m² have them (30866.9017 km² beside 244,358.8 m², h130)
    return [missing if a is None else f"{a / 1e6:12,.4f} km²" if large else f"{a:12,.1f} m²" for a in areas_m2]


def right_aligned(text: str, width: int) -> str:
    """`text` padded on the left to `width` terminal columns: a CJK character takes two and a combining mark none,
    so a class named 建物, or macOS's decomposed 'Gebäude', was not aligned with the others by str.rjust.

    >>> [right_aligned(t, 6) for t in ("land", "建物", "Geba\u0308ude")]
    ['  land', '  建物', 'Geba\u0308ude']
    """
    import unicodedata

    columns = sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
                  for ch in text)
    return " " * max(0, width - columns) + text


_EMITTED: list[bool] = []  # whether this process printed its --json object


JSON_WIDTH = 100  # lists and objects that fit in this many columns are printed on one line


def compact_json(value, column: int = 0, indent: int = 0) -> str:
    """JSON indented as ``indent=2`` does, but with every list or object that fits in `JSON_WIDTH` columns on one
    line: the default model's card was 404 lines, a line per band number and class field (h130), 293 now (most of
    them its 63 image paths)."""
    flat = json.dumps(value, default=str)
    if not isinstance(value, (dict, list)) or not value or column + len(flat) <= JSON_WIDTH:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, list):
        lines = [pad + compact_json(v, indent + 2, indent + 2) for v in value]
        return "[\n" + ",\n".join(lines) + "\n" + " " * indent + "]"
    lines = []
    for k, v in value.items():
        key = json.dumps({k: 0})[1:-4]  # as json writes a key: str, int, float, bool or None
        lines.append(f"{pad}{key}: " + compact_json(v, indent + 2 + len(key) + 2, indent + 2))
    return "{\n" + ",\n".join(lines) + "\n" + " " * indent + "}"


def emit_json(data) -> None:
    """Print one JSON object on stdout (`compact_json`)."""
    sys.stdout.write(compact_json(data) + "\n")
    _EMITTED.append(True)


def forget_json() -> None:
    _EMITTED.clear()


def json_emitted() -> bool:
    """Whether `emit_json` printed the command's object already (an error after it adds none)."""
    return bool(_EMITTED)


workers_option = click.option("--workers", type=click.IntRange(min=1), default=None,
                              help="Start a local dask.distributed cluster with this many worker processes.")
scheduler_option = click.option("--scheduler", default=None, metavar="ADDRESS",
                                help="Join an existing dask.distributed scheduler, e.g. tcp://host:8786.")


def check_cluster_options(workers, scheduler) -> None:
    if workers and scheduler:
        raise click.BadParameter("use --workers or --scheduler, not both", param_hint="--workers")
    if scheduler is not None and not scheduler.strip():  # ran here, without a word ("$SCHEDULER" unset)
        raise click.BadParameter("is empty; give the scheduler's address (tcp://HOST:8786), or leave it out to run "
                                 "here.", param_hint="--scheduler")
