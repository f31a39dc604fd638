"""`geoseg models`: list the models the registry finds, or show one card."""

from __future__ import annotations

import click

from geoseg.cli.options import emit_json, fail_cleanly

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
    """List available models: name, version, classes, bands and where each was found.

    Models come from the shipped zoo, folders on GEOSEG_MODEL_PATH and packages
    that register the `geoseg.models` entry point. `geoseg models show NAME`
    prints one model's card.
    """
    if ctx.invoked_subcommand:
        return
    from geoseg.models import DEFAULT_MODEL, list_models

    problems = []
    with fail_cleanly():
        rows = [_row(e, DEFAULT_MODEL) for e in list_models(problems)]
    if as_json:
        emit_json({"models": rows, "skipped": [{"path": str(p.path) if p.path else None, "reason": p.message}
                                               for p in problems]})
        return
    for problem in problems:
        click.echo(f"warning: skipped: {problem.message}", err=True)
    for row in rows:
        mark = " (default)" if row["default"] else ""
        click.echo(f"{row['name']}{mark}  v{row['version']}  [{row['source']}]")
        if row["output"] == "regions":
            click.echo(f"    output: unlabeled regions in {len(row['classes'])} colours (no classes)")
        else:
            click.echo(f"    classes: {', '.join(row['classes'])}")
        click.echo(f"    bands: {row['bands']}  margin: {row['margin']} px  path: {row['path']}")
    if not rows:
        click.echo("no models found", err=True)


@models.command()
@click.argument("name", metavar="NAME|PATH")
def show(name: str) -> None:
    """Print the card (JSON) of model NAME or of the bundle at PATH."""
    from geoseg.cli import load_tensorflow
    from geoseg.models import get_segmenter
    from geoseg.models.registry import BUILTIN, resolve_model

    with fail_cleanly():
        if not resolve_model(name).startswith(BUILTIN):  # a bundle loads Keras: hide TensorFlow's start-up lines
            load_tensorflow(click.get_current_context().find_root().obj["verbosity"])
        card = get_segmenter(name).card
    emit_json(card.to_dict())
