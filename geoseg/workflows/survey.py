"""Survey batches: many rasters, resumable, one failure never stops the rest."""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from xml.sax.saxutils import escape

import numpy as np

from geoseg.errors import GeosegError, InputError, OutputError, catch_warnings
from geoseg.files import refuse_folders, whitespace_note
from geoseg.pipeline import (check_options, check_output_path, new_folders_removed_on_error, prepare_output_dir,
                             segment)
from geoseg.raster import (RASTER_SUFFIXES, first_line, is_gdal_path, name_key, pid_alive, raster_stem,
                           remove_dead_temp_dirs, subdataset_file, unique_stems, written_by_geoseg)
from geoseg.vector import dataset_options, write_qml
from geoseg.workflows.common import class_card, md_cell, write_csv, write_json, write_text

__all__ = ["RASTER_SUFFIXES", "SurveyResult", "expand_inputs", "survey"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass
class SurveyResult:
    """Per-raster status and the batch outputs: `done`, segmented by this run; `kept`, whose masks an earlier run
    made and this one kept, only writing or removing their polygons or previews (`switched` says which) as
    `vector` and `preview` now ask; `skipped`, already done with the same model and options; `failed`."""

    done: list[dict[str, Any]] = field(default_factory=list)
    # a rerun that only turned --preview (or --vector) on counted these as done, as if segmented again
    kept: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    earlier_outputs: bool = False  # no raster of this run was segmented: `outputs` are an earlier run's, kept

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)

    SHOWN_FAILURES = 5  # failures that str() names; the rest are counted

    def __str__(self) -> str:
        """A few lines for people, as `SegmentResult`'s: how many rasters were done, skipped (done before) and
        failed, the first failures' errors and the batch outputs. ``repr()`` stays the dataclass's, one line of
        ~1.5 kB per raster (300 kB for 200)."""
        total = len(self.done) + len(self.kept) + len(self.skipped) + len(self.failed)
        kept = f"{len(self.kept):,} kept (masks of before, polygons or previews switched), " if self.kept else ""
        lines = [f"SurveyResult: {total:,} raster{'s' if total != 1 else ''}: {len(self.done):,} done, {kept}"
                 f"{len(self.skipped):,} skipped (done before), {len(self.failed):,} failed"]
        for entry in self.failed[:self.SHOWN_FAILURES]:
            error = " ".join(str(entry.get("error", "")).split())
            lines.append(f"  failed: {error if len(error) <= 180 else error[:179] + '…'}")
        if len(self.failed) > self.SHOWN_FAILURES:
            lines.append(f"  ... and {len(self.failed) - self.SHOWN_FAILURES:,} more failed (in `failed`)")
        if self.earlier_outputs:
            lines.append("  outputs of an earlier run (no raster was segmented in this one):")
        lines += [f"  {name}: {path}" for name, path in self.outputs.items()]
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython and Jupyter
        printer.text(str(self))


def expand_inputs(items: Sequence[str | os.PathLike], _lists: frozenset[str] = frozenset(), *,
                  left_out: list[str] | None = None, output_dir: str | os.PathLike | None = None,
                  _inputs_before: dict[str, list[int]] | None = None, _vetted: list[str] | None = None) -> list[str]:
    """Turn folders, globs, text files of paths and VRT mosaics into a list of raster paths.

    A single str or path counts as a list of one. A folder gives its rasters (recursively, hidden
    files and folders left out, as a glob leaves them);
    a ``.txt`` file one item per line, expanded as these are (a raster, a folder, a glob; relative
    to the file, ``#`` starts a comment); a ``.vrt`` mosaic its source rasters (any other VRT, such as a band
    stack of several files or a band choice, stays one raster); anything else is taken as
    a raster path, even a missing one, so that the batch reports it. A glob that matches nothing
    and a folder without rasters are warned about. Duplicates (the same file, by any path) are dropped, order kept. Given a
    `left_out` list, what folders and globs find that geoseg wrote (`written_by_geoseg`: masks,
    previews, an earlier survey's mosaic) is left out, with a warning, and appended to it; a file
    named on its own is kept. Files under `output_dir` are not counted among them: the survey leaves
    those out itself (a rerun's warning counted its own outputs, and named f1_mask.tif twice).
    `_inputs_before` (absolute path: [size, mtime_ns]) holds files an earlier survey found geoseg had not
    written: where one is unchanged it is not opened again to ask (2.4 s of a rerun of 1,010 tiles); `_vetted`
    gets this run's such files.
    """
    # by the real path: an output folder named through a symlink had its own masks and previews surveyed (h102)
    inside = Path(os.path.realpath(output_dir)) if output_dir is not None else None
    out: list[str] = []

    def under_output(f: str) -> bool:
        return inside is not None and inside in Path(os.path.realpath(f)).parents
    if isinstance(items, (str, os.PathLike)):  # one folder, glob or file, not a sequence of characters
        items = [items]

    def found_in(item: str, found: list[str]) -> list[str]:
        if left_out is None:
            return found
        mine = {f for f in found if under_output(f)}  # the survey's own outputs: neither asked about nor vetted
        ours = [f for f in found if f not in mine and Path(f).suffix.lower() != ".txt"
                and not _taken_before(f, _inputs_before) and written_by_geoseg(f)]
        if _vetted is not None:  # asked, and not geoseg's (a file named on its own is not asked: not one of these)
            _vetted.extend(f for f in found if f not in ours and f not in mine)
        left_out.extend(ours)
        if ours:  # a segment -o into the image folder: its masks and previews were segmented as images
            shown = [os.path.relpath(f, item) if os.path.isdir(item) else Path(f).name for f in ours[:3]]
            log.warning("%s: left out %d file(s) that geoseg wrote (%s); name one on its own to segment it",
                        item, len(ours), ", ".join(shown) + (", ..." if len(ours) > 3 else ""))
        return [f for f in found if f not in ours]

    def globbed(item: str, pattern: str) -> list[str]:
        # each file once, by its shortest path: `**` goes round a symlink loop some 40 levels deep, and each of
        # 820 matches of 20 files was opened to ask whether geoseg wrote it, the deepest path kept (h102)
        shortest: dict[str, str] = {}
        for f in glob.glob(pattern, recursive=True):
            real = os.path.realpath(f)
            if real not in shortest or len(f) < len(shortest[real]):
                shortest[real] = f
        found = sorted(shortest.values())
        if not found:  # beside other inputs it vanished without a word
            log.warning("%s: no file matches this pattern", item)
        return _split_mosaics(found_in(item, found))

    for item in map(str, items):
        path = Path(item)
        if not item.strip():  # Path("") is the working folder: "$DIR" of an unset variable surveyed all under it
            raise InputError("an empty path among the inputs (an unset shell variable?). Give a path; '.' for the "
                             "current folder.")
        if is_gdal_path(item):  # /vsizip/..., zip://...: GDAL reads it
            out.append(item)
        elif any(ch in item for ch in "*?[") and not path.exists():
            out += globbed(item, item)
        elif path.is_dir():
            # hidden names left out, as a glob does: another run's staging folder (.geoseg-HOST-PID-...) held a
            # half-written mask, which failed the survey (or was segmented)
            found = _rasters_under(path)
            if not found:
                log.warning("%s: a folder without rasters (%s)", item, ", ".join(sorted(RASTER_SUFFIXES)))
            out += _split_mosaics(found_in(item, found))
        elif path.suffix.lower() == ".txt" and path.is_file():
            if os.path.realpath(path) in _lists:  # a list that names itself, or two that name each other
                log.warning("%s: a list that names itself (or a list that names it): not read again", item)
                continue
            lines = [_list_line(line, path.parent) for line in _read_list(path).splitlines()]
            # a folder or glob line was taken for one raster's name and failed; a list of lists is expanded too
            lines = [(line, _beside(os.path.expanduser(line), path.parent)) for line in lines if line]  # ~/a.tif
            for line, item_path in lines:  # a pattern by the line's own wildcards: the list may be in 'run [1]/'
                # '[...]' alone is a name ('site[1].tif' not delivered yet segmented site1.tif in its place)
                if any(ch in line for ch in "*?") and not is_gdal_path(item_path) and not os.path.lexists(item_path):
                    line = os.path.expanduser(line)
                    out += globbed(item_path, line if os.path.isabs(line) else
                                   str(Path(glob.escape(str(path.parent))) / line))
                elif is_gdal_path(item_path) or os.path.lexists(item_path):
                    out += expand_inputs([item_path], _lists | {os.path.realpath(path)}, left_out=left_out,
                                         output_dir=output_dir, _inputs_before=_inputs_before, _vetted=_vetted)
                else:  # missing: the batch reports it (a folder's '[' made it a pattern that matched nothing)
                    out.append(item_path)
        elif path.suffix.lower() == ".vrt" and path.is_file():
            out += _vrt_sources(path)
        else:
            out.append(item)
    seen: set[str] = set()  # by the file: one reached through a symlinked folder too was segmented and summed twice
    return [p for p in (p if is_gdal_path(p) else os.path.abspath(p) for p in out)
            if not ((key := p if is_gdal_path(p) else os.path.realpath(p)) in seen or seen.add(key))]


def _rasters_under(folder: Path) -> list[str]:
    """The rasters in `folder` and its subfolders, hidden names left out as a glob leaves them (another run's staging
    folder, .geoseg-HOST-PID-..., held a half-written mask). Symlinked subfolders are entered, each folder once:
    `rglob` passed them by, and a flight linked in from another volume was missing from the totals without a word
    (h102); a link back up the tree is not followed round. Each folder, and each file, is taken by its shortest path,
    as a glob's are: the first path `os.walk` reached depended on names, and a link added later (``a/archive ->
    ../flights``) renamed a surveyed raster, so the rerun segmented it again under a new name (h114)."""
    import heapq

    found: dict[str, str] = {}
    seen, queue = set(), [(len(str(folder)), str(folder))]
    while queue:  # shortest paths first: a folder is entered by the first, shortest, path that reaches it
        _, root = heapq.heappop(queue)
        try:
            stat = os.stat(root)
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError:
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows links; a broken link is neither
            except OSError:
                continue
            if is_dir:
                heapq.heappush(queue, (len(entry.path), entry.path))
            elif Path(entry.name).suffix.lower() in RASTER_SUFFIXES:
                real = os.path.realpath(entry.path)
                if real not in found or len(entry.path) < len(found[real]):
                    found[real] = entry.path
    return sorted(found.values())


