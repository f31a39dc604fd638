"""`geoseg survey`: segment many rasters; resumable; failures reported, not fatal."""

from __future__ import annotations

import click

from geoseg.cli.options import (BandsType, PathParam, check_cluster_options, chunk_option, emit_json, fail_cleanly,
                                normalize_option, resample_option, scheduler_option, sieve_option, workers_option)

__all__ = ["survey"]


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=PathParam())
@click.option("-o", "--output-dir", required=True, type=PathParam(), help="Folder for the outputs.")
@click.option("-m", "--model", default=None, metavar="NAME|PATH", help="Model; default landcover-unet.")
@click.option("--bands", type=BandsType(), default=None, metavar="1,2,3", help="Input bands in model order.")
@normalize_option
@resample_option
@chunk_option
@sieve_option
@click.option("--vector/--no-vector", default=True, show_default=True, help="Polygons per raster and merged (switched on a rerun, the masks are kept).")
@click.option("--preview/--no-preview", default=True, show_default=True,
              help="STEM_preview.png per raster (on large rasters it can take longer than a baseline's run; "
                   "switched on a rerun, the masks are kept).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rasters segmented at once; memory grows with it.")
@workers_option
@scheduler_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: done, kept (masks kept, polygons or previews switched), skipped, failed, "
                   "outputs.")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary; failures are still printed.")
def survey(inputs, output_dir, model, bands, normalize, resample, chunk, sieve, vector, preview, jobs, workers, scheduler,
           as_json, quiet):
    """Segment every raster in INPUTS: files, folders, globs, .txt lists of paths, or .vrt mosaics.

    Each raster gets OUTPUT_DIR/STEM/ with its mask (and polygons); the batch gets
    masks.vrt (one masks_EPSG_n.vrt per CRS when they differ), survey_polygons.gpkg
    (with a source attribute; EPSG:4326 when the CRSs differ), survey_summary.csv,
    survey_summary.json and survey_report.md, whose km² per class count ground that
    several rasters cover once. Rerunning skips rasters already done
    with the same model and options (manifest.json; a raster whose file time changed since
    is compared by content) and redoes anything partial.
    Masks, previews and mosaics that geoseg wrote are left out of folders and globs.
    Exit status 1 when any raster failed; the others still complete. With --workers or
    --scheduler the rasters' chunks run on a dask.distributed cluster (every worker must see
    the inputs and the model).
    """
    from geoseg.cli import _may_run_keras
    from geoseg.cli.segment import _bar, _client
    from geoseg.workflows.survey import survey as run_survey

    check_cluster_options(workers, scheduler)
    options = {k: v for k, v in {"bands": bands, "normalization": normalize, "chunk": chunk, "sieve": sieve or None,
                                 "preview": None if preview else False,
                                 # the default left out, as the manifest's options held it before (no rerun)
                                 "resample": None if resample else False}.items() if v is not None}
    keras = _may_run_keras("survey", [] if model is None else ["-m", str(model)])
    verbosity = (click.get_current_context().find_root().obj or {}).get("verbosity", 0)
    with fail_cleanly(), _client(workers, scheduler, keras, verbosity) as client, \
            _bar("survey", quiet, named=True) as progress:
        result = run_survey(inputs, output_dir, model=model, vector=vector, jobs=jobs, progress=progress,
                            **({"client": client} if client is not None else {}), **options)
    if as_json:
        emit_json(result.to_dict())
    elif not quiet:
        kept = ""
        if result.kept:  # their masks are an earlier run's: "done" said they were segmented again
            changes = sorted({c.replace("preview ", "previews ") for e in result.kept for c in e["switched"]})
            kept = f"{len(result.kept)} kept (the earlier run's masks; {', '.join(changes) or 'nothing'}), "
        click.echo(f"{len(result.done)} done, {kept}{len(result.skipped)} skipped (already done), "
                   f"{len(result.failed)} failed", err=True)
    if not as_json:  # failures even with --quiet: exit status 1 and not a word said why
        for entry in result.failed:
            click.echo(f"  failed: {entry['error']}", err=True)
    if not as_json and not quiet and "report" in result.outputs:
        click.echo(f"report: {result.outputs['report']}"
                   + (" (the earlier run's: no raster of this one was segmented)" if result.earlier_outputs else ""),
                   err=True)
    if result.failed:
        raise SystemExit(1)
