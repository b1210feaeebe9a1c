"""Shared fixtures: tiny data sets written in the real on-disk formats, tiny recipes."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import hypothesis  # noqa: F401  (see below)
import numpy as np
import pytest
import yaml

# hypothesis is imported before any test makes an engine, which takes the heap out of the collector's
# sight (gc.freeze): imported after that, the trio plugin it loads warns about a generator that
# gc.get_referrers (which does not see frozen objects) finds unreferenced

os.environ.setdefault("OMP_NUM_THREADS", "2")

ROOT = Path(__file__).resolve().parents[1]


def run_two_processes(script: Path, port: int) -> None:
    """Run ``script`` under ``torchrun --nproc_per_node 2`` (a gloo group on CPU); each rank must
    print ``rank <r> ok``."""
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), str(script)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 ok" in proc.stdout and "rank 1 ok" in proc.stdout, proc.stdout


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` (uint8) in the idx format used by (Fashion-)MNIST."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_fashion_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 grayscale images whose class is learnable: a bright bar whose position is the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, y in enumerate(labels):
        images[i, 2 + 2 * y: 4 + 2 * y, 4:24] = 230
    return images, labels.astype(np.uint8)


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory) -> Path:
    """A folder with the four Fashion-MNIST idx .gz files (200 train / 100 test images)."""
    root = tmp_path_factory.mktemp("fmnist")
    for prefix, n, seed in (("train", 200, 0), ("t10k", 100, 1)):
        images, labels = make_fashion_like(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def _merged(recipe: dict, sections: dict) -> dict:
    """``recipe`` with each of ``sections`` merged into its section (a non-mapping value replaces it)."""
    for section, values in sections.items():
        if isinstance(values, dict):
            recipe.setdefault(section, {}).update(values)
        else:
            recipe[section] = values
    return recipe


def tiny_recipe_dict(out: Path, **sections) -> dict:
    """A recipe that runs in seconds: digits (8x8), cnn_small, few steps, small budgets."""
    return _merged({
        "seed": 0,
        "output_dir": str(out),
        "data": {"dataset": "digits", "pool_size": 400, "test_size": 200},
        "model": {"backbone": "cnn_small"},
        "train": {"method": "supervised", "steps": 20, "batch_size": 32, "eval_batch_size": 256},
        # no stop signal unless a test asks for it (active.stop_set): one more pass per round of every run
        "active": {"initial": 20, "budget": 10, "rounds": 2, "strategy": "entropy", "subset": 200, "stop_set": 0},
    }, sections)


def tiny_folder_recipe_dict(out: Path, cache: Path, root: Path, classes: list[str] | None, **sections) -> dict:
    """A recipe for people labeling a folder of tiny images in seconds: 16 px, cnn_small, a few steps,
    entropy; its run in ``out``, its cache in ``cache``."""
    return _merged({
        "seed": 0,
        "output_dir": str(out),
        "cache_dir": str(cache),
        "data": {"dataset": "imagefolder", "root": str(root), "classes": classes, "image_size": 16},
        "model": {"backbone": "cnn_small"},
        "train": {"method": "supervised", "steps": 3, "batch_size": 16, "eval_batch_size": 128},
        # no stop signal: its pass decodes image files every round (tests of it set active.stop_set)
        "active": {"oracle": "human", "initial": 4, "budget": 2, "rounds": 1, "strategy": "entropy", "stop_set": 0},
    }, sections)


@pytest.fixture
def write_recipe(tmp_path):
    """write_recipe(name, **sections) -> path of a tiny recipe YAML in tmp_path."""

    def _write(name: str = "tiny", out: Path | None = None, **sections) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(tiny_recipe_dict(out or tmp_path / "runs" / name, **sections)))
        return path

    return _write


@pytest.fixture(scope="session")
def tiny_recipe():
    """``tiny_recipe_dict`` for fixtures of any scope: tiny_recipe(out, **sections) -> dict."""
    return tiny_recipe_dict
