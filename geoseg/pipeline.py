"""segment(): raster -> Dask chunks with margins -> model -> stitched mask -> files."""

from __future__ import annotations

import json
import logging
import os
import re
import resource
from urllib.parse import parse_qsl
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, ParamSpec, Sequence, TypeVar

import dask.array as da
import numpy as np
import rasterio
from dask.callbacks import Callback

from geoseg.errors import (BandError, CardError, ClusterError, GeosegError, InputError, ModelError, OutputError,
                           RasterReadError, TilingError, WorkerReadError)
from geoseg.files import (move_all, named_as_final, refuse_folders, refuse_stray_whitespace, refuse_unwritable,
                          signals_held)
from geoseg.inference import describe_device, predict_block, top_of
from geoseg.models.card import ModelCard
from geoseg.models.registry import BUILTIN, get_segmenter, resolve_model, with_card
from geoseg.models.segmenter import calls_of_run, cancel_run
from geoseg.models.segmenter import MAX_MARGIN, MAX_TILE, PRECISIONS, TTA_MODES
from geoseg.raster import (
    IO_LOCK,
    NODATA,
    gdal_can_name,
    shown_name,
    gdal_file,
    RasterInfo,
    SPECTRAL_TAGS,
    WindowSource,
    band_roles,
    check_bands,
    check_unchanged,
    class_pixels_and_areas,
    create_outputs,
    declared_scaling,
    class_sidecar,
    describe_mask,
    write_class_sidecar,
    first_line,
    gdal_cache_options,
    gdal_edit,
    inspect_raster,
    is_gdal_path,
    model_grid,
    pixel_sides_m,
    open_quietly,
    raster_stem,
    regrid,
    staging_dir,
    subdataset_file,
    write_cog,
)
from geoseg.tiling import chunk_lengths, coerce_size, round_up, windowed_map
from geoseg.vector import vectorize, write_qml

__all__ = ["Plan", "SegmentResult", "check_options", "default_chunk", "output_paths", "plan_run",
           "log_removed", "new_folders_removed_on_error", "prepare_output_dir", "refuse_inputs_as_outputs", "stale_outputs",
           "segment", "segment_chunk"]

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 1024
MAX_DEFAULT_CHUNK = 2048
Progress = Callable[[float], None]


@dataclass(frozen=True)
class Plan:
    """How a raster is cut: chunk (core) size, margin, model tile size, batch size, bands."""

    chunk: tuple[int, int]
    margin: int
    tile: int | None
    batch_size: int
    bands: tuple[int, ...]

    def overlap_factor(self, shape: tuple[int, int]) -> float:
        """Pixels the model sees per output pixel (margins included), for a raster of `shape`."""
        rows, cols = (chunk_lengths(n, c, self.margin) for n, c in zip(shape, self.chunk))
        seen = sum(r + 2 * self.margin for r in rows) * sum(c + 2 * self.margin for c in cols)
        return seen / (shape[0] * shape[1])


