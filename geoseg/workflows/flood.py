"""Flood mapping: water after an event, and with an image before it, new, permanent and receded water."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geoseg.errors import BandError, InputError, OutputError, catch_warnings
from geoseg.models.card import ClassInfo
from geoseg.models.classical import normalized_difference, otsu_threshold
from geoseg.pipeline import (check_options, new_folders_removed_on_error, prepare_output_dir, stale_outputs,
                             segment)
from geoseg.preview import render_map, save_png
from geoseg.raster import (DELIBERATE_TAGS, NODATA, SPECTRAL_TAGS, opaque, check_bands, class_pixels_and_areas, class_sidecar, declared_scaling, gdal_edit, inspect_raster, map_points, open_quietly, raster_stem, read_bands,
                           reading_pixels, same_raster, write_class_mask)
from geoseg.vector import onto_raster, vectorize, write_qml
from geoseg.workflows.common import (zone_table, check_layer_overlaps, class_card, coverage_pct, read_layer,
                                     segment_paths, staged_outputs, warnings_heard, write_json, write_text, same_field, md_cell)

__all__ = ["FLOOD_CLASSES", "WATER_CLASSES", "FloodResult", "flood", "water_index_mask"]

log = logging.getLogger(__name__)

Method = Literal["model", "ndwi"]
# the keys of FloodResult.outputs and their files; the polygons are not flood.gpkg, whose style flood.qml would be
# the raster's (QGIS finds a style by the layer's stem)
FILES = {"tif": "flood.tif", "gpkg": "flood_polygons.gpkg", "json": "flood.json", "md": "flood.md", "png": "flood.png"}
WATER_CLASSES = (ClassInfo(0, "dry", "#D9D0B8"), ClassInfo(1, "water", "#1F5FBF"))
FLOOD_CLASSES = (
    ClassInfo(0, "dry", "#D9D0B8"),
    ClassInfo(1, "flooded", "#E8282B"),
    ClassInfo(2, "permanent water", "#1F5FBF"),
    ClassInfo(3, "receded water", "#F2B134"),
)


@dataclass
class FloodResult:
    """Areas of each flood class, overall and per area of interest, and the files written."""

    water_source: str
    classes: list[dict[str, Any]]
    outputs: dict[str, str]
    aoi: list[dict[str, Any]] = field(default_factory=list)
    pre_coverage_pct: float | None = None  # share of the post image's data pixels that the pre image covers
    post_coverage_pct: float | None = None  # share of the post image's pixels that hold data (not cloud or nodata)
    nodata_m2: float | None = None  # flood.tif's area of no class: the post image's nodata, and where the pre lacks
    post: str | None = None  # the images, as flood.md names them (flood.json named neither)
    pre: str | None = None
    ndwi_threshold: float | None = None  # the NDWI cut used (method 'ndwi'), as a number, not only in words
    warnings: list[str] = field(default_factory=list)  # what the run warned of (the log's), for the report's reader

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)

    def __str__(self) -> str:
        """A few lines for people, as `SegmentResult`'s: the images, where the water came from, each class's area,
        the coverage, the files. ``repr()`` stays the dataclass's one line of every field."""
        lines = [f"FloodResult: {self.post}" + (f" against {self.pre}" if self.pre else " (no pre-event image)"),
                 f"  water: {self.water_source}" + (f" (NDWI over {self.ndwi_threshold:.3f})"
                                                   if self.ndwi_threshold is not None else "")]

        def area(c: dict[str, Any]) -> str:
            if c.get("area_m2") is None:  # no CRS: pixels
                return f"{c.get('pixels', 0):,} px"
            return f"{c['area_m2'] / 1e6:,.2f} km²" if c["area_m2"] >= 1e6 else f"{c['area_m2']:,.0f} m²"

        lines.append("  classes: " + ", ".join(f"{c['name']} {area(c)}" for c in self.classes))
        covered = [f"post image {self.post_coverage_pct:.1f}% with data"] if self.post_coverage_pct is not None else []
        if self.pre and self.pre_coverage_pct is not None:
            covered.append(f"pre image over {self.pre_coverage_pct:.1f}% of it")
        if covered:
            lines.append("  " + ", ".join(covered))
        if self.aoi:
            lines.append(f"  areas of interest: {len(self.aoi):,} (each in `aoi`)")
        lines += [f"  {name}: {path}" for name, path in self.outputs.items()]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython and Jupyter
        printer.text(str(self))


NDWI_EDGES = np.linspace(-1, 1, 401)  # the bins of the NDWI histograms that Otsu's method cuts
NDWI_CENTRES = (NDWI_EDGES[:-1] + NDWI_EDGES[1:]) / 2


def _check_ndwi_bands(info, green: int, nir: int) -> None:
    for name, band in (("green_band", green), ("nir_band", nir)):  # 1.5 and "2" were rasterio's and numpy's errors
        if isinstance(band, bool) or not isinstance(band, (int, np.integer)):
            raise InputError(f"{name} must be a whole band number (1-based). Received: {band!r}")
    if green == nir:  # NDWI 0 everywhere: an all-dry map, with a warning about Otsu
        raise InputError(f"green_band and nir_band are both band {green}; NDWI needs two bands. Pass --green-band and "
                         "--nir-band (green_band=, nir_band=).")
    for band in (green, nir):
        if not 1 <= band <= info.count:
            missing = "its NIR band" if band == nir and nir > info.count else f"band {band}"
            raise BandError(f"{info.path}: has {info.count} band(s), so NDWI cannot read {missing} (green_band={green}, "
                            f"nir_band={nir}). NDWI needs green and near-infrared bands; an RGB image has no NIR: use "
                            "--method model (method='model') for it, or pass --green-band and --nir-band (green_band=, "
                            f"nir_band=) between 1 and {info.count} where it has both.")


_BAND_TAGS = {"green": ("green",), "NIR": ("nir", "other_ir")}  # what GDAL may call the bands NDWI reads


