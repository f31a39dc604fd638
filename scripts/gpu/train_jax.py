"""Train a `geoseg train` config's recipe on Keras's JAX backend, for a GPU machine without TensorFlow.

    KERAS_BACKEND=jax python scripts/gpu/train_jax.py PACK configs/landcover-unet-gpu.toml OUT \
        --minutes 6 [--set band_jitter=0.1 --set ema=0.999 ...] [--tag NAME]

PACK comes from `pack.py` (images, labels read by geoseg, the split, the ImageNet encoder). The
recipe is geoseg's own: `_build` makes the network, `chip_stream` cuts the chips (D4, scale jitter),
`make_loss` is the loss, `class_weights` the class weighting, the radiometric jitter and the cosine
schedule are those of `geoseg.models.training.train`. Each epoch the selection and validation images
are predicted whole (mirrored edges) and scored; the weights of the epoch with the best selection
mean IoU go to OUT/TAG.npz (float16, keyed by order; OUT/TAG.json names them) for
`scripts/gpu/bundle.py` to turn into a bundle. With --minutes the number of epochs is fitted to
the time after the first steps are timed, and the chosen count is logged.

Differences from `geoseg train`: images are decoded by Pillow here, not GDAL (JPEG decoders differ
by a level or two on some pixels); the exponential moving average of `ema` is kept by this loop
and scored beside the raw weights each epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import sys
import tempfile
import threading
import time
import tomllib
import types
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _geoseg_models():
    """geoseg.models.training and friends without geoseg/__init__, which imports rasterio, dask and the rest."""
    for name, path in (("geoseg", REPO / "geoseg"), ("geoseg.models", REPO / "geoseg" / "models")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(path)]
            sys.modules[name] = module
    from geoseg.models import metrics, training

    return training, metrics


def _fast_resize() -> bool:
    """Swap skimage's resize, which `chip_stream`'s scale jitter calls, for OpenCV's where it is installed.

    skimage's takes ~40 ms a 384 px chip and holds the GIL, too slow to feed a GPU; OpenCV's is ~50x
    faster: bilinear (area when shrinking, as anti-aliasing) for images, nearest for labels.
    """
    try:
        import cv2
        import skimage.transform
    except ImportError:
        return False

    def resize(image, shape, order=1, preserve_range=True, anti_aliasing=False):
        how = cv2.INTER_NEAREST if order == 0 else cv2.INTER_AREA if anti_aliasing else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(image), (shape[1], shape[0]), interpolation=how)

    skimage.transform.resize = resize
    return True


def _read_pack(pack: Path, limit: int | None):
    from PIL import Image

    split = json.loads((pack / "split.json").read_text())
    labels = np.load(pack / "labels.npz")
    sets = {}
    for what in ("train", "selection", "validation"):
        pairs = []
        for item in split[what][: limit if what != "train" else None]:
            label = labels[item["path"]]
            image = np.asarray(Image.open(pack / "images" / item["path"]).convert("RGB"))
            image = image[: label.shape[0], : label.shape[1]]
            if image.shape[:2] != label.shape:
                raise SystemExit(f"{item['path']}: image {image.shape} smaller than its labels {label.shape}")
            pairs.append((image, label, item["path"]))
        sets[what] = pairs
    return sets


def _batches(training, pairs, config, seed: int):
    """Endless batches: geoseg's chips (uint8) and the draws of its radiometric jitter, applied on the device."""
    chips = training.chip_stream(pairs, config.chip, seed, config.sampling, config.scale_jitter)
    rng = np.random.default_rng(seed + 1)
    b, j = config.batch, config.band_jitter
    while True:
        xs, ys = zip(*(next(chips) for _ in range(b)))
        n_bands = xs[0].shape[-1]
        jitter = np.concatenate([rng.uniform(0.85, 1.15, (b, 1)), rng.uniform(-0.06, 0.06, (b, 1)),
                                 rng.uniform(1 - j, 1 + j, (b, n_bands)) if j else np.ones((b, n_bands))], axis=1)
        yield np.stack(xs), np.stack(ys), jitter.astype(np.float32)


def _producer(training, pairs, config, workers: int) -> queue.Queue:
    q: queue.Queue = queue.Queue(maxsize=4 * workers)

    def run(i):
        for batch in _batches(training, pairs, config, config.seed + 7919 * i):
            q.put(batch)

    for i in range(workers):
        threading.Thread(target=run, args=(i,), daemon=True).start()
    return q


