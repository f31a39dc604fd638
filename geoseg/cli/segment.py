"""`geoseg segment`: rasters in, georeferenced class masks (and polygons, previews) out."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from geoseg.cli.options import (resample_option, right_aligned, BandsType, check_cluster_options, scheduler_option, workers_option, PathParam, area_texts, chunk_option, emit_json, fail_cleanly, normalize_option,
                                precision_option, sieve_option, tta_option)
from geoseg.models.segmenter import MAX_MARGIN, MAX_TILE

__all__ = ["segment"]


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=PathParam(dir_okay=True))
@click.option("-o", "--output-dir", required=True, type=PathParam(),
              help="Folder for the outputs (created if missing).")
@click.option("-m", "--model", default=None, metavar="NAME|PATH",
              help="Model name from `geoseg models` or a .keras bundle path. Default: landcover-unet.")
@click.option("--card", type=PathParam(dir_okay=False), default=None,
              help="Model card (JSON) for a legacy Keras .h5 model that has none beside it.")
@precision_option
@tta_option
@click.option("--bands", type=BandsType(), default=None, metavar="1,2,3",
              help="1-based input bands in model order. Default: the model card's.")
@normalize_option
@resample_option
@chunk_option
@click.option("--tile", type=click.IntRange(1, MAX_TILE), default=None, metavar="PX",
              help="Model input size; fixed-size models set it. Default: whole chunk.")
@click.option("--margin", type=click.IntRange(0, MAX_MARGIN), default=None, metavar="PX",
              help="Context each side of a chunk. Default: the card's, the model's receptive field (`geoseg models "
                   "check NAME --image RASTER` measures how many pixels agree with one whole chunk).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Tiles per model call when chunks are cut into tiles.")
@click.option("--confidence", is_flag=True, help="Also write STEM_confidence.tif (winning class, %).")
@click.option("--probabilities", is_flag=True, help="Also write STEM_probabilities.tif (one band per class, %).")
@click.option("--vector", is_flag=True, help="Also write the mask's polygons as STEM_polygons.gpkg (seam-free, with "
                                           "areas; written as their blocks finish).")
@sieve_option
@click.option("--preview/--no-preview", default=True, show_default=True,
              help="Write STEM_preview.png: image | mask with a legend.")
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist, and remove the input's "
              "outputs of an earlier run that this run does not write (they would not match the new mask).")
@workers_option
@scheduler_option
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: outputs and styles, CRS, transform and bounds, per-class pixels and m², speed, peak memory.")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary.")
def segment(inputs, output_dir, model, card, precision, tta, bands, normalize, resample, chunk, tile, margin, batch_size, confidence, probabilities,
            vector, sieve, preview, overwrite, workers, scheduler, as_json, quiet):
    """Segment INPUT rasters (GeoTIFF, COG, VRT, JPEG, PNG) into class masks in OUTPUT_DIR.

    Each input gives STEM_mask.tif (so inputs must differ in file name): a uint8 Cloud-Optimized GeoTIFF with the input's
    CRS and transform (or its ground control points or RPCs), 255 where the input is
    nodata, a class colour table and the class names. Rasters of any size are read chunk by chunk, one per core, with one
    model call at a time per process (GEOSEG_MODEL_CALLS=N allows N; each holds its
    activations in memory).

    \b
    Examples:
      geoseg segment scene.tif -o out/
      geoseg segment a.tif b.tif -o out/ --vector --confidence --json
      geoseg segment big.tif -o out/ --chunk 2048 --workers 4
    """
    from geoseg.cli import _may_run_keras
    from geoseg.errors import GeosegError, OutputError
    from geoseg.models.registry import with_card
    from geoseg.pipeline import segment as run_segment

    with fail_cleanly():
        model = with_card(model, card, precision, tta)
    check_cluster_options(workers, scheduler)
    with fail_cleanly():  # a name too long for the file system was an OSError traceback here
        _check_inputs(inputs, output_dir, overwrite, dict(
            confidence=confidence, probabilities=probabilities, vector=vector, preview=preview))
    results, failures = [], []
    keras = _may_run_keras("segment", [] if model is None else ["-m", os.fspath(model)])
    verbosity = (click.get_current_context().find_root().obj or {}).get("verbosity", 0)
    from geoseg.pipeline import rasters_in_turn

    with fail_cleanly(), _client(workers, scheduler, keras, verbosity) as client, rasters_in_turn(client):
        for path in inputs:
            try:
                with _bar(path, quiet) as progress:
                    result = run_segment(
                        path, output_dir, model=model, bands=bands, chunk=chunk, tile=tile, margin=margin,
                        batch_size=batch_size, confidence=confidence, probabilities=probabilities,
                        vector=vector, sieve=sieve, preview=preview, overwrite=overwrite, client=client,
                        progress=progress,
                        normalization=normalize, resample=resample,
                    )
            except GeosegError as exc:
                if isinstance(exc, OutputError) or len(inputs) == 1:
                    raise
                failures.append({"input": path, "error": str(exc)})
                click.echo(f"Error: {exc}", err=True)
                continue
            results.append(result.to_dict())
            if not quiet and not as_json:
                _summary(result)
    if as_json:
        emit_json(results[0] if len(inputs) == 1 else {"results": results, "errors": failures})
    if failures:
        raise SystemExit(1)


def _check_inputs(inputs, output_dir, overwrite: bool, flags: dict) -> None:
    """What can be told before the first input is segmented: missing files, outputs that would
    overwrite each other or an input, folders where outputs go, and (without --overwrite) outputs of
    an earlier run.

    A run over many rasters then stops at once on a typo in the last name, not hours later.
    """
    from geoseg.errors import OutputError
    from geoseg.files import refuse_folders
    from geoseg.pipeline import output_paths
    from geoseg.raster import is_gdal_path, raster_stem

    missing = [p for p in inputs if not is_gdal_path(p) and not os.path.exists(p)]
    if missing:
        from geoseg.files import whitespace_note

        notes = "".join(dict.fromkeys(map(whitespace_note, missing)))  # the names' stray newlines and spaces
        shown = [repr(p) if whitespace_note(p) else p for p in missing]
        raise click.ClickException(f"{', '.join(shown)}: no such file{'s' if len(missing) > 1 else ''}. "
                                   f"Check the path; nothing was segmented.{notes}")
    _check_stems(inputs, output_dir, written=None if overwrite else flags)
    for path in inputs:
        outputs = output_paths(Path(output_dir), raster_stem(path), **flags)
        styles = [outputs[k].with_suffix(".qml") for k in ("mask", "vector") if k in outputs]
        try:  # a folder where an output goes stopped the run at that input (and was "already exists")
            refuse_folders([*outputs.values(), *styles])
        except OutputError as exc:
            raise click.ClickException(f"{exc} Nothing was segmented.") from None
        existing = [p for p in outputs.values() if p.exists()]
        if existing and not overwrite:
            raise click.ClickException(f"{existing[0]} already exists (from an earlier run on {path}). Pass "
                                       "--overwrite to replace it, or use another output folder (-o); nothing "
                                       "was segmented.")


def _check_stems(inputs, output_dir, written: dict | None = None) -> None:
    """Refuse inputs whose outputs would overwrite each other."""
    from geoseg.pipeline import output_paths
    from geoseg.raster import is_gdal_path, name_key, raster_stem, unique_stems

    seen: dict[str, str] = {}
    for path in inputs:  # one file given twice (a glob and its name, x.tif and ./x.tif)
        key = path if is_gdal_path(path) else os.path.realpath(path)
        if key in seen:  # exit status 1 with one line, as any bad input (a usage error is 2, with the usage)
            same = "" if seen[key] == path else f" (also as {seen[key]})"
            raise click.ClickException(f"{path} is given twice{same}; pass each raster once.")
        seen[key] = path
    names = unique_stems(inputs)
    clashing = sorted({p for p in inputs if names[p] != raster_stem(p)})
    if clashing:
        spellings: dict[str, set[str]] = {}
        for p in clashing:
            spellings.setdefault(name_key(raster_stem(p)), set()).add(raster_stem(p))
        # 63 Dubai tiles of 9 names were once listed whole, a screenful before the advice: the first group, counted
        # names that differ in case or Unicode form first: theirs is the note that is not obvious (h126)
        groups = sorted((sorted(p for p in clashing if name_key(raster_stem(p)) == k) for k in spellings),
                        key=lambda g: (len(spellings[name_key(raster_stem(g[0]))]) == 1, g))
        first = groups[0]
        named = ", ".join(first) if len(first) <= 4 else f"{', '.join(first[:3])} and {len(first) - 3} more"
        # the note on case and Unicode form only for a group whose names differ so (it went on the first, h126)
        alike = " (letter case or Unicode form aside: one name on macOS and Windows drives)" if len(
            spellings[name_key(raster_stem(first[0]))]) > 1 else ""
        more = (f"; {len(groups) - 1} other name(s) are shared by {len(clashing) - len(first)} more inputs"
                if len(groups) > 1 else "")
        raise click.ClickException(
            f"{named} share a file name{alike}{more}, so their outputs would overwrite each other in "
            f"{output_dir}; segment them into different folders (-o), or use geoseg survey, which gives each "
            "raster a folder of its own.")
    # b.tif's run wrote (or, with --overwrite, removed as stale) the input b_mask.tif or b_preview.png;
    # `written`: the outputs' flags, or None for all of them (--overwrite removes those it does not write)
    files = {os.path.realpath(p): p for p in inputs if not is_gdal_path(p)}
    flags = written or dict(confidence=True, probabilities=True, vector=True, preview=True)
    for path in inputs:
        outputs = output_paths(Path(output_dir), raster_stem(path), **flags)
        styles = [outputs[k].with_suffix(".qml") for k in ("mask", "vector") if k in outputs]
        for output in [*outputs.values(), *styles]:
            other = files.get(os.path.realpath(output))
            if other is not None:
                raise click.ClickException(
                    f"{other} is also where {path}'s run writes (or, with --overwrite, removes) {output.name}; "
                    f"segmenting both into {output_dir} would destroy it. Use another output folder (-o), "
                    "or rename the input.")


def _summary(result) -> None:
    click.echo(f"{result.input} -> {result.outputs['mask']}", err=True)
    for name, path in result.outputs.items():
        if name != "mask":
            click.echo(f"  {name}: {path}", err=True)
    click.echo(
        f"  {result.width}x{result.height} px in {result.seconds:.1f} s "
        f"({result.pixels_per_second / 1e6:.2f} Mpx/s, peak {result.peak_memory_mb:.0f} MB, {result.device})",
        err=True,
    )
    if result.output == "regions":  # shares of region colours were printed as if they were classes
        click.echo(f"  unlabeled regions: {len(result.classes)} colours tell neighbouring regions apart", err=True)
        return
    from geoseg.raster import shares

    # by area, as the preview, scene and the web page give them: pixels of a geographic or Web Mercator grid differ
    # in area (a 50-70 N scene's classes read 59.3% here and 61.02% in its preview and `scene`)
    share = shares([c["pixels"] for c in result.classes], [c["area_m2"] for c in result.classes])
    # nodata in the classes' unit: 13.8000 km² of classes beside 720,000.0 m² of nodata
    texts = area_texts([c["area_m2"] for c in result.classes] + [result.nodata_m2])  # m² under 1 km² (drone images)
    areas, nodata_text = texts[:-1], texts[-1]
    for c, area, s in zip(result.classes, areas, share):
        click.echo(f"  {right_aligned(c['name'], 12)}: {s or 0:5.1f}%{'  ' + area if area else ''}", err=True)
    if result.nodata_pixels:  # the shares above are of the ground with data
        nodata = nodata_text.strip() if result.nodata_m2 is not None else ""
        click.echo(f"  {'(no data)':>12}: {result.nodata_pixels:,} px{'  ' + nodata if nodata else ''}, in no class",
                   err=True)


class _bar:
    """A tqdm bar on stderr driven by the library's progress callback; shown after 1 s. While it is shown, log
    lines on stderr are written above it (a warning was glued to the bar's line, after its stale text)."""

    def __init__(self, label: str, quiet: bool, *, named: bool = False) -> None:
        # named: the callback takes (fraction, name), and the bar shows the name after it (survey's raster)
        self.label, self.quiet, self.named, self.bar, self.swapped = label, quiet, named, None, []

    def __enter__(self):
        if self.quiet:
            return None
        from tqdm import tqdm

        self.bar = tqdm(total=100, desc=_fitted(click.format_filename(self.label, shorten=True)), unit="%",
                        delay=1.0, leave=False, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}"
                        + ("{postfix}" if self.named else ""),  # tqdm puts ", " before it
                        disable=None)  # None: no bar where stderr is no terminal (a log file, nohup, cron)
        if not self.bar.disable:
            root = logging.getLogger()
            for handler in list(root.handlers):
                if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:
                    above = _AboveBar(handler)
                    root.removeHandler(handler)
                    root.addHandler(above)
                    self.swapped.append((handler, above))
        return self._update

    def _update(self, fraction: float, name: str | None = None) -> None:
        self.bar.update(round(100 * fraction, 1) - self.bar.n)
        if name is not None:
            self.bar.set_postfix_str(name, refresh=False)

    def __exit__(self, *exc):
        root = logging.getLogger()
        for handler, above in self.swapped:
            root.removeHandler(above)
            root.addHandler(handler)
        if self.bar is not None:
            self.bar.close()


