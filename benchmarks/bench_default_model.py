"""Held-out IoU and speed of a model's inference modes (float32, bfloat16, flips), and of the baselines.

The baselines are the threshold family, and watershed-regions scored with each region given its
majority label class: a bound on what classifying those regions could reach, not a classifier.

Run by hand on the Dubai data (../shared/data/dubai_aerial); every image goes through the real
tiled pipeline (`geoseg.workflows.evaluate`), timed end to end. It prints a Markdown table with
per-class IoU, mean IoU, pixel accuracy and Mpx/s, and the ratios of each mode to float32.

    python benchmarks/bench_default_model.py                         # default model, its modes, baselines
    python benchmarks/bench_default_model.py --write-card            # also record the modes in the card
    python benchmarks/bench_default_model.py --model train-runs/landcover-unet.keras --no-baselines

``--write-card`` stores ``metrics.inference`` in the bundle's JSON card, with a note saying
which faster mode keeps mean IoU within 0.005 of float32. Speeds here include reading,
tiling and writing small images (0.3-0.5 Mpx each); `bench_pipeline.py` measures big rasters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASELINES = ["threshold", "region-growing", "edges-watershed", "watershed-regions"]
ORACLE = "watershed-regions"  # unlabeled regions, each given its majority label class by evaluate
MODES = {"float32": {}, "bfloat16": {"precision": "bfloat16"}, "flips": {"tta": "flips"}}


def held_out(data: Path, tiles: list[str]) -> tuple[list[str], list[str]]:
    images = sorted(str(p) for t in tiles for p in (data / t / "images").glob("*.jpg"))
    return images, [str(Path(p).parent.parent / "masks" / (Path(p).stem + ".png")) for p in images]


def run(ref: str, images: list[str], labels: list[str], names: list[str], colors: list[str],
        chunk: int | None) -> dict:
    from PIL import Image

    from geoseg.workflows.evaluate import evaluate

    pixels = sum(Image.open(p).size[0] * Image.open(p).size[1] for p in images)
    options = {"chunk": chunk} if chunk else {}
    evaluate(ref, images[:1], labels[:1], label_format="color", label_names=names, label_colors=colors,
             **options)  # warm-up: load the model, trace the graph
    start = time.perf_counter()
    result = evaluate(ref, images, labels, label_format="color", label_names=names, label_colors=colors, **options)
    seconds = time.perf_counter() - start
    return {"mean_iou": result.mean_iou, "pixel_accuracy": result.pixel_accuracy,
            "iou": {c: v["iou"] for c, v in result.per_class.items()}, "mpx_per_s": pixels / seconds / 1e6,
            "notes": result.notes}


def label_set(card) -> tuple[list[str], list[str]]:
    """The model's class names and the colours the Dubai masks draw them in (its display colours differ)."""
    return [c.name for c in card.classes], [c.in_labels for c in card.classes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dubai_aerial")
    parser.add_argument("--model", default="landcover-unet")
    parser.add_argument("--tiles", default="Tile 2,Tile 3", help="held-out tiles, comma-separated")
    parser.add_argument("--chunk", type=int, default=None, help="chunk size (default: the pipeline's)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--write-card", action="store_true", help="record the modes in the model's card")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: no such folder; pass --data PATH/TO/dubai_aerial")

    from geoseg.models import get_segmenter, read_card, resolve_model, write_card
    from geoseg.models.registry import with_card

    card = get_segmenter(args.model).card
    names, colors = label_set(card)
    images, labels = held_out(args.data, args.tiles.split(","))
    rows = {}
    for mode in args.modes.split(","):
        ref = with_card(args.model, None, **MODES[mode])
        rows[f"{card.name} ({mode})"] = rows_mode = run(ref, images, labels, names, colors, args.chunk)
        print(f"{mode}: mean IoU {rows_mode['mean_iou']:.4f}, {rows_mode['mpx_per_s']:.2f} Mpx/s", file=sys.stderr)
    if not args.no_baselines:
        for name in BASELINES:
            key = f"{name} (each region its majority label class)" if name == ORACLE else name
            rows[key] = run(name, images, labels, names, colors, args.chunk)
    classes = sorted({c for r in rows.values() for c in r["iou"]}, key=lambda c: (c not in names, names.index(c)
                                                                                    if c in names else c))
    print(f"\n{len(images)} images of {args.tiles} through the tiled pipeline, chunk {args.chunk or 'default'}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
    print("| model | " + " | ".join(classes) + " | mean IoU | pixel accuracy | Mpx/s |")
    print("|---|" + "---:|" * (len(classes) + 3))
    for name, r in rows.items():
        cells = [f"{r['iou'][c]:.3f}" if r["iou"].get(c) is not None else "–" for c in classes]
        print(f"| {name} | " + " | ".join(cells) + f" | {r['mean_iou']:.3f} | {r['pixel_accuracy']:.3f} | "
              f"{r['mpx_per_s']:.2f} |")
    for name, r in rows.items():
        for note in r["notes"]:
            print(f"\n{name}: {note}")
    base = rows.get(f"{card.name} (float32)")
    if base:
        print("\nratios to float32: " + ", ".join(
            f"{m}: speed x{rows[f'{card.name} ({m})']['mpx_per_s'] / base['mpx_per_s']:.2f}, "
            f"mean IoU {rows[f'{card.name} ({m})']['mean_iou'] - base['mean_iou']:+.4f}"
            for m in args.modes.split(",") if f"{card.name} ({m})" in rows))
    if args.write_card and base:
        path = Path(resolve_model(args.model).partition("?")[0]).with_suffix(".json")
        data = read_card(path).to_dict()
        inference = {}
        for m in args.modes.split(","):
            r = rows[f"{card.name} ({m})"]
            entry = {"held_out_mean_iou": round(r["mean_iou"], 4), "mpx_per_s": round(r["mpx_per_s"], 2),
                     "iou": {c: round(v, 4) for c, v in r["iou"].items() if v is not None}}
            delta, speed = r["mean_iou"] - base["mean_iou"], r["mpx_per_s"] / base["mpx_per_s"]
            if m != "float32":
                flag = "--precision bfloat16" if m == "bfloat16" else "--tta flips"
                verdict = (f"{'within' if abs(delta) <= 0.005 else 'not within'} 0.005" if speed > 1
                           else "slower" + (", more accurate" if delta > 0 else ""))
                entry["note"] = (f"geoseg segment {flag}: mean IoU {delta:+.4f} against float32 ({verdict}), "
                                 f"{speed:.2f}x its speed")
            inference[m] = entry
        kept = {k: v for k, v in data.get("metrics", {}).get("inference", {}).items()  # e.g. large_raster,
                if k not in MODES and k != "measured"}                                 # from bench_pipeline.py
        data.setdefault("metrics", {})["inference"] = {
            **inference, **kept, "measured": f"benchmarks/bench_default_model.py, held-out {args.tiles} "
                                     f"({len(images)} images of 0.3-0.5 Mpx) through the tiled pipeline, "
                                     f"{os.cpu_count()}-core CPU; small images carry the whole margin, so "
                                     "their Mpx/s is below a large raster's (bench_pipeline.py)"}
        from geoseg.models.card import ModelCard

        write_card(ModelCard.from_dict(data, source=str(path)), path)
        print(f"\nwrote metrics.inference into {path}", file=sys.stderr)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "notes"} for k, v in rows.items()}),
          file=sys.stderr)


if __name__ == "__main__":
    main()