def plan_run(
    info: RasterInfo,
    card: ModelCard,
    *,
    bands: Sequence[int] | None = None,
    chunk: int | tuple[int, int] | None = None,
    margin: int | None = None,
    tile: int | None = None,
    batch_size: int = 8,
) -> Plan:
    """Choose chunk, margin, tile and bands for `info` and the model `card`; check they fit.

    Chunks are rounded up to a multiple of the model's step (``multiple_of`` for a
    fully convolutional model, ``tile - 2 margin`` when it is fed tiles) so that
    every chunk starts on the same grid as a whole-image run.

    Raises
    ------
    TilingError
        A margin the tile cannot hold, or a tile the model cannot take.
    BandError
        Bands the raster does not have or the model cannot use.
    """
    # only where what the image lacks is beyond its colours (a -nir baseline on RGB): a grey image is told to give
    # the model its one band 3 times (`check_bands`), which the message below lost (h126)
    if (bands is None and card.band_names and card.n_bands > info.count and not info.paletted and info.count >= 3
            and not {"red", "green", "blue"} & set(card.band_names[info.count:])):
        # "pass --bands with 4 indexes between 1 and 3" was followed with 1,2,3,3: blue read as NIR, silently (h121)
        lacking = ", ".join(card.band_names[info.count:])
        raise BandError(f"{info.path}: has {info.count} band(s), and model {card.name} reads {card.n_bands}: "
                        f"{', '.join(card.band_names)}; an image without its {lacking} cannot give it those. Use a "
                        "model of the image's bands" + (f", such as {card.name[:-4]}" if card.name.endswith("-nir")
                                                        else " (geoseg models lists each one's bands)") + ".")
    bands = check_bands(info, card.bands if bands is None else bands, needed=card.n_bands)
    margin = card.margin if margin is None else _whole("margin", margin, 0, MAX_MARGIN)
    batch_size = _whole("batch_size", batch_size, 1, None)
    tile = None if tile is None else _whole("tile", tile, 1, MAX_TILE)
    if margin < card.margin:
        log.warning(
            "margin %d is below the model's receptive field (%d px): chunk edges may show seams",
            margin, card.margin,
        )
    tile = _check_tile(card, tile, margin)
    step = card.multiple_of if tile is None else tile - 2 * margin
    default = default_chunk(margin) if tile is None else DEFAULT_CHUNK
    rows, cols = chunk_on_grid(card, chunk, margin, tile, info.height, info.width)
    seen = (rows + 2 * margin) * (cols + 2 * margin) / (rows * cols)
    if chunk is not None and (rows < info.height or cols < info.width) and seen > 4:
        d_rows, d_cols = round_up(min(default, info.height), step), round_up(min(default, info.width), step)
        log.warning("chunk %dx%d with a %d px margin: the model sees %.0fx the pixels of the raster; "
                    "the default chunk (%dx%d on this raster) sees %.1fx", rows, cols, margin, seen, d_rows, d_cols,
                    (d_rows + 2 * margin) * (d_cols + 2 * margin) / (d_rows * d_cols))
    chunks = -(-info.height // rows) * -(-info.width // cols)
    if chunk is not None and min(rows, cols) < 128 and chunks > 1000:  # --chunk 1: 156 s for 128 x 128 px
        log.warning("chunk %dx%d cuts the raster into %d chunks, each a task that costs milliseconds to schedule: "
                    "give a chunk of 256 px or more (the default is %d)", rows, cols, chunks, default)
    return Plan((rows, cols), margin, tile, int(batch_size), bands)


def chunk_on_grid(card: ModelCard, chunk: int | tuple[int, int] | None, margin: int, tile: int | None,
                  height: int, width: int) -> tuple[int, int]:
    """The chunk (rows, cols) that `plan_run` cuts a grid of `height` x `width` into, for a checked `margin` and
    `tile` (`_check_tile`): `chunk` (or the default) clipped to the grid and rounded up to the model's step. Two
    runs of one model with the same chunk here cut the grid alike, so their masks are the same whatever
    --chunk each was given (a 400 px tile is one chunk at 512, 1024 or 2048: `survey` keeps its mask)."""
    step = card.multiple_of if tile is None else tile - 2 * margin
    default = default_chunk(margin) if tile is None else DEFAULT_CHUNK
    rows, cols = coerce_size(chunk, "chunk", default=(default, default))
    return round_up(min(rows, height), step), round_up(min(cols, width), step)


def _whole(name: str, value, low: int, high: int | None) -> int:
    """`value` as an int within low..high, or a TilingError naming it (1.5, '16' and True are no sizes)."""
    unit = ("tiles", "") if name == "batch_size" else ("pixels", " px")  # a batch is no number of pixels
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TilingError(f"`{name}` must be a whole number of {unit[0]}. Received: {name}={value!r}")
    if value < low or (high is not None and value > high):
        within = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise TilingError(f"`{name}` must be {within}{unit[1]}. Received: {name}={value}")
    return int(value)


def default_chunk(margin: int) -> int:
    """The chunk size used when none is given: 1024 px, or eight margins (at most 2048) for wide margins.

    A fully convolutional model sees ``((C + 2 M) / C) ** 2`` pixels per output pixel;
    with a 288 px margin that is 2.44 at 1024 px and 1.64 at 2048 px.

    Examples
    --------
    >>> default_chunk(107), default_chunk(192), default_chunk(288)
    (1024, 1536, 2048)
    """
    return DEFAULT_CHUNK if 8 * margin <= DEFAULT_CHUNK else min(MAX_DEFAULT_CHUNK, 8 * margin)


def _check_tile(card: ModelCard, tile: int | None, margin: int) -> int | None:
    if card.tile_size is not None:
        if tile not in (None, card.tile_size):
            raise TilingError(
                f"model {card.name} takes fixed {card.tile_size}px tiles. Received: tile={tile}. "
                "Leave --tile unset for this model."
            )
        tile = card.tile_size
    if tile is None:
        return None
    step = tile - 2 * margin
    if step < max(1, card.multiple_of) and card.tile_size is not None:  # the tile is the model's: only the margin moves
        raise TilingError(f"model {card.name} takes fixed {tile}px tiles, which a {margin}px margin each side leaves "
                          f"no core of. Use a --margin of at most {(tile - max(1, card.multiple_of)) // 2}.")
    if step < max(1, card.multiple_of):
        raise TilingError(
            f"tile {tile}px leaves no core after a {margin}px margin each side. Use a tile of at least "
            f"{2 * margin + max(1, card.multiple_of)} (2 margins and a multiple of {max(1, card.multiple_of)}) "
            "or a smaller --margin."
        )
    if card.tile_size is None and step % card.multiple_of:
        raise TilingError(
            f"tile - 2 * margin must be a multiple of {card.multiple_of} for model {card.name}. "
            f"Received: tile={tile}, margin={margin}. Try tile={round_up(step, card.multiple_of) + 2 * margin}."
        )
    return tile


def fill_nodata(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill the nodata pixels of a normalised block (rows, cols, bands) in place with the data mirrored across
    its nearest edge, as the raster's own edge is mirrored: the model then sees plausible context at a footprint's
    edge instead of a flat 0 (mid-grey for a -1..1 model), which it read as another class there (held-out Dubai
    tiles, synthetic footprints: pixel accuracy within 20 px of the edge 0.832 -> 0.850, mean IoU 0.591 -> 0.630;
    with the real image there 0.847 and 0.635). Where the mirror falls on nodata too, the nearest valid pixel.
    A block without nodata is returned untouched; one without data is 0."""
    invalid = ~valid
    if not invalid.any():
        return x
    if not valid.any():
        x[invalid] = 0.0
        return x
    from scipy import ndimage

    near_r, near_c = ndimage.distance_transform_edt(invalid, return_distances=False, return_indices=True)
    rows, cols = valid.shape  # each pixel mirrored through its nearest valid pixel (int32, on the whole block:
    mirror_r = 2 * near_r - np.arange(rows, dtype=near_r.dtype)[:, None]  # 284 MiB at most for a 2624² block)
    mirror_c = 2 * near_c - np.arange(cols, dtype=near_c.dtype)[None, :]
    np.clip(mirror_r, 0, rows - 1, out=mirror_r)
    np.clip(mirror_c, 0, cols - 1, out=mirror_c)
    off = ~valid[mirror_r, mirror_c]  # the mirror is nodata too: the nearest valid pixel
    mirror_r[off], mirror_c[off] = near_r[off], near_c[off]
    x[invalid] = x[mirror_r[invalid], mirror_c[invalid]]
    return x


def segment_chunk(
    block: np.ndarray,
    valid: np.ndarray,
    *,
    model_ref: str,
    margin: int,
    tile: int | None,
    batch_size: int,
    confidence: bool,
    probabilities: bool,
    normalization: dict | None = None,
    run: str | None = None,
) -> np.ndarray:
    """Segment one chunk with its margins; the Dask task that runs on any worker.

    The model is looked up by `model_ref` (a bundle path) in a per-process cache,
    never captured in a closure, so distributed workers load it once.

    Parameters
    ----------
    block : numpy.ndarray
        (rows + 2 margin, cols + 2 margin, bands), raw raster values.
    valid : numpy.ndarray
        (rows + 2 margin, cols + 2 margin, 1) bool, False where the input is nodata.

    Returns
    -------
    numpy.ndarray
        (rows, cols, 1 + confidence + classes * probabilities) uint8: the class
        (255 = nodata), then confidence and class probabilities in percent (255 = nodata).
    """
    segmenter = get_segmenter(model_ref)
    valid = valid[..., 0]
    rows, cols = valid.shape[0] - 2 * margin, valid.shape[1] - 2 * margin
    if not valid[margin : margin + rows, margin : margin + cols].any():  # no pixel of its own has data: no model
        # call (a drone ortho mostly outside its flight's footprint: 90.9 s, against 14.4 s for its data alone)
        return np.full((rows, cols, 1 + confidence + segmenter.card.n_classes * probabilities), NODATA, np.uint8)
    x = fill_nodata(segmenter.card.normalize(block, normalization), valid)
    # Without --probabilities only the winning class and its probability come back from the model
    with calls_of_run(run):  # an interrupted run's queued calls are not made (`_store`)
        predicted = predict_block(segmenter, x, margin=margin, tile=tile, batch_size=batch_size,
                                  top=not probabilities)
    rows, cols = predicted.shape[:2]
    nodata = ~valid[margin : margin + rows, margin : margin + cols]
    best = top_of(predicted) if probabilities else predicted  # (rows, cols, 2): class, its probability
    finite = np.isfinite(predicted)  # on the whole array first: .all(axis=-1) over 2-5 classes took 36 ms a 1024²
    # chunk (160 ms at 2048²), a GPU's model call's time; only a chunk with a NaN or infinity looks per pixel
    broken = None if finite.all() else ~nodata & ~finite.all(axis=-1)
    if broken is not None and broken.any():  # a float16 model that overflowed: every such pixel was class 0 at 0%,
        # with only NumPy's "invalid value encountered in cast"
        raise ModelError(
            f"{getattr(segmenter, 'source', segmenter.card.name)}: the model output NaN or infinity on "
            f"{int(broken.sum())} of {broken.size} pixels of a chunk, whose inputs after normalisation run from "
            f"{float(np.nanmin(x)):.4g} to {float(np.nanmax(x)):.4g}: a float16 (mixed_float16) model overflows past "
            "65504. Check the card's normalisation (or --normalize) against the values the model was trained on, or "
            "save the model in float32.")
    layers = [best[..., 0].astype(np.uint8)]
    if confidence:  # clipped: a probability a hair over 1 is 100%, never a byte that wraps or reads as nodata
        layers.append(np.rint(np.clip(best[..., 1], 0, 1) * 100).astype(np.uint8))
    if probabilities:
        layers.extend(np.rint(np.clip(np.moveaxis(predicted, -1, 0), 0, 1) * 100).astype(np.uint8))
    out = np.stack(layers, axis=-1)
    out[nodata] = NODATA
    return out


@dataclass
class SegmentResult:
    """What a run wrote and measured.

    ``peak_memory_mb`` is this process's peak resident memory so far (``ru_maxrss``): earlier
    runs in the same process count, Dask workers of a ``client`` do not. ``device`` is where
    this process ran models, 'GPU: ...' or 'CPU'; with a ``client``, the workers' ('Dask workers: CPU').
    """

    input: str
    outputs: dict[str, str]
    model: str
    model_version: str
    classes: list[dict[str, Any]]
    width: int
    height: int
    seconds: float
    pixels_per_second: float
    peak_memory_mb: float
    device: str
    plan: dict[str, Any] = field(default_factory=dict)
    output: str = "classes"  # the card's: "regions" for models of unlabeled regions, whose colours are no classes
    nodata_pixels: int = 0  # the mask's pixels of no class (the input's nodata), and their m² (None without a CRS)
    nodata_m2: float | None = None
    warnings: list[str] = field(default_factory=list)  # what the run logged as warnings (in the calling thread)
    # the mask's georeferencing, as rasterio reads it: CRS ('EPSG:32640', or WKT), affine coefficients (a, b, c,
    # d, e, f: ``Affine(*transform)``) and (left, bottom, right, top); None for a mask without (a photo's, or one
    # placed by ground control points, which it carries as the input did)
    crs: str | None = None
    transform: list[float] | None = None
    bounds: list[float] | None = None
    styles: dict[str, str] = field(default_factory=dict)  # the QGIS styles written beside `outputs` of these names

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)

    def __str__(self) -> str:
        """A few lines for people: what ran on what, how fast, what each class covers, where the files went.
        ``repr()`` stays the dataclass's one line of every field; a notebook shows this (h133: one long line)."""
        total = sum(c.get("pixels", 0) for c in self.classes) or 1
        head = [f"SegmentResult: {self.model} {self.model_version} on {self.input}",
                f"  {self.width:,} × {self.height:,} px in {self.seconds:,.1f} s ({self.pixels_per_second:,.0f} "
                f"px/s), peak {self.peak_memory_mb:,.0f} MB, {self.device}"]
        kind = "regions" if self.output == "regions" else "classes"
        shares = [f"{c['name']} {100 * c.get('pixels', 0) / total:.1f}%" + (
            f" ({c['area_m2']:,.0f} m²)" if c.get("area_m2") is not None else "")
            for c in self.classes if c.get("pixels")]
        if self.output != "regions":
            head.append(f"  {kind}: " + (", ".join(shares) or "none (all nodata)"))
        if self.nodata_pixels:
            head.append(f"  nodata: {self.nodata_pixels:,} px")
        head += [f"  {name}: {path}" for name, path in self.outputs.items()]
        head += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(head)

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython and Jupyter
        printer.text(str(self))


class _Writer:
    """`da.store` target that sends a (rows, cols, bands) block to the open output datasets."""

    def __init__(self, datasets: dict, layout: dict[str, slice]) -> None:
        self.datasets, self.layout = datasets, layout
        self.stopped = False  # set (under IO_LOCK) when the run stops: its datasets are about to be closed

    def stop(self) -> None:
        """Refuse every write from now on: dask returns at a run's first exception (a web job's Cancelled from its
        progress callback, a failed chunk) while its threads still compute chunks, whose writes into the datasets
        the caller then closed crashed the process (a segfault in GDAL: the web server, for every user)."""
        with IO_LOCK:  # no write is under way once it is taken
            self.stopped = True

    def __setitem__(self, key, value: np.ndarray) -> None:
        from rasterio.windows import Window

        from rasterio._err import CPLE_BaseError
        from rasterio.errors import RasterioError

        window = Window.from_slices(key[0], key[1])
        for name, bands in self.layout.items():
            ds = self.datasets[name]
            try:
                with IO_LOCK:  # GDAL lost a write when another thread read meanwhile (see IO_LOCK)
                    if self.stopped:
                        return
                    ds.write(np.moveaxis(value[..., bands], -1, 0), window=window)
            except (RasterioError, CPLE_BaseError, OSError) as exc:  # a full disk, a folder gone: not the input's fault
                raise OutputError(f"{Path(ds.name).parent.parent}: writing the {name} layer failed "
                                  f"({first_line(exc)}). "
                                  "Free some disk space or pick another output folder.") from None


# Of the whole run's progress: the chunks, then writing the outputs (COGs, polygons, preview), which took 35-70%
# of a run after the bar had said 100% (h93)
CHUNKS_SHARE = 0.9
# with polygons, theirs is a third of the bar: the measures of a noisy 4746x4308 mask's 445,000 polygons took 72 s
# after 7 s of chunks (`-m threshold`), which the bar spent at 95% (h173). The chunks of a U-Net, far slower, then
# end in a jump forward, which is better than a stall
VECTOR_CHUNKS_SHARE, VECTOR_SPAN = 0.6, (0.65, 0.97)


class _TaskProgress(Callback):
    """Report the fraction of chunks written by a local Dask computation to a callback."""

    def __init__(self, report: Progress, total: int) -> None:
        super().__init__()
        self.report, self.total, self.done = report, max(1, total), 0

    def _posttask(self, key, result, dsk, state, worker_id):
        # one task per chunk, ("store-map-...", i, j); a raster of one chunk is fused into "store-map-finalize-..."
        if str(key[0] if isinstance(key, tuple) else key).startswith("store-map"):
            self.done += 1
            self.report(min(1.0, self.done / self.total))


def _store(result: da.Array, writer: _Writer, *, client=None, progress: Progress | None = None,
           run: str | None = None, source: str = "the raster") -> None:
    """Compute `result` into `writer`, reporting the fraction of chunks done as ``CHUNKS_SHARE`` of the run's."""
    def report(fraction: float) -> None:
        if progress is not None:
            progress(fraction * CHUNKS_SHARE)

    if client is None:
        try:
            # given to this computation, neither registered nor set process-wide: dask swaps its global callbacks
            # without a lock, so runs in other threads (the web server's jobs, survey --jobs) got each other's
            # progress, and one could stay registered after its run; the user's own (a ProgressBar) still see it
            da.store(result, writer, lock=False, scheduler="threads",  # the writer takes IO_LOCK
                     callbacks=[*Callback.active, _TaskProgress(report, result.npartitions)._callback])
        except BaseException:  # Ctrl-C, SIGTERM, a failed chunk: the threads' queued model calls are not made
            writer.stop()  # and the chunks still under way write nothing into the datasets the caller closes
            if run is not None:
                cancel_run(run)
            raise
        return
    _store_on_cluster(result, writer, client, report, source)


STEP_S = 5  # how often a cluster run that waits for its chunks checks that the cluster still has workers


def _store_on_cluster(result: da.Array, writer: _Writer, client, report, source: str) -> None:
    """`_store` on a dask.distributed cluster: each chunk a task of its own (`ChunkCall`), at most twice the
    workers' threads of them at once, written as they come back.

    Chunks of the array computed one by one cost time in the square of their number (each call took in the
    whole graph: a 48000² raster sent its first chunk after 380 s), and all submitted at once left the finished
    ones on the workers until read (500 MB each of 1 GB workers, spilling). A cluster whose workers are all
    gone for `WORKER_WAIT_S` fails the raster, rather than waiting for ever without a word."""
    from itertools import islice

    from distributed import wait

    call = result.chunk_call
    starts = [np.cumsum((0,) + c[:-1]) for c in result.chunks[:2]]
    locations = [tuple((int(s[i]), int(s[i] + result.chunks[a][i])) for a, (s, i) in enumerate(zip(starts, index)))
                 for index in np.ndindex(result.numblocks[:2])]
    todo = iter(locations)
    pending: dict = {}

    def submit(location) -> None:
        (r0, r1), (c0, c1) = location
        pending[client.submit(call, location, key=f"{result.name}-{r0}-{c0}", retries=0)] = (slice(r0, r1),
                                                                                              slice(c0, c1))

    idle_since: list[float] = []  # since when the cluster has had no workers
    known: dict = {}  # the workers seen, by address: their memory limits
    checked = [0.0]  # when they were last looked at

    def check_workers() -> None:
        workers = client.scheduler_info().get("workers") or {}
        lost = [address for address in known if address not in workers]
        if lost:  # killed by their memory limit, say: 5 min 30 s and 4 restarts went by without a word (h134)
            limits = sorted({known[a] for a in lost if known[a]})
            log.warning("%s: Dask worker(s) %s left the cluster while it was segmented%s; their chunks run again on "
                        "the workers left (a smaller --chunk needs less memory)", source, ", ".join(lost),
                        f" (memory limit {', '.join(f'{n / 2**30:.1f} GiB' for n in limits)}: killed for exceeding "
                        "it?)" if limits else "")
        known.clear()
        known.update({address: info.get("memory_limit") for address, info in workers.items()})
        checked[0] = time.monotonic()
        # workers paused by their memory (dask pauses one at 80% of its limit; the model's memory stays with the
        # process after a run): the next run on them waited for ever without a word (h142)
        paused = [address for address, info in workers.items() if info.get("status") == "paused"]
        # a paused worker still running a chunk is going on: dask pauses one while a chunk holds memory over 80% of
        # its limit, and resumes it once the chunk frees it (a 4 GB worker at chunk 2048), so that every look could
        # find it paused while chunks came back; a worker stuck for good runs nothing
        running = any(((workers[a].get("metrics") or {}).get("task_counts") or {}).get("executing") for a in paused)
        if workers and (len(paused) < len(workers) or running):
            idle_since.clear()
        elif not idle_since:
            idle_since.append(time.monotonic())
        elif time.monotonic() - idle_since[0] > WORKER_WAIT_S:
            if workers:
                raise ClusterError(
                    f"{source}: every Dask worker has been paused for {WORKER_WAIT_S} s while it was segmented: "
                    f"{_paused_text(workers)}. Dask pauses a worker whose memory is over "
                    f"{_memory_fraction('pause'):.0%} of its limit, and the model's memory stays with it: restart "
                    "them with a higher --memory-limit, or pass a smaller --chunk.")
            raise ClusterError(f"{source}: the Dask cluster has had no workers for {WORKER_WAIT_S} s while it was "
                               "segmented (stopped, or lost). Start workers (dask worker ADDRESS) and run again, or "
                               "run with --workers N instead of --scheduler.")

    def fetched(future) -> np.ndarray:
        while True:  # a result held by a worker gone meanwhile is computed again, once a worker comes
            try:
                return future.result(timeout=STEP_S)
            except TimeoutError:
                check_workers()

    done = 0
    try:
        check_workers()  # the workers at the start, to say which leave
        for location in islice(todo, max(4, 2 * sum(client.nthreads().values()))):
            submit(location)
        while pending:
            try:
                finished = wait(list(pending), timeout=STEP_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                finished = set()
            if not finished:
                check_workers()
                continue
            for future in finished:
                writer[pending[future]] = fetched(future)  # one that raises stays pending: cancelled below, or it
                del pending[future]  # stayed on the scheduler, erred, and in the client, with its traceback (h99)
                future.release()
                idle_since.clear()  # a chunk came back: the cluster is not stuck, whatever its workers' status
                done += 1
                report(done / len(locations))
                following = next(todo, None)
                if following is not None:
                    submit(following)
            if time.monotonic() - checked[0] > STEP_S:  # a worker lost while the others go on is said too
                check_workers()
    except WorkerReadError as exc:  # still read here: the worker does not see it (one that joined mid-run)
        if _opens_here(exc.path):
            raise RasterReadError(exc.unseen()) from None
        # gone from this machine too: moved or deleted meanwhile, whatever the cluster (--workers N has no
        # --scheduler to leave out, nor workers that join)
        raise RasterReadError(f"{exc.path}: could not be opened again while it was being segmented ({exc.reason}): "
                              "was it moved, deleted or replaced during the run? Put it back and run again.") from None
    except GeosegError:
        raise
    except Exception as exc:  # the cluster's own failures were tracebacks that stopped the batch
        _raise_cluster_error(exc, source)
    finally:
        try:
            client.cancel(list(pending))  # what is left of a failed run is not run on
        except Exception:  # noqa: BLE001 - a scheduler already gone has nothing left to cancel
            pass


def _raise_cluster_error(exc: Exception, what: str) -> None:
    """A ClusterError for distributed's own failures (a worker killed, the scheduler gone); others unchanged."""
    from concurrent.futures import CancelledError  # distributed's FutureCancelledError is one

    from distributed.comm import CommClosedError
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        raise ClusterError(f"{what}: Dask workers died running one of its chunks ({first_line(exc)}). A worker's "
                           "memory limit is the usual cause: give the workers more memory (dask worker --memory-limit), "
                           "fewer threads each, or pass a smaller --chunk.") from None
    if isinstance(exc, (CancelledError, CommClosedError)):
        detail = first_line(exc).rstrip(": ")  # "3 Futures cancelled:" ended in a dangling colon (h110)
        raise ClusterError(f"{what}: the Dask scheduler was lost while it was segmented"
                           f"{f' ({detail})' if detail else ''}. Check the scheduler and run again.") from None
    raise exc


def output_paths(out_dir: Path, stem: str, *, confidence: bool = False, probabilities: bool = False,
                 vector: bool = False, preview: bool = True) -> dict[str, Path]:
    """The files `segment` writes for a raster named `stem` into `out_dir` with these options.

    QGIS styles (``.qml``) go beside the mask and the polygons.

    Examples
    --------
    >>> {name: path.name for name, path in output_paths(Path("out"), "scene", vector=True, preview=False).items()}
    {'mask': 'scene_mask.tif', 'vector': 'scene_polygons.gpkg'}
    """
    names = {"mask": f"{stem}_mask.tif"}
    if confidence:
        names["confidence"] = f"{stem}_confidence.tif"
    if probabilities:
        names["probabilities"] = f"{stem}_probabilities.tif"
    if vector:
        names["vector"] = f"{stem}_polygons.gpkg"
    if preview:
        names["preview"] = f"{stem}_preview.png"
    return {k: out_dir / v for k, v in names.items()}


# What `geoseg scene` writes beside the mask (STEM_composition.csv, ...): tables and a map of one mask
SCENE_FILES = {"composition": "composition.csv", "zones": "zones.gpkg", "zones_csv": "zones.csv", "map": "scene.png",
               "report": "scene.json"}


def stale_outputs(paths: dict[str, Path], stem: str, *, inputs: Sequence[Any] = ()) -> list[Path]:
    """The outputs of an earlier run on this stem that this run does not write, for `move_all` to remove with
    the new set in place: polygons or a confidence raster of the old mask sat beside the new one, with other
    classes, and so did the tables, map and report of an earlier `geoseg scene` after a `geoseg segment
    --overwrite` (those its report lists: a zones layer of the user's named ``STEM_zones.gpkg`` is not a
    scene's). They were deleted before the new files were moved in, and a move that failed left them gone.

    `paths` are this run's files (`output_paths`, and `SCENE_FILES`' keys for a scene), in the final folder;
    `inputs` (the image, a zones or AOI layer, ``file|layername=x`` too) and their styles are never among
    them: `scene --zones out/a_polygons.gpkg --overwrite` deleted the layer it had just read.
    """
    kept = {os.path.realpath(str(p).split("|")[0]) for p in inputs if p is not None}
    kept |= {os.path.splitext(p)[0] + ".qml" for p in kept} | {p + ".aux.xml" for p in kept}
    folder = paths["mask"].parent
    every = output_paths(folder, stem, confidence=True, probabilities=True, vector=True, preview=True)
    # with the rasters, the statistics GDAL keeps of them (`gdalinfo -stats`), which it would read as the new ones'
    stale = [p for name, path in every.items() if name not in paths
             for p in (path, path.with_suffix(".qml"), class_sidecar(path))]
    stale += [path for name, path in _scene_files_of(folder, stem).items() if name not in paths]
    found = []
    for path in stale:
        if os.path.realpath(path) in kept:
            log.warning("kept %s: an earlier run's output, which no longer matches the new mask, but an input of "
                        "this run", path)
        elif path.is_file() or path.is_symlink():  # a folder of that name is not an earlier run's: kept
            found.append(path)
    return found


def log_removed(paths: Sequence[Path]) -> None:
    """Say which earlier outputs `move_all` removed."""
    for path in paths:
        log.warning("removed %s: it came from an earlier run and no longer matches the new mask", path)


def _scene_files_of(folder: Path, stem: str) -> dict[str, Path]:
    """The files an earlier `geoseg scene` of `stem` wrote in `folder`, as its report (``STEM_scene.json``)
    lists them; none without a readable report."""
    try:
        outputs = json.loads((folder / f"{stem}_{SCENE_FILES['report']}").read_bytes())["outputs"]
        listed = {Path(str(value)).name for value in outputs.values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {name: folder / f"{stem}_{file}" for name, file in SCENE_FILES.items() if f"{stem}_{file}" in listed}


@contextmanager
def new_folders_removed_on_error(output_dir: str | os.PathLike) -> Iterator[None]:
    """Create `output_dir`; if the block fails, remove the folders this call created while they are empty.

    Input found bad after the output folder was made (a scene's bands, a Dask worker that cannot
    see the file) or Ctrl-C mid-run then leave nothing behind. Folders that existed, or that
    another process made meanwhile (two runs into one new folder), are kept.
    """
    from geoseg.files import signals_held

    check_output_path(output_dir)  # before any folder is made: "~/out" made a folder "~" that then passed as there
    folder = Path(output_dir).absolute()  # '..' kept: 'runs/../out' needs runs/, which is removed too
    made = []
    try:
        with signals_held():  # a signal between a mkdir and the `try` that removes it left the folder
            for path in reversed([folder, *folder.parents]):  # outermost first, each by this process or not
                if path.exists():  # 'runs/..' once runs/ is made
                    continue
                try:
                    path.mkdir()
                except FileExistsError:  # made by another process just now: theirs
                    continue
                except OSError as exc:
                    raise OutputError(f"{output_dir}: cannot create the output folder ({exc.strerror}).") from None
                made.append(path)
        yield
    except BaseException:
        for path in reversed(made):  # innermost first
            try:
                path.rmdir()
            except OSError:  # not empty: another run writes there too, or it is gone already
                break
        raise


def check_output_path(output_dir: str | os.PathLike) -> None:
    """Refuse an empty output folder (Path("") is the working folder, where segment(x, "") wrote its mask), one
    with whitespace at either end or a line break (`refuse_stray_whitespace`), one on GDAL's virtual file
    systems, and one under a leading ~ that Python does not expand."""
    if not str(output_dir).strip():
        raise InputError("the output folder is an empty path; give a folder, '.' for the current one.")
    refuse_stray_whitespace(output_dir)  # "out\n" (read from a file) and "out " made folders of those names
    if re.match(r"/vsi[a-z0-9_]*/", os.fspath(output_dir).replace("\\", "/")):  # segment ran, then a FileNotFoundError
        raise OutputError(f"{output_dir}: outputs are written to a folder on disk, not to GDAL's virtual file systems "
                          "(/vsimem/, /vsis3/, ...), which hold no folders to move finished files into. Give a local "
                          "folder (a temporary one: tempfile.mkdtemp()), and read or copy the outputs from there.")
    text = os.fspath(output_dir)
    if isinstance(text, str) and text.startswith("~") and os.path.expanduser(text) != text:
        # Python leaves a leading ~ as it is: segment(x, "~/out") wrote into a folder named "~" in the working folder
        # (which `rm -rf ~` in a shell takes for the home folder), and survey then read its polygons from $HOME,
        # where geopandas expands it (a DataSourceError after every raster was done); refused as an input's is,
        # unless a folder of that name really is there
        first = Path(text).parts[0]
        if not os.path.lexists(first):
            raise OutputError(f"{output_dir}: a leading ~ is expanded by a shell only (not in quotes, not by "
                              f"Python): the outputs would go to a new folder named {first!r} in {os.getcwd()}. "
                              f"Pass {os.path.expanduser(text)!r} (os.path.expanduser).")


def prepare_output_dir(output_dir: str | os.PathLike, paths_of: Callable[[Path], dict[str, Path]],
                       overwrite: bool, inputs: Sequence[str | os.PathLike | None] = ()) -> dict[str, Path]:
    """Create `output_dir`, check it is writable, and refuse existing outputs unless `overwrite`.

    ``paths_of(folder)`` names the outputs; their paths are returned. An output that is one of
    the `inputs` (``flood flood.tif -o .``) is refused even with `overwrite`: it would destroy it.
    """
    check_output_path(output_dir)
    out_dir = Path(output_dir)
    # an ASCII locale (LC_ALL=C, PYTHONUTF8=0) read a name such as out_é into surrogates, which GDAL refused with a
    # traceback after the work; a Latin-1 one into other letters, which GDAL could not write ("cannot write here")
    if not gdal_can_name(os.path.abspath(out_dir)):
        raise InputError(f"{shown_name(out_dir)!r}: the output folder's name cannot be passed to GDAL in this locale. Run "
                         "in a UTF-8 locale (export LC_ALL=C.UTF-8) or with PYTHONUTF8=1.")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder. Pass a folder for the outputs.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create the output folder ({exc.strerror}).") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"{out_dir}: output folder is not writable. Pick another output folder.")
    paths = paths_of(out_dir)
    refuse_inputs_as_outputs(paths, inputs)
    refuse_folders(paths.values())  # before the run, not when its files are moved into place
    refuse_unwritable(paths.values())
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]} already exists. Pass --overwrite (overwrite=True) to replace it.")
    return paths


def refuse_inputs_as_outputs(paths: dict[str, Path], inputs: Sequence[str | os.PathLike | None],
                             fix: str = "Pick another output folder (-o) or rename the input.") -> None:
    """Raise OutputError when an output path is one of the input files (by path or as the same file);
    `fix` says what to do instead."""
    for given in inputs:
        if given is None:
            continue
        text = str(given).split("|", 1)[0]  # 'towns.gpkg|layername=towns' names a file too
        sub = subdataset_file(text)  # and GPKG:mask.gpkg:table: vectorize -o mask.gpkg --overwrite replaced it
        source = Path(sub[0] if sub else text)
        if not source.is_file():  # /vsizip/..., a URL: no output can be it
            continue
        for output in paths.values():
            if output.resolve() == source.resolve() or (output.exists() and os.path.samefile(output, source)):
                raise OutputError(f"{output}: is the input {given}; writing the outputs there would destroy it. {fix}")


def _class_table(card: ModelCard, mask_path: Path, info: RasterInfo) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each class's pixels and m², and those of the mask's nodata (``pixels``, ``area_m2``): a scene under 27%
    cloud read as a smaller scene, and areas of two dates could not be told apart from less water."""
    pixels, areas = class_pixels_and_areas(mask_path, info, NODATA + 1)
    table = [{"id": c.id, "name": c.name, "color": c.color, "pixels": int(pixels[c.id]),
              "area_m2": None if areas is None else round(float(areas[c.id]), 3)} for c in card.classes]
    return table, {"pixels": int(pixels[NODATA]), "area_m2": None if areas is None else round(float(areas[NODATA]), 3)}


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _under_gdal_options(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run `func` inside ``rasterio.Env(**gdal_cache_options())``."""
    from functools import wraps

    @wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with rasterio.Env(**gdal_cache_options()):
            return func(*args, **kwargs)

    return wrapper


def _with_warnings(func: Callable[_P, SegmentResult]) -> Callable[_P, SegmentResult]:
    """Give `func`'s result the warnings geoseg logged in this thread meanwhile (``result.warnings``): a script or
    a QGIS plugin got them only by a handler on the 'geoseg' logger, as scene and flood results have them."""
    from functools import wraps

    @wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> SegmentResult:
        from geoseg.workflows.common import warnings_heard

        with warnings_heard() as heard:
            result = func(*args, **kwargs)
        result.warnings = list(heard)
        return result

    return wrapper


def check_options(options: dict[str, Any], *, caller: str = "segment()", taken: Sequence[str] = ()) -> None:
    """Check `segment`'s keyword arguments that need no raster; survey and scene check theirs before any run.

    Raises an InputError or TilingError naming the argument: an unknown one (``chunks=``), one
    that `caller` sets itself (`taken`), or a value of the wrong kind (``chunk=1.5``,
    ``confidence="yes"``, ``client="tcp://..."``).
    """
    import inspect

    known = set(inspect.signature(segment).parameters) - {"input", "output_dir"} - set(taken)
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"{caller} has no option {', '.join(map(repr, unknown))}; it passes on to segment() "
                         f"{', '.join(sorted(known))}.")
    precision, tta = options.get("precision", "float32"), options.get("tta", "none")
    sieve, client, progress = options.get("sieve", 0), options.get("client"), options.get("progress")
    flags = {k: options[k] for k in ("confidence", "probabilities", "vector", "preview", "overwrite", "resample")
             if k in options}
    for name, value in flags.items():  # resample="no" is truthy, confidence="yes" failed deep in Dask
        if not isinstance(value, (bool, np.bool_)):
            raise InputError(f"`{name}` must be True or False. Received: {name}={value!r}")
    coerce_size(options.get("chunk"), "chunk", default=(1, 1))
    for name, low, high in (("margin", 0, MAX_MARGIN), ("tile", 1, MAX_TILE), ("batch_size", 1, None)):
        if options.get(name) is not None or name == "batch_size" and name in options:
            _whole(name, options[name], low, high)
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}. Received: {precision!r}")
    if tta not in TTA_MODES:
        raise InputError(f"tta must be one of {', '.join(TTA_MODES)}. Received: {tta!r}")
    if isinstance(sieve, bool) or not isinstance(sieve, (int, np.integer)) or sieve < 0:
        raise InputError(f"sieve (--sieve) is a region size in pixels, a whole number of at least 0. Received: {sieve!r}")
    if client is not None and not (hasattr(client, "run") and hasattr(client, "compute")):
        raise InputError(f"`client` takes a dask.distributed Client, e.g. Client('tcp://host:8786'). "
                         f"Received: client={client!r}")
    if progress is not None and not callable(progress):
        raise InputError(f"`progress` takes a function of one argument, the fraction done. Received: {progress!r}")
    import dask

    threads = dask.config.get("num_workers", None)  # DASK_NUM_WORKERS=abc was a TypeError traceback after the model
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"Dask's num_workers (DASK_NUM_WORKERS, or a Dask config file) must be a whole number of at "
                         f"least 1, the threads that segment chunks. Received: {threads!r}; unset it to use every "
                         "core.")


