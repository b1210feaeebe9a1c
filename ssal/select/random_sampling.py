"""Random sampling: the baseline every strategy must beat, and the default initial set."""

from __future__ import annotations

import torch

from ssal.select.base import INITIAL_STRATEGIES, STRATEGIES, Signals, Strategy, reads_truth


@STRATEGIES.register("random")
class Random(Strategy):
    """Uniformly random candidates."""

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        c = signals.candidates
        return c[torch.randperm(len(c), generator=generator)[: min(budget, len(c))]]


@INITIAL_STRATEGIES.register("random")
def initial_random(unlabeled: torch.Tensor, targets: torch.Tensor, k: int, generator: torch.Generator,
                   embed=None, classes=None) -> torch.Tensor:
    return unlabeled[torch.randperm(len(unlabeled), generator=generator)[:k]]


@INITIAL_STRATEGIES.register("class_balanced")
@reads_truth
def initial_class_balanced(unlabeled: torch.Tensor, targets: torch.Tensor, k: int,
                           generator: torch.Generator, embed=None, classes=None) -> torch.Tensor:
    """``k // C`` random samples of each class (the first ``k % C`` classes get one more).

    It reads the ground-truth labels of the pool, so it is for simulations that need a
    balanced start (e.g. "10 labels per class"); a class with too few samples gives all it has
    and the rest is filled at random.
    """
    y = targets[unlabeled]
    classes = torch.unique(y)
    per_class = torch.full((len(classes),), k // len(classes))
    per_class[: k % len(classes)] += 1
    chosen = []
    for c, m in zip(classes.tolist(), per_class.tolist(), strict=True):
        members = unlabeled[y == c]
        chosen.append(members[torch.randperm(len(members), generator=generator)[:m]])
    picked = torch.cat(chosen)
    if len(picked) < k:  # some classes were too small
        rest = unlabeled[~torch.isin(unlabeled, picked)]
        picked = torch.cat([picked, rest[torch.randperm(len(rest), generator=generator)[: k - len(picked)]]])
    return picked
