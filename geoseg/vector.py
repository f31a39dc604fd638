"""Mask -> polygons with class, name and area, written atomically as GeoPackage."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from geoseg.raster import NODATA

__all__ = ["polygonize"]

log = logging.getLogger(__name__)


def polygonize(mask_path: str | os.PathLike, out_path: str | os.PathLike, classes: Sequence) -> int:
    """Turn a class mask into one polygon per connected region of a class; return the count.

    Attributes: ``class_id``, ``class_name``, ``area_m2`` (planar in projected CRSs,
    geodesic in geographic ones; None without a CRS). Nodata (255) is skipped.

    Notes
    -----
    This first version polygonises the whole mask in one pass, so it holds the
    uint8 mask in memory (a quarter of an RGB input of the same size).
    """
    import geopandas as gpd
    import shapely
    from rasterio.features import shapes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(mask_path) as ds:
            mask = ds.read(1)
            transform, crs = ds.transform, ds.crs
    names = {c.id: c.name for c in classes}
    geoms, ids = [], []
    for geom, value in shapes(mask, mask=mask != NODATA, transform=transform, connectivity=4):
        geoms.append(shapely.geometry.shape(geom))
        ids.append(int(value))
    frame = gpd.GeoDataFrame(
        {"class_id": np.array(ids, np.uint8), "class_name": [names.get(i, str(i)) for i in ids]},
        geometry=geoms,
        crs=crs,
    )
    frame["area_m2"] = _areas_m2(frame)
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.stem}.tmp{out_path.suffix}")
    tmp.unlink(missing_ok=True)
    frame.to_file(tmp, driver="GPKG", layer=out_path.stem, engine="pyogrio")
    os.replace(tmp, out_path)
    log.info("wrote %d polygons to %s", len(frame), out_path)
    return len(frame)


def _areas_m2(frame) -> list[float | None]:
    if frame.crs is None or len(frame) == 0:
        return [None] * len(frame)
    if frame.crs.is_geographic:
        from pyproj import Geod

        geod = Geod(ellps="WGS84")
        return [abs(geod.geometry_area_perimeter(g)[0]) for g in frame.geometry]
    factor = frame.crs.axis_info[0].unit_conversion_factor if frame.crs.axis_info else 1.0
    return list(frame.geometry.area * factor**2)