def _check_band_tags(info, green: int, nir: int, *, both: bool) -> None:
    """Warn where the band read as green or NIR is tagged alpha, or, in a file whose tags were set on purpose, as
    another colour (a pre image tagged N,R,G,B beside a post of B,G,R,N): the tags were not looked at, and red
    and blue made all the water 'flooded'. `both`: the band options are for two images."""
    with open_quietly(info.path) as ds:
        tags = [c.name for c in ds.colorinterp]
    deliberate = any(t in DELIBERATE_TAGS for t in tags)
    for what, band, option in (("green", green, "--green-band"), ("NIR", nir, "--nir-band")):
        tag, wanted = tags[band - 1], _BAND_TAGS[what]
        tagged = [i + 1 for i, t in enumerate(tags) if t in wanted] if deliberate else []
        fix = (f" Its band {tagged[0]} is tagged {tags[tagged[0] - 1]}: pass {option} {tagged[0]}"
               + (" and give the other image the same band order (gdal_translate -b, or a VRT), as the band options "
                  "are for both images" if both else "") + "." if tagged else "")
        if tag == "alpha":
            log.warning("%s: band %d, read as %s for NDWI, is tagged alpha (transparency), as GDAL tags the 4th of four "
                        "8-bit bands unless told otherwise.%s If it is the %s band, tag it so (%s); if it is "
                        "transparency, pass %s with the %s band.", info.path, band, what, fix, what,
                        gdal_edit(info.path, f"-colorinterp_{band} undefined"), option, what)
        elif deliberate and tag in SPECTRAL_TAGS and tag not in wanted:
            log.warning("%s: band %d, read as %s for NDWI, is tagged %s in the file.%s", info.path, band, what, tag,
                        fix or f" If the tag is right, pass {option} with the {what} band.")


def _ndwi(src, window, green: int, nir: int) -> tuple[np.ndarray, np.ndarray]:
    with reading_pixels(src.name, window):  # a truncated image: its name and window, not a traceback
        g, n = read_bands(src, [green, nir], window=window)
        with catch_warnings():  # "nodata shadows the alpha band": the alpha is read below as well
            warnings.simplefilter("ignore", rasterio.errors.NodataShadowWarning)
            valid = np.all(src.read_masks([green, nir], window=window) > 0, axis=0)
        valid &= opaque(src, window)
    # of reflectance, where the file declares how its stored values map to it: Landsat Collection 2's offset of -0.2
    # made the unchanged highway "permanent water" (80,324 false water px against 33,036 unscaled, h121)
    (gs, ns), (go, no) = (src.scales[green - 1], src.scales[nir - 1]), (src.offsets[green - 1], src.offsets[nir - 1])
    if (gs, ns, go, no) != (1, 1, 0, 0) and all(np.isfinite(v) for v in (gs, ns, go, no)) and gs and ns:
        g = g.astype(np.float32) * np.float32(gs) + np.float32(go)
        n = n.astype(np.float32) * np.float32(ns) + np.float32(no)
    index = normalized_difference(g, n)
    return index, valid & np.isfinite(index)


def ndwi_histogram(path: str, *, green: int, nir: int, within: Window | None = None) -> np.ndarray:
    """Counts of a raster's valid NDWI values in the bins of `NDWI_EDGES`, read window by window (those `within`
    that window of it, when given)."""
    from rasterio.errors import WindowError

    _check_ndwi_bands(inspect_raster(path), green, nir)
    counts = np.zeros(len(NDWI_EDGES) - 1)
    with open_quietly(path) as src:
        for _, window in src.block_windows(1):
            if within is not None:
                try:
                    window = window.intersection(within)
                except WindowError:  # a block outside it
                    continue
            index, valid = _ndwi(src, window, green, nir)
            counts += np.histogram(index[valid], bins=NDWI_EDGES)[0]
    return counts


def ndwi_cut(counts: np.ndarray, over: str = "") -> tuple[float, str]:
    """The NDWI cut for a histogram in the bins of `NDWI_EDGES`, and how it was chosen (for the report).

    Otsu's method always splits a histogram in two, so a scene of one mode was split within it: an
    all-land scene came out a quarter water, an all-water one largely dry. Water's NDWI lies above 0
    and land's mostly below (McFeeters 1996), so the cut is 0, with a warning, where Otsu's two sides
    both lie below 0 (no water) or the histogram holds one value; where both lie above 0, only when
    the histogram does not dip between their peaks (`_dip`: one mode of water), since built-up land
    can lie above 0 too, well apart from water.
    """
    cut = otsu_threshold(counts, NDWI_EDGES)
    counts = np.asarray(counts, np.float64)
    centres = NDWI_CENTRES
    low, high = centres <= cut, centres > cut
    total = counts.sum()
    if not total:  # nothing valid: nothing to cut
        return cut, f" (Otsu{over})"
    if not counts[low].sum() or not counts[high].sum():  # one value: Otsu answered +1, and water was nowhere
        short, detail = "one NDWI value", ""
    else:
        mean_low = float((counts[low] * centres[low]).sum() / counts[low].sum())
        mean_high = float((counts[high] * centres[high]).sum() / counts[high].sum())
        dip = _dip(counts, low, high)
        if mean_high <= 0:
            short = "no water mode"
            detail = f": both of its sides lie below 0 (mean NDWI {mean_low:.3f} and {mean_high:.3f})"
        elif mean_low >= 0 and dip > 0.5:
            short = "one water mode"
            detail = (f": both of its sides lie above 0 with no dip between them (mean NDWI {mean_low:.3f} and "
                      f"{mean_high:.3f}; the histogram between their peaks keeps {100 * dip:.0f}% of the lower)")
        else:
            _warn_of_two_modes_above(counts, high, cut)
            _warn_of_doubtful_water(counts, cut)
            return cut, f" (Otsu{over})"
    log.warning("Otsu's NDWI cut (%.3f%s) would not separate water from land%s, so water is NDWI > 0 "
                "(McFeeters). Pass --ndwi-threshold (ndwi_threshold=) to choose another cut.", cut, over, detail)
    return 0.0, f" (0, McFeeters: {short}; Otsu's cut {cut:.3f}{over} would not separate water from land)"


