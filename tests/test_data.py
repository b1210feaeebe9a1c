"""Data sets: every builtin format is written here in its real on-disk layout and read back."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_fashion_like, write_idx
from PIL import Image

from ssal.data import datasets as ds_mod
from ssal.data.datasets import load_dataset, read_idx
from ssal.errors import ConfigError, DataError
from ssal.recipe import DataConfig


def cfg(dataset: str, root=None, **kw) -> SimpleNamespace:
    base = {**dataclasses.asdict(DataConfig()), "dataset": dataset, "root": None if root is None else str(root)}
    base.update(kw)
    return SimpleNamespace(**base)


def _written_fmnist(seed_train: int = 0, seed_test: int = 1):
    """The arrays the ``fmnist_root`` fixture wrote (same generator, same seeds)."""
    return make_fashion_like(200, seed_train), make_fashion_like(100, seed_test)


# ----------------------------------------------------------------------------- Fashion-MNIST


def _check_fmnist(ds, train, test):
    (tr_x, tr_y), (te_x, te_y) = train, test
    assert ds.name == "fashion_mnist"
    assert ds.channels == 1 and ds.image_size == (28, 28) and ds.num_classes == 10 and ds.hflip is True
    assert len(ds.train) == len(tr_y) and len(ds.test) == len(te_y)
    for split, x, y in ((ds.train, tr_x, tr_y), (ds.test, te_x, te_y)):
        imgs = split.load(torch.arange(len(split)))
        assert imgs.dtype == torch.uint8
        assert tuple(imgs.shape) == (len(y), 1, 28, 28)
        assert np.array_equal(imgs[:, 0].numpy(), x)
        assert split.targets.dtype == torch.int64
        assert split.targets.tolist() == y.astype(int).tolist()


def test_fashion_mnist_from_gz_folder(fmnist_root):
    ds = load_dataset(DataConfig(dataset="fashion_mnist", root=str(fmnist_root)))
    _check_fmnist(ds, *_written_fmnist())
    # load() picks exactly the requested rows, in the requested order
    idx = torch.tensor([5, 0, 199, 5])
    (tr_x, _), _ = _written_fmnist()
    assert np.array_equal(ds.train.load(idx)[:, 0].numpy(), tr_x[[5, 0, 199, 5]])


def test_fashion_mnist_default_root_is_used_when_root_is_none(fmnist_root, monkeypatch):
    monkeypatch.setattr(ds_mod, "FASHION_MNIST_DEBIAN", str(fmnist_root))
    ds = load_dataset(cfg("fashion_mnist", root=None))
    _check_fmnist(ds, *_written_fmnist())


def test_fashion_mnist_torchvision_layout_uncompressed(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    train, test = make_fashion_like(30, 7), make_fashion_like(20, 8)
    for prefix, (x, y) in (("train", train), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x, compress=False)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, compress=False)
    assert not list(raw.glob("*.gz"))
    ds = load_dataset(cfg("fashion_mnist", root=tmp_path))
    _check_fmnist(ds, train, test)


def test_fashion_mnist_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(cfg("fashion_mnist", root=tmp_path / "does-not-exist"))
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "data.root" in msg


def test_fashion_mnist_missing_default_folder_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ds_mod, "FASHION_MNIST_DEBIAN", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(cfg("fashion_mnist", root=None))


@pytest.mark.parametrize("missing", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_fashion_mnist_missing_file(tmp_path, missing):
    for prefix, n in (("train", 10), ("t10k", 10)):
        x, y = make_fashion_like(n, 0)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            if stem != missing:
                write_idx(tmp_path / stem, arr)
    with pytest.raises(DataError) as e:
        load_dataset(cfg("fashion_mnist", root=tmp_path))
    msg = str(e.value)
    assert missing.split("-")[0] in msg and "apt-get install dataset-fashion-mnist" in msg


def _fmnist_with_bad_train_images(root: Path, payload: bytes, name: str) -> None:
    x, y = make_fashion_like(10, 0)
    write_idx(root / "train-labels-idx1-ubyte", y)
    write_idx(root / "t10k-images-idx3-ubyte", x)
    write_idx(root / "t10k-labels-idx1-ubyte", y)
    (root / name).write_bytes(payload)


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


_GOOD = _idx_bytes(make_fashion_like(10, 0)[0])
# a gzip member whose deflate stream starts with the reserved block type 11 (zlib: "invalid block type")
_BAD_DEFLATE = bytes([0x1F, 0x8B, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xFF, 0x07]) + bytes(16)


@pytest.mark.parametrize("name,payload", [
    ("train-images-idx3-ubyte", _GOOD[: len(_GOOD) // 2]),                      # truncated data
    ("train-images-idx3-ubyte", _GOOD[:6]),                                    # truncated header
    ("train-images-idx3-ubyte", b""),                                          # empty
    ("train-images-idx3-ubyte", b"\x12\x34" + _GOOD[2:]),                      # bad magic
    ("train-images-idx3-ubyte", _GOOD[:2] + b"\x0d" + _GOOD[3:]),              # float dtype code
    ("train-images-idx3-ubyte", _GOOD + b"extra"),                             # trailing garbage
    ("train-images-idx3-ubyte", b"this is not an idx file at all, just text"),
    ("train-images-idx3-ubyte.gz", gzip.compress(_GOOD)[:40]),                 # truncated gzip
    ("train-images-idx3-ubyte.gz", b"not gzip at all"),                        # not gzip
    ("train-images-idx3-ubyte.gz", _BAD_DEFLATE),                              # corrupt deflate stream
    ("train-images-idx3-ubyte.gz", gzip.compress(_GOOD[:-100])),               # valid gzip, short idx
])
def test_fashion_mnist_garbage_idx_raises_data_error(tmp_path, name, payload):
    _fmnist_with_bad_train_images(tmp_path, payload, name)
    with pytest.raises(DataError) as e:
        load_dataset(cfg("fashion_mnist", root=tmp_path))
    assert "train-images-idx3-ubyte" in str(e.value)
    with pytest.raises(DataError):
        read_idx(tmp_path / name)


def test_read_idx_roundtrip_any_shape(tmp_path):
    arr = np.arange(2 * 3 * 4 * 5, dtype=np.int64).reshape(2, 3, 4, 5).astype(np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", arr, compress=True)), arr)
    assert np.array_equal(read_idx(write_idx(tmp_path / "b", arr, compress=False)), arr)


def test_fashion_mnist_image_label_count_mismatch(tmp_path):
    x, y = make_fashion_like(10, 0)
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y[:9])
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", y)
    with pytest.raises(DataError):
        load_dataset(cfg("fashion_mnist", root=tmp_path))


# ----------------------------------------------------------------------------- digits


def test_digits():
    from sklearn.datasets import load_digits

    ds = load_dataset(cfg("digits"))
    ds2 = load_dataset(cfg("digits"))
    assert len(ds.train) + len(ds.test) == 1797
    assert len(ds.test) == 450  # ceil(0.25 * 1797)
    assert ds.num_classes == 10 and ds.classes == [str(i) for i in range(10)]
    assert ds.channels == 1 and ds.image_size == (8, 8) and ds.hflip is False
    tr = ds.train.load(torch.arange(len(ds.train)))
    te = ds.test.load(torch.arange(len(ds.test)))
    assert tr.dtype == torch.uint8 and tuple(tr.shape) == (1347, 1, 8, 8) and tuple(te.shape) == (450, 1, 8, 8)
    allx = torch.cat([tr, te])
    assert int(allx.min()) == 0 and int(allx.max()) == 255
    # the split is fixed: a second load gives the same images in the same order
    assert torch.equal(tr, ds2.train.load(torch.arange(len(ds2.train))))
    assert torch.equal(ds.test.targets, ds2.test.targets)
    # every class appears in both splits, roughly 3:1 (stratified)
    tr_counts = torch.bincount(ds.train.targets, minlength=10)
    te_counts = torch.bincount(ds.test.targets, minlength=10)
    assert (te_counts > 0).all() and ((tr_counts - 3 * te_counts).abs() <= 6).all()
    # the (image, label) pairs are exactly sklearn's, images rescaled from 0..16 to 0..255
    bunch = load_digits()
    back = np.round(allx[:, 0].numpy().astype(np.float64) * 16.0 / 255.0).astype(np.int64)
    all_targets = torch.cat([ds.train.targets, ds.test.targets])
    ours = sorted((b.tobytes(), int(t)) for b, t in zip(back, all_targets, strict=True))
    ref = sorted((im.astype(np.int64).tobytes(), int(t)) for im, t in zip(bunch.images, bunch.target, strict=True))
    assert ours == ref
    # the scaling is v * 255 / 16 rounded: 16 -> 255, 8 -> 128 (127.5 rounds to even), 1 -> 16
    assert set(np.unique(allx.numpy()).tolist()) <= {round(v * 255 / 16) for v in range(17)}


def test_unknown_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="digits"):
        load_dataset(cfg("digitz"))


# ----------------------------------------------------------------------------- CIFAR


def _cifar_batch(n: int, seed: int, n_classes: int, label_key: bytes) -> dict:
    rng = np.random.default_rng(seed)
    entry = {b"batch_label": b"training batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key: [int(v) for v in rng.integers(0, n_classes, n)],
             b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)]}
    if label_key == b"fine_labels":
        entry[b"coarse_labels"] = [v // 5 for v in entry[label_key]]
    return entry


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def cifar10_root(tmp_path) -> tuple[Path, list[dict], dict]:
    base = tmp_path / "cifar-10-batches-py"
    batches = [_cifar_batch(3 + i, i, 10, b"labels") for i in range(5)]
    for i, b in enumerate(batches, start=1):
        _dump(base / f"data_batch_{i}", b)
    test = _cifar_batch(4, 99, 10, b"labels")
    _dump(base / "test_batch", test)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(base / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 10000, b"num_vis": 3072})
    return tmp_path, batches, test


@pytest.fixture
def cifar100_root(tmp_path) -> tuple[Path, dict, dict]:
    base = tmp_path / "cifar-100-python"
    train, test = _cifar_batch(7, 1, 100, b"fine_labels"), _cifar_batch(5, 2, 100, b"fine_labels")
    _dump(base / "train", train)
    _dump(base / "test", test)
    _dump(base / "meta", {b"fine_label_names": [f"class{i:03d}".encode() for i in range(100)],
                          b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})
    return tmp_path, train, test


def _assert_channel_major(img: torch.Tensor, row: np.ndarray) -> None:
    """img [3, 32, 32] against a CIFAR row: 1024 red values, then green, then blue, each row-major."""
    assert tuple(img.shape) == (3, 32, 32)
    a = img.numpy()
    for c in range(3):
        for y in range(32):
            for x in range(32):
                assert a[c, y, x] == row[c * 1024 + y * 32 + x], (c, y, x)


@pytest.mark.parametrize("use_batches_folder", [False, True])
def test_cifar10(cifar10_root, use_batches_folder):
    root, batches, test = cifar10_root
    if use_batches_folder:
        root = root / "cifar-10-batches-py"
    ds = load_dataset(cfg("cifar10", root=root))
    assert ds.classes[:3] == ["airplane", "automobile", "bird"] and ds.num_classes == 10
    assert ds.channels == 3 and ds.image_size == (32, 32) and ds.hflip is True
    n_train = sum(len(b[b"labels"]) for b in batches)
    assert len(ds.train) == n_train == 3 + 4 + 5 + 6 + 7 and len(ds.test) == 4
    x = ds.train.load(torch.arange(n_train))
    assert x.dtype == torch.uint8 and tuple(x.shape) == (n_train, 3, 32, 32)
    assert ds.train.targets.tolist() == [v for b in batches for v in b[b"labels"]]
    assert ds.test.targets.tolist() == test[b"labels"]
    # the second image of data_batch_3 (batches are concatenated in order 1..5)
    k = 3 + 4 + 1
    _assert_channel_major(x[k], batches[2][b"data"][1])
    rows = np.concatenate([b[b"data"] for b in batches])
    assert np.array_equal(x.reshape(n_train, -1).numpy(), rows)
    _assert_channel_major(ds.test.load(torch.tensor([3]))[0], test[b"data"][3])


@pytest.mark.parametrize("use_batches_folder", [False, True])
def test_cifar100(cifar100_root, use_batches_folder):
    root, train, test = cifar100_root
    if use_batches_folder:
        root = root / "cifar-100-python"
    ds = load_dataset(cfg("cifar100", root=root))
    assert ds.num_classes == 100 and ds.classes[0] == "class000" and ds.classes[99] == "class099"
    assert ds.train.targets.tolist() == train[b"fine_labels"]  # fine, not coarse labels
    assert ds.test.targets.tolist() == test[b"fine_labels"]
    x = ds.train.load(torch.arange(7))
    assert x.dtype == torch.uint8 and tuple(x.shape) == (7, 3, 32, 32)
    _assert_channel_major(x[6], train[b"data"][6])
    assert np.array_equal(ds.test.load(torch.arange(5)).reshape(5, -1).numpy(), test[b"data"])


def test_cifar10_missing_file(cifar10_root):
    root, _, _ = cifar10_root
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3") as e:
        load_dataset(cfg("cifar10", root=root))
    assert "data.root" in str(e.value)


def test_cifar_missing_root(tmp_path):
    with pytest.raises(DataError, match="data.root"):
        load_dataset(cfg("cifar100", root=None))
    with pytest.raises(DataError, match="data.root"):
        load_dataset(cfg("cifar10", root=tmp_path / "absent"))
    with pytest.raises(DataError, match="cifar-100-python"):  # an empty folder: no cifar-100-python inside
        load_dataset(cfg("cifar100", root=tmp_path))


_GOOD_PICKLE = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)


@pytest.mark.parametrize("payload", [
    _GOOD_PICKLE[: len(_GOOD_PICKLE) // 2],                       # truncated
    b"",                                                          # empty
    b"\x12garbage bytes that are no pickle",                      # invalid load key
    b"cno_such_module_ssal_test\nthing\n.",                       # a global that does not import
    pickle.dumps([1, 2, 3]),                                      # a pickle, but not a dict
    pickle.dumps({b"labels": [0, 1]}),                            # no b"data"
    pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),  # rows not 3072 wide
])
def test_cifar10_corrupt_batch(cifar10_root, payload):
    root, _, _ = cifar10_root
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(payload)
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset(cfg("cifar10", root=root))


def test_cifar10_corrupt_meta(cifar10_root):
    root, _, _ = cifar10_root
    meta = root / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(b"\x80\x02}q\x00(X")  # truncated
    with pytest.raises(DataError, match="batches.meta"):
        load_dataset(cfg("cifar10", root=root))
    _dump(meta, {b"num_vis": 3072})  # no b"label_names"
    with pytest.raises(DataError, match="batches.meta"):
        load_dataset(cfg("cifar10", root=root))


def test_cifar100_corrupt_test_file(cifar100_root):
    root, _, _ = cifar100_root
    (root / "cifar-100-python" / "test").write_bytes(b"\x80\x04\x95")
    with pytest.raises(DataError, match="test"):
        load_dataset(cfg("cifar100", root=root))


def test_cifar100_missing_labels_key(cifar100_root):
    root, _, _ = cifar100_root
    _dump(root / "cifar-100-python" / "train", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match="train"):
        load_dataset(cfg("cifar100", root=root))


# ----------------------------------------------------------------------------- imagefolder

COLORS = {"zebra": (250, 10, 20), "apple": (5, 200, 30), "mango": (40, 60, 240)}


def _write_png(path: Path, color, size=(12, 10), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def folder_root(tmp_path) -> Path:
    for split, n in (("train", 3), ("test", 2)):
        for cls, color in COLORS.items():
            for i in range(n):
                _write_png(tmp_path / split / cls / f"{i}.png", color)
    return tmp_path


def test_imagefolder_rgb(folder_root):
    ds = load_dataset(cfg("imagefolder", root=folder_root, image_size=6, channels=3))
    assert ds.classes == ["apple", "mango", "zebra"]
    assert ds.channels == 3 and ds.image_size == (6, 6) and ds.num_classes == 3
    assert len(ds.train) == 9 and len(ds.test) == 6
    for split in (ds.train, ds.test):
        # targets come from the folder each file is in
        for path, t in zip(split.paths, split.targets.tolist(), strict=True):
            assert Path(path).parent.name == ds.classes[t]
        x = split.load(torch.arange(len(split)))
        assert x.dtype == torch.uint8 and tuple(x.shape) == (len(split), 3, 6, 6)
        for img, t in zip(x, split.targets.tolist(), strict=True):
            expected = torch.tensor(COLORS[ds.classes[t]], dtype=torch.uint8).view(3, 1, 1).expand(3, 6, 6)
            assert torch.equal(img, expected)


def test_imagefolder_grayscale_resize_and_center_crop(tmp_path):
    # a 20x10 (W x H) gray image: left half 30, right half 200; resize keeps it (short side 10), crop takes
    # columns 5..14 -> five columns of 30 then five of 200
    for split in ("train", "test"):
        for cls in ("a", "b"):
            arr = np.full((10, 20), 30, np.uint8)
            arr[:, 10:] = 200
            p = tmp_path / split / cls / "x.png"
            p.parent.mkdir(parents=True)
            Image.fromarray(arr, mode="L").convert("RGB").save(p)
    ds = load_dataset(cfg("imagefolder", root=tmp_path, image_size=10, channels=1))
    x = ds.train.load(torch.tensor([1, 0]))
    assert tuple(x.shape) == (2, 1, 10, 10) and x.dtype == torch.uint8
    expected = torch.tensor([30] * 5 + [200] * 5, dtype=torch.uint8).expand(10, 10)
    assert torch.equal(x[0, 0], expected) and torch.equal(x[1, 0], expected)
    assert ds.train.targets.tolist() == [0, 1]


def test_imagefolder_is_lazy(folder_root):
    ds = load_dataset(cfg("imagefolder", root=folder_root, image_size=4, channels=3))
    i = ds.train.targets.tolist().index(ds.classes.index("apple"))
    _write_png(Path(ds.train.paths[i]), (1, 2, 3))  # changed after the data set was built
    img = ds.train.load(torch.tensor([i]))[0]
    assert img[:, 0, 0].tolist() == [1, 2, 3]


def test_imagefolder_val_folder_and_subsample(folder_root):
    (folder_root / "test").rename(folder_root / "val")
    ds = load_dataset(cfg("imagefolder", root=folder_root, image_size=4, channels=3, pool_size=5, test_size=4),
                      seed=3)
    assert len(ds.train) == 5 and len(ds.test) == 4
    for split in (ds.train, ds.test):
        x = split.load(torch.arange(len(split)))
        for img, t in zip(x, split.targets.tolist(), strict=True):
            assert img[:, 0, 0].tolist() == list(COLORS[ds.classes[t]])


def test_imagefolder_mismatched_classes(folder_root):
    (folder_root / "test" / "zebra").rename(folder_root / "test" / "horse")
    with pytest.raises(DataError, match="class folders"):
        load_dataset(cfg("imagefolder", root=folder_root))


def test_imagefolder_missing_test_split_or_root(folder_root, tmp_path):
    with pytest.raises(DataError, match="data.root"):
        load_dataset(cfg("imagefolder", root=None))
    for d in (folder_root / "test").iterdir():
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    (folder_root / "test").rmdir()
    with pytest.raises(DataError, match="test/"):
        load_dataset(cfg("imagefolder", root=folder_root))


def test_imagefolder_empty_class_folder(folder_root):
    (folder_root / "train" / "empty").mkdir()
    (folder_root / "test" / "empty").mkdir()
    with pytest.raises(DataError):
        load_dataset(cfg("imagefolder", root=folder_root))


def test_imagefolder_unreadable_image(folder_root):
    ds = load_dataset(cfg("imagefolder", root=folder_root, image_size=4, channels=3))
    Path(ds.train.paths[0]).write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        ds.train.load(torch.tensor([0]))


# ----------------------------------------------------------------------------- pool_size / test_size


def _row_index(full: torch.Tensor) -> dict[bytes, int]:
    index = {img.numpy().tobytes(): i for i, img in enumerate(full)}
    assert len(index) == len(full)  # the noise makes every image unique
    return index


def test_subsample_seeded_and_targets_follow_images(fmnist_root):
    full = load_dataset(cfg("fashion_mnist", root=fmnist_root))
    full_tr = full.train.load(torch.arange(200))
    full_te = full.test.load(torch.arange(100))
    tr_index, te_index = _row_index(full_tr), _row_index(full_te)

    def picked(seed):
        ds = load_dataset(cfg("fashion_mnist", root=fmnist_root, pool_size=50, test_size=30), seed=seed)
        assert len(ds.train) == 50 and len(ds.test) == 30
        out = []
        for split, index, full_split in ((ds.train, tr_index, full.train), (ds.test, te_index, full.test)):
            x = split.load(torch.arange(len(split)))
            rows = [index[img.numpy().tobytes()] for img in x]
            assert len(set(rows)) == len(rows)  # a subset, no repeats
            assert split.targets.tolist() == full_split.targets[rows].tolist()
            out.append(rows)
        return out

    a, b, c = picked(0), picked(0), picked(1)
    assert a == b
    assert set(a[0]) != set(c[0]) and set(a[1]) != set(c[1])
    # train and test subsets are drawn with different streams, not the same positions
    assert a[0][:30] != a[1]


def test_subsample_none_or_full_size_keeps_everything(fmnist_root):
    for size in (None, 200):
        ds = load_dataset(cfg("fashion_mnist", root=fmnist_root, pool_size=size, test_size=100), seed=5)
        assert len(ds.train) == 200 and len(ds.test) == 100
        assert ds.train.targets.tolist() == (np.arange(200) % 10).tolist()


def test_subsample_larger_than_split(fmnist_root):
    with pytest.raises(DataError, match="pool_size"):
        load_dataset(cfg("fashion_mnist", root=fmnist_root, pool_size=201))
    with pytest.raises(DataError, match="test_size"):
        load_dataset(cfg("fashion_mnist", root=fmnist_root, test_size=101))


def test_subsample_of_digits_with_dataconfig():
    ds = load_dataset(DataConfig(dataset="digits", pool_size=400, test_size=200), seed=0)
    assert len(ds.train) == 400 and len(ds.test) == 200
    full = load_dataset(DataConfig(dataset="digits"))
    x = ds.train.load(torch.arange(400))
    fx = full.train.load(torch.arange(len(full.train)))
    # every kept image is one of the full split's images with one of the labels it has there
    labels_of: dict[bytes, set[int]] = {}
    for img, t in zip(fx, full.train.targets.tolist(), strict=True):
        labels_of.setdefault(img.numpy().tobytes(), set()).add(t)
    for img, t in zip(x, ds.train.targets.tolist(), strict=True):
        assert t in labels_of[img.numpy().tobytes()]