BAR_ROOM = 32  # columns the bar's own parts take beside its label: ": 100%|", a bar of a few, "| 00:12<00:34"


def _fitted(label: str) -> str:
    """`label` cut (with an ellipsis in its middle) to leave the bar its percentage and times in the terminal's
    width: at 40 columns a long file name filled the line, and the bar showed nothing else."""
    import shutil

    room = max(12, shutil.get_terminal_size().columns - BAR_ROOM)
    if len(label) <= room:
        return label
    head = (room - 1) // 2
    return f"{label[:head]}…{label[len(label) - (room - 1 - head):]}"


class _AboveBar(logging.Handler):
    """The stderr handler `handler`'s lines, written through tqdm: the bar is cleared, the line written, the bar
    drawn again below it."""

    def __init__(self, handler: logging.StreamHandler) -> None:
        super().__init__(handler.level)
        self.setFormatter(handler.formatter)
        self.filters = list(handler.filters)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - as logging's own handlers: never the run's failure
            self.handleError(record)


class _client:
    """None for in-process threads, or a distributed Client for --workers/--scheduler."""

    def __init__(self, workers, scheduler, keras: bool = False, verbosity: int = 0) -> None:
        self.workers, self.scheduler, self.cluster, self.client = workers, scheduler, None, None
        self.keras, self.verbosity = keras, verbosity

    def __enter__(self):
        if not (self.workers or self.scheduler):
            return None
        from distributed import Client, LocalCluster

        quiet = max(logging.getLogger().level, logging.WARNING)  # distributed sets its loggers to INFO on import
        for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"]:
            logging.getLogger(name).setLevel(quiet)
        if self.workers:
            # distributed starts its HTTP server even without a dashboard, on port 8787 unless told otherwise:
            # with another cluster there (a second run), it retried and leaked the socket. Any free local port.
            loggers = [logging.getLogger(n) for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"]
            for logger in loggers:  # a failed start logs each worker's traceback, then raises: the error says it
                logger.setLevel(logging.CRITICAL if self.verbosity < 1 else quiet)
            import signal

            # the workers' processes ignore the terminal's Ctrl-C, which reaches the whole process group: each
            # printed a KeyboardInterrupt traceback (70 lines for 2 workers) before geoseg's one line, while this
            # process stops the run and closes them anyway (h110). Python keeps an inherited SIG_IGN at start-up.
            interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
            try:
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                            dashboard_address="127.0.0.1:0", silence_logs=quiet)
            except Exception as exc:  # distributed's own errors: 197 lines ending in "Nanny failed to start"
                raise click.ClickException(_cluster_failure(exc, self.workers)) from None
            finally:
                if interrupt is not None:
                    signal.signal(signal.SIGINT, interrupt)
                for logger in loggers:
                    logger.setLevel(quiet)
            self.client = Client(self.cluster)
            if self.verbosity < 1:
                from geoseg.cli.workers import quiet_cancellations

                self.client.run(quiet_cancellations)
            if self.keras:  # each worker process imports TensorFlow for the model; its C++ start-up
                from geoseg.cli.workers import QuietTensorFlow  # lines would run into the bar, once per worker

                self.client.register_plugin(QuietTensorFlow(self.verbosity), name="geoseg-quiet-tensorflow")
        else:
            if self.verbosity < 1:  # a scheduler lost mid-run: ~35 lines of distributed's tracebacks came before
                logging.getLogger("distributed.client").setLevel(logging.CRITICAL)  # geoseg's one-line error
            self.client = _connect(self.scheduler)
        return self.client

    def __exit__(self, *exc):
        if self.cluster is not None and self.verbosity < 1 and exc[0] is None:
            # every output is written: what the workers log while the scheduler closes under them is noise. On a
            # loaded machine (load 10) a worker's heartbeat met the closed scheduler: 30 lines of "Failed to
            # communicate with scheduler during heartbeat" and its traceback after a run that had succeeded
            from geoseg.cli.workers import quiet_shutdown

            try:
                self.client.run(quiet_shutdown)
            except Exception:  # noqa: BLE001 - a worker gone meanwhile: nothing of its to quiet
                pass
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            # a worker with TensorFlow loaded may take over 4 s to exit; the nanny then kills it, after
            # every output was written, with a warning that asks nothing of the user
            nanny = logging.getLogger("distributed.nanny")
            level = nanny.level
            nanny.setLevel(logging.ERROR)
            try:
                self.cluster.close()
            finally:
                nanny.setLevel(level)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


