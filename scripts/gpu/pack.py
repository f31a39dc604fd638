"""Pack a training config's data for `train_jax.py` on a machine without GDAL or TensorFlow.

    python scripts/gpu/pack.py configs/landcover-unet.toml .gpu/pack

Writes PACK/images/... (the image files as they are), PACK/labels.npz (each image's labels as
class indices, 255 = ignored, read by geoseg exactly as `geoseg train` reads them), PACK/split.json
(train, selection and validation images) and, for an ImageNet encoder, PACK/encoder.npz (the
encoder's weights in the ``LAYER/param`` layout of `load_npz_weights`), float16 to travel light.
"""

from __future__ import annotations

import json
import os
import shutil
import sys


def main(config_path: str, out: str) -> None:
    import numpy as np

    from geoseg.models.encoders import imagenet_weights, lite_arrays_from_torch
    from geoseg.models.torch_weights import read_state_dict
    from geoseg.models.training import load_config, load_pairs

    config = load_config(config_path)
    train, val, select = load_pairs(config, with_selection=True)
    root = os.path.commonpath([p for _, _, p in train + val + select])
    if os.path.exists(out):  # only an earlier pack is replaced: a typo must not delete a data folder
        if not os.path.exists(os.path.join(out, "split.json")):
            raise SystemExit(f"{out} exists and is not a pack (no split.json): pick a new folder")
        shutil.rmtree(out)
    labels, split = {}, {"root": root, "train": [], "validation": [], "selection": []}
    for what, pairs in (("train", train), ("validation", val), ("selection", select)):
        for image, label, path in pairs:
            rel = os.path.relpath(path, root)
            os.makedirs(os.path.join(out, "images", os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(path, os.path.join(out, "images", rel))
            labels[rel] = label
            split[what].append({"path": rel, "shape": list(image.shape)})
    np.savez_compressed(os.path.join(out, "labels.npz"), **labels)
    with open(os.path.join(out, "split.json"), "w") as f:
        json.dump(split, f, indent=1)
    if config.encoder_weights == "imagenet":
        arrays = lite_arrays_from_torch(read_state_dict(imagenet_weights(config.architecture)))
        np.savez_compressed(os.path.join(out, "encoder.npz"), **{k: v.astype("float16") for k, v in arrays.items()})
    print(f"{out}: {len(train)} train, {len(select)} selection, {len(val)} validation images")


if __name__ == "__main__":
    main(*sys.argv[1:3])
