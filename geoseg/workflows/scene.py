"""Scene analysis: the class composition of a raster, overall and per zone."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from geoseg.files import replaced_atomically
from geoseg.models.card import ClassInfo
from geoseg.pipeline import SegmentResult, segment
from geoseg.preview import render_map, save_png
from geoseg.raster import raster_stem
from geoseg.vector import zonal_composition
from geoseg.workflows.common import check_layer_overlaps, class_card, read_layer, write_csv, write_json

__all__ = ["SceneResult", "scene", "composition_rows"]


@dataclass
class SceneResult:
    """Composition of a scene and the files written."""

    segment: dict[str, Any]
    composition: list[dict[str, Any]]
    outputs: dict[str, str]
    zones: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


def composition_rows(classes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each class's share (% of valid pixels) to the per-class rows of a SegmentResult."""
    total = sum(c["pixels"] for c in classes) or 1
    return [{"class_id": c["id"], "class": c["name"], "pixels": c["pixels"], "area_m2": c["area_m2"],
             "share_pct": round(100 * c["pixels"] / total, 3)} for c in classes]


def scene(
    input: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    zones: str | os.PathLike | None = None,
    zone_field: str | None = None,
    overwrite: bool = False,
    **segment_options: Any,
) -> SceneResult:
    """Segment a raster and report the area and share of every class, overall and per zone.

    Parameters
    ----------
    input, output_dir : path
        As for `geoseg.segment`.
    zones : path, optional
        A polygon layer (districts, parcels) in any CRS; each zone gets the area
        (m²) and share (%) of each class among its valid pixels.
    zone_field : str, optional
        Attribute that names zones in the tables; default the row number.
    **segment_options
        Passed to `geoseg.segment` (model, bands, chunk, ...).

    Returns
    -------
    SceneResult
        Writes ``STEM_composition.csv``, ``STEM_scene.json``, ``STEM_scene.png`` (map
        with legend and zone outlines) and, with zones, ``STEM_zones.gpkg`` and
        ``STEM_zones.csv``, beside the mask.
    """
    class_card(segment_options.get("model"), what="a land-cover report")
    frame = read_layer(zones, what="zones") if zones is not None else None
    if frame is not None and zone_field is not None and zone_field not in frame.columns:
        from geoseg.errors import InputError

        raise InputError(f"{zones}: no field {zone_field!r}; fields are {', '.join(map(str, frame.columns[:-1]))}.")
    if frame is not None:
        check_layer_overlaps(frame, input, what="zones")
    result: SegmentResult = segment(input, output_dir, overwrite=overwrite, preview=False, **segment_options)
    out_dir, stem = Path(result.outputs["mask"]).parent, raster_stem(result.input)
    rows = composition_rows(result.classes)
    outputs = dict(result.outputs)
    outputs["composition"] = str(out_dir / f"{stem}_composition.csv")
    write_csv(outputs["composition"], rows)
    zone_rows = []
    if frame is not None:
        zone_rows = _zone_table(result, frame, zone_field)
        outputs.update(_write_zones(out_dir, stem, frame, zone_rows))
    classes = [ClassInfo(c["id"], c["name"], c["color"]) for c in result.classes]
    outlines = None
    if frame is not None:
        outlines = frame.geometry.to_crs(_mask_crs(result)) if _mask_crs(result) else frame.geometry
    outputs["map"] = str(out_dir / f"{stem}_scene.png")
    save_png(render_map(result.input, result.outputs["mask"], classes, result.classes, result.plan["bands"],
                        outlines=outlines, title=f"{stem}: land cover by {result.model}"), outputs["map"])
    outputs["report"] = str(out_dir / f"{stem}_scene.json")
    scene_result = SceneResult(result.to_dict(), rows, outputs, zone_rows)
    write_json(outputs["report"], scene_result.to_dict())
    return scene_result


def _mask_crs(result: SegmentResult):
    from geoseg.raster import inspect_raster

    return inspect_raster(result.outputs["mask"]).map_georeferencing()[1]  # its CRS, or its GCPs


def _zone_table(result: SegmentResult, frame, zone_field: str | None) -> list[dict[str, Any]]:
    pixels, areas = zonal_composition(result.outputs["mask"], frame, len(result.classes))
    rows = []
    for z in range(len(frame)):
        total = pixels[z].sum()
        row: dict[str, Any] = {"zone": str(frame[zone_field].iloc[z]) if zone_field else z, "pixels": int(total)}
        for c in result.classes:
            row[f"{c['name']}_m2"] = None if areas is None else round(float(areas[z, c["id"]]), 3)
            row[f"{c['name']}_pct"] = round(100 * pixels[z, c["id"]] / total, 3) if total else None
        rows.append(row)
    return rows


def _write_zones(out_dir: Path, stem: str, frame, rows: list[dict[str, Any]]) -> dict[str, str]:

    import pandas as pd

    table = pd.DataFrame(rows).drop(columns=["zone"])
    layer = frame.reset_index(drop=True).join(table)
    paths = {"zones": str(out_dir / f"{stem}_zones.gpkg"), "zones_csv": str(out_dir / f"{stem}_zones.csv")}
    with replaced_atomically(paths["zones"], suffix=".tmp.gpkg") as tmp:
        layer.to_file(tmp, driver="GPKG", layer=f"{stem}_zones", engine="pyogrio")
    write_csv(paths["zones_csv"], rows)
    return paths