@_with_warnings
@_under_gdal_options
def segment(
    input: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    bands: Sequence[int] | None = None,
    chunk: int | tuple[int, int] | None = None,
    margin: int | None = None,
    tile: int | None = None,
    batch_size: int = 8,
    confidence: bool = False,
    probabilities: bool = False,
    vector: bool = False,
    sieve: int = 0,
    preview: bool = True,
    overwrite: bool = False,
    normalization: dict | None = None,
    resample: bool = True,
    precision: str = "float32",
    tta: str = "none",
    client=None,
    progress: Progress | None = None,
) -> SegmentResult:
    """Segment a raster of any size into a georeferenced class mask.

    Parameters
    ----------
    input : path
        Any raster GDAL reads (GeoTIFF, COG, VRT, JPEG, PNG): uint8, int8, uint16, int16,
        float32 and more, any band count and CRS.
    output_dir : path
        Folder for the outputs; created if missing. A path with whitespace at either end or a line break
        (one read from a text file) is refused (`OutputError`), not made into a folder of that name.
    model : str or path, optional
        A name from `geoseg.models.list_models` or a ``.keras`` bundle path;
        defaults to the shipped land-cover U-Net.
    bands : sequence of int, optional
        1-based bands to feed the model, in model order; defaults to the card's.
    chunk : int or (rows, cols), optional
        Core size of a Dask chunk in pixels (default `default_chunk` of the margin:
        1024, up to 2048 for models with wide margins); rounded up to the
        model's step. Peak memory grows with it, not with the raster.
    margin : int, optional
        Context each side of a chunk; defaults to the model's receptive field,
        which makes the result identical to a whole-image run.
    tile : int, optional
        Model input size; fixed-size models set it themselves. Fully
        convolutional models take the whole chunk unless it is given.
    batch_size : int
        Tiles per model call when chunks are cut into tiles.
    confidence, probabilities : bool
        Also write the winning class's probability, or every class's, in percent.
    vector : bool
        Also write the mask's polygons as a GeoPackage.
    sieve : int
        A minimum mapping unit: regions of one class smaller than this many pixels of the
        mask (8-connected, on the input's grid) take the classes of the regions around them
        (`geoseg.sieve.sieve_array`). Polygons, areas and the preview follow the sieved mask;
        confidence and probabilities stay the model's. 0 keeps every pixel. Models of
        unlabeled regions refuse it.
    preview : bool
        Write a PNG of the image beside the mask, with a legend.
    overwrite : bool
        Replace existing outputs; without it an existing output is an error.
    normalization : dict, optional
        Override the card's normalisation, e.g. ``{"method": "percentile", "low": 2,
        "high": 98}`` (computed on the whole raster), ``{"method": "scale", "scale":
        1 / 10000}`` or ``{"method": "meanstd", "mean": [...], "std": [...]}``.
    resample : bool
        When the card gives a ``pixel_size`` (ground metres) and a georeferenced raster's pixels
        differ from it by more than 5%, read the raster resampled (bilinear) to the model's
        pixel size and bring the outputs back onto the input grid (nearest for the
        mask). A pixel's size is its sides in the CRS's units where those are ground metres (UTM),
        else its sides measured on the ellipsoid at the raster's centre (degrees, Web Mercator, any
        CRS whose areas stray over 1% from the ground's; `geoseg.raster.model_grid`). Rasters
        without a CRS are read as they are. Pixels over 2 times the model's are warned of, over 8
        times refused where that makes a grid of over 100 Mpx. False runs on the input's pixels
        as they are.
    precision : {"float32", "bfloat16"}
        Compute precision of a Keras model; the card's ``metrics.inference`` says
        what bfloat16 costs in IoU. Baselines ignore it.
    tta : {"none", "flips"}
        ``"flips"`` averages the model over the four flips of each chunk (4x the
        compute). Baselines ignore it.
    client : distributed.Client, optional
        Run the chunks on this Dask cluster; default is Dask's threads in-process.
    progress : callable, optional
        Called with the fraction done: the chunks are the first 0.9 (a raster of one chunk says
        0.9 only once its model has run), writing the outputs (mask, polygons, preview) the rest,
        and 1.0 comes once every file is in place. Raising from it stops the run at its next chunk
        and removes what it wrote.

    Returns
    -------
    SegmentResult

    Raises
    ------
    RasterReadError, BandError, InputError, OutputError, ModelError, TilingError, ClusterError
        Each a `geoseg.GeosegError` that names the value at fault and the fix (`ClusterError`: the
        ``client``'s scheduler or workers failed or cannot see the files). Nothing is left at the final
        output paths when a run fails or is interrupted: every file is written in
        a staging folder and all are moved into place when complete, the mask last.
    TypeError
        `input` or `output_dir` is not a path (None, a list of rasters: use `geoseg.survey`).

    Notes
    -----
    Memory is bounded by the chunk size and the number of Dask workers: the raster
    is never read whole. Outputs: ``STEM_mask.tif`` (uint8 COG, 255 = nodata,
    colour table, class names in the metadata), optionally
    ``STEM_confidence.tif``, ``STEM_probabilities.tif``, ``STEM_polygons.gpkg`` and
    ``STEM_preview.png``; QGIS styles ``STEM_mask.qml`` and ``STEM_polygons.qml``.
    """
    started = time.perf_counter()
    if not isinstance(input, (str, os.PathLike)):
        raise TypeError(f"segment takes one raster path. Received: {type(input).__name__}"
                        + ("; for several rasters use geoseg.survey" if isinstance(input, (list, tuple)) else ""))
    if not isinstance(output_dir, (str, os.PathLike)):  # None was pathlib's "expected str, bytes or os.PathLike"
        raise TypeError(f"segment takes an output folder path. Received: {type(output_dir).__name__}")
    if not str(input).strip():  # Path("") is the working folder: "/home/me: is a folder" (an unset variable?)
        raise InputError("the input is an empty path (an unset variable?); give a raster file.")
    check_options(dict(chunk=chunk, margin=margin, tile=tile, batch_size=batch_size, confidence=confidence,
                       probabilities=probabilities, vector=vector, sieve=sieve, preview=preview, overwrite=overwrite,
                       resample=resample, precision=precision, tta=tta, client=client, progress=progress))
    sieve = int(sieve)  # a numpy integer is no JSON
    info = inspect_raster(input)
    model_path = resolve_model(with_card(model, precision=precision, tta=tta))
    card = get_segmenter(model_path).card
    if sieve and card.output == "regions":
        raise InputError(f"model {card.name} draws unlabeled regions, whose mask values are colours, not classes: "
                         "--sieve (sieve=) would join regions that share a colour. Leave it out for this model.")
    work = model_grid(info, card.pixel_size) if resample else None  # the model's pixel size, or None
    _check_pixel_size(info, work, card)
    plan = plan_run(work or info, card, bands=bands, chunk=chunk, margin=margin, tile=tile, batch_size=batch_size)
    scaling = _index_scaling(model_path, card, info, plan)
    model_path = _calibrated(model_path, info, plan, scaling)
    if normalization is not None and model_path.startswith(BUILTIN):  # as evaluate, compare and the web page do
        log.warning("%s keeps its own normalisation (it reads ratios of the bands, or stretches each raster): "
                    "--normalize (normalization=) is for Keras models, and is ignored here", card.name)
        normalization = None
    norm = _normalization(card, normalization, info, plan) if scaling is None else \
        {"method": "scale", "scale": scaling[0], "offset": scaling[1]}
    _check_value_range(info, plan, card, norm if scaling is None else None)  # a baseline's indices: no range
    _check_untagged_fill(info, plan)
    _check_alpha_read(info, plan)
    _check_band_roles(info, plan, card)
    _check_crs_missing(info)
    _check_gcp_fit(info)
    stem = raster_stem(info.path)
    with new_folders_removed_on_error(output_dir):  # bad input or Ctrl-C from here on leave no empty folder
        paths = prepare_output_dir(
            output_dir,
            lambda d: output_paths(d, stem, confidence=confidence, probabilities=probabilities, vector=vector,
                                   preview=preview),
            overwrite,
            inputs=[info.path],
        )
        if client is not None:
            _check_workers_see(client, info.path, _model_files(str(model_path)))
            grid = work or info
            _check_worker_memory(client, info.path, (grid.height, grid.width), plan, card, str(model_path))
        run = uuid.uuid4().hex  # the chunks' model calls are this run's: an interrupt cancels those not yet made
        result = _build_graph(info, plan, str(model_path), confidence=confidence, probabilities=probabilities,
                              run=run,
                              normalization=norm, grid=work)
        log.info(
            "%s: %dx%d px, model %s, chunk %s, margin %d, %d chunks",
            info.path, info.width, info.height, card.name, plan.chunk, plan.margin, result.npartitions,
        )
        layers, layout = _layers(card, paths, confidence=confidence, probabilities=probabilities)
        with staging_dir(paths["mask"].parent) as tmp:
            tmp_paths = {name: tmp / p.name for name, (p, _, _) in layers.items()}
            datasets = create_outputs(work or info, {n: (tmp_paths[n], b, nd) for n, (_, b, nd) in layers.items()})
            try:
                describe_mask(datasets["mask"], card.classes)
                for name in ("confidence", "probabilities"):
                    if name in datasets:
                        _describe_percent(datasets[name], card, name)
                _store(result, _Writer(datasets, layout), client=client, run=run, source=info.path,
                       progress=progress if progress is None or not vector else
                       lambda f: progress(f * VECTOR_CHUNKS_SHARE / CHUNKS_SHARE))
            finally:
                for ds in datasets.values():
                    ds.close()
            cogs = {}
            for name, (final, _, _) in layers.items():  # every layer is written and checked before any appears
                staged = tmp_paths[name]
                if work is not None:  # back onto the input's grid
                    staged = staged.with_name(f"input-grid-{staged.name}")
                    regrid(tmp_paths[name], staged, info, resampling="nearest" if name == "mask" else "bilinear",
                           # an input without a mask or NaN has no nodata to match: no second read
                           valid=WindowSource(info.path, plan.bands, has_mask=info.has_mask)
                           if info.has_mask or np.dtype(info.dtype).kind == "f" else None)
                if name == "mask" and sieve:  # on the output's grid, so that PX counts its pixels
                    staged = _sieved(staged, info, card, sieve)
                cogs[final] = write_cog(staged, final, resampling="MODE" if name == "mask" else "AVERAGE")
            # the styles, polygons and preview too are made from the staged layers: all files appear, or none
            mask = cogs[paths["mask"]]
            if progress is not None:  # the polygons and preview may take long yet: not at 100% meanwhile
                progress(VECTOR_SPAN[0] if vector else CHUNKS_SHARE + (1 - CHUNKS_SHARE) / 2)
            classes, nodata = _class_table(card, mask, info)
            if not any(row["pixels"] for row in classes):
                log.warning("%s: no valid pixels (nodata or NaN everywhere), so the mask is all nodata. Check the "
                            "raster's nodata value and mask (gdalinfo)", info.path)
            write_qml(tmp / paths["mask"].with_suffix(".qml").name, card.classes, kind="raster")
            # the class names as GDAL reads them (QGIS's identify tool, ArcGIS): beside a mask of the same name, not
            # the staged raster's own sidecar
            sidecar = tmp / f"classes-{paths['mask'].name}.aux.xml"
            write_class_sidecar(sidecar, card.classes)
            if vector:  # its warnings and errors name the outputs as they will lie, not their staged copies
                staged = {str(cog): str(final) for final, cog in cogs.items()}
                with named_as_final("geoseg.vector", {**staged, str(tmp / paths["vector"].name): str(paths["vector"])}):
                    vectorize(mask, tmp / paths["vector"].name, confidence=cogs.get(paths.get("confidence")),
                              overwrite=True, progress=None if progress is None else lambda f: progress(
                                  VECTOR_SPAN[0] + (VECTOR_SPAN[1] - VECTOR_SPAN[0]) * f))
            if preview:
                from geoseg.preview import write_preview

                write_preview(info.path, mask, tmp / paths["preview"].name, card.classes, classes, plan.bands,
                              regions=card.output == "regions")
            extra = [paths["mask"].with_suffix(".qml")]
            if vector:
                extra += [paths["vector"], paths["vector"].with_suffix(".qml")]
            if preview:
                extra.append(paths["preview"])
            moves = [(cog, final) for final, cog in cogs.items()] + [(sidecar, class_sidecar(paths["mask"]))]
            # a style may be left out
            moves += [(tmp / final.name, final) for final in extra if (tmp / final.name).exists()]
            check_unchanged(info)  # every read of the input is done: it was one file throughout, or nothing moves
            with signals_held():  # Ctrl-C now waits until the set is whole and the earlier run's leftovers gone
                stale = stale_outputs(paths, stem, inputs=[info.path]) if overwrite else []
                # the sidecar of a confidence or probabilities raster replaced (statistics of its old pixels)
                stale += [p for name in ("confidence", "probabilities") if name in paths
                          for p in [class_sidecar(paths[name])] if p.is_file()]
                log_removed(move_all(sorted(moves, key=lambda move: move[1] == paths["mask"]),  # the mask, last,
                                     staging=tmp, remove=stale,  # marks a whole run
                                     refuse_existing=() if overwrite else list(paths.values())))
    if progress is not None:
        progress(1.0)
    seconds = time.perf_counter() - started
    placed = _georeferencing(paths["mask"])
    device = describe_device() if client is None else _workers_device(client)
    return SegmentResult(
        input=info.path,
        outputs={k: str(v) for k, v in paths.items()},
        model=card.name,
        model_version=card.version,
        classes=classes,
        nodata_pixels=nodata["pixels"],
        nodata_m2=nodata["area_m2"],
        width=info.width,
        height=info.height,
        seconds=round(seconds, 3),
        pixels_per_second=round(info.pixels / seconds, 1),
        device=device,
        peak_memory_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # after all the work
        plan={
            "chunk": list(plan.chunk),
            "margin": plan.margin,
            "tile": plan.tile,
            "batch_size": plan.batch_size,
            "bands": list(plan.bands),
            "normalization": norm or card.normalization,
            "overlap_factor": round(plan.overlap_factor(((work or info).height, (work or info).width)), 3),
            "sieve": sieve,
            "model_grid": None if work is None else {"pixel_size": card.pixel_size, "width": work.width,
                                                     "height": work.height},
            # a run with --tta flips --precision bfloat16 read the same as a plain one
            "precision": "float32", "tta": "none",
            **{k: v for k, v in parse_qsl(model_path.partition("?")[2]) if k in ("precision", "tta")},
        },
        output=card.output,
        **placed,
        styles={name: str(paths[name].with_suffix(".qml")) for name in ("mask", "vector")
                if name in paths and paths[name].with_suffix(".qml").is_file()},
    )


