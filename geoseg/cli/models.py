"""`geoseg models`: list the models the registry finds."""

from __future__ import annotations

import click

from geoseg.cli.options import emit_json, fail_cleanly

__all__ = ["models"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def models(as_json: bool) -> None:
    """List available models: name, version, classes, bands and where each was found.

    Models come from the shipped zoo, folders on GEOSEG_MODEL_PATH and packages
    that register the `geoseg.models` entry point.
    """
    from geoseg.models import DEFAULT_MODEL, list_models

    with fail_cleanly():
        entries = list_models()
    rows = [
        {
            "name": e.name,
            "version": e.card.version,
            "default": e.name == DEFAULT_MODEL,
            "classes": [c.name for c in e.card.classes],
            "bands": list(e.card.bands),
            "tile_size": e.card.tile_size,
            "margin": e.card.margin,
            "source": e.source,
            "path": str(e.path),
            "description": e.card.description,
        }
        for e in entries
    ]
    if as_json:
        emit_json({"models": rows})
        return
    for row in rows:
        mark = " (default)" if row["default"] else ""
        click.echo(f"{row['name']}{mark}  v{row['version']}  [{row['source']}]")
        click.echo(f"    classes: {', '.join(row['classes'])}")
        click.echo(f"    bands: {row['bands']}  margin: {row['margin']} px  path: {row['path']}")
    if not rows:
        click.echo("no models found", err=True)
