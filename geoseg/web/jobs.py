"""Background segmentation jobs for the web app: a thread pool, per-job folders, expiry."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.errors import InputError, catch_warnings
from geoseg.workflows.common import ThreadWarnings

__all__ = ["Cancelled", "Job", "JobManager"]

log = logging.getLogger(__name__)

# the regions a web job makes polygons of at most: a 1000^2 checkerboard (500,000 regions, a 27 KB upload) cost
# 2.5 GB and 46 s; the default model makes about 1,200 a megapixel of the Dubai scenes. Past it, none are made.
MAX_POLYGONS = 100_000


class Cancelled(Exception):
    """Raised in a job asked to stop (DELETE /api/jobs/ID) at its next model or progress report."""


@dataclass
class Job:
    """One upload and the models run on it."""

    id: str
    folder: Path
    name: str
    models: list[str]
    has_label: bool
    precision: str = "float32"
    tta: str = "none"
    sieve: int = 0  # minimum region in pixels, for models of classes
    normalize: str = ""  # --normalize's syntax, for the Keras models; empty: each card's own
    keras: list[bool] = field(default_factory=list)  # per model: a bundle (tta, precision, normalize apply)
    regions: list[bool] = field(default_factory=list)  # per model: unlabeled regions (the sieve does not apply)
    label_name: str | None = None  # the label upload's file name, as messages call it
    created: float = field(default_factory=time.time)
    ended: float | None = None  # when it finished: results live `ttl` seconds from then, not from the upload
    status: str = "queued"
    progress: float = 0.0
    running: int | None = None  # the index in `models` of the model running now
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    polled: float = field(default_factory=time.time)  # when the page (or a script) last asked about it
    cancel: bool = False  # asked to stop while it runs: it does at its next model or progress report
    future: Any = field(default=None, repr=False, compare=False)  # the pool's, to take a queued job off the queue
    abandon_after: float | None = None  # seconds unpolled after which it stops (its page was closed): the manager's

    def check(self) -> None:
        """Stop here if a DELETE asked to, or nobody has asked about the job for `abandon_after` seconds: a tab closed
        mid-job held a worker until the job ended."""
        if not self.cancel and self.abandon_after is not None and time.time() - self.polled > self.abandon_after:
            self.cancel = True
            self.error = (f"nobody asked about this job for {self.abandon_after:.0f} s while it ran (was its page "
                          "closed?), so it was stopped. Upload the image again.")
        if self.cancel:
            raise Cancelled(self.id)

    def to_dict(self) -> dict[str, Any]:
        """What GET /api/jobs/ID returns (file URLs, never paths)."""
        return {"id": self.id, "name": self.name, "label_name": self.label_name, "models": self.models,
                "precision": self.precision,
                "tta": self.tta, "sieve": self.sieve, "normalize": self.normalize, "keras": self.keras,
                "regions": self.regions, "status": self.status, "running": self.running,
                "progress": round(self.progress, 3), "error": self.error, "warnings": self.warnings,
                "result": self.result,
                # list(): a copy taken at once; the comprehension over the dict itself raised "dictionary changed size
                # during iteration" (a 500 to the page, which stopped polling) when the worker added a file meanwhile
                "files": {k: f"/jobs/{self.id}/files/{k}" for k in list(self.files)}}


class JobManager:
    """Runs jobs on a small thread pool so that requests stay fast; forgets them after `ttl` seconds."""

    def __init__(self, root: Path, *, workers: int = 2, ttl: float = 3600.0, abandon_after: float = 180.0) -> None:
        self.root, self.ttl, self.workers = Path(root), ttl, workers
        # a job nobody has asked about for this long (its tab was closed) is dropped from the queue, or stopped while
        # it runs: it held a place, and then a worker, for nobody. Not a minute: Chrome polls from a hidden tab once a
        # minute
        self.abandon_after = abandon_after
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, Job] = {}
        self.expired: dict[str, None] = {}  # the ids of the last jobs deleted, so that their links say so
        self.lock = threading.Lock()
        self.reserved = 0  # uploads being saved and checked, which a queue limit counts as waiting
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geoseg-job")
        # expiry ran only on requests: an idle server kept its last hour of uploads and results (90 MB after a
        # burst of 42 jobs) until someone called it
        self.stopped = threading.Event()
        threading.Thread(target=self._expire_every, name="geoseg-expiry", daemon=True).start()

    def _expire_every(self) -> None:
        while not self.stopped.wait(max(1.0, min(60.0, self.ttl / 4))):
            try:
                self.expire()
            except Exception:  # noqa: BLE001 - a folder that cannot be removed now may be next time
                log.exception("expiring old jobs failed")

    def new_folder(self) -> tuple[str, Path]:
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir()
        return job_id, folder

    def submit(self, job: Job) -> Job:
        with self.lock:
            self.jobs[job.id] = job
            job.abandon_after = self.abandon_after
            job.future = self.pool.submit(self._run, job)
        return job

    def cancel(self, job: Job) -> bool:
        """Stop `job`: one waiting for a worker at once (off the queue, its files deleted), one running at its next
        model or progress report (then "cancelled" too). False for a job that ended "done" or "failed"."""
        with self.lock:
            if job.status == "running":
                job.cancel = True
                return True
            if job.status != "queued":
                return job.status == "cancelled"  # asked twice (the Cancel button, then the page left): no error
            self._drop(job)
        _remove_files(job)
        return True

    def _drop(self, job: Job, error: str | None = None) -> None:  # with the lock held; _remove_files after it
        if job.future is not None:
            job.future.cancel()  # frees the pool's queue of it; _run also skips a job no longer queued
        job.error, job.running, job.ended = error, None, time.time()
        job.status = "cancelled"

    def _abandoned(self, job: Job, now: float) -> bool:  # with the lock held
        if job.status != "queued" or now - job.polled <= self.abandon_after:
            return False
        self._drop(job, f"nobody asked about this job for {self.abandon_after:.0f} s while it waited for a worker "
                        "(was its page closed?), so it was dropped. Upload the image again.")
        return True

    def reserve(self, limit: int) -> bool:
        """Hold a place for an upload being saved and checked, unless a free worker and `limit` places in the
        queue are all taken. `release` it once the job is submitted or refused: counted only when submitted, eight
        uploads at once all passed a limit of one; counted as waiting whether or not a worker was free, four
        uploads to an idle server of two workers and a queue of three were one too many."""
        with self.lock:
            running = sum(j.status == "running" for j in self.jobs.values())
            if self.reserved + self._queued() >= limit + max(0, self.workers - running):
                return False
            self.reserved += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.reserved -= 1

    def waiting(self, before: Job | None = None) -> int:
        """How many jobs wait for a worker (that were submitted before `before`)."""
        with self.lock:
            return self._queued(before)

    def _queued(self, before: Job | None = None) -> int:  # with the lock held
        return sum(j.status == "queued" and (before is None or j.created < before.created) for j in self.jobs.values())

    def describe(self, job: Job) -> dict[str, Any]:
        """What GET /api/jobs/ID returns: the job, the jobs waiting ahead of a queued one, and the seconds
        before the files of an ended one are deleted (the page then says so, not a silently failed download)."""
        extra: dict[str, Any] = {}
        with self.lock:  # the status and the count ahead at one time: read apart, "running" came with "ahead": 1
            described = job.to_dict()
            if job.status == "queued":
                extra["ahead"] = self._queued(before=job)
            if job.status == "running" and job.cancel:
                extra["cancelling"] = True  # it stops at its next model or progress report
            if job.ended is not None:
                extra["expires_in"] = max(0.0, round(self.ttl - (time.time() - job.ended), 1))
        return {**described, **extra}

    def stop(self) -> int:
        """Cancel the jobs that wait and no longer wait for those running; return how many run."""
        self.stopped.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self.lock:
            return sum(j.status == "running" for j in self.jobs.values())

    def get(self, job_id: str) -> Job | None:
        self.expire()
        with self.lock:
            return self.jobs.get(job_id)

    def expire(self) -> None:
        """Delete jobs (and their files) older than the time to live."""
        now = time.time()
        with self.lock:
            # an abandoned job off the queue now, not when a worker reaches it: its place goes to the next upload
            dropped = [j for j in list(self.jobs.values()) if self._abandoned(j, now)]
            old = [j for j in self.jobs.values()
                   if j.status in ("done", "failed", "cancelled") and now - (j.ended or j.created) > self.ttl]
            for job in old:
                del self.jobs[job.id]
                self.expired[job.id] = None
            for job_id in list(self.expired)[:-10_000]:  # a long-running server forgets the oldest
                del self.expired[job_id]
        for job in dropped:
            _remove_files(job)
        for job in old:
            shutil.rmtree(job.folder, ignore_errors=True)

    def _run(self, job: Job) -> None:
        from geoseg.errors import GeosegError

        with self.lock:
            if job.status != "queued":  # cancelled while it waited, after the pool had taken it up
                return
            if self._abandoned(job, time.time()):
                dropped = True
            else:
                dropped, job.status = False, "running"
        if dropped:
            _remove_files(job)
            return
        caught = ThreadWarnings(leave_out=("geoseg.web",))  # what the log tells a command-line user, the page too
        logging.getLogger("geoseg").addHandler(caught)
        failure = None
        try:
            run_job(job)
        except Exception as exc:  # reported to the page; the server carries on
            failure = exc
        finally:
            logging.getLogger("geoseg").removeHandler(caught)
        status, error = ("done", None) if failure is None else ("failed", str(failure))
        if failure is not None and not isinstance(failure, Cancelled) and disk_full(failure):
            # "Free some disk space or pick another output folder", the command line's advice, is nothing a web
            # user can do: the disk is the server's, and its administrator needs to know which (h170)
            log.warning("job %s failed: the disk of %s is full (%s)", job.id, job.folder, failure)
            error = DISK_FULL
        elif failure is not None and not isinstance(failure, (GeosegError, Cancelled)):
            # logged once the handler is gone: "job ... failed" was shown on the page as a warning
            log.error("job %s failed", job.id, exc_info=failure)
            error = "the server failed on this job; its log has the details."
        if not job.cancel:  # everything first, the status last: a poll that sees "done" stops polling
            job.warnings = list(dict.fromkeys(_for_user(m, job) for m in [*caught.messages, *job.warnings]))
            job.error = None if error is None else _for_user(error, job)
            if status == "done":  # no model runs any more ("running": 1 beside "done"); a failure keeps its model's
                job.progress, job.running = 1.0, None
        with self.lock:  # stopped (Cancelled), or asked to as it ended: a 202 to DELETE always ends "cancelled"
            cancelled = job.cancel
            if not cancelled:
                job.ended = time.time()
                job.status = status
        if cancelled:
            _remove_files(job)  # the partial results too, before a poll sees "cancelled"
            with self.lock:
                self._drop(job, job.error)  # None, or why an unpolled job was stopped


DISK_FULL = ("this server's disk is full, so the job could not finish. Try again later, or tell the server's "
             "administrator.")


def disk_full(exc: BaseException | str) -> bool:
    """Whether a failure (or its message) is a full disk: ENOSPC or EDQUOT, or geoseg's advice to free disk space."""
    import errno

    seen = exc
    while isinstance(seen, BaseException):
        if getattr(seen, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(exc).lower()
    return any(m in text for m in ("free some disk space", "disk is full", "no space left on device", "disk quota"))


def _remove_files(job: Job) -> None:
    """A cancelled job's upload and partial results: deleted now, not `ttl` seconds later."""
    job.files = {}  # a new dict: a download being looked up meanwhile finds the old one whole
    shutil.rmtree(job.folder, ignore_errors=True)


def _for_user(message: str, job: Job) -> str:
    """The user knows the uploads by their names, not by the server's folder, and the page's fields,
    not the command line's options."""
    if "label" in job.files and job.label_name:
        message = message.replace(str(job.files["label"]), job.label_name)
    # 'Pass' too, as a sentence starts: the page said "Pass --normalize scale:255,0 (normalization={...} in Python)"
    message = re.sub(r"([pP])ass --normalize (\S+) \(normalization=\{[^}]*\} in Python\)",
                     lambda m: f"{'s' if m[1] == 'p' else 'S'}et Normalisation to {m[2]}", message)
    message = re.sub(r"([pP])ass --normalize \(normalization= in Python\)",
                     lambda m: f"{'s' if m[1] == 'p' else 'S'}et Normalisation", message)
    return message.replace(str(job.files.get("input", job.folder)), job.name).replace(f"{job.folder}/", "")


def run_job(job: Job) -> None:
    """Segment the upload with every model, then describe, compare and (with a label) score them."""

    from geoseg import segment
    from geoseg.errors import GeosegError
    from geoseg.models import get_segmenter
    from geoseg.models.card import normalization_from_text
    from geoseg.models.registry import with_card
    from geoseg.models.segmenter import FlipAveraged, KerasSegmenter
    from geoseg.preview import colorize, north_up_flips, save_png
    from geoseg.raster import read_preview, shares
    from geoseg.vector import count_regions

    image = job.files["input"]
    per_model, masks = [], {}
    for i, name in enumerate(job.models):
        job.check()
        model = with_card(name, precision=job.precision, tta=job.tta)  # baselines ignore both
        segmenter = get_segmenter(model)
        card, keras = segmenter.card, isinstance(segmenter, (KerasSegmenter, FlipAveraged))
        normalization = normalization_from_text(job.normalize) if job.normalize and keras else None
        out = job.folder / f"m{i}"

        def progress(fraction, i=i):
            job.check()  # raised in the model's run, which stops and removes what it had staged
            job.progress = (i + 0.9 * fraction) / len(job.models)

        job.running, job.progress = i, i / len(job.models)  # a U-Net said the last model's name while it loaded

        try:
            res = segment(image, out, model=model, preview=False, overwrite=True, progress=progress,
                          sieve=job.sieve if card.output == "classes" else 0,  # region models refuse it
                          normalization=normalization)
        except GeosegError as exc:
            raise type(exc)(f"{name}: {exc}") from None
        job.check()  # before the polygons, which may take a while yet
        key = f"m{i}"
        job.files[f"{key}_mask.tif"] = Path(res.outputs["mask"])
        job.files[f"{key}_mask.zip"] = _mask_for_qgis(job, key, Path(res.outputs["mask"]), out)
        regions = count_regions(res.outputs["mask"])
        if regions > MAX_POLYGONS:  # a 27 KB checkerboard upload cost 2.5 GB and 46 s of polygons; 2000^2 ran out
            job.warnings.append(f"{name}: {regions:,} regions, too many for polygons on this server (at most "
                                f"{MAX_POLYGONS:,}): no GeoPackage or GeoJSON. Set a Minimum region to merge the "
                                "specks, or use the command line.")
        else:
            _polygons(job, key, name, Path(res.outputs["mask"]), out)
        mask = read_preview(res.outputs["mask"], [1], 1024, resampling="nearest")[..., 0]
        mask = mask[north_up_flips(res.outputs["mask"])]  # as original.png (and QGIS) show a south-up raster
        masks[name] = (mask, card, res.outputs["mask"])  # the picture, and the mask the numbers are counted on
        rgba = np.dstack([colorize(mask, card.classes), np.where(mask == 255, 0, 255).astype(np.uint8)])
        from PIL import Image

        save_png(Image.fromarray(rgba, "RGBA"), out / "mask.png")
        job.files[f"{key}_mask.png"] = out / "mask.png"
        save_png(_overlay(job.files["original.png"], rgba), out / "overlay.png")
        job.files[f"{key}_overlay.png"] = out / "overlay.png"
        share = shares([c["pixels"] for c in res.classes], [c["area_m2"] for c in res.classes], digits=2)  # all None:
        per_model.append({"key": key, "model": card.name, "version": card.version, "description": card.description,
                          "output": card.output,  # tta and precision apply to Keras models only
                          "keras": keras,
                          "classes": [{**c, "share_pct": s} for c, s in zip(res.classes, share)],  # all nodata
                          "seconds": res.seconds})
    job.check()
    job.result["models"] = per_model
    classes = {name: m for name, m in masks.items() if m[1].output == "classes"}  # not unlabeled regions
    if len(classes) > 1:
        job.result["agreement_pct"] = _agreement([(path, card) for _, card, path in classes.values()])
    if job.has_label:
        job.result["iou"] = _label_iou(job, classes)


def _mask_for_qgis(job: Job, key: str, mask: Path, out: Path) -> Path:
    """The mask with its QGIS style and class names (its ``.aux.xml``), named alike in one zip: the GeoTIFF alone
    opened in QGIS with its palette's 256 entries numbered, no class named (h144)."""
    import zipfile

    from geoseg.raster import class_sidecar

    stem = download_name(job, f"{key}_mask.tif").removesuffix(".tif")
    target = out / "mask.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(mask, f"{stem}.tif", compress_type=zipfile.ZIP_STORED)  # deflated inside already
        for path, suffix in ((mask.with_suffix(".qml"), ".qml"), (class_sidecar(mask), ".tif.aux.xml")):
            if path.is_file():
                archive.write(path, stem + suffix)
    return target


def _polygons(job: Job, key: str, name: str, mask: Path, out: Path) -> None:
    """The mask's polygons as a GeoPackage and, where they can be placed on the globe, as GeoJSON."""
    import rasterio

    from geoseg.vector import vectorize

    gpkg = mask.with_name(mask.name.replace("_mask.tif", "_polygons.gpkg"))
    # a cancel is checked as each block is done: the write held a cancelled 7000² upload's worker for 30 s (h170)
    vectorize(mask, gpkg, overwrite=True, progress=lambda _: job.check())
    job.files[f"{key}_polygons.gpkg"] = gpkg
    with catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(mask) as ds:
            # or placed by ground control points; a CRS without a geotransform places nothing
            has_crs = (ds.crs is not None and not ds.transform.is_identity) or ds.gcps[1] is not None
    if has_crs:  # GeoJSON is WGS84 by definition (RFC 7946): pixel coordinates would land at impossible lon/lat
        geojson = out / "polygons.geojson"  # it was in the mask's CRS: web maps read UTM metres as degrees
        failed = _geojson_apart(mask, geojson, job.check)
        if failed is None:
            job.files[f"{key}_polygons.geojson"] = geojson
            return
        kind, message = failed
        if disk_full(message):  # it said "they cannot be placed in longitude and latitude (OutputError)" (h170)
            log.warning("job %s: no GeoJSON of %s's polygons: the disk of %s is full (%s)", job.id, name, job.folder,
                        message)
            job.warnings.append(f"{name}: no GeoJSON of the polygons: this server's disk is full. The GeoPackage "
                                "holds them in the image's own coordinates; for GeoJSON, try again later or tell the "
                                "server's administrator.")
        elif kind in ("OutputError", "OSError", "MemoryError") or kind.startswith("exit status"):
            log.warning("job %s: no GeoJSON of %s's polygons: %s: %s", job.id, name, kind, message)
            job.warnings.append(f"{name}: no GeoJSON of the polygons: the server failed to write it (its log has the "
                                "details); the GeoPackage holds them in the image's own coordinates.")
        else:  # a local CRS or collinear GCPs failed the whole job here
            job.warnings.append(f"{name}: no GeoJSON of the polygons: they cannot be placed in longitude and "
                                f"latitude ({kind}); the GeoPackage holds them in the image's own coordinates.")


def _geojson_apart(mask: Path, geojson: Path, check=None) -> tuple[str, str] | None:
    """Write the polygons of `mask` as GeoJSON in longitude and latitude, in a process of its own; return None, or
    what failed: the exception's type and message (a full disk is no CRS's fault), or "exit status N" and "".

    GDAL's GeoJSON writer holds Python's lock for the whole write (pyogrio calls it without releasing it): every
    request to the server, status polls and other users' pages, waited for 9 to 22 s while a 2000² upload's 21,000
    polygons were written (h104). A process of its own takes 1-2 s to start and holds no lock of the server's.

    `check` (the job's) is called twice a second while the process runs: what it raises (Cancelled) stops the process
    and is raised. A cancelled 7000² upload held its worker for the whole write, 40 of the 77 s from Cancel to
    "cancelled"."""
    import subprocess

    code = ("import sys\nfrom geoseg.vector import vectorize\ntry:\n    vectorize(sys.argv[1], sys.argv[2], "
            "overwrite=True, style=False, to_crs='EPSG:4326')\nexcept Exception as exc:\n"
            "    print(type(exc).__name__, str(exc).replace(chr(10), ' '), sep=chr(9), file=sys.stderr)\n"
            "    sys.exit(3)\n")
    with subprocess.Popen([sys.executable, "-c", code, str(mask), str(geojson)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}) as child:
        while True:
            try:
                _, stderr = child.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if check is None:
                    continue
            try:
                check()
            except BaseException:
                child.kill()
                child.communicate()
                raise
    if child.returncode == 0 and geojson.is_file():
        return None
    lines = stderr.strip().splitlines()
    if child.returncode == 3 and lines:
        kind, _, message = lines[-1].partition("\t")
        return kind, message
    return f"exit status {child.returncode}", ""


def _agreement(masks: list) -> float | None:
    """Percent of valid pixels where the models of (mask path, card) `masks` name one class, as `geoseg compare` counts it: by class name,
    not id, a baseline's `other` agreeing with any class it lacks (strict names gave 0.02% for a U-Net and
    the threshold baseline, whose `other` is everything but water and vegetation); on the whole masks, not
    the page's pictures of them (of at most 1024 px: 64% of a 1280 x 1000 image's pixels were counted)."""
    from contextlib import ExitStack

    from rasterio.windows import Window

    from geoseg.raster import open_quietly
    from geoseg.workflows.evaluate import _Disagreement

    count = _Disagreement([card for _, card in masks])
    agree = valid = 0
    with ExitStack() as stack:
        handles = [stack.enter_context(open_quietly(path)) for path, _ in masks]
        width, height = handles[0].width, handles[0].height
        for top in range(0, height, 512):
            window = Window(0, top, width, min(512, height - top))
            counted = count(np.stack([h.read(1, window=window) for h in handles]))
            valid += int((counted != 255).sum())
            agree += int((counted == 0).sum())
    if not valid:  # all nodata: "agree on 0%" said they disagreed everywhere
        return None
    return round(100 * agree / valid, 2)


def _overlay(original: Path, rgba: np.ndarray):
    from PIL import Image

    base = Image.open(original).convert("RGBA").resize((rgba.shape[1], rgba.shape[0]))
    top = Image.fromarray(rgba, "RGBA")
    top.putalpha(Image.fromarray((rgba[..., 3] * 0.55).astype(np.uint8)))
    return Image.alpha_composite(base, top).convert("RGB")


def _label_iou(job: Job, masks: dict) -> list[dict[str, Any]]:
    """Per-class IoU of each model in `masks` against the uploaded label, read as `geoseg compare` reads it.

    A label of 3+ bands, or one band with a colour table (a paletted PNG), holds colours; one band
    without, class ids (named by its CLASS_NAMES tag when it has one). Either is read once, by one
    model's classes, and each model scores the label classes by name: a baseline scores those it lacks
    as its `other`. Colours are read by the model whose colours most label pixels have, ids by the
    first model (bundles first) with a class for the label's largest id; `result["label_read_as"]` names it. The first
    ticked model's classes were used, and the page lists the baselines first: a U-Net then scored 0 on
    a label in its own colours.
    """
    import rasterio
    from rasterio.enums import ColorInterp

    from geoseg.models.labels import label_class_names, read_labels
    from geoseg.models.metrics import scores
    from geoseg.workflows.evaluate import _label_colours, _remap, tally, with_registered_colours

    if not masks:
        return []
    label = job.files["label"]
    cards = list({card.name: card for _, card, _ in masks.values()}.values())
    with catch_warnings():  # PNG and JPEG labels have no georeferencing; that is fine here
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(job.files["input"]) as ds:
            shape = ds.height, ds.width
        with rasterio.open(label) as ds:
            # a geoseg mask (the page's own download) has a colour table and its class names: read by the names;
            # by colour, its display colours matched no label colour once those differed, and nothing was scored
            named = ds.count == 1 and "CLASS_NAMES" in ds.tags()
            colours = not named and (ds.count >= 3 or ds.colorinterp[0] == ColorInterp.palette)
            ids = None if colours else ds.read(1, masked=True)
        names = None if colours else label_class_names(label)

        def read(classes):
            return read_labels(label, fmt="color" if colours else "index", classes=classes,
                               image=job.files["input"], shape=shape)

        def classes_of(card, drawn=False):  # the label colours, or the colours the page draws (`drawn`)
            return [{"name": c.name, "color": c.color if drawn else c.in_labels} for c in card.classes]

        truth = None
        if names:
            label_classes, source = [{"name": n, "color": None} for n in names], "its CLASS_NAMES"
        elif colours:  # the model in whose colours most pixels are; the first such model on a tie
            def reading(card, drawn):  # None for a model two of whose classes share a colour: it cannot read one
                try:
                    return read(classes_of(card, drawn))
                except InputError:
                    return None

            for drawn in (False, True):  # a label drawn in the colours the page shows matched no label colour
                readings = [reading(card, drawn) for card in cards]
                counts = [-1 if r is None else int((r != 255).sum()) for r in readings]
                if max(counts) > 0 or not any(c.label_color for card in cards for c in card.classes):
                    break
            best = counts.index(max(counts))
            card, truth = cards[best], readings[best]  # read once per model, not once more for the winner
            label_classes, source = classes_of(card, drawn), card.name
            if not drawn or max(counts) <= 0:  # colours that card does not name, named by another registered
                # card: as evaluate and compare read them (a Dubai mask's building, land and road, for a baseline
                # ticked alone, by the U-Net's card: left unlabelled, they flattered its score)
                borrowed, label_colours, note = with_registered_colours(card, _label_colours([label]))
                if note:
                    label_classes = [{"name": n, "color": c} for n, c in zip(borrowed, label_colours)]
                    truth = None
                    job.warnings.append(note.partition("; pass --label-names")[0] + ", as geoseg evaluate and "
                                        "compare read them")
        else:  # the first model with a class for every id, bundles before baselines (labels are made for a
            # U-Net's classes, rarely a baseline's other/water/vegetation): ids 0..4 were read as a baseline's 0..2
            values = ids.compressed()
            top = int(values[values != 255].max()) if (values != 255).any() else -1
            bundles = {name for name, keras in zip(job.models, job.keras) if keras}
            ranked = sorted(cards, key=lambda c: c.name not in bundles)
            card = next((c for c in ranked if c.n_classes > top), max(ranked, key=lambda c: c.n_classes))
            label_classes, source = classes_of(card), card.name
        if truth is None:
            truth = read(label_classes)
        labelled = int((truth != 255).sum())
        matched = "is in a class colour" if colours else "holds a class id"
        if labelled == 0:
            models = "the models'" if len(cards) > 1 else f"{cards[0].name}'s"
            job.warnings.append(f"no pixel of the label {job.label_name} {matched} of {models} classes, so nothing "
                                "is scored: upload a label in a model's label colours (its class colours where it "
                                "has none; GET /api/models lists both), or an index raster of its class ids (255 "
                                "for unlabelled).")
            return []
        if labelled < 0.5 * truth.size:
            whose = "its CLASS_NAMES" if names else f"{source}'s classes"
            job.warnings.append(f"only {100 * labelled / truth.size:.0f}% of the label's pixels "
                                f"{'are in a class colour' if colours else 'hold a class id'} of {whose}; the others "
                                "are not scored.")
        job.result["label_read_as"] = source
        rows = []
        for i, model in enumerate(job.models):
            if model not in masks:  # a model of unlabeled regions has no classes to score
                continue
            with rasterio.open(job.files[f"m{i}_mask.tif"]) as ds:
                pred = ds.read(1)
            card = masks[model][1]
            lut, _ = _remap(label_classes, card)  # counted as compare counts them: water on 'background' too
            s = scores(*tally(truth, pred, lut, label_classes, card.n_classes,
                              negatives=not any(c.name == "other" for c in card.classes)))
            rows.append({"model": card.name, "mean_iou": None if np.isnan(s["mean_iou"]) else round(s["mean_iou"], 4),
                         "iou": {c.name: (None if np.isnan(v) else round(float(v), 4))
                                 for c, v in zip(card.classes, s["iou"])}})
    return rows


def download_name(job: Job, name: str, path: Path | None = None) -> str:
    """`scene_landcover-unet_mask.tif`, not `scene_m0_mask.tif`: saved files say which model made them. `path` is
    the file `name` stands for (default: the job's), for a caller that looked it up already."""
    stem = Path(job.name).stem
    if name in ("input", "label"):
        suffix = (path or job.files[name]).suffix
        return f"{stem}{suffix}" if name == "input" else f"{stem}_label{suffix}"  # was `scene_label`, without its type
    key, sep, rest = name.partition("_")
    if sep and re.fullmatch(r"m[0-9]+", key) and int(key[1:]) < len(job.models):
        return f"{stem}_{job.models[int(key[1:])]}_{rest}"
    return f"{stem}_{name}"
