"""A PNG preview: the image beside its mask, with a legend of classes and areas."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from geoseg.errors import OutputError
from geoseg.files import replaced_atomically
from geoseg.raster import NODATA, STAGING_PREFIX, first_line, read_preview, shares

__all__ = ["colorize", "north_up_flips", "render_map", "save_png", "stretch", "write_preview"]

MAX_SIDE = 1024
REGIONS_LEGEND = "unlabeled regions: colours only tell neighbouring regions apart"  # colours are not classes


def stretch(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Scale (rows, cols, bands) of any dtype to uint8 by each band's 2-98 percentiles."""
    out = np.zeros(image.shape, np.uint8)
    for b in range(image.shape[-1]):
        band = image[..., b].astype(np.float64)
        values = band[valid] if valid is not None and valid.any() else band.ravel()
        values = values[np.isfinite(values)]  # NaN and inf (float nodata) are drawn black
        lo, hi = np.percentile(values, (2, 98)) if values.size else (0.0, 1.0)
        out[..., b] = np.nan_to_num(np.clip((band - lo) / max(hi - lo, 1e-9) * 255, 0, 255), nan=0.0).astype(np.uint8)
    return out


def colorize(mask: np.ndarray, classes: Sequence) -> np.ndarray:
    """Map a (rows, cols) class mask to (rows, cols, 3) uint8 colours; nodata is black."""
    lut = np.zeros((256, 3), np.uint8)
    for c in classes:
        lut[c.id] = c.rgb
    return lut[mask]


