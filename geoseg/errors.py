"""One exception hierarchy for geoseg; each message names the value and the fix."""

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
