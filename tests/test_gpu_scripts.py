"""scripts/gpu: the tools that run geoseg's training recipe on a GPU machine without GDAL or TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "gpu"))
import refold  # noqa: E402


@pytest.fixture
def pack(tmp_path):
    root = tmp_path / "pack"
    split = {"root": "/data", "train": [], "selection": [], "validation": []}
    for tile, what in (("Tile 1", "train"), ("Tile 2", "validation"), ("Tile 3", "selection"), ("Tile 4", "train")):
        for part in (1, 2):
            path = f"{tile}/images/image_part_00{part}.jpg"
            (root / "images" / tile / "images").mkdir(parents=True, exist_ok=True)
            (root / "images" / path).write_bytes(b"jpeg")
            split[what].append({"path": path, "shape": [4, 5, 3]})
    np.savez(root / "labels.npz", x=np.zeros(2))
    (root / "split.json").write_text(json.dumps(split))
    return root


def test_refold_moves_whole_tiles_between_the_splits_and_links_the_files(pack, tmp_path):
    out = tmp_path / "fold"
    refold.main([str(pack), str(out), "--validation", "Tile 1/,Tile 4/", "--selection", "Tile 2/"])
    split = json.loads((out / "split.json").read_text())
    tiles = {what: sorted({item["path"].split("/")[0] for item in split[what]}) for what in split if what != "root"}
    assert tiles == {"train": ["Tile 3"], "validation": ["Tile 1", "Tile 4"], "selection": ["Tile 2"]}
    assert len(split["validation"]) == 4 and split["root"] == "/data"
    assert (out / "images").is_symlink() and (out / "images" / "Tile 3/images/image_part_001.jpg").read_bytes() == b"jpeg"
    assert (out / "labels.npz").is_symlink() and not (out / "encoder.npz").exists()  # the pack has no encoder
    assert json.loads((pack / "split.json").read_text())["train"][0]["path"].startswith("Tile 1")  # the pack as it was


@pytest.mark.parametrize("validation, selection, message", [
    ("Tile 1/", "Tile 1/", "matches both --validation and --selection"),
    ("Tile 1/,Tile 2/,Tile 3/", "Tile 4/", "no train images"),
    ("Tile 9/", "Tile 1/", "no validation images"),
])
def test_refold_refuses_a_split_without_a_part(pack, tmp_path, validation, selection, message):
    with pytest.raises(SystemExit, match=message):
        refold.main([str(pack), str(tmp_path / "fold"), "--validation", validation, "--selection", selection])
    assert not (tmp_path / "fold").exists()


def test_train_jax_imports_the_training_recipe_where_rasterio_is_absent():
    """The GPU machine has no GDAL: train_jax.py imports geoseg.models.training without geoseg/__init__."""
    code = f"""
import sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('rasterio', 'tensorflow', 'dask', 'geopandas', 'flask'):
            raise ImportError(f'{{name}} is absent here')
sys.meta_path.insert(0, Absent())
sys.path.insert(0, {str(REPO / 'scripts' / 'gpu')!r})
import train_jax
training, metrics = train_jax._geoseg_models()
print(training.chip_stream.__name__, training.make_loss.__name__, metrics.scores.__name__)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["chip_stream", "make_loss", "scores"]


def test_train_jax_fits_the_epochs_to_the_time_left_counting_the_first_evaluations_once():
    """The device run of 2026-11-28: 4.5 minutes, 140.5 s gone on the first evaluations (compiling), 50.37 steps/s."""
    code = f"""
import sys
sys.path.insert(0, {str(REPO / 'scripts' / 'gpu')!r})
import train_jax
print(train_jax.fit_epochs(270, 140.5, 50.37, 200, 0.9), train_jax.fit_epochs(270, 300, 50.37, 200, 0.9))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    fitted, late = map(int, done.stdout.split())
    assert fitted == 24  # 129.5 s left at 4.9 s an epoch, less 8%; subtracting the first evaluations twice left 1
    assert fitted * (200 / 50.37 + 0.9) <= 270 - 140.5
    assert late == 1  # over time already: one epoch, so that something is scored and saved
