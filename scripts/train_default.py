"""Reproduce the shipped default model, geoseg/zoo/landcover-unet, from ../shared/data/dubai_aerial.

Usage (from the repository root, after `make env`):

    .venv/bin/python scripts/train_default.py --data ../shared/data/dubai_aerial --minutes 45

Whole tiles are held out (Tile 2 and Tile 3); the model never sees them and their
mean IoU goes into the card. Training runs for a fixed time budget and keeps the
final weights: the held-out tiles are not used to pick a checkpoint, so the card's
number is not tuned on them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geoseg.models import KerasSegmenter, ModelCard, build_unet, training, unet_receptive_radius, write_card  # noqa: E402
from geoseg.models.labels import read_labels  # noqa: E402

log = logging.getLogger("train_default")

CLASSES = [
    ("building", "#3C1098"),
    ("land", "#8429F6"),
    ("road", "#6EC1E4"),
    ("vegetation", "#FEDD3A"),
    ("water", "#E2A929"),
]
CLASS_TABLE = [{"name": n, "color": c} for n, c in CLASSES]
HELD_OUT = ("Tile 2", "Tile 3")
IGNORE = 255


def decode_mask(path: Path) -> np.ndarray:
    """Colour-coded PNG (RGB or palette) to class indexes; unlabeled (#9B9B9B, #000000) -> 255."""
    with Image.open(path) as mask:
        shape = mask.size[::-1]
    return read_labels(path, fmt="color", classes=CLASS_TABLE, image=path, shape=shape)


def load_tiles(data: Path, tiles) -> list[tuple[np.ndarray, np.ndarray, str]]:
    pairs = []
    for tile in tiles:
        for image_path in sorted((data / tile / "images").glob("*.jpg")):
            mask_path = data / tile / "masks" / (image_path.stem + ".png")
            image = np.asarray(Image.open(image_path).convert("RGB"))
            mask = decode_mask(mask_path)
            rows, cols = min(image.shape[0], mask.shape[0]), min(image.shape[1], mask.shape[1])
            pairs.append((image[:rows, :cols], mask[:rows, :cols], f"{tile}/{image_path.name}"))
    return pairs


def chip_stream(pairs, chip: int, seed: int):
    """`geoseg.models.training.chip_stream` scaled to 0-1, with brightness/contrast jitter."""
    rng = np.random.default_rng(seed + 1)
    for x, y in training.chip_stream(pairs, chip, seed):
        x = x.astype(np.float32) / 255.0
        x = np.clip((x - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08), 0, 1)
        yield x, y


def evaluate(segmenter, pairs) -> dict:
    metrics = training.evaluate_pairs(segmenter, pairs, len(CLASSES))
    metrics["iou"] = {name: round(float(v), 4) for (name, _), v in zip(CLASSES, metrics["iou"])}
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dubai_aerial")
    parser.add_argument("--out", type=Path, default=ROOT / "geoseg" / "zoo")
    parser.add_argument("--name", default="landcover-unet")
    parser.add_argument("--minutes", type=float, default=45.0)
    parser.add_argument("--chip", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    tiles = sorted(p.name for p in args.data.iterdir() if p.is_dir())
    train_tiles = [t for t in tiles if t not in HELD_OUT]
    train, held = load_tiles(args.data, train_tiles), load_tiles(args.data, HELD_OUT)
    log.info("train tiles %s (%d images), held-out tiles %s (%d images)", train_tiles, len(train), HELD_OUT, len(held))
    cw = training.class_weights(train, len(CLASSES), "sqrt").astype(np.float32)
    log.info("class weights %s", cw.round(3).tolist())

    def with_weights(x, y):
        safe = tf.where(y == IGNORE, tf.zeros_like(y), y)
        w = tf.where(y == IGNORE, 0.0, tf.gather(cw, tf.cast(safe, tf.int32)))
        return x, safe, w

    spec = (tf.TensorSpec((args.chip, args.chip, 3), tf.float32), tf.TensorSpec((args.chip, args.chip), tf.uint8))
    ds = (
        tf.data.Dataset.from_generator(lambda: chip_stream(train, args.chip, args.seed), output_signature=spec)
        .map(with_weights)
        .batch(args.batch)
        .prefetch(4)
    )
    model = build_unet(len(CLASSES), 3, depth=args.depth, filters=args.filters, name=args.name)
    deadline = time.monotonic() + args.minutes * 60
    epochs = 10_000
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=int(args.steps * 60))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  weighted_metrics=["accuracy"])

    class Budget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            log.info("epoch %d loss %.4f acc %.4f", epoch + 1, logs["loss"], logs["accuracy"])
            if time.monotonic() > deadline:
                self.model.stop_training = True

    started = time.monotonic()
    history = model.fit(ds, steps_per_epoch=args.steps, epochs=epochs, callbacks=[Budget()], verbose=2)
    train_seconds = time.monotonic() - started
    margin = unet_receptive_radius(args.depth)
    card = ModelCard.from_dict(
        {
            "name": args.name,
            "version": dt.date.today().strftime("%Y.%m.%d"),
            "description": "U-Net (depth %d, %d base filters, batch norm) for land cover in RGB aerial "
            "imagery: building, land, road, vegetation, water." % (args.depth, args.filters),
            "classes": [{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(CLASSES)],
            "bands": [1, 2, 3],
            "normalization": {"method": "scale", "scale": 1 / 255, "offset": 0.0},
            "margin": margin,
            "tile_size": None,
            "multiple_of": 2**args.depth,
        }
    )
    segmenter = KerasSegmenter(model, card)
    metrics = evaluate(segmenter, held)
    log.info("held-out mean IoU %.4f %s", metrics["mean_iou"], metrics["iou"])
    card = ModelCard.from_dict(
        {
            **card.to_dict(),
            "training": {
                "data": "dubai_aerial: Semantic segmentation of aerial imagery (MBRSC / Humans in the Loop), "
                "RGB JPEG tiles with colour-coded masks; unlabeled pixels ignored",
                "script": "scripts/train_default.py",
                "train_tiles": train_tiles,
                "held_out_tiles": list(HELD_OUT),
                "split": "by whole tile; held-out tiles never seen in training nor used to pick weights",
                "chip": args.chip,
                "batch": args.batch,
                "epochs": len(history.history["loss"]),
                "steps_per_epoch": args.steps,
                "augmentation": "D4 flips/rotations, brightness/contrast jitter",
                "loss": "class-weighted cross-entropy (1/sqrt frequency)",
                "optimizer": f"Adam, cosine decay from {args.lr}",
                "seed": args.seed,
                "seconds": round(train_seconds),
                "final_loss": round(float(history.history["loss"][-1]), 4),
            },
            "metrics": {"held_out": metrics},
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / f".{args.name}.tmp.keras"
    keras.Model(model.inputs, model.outputs, name=model.name).save(tmp)  # weights only, no optimizer state
    tmp.replace(args.out / f"{args.name}.keras")
    write_card(card, args.out / f"{args.name}.json")
    log.info("wrote %s", args.out / f"{args.name}.keras")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
