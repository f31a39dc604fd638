"""The Segmenter protocol and its Keras implementation."""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from geoseg.errors import CardError, ModelError, catch_warnings
from geoseg.models.card import ALIGNMENT, ModelCard, aligned_empty, read_card
from geoseg.raster import first_line

__all__ = ["FlipAveraged", "KerasSegmenter", "Segmenter", "TTA_MODES", "load_bundle"]

log = logging.getLogger(__name__)

# Model calls that may run at once in one process; None: GEOSEG_MODEL_CALLS, default 1.
# TensorFlow already spreads one call over every core (and a GPU runs one at a time), while
# Dask runs a chunk per core: more concurrent calls mostly multiply the activations held.
# 8192^2 px, default model, 2 cores: 1.19 Mpx/s at 3.4 GB peak RSS with one call, 1.23 Mpx/s
# at 5.2 GB with two (benchmarks/bench_pipeline.py).
MODEL_CALLS: int | None = None


def model_calls() -> int:
    """How many calls of one model may run at once: `MODEL_CALLS` or ``GEOSEG_MODEL_CALLS``."""
    if MODEL_CALLS is not None:
        return MODEL_CALLS
    value = os.environ.get("GEOSEG_MODEL_CALLS", "").strip() or "1"
    if not value.isdigit() or int(value) < 1:
        raise ModelError(f"GEOSEG_MODEL_CALLS must be a whole number of at least 1. Received: {value!r}")
    return int(value)


class RunCancelled(Exception):
    """The run a model call belongs to was interrupted: the call is not made."""


_CANCELLED: set[str] = set()  # runs interrupted (Ctrl-C, SIGTERM) whose queued model calls are not to be made
_RUN = threading.local()  # the run of this thread's model calls


@contextmanager
def calls_of_run(run: str | None) -> Iterator[None]:
    """Mark this thread's model calls in the block as `run`'s, so that `cancel_run` stops those not yet made."""
    before, _RUN.id = getattr(_RUN, "id", None), run
    try:
        yield
    finally:
        _RUN.id = before


def cancel_run(run: str) -> None:
    """Refuse the model calls of `run` that have not started: after a Ctrl-C, a thread waiting for the model
    ran a whole chunk more (45 s after "Interrupted", past a batch scheduler's grace before SIGKILL)."""
    _CANCELLED.add(run)


def _check_run() -> None:
    if getattr(_RUN, "id", None) in _CANCELLED:
        raise RunCancelled(f"run {_RUN.id} was interrupted")


