"""Uncertainty sampling on the model's predictive distribution."""

from __future__ import annotations

import torch

from ssal.select import functional as Fn
from ssal.select.base import STRATEGIES, ScoreStrategy, Signals
from ssal.select.signals import Probs


@STRATEGIES.register("entropy")
class Entropy(ScoreStrategy):
    """Highest predictive entropy (Shannon 1948; Settles 2009 survey)."""

    nonnegative_scores = True

    needs = (Probs(),)

    def scores(self, signals: Signals) -> torch.Tensor:
        return Fn.entropy(signals[Probs()])


@STRATEGIES.register("margin")
class Margin(ScoreStrategy):
    """Smallest gap between the two most likely classes (Scheffer et al. 2001)."""

    nonnegative_scores = True

    needs = (Probs(),)

    def scores(self, signals: Signals) -> torch.Tensor:
        return Fn.margin(signals[Probs()])


@STRATEGIES.register("least_confidence")
class LeastConfidence(ScoreStrategy):
    """Lowest probability of the predicted class (Lewis & Gale 1994)."""

    nonnegative_scores = True

    needs = (Probs(),)

    def scores(self, signals: Signals) -> torch.Tensor:
        return Fn.least_confidence(signals[Probs()])