def _georeferencing(mask: Path) -> dict[str, Any]:
    """`SegmentResult`'s crs, transform and bounds of the written `mask`."""
    from geoseg.raster import _gcp_fit, open_quietly
    from geoseg.vector import _extent

    with open_quietly(mask) as ds:  # a photo's mask has no geotransform: no warning for it here
        gcps, gcp_crs = ds.gcps
        fit = _gcp_fit(gcps) if ds.crs is None and gcp_crs is not None else None
        if fit is not None:  # placed by ground control points: all None read as a photo's, while the areas were
            # in m² (h114); their best-fit bounds, and no transform to misread as exact
            return {"crs": gcp_crs.to_string(), "transform": None, "bounds": list(_extent(fit, ds.width, ds.height))}
        placed = not ds.transform.is_identity
        return {"crs": ds.crs.to_string() if ds.crs and placed else None,
                "transform": list(ds.transform)[:6] if placed else None,
                # around all four corners (ds.bounds takes two, and multiplies an Affine by `*`, which affine 3
                # deprecates: a PendingDeprecationWarning from geoseg's code on every rotated raster)
                "bounds": list(_extent(ds.transform, ds.width, ds.height)) if placed else None}


def _sieved(mask: Path, grid: RasterInfo, card: ModelCard, min_pixels: int) -> Path:
    """The staged `mask` with its specks under `min_pixels` filled, as a new staged file beside it."""
    from geoseg.sieve import sieve_mask

    started = time.perf_counter()
    out = mask.with_name(f"sieved-{mask.name}")
    ds = create_outputs(grid, {"mask": (out, 1, NODATA)})["mask"]
    try:
        describe_mask(ds, card.classes)
        changed = sieve_mask(mask, ds, min_pixels)
    finally:
        ds.close()
    log.info("sieve %d px: %d px (%.2f%%) changed in %.1f s", min_pixels, changed,
             100 * changed / max(1, grid.pixels), time.perf_counter() - started)
    return out


