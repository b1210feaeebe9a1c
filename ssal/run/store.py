"""The run directory, kept like a small database: one object owns its lock, its files, their checks
and the commit of a round.

::

    run.json                  identity: the resolved recipe and fingerprints of it and of the pool (sealed)
    recipe.yaml               the resolved recipe, for people; checked against run.json on --resume
    metrics.jsonl             one line per committed round; rewriting it with a new line commits the round
    pool.json                 {"n", "labeled": [[index, label, round], ...], "checksum"}
    rounds/initial/selected.json, rounds/rXX/selected.json     what was bought, for the pool's rebuild
    rounds/*/queries.csv, queries.png, answers.json            with a human oracle: the questions for
                              people, and their answers (``ssal label import``; sealed)
    checkpoints/round_XX.pt   the last two rounds' models (checksummed)
    curve.csv, curve.png, pretrain.jsonl
    .lock                     held (flock) by the process that runs the directory (or stores answers);
                              says who that is; removed when released
    cell.json                 a comparison cell's labels (sealed)

Protocol of round r: train, evaluate, save checkpoint r, (select, write selected.json and pool.json),
then commit: metrics.jsonl is rewritten atomically with round r's line, which records how many labels
the pool holds and their digest. On ``--resume`` the committed lines say what is true; pool.json is
verified against them (rebuilt from the selections and the oracle when it is missing or damaged and
that gives the same digest, refused otherwise), and a damaged checkpoint makes its round run again.

On processes other than the main one (several processes under Accelerate) the object reads but
never writes, so the loop needs no ``if main:`` around its writes.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import math
import os
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssal import __version__, files
from ssal.data.pool import ActivePool
from ssal.errors import ConfigError, DataError, SsalError
from ssal.files import Damaged

FORMAT = 1
LOCK, IDENTITY, RECIPE, METRICS, POOL = ".lock", "run.json", "recipe.yaml", "metrics.jsonl", "pool.json"
CELL = "cell.json"  # a comparison cell's labels (method, strategy, seed), written by ``ssal compare``
COMPARISON = "compare.json"  # marks the output folder of ``ssal compare``
RUN_KIND, COMPARISON_KIND = "run directory", "comparison folder"
# recipe keys that may differ on --resume: they change neither what a stored label means nor what
# the committed rounds computed (active.rounds may only grow: the run buys the missing batches)
SAFE_ON_RESUME = ("name", "output_dir", "cache_dir", "data.root", "data.num_workers", "active.rounds")
KEEP_CHECKPOINTS = 2  # the last round's and the one before: a damaged last one costs one round, not all


class RunInUse(SsalError):
    """Another live process holds the run directory's lock."""


# ----------------------------------------------------------------------------- metrics.jsonl