def _taken_before(path: str, before: dict[str, list[int]] | None) -> bool:
    """Whether `path` has the size and time it had when an earlier survey took it as an input (`before`)."""
    if not before:
        return False
    known = before.get(os.path.abspath(path))
    if known is None:
        return False
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return [stat.st_size, stat.st_mtime_ns] == known


def _split_mosaics(found: list[str]) -> list[str]:
    """A folder's or glob's rasters with each VRT mosaic among them split into its rasters, as a VRT named on
    its own is: a mosaic.vrt beside its tiles was segmented whole as well, so that every place was in the
    polygons and the rasters' sums twice (and a VRT across CRSs came out as one raster, 600 km off in part)."""
    out = []
    for f in found:
        try:
            out += _vrt_sources(Path(f)) if f.lower().endswith(".vrt") else [f]
        except InputError:  # an unreadable VRT among many: the batch reports it as that raster's failure
            out.append(f)
    return out


def _read_list(path: Path) -> str:
    """The text of a list of rasters: UTF-8, with or without a byte-order mark, or UTF-16 with one (what
    Windows PowerShell 5's `>` writes). A traceback before; a BOM was part of the first path."""
    from geoseg.files import decoded_text

    try:
        return decoded_text(path.read_bytes())
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: a list of rasters that is not UTF-8 text (byte {exc.start + 1} cannot be read). "
                         "Save it as UTF-8, e.g. iconv -f cp1252 -t utf-8.") from None


def _list_line(line: str, folder: Path) -> str:
    """A list's line as the path it names: ``#`` starts a comment, unless the line names a file with the ``#``
    (``plot #3.tif``); the quotes Windows' "Copy as path" puts around a path, and its ``\\`` separators where
    the file is found by ``/``, are dropped, and a name found in the other Unicode form (NFC, NFD) is taken.
    Each made the line "no such file" with a path hard to see wrong."""

    def unquoted(text: str) -> str:
        return text[1:-1].strip() if len(text) > 1 and text[0] in "\"'" and text[-1] == text[0] else text

    def found(text: str) -> bool:
        return os.path.lexists(_beside(os.path.expanduser(text), folder))

    whole = line.strip()
    if whole.startswith("#"):
        return ""
    line = unquoted(whole) if "#" in whole and found(unquoted(whole)) else unquoted(whole.split("#", 1)[0].strip())
    if "\\" in line and not found(line) and found(line.replace("\\", "/")):
        line = line.replace("\\", "/")
    if line and not found(line):  # 'café' typed on Linux (NFC) for a name macOS wrote (NFD), or the other way
        import unicodedata

        line = next((form for form in (unicodedata.normalize(f, line) for f in ("NFC", "NFD")) if found(form)), line)
    return line


def _beside(line: str, folder: Path) -> str:
    """A list's line as a path: relative ones are relative to the list's folder, GDAL's too
    (``zip://z.zip!y.tif``, ``/vsizip/z.zip/y.tif``); absolute ones and URLs stay as they are."""
    if braced := re.match(r"(/vsi(?:zip|tar|gzip)/)\{([^}]*)\}(.*)$", line):  # /vsizip/{a/b.zip}/c.tif
        return f"{braced[1]}{{{os.path.abspath(folder / braced[2])}}}{braced[3]}"  # an absolute inside stays
    if relative := re.match(r"((?:zip|tar|gzip)://|/vsi(?:zip|tar|gzip)/)(?!/)(.*)$", line):
        return f"{relative[1]}{os.path.abspath(folder / relative[2])}"  # absolute, as other paths end up
    if is_gdal_path(line) or os.path.isabs(line):
        return line
    return str(folder / line)


def _vrt_sources(path: Path) -> list[str]:
    """The rasters of a VRT mosaic; any other VRT (a band stack, a band choice, a rescaled or warped copy) is one
    raster, itself."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            files = [f for f in ds.files if os.path.abspath(f) != os.path.abspath(path)]
            count = ds.count
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"{path}: cannot read this VRT ({exc}).") from None
    return files if _is_mosaic(path, files, count) else [str(path)]


def _is_mosaic(path: Path, files: list[str], count: int) -> bool:
    """Whether a VRT only lays rasters side by side: each band N takes band N of the same files, unscaled, and
    the files have its bands. Split into its sources, a band stack (``gdalbuildvrt -separate``) gave one image
    per band, and a band choice (``gdal_translate -b 3 -b 2 -b 1 -of VRT``) or a rescaled copy gave the file
    without them."""
    import xml.etree.ElementTree as ET

    import rasterio

    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return False
    if root.tag != "VRTDataset" or not files:  # VRTWarpedDataset: a reprojection, not a mosaic
        return False
    taken = set()
    for number, band in enumerate(root.findall("VRTRasterBand"), 1):
        sources = [e for e in band if e.tag.endswith("Source")]
        if not sources or band.get("subClass"):  # a derived band (pixel functions)
            return False
        for source in sources:
            if (source.tag not in ("SimpleSource", "ComplexSource") or (source.findtext("SourceBand") or "1").strip()
                    != str(number) or any(source.find(t) is not None for t in ("ScaleOffset", "ScaleRatio", "LUT"))):
                return False
        names = frozenset((e.findtext("SourceFilename") or "").strip() for e in sources)
        if taken and names != taken:
            return False
        taken = names
    try:
        for name in files:
            with rasterio.open(name) as ds:
                if ds.count != count:
                    return False
    except rasterio.errors.RasterioIOError:
        return False
    return True


def _fingerprint(path: str, known: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The key's part that the raster gives, and what that was read from (``seen``, or None).

    The key holds the size and time of the file, or of the archive that holds it (``/vsizip/a.zip/b.tif``); a
    remote raster (``https://``) gets a fresh token, so it is redone on every run. A local one adds what GDAL
    reads from other files (`_read_by_gdal`): its georeferencing and a VRT's sources. `known` is the record of
    an earlier run (``key`` and ``seen``): where none of the files GDAL read, nor the raster's folder, changed
    since, its ``georef`` and ``sources`` are taken over unread (`_unchanged`). Opening every raster made each
    rerun of a survey of 1,600 tiles spend 6.6 s before it skipped the first one."""
    local = _local_file(path)
    if local is None:
        return {"remote": time.time_ns()}, None
    stat = os.stat(local)
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    stored = (known or {}).get("key")
    # a record without `masking` (an older geoseg's) is read once, for `adopt` to check it while it can: taken
    # over unread, its nodata set later in the .aux.xml was then adopted as if the old run had used it
    if isinstance(stored, dict) and "georef" in stored and "masking" in stored and _unchanged((known or {}).get("seen")):
        return {**key, **{k: stored[k] for k in ("georef", "sources", "masking") if k in stored}}, known["seen"]
    read, seen = _read_by_gdal(path, local)
    return {**key, **read}, seen


# a world file: a.jgw, a.pgw, a.tfw, a.wld, a.tifw (its georeferencing counts, not its time)
_WORLD_FILE = re.compile(r"\.([a-z]{2}w|[a-z]{3}w|wld)$", re.IGNORECASE)
_SETTLED_NS = 2_000_000_000  # a file changed this shortly before it was read may change again in the same tick


def _unchanged(seen: Any) -> bool:
    """Whether the raster's folder and the files GDAL read for it (``seen``, from `_read_by_gdal`) have the sizes
    and times they had: a file added to the folder (a world file, an .aux.xml) changes the folder's time."""
    try:
        (folder, folder_mtime), files = seen["folder"], seen["files"]
        if not files or os.stat(folder).st_mtime_ns != folder_mtime:
            return False
        for name, size, mtime in files:
            stat = os.stat(name)
            if [stat.st_size, stat.st_mtime_ns] != [size, mtime]:
                return False
    except (OSError, TypeError, KeyError, ValueError):  # gone, or a record of another shape
        return False
    return True


