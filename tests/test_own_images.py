"""Labeling one's own images: a folder pool with data.classes, seed labels, normalisation computed on
the pool, skips in the pool, a noisy simulated oracle, starting weights (timm / checkpoints), `ssal init`.

Every image here is a 16x16 PNG written with PIL; expected values are computed independently (numpy on
the written pixels, sorted relative paths, timm's own state dicts).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import tiny_recipe_dict
from PIL import Image

import ssal.models  # noqa: F401  (registers the small backbones into timm)
from ssal import cli
from ssal.data import datasets as ds_mod
from ssal.data.datasets import load_dataset
from ssal.data.pool import SKIP, ActivePool
from ssal.errors import ConfigError, DataError
from ssal.experiment.project import HUMAN_RECIPE
from ssal.label.oracles import SimulatedOracle
from ssal.recipe import DataConfig, ModelConfig, from_dict, load_recipe

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SIDE = 16


def png(path: Path, pixels) -> Path:
    """Write a 16x16 PNG: ``pixels`` is an RGB colour, a grey level, or a uint8 array [16, 16(, 3)]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(pixels, np.ndarray):
        Image.fromarray(pixels, mode="RGB" if pixels.ndim == 3 else "L").save(path)
    elif isinstance(pixels, int):
        Image.new("L", (SIDE, SIDE), pixels).save(path)
    else:
        Image.new("RGB", (SIDE, SIDE), tuple(pixels)).save(path)
    return path


def noise(seed: int, channels: int = 3) -> np.ndarray:
    """Random pixels whose channels have different ranges (so the per-channel statistics differ)."""
    rng = np.random.default_rng(seed)
    if channels == 1:
        return rng.integers(20, 240, (SIDE, SIDE), dtype=np.uint8)
    lo, hi = np.array([0, 0, 150]), np.array([256, 100, 256])
    return rng.integers(lo, hi, (SIDE, SIDE, 3)).astype(np.uint8)


def folder(**kw) -> DataConfig:
    """The data section of an imagefolder recipe (16 px, RGB unless said otherwise)."""
    base = dict(dataset="imagefolder", image_size=SIDE, channels=3)
    base.update({k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items()})
    return DataConfig(**base)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def relpaths(root: Path, suffixes=(".png", ".bmp")) -> list[str]:
    """Every non-hidden image file under ``root``, relative and sorted: the pool as the docs define it."""
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and p.suffix.lower() in suffixes:
            out.append(rel.as_posix())
    return sorted(out)


def recipe(tmp_path: Path, data: dict | None = None, **sections) -> dict:
    """A tiny valid recipe whose data section is ``data`` (replacing digits' entirely)."""
    r = tiny_recipe_dict(tmp_path / "out", **sections)
    if data is not None:
        r["data"] = data
    return r


# ============================================================================ 1. imagefolder + data.classes


def test_a_flat_folder_with_classes_is_an_unlabeled_pool_of_every_image_file(tmp_path):
    root = tmp_path / "photos"
    pixels = {"b.png": noise(1), "C.PNG": noise(2), "a.bmp": noise(3)}
    for name, arr in pixels.items():
        png(root / name, arr)
    png(root / ".hidden.png", noise(4))           # hidden: ignored
    (root / "notes.txt").write_text("not an image")  # not an image: ignored
    (root / "labels.csv").write_text("path,label\n")

    ds = load_dataset(folder(root=root, classes=["cat", "dog"]))
    assert ds.names() == sorted(pixels) == ["C.PNG", "a.bmp", "b.png"]
    assert ds.train.targets.tolist() == [-1, -1, -1] and not ds.has_truth
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert len(ds.test) == 0 and not ds.has_test and ds.seed_labels is None
    x = ds.train.load(torch.arange(3))
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 3, SIDE, SIDE)
    for img, name in zip(x, ds.names(), strict=True):
        assert np.array_equal(img.permute(1, 2, 0).numpy(), pixels[name])  # lossless formats: exact pixels


def test_nested_folders_have_no_class_meaning_and_the_pool_is_sorted_by_relative_path(tmp_path):
    root = tmp_path / "photos"
    for rel in ("cat/1.png", "dog/2.png", "x/y/3.png", "x/4.png", "z.png", "a.png", "a/b.png", "a-b.png",
                "a_b.png"):
        png(root / rel, (10, 20, 30))
    for hidden in (".cache/5.png", "x/.6.png", "x/.thumbs/7.png"):
        png(root / hidden, (1, 2, 3))
    (root / "x" / "readme.md").write_text("#")

    ds = load_dataset(folder(root=root, classes=["cat", "dog"]))
    assert ds.names() == relpaths(root)
    assert ds.names()[:4] == ["a-b.png", "a.png", "a/b.png", "a_b.png"]  # plain string order of the paths
    assert len(ds.train) == 9
    # a folder named like a class does not label its images: the whole pool is unlabeled
    assert (ds.train.targets == -1).all()
    assert ds.fingerprint()["n"] == 9 and ds.fingerprint()["classes"] == ["cat", "dog"]


def test_a_folder_with_no_images_is_a_one_line_data_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(DataError) as e:
        load_dataset(folder(root=tmp_path / "empty", classes=["a", "b"]))
    assert "no image files" in one_line(e)


