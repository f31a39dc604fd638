"""`geoseg models check`: load models as a run would, and measure a bundle's seams on an image."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from geoseg.errors import BandError, GeosegError, catch_warnings
from geoseg.raster import first_line

__all__ = ["CheckResult", "SEAM_FLOOR", "check_models", "exit_status", "seam_agreement"]

SEAM_FLOOR = 99.9  # percent of pixels; the default model's tiles agree on 99.99% with whole-image runs


@dataclass
class CheckResult:
    """What checking one model found: ``ok`` is False when it cannot be used at all."""

    name: str
    ok: bool
    source: str = ""
    path: str | None = None
    seconds: float = 0.0
    message: str = ""
    seam_agreement: float | None = None  # percent of pixels where tiled and whole-window masks agree
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


def _central_window(image: str, side: int, folder: Path) -> str:
    """`image` itself when it fits in side x side, else its central window written as a GeoTIFF in `folder`."""
    import rasterio
    from rasterio.windows import Window

    import numpy as np

    from geoseg.raster import read_bands, reading_pixels

    with rasterio.open(image) as ds:
        if ds.width <= side and ds.height <= side:
            return image
        window = Window(max(0, (ds.width - side) // 2), max(0, (ds.height - side) // 2),
                        min(side, ds.width), min(side, ds.height))
        profile = {**ds.profile, "driver": "GTiff", "width": int(window.width), "height": int(window.height),
                   "dtype": np.result_type(*ds.dtypes).name,  # a VRT of bands of several types is written as one
                   "transform": ds.window_transform(window), "tiled": False}
        for key in ("blockxsize", "blockysize", "compress", "photometric", "interleave"):
            profile.pop(key, None)
        path = folder / "window.tif"  # written as a GeoTIFF whatever the input's format
        # a damaged image is the image's fault, not the model's: a RasterioIOError from here was reported as the
        # model failing on its chunks ("check 'multiple_of' and 'tile_size' in the card"), exit 1 (h145)
        with reading_pixels(image, window):
            data = read_bands(ds, range(1, ds.count + 1), window=window)
            masked = ds.nodata is None and rasterio.enums.MaskFlags.per_dataset in ds.mask_flag_enums[0]
            mask = ds.read_masks(1, window=window) if masked else None
        with rasterio.open(path, "w", **profile) as out:
            out.write(data)
            if mask is not None:
                out.write_mask(mask)
    return str(path)


def seam_agreement(model: str | os.PathLike, image: str | os.PathLike, *, window: int = 1024,
                   chunk: int = 256, margin: int | None = None) -> float:
    """Percent of pixels where a run in small chunks agrees with a run on the whole window.

    Runs the pipeline twice on `image`'s central `window` x `window` pixels: chunks of
    `chunk` px (many seams) and one chunk (none), with the card's margin or `margin`.
    Below `SEAM_FLOOR` the margin is likely smaller than the model's reach.
    """
    import rasterio

    from geoseg.pipeline import segment

    pipeline_log = logging.getLogger("geoseg.pipeline")
    level = pipeline_log.level
    pipeline_log.setLevel(logging.ERROR)  # small chunks on purpose: not the "sees 11x the pixels" warning
    try:
        with tempfile.TemporaryDirectory(prefix="geoseg-check-") as tmp, catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            crop = _central_window(os.fspath(image), window, Path(tmp))
            with rasterio.open(crop) as ds:
                side = max(ds.width, ds.height)
            masks = []
            for name, size in (("tiled", chunk), ("whole", side)):
                result = segment(crop, Path(tmp) / name, model=model, chunk=size, margin=margin, preview=False)
                with rasterio.open(result.outputs["mask"]) as ds:
                    masks.append(ds.read(1))
    finally:
        pipeline_log.setLevel(level)
    tiled, whole = masks
    valid = (tiled != 255) & (whole != 255)
    if not valid.any():
        raise GeosegError(f"{image}: the window checked is all nodata; pass an image with data in its centre.")
    return round(100.0 * float((tiled[valid] == whole[valid]).mean()), 4)


def _check_one(ref: str, name: str, source: str, path: str | None, image: str | None, window: int,
               chunk: int) -> CheckResult:
    from geoseg.models.registry import get_segmenter

    started = time.perf_counter()
    try:
        card = get_segmenter(ref).card
    except GeosegError as exc:
        return CheckResult(name, False, source, path, round(time.perf_counter() - started, 2), str(exc))
    except Exception as exc:  # noqa: BLE001 - a plugin's model may fail any way: its line, not the whole check
        return CheckResult(name, False, source, path, round(time.perf_counter() - started, 2),
                           f"{path or name}: loading failed ({type(exc).__name__}: {first_line(exc)})")
    result = CheckResult(card.name, True, source, path, round(time.perf_counter() - started, 2),
                         "a built-in baseline" if path is None else "loads and predicts")
    if image is None:
        return result
    if path is None or card.output == "regions":
        result.message += "; no seam check"
        return result
    try:
        result.seam_agreement = seam_agreement(ref, image, window=window, chunk=chunk)
    except BandError as exc:  # check has no --bands: its advice to pass them was for segment
        text = str(exc).split(" Pass --bands", 1)[0]
        result.warnings.append(f"seam check not run: {text} Check it with an image that has the model's bands.")
        return result
    except GeosegError as exc:
        result.warnings.append(f"seam check not run: {exc}")
        return result
    except Exception as exc:  # noqa: BLE001 - the model failed on a chunk of the image: it would in segment too
        result.ok = False
        result.message = (f"fails on the image's {chunk} px chunks ({type(exc).__name__}: {first_line(exc)}); check "
                          "'multiple_of' and 'tile_size' in the card")
        return result
    if result.seam_agreement < SEAM_FLOOR:
        wider = max(2 * card.margin, 64)
        at_wider = seam_agreement(ref, image, window=window, chunk=chunk, margin=wider)
        result.warnings.append(
            f"chunks of {chunk} px agree with a whole-window run on only {result.seam_agreement}% of pixels "
            f"(below {SEAM_FLOOR}%) at the card's margin of {card.margin} px, and on {at_wider}% at {wider} px. "
            + (f"Raise 'margin' in the card to {wider} or more (or pass --margin {wider})."
               if at_wider > result.seam_agreement else
               "A wider margin does not help: the model may depend on the chunk's size or position "
               "(e.g. global pooling), and tiled runs of it cannot match whole-image runs."))
    return result


def check_models(models: Sequence[str | os.PathLike] | None = None, *, image: str | os.PathLike | None = None,
                 window: int = 1024, chunk: int = 256) -> list[CheckResult]:
    """Load each model as a run would (card, weights, a call on a small input) and report what fails.

    `models` are names or bundle paths; None checks every model the registry finds,
    and reports the bundles it skipped as failures. With `image`, each bundle is also
    run on the image's central `window` px in `chunk` px chunks and in one chunk
    (`seam_agreement`), which finds a card whose margin is too small.
    """
    from geoseg.models.registry import DEFAULT_MODEL, list_models, resolve_model

    if image is not None:
        from geoseg.raster import inspect_raster

        inspect_raster(image)  # a missing or unreadable image is the caller's error, not each model's
    image = None if image is None else os.fspath(image)
    results = []
    if models is None:
        problems = []
        for entry in sorted(list_models(problems), key=lambda e: e.name != DEFAULT_MODEL):  # as `geoseg models`
            results.append(_check_one(entry.ref, entry.name, entry.source,
                                      None if entry.path is None else str(entry.path), image, window, chunk))
        for problem in problems:
            results.append(CheckResult(problem.path.stem if problem.path else "plugin", False, "skipped",
                                       None if problem.path is None else str(problem.path), 0.0, problem.message))
        return results
    sources = {e.name: e.source for e in list_models()}
    for model in models:
        try:
            ref = resolve_model(model)
        except GeosegError as exc:
            results.append(CheckResult(str(model), False, "", None, 0.0, str(exc)))
            continue
        path = None if ref.startswith("builtin:") else ref.partition("?")[0]
        results.append(_check_one(ref, str(model), sources.get(str(model), "path"), path, image, window, chunk))
    return results


def exit_status(results: Sequence[CheckResult]) -> int:
    """1 when any model failed, else 0 (warnings do not fail)."""
    return int(any(not r.ok for r in results))

