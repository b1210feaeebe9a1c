"""Image classification data sets, loaded offline from local files.

Every data set is an :class:`ImageDataset` with a ``train`` split (the pool the active learner
draws from) and a ``test`` split. A split yields uint8 image tensors ``[B, C, H, W]`` for a batch of
indices: small data sets live in memory as one uint8 tensor; ``imagefolder`` decodes files lazily.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import pickle
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from ssal import files
from ssal.data.imagecheck import check_images
from ssal.data.label_files import read_seed_labels
from ssal.data.pool_settings import apply_pool_settings
from ssal.data.splits import Split, TensorSplit
from ssal.data.walk import IMAGE_EXTENSIONS, LOOSE, walk_images
from ssal.errors import DataError, did_you_mean, one_line
from ssal.registry import Registry

DATASETS = Registry("dataset")


@dataclass
class ImageDataset:
    name: str
    train: Split
    test: Split
    classes: list[str]
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool  # whether a horizontal flip keeps the label (not for digits)
    seed_labels: tuple[torch.Tensor, torch.Tensor] | None = None  # (indices, labels) given before any query
    notes: list[str] = field(default_factory=list)  # for people: what loading left out (see data.walk)

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise DataError(f"{self.name}: found {len(self.classes)} class ({', '.join(self.classes) or 'none'}); a "
                            "classifier needs at least 2: add the other classes' images (or data.classes)")
        for which, split in (("train", self.train), ("test", self.test)):
            bad = (split.targets < -1) | (split.targets >= len(self.classes))  # -1: not known (an unlabeled pool)
            if len(split) and bad.any():
                i = int(bad.nonzero()[0])
                raise DataError(f"{self.name}: the {which} split has label {int(split.targets[i])} at index {i}, "
                                f"outside 0..{len(self.classes) - 1} ({len(self.classes)} classes); its label file is "
                                "damaged or belongs to another data set")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_truth(self) -> bool:
        """Whether every pool image's label is known (a simulated oracle can answer)."""
        return bool((self.train.targets >= 0).all())

    @property
    def has_test(self) -> bool:
        return len(self.test) > 0

    def fingerprint(self) -> dict:
        """What the pool's indices mean (the run directory stores it; the pretraining cache key holds it)."""
        out = {"dataset": self.name, "n": len(self.train), "classes": list(self.classes),
               "digest": self.train.fingerprint()}
        if self.seed_labels is not None:
            idx, lab = self.seed_labels
            out["seed_labels"] = hashlib.blake2b(idx.numpy().tobytes() + lab.numpy().tobytes(),
                                                 digest_size=16).hexdigest()
        return out

    def names(self) -> list[str] | None:
        """The pool's image paths relative to its root, for data decoded from files (else None)."""
        got = self.train.files()
        return None if got is None else got[1]

    def save_caches(self) -> None:
        """Remember the image check's results (see :mod:`ssal.data.imagecheck`); best effort."""
        for remember in getattr(self, "pending_caches", []):
            remember()
        self.pending_caches = []


def load_dataset(cfg, seed: int = 0, cache_dir: str | None = None) -> ImageDataset:
    """Build the data set of a recipe's ``data`` section (``pool_size``/``test_size``, then the pool settings of
    :mod:`ssal.data.pool_settings` applied). Images
    decoded from files are checked to decode (:mod:`ssal.data.imagecheck`); with ``cache_dir`` the
    files that passed are remembered once :meth:`ImageDataset.save_caches` is called."""

    builder = DATASETS.get(cfg.dataset)
    ds: ImageDataset = builder(cfg)
    ds.train = _subsample(ds.train, cfg.pool_size, seed, "data.pool_size", "train")
    apply_pool_settings(ds, cfg, seed)
    if len(ds.test):
        ds.test = _subsample(ds.test, cfg.test_size, seed + 1, "data.test_size", "test")
    by_root: dict[Path, list[str]] = {}  # one check per folder (the splits of a folder data set share its root)
    for split in (ds.train, ds.test):
        if split.files() is not None and len(split):
            root, rels = split.files()
            by_root.setdefault(root, []).extend(rels)
    # each file once (data.redundancy repeats a pool's paths)
    ds.pending_caches = [check_images(root, list(dict.fromkeys(rels)), cache_dir) for root, rels in by_root.items()]
    if cfg.hflip is not None:
        ds.hflip = bool(cfg.hflip)
    if cfg.labels is not None:

        ds.seed_labels = read_seed_labels(cfg.labels, ds)
    if cfg.mean is not None:
        ds.mean, ds.std = _per_channel(cfg.mean, ds.channels), _per_channel(cfg.std, ds.channels)
        if len(ds.mean) != ds.channels:
            raise DataError(f"data.mean/data.std need {ds.channels} values (one per channel of {ds.name}), got "
                            f"{len(cfg.mean)}")
    elif ds.train.files() is not None:
        ds.mean, ds.std, remember = pool_statistics(ds.train, ds.channels, cache_dir)
        ds.pending_caches.append(remember)
    return ds