def test_test_root_class_subfolders_give_a_labeled_test_split_in_data_classes_order(tmp_path):
    root, test = tmp_path / "photos", tmp_path / "held_out"
    for i in range(4):
        png(root / f"{i}.png", noise(i))
    files = {"cat/0.png": (200, 0, 0), "cat/1.png": (201, 0, 0), "dog/0.png": (0, 0, 200), "bird/0.png": (0, 90, 0)}
    for rel, color in files.items():
        png(test / rel, color)
    # classes in an order other than the folders' alphabetical one
    ds = load_dataset(folder(root=root, classes=["dog", "bird", "cat"], test_root=test))
    assert ds.has_test and len(ds.test) == 4 and len(ds.train) == 4
    got = {Path(p).relative_to(test).as_posix(): t for p, t in zip(ds.test.paths, ds.test.targets.tolist(),
                                                                     strict=True)}
    assert got == {"cat/0.png": 2, "cat/1.png": 2, "dog/0.png": 0, "bird/0.png": 1}
    x = ds.test.load(torch.arange(4))
    for img, p in zip(x, ds.test.paths, strict=True):
        assert img[:, 0, 0].tolist() == list(files[Path(p).relative_to(test).as_posix()])
    assert (ds.train.targets == -1).all()


@pytest.mark.parametrize("bad,hint", [("cats", "cat"), ("Dog", "dog")])
def test_a_test_root_folder_that_is_not_a_class_is_a_one_line_error_with_did_you_mean(tmp_path, bad, hint):
    png(tmp_path / "photos" / "0.png", (1, 1, 1))
    png(tmp_path / "test" / "cat" / "0.png", (1, 1, 1))
    png(tmp_path / "test" / bad / "0.png", (1, 1, 1))
    with pytest.raises(DataError) as e:
        load_dataset(folder(root=tmp_path / "photos", classes=["cat", "dog"], test_root=tmp_path / "test"))
    msg = one_line(e)
    assert f"'{bad}'" in msg and f"did you mean '{hint}'?" in msg and "data.test_root" in msg


def test_a_missing_test_root_is_a_one_line_data_error(tmp_path):
    png(tmp_path / "photos" / "0.png", (1, 1, 1))
    with pytest.raises(DataError) as e:
        load_dataset(folder(root=tmp_path / "photos", classes=["cat", "dog"], test_root=tmp_path / "nope"))
    assert "data.test_root" in one_line(e)


@pytest.mark.parametrize("spelling", ["absolute", "relative", "trailing_slash", "relative_root_absolute_test"])
def test_a_test_root_inside_data_root_is_not_part_of_the_pool(tmp_path, monkeypatch, spelling):
    root = tmp_path / "photos"
    for rel in ("0.png", "more/1.png", "testing/2.png"):  # 'testing' is not the test folder
        png(root / rel, (5, 5, 5))
    for rel in ("test/cat/0.png", "test/dog/0.png", "test/dog/1.png"):
        png(root / rel, (9, 9, 9))
    monkeypatch.chdir(tmp_path)
    root_s, test_s = {
        "absolute": (str(root), str(root / "test")),
        "relative": ("photos", "photos/test"),
        "trailing_slash": (f"{root}/", f"{root}/test/"),
        "relative_root_absolute_test": ("photos", str(root / "test")),
    }[spelling]
    ds = load_dataset(folder(root=root_s, classes=["cat", "dog"], test_root=test_s))
    assert ds.names() == ["0.png", "more/1.png", "testing/2.png"], ds.names()
    assert len(ds.test) == 3 and sorted(ds.test.targets.tolist()) == [0, 1, 1]


def _old_layout(root: Path, classes: list[str], n_train: int = 2, n_test: int = 1) -> None:
    for split, n in (("train", n_train), ("test", n_test)):
        for k, cls in enumerate(classes):
            for i in range(n):
                png(root / split / cls / f"{i}.png", (40 * k, 10 * i, 0))


def test_the_old_train_test_layout_still_gives_a_labeled_pool_and_test_split(tmp_path):
    _old_layout(tmp_path, ["bee", "ant"])
    ds = load_dataset(folder(root=tmp_path))
    assert ds.classes == ["ant", "bee"] and ds.has_truth and ds.has_test
    assert len(ds.train) == 4 and len(ds.test) == 2
    for split in (ds.train, ds.test):
        for p, t in zip(split.paths, split.targets.tolist(), strict=True):
            assert Path(p).parent.name == ds.classes[t]


def test_a_one_class_train_folder_is_a_one_line_error_asking_for_at_least_two_classes(tmp_path):
    _old_layout(tmp_path, ["only"])
    with pytest.raises(DataError) as e:
        load_dataset(folder(root=tmp_path))
    msg = one_line(e)
    assert "at least 2" in msg and "only" in msg


@pytest.mark.parametrize("classes,words", [
    (["cat"], "at least 2"),
    ([], "at least 2"),
    (["cat", "dog", "cat"], "cat"),
    (["cat", "skip"], "skip"),
    (["Unsure", "dog"], "unsure"),
    (["cat", " dog"], "spaces"),
    (["cat", ""], "non-empty"),
])
def test_bad_data_classes_are_a_config_error(tmp_path, classes, words):
    data = {"dataset": "imagefolder", "root": str(tmp_path), "classes": classes}
    with pytest.raises(ConfigError) as e:
        from_dict(recipe(tmp_path, data))
    assert words in one_line(e)