def _warn_of_doubtful_water(counts: np.ndarray, cut: float, share: float = 0.05, most: float = 0.5) -> None:
    """Warn where Otsu's `cut` makes over `most` of the pixels water of a mean NDWI near 0, or lies below 0 with
    over `share` of them between it and 0. Water's NDWI lies above 0 (McFeeters), but so does dry built-up land and bare soil in arid
    scenes: vegetation beside them made 76% of a dry city water without a word (helper h73, a Las Vegas 4-band
    scene, cut at -0.035). Which it is, is not NDWI's to say (turbid water lies low too): the warning says how
    much, and the cut to pass."""
    total = counts.sum()
    above = NDWI_CENTRES > cut
    water = counts[above].sum()
    mean_water = float((counts[above] * NDWI_CENTRES[above]).sum() / water) if water else 0.0
    # a flood image mostly of clear water (NDWI 0.3-0.6) is what this command is for: only water near 0 is doubtful
    if water > most * total and mean_water < 0.15:
        log.warning("Otsu's NDWI cut (%.3f) makes %.0f%% of the valid pixels water, at a mean NDWI of %.2f where clear "
                    "water lies at 0.3 or more. Dry built-up land and bare soil lie there too (arid and urban scenes): "
                    "check the map, and pass --ndwi-threshold (ndwi_threshold=) with a higher cut if much of that is "
                    "land.", cut, 100 * water / total, mean_water)
    elif cut < 0 and counts[(NDWI_CENTRES > cut) & (NDWI_CENTRES <= 0)].sum() > share * total:
        between = counts[(NDWI_CENTRES > cut) & (NDWI_CENTRES <= 0)].sum()
        log.warning("Otsu's NDWI cut (%.3f) lies below 0, so %.0f%% of the pixels, with NDWI between it and 0, "
                    "count as water; McFeeters' water lies above 0 and built-up land near it. Pass "
                    "--ndwi-threshold 0 (ndwi_threshold=0) if they are land.", cut, 100 * between / total)


