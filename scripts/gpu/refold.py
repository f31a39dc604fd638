"""Another split of a pack's images, for cross-validation by tile: a new pack that links to the old one's files.

    python scripts/gpu/refold.py .gpu/pack /tmp/fold46 --validation "Tile 4/,Tile 6/" --selection "Tile 1/"

Images whose path contains a `--validation` pattern are held out and scored each epoch, those matching
`--selection` choose the epoch, and all others train: the same rule as a config's `validation` and
`selection`. The new pack's images, labels and encoder are symbolic links to the old pack's, so a fold
costs no copy. Training the same recipe on several folds tells whether a held-out score is low because of
the recipe or because of the tiles held out.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def refold(pack: Path, out: Path, validation: list[str], selection: list[str]) -> dict:
    split = json.loads((pack / "split.json").read_text())
    items = [item for what in ("train", "selection", "validation") for item in split[what]]
    new = {"root": split["root"], "train": [], "selection": [], "validation": []}
    for item in sorted(items, key=lambda item: item["path"]):
        path = item["path"].replace(os.sep, "/")
        held = any(p in path for p in validation)
        chosen = any(p in path for p in selection)
        if held and chosen:
            raise SystemExit(f"{item['path']} matches both --validation and --selection: make the patterns apart")
        new["validation" if held else "selection" if chosen else "train"].append(item)
    for what in ("train", "validation", "selection"):
        if not new[what]:
            raise SystemExit(f"no {what} images with --validation {validation} --selection {selection}")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("images", "labels.npz", "encoder.npz"):
        source, link = (pack / name).resolve(), out / name
        if source.exists() and not link.exists():
            link.symlink_to(source)
    (out / "split.json").write_text(json.dumps(new, indent=1))
    return new


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pack", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--validation", required=True, help="comma-separated path patterns held out")
    parser.add_argument("--selection", required=True, help="comma-separated path patterns that choose the epoch")
    args = parser.parse_args(argv)
    new = refold(args.pack, args.out, args.validation.split(","), args.selection.split(","))
    print(f"{args.out}: " + ", ".join(f"{len(new[w])} {w}" for w in ("train", "selection", "validation")))


if __name__ == "__main__":
    main()