@pytest.mark.parametrize("key,value", [("classes", ["a", "b"]), ("labels", "x.csv"), ("test_root", "t")])
def test_folder_keys_on_a_builtin_dataset_are_a_config_error(tmp_path, key, value):
    with pytest.raises(ConfigError) as e:
        from_dict(recipe(tmp_path, data={"dataset": "digits", key: value}))
    assert f"data.{key}" in one_line(e)


# ============================================================================ 2. data.labels (seed labels)


@pytest.fixture
def labeled_pool(tmp_path) -> Path:
    root = tmp_path / "photos"
    for rel in ("a/0.png", "a/1.png", "b/2.png", "b/3.png", "c.png", "d.png"):
        png(root / rel, (7, 7, 7))
    return root


def _labels_csv(path: Path, rows: list[tuple[str, str]], header: str = "path,label") -> Path:
    path.write_text(header + "\n" + "".join(f"{p},{y}\n" for p, y in rows))
    return path


def test_data_labels_csv_becomes_the_seed_labels_of_the_pool(labeled_pool, tmp_path):
    rows = [("d.png", "dog"), ("a/1.png", "cat"), ("b/2.png", "bird"), ("./c.png", "cat"),
            (str(labeled_pool / "a" / "0.png"), "dog")]  # './' and an absolute path under root work too
    csv_path = _labels_csv(tmp_path / "seed.csv", rows)
    ds = load_dataset(folder(root=labeled_pool, classes=["cat", "dog", "bird"], labels=csv_path))
    names = ds.names()
    want = {names.index(os.path.relpath(os.path.join(labeled_pool, p), labeled_pool)): ["cat", "dog", "bird"].index(y)
            for p, y in rows}
    idx, lab = ds.seed_labels
    assert idx.dtype == torch.long and lab.dtype == torch.long
    assert idx.tolist() == sorted(want) and lab.tolist() == [want[i] for i in sorted(want)]
    assert (ds.train.targets == -1).all()  # seed labels do not make the pool's truth known


def test_the_dataset_fingerprint_follows_the_labels_csv(labeled_pool, tmp_path):
    cfg = dict(root=labeled_pool, classes=["cat", "dog"])
    plain = load_dataset(folder(**cfg)).fingerprint()
    a = load_dataset(folder(**cfg, labels=_labels_csv(tmp_path / "a.csv", [("c.png", "cat"), ("d.png", "dog")])))
    same = load_dataset(folder(**cfg, labels=_labels_csv(tmp_path / "s.csv", [("d.png", "dog"), ("c.png", "cat")])))
    relabeled = load_dataset(folder(**cfg, labels=_labels_csv(tmp_path / "b.csv", [("c.png", "dog"),
                                                                                   ("d.png", "dog")])))
    more = load_dataset(folder(**cfg, labels=_labels_csv(tmp_path / "m.csv", [("c.png", "cat"), ("d.png", "dog"),
                                                                              ("a/0.png", "cat")])))
    fa = a.fingerprint()
    assert "seed_labels" not in plain and "seed_labels" in fa
    assert fa["digest"] == plain["digest"]  # the pool itself is the same
    assert same.fingerprint() == fa  # the order of the rows does not matter
    assert relabeled.fingerprint() != fa and more.fingerprint() != fa
    assert relabeled.fingerprint()["seed_labels"] != more.fingerprint()["seed_labels"]


@pytest.mark.parametrize("rows,words", [
    ([("c.png", "cat"), ("nope.png", "dog")], ["nope.png"]),
    ([("c.png", "cta")], ["cta", "did you mean 'cat'?"]),
    ([("c.png", "cat"), ("d.png", "skip")], ["skip"]),
    ([("c.png", "unsure")], ["skip"]),
    ([("c.png", "cat"), ("c.png", "dog")], ["'c.png' has 2 different answers", "'cat'", "'dog'"]),
    ([("c.png", "")], ["no labels"]),
])
def test_bad_rows_of_data_labels_are_a_one_line_data_error_naming_data_labels(labeled_pool, tmp_path, rows, words):
    csv_path = _labels_csv(tmp_path / "seed.csv", rows)
    with pytest.raises(DataError) as e:
        load_dataset(folder(root=labeled_pool, classes=["cat", "dog"], labels=csv_path))
    msg = one_line(e)
    assert msg.startswith("data.labels:"), msg
    for w in words:
        assert w in msg


def test_data_labels_without_a_label_column_or_file_is_a_data_error(labeled_pool, tmp_path):
    for path in (_labels_csv(tmp_path / "h.csv", [("c.png", "cat")], header="file,class"), tmp_path / "absent.csv"):
        with pytest.raises(DataError) as e:
            load_dataset(folder(root=labeled_pool, classes=["cat", "dog"], labels=path))
        assert one_line(e).startswith("data.labels:")


def test_data_labels_needs_data_classes_in_the_recipe(tmp_path):
    data = {"dataset": "imagefolder", "root": str(tmp_path), "labels": str(tmp_path / "x.csv")}
    with pytest.raises(ConfigError) as e:
        from_dict(recipe(tmp_path, data))
    assert "data.classes" in one_line(e)


