"""Scene analysis: the class composition of a raster, overall and per zone."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from geoseg.files import replaced_atomically
from geoseg.models.card import ClassInfo
from geoseg.pipeline import (SCENE_FILES, SegmentResult, check_options, new_folders_removed_on_error,
                             prepare_output_dir, stale_outputs, segment)
from geoseg.preview import render_map, save_png
from geoseg.raster import inspect_raster, raster_stem, shares
from geoseg.vector import dataset_options, layer_name, onto_raster
from geoseg.workflows.common import (zone_table, check_layer_overlaps, class_card, read_layer, segment_paths,
                                     staged_outputs, warnings_heard, write_csv, write_json, coverage_pct, same_field)

__all__ = ["SceneResult", "scene", "composition_rows"]

log = logging.getLogger(__name__)


@dataclass
class SceneResult:
    """Composition of a scene and the files written.

    ``segment`` is the segmentation's `SegmentResult` as a dict (``SegmentResult.to_dict()``), its outputs and
    styles at their final paths, and without ``warnings``: the scene's own ``warnings`` hold them.
    """

    segment: dict[str, Any]
    composition: list[dict[str, Any]]
    outputs: dict[str, str]
    zones: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the run warned of (the log's), for the report's reader
    coverage_pct: float | None = None  # the share of the raster that holds data: the composition is of that part

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)

    def __str__(self) -> str:
        """A few lines for people, as `SegmentResult`'s: what ran on what, each class's share, the zones, the
        files. ``repr()`` stays the dataclass's (1.5 kB on one line, the segmentation's dict in it)."""
        seg = self.segment
        lines = [f"SceneResult: {seg.get('model')} {seg.get('model_version')} on {seg.get('input')}",
                 f"  {seg.get('width', 0):,} × {seg.get('height', 0):,} px"
                 + (f", {self.coverage_pct:.1f}% with data" if self.coverage_pct is not None else "")]
        if seg.get("output") != "regions":
            shares = [f"{r['class']} {r['share_pct']:.1f}%" + (f" ({r['area_m2']:,.0f} m²)" if r.get("area_m2")
                                                                 is not None else "")
                      for r in self.composition if r.get("pixels")]
            lines.append("  classes: " + (", ".join(shares) or "none (all nodata)"))
        if self.zones:
            lines.append(f"  zones: {len(self.zones):,} (per zone in `zones`)")
        lines += [f"  {name}: {path}" for name, path in self.outputs.items()]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython and Jupyter
        printer.text(str(self))


def composition_rows(classes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each class's share (% of the valid area; of the valid pixels without a CRS) to the per-class rows
    of a SegmentResult."""
    share = shares([c["pixels"] for c in classes], [c["area_m2"] for c in classes])
    return [{"class_id": c["id"], "class": c["name"], "pixels": c["pixels"], "area_m2": c["area_m2"],
             "share_pct": s if s is not None else 0.0} for c, s in zip(classes, share)]


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
        (m²) and share (%) of each class in its valid area (pixels without a CRS).
    zone_field : str, optional
        Attribute that names zones in the tables; default the zone's fid in the layer (as OGR and QGIS
        number features: a GeoPackage's from 1, a shapefile's from 0), which ``STEM_zones.gpkg`` keeps.
    **segment_options
        Passed to `geoseg.segment` (model, bands, chunk, ...).

    Returns
    -------
    SceneResult
        Writes ``STEM_composition.csv``, ``STEM_scene.json``, ``STEM_scene.png`` (map
        with legend and zone outlines) and, with zones, ``STEM_zones.gpkg`` and
        ``STEM_zones.csv``, beside the mask. All of them, the mask included, are
        written in a hidden folder inside `output_dir` and moved into place only
        when every one is complete: an interrupted run leaves none of them.
    """
    with warnings_heard() as heard:  # a scene of float reflectance read 99.6% water, and only stderr said why
        return _scene(input, output_dir, zones=zones, zone_field=zone_field, overwrite=overwrite, heard=heard,
                      **segment_options)


def _scene(input, output_dir, *, zones, zone_field, overwrite, heard: list[str], **segment_options: Any) -> SceneResult:
    check_options({**segment_options, "overwrite": overwrite}, caller="scene()", taken=("preview",))
    class_card(segment_options.get("model"), what="a land-cover report")
    if zone_field is not None and zones is None:  # it was ignored without a word
        from geoseg.errors import InputError

        raise InputError("--zone-field (zone_field=) names the rows of --zones (zones=); pass the zones layer too.")
    frame = read_layer(zones, what="zones") if zones is not None else None
    if frame is not None:
        zone_field = same_field(frame.columns, zone_field)
    if frame is not None and zone_field is not None and zone_field not in frame.columns:
        from geoseg.errors import InputError

        raise InputError(f"{zones}: no field {zone_field!r}; fields are {', '.join(map(str, frame.columns[:-1]))}.")
    if frame is not None:
        check_layer_overlaps(frame, input, what="zones")
    image = inspect_raster(input).path
    with new_folders_removed_on_error(output_dir):  # segment checks bands and tile after the folder is made
        paths = prepare_output_dir(output_dir, lambda d: _output_paths(d, image, frame is not None, segment_options),
                                   overwrite, inputs=[image, zones])
        with staged_outputs(paths["report"].parent, last=[paths["report"]],  # all files appear, or none
                            before_moves=(lambda: stale_outputs(paths, raster_stem(image), inputs=[image, zones]))
                            if overwrite else None,
                            refuse_existing=() if overwrite else list(paths.values())) as tmp:
            # the segmentation is 95% of the run: the bar stood at 100% while the zones and the map were made
            progress = segment_options.pop("progress", None)
            result: SegmentResult = segment(input, tmp, overwrite=overwrite, preview=False,
                                            progress=None if progress is None else lambda f: progress(0.95 * f),
                                            **segment_options)
            scene_result = _write_report(result, frame, zone_field, {k: tmp / p.name for k, p in paths.items()}, paths,
                                         [m.replace(str(tmp), str(paths["report"].parent)) for m in dict.fromkeys(heard)])
            if progress is not None:
                progress(1.0)
    return scene_result



def _output_paths(out_dir: Path, image: str, zones: bool, segment_options: dict[str, Any]) -> dict[str, Path]:
    """Every file a run writes, in the order of `SceneResult.outputs`."""
    files = {k: v for k, v in SCENE_FILES.items() if zones or not k.startswith("zones")}
    stem = raster_stem(image)
    return segment_paths(out_dir, image, segment_options) | {k: out_dir / f"{stem}_{v}" for k, v in files.items()}


def _write_report(result: SegmentResult, frame, zone_field: str | None, staged: dict[str, Path],
                  paths: dict[str, Path], warned: list[str]) -> SceneResult:
    """Write the tables, map and report of `result` at the `staged` paths; the report names the final `paths`."""
    stem = raster_stem(result.input)
    rows = composition_rows(result.classes)
    write_csv(staged["composition"], rows)
    zone_rows, outlines = [], None
    if frame is not None:
        zone_rows = _zone_table(result, frame, zone_field)
        _write_zones(staged, stem, frame, zone_rows)
        outlines = onto_raster(frame.geometry, inspect_raster(result.outputs["mask"]))
    classes = [ClassInfo(c["id"], c["name"], c["color"]) for c in result.classes]
    save_png(render_map(result.input, result.outputs["mask"], classes, result.classes, result.plan["bands"],
                        outlines=outlines, title=f"{stem}: land cover by {result.model}"), staged["map"])
    outputs = {name: str(path) for name, path in paths.items()}
    segmented = {k: v for k, v in result.to_dict().items() if k != "warnings"} | {  # the scene's own list has them
        "outputs": {name: outputs[name] for name in result.outputs},
        "styles": {name: str(Path(outputs[name]).with_suffix(".qml")) for name in result.styles}}
    if result.nodata_m2 is None:  # no CRS: by pixels
        covered = coverage_pct(sum(c["pixels"] for c in result.classes), result.nodata_pixels)
    else:
        covered = coverage_pct(sum(c["area_m2"] for c in result.classes), result.nodata_m2)
    scene_result = SceneResult(segmented, rows, outputs, zone_rows, warned, covered)
    write_json(staged["report"], scene_result.to_dict())
    return scene_result


def _zone_table(result: SegmentResult, frame, zone_field: str | None) -> list[dict[str, Any]]:
    """A row per zone: its pixels of a class, each class's m² and share (of the part the mask covers), and how much
    of the zone the mask covers (``nodata_m2``, ``coverage_pct``, as flood's areas of interest)."""
    return zone_table(result.outputs["mask"], frame, zone_field, [(c["id"], c["name"]) for c in result.classes],
                      name="zone")


def _write_zones(paths: dict[str, Path], stem: str, frame, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    zones = frame.copy()  # indexed by the zones' fids (read_layer), which the layer written keeps as its own
    table = pd.DataFrame(rows, index=zones.index).drop(columns=["zone"])
    # e.g. the zones table of an earlier run; GeoPackage field names ignore case (PIXELS is pixels)
    added = {str(c).lower() for c in table.columns}
    clash = [c for c in zones.columns if str(c).lower() in added and c != zones.geometry.name]
    if clash:
        taken = {str(c).lower() for c in zones.columns} | added
        renamed = {}
        for c in clash:
            renamed[c] = next(f"{c}_{i}" for i in range(1, len(taken) + 2) if f"{c}_{i}".lower() not in taken)
            taken.add(renamed[c].lower())
        zones = zones.rename(columns=renamed)
        log.warning("the zones' own field(s) %s are kept as %s beside this run's columns of the same name",
                    ", ".join(clash), ", ".join(renamed.values()))
    layer = zones.join(table)
    # the GeoPackage's FID column holds the zones' fids, as the CSV's `zone` does: they were renumbered 1, 2, ...
    # A field of the layer's own named fid (a shapefile or GeoJSON exported from a GeoPackage) stays a field
    # beside it: GDAL took it for the FID column, and one of text or with repeats failed after the whole run
    names = {str(c).lower() for c in layer.columns}
    fid = next(n for n in ("fid", *(f"fid_{i}" for i in range(1, len(names) + 2))) if n not in names)
    layer.index = layer.index.rename(fid)
    with replaced_atomically(paths["zones"], suffix=".tmp.gpkg") as tmp:
        layer.to_file(tmp, driver="GPKG", layer=layer_name(f"{stem}_zones"), engine="pyogrio", index=True,
                      dataset_options=dataset_options("GPKG"), layer_options={"FID": fid})
    write_csv(paths["zones_csv"], rows)
