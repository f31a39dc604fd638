"""The Flask app: thin routes over the registry, segment() and background jobs."""

from __future__ import annotations

import atexit
import errno
import io
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

from flask import Flask, Request, abort, jsonify, render_template, request, send_file
from werkzeug.exceptions import HTTPException

from geoseg.errors import GeosegError, ModelNotFoundError, OutputError, catch_warnings
from geoseg.models.card import normalization_from_text, parse_normalization
from geoseg.models.registry import DEFAULT_MODEL
from geoseg.raster import owned_temp_dir
from geoseg.models.segmenter import PRECISIONS, TTA_MODES
from geoseg.web.jobs import Job, JobManager, download_name
from geoseg.web.uploads import UploadError, check_driver, check_pixels, check_readable, display_name, sniff

__all__ = ["create_app"]

DEFAULTS = {
    "MAX_CONTENT_LENGTH": 200 * 1024 * 1024,  # bytes per request
    "GEOSEG_MAX_PIXELS": 50_000_000,
    "GEOSEG_RESULT_TTL": 3600,  # seconds before uploads and results are deleted
    "GEOSEG_WORKERS": 2,
    "GEOSEG_MAX_QUEUED": 20,  # jobs waiting for a worker; past it, uploads get 503 and Retry-After
    "GEOSEG_ABANDON_AFTER": 180,  # seconds a queued job may go unpolled before it is dropped (its page was closed)
    "GEOSEG_DATA_DIR": None,  # default: a folder in the system temp dir
    # answer only requests addressed to this machine's loopback names: `geoseg serve` sets it when it listens on a
    # loopback address, so that a web page the user opens cannot reach the server through a name of its own that
    # it re-points at 127.0.0.1 (DNS rebinding), and read the answers
    "GEOSEG_LOCAL_ONLY": False,
    "GEOSEG_ALLOWED_HOSTS": [],  # names answered too when GEOSEG_LOCAL_ONLY: a reverse proxy's (serve --allow-host)
}
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def _server_folder(data_dir) -> Path:
    """The server's own folder, in `data_dir` or ``$TMPDIR/geoseg-web``. That folder is made by whoever starts
    the first server, so another user's server, refused there, uses ``geoseg-web-UID`` (it failed with a
    PermissionError traceback on every shared machine but for its first user)."""
    if data_dir:
        bases = [Path(data_dir)]
    else:
        try:
            temp = Path(tempfile.gettempdir())
        except FileNotFoundError:  # Python's "No usable temporary directory found in [...]", as a traceback
            raise OutputError("no writable temporary folder for the server's files (TMPDIR, /tmp, /var/tmp...): "
                              "set TMPDIR to a folder this user can write.") from None
        bases = [temp / "geoseg-web", temp / f"geoseg-web-{os.getuid()}"]
    for base in bases:
        try:
            base.mkdir(parents=True, exist_ok=True)
            return owned_temp_dir(base, "server-")
        except OSError as exc:
            error = exc
    raise OutputError(f"{bases[-1]}: the server's files cannot be written there ({error.strerror or error}). Set "
                      "TMPDIR to a folder this user can write.")


