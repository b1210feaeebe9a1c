"""CEAL, cost-effective active learning (Wang et al., TCSVT 2016): beside the images a strategy queries
(the paper's least confidence, margin or entropy), the unlabeled images the model is most sure of get
its label for the next round's training only, never the pool: those whose predictive entropy (nats) is
below a threshold that decays each round, delta_r = max(0, delta_0 - decay * r) (the paper: 0.005 and
0.00033 per iteration). They are chosen with the selection (its ``selected.json`` keeps them, so a
resumed run trains on the same ones) and re-chosen every round.
"""

from __future__ import annotations

import torch

from ssal.select import functional as Fn


def threshold(delta0: float, decay: float, r: int) -> float:
    """delta_r: the entropy below which round ``r``'s model's label is taken."""
    return max(0.0, delta0 - decay * r)


def confident(probs: torch.Tensor, indices: torch.Tensor, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``indices`` whose ``probs`` (aligned rows) have entropy below ``delta``, and the model's labels."""
    keep = Fn.entropy(Fn.check_finite(probs, "probs")) < delta
    return indices[keep], probs[keep].argmax(dim=1)
