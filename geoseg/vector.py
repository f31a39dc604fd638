"""Mask -> polygons, block by block in parallel, merged across block edges, simplified, measured."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import string
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from geoseg.errors import GeosegError, InputError, OutputError, catch_warnings
from geoseg.files import LOW_SPACE, refuse_folders, refuse_stray_whitespace, refuse_unwritable, replaced_atomically, write_advice
from geoseg.raster import (GROUND_TOLERANCE, NODATA, RasterInfo, areal_scales, first_line, gdal_edit, inspect_raster, open_quietly, raster_stem, same_raster,
                           reading_pixels)

__all__ = [
    "VECTOR_FORMATS",
    "VectorResult",
    "mask_classes",
    "polygonize_block",
    "vectorize",
    "qml_text",
    "write_qml",
    "zonal_composition",
]

log = logging.getLogger(__name__)

# rasterio's shapes() reads the transform of the in-memory raster it makes of the array, which has none, and
# warns of that whatever transform it is given. A catch_warnings() around it is not thread-safe: in
# the threads that polygonise the blocks the warning came through now and then (3 runs in 10). Only that
# message from rasterio.features is silenced, for the process, as it concerns no dataset of the user's.
warnings.filterwarnings("ignore", message="Dataset has no geotransform", category=NotGeoreferencedWarning,
                        module="rasterio.features")
# and of the first block's transform, the identity (pixel coordinates of the whole mask, which start there)
warnings.filterwarnings("ignore", message="The given matrix is equal to Affine.identity", category=NotGeoreferencedWarning,
                        module="rasterio.features")

# GeoPackage 1.2, not the 1.4 of pyogrio's GDAL 3.12: GDAL 3.6 (Debian 12's, under its QGIS) warned on every open
# of a 1.4 file that it "may only be partially supported" (h120); geoseg's layers use nothing newer
GPKG_OPTIONS = {"VERSION": "1.2"}


def dataset_options(driver: str) -> dict[str, str]:
    """The creation options of a new vector file of `driver`."""
    return dict(GPKG_OPTIONS) if driver == "GPKG" else {}


VECTOR_FORMATS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf",
                  ".parquet": "GeoParquet"}
DEFAULT_BLOCK = 2048
STREAM_BATCH = 100_000  # polygons per batch written while the blocks are polygonised


@dataclass
class VectorResult:
    """What `vectorize` wrote: path, polygon count per class, time, the mask's pixels per second, peak memory."""

    path: str
    polygons: int
    per_class: dict[str, int]
    seconds: float
    pixels_per_second: float | None = None  # of the mask, as segment's results give theirs (h115)
    peak_memory_mb: float | None = None  # the process's peak so far

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, as the other results give theirs (it had none, h133)."""
        return asdict(self)

    def __str__(self) -> str:
        """A few lines for people, as `SegmentResult`'s: polygons, time, per class, the layer. ``repr()`` stays the
        dataclass's."""
        speed = [f"{self.pixels_per_second:,.0f} px/s"] if self.pixels_per_second is not None else []
        peak = [f"peak {self.peak_memory_mb:,.0f} MB"] if self.peak_memory_mb is not None else []
        lines = [f"VectorResult: {self.polygons:,} polygon{'s' if self.polygons != 1 else ''} in {self.seconds:,.1f} s"
                 + (f" ({', '.join(speed)})" if speed else "") + (f", {peak[0]}" if peak else "")]
        if self.per_class:
            lines.append("  per class: " + ", ".join(f"{name} {n:,}" for name, n in self.per_class.items()))
        lines.append(f"  layer: {self.path}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython and Jupyter
        printer.text(str(self))


def mask_classes(mask_path: str | os.PathLike) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """Class id -> (name, rgb) from a geoseg mask's metadata and colour table."""
    return _classes(*_class_tables(mask_path))


def _class_tables(mask_path: str | os.PathLike) -> tuple[dict[str, str], dict]:
    """A mask's CLASS_NAMES tag (empty for masks from elsewhere) and colour table."""
    with catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(mask_path) as ds:
            tag = ds.tags().get("CLASS_NAMES", "{}")
            try:
                colours = ds.colormap(1)
            except ValueError:
                colours = {}
    try:  # another tool's tag: a list of names was a ValueError traceback
        names = json.loads(tag)
    except ValueError:
        names = None
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not all(str(k).isdigit() and isinstance(v, str) for k, v in names.items()):
        log.warning("%s: its CLASS_NAMES tag is not geoseg's ({\"0\": \"name\", ...}); classes are named by their "
                    "ids", mask_path)
        names = {}
    return {str(k): v for k, v in names.items()}, colours


def _foreign_nodata(mask_path: str) -> tuple[int | None, bool]:
    """(the nodata value a mask declares when it is not 255, geoseg's; whether it declares one at all).

    Another declared value is nodata instead of 255: a label raster of nodata 0 gave polygons of
    class 0. A mask that declares none and holds 255 is warned about once its blocks are read (a
    road mask of 0 and 255 gave only the background's polygons)."""
    with catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(mask_path) as ds:
            declared = ds.nodata
    if declared is None or declared == NODATA or not float(declared).is_integer() or not 0 <= declared <= 255:
        return None, declared is not None
    return int(declared), True


def _classes(names: dict[str, str], colours: dict, nodata: int = NODATA) -> dict[int, tuple[str, tuple[int, int, int]]]:
    if names:
        ids = sorted(int(k) for k in names)
    else:  # a mask from elsewhere: classes are the coloured entries of its table (255 too, under another nodata)
        ids = sorted(k for k, c in colours.items() if k != nodata and c[3] > 0 and c[:3] != (0, 0, 0))
    return {i: (names.get(str(i), f"class {i}"), tuple(colours.get(i, (128, 128, 128, 255))[:3])) for i in ids}


def _present_classes(names: dict, colours: dict, present) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """A mask from elsewhere: its coloured classes and every other class it holds, named ``class N`` and
    coloured by its table where the entry is not transparent, else from geoseg's palette. A mask without a
    colour table got a style of no category (QGIS drew nothing), and a black class 0 none (drawn nowhere)."""
    from geoseg.models.card import default_color, hex_rgb

    out, taken = dict(names), [f"#{r:02X}{g:02X}{b:02X}" for _, (r, g, b) in names.values()]
    for i in map(int, present):
        if i in out:
            continue
        entry = colours.get(i)
        if entry is not None and entry[3] > 0:
            rgb = tuple(entry[:3])
        else:
            taken.append(default_color(i, taken))
            rgb = hex_rgb(taken[-1])
        out[i] = (f"class {i}", rgb)
    return dict(sorted(out.items()))


def polygonize_block(mask_path: str, window: Window, inner: tuple[bool, bool, bool, bool],
                     keep: tuple[int, ...] | None, confidence_path: str | None,
                     to_map: Affine = Affine.identity(), nodata: int | None = None) -> dict[str, Any]:
    """Polygonise one window of a mask: one polygon per 4-connected region of a class.

    Parameters
    ----------
    inner : (top, bottom, left, right)
        Which sides of the window border another block; regions touching those
        sides are flagged ``cut`` so that `vectorize` can merge them.

    Returns
    -------
    dict
        ``geometry`` (shapely array), ``class_id``, ``cut`` (bool), ``conf_sum`` and
        ``pixels`` per polygon. Whole polygons are in map coordinates (`to_map` applied);
        cut ones stay in integer pixel coordinates of the whole mask, so that the edges
        two blocks share match exactly when `vectorize` merges them. ``seams``: for the
        window's top and bottom rows and left and right columns, which cut polygon (its
        index among the cut ones, in order) each pixel belongs to, -1 for none; ``window``:
        (row, col) of its top left pixel.
    """
    import shapely
    from rasterio.features import shapes
    from scipy import ndimage

    with catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(mask_path) as ds, reading_pixels(mask_path, window):
            data = ds.read(1, window=window)
        # pixel coordinates of the whole mask: integers, so edges cut by blocks match exactly
        transform = Affine.translation(window.col_off, window.row_off)
        conf = None
        if confidence_path:
            with rasterio.open(confidence_path) as ds, reading_pixels(confidence_path, window):
                conf = ds.read(1, window=window).astype(np.float64)
    labels = np.zeros(data.shape, np.int32)
    classes = [0]
    wanted = np.unique(data[data != (NODATA if nodata is None else nodata)])  # a mask from elsewhere may declare
    # another nodata value than 255, which is then a class like any other
    if keep is not None:
        wanted = [c for c in wanted if c in keep]
    for value in wanted:
        component, count = ndimage.label(data == value)  # 4-connectivity, as GDAL's default
        labels[component > 0] = component[component > 0] + len(classes) - 1
        classes.extend([int(value)] * count)
    n = len(classes)
    pixels = np.bincount(labels.ravel(), minlength=n)
    conf_sum = np.bincount(labels.ravel(), weights=conf.ravel(), minlength=n) if conf is not None else np.zeros(n)
    border = [labels[0], labels[-1], labels[:, 0], labels[:, -1]]
    cut = np.zeros(n, bool)
    for side, is_inner in zip(border, inner):
        if is_inner:
            cut[side] = True
    coords: list = []
    ring_ends, geom_ends, ids = [0], [0], []
    for geom, label in shapes(labels, mask=labels > 0, transform=transform, connectivity=4):
        for ring in geom["coordinates"]:
            coords.extend(ring)
            ring_ends.append(len(coords))
        geom_ends.append(len(ring_ends) - 1)
        ids.append(int(label))
    ids = np.asarray(ids, np.int64)
    geoms = np.empty(0, object)
    if ids.size:  # one vectorised construction instead of a shapely object per GeoJSON dict
        xy = np.asarray(coords, np.float64)
        ring_of_vertex = np.repeat(np.arange(len(ring_ends) - 1), np.diff(ring_ends))
        polygon_of_ring = np.repeat(np.arange(len(ids)), np.diff(geom_ends))
        whole = ~cut[ids][polygon_of_ring[ring_of_vertex]]
        xy[whole] = _apply(to_map, xy[whole])
        geoms = shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy,
                                          (np.asarray(ring_ends), np.asarray(geom_ends)))
    # each border pixel's cut polygon, as an index among the block's cut polygons: `_merge_cut` joins the polygons
    # of two blocks by the pixels either side of their seam
    among_cut = np.full(n, -1, np.int32)
    among_cut[ids[cut[ids]]] = np.arange(int(cut[ids].sum()), dtype=np.int32)
    return {
        "geometry": np.asarray(geoms, object),
        "class_id": np.asarray(classes, np.int64)[ids],
        "cut": cut[ids],
        "seams": tuple(among_cut[side] for side in border),
        "window": (int(window.row_off), int(window.col_off)),
        "conf_sum": conf_sum[ids],
        "pixels": pixels[ids],
        "nodata_pixels": int((data == (NODATA if nodata is None else nodata)).sum()),
    }