class _SpoolingRequest(Request):
    """A request whose uploads over werkzeug's 500 KB are spooled to a named file in the server's folder, which
    `_save_upload` links into the job's folder: werkzeug's unnamed temporary file was copied there, and an upload
    took twice its size on the disk until the request ended (a 150 MB upload failed with 250 MB free, h170)."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        from flask import current_app

        if total_content_length is not None and total_content_length <= 500 * 1024:
            return super()._get_file_stream(total_content_length, content_type, filename, content_length)
        spool = current_app.extensions["geoseg_jobs"].root / "spool"
        spool.mkdir(exist_ok=True)
        # removed when the request closes it (Flask does as the request ends): the job's link keeps the bytes
        return tempfile.NamedTemporaryFile("rb+", dir=spool, prefix="upload-")


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app; `config` overrides DEFAULTS (e.g. GEOSEG_MAX_PIXELS, GEOSEG_RESULT_TTL)."""
    app = Flask(__name__)
    app.request_class = _SpoolingRequest
    app.config.update(DEFAULTS)
    app.config.update(config or {})
    root = _server_folder(app.config["GEOSEG_DATA_DIR"])  # one per server: two never expire each other's jobs
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    jobs = JobManager(root, workers=int(app.config["GEOSEG_WORKERS"]), ttl=float(app.config["GEOSEG_RESULT_TTL"]),
                      abandon_after=float(app.config["GEOSEG_ABANDON_AFTER"]))
    app.extensions["geoseg_jobs"] = jobs

    @app.before_request
    def refuse_other_sites():
        """Jobs are posted and cancelled by this server's own page or by clients that send no Origin (curl,
        scripts): any web page the user had open could post uploads to 127.0.0.1 and cancel jobs (h123)."""
        from urllib.parse import urlsplit

        if app.config["GEOSEG_LOCAL_ONLY"] and not _local_name(urlsplit(f"//{request.host}").hostname,
                                                               app.config["GEOSEG_ALLOWED_HOSTS"]):
            return jsonify(error=f"this server answers requests to 127.0.0.1 or localhost, not to {request.host} "
                                 "(behind a reverse proxy, start it with --allow-host NAME)."), 403
        origin = request.headers.get("Origin")
        if request.method in UNSAFE_METHODS and origin is not None and urlsplit(origin).netloc != request.host:
            return jsonify(error=f"requests from other web sites ({origin}) are refused; use this server's own page "
                                 f"(http://{request.host}/) or a client of the JSON API."), 403
        return None

    @app.before_request
    def expire_old_jobs():  # on every request, so files go after --ttl even if nobody polls
        jobs.expire()

    @app.after_request
    def security_headers(response):
        # no framing by other sites (clickjacking), and no type guessed from a served file's content
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.errorhandler(UploadError)
    def upload_error(exc: UploadError):
        return jsonify(error=_without_root(str(exc), root), **({"field": exc.field} if exc.field else {})), exc.status

    @app.errorhandler(ModelNotFoundError)
    def model_error(exc):
        return jsonify(error=_without_root(str(exc), root)), 404

    @app.errorhandler(GeosegError)
    def geoseg_error(exc):  # _new_job names the uploads already; this is for errors it did not foresee
        return jsonify(error=_without_root(str(exc), root)), 400

    @app.errorhandler(413)
    def too_large(exc):
        limit = app.config["MAX_CONTENT_LENGTH"] / 1024**2
        # werkzeug's form limits, not the size; a chunked upload has no length and was told of the form's fields
        if request.content_length is not None and request.content_length <= app.config["MAX_CONTENT_LENGTH"]:
            return jsonify(error="the form's fields are too large or too many (a field over 500 KB, or over 1000 "
                                 "parts); send the image, a label and the documented fields."), 413
        if request.content_length is None:  # chunked: werkzeug says no more of which limit it met
            return jsonify(error=f"the upload is larger than this server's limit of {limit:.0f} MB, or its form's "
                                 "fields are too large or too many (a field over 500 KB, or over 1000 parts)."), 413
        # the image is what the page can mark, as the too-many-megapixels answer names it (h112)
        return jsonify(error=f"the upload is larger than this server's limit of {limit:.0f} MB.", field="image"), 413

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):  # the API and file routes answer JSON, as scripts and the page expect
        if request.path.startswith(("/api/", "/jobs/", "/models/")) or request.path.rstrip("/") in ("/api", "/jobs",
                                                                                                    "/models"):
            # GET /api (no slash) was an HTML page to a script that reads JSON
            return jsonify(error=f"{exc.name}: {exc.description}"), exc.code
        return exc

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        logging.getLogger(__name__).exception("%s %s failed", request.method, request.path)
        return jsonify(error="the server failed on this request; its log has the details."), 500

    @app.get("/")
    def index():
        return render_template("index.html", models=_models(), max_mb=app.config["MAX_CONTENT_LENGTH"] // 1024**2,
                               max_mpx=app.config["GEOSEG_MAX_PIXELS"] / 1e6)

    @app.get("/api/models")
    def api_models():
        return jsonify(models=_models())

    @app.post("/api/segment")
    def api_segment():
        limit = int(app.config["GEOSEG_MAX_QUEUED"])
        if not jobs.reserve(limit):  # before the upload is saved: a full queue keeps no files
            # not "N jobs are waiting": some of them may be uploads still being received
            places = "1 place" if limit == 1 else f"{limit} places"
            return (jsonify(error=f"this server is busy: its workers and the queue's {places} are all taken (by jobs, "
                                  "or by uploads still arriving). Try again in a minute."),
                    503, {"Retry-After": "60"})
        try:
            job = _new_job(jobs, app.config["GEOSEG_MAX_PIXELS"])
        except OSError as exc:  # the upload, spooled to the server's folder, filled its disk: an opaque 500
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            logging.getLogger(__name__).warning("an upload did not fit on the disk of %s (%s)", jobs.root, exc.strerror)
            return jsonify(error="this server has no room left for the upload (its disk is full). Try a smaller "
                                 "image, or try later."), 507
        finally:  # submitted (now counted as queued) or refused
            jobs.release()
        return jsonify(jobs.describe(job)), 202

    @app.get("/api/jobs/<job_id>")
    def api_job(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            return jsonify(error=_missing_job(jobs, job_id)), 410 if job_id in jobs.expired else 404
        job.polled = time.time()  # someone still waits for it: a queued job nobody asks about is dropped
        return jsonify(jobs.describe(job))

    @app.delete("/api/jobs/<job_id>")
    def api_cancel(job_id: str):
        """Cancel a job: a closed tab or a new upload left it holding a worker or a queue place until it ended."""
        job = jobs.get(job_id)
        if job is None:
            return jsonify(error=_missing_job(jobs, job_id)), 410 if job_id in jobs.expired else 404
        if not jobs.cancel(job):
            return jsonify(error=f"job {job_id} has already ended ({job.status}): there is nothing to cancel. Its files "
                                 f"are deleted {jobs.ttl:.0f} s after it ended."), 409
        # a running job stops at its next model or progress report: 202, "running" with "cancelling" until then
        return jsonify(jobs.describe(job)), 202 if job.status == "running" else 200

    @app.get("/jobs/<job_id>/files/<name>")
    def job_file(job_id: str, name: str):
        job = jobs.get(job_id)
        if job is None:  # the expiry removed the record and the files together: say so, not "check your spelling"
            return jsonify(error=_missing_job(jobs, job_id)), 410 if job_id in jobs.expired else 404
        path = job.files.get(name)  # only names the job made; no path from the user. Read once: a cancel replaces
        # job.files with {} meanwhile, and a second read of it (after `name in job.files`) was a KeyError, a 500
        if path is None and job.status == "cancelled":  # its files went with the cancel: "check your spelling" misled
            why = f" ({job.error})" if job.error else ""
            return jsonify(error=f"job {job_id} was cancelled{why}, and its files were deleted then. Upload the "
                                 "image again."), 410
        if path is None:
            abort(404)
        if not path.exists():
            abort(404, description=f"{name} is gone (results are deleted after {jobs.ttl:.0f} s); run the job again.")
        download = download_name(job, name, path)
        return _with_ascii_fallback(send_file(path, as_attachment=not name.endswith(".png"), download_name=download),
                                    job, download)

    @app.get("/models/<name>/download")
    def model_download(name: str):
        entry = next((m for m in _registry() if m.name == name), None)
        if entry is None or entry.path is None:
            abort(404)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in (entry.path, entry.path.with_suffix(".json")):  # a legacy NAME.h5 is no NAME.keras
                # A .keras file is a zip already: deflating it again took 1.5 s per download of the
                # 28 MB default model to save 10%; stored, 0.06 s.
                packed = zipfile.ZIP_STORED if path.suffix == ".keras" else zipfile.ZIP_DEFLATED
                archive.write(path, f"{name}{path.suffix}", compress_type=packed)
        buffer.seek(0)
        return send_file(buffer, mimetype="application/zip", as_attachment=True, download_name=f"{name}.zip")

    return app


def _missing_job(jobs: JobManager, job_id: str) -> str:
    if job_id in jobs.expired:
        return (f"job {job_id} has expired: this server deletes uploads and results {jobs.ttl:.0f} s after a job "
                "ends. Upload the image again.")
    return f"no job {job_id!r} on this server (a restarted server forgets its jobs). Upload the image again."


def _with_ascii_fallback(response, job: Job, full: str):
    """The download's plain `filename=` (which `curl -OJ` uses, ignoring `filename*=`) with the upload's
    non-ASCII letters dropped was `.png` (a hidden file) for 文件.png, and the same for every such upload: the
    job's id stands in for what was dropped. `filename*=` keeps the whole name, `full`."""
    import unicodedata
    from urllib.parse import quote

    disposition = response.headers.get("Content-Disposition", "")
    stem = Path(job.name).stem
    folded = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    if "filename*=" not in disposition or folded == stem or not full.startswith(stem):
        return response
    plain = re.sub(r"[^A-Za-z0-9._-]+", "_", folded).strip("._-")
    plain = f"{plain}-{job.id[:8]}" if plain else f"upload-{job.id[:8]}"
    kind = disposition.partition(";")[0]
    rest = unicodedata.normalize("NFKD", full[len(stem):]).encode("ascii", "ignore").decode().replace('"', "_")
    response.headers["Content-Disposition"] = (f'{kind}; filename="{plain}{rest}"; '
                                               f"filename*=UTF-8''{quote(full, safe='')}")
    return response


def _without_root(message: str, root: Path) -> str:
    """No server path in an answer: a job's files are known to the user by their names alone."""
    message = re.sub(rf"{re.escape(str(root))}/[0-9a-f]{{32}}/(upload/)?", "", message)
    return message.replace(str(root), "the server's folder")


def _for_user(message: str, folder: Path, stem: str, image_name: str, label_name: str | None) -> str:
    """The user knows the uploads by their names (as in jobs' messages), not by the server's copies."""
    for kind in ("png", "jpg", "tif"):  # _save_upload's names; a paletted upload becomes a .tif
        message = message.replace(str(folder / "upload" / f"{stem}.{kind}"), image_name)
        if label_name is not None:
            message = message.replace(str(folder / f"label.{kind}"), label_name)
    return message.replace(f"{folder}/", "").replace(str(folder), "the upload")


def _registry():
    from geoseg.models import list_models

    problems = []
    entries = list_models(problems)
    for problem in problems:  # the page shows the usable models; the server log says what was skipped
        logging.getLogger(__name__).warning("skipped: %s", problem.message)
    return entries


def _models() -> list[dict[str, Any]]:
    """The models of the page and GET /api/models: the default first, as `geoseg models` lists them (it came last,
    under 8 baselines)."""
    from geoseg.models import DEFAULT_MODEL

    return sorted([{"name": m.name, "description": m.card.description, "source": m.source,
             "classes": [{"name": c.name, "color": c.color, **({"label_color": c.label_color} if c.label_color else {})}
                         for c in m.card.classes],
             "bands": list(m.card.bands), "output": m.card.output, "default": m.name == DEFAULT_MODEL,
             "download": f"/models/{m.name}/download" if m.path is not None else None}
            for m in _registry()], key=lambda m: not m["default"])


def _save_upload(storage, folder: Path, stem: str, *, what: str = "image") -> Path:
    head = storage.stream.read(16)
    kind = sniff(head, what=what)
    storage.stream.seek(0)
    path = folder / f"{stem}.{kind}"
    spooled = getattr(storage.stream, "name", None)  # _SpoolingRequest's file, in the server's folder
    try:
        if not isinstance(spooled, str):
            raise OSError("not spooled to a named file")
        storage.stream.flush()
        os.link(spooled, path)  # the same bytes under the job's name: copied, a 150 MB upload took 300 MB (h170)
    except OSError:  # in memory (a small upload), or another file system
        storage.save(path)
    check_driver(path, kind, what=what)  # before any other open: a VRT behind a JPEG's magic read local files
    return path


def _new_job(jobs: JobManager, max_pixels: int) -> Job:
    image = request.files.get("image")
    if image is None and not request.files and not request.form and request.mimetype == "multipart/form-data" \
            and (request.content_length or 0) > 1024:  # werkzeug drops a form it cannot parse: "no image" misled
        # (an empty form is a closing boundary of a few bytes; one with an image, kilobytes)
        raise UploadError("the multipart form could not be read (is a file name not UTF-8?); send the image as "
                          "multipart field 'image' with a UTF-8 file name.", 400)
    if image is None or not image.filename:
        raise UploadError("no image in the request: send it as multipart field 'image'.", 400, "image")
    names = list(dict.fromkeys(n.strip() for value in request.form.getlist("models") for n in value.split(",")
                               if n.strip()))  # in order, each once
    registry = {m.name: m for m in _registry()}
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise UploadError(f"unknown model(s) {', '.join(unknown)}; GET /api/models lists them.", 400, "models")
    precision = request.form.get("precision") or "float32"
    tta = request.form.get("tta") or "none"
    if precision not in PRECISIONS:
        raise UploadError(f"precision must be one of {', '.join(PRECISIONS)}; received {precision!r}.", 400, "precision")
    if tta not in TTA_MODES:
        raise UploadError(f"tta must be one of {', '.join(TTA_MODES)}; received {tta!r}.", 400, "tta")
    sieve = (request.form.get("sieve") or "0").strip()
    if not re.fullmatch(r"[0-9]{1,12}", sieve):  # str.isdigit() took '²', which int() refuses
        raise UploadError(f"sieve (minimum region) is a whole number of pixels, 0 or more; received {sieve!r}.", 400, "sieve")
    normalize = (request.form.get("normalize") or "").strip()
    names = names or [DEFAULT_MODEL]
    try:
        if normalize:  # its values too, for each Keras model's bands: scale:nan failed inside the job
            declared = normalization_from_text(normalize)
            for n in names:
                if registry[n].path is not None:
                    parse_normalization(declared, registry[n].card.n_bands, source=f"normalisation for {n}")
    except ValueError as exc:  # a CardError is one
        raise UploadError(f"normalisation: {exc} (empty: each model's own)" if "normalisation for" not in str(exc)
                          else f"{exc} (empty: each model's own)", 400, "normalize") from None
    shown = display_name(image.filename)
    stem = Path(shown).stem or "upload"
    label = request.files.get("label")
    label_name = display_name(label.filename) if label is not None and label.filename else None
    job_id, folder = jobs.new_folder()
    part = "image"  # the upload an error is about
    try:
        (folder / "upload").mkdir()  # by the user's name: layers in the GeoPackage are named after it
        path = _save_upload(image, folder / "upload", stem)
        _, _, count = check_pixels(path, max_pixels, name=shown)
        with DECODING:  # each upload is decoded whole below: up to 2.3 GB at the server's limits (h123)
            check_readable(path, path.suffix[1:], name=shown)  # a truncated COG showed its overviews, then failed
            path, count = _expand_palette(path, count, shown)
            _check_bands(shown, count, [registry[n] for n in names if n in registry], registry.values())
            job = Job(job_id, folder, shown, names, False, precision=precision, tta=tta, sieve=int(sieve),
                      normalize=normalize, keras=[registry[n].path is not None for n in names],
                      regions=[registry[n].card.output == "regions" for n in names])
            job.files["input"] = path
            job.files["original.png"] = _original_png(path, folder, shown)
            if label_name is not None:
                part = "label"
                job.files["label"] = _save_upload(label, folder, "label", what="label")
                # the image's limits too: a label of 200 float64 bands (1.6 MB on disk, 1.6 GB decoded) took 3 GB
                check_pixels(job.files["label"], max_pixels, name=f"label {label_name}")
                job.has_label, job.label_name = True, label_name
                _check_label(job.files["label"], path, label_name, shown)
    except Exception as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, GeosegError) and not isinstance(exc, ModelNotFoundError):  # e.g. inspect_raster's
            raise UploadError(_for_user(str(exc), folder, stem, shown, label_name), getattr(exc, "status", 400),
                              getattr(exc, "field", None) or part) from None
        raise
    return jobs.submit(job)


