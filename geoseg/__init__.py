"""geoseg: segment aerial, drone and satellite rasters of any size into georeferenced class masks."""

import importlib.abc
import logging
import sys
from typing import TYPE_CHECKING, Any

from geoseg._locale import neutral_case_rules

neutral_case_rules()  # before GDAL and PROJ are used: a Turkish locale's 'i' broke their name lookups


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

# what `geoseg.X` names, imported when first used: `import geoseg` (and so the command, whose Ctrl-C during
# these imports was a traceback) no longer loads Dask, rasterio and the models before it needs them
_LAZY = {
    "GeosegError": "geoseg.errors",
    "DEFAULT_MODEL": "geoseg.models",
    "list_models": "geoseg.models",
    "SegmentResult": "geoseg.pipeline",
    "SceneResult": "geoseg.workflows.scene",
    "FloodResult": "geoseg.workflows.flood",
    "SurveyResult": "geoseg.workflows.survey",
    "VectorResult": "geoseg.vector",
    "Evaluation": "geoseg.workflows.evaluate",
    "Comparison": "geoseg.workflows.evaluate",
    "segment": "geoseg.pipeline",
    "vectorize": "geoseg.vector",
    "flood": "geoseg.workflows",
    "scene": "geoseg.workflows",
    "survey": "geoseg.workflows",
    "compare": "geoseg.workflows.evaluate",
    "evaluate": "geoseg.workflows.evaluate",
}


# subpackages, imported when first named: `import geoseg; geoseg.models.get_segmenter(...)` worked while
# `import geoseg` loaded them all, and did not after it became lazy (the pipeline benchmark died on it)
_SUBMODULES = ("cli", "errors", "files", "inference", "models", "pipeline", "preview", "raster", "sieve", "tiling",
               "vector", "web", "workflows")


if TYPE_CHECKING:  # what type checkers and IDEs see of the lazy names: without it every one was Any (mypy) or
    # "Any | ModuleType" (pyright: "Object of type ModuleType is not callable" on geoseg.segment(...))
    from geoseg import (cli, errors, files, inference, models, pipeline, preview, raster, sieve, tiling, vector,  # noqa: F401
                        web, workflows)
    from geoseg.errors import GeosegError
    from geoseg.models import DEFAULT_MODEL, list_models
    from geoseg.pipeline import SegmentResult, segment
    from geoseg.vector import VectorResult, vectorize
    from geoseg.workflows import flood, scene, survey
    from geoseg.workflows.evaluate import Comparison, Evaluation, compare, evaluate
    from geoseg.workflows.flood import FloodResult
    from geoseg.workflows.scene import SceneResult
    from geoseg.workflows.survey import SurveyResult


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # the import sets it as an attribute too
    raise AttributeError(f"module 'geoseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the API and the package's own dunders: `geoseg.<Tab>` in IPython offered Any, sys, logging and more beside it
    return sorted({name for name in globals() if name.startswith("_")} | set(__all__) | set(_LAZY) | set(_SUBMODULES))


__all__ = [
    "Comparison",
    "DEFAULT_MODEL",
    "Evaluation",
    "FloodResult",
    "GeosegError",
    "SceneResult",
    "SegmentResult",
    "SurveyResult",
    "VectorResult",
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
