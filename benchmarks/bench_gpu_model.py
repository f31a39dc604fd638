"""The default model on a GPU: speed per precision, and what bfloat16 costs in held-out IoU there.

Run by hand on a GPU machine. It needs Keras 3 and one backend (TensorFlow, JAX or PyTorch) and,
for the IoU part, Pillow and the held-out Dubai tiles; not rasterio, GDAL or the rest of geoseg,
so it also runs on a machine that has JAX but no TensorFlow (the one lent to this project):

    KERAS_BACKEND=jax python benchmarks/bench_gpu_model.py [--dubai ../shared/data/dubai_aerial]

Speed: the model alone on geoseg's tile shapes (a 2048 px chunk with its 288 px margins each side is
one 2624 px call; the default --chunk), input from host memory, probabilities back to host memory.
That is what `geoseg segment` asks of the model per chunk; reading, stitching and writing stay on the
CPU. IoU: each held-out image whole (mirrored by the card's margin, as the tiled pipeline mirrors
raster edges), argmax, scored against its colour mask. Images are decoded by Pillow, whose JPEG
decoder differs from GDAL's on some values, so compare precisions with each other, not with the card.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "geoseg" / "zoo" / "landcover-unet"


def with_bfloat16(model):
    """geoseg.models.segmenter.with_precision(model, 'bfloat16'), which imports rasterio through geoseg."""
    import keras

    def policy(config: dict, keep: str | None) -> None:
        for layer in config["layers"]:
            if "layers" in layer["config"]:
                policy(layer["config"], None)
            elif layer["class_name"] != "InputLayer" and layer["config"]["name"] != keep:
                layer["config"]["dtype"] = "mixed_bfloat16"

    config = model.get_config()
    policy(config, model.layers[-1].name)
    copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def predictor(model):
    """numpy (n, h, w, bands) float32 -> numpy probabilities float32, compiled where the backend can."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def call(trainable, frozen, x):  # weights as arguments, not as constants folded into the program
            y, _ = model.stateless_call(trainable, frozen, x, training=False)
            return y.astype("float32")

        @jax.jit
        def classes(trainable, frozen, x):  # what a mask needs: the winning class and its probability
            y, _ = model.stateless_call(trainable, frozen, x, training=False)
            return y.argmax(-1).astype("uint8"), y.max(-1).astype("float32")

        predict = lambda x: np.asarray(call(trainable, frozen, x))  # noqa: E731
        predict.on_device = lambda x: call(trainable, frozen, x).block_until_ready()
        predict.classes_only = lambda x: [np.asarray(a) for a in classes(trainable, frozen, x)]
        return predict
    return lambda x: np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), np.float32)


