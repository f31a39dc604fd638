"""Find models by name: the shipped zoo, folders on GEOSEG_MODEL_PATH, and plugins."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from geoseg.errors import ModelError, ModelNotFoundError
from geoseg.files import whitespace_note
from geoseg.raster import RASTER_SUFFIXES, first_line
from geoseg.models.card import ModelCard, read_card
from geoseg.models.segmenter import Segmenter, load_bundle

__all__ = ["DEFAULT_MODEL", "ModelEntry", "Problem", "builtin_names", "get_segmenter", "list_models", "resolve_model",
           "with_card"]

DEFAULT_MODEL = "landcover-unet"
ZOO = Path(__file__).resolve().parent.parent / "zoo"
# Models loaded in this process, the least recently used dropped first: Keras models (about 50 MB each; a
# notebook comparing checkpoints kept every one) and baselines (a few KB; each raster's calibrated cuts are a
# reference of their own) counted apart, so that a server's uploads do not push its U-Net out
_CACHE: dict[bool, OrderedDict[tuple, Segmenter]] = {True: OrderedDict(), False: OrderedDict()}
_CACHE_SIZE = {True: 32, False: 4}  # by whether built in
_CACHE_LOCK = threading.Lock()


BUILTIN = "builtin:"


@dataclass(frozen=True)
class ModelEntry:
    """A model the registry knows: its name, card, bundle path (None for built-ins) and where it was found."""

    name: str
    card: ModelCard
    path: Path | None
    source: str

    @property
    def ref(self) -> str:
        """What `get_segmenter` takes: the bundle path, or ``builtin:NAME``."""
        return str(self.path) if self.path is not None else BUILTIN + self.name


def builtin_names() -> set[str]:
    """Names of the built-in baselines, which run on numpy alone (no TensorFlow)."""
    return {entry.name for entry in _builtins()}


def _builtins() -> list[ModelEntry]:
    from geoseg.models.classical import BASELINES, REGION_BASELINES, ClassicalSegmenter, RegionSegmenter

    segmenters = [*(ClassicalSegmenter(m, nir=nir) for m in BASELINES for nir in (False, True)),
                  *(RegionSegmenter(m) for m in REGION_BASELINES)]
    return [ModelEntry(seg.card.name, seg.card, None, "built-in") for seg in segmenters]


@dataclass(frozen=True)
class Problem:
    """Something the registry skipped: a bundle with a bad card, a folder that is not there, a broken plugin."""

    path: Path | None
    message: str


def _bundles_in(folder: Path, source: str, problems: list[Problem]) -> list[ModelEntry]:
    """The bundles in `folder` (NAME.keras + NAME.json), and legacy NAME.h5 models with a NAME.json card.

    A model file without its card is a problem to report, not a file to pass over: it vanished from
    `geoseg models` and `models check` without a word. Weights alone (``NAME.weights.h5``, as Keras
    saves an encoder's) are no model and are passed over.
    """
    entries = []
    for card_path in sorted(folder.glob("*.json")):
        model = next((m for m in (card_path.with_suffix(".keras"), card_path.with_suffix(".h5")) if m.is_file()), None)
        if model is None:
            continue
        try:
            card = read_card(card_path)
        except ModelError as exc:  # one bad bundle must not hide the others
            problems.append(Problem(card_path, str(exc)))
            continue
        entries.append(ModelEntry(card.name, card, model, source))
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    models = {f.with_suffix("").name for f in files if f.suffix.lower() in (".keras", ".h5")}
    for path in files:  # UPPER.KERAS was passed over without a word
        if path.suffix.lower() in MODEL_SUFFIXES and path.suffix not in MODEL_SUFFIXES and path.is_file():
            if path.name.lower().endswith(".weights.h5"):  # weights alone: no model, whatever its case
                continue
            if path.suffix.lower() == ".json" and path.with_suffix("").name not in models:  # any other JSON file
                continue
            problems.append(Problem(path, _upper_case_suffix(path)))
    for model in sorted([*folder.glob("*.keras"), *folder.glob("*.h5")]):
        if model.name.endswith(".weights.h5"):  # weights alone (an encoder's, as the README keeps them): no model
            continue
        if not model.with_suffix(".json").is_file():
            problems.append(Problem(model, f"{model}: no card {model.with_suffix('.json').name} "
                                    "beside it; a model here is NAME.keras (or a legacy NAME.h5) plus its card "
                                    "NAME.json (`geoseg models show landcover-unet` shows the format)."))
    return entries


MODEL_SUFFIXES = (".keras", ".json", ".h5")


def _upper_case_suffix(path: Path) -> str:
    """Why a model file of an upper-case extension (a Windows copy's UPPER.KERAS) is not read, and what to do."""
    return (f"{path}: model files are found by their lower-case extensions (.keras, .json, .h5; Keras reads no "
            f"other), and this one is {path.suffix}. Rename it {path.stem}{path.suffix.lower()}, and its card or "
            "model beside it likewise.")


def _plugin_folders(problems: list[Problem]) -> list[tuple[Path, str]]:
    folders = []
    for ep in entry_points(group="geoseg.models"):
        try:
            target = ep.load()
            given = target() if callable(target) and not hasattr(target, "predict_proba") else target
            if not isinstance(given, (str, os.PathLike)):  # a Segmenter: "expected str, bytes or os.PathLike"
                problems.append(Problem(None, (
                    f"plugin {ep.name} ({ep.value}) gives {_what(given)}, not a folder: a geoseg.models "
                    "entry point names a folder of bundles (NAME.keras + NAME.json), or a function that returns "
                    "one. Save the model as a Keras bundle (see README, Models).")))
                continue
            folder = Path(os.path.abspath(given))
        # SystemExit too: a plugin that exits at import (a module-level argparse reading geoseg's arguments, a
        # licence check) ended every command, `segment -m threshold` included, with its message alone (h141)
        except (Exception, SystemExit) as exc:  # a plugin's import or folder function can fail in any way
            problems.append(Problem(None, f"plugin {ep.name} ({ep.value}) failed to give its model folder: "
                                          f"{type(exc).__name__}: {exc}"))
            continue
        folders.append((folder, f"plugin {ep.name}"))
    return folders


def _what(thing) -> str:
    return f"the class {thing.__name__}" if isinstance(thing, type) else f"a {type(thing).__name__} object"


_PLUGINS_IMPORTED = False
PLUGIN_FAILURES: list[str] = []  # plugins whose import failed in this process: "NAME (VALUE): Error: why"


def _import_plugins() -> None:
    """Import every `geoseg.models` plugin once per process, before a bundle loads: the Keras layers a plugin
    registers (``keras.saving.register_keras_serializable``) were unknown to a model loaded by path, or in a
    Dask worker ("Could not locate class"), since only listing the models imported them. A plugin that fails
    is left to `list_models` to report."""
    global _PLUGINS_IMPORTED
    if _PLUGINS_IMPORTED:
        return
    _PLUGINS_IMPORTED = True
    for ep in entry_points(group="geoseg.models"):
        try:
            ep.load()
        except (Exception, SystemExit) as exc:  # reported where the models are listed, and where a layer is missing
            PLUGIN_FAILURES.append(f"{ep.name} ({ep.value}): {type(exc).__name__}: {first_line(exc)}")


def list_models(problems: list[Problem] | None = None) -> list[ModelEntry]:
    """Return every model found: built-in baselines, then the zoo, GEOSEG_MODEL_PATH and plugins.

    A later duplicate name is skipped. Bundles whose card is unusable, GEOSEG_MODEL_PATH
    entries that are not folders and plugins that fail are skipped too, so that one bad
    bundle does not hide the rest; pass a list as `problems` to learn what was skipped.
    """
    problems = [] if problems is None else problems
    places = [(ZOO, "zoo")]
    for part in os.environ.get("GEOSEG_MODEL_PATH", "").split(os.pathsep):
        if part:  # absolute: the path it gives a model travels to Dask workers, whose working folder is their own
            places.append((Path(os.path.abspath(part)), "GEOSEG_MODEL_PATH"))
    places += _plugin_folders(problems)
    seen, entries = {}, []
    for entry in _builtins():
        seen[entry.name] = entry
        entries.append(entry)
    for folder, source in places:
        if not folder.is_dir():
            problems.append(Problem(folder, f"{folder}: {source} names this, but it is not a folder."))
            continue
        for entry in _bundles_in(folder, source, problems):
            if entry.name in seen and seen[entry.name].path is not None and \
                    seen[entry.name].path.resolve() == entry.path.resolve():
                continue  # the same bundle, its folder listed twice (the zoo on GEOSEG_MODEL_PATH too)
            if entry.name not in seen:
                seen[entry.name] = entry
                entries.append(entry)
            else:  # said nothing: `geoseg models` hid it and `-m STEM` said "no model named"
                first = seen[entry.name]
                problems.append(Problem(entry.path.with_suffix(".json"), (
                    f"{entry.path.with_suffix('.json')}: its card's name {entry.name!r} is taken by "
                    f"{first.path or 'a built-in model'} ({first.source}), found first. Rename one (the card's "
                    f"'name'), or pass this bundle by its path: -m {entry.path}.")))
    return entries


def resolve_model(ref: str | os.PathLike | None) -> str:
    """Return the reference `get_segmenter` takes: a bundle path, or ``builtin:NAME`` for a baseline.

    `ref` is a model name, a path to ``.keras``/``.json``, or None for the default.
    """
    ref = DEFAULT_MODEL if ref is None else ref
    if not isinstance(ref, (str, os.PathLike)):  # a Segmenter object: "no model named '<... object at 0x7f...>'"
        raise ModelNotFoundError(f"a model is given by its name or the path of its bundle, not as "
                                 f"{_what(ref)}. Save it as a Keras bundle (NAME.keras + NAME.json; "
                                 "see README, Models) and pass its path or name.")
    if str(ref).startswith(BUILTIN):
        return str(ref)
    text, _, query = str(ref).partition("?")
    if not text.strip():  # "" is the working folder: "`.` is a folder" of a name never typed ("$MODEL" unset)
        raise ModelNotFoundError(f"the model given is empty ({str(ref)!r}; an unset shell variable?). Pass a name "
                                 "from `geoseg models` or the path of a .keras bundle.")
    path = Path(text)
    if path.suffix.lower() in MODEL_SUFFIXES and path.suffix not in MODEL_SUFFIXES:  # was "no model named ..."
        raise ModelNotFoundError(_upper_case_suffix(path))
    if path.suffix == ".h5":  # legacy Keras model; its card may come as ?card=PATH
        if not path.is_file():
            raise ModelNotFoundError(f"model file {path} not found. Pass an existing .h5 or .keras model.")
        return str(path.resolve()) + (f"?{query}" if query else "")
    if path.suffix in (".keras", ".json"):
        if path.with_suffix(".keras").is_dir():  # was "model file dir.keras not found", of a folder that is there
            raise ModelNotFoundError(f"{path.with_suffix('.keras')} is a folder, not a model file: a bundle is the "
                                     "file NAME.keras (a zip archive, as Keras's model.save writes it) beside its "
                                     "card NAME.json. Pass the bundle's .keras file, or a name from `geoseg models`.")
        if not path.with_suffix(".keras").is_file():
            raise ModelNotFoundError(
                f"model file {path.with_suffix('.keras')} not found. Pass an existing bundle "
                "or a name from `geoseg models`."
            )
        return str(path.with_suffix(".keras").resolve()) + (f"?{query}" if query else "")
    problems: list[Problem] = []
    entries = list_models(problems)
    for entry in entries:
        if entry.name == text:
            return entry.ref + (f"?{query}" if query else "")
    for problem in problems:  # a bundle of that name that was skipped: say why
        if problem.path is not None and problem.path.suffix.lower() in MODEL_SUFFIXES and problem.path.stem == text:
            raise ModelError(problem.message)
    for entry in entries:  # a file name is not a model name
        if entry.path is not None and entry.path.stem == text:
            raise ModelNotFoundError(f"no model named {text!r}: the bundle {entry.path} calls itself {entry.name!r} "
                                     f"in its card. Pass -m {entry.name}, or the bundle's path.")
    if path.is_dir():  # "no model named 'odd'" of a folder of bundles
        raise ModelNotFoundError(f"{path} is a folder; -m (model=) takes a model's name or its bundle's .keras. Put "
                                 f"the folder on GEOSEG_MODEL_PATH to make its bundles' names known, or pass "
                                 f"{path / 'NAME.keras'}.")
    if path.is_file() and path.suffix.lower() in RASTER_SUFFIXES:  # was "no model named 'scene.tif'"
        raise ModelNotFoundError(f"{path} is a raster, not a model; -m (model=) takes a model's name from "
                                 "`geoseg models` or the path of its bundle's .keras. Pass the raster as the input.")
    names = ", ".join(e.name for e in entries) or "none"
    broken = [p.message for p in problems if p.path is None]  # a plugin that failed may be the one that has it
    raise ModelNotFoundError(
        f"no model named {str(ref)!r}.{whitespace_note(text)} Available: {names}. Pass a name from `geoseg models` "
        "or the path of a .keras bundle." + (f" Skipped: {'; '.join(broken)}." if broken else "")
    )


def get_segmenter(ref: str | os.PathLike | None) -> Segmenter:
    """Load a model once per process and return it; later calls reuse it.

    Dask workers call this from the chunk function, so each process loads each
    model once, by path, instead of receiving it pickled with every task.
    Built-in references may carry parameters: ``builtin:threshold?water=0.1&vegetation=0.2``.
    """
    key = resolve_model(ref)
    builtin = key.startswith(BUILTIN)
    stamp = (key, () if builtin else _files_stamp(key))  # a bundle saved again at its path is loaded again: the
    cache = _CACHE[builtin]  # old weights were used until the process ended
    with _CACHE_LOCK:
        if stamp in cache:
            cache.move_to_end(stamp)
            return cache[stamp]
        model = _builtin(key) if builtin else _bundle(key)
        for older in [k for k in cache if k[0] == key]:
            del cache[older]
        cache[stamp] = model
        while len(cache) > _CACHE_SIZE[builtin]:
            cache.popitem(last=False)
        return model


def _files_stamp(key: str) -> tuple:
    """Size, modification time and inode of a bundle's files (the model file, its card, a legacy model's card)."""
    from urllib.parse import parse_qs

    path, _, query = key.partition("?")
    files = [Path(path), Path(path).with_suffix(".json"), *map(Path, parse_qs(query).get("card", []))]
    stamp = []
    for file in files:
        try:
            stat = file.stat()
            stamp.append((str(file), stat.st_size, stat.st_mtime_ns, stat.st_ino))
        except OSError:
            stamp.append((str(file), None))
    return tuple(stamp)


def _bundle(key: str) -> Segmenter:
    from urllib.parse import parse_qs

    path, _, query = key.partition("?")
    options = parse_qs(query, keep_blank_values=True)  # '?tta=' was dropped, as if not given
    unknown = sorted(set(options) - {"card", "precision", "tta"})
    if unknown:  # were ignored: landcover-unet?x=1 ran as if the option were not there
        raise ModelError(f"{path}: unknown model option(s) {', '.join(unknown)}; a bundle takes card, precision "
                         "and tta (e.g. 'landcover-unet?precision=bfloat16&tta=flips').")
    twice = sorted(k for k, v in options.items() if len(v) > 1)
    if twice:
        raise ModelError(f"{path}: model option(s) given twice: {', '.join(twice)}. Received: {query}")
    _import_plugins()
    return load_bundle(path, card=options.get("card", [None])[0], precision=options.get("precision", ["float32"])[0],
                       tta=options.get("tta", ["none"])[0])


def with_card(ref: str | os.PathLike | None, card: str | os.PathLike | None = None,
              precision: str | None = None, tta: str | None = None) -> str | os.PathLike | None:
    """A model reference that carries an explicit card (legacy .h5 models), a compute precision or a
    test-time augmentation (``tta="flips"``). Built-in baselines take neither precision nor tta."""
    from urllib.parse import urlencode

    options = {}
    if card is not None:
        options["card"] = os.path.abspath(card)
    if precision not in (None, "float32"):
        options["precision"] = precision
    if tta not in (None, "none"):
        options["tta"] = tta
    if not options:
        return ref
    base = resolve_model(ref)
    if base.startswith(BUILTIN):
        if card is not None:  # it was dropped without a word
            raise ModelError(f"{base[len(BUILTIN):].partition('?')[0]} is a built-in baseline with its own card; "
                             "--card (card=) is for a legacy Keras .h5 model that has none. Leave it out, or pass "
                             "the .h5 model with -m.")
        return ref
    return f"{base}{'&' if '?' in base else '?'}{urlencode(options)}"


def _builtin(key: str) -> Segmenter:
    from urllib.parse import parse_qsl

    from geoseg.models.classical import BASELINES, REGION_BASELINES, ClassicalSegmenter, RegionSegmenter

    name, _, query = key[len(BUILTIN):].partition("?")
    method, nir = (name[:-4], True) if name.endswith("-nir") else (name, False)
    if name not in REGION_BASELINES and method not in BASELINES:
        raise ModelNotFoundError(f"no built-in model {name!r}. Built-ins: {', '.join(BASELINES)} (and -nir), "
                                 f"{', '.join(REGION_BASELINES)}.")
    allowed = ("spacing", "compactness") if name in REGION_BASELINES else ("water", "vegetation")
    params = {}
    for k, v in parse_qsl(query, keep_blank_values=True):  # a bad one was a TypeError or ValueError inside Dask
        if k not in allowed:
            raise ModelError(f"{name} takes the option(s) {' and '.join(allowed)}. Received: {k}={v}")
        if k in params:
            raise ModelError(f"{name}: {k} is given twice. Received: {query}")
        try:
            params[k] = float(v)
        except ValueError:
            raise ModelError(f"{name}: {k} must be a number. Received: {k}={v}") from None
    if name in REGION_BASELINES:
        return RegionSegmenter(name, **params)
    if len(params) == 1:  # the pipeline calibrates only a reference without options
        raise ModelError(f"{name} takes both cuts (water and vegetation) or neither, and then computes them "
                         f"on the whole raster. Received: {query}")
    return ClassicalSegmenter(method, nir=nir, **params)
