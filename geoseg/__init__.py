"""geoseg: segment aerial, drone and satellite rasters of any size into georeferenced class masks."""

import importlib.abc
import logging
import sys


class _GdalBeforeTensorFlow(importlib.abc.MetaPathFinder):
    """Loads GDAL's vector library (pyogrio) just before TensorFlow is first imported.

    TensorFlow's library exports a SQLite of its own, built without R*Tree; a GDAL loaded after
    it binds to that SQLite and writes every GeoPackage without its spatial index (and the survey's
    appends print "no such module: rtree"). Loading GDAL first keeps its own SQLite. A finder
    rather than an import here, so commands that never load a model do not pay for GDAL's start.
    """

    done = False

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" and not self.done:  # stays in sys.meta_path: removing itself mid-search
            self.done = True                        # would skip the finder after it
            import pyogrio  # noqa: F401
        return None


if "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _GdalBeforeTensorFlow())
elif "pyogrio" not in sys.modules:
    logging.getLogger(__name__).warning(
        "TensorFlow was imported before geoseg: GeoPackages written in this process will lack their spatial "
        "index (TensorFlow's SQLite has no R*Tree). Import geoseg first to keep it.")

from geoseg.errors import GeosegError  # noqa: E402
from geoseg.models import DEFAULT_MODEL, list_models  # noqa: E402
from geoseg.pipeline import SegmentResult, segment  # noqa: E402
from geoseg.vector import vectorize  # noqa: E402
from geoseg.workflows import flood, scene, survey  # noqa: E402
from geoseg.workflows.evaluate import compare, evaluate  # noqa: E402

__all__ = [
    "DEFAULT_MODEL",
    "GeosegError",
    "SegmentResult",
    "compare",
    "evaluate",
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