def _padded(image: np.ndarray, scale: float, offset: float, edge: int = 32, step: int = 128) -> np.ndarray:
    """Mirror `edge` px around, then mirror on to a multiple of `step` (few shapes, few compilations)."""
    h, w = image.shape[:2]
    ph, pw = -(-(h + 2 * edge) // step) * step, -(-(w + 2 * edge) // step) * step
    x = np.pad(image, ((edge, ph - h - edge), (edge, pw - w - edge), (0, 0)), mode="reflect")
    return (x.astype(np.float32) * scale + offset)[None]


def fit_epochs(budget_s: float, elapsed_s: float, steps_per_s: float, steps_per_epoch: int, eval_s: float) -> int:
    """Epochs that fit in what is left of `budget_s`, with a margin of 8%.

    `elapsed_s` counts from the first compiled step and already holds the timed steps and the first
    evaluations, whose compilation for each image shape can take minutes (large selection images):
    it is counted once. Subtracting it twice fitted one epoch to a 4.5-minute budget on 2026-11-28.
    """
    left = budget_s - elapsed_s
    return max(1, int(0.92 * left / (steps_per_epoch / steps_per_s + eval_s)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pack", type=Path)
    parser.add_argument("config", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config setting (TOML value), e.g. --set band_jitter=0.1")
    parser.add_argument("--minutes", type=float, help="fit the number of epochs to this much training time")
    parser.add_argument("--tag", default="run")
    parser.add_argument("--workers", type=int, default=3, help="threads cutting chips")
    parser.add_argument("--limit-eval", type=int, help="score only the first N selection/validation images (tests)")
    args = parser.parse_args(argv)
    overrides = {k: tomllib.loads(f"v = {v}")["v"] for k, v in (s.split("=", 1) for s in args.set)}

    training, metrics = _geoseg_models()
    fast_resize = _fast_resize()
    import jax
    import jax.numpy as jnp
    import keras

    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)

    def log(**record):
        record = {"t": round(time.monotonic() - t0, 1), **record}
        print(args.tag, json.dumps(record), flush=True)

    config = training.load_config(args.config, **overrides)
    if config.encoder_weights == "imagenet":  # the pack's float16 arrays, widened
        arrays = np.load(args.pack / "encoder.npz")
        scratch = tempfile.TemporaryDirectory()  # removed when the run ends
        path = Path(scratch.name) / "encoder.npz"
        np.savez(path, **{k: arrays[k].astype(np.float32) for k in arrays.files})
        config.encoder_weights = str(path.resolve())
    norm = config.normalization
    if norm.get("method") != "scale" or config.bands != [1, 2, 3]:
        raise SystemExit("train_jax.py takes 'scale' normalization of bands [1, 2, 3] only")
    scale, offset = float(norm["scale"]), float(norm.get("offset", 0.0))
    keras.utils.set_random_seed(config.seed)
    sets = _read_pack(args.pack, args.limit_eval)
    n_classes = len(config.classes)
    model, margin, _ = training._build(config, n_classes, 3)
    weights = training.class_weights(sets["train"], n_classes, config.class_weighting)
    loss_fn = training.make_loss(n_classes, weights, config.dice_weight)
    optimizer = keras.optimizers.Adam(learning_rate=config.lr)
    optimizer.build(model.trainable_variables)
    lr_at = [i for i, v in enumerate(optimizer.variables) if v.name == "learning_rate"]
    if len(lr_at) != 1:
        raise SystemExit(f"cannot find Adam's learning_rate variable among {[v.name for v in optimizer.variables]}")
    lr_at = lr_at[0]
    log(event="start", device=str(jax.devices()[0]), settings=overrides, margin=margin, opencv_resize=fast_resize,
        train=len(sets["train"]), selection=len(sets["selection"]), validation=len(sets["validation"]),
        class_weights=[round(float(w), 3) for w in weights])

    def loss_and_state(tv, ntv, x, y):
        pred, ntv = model.stateless_call(tv, ntv, x, training=True)
        return loss_fn(y, pred), ntv

    grad_fn = jax.value_and_grad(loss_and_state, has_aux=True)
    decay = float(config.ema or 0.0)

    def jittered(x, jitter):  # as geoseg train's `prepare`: gain and bias about the chip's mean, then per band
        x = x.astype("float32") * scale + offset
        mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * jitter[:, None, None, 0:1] + mean + jitter[:, None, None, 1:2]
        return x * jitter[:, None, None, 2:]

    @jax.jit
    def train_step(state, x, y, jitter, lr):
        tv, ntv, ov, ema = state
        x = jittered(x, jitter)
        ov = [lr if i == lr_at else v for i, v in enumerate(ov)]
        (loss, ntv), grads = grad_fn(tv, ntv, x, y)
        tv, ov = optimizer.stateless_apply(ov, grads, tv)
        if decay:
            ema = [decay * e + (1 - decay) * p for e, p in zip(ema, tv)]
        return loss, (tv, ntv, ov, ema)

    @jax.jit
    def predict(tv, ntv, x):
        out, _ = model.stateless_call(tv, ntv, x, training=False)
        return jnp.argmax(out, -1).astype(jnp.uint8)

    scored = {what: [(jax.device_put(_padded(image, scale, offset)), label) for image, label, _ in sets[what]]
              for what in ("selection", "validation")}

    def evaluate(tv, ntv, what):
        matrix = np.zeros((n_classes, n_classes), np.int64)
        for x, label in scored[what]:
            mask = np.asarray(predict(tv, ntv, x))[0, 32 : 32 + label.shape[0], 32 : 32 + label.shape[1]]
            matrix += metrics.confusion_matrix(label, mask, n_classes)
        s = metrics.scores(matrix)
        return round(s["mean_iou"], 4), [round(v, 4) for v in s["iou"]]

    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    ov = [v.value for v in optimizer.variables]
    state = (tv, ntv, ov, list(tv) if decay else [])
    batches = _producer(training, sets["train"], config, args.workers)
    paths = [v.path for v in model.trainable_variables] + [v.path for v in model.non_trainable_variables]

    def cosine(step, total):
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    total = config.steps_per_epoch * config.epochs
    step, losses, best, started = 0, [], (-1.0, None), time.monotonic()
    timing = 30  # steps timed before the epochs are fitted to --minutes
    epoch = 0
    while True:
        x, y, jitter = batches.get()
        loss, state = train_step(state, x, y, jitter, jnp.float32(cosine(step, total)))
        step += 1
        losses.append(loss)
        if step == 5:
            jax.block_until_ready(loss)
            started = time.monotonic()
            log(event="compiled", step=step)
        if args.minutes and step == 5 + timing:
            jax.block_until_ready(loss)
            rate = timing / (time.monotonic() - started)
            t_eval = time.monotonic()
            evaluate(state[0], state[1], "selection")  # compiles for each image shape: slow the first time
            evaluate(state[0], state[1], "validation")
            t_eval = time.monotonic()
            evaluate(state[0], state[1], "selection")
            evaluate(state[0], state[1], "validation")
            t_eval = (time.monotonic() - t_eval) * (2 if decay else 1)
            config.epochs = fit_epochs(args.minutes * 60, time.monotonic() - started, rate,
                                       config.steps_per_epoch, t_eval)
            total = config.steps_per_epoch * config.epochs
            log(event="fitted", steps_per_s=round(rate, 2), chips_per_s=round(rate * config.batch, 1),
                eval_s=round(t_eval, 1), epochs=config.epochs, steps=total)
        if step % config.steps_per_epoch == 0:
            epoch += 1
            mean_loss = float(jnp.mean(jnp.stack(losses)))
            losses = []
            tv, ntv, _, ema = state
            record = {"event": "epoch", "epoch": epoch, "step": step, "loss": round(mean_loss, 4),
                      "lr": round(cosine(step, total), 6)}
            for kind, params in (("raw", tv), *((("ema", ema),) if decay else ())):
                sel, sel_iou = evaluate(params, ntv, "selection")
                val, val_iou = evaluate(params, ntv, "validation")
                record[kind] = {"selection": sel, "validation": val, "validation_iou": val_iou}
                if sel > best[0]:
                    best = (sel, {"epoch": epoch, "weights": kind, "selection": sel, "selection_iou": sel_iou,
                                  "validation": val, "validation_iou": val_iou})
                    arrays = {f"{i:04d}": np.asarray(a, np.float16) for i, a in enumerate(list(params) + list(ntv))}
                    np.savez(args.out / f".{args.tag}.npz", **arrays)
                    os.replace(args.out / f".{args.tag}.npz", args.out / f"{args.tag}.npz")
            log(**record, time_s=round(time.monotonic() - started, 1))
            out_of_time = args.minutes and time.monotonic() - started > args.minutes * 60
            if step >= total or out_of_time:
                break
    settings = {k: v for k, v in vars(config).items() if k not in ("classes", "source")}
    (args.out / f"{args.tag}.json").write_text(json.dumps(
        {"tag": args.tag, "best": best[1], "paths": paths, "config": settings, "overrides": overrides,
         "steps": step, "epochs_done": epoch, "train_minutes": round((time.monotonic() - started) / 60, 2),
         "device": str(jax.devices()[0])}, indent=1))
    log(event="done", best=best[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