def speed(predict, shape, repeats: int, *, on_device: bool = False) -> dict:
    batch = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    if on_device:  # input already on the GPU, output left there: the model's compute alone
        import jax

        batch = jax.device_put(batch)
    start = time.perf_counter()
    predict(batch)  # compile
    compile_s = time.perf_counter() - start
    predict(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(batch)
        times.append(time.perf_counter() - start)
    return {"compile_s": round(compile_s, 1), "s_per_call": round(float(np.median(times)), 4)}


def held_out(dubai: Path, tiles: list[str]):
    from PIL import Image

    card = json.loads(BUNDLE.with_suffix(".json").read_text())
    colours = [tuple(int(c.get("label_color", c["color"])[i:i + 2], 16) for i in (1, 3, 5)) for c in card["classes"]]
    for tile in tiles:
        for image in sorted((dubai / tile / "images").glob("*.jpg")):
            rgb = np.asarray(Image.open(image).convert("RGB"))
            mask = np.asarray(Image.open(dubai / tile / "masks" / f"{image.stem}.png").convert("RGB"))
            truth = np.full(mask.shape[:2], 255, np.uint8)
            for i, colour in enumerate(colours):
                truth[(mask == colour).all(-1)] = i
            yield rgb, truth


def held_out_iou(predict, images, margin: int, side: int, n: int) -> tuple[float, list, np.ndarray]:
    matrix = np.zeros((n, n), np.int64)
    for rgb, truth in images:
        h, w = truth.shape
        x = np.pad(rgb.astype(np.float32) * (2 / 255) - 1, ((margin, side - h - margin), (margin, side - w - margin),
                                                             (0, 0)), mode="symmetric")
        classes = predict(x[None])[0, margin:margin + h, margin:margin + w].argmax(-1)
        ok = truth < n
        matrix += np.bincount(truth[ok] * n + classes[ok], minlength=n * n).reshape(n, n)
    iou = np.diag(matrix) / (matrix.sum(0) + matrix.sum(1) - np.diag(matrix))
    return float(iou.mean()), [round(float(v), 4) for v in iou], matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dubai", type=Path, default=REPO.parent / "shared" / "data" / "dubai_aerial")
    parser.add_argument("--tiles", default="Tile 2,Tile 3", help="Held-out tile folders, comma-separated.")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--breakdown", action="store_true",
                        help="JAX only: also time the model with input and output left on the GPU (compute alone), "
                             "and with only the class and its probability sent back (what a mask needs).")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    import keras

    warnings.filterwarnings("ignore", message="The structure of `inputs`")  # a named input called positionally
    card = json.loads(BUNDLE.with_suffix(".json").read_text())
    model = keras.saving.load_model(BUNDLE.with_suffix(".keras"), compile=False, safe_mode=True)
    models = {"float32": model, "bfloat16": with_bfloat16(model)}
    predictors = {name: predictor(m) for name, m in models.items()}
    results: dict = {"backend": keras.backend.backend(), "device": _device(), "speed": {}, "iou": {}}
    chunk, margin = 2048, card["margin"]
    side = -(-(chunk + 2 * margin) // 32) * 32
    shapes = {f"1 x {side}² ({chunk}² chunk + margins)": (1, side, side, 3), "8 x 512²": (8, 512, 512, 3)}
    print(f"backend {results['backend']}, {results['device']}")
    print(f"{'shape':32} {'precision':9} {'s/call':>8} {'core Mpx/s':>11} {'compile s':>10}")
    for label, shape in shapes.items():
        core = chunk * chunk if shape[0] == 1 else shape[0] * shape[1] * shape[2]
        for name, predict in predictors.items():
            r = speed(predict, shape, args.repeats)
            r["core_mpx_per_s"] = round(core / r["s_per_call"] / 1e6, 1)
            results["speed"][f"{label} {name}"] = r
            print(f"{label:32} {name:9} {r['s_per_call']:8.4f} {r['core_mpx_per_s']:11.1f} {r['compile_s']:10.1f}")
        pair = [results["speed"][f"{label} {p}"]["s_per_call"] for p in ("float32", "bfloat16")]
        print(f"{'':32} bfloat16 / float32 speed: {pair[0] / pair[1]:.2f}x")
        if args.breakdown and shape[0] == 1 and hasattr(predictors["float32"], "on_device"):  # the default chunk
            for variant in ("on_device", "classes_only"):
                for name, predict in predictors.items():
                    r = speed(getattr(predict, variant), shape, args.repeats, on_device=variant == "on_device")
                    r["core_mpx_per_s"] = round(core / r["s_per_call"] / 1e6, 1)
                    results["speed"][f"{label} {name} {variant}"] = r
                    print(f"{label:32} {name:9} {r['s_per_call']:8.4f} {r['core_mpx_per_s']:11.1f} "
                          f"{r['compile_s']:10.1f}  {variant}")
    if args.dubai.is_dir():
        images = list(held_out(args.dubai, args.tiles.split(",")))
        side = -(-(max(max(t.shape) for _, t in images) + 2 * margin) // 32) * 32
        classes = [c["name"] for c in card["classes"]]
        for name, predict in predictors.items():
            mean, per_class, _ = held_out_iou(predict, images, margin, side, len(classes))
            results["iou"][name] = {"mean_iou": round(mean, 4), "iou": dict(zip(classes, per_class))}
            print(f"held-out {args.tiles} ({len(images)} images, Pillow-decoded) {name}: mean IoU {mean:.4f} {per_class}")
        delta = results["iou"]["bfloat16"]["mean_iou"] - results["iou"]["float32"]["mean_iou"]
        print(f"bfloat16 - float32 mean IoU: {delta:+.4f}")
    else:
        print(f"no {args.dubai}: IoU part skipped (pass --dubai)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _device() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return ", ".join(d.device_kind for d in jax.devices())
    return keras.backend.backend()


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    main()
