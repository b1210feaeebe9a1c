"""Bad inputs and faults, through the real command line: every case must end with exit status 2, one
line ``ssal: error: ...`` that names the culprit (the key, the file, the value), no traceback, and
not one byte changed on disk (the output, cache and data folders, and any run directory involved).

Each case is a function of a fresh :class:`Env` (a tmp folder, the current folder inside it, a cache
folder inside it) that prepares what it needs and returns a :class:`Case`: the argv of
``ssal.cli.main``, the fragments its error line must contain, fragments it must not contain (a
message about the wrong thing), and whether it runs in-process or through the ``ssal`` console script.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_fashion_like, tiny_recipe_dict, write_idx
from PIL import Image

from ssal.cli import main
from ssal.files import seal

SSAL = str(Path(sys.executable).with_name("ssal"))
PREFIX = "ssal: error: "


def rx(pattern: str) -> re.Pattern:
    """A fragment given as a regular expression, matched with the tmp paths masked (their digits do
    not count): for numbers, which a path could contain by chance."""
    return re.compile(pattern)


# ----------------------------------------------------------------------------- helpers

def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every folder and file under ``roots`` (the roots included): path -> ("dir",) or (size, sha256).
    A root that does not exist contributes nothing, so creating it shows up as a difference."""
    out: dict[str, tuple] = {}
    for root in roots:
        root = Path(root)
        if not root.exists() and not root.is_symlink():
            continue
        for p in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
            if p.is_dir() and not p.is_symlink():
                out[str(p)] = ("dir",)
            elif p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            else:
                data = p.read_bytes()
                out[str(p)] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def diff(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added {added}, removed {removed}, changed {changed}"


@dataclass
class Case:
    argv: list[str]
    fragments: tuple[str | re.Pattern, ...] = ()  # each must be in the error line
    forbidden: tuple[str, ...] = ()  # none may be in it (the message would be about the wrong thing)
    process: bool = False  # through the `ssal` console script in a subprocess
    usage: bool = False  # an argparse error: main raises SystemExit(2) instead of returning 2
    roots: tuple[Path, ...] = ()  # more folders to snapshot (beyond the case's tmp folder)
    absent: tuple[Path, ...] = ()  # must not exist afterwards


class Env:
    """A case's world: ``tmp`` (snapshotted whole), the current folder ``cwd`` and ``cache`` inside it."""

    def __init__(self, tmp: Path, monkeypatch, finished: Path, fmnist: Path):
        self.tmp, self.monkeypatch, self.finished_base, self.fmnist_src = tmp, monkeypatch, finished, fmnist
        self.cwd = tmp / "cwd"
        self.cwd.mkdir()
        monkeypatch.chdir(self.cwd)
        self.cache = tmp / "cache"
        self.out = tmp / "runs" / "tiny"
        self.fds: list[int] = []

    # -- recipes
    def recipe(self, name: str = "tiny", out: Path | str | None = None, text: str | None = None,
               **sections) -> Path:
        """A tiny recipe YAML in tmp (cache_dir in tmp); ``text`` replaces it verbatim."""
        path = self.tmp / f"{name}.yaml"
        if text is None:
            data = tiny_recipe_dict(Path(out) if out is not None else self.out, **sections)
            data["output_dir"] = str(out) if out is not None else str(self.out)
            data.setdefault("cache_dir", str(self.cache))
            text = yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)
        return path

    def run(self, *args: str, **sections) -> list[str]:
        return ["run", str(self.recipe(**sections)), *args, "--no-progress"]

    # -- files and folders
    def file(self, name: str = "afile", content: bytes = b"someone's notes\n") -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def folder_with_files(self, name: str = "theirs") -> Path:
        folder = self.tmp / name
        (folder / "thesis").mkdir(parents=True)
        (folder / "notes.txt").write_text("do not delete\n")
        (folder / "thesis" / "chapter1.tex").write_text("\\section{Intro}\n")
        return folder

    def run_copy(self, name: str = "run") -> Path:
        """A copy of the module's finished run (3 committed rounds) to damage."""
        dst = self.tmp / name
        shutil.copytree(self.finished_base / "run", dst)
        return dst

    def human_copy(self, name: str = "hrun") -> Path:
        """A copy of the module's human run (digits), stopped at its first batch of 20 queries."""
        dst = self.tmp / name
        shutil.copytree(self.finished_base / "human", dst)
        return dst

    def answers(self, run: Path, label: str | None = None, **rows: str) -> Path:
        """A CSV answering the open first batch of ``run`` by index: every query ``label`` (default: its
        true digit), and ``rows`` {index text: label} appended as they are."""
        queried = json.loads((run / "rounds" / "initial" / "selected.json").read_text())["indices"]
        targets = _digits_pool_targets() if label is None else None
        lines = ["index,label"] + [f"{i},{label if label is not None else targets[i]}" for i in queried]
        lines += [f"{k},{v}" for k, v in rows.items()]
        return self.file("answers.csv", ("\n".join(lines) + "\n").encode())

    def flat_images(self, n: int = 12, name: str = "photos") -> Path:
        """A flat folder of ``n`` 8x8 PNGs (an unlabeled pool)."""
        root = self.tmp / name
        root.mkdir(parents=True)
        rng = np.random.default_rng(1)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"i{i:02d}.png")
        return root

    def fmnist(self) -> Path:
        dst = self.tmp / "fmnist"
        shutil.copytree(self.fmnist_src, dst)
        return dst

    def fmnist_args(self, root: Path | str) -> list[str]:
        return ["data.dataset=fashion_mnist", f"data.root={root}", "data.pool_size=100", "data.test_size=50"]

    def images(self, train: int = 25, test: int = 5) -> Path:
        """An ImageFolder: images/{train,test}/{cat,dog}/NNN.png, 8x8 RGB."""
        root = self.tmp / "images"
        rng = np.random.default_rng(0)
        for split, n in (("train", train), ("test", test)):
            for cls in ("cat", "dog"):
                d = root / split / cls
                d.mkdir(parents=True)
                for i in range(n):
                    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
        return root

    def images_args(self, root: Path) -> list[str]:
        return ["data.dataset=imagefolder", f"data.root={root}", "data.image_size=8", "data.pool_size=null",
                "data.test_size=null", "active.strategy=random", "active.subset=null"]

    # -- comparisons
    def base(self) -> Path:
        recipe = tiny_recipe_dict(self.tmp / "unused", cache_dir=str(self.cache), train={"steps": 4},
                                  active={"rounds": 2, "strategy": "random"})
        recipe.pop("output_dir")
        path = self.tmp / "base.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    def spec(self, grid: dict | None = None, text: str | None = None, **extra) -> Path:
        self.base()
        path = self.tmp / "spec.yaml"
        if text is None:
            data = {"recipe": "base.yaml", "output_dir": str(self.tmp / "cmp"),
                    "grid": grid if grid is not None else {"active.strategy": ["random", "entropy"]}, **extra}
            text = yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)
        return path

    # -- locks
    def hold_lock(self, run_dir: Path) -> None:
        """Hold the run's lock as another ssal process would (flock on .lock, naming a holder)."""
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": 4242, "host": "labhost", "since": "2024-01-01T00:00:00",
                                  "command": "ssal run other.yaml"}).encode(), 0)
        self.fds.append(fd)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