def _warn_of_two_modes_above(counts: np.ndarray, high: np.ndarray, cut: float) -> None:
    """Warn where the NDWI above Otsu's `cut` holds two modes apart, the upper above 0: vegetation, built-up
    land and water make three, and Otsu cut between the first two, so built-up land counted as water
    (26,000 px for 2,500 of water) without a word. Which of them is water is not NDWI's to say (turbid
    flood water lies low too): the warning gives the cut between them to pass.

    The modes are those on either side of the deepest valley of the (smoothed) histogram above the cut, each
    side with 1% of its pixels or more, the valley under half the lower of the two sides' peaks. Otsu's split
    of the part above the cut, used before, fell inside a broad mode of built-up land beside a small one of
    water (nc_landsat: 0.195 against the valley at 0.40) and found no dip there: a quarter of the scene
    became water without a word."""
    above = np.where(high, counts, 0).astype(np.float64)
    total = above.sum()
    if np.count_nonzero(above) < 2:
        return
    smooth = np.convolve(above, np.ones(9) / 9, mode="same")  # 9 bins: 0.045 NDWI
    index = np.flatnonzero(high)
    part = smooth[index]
    peak_left = np.maximum.accumulate(part)
    peak_right = np.maximum.accumulate(part[::-1])[::-1]
    depth = part / np.maximum(np.minimum(peak_left, peak_right), 1e-12)
    mass_below = np.cumsum(above[index]) - above[index]
    centres = NDWI_CENTRES[index]
    valley = (centres > 0) & (mass_below >= 0.01 * total) & (total - mass_below >= 0.01 * total) & (depth < 0.5)
    if not valley.any():
        return
    deepest = np.flatnonzero(valley & (depth <= depth[valley].min() + 1e-9))
    v = deepest[len(deepest) // 2]  # the middle of an empty stretch between the modes
    second = float(centres[v])
    lower, upper = index[:v], index[v:]
    log.warning("the NDWI above the cut (%.3f) holds two modes apart, around %.2f and %.2f: built-up land beside "
                "water, or two kinds of water? All of it is water here; pass --ndwi-threshold %.2f "
                "(ndwi_threshold=) if the lower mode is land.", cut, float(NDWI_CENTRES[lower][np.argmax(above[lower])]),
                float(NDWI_CENTRES[upper][np.argmax(above[upper])]), second)


def _dip(counts: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """The least of the (smoothed) histogram between the peaks of Otsu's two sides, over the lower peak: near 1
    where Otsu split one mode, near 0 where two modes lie apart. Otsu's separability measured this before, and
    a third mode (vegetation beside built-up land and water) lowered it below the cut-off though water stood
    clear: the cut went to 0 and built-up land became water (14 times the water there was)."""
    smooth = np.convolve(counts, np.ones(9) / 9, mode="same")  # 9 bins: 0.045 NDWI
    # the peaks in the counts themselves: smoothed, a large mode's tail across the cut outweighed a small one
    peak_low = np.flatnonzero(low)[np.argmax(counts[low])]
    peak_high = np.flatnonzero(high)[np.argmax(counts[high])]
    lower = min(smooth[peak_low], smooth[peak_high])
    return float(smooth[peak_low:peak_high + 1].min() / lower) if lower > 0 else 1.0


def water_index_mask(path: str, out_path: Path, *, green: int, nir: int,
                     threshold: float | Literal["otsu"] = "otsu", sieve: int = 0) -> float:
    """Write water (1) where NDWI = (green - nir) / (green + nir) > `threshold`, else 0; nodata 255.

    With ``threshold="otsu"`` a first pass over the raster's windows builds an NDWI
    histogram and `ndwi_cut` picks the cut: Otsu's, which adapts to raw digital numbers
    and to reflectance alike, or 0 for a scene of one mode. With `sieve`, water or dry
    regions smaller than that many pixels take the class around them, as
    ``segment(sieve=)`` does. Returns the threshold used.
    """
    info = inspect_raster(path)
    _check_ndwi_bands(info, green, nir)
    if threshold == "otsu":
        threshold, _ = ndwi_cut(ndwi_histogram(path, green=green, nir=nir))
    with open_quietly(path) as src:

        def block(window):
            index, valid = _ndwi(src, window, green, nir)
            out = (index > threshold).astype(np.uint8)
            out[~valid] = NODATA
            return out

        changed = write_class_mask(out_path, info, WATER_CLASSES, block, sieve=sieve)
    if sieve:
        log.info("sieve %d px: %d px (%.2f%%) changed", sieve, changed, 100 * changed / max(1, info.pixels))
    return float(threshold)


def _water_raster(image: str, out_dir: Path, *, method: Method, model, water_class: str, green: int, nir: int,
                  threshold, how: str, overwrite: bool, segment_options: dict,
                  progress: Callable[[float], None] | None = None) -> tuple[Path, int, str]:
    """Return (mask path, id of water in it, a sentence saying where water came from).

    `progress(fraction)` follows the model's run; NDWI reports only its end."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if method == "ndwi":
        out = out_dir / f"{raster_stem(image)}_water.tif"
        if out.exists() and not overwrite:
            raise OutputError(f"{out} already exists. Pass --overwrite (overwrite=True) to replace it.")
        sieve = segment_options.get("sieve", 0)
        cut = water_index_mask(image, out, green=green, nir=nir, threshold=threshold, sieve=sieve)
        write_qml(out.with_suffix(".qml"), WATER_CLASSES, kind="raster")
        if progress is not None:
            progress(1.0)
        return out, 1, (f"NDWI > {cut:.3f}{how} from bands green={green}, nir={nir}"
                        + (f", regions under {sieve} px sieved" if sieve else ""))
    card, water_id = _water_class(model, water_class)
    result = segment(image, out_dir, model=model, overwrite=overwrite, preview=False, progress=progress,
                     **segment_options)
    return (Path(result.outputs["mask"]), water_id,
            f"class {water_class!r} (id {water_id}) of model {card.name} {card.version}{how}")


def _water_class(model, water_class: str):
    """The model's card and the id of its `water_class`, or a clear error."""
    card = class_card(model, what="flood mapping")
    ids = [c.id for c in card.classes if c.name == water_class]
    if not ids:
        raise InputError(
            f"model {card.name} has no class {water_class!r} (classes: {', '.join(c.name for c in card.classes)}). "
            "Pass --water-class (water_class=) with one of them, or --method ndwi (method='ndwi') for imagery "
            "with a NIR band."
        )
    return card, ids[0]


def flood(
    post: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    pre: str | os.PathLike | None = None,
    aoi: str | os.PathLike | None = None,
    aoi_field: str | None = None,
    method: Method = "model",
    model: str | os.PathLike | None = None,
    water_class: str = "water",
    green_band: int = 2,
    nir_band: int = 4,
    ndwi_threshold: float | Literal["otsu"] = "otsu",
    overwrite: bool = False,
    progress: Callable[[float], None] | None = None,
    **segment_options: Any,
) -> FloodResult:
    """Map water after an event and, given an image from before, what is newly flooded.

    Parameters
    ----------
    post : path
        Image after the event; its grid is the grid of every output.
    pre : path, optional
        Image before the event, on any grid and CRS; its water mask is warped
        (nearest neighbour) onto the post-event grid.
    aoi : path, optional
        Polygons (any CRS): flooded area (km²) and share of each.
    aoi_field : str, optional
        Attribute of `aoi` that names its rows in the tables (default: the polygon's fid in the layer).
    method : {"model", "ndwi"}
        Water from a segmentation model's `water_class`, or from NDWI on
        `green_band` and `nir_band` (multispectral imagery with NIR), thresholded by
        Otsu's method over the whole image unless `ndwi_threshold` gives a value. With
        `pre`, one Otsu cut is taken over both images' NDWI where both show the ground, so
        that water present on both dates is not reported as changed; a baseline model that
        calibrates its cuts (threshold, region-growing) takes one pair over both likewise.
    progress : callable, optional
        ``progress(fraction)`` from 0 to 1 over both images' water masks (by their
        pixels) and then the flood map; as `geoseg.segment`'s.
    **segment_options
        Passed to `geoseg.segment` for `method="model"` (bands, chunk, sieve, ...);
        `sieve` also cleans the NDWI masks of `method="ndwi"`, and with `pre` the flood
        classes on the post-event grid.

    Returns
    -------
    FloodResult
        Writes ``flood.tif`` (classes dry / water, or dry / flooded / permanent water /
        receded water; 255 = nodata), ``flood_polygons.gpkg`` (polygons of the wet classes),
        ``flood.json``, ``flood.md`` and ``flood.png`` (map with legend) in `output_dir`,
        and each image's water mask under ``post/`` and ``pre/``. All of them are
        written in a hidden folder inside `output_dir` and moved into place only when
        every one is complete: an interrupted run leaves none of them.
    """
    with warnings_heard() as heard:
        return _flood(post, output_dir, pre=pre, aoi=aoi, aoi_field=aoi_field, method=method, model=model,
                      water_class=water_class, green_band=green_band, nir_band=nir_band, ndwi_threshold=ndwi_threshold,
                      overwrite=overwrite, progress=progress, heard=heard, **segment_options)


def _flood(post, output_dir, *, pre, aoi, aoi_field, method, model, water_class, green_band, nir_band, ndwi_threshold,
           overwrite, progress, heard: list[str], **segment_options: Any) -> FloodResult:
    if method not in ("model", "ndwi"):
        raise InputError(f"method must be 'model' or 'ndwi'. Received: {method!r}")
    check_options({**segment_options, "overwrite": overwrite, "progress": progress}, caller="flood()",
                  taken=("preview",))
    model_only = sorted(set(segment_options) - {"sieve"})  # a minimum mapping unit serves NDWI maps too
    if method == "ndwi" and model_only:  # they were ignored without a word
        raise InputError(f"{', '.join(model_only)} only appl{'y' if len(model_only) > 1 else 'ies'} "
                         "to method='model' (the model's run); this run uses method='ndwi'.")
    if ndwi_threshold != "otsu" and (isinstance(ndwi_threshold, bool) or not isinstance(ndwi_threshold, (int, float, np.number))
                                     or not -1 <= ndwi_threshold <= 1):
        raise InputError(f"ndwi_threshold must be 'otsu' or a number from -1 to 1. Received: {ndwi_threshold!r}")
    other = ({"model": model is not None, "water_class": water_class != "water"} if method == "ndwi" else
             {"green_band": green_band != 2, "nir_band": nir_band != 4, "ndwi_threshold": ndwi_threshold != "otsu"})
    if any(other.values()):  # they were ignored without a word (the command line refuses them too)
        raise InputError(f"{', '.join(k for k, given in other.items() if given)} only appl"
                         f"{'y' if sum(other.values()) > 1 else 'ies'} to method="
                         f"'{'model' if method == 'ndwi' else 'ndwi'}'; this run uses method={method!r}.")
    post_info = inspect_raster(post)
    pre_info = inspect_raster(pre) if pre is not None else None
    if method == "model":  # before an output folder is made, and before either image is segmented
        card, _ = _water_class(model, water_class)
        wanted = segment_options.get("bands") or card.bands
        check_bands(post_info, wanted, needed=card.n_bands)
        if pre_info is not None:  # it failed after the post image's run, with advice that would break that one
            try:
                check_bands(pre_info, wanted, needed=card.n_bands)
            except BandError as exc:
                raise BandError(f"{str(exc).split(' Pass --bands', 1)[0].rstrip('.')}. The pre-event image is read by "
                                f"the same bands as the post-event one ({list(wanted)}): give it those bands in that "
                                "order (gdal_translate -b, or a VRT), or use --method ndwi where both have NIR.") from None
    if pre_info is not None and same_raster(post_info.path, pre_info.path):  # all water came out "permanent"
        raise InputError(f"{pre}: the same file as the post-event image; the change map needs the image from before "
                         "the event. Pass that as --pre (pre=), or leave --pre out for a map of water.")
    if pre_info is not None:  # before either image is segmented
        _check_alignable(post_info, pre_info)
    if aoi_field is not None and aoi is None:
        raise InputError("--aoi-field (aoi_field=) names the rows of --aoi (aoi=); pass the AOI layer too.")
    # before the NDWI histograms or a baseline's joint calibration read both images whole: a typo in the AOI's
    # path or field cost a full read first (h140)
    aoi_frame = read_layer(aoi, what="area-of-interest") if aoi is not None else None
    if aoi_frame is not None:
        aoi_field = same_field(aoi_frame.columns, aoi_field)
    if aoi_frame is not None and aoi_field is not None and aoi_field not in aoi_frame.columns:
        raise InputError(f"{aoi}: no field {aoi_field!r}; fields are "
                         f"{', '.join(map(str, aoi_frame.columns.drop(aoi_frame.geometry.name)))}.")
    if aoi_frame is not None:
        check_layer_overlaps(aoi_frame, post_info.path, what="area-of-interest")
    threshold, how = ndwi_threshold, ""
    if method == "model" and pre_info is not None:  # a baseline's cuts: one pair for both dates, as NDWI's below
        model, how = _calibrated_together(model, post_info, pre_info, wanted)
    if method == "ndwi":  # bands checked before an output folder is made
        dates = [post_info, *([pre_info] if pre_info else [])]
        for info in dates:
            _check_ndwi_bands(info, green_band, nir_band)
            _check_band_tags(info, green_band, nir_band, both=len(dates) > 1)
        if ndwi_threshold == "otsu":  # one cut for both dates: a cut each made unchanged water "recede"
            # and over the ground both show: the rest of a larger pre scene moved the cut (2.2 times the permanent
            # water of the same place, h101)
            windows = _overlap_windows(post_info, pre_info) if pre_info else (None,)
            counts = sum(ndwi_histogram(info.path, green=green_band, nir=nir_band, within=window)
                         for info, window in zip(dates, windows))
            threshold, how = ndwi_cut(counts, " over the pre- and post-event images together, where both show the "
                                              "ground" if pre_info else "")
    images = {"post": post_info.path, **({"pre": pre_info.path} if pre_info is not None else {})}
    water = {when: _water_paths(Path(output_dir) / when, image, method, segment_options)
             for when, image in images.items()}
    masks = {f"{when}_{name}": path for when in water for name, path in water[when].items()}
    # every file, the per-image masks too, is refused before anything is segmented
    with new_folders_removed_on_error(output_dir):  # the model's bands are checked after the folder is made
        paths = prepare_output_dir(output_dir, lambda d: {k: d / name for k, name in FILES.items()} | masks, overwrite,
                                   inputs=[*images.values(), aoi])
        common = dict(method=method, model=model, water_class=water_class, green=green_band, nir=nir_band,
                      threshold=threshold, how=how, overwrite=overwrite, segment_options=segment_options,
                      progress=progress, heard=heard)
        emptied: set[Path] = set()

        def stale() -> list[Path]:  # an earlier run's outputs that this run does not write
            files = [path for when, image in (images.items() if method == "model" else ())
                     for path in stale_outputs(water[when], raster_stem(image), inputs=[*images.values(), aoi])]
            masks, folders = _stale_image_masks(paths["json"], water, list(images.values()))
            emptied.update(folders)
            old = paths["tif"].with_name("flood.gpkg")  # the polygons' name before flood_polygons.gpkg
            return files + masks + [old]  # removed by the moves, once the new files are in place (if there)

        with staged_outputs(paths["tif"].parent, last=[paths["json"], paths["md"]],  # all files appear, or none
                            before_moves=stale if overwrite else None,
                            refuse_existing=() if overwrite else list(paths.values())) as tmp:
            result = _map_flood(tmp, post_info, pre_info, aoi_frame, aoi_field, common,
                                outputs={k: str(p) for k, p in paths.items()})  # the per-image masks too
        for folder in emptied:  # post/ or pre/ of an earlier run that this one has no image for
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return result


def _stale_image_masks(report: Path, water: dict[str, dict[str, Path]],
                       inputs: list[str]) -> tuple[list[Path], set[Path]]:
    """The post/ and pre/ masks that the earlier run's `report` (flood.json) lists and this run does not
    write (another image or method, or a pre-event image this run has not), with their styles, and the
    folders they are in (to go once empty). Files the report does not list (the user's, an input kept
    there) stay. They were deleted before the new files were in place: a failed move left neither."""
    import json

    try:
        earlier = json.loads(report.read_bytes())["outputs"]
    except (OSError, ValueError, KeyError, TypeError):  # no earlier run, or one that did not list them
        return [], set()
    if not isinstance(earlier, dict):
        return [], set()
    kept = {p.resolve() for when in water.values() for p in when.values()} | {Path(p).resolve() for p in inputs}
    files, folders = [], set()
    for key, value in earlier.items():
        when = str(key).split("_", 1)[0]
        if when not in ("post", "pre") or not isinstance(value, str):
            continue
        folder = report.parent / when  # by name: the earlier run may have named its folder from another cwd
        folders.add(folder)
        stale = folder / Path(value).name
        if stale.resolve() in kept:  # written again (its style too), or an input now
            continue
        files += [path for path in ((stale, stale.with_suffix(".qml"), class_sidecar(stale))
                                    if stale.suffix in (".tif", ".gpkg") else (stale,)) if path.is_file()]
    return files, folders


def _water_paths(folder: Path, image: str, method: Method, segment_options: dict[str, Any]) -> dict[str, Path]:
    """The files `_water_raster` writes for `image` into `folder`."""
    if method == "ndwi":
        return {"mask": folder / f"{raster_stem(image)}_water.tif"}
    return segment_paths(folder, image, segment_options)


def _map_flood(folder: Path, post_info, pre_info, aoi_frame, aoi_field: str | None, common: dict[str, Any], *,
               outputs: dict[str, str]) -> FloodResult:
    """Write flood.* and the per-image masks (post/, pre/) into `folder`; the result names the final `outputs`."""
    paths = {k: folder / name for k, name in FILES.items()}
    common = dict(common)
    report = common.pop("progress") or (lambda fraction: None)
    heard = common.pop("heard")
    sizes = [info.width * info.height for info in (post_info, pre_info) if info is not None]
    total = sum(sizes) / 0.95  # the last 5%: the flood mask, its polygons, tables and map
    post_mask, post_water, source = _water_raster(post_info.path, folder / "post", **common,
                                                  progress=lambda f: report(f * sizes[0] / total))
    classes = WATER_CLASSES
    pre_mask = pre_water = None
    if pre_info is not None:
        pre_mask, pre_water, _ = _water_raster(pre_info.path, folder / "pre", **common,
                                               progress=lambda f: report((sizes[0] + f * sizes[1]) / total))
        classes = FLOOD_CLASSES
    covered, data = _write_flood(paths["tif"], post_info, post_mask, post_water, pre_mask, pre_water, classes,
                                 sieve=common["segment_options"].get("sieve", 0))
    coverage = None if pre_info is None else round(100 * covered / max(data, 1), 3)
    if coverage == 100.0 and covered < data:  # 22 px missing read "covers 100.0%", and the report said nothing
        coverage = 99.999
    if not data and common["method"] == "ndwi":  # segment says so for a model's masks
        log.warning("%s: no valid pixels (nodata or NaN everywhere), so flood.tif is all nodata. Check the "
                    "image's nodata value and mask (gdalinfo)", post_info.path)
    if pre_info is not None and data and not covered:  # exit 0 with 0 m² of every class: read as "no flood"
        raise InputError(f"{pre_info.path} has no data where {post_info.path} has: their footprints overlap only "
                         "where one of them is nodata, so there is nothing to compare. Check that both show the same "
                         "place, and their nodata values.")
    post_coverage = coverage_pct(data, post_info.width * post_info.height - data)
    if data and post_coverage != 100.0:  # a cloudy post image's areas read as a smaller flood, and no report said so
        log.warning("the post-event image has data on %s%% of its pixels; the rest (%s px: clouds, nodata, the edge "
                    "of a warped image) counts in no class, so its areas are of that part alone",  # 33209 px read
                    post_coverage, f"{post_info.width * post_info.height - data:,}")  # unlike segment's 33,209 px
    if coverage is not None and covered < data:  # those pixels were nodata in flood.tif without a word
        log.warning("the pre-event image covers %s%% of the post-event image's data; the rest (%s px) is nodata "
                    "in flood.tif and counts in no class", coverage, f"{data - covered:,}")  # as flood.md and flood.json
    write_qml(paths["tif"].with_suffix(".qml"), classes, kind="raster")
    vectorize(paths["tif"], paths["gpkg"], keep=[c.id for c in classes if c.id], overwrite=True)
    table, nodata_m2 = _class_areas(paths["tif"], post_info, classes)
    aoi_rows = _aoi_table(paths["tif"], aoi_frame, classes, aoi_field) if aoi_frame is not None else []
    result = FloodResult(source, table, outputs, aoi_rows, coverage, post_coverage, nodata_m2, post=post_info.path,
                         pre=pre_info.path if pre_info is not None else None,
                         ndwi_threshold=float(common["threshold"]) if common["method"] == "ndwi" else None,
                         warnings=[m.replace(str(folder), str(Path(outputs["tif"]).parent))
                                   for m in dict.fromkeys(heard)])  # final paths, not the staging folder's
    outlines = onto_raster(aoi_frame.geometry, post_info) if aoi_frame is not None else None
    save_png(render_map(post_info.path, paths["tif"], classes, table, _display_bands(post_info, common), outlines=outlines,
                        title=f"Flood map of {Path(post_info.path).name}"), paths["png"])
    write_json(paths["json"], result.to_dict())
    write_text(paths["md"], _markdown(result, post_info.path, pre_info.path if pre_info else None))
    report(1.0)
    return result


def _overlap_windows(post_info, pre_info) -> tuple[Window, Window]:
    """Each image's pixel window over the other's footprint, the ground both dates show: what the statistics of a
    change map (an Otsu cut, a baseline's calibration) are taken over, so that they do not depend on how much more of
    either scene was given. Images without georeferencing are of one size (`_check_alignable`): whole."""
    whole = [Window(0, 0, info.width, info.height) for info in (post_info, pre_info)]
    if post_info.map_georeferencing()[1] is None:
        return whole[0], whole[1]
    windows = []
    for info, other in ((post_info, pre_info), (pre_info, post_info)):
        transform, crs = info.map_georeferencing()
        xs, ys = _corners(other, crs, along=16)  # along its edges: a reprojected footprint bends
        cols, rows = map_points(~transform, xs, ys)
        left, top = np.floor([cols.min(), rows.min()]).clip(0, [info.width, info.height]).astype(int)
        right, bottom = np.ceil([cols.max(), rows.max()]).clip(0, [info.width, info.height]).astype(int)
        windows.append(Window(left, top, max(1, right - left), max(1, bottom - top)))
    return windows[0], windows[1]


def _calibrated_together(model, post_info, pre_info, bands) -> tuple[str | None, str]:
    """`model`, and for a baseline that calibrates its cuts on each raster (threshold, region-growing) the reference
    with the cuts it takes over both images' common ground, and how they were chosen (for the report).

    Calibrated on each date alone, the flood moved the post image's water cut (0.29 against the pre image's 0.12), and
    a third of unchanged ground came out "receded water" (h101)."""
    from urllib.parse import urlencode

    from geoseg.models.registry import get_segmenter, resolve_model

    ref = resolve_model(model)
    segmenter = get_segmenter(ref)
    if not hasattr(segmenter, "calibrate") or "?" in ref:  # a Keras model, or cuts the user gave
        return model, ""
    samples = [_window_sample(info, bands, window)
               for info, window in zip((post_info, pre_info), _overlap_windows(post_info, pre_info))]
    if segmenter.card.normalization["method"] == "none":  # as segment reads them (`_index_scaling`): reflectance
        for i, info in enumerate((post_info, pre_info)):
            if (scaling := declared_scaling(info, bands)) is not None:
                samples[i] = (samples[i][0].astype(np.float32) * np.float32(scaling[0]) + np.float32(scaling[1]),
                              samples[i][1])
    cuts = segmenter.calibrate(np.concatenate([data for data, _ in samples])[None],
                               np.concatenate([valid for _, valid in samples])[None])
    log.info("%s calibrated on %s and %s together: %s", ref, post_info.path, pre_info.path, cuts)
    return (f"{ref}?{urlencode(cuts)}",
            f", its cuts ({', '.join(f'{k} {v:.3f}' for k, v in cuts.items())}) taken over the pre- and post-event "
            "images together, where both show the ground")


def _window_sample(info, bands, window: Window, side: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """A decimated read of `window` of a raster (at most `side` px a side), as (pixels, bands), and its validity."""
    from geoseg.raster import valid_pixels

    from geoseg.raster import gdal_cache_options

    scale = max(1.0, max(window.width, window.height) / side)
    shape = (len(bands), max(1, round(window.height / scale)), max(1, round(window.width / scale)))
    # from the full-resolution pixels, never the file's overviews, as segment's calibration sample (h111)
    with rasterio.Env(**gdal_cache_options()), catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        warnings.simplefilter("ignore", rasterio.errors.NodataShadowWarning)  # the alpha is read as well (below)
        with rasterio.open(info.path, OVERVIEW_LEVEL="NONE") as ds, reading_pixels(info.path, window):
            data = read_bands(ds, bands, window=window, out_shape=shape, resampling=Resampling.average)
            valid = valid_pixels(ds.read_masks(list(bands), window=window, out_shape=shape,
                                               resampling=Resampling.nearest), [ds.nodatavals[b - 1] for b in bands])
            valid &= opaque(ds, window, shape[1:])
    if data.dtype.kind == "f":  # non-finite values: nodata
        valid &= np.isfinite(data).all(0)
    return np.moveaxis(data, 0, -1).reshape(-1, len(bands)), valid.reshape(-1)


def _corners(info, crs=None, along: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The map coordinates of the raster's four corners (clockwise from the top left), in `crs` when given; with
    `along`, that many points along each edge, from its corner on."""
    transform, own = info.map_georeferencing()
    step = np.arange(along) / along
    cols = np.concatenate([step, np.ones(along), 1 - step, np.zeros(along)]) * info.width
    rows = np.concatenate([np.zeros(along), step, np.ones(along), 1 - step]) * info.height
    xs, ys = map_points(transform, cols, rows)
    if crs is not None and crs != own:
        from rasterio.warp import transform as reproject_points

        xs, ys = reproject_points(own, crs, xs, ys)
    return np.asarray(xs), np.asarray(ys)


def _check_alignable(post_info, pre_info) -> None:
    """The pre-event image can be put on the post-event grid: both georeferenced and overlapping,
    or neither georeferenced and of the same size (compared pixel by pixel)."""
    post_crs, pre_crs = post_info.map_georeferencing()[1], pre_info.map_georeferencing()[1]
    if post_crs is None and pre_crs is None:
        if (pre_info.width, pre_info.height) != (post_info.width, post_info.height):
            raise InputError(f"neither {post_info.path} nor {pre_info.path} is georeferenced, so they can only be "
                             f"compared pixel by pixel, but their sizes differ ({post_info.width}x{post_info.height} "
                             f"and {pre_info.width}x{pre_info.height}). Georeference them, or crop both to one grid.")
        return
    if post_crs is None or pre_crs is None:
        missing = post_info.path if post_crs is None else pre_info.path
        raise InputError(f"{missing} has no CRS (nor ground control points), so the other image cannot be placed "
                         "on it. Georeference it, or pass two images of the same size without CRS.")
    post_x, post_y = _corners(post_info)
    pre_x, pre_y = _corners(pre_info, post_crs)
    if pre_x.max() <= post_x.min() or pre_x.min() >= post_x.max() or pre_y.max() <= post_y.min() \
            or pre_y.min() >= post_y.max():
        raise InputError(f"{pre_info.path} does not overlap {post_info.path}: in {post_crs} they span "
                         f"x {pre_x.min():.10g}..{pre_x.max():.10g}, y {pre_y.min():.10g}..{pre_y.max():.10g} and "
                         f"x {post_x.min():.10g}..{post_x.max():.10g}, y {post_y.min():.10g}..{post_y.max():.10g}. "
                         "Check that both show the same place.")


def _display_bands(info, common: dict[str, Any]) -> list[int]:
    """The map's bands: those the model reads (its card's, or ``bands=``); for NDWI the bands tagged red,
    green and blue, else 1, 2, 3. Bands 1, 2, 3 of a blue, green, red, NIR image were shown as its colours."""
    if common["method"] == "model":
        bands = common["segment_options"].get("bands") or class_card(common["model"], what="flood mapping").bands
        return list(bands)[:3] if len(bands) >= 3 else [bands[0]]
    with open_quietly(info.path) as ds:
        order = {ci: band for band, ci in enumerate(ds.colorinterp, start=1)}
    rgb = [order.get(ci) for ci in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)]
    return rgb if None not in rgb else [1, 2, 3] if info.count >= 3 else [1]


def _class_resampling(pre_info, post_info):
    """How a pre-event class mask is put on the post-event grid: by the class most of its pixels in each post pixel
    hold (mode) where its pixels are finer by half again or more, else by the nearest one. Nearest took one of
    several fine pixels at random, and a same-ground pair at 0.5 and 1.5 m gave 1,774 px of spurious change where
    mode gives 974 (h101)."""
    from geoseg.raster import pixel_sides_m

    pre, post = pixel_sides_m(pre_info), pixel_sides_m(post_info)
    if pre and post and max(pre) * 1.5 <= min(post):
        return Resampling.mode
    return Resampling.nearest


def _write_flood(out, post_info, post_mask, post_water, pre_mask, pre_water, classes,
                 sieve: int = 0) -> tuple[int, int]:
    """Write the flood classes; return the post image's data pixels that the pre image covers, and all of them.

    With `sieve` and a pre-event mask, the classes too lose their regions under that many pixels: each date's mask
    is sieved on its own grid, and a region of 5 px on one was 6 on the other, kept on one date only; 222 px of
    "receded water" in 64 specks came of a same-ground pair with --sieve 6, none without (h101)."""
    counts = [0, 0]
    with open_quietly(post_mask) as post_ds:
        pre_ds = open_quietly(pre_mask) if pre_mask is not None else None
        try:
            aligned = None
            transform, crs = post_info.map_georeferencing()
            if pre_ds is not None and crs is None:  # neither georeferenced: the same grid (_check_alignable)
                aligned = pre_ds
            elif pre_ds is not None:  # a mask placed by GCPs warps by their best-fit affine, as its polygons are
                pre_info = inspect_raster(pre_mask)
                src_transform, src_crs = pre_info.map_georeferencing()
                # a near-exact transformer: the default approximation of 0.125 px moved nearest picks by a pixel
                # along water's edges, differently in each block, and a pair of one ground, one of them warped
                # exactly into another CRS, gave 58 px of flooded and receded water. 1e-9 px took 40 times as long
                # (7.1 s against 0.18 s for a 4096² mask, h146); 1e-6 takes 1.4 s and picks 4 of 19 M px otherwise
                aligned = WarpedVRT(pre_ds, src_crs=src_crs, src_transform=src_transform, crs=crs,
                                    transform=transform, width=post_info.width, height=post_info.height,
                                    resampling=_class_resampling(pre_info, post_info), nodata=NODATA,
                                    tolerance=1e-6)

            def block(window):
                now = post_ds.read(1, window=window)
                wet = now == post_water
                counts[1] += int((now != NODATA).sum())
                if aligned is None:
                    out = wet.astype(np.uint8)
                    out[now == NODATA] = NODATA
                    counts[0] = counts[1]
                    return out
                before = aligned.read(1, window=window)
                counts[0] += int(((now != NODATA) & (before != NODATA)).sum())
                was = before == pre_water
                out = np.select([wet & ~was, wet & was, ~wet & was], [1, 2, 3], 0).astype(np.uint8)
                out[(now == NODATA) | (before == NODATA)] = NODATA
                return out

            write_class_mask(out, post_info, classes, block, sieve=sieve if pre_ds is not None else 0)
        finally:
            if pre_ds is not None:
                pre_ds.close()
    return counts[0], counts[1]


def _class_areas(mask: Path, info, classes) -> tuple[list[dict[str, Any]], float | None]:
    """Each class's pixels and area, and the m² of no class (None without a CRS)."""
    pixels, areas = class_pixels_and_areas(mask, info, NODATA + 1)
    return [{"id": c.id, "name": c.name, "color": c.color, "pixels": int(pixels[c.id]),
             "area_m2": None if areas is None else float(areas[c.id]),
             "area_km2": None if areas is None else round(float(areas[c.id]) / 1e6, 6)}
            for c in classes], None if areas is None else round(float(areas[NODATA]), 3)


def _aoi_table(mask: Path, frame, classes, field: str | None = None) -> list[dict[str, Any]]:
    """A row per area of interest: each class's m², km² and share (of the part the map covers), and how much of it
    the map covers. Where the map has no class (nodata: outside the pre-event image; or beyond the post-event
    image's edge) a class's area is unknown: an area outside the pre-event image's footprint read 0 m² of flooded
    and of dry land, as if nothing had flooded there, and one half beyond the image's edge read 100% covered."""
    return zone_table(mask, frame, field, [(c.id, c.name.replace(" ", "_")) for c in classes], name="aoi", km2=True)


def _markdown(result: FloodResult, post: str, pre) -> str:
    lines = [f"# Flood report: {Path(post).name}", "",
             f"- After the event: `{post}`", f"- Before the event: `{pre}`" if pre else "- Before the event: none",
             f"- Water from: {result.water_source}",
             *([] if result.pre_coverage_pct in (None, 100.0) else [
                 f"- **The pre-event image covers only {result.pre_coverage_pct}% of the post-event image**; "
                 "the rest is nodata and counts in no class"]),
             *([] if result.post_coverage_pct in (None, 100.0) else [
                 f"- **The post-event image has data on only {result.post_coverage_pct}% of its pixels** (clouds, "
                 "nodata); the rest counts in no class, so the areas below are of that part alone"]),
             *([] if not result.nodata_m2 else [f"- No class (nodata): {result.nodata_m2:,.1f} m²"]),
             *(["", "## Warnings", "", *[f"- {w}" for w in result.warnings]] if result.warnings else []),
             "", "![map](flood.png)", "",
             "| class | km² | m² | pixels |", "|---|---:|---:|---:|"]
    for c in result.classes:  # m² too: 12 m² read 0.0000 km², and a drone image's 0.1 m² 0.000000
        m2 = "n/a" if c["area_m2"] is None else f"{c['area_m2']:,.1f}"
        lines.append(f"| {c['name']} | {_cell(c['area_km2'], '_km2')} | {m2} | {c['pixels']} |")
    if result.aoi:
        keys = [k for k in result.aoi[0] if k.endswith(("_m2", "_km2", "_pct"))]
        lines += ["", "## Areas of interest", "", "| aoi | " + " | ".join(keys) + " |",
                  "|---|" + "---:|" * len(keys)]
        for row in result.aoi:
            name = "" if row["aoi"] is None else row["aoi"]  # an empty --aoi-field value
            lines.append(f"| {md_cell(name)} | " + " | ".join(_cell(row[k], k) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _cell(value, key: str) -> str:
    """A table cell: km² to 6 decimals (3e-06 was printed for 3 m²), m² to 1, shares as they are, n/a for none."""
    if value is None:
        return "n/a"
    return f"{value:.6f}" if key.endswith("_km2") else f"{value:,.1f}" if key.endswith("_m2") else str(value)
