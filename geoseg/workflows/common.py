"""Small helpers the workflows share: reading vector layers, writing tables atomically."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

from geoseg.errors import InputError

__all__ = ["read_layer", "write_csv", "write_json", "write_text"]


def read_layer(path: str | os.PathLike, *, what: str):
    """Read a vector layer (any format pyogrio reads) of polygons, with a clear error."""
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such {what} layer. Check the path.")
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as exc:  # pyogrio raises DataSourceError, DataLayerError, ...
        raise InputError(f"{path}: cannot read this {what} layer ({exc}).") from None
    if len(frame) == 0:
        raise InputError(f"{path}: the {what} layer has no features.")
    if not frame.geom_type.isin(["Polygon", "MultiPolygon"]).all():
        raise InputError(f"{path}: the {what} layer must hold polygons; found {sorted(set(frame.geom_type))}.")
    if frame.crs is None:
        raise InputError(f"{path}: the {what} layer has no CRS; assign one (e.g. in QGIS) and retry.")
    return frame


def _replace(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """Write dict rows as CSV with a header, atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
            writer.writeheader()
            writer.writerows(rows)

    _replace(Path(path), write)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write indented JSON, atomically."""
    _replace(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text, atomically."""
    _replace(Path(path), lambda tmp: tmp.write_text(text))