def test_active_initial_zero_is_allowed_only_with_data_labels(tmp_path):
    data = {"dataset": "imagefolder", "root": str(tmp_path), "classes": ["cat", "dog"]}
    with pytest.raises(ConfigError) as e:
        from_dict(recipe(tmp_path, data, active={"initial": 0}))
    assert "active.initial" in one_line(e)
    cfg = from_dict(recipe(tmp_path, {**data, "labels": str(tmp_path / "seed.csv")}, active={"initial": 0}))
    assert cfg.active.initial == 0 and cfg.data.labels == str(tmp_path / "seed.csv")
    with pytest.raises(ConfigError):
        from_dict(recipe(tmp_path, {**data, "labels": str(tmp_path / "seed.csv")}, active={"initial": -1}))


# ============================================================================ 3. normalisation


def _numpy_stats(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack(arrays).astype(np.float64) / 255.0
    if x.ndim == 3:
        x = x[..., None]
    return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))


def _no_decoding(monkeypatch) -> None:
    def refuse(self, indices):
        raise AssertionError("the pool's images were decoded")

    monkeypatch.setattr(ds_mod.FolderSplit, "load", refuse)


@pytest.mark.parametrize("channels", [3, 1])
def test_pool_mean_and_std_are_computed_over_the_pool_pixels_and_cached(tmp_path, monkeypatch, channels):
    root, cache = tmp_path / "photos", tmp_path / "cache"
    arrays = [noise(s, channels) for s in range(7)]
    for i, arr in enumerate(arrays):
        png(root / f"sub{i % 2}" / f"{i}.png", arr)
    mean, std = _numpy_stats(arrays)

    ds = load_dataset(folder(root=root, classes=["a", "b"], channels=channels), cache_dir=str(cache))
    assert len(ds.mean) == len(ds.std) == channels
    assert np.allclose(ds.mean, mean, atol=1e-4) and np.allclose(ds.std, std, atol=1e-4), (ds.mean, mean, ds.std, std)
    if channels == 3:  # the channels really differ: per-channel numbers, not one for all
        assert ds.mean[1] < 0.25 < ds.mean[2]
    assert not (cache / "norm").exists()  # remembered only once the run goes ahead
    ds.save_caches()
    saved = list((cache / "norm").glob("*.json"))
    assert len(saved) == 1
    body = json.loads(saved[0].read_text())
    assert tuple(body["mean"]) == ds.mean and tuple(body["std"]) == ds.std and body["images"] == 7

    _no_decoding(monkeypatch)  # a second load reads the cache instead of decoding the pool again
    again = load_dataset(folder(root=root, classes=["a", "b"], channels=channels), cache_dir=str(cache))
    assert again.mean == ds.mean and again.std == ds.std


