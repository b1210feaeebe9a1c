"""Folder data sets: every image is checked to decode before a run, and remembered once it passed."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from ssal.data import imagecheck, load_dataset
from ssal.errors import DataError


def _png(side: int = 12, color=(200, 30, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), color).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(side: int = 200) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((side, side), 60).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(3):
                p = root / split / cls / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(_png())
    (root / "train" / "dog" / "photo.jpg").write_bytes(_jpeg())
    return root


def cfg(root: Path, **kw):
    from ssal.recipe import DataConfig

    return OmegaConf.merge(OmegaConf.structured(DataConfig), {"dataset": "imagefolder", "root": str(root),
                                                              "image_size": 8, "channels": 3, **kw})


@pytest.fixture
def decoded(monkeypatch) -> list[Path]:
    """The files the check decodes, in any order."""
    seen: list[Path] = []
    real = imagecheck._check_one
    monkeypatch.setattr(imagecheck, "_check_one", lambda p: seen.append(p) or real(p))
    return seen


@pytest.mark.parametrize("damage", ["garbage", "truncated png", "truncated jpeg", "empty", "text"])
def test_an_image_that_does_not_decode_is_refused_at_load_naming_it(folder, tmp_path, damage):
    target = folder / "train" / ("dog/photo.jpg" if "jpeg" in damage else "cat/1.png")
    data = target.read_bytes()
    target.write_bytes({"garbage": os.urandom(300), "truncated png": data[: len(data) // 2],
                        "truncated jpeg": data[: len(data) // 2], "empty": b"", "text": b"hello"}[damage])
    with pytest.raises(DataError) as e:
        load_dataset(cfg(folder), cache_dir=str(tmp_path / "cache"))
    message = str(e.value)
    assert "1 of 13 images" in message and target.name in message and "remove or replace" in message
    assert "\n" not in message
    assert not (tmp_path / "cache").exists()  # nothing remembered for a folder that failed


def test_every_bad_image_is_counted_and_the_first_three_named(folder, tmp_path):
    bad = [folder / "train" / "cat" / f"{i}.png" for i in range(3)] + [folder / "train" / "dog" / "0.png"]
    for p in bad:
        p.write_bytes(b"x")
    with pytest.raises(DataError) as e:
        load_dataset(cfg(folder), cache_dir=str(tmp_path / "cache"))
    assert "4 of 13 images" in str(e.value) and "and 1 more" in str(e.value)
    assert sum(f"{p.parent.name}/{p.name}" in str(e.value) for p in bad) == 3


def test_the_test_split_is_checked_too(folder, tmp_path):
    (folder / "test" / "dog" / "0.png").write_bytes(b"x")
    with pytest.raises(DataError, match=r"1 of 13 images in .*data cannot be decoded: test/dog/0.png"):
        load_dataset(cfg(folder), cache_dir=str(tmp_path / "cache"))


def test_a_second_run_decodes_only_what_changed(folder, tmp_path, decoded):
    cache = str(tmp_path / "cache")
    ds = load_dataset(cfg(folder), cache_dir=cache)
    assert len(decoded) == 7 + 6  # train and test
    ds.save_caches()
    decoded.clear()
    load_dataset(cfg(folder), cache_dir=cache).save_caches()
    assert decoded == []
    changed = folder / "train" / "cat" / "2.png"
    changed.write_bytes(_png(side=14))  # another size: checked again
    load_dataset(cfg(folder), cache_dir=cache)
    assert decoded == [changed]
    changed.write_bytes(b"broken now")
    with pytest.raises(DataError, match="2.png"):
        load_dataset(cfg(folder), cache_dir=cache)


def test_without_save_nothing_is_remembered(folder, tmp_path, decoded):
    cache = str(tmp_path / "cache")
    load_dataset(cfg(folder), cache_dir=cache)  # a run that stops before it starts: no save_caches()
    assert not (tmp_path / "cache").exists()
    decoded.clear()
    load_dataset(cfg(folder), cache_dir=cache)
    assert len(decoded) == 13


def test_a_damaged_cache_file_only_means_checking_again(folder, tmp_path, decoded):
    cache = tmp_path / "cache"
    load_dataset(cfg(folder), cache_dir=str(cache)).save_caches()
    for f in (cache / "imagecheck").iterdir():
        f.write_bytes(b"\x00garbage")
    decoded.clear()
    load_dataset(cfg(folder), cache_dir=str(cache))
    assert len(decoded) == 13


def test_only_the_subsample_is_checked(folder, tmp_path, decoded):
    ds = load_dataset(cfg(folder, pool_size=3, test_size=2), cache_dir=str(tmp_path / "cache"))
    assert len(decoded) == 5
    assert {str(p) for p in decoded} <= {*map(str, ds.train.base.paths), *map(str, ds.test.base.paths)}
