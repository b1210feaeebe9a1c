"""What ``ssal run --resume`` reads back from a run directory, verified against its committed rounds: the
pool (rebuilt from the recorded selections and the oracle when pool.json is missing or damaged and that
gives the same digest, refused otherwise) and the checkpoints (a damaged one makes its round run again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ssal import files
from ssal.data.pool import ActivePool
from ssal.errors import DataError
from ssal.files import Damaged
from ssal.run.layout import METRICS, POOL, ROUNDS

if TYPE_CHECKING:
    from ssal.run.store import RunDir


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
        grew, or its labels were awaited from people (see :mod:`ssal.label.oracles`)."""
        return bool(self.rows) and self.pool is not None and len(self.pool.round_of(self.start)) == 0


def restore(rd: RunDir, labels_of: Callable[[int, torch.Tensor], torch.Tensor | None],
            new_pool: Callable[[], ActivePool], checkpoints_needed: Callable[[int, bool], list[int]]) -> Restored:
    """The verified state to continue from (lock held).

    ``labels_of(r, indices)`` are the answers to acquisition ``r`` (to rebuild pool.json from the
    selections; None when they are not all there);
    ``new_pool()`` the pool before the initial set (with the recipe's seed labels, if any);
    ``checkpoints_needed(start, pending_selection)`` the rounds whose checkpoints resuming at round
    ``start`` reads. A damaged one makes its round run again (the rounds are deterministic, so
    the result is the same), as far back as needed.
    """
    if rd.writer:
        files.remove_stale_tmp(rd.path, only_dead=True)  # a labeling page may be writing an answer now
    state = Restored(rd.committed(), None)
    state.pool = _restore_pool(rd, state, labels_of, new_pool)
    while state.start > 0:
        needed = checkpoints_needed(state.start, state.pending_selection)
        try:
            state.checkpoints = {r: rd.load_checkpoint(r) for r in needed}
            break
        except Damaged as d:
            r = state.start - 1
            state.notes.append(f"{d.path.name} is {d.reason}: round {r} runs again (same seeds, same result)")
            state.rows = state.rows[:r]
            state.pool = _pool_after(state, state.pool)
    return state


def _pool_after(state: Restored, pool: ActivePool | None) -> ActivePool | None:
    """``pool`` cut to what the last committed row says it held (the initial set with no rows)."""
    if pool is None:
        return None
    if not state.rows:
        initial = pool.round_of(0)
        return pool.head(len(initial))
    return pool.head(state.rows[-1]["pool"]["labeled"])


def _restore_pool(rd: RunDir, state: Restored, labels_of, new_pool) -> ActivePool | None:
    try:
        pool = rd.load_pool(new_pool().n)
        problem = _pool_problem(state, pool)
        if problem is None:
            return _pool_after(state, pool)
        reason = problem
    except Damaged as d:
        reason = d.reason
    if not state.rows:  # nothing committed: the initial set is bought again (seeded: the same one)
        if reason != "missing":
            state.notes.append(f"{POOL} is {reason}; the initial set is chosen again (seeded: the same one)")
        return None
    rebuilt = _rebuild_pool(rd, state, labels_of, new_pool())
    if rebuilt is None or _pool_problem(state, rebuilt) is not None:
        raise DataError(f"{rd.path / POOL} is {reason}, and the selections in {rd.path / ROUNDS} do not rebuild "
                        "the committed labels; restore pool.json from a backup, or start a new run")
    state.notes.append(f"{POOL} was {reason}; rebuilt from rounds/*/selected.json and verified")
    rebuilt = _pool_after(state, rebuilt)
    rd.save_pool(rebuilt)
    return rebuilt


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


def _rebuild_pool(rd: RunDir, state: Restored, labels_of, pool: ActivePool) -> ActivePool | None:
    try:
        for r in range(-1, state.start):
            if r == state.start - 1 and state.rows[-1]["pool"]["labeled"] == pool.n_entries:
                break  # the last committed round bought nothing
            idx = torch.tensor(rd.read_selection(r), dtype=torch.long)
            answers = labels_of(r, idx)
            if answers is None:
                return None
            pool.label(idx, answers, r + 1)
    except (Damaged, ValueError, IndexError):
        return None
    return pool