def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The committed rounds of a run directory, checked: line i is round i. A last line without its
    newline (cut off by a crash of an older version, or garbage appended) is not a committed round.
    Any other damaged line raises :class:`DataError` with one line that says how to recover."""
    path = Path(run_dir) / METRICS
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    lines = data.split(b"\n")[:-1]  # a last line without its newline was never committed
    rows: list[dict] = []
    for i, raw in enumerate(lines):
        problem = None
        try:
            row = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            row, problem = None, "is not a JSON line"
        if problem is None:
            problem = _row_problem(row, i)
        if problem:
            raise DataError(f"{path} line {i + 1} {problem}; the run directory is damaged: delete that line and "
                            "the ones after it, and 'ssal run --resume' runs those rounds again")
        rows.append(row)
    return rows


def _row_problem(row: Any, i: int) -> str | None:
    if not isinstance(row, dict):
        return "is not a JSON object"
    if row.get("round") != i or isinstance(row.get("round"), bool):
        return f"should be round {i}, found round {row.get('round')!r}"
    acc, n = row.get("test_acc"), row.get("n_labeled")
    if "test_acc" not in row and "pool_mean_conf" not in row:  # a run without a test set has the latter
        return "has neither test_acc nor pool_mean_conf"
    if "test_acc" in row and (not isinstance(acc, (int, float)) or isinstance(acc, bool) or not (0 <= acc <= 1)):
        return f"has no test_acc in [0, 1] (found {acc!r})"
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return f"has no n_labeled >= 1 (found {n!r})"
    return None


def store_kind(folder: Path) -> str | None:
    """Whether ``folder`` is a run directory (also one of an ssal without run.json) or the folder of a
    comparison (also one made before compare.json marked it), or neither (None)."""
    if (folder / IDENTITY).is_file() or all((folder / n).is_file() for n in (RECIPE, METRICS, POOL)):
        return RUN_KIND
    if (folder / COMPARISON).is_file() or all((folder / n).is_dir() for n in ("cells", "recipes", "logs")):
        return COMPARISON_KIND
    return None


def enclosing_store(path: Path) -> tuple[str, Path] | None:
    """The innermost run directory or comparison folder that holds the resolved ``path`` (or is it):
    (kind, folder), or None."""
    for folder in (path, *path.parents):
        kind = store_kind(folder)
        if kind is not None:
            return kind, folder
    return None


def check_unchanged(indices: list[int], recorded: list[str], now: list[str], names, where: str) -> None:
    """A one-line :class:`DataError` naming the first of ``indices`` whose file no longer holds what
    ``recorded`` says it held when ``where`` recorded it: a label is for the image a person saw."""
    changed = [k for k, (a, b) in enumerate(zip(now, recorded, strict=True)) if a != b]
    if changed:
        i = indices[changed[0]]
        name = f"'{names[i]}'" if names is not None else f"index {i}"
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        what = "is missing or unreadable" if now[changed[0]].startswith("unreadable") else "has other content"
        raise DataError(f"the image {name}{more} {what} since {where} recorded it; the run's label or query is for the "
                        "image that was there: put the original file back, or start a new run")


# ----------------------------------------------------------------------------- the lock

class Lock:
    """An exclusive ``flock`` on ``.lock`` for the life of a run (or of one labeling transaction). The
    kernel drops it when the process dies (kill -9 included), so a lock is never stale in effect; the
    file names its holder while it is held and is removed when it is released, so a clean stop leaves
    nothing behind. A name left by a dead process is reported when the lock is taken over.

    Removing a lock file that others may be waiting on is safe because a taker checks, once it holds
    the lock, that the file it locked is still the one at the path (else it takes the new one)."""

    SETTLE = 0.5  # seconds a taker retries: a holder() probe holds the lock for microseconds

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def holder(self) -> str | None:
        """Who holds the lock now (a description), or None when it is free. Changes nothing on disk."""
        deadline = time.monotonic() + 0.25
        while True:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                who = _describe(os.pread(fd, 4096, 0))
                if who is not None or time.monotonic() > deadline:  # a new holder writes its name at once
                    return who or "a process that did not say who it is"
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
            finally:
                os.close(fd)
            time.sleep(0.01)

    def acquire(self, wait: float = 0.0, purpose: str = "run") -> str | None:
        """Take the lock for ``purpose`` ("run", or "answers": a labeling transaction of milliseconds), or
        raise :class:`RunInUse`. A holder is waited for :attr:`SETTLE` seconds, and up to ``wait`` seconds
        while it is a labeling transaction (never a run's hours). Returns a note when a dead holder's name
        was found."""
        start = time.monotonic()
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise files.storage_error(e, self.path, "create") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                brief = _purpose(os.pread(fd, 4096, 0)) == "answers"
                os.close(fd)
                if time.monotonic() - start < (max(wait, self.SETTLE) if brief else self.SETTLE):
                    time.sleep(0.02)
                    continue
                who = self.holder() or "a process that has just stopped"
                raise RunInUse(f"{self.path.parent} is in use by another ssal process ({who}); wait for it to "
                               "finish, or stop it, then try again") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed the file while we waited: take the one at the path now
        previous = os.pread(fd, 4096, 0)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "command": " ".join(sys.argv),
              "purpose": purpose}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise files.storage_error(e, self.path) from None
        self.fd = fd
        _HELD.add(self)
        if not previous.strip():
            return None
        return f"took over the lock of {_describe(previous) or 'an unknown process'}, which is no longer running"

    def release(self) -> None:
        _HELD.discard(self)
        if self.fd is None:
            return
        if _same_file(self.fd, self.path):
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # still held: a taker that opened it finds it gone and retries
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


_HELD: set[Lock] = set()


def _forget_locks_in_child() -> None:
    """A forked child (a data-loader worker) must not keep the run locked after its parent died."""
    for lock in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(lock.fd)
        lock.fd = None
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _purpose(raw: bytes) -> str | None:
    try:
        return json.JSONDecoder().raw_decode(raw.decode())[0].get("purpose")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None


def _describe(raw: bytes) -> str | None:
    """The holder a lock file names, or None when it names nobody (empty, or being written)."""
    try:
        info, _ = json.JSONDecoder().raw_decode(raw.decode())  # an older, longer name may follow a new one
        return f"pid {info['pid']} on {info['host']}, since {info['since']}: {info['command']}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


# ----------------------------------------------------------------------------- the run directory

@dataclass
class Restored:
    """What ``--resume`` finds, verified: the committed rounds, the pool after the last of them (None
    when not even the initial set was bought), the checkpoints asked for, and notes on repairs."""

    rows: list[dict]
    pool: ActivePool | None
    checkpoints: dict[int, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def start(self) -> int:
        return len(self.rows)

    @property
    def pending_selection(self) -> bool:
        """The last committed round's batch is not in the pool: it was the last round before active.rounds
        grew, or its labels were awaited from people (see :mod:`ssal.oracle`)."""
        return bool(self.rows) and self.pool is not None and len(self.pool.round_of(self.start)) == 0


class RunDir:
    """One run directory. ``writer=False`` (processes other than the main one): reads only."""

    def __init__(self, path: str | os.PathLike, writer: bool = True, names: list[str] | dict[int, str] | None = None,
                 contents: Callable[[list[int]], list[str]] | None = None):
        self.path = Path(path)
        self.writer = writer
        self.names = names  # image paths relative to data.root (the pool's list, or index -> path), for folders
        self.contents = contents  # indices -> digests of their image files (folders): what a label was given for
        self._lock = Lock(self.path / LOCK)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def _p(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    # ------------------------------------------------------------------ what the folder is
    def kind(self) -> str:
        """``absent``, ``file``, ``empty`` (nothing but a lock file and stale temporary files), ``run``
        (has run.json), ``legacy`` (a run of an ssal without run.json) or ``other``."""
        if not self.path.exists():
            return "absent"
        if not self.path.is_dir():
            return "file"
        names = {p.name for p in self.path.iterdir()}
        if IDENTITY in names:
            return "run"
        if {RECIPE, METRICS, POOL} <= names:
            return "legacy"
        if all(n == LOCK or n.endswith(files.TMP_SUFFIX) for n in names):
            return "empty"
        return "other"

    def check_new(self, force: bool) -> None:
        """Raise a one-line error unless a new run may be written here. Reads only."""
        out = self.path
        problem = files.writable_problem(out)
        if problem:
            raise ConfigError(f"output_dir '{out}' cannot be used: {problem}; choose another output_dir=...")
        kind = self.kind()
        if kind in ("absent", "empty"):
            return
        if kind == "other":
            example = next(iter(sorted(p.name for p in out.iterdir() if p.name != LOCK)))
            raise ConfigError(f"output_dir '{out}' holds other files (e.g. '{example}') and is not an ssal run; "
                              "ssal never deletes such a folder, --force included: choose another output_dir=...")
        if not force:
            raise ConfigError(f"output_dir '{out}' already holds a run; continue it with 'ssal run --resume {out}', "
                              "choose another output_dir=..., or pass --force to replace it")
        cwd = Path.cwd().resolve()
        if cwd == out.resolve() or out.resolve() in cwd.parents:
            raise ConfigError(f"output_dir '{out}' contains the current folder; --force would delete it: "
                              "run from elsewhere or choose another output_dir=...")
        who = self._lock.holder()
        if who:
            raise RunInUse(f"{out} is in use by another ssal process ({who}); --force does not replace a run "
                           "in progress")

    def check_resumable(self) -> dict:
        """The run's identity (run.json), or a one-line error when the folder cannot be resumed. Reads only."""
        kind = self.kind()
        if kind == "empty":
            raise ConfigError(f"'{self.path}' holds no run yet (empty, or interrupted while it was being made); "
                              f"start it with 'ssal run RECIPE output_dir={self.path}'")
        if kind in ("absent", "file", "other"):
            what = {"absent": "does not exist", "file": "is a file"}.get(kind, "is not a run directory (no run.json)")
            raise ConfigError(f"'{self.path}' {what}; give the output_dir of a run to --resume")
        if kind == "legacy":
            raise ConfigError(f"'{self.path}' has no run.json (deleted, or the run was made by an older ssal), so its "
                              "labels cannot be verified against its recipe and data; restore run.json from a backup, "
                              "or start the run again with 'ssal run RECIPE --force' (which deletes it)")
        identity = self.identity()
        who = self._lock.holder()
        if who:
            raise RunInUse(f"{self.path} is in use by another ssal process ({who}); wait for it to finish")
        return identity

    def identity(self) -> dict:
        try:
            identity = files.read_sealed_json(self._p(IDENTITY))
        except Damaged as d:
            raise DataError(f"{d.path} is {d.reason}; without it the run's labels cannot be verified: restore it "
                            "from a backup, or start a new run") from None
        if identity.get("format") != FORMAT or not isinstance(identity.get("recipe"), dict):
            raise DataError(f"{self._p(IDENTITY)} has format {identity.get('format')!r}, this ssal reads {FORMAT}; "
                            "use the ssal version that wrote it")
        return identity

    # ------------------------------------------------------------------ the recipe on --resume
    def resume_recipe(self, overrides: list[str] = ()) -> DictConfig:
        """The recipe to continue with: recipe.yaml (+ ``overrides``), checked against the recipe the run
        was made with. A change outside :data:`SAFE_ON_RESUME` (or fewer rounds) is refused."""
        from ssal.recipe import from_dict, load_recipe, parse_overrides

        stored = self.check_resumable()["recipe"]
        # an override of a key that must not change is refused for that reason, before the recipe it would
        # make is checked (active.oracle=human on a run made for people is not an initial_strategy problem)
        given = OmegaConf.to_container(parse_overrides(list(overrides))) if overrides else {}
        for key, before, after in _differences(stored, given):
            if after is not None and key not in SAFE_ON_RESUME and _has(stored, key):  # (a typo: load says so)
                self._refuse_change("the overrides", key, before, after)
        where = f"'{self._p(RECIPE)}'"
        if self._p(RECIPE).is_file():
            try:  # the file alone first: its errors are the file's, an override's are the override's
                load_recipe(self._p(RECIPE), [f"output_dir={json.dumps(str(self.path))}"])
            except ConfigError as e:
                raise ConfigError(f"{self._p(RECIPE)} cannot be used ({e}); undo the edit, or delete it and "
                                  f"--resume rewrites it from {IDENTITY}") from None
            cfg = load_recipe(self._p(RECIPE), [*overrides, f"output_dir={json.dumps(str(self.path))}"])
        else:
            cfg = from_dict({**stored, "output_dir": str(self.path)}, list(overrides))
            where = f"the {IDENTITY} recipe"
        if overrides:
            where += " with the overrides"
        now = OmegaConf.to_container(cfg)
        for key, before, after in _differences(stored, now):
            if key == "active.rounds" and isinstance(after, int) and after >= before:
                continue
            if key in SAFE_ON_RESUME and key != "active.rounds":
                continue
            self._refuse_change(where, key, before, after)
        return cfg

    def _refuse_change(self, where: str, key: str, before: Any, after: Any) -> None:
        how = ("active.rounds may only grow on --resume" if key == "active.rounds" else
               f"only {', '.join(SAFE_ON_RESUME)} may change on --resume")
        raise ConfigError(f"{where} changes {key} from {before!r} to {after!r}, but {self.path} was made with "
                          f"{before!r} and its stored labels and rounds depend on it ({how}); undo the change, "
                          "or start a new run with another output_dir")

    # ------------------------------------------------------------------ lifecycle
    def lock(self, wait: float = 0.0, purpose: str = "run") -> list[str]:
        """Take the run's lock for this process (main process only; the folder is made if needed), waiting
        up to ``wait`` seconds for another labeling transaction (see :meth:`Lock.acquire`). Returns notes
        (a dead holder's lock taken over); raises :class:`RunInUse`."""
        if not self.writer:
            return []
        files.mkdirs(self.path)
        note = self._lock.acquire(wait, purpose)
        return [note] if note else []

    def unlock(self) -> None:
        self._lock.release()

    def holder(self) -> str | None:
        """Who holds the run's lock now (pid, host, since, command), or None. Changes nothing."""
        return self._lock.holder()

    def create(self, cfg: DictConfig, pool_fingerprint: dict, force: bool, preprocess: dict | None = None,
               seed_labeled: list[int] = ()) -> list[str]:
        """Write a new run (lock held): with ``force`` an existing run is deleted first. ``preprocess``
        (class names, channels, image size, mean and std) is what a model of the run expects as input;
        ``seed_labeled``: the indices ``data.labels`` labels (their images' digests are kept)."""
        notes = []
        if not self.writer:
            return notes
        kind = self.kind()
        if kind in ("run", "legacy"):
            if not force:  # another process made it since the check
                raise ConfigError(f"output_dir '{self.path}' already holds a run; pass --force to replace it")
            notes.append(f"--force: deleted the run that was in {self.path}")
            for p in self.path.iterdir():
                if p.name == LOCK:
                    continue
                try:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                except OSError as e:
                    raise files.storage_error(e, p, "delete") from None
        elif kind == "other":
            raise ConfigError(f"output_dir '{self.path}' holds other files; choose another output_dir=...")
        files.remove_stale_tmp(self.path)
        recipe = OmegaConf.to_container(cfg)
        files.write_json(self._p(IDENTITY), files.seal({
            "format": FORMAT, "ssal": __version__, "created": _now(), "recipe": recipe,
            "recipe_digest": files.json_digest(recipe), "pool": pool_fingerprint,
            **({"preprocess": preprocess} if preprocess is not None else {}),
            **({"seed_digests": [list(p) for p in zip(seed_labeled, self.contents(list(seed_labeled)), strict=True)]}
               if seed_labeled and self.contents is not None else {})}))
        self._write_recipe(cfg)
        files.write_text(self._p(METRICS), "")
        for sub in ("checkpoints", "rounds"):
            files.mkdirs(self._p(sub))
        return notes

    def _write_recipe(self, cfg: DictConfig) -> None:
        from ssal.recipe import to_yaml

        files.write_text(self._p(RECIPE), to_yaml(cfg))

    def update_recipe(self, cfg: DictConfig) -> list[str]:
        """Record a recipe accepted by :meth:`resume_recipe` (lock held); notes say what changed."""
        identity = self.identity()
        recipe = OmegaConf.to_container(cfg)
        notes = [f"{k}: {a!r} -> {b!r}" for k, a, b in _differences(identity["recipe"], recipe) if k != "output_dir"]
        if not self.writer:
            return notes
        if notes:
            identity.update(recipe=recipe, recipe_digest=files.json_digest(recipe))
            files.write_json(self._p(IDENTITY), files.seal(identity))
        if not self._p(RECIPE).is_file():
            notes.append(f"{RECIPE} was missing: written again from {IDENTITY}")
            self._write_recipe(cfg)
        elif notes:
            self._write_recipe(cfg)
        return notes

    def check_pool(self, fingerprint: dict) -> None:
        """Refuse to resume on data other than the run's (the stored indices would point at other images)."""
        stored = self.identity()["pool"]
        if stored == fingerprint:
            return
        if stored.get("n") != fingerprint.get("n"):
            what = f"the pool has {fingerprint.get('n')} images, the run's had {stored.get('n')}"
        elif stored.get("classes") != fingerprint.get("classes"):
            what = "the class names differ"
        else:
            what = "the images or labels differ"
        raise DataError(f"the data of {self.path} changed ({what}); its stored labels would point at other images: "
                        "point data.root at the data the run was made with")

    # ------------------------------------------------------------------ files of the rounds
    def committed(self) -> list[dict]:
        return read_metrics(self.path)

    def commit(self, rows: list[dict]) -> None:
        """Write metrics.jsonl with exactly ``rows``: the last of them is committed once this returns."""
        if self.writer:
            files.write_text(self._p(METRICS), "".join(files.dumps(row) + "\n" for row in rows))

    def run_id(self) -> str:
        """A short id of this run (label files say which run they answer)."""
        identity = self.identity()
        return files.json_digest({"created": identity.get("created"), "recipe": identity.get("recipe_digest"),
                                  "pool": identity.get("pool")})[:12]

    def _paths(self, indices: list[int]) -> dict:
        return {} if self.names is None else {"paths": [self.names[i] for i in indices]}  # a list, or index -> path

    def save_pool(self, pool: ActivePool) -> None:
        if self.writer:
            state = pool.state_dict()
            files.write_json(self._p(POOL), files.seal({**state, **self._paths([i for i, _, _ in state["labeled"]])}))

    def load_pool(self, pool_size: int) -> ActivePool:
        """pool.json verified (checksum, size, structure), or :class:`Damaged`."""
        body = files.read_sealed_json(self._p(POOL))
        if body.get("n") != pool_size:
            raise Damaged(self._p(POOL), f"for a pool of {body.get('n')!r} images, not {pool_size}")
        try:
            return ActivePool.from_state(body)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError, OverflowError) as e:
            raise Damaged(self._p(POOL), f"malformed ({e})") from None

    def round_dir(self, r: int) -> Path:
        """``rounds/rXX`` of acquisition ``r`` (round -1: the initial set, ``rounds/initial``)."""
        return self._p("rounds", "initial" if r < 0 else f"r{r:02d}")

    def _selection_path(self, r: int) -> Path:
        return self.round_dir(r) / "selected.json"

    def save_selection(self, record: dict) -> None:
        """``rounds/rXX/selected.json`` (round -1: the initial set, ``rounds/initial/``), with the paths and
        the content digests of folder images: people answer what the files hold now."""
        if self.writer:
            path = self._selection_path(record["round"])
            files.mkdirs(path.parent)
            digests = {} if self.contents is None else {"digests": self.contents(record["indices"])}
            files.write_json(path, {**record, **self._paths(record["indices"]), **digests})


    def check_contents(self) -> None:
        """Every image the run holds a label or a query for is still the image it was (run.json's seed
        labels, every selected.json): one :class:`DataError` line naming the first that changed."""
        if self.contents is None:
            return
        seed = self.identity().get("seed_digests")
        if seed:
            indices = [i for i, _ in seed]
            check_unchanged(indices, [d for _, d in seed], self.contents(indices), self.names, "run.json")
        rows = self.committed()
        for r in range(-1, (rows[-1]["round"] if rows else -1) + 1):
            try:
                record = self.selection_record(r)
            except Damaged:
                continue  # a missing or damaged record is --resume's to repair, not a changed image
            if isinstance(record.get("digests"), list) and len(record["digests"]) == len(record["indices"]):
                check_unchanged(record["indices"], record["digests"], self.contents(record["indices"]), self.names,
                                f"rounds/{self.round_dir(r).name}/selected.json")

    def saved_selection(self, r: int) -> list[int] | None:
        """Acquisition ``r``'s indices as recorded, or None when there is no readable record."""
        try:
            return self.read_selection(r)
        except Damaged:
            return None

    # ------------------------------------------------------------------ people's answers
    def answers_path(self, r: int) -> Path:
        return self.round_dir(r) / "answers.json"

    def read_answers(self, r: int) -> dict[int, int]:
        """The stored answers to acquisition ``r`` (index -> class, or -1: skipped); {} when none."""
        path = self.answers_path(r)
        if not path.exists():
            return {}
        try:
            body = files.read_sealed_json(path)
            rows = body["answers"]
            if body.get("round") != r or not all(isinstance(i, int) and isinstance(y, int) for i, y in rows):
                raise ValueError
            return {i: y for i, y in rows}
        except Damaged as d:
            reason = d.reason
        except (KeyError, TypeError, ValueError):
            reason = "malformed"
        raise DataError(f"{path} is {reason}; the labels it held are lost: delete it and import the label file "
                        "again with 'ssal label import'")

    def save_answers(self, r: int, answers: dict[int, int], names: dict[int, str] | None = None) -> None:
        """``answers.json`` of acquisition ``r`` (``names``: the batch's paths, else the run's)."""
        if self.writer:
            rows = sorted(answers.items())
            paths = {} if names is None else {"paths": [names[i] for i, _ in rows]}
            files.write_json(self.answers_path(r), files.seal(
                {"round": r, "answers": [[i, y] for i, y in rows], **(paths or self._paths([i for i, _ in rows]))}))

    def write_new(self, path: Path, data: bytes) -> bool:
        """Write ``path`` unless it exists (a query file a person may be filling in is never replaced)."""
        if not self.writer or path.exists():
            return False
        files.mkdirs(path.parent)
        files.write_bytes(path, data)
        return True

    def selection_record(self, r: int) -> dict:
        """Acquisition ``r``'s ``selected.json``, checked, or :class:`Damaged`."""
        data = files.read_json(self._selection_path(r))
        if not isinstance(data, dict) or data.get("round") != r or not isinstance(data.get("indices"), list) \
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in data["indices"]):
            raise Damaged(self._selection_path(r), "malformed")
        for key in ("paths", "suggestions", "confidences"):
            if key in data and (not isinstance(data[key], list) or len(data[key]) != len(data["indices"])):
                raise Damaged(self._selection_path(r), "malformed")
        return data

    def read_selection(self, r: int) -> list[int]:
        return self.selection_record(r)["indices"]

    def _checkpoint_path(self, r: int) -> Path:
        return self._p("checkpoints", f"round_{r:02d}.pt")

    def save_checkpoint(self, r: int, state: dict[str, Any]) -> None:
        if self.writer:
            files.mkdirs(self._checkpoint_path(r).parent)  # a run killed while being made has none yet
            body = {"format": FORMAT, "round": r, **state}
            files.torch_save(self._checkpoint_path(r), {**body, "checksum": files.tensor_checksum(body)})

    def load_checkpoint(self, r: int) -> dict[str, Any]:
        """Round ``r``'s checkpoint, verified, or :class:`Damaged`."""
        path = self._checkpoint_path(r)
        if not path.is_file():
            raise Damaged(path, "missing")
        try:
            with warnings.catch_warnings():  # garbage bytes can look like an odd pickle protocol to torch
                warnings.simplefilter("ignore")
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, garbage bytes, a pickle error: all mean "damaged"
            raise Damaged(path, f"unreadable ({type(e).__name__})") from None
        if not isinstance(ckpt, dict) or "checksum" not in ckpt:
            raise Damaged(path, "not an ssal checkpoint")
        body = {k: v for k, v in ckpt.items() if k != "checksum"}
        if files.tensor_checksum(body) != ckpt["checksum"] or body.get("round") != r:
            raise Damaged(path, "checksum mismatch")
        return body

    def prune_checkpoints(self, last: int) -> None:
        """Keep the checkpoints of rounds ``last - KEEP_CHECKPOINTS + 1 .. last``."""
        if not self.writer:
            return
        for p in self._p("checkpoints").glob("round_*.pt"):
            with contextlib.suppress(ValueError):
                if int(p.stem.removeprefix("round_")) <= last - KEEP_CHECKPOINTS:
                    p.unlink(missing_ok=True)

    def write_curve(self, title: str) -> None:
        from ssal.report import curve_files

        if self.writer:
            csv_text, png = curve_files(self.committed(), title)
            files.write_text(self._p("curve.csv"), csv_text)
            files.write_bytes(self._p("curve.png"), png)

    def save_cell(self, labels: dict) -> None:
        """``cell.json``: the labels (method, strategy, seed) a comparison gives this run (lock taken here:
        the comparison writes it once the cell's own run has ended)."""
        if not self.writer:
            return
        self.lock(wait=5.0)
        try:
            files.write_json(self._p(CELL), files.seal(dict(labels)))
        finally:
            self.unlock()

    def read_cell(self) -> dict | None:
        """The comparison's labels of this run, verified; None when it has none. A damaged file is a
        one-line :class:`DataError`."""
        if not self._p(CELL).exists():
            return None
        try:
            labels = files.read_sealed_json(self._p(CELL))
        except Damaged as d:
            raise DataError(f"{d}; delete it (the labels then come from the run's recipe)") from None
        if not {"method", "strategy", "seed"} <= labels.keys():
            raise DataError(f"{self._p(CELL)} lacks method, strategy and seed; delete it (the labels then come from "
                            "the run's recipe)")
        return labels

    def verified_pool(self) -> bool:
        """Whether pool.json holds exactly what the last committed round recorded (reads only)."""
        rows = self.committed()
        want = rows[-1].get("pool") if rows else None
        if not isinstance(want, dict):
            return not rows
        try:
            body = files.read_sealed_json(self._p(POOL))
            pool = ActivePool.from_state(body).head(want["labeled"])
        except (Damaged, ValueError, KeyError, TypeError, IndexError, RuntimeError):
            return False
        return files.json_digest(pool.state_dict()) == want.get("digest")

    def write_pretrain_log(self, lines: list[dict]) -> None:
        if self.writer:
            files.write_text(self._p("pretrain.jsonl"), "".join(files.dumps(line) + "\n" for line in lines))

    # ------------------------------------------------------------------ --resume
    def restore(self, labels_of: Callable[[int, torch.Tensor], torch.Tensor | None],
                new_pool: Callable[[], ActivePool], checkpoints_needed: Callable[[int, bool], list[int]]) -> Restored:
        """The verified state to continue from (lock held).

        ``labels_of(r, indices)`` are the answers to acquisition ``r`` (to rebuild pool.json from the
        selections; None when they are not all there);
        ``new_pool()`` the pool before the initial set (with the recipe's seed labels, if any);
        ``checkpoints_needed(start, pending_selection)`` the rounds whose checkpoints resuming at round
        ``start`` reads. A damaged one makes its round run again (the rounds are deterministic, so
        the result is the same), as far back as needed.
        """
        if self.writer:
            files.remove_stale_tmp(self.path)
        state = Restored(self.committed(), None)
        state.pool = self._restore_pool(state, labels_of, new_pool)
        while state.start > 0:
            needed = checkpoints_needed(state.start, state.pending_selection)
            try:
                state.checkpoints = {r: self.load_checkpoint(r) for r in needed}
                break
            except Damaged as d:
                r = state.start - 1
                state.notes.append(f"{d.path.name} is {d.reason}: round {r} runs again (same seeds, same result)")
                state.rows = state.rows[:r]
                state.pool = self._pool_after(state, state.pool)
        return state

    def _pool_after(self, state: Restored, pool: ActivePool | None) -> ActivePool | None:
        """``pool`` cut to what the last committed row says it held (the initial set with no rows)."""
        if pool is None:
            return None
        if not state.rows:
            initial = pool.round_of(0)
            return pool.head(len(initial))
        return pool.head(state.rows[-1]["pool"]["labeled"])

    def _restore_pool(self, state: Restored, labels_of, new_pool) -> ActivePool | None:
        try:
            pool = self.load_pool(new_pool().n)
            problem = self._pool_problem(state, pool)
            if problem is None:
                return self._pool_after(state, pool)
            reason = problem
        except Damaged as d:
            reason = d.reason
        if not state.rows:  # nothing committed: the initial set is bought again (seeded: the same one)
            if reason != "missing":
                state.notes.append(f"{POOL} is {reason}; the initial set is chosen again (seeded: the same one)")
            return None
        rebuilt = self._rebuild_pool(state, labels_of, new_pool())
        if rebuilt is None or self._pool_problem(state, rebuilt) is not None:
            raise DataError(f"{self._p(POOL)} is {reason}, and the selections in {self._p('rounds')} do not rebuild "
                            "the committed labels; restore pool.json from a backup, or start a new run")
        state.notes.append(f"{POOL} was {reason}; rebuilt from rounds/*/selected.json and verified")
        rebuilt = self._pool_after(state, rebuilt)
        self.save_pool(rebuilt)
        return rebuilt

    @staticmethod
    def _pool_problem(state: Restored, pool: ActivePool) -> str | None:
        if not state.rows:
            return None if len(pool.round_of(0)) else "without its initial set"
        want = state.rows[-1].get("pool")
        if not isinstance(want, dict) or not isinstance(want.get("labeled"), int):
            raise DataError(f"the last line of {METRICS} does not record the pool (written by an older ssal?); "
                            "start the run again with --force")
        if pool.n_entries < want["labeled"]:
            return f"missing labels the committed rounds bought ({pool.n_entries} of {want['labeled']})"
        if files.json_digest(pool.head(want["labeled"]).state_dict()) != want.get("digest"):
            return "different from what the committed rounds bought (labels changed?)"
        return None

    def _rebuild_pool(self, state: Restored, labels_of, pool: ActivePool) -> ActivePool | None:
        try:
            for r in range(-1, state.start):
                if r == state.start - 1 and state.rows[-1]["pool"]["labeled"] == pool.n_entries:
                    break  # the last committed round bought nothing
                idx = torch.tensor(self.read_selection(r), dtype=torch.long)
                answers = labels_of(r, idx)
                if answers is None:
                    return None
                pool.label(idx, answers, r + 1)
        except (Damaged, ValueError, IndexError):
            return None
        return pool


def _has(tree: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every leaf that differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        return []
    return [(prefix.rstrip("."), a, b)]
