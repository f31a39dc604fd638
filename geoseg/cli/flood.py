"""`geoseg flood`: water after an event, and what is newly flooded given an image from before."""

from __future__ import annotations

import click

from geoseg.cli.options import (right_aligned, BandsType, PathParam, area_texts, chunk_option, emit_json, fail_cleanly, normalize_option, only_with,
                                resample_option, sieve_option)

__all__ = ["flood"]


@click.command()
@click.argument("post", type=PathParam(dir_okay=False))
@click.option("-o", "--output-dir", required=True, type=PathParam(), help="Folder for the outputs.")
@click.option("--pre", type=PathParam(dir_okay=False), default=None,
              help="Image from before the event (any grid or CRS, overlapping POST; aligned onto it).")
@click.option("--aoi", type=PathParam(dir_okay=False), default=None,
              help="Polygons of areas of interest (any CRS): flooded km² and share of each; in a file of several "
                   "layers name one: 'towns.gpkg|layername=towns'.")
@click.option("--aoi-field", default=None, help="AOI attribute that names rows in the tables (default: the feature's fid in the layer).")
@click.option("--method", type=click.Choice(["model", "ndwi"]), default="model", show_default=True,
              help="Water from a model's water class, or from NDWI (needs a NIR band).")
@click.option("-m", "--model", default=None, metavar="NAME|PATH", help="Model for --method model.")
@click.option("--water-class", default="water", show_default=True, help="Name of the model's water class.")
@click.option("--bands", type=BandsType(), default=None, metavar="1,2,3",
              help="Input bands in the model's order (--method model); also the map's.")
@normalize_option
@resample_option  # a coarse raster's refusal sent flood here too, which had no such option (h166)
@chunk_option
@sieve_option
@click.option("--green-band", type=click.IntRange(min=1), default=2, show_default=True, help="Green band for NDWI.")
@click.option("--nir-band", type=click.IntRange(min=1), default=4, show_default=True, help="NIR band for NDWI.")
@click.option("--ndwi-threshold", default="otsu", show_default=True, metavar="otsu|VALUE",
              help="NDWI above this is water; 'otsu' picks it from the image's histogram (with --pre, from both "
                   "images' together, where both show the ground).")
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: areas, AOI table, outputs.")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary.")
def flood(post, output_dir, pre, aoi, aoi_field, method, model, water_class, bands, normalize, resample, chunk, sieve,
          green_band, nir_band, ndwi_threshold, overwrite, as_json, quiet):
    """Map water in POST; with --pre, flooded, permanent and receded water.

    Writes flood.tif (class mask on POST's grid), flood_polygons.gpkg, flood.png
    (map with legend), flood.json and flood.md (report) in OUTPUT_DIR, and the
    per-image masks under post/ and pre/.
    """
    from click.core import ParameterSource

    from geoseg.cli.segment import _bar
    from geoseg.workflows.flood import flood as run_flood

    only_with("aoi_field", "--aoi", aoi is not None)  # exit 1 from the Python API's check
    ctx = click.get_current_context()  # options of the other method were ignored without a word
    given = [f"--{name.replace('_', '-')}" if name not in ("model", "resample") else
             "-m/--model" if name == "model" else f"--{'' if resample else 'no-'}resample" for name in
             (("model", "water_class", "bands", "normalize", "resample", "chunk") if method == "ndwi"
              else ("green_band", "nir_band", "ndwi_threshold"))
             if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
    if given:
        raise click.UsageError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to --method "
                               f"{'model' if method == 'ndwi' else 'ndwi'}; this run uses --method {method}.")
    if ndwi_threshold != "otsu":
        try:
            ndwi_threshold = float(ndwi_threshold)
        except ValueError:
            ndwi_threshold = float("nan")
        if not -1 <= ndwi_threshold <= 1:  # 2 was exit 1 in the Python API's words, abc a usage error (2)
            raise click.BadParameter("use 'otsu' or a number between -1 and 1", param_hint="--ndwi-threshold")
    with fail_cleanly(), _bar(post, quiet) as progress:
        result = run_flood(post, output_dir, pre=pre, aoi=aoi, aoi_field=aoi_field, method=method, model=model,
                           water_class=water_class, green_band=green_band, nir_band=nir_band,
                           ndwi_threshold=ndwi_threshold, overwrite=overwrite, progress=progress,
                           **{k: v for k, v in (("bands", bands), ("normalization", normalize), ("chunk", chunk), ("sieve", sieve))
                              if v}, **({} if resample else {"resample": False}))
    if as_json:
        emit_json(result.to_dict())
        return
    if quiet:
        return
    click.echo(f"water from {result.water_source}", err=True)
    for c, area in zip(result.classes, area_texts([c["area_m2"] for c in result.classes], missing="n/a (no CRS)")):
        click.echo(f"  {right_aligned(c['name'], 16)}: {area.strip()}", err=True)
    if result.nodata_m2:
        click.echo(f"  {'(no data)':>16}: {area_texts([result.nodata_m2])[0].strip()}, in no class", err=True)
    click.echo(f"report: {result.outputs['md']}", err=True)
