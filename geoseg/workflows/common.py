"""Small helpers the workflows share: model checks, reading vector layers, writing tables and output sets atomically."""

from __future__ import annotations

import csv
import json
import re
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from geoseg.errors import GeosegError, InputError, OutputError
from geoseg.files import move_all, replaced_atomically, signals_held, whitespace_note
from geoseg.raster import staging_dir

log = logging.getLogger(__name__)


class ThreadWarnings(logging.Handler):
    """Collects the warnings geoseg logs in the thread that made it (a web job's; others run beside it),
    leaving out the loggers named in `leave_out` (the server's own)."""

    def __init__(self, leave_out: tuple[str, ...] = ()) -> None:
        import threading

        super().__init__(logging.WARNING)
        self.thread, self.messages, self.leave_out = threading.get_ident(), [], leave_out

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and not (self.leave_out and record.name.startswith(self.leave_out)):
            self.messages.append(record.getMessage())


@contextmanager
def warnings_heard() -> Iterator[list[str]]:
    """The warnings geoseg logs in this thread within the block, for a report's own list: a flood map of a
    pre-event image in float reflectance (its 'receded water' 82% of the scene) said so on stderr only, and
    flood.md, flood.json and --json read as if all were well."""
    from geoseg.raster import said_once_per_run

    caught = ThreadWarnings()
    logger = logging.getLogger("geoseg")
    logger.addHandler(caught)
    try:
        with said_once_per_run():
            yield caught.messages
    finally:
        logger.removeHandler(caught)

__all__ = ["check_layer_overlaps", "class_card", "read_layer", "segment_paths", "staged_outputs", "write_csv",
           "write_json", "write_text", "zone_name"]


def class_card(model, *, what: str):
    """The card of `model`, refused if the model draws unlabeled regions: `what` needs classes."""
    from geoseg.models.registry import get_segmenter, resolve_model

    card = get_segmenter(resolve_model(model)).card
    if card.output == "regions":
        raise InputError(f"model {card.name} draws unlabeled regions, not classes, and {what} needs classes: use "
                         "a land-cover model such as the default landcover-unet (geoseg segment --vector turns "
                         "the regions into polygons).")
    return card


def zone_name(frame, field: str | None, z: int) -> str | int | None:
    """A zone's (or an AOI's) name in the tables: its value of `field` (None where that is empty: it read "nan"),
    or its feature id in the layer (`read_layer`'s index: the fid as OGR, pyogrio and QGIS report it; a
    GeoPackage's count from 1 and keep the gaps of deleted features), so that the table joins back to the layer."""
    import pandas as pd

    if not field:
        return int(frame.index[z])
    value = frame[field].iloc[z]
    return None if pd.isna(value) else str(value)


def read_layer(path: str | os.PathLike, *, what: str):
    """Read a vector layer (any format pyogrio reads) of polygons, with a clear error.

    A file of several layers needs one named, as QGIS writes it: ``zones.gpkg|layername=districts``.
    Features without a geometry (NULL or empty, common in edited layers) are left out with a warning.
    """
    import geopandas as gpd
    import pyogrio

    text, _, option = str(path).partition("|")
    path = Path(text)
    if not path.exists():
        note = whitespace_note(text)
        raise InputError(f"{repr(text) if note else path}: no such {what} layer. Check the path.{note}")
    layer = None
    if option:
        key, _, layer = option.partition("=")
        if key.strip().lower() != "layername" or not layer:
            raise InputError(f"{path}: after '|' name a layer as 'layername=NAME'. Received: {option!r}")
    try:
        layers = [name for name, kind in pyogrio.list_layers(path) if kind is not None]
        if layer is not None and layer not in layers:
            raise InputError(f"{path} has no {what} layer {layer!r}; its layers: {', '.join(layers) or 'none'}.")
        if layer is None and len(layers) > 1:
            raise InputError(f"{path} holds {len(layers)} layers ({', '.join(layers)}); name the {what} layer, "
                             f"e.g. '{path}|layername={layers[0]}'.")
        # indexed by the features' ids: rows were numbered 0, 1, ... by position, which matched neither the fids
        # of the layer (a GeoPackage's start at 1, with gaps where features were deleted) nor those of the zones
        # layer written back, so the table could not be joined to either
        frame = gpd.read_file(path, engine="pyogrio", layer=layer, fid_as_index=True)
        frame = _integers_kept(frame, pyogrio.read_info(path, layer=layer))
    except InputError:
        raise
    except Exception as exc:  # pyogrio raises DataSourceError, DataLayerError, ...
        from geoseg.models.labels import layer_failure

        raise InputError(f"{path}: cannot read this {what} layer ({layer_failure(path, exc)}).") from None
    if len(frame) == 0:
        raise InputError(f"{path}: the {what} layer has no features.")
    empty = (frame.geometry.isna() | frame.geometry.is_empty).to_numpy()
    if empty.all():
        raise InputError(f"{path}: none of the {len(frame)} features of the {what} layer has a geometry.")
    if empty.any():  # sorted(geom_type) of a NULL geometry was a TypeError traceback
        log.warning("%s: left out %d of the %d features of the %s layer: they have no geometry",
                    path, empty.sum(), len(frame), what)
        frame = frame[~empty]  # the index keeps each feature's fid in the layer: rows are numbered by it
    if not frame.geom_type.isin(["Polygon", "MultiPolygon"]).all():
        raise InputError(f"{path}: the {what} layer must hold polygons; found {sorted(set(frame.geom_type))}.")
    frame = _valid_polygons(frame, path, what)
    if frame.crs is None:
        raise InputError(f"{path}: the {what} layer has no CRS; assign one (e.g. in QGIS) and retry.")
    return frame


