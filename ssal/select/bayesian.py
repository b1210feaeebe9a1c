"""Bayesian disagreement with MC dropout: BALD and BatchBALD.

The T stochastic passes drop features before the linear head (``model.dropout``, BatchNorm in
eval mode); the penultimate features are computed once per sample and only the head runs T
times. A model built with ``model.drop_rate: 0`` gets this strategy's ``dropout`` before its head
for training too (``ssal.loop``), so the passes sample the network it was trained as.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssal.select import functional as Fn
from ssal.select.base import STRATEGIES, ScoreStrategy, Signals, Strategy


@STRATEGIES.register("bald")
class BALD(ScoreStrategy):
    """Mutual information between label and weights (Houlsby et al. 2011; Gal et al. 2017)."""

    @dataclass
    class Config:
        samples: int = 20  # T stochastic passes
        dropout: float = 0.5  # dropout before the head when model.drop_rate is 0

    needs = frozenset({"bald"})  # streamed: O(N * C) memory, never the [T, N, C] stack

    def scores(self, signals: Signals) -> torch.Tensor:
        return signals["bald"]


@STRATEGIES.register("batchbald")
class BatchBALD(Strategy):
    """Joint mutual information of the whole batch (Kirsch et al. 2019): no near-duplicate picks.

    Cost grows with the batch: each pick scores every remaining candidate against
    ``num_samples`` label configurations, so the candidates are the ``max_candidates`` highest
    BALD scores and the budget may not exceed them (checked at recipe validation). Past
    log(num_samples)/log(C) picks the joint entropy is a sampled estimate; its noise grows with the
    batch, so budgets of tens to a few hundred are what it is for.
    """

    @dataclass
    class Config:
        samples: int = 20  # T stochastic passes
        dropout: float = 0.5
        num_samples: int = 1000  # label configurations for the joint entropy
        max_candidates: int = 2000  # pre-filter: the highest BALD scores

    needs = frozenset({"mc_probs"})

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        cands = signals.candidates
        if budget >= len(cands):
            return cands
        mc = signals["mc_probs"].transpose(0, 1)  # [N, T, C] -> [T, N, C]
        cap = max(self.cfg.max_candidates if self.cfg else 2000, budget)
        pre = Fn.top_k(Fn.bald(mc), cap)
        picked = Fn.batchbald(mc[:, pre], budget, self.cfg.num_samples if self.cfg else 1000, generator)
        return cands[pre[picked]]