def _per_channel(values, channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    return values * channels if len(values) == 1 else values


NORM_SAMPLE = 1000  # images whose pixels give a folder's mean/std (seeded; +-0.005 on natural photos)


def pool_statistics(split: Split, channels: int, cache_dir: str | None):
    """Per-channel mean and std of the pixels (in [0, 1]) of up to :data:`NORM_SAMPLE` seeded images of a
    folder pool, and a callable that remembers them in ``<cache_dir>/norm/<digest>.json`` (called once the
    run goes ahead, like the image check's)."""
    root, rels = split.files()
    h = hashlib.blake2b(split.fingerprint().encode() + str(root.resolve()).encode(), digest_size=16)
    for rel in dict.fromkeys(rels):  # the files themselves: another folder with the same names, or an edited image
        st = os.stat(root / rel)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    path = Path(os.path.expanduser(cache_dir)) / "norm" / f"{h.hexdigest()}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            got = files.read_json(path)
            return tuple(got["mean"]), tuple(got["std"]), lambda: None
        except (files.Damaged, KeyError, TypeError):
            pass  # computed again below
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(split), generator=g)[:NORM_SAMPLE].sort().values
    c = channels
    total, squares, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for chunk in pick.split(256):  # one pass: E[x] and E[x^2] in float64 (no cancellation at this size)
        x = split.load(chunk).double() / 255
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
    out = tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)

    def remember() -> None:
        if path is not None:
            with contextlib.suppress(OSError, files.StorageError):
                files.mkdirs(path.parent)
                files.write_json(path, {"mean": out[0], "std": out[1], "images": len(pick)})

    return (*out, remember)


def _subsample(split: Split, size: int | None, seed: int, key: str, what: str) -> Split:
    if size is None or size == len(split):
        return split
    if size > len(split):
        raise DataError(f"{key}={size} is larger than the {what} split ({len(split)} images); lower it")
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(split), generator=g)[:size].sort().values
    return split.subset(keep)


def _root(cfg, default: str | None, how_to_get: str) -> Path:
    root = cfg.root if cfg.root is not None else default
    if root is None:
        raise DataError(f"data set '{cfg.dataset}' needs data.root; {how_to_get}")
    path = Path(os.path.expanduser(str(root)))
    if not path.is_dir():
        raise DataError(f"data.root '{root}' does not exist or is not a folder; {how_to_get}")
    return path


# ----------------------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_HOWTO = ("install it with 'apt-get install dataset-fashion-mnist' (files go to "
                       f"{FASHION_MNIST_DEBIAN}) or set data.root to a folder with the idx files")


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not.

    Written by hand: torchvision's reader needs uncompressed files, the Debian package ships .gz.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("bad magic number")
        shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(shape)
    except (OSError, ValueError, struct.error, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a valid idx file ({e}); re-download or reinstall the data set") from None


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg) -> ImageDataset:
    root = _root(cfg, FASHION_MNIST_DEBIAN, FASHION_MNIST_HOWTO)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
        lab_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        if img_path is None or lab_path is None:
            raise DataError(f"Fashion-MNIST {split} files ({prefix}-images-idx3-ubyte[.gz], "
                            f"{prefix}-labels-idx1-ubyte[.gz]) not found in {root}; {FASHION_MNIST_HOWTO}")
        images = torch.from_numpy(read_idx(img_path).copy()).unsqueeze(1)
        labels = torch.from_numpy(read_idx(lab_path).astype(np.int64))
        if len(images) != len(labels):
            raise DataError(f"{img_path} holds {len(images)} images but {lab_path} {len(labels)} labels; the files "
                            "belong to different versions: reinstall or re-download the data set")
        if images.ndim != 4 or labels.ndim != 1:
            raise DataError(f"{img_path} / {lab_path} have unexpected shapes "
                            f"{tuple(images.shape)} / {tuple(labels.shape)}")
        splits[split] = TensorSplit(images, labels)
    return ImageDataset("fashion_mnist", splits["train"], splits["test"], FASHION_MNIST_CLASSES,
                        channels=1, image_size=(28, 28), mean=(0.2860,), std=(0.3530,), hflip=True)