@runtime_checkable
class Segmenter(Protocol):
    """Anything with a card that turns a normalised batch into class probabilities."""

    card: ModelCard

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Map float32 (N, H, W, bands) to float32 (N, H, W, classes) probabilities."""
        ...


SHAPES_KEPT = 8  # graphs per chunk shape kept for a model that cannot run on one graph of any shape


class KerasSegmenter:
    """A Keras model plus its card.

    Parameters
    ----------
    model : keras.Model
        Takes (N, H, W, bands) and returns (N, H, W, classes) probabilities.
    card : ModelCard
        Must agree with the model on bands and classes.
    source : str
        Where the model came from, for messages.
    """

    def __init__(self, model, card: ModelCard, *, source: str = "model") -> None:
        _check_model_matches_card(model, card, source)
        # one sigmoid channel, P(second class): the first class is 1 - p (an argmax of one channel was always 0)
        self.binary = tuple(model.outputs[0].shape)[-1] == 1
        self.model = model
        self.card = card
        self.source = source
        self._lock = threading.Lock()
        self._calls = threading.BoundedSemaphore(model_calls())
        self._fn = None
        self._top = None

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Map float32 (N, H, W, bands) to float32 (N, H, W, classes) probabilities.

        At most `model_calls()` (``GEOSEG_MODEL_CALLS``, default 1) run at once; other
        threads meanwhile read and write their chunks.
        """
        fn = self._fn or self._build()
        batch = _model_input(batch)
        with self._calls:
            _check_run()
            return np.asarray(fn(batch))

    def predict_top(self, batch: np.ndarray) -> np.ndarray:
        """Map float32 (N, H, W, bands) to float32 (N, H, W, 2): each pixel's winning class and its probability.

        Computed inside the model's graph, so a GPU sends back 2 values a pixel instead of one per
        class: on an H200 that made a 2048 px chunk's call 3.3x as fast (benchmarks/bench_gpu_model.py).
        """
        fn = self._top or self._build(top=True)
        batch = _model_input(batch)
        with self._calls:
            _check_run()
            return np.asarray(fn(batch))

    def _build(self, *, top: bool = False):
        import tensorflow as tf

        model, binary = self.model, self.binary

        def probabilities(x):
            proba = tf.cast(model(x, training=False), tf.float32)  # a nested head stays bfloat16 in bfloat16
            return tf.concat([1.0 - proba, proba], axis=-1) if binary else proba

        def classes(x):  # argmax and max of the probabilities, as inference.top_of takes them
            proba = probabilities(x)
            return tf.stack([tf.cast(tf.argmax(proba, axis=-1), tf.float32), tf.reduce_max(proba, axis=-1)], axis=-1)

        def traced(fn, spec):
            # One graph for every shape; a model whose layers need static sides (Keras 3.15's bilinear
            # UpSampling2D: "symbolic tf.Tensor as a Python bool") gets one graph per shape instead.
            # Each shape its own function, traced once, the last SHAPES_KEPT kept: one function retraced for every
            # shape printed TensorFlow's retracing warning from the fifth on, and kept every graph of every raster's
            # edge chunks for good (h119).
            # a partial, as below: every model's function has the same code, so five models loaded in one process
            # (`compare`, a notebook) printed TensorFlow's retracing warning, each traced once
            general = tf.function(functools.partial(fn), input_signature=[spec])
            per_shape: dict = {}
            state = {"general": True}

            def call(batch):
                if state["general"]:
                    try:
                        return general(batch)
                    except tf.errors.OperatorNotAllowedInGraphError:
                        state["general"] = False
                key = tuple(batch.shape[1:3])
                graph = per_shape.pop(key, None)
                if graph is None:  # a partial: TensorFlow counts traces by a function's code, which a partial
                    # lacks, so each shape's one trace is counted apart and not taken for retracing
                    graph = tf.function(functools.partial(fn), input_signature=[
                        tf.TensorSpec([None, *key, spec.shape[-1]], tf.float32)])
                per_shape[key] = graph  # the most recent last
                while len(per_shape) > SHAPES_KEPT:
                    per_shape.pop(next(iter(per_shape)))
                return graph(batch)
            return call

        with self._lock:
            spec = tf.TensorSpec([None, None, None, self.card.n_bands], tf.float32)
            if top and self._top is None:
                self._top = traced(classes, spec)
            if not top and self._fn is None:
                self._fn = traced(probabilities, spec)
        return self._top if top else self._fn


def _model_input(batch: np.ndarray):
    """`batch` as float32 for the model's graph: a tensor sharing its memory where TensorFlow can take it as it is.

    TensorFlow copies a NumPy argument, twice over where it does not start at a multiple of 64 bytes (as NumPy's
    large arrays do not): a 2624² RGB chunk's call peaked at 3142 MB, 2905 MB with its input shared through
    DLPack (benchmarks/bench_input_copy.py; the same outputs). Any other batch (a flipped view, another dtype, a
    read-only array) is copied once into aligned memory first. TensorFlow aborts the process on a shared tensor
    that is not aligned, so only one checked to be is shared.
    """
    import tensorflow as tf

    batch = np.asarray(batch)
    if batch.size == 0:
        return np.ascontiguousarray(batch, np.float32)
    if not (batch.dtype == np.float32 and batch.flags.c_contiguous and batch.flags.writeable
            and batch.ctypes.data % ALIGNMENT == 0):
        copy = aligned_empty(batch.shape, np.float32)
        np.copyto(copy, batch, casting="unsafe")  # as ascontiguousarray(batch, float32)
        batch = copy
    return tf.experimental.dlpack.from_dlpack(batch.__dlpack__())


