"""`geoseg scene`: land-cover composition of a raster, overall and per zone."""

from __future__ import annotations

import click

from geoseg.cli.options import (resample_option, right_aligned, BandsType, PathParam, area_texts, chunk_option, emit_json, fail_cleanly, normalize_option, only_with,
                                sieve_option)

__all__ = ["scene"]


@click.command()
@click.argument("input", type=PathParam(dir_okay=False))
@click.option("-o", "--output-dir", required=True, type=PathParam(), help="Folder for the outputs.")
@click.option("-m", "--model", default=None, metavar="NAME|PATH", help="Model; default landcover-unet.")
@click.option("--bands", type=BandsType(), default=None, metavar="1,2,3", help="Input bands in model order.")
@normalize_option
@resample_option
@chunk_option
@sieve_option
@click.option("--zones", type=PathParam(dir_okay=False), default=None,
              help="Polygon layer of zones (districts, parcels) in any CRS; in a file of several layers name one: 'city.gpkg|layername=districts'.")
@click.option("--zone-field", default=None, help="Zone attribute that names rows (column zone) in the tables; default the feature's fid in the layer (a GeoPackage's count from 1, a shapefile's from 0), to join the CSV to the layer on.")
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the composition and outputs.")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary.")
def scene(input, output_dir, model, bands, normalize, resample, chunk, sieve, zones, zone_field, overwrite, as_json, quiet):
    """Area and share (of the valid area) of every class in INPUT; with --zones, per zone too.

    Writes the mask, STEM_composition.csv, STEM_scene.png (map with legend and
    zone outlines), STEM_scene.json and, with zones, STEM_zones.gpkg (zones with
    CLASS_m2 and CLASS_pct attributes) and STEM_zones.csv.
    """
    from geoseg.cli.segment import _bar
    from geoseg.workflows.scene import scene as run_scene

    only_with("zone_field", "--zones", zones is not None)  # exit 1 from the Python API's check
    with fail_cleanly(), _bar(input, quiet) as progress:
        result = run_scene(input, output_dir, zones=zones, zone_field=zone_field, overwrite=overwrite,
                           model=model, bands=bands, chunk=chunk, sieve=sieve, progress=progress,
                           **({"normalization": normalize} if normalize else {}),
                           **({} if resample else {"resample": False}))
    if as_json:
        emit_json(result.to_dict())
    elif not quiet:
        areas = area_texts([row["area_m2"] for row in result.composition])
        for row, area in zip(result.composition, areas):
            click.echo(f"{right_aligned(row['class'], 12)}: {row['share_pct']:5.1f}%{'  ' + area if area else ''}", err=True)
        if result.coverage_pct not in (None, 100.0):  # shares are of the part with data: say how much that is
            click.echo(f"{'(no data)':>12}: the shares are of the {result.coverage_pct}% of the raster with data",
                       err=True)
        click.echo(f"map: {result.outputs['map']}", err=True)