def test_without_a_cache_dir_the_statistics_are_computed_and_nothing_is_written(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    arrays = [noise(s) for s in range(3)]
    for i, arr in enumerate(arrays):
        png(root / f"{i}.png", arr)
    monkeypatch.chdir(tmp_path)
    ds = load_dataset(folder(root=root, classes=["a", "b"]))
    mean, std = _numpy_stats(arrays)
    assert np.allclose(ds.mean, mean, atol=1e-4) and np.allclose(ds.std, std, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_the_subsampled_pool_is_what_the_statistics_cover(tmp_path):
    root = tmp_path / "photos"
    arrays = {f"{i}.png": noise(10 + i) for i in range(8)}
    for name, arr in arrays.items():
        png(root / name, arr)
    ds = load_dataset(folder(root=root, classes=["a", "b"], pool_size=3), seed=4, cache_dir=str(tmp_path / "c"))
    assert len(ds.train) == 3
    mean, std = _numpy_stats([arrays[n] for n in ds.names()])
    assert np.allclose(ds.mean, mean, atol=1e-4) and np.allclose(ds.std, std, atol=1e-4)


def test_the_statistics_cache_of_one_folder_is_not_used_for_another_with_the_same_file_names(tmp_path):
    """Two projects whose cameras name files alike (IMG_0001.png, ...) share one cache_dir."""
    cache = str(tmp_path / "cache")
    red, blue = tmp_path / "red", tmp_path / "blue"
    for i in range(3):
        png(red / f"IMG_{i:04d}.png", (200, 10, 10))
        png(blue / f"IMG_{i:04d}.png", (10, 10, 200))
    a = load_dataset(folder(root=red, classes=["x", "y"]), cache_dir=cache)
    b = load_dataset(folder(root=blue, classes=["x", "y"]), cache_dir=cache)
    assert np.allclose(a.mean, (200 / 255, 10 / 255, 10 / 255), atol=1e-4)
    assert np.allclose(b.mean, (10 / 255, 10 / 255, 200 / 255), atol=1e-4), \
        f"blue folder got {b.mean}: the mean/std cached for {red}"


def test_data_mean_and_std_override_the_computed_statistics(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    for i in range(3):
        png(root / f"{i}.png", noise(i))
    _no_decoding(monkeypatch)  # given values: nothing is computed
    ds = load_dataset(folder(root=root, classes=["a", "b"], mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6]),
                      cache_dir=str(tmp_path / "cache"))
    assert ds.mean == (0.1, 0.2, 0.3) and ds.std == (0.4, 0.5, 0.6)
    one = load_dataset(folder(root=root, classes=["a", "b"], mean=[0.45], std=[0.2]))
    assert one.mean == (0.45,) * 3 and one.std == (0.2,) * 3  # one value: every channel
    assert not (tmp_path / "cache" / "norm").exists()


def test_data_mean_overrides_a_builtin_dataset_too(fmnist_root):
    ds = load_dataset(DataConfig(dataset="fashion_mnist", root=str(fmnist_root), mean=[0.3], std=[0.4]))
    assert ds.mean == (0.3,) and ds.std == (0.4,)
    assert load_dataset(DataConfig(dataset="fashion_mnist", root=str(fmnist_root))).mean == (0.2860,)


@pytest.mark.parametrize("given,words", [
    ({"mean": [0.5, 0.5, 0.5]}, "together"),
    ({"std": [0.2, 0.2, 0.2]}, "together"),
    ({"mean": [0.5, 0.5], "std": [0.2, 0.2]}, "one value per channel"),
    ({"mean": [0.5], "std": [0.0]}, "> 0"),
])
def test_bad_data_mean_std_are_a_config_error(tmp_path, given, words):
    data = {"dataset": "imagefolder", "root": str(tmp_path), "classes": ["a", "b"], **given}
    with pytest.raises(ConfigError) as e:
        from_dict(recipe(tmp_path, data))
    assert words in one_line(e)


def test_data_hflip_overrides_the_dataset_default(tmp_path, fmnist_root):
    png(tmp_path / "photos" / "0.png", (1, 2, 3))
    base = dict(root=tmp_path / "photos", classes=["a", "b"], mean=[0.5], std=[0.25])
    assert load_dataset(folder(**base)).hflip is False
    assert load_dataset(folder(**base, hflip=True)).hflip is True
    assert load_dataset(folder(**base, hflip=False)).hflip is False
    fm = dict(dataset="fashion_mnist", root=str(fmnist_root))
    assert load_dataset(DataConfig(**fm)).hflip is True
    assert load_dataset(DataConfig(**fm, hflip=False)).hflip is False


# ============================================================================ 4. ActivePool with skips


def _pool_with_skips() -> ActivePool:
    p = ActivePool(10)
    p.label([4, 7, 1], [2, SKIP, 0], round=0)
    p.label([9, 3], [SKIP, 1], round=1)
    return p


def test_skip_is_minus_one():
    assert SKIP == -1


def test_skipped_indices_are_neither_labeled_nor_candidates():
    p = _pool_with_skips()
    assert p.labeled_indices.tolist() == [4, 1, 3] and p.labels.tolist() == [2, 0, 1]
    assert p.rounds().tolist() == [0, 0, 1]
    assert p.skipped_indices.tolist() == [7, 9]
    assert p.unlabeled_indices.tolist() == [0, 2, 5, 6, 8]
    assert p.labeled_mask.tolist() == [i in (4, 1, 3) for i in range(10)]
    assert p.n_labeled == 3 and p.n_entries == 5
    assert p.round_of(0).tolist() == [4, 7, 1] and p.round_of(1).tolist() == [9, 3]
    # a skipped image cannot be answered again
    with pytest.raises(ValueError):
        p.label([7], [1], round=2)


def test_state_dict_keeps_skips_as_minus_one_rows_and_round_trips():
    p = _pool_with_skips()
    sd = p.state_dict()
    assert sd == {"n": 10, "labeled": [[4, 2, 0], [7, -1, 0], [1, 0, 0], [9, -1, 1], [3, 1, 1]]}
    q = ActivePool.from_state(json.loads(json.dumps(sd)))
    assert q.state_dict() == sd
    assert q.labeled_indices.tolist() == [4, 1, 3] and q.skipped_indices.tolist() == [7, 9]
    assert q.unlabeled_indices.tolist() == p.unlabeled_indices.tolist()
    assert q.n_labeled == 3 and q.n_entries == 5


@pytest.mark.parametrize("k,entries,labeled", [
    (0, [], []), (1, [4], [4]), (2, [4, 7], [4]), (4, [4, 7, 1, 9], [4, 1]), (5, [4, 7, 1, 9, 3], [4, 1, 3]),
])
def test_head_keeps_the_first_k_entries_labels_and_skips(k, entries, labeled):
    p = _pool_with_skips()
    h = p.head(k)
    assert [row[0] for row in h.state_dict()["labeled"]] == entries
    assert h.state_dict()["labeled"] == p.state_dict()["labeled"][:k]
    assert h.labeled_indices.tolist() == labeled and h.n_entries == k and h.n_labeled == len(labeled)
    assert h.unlabeled_indices.tolist() == sorted(set(range(10)) - set(entries))
    with pytest.raises(ValueError):
        p.head(6)


def test_a_pool_without_skips_has_exactly_the_old_state_form():
    p = ActivePool(6)
    p.label([5, 0], [1, 1], round=0)
    p.label([2], [0], round=1)
    sd = p.state_dict()
    assert sd == {"n": 6, "labeled": [[5, 1, 0], [0, 1, 0], [2, 0, 1]]}
    assert set(sd) == {"n", "labeled"}
    assert p.n_entries == p.n_labeled == 3 and p.skipped_indices.tolist() == []


def test_labels_below_skip_are_refused():
    p = ActivePool(4)
    with pytest.raises(ValueError):
        p.label([0], [-2], round=0)
    assert p.n_entries == 0


# ============================================================================ 5. the simulated oracle


def test_a_noisy_simulated_oracle_is_wrong_for_the_given_fraction_and_never_right_where_flipped():
    n, c, noise_rate = 5000, 10, 0.3
    truth = torch.arange(n) % c
    o = SimulatedOracle(truth, noise=noise_rate, seed=7, num_classes=c)
    got = o.answers(0, torch.arange(n))
    wrong = got != truth
    sd = math.sqrt(n * noise_rate * (1 - noise_rate))
    assert abs(int(wrong.sum()) - n * noise_rate) < 4 * sd, int(wrong.sum())
    assert ((got >= 0) & (got < c)).all()
    # the wrong answers spread over the other classes
    flipped_to = torch.bincount(got[wrong], minlength=c)
    assert (flipped_to > 0).all()
    assert torch.equal(o.hidden(torch.arange(n)), truth)  # diagnostics see the truth


def test_the_oracle_answers_are_fixed_per_image_whatever_the_order_of_the_queries():
    truth = torch.arange(2000) % 5
    full = SimulatedOracle(truth, noise=0.3, seed=3, num_classes=5).answers(0, torch.arange(2000))
    perm = torch.randperm(2000, generator=torch.Generator().manual_seed(1))
    other = SimulatedOracle(truth, noise=0.3, seed=3, num_classes=5)
    got = torch.cat([other.answers(r, chunk) for r, chunk in enumerate(perm.split(300))])
    assert torch.equal(got, full[perm])
    # another seed flips other images
    reseeded = SimulatedOracle(truth, noise=0.3, seed=4, num_classes=5).answers(0, torch.arange(2000))
    assert not torch.equal(reseeded, full)


def test_two_classes_a_wrong_answer_is_the_other_class():
    truth = torch.arange(1000) % 2
    got = SimulatedOracle(truth, noise=0.4, seed=0, num_classes=2).answers(0, torch.arange(1000))
    wrong = got != truth
    assert 300 < int(wrong.sum()) < 500
    assert torch.equal(got[wrong], 1 - truth[wrong])


def test_a_noiseless_oracle_answers_the_truth():
    truth = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    idx = torch.tensor([7, 0, 3])
    for o in (SimulatedOracle(truth), SimulatedOracle(truth, noise=0.0, seed=5, num_classes=10)):
        assert torch.equal(o.answers(0, idx), truth[idx])


@pytest.mark.parametrize("active,words", [
    ({"oracle_noise": 1.0}, "oracle_noise"),
    ({"oracle_noise": -0.1}, "oracle_noise"),
    ({"oracle": "human", "oracle_noise": 0.1}, "human"),
    ({"oracle": "humna"}, "did you mean 'human'?"),
    ({"oracle": "human", "initial_strategy": "class_balanced"}, "class_balanced"),
])
def test_oracle_settings_are_checked_in_the_recipe(tmp_path, active, words):
    with pytest.raises(ConfigError) as e:
        from_dict(recipe(tmp_path, active=active))
    assert words in one_line(e)


def test_valid_oracle_settings_pass(tmp_path):
    assert from_dict(recipe(tmp_path, active={"oracle_noise": 0.2})).active.oracle_noise == 0.2
    cfg = from_dict(recipe(tmp_path, active={"oracle": "human", "initial_strategy": "typiclust"}))
    assert cfg.active.oracle == "human"


# ============================================================================ 6. backbones and starting weights


def test_a_weights_tag_without_model_pretrained_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        ssal.models.check_backbone("resnet18.a1_in1k", pretrained=False)
    assert "model.pretrained" in one_line(e)


def test_pretrained_small_backbone_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        ssal.models.check_backbone("cnn_small", pretrained=True)
    assert "cnn_small" in one_line(e)


def test_a_tag_timm_lacks_is_a_config_error_listing_its_tags():
    with pytest.raises(ConfigError) as e:
        ssal.models.check_backbone("resnet18.nope_in1k", pretrained=True)
    msg = one_line(e)
    assert "nope_in1k" in msg
    tags = timm.list_pretrained("resnet18.*")
    assert tags and all(t in msg for t in tags)


def test_pretrained_weights_without_network_are_a_quick_one_line_config_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # read once at import, before this test
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # no cached weights either
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ssal.models.initial_weights.cache_clear()
    start = time.monotonic()
    try:
        with pytest.raises(ConfigError) as e:
            ssal.models.build_model(ModelConfig(backbone="resnet18", pretrained=True),
                                    _data(channels=3))
    finally:
        ssal.models.initial_weights.cache_clear()
    assert time.monotonic() - start < 20
    msg = one_line(e)
    assert "network" in msg and "cache" in msg and "model.pretrained" in msg


def _data(channels: int = 3, classes: int = 4):
    from types import SimpleNamespace

    return SimpleNamespace(channels=channels, num_classes=classes, image_size=(SIDE, SIDE), mean=(0.5,) * channels,
                           std=(0.25,) * channels)


@pytest.fixture
def fresh_weights_cache():
    ssal.models.initial_weights.cache_clear()
    yield
    ssal.models.initial_weights.cache_clear()


def _reference(name: str, in_chans: int = 3, num_classes: int = 0, seed: int = 123) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    with torch.no_grad():  # BN statistics that differ from a fresh model's, so they are checked too
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    return m


def _build(tmp_path: Path, name: str, path: Path, channels: int = 3):
    return ssal.models.build_model(ModelConfig(backbone=name, checkpoint=str(path)), _data(channels))


def _assert_backbone_is(model, state: dict) -> None:
    got = model.backbone.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def test_a_headless_timm_state_dict_loads_exactly(tmp_path, fresh_weights_cache):
    ref = _reference("resnet18").state_dict()
    torch.save(ref, tmp_path / "w.pt")
    _assert_backbone_is(_build(tmp_path, "resnet18", tmp_path / "w.pt"), ref)
    # a fresh build without a checkpoint does not start from these weights
    plain = ssal.models.build_model(ModelConfig(backbone="resnet18"), _data())
    assert not torch.equal(plain.backbone.state_dict()["conv1.weight"], ref["conv1.weight"])


def test_a_full_timm_model_with_its_classifier_loads_and_the_classifier_is_ignored(tmp_path, fresh_weights_cache):
    full = _reference("resnet18", num_classes=1000).state_dict()
    assert "fc.weight" in full and "fc.bias" in full
    torch.save(full, tmp_path / "full.pt")
    model = _build(tmp_path, "resnet18", tmp_path / "full.pt")
    _assert_backbone_is(model, {k: v for k, v in full.items() if not k.startswith("fc.")})
    assert tuple(model.head.weight.shape) == (4, 512)  # the head fits the data set, not ImageNet


def test_a_torchvision_style_wrapped_state_dict_loads(tmp_path, fresh_weights_cache):
    import torchvision

    torch.manual_seed(5)
    tv = torchvision.models.resnet18(weights=None).state_dict()  # torchvision's own key names
    torch.save({"epoch": 90, "arch": "resnet18", "state_dict": {"module." + k: v for k, v in tv.items()}},
               tmp_path / "tv.pth.tar")
    model = _build(tmp_path, "resnet18", tmp_path / "tv.pth.tar")
    _assert_backbone_is(model, {k: v for k, v in tv.items() if not k.startswith("fc.")})


def test_an_ssal_round_checkpoint_loads_its_backbone(tmp_path, fresh_weights_cache):
    torch.manual_seed(9)
    src = ssal.models.build_model(ModelConfig(backbone="cnn_small"), _data(channels=1, classes=3))
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.5)
    torch.save({"round": 2, "model": src.state_dict(), "optimizer": {"state": {}, "param_groups": []}},
               tmp_path / "round_02.pt")
    assert "head.weight" in src.state_dict()
    model = _build(tmp_path, "cnn_small", tmp_path / "round_02.pt", channels=1)
    _assert_backbone_is(model, src.backbone.state_dict())


def test_a_half_precision_checkpoint_loads_as_float(tmp_path, fresh_weights_cache):
    ref = _reference("cnn_small").state_dict()
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in ref.items()}, tmp_path / "h.pt")
    got = _build(tmp_path, "cnn_small", tmp_path / "h.pt").backbone.state_dict()
    assert got["features.0.weight"].dtype == torch.float32
    assert torch.equal(got["features.0.weight"], ref["features.0.weight"].half().float())