CASES: dict[str, Callable[[Env], Case]] = {}


def case(name: str):
    def register(fn: Callable[[Env], Case]) -> Callable[[Env], Case]:
        assert name not in CASES, name
        CASES[name] = fn
        return fn

    return register


def _edit(path: Path, pattern: str, repl: str) -> None:
    text = path.read_text()
    new, n = re.subn(pattern, repl, text, count=1, flags=re.M)
    assert n == 1, f"{pattern!r} not in {path}"
    path.write_text(new)


def _metrics_line(run: Path, i: int, content: bytes) -> None:
    lines = (run / "metrics.jsonl").read_bytes().split(b"\n")
    assert len(lines) == 4 and lines[-1] == b""  # 3 committed rounds
    lines[i] = content
    (run / "metrics.jsonl").write_bytes(b"\n".join(lines))


def _png_bytes(side: int = 64) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# ============================================================================= output_dir, --force, cache_dir

@case("force-output-dir-holds-someones-files")
def _(env: Env) -> Case:
    theirs = env.folder_with_files()
    return Case(env.run("--force", out=theirs), (f"'{theirs}'", "other files", "not an ssal run"), roots=(theirs,))


@case("force-output-dir-dot-cwd-not-a-run")
def _(env: Env) -> Case:
    (env.cwd / "my_notes.txt").write_text("mine\n")
    return Case(env.run("--force", out="."), ("output_dir '.'", "other files", "my_notes.txt"), roots=(env.cwd,))


@case("force-while-cwd-inside-the-run-replaced")
def _(env: Env) -> Case:
    run = env.run_copy()
    env.monkeypatch.chdir(run / "rounds")
    return Case(env.run("--force", out=run), (f"'{run}'", "current folder", "--force"), roots=(run,))


@case("force-output-dir-dot-is-the-run-cwd")
def _(env: Env) -> Case:
    run = env.run_copy()
    env.monkeypatch.chdir(run)
    return Case(env.run("--force", out="."), ("output_dir '.'", "current folder"), roots=(run,))


@case("existing-run-no-force-refused-before-data-loads")
def _(env: Env) -> Case:
    run = env.run_copy()
    missing = env.tmp / "no_such_data"
    return Case(env.run(*env.fmnist_args(missing), out=run),
                (f"'{run}'", "already holds a run", "--resume", "--force"),
                forbidden=("data.root", "no_such_data"), roots=(run,))


@case("existing-run-no-force-relative-output-dir")
def _(env: Env) -> Case:
    run = env.run_copy()
    env.monkeypatch.chdir(env.tmp)
    return Case(env.run(out="run"), ("output_dir 'run'", "already holds a run", "--resume run"), roots=(run,))


@case("force-on-a-run-in-use")
def _(env: Env) -> Case:
    run = env.run_copy()
    env.hold_lock(run)
    return Case(env.run("--force", out=run), (str(run), "in use", "pid 4242", "labhost"), roots=(run,))


@case("output-dir-under-a-file")
def _(env: Env) -> Case:
    blocker = env.file("blocker")
    return Case(env.run(out=blocker / "run"), ("output_dir", str(blocker / "run"), f"'{blocker}' is a file"))


@case("output-dir-is-a-file")
def _(env: Env) -> Case:
    target = env.file("results.txt")
    return Case(env.run(out=target), ("output_dir", f"'{target}'", "is a file"))


@case("cache-dir-under-a-file-simclr")
def _(env: Env) -> Case:
    blocker = env.file("cachefile")
    return Case(env.run("pretrain.method=simclr", "pretrain.epochs=1", f"cache_dir={blocker / 'cache'}"),
                ("cache_dir", str(blocker / "cache"), f"'{blocker}' is a file"), absent=(env.out,))


@case("cache-dir-is-a-file-byol")
def _(env: Env) -> Case:
    blocker = env.file("cache_is_file")
    return Case(env.run("pretrain.method=byol", "pretrain.epochs=1", f"cache_dir={blocker}"),
                ("cache_dir", f"'{blocker}'", "is a file"), absent=(env.out,))


# ============================================================================= seeds

@case("seed-huge")
def _(env: Env) -> Case:
    return Case(env.run("seed=99999999999999999999999"), ("seed", "99999999999999999999999"),
                forbidden=("pretrain.seed",))


@case("pretrain-seed-negative")
def _(env: Env) -> Case:
    return Case(env.run("pretrain.seed=-5"), ("pretrain.seed", rx(r"(?<![\w-])-5\b")))


@case("seed-negative")
def _(env: Env) -> Case:
    return Case(env.run("seed=-1"), ("seed", rx(r"(?<![\w-])-1\b")))


@case("pretrain-seed-huge")
def _(env: Env) -> Case:
    return Case(env.run("pretrain.seed=99999999999999999999999"), ("pretrain.seed", "99999999999999999999999"))


@case("seed-2-to-the-64")
def _(env: Env) -> Case:
    return Case(env.run(f"seed={2**64}"), ("seed", str(2**64)))


# ============================================================================= labels in the data files

@case("fmnist-train-label-12")
def _(env: Env) -> Case:
    root = env.fmnist()
    _, labels = make_fashion_like(200, 0)
    labels[5] = 12
    write_idx(root / "train-labels-idx1-ubyte", labels)
    return Case(env.run(*env.fmnist_args(root)), ("train split", "label 12", "index 5", "label file"),
                absent=(env.out, env.cache))


@case("fmnist-test-label-12")
def _(env: Env) -> Case:
    root = env.fmnist()
    _, labels = make_fashion_like(100, 1)
    labels[7] = 12
    write_idx(root / "t10k-labels-idx1-ubyte", labels)
    return Case(env.run(*env.fmnist_args(root)), ("test split", "label 12", "index 7", "label file"),
                absent=(env.out, env.cache))


@case("fmnist-fewer-labels-than-images")
def _(env: Env) -> Case:
    root = env.fmnist()
    _, labels = make_fashion_like(200, 0)
    write_idx(root / "train-labels-idx1-ubyte", labels[:199])
    return Case(env.run(*env.fmnist_args(root)), (rx(r"\b200\b"), rx(r"\b199\b"), "train-labels-idx1-ubyte"),
                absent=(env.out, env.cache))


@case("fmnist-label-file-garbage")
def _(env: Env) -> Case:
    root = env.fmnist()
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage, not gzip at all")
    return Case(env.run(*env.fmnist_args(root)), ("t10k-labels-idx1-ubyte.gz", "not a valid idx file"),
                absent=(env.out, env.cache))


