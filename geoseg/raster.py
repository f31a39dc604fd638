"""Raster I/O at the edges: open and check inputs, read windows, write class masks as COGs."""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import sys
import re
import shlex
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NodataShadowWarning, NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from geoseg.errors import BandError, InputError, OutputError, RasterReadError, WorkerReadError, apart, catch_warnings
from geoseg.files import whitespace_note

__all__ = [
    "NODATA",
    "SUPPORTED_DTYPES",
    "RasterInfo",
    "inspect_raster",
    "is_gdal_path",
    "raster_stem",
    "unique_stems",
    "check_bands",
    "check_unchanged",
    "band_roles",
    "declared_scaling",
    "gdal_edit",
    "WindowSource",
    "read_bands",
    "valid_pixels",
    "create_outputs",
    "finalize_cog",
    "class_sidecar",
    "write_class_sidecar",
    "class_pixel_counts",
    "class_areas",
    "class_pixels_and_areas",
    "metres_per_unit",
    "PixelAreas",
    "pixel_areas_m2",
    "gdal_can_name",
    "model_grid",
    "pixel_sides_m",
    "open_quietly",
    "read_preview",
    "reading_pixels",
    "regrid",
    "same_raster",
    "write_class_mask",
]

log = logging.getLogger(__name__)

NODATA = 255
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@dataclass(frozen=True)
class RasterInfo:
    """What geoseg needs to know of an input raster before planning a run."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: object
    transform: object
    has_mask: bool
    block_shape: tuple[int, int]
    gcps: tuple = ()  # ground control points, for rasters georeferenced by them instead of a transform
    gcp_crs: object = None
    rpcs: object = None  # rational polynomial coefficients (satellite scenes before orthorectification)
    paletted: bool = False  # one band of colour-table indexes (a GIF, a 256-colour PNG or GeoTIFF)
    class_mask: bool = False  # a class mask with CLASS_NAMES tags, as segment writes them: no image to segment
    stamp: tuple | None = None  # (inode, size, mtime_ns) of a local file when inspected: see `check_unchanged`
    alpha_bands: tuple[int, ...] = ()  # 1-based bands tagged alpha (transparency), not data
    # each band's scale and offset (value = stored * scale + offset), as GDAL reads them: (1.0, ...) and (0.0, ...)
    # for a file that declares none; Landsat Collection 2 surface reflectance declares 2.75e-05 and -0.2
    scales: tuple[float, ...] = ()
    offsets: tuple[float, ...] = ()
    descriptions: tuple[str | None, ...] = ()  # each band's description, as gdalinfo shows it ("nir", "B4 red")
    color_tags: tuple[str, ...] = ()  # each band's colour interpretation, by rasterio's name ("red", "nir", "alpha")

    @property
    def pixels(self) -> int:
        """Pixels per band."""
        return self.width * self.height

    def map_georeferencing(self) -> tuple[object, object]:
        """(transform, crs) placing pixels on the map: the raster's own, or the best-fit affine
        transform of its ground control points. A raster with neither (or with points too few, or
        on one line, to span an area) is placed as QGIS places it: x = column, y = -row, so that its
        polygons overlay it there (GDAL reports a y-down identity for it, which QGIS flips)."""
        if self.crs is None and self.gcp_crs is not None:
            fit = _gcp_fit(self.gcps)
            if fit is not None:
                return fit, self.gcp_crs
        if self.transform.is_identity:  # no geotransform: a CRS alone does not place pixels (gdal_translate
            # -a_srs on a photo), and taken with GDAL's y-down identity they landed at the CRS's origin, mirrored
            return Affine(1, 0, 0, 0, -1, 0), None
        return self.transform, self.crs

    def map_corners(self) -> list[tuple[float, float]]:
        """The four corners' map coordinates (clockwise from the top left), by `map_georeferencing`."""
        transform = self.map_georeferencing()[0]
        return [transform @ xy for xy in ((0, 0), (self.width, 0), (self.width, self.height), (0, self.height))]


def map_points(transform, xs, ys) -> tuple[np.ndarray, np.ndarray]:
    """Arrays of points through an affine transform: ``transform * (xs, ys)``, which affine 3 deprecates for ``@``,
    and ``@`` takes single points only."""
    a, b, c, d, e, f = tuple(transform)[:6]
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    return a * xs + b * ys + c, d * xs + e * ys + f


def _gcp_fit(gcps) -> object | None:
    """The best-fit affine transform of ground control points, or None when they do not span an area:
    rasterio's fit of fewer than 3, or of points on one line, returns uninitialised numbers."""
    from rasterio.transform import from_gcps

    if len(gcps) < 3:
        return None
    points = np.array([(g.col, g.row) for g in gcps], float)
    if np.linalg.matrix_rank(points[1:] - points[0]) < 2:
        return None
    fit = from_gcps(list(gcps))
    return fit if np.all(np.isfinite(tuple(fit))) and abs(fit.determinant) > 0 else None


def is_gdal_path(path: str) -> bool:
    """A GDAL virtual path (``/vsizip/a.zip/b.tif``), a rasterio URL (``zip://a.zip!b.tif``, ``https://``) or one
    raster of a file of several, as GDAL and QGIS name it (``GPKG:a.gpkg:table``, ``NETCDF:"f.nc":var``)."""
    return path.startswith("/vsi") or "://" in path or subdataset_file(path) is not None


_SUBDATASET = re.compile(r"([A-Z][A-Z0-9_]+):(.+)$")  # GDAL's DRIVER:...: never a drive letter (one letter)


def subdataset_file(path: str) -> tuple[str, str] | None:
    """(the file, the rest) of GDAL's name for one raster of a file of several: ``GPKG:a.gpkg:table`` ->
    (``a.gpkg``, ``table``), ``GTIFF_DIR:2:a.tif`` -> (``a.tif``, ``2``), ``HDF5:"f.h5"://g/v`` -> (``f.h5``,
    ``g/v``). None for anything else, a file of that very name included."""
    found = _SUBDATASET.match(path)
    if found is None or os.path.exists(path):
        return None
    parts = found[2].split(":")
    for i in range(len(parts)):
        for j in range(len(parts), i, -1):
            if os.path.isfile(candidate := ":".join(parts[i:j]).strip('"')):
                rest = ":".join(parts[:i] + parts[j:]).strip(":/")
                return candidate, rest
    return None


RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg")  # what a survey takes for rasters
READ_ONLY_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".jp2", ".j2k")  # no GDAL update access
# formats whose nodata and colour tags GDAL does not keep in a .aux.xml under gdal_edit.py -ro (the PNG driver takes
# them in memory only: exit 0 and nothing written, h126)
NO_PAM_BANDS = (".png", ".gif", ".bmp", ".webp")


def gdal_edit(path: str | os.PathLike, options: str, shown: str | None = None) -> str:
    """The command that gives `path` (called `shown` in it) the GDAL `options` of gdal_edit.py (``-a_srs EPSG:32640``,
    ``-a_nodata 0``, ``-unsetnodata``, ``-colorinterp_4 undefined``). ``-ro`` for a format GDAL cannot update (JPEG,
    PNG...: "does not support update access"), whose edit then goes into a ``.aux.xml`` that GDAL and QGIS read;
    a GeoTIFF copy by gdal_translate where not even that keeps it (a PNG's nodata and colour tags)."""
    import shlex

    name = os.fspath(path) if shown is None else shown
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix in NO_PAM_BANDS and not options.startswith("-a_srs"):  # the copy beside it, which is then the input
        copy = shlex.quote(str(Path(name).with_suffix(".tif")))
        return (f"gdal_translate {options.replace('-unsetnodata', '-a_nodata none')} {shlex.quote(name)} {copy}, "
                f"and use {copy}")
    # quoted: the Dubai set's "Tile 1" folders broke the command pasted into a shell (h128)
    return f"gdal_edit.py{' -ro' if suffix in READ_ONLY_SUFFIXES else ''} {options} {shlex.quote(name)}"


def raster_stem(path: str | os.PathLike) -> str:
    """The file name without extension that outputs are named after; ``zip://a.zip!b/c.tif`` -> ``c``,
    ``GPKG:a.gpkg:table`` -> ``a_table``."""
    path = os.fspath(path)
    if (sub := subdataset_file(path)) is not None:
        return "_".join(filter(None, (Path(sub[0]).stem, re.sub(r"[^\w.-]+", "_", sub[1]).strip("_"))))
    return Path(path.rsplit("!", 1)[-1] if "://" in path else path).stem