def test_a_checkpoint_of_another_architecture_is_a_config_error_naming_a_missing_key(tmp_path, fresh_weights_cache):
    torch.save(_reference("resnet18").state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ConfigError) as e:
        _build(tmp_path, "cnn_small", tmp_path / "r18.pt")
    msg = one_line(e)
    need = set(timm.create_model("cnn_small", num_classes=0).state_dict())
    assert "missing" in msg and any(f"'{k}'" in msg for k in need), msg


def test_a_checkpoint_with_other_input_channels_is_a_config_error_naming_the_shape(tmp_path, fresh_weights_cache):
    torch.save(_reference("cnn_small", in_chans=1).state_dict(), tmp_path / "gray.pt")
    with pytest.raises(ConfigError) as e:
        _build(tmp_path, "cnn_small", tmp_path / "gray.pt", channels=3)
    msg = one_line(e)
    assert "features.0.weight" in msg and "(32, 1, 3, 3)" in msg and "(32, 3, 3, 3)" in msg


@pytest.mark.parametrize("content,words", [
    (b"\x00\x01garbage, not a torch file", "not a torch weights file"),
    (b"", "not a torch weights file"),
    (None, "not found"),
    ("no tensors", "no weights"),
])
def test_unreadable_checkpoints_are_a_config_error(tmp_path, fresh_weights_cache, content, words):
    path = tmp_path / "ckpt.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "no tensors":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ConfigError) as e:
        _build(tmp_path, "cnn_small", path)
    msg = one_line(e)
    assert words in msg and "model.checkpoint" in msg