# uploads decoded at once: each check reads all of its upload (a 7000² two-band float64 strip of 0.8 MB on disk took
# 2.3 GB), and up to --workers + --max-queued of them (22) were checked at once, 7.4 GB for three (h123)
DECODING = threading.BoundedSemaphore(2)


def _local_name(hostname: str | None, allowed=()) -> bool:
    """Whether a request's host is this machine's loopback (127.0.0.0/8, ::1, localhost) or a name allowed."""
    import ipaddress

    if hostname is None:
        return False
    if hostname.lower() == "localhost" or hostname.lower() in (a.lower() for a in allowed):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _check_label(label: Path, image: Path, label_name: str, image_name: str) -> None:
    """A 400 now, not a failed job later, for a label that is unreadable or not on the image's grid."""
    from geoseg.errors import InputError
    from geoseg.models.labels import check_label_grid

    try:
        # the job reads a label of 3+ bands by the models' colours and one band as class ids: any band count goes
        check_label_grid(label, "color", image, name=f"label {label_name}", image_name=image_name,
                         file_name=label_name, polygons=False)  # the gdalwarp hint named our stored copy
    except InputError as exc:
        raise UploadError(str(exc), 400) from None
    # after the grid check, which bounds its size by the image's: a cut label was scored on GDAL's garbage
    check_readable(label, label.suffix[1:], name=f"label {label_name}")