def _whole_raster_sample(info: RasterInfo, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """A decimated read of the whole raster (at most 1024 px a side) and its validity, for global statistics."""
    from geoseg.raster import read_preview

    # from the full-resolution pixels, never the file's overviews: those of a COG (or any gdaladdo'ed copy) are
    # resampled by whoever built them, so the same pixels gave other cuts and stretches with and without them
    return (read_preview(info.path, plan.bands, 1024, min_side=1, overviews=False),
            read_preview(info.path, plan.bands, 1024, min_side=1, mask=True, overviews=False))


UPSAMPLING_REFUSED = 8.0  # per side: a 4 m raster into a 0.5 m model is 64 times its pixels...
UPSAMPLED_REFUSED_PX = 100e6  # ...refused when that comes to a grid of over 100 Mpx (a 50 x 40 chip's 1.8 Mpx runs)
UPSAMPLING_WARNED = 2.0


def _check_pixel_size(info: RasterInfo, work: RasterInfo | None, card: ModelCard) -> None:
    """Warn of a raster far outside the imagery a card without a pixel size suits (`pixel_size_range`). With one,
    refuse a raster whose pixels are so much coarser than the model's that resampling it to them multiplies
    its pixels many times over: a 300 m Landsat scene into a 0.1 m model planned 5e12 px and grew to 6 GB
    before a word (h130); warn of a lesser factor, which the model was not made for either."""
    if work is None:
        suits = card.pixel_size_range
        sides = pixel_sides_m(info) if suits and not card.pixel_size else None
        if sides and not suits[0] / 4 <= max(sides) <= suits[1] * 4:  # well outside: a guide, not a rule
            log.warning("%s: its pixels are %.3g m, while model %s suits imagery of about %g-%g m pixels, so expect a "
                        "poor mask (a satellite scene through a model of aerial photos calls most of it one class). "
                        "Use a model made for this resolution (geoseg models), or imagery nearer it.", info.path,
                        max(sides), card.name, *suits)
        return
    factor = max(work.width / info.width, work.height / info.height)
    if factor <= UPSAMPLING_WARNED:
        return
    size = f"{info.width} x {info.height} px"
    what = (f"{info.path}: its pixels are {factor:.3g} times the {card.pixel_size:g} m of model {card.name}'s, so "
            f"resampling to them makes its {size} {work.width} x {work.height} px")
    if factor > UPSAMPLING_REFUSED and work.width * work.height > UPSAMPLED_REFUSED_PX:
        raise InputError(f"{what}, and the model was not made for imagery this coarse. Use imagery nearer "
                         f"{card.pixel_size:g} m, or pass --no-resample (segment, scene, flood, survey, evaluate and compare; "
                         "resample=False in Python) to run the model on the raster's own pixels.")
    log.warning("%s; the model sees each pixel %.3g times over, blurred, which it was not trained on. --no-resample "
                "(resample=False) runs it on the raster's own pixels.", what, factor)


def _normalization(card: ModelCard, override: dict | None, info: RasterInfo, plan: Plan) -> dict | None:
    """The normalisation for this raster: the override or the card's, percentiles resolved on the raster."""
    from geoseg.models.card import parse_normalization, resolve_normalization

    try:
        norm = card.normalization if override is None else parse_normalization(override, card.n_bands)
    except CardError as exc:  # an argument, not the card: `except InputError` around a call missed it (h133)
        raise InputError(str(exc)) from None
    if norm["method"] == "percentile":
        sample, valid = _whole_raster_sample(info, plan)
        norm = resolve_normalization(norm, sample, valid)
        log.info("%s: stretch %s", info.path, norm)
    return None if norm == card.normalization else norm


# |normalised value| that a model sees from no data in its own units: a 'scale' model maps its training data's
# whole range (8-bit 0..255 to -1..1 or 0..1, reflectance to about 0..1.5), a 'meanstd' one has tails of a few std
OUT_OF_RANGE = {"scale": 4.0, "meanstd": 8.0}


def _check_value_range(info: RasterInfo, plan: Plan, card: ModelCard, norm: dict | None) -> None:
    """Warn when the normalised pixels are far outside what the model was trained on.

    A 16-bit raster through a model of 8-bit RGB (scale 1/255) reaches values in the
    tens: the model still runs and calls nearly everything one class. One central window
    (at most 512 px a side) is read, so the check costs little on any raster.
    """
    method = (norm or card.normalization)["method"]
    if method not in ("scale", "meanstd"):  # stretches are clipped to 0..1; 'none' declares nothing
        return
    rows, cols = min(512, info.height), min(512, info.width)
    top, left = (info.height - rows) // 2, (info.width - cols) // 2
    block, valid = WindowSource(info.path, plan.bands, has_mask=info.has_mask)(slice(top, top + rows),
                                                                             slice(left, left + cols))
    values = np.abs(card.normalize(block, norm)[valid[..., 0]])
    own = card.normalization
    scale, offset = own.get("scale", 0.0), own.get("offset", 0.0)
    eight_bit = own["method"] == "scale" and abs(scale * 255 + offset - 1) < 0.05  # a card of 0..255 data
    raw = block[valid[..., 0]]
    if (norm is None and eight_bit and info.dtype.startswith("float") and raw.size
            and 0 < (top := float(np.percentile(raw, 99.5))) <= 1.5):
        # reflectance in 0..1 into a model of 0..255: one 255th of the range, nearly all one class (a flood map's
        # pre-event image all "water", so 72% of the scene "receded"), and no word
        log.warning(
            "%s: its %s pixels lie between 0 and about %.3g (reflectance in 0-1?), but %s was trained on 0-255 "
            "(scale %g), so they fill a 255th of its range: expect nearly one class. Pass --normalize scale:%.6g,%g "
            "(normalization={'method': 'scale', 'scale': %.6g, 'offset': %g} in Python), which maps 1 where the card "
            "maps 255, or convert it to 8 bits (gdal_translate -ot Byte -scale 0 1 0 255).", info.path, info.dtype,
            top, card.name, scale, scale * 255, offset, scale * 255, offset)
        return
    if norm is None and eight_bit and info.dtype == "int8" and raw.size and (low := int(raw.min())) < 0:
        # 0-255 stored signed reaches the card's -2..0 (scale 2/255, offset -1), never out of range: nothing said (h135)
        shifted = offset + 128 * scale
        log.warning(
            "%s: its int8 pixels reach %d, but %s was trained on 8-bit data of 0-255 (scale %g, offset %g), so its "
            "values fall below what the model saw. If it is 0-255 shifted by -128, pass --normalize scale:%g,%.6g "
            "(normalization={'method': 'scale', 'scale': %g, 'offset': %.6g} in Python), or convert it "
            "(gdal_translate -ot Byte -scale -128 127 0 255 IN.tif OUT.tif); if 0-255 was cast to signed (128-255 "
            "read as -128..-1), export it again as Byte from its source.", info.path, low, card.name, scale, offset,
            scale, shifted, scale, shifted)
        return
    if (norm is None and own["method"] == "scale" and info.dtype == "uint8"
            and abs(scale * 255 + offset) > OUT_OF_RANGE["scale"]):
        # the card itself takes 8-bit values far out (scale 1: a model of raw 0-255 values, a Rescaling layer inside):
        # its own range, not a raster in other units (h117)
        return
    if values.size and (high := float(np.percentile(values, 99))) > OUT_OF_RANGE[method]:
        declared = norm or card.normalization
        means = np.asarray(declared.get("mean", []), float)
        if (method == "meanstd" and means.size and np.all(np.abs(means) <= 1.5) and info.dtype == "uint8"
                and raw.size and float(np.percentile(raw, 99.5)) > 2):
            # statistics of 0-1 values (ImageNet's 0.485/0.229, a model scaled to 0-1 before them) on 8-bit data:
            # the card's units, not the raster's, which the advice below blamed (h117)
            stds = np.asarray(declared["std"], float)
            log.warning(
                "%s: %s's card gives means %s and standard deviations %s, statistics of values in 0-1, while this "
                "8-bit raster's reach 255, so after them its pixels reach %.0f: expect nearly one class. If the model "
                "was trained on 8-bit data divided by 255, pass --normalize meanstd:%s/%s (the card's statistics "
                "times 255), or put those in its card.", info.path, card.name, means.round(4).tolist(),
                stds.round(4).tolist(), high, ",".join(f"{m * 255:.4g}" for m in means),
                ",".join(f"{sd * 255:.4g}" for sd in stds))
            return
        fix = "pass --normalize (normalization= in Python) with a scale that maps its values as the card's does"
        top = float(np.percentile(raw, 99.5))
        if eight_bit and top > 0:  # a card of 8-bit data
            fix = (f"pass --normalize scale:{scale * 255 / top:.6g},{offset:g} (normalization={{'method': 'scale', "
                   f"'scale': {scale * 255 / top:.6g}, 'offset': {offset:g}}} in Python), which maps this raster's "
                   f"99.5th percentile ({top:g}) where the card maps 8-bit 255")
        log.warning(
            "%s: after the model's normalisation (%s) its %s pixels reach %.0f, far outside what %s was trained "
            "on, so expect nearly one class. The raster is probably in other units than the model's training data "
            "(16-bit reflectance into a model of 8-bit RGB?): convert it (for an 8-bit model: gdal_translate -ot "
            "Byte -scale IN.tif OUT.tif), or %s.", info.path, _describe(declared), info.dtype, high, card.name, fix)


FILL_SHARE = 0.5  # of a raster's outermost 2 px, 0 in every band, without a nodata value: warned about


def _check_untagged_fill(info: RasterInfo, plan: Plan) -> None:
    """Warn when a raster without nodata (or a mask) has a border that is 0 in every band: the fill gdalwarp
    or a mosaic leaves without -dstnodata, segmented as ground. A flood map's pre-event image called it water,
    and 180,000 px of it came out "receded" with the pre image's coverage at 100%. The outermost 2 px along the
    four edges are read, decimated to at most 1024 px along each: cheap on any raster. A warp's fill reaches
    the edge along most of it (84-100% of that ring in warps to other CRSs), ordinary imagery nowhere; strips
    64 px deep missed a warp to EPSG:4326 whose fill was 13% of them."""
    from rasterio._err import CPLE_BaseError  # GDAL's own errors; rasterio exports no public base for them
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    if info.has_mask or info.paletted:
        return
    edge = min(2, info.height, info.width)
    filled = {0: 0}  # the fill value: pixels of the edge at it in every band
    if np.dtype(info.dtype).kind in "ui":  # a white fill (255 of 8 bits) around a drone ortho, as a black one
        filled[int(np.iinfo(info.dtype).max)] = 0
    total = 0

    def count(ds, window, shape, cols=None) -> None:
        nonlocal total
        at = dict.fromkeys(filled)
        for band in plan.bands:  # one by one: a VRT's bands may be of several types
            data = ds.read(band, window=window, out_shape=shape)
            data = data if cols is None else data[:, cols]
            for value in at:
                at[value] = (data == value) if at[value] is None else at[value] & (data == value)
        for value, where in at.items():
            filled[value] += int(where.sum())
        total += next(iter(at.values())).size

    try:
        with open_quietly(info.path) as ds:
            for window in (Window(0, 0, info.width, edge), Window(0, info.height - edge, info.width, edge)):
                count(ds, window, (edge, max(1, info.width // max(1, info.width // 1024))))
            rows, cols = ds.block_shapes[0]
            if cols >= info.width and rows > 1 and not ds.overviews(1):
                # strips of many rows: a decimated read down the sides decoded every strip, the whole file (22 s
                # on 20000 px with 256-row strips); whole rows at the starts of a few strips give both sides
                n = max(2, min(64, int(32e6 // max(1, info.width * rows))))
                starts = sorted({int(r) // rows * rows for r in np.linspace(0, info.height - 1, n)})
                sides = np.r_[0:edge, info.width - edge:info.width]
                for top in starts:
                    count(ds, Window(0, top, info.width, 1), None, sides)
            else:
                for window in (Window(0, 0, edge, info.height), Window(info.width - edge, 0, edge, info.height)):
                    count(ds, window, (max(1, info.height // max(1, info.height // 1024)), edge))
    except (RasterioError, CPLE_BaseError):  # a damaged file: the run's own read names it and the window
        return
    for value, count_at in filled.items():
        if total and count_at / total > FILL_SHARE:
            log.warning("%s: %.0f%% of its edge is %d in every band, and it has no nodata value: the fill that a warp, "
                        "a mosaic or a drone ortho's export leaves? Those pixels are segmented as if they were ground (a "
                        "flood map counts them as water or dry land). Tag it: %s (or warp "
                        "with gdalwarp -dstnodata %d).", info.path, 100 * count_at / total, value,
                        gdal_edit(info.path, f"-a_nodata {value}"), value)
            return


def _check_alpha_read(info: RasterInfo, plan: Plan) -> None:
    """Warn when the model reads a band the file tags as alpha (transparency): an RGBA drone ortho through a
    four-band model (or --bands 1,2,3,4) had its alpha read as a band of data, with no word; `flood` said so."""
    tagged = [b for b in plan.bands if b in info.alpha_bands]
    for band in tagged:
        log.warning("%s: band %d, which the model reads as its band %d, is tagged alpha (transparency), not data: "
                    "pass --bands without it (the pixels it marks transparent stay nodata), or retag it (%s) if it "
                    "holds data", info.path, band, plan.bands.index(band) + 1,
                    gdal_edit(info.path, f"-colorinterp_{band} undefined"))


def _check_band_roles(info: RasterInfo, plan: Plan, card: ModelCard) -> None:
    """Warn where the file's band descriptions (or deliberate colour tags) say that a band read is not what the card
    says the model reads there: a Landsat stack (coastal, blue, green, red, nir...) went into threshold-nir as red,
    green, blue, NIR from its first four bands, and into the U-Net as coastal, blue, green, with no word (h121)."""
    if not card.band_names:
        return
    roles = band_roles(info)
    wrong = [(b, want, roles[b - 1]) for b, want in zip(plan.bands, card.band_names)
             if roles[b - 1] is not None and want in SPECTRAL_TAGS and roles[b - 1] != want]
    if not wrong:
        return
    said = "; ".join(f"band {b}, read as its {want}, is {got}" for b, want, got in wrong)
    found = [next((i + 1 for i, r in enumerate(roles) if r == want), None) for want in card.band_names]
    fix = (f"Its {', '.join(card.band_names)} are bands {','.join(map(str, found))}: pass --bands "
           f"{','.join(map(str, found))} (bands={found})" if None not in found else
           f"If the file is right, pass --bands (bands=) with its {', '.join(card.band_names)} bands in that order")
    log.warning("%s: model %s reads %s, but the file says otherwise (its band descriptions or colour tags): %s. %s.",
                info.path, card.name, ", ".join(card.band_names), said, fix)


GCP_RESIDUAL_PX = 1.0  # how far a ground control point may lie from the best-fit affine grid before it is said


def _check_gcp_fit(info: RasterInfo) -> None:
    """Warn when a raster placed by ground control points is curved: its polygons and areas take the points' best-fit
    affine transform, while GDAL and QGIS warp it by a polynomial (order 2 from 6 points): 9 points with 2-5 m of
    curvature put the polygons 3.2 m (6 px) off the mask as QGIS drew it, and nothing said so (h120)."""
    if info.crs is not None or len(info.gcps) < 4:
        return
    fit = info.map_georeferencing()[0]
    cols, rows = np.array([g.col for g in info.gcps]), np.array([g.row for g in info.gcps])
    xs, ys = fit @ (cols, rows)
    pixel = max(abs(fit.determinant) ** 0.5, 1e-12)
    off = np.hypot(xs - np.array([g.x for g in info.gcps]), ys - np.array([g.y for g in info.gcps])) / pixel
    if off.max() > GCP_RESIDUAL_PX:
        log.warning("%s: its %d ground control points lie up to %.1f px off one affine grid, which its polygons and "
                    "areas are placed by, so they may lie that far from the mask as GDAL and QGIS warp it (by a "
                    "polynomial). For polygons that match, warp it first (gdalwarp -r bilinear IN OUT) and segment OUT.",
                    info.path, len(info.gcps), float(off.max()))


def _check_crs_missing(info: RasterInfo) -> None:
    """Warn of a raster placed by a geotransform without a CRS: a GeoTIFF with a .tfw and a .prj (GDAL reads no .prj
    beside a GeoTIFF) gave a mask and polygons with no CRS and no m², and no word (h105)."""
    if info.crs is not None and info.transform.is_identity and not info.gcps:
        log.warning("%s: it has a CRS but no geotransform, so the mask and polygons are in pixel coordinates (as QGIS "
                    "shows the raster) and have no areas in m². Georeference it: %s", info.path,
                    gdal_edit(info.path, "-a_ullr ULX ULY LRX LRY"))
    if info.crs is None and not info.transform.is_identity and not info.gcps:
        sidecar = next((p for p in (Path(info.path).with_suffix(".prj"), Path(f"{info.path}.prj")) if p.is_file()),
                       None)
        log.warning("%s: it has a geotransform but no CRS%s, so the mask and polygons have none and no areas in m². "
                    "Give it one: %s", info.path,
                    f" (GDAL does not read the {sidecar.name} beside it)" if sidecar else "",
                    gdal_edit(info.path, f"-a_srs {sidecar if sidecar else 'EPSG:XXXX'}"))


def _describe(norm: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in norm.items())


def _index_scaling(ref: str, card: ModelCard, info: RasterInfo, plan: Plan) -> tuple[list, list] | None:
    """The file's band scales and offsets, for a built-in model that reads the raw values (the baselines' indices):
    their NDWI and NDVI are of reflectance. On Landsat Collection 2 (offset -0.2: reflectance 0 is stored as 7273)
    the stored counts squeezed NDWI about 3 times, and region-growing-nir called 85% of a scene water, against 38%
    of the same pixels unscaled (h121). Keras models get the stored values, as they were trained on them."""
    if not ref.startswith(BUILTIN) or card.normalization["method"] != "none":
        return None
    scaling = declared_scaling(info, plan.bands)
    if scaling is not None:
        log.info("%s: bands %s read with the file's scales %s and offsets %s (as QGIS shows them)", info.path,
                 list(plan.bands), *scaling)
    return scaling


def _calibrated(ref: str, info: RasterInfo, plan: Plan, scaling: tuple[list, list] | None = None) -> str:
    """Let a segmenter with a `calibrate` hook (classical thresholds) fix its parameters on the whole raster.

    It sees a decimated read (at most 1024 px a side), with `scaling` (per band scales, offsets) applied,
    and its parameters join the model reference, so every chunk, on any worker, uses the same ones.
    """
    from urllib.parse import urlencode

    segmenter = get_segmenter(ref)
    if not hasattr(segmenter, "calibrate") or "?" in ref:
        return ref

    sample, valid = _whole_raster_sample(info, plan)
    if scaling is not None:  # a new array: the sample is cached for the preview
        sample = sample.astype(np.float32) * np.float32(scaling[0]) + np.float32(scaling[1])
    params = segmenter.calibrate(sample, valid)
    log.info("%s calibrated on %s: %s", ref, info.path, params)
    return f"{ref}?{urlencode(params)}"


WORKER_WAIT_S = 60  # how long a run waits for a cluster without workers to get one
EMPTY_AGAIN_S = 5  # the wait of a later raster, once the cluster was found empty (a survey's rasters left)


def _model_files(ref: str) -> list[str]:
    """The files a model reference makes each Dask worker read: the bundle, its card, a legacy model's ?card=."""
    from urllib.parse import parse_qs

    if ref.startswith("builtin:"):
        return []
    path, _, query = ref.partition("?")
    files = [path, *parse_qs(query).get("card", [])]
    if path.endswith(".keras") or (path.endswith(".h5") and "card" not in parse_qs(query)):
        files.append(str(Path(path).with_suffix(".json")))
    return [f for f in files if os.path.isfile(f)]  # the ones this process reads: a worker must read them too


def _workers_device(client) -> str:
    """What the Dask workers ran on, for the result; "Dask workers" where they cannot be asked any more: a scheduler
    lost after the outputs were in place was a 30-line AttributeError traceback, and that raster was reported failed
    with its outputs written (h161)."""
    try:
        return "Dask workers: " + ", ".join(sorted(set(client.run(describe_device).values())))
    except Exception as exc:  # noqa: BLE001 - the run is done; only its description is lost
        log.debug("could not ask the Dask workers what they ran on: %s", first_line(exc))
        return "Dask workers"


def _check_workers_see(client, path: str, model_files: Sequence[str] = ()) -> None:
    """Every worker can read the input and the model's files: a model file that one worker could not see failed
    the raster midway, after other chunks were done, as "model file ... not found", and only where a chunk
    happened to go to that worker (h110)."""
    from geoseg.errors import ClusterError

    if getattr(client, "status", "running") != "running":  # a notebook's Client closed, or its cluster gone:
        # "AttributeError: 'NoneType' object has no attribute 'broadcast'" or "IOLoop is closed" from distributed
        # named by the raster, without 'passed in': after a lost scheduler the CLI's next input said 'the Dask
        # client passed in is connecting' to a user who passed none, and not which input failed (h110)
        raise ClusterError(f"{path}: not segmented: the Dask client is {client.status}, not running: its scheduler "
                           "is gone or the client was closed. Start the scheduler again and rerun (from Python: make "
                           "a new Client, or pass none to run on this machine).")
    paths = [path, *model_files]
    seen = _run_check(client, paths)
    if not seen:  # a scheduler without workers: the run waited forever without a word
        # found empty by an earlier raster of this run: a survey waited the whole 60 s for every raster left (h134);
        # only within one run of several rasters (rasters_in_turn): a user's next, unrelated run on the same Client
        # waited 5 s for workers that were still starting
        again = getattr(client, "_geoseg_found_empty", False)
        wait = min(WORKER_WAIT_S, EMPTY_AGAIN_S) if again else WORKER_WAIT_S
        log.warning("the Dask scheduler %s has no workers%s; waiting up to %d s for one",
                    getattr(client.scheduler, "address", "") or "", " still" if again else " yet", wait)
        try:
            client.wait_for_workers(1, timeout=wait)
        except TimeoutError:
            if getattr(client, "_geoseg_in_turn", 0):
                client._geoseg_found_empty = True
            raise InputError(f"{path}: not segmented: the Dask scheduler {getattr(client.scheduler, 'address', '') or ''} "
                             f"has no workers (none came in {wait} s). Start some (dask worker ADDRESS) or run with "
                             "--workers N instead of --scheduler.") from None
        seen = _run_check(client, paths)
    client._geoseg_found_empty = False
    blind = [worker for worker, found in seen.items() if found[0] is None]
    if blind:
        raise InputError(
            f"{path}: Dask worker(s) {', '.join(blind)} cannot see this file. Put the raster on a path "
            "every worker can read (shared disk) or run without --scheduler."
        )
    for i, model_file in enumerate(model_files, start=1):
        blind = [worker for worker, found in seen.items() if found[i] is None]
        if blind:
            raise InputError(
                f"{model_file}: Dask worker(s) {', '.join(blind)} cannot see this model file. Put the model on a "
                "path every worker can read (shared disk; GEOSEG_MODEL_PATH may name it) or run without --scheduler."
            )
    # a node's stale copy at the same path: 12% of the mask differed, exit 0 (h134); one of the same size (an
    # uncompressed GeoTIFF of the same shape) or in a GDAL path's file (/vsizip/, GPKG:) passed a check of sizes alone
    here = _files_here(paths)
    for i, (given, mine) in enumerate(zip(paths, here)):
        if not isinstance(mine, list):  # unreadable here, or a GDAL path of no local file (https://)
            continue
        other = {worker: found[i] for worker, found in seen.items() if isinstance(found[i], list) and found[i] != mine}
        if other:
            sizes = ", ".join(f"{worker}: {n[0]:,} bytes{', other contents' if n[0] == mine[0] else ''}"
                              for worker, n in other.items())
            raise InputError(
                f"{given}: Dask worker(s) see another file at this path ({sizes}; here {mine[0]:,} bytes): a copy of "
                f"another version on their machines? Give every worker the same {'model' if i else 'raster'} (a "
                "shared disk), or run without --scheduler.")


# A Dask worker's peak RSS (one thread, the default model in float32), by the pixels of the largest block it runs
# (chunk plus a margin each side): `geoseg segment --scheduler` of a 2600² RGB mosaic (256² for the smallest) on a
# 2-core AMD EPYC with AVX-512 BF16, VmHWM of a fresh `dask worker --nthreads 1 --no-nanny` (h142): chunk 64 (640²
# blocks) 1.13 GB, 128 the same, 512 (1088²) 1.43 GB, 1024 (1600²) 2.19 GB, 2048 (2624²) 3.33 GB; a whole run in one
# process peaked at 3.55 GB at 2048 (README's Performance), and other CPUs and builds differ: the estimate is 10% up. Past the last
# point it grows by the mean slope (339 B/px), not the last one's (264).
WORKER_PEAK = {"landcover-unet": ((409_600, 1.133e9), (1_183_744, 1.432e9), (2_560_000, 2.189e9),
                                  (6_885_376, 3.330e9))}
WORKER_PEAK_MARGIN = 1.1  # other CPUs, other TensorFlow builds
WORKER_FLOOR = {"landcover-unet": 1.05e9}  # below this no chunk fits: TensorFlow and the model alone, 7% under 1.13
# The built-in baselines (numpy, scipy, scikit-image; no TensorFlow), the same way (h161): threshold 0.15/0.22/0.39 GB
# at chunk 512/1024/2048, region-growing 0.16/0.24/0.42, edges-watershed 0.20/0.30/0.62, watershed-regions
# 0.20/0.33/0.62: the heaviest of them, by the pixels of their blocks (margin 16). Under a tenth of the default
# model's, and no floor: a 1 GB worker runs them at chunk 2048. The -nir ones read a band more (4 floats a pixel).
BASELINE_PEAK = ((295_936, 0.204e9), (1_115_136, 0.329e9), (4_326_400, 0.616e9))
# Another Keras model (one brought, or trained): TensorFlow's own memory in a worker, the model's weights twice
# (read, and in use), and per pixel of the block a few float32 copies of the largest tensor its graph makes
# (`_largest_per_px`: a plain U-Net's full-resolution concatenation) and what reading and writing it takes. Fitted
# (h161) to plain U-Nets of build_unet (depth 4, margin 64, VmHWM as above): filters=8 (largest 24 values a pixel,
# 2 MB of weights) 1.08/1.32/2.37 GB at chunk 512/1024/2048 (estimated 1.08/1.36/2.41), filters=64 (192 a pixel,
# 126 MB) over 2.12 GB at chunk 512 (2.15); the default model (32 a pixel, 27 MB) it puts at 1.17/1.48/3.79 GB
# for its measured 1.13/1.43/3.33: over, not under. The sum of all convolution outputs fitted neither U-Net.
KERAS_RUNTIME = 0.95e9
KERAS_BYTES_PER_PX = 20
KERAS_COPIES_OF_LARGEST = 3 * 4  # bytes a value a pixel of the largest tensor: three float32 copies
_LARGEST: dict = {}  # model key -> (values a pixel of its largest tensor, bytes of weights), or None


def _memory_fraction(kind: str) -> float:
    """Dask's `distributed.worker.memory.{kind}` (pause 0.8, terminate 0.95), as this process's configuration says."""
    import dask

    default = {"pause": 0.8, "terminate": 0.95}[kind]
    value = dask.config.get(f"distributed.worker.memory.{kind}", default)
    return float(value) if value else 1.0


def _paused_text(workers: dict) -> str:
    """'ADDRESS (memory 2.2 GB of its 2.5 GB limit), ...' of the paused ones of the scheduler's `workers`."""
    said = []
    for address, info in workers.items():
        if info.get("status") == "paused":
            memory, limit = (info.get("metrics") or {}).get("memory"), info.get("memory_limit")
            said.append(f"{address} (memory {memory / 1e9:.1f} GB of its {limit / 1e9:.1f} GB limit)"
                        if memory and limit else address)
    return ", ".join(said)


def _largest_per_px(model_ref: str) -> tuple[float, int] | None:
    """(values per input pixel of the largest tensor a Keras model's graph makes, bytes of its weights), from its
    graph traced on one 256² input (nothing is computed; 2-7 s, once a process per model), or None where it
    cannot be traced."""
    key = str(model_ref)
    if key in _LARGEST:
        return _LARGEST[key]
    found = None
    try:
        import tensorflow as tf

        segmenter = get_segmenter(model_ref)
        model = getattr(getattr(segmenter, "segmenter", segmenter), "model", None)  # under FlipAveraged too
        if model is not None:
            side = 256
            graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
                tf.TensorSpec((1, side, side, segmenter.card.n_bands), tf.float32)).graph
            largest = max((int(np.prod(o.shape)) for op in graph.get_operations()
                           if op.type not in ("Const", "Placeholder", "ReadVariableOp", "VarHandleOp")
                           for o in op.outputs if o.dtype.is_floating and o.shape.is_fully_defined()), default=0)
            weights = sum(int(np.prod(w.shape)) * np.dtype(getattr(w, "dtype", "float32")).itemsize
                          for w in model.weights)
            found = (largest / side**2, weights)
    except Exception as exc:  # noqa: BLE001 - a model TensorFlow cannot trace at a fixed size: no estimate
        log.debug("%s: no memory estimate for Dask workers: %s", key, first_line(exc))
    _LARGEST[key] = found
    return found


def worker_peak(card: ModelCard, block_px: int, model_ref: str | None = None) -> float | None:
    """The estimated peak memory (bytes) of a one-thread Dask worker running `card`'s model on blocks of `block_px`
    pixels: measured curves for the default model and the built-in baselines, for another Keras model (given its
    `model_ref`) an estimate from its weights and its convolutions' outputs; None where there is none."""
    points = WORKER_PEAK.get(card.name)
    if model_ref is not None and str(model_ref).startswith(BUILTIN):
        points = BASELINE_PEAK
    elif points is None:
        if model_ref is None:
            return None
        traced = _largest_per_px(model_ref)
        if traced is None:
            return None
        per_px, weights = traced
        per_block_px = KERAS_BYTES_PER_PX + per_px * KERAS_COPIES_OF_LARGEST
        return (KERAS_RUNTIME + 2 * weights + block_px * per_block_px) * WORKER_PEAK_MARGIN
    xs, ys = zip(*points)
    if block_px <= xs[-1]:
        peak = float(np.interp(block_px, xs, ys))
    else:
        peak = ys[-1] + (block_px - xs[-1]) * (ys[-1] - ys[0]) / (xs[-1] - xs[0])
    return peak * WORKER_PEAK_MARGIN


def _block_px(shape: tuple[int, int], plan: Plan) -> int:
    """Pixels of the largest block the model is given at once: a chunk with its margins, or a batch of tiles."""
    if plan.tile is not None:
        return plan.tile * plan.tile * plan.batch_size
    rows, cols = (min(c, n) + 2 * plan.margin for c, n in zip(plan.chunk, shape))
    return rows * cols


def _said_once(client, key) -> bool:
    """Whether to say what `key` stands for: always, except in a run of several rasters (`rasters_in_turn`: a
    survey, `geoseg segment a.tif b.tif`) where it was said for an earlier one. A survey of 40 rasters on
    small workers repeated the same memory warning 40 times (h161)."""
    if not getattr(client, "_geoseg_in_turn", 0):
        return True
    said = getattr(client, "_geoseg_said", None)
    if said is None:
        said = client._geoseg_said = set()
    if key in said:
        return False
    said.add(key)
    return True


def _check_worker_memory(client, path: str, shape: tuple[int, int], plan: Plan, card: ModelCard,
                         model_ref: str | None = None) -> None:
    """Refuse workers whose memory limit no chunk fits in, and warn of those under what this chunk needs: a 1 GB
    worker with the default model was killed by its nanny and restarted, chunk after chunk, with only dask's
    lines about it, until the raster failed (h142). `model_ref` (resolve_model's) gives the estimate of a model
    other than the default: a baseline's, or a brought Keras model's from its size; only the default model, whose
    peaks were measured, is ever refused. Warnings are given once for a run of several rasters."""
    workers = client.scheduler_info().get("workers") or {}
    terminate, pause = _memory_fraction("terminate"), _memory_fraction("pause")
    paused = frozenset(a for a, info in workers.items() if info.get("status") == "paused")
    if paused and _said_once(client, ("paused", paused)):
        log.warning("%s: Dask worker(s) %s are paused: their memory is over the %.0f%% of their limit at which dask "
                    "pauses a worker (the model's memory stays with a worker after a run), and they run no chunk "
                    "until it falls. Restart them, with a higher --memory-limit, or pass a smaller --chunk.",
                    path, _paused_text(workers), pause * 100)
    limits = {address: info.get("memory_limit") for address, info in workers.items() if info.get("memory_limit")}
    if not limits:
        return
    gb = lambda n: f"{n / 1e9:.1f} GB"  # noqa: E731 - decimal, as dask worker --memory-limit reads them

    def need(chunk: int | tuple[int, int], threads: int = 1) -> float | None:
        sized = Plan(chunk if isinstance(chunk, tuple) else (chunk, chunk), plan.margin, plan.tile, plan.batch_size,
                     plan.bands)
        # each further thread holds a block read and its result
        peak = worker_peak(card, _block_px(shape, sized), model_ref)
        return None if peak is None else peak + (threads - 1) * _block_px(shape, sized) * 32

    threads = client.nthreads()
    here = need(plan.chunk)
    floor = WORKER_FLOOR.get(card.name)  # the default model's: others are warned of, never refused
    # workers of a LocalCluster (--workers N, or one of the caller's) share this machine's memory: fewer of them each
    # get more; `dask worker --memory-limit` and "without --scheduler" say nothing to them
    local = type(getattr(client, "cluster", None)).__name__ == "LocalCluster"
    fewer = local and here and len(limits) > 1  # one worker of this machine has its memory already (h153)
    more = (f"start fewer workers (--workers; in Python LocalCluster(n_workers=..., memory_limit=...)), each with at "
            f"least {-(-here // (pause * 1e9)):.0f} GB for chunk {max(plan.chunk)}" if fewer else
            "run without a cluster (leave out --workers), which gives the model this machine's memory" if local
            else None)
    if floor is not None:
        small = {a: n for a, n in limits.items() if n * terminate < floor}
        if small:
            raise ClusterError(
                f"{path}: not segmented: Dask worker(s) {', '.join(f'{a} (memory limit {gb(n)})' for a, n in small.items())} "
                f"cannot run model {card.name} at any chunk: TensorFlow and the model alone take over {gb(floor)}, "
                f"and dask kills a worker at {terminate:.0%} of its limit. "
                + (f"These are workers of this machine: {more}, or run without a cluster." if fewer else
                   f"It is this machine's one worker: {more}." if local else
                   f"Restart them with more memory (dask worker --memory-limit {-(-here // (pause * 1e9)):.0f}GB for "
                   f"chunk {max(plan.chunk)}), or run without --scheduler."))
    if here is None:
        return
    short = {a: n for a, n in limits.items() if n * pause < need(plan.chunk, threads.get(a, 1))}
    if not short:
        return
    if not _said_once(client, ("memory", card.name, plan.chunk, frozenset(short.items()))):  # not model_ref: a
        # baseline's carries the thresholds of each raster
        return
    smallest = min(short.values())
    fits = [c for c in (1024, 512, 256) if c < max(plan.chunk) and need(c, max(threads.values())) <= smallest * pause]
    log.warning("%s: Dask worker(s) %s may run out of memory: model %s at chunk %d peaks near %s a worker, and dask "
                "pauses a worker at %.0f%% of its memory limit (it then runs nothing more) and kills it at %.0f%%. %s"
                "%s.", path,
                ", ".join(f"{a} (memory limit {gb(n)})" for a, n in short.items()), card.name, max(plan.chunk),
                gb(here), pause * 100, terminate * 100,
                f"Pass --chunk {fits[0]} (near {gb(need(fits[0]))}), or " if fits else "Pass a smaller --chunk, or ",
                more or f"give the workers more memory (dask worker --memory-limit {-(-here // (pause * 1e9)):.0f}GB)")


@contextmanager
def rasters_in_turn(client) -> Iterator[None]:
    """Around several rasters run in turn on one Dask `client` (a survey, `geoseg segment a.tif b.tif`): once one
    of them found the cluster without workers, the ones after it wait `EMPTY_AGAIN_S` for a worker, not
    `WORKER_WAIT_S`. Outside of it every run waits the whole time."""
    if client is None:
        yield
        return
    client._geoseg_in_turn = getattr(client, "_geoseg_in_turn", 0) + 1
    try:
        yield
    finally:
        client._geoseg_in_turn -= 1
        if not client._geoseg_in_turn:
            client._geoseg_found_empty = False
            client._geoseg_said = set()  # the next run says its warnings again


def _run_check(client, paths: list[str]) -> dict[str, list]:
    """`_files_here(paths)` on every worker. A worker of another geoseg (one without this function) failed the run
    with a 66-line AttributeError traceback (h134)."""
    try:
        return client.run(_files_here, paths)
    except Exception as exc:  # distributed hands a worker's unpickling failure back as a bare Exception of its text
        text = f"{type(exc).__name__}: {first_line(exc)}"
        if not any(sign in text for sign in ("AttributeError", "ImportError", "ModuleNotFoundError",
                                             "Can't get attribute")):
            raise
        import geoseg

        raise ClusterError(f"the Dask workers could not run this geoseg's check of its files ({text}): do they run "
                           f"another geoseg than this machine's ({geoseg.__file__})? Install the same geoseg on every "
                           "worker, or run without --scheduler.") from None


SAMPLES = 16  # blocks of a file read to tell two copies of one size apart
SAMPLE_BYTES = 4096


def _opens_here(path: str) -> bool:
    """Whether this process opens `path` as a raster: a file overwritten meanwhile by one GDAL cannot read is still
    a readable file (`_files_here`), and was put down to "a worker that joined" on a --workers run."""
    if _files_here([path])[0] is None:
        return False
    try:
        with open_quietly(path):
            return True
    except Exception:  # noqa: BLE001 - any failure means it does not open here either
        return False


def _files_here(paths: list[str]) -> list[list | bool | None]:
    """Per path, what this process (a Dask worker) finds there: [size, digest of samples of its bytes] of the file
    (of a GDAL path's file, such as the .zip of /vsizip/...), True for a GDAL path it opens that names no file here
    (https://...), None for one it cannot read."""
    found: list[list | bool | None] = []
    for path in paths:
        if not is_gdal_path(path):
            found.append(_sampled(path) if os.path.isfile(path) else None)
            continue
        try:
            with open_quietly(path):
                pass
        except Exception:  # noqa: BLE001 - any failure means this worker cannot read it
            found.append(None)
            continue
        file = gdal_file(path)
        found.append((_sampled(file) or True) if file else True)
    return found


def _sampled(path: str) -> list | None:
    """[size, digest of `SAMPLES` blocks spread over the file], or None where this process cannot read it: opened,
    not asked of os.access, which said no to a worker that could read it (one holding CAP_DAC_READ_SEARCH)."""
    import hashlib

    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            digest = hashlib.blake2b(digest_size=16)
            for k in range(SAMPLES + 1):
                file.seek(max(0, size - SAMPLE_BYTES) * k // SAMPLES)
                digest.update(file.read(SAMPLE_BYTES))
    except OSError:
        return None
    return [size, digest.hexdigest()]


def _build_graph(info: RasterInfo, plan: Plan, model_ref: str, *, confidence: bool, probabilities: bool,
                 normalization: dict | None = None, grid: RasterInfo | None = None, run: str | None = None) -> da.Array:
    shape = ((grid or info).height, (grid or info).width)
    chunks = tuple(chunk_lengths(n, c, plan.margin) for n, c in zip(shape, plan.chunk))
    card = get_segmenter(model_ref).card
    out_bands = 1 + int(confidence) + card.n_classes * int(probabilities)
    return windowed_map(
        segment_chunk, WindowSource(info.path, plan.bands, has_mask=info.has_mask, grid=grid), shape, chunks,
        margin=plan.margin, out_bands=out_bands, model_ref=model_ref, tile=plan.tile, batch_size=plan.batch_size,
        confidence=confidence, probabilities=probabilities, normalization=normalization, run=run,
    )


def _layers(card: ModelCard, paths: dict[str, Path], *, confidence: bool, probabilities: bool):
    layers = {"mask": (paths["mask"], 1, NODATA)}
    layout = {"mask": slice(0, 1)}
    band = 1
    if confidence:
        layers["confidence"] = (paths["confidence"], 1, NODATA)
        layout["confidence"] = slice(band, band + 1)
        band += 1
    if probabilities:
        layers["probabilities"] = (paths["probabilities"], card.n_classes, NODATA)
        layout["probabilities"] = slice(band, band + card.n_classes)
    return layers, layout


def _describe_percent(ds, card: ModelCard, name: str) -> None:
    if name == "confidence":
        ds.set_band_description(1, "confidence of the winning class (%)")
    else:
        for c in card.classes:
            ds.set_band_description(c.id + 1, f"probability of {c.name} (%)")
        if ds.count > 1:  # 3 or 4 byte bands are RGB(A) to GDAL, and QGIS drew the probabilities as a colour image
            from rasterio.enums import ColorInterp

            ds.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * (ds.count - 1)
    ds.units = ("%",) * ds.count  # the band's unit, which QGIS and gdalinfo show; the tag alone was geoseg's (h144)
    ds.update_tags(UNITS="percent", NODATA_MEANS="no input data")