TTA_MODES = ("none", "flips")
MAX_MARGIN, MAX_TILE = 2048, 8192  # px; a margin of 10**6 asked numpy for 10.9 TiB


class FlipAveraged:
    """Test-time augmentation: a segmenter's probabilities averaged over the four flips of each batch.

    Each flipped batch is predicted and flipped back, so every output pixel still
    comes from the same window of context: tiled runs stay seam-free. Costs four
    model calls per batch.
    """

    FLIPS = ((), (2,), (1,), (1, 2))  # identity, left-right, up-down, both (axes of (N, H, W, C))

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter, self.card = segmenter, segmenter.card

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Map float32 (N, H, W, bands) to the mean of the four flips' (N, H, W, classes) probabilities."""
        total = np.zeros(batch.shape[:3] + (self.card.n_classes,), np.float32)
        for axes in self.FLIPS:
            proba = self.segmenter.predict_proba(np.flip(batch, axes) if axes else batch)
            total += np.flip(proba, axes) if axes else proba
        return total / len(self.FLIPS)


def _saved_by_keras(path) -> str | None:
    """The Keras version recorded in a ``.keras`` archive's metadata.json, None where there is none."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            version = json.loads(archive.read("metadata.json")).get("keras_version")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return version if isinstance(version, str) else None


def _layer_module(path, class_name: str) -> str | None:
    """The Python module a ``.keras`` archive's config.json records for the layer class `class_name` (the package
    that registered it when the model was saved), None where it records none."""
    import json
    import zipfile

    def layers(node):
        if isinstance(node, dict):
            if node.get("class_name") == class_name and isinstance(node.get("module"), str):
                yield node["module"]
            for value in node.values():
                yield from layers(value)
        elif isinstance(node, list):
            for value in node:
                yield from layers(value)

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return next(layers(config), None)


def _older(version: str, than: str) -> bool:
    """Whether release `version` (``3.14.1``) comes before `than`; False where either is not of numbers."""
    def numbers(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])

    try:
        return numbers(version) < numbers(than)
    except ValueError:
        return False


def _check_model_matches_card(model, card: ModelCard, source: str) -> None:
    if getattr(model, "inputs", None) is None or getattr(model, "outputs", None) is None:  # AttributeError traceback
        raise ModelError(f"{source}: the model is a subclassed keras.Model, which has no inputs or outputs that "
                         "geoseg can check. Save a functional model around it: "
                         "inputs = keras.Input((None, None, bands)); keras.Model(inputs, model(inputs)).save(...)")
    if len(model.inputs) != 1 or len(model.outputs) != 1:  # was "fails on a 64x64 input" or "outputs 1 channels"
        raise ModelError(f"{source}: the model has {len(model.inputs)} input(s) and {len(model.outputs)} output(s); "
                         "geoseg needs one (N, H, W, bands) input and one (N, H, W, classes) output. Save a model "
                         "of the segmentation head alone, e.g. keras.Model(model.input, model.outputs[0]).")
    in_shape = tuple(model.inputs[0].shape)
    out_shape = tuple(model.outputs[0].shape)
    if len(in_shape) != 4 or len(out_shape) != 4:
        raise ModelError(
            f"{source}: expected a model from (N, H, W, bands) to (N, H, W, classes); "
            f"it maps {in_shape} to {out_shape}."
        )
    if in_shape[1] == card.n_bands and in_shape[-1] != card.n_bands:  # no card can fix it (h117)
        raise ModelError(
            f"{source}: the model looks channels-first: it takes {in_shape[1:]}, where geoseg feeds (N, H, W, "
            f"bands) with the card's {card.n_bands} band(s). Rebuild it channels-last (data_format='channels_last', "
            "Keras's default) and save it again."
        )
    if in_shape[-1] != card.n_bands:
        raise ModelError(
            f"{source}: the model takes {in_shape[-1]} bands but its card lists {card.n_bands} "
            f"(bands={list(card.bands)}). Fix 'bands' in the card."
        )
    if out_shape[-1] == 1 and card.n_classes != 2:  # one class: every pixel was that class
        raise ModelError(
            f"{source}: the model outputs one channel, which geoseg reads as the probability of the second of two "
            f"classes (a sigmoid: the first class where it is 0.5 or less), but its card lists {card.n_classes} "
            "class(es). List two classes in the card, e.g. background then water, and end the model with a sigmoid "
            "(a softmax over one channel is always 1)."
        )
    if out_shape[-1] != card.n_classes and out_shape[-1] != 1:
        raise ModelError(
            f"{source}: the model outputs {out_shape[-1]} channel(s) but its card lists "
            f"{card.n_classes} classes. Fix 'classes' in the card."
        )
    fixed = in_shape[1]
    if in_shape[1] != in_shape[2]:  # geoseg cuts square tiles: 'Check tile_size' could not help (h117)
        raise ModelError(
            f"{source}: the model takes {in_shape[1]}x{in_shape[2]} inputs; geoseg cuts square tiles, so it needs "
            "a model of square fixed tiles or of any size (keras.Input((None, None, bands)))."
        )
    if fixed is not None and card.tile_size != fixed:
        raise ModelError(
            f"{source}: the model takes fixed {fixed}x{fixed} tiles but its card says "
            f"tile_size={card.tile_size}. Set 'tile_size': {fixed} in the card."
        )


def _probe_side(card: ModelCard) -> int:
    """The side of `probe_batch`: the card's tile, else the smallest odd multiple of `multiple_of` from 64 px.

    Odd, so that a model that needs sides divisible by more than its card's `multiple_of` (a 5-level U-Net
    whose card says 8, or nothing) fails here: at 64 px it passed, and segment then ended in a TensorFlow
    traceback ("ConcatOp: Dimension 1 in both shapes must be equal")."""
    if card.tile_size:
        return card.tile_size
    times = -(-64 // card.multiple_of)
    return card.multiple_of * (times + 1 - times % 2)


def _needed_multiple(model, card: ModelCard) -> int | None:
    """The least power of two above the card's `multiple_of` whose odd multiple from 64 px the model runs on, or
    None: a card that understated it was told to 'check multiple_of', without the value (h117)."""
    from dataclasses import replace

    multiple = card.multiple_of * 2
    while multiple <= 64:
        side = _probe_side(replace(card, multiple_of=multiple))
        try:
            with catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model(np.zeros((1, side, side, card.n_bands), np.float32), training=False)
            return multiple
        except Exception:  # noqa: BLE001 - any failure: not this multiple
            multiple *= 2
    return None


def probe_batch(card: ModelCard, *, seed: int = 0) -> np.ndarray:
    """A small float32 batch of standard-normal noise in a shape the model takes (2, side, side, bands)."""
    side = _probe_side(card)
    return np.random.default_rng(seed).standard_normal((2, side, side, card.n_bands)).astype(np.float32)


def _check_outputs_are_probabilities(model, card: ModelCard, source: str) -> None:
    """Refuse a model whose outputs are not probabilities: one call on a small batch of noise.

    A model ending in logits gives the right argmax but a confidence of rint(12.3 * 100) stored
    in a uint8 (it wraps), and flips averaged in the wrong space; a NaN model gives class 0.
    """
    side = _probe_side(card)
    try:  # the batch too: a card's sizes decide how large it is
        batch = probe_batch(card)
        with catch_warnings():  # Keras: "structure of `inputs` doesn't match" for a named input
            warnings.simplefilter("ignore", UserWarning)
            out = np.asarray(model(batch, training=False), np.float32)
            # and noise 100 times as large: scores that end in a ReLU stayed under 1 on the first, and then
            # reached 20 on 8-bit images (a confidence of 2000% wrapped in a byte); probabilities stay in 0-1
            large = np.asarray(model(batch * 100, training=False), np.float32)
    except Exception as exc:  # a model that cannot run on its card's input (or out of memory): name the shape
        needed = None if card.tile_size else _needed_multiple(model, card)
        fix = (f"It runs on sides that are multiples of {needed}: set 'multiple_of': {needed} in the card."
               if needed else "Check 'tile_size', 'multiple_of' and 'bands' in the card.")
        raise ModelError(f"{source}: the model fails on a {side}x{side} input of "
                         f"{card.n_bands} bands ({type(exc).__name__}: {first_line(exc)}). {fix}") from None
    if out.shape[:3] != batch.shape[:3]:
        raise ModelError(f"{source}: the model maps a {batch.shape[1]}x{batch.shape[2]} input to "
                         f"{out.shape[1]}x{out.shape[2]}; geoseg needs an output of the input's size "
                         "(pad or upsample inside the model).")
    if out.shape[-1] == 1 and np.all(np.abs(out - 1) < 1e-6) and np.all(np.abs(large - 1) < 1e-6):
        raise ModelError(f"{source}: the model's one output channel is 1 everywhere, so every pixel would be the "
                         "second class: a softmax over one channel is always 1. End the model with a sigmoid "
                         "(keras.layers.Activation('sigmoid')) for one channel, or output a channel per class.")
    if not np.isfinite(out).all():
        raise ModelError(f"{source}: the model outputs NaN or infinity on a small input of noise; "
                         "its weights may be damaged. Retrain it, or copy the bundle again.")
    seen = np.concatenate([out.ravel(), large[np.isfinite(large)]])
    low, high = float(seen.min()), float(seen.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ModelError(f"{source}: the model's outputs are not probabilities (from {low:.3g} to {high:.3g}); "
                         "geoseg reads each output channel as a class probability in 0-1. End the model with a "
                         "softmax, e.g. keras.layers.Softmax() (or a sigmoid for one channel), and save it again.")


PRECISIONS = ("float32", "bfloat16")


def with_precision(model, precision: str):
    """A copy of a Keras model computing in bfloat16 (weights kept in float32, output in float32)."""
    if precision == "float32":
        return model
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}. Received: precision={precision!r}")
    config = model.get_config()
    _set_compute_dtype(config, "mixed_bfloat16", keep=model.layers[-1].name)
    copy = type(model).from_config(config)  # a Sequential model's config is no functional one
    copy.set_weights(model.get_weights())
    return copy


def _set_compute_dtype(config: dict, policy: str, *, keep: str | None = None) -> None:
    """Set the dtype policy of every layer in a functional config, inside nested models too, except `keep`."""
    for layer in config["layers"]:
        if "layers" in layer["config"]:  # a nested model (e.g. a pretrained encoder)
            _set_compute_dtype(layer["config"], policy)
        elif layer["class_name"] != "InputLayer" and layer["config"]["name"] != keep:
            layer["config"]["dtype"] = policy


def load_bundle(path: str | Path, *, card: str | Path | None = None, precision: str = "float32",
                tta: str = "none") -> Segmenter:
    """Load a bundle ``NAME.keras`` + ``NAME.json`` given either file's path, or a legacy ``NAME.h5``.

    Keras loads it in safe mode, so a bundle cannot run arbitrary code. A legacy
    ``.h5`` model needs a card: `card`, or ``NAME.json`` beside it. ``precision="bfloat16"``
    computes in bfloat16 (see the card's metrics for what that costs in IoU); ``tta="flips"``
    averages the four flips of every batch (`FlipAveraged`, four times the work).
    """
    import keras

    if tta not in TTA_MODES:
        raise ModelError(f"tta must be one of {', '.join(TTA_MODES)}. Received: tta={tta!r}")
    path = Path(path)
    legacy = path.suffix == ".h5"
    weights = path if legacy else path.with_suffix(".keras")
    card_path = Path(card) if card is not None else weights.with_suffix(".json")
    if not weights.is_file():
        raise ModelError(f"{weights}: model file not found; a bundle is NAME.keras plus NAME.json.")
    if card is not None and not card_path.is_file():  # was "carries no card... save it as" the mistyped path
        raise CardError(f"{card_path}: card file not found (the card of {weights}). Check the --card path.")
    if legacy and not card_path.is_file():  # models show/check, evaluate and compare have no --card
        raise CardError(
            f"{weights}: a legacy Keras .h5 model carries no card. Write one (classes, bands, normalization, "
            f"tile_size, margin; `geoseg models show landcover-unet` shows the format) and save it as {card_path}, "
            "where every command finds it (`geoseg segment` also takes it as --card)."
        )
    model_card = read_card(card_path)
    import zipfile

    if not legacy and not zipfile.is_zipfile(weights):  # Keras says "File not found" of a file that is there
        with open(weights, "rb") as f:
            hdf5 = f.read(8) == b"\x89HDF\r\n\x1a\n"
        if hdf5:  # an old model.save('NAME.keras') of TF 2.x wrote HDF5: "damaged or cut short" sent users astray
            raise ModelError(f"{weights}: an HDF5 file (a legacy Keras .h5 model) named .keras. Rename it "
                             f"{Path(weights).with_suffix('.h5').name} and its card beside it, or load it in Keras "
                             "and save it again with model.save('NAME.keras').")
        raise ModelError(f"{weights}: not a Keras .keras file (those are zip archives); it may be damaged or cut "
                         "short. Copy the bundle again, or save the model with model.save('NAME.keras').")
    try:
        model = keras.saving.load_model(weights, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a bad file
        if "safe_mode" in str(exc) or "unsafe_deserialization" in str(exc):  # Keras's advice is not geoseg's to take
            raise ModelError(f"{weights}: the model holds a Lambda layer (Python code), which geoseg does not load "
                             "(Keras safe mode: a model file must not run code). Rebuild it from Keras layers, or a "
                             "layer a plugin registers (keras.saving.register_keras_serializable; see README, "
                             "Models), and save it again.") from None
        unknown = re.search(r"Could not locate class '([^']+)'", str(exc))
        if unknown:  # Keras's message went on with the layer's whole config
            from geoseg.models.registry import PLUGIN_FAILURES

            failed = (f" These plugins failed to import, and may define it: {'; '.join(PLUGIN_FAILURES)}. Fix them "
                      "first (their missing packages)." if PLUGIN_FAILURES else "")
            # the module the file names: which package to install (h117)
            module = None if legacy else _layer_module(weights, unknown[1].rsplit(">", 1)[-1])
            saved = (f" The model was saved with it from the Python module {module!r}: install the package that "
                     "provides that module, as a geoseg.models plugin"
                     if module and not module.startswith(("keras", "__main__")) else
                     " Install the package that defines it as a geoseg.models plugin")
            raise ModelError(f"{weights}: the model uses the layer class {unknown[1]!r}, which no installed package "
                             f"registers.{saved} (see README, Models), or rebuild the model from Keras layers."
                             f"{failed}") from None
        saved_by = None if legacy else _saved_by_keras(weights)
        if saved_by and _older(keras.__version__, saved_by):  # a newer Keras's layer options: a long config error
            detail = re.search(r"\S+ got an unexpected keyword argument '[^']+'", str(exc))
            raise ModelError(f"{weights}: saved by Keras {saved_by}, which this Keras ({keras.__version__}) cannot "
                             f"read ({detail[0] if detail else first_line(exc)}). Upgrade it: pip install "
                             f"'keras>={saved_by}'.") from None
        raise ModelError(f"{weights}: Keras cannot load this model ({exc}).") from None
    _check_model_matches_card(model, model_card, f"{weights} (card {card_path})")
    _check_outputs_are_probabilities(model, model_card, f"{weights} (card {card_path})")
    log.debug("loaded %s (%s %s)", weights, model_card.name, model_card.version)
    segmenter = KerasSegmenter(with_precision(model, precision), model_card, source=str(weights))
    return FlipAveraged(segmenter) if tta == "flips" else segmenter
