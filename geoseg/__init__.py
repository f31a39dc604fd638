"""geoseg: segment aerial, drone and satellite rasters of any size into georeferenced class masks."""

import logging

from geoseg.errors import GeosegError
from geoseg.models import DEFAULT_MODEL, list_models
from geoseg.pipeline import SegmentResult, segment
from geoseg.vector import vectorize
from geoseg.workflows import flood, scene, survey

__all__ = [
    "DEFAULT_MODEL",
    "GeosegError",
    "SegmentResult",
    "flood",
    "list_models",
    "scene",
    "segment",
    "survey",
    "vectorize",
    "__version__",
]
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