@case("fmnist-label-file-missing")
def _(env: Env) -> Case:
    root = env.fmnist()
    (root / "train-labels-idx1-ubyte.gz").unlink()
    return Case(env.run(*env.fmnist_args(root)), ("train-labels-idx1-ubyte", "not found", str(root)),
                absent=(env.out, env.cache))


@case("fmnist-data-root-is-a-file")
def _(env: Env) -> Case:
    f = env.file("fmnist.tar")
    return Case(env.run(*env.fmnist_args(f)), ("data.root", str(f)), absent=(env.out, env.cache))


@case("fmnist-budget-beyond-the-pool")
def _(env: Env) -> Case:
    root = env.fmnist()
    return Case(env.run(*env.fmnist_args(root), "data.pool_size=null", "active.budget=100", "active.subset=null"),
                (rx(r"\b220\b"), rx(r"\b200\b"), "active.budget"), absent=(env.out, env.cache))


# ============================================================================= non-finite numbers

@case("train-lr-inf")
def _(env: Env) -> Case:
    return Case(env.run("train.lr=.inf"), ("train.lr", "finite", "inf"))


@case("train-lr-nan")
def _(env: Env) -> Case:
    return Case(env.run("train.lr=nan"), ("train.lr", "finite", "nan"))


@case("train-lr-minus-inf")
def _(env: Env) -> Case:
    return Case(env.run("train.lr=-.inf"), ("train.lr", "-inf"))


@case("pretrain-lr-inf")
def _(env: Env) -> Case:
    return Case(env.run("pretrain.lr=.inf", "pretrain.method=simclr"), ("pretrain.lr", "finite", "inf"))


@case("fixmatch-threshold-nan")
def _(env: Env) -> Case:
    return Case(env.run("train.method=fixmatch", "train.fixmatch.threshold=.nan"),
                ("train.fixmatch.threshold", "nan"))


@case("model-drop-rate-inf")
def _(env: Env) -> Case:
    return Case(env.run("model.drop_rate=.inf"), ("model.drop_rate", "inf"))


@case("train-weight-decay-nan-in-recipe-file")
def _(env: Env) -> Case:
    return Case(env.run(train={"weight_decay": float("nan")}), ("train.weight_decay", "nan"))


# ============================================================================= image folders

@case("imagefolder-garbage-png")
def _(env: Env) -> Case:
    root = env.images()
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not image data" * 8)
    return Case(env.run(*env.images_args(root)), ("broken.png", "cannot be decoded"),
                absent=(env.out, env.cache))