def _read_by_gdal(path: str, local: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``georef``: a digest of the CRS, transform, GCPs and RPCs GDAL reads for `path`, from the file or from its
    world file or .aux.xml; ``sources``: name (relative to the raster's folder), size and time of the other files
    it reads pixels from (a VRT's). A corrected world file, or a band-choice VRT's re-exported source, was skipped
    as done, and the mask kept the old place or pixels. Times of a world file or .aux.xml count for nothing: QGIS
    writes statistics into the .aux.xml, and a copy without times changed none of what GDAL reads. Empty for a
    raster GDAL cannot open (its segmentation says why), or one in an archive (which changes with it).

    The second value (``seen``) holds the size and time of every file GDAL read and the time of the raster's
    folder, for `_unchanged`; None where one of them changed too shortly before to be trusted."""
    from geoseg.raster import open_quietly

    if is_gdal_path(path):
        return {}, None
    started = time.time_ns()
    try:
        folder_mtime = os.stat(os.path.dirname(os.path.abspath(local))).st_mtime_ns
        with open_quietly(path) as ds:
            files = ds.files
            (gcps, gcp_crs), rpcs = ds.gcps, ds.rpcs
            georef = repr((ds.crs.to_wkt() if ds.crs else None, tuple(ds.transform),
                           [(g.row, g.col, g.x, g.y, g.z) for g in gcps], gcp_crs.to_wkt() if gcp_crs else None,
                           rpcs.to_dict() if rpcs else None))
            # which pixels are nodata: a nodata value set in the .aux.xml, or a cloud mask (a.tif.msk) added later,
            # left the earlier masks, clouds classed as land, skipped as done
            masking = repr((ds.nodatavals, [[flag.name for flag in flags] for flags in ds.mask_flag_enums]))
            # a scale and offset (the baselines' indices read values by them), only where declared: a record made
            # before they were read stays valid for the files without, and those with are done again (h126)
            if any(s != 1 for s in ds.scales) or any(o != 0 for o in ds.offsets):
                masking = repr((masking, tuple(ds.scales), tuple(ds.offsets)))
    except Exception:  # noqa: BLE001 - any failure to open is the raster's own failure, reported by segment
        return {}, None
    main = os.path.abspath(local)
    folder, name, stem = os.path.dirname(main), os.path.basename(main), Path(main).stem
    sources, read = [], _stat_files(files)
    for f, size, mtime in read:
        own = os.path.basename(f).startswith(name + ".") or (  # a.tif.aux.xml, a.tif.ovr; a.jgw
            Path(f).stem == stem and _WORLD_FILE.search(f) is not None)
        own = own and not f.lower().endswith(".msk")  # a mask's pixels count: clouds drawn again change the nodata
        if f == main or (os.path.dirname(f) == folder and own):
            continue
        sources.append([os.path.relpath(f, folder), size, mtime])
    settled = all(mtime < started - _SETTLED_NS for _, _, mtime in read) and folder_mtime < started - _SETTLED_NS
    seen = {"folder": [folder, folder_mtime], "files": read} if settled and main in {f for f, _, _ in read} else None
    return {"georef": hashlib.sha1(georef.encode()).hexdigest()[:16],
            "masking": hashlib.sha1(masking.encode()).hexdigest()[:16],
            **({"sources": sorted(sources)} if sources else {})}, seen


def _local_file(path: str) -> str | None:
    """The file on this machine that holds `path` (the archive of ``/vsizip/a.zip/b.tif``), None for a remote
    raster or one in GDAL's memory; FileNotFoundError where there is none."""
    local = path
    if (sub := subdataset_file(path)) is not None:  # GPKG:a.gpkg:table, NETCDF:"f.nc":var: the file named in it
        return sub[0]
    if is_gdal_path(path):  # /vsizip/z.zip/y.tif is relative to the working folder, /vsizip//data/z.zip/y.tif not
        local = path.split("://", 1)[-1].replace("!", "/") if "://" in path else path.split("/", 2)[-1]
        local = os.path.normpath(local)
        while not os.path.isfile(local) and os.path.dirname(local) != local:  # up to the archive, or to '/'
            local = os.path.dirname(local)
        if not os.path.isfile(local):
            scheme = path.split("://", 1)[0].split("+")[-1] if "://" in path else ""
            # and GDAL's memory (/vsimem/, a notebook's: "no such file", which segment read, h133): redone each run
            if path.startswith(("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift",
                                "/vsimem/")) \
                    or scheme in ("http", "https", "ftp", "s3", "gs", "az"):
                return None
            raise FileNotFoundError(path)
    return local


def _digest_or_none(path: str, key: dict[str, Any]) -> str | None:
    try:
        return _content_digest(path, key)
    except OSError:  # gone or unreadable since: the raster is redone when its time changes
        return None


def _content_digest(path: str, key: dict[str, Any]) -> str | None:
    """SHA-256 of the file behind `path` as `key` (its size and time) found it, None for a remote raster or
    a file that changed since (its mask may be of the content before)."""
    local = _local_file(path)
    if local is None:
        return None
    stat = os.stat(local)
    if [stat.st_size, stat.st_mtime_ns] != [key.get("size"), key.get("mtime_ns")]:
        return None
    digest = _file_digest(local, stat.st_size, stat.st_mtime_ns)  # once per archive of /vsizip/ members
    stat = os.stat(local)
    return digest if [stat.st_size, stat.st_mtime_ns] == [key.get("size"), key.get("mtime_ns")] else None


@functools.lru_cache(maxsize=64)
def _file_digest(local: str, size: int, mtime_ns: int) -> str:
    return _digest(local)  # the file's size and time key the cache


def _readable(path: str) -> bool:
    """Whether an output of an earlier run is there and opens: a damaged or cut-short mask is redone
    (it was taken as done, and the mosaic then failed with rasterio's traceback)."""
    if not os.path.exists(path):
        return False
    if Path(path).suffix.lower() not in (".tif", ".gpkg"):
        return True
    try:
        if path.lower().endswith(".gpkg"):
            import pyogrio

            pyogrio.read_info(path)
        else:
            from geoseg.raster import open_quietly  # a JPEG's mask has no CRS: no warning on every rerun

            with open_quietly(path):
                pass
    except Exception:  # rasterio and pyogrio raise several types for a damaged file
        log.warning("%s: cannot be read; its raster is segmented again", path)
        return False
    return True


class _Stopped(BaseException):
    """Raised in a raster's progress callback once the survey is interrupted: the raster unwinds like a
    failure (its staged files removed) but is not recorded as one."""


def _stats(paths) -> dict[str, list[int] | None]:
    """Size and modification time (ns) of each file, None where there is none."""
    out: dict[str, list[int] | None] = {}
    for path in map(str, paths):
        try:
            stat = os.stat(path)
            out[path] = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            out[path] = None
    return out


def _folders(sources: list[str], manifest: "_Manifest") -> dict[str, str]:
    """A folder name (under the output folder) per raster that does not change from run to run.

    A raster the manifest knows keeps its folder. A new one gets its stem, or the stem and a hash of its path
    where that name is taken, by another raster of this run or by one of an earlier run: a later run's
    Tile 2/part_1.jpg wrote over Tile 1/part_1.jpg's masks, which stayed "done"."""
    claims: dict[str, list[str]] = {}
    for key, entry in manifest.entries.items():
        masks = [Path(p) for p in entry.get("outputs", {}).values()]
        if masks and masks[0].parent.parent == manifest.base:
            claims.setdefault(masks[0].parent.name, []).append(key)
    earlier = {keys[0]: name for name, keys in claims.items() if len(keys) == 1}  # two on one: neither keeps it
    out: dict[str, str] = {}
    for source in sources:
        if manifest.key_of(source) in earlier:
            out[source] = earlier[manifest.key_of(source)]
    used = {name_key(name) for name in [*claims, *out.values()]}  # Scene/ and scene/ are one folder on macOS
    for source, name in unique_stems(sources).items():
        if source in out:
            continue
        if name_key(name) in used:
            digest = hashlib.sha1(manifest.key_of(source).encode()).hexdigest()
            name = next(f"{raster_stem(source)}-{digest[:n]}" for n in (6, 12, 40)
                        if name_key(f"{raster_stem(source)}-{digest[:n]}") not in used)
        out[source] = name
        used.add(name_key(name))
    return out


def _model_identity(model) -> dict[str, Any]:
    """What tells a model's masks apart besides its card's name and version: its options (``threshold?water=
    0.1&vegetation=0.4``) and the content of its files. Either changed and every raster was skipped, the
    masks those of the model before (a same-day retrain keeps the card's version, which is its date)."""
    from urllib.parse import parse_qsl

    from geoseg.models.registry import BUILTIN, resolve_model

    ref = resolve_model(model)
    text, _, query = ref.partition("?")
    out: dict[str, Any] = {"model_options": query} if query else {}
    if not text.startswith(BUILTIN):  # by content: a reinstall (new times, same bytes) redid every raster
        files = [Path(text), Path(text).with_suffix(".json"), *(Path(v) for k, v in parse_qsl(query) if k == "card")]
        out["model_files"] = [[f.name, _digest(f)] for f in files if f.is_file()]
    return out


def _digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (0.1 s for the default model's 28 MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _Manifest:
    """The record of what is done, rewritten atomically after every raster.

    Rasters are keyed by their absolute path and outputs stored relative to the output folder: paths
    as given (relative to where the first run started) made a run from another folder, or with
    absolute paths, segment every raster again.
    """

    def __init__(self, path: Path) -> None:
        self.path, self.lock, self.base = path, threading.Lock(), path.parent
        self.card_bands: list[int] | None = None  # the model's own bands, which a key leaves out
        self.unsaved = False  # entries changed by `remember` (or `record`, within WRITE_EVERY_S) since the last write
        self.written = 0.0  # time.monotonic() of the last write
        self.batch: dict[str, Any] = {}  # what the batch files were written from, and their sizes and times
        self.vetted: dict[str, list[int]] = {}  # files found to be no output of geoseg's: [size, mtime_ns]
        try:
            whole = json.loads(path.read_bytes()) if path.exists() else {}
            stored = whole.get("entries", {})
            self.batch = whole.get("batch") if isinstance(whole.get("batch"), dict) else {}
            self.vetted = whole.get("vetted") if isinstance(whole.get("vetted"), dict) else {}
            self.entries: dict[str, Any] = {
                str(key): {**e, "outputs": {str(k): str(self.base / v) if not os.path.isabs(v) else str(v)
                                            for k, v in e.get("outputs", {}).items()}}
                for key, e in stored.items()}
        except (ValueError, AttributeError, TypeError) as exc:  # empty, cut short, not geoseg's: a traceback
            raise InputError(f"{path}: not a survey manifest that geoseg can read ({first_line(exc)}). Restore it "
                             "from a backup, or delete it: the rasters are then all segmented again.") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot be read ({exc.strerror or exc}). Check its permissions.") from None

    @staticmethod
    def key_of(source: str) -> str:
        return source if is_gdal_path(source) else os.path.abspath(source)

    def stored_key(self, source: str) -> dict[str, Any] | None:
        """The key `source` was done with, as keys are made now."""
        entry = self.entries.get(self.key_of(source))
        stored = entry.get("key") if entry else None
        if not isinstance(stored, dict):
            return None
        # recorded before the card's own bands, and preview=True (the default), were left out of keys
        return {k: v for k, v in stored.items() if not (k == "bands" and self.card_bands is not None
                                                         and v == self.card_bands) and not (k == "preview" and v is True)}

    def is_done(self, source: str, key: dict[str, Any], folder: str) -> bool:
        """Whether `source` was done with this `key` into `folder`, and its outputs are as that run left them."""
        entry = self.entries.get(self.key_of(source))
        stored = self.stored_key(source)
        if not (entry and entry.get("status") == "done" and stored == key
                and all(Path(p).parent == self.base / folder for p in entry["outputs"].values())):
            return False
        recorded = entry.get("files")
        if isinstance(recorded, dict):  # a mask cut short or replaced (another raster's, written over it) is redone
            now = _stats(entry["outputs"].values())
            changed = [p for name, p in entry["outputs"].items() if now[p] != recorded.get(name)]
            if changed:
                log.warning("%s: changed since the survey wrote it; its raster is segmented again", changed[0])
                return False
        return all(_readable(p) for p in entry["outputs"].values())

    def adopt(self, source: str, key: dict[str, Any], seen: dict[str, Any] | None = None) -> None:
        """A raster done before keys held what GDAL reads from other files (``georef``, ``sources``; then
        ``masking``, its nodata values and mask flags, with a mask file among the sources): its record takes them
        as they are now, as that run took the raster, where the files GDAL reads for it are provably as that run
        saw them (`_as_that_run_saw`). Upgrading segmented every raster with a world file or .aux.xml again (or
        with a nodata value); adopting without that proof kept a mask of a world file corrected since, or of
        nodata set since in the .aux.xml. The record keeps its own time and extras (``vector``, ``preview``), which
        `same_content` and `extras_only` then compare: a touched raster or a --no-vector rerun was segmented
        again on the first run after an upgrade."""
        entry = self.entries.get(self.key_of(source))
        stored = self.stored_key(source)
        if not (entry and stored is not None and entry.get("status") == "done"):
            return
        if "georef" not in stored and "georef" in key:
            new: tuple[str, ...] = ("georef", "sources", "masking")
        elif "masking" not in stored and "masking" in key:
            new = ("masking", "sources")  # a mask file (a.tif.msk) is a source now; the others are compared
            if [f for f in stored.get("sources", []) if not f[0].lower().endswith(".msk")] != [
                    f for f in key.get("sources", []) if not f[0].lower().endswith(".msk")]:
                return
        else:
            return
        loose = ("sidecars", "mtime_ns", *new)
        if _without_extras({k: v for k, v in stored.items() if k not in loose}) != _without_extras(
                {k: v for k, v in key.items() if k not in loose}) or not _as_that_run_saw(source, entry, new, seen):
            return
        with self.lock:  # written with the next record or `save`: a write per raster was quadratic
            self.entries[self.key_of(source)] = {
                **entry, "key": {**{k: v for k, v in entry["key"].items() if k not in ("sidecars", *new)},
                                 **{k: key[k] for k in new if k in key}}}
            self.unsaved = True

    def same_content(self, source: str, key: dict[str, Any]) -> bool:
        """Whether `source` is done with a key that differs from `key` in the file's time alone, and the file's
        content is still the one segmented (restored, synced again without its times, ``touch``ed): then the record
        takes the new time. Inputs synced again by rsync without ``-t`` segmented every raster again."""
        entry = self.entries.get(self.key_of(source))
        stored = self.stored_key(source)
        if not (stored is not None and entry.get("status") == "done" and entry.get("sha256")
                and stored.get("mtime_ns") != key.get("mtime_ns") and stored.get("size") == key.get("size")
                # --vector or --preview switched as well: extras_only takes it from here
                and _without_extras({**stored, "mtime_ns": key.get("mtime_ns")}) == _without_extras(key)):
            return False
        try:
            if _content_digest(source, key) != entry["sha256"]:
                return False
        except OSError:
            return False
        log.info("%s: its time changed but not its content; it is not segmented again", source)
        self.record(source, {**entry, "key": {**stored, "mtime_ns": key["mtime_ns"]}})
        return True

    def same_chunking(self, source: str, key: dict[str, Any], card) -> bool:
        """Whether `source` is done with a key that differs from `key` in ``chunk`` alone, where the chunk that key
        gives cuts the model's grid of the raster as the recorded run cut it (`chunk_on_grid`): the mask would be
        the same, so the record takes the new chunk. --chunk changed after a run ran out of memory segmented every
        raster again, also the tiles smaller than either chunk, whose masks came out identical."""
        from geoseg.pipeline import _check_tile, chunk_on_grid

        entry = self.entries.get(self.key_of(source))
        stored = self.stored_key(source)
        plan = entry.get("plan") if entry else None
        if not (stored is not None and entry.get("status") == "done" and isinstance(plan, dict)
                and stored.get("chunk") != key.get("chunk")
                and {k: v for k, v in stored.items() if k != "chunk"} == {k: v for k, v in key.items() if k != "chunk"}):
            return False
        try:
            margin = card.margin if key.get("margin") is None else int(key["margin"])
            tile = _check_tile(card, key.get("tile"), margin)
            chunk = tuple(key["chunk"]) if isinstance(key.get("chunk"), list) else key.get("chunk")
            same = list(chunk_on_grid(card, chunk, margin, tile, *plan["grid"])) == list(plan["chunk"])
        except (GeosegError, KeyError, TypeError, ValueError):
            return False
        if same:
            log.info("%s: chunk %s cuts it as the run that segmented it did; it is not segmented again", source,
                     key.get("chunk") or "default")
            self.record(source, {**entry, "key": {**{k: v for k, v in stored.items() if k != "chunk"},
                                                  **({"chunk": key["chunk"]} if "chunk" in key else {})}})
        return same

    def extras_only(self, source: str, key: dict[str, Any], folder: str) -> bool:
        """Whether `source` is done with a key that differs from `key` in ``vector`` or ``preview`` alone (outputs
        made from the mask), its outputs intact."""
        stored = self.stored_key(source)
        return (stored is not None and "vector" in stored and _extras(stored) != _extras(key)
                and _without_extras(stored) == _without_extras(key) and self.is_done(source, stored, folder))

    def has_done(self, source: str) -> bool:
        entry = self.entries.get(self.key_of(source))
        return bool(entry and entry.get("status") == "done")

    def entry(self, source: str) -> dict[str, Any]:
        return {**{k: v for k, v in self.entries[self.key_of(source)].items() if k != "seen"}, "input": source}

    def record(self, source: str, entry: dict[str, Any]) -> None:
        """Keep `entry`, written at once unless the last write is under `WRITE_EVERY_S` old (`save` writes the rest,
        also on Ctrl-C): a write per raster of the whole manifest made a survey quadratic, 131 s of CPU and 4.3 GB
        written for 1,600 rasters (h102). A kill outright (SIGKILL) loses that last second's records at most."""
        with self.lock:
            self.entries[self.key_of(source)] = entry
            self.unsaved = True
            if time.monotonic() - self.written >= WRITE_EVERY_S:
                self._write()

    def remember(self, source: str, seen: dict[str, Any] | None) -> None:
        """What the key of a skipped raster was read from (`_fingerprint`), kept by the next write (`save`): one
        write per raster made resuming a survey of thousands of rasters quadratic."""
        with self.lock:
            entry = self.entries.get(self.key_of(source))
            if entry is not None and entry.get("seen") != seen:
                self.entries[self.key_of(source)] = _with_seen(entry, seen)
                self.unsaved = True

    def save(self) -> None:
        with self.lock:
            if self.unsaved:
                self._write()

    def vet(self, files: list[str]) -> None:
        """Record `files` (found by folders and globs, and asked) as no output of geoseg's, with their sizes and
        times now: a rerun does not ask again while they are unchanged (`expand_inputs`)."""
        vetted = {os.path.abspath(f): stat for f, stat in _stats(files).items() if stat is not None}
        if vetted != self.vetted:
            self.vetted, self.unsaved = vetted, True

    def batch_kept(self, signature: str) -> dict[str, str] | None:
        """The batch outputs of the last run, where it wrote them from the same rasters' outputs (`signature`)
        and every one of them (and its style) is as it left them; else None."""
        files = self.batch.get("files")
        if self.batch.get("signature") != signature or not isinstance(files, dict) or not files:
            return None
        paths = {name: str(self.base / name) for name in files}
        if _stats(paths.values()) != {p: files[name] for name, p in paths.items()}:
            return None
        outputs = self.batch.get("outputs")
        return {k: str(self.base / v) for k, v in outputs.items()} if isinstance(outputs, dict) else None

    def keep_batch(self, signature: str, outputs: dict[str, str]) -> None:
        """Record what the batch `outputs` were written from, for `batch_kept`."""
        written = [Path(p) for p in outputs.values()]
        written += [p.with_suffix(".qml") for p in written if p.suffix in (".vrt", ".gpkg")
                    and p.with_suffix(".qml").is_file()]
        with self.lock:
            self.batch = {"signature": signature,
                          "outputs": {k: os.path.relpath(v, self.base) for k, v in outputs.items()},
                          "files": {os.path.relpath(p, self.base): stat for p, stat in _stats(written).items()}}
            self._write()

    def _write(self) -> None:
        stored = {key: {**e, "outputs": {k: os.path.relpath(v, self.base) for k, v in e["outputs"].items()}}
                  for key, e in self.entries.items()}
        # a record without the batch (a raster done or failed since) makes the next run write the batch files
        write_json(self.path, {"version": 2, "entries": stored, **({"batch": self.batch} if self.batch else {}),
                               **({"vetted": self.vetted} if self.vetted else {})},
                   indent=None)  # indented, json took Python's slow encoder: 4.5 times the time
        self.unsaved, self.written = False, time.monotonic()


WRITE_EVERY_S = 1.0  # the manifest's records are written at most this often while a survey runs


def _inputs_before(out_dir: Path) -> dict[str, list[int]]:
    """The files an earlier survey into `out_dir` found were no output of geoseg's, with the size and time each
    had then (for `expand_inputs`); none where there is no manifest, or one that cannot be read (the survey says
    why). Not the rasters it took: one named on its own (or in a list) was never asked."""
    try:
        manifest = _Manifest(out_dir / MANIFEST)
    except GeosegError:
        return {}
    return {k: v for k, v in manifest.vetted.items() if isinstance(v, list)}


def _as_that_run_saw(source: str, entry: dict[str, Any], new: tuple[str, ...] = (),
                     seen: dict[str, Any] | None = None) -> bool:
    """Whether the files GDAL reads for `source` now are those (names, sizes, times) that the run of `entry`
    recorded, as far as the key's `new` fields depend on them: its key's ``sidecars`` (a geoseg before 'georef'
    keys: every file, as that geoseg compared them), or its ``seen`` (a geoseg before 'masking' keys: the files
    that can hold nodata, .aux.xml and .msk; its georeferencing is in its key). A record of neither (older still)
    is taken as it stands."""
    recorded_seen, sidecars = entry.get("seen"), (entry.get("key") or {}).get("sidecars")
    if sidecars is None and "georef" in new:
        return True
    if sidecars is None and not recorded_seen:  # no proof (a raster surveyed within 2 s of its export has no
        return _masks_nothing(source)  # 'seen'): adopted only where nothing is nodata now, as nothing was then
    local = _local_file(source)
    if local is None or is_gdal_path(source):
        return True
    # what this run's fingerprint read (`seen`), else read again: opening each raster twice made the first rerun
    # after an upgrade (1,010 tiles) slower still
    files = [list(f) for f in seen["files"]] if seen and seen.get("files") else _files_read(source)
    if files is None:
        return False
    main, folder = os.path.abspath(local), os.path.dirname(os.path.abspath(local))
    if sidecars is None:  # the raster's own time aside: `same_content` compares a touched raster by content
        def masking(listed) -> list[list]:
            return [list(f) for f in listed if f[0] != main and f[0].lower().endswith((".aux.xml", ".msk"))]

        return masking(recorded_seen.get("files", [])) == masking(files)
    return sorted([os.path.relpath(f, folder), size, mtime] for f, size, mtime in files if f != main) == \
        sorted(list(f) for f in sidecars)


def _masks_nothing(path: str) -> bool:
    """Whether GDAL reads no nodata value and no mask for `path`."""
    from rasterio.enums import MaskFlags

    from geoseg.raster import open_quietly

    try:
        with open_quietly(path) as ds:
            return all(v is None for v in ds.nodatavals) and all(MaskFlags.all_valid in f for f in ds.mask_flag_enums)
    except Exception:  # noqa: BLE001 - cannot tell
        return False


def _files_read(path: str) -> list[list] | None:
    """[path, size, mtime_ns] of every local file GDAL reads for `path`, sorted; None where it cannot open it."""
    from geoseg.raster import open_quietly

    try:
        with open_quietly(path) as ds:
            names = ds.files
    except Exception:  # noqa: BLE001 - any failure to open: no proof of anything
        return None
    return _stat_files(names)


def _stat_files(names) -> list[list]:
    """[path, size, mtime_ns] of each local file of `names` that exists (not /vsi paths), sorted."""
    out = []
    for name in names:
        if is_gdal_path(name):
            continue
        try:
            stat = os.stat(name)
        except OSError:
            continue
        out.append([os.path.abspath(name), stat.st_size, stat.st_mtime_ns])
    return sorted(out)


def _with_seen(entry: dict[str, Any], seen: dict[str, Any] | None) -> dict[str, Any]:
    """`entry` with ``seen`` (what its key's georeferencing was read from), or without one where there is none."""
    return {**{k: v for k, v in entry.items() if k != "seen"}, **({"seen": seen} if seen else {})}


def _takes_two(function) -> bool:
    """Whether `function` can be called with two positional arguments (unknowable ones: yes)."""
    import inspect

    try:
        inspect.signature(function).bind(0.0, "")
    except TypeError:
        return False
    except ValueError:  # a builtin without a signature
        return True
    return True


def survey(
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    vector: bool = True,
    jobs: int = 1,
    progress: Callable[[float, str], None] | Callable[[float], None] | None = None,
    **segment_options: Any,
) -> SurveyResult:
    """Segment every raster of a survey; resume where an earlier run stopped.

    Parameters
    ----------
    inputs : sequence
        Rasters, folders, globs, ``.txt`` lists or ``.vrt`` mosaics (see `expand_inputs`).
    output_dir : path
        Each raster's outputs go to ``output_dir/STEM/``; batch outputs beside them.
    jobs : int
        Rasters processed at once (Dask threads); memory grows with it.
    progress : callable, optional
        ``progress(fraction_of_batch, message)``, fraction counting partly done rasters, message as
        ``"12/205 rasters, 1 failed · NAME"`` (the rasters ended, those failed, and the raster that moved);
        or ``progress(fraction)``, as segment, scene and flood call it.
    **segment_options
        Passed to `geoseg.segment` and recorded in the manifest.

    Returns
    -------
    SurveyResult
        ``failed`` lists rasters with their errors; the others still complete.
        Batch outputs: ``masks.vrt`` (one per CRS when they differ),
        ``survey_polygons.gpkg`` (with a ``source`` attribute), ``survey_summary.csv``,
        ``survey_summary.json`` (with ``total_m2``, each place counted once where rasters
        overlap, and ``sum_of_rasters_m2``) and ``survey_report.md``.

    Notes
    -----
    ``manifest.json`` records for each raster its size, mtime and SHA-256, the model name and
    version and the options. A rerun skips rasters whose record matches and whose
    outputs exist (a raster whose time alone changed is compared by content), and redoes
    anything else, including runs cut off midway.
    """
    from concurrent.futures import ThreadPoolExecutor, wait

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    check_output_path(output_dir)  # before the inputs: "no rasters found in x.tif outside the output folder ."
    if progress is not None and not callable(progress):  # progress=3 failed on every raster, with a traceback each
        raise InputError(f"progress must be a function of (fraction, message), or None. Received: {progress!r}")
    if progress is not None and not _takes_two(progress):  # segment's, scene's and flood's take (fraction): one
        progress = (lambda one: lambda fraction, message: one(fraction))(progress)  # such failed every raster
    if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or jobs < 1:  # jobs=0 ran as 1
        raise InputError(f"jobs (--jobs) must be a whole number of at least 1. Received: {jobs!r}")
    # chunks=5 or chunk=-1 failed on every raster, one by one, and still wrote a report of failures
    check_options({**segment_options, "vector": vector}, caller="survey()", taken=("overwrite", "progress"))
    out_dir = Path(output_dir)
    written: list[str] = []  # a segment -o into an image folder: its masks and previews are no images
    vetted: list[str] = []  # files found to be no output of geoseg's, for the next run
    sources = expand_inputs(inputs, left_out=written, output_dir=out_dir, _inputs_before=_inputs_before(out_dir),
                            _vetted=vetted)
    inside = Path(os.path.realpath(out_dir))  # outputs in an input folder: a rerun segmented its own masks
    ours = [s for s in sources if not is_gdal_path(s) and inside in Path(os.path.realpath(s)).parents]
    if ours:
        log.info("left out %d raster(s) under the output folder %s", len(ours), out_dir)
        sources = [s for s in sources if s not in ours]
    if not sources:  # rasters only in the output folder: "Pass files, folders or globs" of files passed (h149)
        fix = ("Pass files, folders or globs outside it, or pick another output folder (-o): rasters under it are "
               "taken for outputs of the run" if ours else "Pass files, folders or globs")
        raise InputError(f"no rasters found in {', '.join(map(str, inputs))}"
                         + (f" outside the output folder {out_dir}" if ours else "")
                         + (" other than files geoseg wrote (name one on its own to segment it)" if written else "")
                         + f". {fix}.")
    card = class_card(model, what="a survey")
    with new_folders_removed_on_error(out_dir):  # Ctrl-C before the first raster left an empty folder
        prepare_output_dir(out_dir, lambda d: {}, overwrite=True)  # a rerun resumes: existing outputs are expected
        # the batch's files, written after every raster: a folder in the way was a traceback at the very end
        refuse_folders(out_dir / name for name in (MANIFEST, "masks.vrt", "survey_polygons.gpkg", "survey_summary.csv",
                                                   "survey_summary.json", "survey_report.md"))
        with _survey_lock(out_dir):  # two surveys into one folder each wrote the batch files of its own rasters
            options = {"model": card.name, "model_version": card.version, **_model_identity(model), "vector": vector,
                       **{k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(segment_options.items())
                          # where it ran does not change the outputs (its repr has a fresh port each run); sieve=0 is
                          # no sieve, which the command line leaves out; the card's own bands spelled out are no change
                          if k != "client" and not (k == "sieve" and not v) and not (k == "preview" and v is True)
                          and not (k == "bands" and v is not None and list(v) == list(card.bands))}}
            manifest = _Manifest(out_dir / MANIFEST)
            manifest.card_bands = list(card.bands)
            manifest.vet(vetted)
            folders = _folders(sources, manifest)  # one output folder per raster, the same on every run
            for folder in set(folders.values()):  # those of runs killed outright (SIGKILL) mid-raster
                remove_dead_temp_dirs(out_dir / folder)
            fractions = dict.fromkeys(sources, 0.0)
            result = SurveyResult()
            report = progress or (lambda fraction, message: None)

            stopping = threading.Event()
            failed: set[str] = set()

            def tick(source: str, fraction: float) -> None:
                # Ctrl-C: the raster stops at its next chunk, and removes its staged files; one whose outputs are in
                # place (1.0) is recorded: it was raised out of, left unrecorded and segmented again on resume (h102)
                if stopping.is_set() and fraction < 1.0:
                    raise _Stopped
                fractions[source] = fraction
                ended = sum(f >= 1.0 for f in fractions.values())
                # the bar said only the raster's name: a 205-file survey gave no count of those ended or failed (h124)
                report(RASTERS_SHARE * sum(fractions.values()) / len(sources), f"{ended}/{len(sources)} rasters"
                       + (f", {len(failed)} failed" if failed else "") + f" · {Path(source).name}")

            def ended_text() -> str:
                return f"{len(sources)}/{len(sources)} rasters" + (f", {len(failed)} failed" if failed else "")

            def one(source: str) -> tuple[str, dict[str, Any]]:
                try:
                    found, seen = _fingerprint(source, manifest.entries.get(manifest.key_of(source)))
                except OSError:
                    failed.add(source)
                    tick(source, 1.0)
                    note = whitespace_note(source)
                    return "failed", {"input": source, "error": f"{repr(source) if note else source}: no such file. "
                                                                f"Check the path.{note}"}
                key = {**found, **options}
                manifest.adopt(source, key, seen)  # done by an older geoseg, whose keys held less
                manifest.same_content(source, key)  # only its time changed: the record takes the new one
                manifest.same_chunking(source, key, card)  # another --chunk that cuts it alike: the record takes it
                if manifest.is_done(source, key, folders[source]):
                    manifest.remember(source, seen)
                    _restore_class_files(manifest.entry(source), card)
                    tick(source, 1.0)
                    return "skipped", manifest.entry(source)
                started = time.perf_counter()
                if manifest.extras_only(source, key, folders[source]):  # --vector or --preview switched: the mask
                    try:  # stays (it was segmented again: hours of a U-Net survey for its polygons or previews)
                        entry = _extras_switched(manifest.entry(source), key, card)
                    except GeosegError as exc:
                        log.warning("%s: its polygons or preview could not be changed (%s); it is segmented again",
                                    source, exc)
                    else:
                        _restore_class_files(entry, card)
                        entry["seconds"] = round(time.perf_counter() - started, 3)
                        switched = entry.pop("switched")
                        manifest.record(source, _with_seen(entry, seen))
                        tick(source, 1.0)
                        return "kept", {**entry, "switched": switched}  # its mask is the earlier run's
                try:
                    res = segment(source, out_dir / folders[source], model=model, vector=vector, overwrite=True,
                                  progress=lambda f: tick(source, f), **segment_options)
                except GeosegError as exc:
                    entry = {"input": source, "status": "failed", "key": key, "outputs": {}, "error": str(exc)}
                except Exception as exc:  # one broken raster must not stop the survey
                    if stopping.is_set():  # the survey itself is stopping: not this raster's failure
                        raise
                    log.exception("unexpected failure on %s", source)
                    entry = {"input": source, "status": "failed", "key": key, "outputs": {},
                             "error": f"{source}: {type(exc).__name__}: {exc}"}
                else:
                    entry = {"input": source, "status": "done", "key": key, "outputs": res.outputs, "classes": res.classes,
                             "nodata_m2": res.nodata_m2,
                             "width": res.width, "height": res.height, "seconds": round(time.perf_counter() - started, 3),
                             "crs": _crs_of(res.outputs["mask"]), "files": dict(zip(res.outputs, _stats(res.outputs.values()).values())),
                             # how the model's grid was cut, for `same_chunking`
                             "plan": {"chunk": list(res.plan["chunk"]),
                                      "grid": [res.plan["model_grid"]["height"], res.plan["model_grid"]["width"]]
                                      if res.plan.get("model_grid") else [res.height, res.width]},
                             "sha256": _digest_or_none(source, key)}
                if entry["status"] == "done" or not manifest.has_done(source):
                    # a failed rerun (a typo in --bands) kept none of the done ones
                    manifest.record(source, _with_seen(entry, seen))
                if entry["status"] == "failed":
                    failed.add(source)
                tick(source, 1.0)
                return entry["status"], entry

            from geoseg.pipeline import rasters_in_turn

            with rasters_in_turn(segment_options.get("client")), \
                    ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="geoseg-survey") as pool:
                futures = [pool.submit(one, s) for s in sources]
                try:
                    outcomes = [f.result() for f in futures]
                except BaseException:  # Ctrl-C or SIGTERM: the rasters in progress stop at their next chunk and
                    stopping.set()  # remove their staged files (the process's exit had cut them short, leaving them)
                    for future in futures:
                        future.cancel()
                    wait(futures)
                    manifest.save()  # the rasters done within the last WRITE_EVERY_S
                    raise
            manifest.save()  # what the skipped rasters were read from, for the next run
            for status, entry in outcomes:
                getattr(result, status).append(entry)
            order = {source: i for i, source in enumerate(sources)}  # the mosaic stacks them in input order, resumed or not
            finished = sorted(result.done + result.kept + result.skipped, key=lambda e: order[e["input"]])
            if not finished and (out_dir / "survey_report.md").exists():
                log.warning("no raster of this run was segmented, so the batch files of the earlier run (survey_report.md, "
                            "the mosaics, survey_polygons.gpkg) are left as they were; its rasters stay done")
                result.outputs = {key: str(out_dir / name) for key, name in (
                    ("masks", "masks.vrt"), ("polygons", "survey_polygons.gpkg"), ("summary_csv", "survey_summary.csv"),
                    ("summary_json", "survey_summary.json"), ("report", "survey_report.md")) if (out_dir / name).exists()}
                result.earlier_outputs = True
                report(1.0, ended_text())
                return result
            signature = _batch_signature(manifest, finished, result.failed, card.classes, vector)
            kept = manifest.batch_kept(signature)
            if kept is not None:  # nothing changed since the run that wrote them: rebuilding the mosaics and
                log.info("no raster changed since the last run: its batch files (survey_report.md, the mosaics, "
                         "the totals) are kept")  # totals took 20-28 s of a rerun of 1,010 tiles
                result.outputs = kept
                report(1.0, ended_text())
                return result
            # the bar stood at 100% with nothing said for the 15-60 s this took over 200 rasters (h124), and 1.0
            # came before the batch files were in place, three times (h133): the rasters are the first 95%
            report(RASTERS_SHARE, "writing the mosaics, totals" + (" and polygons" if vector and finished else ""))
            result.outputs = _batch_outputs(out_dir, finished, result.failed, card.classes, vector)
            manifest.keep_batch(signature, result.outputs)
            report(1.0, ended_text())
            return result


RASTERS_SHARE = 0.95  # of the progress: the rasters; the batch files (mosaics, totals, polygons) the rest

LOCK = ".geoseg-survey.lock"


def _survey_lock(out_dir: Path):
    """Hold ``out_dir/.geoseg-survey.lock`` while the survey runs (`folder_lock`). Two surveys into one folder both
    ended well, and the last to finish wrote the manifest, mosaic and report of its own rasters only."""
    from geoseg.files import folder_lock

    return folder_lock(out_dir / LOCK, lambda where, lock: (
        f"{out_dir}: another survey ({where}) is writing into this folder, and the two would overwrite each other's "
        f"manifest and report. Wait for it to end, or pick another output folder (if no survey runs there, delete "
        f"{lock})."))


def _batch_signature(manifest: "_Manifest", finished: list[dict], failed: list[dict], classes, vector: bool) -> str:
    """A digest of what the batch files are made from: each finished raster's outputs with their sizes and times
    and its class areas, in input order, the failures' errors, the classes and their colours, and whether
    polygons are merged."""
    from geoseg import __version__

    made_of = {
        "geoseg": __version__, "vector": bool(vector),
        "classes": [(c.id, c.name, c.color) for c in classes],
        "finished": [(manifest.key_of(e["input"]),  # as this run wrote them, or as the manifest holds them
                      sorted((k, os.path.relpath(v, manifest.base)) for k, v in e.get("outputs", {}).items()),
                      e.get("files"),
                      e.get("classes"), e.get("nodata_m2")) for e in finished],
        "failed": [(manifest.key_of(e["input"]), e.get("error")) for e in failed]}
    return hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode()).hexdigest()


def _crs_of(path: str) -> str | None:
    from geoseg.raster import open_quietly

    with open_quietly(path) as ds:  # a JPEG's mask: no CRS is the answer, not a warning
        return ds.crs.to_string() if ds.crs else None


def _batch_outputs(out_dir: Path, finished: list[dict], failed: list[dict], classes, vector: bool) -> dict[str, str]:
    """Write the batch files (mosaics, merged polygons, summaries, report) as one set: into a staging folder, then
    moved into place together, the report last, with an earlier run's mosaics of CRSs no longer surveyed and its
    polygons no longer matched removed. A Ctrl-C while they were written left a mosaic of this run beside the
    summaries and polygons of the one before (h124)."""
    from geoseg.files import move_all, signals_held
    from geoseg.raster import staging_dir

    _remove_dead_merges(out_dir / "survey_polygons.gpkg")  # of a geoseg that merged beside the layer
    with staging_dir(out_dir) as stage:
        outputs = _batch_files(out_dir, stage, finished, failed, classes, vector)
        made = {p.name for p in stage.iterdir() if p.is_file() and not p.name.startswith(".")}
        moves = sorted(((stage / name, out_dir / name) for name in made), key=lambda m: m[1].name == "survey_report.md")
        stale = [p for p in (*out_dir.glob("masks.vrt"), *out_dir.glob("masks_*.vrt"), out_dir / "survey_polygons.gpkg")
                 if p.name not in made]
        stale = [q for p in stale for q in (p, p.with_suffix(".qml")) if q.is_file() or q.is_symlink()]
        with signals_held():
            move_all(moves, staging=stage, remove=stale)
    return outputs


def _batch_files(out_dir: Path, stage: Path, finished: list[dict], failed: list[dict], classes,
                 vector: bool) -> dict[str, str]:
    """`_batch_outputs`' files, written into `stage`; the paths returned are their final ones in `out_dir`."""
    n_classes = max((c.id for c in classes), default=-1) + 1
    own = {}  # each mask's m² per class id, as segment measured it
    for e in finished:
        own[e["outputs"]["mask"]] = np.zeros(n_classes)
        for c in e.get("classes") or []:
            own[e["outputs"]["mask"]][c["id"]] += c.get("area_m2") or 0.0
    outputs, left_out, groups = {}, [], {}
    outputs.update(_mosaics(out_dir, list(own), classes, left_out, groups, stage))
    order = {path: i for i, path in enumerate(own)}  # input order: the later raster decides, across CRSs too
    placed = _placed(left_out)  # rotated or placed by GCPs: in no mosaic, but counted once all the same
    stacked = sorted([*((path, crs, t, w, h) for crs, items in groups.items() for path, t, w, h in items),
                      *placed.values()], key=lambda item: order[item[0]])
    mosaic_m2 = _counted_once(stacked, own) if stacked else np.zeros(n_classes)
    # none: an earlier run's polygons, which this run's rasters no longer match, are removed (`_batch_outputs`)
    merged = (_merge_layers(stage / "survey_polygons.gpkg", finished, out_dir / "survey_polygons.gpkg")
              if vector and finished else None)
    if merged is not None:
        write_qml(merged.with_suffix(".qml"), classes, kind="vector")
        outputs["polygons"] = str(out_dir / merged.name)
    rows = []
    for e in finished + failed:
        row = {"input": e["input"], "status": e.get("status", "failed"), "error": e.get("error", ""),
               # absolute, as the inputs are: a path as typed was relative to the folder the command ran in, and
               # a rerun from another folder rewrote it so (h124)
               "seconds": e.get("seconds", ""), "mask": os.path.abspath(e["outputs"]["mask"])
               if e.get("outputs", {}).get("mask") else ""}
        for c in e.get("classes", []) or [{"name": c.name} for c in classes]:
            row[f"{c['name']}_m2"] = c.get("area_m2", "")
        # the raster's area of no class (clouds, nodata): a cloudy date read as less of every class, unexplained
        nodata = e.get("nodata_m2") if "nodata_m2" in e or not row["mask"] else _nodata_m2(row["mask"])
        row["nodata_m2"] = "" if nodata is None else nodata  # none: a mask without a CRS
        rows.append(row)
    outputs["summary_csv"] = str(out_dir / "survey_summary.csv")
    outputs["summary_json"] = str(out_dir / "survey_summary.json")
    outputs["report"] = str(out_dir / "survey_report.md")
    ok = [r for r in rows if r["status"] == "done"]
    summed = {c.name: sum(float(r.get(f"{c.name}_m2") or 0) for r in ok) for c in classes}
    outside = [r for r in ok if r["mask"] in left_out and r["mask"] not in placed]  # nowhere: only their own areas
    totals = {c.name: float(mosaic_m2[c.id]) + sum(float(r.get(f"{c.name}_m2") or 0) for r in outside)
              for c in classes}
    write_csv(stage / "survey_summary.csv", rows)
    write_json(stage / "survey_summary.json", {"rasters": rows, "total_m2": {k: round(v, 3) for k, v in totals.items()},
                                               "sum_of_rasters_m2": {k: round(v, 3) for k, v in summed.items()}})
    write_text(stage / "survey_report.md", _report(rows, outputs, left_out, totals, summed, len(groups)))
    return outputs


def _nodata_m2(mask: str) -> float | None:
    """m² of a mask's nodata, for a raster an older geoseg segmented (its record has none); None without a CRS."""
    from geoseg.raster import NODATA, class_pixels_and_areas, inspect_raster

    try:
        info = inspect_raster(mask)
        areas = class_pixels_and_areas(mask, info, NODATA + 1)[1]
    except GeosegError:
        return None
    return None if areas is None else round(float(areas[NODATA]), 3)


def _placed(masks: list[str]) -> dict[str, tuple]:
    """(path, crs, transform, width, height) of those of `masks` that are on the map (a CRS, or GCPs)."""
    from geoseg.raster import inspect_raster

    placed = {}
    for path in masks:
        info = inspect_raster(path)
        transform, crs = info.map_georeferencing()
        if crs is not None:
            placed[path] = (path, crs.to_string(), transform, info.width, info.height)
    return placed


def _report(rows: list[dict], outputs: dict[str, str], left_out: list[str], totals: dict[str, float],
            summed: dict[str, float], n_crs: int) -> str:
    ok = [r for r in rows if r["status"] == "done"]
    bad = [r for r in rows if r["status"] != "done"]
    lines = ["# Survey report", "", f"{len(ok)} raster(s) segmented (by this run or an earlier one), {len(bad)} failed.", ""]
    # m² for a drone survey's totals: 18 m² of water read 0.0000 km²
    unit, per = ("km²", 1e6) if max(totals.values(), default=0) >= 1e6 else ("m²", 1.0)
    digits = 4 if per > 1 else 1
    lines += [f"| class | total {unit} |", "|---|---:|"] + [f"| {md_cell(k)} | {v / per:,.{digits}f} |"
                                                           for k, v in totals.items()]
    twice = sum(summed.values()) - sum(totals.values())
    if twice > 1e-3 * max(sum(totals.values()), 1.0):
        lines += ["", f"The rasters overlap: their own areas (survey_summary.csv) add up to "
                  f"{sum(summed.values()) / per:,.{digits}f} {unit}, {twice / per:,.{digits}f} {unit} more than the "
                  "ground they cover. "
                  "The totals count each place once, as the mosaic shows it: where rasters overlap, the one listed "
                  "last in the mosaic decides its class."]
    if n_crs > 1:
        lines += ["", f"The rasters are in {n_crs} CRSs, with a mosaic each. The totals still count each place once: "
                  "where rasters in two CRSs overlap, the one listed later decides, as within a mosaic."]
    if bad:
        lines += ["", "## Failed", ""] + [f"- `{r['input']}`: {r['error'].removeprefix(r['input'] + ': ')}"
                                          for r in bad]  # the error names the raster too
    if left_out:
        lines += ["", "## Not in the mosaic (no CRS, or not north-up)", "",
                  "Those on the map (rotated, or placed by GCPs) are counted in the totals as the others are, each "
                  "place once; those without a CRS have no m² and add nothing.", ""] + \
            [f"- `{os.path.abspath(p)}`" for p in left_out]  # as survey_summary.csv names them, not from the cwd
    lines += ["", "## Outputs", ""] + [f"- {k}: `{os.path.abspath(v)}`" for k, v in outputs.items()]
    return "\n".join(lines) + "\n"


def _mosaics(out_dir: Path, masks: list[str], classes, left_out: list[str], groups: dict,
             stage: Path) -> dict[str, str]:
    """Write masks.vrt (or one masks_EPSG_n.vrt per CRS) over every mask, with the class colours, into `stage`
    as files of `out_dir` (`_batch_outputs` moves them there); `groups` gets each mosaic's (path, transform, width, height) of its
    masks, in stacking order.

    A mosaic needs north-up grids with a CRS; masks without one (plain JPEGs, scenes placed by
    GCPs or RPCs) or rotated ones are appended to `left_out` instead of being stacked at the origin.
    """
    from geoseg.raster import open_quietly

    by_crs = groups  # CRS -> [(path, transform, width, height)]
    for path in masks:
        with open_quietly(path) as ds:  # a JPEG's mask is left out below, with a warning of its own
            # rotated, south-up (rows run north) or mirrored grids: the VRT's placement assumes north-up, and a
            # south-up one gave masks.vrt a negative height that GDAL refuses to open
            if ds.crs is None or ds.transform.b or ds.transform.d or ds.transform.e >= 0 or ds.transform.a <= 0:
                left_out.append(path)
                continue
            by_crs.setdefault(ds.crs.to_string(), []).append((path, ds.transform, ds.width, ds.height))
    if left_out:
        log.warning("%d mask(s) without a CRS or north-up grid are left out of the mosaic: %s", len(left_out),
                    ", ".join(map(os.path.abspath, left_out[:3])) + (", ..." if len(left_out) > 3 else ""))
    out = {}
    for crs, items in by_crs.items():
        name = "masks.vrt" if len(by_crs) == 1 else f"{_mosaic_stem(crs)}.vrt"
        write_text(stage / name, _vrt_xml(crs, items, classes, out_dir))  # its paths relative to out_dir
        # QGIS names palette entries from a style beside the file, not from CLASS_NAMES: its legend said 0-255
        write_qml((stage / name).with_suffix(".qml"), classes, kind="raster")
        out[name.removesuffix(".vrt")] = str(out_dir / name)
    return out


def _mosaic_stem(crs: str) -> str:
    """The mosaic of one CRS among several: ``masks_EPSG_32640``; a CRS without an authority code (a compound
    or custom one, which rasterio writes as its whole WKT: a file name of brackets and quotes, or too long) is
    named by a short hash of its WKT, ``masks_crs_1a2b3c4d``."""
    if re.fullmatch(r"[A-Za-z]+:\d+", crs):
        return f"masks_{crs.replace(':', '_')}"
    return f"masks_crs_{hashlib.sha1(crs.encode()).hexdigest()[:8]}"


def _counted_once(items, own: dict[str, np.ndarray], block: int = 2048) -> np.ndarray:
    """m² of each class over masks given as (path, crs, transform, width, height), each place counted once.

    The transform may be rotated, or the best fit of a mask's GCPs (`RasterInfo.map_georeferencing`): such
    masks are in no mosaic, and were counted twice where they overlap others.

    As in the mosaic, where masks overlap the one listed later decides (where it has data), and so
    across CRSs, which the mosaics cannot stack. Each mask adds its own areas (`own`) less those of
    its pixels whose centres a later mask's data covers: only its blocks that a later mask overlaps
    are read, at its own resolution, and the later masks are sampled at those pixels' centres
    (nearest, reprojected where the CRSs differ), so coarse and fine masks mixed cost no more than
    reading the overlaps once.
    """

    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    from rasterio._err import CPLE_BaseError  # GDAL's own errors; rasterio exports no public base for them
    from rasterio.errors import RasterioError

    from geoseg.raster import NODATA, PixelAreas, class_areas, first_line, inspect_raster

    def box(t, width, height, col=0, row=0):  # (left, bottom, right, top) around the grid's corners, rotated or not
        xs, ys = zip(*(t @ (col + c, row + r) for c, r in ((0, 0), (width, 0), (0, height), (width, height))))
        return min(xs), min(ys), max(xs), max(ys)

    def overlap(a, b) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    boxes = [box(t, w, h) for _, _, t, w, h in items]
    crss = [crs for _, crs, _, _, _ in items]
    several = len(set(crss)) > 1
    lonlat = [_box_in(crs, b, "EPSG:4326") for crs, b in zip(crss, boxes)] if several else []

    def seen_from(i: int, j: int):  # mask j's box in mask i's CRS, or None where they cannot overlap
        if crss[i] == crss[j]:
            return boxes[j] if overlap(boxes[i], boxes[j]) else None
        if not overlap(lonlat[i], lonlat[j]):
            return None
        other = _box_in(crss[j], boxes[j], crss[i])
        return other if overlap(boxes[i], other) else None

    total = np.zeros(len(next(iter(own.values()))))
    unrelated: set[tuple[str, str]] = set()  # pairs warned about
    for i, (path, crs, t, w, h) in enumerate(items):
        total += own[path]
        later = [(items[j][0], other) for j in range(i + 1, len(items)) if (other := seen_from(i, j)) is not None]
        if not later:
            continue
        areas = PixelAreas(inspect_raster(path))
        with rasterio.open(path) as ds:
            for row in range(0, h, block):
                for col in range(0, w, block):
                    window = Window(col, row, min(block, w - col), min(block, h - row))
                    bounds = box(t, window.width, window.height, window.col_off, window.row_off)
                    above = [other for other, other_box in later if overlap(bounds, other_box)]
                    if not above:
                        continue
                    data = ds.read(1, window=window)
                    covered = np.zeros(data.shape, bool)
                    for other in above:  # opened one at a time: a survey may hold thousands
                        seen = np.full(data.shape, NODATA, np.uint8)
                        with rasterio.open(other) as src:
                            try:
                                # the warper places a mask by its GCPs where it has them
                                reproject(rasterio.band(src, 1), seen, src_nodata=NODATA, dst_nodata=NODATA,
                                          dst_transform=window_transform(window, t), dst_crs=crs,
                                          resampling=Resampling.nearest)
                            except (CPLE_BaseError, RasterioError) as exc:  # CRSs that PROJ cannot relate
                                if (other, path) not in unrelated:
                                    unrelated.add((other, path))
                                    log.warning("%s cannot be reprojected onto %s (%s): where they overlap, both "
                                                "are counted in the totals", other, path, first_line(exc))
                                continue
                        covered |= seen != NODATA
                    data[~covered] = NODATA  # left: this mask's pixels under a later mask's data, counted there
                    total -= class_areas(data, areas(window), len(total))
    return total


def _box_in(src_crs: str, box, dst_crs: str):
    """`box` (left, bottom, right, top) in `src_crs` as a box in `dst_crs`; everywhere where that
    cannot be said (outside the projection's area, or across the antimeridian), so that a possible
    overlap is read rather than missed."""
    from rasterio.warp import transform_bounds

    everywhere = (-np.inf, -np.inf, np.inf, np.inf)
    try:
        out = transform_bounds(src_crs, dst_crs, *box, densify_pts=21)
    except Exception:  # noqa: BLE001 - PROJ errors vary by version; reading the blocks decides instead
        return everywhere
    if not np.all(np.isfinite(out)) or out[0] > out[2] or out[1] > out[3]:
        return everywhere
    return out


def _vrt_xml(crs: str, items, classes, out_dir: Path) -> str:
    from rasterio.crs import CRS

    from geoseg.raster import class_band_xml

    # each axis its own finest pixel: one resolution for both resampled masks of pixels that are not square
    res_x, res_y = min(abs(t.a) for _, t, _, _ in items), min(abs(t.e) for _, t, _, _ in items)
    left = min(t.c for _, t, _, _ in items)
    top = max(t.f for _, t, _, _ in items)
    right = max(t.c + t.a * w for _, t, w, _ in items)
    bottom = min(t.f + t.e * h for _, t, _, h in items)
    # a grid's width in pixels is a float sum that may land a hair over the whole number
    width, height = (int(np.ceil((right - left) / res_x - 1e-6)), int(np.ceil((top - bottom) / res_y - 1e-6)))
    colours = {c.id: c.rgb for c in classes}
    entries = "".join(
        f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{255 if i in colours else 0}"/>'
        for i, (r, g, b) in ((i, colours.get(i, (0, 0, 0))) for i in range(256))
    )
    sources = []
    for path, t, w, h in items:
        rel = os.path.relpath(path, out_dir)
        sources.append(
            f'    <ComplexSource><SourceFilename relativeToVRT="1">{escape(rel)}</SourceFilename>'
            f"<SourceBand>1</SourceBand><SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{w}\" ySize=\"{h}\"/>"
            f'<DstRect xOff="{(t.c - left) / res_x}" yOff="{(top - t.f) / res_y}" '
            f'xSize="{w * abs(t.a) / res_x}" ySize="{h * abs(t.e) / res_y}"/><NODATA>255</NODATA></ComplexSource>'
        )
    srs = f"  <SRS>{escape(CRS.from_string(crs).to_wkt())}</SRS>\n"
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n{srs}'
        f"  <GeoTransform>{left}, {res_x}, 0, {top}, 0, {-res_y}</GeoTransform>\n"
        # as segment tags its masks: the mosaic reads as a class mask (evaluate, a later survey, QGIS)
        f'  <Metadata><MDI key="CLASS_NAMES">{escape(json.dumps({c.id: c.name for c in classes}))}</MDI>'
        '<MDI key="NODATA_MEANS">no input data</MDI></Metadata>\n'
        '  <VRTRasterBand dataType="Byte" band="1">\n    <NoDataValue>255</NoDataValue>\n'
        "    <ColorInterp>Palette</ColorInterp>\n"
        f"    <ColorTable>{entries}</ColorTable>\n"
        # the class names as GDAL reads them, as the masks' sidecars hold them (`write_class_sidecar`)
        + class_band_xml(classes)
        + "\n".join(sources) + "\n  </VRTRasterBand>\n</VRTDataset>\n"
    )


def _extras(key: dict[str, Any]) -> tuple[Any, Any]:
    return key.get("vector"), key.get("preview", True)


def _without_extras(key: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in key.items() if k not in ("vector", "preview")}


def _extras_switched(entry: dict[str, Any], key: dict[str, Any], card) -> dict[str, Any]:
    """`entry` (done) with its mask's polygons and preview written as `segment` writes them, or removed, as `key`
    turns them on or off; and `key`, and under ``switched`` what changed ("polygons written", "previews removed")."""
    outputs = dict(entry["outputs"])
    switched = []
    mask = Path(outputs["mask"])
    stem = mask.name.removesuffix("_mask.tif")
    (vector, preview), (had_vector, had_preview) = _extras(key), _extras(entry["key"])
    if vector and not had_vector:
        from geoseg.vector import vectorize

        polygons = mask.with_name(f"{stem}_polygons.gpkg")
        vectorize(mask, polygons, confidence=outputs.get("confidence"), overwrite=True)
        outputs["vector"] = str(polygons)
        switched.append("polygons written")
    elif not vector and outputs.get("vector"):
        polygons = Path(outputs.pop("vector"))
        for path in (polygons, polygons.with_suffix(".qml")):
            path.unlink(missing_ok=True)
        switched.append("polygons removed")
    if preview and not had_preview:
        from geoseg.preview import write_preview

        picture = mask.with_name(f"{stem}_preview.png")
        write_preview(entry["input"], mask, picture, card.classes, entry["classes"], key.get("bands") or card.bands)
        outputs["preview"] = str(picture)
        switched.append("preview written")
    elif not preview and outputs.get("preview"):
        Path(outputs.pop("preview")).unlink(missing_ok=True)
        switched.append("preview removed")
    return {**entry, "key": key, "outputs": outputs, "files": dict(zip(outputs, _stats(outputs.values()).values())),
            "switched": switched}


def _restore_class_files(entry: dict[str, Any], card) -> None:
    """Write the class names of a kept mask (`entry`, skipped or with its polygons or preview switched) where they
    are missing: its ``.aux.xml`` (`write_class_sidecar`) and QGIS style, as `segment` writes them. A mask of a
    geoseg before the sidecars, or one whose sidecar was deleted, was skipped without it, and read in gdalinfo,
    QGIS (without the style) and ArcGIS as values 0..255 of no name, while the masks segmented since had them.
    A sidecar that is there (QGIS's statistics added to it) is left as it is."""
    from geoseg.raster import class_sidecar, write_class_sidecar
    from geoseg.vector import write_qml

    mask = entry.get("outputs", {}).get("mask")
    if not mask or card.output != "classes" or not os.path.isfile(mask):
        return
    try:
        if not class_sidecar(mask).exists():
            write_class_sidecar(class_sidecar(mask), card.classes)
        if not Path(mask).with_suffix(".qml").exists():
            write_qml(Path(mask).with_suffix(".qml"), card.classes, kind="raster")
    except OSError as exc:  # a read-only output folder: the mask itself is still good
        log.warning("%s: its class names could not be written beside it (%s)", mask, exc.strerror or exc)


def _remove_with_journal(path: Path) -> None:
    """Remove a GeoPackage and the SQLite files beside it that a process killed mid-write leaves."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


# vertices held per append to survey_polygons.gpkg: each append opens the GeoPackage, updates its index and closes it
# (200 rasters one by one: 38 s, batched: 6 s); 100,000 polygons a batch peaked 30% higher over a survey (463 against
# 352 MB), where 25,000 of ~15 vertices (375,000 vertices) was as fast for +40 MB (h129). Counted in vertices, so
# polygons of many vertices hold no more memory
MERGE_VERTICES = 400_000


def _remove_dead_merges(out: Path) -> None:
    """Remove the temporary copies of `out` (and their SQLite journals) of merges killed outright (SIGKILL) on this
    host: they stayed after every later run. A folder shared over the network: another host's process ids are
    not ours."""
    host = socket.gethostname()
    for left in out.parent.glob(f".{out.stem}.{glob.escape(host)}-*.tmp.gpkg*"):
        pid = left.name.partition(".tmp.gpkg")[0].rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            left.unlink(missing_ok=True)


def _merge_layers(out: Path, finished: list[dict], shown: Path | None = None) -> Path | None:
    """Append every raster's polygons to one GeoPackage with a source attribute, one layer at a time (`shown`: the
    path to name in an error, where `out` is in a staging folder).

    The layer takes the polygons' CRS when they share one, else EPSG:4326; polygons without a CRS
    (pixel coordinates) are left out when others have one.
    """
    import geopandas as gpd
    import shapely
    import pyogrio

    # this process's own name (a second survey into the folder removed the first's file mid-write), removed when
    # the merge fails or is interrupted (a partial file stayed beside the new mosaic)
    tmp = out.with_name(f".{out.stem}.{socket.gethostname()}-{os.getpid()}.tmp.gpkg")
    _remove_with_journal(tmp)
    layers = [(e, e["outputs"].get("vector")) for e in finished]
    layers = [(e, path) for e, path in layers if path and os.path.exists(path)]
    crss = {pyogrio.read_info(path)["crs"] for _, path in layers} - {None}
    target_crs = None if not crss else crss.pop() if len(crss) == 1 else "EPSG:4326"
    pending: list = []  # frames held until MERGE_VERTICES vertices: each append opened the GeoPackage, updated its
    held = 0  # index and closed it again, 0.15-0.18 s per raster of small drone tiles (200 of them: 38 s, 6 s batched)

    def flush() -> None:
        nonlocal held
        if not pending:
            return
        import pandas as pd

        frame = pending[0] if len(pending) == 1 else gpd.GeoDataFrame(pd.concat(pending, ignore_index=True),
                                                                      crs=pending[0].crs)
        pending.clear()
        held = 0
        with catch_warnings():  # plain images only: pixel coordinates, which the report says
            warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
            try:
                pyogrio.write_dataframe(frame, tmp, layer="survey_polygons", append=tmp.exists(),
                                        dataset_options=None if tmp.exists() else dataset_options("GPKG"))
            except (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.FeatureError) as exc:  # a full disk
                raise OutputError(f"{shown or out}: could not be written ({first_line(exc)}). Free some disk space or "
                                  "pick another output folder; nothing was left at that path.") from None

    try:
        for entry, path in layers:
            frame = gpd.read_file(path)
            frame.insert(0, "source", entry["input"])
            if frame.crs is None and target_crs is not None:  # pixel coordinates would land at the map's origin
                log.warning("%s: its polygons have no CRS and are left out of %s", entry["input"], out.name)
                continue
            if frame.crs is not None and frame.crs != target_crs:
                frame = frame.to_crs(target_crs)
            if pending and list(frame.columns) != list(pending[0].columns):
                flush()
            pending.append(frame)
            held += int(shapely.get_num_coordinates(frame.geometry.values).sum())
            if held >= MERGE_VERTICES:
                flush()
        flush()
    except BaseException:
        _remove_with_journal(tmp)
        raise
    if tmp.exists():
        os.replace(tmp, out)
        return out
    return None  # nothing to merge: an earlier run's layer is removed as stale (`_batch_outputs`)