def _apply(t: Affine, xy: np.ndarray) -> np.ndarray:
    """Affine `t` on (n, 2) coordinates."""
    return xy @ np.array([[t.a, t.d], [t.b, t.e]]) + np.array([t.c, t.f])


def _block_windows(width: int, height: int, block: int):
    for row in range(0, height, block):
        for col in range(0, width, block):
            window = Window(col, row, min(block, width - col), min(block, height - row))
            inner = (row > 0, row + block < height, col > 0, col + block < width)
            yield window, inner


def _merge_cut(blocks: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Union the cut polygons of `blocks` (`_cut_of` each block's result) that share an edge across a block border
    (same class); points do not join.

    Which polygons join is read from the pixels either side of each seam (`polygonize_block`'s ``seams``), not from
    the geometries: intersecting every pair of cut polygons, and unioning each group whole, took 13 of the 15 minutes
    of a textured 16384² mask, on a region that crossed the raster with 311,000 holes. A group is unioned by its
    polygons' exteriors alone (`_joined`), and keeps every hole of theirs, none of which reaches a block border."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    parts = _concat(blocks, None)
    geoms = parts["geometry"]
    n = len(geoms)
    if n == 0:
        return parts
    left, right = _seam_pairs(blocks, parts["class_id"])
    graph = coo_matrix((np.ones(len(left)), (left, right)), shape=(n, n))
    count, group = connected_components(graph, directed=False)
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    members = np.split(order, bounds)  # one array of polygon indexes per group, groups 0..count-1
    merged = np.empty(count, object)
    for i, idx in enumerate(members):
        merged[i] = geoms[idx[0]] if len(idx) == 1 else _joined(geoms[idx])
    return {
        "geometry": merged,
        "class_id": parts["class_id"][[idx[0] for idx in members]],
        "conf_sum": np.bincount(group, weights=parts["conf_sum"], minlength=count),
        "pixels": np.bincount(group, weights=parts["pixels"], minlength=count),
    }


def _seam_pairs(blocks: list[dict[str, Any]], class_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of cut polygons (indexes into all `blocks`' cut polygons, in order) that have pixels of one class
    either side of a seam: the polygons of a region that block borders cut up."""
    offsets = np.cumsum([0] + [len(b["geometry"]) for b in blocks[:-1]])
    at = {b["window"]: (b, int(offset)) for b, offset in zip(blocks, offsets)}
    n = len(class_id)
    left, right = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for block, offset in zip(blocks, offsets):
        (row, col), (top, bottom, west, east) = block["window"], block["seams"]
        # the block to the right (same rows) meets this one's right column with its left one; the block below
        # (same columns) this one's bottom row with its top one. Blocks that meet at a corner share no edge.
        for corner, mine, side in (((row, col + len(top)), east, 2), ((row + len(west), col), bottom, 0)):
            if corner not in at:
                continue
            other, other_offset = at[corner]
            theirs = other["seams"][side]
            both = (mine >= 0) & (theirs >= 0)
            a, b = mine[both].astype(np.int64) + offset, theirs[both].astype(np.int64) + other_offset
            same = class_id[a] == class_id[b]
            pairs = np.unique(a[same] * n + b[same])
            left.append(pairs // n)
            right.append(pairs % n)
    return np.concatenate(left), np.concatenate(right)


def _joined(pieces: np.ndarray):
    """One polygon of `pieces`: polygons of one region cut by block borders, which share edges along them.

    A piece's holes reach no block border (its pixels lie all round them, inside its block), so they are the
    region's holes as they are; only the pieces' exteriors are unioned, which gives the region's outline and the
    holes that cross a border."""
    import shapely

    outline = shapely.union_all(shapely.polygons(shapely.get_exterior_ring(pieces)))
    if shapely.get_type_id(outline) != 3:  # not one polygon (pieces that do not make one region): as before
        return shapely.union_all(pieces)
    rings, index = shapely.get_rings(pieces, return_index=True)
    first = np.r_[True, index[1:] != index[:-1]]  # each piece's exterior
    holes = np.concatenate([shapely.get_rings(outline)[1:], rings[~first]])
    return shapely.polygons(shapely.get_exterior_ring(outline), holes=holes)


def _cut_of(result: dict[str, Any]) -> dict[str, Any]:
    """A block's cut polygons, with what `_merge_cut` needs to join them: the block's seams and window."""
    return {**_concat([result], "cut"), "seams": result["seams"], "window": result["window"]}


def _concat(results: list[dict[str, np.ndarray]], mask: str | None) -> dict[str, np.ndarray]:
    keys = ("geometry", "class_id", "conf_sum", "pixels")
    out = {}
    for key in keys:
        arrays = [r[key][r["cut"] if mask == "cut" else ~r["cut"]] if mask else r[key] for r in results]
        out[key] = np.concatenate(arrays) if arrays else np.empty(0)
    out["geometry"] = out["geometry"].astype(object)
    return out


def _canonical(parts: dict[str, np.ndarray], tolerance: float = 0.0) -> dict[str, np.ndarray]:
    """`parts` in one order and their rings in one form, whatever the blocks they were polygonised in: polygons
    within one block came first, and those joined across block borders kept their seams' extra vertices, so
    merging specks and simplifying (which depend on both) gave other polygons at another ``block`` (0.15% of
    the area moved at --simplify 1, blocks of 512 against one)."""
    import shapely

    # collinear vertices out: exactly, or within `tolerance` where a rotated grid's seams are straight to a rounding
    geoms = shapely.normalize(shapely.simplify(parts["geometry"], tolerance))
    bounds = shapely.bounds(geoms)
    order = np.lexsort((shapely.area(geoms), bounds[:, 3], bounds[:, 2], bounds[:, 1], bounds[:, 0], parts["class_id"]))
    return {**{key: values[order] for key, values in parts.items()}, "geometry": geoms[order]}


def _merge_specks(frame, small: np.ndarray):
    """Union each small polygon into the neighbour sharing its longest edge; smallest specks first. Returns the
    frame and which of its polygons took specks (to be measured again).

    A neighbour that has taken specks counts with them (the edges it shares through them add
    up), and each polygon is unioned once, with all it took, at the end: unioning speck by speck
    into a large polygon cost time with the square of the specks (100 s for 3,500 of them).
    """
    import shapely

    geoms = frame.geometry.values
    tree = shapely.STRtree(geoms)
    order = np.flatnonzero(small)[np.argsort(shapely.area(geoms[small]))]
    owner = np.arange(len(geoms))  # where a merged polygon went
    taken: dict[int, list[int]] = {}  # polygon -> the specks it took, directly

    def find(i: int) -> int:
        while owner[i] != i:
            i = owner[i]
        return i

    def members(i: int) -> list[int]:
        out, todo = [], [i]
        while todo:
            k = todo.pop()
            out.append(k)
            todo.extend(taken.get(k, ()))
        return out

    for i in order:
        parts = members(i)  # the speck and the smaller specks it took
        edge = shapely.boundary(shapely.union_all(geoms[parts]) if len(parts) > 1 else geoms[i])
        box = shapely.bounds(edge) + np.array([-1.0, -1.0, 1.0, 1.0]) * 1e-6 * (1 + np.abs(shapely.bounds(edge)))
        shared: dict[int, float] = {}
        for j in set(tree.query(edge)) - set(parts):  # by bounding box: "intersects" on a large polygon was slow
            root = find(j)
            if root != i:  # a large neighbour is first cut to the speck's box: intersecting it whole was slow
                near = shapely.clip_by_rect(geoms[j], *box)
                shared[root] = shared.get(root, 0.0) + shapely.length(shapely.intersection(edge, near))
        best = max(sorted(shared), key=shared.get, default=-1)  # ties: the first polygon, whatever the set order
        if best >= 0 and shared[best] > 0:
            owner[i] = best
            taken.setdefault(best, []).append(i)
    alive = owner == np.arange(len(geoms))
    out = frame.copy()
    out["geometry"] = [shapely.union_all(geoms[members(i)]) if i in taken else geoms[i] for i in range(len(geoms))]
    for column in ("_conf_sum", "_pixels"):  # the sums a merged polygon's confidence is averaged from
        if column in out:
            values = frame[column].to_numpy()
            out[column] = [values[members(i)].sum() if i in taken else values[i] for i in range(len(geoms))]
    grown = np.isin(np.arange(len(geoms)), list(taken))[alive]
    return out[alive].reset_index(drop=True), grown


def _measure(frame, extent: tuple[float, float, float, float]) -> tuple[list[float | None], list[float | None]]:
    """Areas in m² and perimeters in m: geodesic in geographic CRSs and in projected ones whose areal
    scale strays over 1% from 1 over the mask's `extent` (Web Mercator), planar in the others (UTM).
    The extent, not the polygons', so that a polygon's measures do not depend on what else is measured
    with it (a block's polygons, written while the others are polygonised, or all of them)."""
    if frame.crs is None or len(frame) == 0:
        return [None] * len(frame), [None] * len(frame)
    if frame.crs.is_geographic or _distorted(frame.crs, extent):
        return _ground_measures(frame, extent)
    factor = frame.crs.axis_info[0].unit_conversion_factor if frame.crs.axis_info else 1.0
    areas, lengths = np.asarray(frame.geometry.area) * factor**2, np.asarray(frame.geometry.length) * factor
    if _distorted(frame.crs, extent, GROUND_TOLERANCE):  # within 1% of the ground: each polygon's planar measures
        # by the areal scale at its centroid (area / k, length / sqrt k), as the masks' class areas are of the
        # ground there too: Lambert-93's edges read 0.44-0.54% over the ground (h127)
        centres = frame.geometry.centroid
        scales = areal_scales(frame.crs, centres.x, centres.y)
        if scales is not None:
            areas, lengths = areas / scales, lengths / np.sqrt(scales)
        # the scale at the centroid is not the polygon's mean over hundreds of km (a 500 km class of Lambert-93
        # read 0.2% over the mask's area, h128): large ones are measured on the ellipsoid, edges densified
        bounds = np.asarray(frame.geometry.bounds) * factor
        big = np.flatnonzero(np.hypot(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]) > BIG_POLYGON_M)
        if big.size:
            areas[big], lengths[big] = _ground_measures(frame.iloc[big], extent)
    return list(areas), list(lengths)


def _ground_measures(frame, extent: tuple[float, float, float, float]) -> tuple[list[float], list[float]]:
    """Geodesic areas and perimeters on the WGS 84 ellipsoid, edges densified first (`_densified`)."""
    from pyproj import Geod

    from geoseg.raster import metres_per_unit

    geographic = (_densified(frame, extent, 0.001) if frame.crs.is_geographic else
                  _densified(frame, extent, 100 / metres_per_unit(frame.crs)).to_crs("EPSG:4326"))
    geod = Geod(ellps="WGS84")  # its perimeter is the outer ring's: a lake's islands were left out (-29%),
    return ([_geodesic_area(geod, g) for g in geographic.geometry],  # as planar ones count them
            [geod.geometry_length(g.boundary) for g in geographic.geometry])


BIG_POLYGON_M = 20_000  # polygons wider than this (their bounds' diagonal) are measured on the ellipsoid


def _geodesic_area(geod, geometry) -> float:
    """The ground area of a longitude/latitude polygon. A ring that spans all 360 degrees of longitude (a global
    raster's class that runs from -180 to 180) encircles a pole, and the geodesic area of such a ring is that of
    the other side of it: a band 60 S-60 N read 8.4% over its area, a whole-world one 8.1% under (h127). Polygons
    90 degrees wide or more are measured in parts of under 90 degrees, each ring on its own (a half globe's sign,
    and so its holes', is ambiguous)."""
    import shapely

    if geometry is None or geometry.is_empty:
        return 0.0
    left, _, right, _ = geometry.bounds
    # a polygon of a projected grid that crosses the antimeridian (a polar stereographic class, a Web Mercator tile
    # past 180) comes back from EPSG:4326 with an edge that jumps 360 degrees: its bounds span the globe, and cut as a
    # planar shape it raised GEOS's TopologyException or read 386 times its area. The geodesic of each edge is right.
    jump = any(np.abs(np.diff(shapely.get_coordinates(ring)[:, 0])).max(initial=0) > 180
               for ring in shapely.get_rings(geometry))
    if right - left < 90 or jump:
        return abs(geod.geometry_area_perimeter(geometry)[0])
    cuts = np.linspace(left, right, int(np.ceil((right - left) / 80)) + 1)
    total = 0.0
    for west, east in zip(cuts[:-1], cuts[1:]):
        part = shapely.intersection(geometry, shapely.box(west, -90, east, 90))
        for piece in getattr(part, "geoms", [part]):
            if piece.geom_type == "Polygon" and not piece.is_empty:
                total += abs(geod.polygon_area_perimeter(*piece.exterior.xy)[0])
                total -= sum(abs(geod.polygon_area_perimeter(*ring.xy)[0]) for ring in piece.interiors)
    return total


def _densified(frame, extent: tuple[float, float, float, float], floor: float):
    """`frame` with vertices added along its edges, at most 1/2000 of the mask's `extent` apart (and no closer
    than `floor`, in its CRS's units). A pixel's top and bottom edges run along parallels, which the geodesic
    between their corners does not follow: a 20 degree wide polygon at 60-70 degrees north lost 1.5% of its
    area, a 90 degree wide one 30%, and block edges (more vertices) changed the areas with `block`."""
    import shapely

    left, bottom, right, top = extent
    step = max((right - left) / 2000, (top - bottom) / 2000, floor)
    return frame.set_geometry(shapely.segmentize(frame.geometry.values, step))


def _distorted(crs, extent: tuple[float, float, float, float], tolerance: float | None = None) -> bool:
    """Whether the projected `crs` misstates areas by over `tolerance` (1%) somewhere in `extent`."""
    from affine import Affine
    from rasterio.crs import CRS

    from geoseg.raster import AREAL_TOLERANCE, areal_distortion

    left, bottom, right, top = extent
    if not np.all(np.isfinite([left, bottom, right, top])):
        return False
    grid = Affine(max(right - left, 1e-9), 0, left, 0, -max(top - bottom, 1e-9), top)  # the bounds as one pixel
    return areal_distortion(CRS.from_user_input(crs), grid, 1, 1) > (AREAL_TOLERANCE if tolerance is None
                                                                      else tolerance)


def _extent(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a grid in map units, from its four corners (rotated grids too)."""
    xs, ys = zip(*(transform @ corner for corner in ((0, 0), (width, 0), (0, height), (width, height))))
    return min(xs), min(ys), max(xs), max(ys)


TINY_TILE_PX = 16


def _straddle_antimeridian(frame, crs) -> np.ndarray:
    """Whether each polygon of `frame` crosses the meridian opposite the central one of projected `crs` (180 for
    Web Mercator): its longitudes, taken within 180 degrees of the central meridian, then run over half the
    globe, while taken from 0 to 360 degrees past the antimeridian they do not."""
    import shapely

    centre = 0.0
    operation = crs.coordinate_operation
    for param in (operation.params if operation is not None else ()):
        if param.name in ("Longitude of natural origin", "Longitude of origin", "Longitude of false origin",
                          "Longitude of projection centre"):
            centre = float(param.value)
            break
    lonlat = frame.geometry.to_crs(crs.geodetic_crs) if not frame.crs.is_geographic else frame.geometry
    out = []
    for geometry in lonlat.values:
        lon = shapely.get_coordinates(geometry)[:, 0] - centre
        around = np.mod(lon + 180.0, 360.0) - 180.0  # within 180 degrees of the central meridian
        past = np.mod(lon, 360.0)  # from the antimeridian's other side
        out.append(bool(len(lon)) and np.ptp(around) > 180 and np.ptp(past) <= 180)
    return np.array(out, bool)


def _check_tolerance(simplify: float, tolerance: float, extent: tuple[float, float, float, float],
                     metres: bool, pixel: float = 1.0, size_px: int | None = None) -> None:
    """Refuse a --simplify `tolerance` (in the layer's units) longer than the mask's `extent` is wide and high: it
    leaves each polygon a few vertices at best, and past about 1e154 its square overflows in GEOS. A mask of at
    most `TINY_TILE_PX` a side (the corner tile of a retiled mosaic) at the tolerance of the rest is only warned
    of, unless the tolerance is over a thousand times its extent: a loop over the tiles stopped there (h152)."""
    sides = (extent[2] - extent[0], extent[3] - extent[1])
    if tolerance > max(sides):
        # without a CRS the tolerance is in pixels, whatever the units of a geotransform (h162): a mask placed in
        # degrees without a CRS was "2 px is more than the mask's extent (0.0 x 0.0 px)" at 300 px, when it took
        # them in degrees
        unit = "m" if metres else "px (it has no CRS)"
        width, height = (side * simplify / tolerance for side in sides)
        said = (f"--simplify (simplify=) {simplify:g} {unit} is more than the mask's extent "
                f"({width:,.1f} x {height:,.1f} {unit.split()[0]}): no polygon would keep its shape. Give a tolerance "
                "of a pixel or a few.")
        # the corner of a retiled mosaic, by its pixels: the bounds of a rotated grid are wider than it (a 12 px
        # tile at 45 degrees spans 17 px of them)
        tiny = (max(sides) / pixel if size_px is None else size_px) <= TINY_TILE_PX
        if not (tiny and tolerance <= 1000 * max(sides)):  # NaN too
            raise InputError(said)
        log.warning(said)


def _polygonized(path: str, windows: list, keep: tuple[int, ...] | None, confidence: str | None,
                 transform: Affine, nodata: int | None, progress=None):
    """`polygonize_block` of each window, in order, in threads (one per core); only the blocks in progress
    and one more are held, not the whole mask's: waves of 8 blocks held 3.3 GB of a 8192² mask of 3.6 million
    polygons. `progress`, if given, is called with the fraction of blocks done as each is taken; what it raises
    stops the blocks not started."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    workers = os.cpu_count() or 1
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geoseg-vectorize")
    pending: deque = deque()
    done = 0

    def taken():
        nonlocal done
        result = pending.popleft().result()
        done += 1
        if progress is not None:
            progress(done / len(windows))
        return result

    try:
        for window, inner in windows:
            pending.append(pool.submit(polygonize_block, path, window, inner, keep, confidence, transform, nodata))
            if len(pending) > workers:
                yield taken()
        while pending:
            yield taken()
    finally:  # an error or Ctrl-C: the blocks not started are not
        pool.shutdown(wait=True, cancel_futures=True)


def _metres_to_crs_units(crs, metres: float, info: RasterInfo | None = None, transform: Affine | None = None) -> float:
    """`metres` on the ground in the units of the layer's `crs` (without one, `metres` pixels of `transform`). In a geographic CRS and in
    projections whose areal scale strays over 1% from 1 over the mask (Web Mercator), by the ground length of a
    unit at the mask's centre, the longer of a unit east-west and north-south (a degree of latitude; Web
    Mercator's are equal): a fixed 111,320 m a degree, and Web Mercator's map metres, made 100 m a 50 m tolerance
    at 60 degrees north (east-west in degrees, every way in Web Mercator). Elsewhere (UTM) by the CRS's unit."""
    from geoseg.raster import _ground_sides, metres_per_unit

    if crs is None:  # pixels, as --min-area counts them there, whatever unit a geotransform without a CRS is in
        return metres * (float(np.sqrt(abs(transform.determinant))) if transform is not None else 1.0)
    if info is not None and transform is not None and (
            crs.is_geographic or _distorted(crs, _extent(transform, info.width, info.height))):
        from dataclasses import replace

        sides = _ground_sides(replace(info, transform=transform, crs=crs))
        units = (float(np.hypot(transform.a, transform.d)), float(np.hypot(transform.b, transform.e)))
        if sides is not None and min(units) > 0:
            return metres / max(side / unit for side, unit in zip(sides, units))
    if crs.is_geographic:  # where PROJ cannot take the centre to the ellipsoid
        return metres / 111_320.0
    return metres / metres_per_unit(crs)


def _resolve_keep(keep, names: dict[int, tuple[str, Any]], named: bool, held=None) -> tuple[int, ...] | None:
    """Class ids to keep from ids or names; with `named` (the mask's CLASS_NAMES) ids must be classes of it.
    `held()` gives the ids a mask without names holds, for the message of a name it has not."""
    if keep is None:
        return None
    by_name = {name: i for i, (name, _) in names.items()}
    out = []
    for item in keep:
        if isinstance(item, (int, np.integer)) or str(item).isdigit():
            if named and int(item) not in names:  # was silently 0 polygons
                raise InputError(f"class id {item} is not in this mask. Classes: "
                                 f"{', '.join(f'{i} {name}' for i, (name, _) in sorted(names.items()))}.")
            out.append(int(item))
        elif item in by_name:
            out.append(by_name[item])
        elif not named and (found := re.fullmatch(r"class (\d+)", str(item))):  # the name a foreign mask's polygons
            out.append(int(found[1]))                                             # get (`_present_classes`)
        elif named or held is None:
            raise InputError(f"class {item!r} is not in this mask. Classes: {', '.join(by_name) or 'none named'}.")
        else:  # "Classes: none named", and not a word of the ids to pass instead (h149)
            raise InputError(f"class {item!r} is not in this mask, which names no classes (no CLASS_NAMES tag"
                             f"{'' if by_name else ' or colour table'}): keep classes by their ids. It holds "
                             f"{_ids_text(held())}.")
    return tuple(out)


def _held_ids(path: str, nodata: int) -> list[int]:
    """The values a mask holds, but `nodata`, read block by block."""
    from geoseg.raster import class_pixel_counts

    return [i for i in np.flatnonzero(class_pixel_counts(path, 256).sum(axis=0)).tolist() if i != nodata]


def _ids_text(ids: list[int]) -> str:
    return f"classes {', '.join(map(str, ids))}" if ids else "no class (nodata only)"


def _warn_of_kept_ids_not_held(path: str, nodata: int, keep_ids: tuple[int, ...], written) -> None:
    """Warn of ids kept from a mask without names that gave no polygons and that it does not hold: --classes 99
    wrote an empty layer, exit 0, without a word (h149). A class whose polygons --min-area took is held."""
    missing = [i for i in keep_ids if i not in written]
    if not missing:
        return
    held = _held_ids(path, nodata)
    missing = [i for i in missing if i not in held]
    if missing:
        log.warning("%s holds no class %s, kept by --classes (keep=): no polygons of it. It holds %s.", path,
                    ", ".join(map(str, missing)), _ids_text(held))


def vectorize(
    mask_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    keep: Sequence[int | str] | None = None,
    min_area: float = 0.0,
    specks: Literal["drop", "merge"] = "drop",
    simplify: float = 0.0,
    to_crs: Any = None,
    confidence: str | os.PathLike | None = None,
    block: int = DEFAULT_BLOCK,
    overwrite: bool = False,
    style: bool = True,
    progress: Callable[[float], None] | None = None,
) -> VectorResult:
    """Polygonise a class mask block by block and write a GIS layer.

    Parameters
    ----------
    mask_path : path
        A uint8 class mask (255 = nodata), e.g. from `geoseg.segment`.
    out_path : path
        ``.gpkg`` (GeoPackage), ``.geojson``, ``.fgb`` (FlatGeobuf) or ``.parquet`` (GeoParquet).
    keep : sequence of int or str, optional
        Class ids or names to keep; default all.
    min_area : float
        Polygons smaller than this many m² (pixels without a CRS) are specks.
    specks : {"drop", "merge"}
        Drop specks (leaving holes), or merge each into the neighbour it shares
        the longest edge with, which then grows by its area. With `simplify`, the
        polygons that simplifying leaves under `min_area` go the same way, so all
        are at least `min_area` but merged specks with no neighbour (nodata all round).
    simplify : float
        Simplification tolerance in metres; neighbouring polygons keep their shared
        edges (`shapely.coverage_simplify`), so no gaps or overlaps appear. It is
        Visvalingam-Whyatt's: a vertex whose triangle is smaller than its square goes,
        so edges can move a few times it (a spike 2 m wide, 12 m long goes at 3.5). In a
        geographic CRS and in Web Mercator, ground metres at the mask's centre along a
        unit's longer side (north-south in degrees; east-west it is finer there by the
        cosine of the latitude); elsewhere metres of the CRS's unit. Without a CRS, pixels, as
        `min_area` counts them there, whatever the units of a geotransform.
    to_crs : CRS-like, optional
        Reproject the layer, e.g. ``"EPSG:4326"``.
    confidence : path, optional
        A confidence raster (percent, as `segment` writes) to average per polygon.
    block : int
        Block size in pixels; blocks are polygonised in parallel with Dask threads.
    overwrite : bool
        Replace an existing output.
    style : bool
        Also write a QGIS style (``.qml``) beside the layer, in class colours.
    progress : callable, optional
        ``progress(fraction)`` from 0 to 1 as the blocks are polygonised and their polygons measured and written.
        An exception it raises stops the run (a server's cancel: the blocks not started are not) and is raised
        here; nothing is left at `out_path`.

    Returns
    -------
    VectorResult

    Notes
    -----
    Regions that touch a block border are merged with their neighbours across it,
    so the layer equals one polygonisation of the whole mask: same polygons, same
    areas. The mask is never held whole. Polygons are written as their blocks are
    done, except those that touch a block border (kept until all blocks are done) and
    except with ``specks="merge"``, ``simplify`` or GeoParquet, which need every
    polygon at once: then memory grows with their number.
    """
    # every module the block threads and the writer use, imported here, in the caller's thread: a first import in
    # the threads, interrupted by Ctrl-C, left a notebook's next call hung on the import lock for ever, or failing
    # with "partially initialized module 'pyproj'"
    import geopandas as gpd
    import pyarrow  # noqa: F401
    import pyogrio  # noqa: F401
    import pyproj  # noqa: F401
    import rasterio.features  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import scipy.sparse.csgraph  # noqa: F401
    import shapely

    started = time.perf_counter()
    for name, value in (("mask_path", mask_path), ("out_path", out_path)):  # None was pathlib's bare TypeError
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"vectorize takes a path for {name}. Received: {type(value).__name__}")
        if not str(value).strip():  # "" was the working folder
            raise InputError(f"vectorize's {name} is an empty path; give a file.")
    # "layer.gpkg\n" (read from a file) was "unknown vector format", "out /layer.gpkg" made no word of the space
    refuse_stray_whitespace(out_path, "output layer")
    out_path = Path(out_path)
    if isinstance(keep, (str, int, np.integer)):  # one class: a name was read letter by letter ("class 'w' is not in ...")
        keep = [keep]
    if specks not in ("drop", "merge"):
        raise InputError(f"specks must be 'drop' or 'merge'. Received: {specks!r}")
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise InputError(f"block must be a positive number of pixels (default {DEFAULT_BLOCK}). Received: {block!r}")
    for name, value in (("min_area", min_area), ("simplify", simplify)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value >= 0:
            raise InputError(f"{name} must be a number of m² or m, 0 or more. Received: {value!r}")
    if progress is not None and not callable(progress):
        raise InputError(f"`progress` takes a function of one argument, the fraction done. Received: {progress!r}")
    for name, value in (("overwrite", overwrite), ("style", style)):  # overwrite=1 replaced a layer, as segment's does not
        if not isinstance(value, (bool, np.bool_)):
            raise InputError(f"`{name}` must be True or False. Received: {name}={value!r}")
    driver = VECTOR_FORMATS.get(out_path.suffix.lower())
    if driver is None:
        raise InputError(f"{out_path}: unknown vector format; use one of {', '.join(VECTOR_FORMATS)}.")
    from geoseg.pipeline import refuse_inputs_as_outputs

    # a GeoPackage raster mask vectorised into its own file was replaced by the layer with --overwrite, which the
    # "already exists" error had suggested
    refuse_inputs_as_outputs({"layer": out_path}, [os.fspath(mask_path), confidence], "Pick another output path (-o).")
    refuse_unwritable([out_path], vector=True)
    if out_path.exists() and not overwrite:
        raise OutputError(f"{out_path} already exists. Pass --overwrite (overwrite=True) to replace it.")
    if out_path.parent.exists() and not out_path.parent.is_dir():
        raise OutputError(f"{out_path.parent}: a file, not a folder. Pick another output path.")
    if not out_path.parent.is_dir():
        home = (f" A leading ~ is the shell's: pass {os.path.expanduser(out_path)!r} (os.path.expanduser)."
                if str(out_path).startswith("~") and os.path.expanduser(out_path) != str(out_path) else "")
        raise OutputError(f"{out_path.parent}: no such folder. Create it or pick another output path.{home}")
    if not os.access(out_path.parent, os.W_OK):
        raise OutputError(f"{out_path.parent}: not a writable folder. Pick another output path.")
    if style:  # a folder there was a traceback after the layer was written
        refuse_folders([out_path.with_suffix(".qml")])
    info = inspect_raster(mask_path)
    if info.dtype != "uint8" or info.count != 1:
        raise InputError(f"{info.path}: a class mask is one uint8 band; this has {info.count} {info.dtype} band(s).")
    tag_names, colours = _class_tables(info.path)  # info.path: a relative zip:// made absolute
    nodata, declared = _foreign_nodata(info.path)
    names = {i: c for i, c in _classes(tag_names, colours, NODATA if nodata is None else nodata).items()
             if i != nodata}
    transform, crs = info.map_georeferencing()
    # taken in pixels without a word, while the options say m² and metres; --simplify was in the units of the
    # geotransform, pixels only where it had none (a PNG's), while --min-area counted pixels (h162)
    unitless = ([f"--min-area (min_area=) {min_area:g} counts pixels, not m²"] if min_area > 0 else []) + (
        [f"--simplify (simplify=) {simplify:g} is in pixels, not metres"] if simplify > 0 else [])
    if unitless and crs is None:
        log.warning("%s has no CRS, so %s", info.path, " and ".join(unitless))
    if crs is None and driver == "GeoJSON" and to_crs is None:  # RFC 7946: longitude and latitude, always
        log.warning("%s has no CRS, so %s holds pixel coordinates, which GIS software reads as longitude and "
                    "latitude (GeoJSON has no other CRS); write .gpkg or .fgb instead", info.path, out_path.name)
    if info.gcps and info.crs is None:
        log.info("%s is placed by %d ground control points: polygons take their best-fit affine transform",
                 info.path, len(info.gcps))
    elif crs is None and info.rpcs:
        log.warning("%s is georeferenced by RPCs only: the polygons are in pixel coordinates. Orthorectify "
                    "the input first (gdalwarp -rpc) for polygons on the map.", info.path)
    keep_ids = _resolve_keep(keep, names, named=bool(tag_names),  # a foreign mask's ids may lack a colour entry
                             held=lambda: _held_ids(info.path, NODATA if nodata is None else nodata))
    if to_crs is not None:  # before any block is polygonised (pyproj's CRSError was a traceback)
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        if crs is None:
            raise InputError(f"{info.path} has no CRS, so its polygons cannot be reprojected (--to-crs). "
                             "Georeference the mask first, or leave --to-crs out.")
        try:
            CRS.from_user_input(to_crs)
        except CRSError as exc:
            raise InputError(f"--to-crs (to_crs=) {to_crs!r} is not a CRS ({exc}). Use e.g. EPSG:4326.") from None
    conf_path = None if confidence is None else _check_confidence(inspect_raster(confidence), info)
    windows = list(_block_windows(info.width, info.height, block))
    extent = _extent(transform, info.width, info.height)
    if simplify > 0:  # 1e300 overflowed in shapely (a bare RuntimeWarning) and left the polygons unsimplified (h149)
        _check_tolerance(simplify, _metres_to_crs_units(crs, simplify, info, transform), extent, crs is not None,
                         float(np.sqrt(abs(transform.determinant))), max(info.width, info.height))
    nodata_seen = False
    # half the progress for the blocks polygonised, half for their polygons measured and handed to the writer (the
    # measures of a mask of many polygons took most of the time: a 4746x4308 one of 445,000 sat at 95% of segment's
    # bar for 72 s, and `geoseg vectorize` said nothing for as long)
    steps = {"polygonized": 0, "yielded": 0, "written": 0}

    def report(done: float | None = None) -> None:  # 90% until the layer is closed (its index made): 1.0
        if progress is not None:
            progress(done if done is not None else
                     min(0.9, 0.45 * (steps["polygonized"] + steps["written"]) / max(1, len(windows))))

    def counted(fraction: float) -> None:  # by `_polygonized`, as it takes each block: what progress raises stops
        steps["polygonized"] = round(fraction * len(windows))  # the blocks not started at once
        report()

    # each id's class name, made once for every batch (a foreign mask's unnamed ids are "class N", as
    # _present_classes names them)
    name_of = np.array([names[i][0] if i in names else (str(i) if tag_names else f"class {i}") for i in range(256)],
                       object)

    def measured(parts: dict[str, np.ndarray]):
        frame = gpd.GeoDataFrame({"class_id": parts["class_id"].astype(np.uint8),
                                  "class_name": name_of[parts["class_id"].astype(np.int64)]},
                                 geometry=gpd.GeoSeries(parts["geometry"], crs=crs))
        if conf_path:
            frame["confidence"] = np.round(parts["conf_sum"] / np.maximum(parts["pixels"], 1), 2)
        frame["area_m2"], frame["perimeter_m"] = _measure(frame, extent)
        return frame

    across = []  # polygons that a geographic --to-crs drew the long way round the globe

    def finished(frame):
        if to_crs is not None:
            before = frame
            frame = frame.to_crs(to_crs)
            if frame.crs.is_geographic and len(frame) and frame.crs != before.crs:
                span = np.diff(shapely.bounds(frame.geometry.values)[:, ::2], axis=1)[:, 0]
                wide = span > 180  # a polygon of a global mask that is that wide already is not counted
                if before.crs.is_geographic:
                    wide &= np.diff(shapely.bounds(before.geometry.values)[:, ::2], axis=1)[:, 0] <= 180
                across.append(int(wide.sum()))
            elif frame.crs.is_projected and len(frame) and frame.crs != before.crs and "perimeter_m" in frame:
                # a mask in longitude and latitude past 180 into Web Mercator (or another projection not centred
                # on the line): the polygon's vertices either side of 180 land at either edge of the map, and it
                # spans the globe, 40,000 km wide for a lake of 4 km. No polygon is wider than half its ground
                # perimeter; allow for the projection's scale (Web Mercator's is 11.5 at 85 degrees) many times over
                metre = frame.crs.axis_info[0].unit_conversion_factor if frame.crs.axis_info else 1.0
                span = np.diff(shapely.bounds(frame.geometry.values)[:, ::2], axis=1)[:, 0] * metre
                perimeter = np.asarray(frame["perimeter_m"], float)
                wide = np.isfinite(perimeter) & (perimeter > 0) & (span > 25 * perimeter) & (span > 1e6)
                if wide.any():  # and only those whose longitudes straddle the projection's own antimeridian: a
                    # strip near the pole, 60 degrees wide and 150 km round, is 6,700 km wide in EPSG:4087 or 3857
                    wide[wide] = _straddle_antimeridian(before.iloc[np.flatnonzero(wide)], frame.crs)
                across.append(int(wide.sum()))
            frame = _repaired(frame)
        if len(frame):  # exteriors anticlockwise, holes clockwise, as RFC 7946 asks: south-up grids and merged
            frame["geometry"] = shapely.orient_polygons(frame.geometry.values, exterior_cw=False)  # specks reversed some
        return frame

    def merged_cut(cut: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        merged = _merge_cut(cut)
        if len(merged["geometry"]):  # merged polygons: pixel to map coordinates
            merged["geometry"] = shapely.transform(merged["geometry"], lambda xy: _apply(transform, xy))
        return merged

    # Specks merged into neighbours and a simplified coverage need every polygon at once; otherwise each
    # polygon is final when its block is done, and is written then: 5.1 GB held at 40000² px before
    streamed = not (min_area > 0 and specks == "merge") and simplify == 0 and driver != "GeoParquet"
    if streamed:
        counts: dict[str, int] = {}
        present: set[int] = set()

        def frames():
            nonlocal nodata_seen
            whole, cut, held = [], [], 0
            for result in _polygonized(info.path, windows, keep_ids, conf_path, transform, nodata, counted):
                nodata_seen = nodata_seen or bool(result["nodata_pixels"])
                cut.append(_cut_of(result))
                whole.append(_concat([result], "whole"))
                held += len(whole[-1]["geometry"])
                if held >= STREAM_BATCH:
                    steps["yielded"] = steps["polygonized"]
                    yield _concat(whole, None)
                    whole, held = [], 0
            steps["yielded"] = len(windows) - 1  # the last block's share: the polygons across the blocks' edges
            yield _concat(whole, None)
            steps["yielded"] = len(windows)
            yield merged_cut(cut)

        def written(parts: dict[str, np.ndarray]):
            frame = measured(parts)
            if min_area > 0:
                size = np.asarray(frame["area_m2"] if crs is not None else parts["pixels"], float)
                frame = frame[size >= min_area].reset_index(drop=True)
            frame = finished(frame)
            present.update(np.unique(frame["class_id"]).tolist())
            for name, n in frame["class_name"].value_counts().items():
                counts[name] = counts.get(name, 0) + int(n)
            steps["written"] = steps["yielded"]
            report()
            return frame

        polygons = _write_stream(out_path, driver, (written(parts) for parts in frames()),
                                 crs if to_crs is None else to_crs, confidence=bool(conf_path))
        report(1.0)
        if not tag_names:
            names = _present_classes(names, colours, sorted(present))
    else:
        # specks merge into their neighbours of any class, and only then are the classes kept picked: polygonised
        # alone, a kept class's pond had no neighbour to go to and stayed under --min-area (h106)
        merging = min_area > 0 and specks == "merge" and keep_ids is not None
        results = list(_polygonized(info.path, windows, None if merging else keep_ids, conf_path, transform, nodata,
                                    counted))
        nodata_seen = any(r["nodata_pixels"] for r in results)
        whole = _concat(results, "whole")
        merged = merged_cut([_cut_of(r) for r in results])
        parts = {k: np.concatenate([whole[k], merged[k]]) for k in whole}
        if (min_area > 0 and specks == "merge") or simplify > 0:  # both depend on the polygons' order and vertices
            parts = _canonical(parts, 1e-6 * np.sqrt(abs(transform.determinant)))  # a millionth of a pixel
        if not tag_names:
            names = _present_classes(names, colours, np.unique(parts["class_id"]))
        frame = measured(parts)
        if conf_path:  # a merged polygon's confidence is the mean of all its pixels (it kept the receiver's, h106)
            frame["_conf_sum"], frame["_pixels"] = parts["conf_sum"], parts["pixels"]

        def specks_out(frame, small: np.ndarray):
            """`frame` without its polygons flagged `small`, or with each merged into its neighbour (which is
            measured again)."""
            if specks == "drop":
                return frame[~small].reset_index(drop=True)
            frame, grown = _merge_specks(frame, small)
            if grown.any():
                measures = _measure(frame[grown], extent)  # the extent's rule: the same measures as the whole's
                frame.loc[grown, "area_m2"], frame.loc[grown, "perimeter_m"] = measures
                if conf_path:
                    frame.loc[grown, "confidence"] = np.round(
                        frame.loc[grown, "_conf_sum"].to_numpy(float)
                        / np.maximum(frame.loc[grown, "_pixels"].to_numpy(float), 1), 2)
            return frame

        if min_area > 0:
            size = np.asarray(frame["area_m2"] if crs is not None else parts["pixels"], float)
            frame = specks_out(frame, size < min_area)
        if simplify > 0 and len(frame):
            tolerance = _metres_to_crs_units(crs, simplify, info, transform)
            frame["geometry"] = shapely.coverage_simplify(frame.geometry.values, tolerance)
            frame["area_m2"], frame["perimeter_m"] = _measure(frame, extent)
            if min_area > 0:  # simplifying moves area between neighbours: polygons of 5,000 m² or more came out
                # of it under --min-area 5000 (2,700 m²). They go as the specks went, once: merged ones only grow,
                # and the polygons a merge leaves under it have no neighbour (nodata all round)
                size = np.asarray(frame["area_m2"], float) if crs is not None else (
                    shapely.area(frame.geometry.values) / abs(transform.determinant))  # pixels, as before simplifying
                frame = specks_out(frame, size < min_area)
        if merging:
            frame = frame[frame["class_id"].isin(keep_ids)].reset_index(drop=True)
        frame = finished(frame.drop(columns=["_conf_sum", "_pixels"], errors="ignore"))
        _write_layer(frame, out_path, driver)
        report(1.0)
        polygons = len(frame)
        counts = {str(k): int(v) for k, v in frame["class_name"].value_counts().items()}
        present = set(frame["class_id"].tolist())
    if keep_ids is not None and not tag_names:
        _warn_of_kept_ids_not_held(info.path, NODATA if nodata is None else nodata, keep_ids, present)
    if sum(across):
        log.warning("%s: %d polygon(s) cross the antimeridian (180 degrees), which %s does not split: they span the "
                    "globe there. Vectorise without --to-crs (or into a CRS centred on the line, such as its UTM zone) "
                    "and reproject with ogr2ogr -wrapdateline.", out_path, sum(across), to_crs)
    if not declared and nodata_seen:
        log.warning("%s declares no nodata value, so its pixels of value 255 are taken as nodata (as in geoseg's "
                    "masks) and get no polygons. If 255 is a class there, declare its nodata value "
                    "(%s, say) and run again.", info.path, gdal_edit(info.path, "-a_nodata 0"))
    if keep_ids is not None:  # the style lists the classes kept: --classes water gave a legend of every class
        names = {i: c for i, c in names.items() if i in keep_ids}
    qml = out_path.with_suffix(".qml")
    earlier = qml.read_text(encoding="utf-8", errors="replace") if style and qml.is_file() else None
    # a layer of the same name in another format (result.geojson beside result.gpkg) owns the style there
    sibling = next((p for p in (out_path.with_suffix(s) for s in VECTOR_FORMATS) if p != out_path and _is_file(p)),
                   None)
    if earlier is not None and "<rasterrenderer" in earlier:
        log.warning("%s is the style of the raster of that name, so the polygons' style was not written over it: "
                    "QGIS finds a style by the layer's file name. Name the layer otherwise, e.g. %s, for both "
                    "to open in class colours.", qml, out_path.with_name(f"{out_path.stem}_polygons{out_path.suffix}"))
    elif earlier is not None and sibling is not None and _style_classes(earlier) != {i: n for i, (n, _) in names.items()}:
        log.warning("%s is the style of the layer %s, whose classes differ, so this layer's style was not written "
                    "over it: QGIS finds a style by the layer's file name. Name this layer otherwise for both to "
                    "open in their class colours.", qml, sibling)
    elif style:
        try:
            write_qml(qml, names, kind="vector")
        except OSError as exc:  # the layer is whole and in place: a style that cannot be written is no failure of it
            log.warning("%s: the QGIS style could not be written (%s); the layer %s is complete, and QGIS shows it "
                        "in its own colours", qml, exc.strerror or exc, out_path)
    seconds = time.perf_counter() - started
    log.info("wrote %d polygons to %s in %.1f s", polygons, out_path, seconds)
    import resource

    return VectorResult(str(out_path), polygons, counts, round(seconds, 3),
                        round(info.width * info.height / seconds, 1) if seconds > 0 else None,
                        round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


def _class_names_tag(path: str) -> bool:
    with open_quietly(path) as ds:
        return "CLASS_NAMES" in ds.tags()


def _check_confidence(conf: RasterInfo, mask: RasterInfo) -> str:
    """The path of `conf` once it is a confidence raster for `mask`: one uint8 band (percent, 255 = nodata,
    as `segment` writes it) on the mask's grid. Otherwise an InputError naming every difference.
    """
    differences = []
    if same_raster(conf.path, mask.path):  # averaged class ids as a "confidence" of 0-5 %
        differences.append("it is the mask itself")
    elif _class_names_tag(conf.path):
        differences.append("it is a class mask (it has class names), not percentages")
    if (conf.count, conf.dtype) != (1, "uint8"):
        differences.append(f"it has {conf.count} {conf.dtype} band(s) where a confidence raster has 1 uint8 band")
    if (conf.width, conf.height) != (mask.width, mask.height):
        differences.append(f"the confidence raster is {conf.width} x {conf.height} px but the mask is "
                           f"{mask.width} x {mask.height} px")
    else:
        (t_conf, crs_conf), (t_mask, crs_mask) = conf.map_georeferencing(), mask.map_georeferencing()
        pixel = max(abs(t_mask.a), abs(t_mask.b), abs(t_mask.d), abs(t_mask.e))
        if not np.allclose(tuple(t_conf)[:6], tuple(t_mask)[:6], rtol=0, atol=1e-6 * pixel):  # a millionth of a pixel
            differences.append(f"its transform {_affine(t_conf)} differs from the mask's {_affine(t_mask)}")
        if (crs_conf is None) != (crs_mask is None) or (crs_conf is not None and crs_conf != crs_mask):
            differences.append(f"its CRS ({_crs_name(crs_conf)}) differs from the mask's ({_crs_name(crs_mask)})")
    if differences:
        stem = raster_stem(mask.path)
        expected = Path(mask.path).with_name(f"{stem.removesuffix('_mask')}_confidence.tif")
        raise InputError(f"{conf.path}: not a confidence raster of the mask {mask.path}: "
                         f"{'; '.join(differences)}. Pass the confidence raster written with this mask by "
                         f"`geoseg segment --confidence` (e.g. {expected}).")
    return conf.path


def _affine(t: Affine) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in tuple(t)[:6]) + ")"


def _crs_name(crs) -> str:
    if crs is None:
        return "none"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()[:80]


def _repaired(frame):
    """`frame` with the polygons that a reprojection made invalid repaired where the repair is one polygon: a mask's
    edge along a pole collapses to one point in a polar CRS, and its polygons came out self-intersecting there
    ("Ring Self-intersection[0 0]" into EPSG:3413, h135), which QGIS and GEOS overlays refuse."""
    import shapely

    geometries = np.asarray(frame.geometry.values, object)
    invalid = ~shapely.is_valid(geometries)
    if not invalid.any():
        return frame
    fixed = shapely.make_valid(geometries[invalid], method="structure", keep_collapsed=False)
    whole = shapely.get_type_id(fixed) == 3  # a Polygon: the layer holds polygons only
    if whole.any():
        frame = frame.copy()
        geometries = geometries.copy()
        geometries[np.flatnonzero(invalid)[whole]] = fixed[whole]
        frame[frame.geometry.name] = geometries
    return frame


def _write_layer(frame, out_path: Path, driver: str) -> None:
    def write(tmp: Path) -> None:
        if driver == "GeoParquet":
            frame.to_parquet(tmp)
        else:
            frame.to_file(tmp, driver=driver, layer=layer_name(out_path.stem), engine="pyogrio", use_arrow=True,
                          dataset_options=dataset_options(driver))

    _written_atomically(out_path, driver, write)


def _write_stream(out_path: Path, driver: str, frames, crs, *, confidence: bool) -> int:
    """Write each GeoDataFrame of the iterable `frames` to the layer as it comes; return the polygons written.

    An error while the frames are made (a block that cannot be read, Ctrl-C) ends the stream and is raised
    once GDAL has closed the file, which is then removed: raised inside the stream, Arrow would give it back
    as an ArrowException with its type lost."""
    import geopandas as gpd
    import pyarrow as pa
    import pyogrio
    import shapely
    from pyproj import CRS

    crs = None if crs is None else CRS.from_user_input(crs)
    columns = {"class_id": np.zeros(1, np.uint8), "class_name": ["x"]}
    sample = gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries([shapely.box(0, 0, 1, 1)], crs=crs))
    for name in (["confidence"] if confidence else []) + ["area_m2", "perimeter_m"]:
        sample[name] = np.zeros(1)
    schema = pa.table(sample.to_arrow(index=False, geometry_encoding="WKB")).schema
    failure: list[BaseException] = []
    polygons = 0

    def batches():
        nonlocal polygons
        try:
            for frame in frames:
                polygons += len(frame)
                if len(frame):
                    yield from pa.table(frame.to_arrow(index=False, geometry_encoding="WKB")).cast(schema).to_batches()
        except BaseException as exc:  # noqa: BLE001 - raised again below, once the writer is done
            failure.append(exc)

    def write(tmp: Path) -> None:
        signals: list = []
        try:
            with _noting_signals(signals):
                pyogrio.write_arrow(pa.RecordBatchReader.from_batches(schema, batches()), tmp, layer=layer_name(out_path.stem),
                                    driver=driver, geometry_name="geometry", geometry_type="Polygon",
                                    crs=None if crs is None else crs.to_wkt(), dataset_options=dataset_options(driver))
        except RuntimeError:
            if failure:
                raise failure[0] from None
            if signals:  # Ctrl-C (or SIGTERM) while Arrow pulled a batch: it gave back "Error while accessing
                signum, handler = signals[-1]  # batch from stream", a RuntimeError that no except KeyboardInterrupt
                handler(signum, None)  # catches; raised again as the signal's own handler raises it
            raise
        if failure:
            raise failure[0]

    try:
        _written_atomically(out_path, driver, write)
    except OutputError:
        if failure:  # an OSError of the stream's own (reading a block) is not one of writing the layer
            raise failure[0] from None
        raise
    return polygons


@contextmanager
def _noting_signals(seen: list):
    """Note in `seen` each SIGINT and SIGTERM (with its Python handler, which still runs) while the block runs,
    in the main thread; elsewhere Python delivers no signals, and nothing is noted."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    replaced = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if callable(handler):
            def noting(number, frame, handler=handler):
                seen.append((number, handler))
                handler(number, frame)

            replaced[signum] = handler
            signal.signal(signum, noting)
    try:
        yield
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)


def layer_name(stem: str) -> str:
    """A GeoPackage layer name for a file's stem: GDAL refuses one that starts with punctuation other than ``_``
    (``-roofs_polygons``) or with ``gpkg``, so those get a leading ``_``."""
    return f"_{stem}" if (stem[:1] in string.punctuation and stem[:1] != "_") or stem.startswith("gpkg") else stem


def _pyogrio_gdal():
    """pyogrio's GDAL library, to read its error state (ctypes), or None where it cannot be found (no /proc)."""
    global _GDAL
    if _GDAL is None:
        import ctypes

        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
                paths = list(dict.fromkeys(line.split(None, 5)[-1].strip() for line in maps if "libgdal" in line))
        except OSError:
            paths = []
        # pyogrio's wheel bundles its own GDAL, as rasterio's does: the one whose error state the write left
        paths = [p for p in paths if "pyogrio" in p] or paths
        try:
            lib = ctypes.CDLL(paths[0]) if paths else False
            if lib:
                lib.CPLGetLastErrorMsg.restype = ctypes.c_char_p
                lib.CPLGetLastErrorType.restype = ctypes.c_int
        except (OSError, AttributeError):
            lib = False
        _GDAL = lib
    return _GDAL or None


_GDAL = None  # _pyogrio_gdal's library once looked up; False: none found


def _disk_left(folder: Path) -> float:
    import shutil

    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return math.inf


def _check_gpkg(path: Path) -> None:
    """Raise OSError unless each layer of the GeoPackage at `path` has its spatial index. GDAL makes it last, as it
    closes the file; when that COMMIT fails ("database or disk is full") it only logs an error, and a file without
    its index (slow in QGIS, or worse, cut) was put in place as written (h170)."""
    import sqlite3
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            layers = db.execute("SELECT table_name, column_name FROM gpkg_geometry_columns").fetchall()
    except sqlite3.Error as exc:
        raise OSError(f"the GeoPackage written cannot be read back ({exc}): is the disk full?") from None
    missing = [table for table, column in layers if f"rtree_{table}_{column}" not in tables]
    if missing:
        raise OSError(f"the GeoPackage came out without the spatial index of {', '.join(missing)}: is the disk full?")


def _written_atomically(out_path: Path, driver: str, write) -> None:
    """`write`(a temporary path beside `out_path`), then the rename; a failure leaves nothing at either path.

    A GDAL error that the writer only logged (a failed COMMIT as the file closed) fails it too."""
    full = False
    try:
        with replaced_atomically(out_path, suffix=f".tmp{out_path.suffix}") as tmp, catch_warnings():
            # a mask without a CRS gives a layer without one, as it should
            warnings.filterwarnings("ignore", message=".*crs.*was not provided", category=UserWarning)
            gdal = _pyogrio_gdal() if driver != "GeoParquet" else None
            if gdal is not None:
                gdal.CPLErrorReset()
            try:
                write(tmp)
            except Exception:
                # measured now, while the part written still fills the disk: once it is removed the disk has room,
                # and GDAL's last word was "cannot rollback - no transaction is active", with advice to rename
                full = _disk_left(tmp.parent) < LOW_SPACE
                raise
            if gdal is not None and gdal.CPLGetLastErrorType() >= 3:  # CE_Failure or CE_Fatal, only logged
                message = (gdal.CPLGetLastErrorMsg() or b"").decode("utf-8", "replace")
                raise OSError(f"GDAL: {message or 'an error as the file was closed'}")
            if driver == "GPKG":
                _check_gpkg(tmp)
    except GeosegError:  # from the stream's blocks: an unreadable block of the mask is no failure to write
        raise
    except ImportError as exc:
        raise OutputError(f"{out_path}: writing {driver} needs an extra package ({exc}).") from None
    except Exception as exc:  # a full disk, a folder gone: pyogrio's and pyarrow's errors have no common base
        if not isinstance(exc, OSError) and "pyogrio" not in type(exc).__module__:
            raise
        advice = write_advice(exc, out_path.parent)
        if full and not advice.startswith("Free some disk space"):
            advice = "The disk was full: free some disk space or pick another output folder"
        raise OutputError(f"{out_path}: could not be written ({first_line(exc)}). "
                          f"{advice}; nothing was left at that path.") from None


def count_regions(mask_path: str | os.PathLike, block: int = 2048) -> int:
    """An upper bound on the polygons of a class mask: its 4-connected regions of a class (nodata left out),
    counted block by block, so a region that crosses a block's edge counts once per block it touches."""
    from scipy import ndimage

    total = 0
    with open_quietly(mask_path) as ds:
        nodata = NODATA if ds.nodata is None else int(ds.nodata)
        for top in range(0, ds.height, block):
            for left in range(0, ds.width, block):
                mask = ds.read(1, window=Window(left, top, min(block, ds.width - left), min(block, ds.height - top)))
                for value in np.unique(mask):
                    if value != nodata:
                        total += ndimage.label(mask == value)[1]
    return total


def write_qml(path: str | os.PathLike, classes, *, kind: str) -> None:
    """Write a QGIS style: a paletted raster (``kind="raster"``) or a layer categorised by class_id, of `classes`:
    a card's (`ClassInfo`s) or ``{id: (name, (r, g, b))}``."""
    if not isinstance(classes, dict):
        classes = {c.id: (c.name, c.rgb) for c in classes}
    with replaced_atomically(path) as tmp:
        tmp.write_text(qml_text(classes, kind=kind), encoding="utf-8")  # class names (forêt) in any locale


def _style_classes(text: str) -> dict[int, str]:
    """The class ids and names of a categorised style `write_qml` wrote: a layer of the same classes takes the
    style over (its colours may be newer), another's keeps it."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text.split("\n", 1)[1] if text.startswith("<!DOCTYPE") else text)
    except ET.ParseError:
        return {}
    return {int(c.get("value")): c.get("label", "") for c in root.iter("category")
            if (c.get("value") or "").lstrip("-").isdigit()}


def _is_file(path: Path) -> bool:
    """Whether `path` is a file; False for a name too long for the file system (a 255-byte .gpkg's .geojson)."""
    try:
        return path.is_file()
    except OSError:
        return False


def qml_text(classes: dict[int, tuple[str, tuple[int, int, int]]], *, kind: str) -> str:
    """The text of `write_qml`'s style."""
    from xml.sax.saxutils import quoteattr  # "sand & gravel" made a file QGIS could not parse

    if kind == "raster":
        entries = "\n".join(
            f'          <paletteEntry value="{i}" label={quoteattr(str(name))} color="#{r:02x}{g:02x}{b:02x}" alpha="255"/>'
            for i, (name, (r, g, b)) in classes.items()
        )
        body = f"""  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
  </pipe>"""
    else:
        categories = "\n".join(
            f'      <category value="{i}" label={quoteattr(str(name))} symbol="{i}" render="true"/>'
            for i, (name, _) in classes.items()
        )
        symbols = "\n".join(
            f'''      <symbol type="fill" name="{i}" alpha="1">
        <layer class="SimpleFill">
          <Option type="Map">
            <Option type="QString" name="color" value="{r},{g},{b},255"/>
            <Option type="QString" name="outline_color" value="{r // 2},{g // 2},{b // 2},255"/>
            <Option type="QString" name="outline_width" value="0.1"/>
          </Option>
        </layer>
      </symbol>'''
            for i, (_, (r, g, b)) in classes.items()
        )
        body = f"""  <renderer-v2 type="categorizedSymbol" attr="class_id" forceraster="0" enableorderby="0">
    <categories>
{categories}
    </categories>
    <symbols>
{symbols}
    </symbols>
  </renderer-v2>"""
    return f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n<qgis version=\"3.28\">\n{body}\n</qgis>\n"



def onto_raster(geoms, info: RasterInfo):
    """`geoms` (a GeoSeries) in the map CRS of the raster `info`; in a geographic one, each vertex's longitude
    taken within 180 degrees of the raster's centre. A raster written across the antimeridian (179.9 to 180.1)
    has longitudes past 180, which a reprojection into it wraps to -180: a zone across the line counted half its
    pixels, one beyond it none, and was refused as outside the raster."""
    import shapely

    crs = info.map_georeferencing()[1]
    if crs is None or geoms.crs is None:
        return geoms
    out = geoms.to_crs(crs) if geoms.crs != crs else geoms
    if not crs.is_geographic:
        return out
    xs = [x for x, _ in info.map_corners()]
    centre = (min(xs) + max(xs)) / 2

    def unwrapped(geom):  # each vertex within 180 degrees of the first, then the whole shape nearest the raster:
        if geom is None or geom.is_empty:  # shifting vertices one by one drew a Pacific zone round the globe
            return geom
        x0 = shapely.get_coordinates(geom)[0, 0]

        def continuous(xy: np.ndarray) -> np.ndarray:
            x = xy[:, 0] + 360 * np.round((x0 - xy[:, 0]) / 360)
            return np.column_stack([x + 360 * np.round((centre - (x.min() + x.max()) / 2) / 360), xy[:, 1:]])

        return shapely.transform(geom, continuous)

    return type(out)([unwrapped(g) for g in out.values], index=out.index, crs=out.crs)


# Zones, in pixel coordinates, are moved by this many pixels right and down (east and south on a north-up raster)
# before they are rasterised: a pixel's centre on a zone's edge (districts cut along rows or columns of pixel
# centres) then lies just inside the zone to its left or above it and outside the other, whatever the rounding of
# each zone's coordinates; 2**-20 px is far over that rounding (1e-10 px at a million pixels) and far under
# anything drawn on purpose.
_TIE = 2.0 ** -20


def zonal_composition(mask_path: str | os.PathLike, zones, n_classes: int, *, block: int = 1024):
    """Pixels and m² of every class inside every zone, block by block.

    Parameters
    ----------
    mask_path : path
        A class mask (255 = nodata).
    zones : geopandas.GeoSeries or GeoDataFrame
        Zone polygons; reprojected to the mask's CRS. Zones may overlap.
    n_classes : int
        Classes 0 .. n_classes - 1 are counted.

    Returns
    -------
    (pixels, area_m2) : tuple of numpy.ndarray
        Each (n_zones, n_classes); ``area_m2`` is None when the mask has no CRS.
        A pixel counts for a zone when its centre lies inside it; a centre on a zone's edge counts for the zone
        to its left, or on an edge along a row for the one above it, in the raster's columns and rows (`_TIE`),
        so that zones which tile the raster count every pixel once. A zone that holds no pixel's centre counts
        the pixel under its centre (its representative point).
    """
    import shapely
    from rasterio.features import geometry_mask
    from rasterio.windows import intersection

    from geoseg.raster import PixelAreas

    info = inspect_raster(mask_path)
    transform, crs = info.map_georeferencing()  # a mask placed by GCPs: their best-fit affine
    geoms = onto_raster(zones.geometry if hasattr(zones, "geometry") else zones, info)
    geoms = np.asarray(geoms.values, object)
    # every zone in the raster's pixel coordinates (column, row), once, by the whole raster's transform, and moved
    # by _TIE: each zone was rasterised on its own window's transform, which put an edge that two zones share
    # through pixel centres a hair apart in each (the centres then in both zones or in neither), and GDAL's
    # rasterisation takes a centre on a polygon's top or bottom edge as inside, so that districts sharing an
    # east-west edge along a row of centres both counted that row: their pixels summed to more than the scene's
    inverse = ~transform
    linear, offset = np.array(inverse.column_vectors[:2]), np.array(inverse.column_vectors[2])
    in_pixels = shapely.transform(geoms, lambda xy: xy @ linear + offset + _TIE)
    pixel_areas = PixelAreas(info)
    pixels = np.zeros((len(geoms), n_classes), np.int64)
    areas = np.zeros((len(geoms), n_classes))
    tree = shapely.STRtree(in_pixels)
    with rasterio.open(info.path) as ds:
        for window, _ in _block_windows(info.width, info.height, block):
            # the block's and each zone's pixels in pixel coordinates: rasterio's windows.bounds and from_bounds
            # take two corners, which on a rotated raster missed whole zones (0 pixels, silently) and on a
            # south-up one raised "Bounds and transform are inconsistent"
            c0, r0 = window.col_off, window.row_off
            for z in tree.query(shapely.box(c0, r0, c0 + window.width, r0 + window.height)):
                x0, y0, x1, y1 = in_pixels[z].bounds
                zw = Window(math.floor(x0) - 1, math.floor(y0) - 1, math.ceil(x1) - math.floor(x0) + 2,
                            math.ceil(y1) - math.floor(y0) + 2)
                try:
                    sub = intersection(window, zw)
                except rasterio.errors.WindowError:
                    continue
                with reading_pixels(info.path, sub):
                    data = ds.read(1, window=sub)
                # the window's pixels from whole-pixel offsets, exact in floating point: one rule for every zone
                inside = ~geometry_mask([in_pixels[z]], out_shape=data.shape,
                                        transform=Affine.translation(sub.col_off, sub.row_off))
                keep = inside & (data < n_classes)
                pixels[z] += np.bincount(data[keep], minlength=n_classes)[:n_classes]
                if pixel_areas.rows is not None:
                    weights = np.broadcast_to(pixel_areas(sub), data.shape)[keep]
                    areas[z] += np.bincount(data[keep], weights=weights, minlength=n_classes)[:n_classes]
        # a zone that holds no pixel's centre (smaller than a pixel: a building's AOI on 10 m imagery) read 0 px and
        # no coverage; it takes the pixel under its centre, as QGIS's zonal statistics do (h101)
        for z in np.flatnonzero(pixels.sum(axis=1) == 0):
            if geoms[z] is None or geoms[z].is_empty:
                continue
            point = geoms[z].representative_point()
            col, row = (int(np.floor(v)) for v in inverse @ (point.x, point.y))
            if not (0 <= col < info.width and 0 <= row < info.height):
                continue
            one = Window(col, row, 1, 1)
            with reading_pixels(info.path, one):
                value = int(ds.read(1, window=one)[0, 0])
            if value < n_classes:
                pixels[z, value] += 1
                if pixel_areas.rows is not None:
                    areas[z, value] += float(np.asarray(pixel_areas(one)).ravel()[0])
    return pixels, (areas if pixel_areas.rows is not None else None)