def _integers_kept(frame, info: dict):
    """`frame` with its integer fields that hold a NULL as pandas' nullable integers: pandas reads them as floats,
    so that a district code field with one empty value named the rows '1.0', '4.0' (not the layer's '1', '4') and
    the zones layer written back had the field as Real."""
    import pandas as pd

    for name, dtype in zip(info.get("fields", ()), info.get("dtypes", ())):
        if (str(dtype).startswith(("int", "uint")) and name in frame.columns
                and pd.api.types.is_float_dtype(frame[name].dtype)):
            frame[name] = frame[name].astype("Int64" if str(dtype) in ("int64", "uint32", "uint64") else "Int32")
    return frame


def _valid_polygons(frame, path: Path, what: str):
    """`frame` with its invalid polygons (self-intersecting, a hole outside its shell, ...) read as
    shapely.make_valid repairs them, as label layers are, with a warning. A bow-tie area of interest ran the whole
    flood map and then failed in the table with GEOS's "TopologyException: side location conflict" traceback."""
    import numpy as np
    import shapely

    geometries = np.asarray(frame.geometry.values, object)
    invalid = ~shapely.is_valid(geometries)
    if not invalid.any():
        return frame
    frame = frame.copy()
    geometries = geometries.copy()
    geometries[invalid] = shapely.make_valid(geometries[invalid], method="structure", keep_collapsed=False)
    frame[frame.geometry.name] = geometries
    collapsed = shapely.is_empty(geometries)  # a polygon of no area (its outline folded onto itself) repairs to
    # nothing: it was counted as a zone "outside" the raster, with a row of 0 pixels (h146)
    if collapsed.all():
        raise InputError(f"{path}: every polygon of the {what} layer has no area (its outline folds onto itself); "
                         "draw them again.")
    whole = len(frame)  # both warnings count the layer's polygons, not those left after the first (h153)
    if collapsed.any():
        log.warning("%s: left out %d of the %d polygons of the %s layer: they have no area (their outline folds onto "
                    "itself)", path, int(collapsed.sum()), whole, what)
        frame = frame[~collapsed]
        invalid = invalid[~collapsed]
    if not invalid.any():
        return frame
    log.warning("%s: %d of the %d polygons of the %s layer are invalid (self-intersecting, a hole outside its "
                "shell, ...); they are read as shapely.make_valid repairs them. QGIS's Fix Geometries repairs the "
                "layer itself.", path, int(invalid.sum()), whole, what)
    return frame


def check_layer_overlaps(frame, raster: str | os.PathLike, *, what: str) -> None:
    """Refuse a zones or AOI layer none of whose polygons touches `raster` (a wrong layer or CRS
    gave rows of 0 pixels); warn about the polygons outside it. Before anything is segmented."""
    import shapely

    from geoseg.raster import inspect_raster
    from geoseg.vector import onto_raster

    info = inspect_raster(raster)
    crs = info.map_georeferencing()[1]
    if crs is None:
        raise InputError(f"{info.path} has no CRS, so the {what} layer cannot be placed on it. "
                         "Georeference the raster first.")
    footprint = shapely.Polygon(info.map_corners())
    geoms = onto_raster(frame.geometry, info)
    inside = geoms.intersects(footprint).to_numpy()
    if not inside.any():
        bounds = ", ".join(f"{v:.10g}" for v in geoms.total_bounds)  # .6g printed 5173001 and 5173099 alike
        raster_bounds = ", ".join(f"{v:.10g}" for v in footprint.bounds)
        raise InputError(f"none of the {len(frame)} polygon(s) of the {what} layer overlaps {info.path}: in {crs} "
                         f"the layer spans ({bounds}) and the raster ({raster_bounds}). Check the layer and its CRS.")
    if not inside.all():
        log.warning("%d of the %d polygons of the %s layer lie outside %s: their rows count 0 pixels",
                    (~inside).sum(), len(frame), what, info.path)


