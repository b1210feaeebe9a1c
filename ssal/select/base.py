from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ssal.registry import Registry

STRATEGIES = Registry("strategy")
INITIAL_STRATEGIES = Registry("initial strategy")


@dataclass
class Signals:
    """What a strategy sees: the candidate pool indices and the signals computed on them.

    ``candidates`` are unlabeled pool indices (all of them, or the ``active.subset``); every
    tensor in ``values`` is aligned with them (row i belongs to ``candidates[i]``).
    ``labeled`` holds the labeled pool indices, ``labeled_values`` signals computed on them.
    """

    candidates: torch.Tensor
    labeled: torch.Tensor
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    labeled_values: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.values[name]


class Strategy:
    """Selects ``budget`` of the candidates. ``needs`` names the signals it reads."""

    Config: ClassVar[type | None] = None  # the strategy's own recipe sub-section (active.<name>)
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, cfg: Any = None):
        self.cfg = cfg

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        """Exactly ``min(budget, len(candidates))`` unique indices taken from ``signals.candidates``."""
        raise NotImplementedError

    def scores(self, signals: Signals) -> torch.Tensor | None:
        """Per-candidate scores (higher = preferred), for strategies that rank; None otherwise."""
        return None


class ScoreStrategy(Strategy):
    """A strategy that ranks candidates by a score and takes the top ``budget``."""

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        from ssal.select.functional import top_k

        return signals.candidates[top_k(self.scores(signals), budget)]
