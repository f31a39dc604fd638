"""Turn weights trained by `train_jax.py` into a geoseg bundle (NAME.keras + NAME.json + NAME.toml).

    python scripts/gpu/bundle.py OUT/TAG.json configs/landcover-unet-gpu.toml DEST

Runs where geoseg is installed (TensorFlow, GDAL). Rebuilds the network of the config with the
run's settings, loads the weights (OUT/TAG.npz beside the JSON), then does what `geoseg train` does
after its epochs: finds the seam-free margin, scores the selection and validation images read by
GDAL, and writes the bundle with a card that records the run.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path


def main(run_json: str, config_path: str, dest: str) -> None:
    import numpy as np

    import geoseg  # noqa: F401  (before TensorFlow: GDAL keeps its own SQLite)
    from geoseg.models.card import ModelCard
    from geoseg.models.metrics import json_ready
    from geoseg.models.segmenter import KerasSegmenter
    from geoseg.models.training import (SEAM_CROP, SEAM_IMAGES, _build, _config_dict, _encoder_margin, _relative,
                                        _write_bundle, card_extras, evaluate_pairs, load_config, load_pairs,
                                        seam_free_margin)

    run = json.loads(Path(run_json).read_text())
    arrays = np.load(Path(run_json).with_suffix(".npz"))
    config = load_config(config_path, **run["overrides"])
    config.epochs = run["config"]["epochs"]  # as fitted to the run's time
    n_classes = len(config.classes)
    model, margin, multiple = _build(load_config(config_path, **{**run["overrides"], "encoder_weights": None}),
                                     n_classes, 3)  # random encoder weights: the run's replace them all
    variables = list(model.trainable_variables) + list(model.non_trainable_variables)
    if [v.path for v in variables] != run["paths"]:
        raise SystemExit(f"{run_json}: the weights were trained on another network than {config_path} builds")
    for i, variable in enumerate(variables):
        variable.assign(arrays[f"{i:04d}"].astype("float32"))
    train, val, select = load_pairs(config, with_selection=True)
    card = ModelCard.from_dict({
        "name": config.name, "version": config.version or dt.date.today().isoformat(), "description": config.description,
        "bands": config.bands, "normalization": config.normalization, "classes": config.card_classes,
        **card_extras(config), "margin": margin, "tile_size": None, "multiple_of": multiple}, source=config_path)
    impulse = max(margin, _encoder_margin(model, 3))
    crops = [np.asarray(image[:SEAM_CROP, :SEAM_CROP]) for image, _, _ in val[:: max(1, len(val) // SEAM_IMAGES)][:SEAM_IMAGES]]
    margin, agreement = seam_free_margin(KerasSegmenter(model, card), crops, impulse)
    segmenter = KerasSegmenter(model, card)
    held, chosen = evaluate_pairs(segmenter, val, n_classes), evaluate_pairs(segmenter, select, n_classes)
    best = run["best"]
    card = ModelCard.from_dict({
        **card.to_dict(), "margin": margin,
        "training": {"config": _config_dict(config), "data": config.data_description, "train_images": len(train),
                     "validation_images": [_relative(config, p) for _, _, p in val],
                     "selection_images": [_relative(config, p) for _, _, p in select],
                     "split": f"by file: validation patterns {config.validation}, scored once after training; best "
                              f"epoch chosen on the mean IoU of the selection patterns {config.selection}",
                     "selection_mean_iou": chosen["mean_iou"], "epochs": run["epochs_done"],
                     "best_epoch": best["epoch"], "weights": best["weights"], "steps": run["steps"],
                     "seconds": round(60 * run["train_minutes"]), "trained_with": "scripts/gpu/train_jax.py "
                     f"(Keras on JAX, {run['device']})",
                     "margin_check": {"margin_px": margin, "impulse_response_px": impulse, "chunk": 256,
                                      "images": len(crops), "agreement": round(agreement, 6)}},
        "metrics": {"validation": json_ready({**{k: v for k, v in held.items() if k != "iou"},  # NaN: not JSON
                                              "iou": {c["name"]: v for c, v in zip(config.classes, held["iou"])}}, 4)},
    }, source=config_path)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    _write_bundle(config, out, model, card)  # the three files as one set, the card last
    print(f"{out / config.name}.keras: validation mean IoU {held['mean_iou']:.4f} "
          f"({', '.join(f'{c}: {v}' for c, v in card.to_dict()['metrics']['validation']['iou'].items())}), "
          f"selection {chosen['mean_iou']:.4f}, margin {margin} px")


if __name__ == "__main__":
    main(*sys.argv[1:4])