# ----------------------------------------------------------------------------- digits (8x8)

@DATASETS.register("digits")
def digits(cfg) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits: 1,797 images, a fixed stratified 75/25 split."""
    from sklearn.datasets import load_digits  # heavy (scikit-learn), and only this data set needs it
    from sklearn.model_selection import train_test_split  # (as above)

    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.25, random_state=0, stratify=bunch.target)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    return ImageDataset("digits", TensorSplit(images[tr], labels[tr]), TensorSplit(images[te], labels[te]),
                        [str(i) for i in range(10)], channels=1, image_size=(8, 8),
                        mean=(0.3, ), std=(0.38, ), hflip=False)


# ----------------------------------------------------------------------------- CIFAR

def _load_cifar_pickle(f: Path):
    try:
        with open(f, "rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except Exception as e:  # a corrupt pickle can raise nearly anything (UnpicklingError, EOFError, ImportError, ...)
        raise DataError(f"{f} is not a valid CIFAR python batch ({type(e).__name__}: {e}); "
                        "re-extract the archive") from None


def _read_cifar_pickles(files: list[Path], label_key: bytes) -> TensorSplit:
    images, labels = [], []
    for f in files:
        entry = _load_cifar_pickle(f)
        try:
            images.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in entry[label_key])
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise DataError(f"{f} is not a valid CIFAR python batch ({type(e).__name__}: {e}); "
                            "re-extract the archive") from None
    return TensorSplit(torch.from_numpy(np.concatenate(images)), torch.tensor(labels))


def _cifar(cfg, name: str, folder: str, train_files: list[str], test_files: list[str], meta: str,
           label_key: bytes, names_key: bytes, mean, std) -> ImageDataset:
    howto = (f"download the CIFAR python version ('{folder}' folder, e.g. torchvision's "
             f"{name.upper()}(root, download=True)) and set data.root to its parent folder")
    root = _root(cfg, None, howto)
    base = root if root.name == folder else root / folder
    missing = [f for f in train_files + test_files if not (base / f).is_file()]
    if missing:
        raise DataError(f"{name} files {missing} not found in {base}; {howto}")
    train = _read_cifar_pickles([base / f for f in train_files], label_key)
    test = _read_cifar_pickles([base / f for f in test_files], label_key)
    n_classes = 10 if name == "cifar10" else 100
    classes = [str(i) for i in range(n_classes)]
    if (base / meta).is_file():
        entry = _load_cifar_pickle(base / meta)
        try:
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in entry[names_key]]
        except (KeyError, TypeError, UnicodeDecodeError) as e:
            raise DataError(f"{base / meta} is not a valid CIFAR meta file ({type(e).__name__}: {e}); "
                            "re-extract the archive") from None
    return ImageDataset(name, train, test, classes, channels=3, image_size=(32, 32),
                        mean=mean, std=std, hflip=True)


@DATASETS.register("cifar10")
def cifar10(cfg) -> ImageDataset:
    return _cifar(cfg, "cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                  ["test_batch"], "batches.meta", b"labels", b"label_names",
                  (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@DATASETS.register("cifar100")
def cifar100(cfg) -> ImageDataset:
    return _cifar(cfg, "cifar100", "cifar-100-python", ["train"], ["test"], "meta",
                  b"fine_labels", b"fine_label_names",
                  (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


# ----------------------------------------------------------------------------- image folder

class FolderSplit(Split):
    """Images decoded from files under ``root`` on demand, resized to a fixed size."""

    def __init__(self, samples: list[tuple[str, int]], size: tuple[int, int], channels: int, root: Path):
        self.paths = [p for p, _ in samples]
        self.targets = torch.tensor([t for _, t in samples], dtype=torch.long)
        self.size, self.channels, self.root = size, channels, Path(root)

    def files(self) -> tuple[Path, list[str]]:
        return self.root, [os.path.relpath(p, self.root) for p in self.paths]

    def _digest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.size, self.channels)).encode())
        for rel in self.files()[1]:
            h.update(rel.encode() + b"\0")
        h.update(self.targets.numpy().tobytes())
        return h.hexdigest()

    def load_one(self, i: int) -> torch.Tensor:
        try:
            with Image.open(self.paths[i]) as im:
                im = im.convert("L" if self.channels == 1 else "RGB")
                im = TF.center_crop(TF.resize(im, min(self.size)), list(self.size))
                return TF.pil_to_tensor(im)
        except OSError as e:
            raise DataError(f"cannot read image {self.paths[i]}: {e}") from None

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.load_one(int(i)) for i in indices])


def _labeled_folder(path: Path, classes: list[str] | None, what: str, howto: str,
                    notes: list[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """(file, class index) of ``path``/<class>/... and the class names found; with ``classes`` the folder
    names must be exactly them (a test set without a class cannot measure it)."""
    if not path.is_dir():
        raise DataError(f"{what} '{path}' does not exist or is not a folder; {howto}")
    found = walk_images(path)
    folders = sorted(found.folders)
    for f in found.files:  # an image right under the folder belongs to no class
        if "/" not in found.rel(f):
            found.skipped[LOOSE].append(found.rel(f))
    found.files = [f for f in found.files if "/" in found.rel(f)]
    if classes is not None:
        unknown = [f for f in folders if f not in classes]
        if unknown:
            raise DataError(f"{what} '{path}' has the folder '{one_line(unknown[0])}', which is not one of the classes "
                            f"({', '.join(classes)}){did_you_mean(unknown[0], classes)}; rename it or fix "
                            "data.classes")
        absent = [c for c in classes if c not in folders]
        if absent:
            raise DataError(f"{what} '{path}' has no folder for the class '{absent[0]}'" +
                            (f" (nor {len(absent) - 1} more)" if len(absent) > 1 else "") +
                            f"; add one folder of images per class ({', '.join(classes)})")
    per_class: dict[str, list[str]] = {c: [] for c in folders}
    for f in found.files:
        per_class[found.rel(f).split("/", 1)[0]].append(f)
    empty = [c for c, got in per_class.items() if not got]
    if empty:
        raise DataError(f"{what} '{path}': the class folder '{one_line(empty[0])}' holds no images; add its images or "
                        "remove the folder")
    if not found.files:
        raise DataError(f"{what} '{path}' holds no images in class subfolders; {howto}")
    note = found.note(what)
    if note:
        notes.append(note)
    order = classes if classes is not None else folders
    return [(f, order.index(c)) for c in folders for f in per_class[c]], folders


@DATASETS.register("imagefolder")
def imagefolder(cfg) -> ImageDataset:
    """A folder of images. With ``data.classes`` every image under ``data.root`` (flat, or nested in
    folders with no class meaning) is the unlabeled pool, and ``data.test_root`` (class subfolders) an
    optional test set. Without it, ``train/<class>/*`` is the pool (labels known: simulations) and
    ``test/<class>/*`` (or ``val/``) the test set. What a walk leaves out is in the data set's notes."""
    size, channels = (cfg.image_size, cfg.image_size), cfg.channels
    notes: list[str] = []
    if cfg.classes is not None:
        howto = "point data.root at the folder of images to label"
        root = _root(cfg, None, howto)
        classes = list(cfg.classes)
        test_root = Path(os.path.expanduser(cfg.test_root)) if cfg.test_root is not None else None
        found = walk_images(root, skip=test_root)
        if not found.files:
            raise DataError(f"data.root '{root}' holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
                            + (f" ({found.note('it')})" if found.note("it") else "") + f"; {howto}")
        if found.note("data.root"):
            notes.append(found.note("data.root"))
        train = FolderSplit([(p, -1) for p in found.files], size, channels, root)
        test_samples = [] if test_root is None else _labeled_folder(
            test_root, classes, "data.test_root", "give a folder with one subfolder of images per class", notes)[0]
        test = FolderSplit(test_samples, size, channels, test_root or root)
        return ImageDataset("imagefolder", train, test, classes, channels=channels, image_size=size,
                            mean=(0.5,) * channels, std=(0.25,) * channels, hflip=False, notes=notes)
    howto = ("point data.root at a folder holding train/<class>/<images> and test/<class>/<images>, or give "
             "data.classes to label a folder of unlabeled images")
    root = _root(cfg, None, howto)
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DataError(f"{root} needs the subfolders train/ and test/ (or val/), or data.classes (the class "
                        "names) when it is a folder of unlabeled images")
    train_samples, classes = _labeled_folder(root / "train", None, "data.root", howto, notes)
    test_samples, test_classes = _labeled_folder(test_dir, None, "data.root", howto, notes)
    if classes != test_classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise DataError(f"{root}: train/ and {test_dir.name}/ have different class folders (only in train/: "
                        f"{', '.join(only_train) or '-'}; only in {test_dir.name}/: {', '.join(only_test) or '-'}); "
                        "make them match")
    return ImageDataset("imagefolder", FolderSplit(train_samples, size, channels, root),  # paths name data.root/...
                        FolderSplit(test_samples, size, channels, root),
                        classes, channels=channels, image_size=size,
                        mean=(0.5,) * channels, std=(0.25,) * channels, hflip=False, notes=notes)
