"""Label-propagation uncertainty: the candidates whose labels, spread over the kNN graph of the labeled and
candidate features (:mod:`ssal.semi.label_propagation`, Zhou et al. 2004 / Iscen et al. 2019), are least
certain, 1 - certainty = H(z_i / |z_i|_1) / log C. The same signal the ``label_propagation`` objective
weighs its pseudo-labels by, usable under any objective (and with ``active.stochastic``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ssal import checks
from ssal.select.base import STRATEGIES, ScoreStrategy, Signals
from ssal.select.functional import check_finite
from ssal.select.signals import Embeddings, Labels, Probs
from ssal.semi.label_propagation import certainty, knn_graph, propagate


def propagation_certainty(cand: torch.Tensor, lab: torch.Tensor, labels: torch.Tensor, num_classes: int,
                          neighbors: int = 50, alpha: float = 0.99) -> torch.Tensor:
    """The certainty of each candidate's propagated label (labeled rows seed the propagation)."""
    feats = torch.cat([check_finite(lab, "labeled features"), check_finite(cand, "features")])
    z = propagate(knn_graph(feats, neighbors), np.arange(len(lab)), labels.numpy(), num_classes, alpha)
    return torch.from_numpy(certainty(z)[len(lab):]).float()


@STRATEGIES.register("propagation")
class Propagation(ScoreStrategy):
    """Least certain label after propagation over the kNN graph of the features (the objective's)."""

    nonnegative_scores = True

    @dataclass
    class Config:
        neighbors: int = 50
        alpha: float = 0.99

        def check(self, key: str, recipe) -> None:
            checks.at_least(f"{key}.neighbors", self.neighbors, 1)
            checks.within(f"{key}.alpha", self.alpha, 0, 1, low_open=True, high_open=True)

    needs = (Embeddings(), Embeddings(labeled=True), Labels(), Probs())  # Probs: the number of classes

    def scores(self, signals: Signals) -> torch.Tensor:
        num_classes = check_finite(signals[Probs()], "probs").shape[1]
        sure = propagation_certainty(signals[Embeddings()], signals[Embeddings(labeled=True)], signals[Labels()],
                                     num_classes, self.cfg.neighbors, self.cfg.alpha)
        return 1.0 - sure