def unique_stems(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """A name per raster to file its outputs under: its stem, with a short hash of the path where
    stems collide (``Tile 2/images/part_1.jpg`` and ``Tile 3/images/part_1.jpg``). Keys are ``str(path)``.

    >>> unique_stems(["a/x.tif", "b/y.tif"])
    {'a/x.tif': 'x', 'b/y.tif': 'y'}
    >>> sorted(unique_stems(["a/x.tif", "b/x.tif"]).values())
    ['x-d65097', 'x-eb5db2']

    Stems that differ only in case or Unicode form (``Scene`` and ``scene``; ``café`` as one character or as
    ``e`` and an accent) collide too: on macOS and Windows drives they name one file (`name_key`), and one
    raster's outputs replaced the other's while both were reported done.
    """
    import hashlib
    from collections import Counter

    paths = [os.fspath(p) for p in paths]
    stems = [raster_stem(p) for p in paths]
    counts = Counter(name_key(s) for s in stems)
    return {p: s if counts[name_key(s)] == 1 else f"{s}-{hashlib.sha1(p.encode()).hexdigest()[:6]}"
            for p, s in zip(paths, stems)}


def name_key(name: str) -> str:
    """`name` as case-insensitive file systems (macOS, Windows, SMB and exFAT drives) compare names: one
    Unicode form, one case, mapped letter by letter (they keep ``Straße`` and ``Strasse`` apart, which
    `str.casefold` joins).

    >>> name_key("Café") == name_key("cafe\u0301"), name_key("Straße") == name_key("Strasse")
    (True, False)
    """
    import unicodedata

    return "".join(c.lower() if len(c.lower()) == 1 else c for c in unicodedata.normalize("NFC", name))


def shares(pixels: Sequence[float], areas: Sequence[float | None] | None = None, *,
           digits: int = 3) -> list[float | None]:
    """Each class's share of the valid ground in percent: of the area where every class has one, else of the
    pixels; all None where there is nothing. Pixels of a geographic or Web Mercator grid differ in area: over
    40-60° N the pixels of the northern half were 50% of the scene's but 39.6% of its ground.

    >>> shares([1, 3], [300.0, 100.0])
    [75.0, 25.0]
    >>> shares([1, 3], None), shares([0, 0])
    ([25.0, 75.0], [None, None])
    """
    if areas is not None and all(a is not None for a in areas) and sum(areas) > 0:
        weights = [float(a) for a in areas]
    else:
        weights = [float(p) for p in pixels]
    total = sum(weights)
    return [round(100 * w / total, digits) if total else None for w in weights]


def gdal_can_name(path: str | os.PathLike) -> bool:
    """Whether GDAL, which takes names as UTF-8, opens the file Python means by `path`: an ASCII name, or one in
    a UTF-8 locale. Under de_DE.ISO-8859-1 'Straße.tif' was decoded as Latin-1 and passed on as other bytes:
    "No such file or directory" for a file that exists, and "cannot write here" for an output folder 'ausgabe_ä'."""
    import codecs

    text = os.fspath(path)
    if isinstance(text, bytes) or text.isascii():
        return True
    try:
        text.encode("utf-8")  # an ASCII locale's surrogates cannot be
    except UnicodeEncodeError:
        return False
    return codecs.lookup(sys.getfilesystemencoding()).name == "utf-8"


def shown_name(path: str | os.PathLike) -> str:
    """`path` as its user named it: an ASCII locale (LC_ALL=C, PYTHONUTF8=0) decoded 'scène.tif' into surrogates,
    which a message showed as 'sc\\udcc3\\udca8ne.tif'. Its bytes read as UTF-8, as a UTF-8 terminal shows them."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        return text.decode("utf-8", "replace")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _absolute_archive(path: str) -> str:
    """`/vsizip/rel/a.zip/x.tif` (and `/vsizip/{rel/a.zip}/x.tif`, /vsitar/, /vsigzip/, /vsi7z/, /vsirar/) with the
    archive's path made absolute, as plain paths are: GDAL reads those relative to the working folder, which a
    Dask worker's is not. Anything else (an absolute archive, /vsizip/vsicurl/...) is returned as it is."""
    found = re.match(r"(/vsi(?:zip|tar|gzip|7z|rar)/)(.+)$", path)
    if found is None or found[2].startswith(("/", "vsi")):
        return path
    prefix, rest = found[1], found[2]
    if braced := re.match(r"\{([^}]+)\}(.*)$", rest):
        if not braced[1].startswith("/") and os.path.isfile(braced[1]):
            return f"{prefix}{{{os.path.abspath(braced[1])}}}{braced[2]}"
        return path
    parts = rest.split("/")
    for i in range(1, len(parts) + 1):
        if os.path.isfile(head := "/".join(parts[:i])):
            return prefix + os.path.abspath(head) + "".join("/" + p for p in parts[i:])
    return path


def gdal_file(path: str) -> str | None:
    """The local file a GDAL path reads: the archive of ``/vsizip/a.zip/x.tif`` (/vsitar/, /vsigzip/, /vsi7z/,
    /vsirar/, ``zip://a.zip!x.tif``), the file of ``GPKG:a.gpkg:table``; None where there is none to name (a URL,
    /vsizip/vsicurl/...) or it is not a file here."""
    if (sub := subdataset_file(path)) is not None:
        return sub[0]
    if url := re.match(r"(?:zip|tar|gzip)(?:\+file)?://([^!]+)", path):
        return url[1] if os.path.isfile(url[1]) else None
    found = re.match(r"/vsi(?:zip|tar|gzip|7z|rar)/(.+)$", path)
    if found is None or found[1].startswith("vsi"):
        return None
    if braced := re.match(r"\{([^}]+)\}", found[1]):
        return braced[1] if os.path.isfile(braced[1]) else None
    parts = found[1].split("/")
    for i in range(1, len(parts) + 1):
        if (head := "/".join(parts[:i])) and os.path.isfile(head):
            return head
    return None


def inspect_raster(path: str | os.PathLike) -> RasterInfo:
    """Open `path` with rasterio, check it can be segmented, and describe it; nothing is read.

    Raises
    ------
    RasterReadError
        The path is missing or GDAL cannot read it as a raster.
    InputError
        The data type is not supported.
    """
    path = os.fspath(path)
    if relative := re.match(r"(zip|tar|gzip)://(?!/)([^!]+)(!.*)?$", path):  # rasterio reads these only absolute
        path = f"{relative[1]}://{os.path.abspath(relative[2])}{relative[3] or ''}"
    path = _absolute_archive(path)  # a Dask worker started in another folder read /vsizip/data/a.zip/x.tif there
    if (sub := subdataset_file(path)) is not None and not os.path.isabs(sub[0]):  # GPKG:a.gpkg:t, likewise
        path = path.replace(sub[0], os.path.abspath(sub[0]), 1)
    if is_gdal_path(path):  # /vsizip/..., zip://...!x.tif, https://...: GDAL finds it, or says why not
        pass
    elif not os.path.exists(absolute := os.path.abspath(path)):
        home = (f" A leading ~ is the shell's: pass {os.path.expanduser(path)!r} (os.path.expanduser)."
                if path.startswith("~") and os.path.exists(os.path.expanduser(path)) else "")
        note = whitespace_note(path)  # a name read from a file ended the line of the error in its newline
        raise RasterReadError(f"{repr(absolute) if note else absolute}: no such file. Check the path.{home}{note}")
    elif os.path.isdir(path := absolute):
        raise RasterReadError(f"{path}: is a folder; pass raster files (GeoTIFF, JPEG, PNG, VRT...).")
    if not gdal_can_name(path):
        raise InputError(f"{shown_name(path)!r}: its name cannot be passed to GDAL in this locale ({sys.getfilesystemencoding()} "
                         "file names). Run in a UTF-8 locale (export LC_ALL=C.UTF-8) or with PYTHONUTF8=1.")
    stamp = None if is_gdal_path(path) else _stamp(path)  # before it is opened: a change after it is seen
    try:
        with catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                if ds.count == 0:  # a GeoPackage of two raster tables, a NetCDF of variables: a ValueError traceback
                    raise RasterReadError(_several_rasters(path, ds.subdatasets))
                flags = ds.mask_flag_enums
                info = RasterInfo(
                    path=path,
                    width=ds.width,
                    height=ds.height,
                    count=ds.count,
                    dtype=np.result_type(*ds.dtypes).name,  # as its bands are read (`read_bands`)
                    crs=ds.crs,
                    transform=ds.transform,
                    # an alpha band that is not the last of 2 or 4 (R,G,B,NIR,alpha): GDAL makes no mask of it
                    has_mask=any(MaskFlags.all_valid not in f for f in flags) or ColorInterp.alpha in ds.colorinterp,
                    alpha_bands=tuple(b for b, ci in enumerate(ds.colorinterp, 1) if ci == ColorInterp.alpha),
                    scales=tuple(map(float, ds.scales)), offsets=tuple(map(float, ds.offsets)),
                    descriptions=tuple(ds.descriptions), color_tags=tuple(c.name for c in ds.colorinterp),
                    block_shape=tuple(ds.block_shapes[0]),
                    gcps=tuple(ds.gcps[0]),
                    gcp_crs=ds.gcps[1],
                    rpcs=ds.rpcs,
                    paletted=ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette,
                    class_mask="CLASS_NAMES" in ds.tags(),
                    stamp=stamp,
                )
    except RasterioIOError as exc:
        raise RasterReadError(f"{path}: not a raster GDAL can read ({exc}).") from None
    except UnicodeEncodeError:  # an ASCII locale (LC_ALL=C, PYTHONUTF8=0) decoded its name into surrogates
        raise InputError(f"{shown_name(path)!r}: its name cannot be passed to GDAL in this locale ({sys.getfilesystemencoding()} "
                         "file names). Run in a UTF-8 locale (export LC_ALL=C.UTF-8) or with PYTHONUTF8=1.") from None
    if info.crs is None and info.gcps and _gcp_fit(info.gcps) is None:
        log.warning("%s: its %d ground control point(s) do not span an area (3 or more, not on one line, are "
                    "needed), so areas and polygons stay in pixels. Add points, or warp it (gdalwarp).",
                    path, len(info.gcps))
    if not info.transform.is_identity and not info.gcps and (
            info.transform.is_degenerate or not np.all(np.isfinite(tuple(info.transform)))):
        # a pixel size of 0 (a world file with a line of 0, -a_ullr with equal corners): every area 0 m² and every
        # polygon empty, without a word (h135)
        raise InputError(f"{path}: its geotransform {tuple(info.transform)[:6]} gives its pixels no area (a pixel "
                         "size of 0, or not a number), so nothing can be placed on the map. Fix it "
                         f"({gdal_edit(path, '-a_ullr ULX ULY LRX LRY')}) or remove it ({gdal_edit(path, '-unsetgt')}).")
    if info.dtype not in SUPPORTED_DTYPES:
        raise InputError(
            f"{path}: data type {info.dtype} is not supported; use one of {', '.join(SUPPORTED_DTYPES)}: convert it, "
            f"e.g. gdal_translate -ot {'Float32' if 'complex' in info.dtype or 'float' in info.dtype else 'Int32'} "
            f"{shlex.quote(str(path))} converted.tif" + (" (complex values keep only their real part)"
                                                         if "complex" in info.dtype else "") + "."
        )
    return info


def _several_rasters(path: str, subdatasets: list[str]) -> str:
    if not subdatasets:
        return f"{path}: holds no raster bands (a vector layer, or an empty raster table?); pass a raster."
    shown = ", ".join(repr(s) for s in subdatasets[:5]) + (f" and {len(subdatasets) - 5} more" if len(subdatasets) > 5 else "")
    return (f"{path}: holds {len(subdatasets)} rasters, not one; pass one of them by GDAL's name for it, as QGIS "
            f"does: {shown} (gdalinfo lists them).")


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def check_unchanged(info: RasterInfo) -> None:
    """Raise RasterReadError if the file of `info` was replaced or written to since it was inspected.

    Chunks open the file by its path as they go: an input replaced mid-run (an export written over it, a
    ``mv new.tif scene.tif``) gave a mask of two rasters, or nodata where the new one was smaller, and exit 0."""
    if info.stamp is not None and _stamp(info.path) != info.stamp:
        raise RasterReadError(f"{info.path}: changed while it was being segmented (replaced or written to), so its "
                              "mask could mix two versions of it; nothing was put in place. Run again once the file "
                              "is complete.")


# colour tags GDAL never gives by default (it tags 3 and 4 bands of 8 bits red, green, blue and alpha whatever they
# hold): a file with one of them was tagged on purpose, and its red, green and blue can be trusted too
DELIBERATE_TAGS = ("coastal", "rededge", "nir", "swir", "mwir", "lwir", "tir", "other_ir", "pan")
SPECTRAL_TAGS = ("red", "green", "blue", *DELIBERATE_TAGS)
_DESCRIBED = (("rededge", ("rededge", "red edge")), ("nir", ("nir", "nir08", "near infrared", "nearinfrared")),
              ("swir", ("swir", "swir1", "swir2", "swir16", "swir22", "shortwave infrared")),
              ("coastal", ("coastal",)), ("pan", ("pan", "panchromatic")), ("red", ("red",)), ("green", ("green",)),
              ("blue", ("blue",)))  # in this order: "red edge" is no red


def band_roles(info: RasterInfo) -> list[str | None]:
    """What each band is by the file's own word: its description ("nir", "Band 4 (red)", "SWIR 1"), else its
    colour tag where the tags were set on purpose (`DELIBERATE_TAGS`); None where the file does not say."""
    deliberate = any(t in DELIBERATE_TAGS for t in info.color_tags)
    roles: list[str | None] = []
    for i in range(info.count):
        words = re.findall(r"[a-z0-9]+", ((info.descriptions[i] if i < len(info.descriptions) else None) or "").lower())
        text = f" {' '.join(words)} "
        found = next((role for role, names in _DESCRIBED if any(f" {n} " in text for n in names)), None)
        tag = info.color_tags[i] if i < len(info.color_tags) else None
        roles.append(found or (tag if deliberate and tag in SPECTRAL_TAGS else None))
    return roles


_UNUSABLE_SCALES_SAID: set = set()  # outside a run's `said_once_per_run` (direct calls): once per process
_SAID_IN_RUN: contextvars.ContextVar[set | None] = contextvars.ContextVar("geoseg_said_in_run", default=None)


@contextmanager
def said_once_per_run() -> Iterator[None]:
    """Within the block (a run, and the runs it makes: flood's two segments), what is said once per file is said
    once; the next run says it again, for its own `result.warnings` (a notebook's rerun of a cell got none, h133)."""
    token = _SAID_IN_RUN.set(set()) if _SAID_IN_RUN.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _SAID_IN_RUN.reset(token)


def declared_scaling(info: RasterInfo, bands: Sequence[int]) -> tuple[list[float], list[float]] | None:
    """The scales and offsets the file declares for `bands` (1-based), or None where they are all 1 and 0 (or one
    is no usable number). Values in the file's units are ``stored * scale + offset``, as QGIS shows them and
    ``gdal_translate -unscale`` writes them."""
    if not info.scales:
        return None
    scales = [info.scales[b - 1] for b in bands]
    offsets = [info.offsets[b - 1] for b in bands]
    if all(s == 1 and o == 0 for s, o in zip(scales, offsets)):
        return None
    if not all(np.isfinite(s) and s != 0 and np.isfinite(o) for s, o in zip(scales, offsets)):
        said, already = (info.path, info.stamp, tuple(scales), tuple(offsets)), _SAID_IN_RUN.get()
        already = _UNUSABLE_SCALES_SAID if already is None else already
        if said not in already:  # flood --pre asks twice per image: once said (h126)
            already.add(said)
            log.warning("%s: its band scales %s and offsets %s are not all usable numbers, so its stored values are "
                        "read as they are", info.path, scales, offsets)
        return None
    return scales, offsets


def check_bands(info: RasterInfo, bands: Sequence[int], *, needed: int) -> tuple[int, ...]:
    """Check that `bands` (1-based) exist in the raster and number `needed`.

    Raises
    ------
    BandError
        With the raster's band count and the fix (``--bands``).
    """
    if isinstance(bands, np.ndarray) and bands.ndim == 1:
        bands = bands.tolist()
    if isinstance(bands, (str, bytes)) or not isinstance(bands, Sequence) or not all(
            isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in bands):
        raise BandError(f"bands must be a list of 1-based band indexes, e.g. [3, 2, 1]. Received: {bands!r}")
    bands = tuple(int(b) for b in bands)
    if len(bands) != needed:
        raise BandError(
            f"{info.path}: the model reads {needed} band(s) but {len(bands)} were selected "
            f"(bands={list(bands)}). Pass --bands (bands= in Python) with {needed} band indexes."
        )
    missing = [b for b in bands if not 1 <= b <= info.count]
    if info.paletted and info.class_mask:  # survey masks.vrt: "expand it to RGB" was the wrong advice
        raise BandError(f"{info.path}: a class mask (its CLASS_NAMES tag names the classes, as geoseg writes masks), "
                        "not an image: segment the image it was made from, or open it in QGIS as it is.")
    if info.paletted:  # indexes into a colour table are no reflectance, whatever --bands says
        raise BandError(
            f"{info.path}: a paletted image (one band of colour-table indexes, not colours); the model reads "
            f"{needed} band(s) of values. Expand it to RGB first: gdal_translate -expand rgb {os.path.basename(info.path)} "
            "rgb.tif, or in QGIS Raster > Conversion > PCT to RGB."
        )
    if missing:  # the card's bands or the user's --bands: say which do not exist, and what would
        data = [b for b in range(1, info.count + 1) if b not in info.alpha_bands]  # grey + alpha: its one band
        repeat = f", e.g. {','.join([str(data[0])] * needed)} to give the model its one band {needed} times" + (
            " (the alpha band stays the mask of no data)" if info.alpha_bands else "") if (
            len(data) == 1 < needed) else ""
        raise BandError(
            f"{info.path}: has {info.count} band(s), so band(s) {missing} of {list(bands)} do not exist (bands "
            f"count from 1). Pass --bands (bands= in Python) with {needed} indexes between 1 and {info.count}{repeat}."
        )
    return bands


# GDAL loses writes when other threads read while an output block is partly written: a 320 px mask
# written in 4 px chunks came out with a chunk of nodata in half the runs (and in 1 of 6 `geoseg
# evaluate` runs at small chunks), never when reads and writes took turns. Chunk reads and output
# writes in this process hold this lock; the model runs outside it.
IO_LOCK = threading.Lock()


def read_bands(ds, bands: Sequence[int], **kwargs) -> np.ndarray:
    """``ds.read(bands, **kwargs)``, also where the bands differ in data type: read one type at a time, as the
    type that holds them all.

    rasterio refuses to read bands of several types at once ("more than one 'dtype' found", even with
    out_dtype), which a VRT stacked by ``gdalbuildvrt -separate`` or QGIS's Build Virtual Raster has (float32
    Landsat bands and an int16 one): segment and train ended in that traceback.
    """
    bands = list(bands)
    types = [ds.dtypes[b - 1] for b in bands]
    if len(set(types)) == 1:
        return ds.read(bands, **kwargs)
    parts = {}
    for t in dict.fromkeys(types):
        group = [b for b, u in zip(bands, types) if u == t]
        shape = {"out_shape": (len(group), *kwargs["out_shape"][1:])} if "out_shape" in kwargs else {}
        parts[t] = ds.read(group, **{**kwargs, **shape})
    out = np.empty((len(bands),) + parts[types[0]].shape[1:], np.result_type(*types))
    for t, part in parts.items():
        out[[i for i, u in enumerate(types) if u == t]] = part
    return out


def valid_pixels(masks: np.ndarray, nodata: Sequence) -> np.ndarray:
    """(rows, cols) validity from GDAL's (bands, rows, cols) masks of the bands a model reads and their nodata values.

    A pixel is nodata where every band is, as GDAL's dataset mask and QGIS read it, and also where a band whose
    nodata value is a sentinel (negative, as -9999 or -32768, or beyond 1e30) is: the model read such values as
    pixels (one Landsat band nodata on 22% of a scene where the others had data). A nodata value of 0 or another
    value data can take is no sentinel: a dark 8-bit pixel, or open water's near-infrared 0.0 in a float raster
    whose nodata is 0, stays valid where another band has data.
    """
    seen = masks > 0
    valid = seen.any(0)
    sentinel = [i for i, v in enumerate(nodata) if v is not None and (v < 0 or abs(v) > 1e30)]
    if sentinel:
        valid &= seen[sentinel].all(0)
    return valid


def _dask_worker() -> str | None:
    """The address of the Dask worker this runs on, or None outside of one."""
    import sys

    if "distributed" not in sys.modules:  # never imported here: no worker
        return None
    try:
        from distributed import get_worker

        return get_worker().address
    except Exception:  # noqa: BLE001 - ValueError outside a worker's task
        return None


def alpha_band(ds) -> int | None:
    """The first band of `ds` tagged alpha (transparency), or None."""
    return next((b for b, ci in enumerate(ds.colorinterp, 1) if ci == ColorInterp.alpha), None)


def opaque(ds, window=None, out_shape=None) -> np.ndarray | bool:
    """Where the alpha band of `ds` is over 0 (True without one): geoseg's reads take transparent pixels as nodata
    wherever GDAL's mask does not (an alpha beside a nodata value, or not the last of 2 or 4 bands, as in an
    R,G,B,NIR,alpha ortho), in segment's chunks, flood's NDWI and samples, and training's chips alike."""
    from rasterio.enums import Resampling

    band = alpha_band(ds)
    if band is None:
        return True
    kwargs = {} if out_shape is None else {"out_shape": out_shape, "resampling": Resampling.nearest}
    return ds.read(band, window=window, **kwargs) > 0


class WindowSource:
    """``read(rows, cols) -> (block, valid)`` for `geoseg.tiling.windowed_map`: one open, two reads.

    Holds only the path, so it pickles to distributed workers.

    Parameters
    ----------
    path : str
        The raster.
    bands : sequence of int
        1-based band indexes in model order.
    has_mask : bool
        Whether to read GDAL's mask; otherwise every pixel is valid.
    """

    def __init__(self, path: str, bands: Sequence[int], *, has_mask: bool, grid: RasterInfo | None = None) -> None:
        self.path, self.bands, self.has_mask, self.grid = path, list(bands), has_mask, grid

    def __call__(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        from contextlib import ExitStack

        window = Window.from_slices(rows, cols)
        with IO_LOCK, catch_warnings(), ExitStack() as stack:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            # that a nodata value makes GDAL's mask and not an alpha band: the alpha is read below as well
            warnings.simplefilter("ignore", NodataShadowWarning)
            try:
                ds = stack.enter_context(rasterio.open(self.path))
            except RasterioIOError as exc:  # a traceback, and the other inputs of the run were not segmented
                exc.__cause__ = exc.__context__ = None  # GDAL's error, which a Dask worker cannot send back (it
                # sent a bare Exception: a traceback, the batch stopped)
                worker = _dask_worker()
                if worker is not None:  # a worker that joined mid-run and cannot see the file was told "moved,
                    # deleted or replaced", and not which worker (h142)
                    raise WorkerReadError(self.path, worker, first_line(exc).removeprefix(f"{self.path}: ")) from None
                message = (f"{self.path}: could not be opened again while it was being segmented ({first_line(exc)}): "
                           "was it moved, deleted or replaced during the run? Put it back and run again.")
                raise RasterReadError(message) from None
            where = window
            if self.grid is not None:  # resampled on the fly to the model's pixel size
                sy, sx = ds.height / self.grid.height, ds.width / self.grid.width  # errors name the input's pixels
                where = Window(window.col_off * sx, window.row_off * sy, window.width * sx, window.height * sy)
                ds = stack.enter_context(_warped(ds, self.grid, "bilinear"))
            with reading_pixels(self.path, where):
                data = np.moveaxis(read_bands(ds, self.bands, window=window), 0, -1)
                if self.has_mask or self.grid is not None:
                    valid = valid_pixels(ds.read_masks(self.bands, window=window),
                                         [ds.nodatavals[b - 1] for b in self.bands])[..., None]
                    # the alpha's own mask is all valid, and GDAL makes a mask of it only as the last of 2 or 4
                    # bands: read with others, or in an R,G,B,NIR,alpha ortho, every pixel was valid
                    valid &= np.asarray(opaque(ds, window))[..., None]
                else:
                    valid = np.ones(data.shape[:2] + (1,), bool)
        if data.dtype.kind == "f":  # NaN or inf in any band: nodata, or it spreads through the model's context
            valid &= np.isfinite(data).all(-1, keepdims=True)
        return data, valid


def open_quietly(path: str | os.PathLike):
    """``rasterio.open(path)`` without rasterio's NotGeoreferencedWarning: a JPEG or PNG and its masks have
    no georeferencing, which geoseg says itself where it matters (no m², no mosaic)."""
    with catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


@contextmanager
def reading_pixels(path: str | os.PathLike, window: Window | None = None) -> Iterator[None]:
    """Turn GDAL's failure to read pixels of `path` into a RasterReadError naming the file, the window and the fix.

    A truncated or damaged file opens (its header is whole) and fails only where a read
    reaches the missing or broken blocks, possibly inside a Dask task: the error travels
    back to the caller as it is. Wrap reads of inputs; writes and checks of outputs raise
    OutputError where they happen.

    Parameters
    ----------
    path : path
        The raster, as the user named it.
    window : Window, optional
        The pixels read (in the file's own rows and columns); None for the whole raster.

    Raises
    ------
    RasterReadError
        In place of rasterio's RasterioIOError or GDAL's own errors raised in the block.
    """
    from rasterio._err import CPLE_BaseError  # GDAL's own errors; rasterio exports no public base for them

    try:
        yield
    except (RasterioIOError, CPLE_BaseError) as exc:
        message = _read_failure(os.fspath(path), window, exc)
        exc.__cause__ = exc.__context__ = None  # GDAL's error, which a Dask worker cannot send back: it sent a
        raise RasterReadError(message) from None  # bare Exception instead (a traceback, and the batch stopped)


def _read_failure(path: str, window: Window | None, exc: Exception) -> str:
    """The message of a failed pixel read: file, window, GDAL's reason (rasterio's "Read failed" keeps it in
    ``__cause__``) and what to do."""
    import math
    import shlex

    where = "its pixels"
    if window is not None:
        (r0, r1), (c0, c1) = window.toranges()
        where = f"rows {math.floor(r0)}-{max(math.floor(r0), math.ceil(r1) - 1)}, " \
                f"cols {math.floor(c0)}-{max(math.floor(c0), math.ceil(c1) - 1)}"
    reason = first_line(exc.__cause__ if exc.__cause__ is not None else exc).rstrip(".")
    return (f"{path}: cannot read {where} ({reason}); the file may be truncated or damaged. Check it "
            f"with gdalinfo -checksum {shlex.quote(path)}, and download or export it again.")


def _warped(ds, grid: RasterInfo, resampling: str):
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    return WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                     resampling=Resampling[resampling])


def model_grid(info: RasterInfo, pixel_size: float | None, *, tolerance: float = 0.05) -> RasterInfo | None:
    """The grid of `info` at `pixel_size` metres on the ground, or None when no resampling is needed or possible.

    Resampling happens for georeferenced rasters whose pixel differs from the model's by more than `tolerance`
    (relative); rasters without a CRS are left as they are. A pixel's size is its sides in the CRS's units,
    or, where those are no ground metres (degrees; Web Mercator, whose metres are 1.6 ground metres at 52° N,
    or any CRS whose areas stray over 1% from the ground's), its sides measured on the ellipsoid at the
    raster's centre: a DroneDeploy export in EPSG:3857 was shown to a 0.12 m model at 0.074 m, and one in
    EPSG:4326 not resampled at all.
    """
    from dataclasses import replace

    if not pixel_size or info.crs is None or info.transform.is_identity:
        return None
    res = pixel_sides_m(info)
    if res is None:
        log.warning("%s: the ground size of its pixels in %s cannot be worked out, so it is not resampled to "
                    "the model's %g m pixels; warp it to a projected CRS (its UTM zone) first", info.path,
                    info.crs.to_string(), pixel_size)
        return None
    if all(abs(r - pixel_size) / pixel_size <= tolerance for r in res):
        return None
    width = max(1, round(info.width * res[0] / pixel_size))
    height = max(1, round(info.height * res[1] / pixel_size))
    transform = info.transform @ Affine.scale(info.width / width, info.height / height)
    return replace(info, width=width, height=height, transform=transform)


def pixel_sides_m(info: RasterInfo) -> tuple[float, float] | None:
    """The ground metres of a pixel's two sides (along columns, then rows): in the CRS's units where those are
    ground metres (UTM; a rotated grid's sides too: |a| and |e| were 0 at 90 degrees), else measured on the
    ellipsoid at the raster's centre (degrees, Web Mercator, any CRS whose areas stray over 1%). None without a
    CRS, or where PROJ cannot say."""
    if info.crs is None or info.transform.is_identity:
        return None
    t = info.transform
    if info.crs.is_geographic or areal_distortion(info.crs, t, info.width, info.height) > AREAL_TOLERANCE:
        return _ground_sides(info)
    factor = metres_per_unit(info.crs)
    return float(np.hypot(t.a, t.d)) * factor, float(np.hypot(t.b, t.e)) * factor


def _ground_sides(info: RasterInfo) -> tuple[float, float] | None:
    """Metres on the WGS 84 ellipsoid of the sides of the pixel at the raster's centre (along its columns, then
    its rows); None where PROJ cannot take its corners to longitude and latitude."""
    from pyproj import Geod, Transformer

    t = info.transform
    col, row = info.width / 2, info.height / 2
    corners = [t @ (col, row), t @ (col + 1, row), t @ (col, row + 1)]
    try:
        lon, lat = Transformer.from_crs(info.crs.to_wkt(), "EPSG:4326", always_xy=True).transform(
            [x for x, _ in corners], [y for _, y in corners])
        geod = Geod(ellps="WGS84")
        sides = (geod.inv(lon[0], lat[0], lon[1], lat[1])[2], geod.inv(lon[0], lat[0], lon[2], lat[2])[2])
    except Exception:  # noqa: BLE001 - a CRS PROJ cannot invert
        return None
    return (float(sides[0]), float(sides[1])) if all(np.isfinite(sides)) and min(sides) > 0 else None


def regrid(src: Path, dst: Path, like: RasterInfo, *, resampling: str, block: int = 1024,
           valid: WindowSource | None = None) -> None:
    """Warp a finished output raster onto `like`'s grid, window by window, keeping its colours and tags.

    With `valid` (the input's `WindowSource`), the output's nodata is exactly the input's: a nodata strip
    narrower than a model pixel got classes (areas, polygons) without it, and the valid pixels beside one,
    whose model pixel was nodata, none; those take the nearest pixel's value.
    """
    with rasterio.open(src) as ds, _warped(ds, like, resampling) as vrt:
        profile = _profile(like, ds.count, ds.dtypes[0])
        profile["nodata"] = ds.nodata
        with rasterio.open(dst, "w", **profile) as out:
            for row in range(0, like.height, block):
                for col in range(0, like.width, block):
                    window = Window(col, row, min(block, like.width - col), min(block, like.height - row))
                    if valid is None or ds.nodata is None:
                        out.write(vrt.read(window=window), window=window)
                        continue
                    # with a halo: the nearest value of a pixel at the block's edge may lie across it (a block
                    # with none left its valid pixels nodata)
                    top, left = max(0, row - REGRID_HALO), max(0, col - REGRID_HALO)
                    outer = Window(left, top, min(like.width, col + window.width + REGRID_HALO) - left,
                                   min(like.height, row + window.height + REGRID_HALO) - top)
                    data = vrt.read(window=outer)
                    _match_nodata(data, valid(*outer.toslices())[1][..., 0], ds.nodata)
                    out.write(data[:, row - top:row - top + window.height, col - left:col - left + window.width],
                              window=window)
            out.update_tags(**ds.tags())
            for band in range(1, ds.count + 1):
                out.set_band_description(band, ds.descriptions[band - 1] or "")
            try:
                out.write_colormap(1, ds.colormap(1))
            except ValueError:  # no colour table
                pass


REGRID_HALO = 64  # px of the input grid read around each block of `regrid`: a model pixel up to 64 input pixels


def _match_nodata(data: np.ndarray, valid: np.ndarray, nodata) -> None:
    """Make `data` (bands, rows, cols) nodata exactly where `valid` is False, in place; valid pixels that were
    nodata take the value of the nearest pixel that is not (none where no pixel is)."""
    data[:, ~valid] = nodata
    missing = data[0] == nodata
    lost = valid & missing
    if lost.any() and not missing.all():
        from scipy import ndimage

        rows, cols = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
        data[:, lost] = data[:, rows[lost], cols[lost]]


def _profile(info: RasterInfo, count: int, dtype: str) -> dict:
    profile = {
        "driver": "GTiff",
        "width": info.width,
        "height": info.height,
        "count": count,
        "dtype": dtype,
        "crs": info.crs,
        "transform": info.transform,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "bigtiff": "if_safer",
        # outputs are georeferenced as the input is: by ground control points or RPCs where it has them
        **({"gcps": list(info.gcps), "crs": info.gcp_crs} if info.gcps and info.crs is None else {}),
        **({"rpcs": info.rpcs} if info.rpcs else {}),
    }
    if "gcps" in profile or info.transform.is_identity:
        # GDAL would clear it (with a warning) when GCPs are set; and an input without georeferencing
        # gets none either: an explicit y-down identity shows upside down in QGIS beside the input
        del profile["transform"]
    return profile


def create_outputs(info: RasterInfo, layers: dict[str, tuple[Path, int, int | None]]) -> dict:
    """Create empty tiled GeoTIFFs for each layer ``name -> (path, bands, nodata)``; return open datasets."""
    datasets = {}
    with catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for name, (path, count, nodata) in layers.items():
            profile = _profile(info, count, "uint8")
            if nodata is not None:
                profile["nodata"] = nodata
            try:
                datasets[name] = rasterio.open(path, "w", **profile)
            except RasterioIOError as exc:
                for ds in datasets.values():
                    ds.close()
                raise OutputError(f"{path}: cannot write here ({exc}). Pick a writable output folder.") from None
    return datasets


def written_by_geoseg(path: str | os.PathLike) -> bool:
    """Whether `path` is a raster geoseg wrote: a mask, confidence or probabilities raster, a survey's mosaic
    (their ``NODATA_MEANS`` tag) or a preview or map PNG (its ``Software`` text). False for anything else,
    including a file GDAL cannot open."""
    try:
        with open_quietly(path) as ds:
            tags = ds.tags()
    except rasterio.errors.RasterioError:
        return False
    return tags.get("NODATA_MEANS") == "no input data" or tags.get("Software", "").startswith("geoseg")


def describe_mask(ds, classes) -> None:
    """Attach the class colour table, names and band description to an open mask dataset."""
    colormap = {c.id: c.rgb + (255,) for c in classes}
    colormap[NODATA] = (0, 0, 0, 0)
    ds.write_colormap(1, colormap)
    ds.set_band_description(1, "class")
    ds.update_tags(
        CLASS_NAMES=json.dumps({c.id: c.name for c in classes}),
        **{f"CLASS_{c.id}": c.name for c in classes},
        NODATA_MEANS="no input data",
    )


def class_sidecar(path: str | os.PathLike) -> Path:
    """The GDAL sidecar of a mask, ``x_mask.tif.aux.xml``, where `write_class_sidecar` puts its class names."""
    path = Path(path)
    return path.with_name(path.name + ".aux.xml")


def write_class_sidecar(path: str | os.PathLike, classes) -> None:
    """Write `path` (a mask's `class_sidecar`, or a staged copy of it) with the class names of `classes` (a card's
    `ClassInfo`s) as GDAL reads them: the band's category names and a thematic raster attribute table (Value,
    Class, Red, Green, Blue, Alpha).

    A GeoTIFF holds neither (its CLASS_NAMES tag is geoseg's own, which no GIS reads): GDAL keeps both in this
    ``.aux.xml``. QGIS names the colour table's entries by the category names where no ``.qml`` style is beside
    the mask (else 0..255), its Identify tool and attribute table (3.30+) read the table, as do ArcGIS and
    ``gdalinfo``. Rewritten with every mask: a sidecar of an earlier run (other classes, or QGIS's statistics of
    the old pixels) would otherwise name the new mask's classes."""
    from geoseg.files import replaced_atomically

    with replaced_atomically(path) as tmp:
        tmp.write_text(class_sidecar_xml(classes), encoding="utf-8")  # class names (forêt) in any locale


def class_sidecar_xml(classes) -> str:
    """The text of `write_class_sidecar`'s sidecar: a GDAL PAM dataset (``<PAMDataset>``)."""
    return f"<PAMDataset>\n  <PAMRasterBand band=\"1\">\n{class_band_xml(classes)}  </PAMRasterBand>\n</PAMDataset>\n"


def class_band_xml(classes) -> str:
    """A band's class names as GDAL's XML (a PAM sidecar's or a VRT's band) holds them: its category names, from
    value 0 to the highest class id, a value of no class (a gap; 255, nodata) unnamed, and a thematic raster
    attribute table of a row per class."""
    from xml.sax.saxutils import escape

    names = {int(c.id): str(c.name) for c in classes}
    categories = "".join(f"      <Category>{escape(names.get(i, ''))}</Category>\n"
                         for i in range(max(names, default=-1) + 1))
    # GDAL's field types (0 integer, 2 string) and usages (5 min-max: the value, 2 name, 6-9 red, green, blue,
    # alpha), as GDALSetDefaultRAT writes them
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8), ("Alpha", 0, 9)]
    defs = "".join(f'      <FieldDefn index="{i}">\n        <Name>{name}</Name>\n        <Type>{kind}</Type>\n'
                   f"        <Usage>{usage}</Usage>\n      </FieldDefn>\n"
                   for i, (name, kind, usage) in enumerate(fields))
    rows = "".join(
        f'      <Row index="{n}">\n' + "".join(f"        <F>{escape(str(v))}</F>\n"
                                              for v in (c.id, c.name, *c.rgb, 255)) + "      </Row>\n"
        for n, c in enumerate(sorted(classes, key=lambda c: c.id)))
    return ((f"    <CategoryNames>\n{categories}    </CategoryNames>\n" if categories else "")
            + f'    <GDALRasterAttributeTable tableType="thematic">\n{defs}{rows}    </GDALRasterAttributeTable>\n')