def _replace(path: Path, write) -> None:
    try:
        with replaced_atomically(path) as tmp:
            write(tmp)
    except GeosegError:  # an OutputError (an OSError too) names the path and the fix already: a folder there
        raise
    except OSError as exc:  # a full disk was an OSError traceback, from scene, survey and evaluate --markdown
        import errno

        fix = ("Check the permissions of the file and its folder (an immutable file: chattr -i)"
               if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "Free some disk space")
        raise OutputError(f"{path}: could not be written ({exc.strerror or exc}). {fix} or pick another output "
                          "folder; nothing was left at that path.") from None


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """`value` as a spreadsheet reads it as text: a text that starts with = + - @, a tab or a carriage return
    (a zone named ``=HYPERLINK(...)`` or ``@SUM(A1)``) gets a leading ``'``, as OWASP's advice on CSV injection
    has it, or Excel and LibreOffice open it as a formula. Numbers, and texts that are a plain number such as a
    district code ``-12``, are left as they are: a spreadsheet reads them as that number, nothing runs."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """Write dict rows as CSV with a header, atomically; texts that a spreadsheet would run as a formula are
    written with a leading ``'`` (`csv_cell`)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:  # class names and m² in any locale
            fields = list(rows[0]) if rows else []
            csv.writer(f).writerow([csv_cell(str(name)) for name in fields])  # class names come from model cards
            csv.DictWriter(f, fieldnames=fields).writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)

    _replace(Path(path), write)


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> None:
    """Write JSON, indented unless `indent` is None, atomically."""
    _replace(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=indent, default=str) + "\n"))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text, atomically."""
    _replace(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))  # "m²" failed in a C locale


def segment_paths(folder: Path, image: str, options: dict[str, Any]) -> dict[str, Path]:
    """The files ``segment(image, folder, preview=False, **options)`` writes: the mask and what `options` add."""
    from geoseg.pipeline import output_paths
    from geoseg.raster import raster_stem

    flags = {name: bool(options.get(name)) for name in ("confidence", "probabilities", "vector")}
    return output_paths(folder, raster_stem(image), preview=False, **flags)


@contextmanager
def staged_outputs(out_dir: Path, *, last: Sequence[Path] = (), before_moves=None,
                   refuse_existing: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield a hidden folder in `out_dir` to write every output of one run into; move them into place at the end.

    Files and subfolders are written in the yielded folder as they will lie in `out_dir`. Only when
    the block ends are the files moved (``os.replace``: a rename, same file system) to the same
    relative paths in `out_dir`, those of `last` (a report that marks the set complete) last. On an
    error, Ctrl-C or SIGTERM inside the block the folder is removed and `out_dir` holds nothing new,
    so the same command runs again without --overwrite. `before_moves()` (removing an earlier
    run's leftovers, returning the files to remove with the moves) runs just before them, both with signals held. The folder is a
    `staging_dir`: one left by a killed process is removed by the next run into `out_dir`. A file at one of
    `refuse_existing` (a run without --overwrite: its outputs) that appeared meanwhile stops the moves.
    """
    from geoseg.pipeline import log_removed

    with staging_dir(out_dir) as tmp:
        try:
            yield tmp
        except GeosegError as exc:  # "out/.geoseg-vm-11042-swg00m1u/x_mask.tif could not be written": a path never asked for
            raise type(exc)(str(exc).replace(f"{tmp}{os.sep}", f"{out_dir}{os.sep}")) from None
        order = {tmp / Path(path).relative_to(out_dir): i for i, path in enumerate(last)}
        staged = sorted((p for p in tmp.rglob("*") if p.is_file()), key=lambda p: order.get(p, -1))
        with signals_held():  # Ctrl-C waits for the last move
            # an earlier run's outputs that this run does not write, removed with the moves (whole or not at all)
            stale = before_moves() if before_moves is not None else None
            log_removed(move_all([(path, out_dir / path.relative_to(tmp)) for path in staged], staging=tmp,
                                 refuse_existing=refuse_existing, remove=stale or ()))


def beyond_edge(mask: Path, frame) -> list[float] | None:
    """m² of each shape of `frame` past the edge of raster `mask` (none of its pixel centres there): counted as
    not covered. None for a raster without a CRS, or shapes without one."""
    import geopandas as gpd
    import shapely

    from geoseg.raster import inspect_raster
    from geoseg.vector import _measure, onto_raster

    info = inspect_raster(mask)
    crs = info.map_georeferencing()[1]
    if crs is None or frame.crs is None:
        return None
    footprint = shapely.Polygon(info.map_corners())
    outside = [None if g is None or g.is_empty else g.difference(footprint) for g in onto_raster(frame.geometry, info)]
    parts = gpd.GeoDataFrame(geometry=[shapely.Polygon() if g is None else g for g in outside], crs=crs)
    measured, _ = _measure(parts, footprint.bounds)
    return [0.0 if m is None or m < 1e-3 else float(m) for m in measured]  # float dust of a shape inside