@case("imagefolder-truncated-png")
def _(env: Env) -> Case:
    root = env.images()
    png = _png_bytes()
    (root / "train" / "cat" / "half.png").write_bytes(png[: len(png) // 2])
    return Case(env.run(*env.images_args(root)), ("half.png", "cannot be decoded"),
                absent=(env.out, env.cache))


@case("imagefolder-corrupt-test-image-subprocess")
def _(env: Env) -> Case:
    root = env.images()
    (root / "test" / "cat" / "zero.png").write_bytes(b"")
    return Case(env.run(*env.images_args(root)), ("zero.png", "cannot be decoded"), process=True,
                absent=(env.out, env.cache))


@case("imagefolder-no-test-split")
def _(env: Env) -> Case:
    root = env.images()
    shutil.rmtree(root / "test")
    return Case(env.run(*env.images_args(root)), (str(root), "test/"), absent=(env.out, env.cache))


@case("imagefolder-class-folders-differ")
def _(env: Env) -> Case:
    root = env.images()
    (root / "test" / "dog").rename(root / "test" / "horse")
    # which data set: the message must name the folder (data.root), not only "train/ and test/"
    return Case(env.run(*env.images_args(root)), (str(root), "train/", "test/", "class folders"),
                absent=(env.out, env.cache))


# ============================================================================= duplicate keys

@case("recipe-section-twice")
def _(env: Env) -> Case:
    text = (f"output_dir: {env.out}\ncache_dir: {env.cache}\n"  # lines 1-2
            "data: {dataset: digits, pool_size: 400, test_size: 200}\n"  # 3
            "train:\n  steps: 20\n  batch_size: 32\n"  # 4-6
            "active: {initial: 20, budget: 10, rounds: 2, strategy: entropy, subset: 200}\n"  # 7
            "train:\n  method: supervised\n")  # 8-9
    return Case(["run", str(env.recipe(text=text)), "--no-progress"], ("'train'", "twice", rx(r"\b4\b.*\b8\b")))


@case("recipe-nested-key-twice")
def _(env: Env) -> Case:
    text = (f"output_dir: {env.out}\ncache_dir: {env.cache}\n"  # 1-2
            "data: {dataset: digits, pool_size: 400, test_size: 200}\n"  # 3
            "train:\n  steps: 20\n  batch_size: 32\n  steps: 200\n"  # 4-7
            "active: {initial: 20, budget: 10, rounds: 2, strategy: entropy, subset: 200}\n")
    return Case(["run", str(env.recipe(text=text)), "--no-progress"], ("train.steps", "twice", rx(r"\b5\b.*\b7\b")))


# ============================================================================= overrides naming the right key

@case("override-section-given-a-value")
def _(env: Env) -> Case:
    return Case(env.run("train=5"), ("train", "5"), forbidden=("must be a mapping",))


@case("override-empty-part-in-key")
def _(env: Env) -> Case:
    return Case(env.run("train..steps=5"), ("train..steps",))


@case("override-key-starts-with-dot")
def _(env: Env) -> Case:
    return Case(env.run(".steps=5"), (".steps",))


@case("override-without-equals-among-valid")
def _(env: Env) -> Case:
    return Case(env.run("active.strategy", "train.steps=5"), ("'active.strategy'", "key=value"),
                forbidden=("train.steps",))


@case("override-stray-word-after-option")
def _(env: Env) -> Case:
    return Case(["run", str(env.recipe()), "--force", "stray", "train.steps=5"], ("stray",),
                forbidden=("train.steps",), usage=True)


@case("override-empty-value")
def _(env: Env) -> Case:
    return Case(env.run("train.steps="), ("train.steps", "integer"))


@case("override-must-be-set")
def _(env: Env) -> Case:
    return Case(env.run("train.steps=???"), ("train.steps", "must be set"))


@case("override-bad-interpolation")
def _(env: Env) -> Case:
    return Case(env.run("train.lr=${train.nope}"), ("interpolation", "train.nope"))


# ============================================================================= wrong values, every section

@case("train-steps-not-an-int")
def _(env: Env) -> Case:
    return Case(env.run("train.steps=abc"), ("train.steps", "integer", "abc"))


@case("active-budget-fraction")
def _(env: Env) -> Case:
    return Case(env.run("active.budget=1.5"), ("active.budget", "1.5"))


@case("data-pool-size-negative")
def _(env: Env) -> Case:
    return Case(env.run("data.pool_size=-3"), ("data.pool_size", rx(r"(?<![\w-])-3\b")))


@case("train-batch-size-zero")
def _(env: Env) -> Case:
    return Case(env.run("train.batch_size=0"), ("train.batch_size", rx(r"\b0\b")))


@case("active-strategy-typo")
def _(env: Env) -> Case:
    return Case(env.run("active.strategy=marginn"), ("active.strategy", "'marginn'", "'margin'"))


@case("unknown-section")
def _(env: Env) -> Case:
    return Case(env.run("trian.steps=5"), ("trian", "'train'"))


@case("model-backbone-typo")
def _(env: Env) -> Case:
    return Case(env.run("model.backbone=resnet18_cifr"), ("model.backbone", "'resnet18_cifr'", "'resnet18_cifar'"))


@case("train-schedule-typo")
def _(env: Env) -> Case:
    return Case(env.run("train.schedule=cosin"), ("train.schedule", "'cosin'", "'cosine'"))


@case("data-channels-2")
def _(env: Env) -> Case:
    return Case(env.run("data.channels=2"), ("data.channels", rx(r"\b2\b")))


@case("active-subset-below-budget")
def _(env: Env) -> Case:
    return Case(env.run("active.subset=5"), ("active.subset", "active.budget", rx(r"\b5\b"), rx(r"\b10\b")))


@case("pretrain-view-size-4")
def _(env: Env) -> Case:
    return Case(env.run("pretrain.view_size=4"), ("pretrain.view_size", rx(r"\b4\b")))


@case("train-method-typo")
def _(env: Env) -> Case:
    return Case(env.run("train.method=fixmatchh"), ("train.method", "'fixmatchh'", "'fixmatch'"))


@case("initial-strategy-typo")
def _(env: Env) -> Case:
    return Case(env.run("active.initial_strategy=typiclst"),
                ("active.initial_strategy", "'typiclst'", "'typiclust'"))


@case("train-momentum-one")
def _(env: Env) -> Case:
    return Case(env.run("train.momentum=1"), ("train.momentum", rx(r"\b1(\.0)?\b")))


@case("pretrain-epochs-zero")
def _(env: Env) -> Case:
    return Case(env.run("pretrain.method=simclr", "pretrain.epochs=0"), ("pretrain.epochs", rx(r"\b0\b")))


@case("data-image-size-4")
def _(env: Env) -> Case:
    return Case(env.run("data.image_size=4"), ("data.image_size", rx(r"\b4\b")))


@case("mixed-precision-fp8")
def _(env: Env) -> Case:
    return Case(env.run("train.mixed_precision=fp8"), ("train.mixed_precision", "fp8"))


@case("train-nesterov-not-bool")
def _(env: Env) -> Case:
    return Case(env.run("train.nesterov=maybe"), ("train.nesterov", "maybe"))


@case("fixmatch-mu-zero")
def _(env: Env) -> Case:
    return Case(env.run("train.method=fixmatch", "train.fixmatch.mu=0"), ("train.fixmatch.mu", rx(r"\b0\b")))


@case("active-rounds-negative")
def _(env: Env) -> Case:
    return Case(env.run("active.rounds=-1"), ("active.rounds", rx(r"(?<![\w-])-1\b")))


@case("train-augment-typo")
def _(env: Env) -> Case:
    return Case(env.run("train.augment=strongg"), ("train.augment", "'strongg'", "'strong'"))


@case("byol-momentum-start-above-end")
def _(env: Env) -> Case:
    return Case(env.run("pretrain.method=byol", "pretrain.byol.momentum_start=0.999",
                        "pretrain.byol.momentum_end=0.9"),
                ("pretrain.byol", "momentum_start", rx(r"\b0\.999\b"), rx(r"\b0\.9\b(?!9)")))


@case("data-test-size-zero")
def _(env: Env) -> Case:
    return Case(env.run("data.test_size=0"), ("data.test_size", rx(r"\b0\b")))


@case("active-initial-zero")
def _(env: Env) -> Case:
    return Case(env.run("active.initial=0"), ("active.initial", rx(r"\b0\b")))


@case("tod-strategy-without-ema")
def _(env: Env) -> Case:
    return Case(env.run("active.strategy=tod"), ("active.strategy=tod", "train.ema"))


@case("fixmatch-no-unlabeled-left")
def _(env: Env) -> Case:
    return Case(env.run("train.method=fixmatch", "data.pool_size=40"), ("train.method=fixmatch", rx(r"\b40\b")))


@case("typo-key-in-recipe-file")
def _(env: Env) -> Case:
    return Case(env.run(active={"budjet": 10}), ("active.budjet", "'active.budget'"))


# ============================================================================= recipe files

@case("extends-missing-file")
def _(env: Env) -> Case:
    recipe = env.recipe(extends="parent_missing.yaml")
    return Case(["run", str(recipe), "--no-progress"], ("parent_missing.yaml", "not found"))


@case("extends-cycle")
def _(env: Env) -> Case:
    (env.tmp / "a.yaml").write_text("extends: b.yaml\n")
    (env.tmp / "b.yaml").write_text("extends: a.yaml\n")
    return Case(["run", str(env.tmp / "a.yaml"), "--no-progress"], ("a.yaml", "b.yaml", "cycle"))


@case("recipe-is-a-list")
def _(env: Env) -> Case:
    recipe = env.recipe(text="- seed: 0\n- train: {steps: 5}\n")
    return Case(["run", str(recipe), "--no-progress"], (str(recipe), "mapping", "list"))


@case("recipe-not-utf8")
def _(env: Env) -> Case:
    recipe = env.tmp / "binary.yaml"
    recipe.write_bytes(b"seed: 0\n\xff\xfe\x00\x81 garbage\n")
    return Case(["run", str(recipe), "--no-progress"], (str(recipe), "UTF-8"))


@case("recipe-is-a-folder")
def _(env: Env) -> Case:
    folder = env.tmp / "recipes_dir.yaml"
    folder.mkdir()
    # it exists: "not found" would send the user looking for a typo in the path
    return Case(["run", str(folder), "--no-progress"], (str(folder),), forbidden=("not found",))


# ============================================================================= --resume refusals

@case("resume-recipe-edited-pool-size")
def _(env: Env) -> Case:
    run = env.run_copy()
    _edit(run / "recipe.yaml", r"^  pool_size: 400$", "  pool_size: 300")
    return Case(["run", "--resume", str(run), "--no-progress"],
                ("recipe.yaml", "data.pool_size", rx(r"\b400\b.*\b300\b")), roots=(run,))


@case("resume-recipe-edited-seed")
def _(env: Env) -> Case:
    run = env.run_copy()
    _edit(run / "recipe.yaml", r"^seed: 0$", "seed: 1")
    return Case(["run", "--resume", str(run), "--no-progress"], ("recipe.yaml", "seed", rx(r"\b0\b.*\b1\b")),
                roots=(run,))


@case("resume-recipe-edited-train-steps")
def _(env: Env) -> Case:
    run = env.run_copy()
    _edit(run / "recipe.yaml", r"^  steps: 5$", "  steps: 50")
    return Case(["run", "--resume", str(run), "--no-progress"], ("recipe.yaml", "train.steps", rx(r"\b5\b.*\b50\b")),
                roots=(run,))


@case("resume-recipe-truncated-mid-yaml")
def _(env: Env) -> Case:
    run = env.run_copy()
    text = (run / "recipe.yaml").read_text()
    cut = text[: text.index("\n  steps: 5\n") + len("\n  ste")]  # inside a key of the train section
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(cut)
    (run / "recipe.yaml").write_text(cut)
    return Case(["run", "--resume", str(run), "--no-progress"], (str(run / "recipe.yaml"), "not valid YAML"),
                roots=(run,))


@case("resume-recipe-binary-garbage")
def _(env: Env) -> Case:
    run = env.run_copy()
    (run / "recipe.yaml").write_bytes(bytes(range(256)) * 4)
    return Case(["run", "--resume", str(run), "--no-progress"], (str(run / "recipe.yaml"), "UTF-8"), roots=(run,))


@case("resume-recipe-unknown-key-added")
def _(env: Env) -> Case:
    run = env.run_copy()
    with open(run / "recipe.yaml", "a") as f:
        f.write("trian:\n  steps: 5\n")
    return Case(["run", "--resume", str(run), "--no-progress"], (str(run / "recipe.yaml"), "trian"), roots=(run,))


@case("resume-run-json-deleted")
def _(env: Env) -> Case:
    run = env.run_copy()
    (run / "run.json").unlink()
    return Case(["run", "--resume", str(run), "--no-progress"], (str(run), "run.json"), roots=(run,))


@case("resume-run-json-altered")
def _(env: Env) -> Case:
    run = env.run_copy()
    identity = json.loads((run / "run.json").read_text())
    identity["recipe"]["train"]["steps"] = 6  # the checksum no longer matches
    (run / "run.json").write_text(json.dumps(identity))
    return Case(["run", "--resume", str(run), "--no-progress"], (str(run / "run.json"), "checksum"), roots=(run,))


@case("resume-run-json-garbage")
def _(env: Env) -> Case:
    run = env.run_copy()
    (run / "run.json").write_text('{"format": 1, "recipe": {"seed": 0, tru')
    return Case(["run", "--resume", str(run), "--no-progress"], (str(run / "run.json"), "not valid JSON"),
                roots=(run,))


@case("resume-run-json-binary-garbage")
def _(env: Env) -> Case:
    run = env.run_copy()
    (run / "run.json").write_bytes(b"\x00\xff" * 100)
    return Case(["run", "--resume", str(run), "--no-progress"], (str(run / "run.json"), "not text"), roots=(run,))


@case("resume-metrics-garbage-middle-line")
def _(env: Env) -> Case:
    run = env.run_copy()
    _metrics_line(run, 1, b'{"round": 1, "n_labeled": 30, "test_a')
    return Case(["run", "--resume", str(run), "--no-progress"], (str(run / "metrics.jsonl"), "line 2"),
                roots=(run,))


@case("resume-metrics-non-utf8-middle-line")
def _(env: Env) -> Case:
    run = env.run_copy()
    _metrics_line(run, 1, b"\xff\xfe\x80\x81 not text")
    return Case(["run", "--resume", str(run), "--no-progress"], (str(run / "metrics.jsonl"), "line 2"),
                roots=(run,))


@case("resume-metrics-line-2-says-round-5")
def _(env: Env) -> Case:
    run = env.run_copy()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["round"] = 5
    _metrics_line(run, 1, json.dumps(row).encode())
    return Case(["run", "--resume", str(run), "--no-progress"], (str(run / "metrics.jsonl"), "line 2", "round 5"),
                roots=(run,))


@case("resume-fewer-rounds")
def _(env: Env) -> Case:
    run = env.run_copy()
    return Case(["run", "--resume", str(run), "active.rounds=1", "--no-progress"],
                ("active.rounds", rx(r"\b2\b.*\b1\b"), "only grow"), roots=(run,))


@case("resume-unsafe-key-train-lr")
def _(env: Env) -> Case:
    run = env.run_copy()
    return Case(["run", "--resume", str(run), "train.lr=0.5", "--no-progress"], ("train.lr", "0.03", "0.5"),
                roots=(run,))


@case("resume-unsafe-key-pool-size-override")
def _(env: Env) -> Case:
    run = env.run_copy()
    return Case(["run", "--resume", str(run), "data.pool_size=300", "--no-progress"],
                ("data.pool_size", rx(r"\b400\b.*\b300\b")), roots=(run,))


@case("resume-unknown-key")
def _(env: Env) -> Case:
    run = env.run_copy()
    # the override is wrong, not recipe.yaml: the message must not send the user to edit or delete that file
    return Case(["run", "--resume", str(run), "train.lrr=1", "--no-progress"], ("train.lrr", "'train.lr'"),
                forbidden=("undo the edit", "delete it"), roots=(run,))


@case("resume-with-force")
def _(env: Env) -> Case:
    run = env.run_copy()
    return Case(["run", "--resume", str(run), "--force", "--no-progress"], ("--resume", "--force"), roots=(run,))


@case("resume-not-a-run")
def _(env: Env) -> Case:
    theirs = env.folder_with_files()
    return Case(["run", "--resume", str(theirs), "--no-progress"], (f"'{theirs}'", "not a run directory"),
                roots=(theirs,))


@case("resume-missing-folder")
def _(env: Env) -> Case:
    missing = env.tmp / "gone"
    return Case(["run", "--resume", str(missing), "--no-progress"], (f"'{missing}'", "does not exist"))


@case("resume-a-file")
def _(env: Env) -> Case:
    f = env.file("run.tar")
    return Case(["run", "--resume", str(f), "--no-progress"], (f"'{f}'", "is a file"))


@case("resume-pool-and-selection-deleted")
def _(env: Env) -> Case:
    run = env.run_copy()
    (run / "pool.json").unlink()
    (run / "rounds" / "r00" / "selected.json").unlink()
    return Case(["run", "--resume", str(run), "--no-progress"], (str(run / "pool.json"), "missing", "rounds"),
                roots=(run,))


@case("resume-run-in-use")
def _(env: Env) -> Case:
    run = env.run_copy()
    env.hold_lock(run)
    return Case(["run", "--resume", str(run), "--no-progress"], (str(run), "in use", "pid 4242"), roots=(run,))


# ============================================================================= ssal report

def _report(env: Env, *paths: Path) -> list[str]:
    return ["report", *map(str, paths), "--out", str(env.tmp / "rep")]


@case("report-metrics-garbage-middle-line")
def _(env: Env) -> Case:
    run = env.run_copy()
    _metrics_line(run, 1, b"}}}garbage{{{")
    return Case(_report(env, run), (str(run / "metrics.jsonl"), "line 2"), roots=(run,), absent=(env.tmp / "rep",))


@case("report-cell-json-garbage")
def _(env: Env) -> Case:
    run = env.run_copy()
    (run / "cell.json").write_text('{"method": "sup", "strat')
    return Case(_report(env, run), (str(run / "cell.json"), "not valid JSON"), roots=(run,),
                absent=(env.tmp / "rep",))


@case("report-cell-json-lacks-keys")
def _(env: Env) -> Case:
    run = env.run_copy()
    (run / "cell.json").write_text(json.dumps(seal({"method": "sup"})))  # sealed, but not what compare writes
    return Case(_report(env, run), (str(run / "cell.json"), "strategy", "seed"), roots=(run,),
                absent=(env.tmp / "rep",))


@case("report-run-json-altered")
def _(env: Env) -> Case:
    run = env.run_copy()
    data = json.loads((run / "run.json").read_text())
    data["recipe"]["seed"] = 7
    (run / "run.json").write_text(json.dumps(data))
    return Case(_report(env, run), (str(run / "run.json"), "checksum mismatch"), roots=(run,),
                absent=(env.tmp / "rep",))


@case("report-recipe-yaml-garbage")
def _(env: Env) -> Case:
    run = env.run_copy()
    (run / "run.json").unlink()  # a run of an older ssal: its labels come from recipe.yaml
    (run / "recipe.yaml").write_text("train: {method: [supervised\nseed: 0\n")
    return Case(_report(env, run), (str(run / "recipe.yaml"), "not valid YAML"), roots=(run,),
                absent=(env.tmp / "rep",))


@case("report-recipe-yaml-garbage-subprocess")
def _(env: Env) -> Case:
    run = env.run_copy()
    (run / "run.json").unlink()
    (run / "recipe.yaml").write_bytes(b"\x00\x01\x02\xff" * 64)
    return Case(_report(env, run), (str(run / "recipe.yaml"),), process=True, roots=(run,),
                absent=(env.tmp / "rep",))


@case("report-neither-run-nor-comparison")
def _(env: Env) -> Case:
    theirs = env.folder_with_files()
    return Case(_report(env, theirs), (f"'{theirs}'", "metrics.jsonl", "cells/"), roots=(theirs,),
                absent=(env.tmp / "rep",))


@case("report-path-is-a-file")
def _(env: Env) -> Case:
    f = env.file("metrics.csv")
    return Case(_report(env, f), (f"'{f}'", "is a file, not a folder"), absent=(env.tmp / "rep",))


@case("report-missing-path")
def _(env: Env) -> Case:
    missing = env.tmp / "no_such_run"
    return Case(_report(env, missing), (f"'{missing}'", "does not exist"), absent=(env.tmp / "rep",))


@case("report-out-is-a-file")
def _(env: Env) -> Case:
    run = env.run_copy()
    out = env.file("report.txt")
    return Case(["report", str(run), "--out", str(out)], ("--out", f"'{out}'", "is a file"), roots=(run,))


@case("report-out-under-a-file")
def _(env: Env) -> Case:
    run = env.run_copy()
    blocker = env.file("blocker")
    return Case(["report", str(run), "--out", str(blocker / "rep")], ("--out", f"'{blocker}' is a file"),
                roots=(run,))


@case("report-second-of-two-runs-damaged")
def _(env: Env) -> Case:
    good, bad = env.run_copy("good"), env.run_copy("bad")
    _metrics_line(bad, 2, b'{"round": 2, "n_labeled": 40, "test_acc": 7.5}')
    return Case(_report(env, good, bad), (str(bad / "metrics.jsonl"), "line 3", "test_acc"),
                forbidden=(str(good),), roots=(good, bad), absent=(env.tmp / "rep",))


# ============================================================================= ssal compare

def _compare(env: Env, spec: Path | str, *args: str) -> list[str]:
    return ["compare", str(spec), *args, "--no-progress"]


@case("compare-spec-missing")
def _(env: Env) -> Case:
    env.base()
    missing = env.tmp / "nospec.yaml"
    return Case(_compare(env, missing), (str(missing), "not found"), absent=(env.tmp / "cmp",))


@case("compare-spec-is-a-list")
def _(env: Env) -> Case:
    spec = env.spec(text="- recipe: base.yaml\n- grid: {seed: [0]}\n")
    return Case(_compare(env, spec), (str(spec), "mapping"), absent=(env.tmp / "cmp",))


@case("compare-spec-not-yaml")
def _(env: Env) -> Case:
    spec = env.spec(text="recipe: base.yaml\ngrid: {seed: [0, 1\n")
    return Case(_compare(env, spec), (str(spec), "not valid YAML"), absent=(env.tmp / "cmp",))


@case("compare-spec-duplicate-keys")
def _(env: Env) -> Case:
    spec = env.spec(text=f"recipe: base.yaml\noutput_dir: {env.tmp / 'cmp'}\ngrid:\n  seed: [0]\n"
                         "grid:\n  active.strategy: [random]\n")
    return Case(_compare(env, spec), (str(spec), "'grid'", "twice", rx(r"\b3\b.*\b5\b")), absent=(env.tmp / "cmp",))


@case("compare-spec-unknown-top-level-key")
def _(env: Env) -> Case:
    spec = env.spec(gird={"seed": [0, 1]})
    return Case(_compare(env, spec), (str(spec), "'gird'"), absent=(env.tmp / "cmp",))


@case("compare-grid-axis-empty")
def _(env: Env) -> Case:
    spec = env.spec({"method": {}, "seed": [0]})
    return Case(_compare(env, spec), (str(spec), "'method'", "empty"), absent=(env.tmp / "cmp",))


@case("compare-cell-recipe-typo-key")
def _(env: Env) -> Case:
    spec = env.spec({"method": {"sup": {"train.stepz": 5}}, "seed": [0]})
    return Case(_compare(env, spec), (str(spec), "train.stepz", "'train.steps'"), absent=(env.tmp / "cmp",))


@case("compare-recipe-points-to-missing-file")
def _(env: Env) -> Case:
    spec = env.spec(text=yaml.safe_dump({"recipe": "missing_base.yaml", "output_dir": str(env.tmp / "cmp"),
                                         "grid": {"seed": [0, 1]}}))
    return Case(_compare(env, spec), ("missing_base.yaml", "not found"), absent=(env.tmp / "cmp",))


@case("compare-jobs-zero")
def _(env: Env) -> Case:
    return Case(_compare(env, env.spec(), "--jobs", "0"), ("--jobs", rx(r"\b0\b")), absent=(env.tmp / "cmp",))


@case("compare-cells-match-nothing")
def _(env: Env) -> Case:
    return Case(_compare(env, env.spec(), "--cells", "fixmatch__*"), ("--cells", "fixmatch__*", "matches none"),
                absent=(env.tmp / "cmp",))


@case("compare-output-dir-under-a-file")
def _(env: Env) -> Case:
    blocker = env.file("blocker")
    spec = env.spec(output_dir=str(blocker / "cmp"))
    return Case(_compare(env, spec), ("output_dir", str(blocker / "cmp"), f"'{blocker}' is a file"))


@case("compare-out-under-a-file")
def _(env: Env) -> Case:
    blocker = env.file("blocker")
    return Case(_compare(env, env.spec(), "--out", str(blocker / "cmp")), (str(blocker / "cmp"), "is a file"),
                absent=(env.tmp / "cmp",))


@case("compare-cell-with-bad-value-override")
def _(env: Env) -> Case:
    return Case(_compare(env, env.spec(), "train.lr=.inf"), ("train.lr", "finite"), absent=(env.tmp / "cmp",))


@case("compare-cell-dir-holds-other-files")
def _(env: Env) -> Case:
    cell = env.tmp / "cmp" / "cells" / "supervised__random__seed0"
    cell.mkdir(parents=True)
    (cell / "notes.txt").write_text("mine\n")
    return Case(_compare(env, env.spec()), (str(cell), "not an ssal run"))


# ============================================================================= ssal pretrain

@case("pretrain-method-none")
def _(env: Env) -> Case:
    return Case(["pretrain", str(env.recipe()), "--no-progress"], ("pretrain.method", "none"),
                absent=(env.cache,))


@case("pretrain-cache-dir-under-a-file")
def _(env: Env) -> Case:
    blocker = env.file("blocker")
    return Case(["pretrain", str(env.recipe()), "pretrain.method=simclr", "pretrain.epochs=1",
                 f"cache_dir={blocker / 'cache'}", "--no-progress"],
                ("cache_dir", str(blocker / "cache"), f"'{blocker}' is a file"))


@case("pretrain-unknown-method")
def _(env: Env) -> Case:
    return Case(["pretrain", str(env.recipe()), "pretrain.method=simclrr", "--no-progress"],
                ("pretrain.method", "'simclrr'", "'simclr'"), absent=(env.cache,))


@case("pretrain-missing-data-root")
def _(env: Env) -> Case:
    missing = env.tmp / "no_fmnist"
    return Case(["pretrain", str(env.recipe()), "pretrain.method=simclr", "pretrain.epochs=1",
                 *env.fmnist_args(missing), "--no-progress"], ("data.root", str(missing)), absent=(env.cache,))


@case("pretrain-corrupt-image")
def _(env: Env) -> Case:
    root = env.images()
    (root / "train" / "dog" / "bad.png").write_bytes(b"GIF89a" + b"\x00" * 20)
    return Case(["pretrain", str(env.recipe()), "pretrain.method=simclr", "pretrain.epochs=1",
                 *env.images_args(root), "--no-progress"], ("bad.png", "cannot be decoded"), absent=(env.cache,))


# ============================================================================= hostile inputs (issue 33)

def _digits_pool_targets() -> list[int]:
    """The labels of the tiny recipe's digits pool (400 seeded images), computed as the data set does."""
    from ssal.data import load_dataset
    from ssal.recipe import from_dict

    cfg = from_dict(tiny_recipe_dict(Path("/unused")))
    return load_dataset(cfg.data, seed=cfg.seed).train.targets.tolist()


def _init(env: Env, *args: str) -> list[str]:
    return ["init", str(env.tmp / "proj"), *args]


@case("label-import-json-nested-100000-deep")
def _(env: Env) -> Case:
    run = env.human_copy()
    f = env.file("deep.json", b"[" * 100_000 + b"]" * 100_000)
    return Case(["label", "import", str(run), str(f)], (str(f), "nested too deeply"))


@case("label-import-index-with-an-underscore")
def _(env: Env) -> Case:
    run = env.human_copy()
    queried = json.loads((run / "rounds" / "initial" / "selected.json").read_text())["indices"]
    text = str(queried[0])
    odd = f"{text[0]}_{text[1:]}" if len(text) > 1 else f"0_{text}"  # int() reads it as the queried index
    f = env.file("u.csv", f"index,label\n{odd},3\n".encode())
    return Case(["label", "import", str(run), str(f)], (f"'{odd}'", "not a whole number"))


@case("label-import-index-in-arabic-indic-digits")
def _(env: Env) -> Case:
    run = env.human_copy()
    queried = json.loads((run / "rounds" / "initial" / "selected.json").read_text())["indices"]
    odd = "".join(chr(0x660 + int(d)) for d in str(queried[0]))  # int() takes these digits too
    f = env.file("a.csv", f"index,label\n{odd},3\n".encode())
    return Case(["label", "import", str(run), str(f)], (f"'{odd}'", "not a whole number"))


@case("label-export-out-names-the-xml-config")
def _(env: Env) -> Case:
    run = env.human_copy()
    return Case(["label", "export", str(run), "--out", str(env.tmp / "x.xml")], ("x.xml", ".json"),
                absent=(env.tmp / "x.xml",))


@case("resume-after-every-first-answer-was-skip")
def _(env: Env) -> Case:
    run = env.human_copy()
    assert main(["label", "import", str(run), str(env.answers(run, label="skip"))]) == 0
    return Case(["run", "--resume", str(run), "--no-progress"], ("every answer to the first batch", "skip",
                                                                  "ssal label serve"), absent=(run / "pool.json",))


@case("resume-override-of-the-oracle-names-the-oracle")
def _(env: Env) -> Case:
    run = env.run_copy()
    # together the two make a recipe that fails a check of its own; the line must be about --resume
    return Case(["run", "--resume", str(run), "active.oracle=human", "active.oracle_noise=0.1", "--no-progress"],
                ("active.oracle", "'simulated'", "'human'", "--resume"), forbidden=("set it to 0",))


@case("resume-with-nothing-to-do-records-no-unusable-cache-dir")
def _(env: Env) -> Case:
    run = env.run_copy()
    return Case(["run", "--resume", str(run), "cache_dir=/proc/x", "--no-progress"], ("cache_dir", "/proc"))


@case("name-with-a-path-out-of-runs")
def _(env: Env) -> Case:
    return Case(["run", str(env.recipe()), "name=../../evil", "output_dir=null", "--no-progress"],
                ("name", "../../evil"), absent=(env.tmp / "evil", env.cwd / "runs"))


@case("data-labels-label-the-whole-pool")
def _(env: Env) -> Case:
    root = env.flat_images(12)
    labels = env.file("seed.csv", ("path,label\n" + "".join(f"i{i:02d}.png,{'ab'[i % 2]}\n" for i in range(12)))
                      .encode())
    return Case(["run", str(env.recipe()), "data.dataset=imagefolder", f"data.root={root}", "data.image_size=8",
                 "data.pool_size=null", "data.test_size=null", "data.classes=[a,b]", f"data.labels={labels}",
                 "active.oracle=human", "active.initial=0", "active.rounds=1", "active.budget=1",
                 "active.subset=null", "--no-progress"], ("data.labels", "12 images"), absent=(env.out,))


@case("predict-out-in-a-folder-that-does-not-exist")
def _(env: Env) -> Case:
    run = env.run_copy()
    out = env.tmp / "missing" / "p.csv"
    return Case(["predict", str(run), "--out", str(out), "--no-progress"], (str(out), "does not exist"),
                forbidden=("check the disk",))


@case("predict-batch-size-with-an-underscore")
def _(env: Env) -> Case:
    run = env.run_copy()
    return Case(["predict", str(run), "--out", str(env.tmp / "p.csv"), "--batch-size", "1_6", "--no-progress"],
                ("'1_6'", "whole number"), usage=True, absent=(env.tmp / "p.csv",))


@case("compare-grid-empty")
def _(env: Env) -> Case:
    return Case(_compare(env, env.spec(grid={})), ("grid", "empty"), absent=(env.tmp / "cmp",))


@case("init-labels-file-missing")
def _(env: Env) -> Case:
    root = env.flat_images()
    return Case(_init(env, "--images", str(root), "--classes", "a,b", "--labels", str(env.tmp / "no.csv")),
                (str(env.tmp / "no.csv"), "not found"), absent=(env.tmp / "proj",))


@case("init-test-folder-missing")
def _(env: Env) -> Case:
    root = env.flat_images()
    return Case(_init(env, "--images", str(root), "--classes", "a,b", "--test", str(env.tmp / "held_out")),
                (str(env.tmp / "held_out"), "does not exist"), absent=(env.tmp / "proj",))


@case("init-test-folder-with-a-class-too-many")
def _(env: Env) -> Case:
    root, test = env.flat_images(), env.flat_images(2, "held_out/a")
    shutil.copytree(test, env.tmp / "held_out" / "b")
    shutil.copytree(test, env.tmp / "held_out" / "c")
    return Case(_init(env, "--images", str(root), "--classes", "a,b", "--test", str(env.tmp / "held_out")),
                ("'c'", "not one of the classes"), absent=(env.tmp / "proj",))


@case("init-test-folder-missing-a-class")
def _(env: Env) -> Case:
    root = env.flat_images()
    env.flat_images(2, "held_out/a")
    return Case(_init(env, "--images", str(root), "--classes", "a,b", "--test", str(env.tmp / "held_out")),
                ("no folder for the class 'b'",), absent=(env.tmp / "proj",))


@case("run-test-folder-missing-a-class")
def _(env: Env) -> Case:
    root = env.flat_images(30)
    env.flat_images(2, "held_out/a")
    return Case(["run", str(env.recipe()), "data.dataset=imagefolder", f"data.root={root}", "data.image_size=8",
                 "data.pool_size=null", "data.test_size=null", "data.classes=[a,b]",
                 f"data.test_root={env.tmp / 'held_out'}", "active.oracle=human", "active.subset=null",
                 "--no-progress"], ("data.test_root", "no folder for the class 'b'"), absent=(env.out,))


@case("init-empty-image-folder")
def _(env: Env) -> Case:
    (env.tmp / "empty").mkdir()
    return Case(_init(env, "--images", str(env.tmp / "empty"), "--classes", "a,b"),
                (str(env.tmp / "empty"), "no image files"), absent=(env.tmp / "proj",))


@case("init-class-name-with-a-line-break")
def _(env: Env) -> Case:
    root = env.flat_images()
    return Case(_init(env, "--images", str(root), "--classes", "a\nb,c"), ("data.classes", "printable"),
                absent=(env.tmp / "proj",))


# ============================================================================= argparse misuse

@case("argparse-unknown-option")
def _(env: Env) -> Case:
    return Case(["compare", str(env.spec()), "--jobz", "2"], ("--jobz",), usage=True)


@case("argparse-missing-subcommand")
def _(env: Env) -> Case:
    return Case(["--no-progress"], ("command",), usage=True)


@case("argparse-report-without-run-dir")
def _(env: Env) -> Case:
    return Case(["report", "--out", str(env.tmp / "rep")], ("RUN_DIR",), usage=True)


@case("argparse-jobs-not-a-number")
def _(env: Env) -> Case:
    return Case(["compare", str(env.spec()), "--jobs", "two"], ("--jobs", "'two'"), usage=True)


@case("argparse-missing-subcommand-subprocess")
def _(env: Env) -> Case:
    return Case([], ("command",), usage=True, process=True)


# ============================================================================= the test

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run (3 committed rounds) in <base>/run, its cache in <base>/cache, and a human run
    of the same data stopped at its first batch in <base>/human; never changed (cases damage copies)."""
    base = tmp_path_factory.mktemp("finished")
    recipe = base / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(base / "run", cache_dir=str(base / "cache"),
                                                      train={"steps": 5})))
    assert main(["run", str(recipe), "--no-progress"]) == 0
    human = base / "human.yaml"
    human.write_text(yaml.safe_dump(tiny_recipe_dict(base / "human", cache_dir=str(base / "cache"),
                                                     train={"steps": 5}, active={"oracle": "human"})))
    assert main(["run", str(human), "--no-progress"]) == 0
    return base


def _one_line(err: str, out: str, fragments, forbidden, base: Path) -> str:
    assert "Traceback" not in err and "Traceback" not in out, err + out
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith(PREFIX), line
    masked = re.sub(re.escape(str(base)) + r"[^\s'():;,]*", "<path>", line)
    for f in fragments:
        if isinstance(f, re.Pattern):
            assert f.search(masked), f"/{f.pattern}/ not in {masked!r}"
        else:
            assert f in line, f"{f!r} not in {line!r}"
    for f in forbidden:
        assert f not in line, f"{f!r} should not be in {line!r}"
    return line


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.endswith("-subprocess") else n
                                  for n in CASES])  # the console script in a process: the slow marker
def test_bad_input(name, tmp_path, monkeypatch, capsys, finished_run, fmnist_root):
    env = Env(tmp_path, monkeypatch, finished_run, fmnist_root)
    try:
        c = CASES[name](env)
        roots = (tmp_path, finished_run, *c.roots)
        before = snapshot(*roots)
        capsys.readouterr()
        if c.process:
            proc = subprocess.run([SSAL, *c.argv], cwd=Path.cwd(), capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            exited = False
            try:
                code = main(c.argv)
            except SystemExit as e:
                exited, code = True, e.code
            captured = capsys.readouterr()
            out, err = captured.out, captured.err
            assert exited == c.usage, f"usage error should {'' if c.usage else 'not '}raise SystemExit"
        assert code == 2, f"exit status {code}\nstderr: {err}\nstdout: {out[-2000:]}"
        _one_line(err, out, c.fragments, c.forbidden, tmp_path.parent)
        after = snapshot(*roots)
        assert after == before, diff(before, after)
        for p in c.absent:
            assert not p.exists(), p
    finally:
        env.close()
