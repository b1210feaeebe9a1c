"""The run directory, kept like a small database: one object owns its lock, its writes and the commit of
a round (its reads: :mod:`ssal.run.readers`; its names: :mod:`ssal.run.layout`; its checks:
:mod:`ssal.run.checks`).

Protocol of round r: train, evaluate, save checkpoint r, (select, write selected.json and pool.json),
then commit: metrics.jsonl is rewritten atomically with round r's line, which records how many labels
the pool holds and their digest. On ``--resume`` the committed lines say what is true; pool.json is
verified against them (rebuilt from the selections and the oracle when it is missing or damaged and
that gives the same digest, refused otherwise), and a damaged checkpoint makes its round run again
(:mod:`ssal.run.restore`). Every file is written tmp + fsync + rename; sealed files carry a checksum.

On processes other than the main one (several processes under Accelerate) the object reads but
never writes, so the loop needs no ``if main:`` around its writes.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssal import __version__, files
from ssal.data.pool import ActivePool
from ssal.errors import ConfigError
from ssal.run import checks, layout
from ssal.run.layout import (
    ANSWERS_LOCK,
    CELL,
    CURVE_CSV,
    CURVE_PNG,
    FORMAT,
    IDENTITY,
    LOCK,
    LOCKS,
    METRICS,
    POOL,
    PRETRAIN_LOG,
    RECIPE,
)
from ssal.run.lock import Lock, RunInUse, timestamp
from ssal.run.readers import RunFiles, read_metrics
from ssal.run.restore import Restored, restore
from ssal.run.transaction import Transaction, transaction

# importable from here too: the names callers used before the run package had several modules
__all__ = ["KEEP_CHECKPOINTS", "SAFE_ON_RESUME", "IDENTITY", "RECIPE", "Lock", "Restored", "RunDir", "RunInUse",
           "differences", "read_metrics"]

# recipe keys that may differ on --resume: they change neither what a stored label means nor what
# the committed rounds computed (active.rounds may only grow: the run buys the missing batches)
SAFE_ON_RESUME = ("name", "output_dir", "cache_dir", "data.root", "data.num_workers", "active.rounds",
                  "active.stop_when", "active.stop_window")
KEEP_CHECKPOINTS = 2  # the last round's and the one before: a damaged last one costs one round, not all


class RunDir(RunFiles):
    """One run directory: :class:`RunFiles`' reads, and the lock and the writes. ``writer=False`` (processes
    other than the main one): reads only."""

    def __init__(self, path: str | os.PathLike, writer: bool = True, names: list[str] | dict[int, str] | None = None,
                 contents: Callable[[list[int]], list[str]] | None = None):
        super().__init__(path)
        self.writer = writer
        self.names = names  # image paths relative to data.root (the pool's list, or index -> path), for folders
        self.contents = contents  # indices -> digests of their image files (folders): what a label was given for
        self._lock = Lock(self.path / LOCK)
        self._answers = Lock(self.path / ANSWERS_LOCK)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def _p(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    # ------------------------------------------------------------------ what the folder is
    def check_new(self, force: bool) -> None:
        """Raise a one-line error unless a new run may be written here. Reads only."""
        checks.check_new(self, force)

    def check_resumable(self) -> dict:
        """The run's identity (run.json), or a one-line error when the folder cannot be resumed. Reads only."""
        return checks.check_resumable(self)

    # ------------------------------------------------------------------ the locks
    # Two locks: the run's (``LOCK``), held by the process that runs the rounds (or for the milliseconds of
    # another short transaction), and the answers' (``ANSWERS_LOCK``), held for the milliseconds of storing
    # people's answers or of the run taking a complete batch into the pool. So people label while a run
    # pretrains or trains, and a batch closes atomically: no answer is stored after the run has taken it.
    def lock(self, wait: float = 0.0, purpose: str = "run") -> list[str]:
        """Take the run's lock for this process, or with ``purpose="answers"`` the answers' lock (main
        process only; the folder is made if needed), waiting up to ``wait`` seconds for another labeling
        transaction (see :meth:`Lock.acquire`). Returns notes (a dead holder's lock taken over); raises
        :class:`RunInUse`."""
        if not self.writer:
            return []
        files.mkdirs(self.path)
        note = self._which(purpose).acquire(wait, purpose)
        return [note] if note else []

    def unlock(self, purpose: str = "run") -> None:
        self._which(purpose).release()

    def _which(self, purpose: str) -> Lock:
        return self._answers if purpose == "answers" else self._lock

    @contextlib.contextmanager
    def answers_held(self, wait: float = 10.0) -> Iterator[None]:
        """The answers' lock for a short step of the run (taking a complete batch into the pool)."""
        for note in self.lock(wait, "answers"):
            print(f"note: {note}")
        try:
            yield
        finally:
            self.unlock("answers")

    def holder(self) -> str | None:
        """Who holds the run's lock now (pid, host, since, command), or None. Changes nothing."""
        return self._lock.holder()

    def transaction(self, purpose: str = "answers", wait: float = 0.0,
                    clean: bool = True) -> contextlib.AbstractContextManager[Transaction]:
        """``with rd.transaction(...) as tx``: one short transaction under the run's lock
        (:func:`ssal.run.transaction.transaction`)."""
        return transaction(self, purpose, wait, clean)

    # ------------------------------------------------------------------ identity
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
            with self.answers_held():  # no answer is stored into the run being deleted
                _delete_run(self.path)
        elif kind == "other":
            raise ConfigError(f"output_dir '{self.path}' holds other files; choose another output_dir=...")
        files.remove_stale_tmp(self.path, only_dead=True)
        seed = [] if not seed_labeled or self.contents is None else \
            [list(p) for p in zip(seed_labeled, self.contents(list(seed_labeled)), strict=True)]
        files.write_json(self._p(IDENTITY), files.seal(_new_identity(cfg, pool_fingerprint, preprocess, seed)))
        self._write_recipe(cfg)
        files.write_text(self._p(METRICS), "")
        for sub in (layout.CHECKPOINTS, layout.ROUNDS):
            files.mkdirs(self._p(sub))
        return notes

    def _write_recipe(self, cfg: DictConfig) -> None:
        files.write_text(self._p(RECIPE), OmegaConf.to_yaml(cfg))

    def update_recipe(self, cfg: DictConfig) -> list[str]:
        """Record a recipe accepted by :func:`ssal.recipe.resume.resume_recipe` (lock held); notes say what
        changed."""
        identity = self.identity()
        recipe = OmegaConf.to_container(cfg)
        notes = [f"{k}: {a!r} -> {b!r}" for k, a, b in differences(identity["recipe"], recipe) if k != "output_dir"]
        if not self.writer:
            return notes
        if notes:
            identity.update(recipe=recipe, recipe_digest=files.json_digest(recipe))
            files.write_json(self._p(IDENTITY), files.seal(identity))
        if not self._p(RECIPE).is_file():
            notes.append(f"{RECIPE} was missing: written again from {IDENTITY}")
        if notes:
            self._write_recipe(cfg)
        return notes

    def check_pool(self, fingerprint: dict) -> None:
        """Refuse to resume on data other than the run's (the stored indices would point at other images)."""
        checks.check_pool(self, fingerprint)

    # ------------------------------------------------------------------ rounds, pool, selections
    def commit(self, rows: list[dict]) -> None:
        """Write metrics.jsonl with exactly ``rows``: the last of them is committed once this returns."""
        if self.writer:
            files.write_text(self._p(METRICS), "".join(files.dumps(row) + "\n" for row in rows))

    def _paths(self, indices: list[int]) -> dict:
        return {} if self.names is None else {"paths": [self.names[i] for i in indices]}  # a list, or index -> path

    def save_pool(self, pool: ActivePool) -> None:
        if self.writer:
            state = pool.state_dict()
            files.write_json(self._p(POOL), files.seal({**state, **self._paths([i for i, _, _ in state["labeled"]])}))

    def save_selection(self, record: dict) -> None:
        """``rounds/rXX/selected.json`` (round -1: the initial set, ``rounds/initial/``), with the paths and
        the content digests of folder images: people answer what the files hold now."""
        if self.writer:
            path = layout.selected_path(self.path, record["round"])
            files.mkdirs(path.parent)
            digests = {} if self.contents is None else {"digests": self.contents(record["indices"])}
            ahead = record.get("ahead") or []
            if ahead:  # the images chosen ahead (active.lookahead) are named like the batch's
                digests.update({f"ahead_{k}": v for k, v in self._paths(ahead).items()})
                if self.contents is not None:
                    digests["ahead_digests"] = self.contents(ahead)
            files.write_json(path, {**record, **self._paths(record["indices"]), **digests})

    def check_contents(self) -> None:
        """Every image the run holds a label or a query for is still the image it was (one line if not)."""
        checks.check_contents(self)

    # ------------------------------------------------------------------ people's answers
    def save_answers(self, r: int, answers: dict[int, int], names: dict[int, str] | None = None) -> None:
        """``answers.json`` of acquisition ``r`` (``names``: the batch's paths, else the run's)."""
        if self.writer:
            rows = sorted(answers.items())
            paths = {} if names is None else {"paths": [names[i] for i, _ in rows]}
            files.write_json(self.answers_path(r), files.seal(
                {"round": r, "answers": [[i, y] for i, y in rows], **(paths or self._paths([i for i, _ in rows]))}))

    def save_ahead(self, r: int, answers: dict[int, int], closed: bool, names: dict[int, str] | None = None) -> None:
        """``ahead.json`` of acquisition ``r``: the answers to its images chosen ahead; ``closed`` once the
        next acquisition has taken them (answers lock held)."""
        if self.writer:
            rows = sorted(answers.items())
            paths = {} if names is None else {"paths": [names[i] for i, _ in rows]}
            files.write_json(layout.ahead_path(self.path, r), files.seal(
                {"round": r, "answers": [[i, y] for i, y in rows], "closed": closed,
                 **(paths or self._paths([i for i, _ in rows]))}))

    def write_new(self, path: Path, data: bytes) -> bool:
        """Write ``path`` unless it exists (a query file a person may be filling in is never replaced)."""
        if not self.writer or path.exists():
            return False
        files.mkdirs(path.parent)
        files.write_bytes(path, data)
        return True

    # ------------------------------------------------------------------ models, curves, logs, cells
    def save_checkpoint(self, r: int, state: dict[str, Any]) -> None:
        if self.writer:
            path = layout.checkpoint_path(self.path, r)
            files.mkdirs(path.parent)  # a run killed while being made has none yet
            body = {"format": FORMAT, "round": r, **state}
            files.torch_save(path, {**body, "checksum": files.tensor_checksum(body)})

    def prune_checkpoints(self, last: int) -> None:
        """Keep the checkpoints of rounds ``last - KEEP_CHECKPOINTS + 1 .. last``."""
        if not self.writer:
            return
        for p in self._p(layout.CHECKPOINTS).glob("round_*.pt"):
            with contextlib.suppress(ValueError):
                if int(p.stem.removeprefix("round_")) <= last - KEEP_CHECKPOINTS:
                    p.unlink(missing_ok=True)

    def write_curve(self, csv_text: str, png: bytes) -> None:
        """``curve.csv`` and ``curve.png`` (made by :func:`ssal.experiment.report.curve_files`)."""
        if self.writer:
            files.write_text(self._p(CURVE_CSV), csv_text)
            files.write_bytes(self._p(CURVE_PNG), png)

    def write_progress(self, state: dict) -> None:
        """``progress.json``: what the run does now, for the labeling page (advisory: not verified)."""
        if self.writer:
            files.write_advisory(self._p(layout.PROGRESS), files.dumps(state))

    def clear_progress(self) -> None:
        if self.writer:
            with contextlib.suppress(OSError):
                self._p(layout.PROGRESS).unlink()

    def write_pretrain_log(self, lines: list[dict]) -> None:
        if self.writer:
            files.write_text(self._p(PRETRAIN_LOG), "".join(files.dumps(line) + "\n" for line in lines))

    def save_cell(self, labels: dict) -> None:
        """``cell.json``: the labels (method, strategy, seed) a comparison gives this run (lock taken here:
        the comparison writes it once the cell's own run has ended)."""
        if self.writer:
            with self.transaction(purpose="run", wait=5.0, clean=False):
                files.write_json(self._p(CELL), files.seal(dict(labels)))

    # ------------------------------------------------------------------ --resume
    def restore(self, labels_of: Callable[[int, torch.Tensor], torch.Tensor | None],
                new_pool: Callable[[], ActivePool], checkpoints_needed: Callable[[int, bool], list[int]]) -> Restored:
        """The verified state to continue from (lock held): see :func:`ssal.run.restore.restore`."""
        return restore(self, labels_of, new_pool, checkpoints_needed)


def _delete_run(path: Path) -> None:
    """Everything of the run in ``path`` but its lock (``--force``; held by this process)."""
    for p in path.iterdir():
        if p.name in LOCKS:
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError as e:
            raise files.storage_error(e, p, "delete") from None


def _new_identity(cfg: DictConfig, pool_fingerprint: dict, preprocess: dict | None, seed_digests: list) -> dict:
    """The body of a new run's ``run.json``."""
    recipe = OmegaConf.to_container(cfg)
    return {"format": FORMAT, "ssal": __version__, "created": timestamp(), "recipe": recipe,
            "recipe_digest": files.json_digest(recipe), "pool": pool_fingerprint,
            **({"preprocess": preprocess} if preprocess is not None else {}),
            **({"seed_digests": seed_digests} if seed_digests else {})}


def differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every leaf that differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        return []
    return [(prefix.rstrip("."), a, b)]
