from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ssal.registry import Registry
from ssal.select.functional import top_k

STRATEGIES = Registry("strategy")
INITIAL_STRATEGIES = Registry("initial strategy")


def reads_truth(initial: Any) -> Any:
    """Declares that an initial strategy reads the pool's ground-truth labels (its ``targets``): only a
    simulated oracle has them before round 0, so a recipe whose answers come from people refuses it."""
    initial.needs_truth = True
    return initial


def reads_features(initial: Any) -> Any:
    """Declares that an initial strategy reads the pool's features (the pretrained encoder's): the run
    picks its batch after pretraining. Any other is picked first, so people label while pretraining runs."""
    initial.needs_features = True
    return initial


@dataclass
class Signals:
    """What a strategy sees: the candidate pool indices and the signals computed on them.

    ``candidates`` are unlabeled pool indices (all of them, or the ``active.subset``);
    ``labeled`` the labeled pool indices. ``values`` maps each requested signal
    (:mod:`ssal.select.signals`) to its tensor, aligned with ``candidates`` (row i belongs to
    ``candidates[i]``), or with ``labeled`` for a request made with ``labeled=True``.
    """

    candidates: torch.Tensor
    labeled: torch.Tensor
    values: dict[Any, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, request: Any) -> torch.Tensor:
        return self.values[request]


class Strategy:
    """Selects ``budget`` of the candidates. ``needs`` are the signals it reads (typed requests of
    :mod:`ssal.select.signals`, built from its options)."""

    Config: ClassVar[type | None] = None  # the strategy's own recipe sub-section (active.<name>)
    members: int = 1  # models trained per round; more train an ensemble (ssal.select.ensemble)
    nonnegative_scores: ClassVar[bool] = False  # its scores are >= 0 (active.stochastic: power may wrap it)

    def __init__(self, cfg: Any = None):
        self.cfg = cfg if cfg is not None or self.Config is None else self.Config()

    @property
    def needs(self) -> tuple[Any, ...]:
        return ()

    def check_model(self, backbone: Any, num_classes: int) -> None:
        """Raise :class:`ssal.errors.ConfigError` when the model (its backbone, ``num_features`` wide,
        and ``num_classes``) is not one the strategy can use on this machine; called before anything runs."""

    def auxiliary(self, model: Any) -> Any:
        """A module to train along the objective for this strategy (an :class:`ssal.semi.base.Auxiliary`),
        or None; built around each round's fresh ``model``."""
        return None

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        """Exactly ``min(budget, len(candidates))`` unique indices taken from ``signals.candidates``."""
        raise NotImplementedError

    def scores(self, signals: Signals) -> torch.Tensor | None:
        """Per-candidate scores (higher = preferred), for strategies that rank; None otherwise."""
        return None


class ScoreStrategy(Strategy):
    """A strategy that ranks candidates by a score and takes the top ``budget``."""

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:

        return signals.candidates[top_k(self.scores(signals), budget)]