CONNECT_S = 30  # how long --scheduler waits for a scheduler to answer, all told


def _scheduler_put_back(before) -> None:
    """Set dask's default scheduler back to `before` (None: unset), as a Client's close does."""
    import dask

    if before is None:
        dask.config.config.pop("scheduler", None)
    else:
        dask.config.config["scheduler"] = before


def _connect(address: str):
    """A Client of the scheduler at `address`, or a ClickException. Bounded by `CONNECT_S` of wall-clock time:
    an address that takes connections and never answers as a scheduler (the dashboard's port, 8787, for 8786)
    hung for good inside Client(), whose own timeout did not end it."""
    import socket
    import threading
    from urllib.parse import urlsplit

    from distributed import Client

    from geoseg.raster import first_line

    try:  # an address without a port is left to distributed, whose "missing port number" says what is wrong
        parts = urlsplit(address if "://" in address else f"tcp://{address}")
        host = parts.hostname if parts.port is not None else None
    except ValueError:
        host = None
    made: dict = {}

    def connect() -> None:
        if host:  # here, within CONNECT_S: a slow resolver held the command past it (h138)
            try:
                socket.getaddrinfo(host, None)
            except (socket.gaierror, UnicodeError):  # "Timed out trying to connect ... after 10 s" for a typo (h134)
                made["unresolved"] = True
                return
        try:
            made["client"] = Client(address, timeout="10s")
        except BaseException as exc:  # noqa: BLE001 - raised below, on the command's thread
            made["error"] = exc
            if not made.get("abandoned"):  # given up on: put back at once, not over a later run's client
                _scheduler_put_back(before)

    import dask

    # a Client sets dask's default scheduler to itself before it connects, and one that failed to connect (or is
    # still trying) is never closed to set it back: every later dask.compute in this process (a script's, a
    # test's) asked for "dask.distributed" with no client (the fresh clone's tests failed so, 13 of them)
    before = dask.config.get("scheduler", None)

    thread = threading.Thread(target=connect, name="geoseg-connect", daemon=True)
    thread.start()
    thread.join(CONNECT_S)
    if thread.is_alive():
        made["abandoned"] = True
        _scheduler_put_back(before)
        raise click.ClickException(f"--scheduler: nothing at {address} answered as a Dask scheduler within "
                                   f"{CONNECT_S} s. Check the address: the scheduler's port (8786 by default), not "
                                   "its dashboard's (8787); leave --scheduler out to run here.")
    if made.get("unresolved"):
        raise click.ClickException(f"--scheduler: the host name {host!r} of {address} does not resolve to an "
                                   "address. Check its spelling, or give the scheduler's IP address; leave "
                                   "--scheduler out to run here.")
    error = made.get("error")
    if isinstance(error, (OSError, ValueError, TypeError)):  # ValueError: 'nonsense' has no port, a traceback
        raise click.ClickException(  # bad input: one line and status 1, not the usage (2)
            f"--scheduler: cannot reach a Dask scheduler at {address} ({error}). Check the address "
            "(tcp://HOST:8786) and that `dask scheduler` runs there; leave --scheduler out to run here.") from None
    if isinstance(error, MemoryError):  # a server that speaks first (SSH, an HTTP proxy's 400): its bytes read as a
        # message length, "Unable to allocate 2.82 EiB", a 69-line traceback and no JSON on stdout (h134)
        raise click.ClickException(
            f"--scheduler: what answered at {address} is not a Dask scheduler (its first bytes were no Dask "
            "message). Check the address (tcp://HOST:8786) and that `dask scheduler` runs there; leave --scheduler "
            "out to run here.") from None
    if isinstance(error, Exception) and not isinstance(error, click.ClickException):
        import struct

        # a server that sends 8 bytes and closes: 8 zero bytes read as a message of no frames, and struct.error
        # ("unpack_from requires a buffer of at least 8 bytes") was a 40-line traceback
        said = f"{type(error).__name__}: {first_line(error)}"
        raise click.ClickException(
            (f"--scheduler: what answered at {address} is not a Dask scheduler (its first bytes were no Dask message: "
             f"{said})" if isinstance(error, struct.error) else
             f"--scheduler: could not connect to a Dask scheduler at {address} ({said})")
            + ". Check the address (tcp://HOST:8786) and that `dask scheduler` runs there; leave --scheduler out to "
            "run here.") from None
    if error is not None:
        raise error
    return made["client"]


def _cluster_failure(exc: BaseException, workers: int) -> str:
    """One line for a local Dask cluster that would not start, naming the open-file limit where that was it."""
    import errno
    import resource

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno == errno.EMFILE:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            return (f"--workers {workers}: the local Dask cluster could not start: this process may open only {soft} "
                    "files (ulimit -n). Raise the limit (ulimit -n 1024), or leave out --workers to run in threads.")
        cause = cause.__cause__ or cause.__context__
    return (f"--workers {workers}: the local Dask cluster could not start ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Leave out --workers to run in threads.")