def zone_table(mask: Path, frame, field: str | None, classes: Sequence[tuple[int, str]], *, name: str,
               km2: bool = False) -> list[dict[str, Any]]:
    """A row per shape of `frame` (a scene's zones, a flood's areas of interest), named in column `name`: its
    pixels of a class, each class's m² (and km² with `km2`) and share of the part the mask covers, for `classes`
    as (id, column key), and how much of the shape the mask covers (`zone_coverage`). Where the mask has no class
    (nodata: cloud, outside a pre-event image, or beyond the raster's edge) a class's area is unknown (None): a
    zone under cloud read 0 m² of water, as a dry one does."""
    from geoseg.raster import NODATA, shares
    from geoseg.vector import zonal_composition

    pixels, areas = zonal_composition(mask, frame, NODATA + 1)  # the nodata value counted too
    beyond = beyond_edge(Path(mask), frame)  # m² of each shape past the raster's edge, None without a CRS
    ids = [i for i, _ in classes]
    rows = []
    for z in range(len(frame)):
        covered = int(sum(pixels[z, i] for i in ids))
        share = shares([int(pixels[z, i]) for i in ids], None if areas is None else [float(areas[z, i]) for i in ids])
        row: dict[str, Any] = {name: zone_name(frame, field, z), "pixels": covered}
        for (i, key), s in zip(classes, share):
            unknown = areas is None or not covered
            # m² too with km²: an area of interest of a drone survey (0.25 m² of water) was 0.0 km² at 100%
            row[f"{key}_m2"] = None if unknown else round(float(areas[z, i]), 3)
            if km2:
                row[f"{key}_km2"] = None if unknown else round(float(areas[z, i]) / 1e6, 6)
            row[f"{key}_pct"] = s
        rows.append(row | zone_coverage(pixels, areas, beyond, z, ids))
    return rows


def zone_coverage(pixels, areas, beyond: list[float] | None, z: int, ids: list[int]) -> dict[str, Any]:
    """``nodata_pixels``, ``nodata_m2`` and ``coverage_pct`` of zone `z`, from `vector.zonal_composition`'s
    counts of classes `ids` and of the nodata value, and `beyond_edge`'s m² past the raster's edge. A zone under
    cloud read 0 m² of water, as a dry one does."""
    from geoseg.raster import NODATA

    covered, unknown = int(sum(pixels[z, i] for i in ids)), int(pixels[z, NODATA])
    row: dict[str, Any] = {"nodata_pixels": unknown}
    if areas is None or beyond is None:  # no m²: the pixels the map holds
        mapped, unmapped = float(covered), float(unknown)
        row["nodata_m2"] = None
    else:
        mapped = float(sum(areas[z, i] for i in ids))
        unmapped = float(areas[z, NODATA]) + beyond[z]
        row["nodata_m2"] = round(unmapped, 3)
    row["coverage_pct"] = coverage_pct(mapped, unmapped)
    return row


def coverage_pct(mapped: float, unmapped: float) -> float | None:
    """The share of `mapped` in percent, to 0.01; 99.99 at most where anything is unmapped (2 px missing read
    100.0); None where there is nothing."""
    if not mapped + unmapped:
        return None
    coverage = 100 * mapped / (mapped + unmapped)
    return round(min(coverage, 99.99) if unmapped > 0 else coverage, 2)


def same_field(columns, name: str | None) -> str | None:
    """The column of `columns` that `name` names: itself, or the one spelled in the other Unicode form (a field
    'Bezirk_ü' typed on one system was "no field 'Bezirk_ü'; fields are Bezirk_ü" on a layer from another);
    `name` unchanged where none is."""
    import unicodedata

    if name is None or name in columns:
        return name
    alike = [c for c in columns if isinstance(c, str) and unicodedata.normalize("NFC", c) == unicodedata.normalize(
        "NFC", name)]
    return alike[0] if len(alike) == 1 else name


def md_cell(text: Any) -> str:
    """`text` as one cell of a Markdown table: '|' and Markdown's marks escaped, line breaks as blanks. An area of
    interest named 'Nord | Süd' moved every number of its row one column along, and '*' made emphasis."""
    text = " ".join(str(text).splitlines())
    for mark in "\\|*`<":  # '_' inside a name (tiny-fcn_tta-flips) makes no emphasis, and stays as it is
        text = text.replace(mark, "\\" + mark)
    return text
