"""`geoseg vectorize`: a class mask in, a GIS polygon layer out."""

from __future__ import annotations

import click

from geoseg.cli.options import FiniteRange, PathParam, emit_json, fail_cleanly

__all__ = ["vectorize"]


@click.command()
@click.argument("mask", type=PathParam(dir_okay=False))
@click.option("-o", "--output", required=True, type=PathParam(dir_okay=False),
              help="Layer to write; its extension picks the format: .gpkg, .geojson (or .json), .fgb or .parquet.")
@click.option("--classes", default=None, metavar="NAME,...",
              help="Class names or ids to keep, comma-separated. Default: all.")
@click.option("--min-area", type=FiniteRange(min=0), default=0.0, show_default=True, metavar="M2",
              help="Polygons smaller than this many m² are specks (see --specks); also after --simplify. A mask "
                   "without a CRS (a PNG's) counts pixels.")
@click.option("--specks", type=click.Choice(["drop", "merge"]), default="drop", show_default=True,
              help="Drop specks, or merge each into the neighbour sharing its longest edge.")
@click.option("--simplify", type=FiniteRange(min=0), default=0.0, show_default=True, metavar="M",
              help="Simplification tolerance in metres (Visvalingam-Whyatt: vertices whose triangle is under its "
                   "square go, so edges can move a few times it); shared edges stay shared (no gaps or overlaps). "
                   "In degrees and Web Mercator, ground metres at the layer's centre, north-south (east-west in "
                   "degrees it is finer, by the cosine of the latitude). A mask without a CRS (a PNG's, or a "
                   "geotransform without one) takes pixels, as --min-area does.")
@click.option("--to-crs", default=None, metavar="CRS", help="Reproject the layer, e.g. EPSG:4326.")
@click.option("--confidence", type=PathParam(dir_okay=False), default=None,
              help="Confidence raster to average per polygon (as written by segment --confidence).")
@click.option("--block", type=click.IntRange(min=16), default=2048, show_default=True, metavar="PX",
              help="Block size; blocks are polygonised in parallel and merged across their edges.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: path, polygon counts, seconds, pixels/s, peak memory.")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary.")
def vectorize(mask, output, classes, min_area, specks, simplify, to_crs, confidence, block, overwrite, as_json, quiet):
    """Turn class mask MASK into polygons with class, area (m²), perimeter (m) and confidence.

    Areas are planar in projected CRSs (UTM), geodesic in geographic ones and in
    projections that misstate areas by over 1% (Web Mercator). A QGIS
    style (.qml) is written beside the layer, unless a raster's style of that name
    is there (name the layer MASK_polygons.gpkg rather than MASK.gpkg), or that of a
    layer of that name in another format with other classes.

    \b
    Example:
      geoseg vectorize out/scene_mask.tif -o water.gpkg --classes water --min-area 100 --simplify 1
    """
    from geoseg.cli.segment import _bar
    from geoseg.vector import vectorize as run_vectorize

    keep = None if classes is None else [c.strip() for c in classes.split(",") if c.strip()]
    if specks == "merge" and not min_area:  # merged nothing, without a word
        raise click.BadParameter("merges the polygons under --min-area M2, which is 0; give --min-area.",
                                 param_hint="--specks merge")
    if keep == []:  # "keep nothing": an empty layer, exit 0 ("$CLASSES" of an unset variable)
        raise click.BadParameter(f"{classes!r} names no class; give names or ids (water,vegetation or 1,2), or leave "
                                 "--classes out for every class.", param_hint="--classes")
    with fail_cleanly(), _bar(mask, quiet) as progress:  # a mask of 445,000 polygons took 70 s without a word
        result = run_vectorize(mask, output, keep=keep, min_area=min_area, specks=specks, simplify=simplify, to_crs=to_crs,
                               confidence=confidence, block=block, overwrite=overwrite, progress=progress)
    if as_json:
        emit_json(result.to_dict())
    elif not quiet:
        plural = "" if result.polygons == 1 else "s"
        click.echo(f"{result.polygons} polygon{plural} -> {result.path} ({result.seconds:.1f} s)", err=True)
