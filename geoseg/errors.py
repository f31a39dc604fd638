"""One exception hierarchy for geoseg; each message names the value and the fix."""

import threading
import warnings
from contextlib import contextmanager

__all__ = [
    "GeosegError",
    "InputError",
    "RasterReadError",
    "BandError",
    "OutputError",
    "ModelError",
    "ModelNotFoundError",
    "CardError",
    "TilingError",
    "ClusterError",
    "catch_warnings",
]


class GeosegError(Exception):
    """Root of every error geoseg raises on purpose."""

    def __reduce__(self):
        # rebuilt from the message: tblib, which Dask's workers send errors back with, cannot rebuild a class
        # with both ValueError and OSError among its bases (RasterReadError) and sent a bare Exception instead
        return type(self), self.args


class InputError(GeosegError, ValueError):
    """An argument or input file cannot be used as given."""


class RasterReadError(InputError, OSError):
    """A path is missing or is not a raster GDAL can read."""


class WorkerReadError(RasterReadError):
    """A Dask worker could not open a raster that it was to read a chunk of: one that joined after the run checked
    every worker's files and cannot see it, or a file moved meanwhile. Built from (path, worker, reason), so that it
    crosses from the worker as itself."""

    def __init__(self, path: str, worker: str, reason: str) -> None:
        super().__init__(path, worker, reason)
        self.path, self.worker, self.reason = path, worker, reason

    def __str__(self) -> str:
        return (f"{self.path}: Dask worker {self.worker} cannot read this file ({self.reason}): if it joined after the "
                "run checked its workers' files, put the raster on a path every worker can read (a shared disk); if "
                "the file was moved, deleted or replaced during the run, put it back. Then run again, or run without "
                "--scheduler.")

    def unseen(self) -> str:
        """The message where this machine still reads the file: the worker does not see it."""
        return (f"{self.path}: Dask worker {self.worker} cannot read this file ({self.reason}), which this machine "
                "reads: a worker that joined after the run checked every worker's files? Put the raster on a path "
                "every worker can read (a shared disk), or run without --scheduler.")


class BandError(InputError):
    """The bands of a raster do not fit what the model or the user asked for."""


class OutputError(GeosegError, OSError):
    """An output cannot be written where it was asked for."""


class ModelError(GeosegError, ValueError):
    """A model or its card is unusable."""


class ModelNotFoundError(ModelError, LookupError):
    """No model of that name or path is known to the registry."""


class CardError(ModelError):
    """A model card is missing a field or holds a bad value."""


class TilingError(GeosegError, ValueError):
    """Chunk, tile or margin sizes that cannot work together."""


class ClusterError(GeosegError, RuntimeError):
    """A Dask cluster failed a run: its workers died, or its scheduler went away."""


def apart(a: float, b: float, *, decimals: int = 1) -> tuple[str, str]:
    """`a` and `b` with thousands separators, both to the fewest decimals (at least `decimals`, at most 6) at which
    they read differently: a refusal read "0.2 MB decoded; this server takes at most 0.2 MB" for 0.20 and 0.16 MB."""
    for places in range(decimals, 7):
        texts = f"{a:,.{places}f}", f"{b:,.{places}f}"
        if texts[0] != texts[1]:
            return texts
    return f"{a:,.{decimals}f}", f"{b:,.{decimals}f}"  # equal, or as good as


_FILTERS_LOCK = threading.Lock()
_filters_held = 0
_filters_saved: list = []


@contextmanager
def catch_warnings():
    """``warnings.catch_warnings()`` for code that several threads run at once (Dask's, survey's jobs, the web
    page's workers): the filters are saved when the first thread enters and put back when the last one leaves.

    The standard one is not thread-safe: each block put back what it had saved, so interleaved blocks left one
    thread's filters in place, and ``survey(jobs=3)`` left the process ignoring rasterio's
    NotGeoreferencedWarning (and more) for good. While any such block runs, the filters set in them hold in
    every thread.
    """
    global _filters_held, _filters_saved
    with _FILTERS_LOCK:
        if not _filters_held:
            _filters_saved = warnings.filters[:]
        _filters_held += 1
    try:
        yield
    finally:
        with _FILTERS_LOCK:
            _filters_held -= 1
            if not _filters_held:
                warnings.filters[:] = _filters_saved
                warnings._filters_mutated()  # as catch_warnings does: the registries' caches are stale