def finalize_cog(tmp_path: Path, final_path: Path, *, resampling: str = "MODE") -> None:
    """Copy a finished GeoTIFF into a Cloud-Optimized GeoTIFF with overviews, then move it into place."""
    os.replace(write_cog(tmp_path, final_path, resampling=resampling), final_path)


def write_cog(tmp_path: Path, final_path: Path, *, resampling: str = "MODE") -> Path:
    """Copy a finished GeoTIFF into a checked Cloud-Optimized GeoTIFF beside it; return its path.

    The caller moves it to `final_path` (named in errors), so several layers can all be
    written before any appears. A full disk is an OutputError: GDAL may report it only as
    a warning and leave a short file, so the copy's last block is read back.
    """
    from rasterio._err import CPLE_BaseError  # GDAL's own errors; rasterio exports no public base for them
    from rasterio.errors import RasterioError
    from rasterio.shutil import copy as rio_copy

    staged = tmp_path.with_name(tmp_path.stem + ".cog.tif")
    import shutil

    # GDAL's COG writer crashed the process (exit 139) on some full disks: refuse a copy that cannot fit
    # (the copy, its overviews and their temporary file, at most about twice the staged raster)
    need, free = 2 * tmp_path.stat().st_size + 2**20, shutil.disk_usage(staged.parent).free
    if free < need:
        needed, left = apart(need / 2**20, free / 2**20)  # 1.04 and 1.02 MB both read 1.0 MB at one decimal
        raise OutputError(f"{final_path}: could not be written (about {needed} MB needed, "
                          f"{left} MB free). Free some disk space or pick another output folder; "
                          "nothing was left at that path.")
    step = "copy"
    try:
        with catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            rio_copy(
                tmp_path,
                staged,
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=512,
                OVERVIEW_RESAMPLING=resampling,
                BIGTIFF="IF_SAFER",
                NUM_THREADS="ALL_CPUS",
            )
            step = "check"
            with rasterio.open(staged) as ds:  # full-resolution tiles come last in a COG
                rows, cols = ds.block_shapes[0]
                top, left = (ds.height - 1) // rows * rows, (ds.width - 1) // cols * cols
                ds.read(window=Window(left, top, ds.width - left, ds.height - top))
    except (RasterioError, CPLE_BaseError, OSError, SystemError) as exc:  # SystemError: "Unknown GDAL Error"
        reason = first_line(exc) if step == "copy" else "the copy came out short: is the disk full?"
        raise OutputError(f"{final_path}: could not be written ({reason}). Free some disk space "
                          "or pick another output folder; nothing was left at that path.") from None
    return staged