# ============================================================================ 7. ssal init + the human recipe


def _images(tmp_path: Path) -> Path:
    root = tmp_path / "my photos"
    for i in range(4):
        png(root / f"{i}.png", noise(i))
    return root


def test_ssal_init_writes_a_recipe_that_loads(tmp_path, capsys, monkeypatch):
    images = _images(tmp_path)
    proj = tmp_path / "proj"
    assert cli.main(["init", str(proj), "--images", str(images), "--classes", "cat, dog ,bird"]) == 0
    out = capsys.readouterr().out
    assert str(proj / "recipe.yaml") in out
    assert "no test folder: 0 random images asked with the first batch" in out  # 4 images: too few to audit
    monkeypatch.chdir(tmp_path / "my photos")  # the recipe does not depend on the working directory
    cfg = load_recipe(proj / "recipe.yaml")
    assert cfg.data.dataset == "imagefolder"
    assert cfg.data.root == str(images.resolve()) and list(cfg.data.classes) == ["cat", "dog", "bird"]
    assert cfg.output_dir == str((proj / "run").resolve()) and cfg.name == "proj"
    assert cfg.active.oracle == "human" and cfg.data.test_root is None and cfg.data.labels is None
    # the rest is the shipped human recipe; what 'ssal init' sizes to the folder and the machine is checked
    # in tests/test_sizing.py
    sized = {("data", "image_size"), ("data", "channels"), ("model", "backbone"), ("pretrain", "view_size"),
             ("pretrain", "epochs"), ("active", "initial"), ("active", "budget"), ("active", "rounds"),
             ("active", "audit"), ("active", "lookahead")}
    for section, values in HUMAN_RECIPE.items():
        for k, v in values.items():
            if v != "???" and (section, k) not in sized:
                assert cfg[section][k] == v, (section, k)
    # and the data section finds the pool
    ds = load_dataset(cfg.data)
    assert ds.names() == ["0.png", "1.png", "2.png", "3.png"] and ds.classes == ["cat", "dog", "bird"]


