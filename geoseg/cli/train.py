"""`geoseg train`: a U-Net bundle from images and labels described by a TOML config."""

from __future__ import annotations

import click

from geoseg.cli.options import FiniteRange, PathParam, fail_cleanly

__all__ = ["train"]


@click.command()
@click.option("-c", "--config", "config_path", required=True, type=PathParam(dir_okay=False),
              help="Training config (TOML): data, classes, model and training settings.")
@click.option("--name", default=None, help="Override the model name.")
@click.option("--output", default=None, type=PathParam(file_okay=False), help="Override the output folder.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the number of epochs.")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=None, help="Override steps per epoch.")
@click.option("--max-minutes", type=FiniteRange(min=0, min_open=True), default=None,
              help="Stop after this much time (minutes, above 0), within an epoch if need be; the part-epoch "
                   "is scored and may be the one kept.")
@click.option("--resume/--restart", default=True, show_default=True,
              help="Continue an interrupted run from its checkpoints (same settings; only "
                   "max_minutes and patience may change), or discard them and start afresh.")
@click.option("--overwrite", is_flag=True,
              help="Replace the bundle (NAME.keras, .json, .toml) of a finished run in the output folder; "
                   "without it such a run is refused. Resuming an interrupted run needs no --overwrite.")
def train(config_path, name, output, epochs, steps_per_epoch, max_minutes, resume, overwrite):
    """Train a U-Net and write NAME.keras + NAME.json (card with validation IoU) + NAME.toml.

    Labels may be index rasters, colour-coded masks (colours from the config's
    classes) or vector polygons with a class field, rasterised onto each image.
    Validation is split by file: images whose path contains a 'validation' pattern.
    With 'selection' patterns too, the best epoch is chosen on those images and the
    validation images are scored once, after training, unseen by that choice.

    A bundle of the same name already in the output folder is not replaced
    without --overwrite: rerun a bundle's NAME.toml with --output or --name.

    \b
    Example:
      geoseg train --config configs/landcover-unet.toml
    """
    import os

    from geoseg.models.training import load_config
    from geoseg.models.training import train as run_train

    if output is not None:
        output = os.path.abspath(output)
    with fail_cleanly():
        config = load_config(config_path, name=name, output=output, epochs=epochs,
                             steps_per_epoch=steps_per_epoch, max_minutes=max_minutes)
        try:
            path = run_train(config, resume=resume, overwrite=overwrite)
        except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, or SIGTERM (exit status 143)
            if isinstance(exc, KeyboardInterrupt) or exc.code == 143:
                click.echo(_resume_hint(config, resume), err=True)
            raise
    click.echo(f"wrote {path} and its card {path.with_suffix('.json')}", err=True)


def _resume_hint(config, resume: bool) -> str:
    """What rerunning an interrupted run does: resume after its checkpointed epochs, or start afresh."""
    from geoseg.models.training import checkpoint_folder, checkpointed_epochs

    epochs = checkpointed_epochs(config)
    if not epochs:
        return "Interrupted before the end of the first epoch: nothing to resume, so a rerun starts afresh."
    again = "the same command" if resume else "the same command without --restart (which discards them)"
    return (f"Interrupted: {checkpoint_folder(config)} keeps the checkpoints of {epochs} epoch(s); rerunning "
            f"{again} resumes from the last of them.")