def _unreadable(name: str) -> UploadError:
    return UploadError(f"{name}: the file looks like an image, but its pixels cannot be read: it looks truncated "
                       "or damaged. Upload it again, or a copy that opens in an image viewer.", 400)


def _check_bands(name: str, count: int, entries, available=()) -> None:
    """A 400 now, naming the model, rather than a failed job after the other models ran; where no model of the
    server reads so few bands, it says so rather than to untick one (a one-band image, h116)."""
    unfit = [f"{m.name} reads band(s) {', '.join(map(str, m.card.bands))}" for m in entries if max(m.card.bands) > count]
    if unfit and available and all(max(m.card.bands) > count for m in available):
        raise UploadError(f"{name} has {count} band(s), and every model here reads more (the U-Nets read RGB, the "
                          "baselines at least 3 bands; -nir baselines need a near-infrared band 4). Upload an RGB "
                          "image, or a stack of the bands the models read.", 400, "image")
    if unfit:
        raise UploadError(f"{name} has {count} band(s), but {'; '.join(unfit)}. Untick "
                          f"{'that model' if len(unfit) == 1 else 'those models'}, or upload an image with more "
                          "bands (the U-Nets read RGB; -nir baselines need a near-infrared band 4).", 400, "models")


def _expand_palette(path: Path, count: int, name: str) -> tuple[Path, int]:
    """A paletted upload (a 256-colour PNG, a GIF-like GeoTIFF) becomes the RGB GeoTIFF that it shows.

    Its georeferencing is kept (a CRS and transform, or ground control points, or RPCs: a scanned map
    placed by GCPs lost them); colour-table entries that are transparent become nodata.
    """
    import numpy as np
    import rasterio

    from geoseg.raster import inspect_raster

    if not inspect_raster(path).paletted:
        return path, count
    try:
        with catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                index, table = ds.read(1), ds.colormap(1)
                crs, transform = ds.crs, ds.transform
                (gcps, gcp_crs), rpcs = ds.gcps, ds.rpcs
    except rasterio.errors.RasterioIOError:  # the header was fine (check_pixels), the pixels are not
        raise _unreadable(name) from None
    georef = {"crs": crs, "transform": transform} if crs is not None or not transform.is_identity else {}
    lut = np.zeros((max(max(table), int(index.max())) + 1, 4), np.uint8)
    for value, rgba in table.items():
        lut[value] = rgba
    rgba = lut[index]
    out = path.with_suffix(".tif")
    with catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(out, "w", driver="GTiff", width=index.shape[1], height=index.shape[0], count=3,
                           dtype="uint8", photometric="RGB", **georef) as dst:
            dst.write(np.moveaxis(rgba[..., :3], -1, 0))
            if gcps and not georef:
                dst.gcps = (gcps, gcp_crs)
            if rpcs is not None:
                dst.rpcs = rpcs
            if (rgba[..., 3] == 0).any():
                dst.write_mask(np.where(rgba[..., 3] == 0, 0, 255).astype(np.uint8))
    if out != path:
        path.unlink()
    return out, 3


def _original_png(path: Path, folder: Path, name: str) -> Path:
    import numpy as np
    import rasterio
    from PIL import Image

    from geoseg.preview import north_up_flips, save_png, stretch
    from geoseg.raster import read_preview

    try:
        with catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                bands = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]
            data = read_preview(str(path), bands, 1024)
            data = data[north_up_flips(path)]  # a south-up raster as QGIS shows it, as the masks are drawn
    except rasterio.errors.RasterioIOError:  # the header was fine (check_pixels), the pixels are not
        raise _unreadable(name) from None
    rgb = data if data.dtype == np.uint8 else stretch(data)
    out = folder / "original.png"
    save_png(Image.fromarray(rgb), out)
    return out
