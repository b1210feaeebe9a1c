"""Expected gradient length: how much labeling a sample would change the last layer."""

from __future__ import annotations

import torch

from ssal.select import functional as Fn
from ssal.select.base import STRATEGIES, ScoreStrategy, Signals
from ssal.select.signals import Features, Probs


@STRATEGIES.register("egl")
class EGL(ScoreStrategy):
    """Largest expected norm of the head's weight gradient, sum_c p_c ||(p - e_c) (x) h|| (Settles et al.
    2008; the last-layer form of Huang et al. 2016): the label the model expects, weighted by how far
    it would move the head. Computed from the factors, O(N C), no backward pass."""

    nonnegative_scores = True

    needs = (Probs(), Features())

    def scores(self, signals: Signals) -> torch.Tensor:
        return Fn.egl(signals[Probs()], signals[Features()])
