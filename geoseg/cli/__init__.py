"""The `geoseg` command: a click group whose commands are thin adapters over the library."""

from __future__ import annotations

import logging
import os

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["main"]


def configure_logging(verbosity: int) -> None:
    """Map -v/-q counts to a logging level on stderr; only the CLI configures logging."""
    level = max(logging.DEBUG, logging.WARNING - 10 * verbosity)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("tensorflow", "absl", "distributed", "rasterio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geoseg")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", count=True, help="Less log output.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Segment aerial, drone and satellite rasters of any size into georeferenced class masks."""
    configure_logging(verbose - quiet)
    ctx.obj = {"verbosity": verbose - quiet}


from geoseg.cli.models import models  # noqa: E402
from geoseg.cli.segment import segment  # noqa: E402

main.add_command(segment)
main.add_command(models)
