"""`geoseg models`: list the models the registry finds, show one card, or check that models load."""

from __future__ import annotations

import click

from geoseg.cli.options import PathParam, emit_json, fail_cleanly, only_with

__all__ = ["models"]


def _row(entry, default: str) -> dict:
    card = entry.card
    return {
        "name": entry.name,
        "version": card.version,
        "default": entry.name == default,
        "classes": [c.name for c in card.classes],
        "output": card.output,
        "bands": list(card.bands),
        "tile_size": card.tile_size,
        "margin": card.margin,
        "source": entry.source,
        "path": str(entry.path) if entry.path else None,
        "description": card.description,
    }


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List available models: name, version, classes, bands and where each was found; the default
    model first, then built-in baselines, the zoo, GEOSEG_MODEL_PATH and plugins (--json in the same order).

    Models come from the shipped zoo, folders on GEOSEG_MODEL_PATH and packages
    that register the `geoseg.models` entry point. `geoseg models show NAME`
    prints one model's card; `geoseg models check` loads each model and says which fail.
    """
    if ctx.invoked_subcommand:
        return
    from geoseg.models import DEFAULT_MODEL, list_models

    problems = []
    with fail_cleanly():
        rows = [_row(e, DEFAULT_MODEL) for e in list_models(problems)]
    # the default first, then as the registry finds them (built-in baselines, the zoo, GEOSEG_MODEL_PATH, plugins),
    # in the table and in --json alike: the default came last in --json, under 8 baselines, and first in the table
    rows.sort(key=lambda r: not r["default"])
    if as_json:
        emit_json({"models": rows, "skipped": [{"path": str(p.path) if p.path else None, "reason": p.message}
                                               for p in problems]})
        return
    for problem in problems:
        click.echo(f"warning: skipped: {problem.message}", err=True)
    for row in rows:
        mark = " (default)" if row["default"] else ""
        click.echo(f"{row['name']}{mark}  v{row['version']}  [{row['source']}]")
        if row["description"]:  # what it is for, in a line: the card's description was only in `models show`
            about = " ".join(row["description"].split())
            click.echo(f"    {about if len(about) <= 110 else about[:107] + '...'}")
        if row["output"] == "regions":
            click.echo(f"    output: unlabeled regions in {len(row['classes'])} colours (no classes)")
        else:
            click.echo(f"    classes: {', '.join(row['classes'])}")
        click.echo(f"    bands: {row['bands']}  margin: {row['margin']} px  path: {row['path'] or '(built in)'}")
    if not rows:
        click.echo("no models found", err=True)


@models.command()
@click.argument("name", metavar="NAME|PATH")
def show(name: str) -> None:
    """Print the card (JSON) of model NAME or of the bundle at PATH, read without loading the model
    (`geoseg models check NAME` loads it)."""
    from pathlib import Path

    from geoseg.cli import load_tensorflow
    from geoseg.models import get_segmenter
    from geoseg.models.card import read_card
    from geoseg.models.registry import resolve_model

    from urllib.parse import parse_qs

    with fail_cleanly():
        ref, _, query = resolve_model(name).partition("?")  # builtin:NAME has no suffix
        path = Path(ref)
        given = parse_qs(query).get("card", [None])[0]  # a legacy .h5 model's ?card=PATH
        card_path = Path(given) if given else path.with_suffix(".json")
        if path.suffix == ".keras" or (path.suffix == ".h5" and card_path.is_file()):
            card = read_card(card_path)  # a card that does not match its model is still shown: it is what to fix
        else:
            if path.suffix == ".h5":  # no card: loading says what to write (and Keras's start-up lines are hidden)
                load_tensorflow(click.get_current_context().find_root().obj["verbosity"])
            card = get_segmenter(name).card
    emit_json(card.to_dict())


@models.command()
@click.argument("names", nargs=-1, metavar="[NAME|PATH]...")
@click.option("--image", type=PathParam(dir_okay=False), default=None, metavar="RASTER",
              help="Also run each bundle on this raster's central window, in small chunks and in one chunk, "
                   "and report how many pixels agree: a card whose margin is too small shows seams.")
@click.option("--window", type=click.IntRange(min=64), default=1024, show_default=True, metavar="PX",
              help="Side of the central window of --image that the seam check runs on.")
@click.option("--chunk", type=click.IntRange(min=16), default=256, show_default=True, metavar="PX",
              help="Chunk size of the seam check's tiled run (many seams).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
def check(names: tuple[str, ...], image: str | None, window: int, chunk: int, as_json: bool) -> None:
    """Load models as a run would and say which fail: card, weights, bands, classes, and that the
    outputs are probabilities. Without NAME, every model found, and the bundles `geoseg models`
    skipped. Exit status 1 when any model fails.

    \b
    geoseg models check                         # everything on GEOSEG_MODEL_PATH, the zoo, plugins
    geoseg models check my-model.keras --image scene.tif
    """
    from geoseg.cli import all_baselines, load_tensorflow
    from geoseg.models.check import SEAM_FLOOR, check_models, exit_status

    only_with("window", "--image", image is not None)
    if not all_baselines(names):  # baselines need none: 3 s and 550 MB
        load_tensorflow(click.get_current_context().find_root().obj["verbosity"])
    with fail_cleanly():
        results = check_models(list(names) or None, image=image, window=window, chunk=chunk)
    if as_json:
        emit_json({"models": [r.to_dict() for r in results], "seam_floor": SEAM_FLOOR if image else None,
                   "ok": not exit_status(results)})
    else:
        for r in results:
            where = f"  [{r.source}]" if r.source else ""
            if not r.ok:
                click.echo(f"FAILED  {r.name}{where}: {r.message}")
                continue
            seams = "" if r.seam_agreement is None else f"; tiled and whole runs agree on {r.seam_agreement}% of pixels"
            click.echo(f"ok      {r.name}{where}: {r.message} ({r.seconds:.1f} s){seams}")
            for warning in r.warnings:
                click.echo(f"warning: {r.name}: {warning}", err=True)
        if not results:
            click.echo("no models found", err=True)
    ctx = click.get_current_context()
    ctx.exit(exit_status(results))
