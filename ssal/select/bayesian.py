"""Bayesian disagreement with MC dropout: BALD and BatchBALD.

The T stochastic passes (:class:`ssal.select.signals.MCDropout`) drop features before the linear
head; the penultimate features are computed once per sample and only the head runs T times.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssal import checks
from ssal.select import functional as Fn
from ssal.select.base import STRATEGIES, ScoreStrategy, Signals, Strategy
from ssal.select.signals import BALDScore, MCProbs


@STRATEGIES.register("bald")
class BALD(ScoreStrategy):
    """Mutual information between label and weights (Houlsby et al. 2011; Gal et al. 2017)."""

    nonnegative_scores = True

    @dataclass
    class Config:
        samples: int = 20  # T stochastic passes
        dropout: float = 0.5  # dropout before the head when model.drop_rate is 0

        def check(self, key: str, recipe) -> None:
            checks.at_least(f"{key}.samples", self.samples, 1)
            checks.within(f"{key}.dropout", self.dropout, 0, 1, high_open=True)

    @property
    def needs(self) -> tuple[BALDScore]:  # streamed: O(N * C) memory, never the [T, N, C] stack
        return (BALDScore(samples=self.cfg.samples, dropout=self.cfg.dropout),)

    def scores(self, signals: Signals) -> torch.Tensor:
        return signals[self.needs[0]]


@STRATEGIES.register("batchbald")
class BatchBALD(Strategy):
    """Joint mutual information of the whole batch (Kirsch et al. 2019): no near-duplicate picks.

    Cost grows with the batch: each pick scores every remaining candidate against
    ``num_samples`` label configurations, so the candidates are the ``max_candidates`` highest
    BALD scores (or the budget's number, when it is larger). Past
    log(num_samples)/log(C) picks the joint entropy is a sampled estimate; its noise grows with the
    batch, so budgets of tens to a few hundred are what it is for.
    """

    @dataclass
    class Config(BALD.Config):
        num_samples: int = 1000  # label configurations for the joint entropy
        max_candidates: int = 2000  # pre-filter: the highest BALD scores

        def check(self, key: str, recipe) -> None:
            super().check(key, recipe)
            checks.at_least(f"{key}.num_samples", self.num_samples, 1)
            checks.at_least(f"{key}.max_candidates", self.max_candidates, 1)

    @property
    def needs(self) -> tuple[MCProbs]:
        return (MCProbs(samples=self.cfg.samples, dropout=self.cfg.dropout),)

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        cands = signals.candidates
        if budget >= len(cands):
            return cands
        mc = signals[self.needs[0]].transpose(0, 1)  # [N, T, C] -> [T, N, C]
        pre = Fn.top_k(Fn.bald(mc), max(self.cfg.max_candidates, budget))
        picked = Fn.batchbald(mc[:, pre], budget, self.cfg.num_samples, generator)
        return cands[pre[picked]]