def test_ssal_init_with_test_and_labels(tmp_path):
    images = _images(tmp_path)
    png(tmp_path / "test" / "cat" / "0.png", (1, 1, 1))
    png(tmp_path / "test" / "dog" / "0.png", (2, 2, 2))
    _labels_csv(tmp_path / "seed.csv", [("0.png", "cat"), ("1.png", "dog")])
    proj = tmp_path / "p"
    assert cli.main(["init", str(proj), "--images", str(images), "--classes", "cat,dog",
                     "--test", str(tmp_path / "test"), "--labels", str(tmp_path / "seed.csv")]) == 0
    cfg = load_recipe(proj / "recipe.yaml")
    ds = load_dataset(cfg.data)
    assert ds.has_test and ds.seed_labels[0].tolist() == [0, 1] and ds.seed_labels[1].tolist() == [0, 1]


def test_ssal_init_refuses_to_overwrite_without_force(tmp_path, capsys):
    images = _images(tmp_path)
    proj = tmp_path / "proj"
    assert cli.main(["init", str(proj), "--images", str(images), "--classes", "a,b"]) == 0
    (proj / "recipe.yaml").write_text("# my edits\n")
    capsys.readouterr()
    assert cli.main(["init", str(proj), "--images", str(images), "--classes", "a,b"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ssal: error:") and "--force" in err
    assert (proj / "recipe.yaml").read_text() == "# my edits\n"
    assert cli.main(["init", str(proj), "--images", str(images), "--classes", "a,b,c", "--force"]) == 0
    assert list(load_recipe(proj / "recipe.yaml").data.classes) == ["a", "b", "c"]


@pytest.mark.parametrize("case", ["not_a_folder", "a_file", "one_class", "duplicate", "skip", "empty_name"])
def test_ssal_init_bad_arguments_exit_2_with_one_line(tmp_path, capsys, case):
    images = _images(tmp_path)
    (tmp_path / "file.png").write_bytes(b"x")
    folder_arg, classes = {
        "not_a_folder": (str(tmp_path / "nowhere"), "a,b"),
        "a_file": (str(tmp_path / "file.png"), "a,b"),
        "one_class": (str(images), "cat"),
        "duplicate": (str(images), "cat,dog,cat"),
        "skip": (str(images), "cat,skip"),
        "empty_name": (str(images), "cat,,dog"),
    }[case]
    proj = tmp_path / "proj"
    assert cli.main(["init", str(proj), "--images", folder_arg, "--classes", classes]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ssal: error:"), err
    assert not (proj / "recipe.yaml").exists()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_the_shipped_human_recipe_is_ssal_init_s_recipe():
    shipped = yaml.safe_load((REPO / "recipes" / "imagefolder" / "human.yaml").read_text())
    flat_shipped, flat_code = _flat(shipped), _flat(HUMAN_RECIPE)
    assert set(flat_shipped) == set(flat_code)
    placeholders = {k for k, v in flat_code.items() if v == "???"}
    assert placeholders == {"data.root", "data.classes"}
    assert {k: v for k, v in flat_shipped.items() if k not in placeholders} == \
        {k: v for k, v in flat_code.items() if k not in placeholders}
    assert all(flat_shipped[k] == "???" for k in placeholders)


def test_the_shipped_human_recipe_needs_root_and_classes_and_then_loads(tmp_path):
    path = REPO / "recipes" / "imagefolder" / "human.yaml"
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert "data.classes" in one_line(e) and "data.root" in str(e.value)
    cfg = load_recipe(path, [f"data.root={tmp_path}", "data.classes=[cat,dog]"])
    assert list(cfg.data.classes) == ["cat", "dog"] and cfg.active.oracle == "human"