def first_line(exc: Exception) -> str:
    """The first line of an exception's message (GDAL's run to several), or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def class_pixel_counts(path: str | os.PathLike, n_classes: int) -> np.ndarray:
    """Count pixels of each class in a mask, per row: (rows, n_classes) int64, block by block."""
    with catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a mask of a photo has no geotransform
        ds = rasterio.open(path)
    with ds:
        counts = np.zeros((ds.height, n_classes), np.int64)
        for _, window in ds.block_windows(1):
            data = ds.read(1, window=window)
            r0 = int(window.row_off)
            counts[r0 : r0 + data.shape[0]] += row_class_counts(data, n_classes)
    return counts


def row_class_counts(data: np.ndarray, n_classes: int) -> np.ndarray:
    """Pixels of each class in each row of a 2-D mask: (rows, n_classes); other values are not counted."""
    rows = np.repeat(np.arange(data.shape[0]), data.shape[1])
    flat = data.ravel()
    keep = flat < n_classes
    binned = np.bincount(rows[keep] * n_classes + flat[keep], minlength=data.shape[0] * n_classes)
    return binned.reshape(data.shape[0], n_classes)


def pixel_areas_m2(info: RasterInfo) -> np.ndarray | None:
    """Area of one pixel in m² for each row: geodesic in geographic CRSs, and in projected ones whose
    areal scale strays over 0.1% from 1 over the raster (Web Mercator, UTM far from its central meridian,
    national grids at their edges); planar in the others (UTM near its central meridian).

    Returns None when the raster has no CRS (plain JPEG/PNG). A raster placed by ground control
    points is measured with their best-fit affine transform.
    """
    t, crs = info.map_georeferencing()
    if crs is None or t.is_identity:
        return None
    if crs.is_geographic or areal_distortion(crs, t, info.width, info.height) > GROUND_TOLERANCE:  # on the ground
        # a row's pixels share its latitude north-up in degrees or Mercator; `PixelAreas` where they do not
        column = 0 if crs.is_geographic else info.width // 2
        return _pixel_areas_at(np.arange(info.height, dtype=float), np.array([column], float), t, crs)
    return np.full(info.height, abs(t.a * t.e - t.b * t.d) * metres_per_unit(crs) ** 2)


def metres_per_unit(crs) -> float:
    """Metres in one unit of a projected CRS's axes (0.3048 for feet), or of a local engineering one
    (``LOCAL_CS``, a drone survey's site grid), whose rasterio `linear_units_factor` raises; `crs` is
    rasterio's or pyproj's."""
    try:
        return float(crs.linear_units_factor[1])
    except (AttributeError, rasterio.errors.CRSError):
        from pyproj import CRS as ProjCRS
        from pyproj.exceptions import CRSError as ProjCRSError

        try:
            axes = ProjCRS.from_wkt(crs.to_wkt()).axis_info
        except ProjCRSError:
            return 1.0
        return float(axes[0].unit_conversion_factor) if axes and axes[0].unit_conversion_factor else 1.0


class PixelAreas:
    """m² of each pixel of a raster's grid, window by window: ``areas(window)`` is (rows, 1) where a row's
    pixels share one area (UTM, a north-up geographic grid) and (rows, cols) where they do not.

    In a projection whose scale changes along a row (polar stereographic; a rotated grid), each row's
    area at its middle column misstated class areas by 2-4% for 10 km polar grids: there the ground area of
    the pixels of a lattice of at most 65 x 65 is measured (geodesic) and interpolated between them. None
    for a raster without a CRS.
    """

    def __init__(self, info: RasterInfo) -> None:
        self.rows = pixel_areas_m2(info)
        self.lattice = None
        t, crs = info.map_georeferencing()
        if self.rows is None:
            return
        # a rotated geographic grid, or a projected one measured on the ground whose pixels differ along a row
        # (polar stereographic; not north-up Mercator, whose rows are exact as they are)
        if (t.b or t.d) if crs.is_geographic else (
                areal_distortion(crs, t, info.width, info.height) > GROUND_TOLERANCE and _varies_along_rows(info, t, crs)):
            self.lattice = _area_lattice(info, t, crs)

    def __call__(self, window: Window) -> np.ndarray | None:
        if self.rows is None:
            return None
        r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        if self.lattice is None:
            return self.rows[r0:r0 + h, None]
        rows, cols, values = self.lattice  # linear between lattice points, along the columns, then the rows
        along = np.stack([np.interp(np.arange(c0, c0 + w), cols, v) for v in values])  # (lattice rows, w)
        at = np.arange(r0, r0 + h)
        i = np.clip(np.searchsorted(rows, at, side="right") - 1, 0, max(len(rows) - 2, 0))
        if len(rows) == 1:
            return np.broadcast_to(along[0], (h, w))
        f = ((at - rows[i]) / (rows[i + 1] - rows[i]))[:, None]
        return along[i] * (1 - f) + along[i + 1] * f


def _varies_along_rows(info: RasterInfo, t, crs) -> bool:
    """Whether the ground area of a pixel changes along the grid's rows (by over 1e-6), probed at the first,
    middle and last columns of its first, middle and last rows."""
    rows = sorted({0, info.height // 2, info.height - 1})
    cols = sorted({0, info.width // 2, info.width - 1})
    areas = _pixel_areas_at(np.asarray(rows, float), np.asarray(cols, float), t, crs).reshape(len(rows), len(cols))
    return bool((np.ptp(areas, axis=1) > 1e-6 * areas.max(axis=1)).any())


def _pixel_areas_at(rows: np.ndarray, cols: np.ndarray, t, crs) -> np.ndarray:
    """The ground area (m², geodesic) of the pixels at every (row, col) of `rows` x `cols`, flattened."""
    from pyproj import Geod, Transformer

    r, c = (a.ravel() for a in np.meshgrid(rows, cols, indexing="ij"))
    corners = [map_points(t, c + dc, r + dr) for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1))]
    if not crs.is_geographic:
        to_lonlat = Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True)
        corners = [to_lonlat.transform(x, y) for x, y in corners]
    geod = Geod(ellps="WGS84")
    lons, lats = np.stack([xy[0] for xy in corners], 1), np.stack([xy[1] for xy in corners], 1)
    return np.array([abs(geod.polygon_area_perimeter(lo, la)[0]) for lo, la in zip(lons, lats)])


def _area_lattice(info: RasterInfo, t, crs, points: int = 65) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ground area (m², geodesic) of the pixels at most `points` x `points` rows and columns of the grid."""
    step = max(1, -(-max(info.height, info.width) // (points - 1)))
    rows = np.unique(np.r_[np.arange(0, info.height, step), info.height - 1])
    cols = np.unique(np.r_[np.arange(0, info.width, step), info.width - 1])
    areas = _pixel_areas_at(rows.astype(float), cols.astype(float), t, crs)
    return rows, cols, areas.reshape(len(rows), len(cols))


def class_areas(data: np.ndarray, areas: np.ndarray, n_classes: int) -> np.ndarray:
    """m² of each class 0 .. n_classes - 1 in a 2-D mask block, given its pixels' `areas` (a `PixelAreas` window)."""
    keep = data < n_classes
    return np.bincount(data[keep], weights=np.broadcast_to(areas, data.shape)[keep],
                       minlength=n_classes)[:n_classes]


def class_pixels_and_areas(path: str | os.PathLike, info: RasterInfo,
                           n_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels and m² (None without a CRS) of each class of a mask on `info`'s grid, block by block."""
    areas = PixelAreas(info)
    pixels, m2 = np.zeros(n_classes, np.int64), np.zeros(n_classes)
    with open_quietly(path) as ds:
        for _, window in ds.block_windows(1):
            data = ds.read(1, window=window)
            pixels += np.bincount(data[data < n_classes], minlength=n_classes)[:n_classes]
            if areas.rows is not None:
                m2 += class_areas(data, areas(window), n_classes)
    return pixels, (m2 if areas.rows is not None else None)


AREAL_TOLERANCE = 0.01  # a projected CRS straying further is measured on the ellipsoid (polygons) or by ground size
# class areas of a projected grid are of the ground where its areal scale strays over 0.1% from 1 (UTM beyond about
# 180 km from its central meridian, a national grid at its edges): planar m² were 0.44-0.70% over the ground's at
# Lambert-93's and ETRS89/UTM 33N's edges, where QGIS's ellipsoidal $area is the ground's (h127)
GROUND_TOLERANCE = 0.001


SCALE_PROBE_M = 10.0  # side of the square whose planar and ground areas give the areal scale at a point


def areal_scales(crs, xs, ys) -> np.ndarray | None:
    """The projection's areal scale (planar area / ground area on the WGS 84 ellipsoid) at the points (`xs`, `ys`)
    of projected `crs`, from a square of `SCALE_PROBE_M` a side at each; None where PROJ cannot say. Not PROJ's
    factors: for Web Mercator they are the sphere's (1.00008 at 0.5° latitude, where the ground's is 1.0067), and
    polygons near the equator read 0.7% over the mask's areas (h128)."""
    from pyproj import Geod, Transformer

    xs, ys = np.atleast_1d(np.asarray(xs, float)), np.atleast_1d(np.asarray(ys, float))
    side = SCALE_PROBE_M / metres_per_unit(crs)  # in the CRS's units
    try:
        to_lonlat = Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True)
        (x0, y0), (x1, y1), (x2, y2) = (to_lonlat.transform(xs + dx, ys + dy) for dx, dy in ((0, 0), (side, 0),
                                                                                              (0, side)))
    except Exception:  # noqa: BLE001 - a CRS PROJ cannot invert: planar areas
        return None
    if not all(np.all(np.isfinite(v)) for v in (x0, y0, x1, y1, x2, y2)):
        return None
    geod = Geod(ellps="WGS84")  # the ground parallelogram of the square's two sides (its curvature is 1e-12 of it)
    az1, _, d1 = geod.inv(x0, y0, x1, y1)
    az2, _, d2 = geod.inv(x0, y0, x2, y2)
    ground = np.abs(np.asarray(d1) * np.asarray(d2) * np.sin(np.radians(np.asarray(az2) - np.asarray(az1))))
    planar = SCALE_PROBE_M ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = planar / ground
    return scales if np.all(np.isfinite(scales) & (scales > 0)) else None


def areal_distortion(crs, transform, width: float, height: float) -> float:
    """How far the projection's areal scale (planar area / ground area, `areal_scales`) strays from 1 over a
    projected grid, probed at its corners, edges' middles and centre; 0 where PROJ cannot say.

    UTM stays within 0.0015 in its zone; Web Mercator (EPSG:3857) is 0.61 at 38° latitude, where
    planar m² overstated the ground by 61%, and 0.0067 at the equator.
    """
    rows = np.array([0, height / 2, height] * 3, float)
    cols = np.repeat([0, width / 2, width], 3).astype(float)
    xs = transform.c + transform.a * cols + transform.b * rows
    ys = transform.f + transform.d * cols + transform.e * rows
    scales = areal_scales(crs, xs, ys)
    return 0.0 if scales is None else float(np.max(np.abs(scales - 1)))


GDAL_CACHE_MB = 128


def gdal_cache_options() -> dict[str, int]:
    """Cap GDAL's block cache (default 5% of RAM), which otherwise grows with the raster read.

    A GDAL_CACHEMAX set by the user wins. For ``rasterio.Env``, which passes the value to
    GDALSetCacheMax64 in bytes: 128 here was a cache of 128 bytes, and a decimated read (the
    whole-raster sample, previews) read each block again for every output row that crossed it:
    a 4096^2 uint16 raster's sample took 127 s against 0.9 s, 31 GB read for a 77 MB file.
    """
    return {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_MB * 1024 * 1024}


def read_preview(path: str, bands: Sequence[int], max_side: int, *, min_side: int = 384,
                 resampling: str = "average", mask: bool = False, overviews: bool = True) -> np.ndarray:
    """Read `bands` resized so the longer side is between `min_side` and `max_side`: (rows, cols, bands).

    With `mask`, return instead the (rows, cols) bool validity of those bands. With ``overviews=False`` the
    raster's own overviews are not used: statistics (calibration cuts, percentile stretches) then come from the
    full-resolution pixels, so a COG and a plain GeoTIFF of the same pixels give the same ones (a COG's sample
    came from its overviews, and the threshold baseline's water cut moved by one step: 4% of a mask's pixels).

    The last few reads of unchanged local files are kept (a copy is returned): a raster without overviews
    is read whole for each, and one `segment` read it for its calibration sample and again for its preview
    (then `scene` for its map). Files are known by path, size and modification time.
    """
    try:
        stat = os.stat(path)
        known: tuple | None = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    except (OSError, ValueError):  # a GDAL path (/vsizip/..., a URL): read each time
        known = None
    try:
        with open_quietly(path) as ds:  # the side it is read at: the sample's min_side=1 and a preview's 384 agree
            longest = max(ds.width, ds.height)  # on any raster of 1024 px or more
            # without overviews both reads are of the pixels: one key, so that the calibration sample
            # (overviews=False) and the preview or scene's map (overviews=True) share one read of the whole raster,
            # not two (h115, h119)
            overviews = overviews and bool(ds.overviews(bands[0]))
    except RasterioIOError as exc:  # deleted, moved or cut short after segmenting, before its preview or map:
        # a traceback from `segment` and `flood` (their outputs were removed, but no message said why)
        raise RasterReadError(f"{path}: could not be opened again while it was being read ({first_line(exc)}): "
                              "was it moved, deleted or replaced during the run? Put it back and run again.") from None
    with reading_pixels(path):  # its pixels cut short meanwhile: the message names the file and the fix
        if known is None:
            return _read_decimated(path, tuple(bands), max_side, min_side, resampling, mask, overviews)
        side = min(max(longest, min_side), max_side)
        return _read_decimated_cached(path, tuple(bands), side, resampling, mask, known, overviews).copy()


@functools.lru_cache(maxsize=4)
def _read_decimated_cached(path: str, bands: tuple[int, ...], side: int, resampling: str, mask: bool,
                           known: tuple, overviews: bool = True) -> np.ndarray:
    data = _read_decimated(path, bands, side, side, resampling, mask, overviews)
    data.flags.writeable = False
    return data


def _read_decimated(path: str, bands: Sequence[int], max_side: int, min_side: int, resampling: str,
                    mask: bool, overviews: bool = True) -> np.ndarray:
    from rasterio.enums import Resampling

    # capped as segment's reads are: scene's and flood's maps, drawn after segment returns, filled the default
    # cache (5% of RAM) reading a 16384^2 raster without overviews: 1059 MB peak against segment's 312 MB
    with catch_warnings(), rasterio.Env(**gdal_cache_options()):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        warnings.simplefilter("ignore", NodataShadowWarning)  # the alpha is read as well (below)
        with rasterio.open(path, **({} if overviews else {"OVERVIEW_LEVEL": "NONE"})) as ds:
            longest = max(ds.width, ds.height)
            scale = longest / min(max(longest, min_side), max_side)  # shrink big rasters, enlarge tiny ones
            shape = (max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
            method = Resampling[resampling] if scale >= 1 else Resampling.nearest
            with reading_pixels(path):  # statistics, calibration and previews read whole inputs this way
                read = functools.partial(read_bands, ds)
                if mask:  # as WindowSource reads them
                    valid = valid_pixels(_read_in_strips(ds.read_masks, ds, bands, shape, Resampling.nearest),
                                         [ds.nodatavals[b - 1] for b in bands])
                    if np.result_type(*(ds.dtypes[b - 1] for b in bands)).kind == "f":  # non-finite values: nodata
                        valid &= np.isfinite(_read_in_strips(read, ds, bands, shape, Resampling.nearest)).all(0)
                    alpha = alpha_band(ds)
                    if alpha is not None:  # as `opaque`, in strips: beside a nodata value (or not the last of 2
                        # or 4 bands) GDAL's mask ignores it, and the calibration sample took transparent pixels
                        valid &= _read_in_strips(read, ds, [alpha], shape, Resampling.nearest)[0] > 0
                    return valid
                data = _read_in_strips(read, ds, bands, shape, method)
    return np.moveaxis(data, 0, -1)


STRIP_BYTES = 32 * 1024 * 1024


def _read_in_strips(read, ds, bands: Sequence[int], shape: tuple[int, int], resampling) -> np.ndarray:
    """``read(bands, out_shape=(len(bands),) + shape)`` of the whole raster, made of windows whose blocks fit in GDAL's
    block cache (strips of whole rows; a very wide raster's cut into columns too).

    GDAL resamples one band at a time, so a raster larger than the cache had each pixel-interleaved block
    decompressed once per band: an 8192^2 RGB GeoTIFF's preview took 5.0-6.3 s, 1.5-2.1 s in strips. The pixels are those
    of one read, except that an average or bilinear value may differ by a rounding where a window starts at a
    fraction of a pixel (2 in a million pixels in strips of 100 kB; none on the 8192^2 raster). Rasters with
    overviews are read at once, from an overview."""
    height, width = shape
    step_y, step_x = ds.height / height, ds.width / width  # source pixels per output pixel
    block_y, block_x = ds.block_shapes[bands[0] - 1]
    pixel = len(bands) * np.result_type(*(ds.dtypes[b - 1] for b in bands)).itemsize
    # at least four rows of blocks: a block row that two strips share is read once more unless still cached
    rows = max(4 * block_y, STRIP_BYTES // (ds.width * pixel))
    cols = ds.width if rows * ds.width * pixel <= STRIP_BYTES else max(block_x, STRIP_BYTES // (rows * pixel))
    rows_out, cols_out = max(1, int(rows / step_y)), max(1, int(cols / step_x))
    # a raster with overviews is read from the one that fits, whole (windows at fractions of its pixels averaged
    # otherwise: up to 14 DN at the seams)
    if (rows_out >= height and cols_out >= width) or ds.overviews(bands[0]):
        return read(list(bands), out_shape=(len(bands), height, width), resampling=resampling)
    out = None
    for top in range(0, height, rows_out):
        bottom = min(height, top + rows_out)
        y0, y1 = top * step_y, ds.height if bottom == height else bottom * step_y  # never past the edge by a rounding
        for left in range(0, width, cols_out):
            right = min(width, left + cols_out)
            x0, x1 = left * step_x, ds.width if right == width else right * step_x
            part = read(list(bands), window=Window(x0, y0, x1 - x0, y1 - y0),
                        out_shape=(len(bands), bottom - top, right - left), resampling=resampling)
            if out is None:
                out = np.empty((len(bands), height, width), part.dtype)
            out[:, top:bottom, left:right] = part
    return out


STAGING_PREFIX = ".geoseg-"


@contextmanager
def staging_dir(parent: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder in `parent` for outputs that appear only when complete; removed on exit.

    Its name carries this host and process id. A run killed outright (SIGKILL, the
    out-of-memory killer) cannot remove its folder, so each new one first removes the
    folders of this host whose process no longer exists (`owned_temp_dir`).
    """
    import shutil

    # another run into the same new folder may have removed it on failing, while it was empty
    Path(parent).mkdir(parents=True, exist_ok=True)
    from geoseg.files import signals_held

    folder = None
    try:
        with signals_held():  # SIGTERM between making the folder and this `try` left it behind (1 run in 20)
            folder = owned_temp_dir(parent, STAGING_PREFIX)
        yield folder
    finally:
        if folder is not None:
            with signals_held():  # a Ctrl-C just after the final renames cut the removal short and left the folder
                shutil.rmtree(folder, ignore_errors=True)


def owned_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """Make ``parent/PREFIXHOST-PID-XXXX`` after removing the folders of that pattern left by dead processes.

    Only this host's folders whose process is gone are removed: those of live processes,
    and of other hosts sharing `parent` (a network drive), are left alone.
    """
    import socket
    import tempfile

    parent = Path(parent)
    remove_dead_temp_dirs(parent, prefix)
    host = socket.gethostname().replace("-", "_")
    return Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{host}-{os.getpid()}-"))


def remove_dead_temp_dirs(parent: str | os.PathLike, prefix: str = STAGING_PREFIX) -> None:
    """Remove the ``parent/PREFIXHOST-PID-XXXX`` folders of this host whose process no longer exists."""
    import shutil
    import socket

    host = socket.gethostname().replace("-", "_")
    for stale in Path(parent).glob(f"{prefix}{host}-*-*"):
        pid = stale.name[len(prefix) + len(host) + 1:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
            log.info("removed %s, left by a process that was killed", stale)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def same_raster(a: str, b: str) -> bool:
    """Whether paths `a` and `b` name one file; GDAL paths (/vsizip/...) by their text."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a == b


def write_class_mask(out_path: str | os.PathLike, like: RasterInfo, classes, block_fn, *, block: int = 1024,
                     sieve: int = 0) -> int:
    """Write a uint8 class mask COG on the grid of `like`, one window at a time.

    ``block_fn(window)`` returns the (rows, cols) uint8 classes of that window
    (255 = nodata). With `sieve`, regions of one class smaller than that many pixels
    take the classes around them (`geoseg.sieve.sieve_mask`). The file appears at
    `out_path` only when complete. Returns the pixels the sieve changed.
    """
    out_path = Path(out_path)
    with staging_dir(out_path.parent) as tmp:
        staged = tmp / out_path.name
        ds = create_outputs(like, {"mask": (staged, 1, NODATA)})["mask"]
        try:
            describe_mask(ds, classes)
            for row in range(0, like.height, block):
                for col in range(0, like.width, block):
                    window = Window(col, row, min(block, like.width - col), min(block, like.height - row))
                    ds.write(block_fn(window), 1, window=window)
        finally:
            ds.close()
        changed = 0
        if sieve:
            from geoseg.sieve import sieve_mask

            sieved = tmp / f"sieved-{out_path.name}"
            ds = create_outputs(like, {"mask": (sieved, 1, NODATA)})["mask"]
            try:
                describe_mask(ds, classes)
                changed = sieve_mask(staged, ds, sieve)
            finally:
                ds.close()
            staged = sieved
        cog = write_cog(staged, out_path)
        # the mask and its class names appear together (`write_class_sidecar`); staged under a name of no raster
        # there, which GDAL would read as that raster's own
        sidecar = tmp / f"classes-{out_path.name}.aux.xml"
        write_class_sidecar(sidecar, classes)
        from geoseg.files import move_all, signals_held

        with signals_held():
            move_all([(sidecar, class_sidecar(out_path)), (cog, out_path)], staging=tmp)
    return changed