def render_map(image_path: str, mask_path: str | os.PathLike, classes: Sequence, table: Sequence[dict[str, Any]],
               bands: Sequence[int], *, outlines=None, title: str | None = None,
               regions: bool = False) -> Image.Image:
    """Draw ``image | mask`` side by side, at most 1024 px a side each, with a legend below.

    Parameters
    ----------
    classes : sequence of ClassInfo
        Legend entries (id, name, rgb), in the order of `table`.
    table : sequence of dict
        ``pixels`` and optional ``area_m2`` per class, for the legend.
    outlines : geopandas.GeoSeries, optional
        Polygons in the raster's CRS (zones, an area of interest) drawn on both panels.
    regions : bool
        The mask holds unlabeled regions (a card with ``"output": "regions"``): its colours only
        tell neighbouring regions apart, so the legend says that instead of listing colour shares.
    """
    shown = list(bands)[:3] if len(bands) >= 3 else [bands[0]] * 3
    image = read_preview(image_path, shown, MAX_SIDE)
    mask = read_preview(str(mask_path), [1], MAX_SIDE, resampling="nearest")[..., 0]
    flip = north_up_flips(mask_path)
    image, mask = image[flip], mask[flip]  # as QGIS shows them: a south-up raster was drawn upside down
    rgb = image if image.dtype == np.uint8 else stretch(image, mask != NODATA)
    rgb[mask == NODATA] = 0
    gap = 8
    panels = np.concatenate([rgb, np.full((rgb.shape[0], gap, 3), 255, np.uint8), colorize(mask, classes)], axis=1)
    font = legend_font(15)
    line, top = 20, (24 if title else 0)
    share = shares([row["pixels"] for row in table], [row.get("area_m2") for row in table])
    legend = [REGIONS_LEGEND] if regions else [_drawable(f"{c.name}: {s or 0:.1f}%{_area_text(row.get('area_m2'))}",
                                                         font) for c, row, s in zip(classes, table, share)]
    title = _drawable(title, font) if title else title
    # wide enough for the title and the longest legend line (a wider font cut them at the edge)
    width = max(panels.shape[1], 360, *(38 + int(font.getlength(text)) for text in legend + ([title] if title else [])))
    canvas = Image.new("RGB", (width, top + panels.shape[0] + 10 + line * len(legend)), "white")
    canvas.paste(Image.fromarray(panels), (0, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((8, 4), title, fill="black", font=font)
    if outlines is not None:
        _draw_outlines(draw, outlines, mask_path, mask.shape, offsets=(0, rgb.shape[1] + gap), top=top, flip=flip)
    if regions:
        draw.text((8, top + panels.shape[0] + 6), REGIONS_LEGEND, fill="black", font=font)
        return canvas
    for i, (c, text) in enumerate(zip(classes, legend)):
        y = top + panels.shape[0] + 6 + i * line
        draw.rectangle([8, y, 22, y + 14], fill=c.rgb, outline="black")
        draw.text((30, y), text, fill="black", font=font)
    return canvas


def _area_text(area: float | None) -> str:
    """', 1.25 ha', ', 35 m²' or ', 0.25 m²' (35 m² was '0.00 ha', and a 0.25 m² pixel '0 m²'); '' without one."""
    if area is None:
        return ""
    return f", {area / 1e4:,.2f} ha" if area >= 1e4 else f", {area:,.0f} m²" if area >= 10 else f", {area:.2g} m²"


def north_up_flips(mask_path) -> tuple[slice, slice]:
    """The slices that show a raster north up and east right: rows reversed where they run north (a
    south-up grid), columns where they run west. Rotated grids and those without georeferencing stay."""
    from geoseg.raster import inspect_raster

    transform, crs = inspect_raster(mask_path).map_georeferencing()
    if crs is None or transform.b or transform.d:
        return slice(None), slice(None)
    return slice(None, None, -1 if transform.e > 0 else 1), slice(None, None, -1 if transform.a < 0 else 1)


def _draw_outlines(draw, outlines, mask_path, shape, *, offsets, top, flip=(slice(None), slice(None))) -> None:
    import shapely

    from geoseg.raster import inspect_raster

    info = inspect_raster(mask_path)
    forward = info.map_georeferencing()[0]
    inverse, sy, sx = ~forward, shape[0] / info.height, shape[1] / info.width
    # the parts of each outline over the raster: a district reaching past it was drawn on into the next panel,
    # and one wholly outside as a box over the mask (h130)
    footprint = shapely.Polygon([forward @ corner for corner in
                                 ((0, 0), (info.width, 0), (info.width, info.height), (0, info.height))])
    for geom in outlines:
        inside = shapely.intersection(shapely.boundary(geom), footprint)
        for ring in shapely.get_parts(shapely.line_merge(inside) if inside.geom_type == "MultiLineString" else inside):
            if ring.geom_type not in ("LineString", "LinearRing"):  # a point where it only touches the edge
                continue
            coords = [inverse @ (float(x), float(y)) for x, y in shapely.get_coordinates(ring)]
            coords = [(info.width - c if flip[1].step == -1 else c, info.height - r if flip[0].step == -1 else r)
                      for c, r in coords]
            for dx in offsets:  # black on white: red read as a strip of flood's "flooded" (#E8282B) (h130)
                points = [(c * sx + dx, r * sy + top) for c, r in coords]
                draw.line(points, fill=(255, 255, 255), width=4)
                draw.line(points, fill=(0, 0, 0), width=2)


# Fonts that draw the legend's "m²" and accented class names (forêt, Gewässer), tried in turn: Debian's
# fonts-dejavu-core and fonts-liberation, Windows and macOS. Pillow's own font has neither (empty boxes).
FONTS = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf", "Helvetica.ttc")


@functools.cache
def legend_font(size: int):
    """The first of `FONTS` that Pillow finds, else Pillow's built-in font."""
    for name in FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _drawable(text: str, font) -> str:
    """`text` with "²" written "2" where the font (Pillow's built-in) has no glyph for it."""
    return text if isinstance(font, ImageFont.FreeTypeFont) and font.getname()[0] != "Aileron" else \
        text.replace("²", "2")


def save_png(image: Image.Image, out_path: str | os.PathLike) -> None:
    """Save a PNG under a temporary name, then rename it into place.

    A full disk or a folder gone is an OutputError naming the path where the file will lie (for
    a file in a staging folder the user's path, not the hidden folder's), not Pillow's OSError.
    """
    from geoseg import __version__

    try:
        with replaced_atomically(out_path, suffix=".tmp.png") as tmp:
            info = PngImagePlugin.PngInfo()  # so that a survey of the folder knows it for geoseg's, not an image
            info.add_text("Software", f"geoseg {__version__}")
            image.save(tmp, format="PNG", pnginfo=info)
    except OSError as exc:
        final = Path(*(part for part in Path(out_path).parts if not part.startswith(STAGING_PREFIX)))
        raise OutputError(f"{final}: could not be written ({first_line(exc)}); no file of this run was "
                          "put in place. Free some disk space or pick another output folder.") from None


def write_preview(image_path: str, mask_path: str | os.PathLike, out_path: str | os.PathLike,
                  classes: Sequence, table: Sequence[dict[str, Any]], bands: Sequence[int], *,
                  regions: bool = False) -> None:
    """Write the `render_map` of an image and its mask to `out_path` as PNG."""
    save_png(render_map(image_path, mask_path, classes, table, bands, regions=regions), out_path)
