"""The selection stage: one acquisition — the candidates, the strategy's signals, its choice and the
record of it (``rounds/rXX/selected.json``).

Every random draw of an acquisition is seeded from (recipe seed, round, purpose) alone, so a round
selects the same samples in an uninterrupted run and in a resumed one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ssal.faults import failpoint
from ssal.rng import derive_seed
from ssal.select.signals import SelectionContext, candidates, check_selection, compute_signals


def generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass
class Acquisition:
    """What one acquisition bought: ``round`` -1 is the initial set (bought before round 0), round r
    what round r selected for round r + 1; ``scores`` are the chosen samples' scores (None for
    strategies that do not rank)."""

    round: int
    strategy: str
    indices: torch.Tensor
    scores: torch.Tensor | None
    seconds: float

    def record(self) -> dict:
        return {"round": self.round, "strategy": self.strategy, "indices": self.indices.tolist(),
                "scores": None if self.scores is None else self.scores.tolist()}


def initial_set(engine: Any, cfg: Any, initial_strategy: Any, unlabeled: torch.Tensor, targets: torch.Tensor,
                embed: Any, k: int, classes: int | None = None) -> Acquisition:
    """The ``k`` labels bought before round 0 (by ``active.initial_strategy``); ``classes``: how many."""
    t = time.perf_counter()
    if k == 0:  # a seed set (data.labels) alone starts the run
        return Acquisition(-1, cfg.active.initial_strategy, torch.empty(0, dtype=torch.long), None, 0.0)
    picked = initial_strategy(unlabeled, targets, k, generator(cfg.seed, "initial"), embed=embed, classes=classes)
    return Acquisition(-1, cfg.active.initial_strategy, torch.as_tensor(picked, dtype=torch.long), None,
                       time.perf_counter() - t)


def acquire(engine: Any, cfg: Any, strategy: Any, data: Any, fit: Any, pool: Any, prev_model: nn.Module | None,
            r: int, budget: int, exclude: torch.Tensor | None = None) -> Acquisition:
    """Round ``r``'s acquisition: ``budget`` of the unlabeled pool (or of its ``active.subset``), scored
    with the round's trained model ``fit`` (and ``prev_model`` when the strategy compares); ``exclude``:
    images answered already (chosen ahead by the last acquisition), never candidates."""
    t = time.perf_counter()
    ctx = SelectionContext(fit.eval_model, pool.labeled_indices, pool.labels, fit.objective, prev_model, data.hflip,
                           derive_seed(cfg.seed, "signals", r), cfg.train.eval_batch_size)
    unlabeled = pool.unlabeled_indices
    if exclude is not None and len(exclude):
        unlabeled = unlabeled[~torch.isin(unlabeled, exclude)]
    cands = candidates(unlabeled, cfg.active.subset, generator(cfg.seed, "subset", r))
    signals = compute_signals(engine, strategy, ctx, data.train, cands)
    failpoint("signals")
    picked = strategy.select(signals, budget, generator(cfg.seed, "select", r))
    picked = check_selection(picked, cands, budget, cfg.active.strategy)
    scores = strategy.scores(signals)
    if scores is not None:
        scores = scores[torch.searchsorted(cands, picked)]
    failpoint("select")
    return Acquisition(r, cfg.active.strategy, picked, scores, time.perf_counter() - t)
