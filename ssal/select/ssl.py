"""Strategies that read the signals of the self-/semi-supervised stage."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssal import checks
from ssal.select import functional as Fn
from ssal.select.base import STRATEGIES, ScoreStrategy, Signals
from ssal.select.signals import AugProbs, Embeddings, Labels, PrevProbs, Probs


@STRATEGIES.register("consistency")
class Consistency(ScoreStrategy):
    """Inconsistency of the predictions over K training views (Gao et al. 2020), from the
    objective's EMA teacher when it has one."""

    nonnegative_scores = True

    @dataclass
    class Config:
        views: int = 10  # K
        view: str = "weak"  # the training view: weak | strong

        def check(self, key: str, recipe) -> None:
            checks.at_least(f"{key}.views", self.views, 1)
            checks.one_of(f"{key}.view", self.view, ("weak", "strong"))

    @property
    def needs(self) -> tuple[AugProbs]:
        return (AugProbs(views=self.cfg.views, view=self.cfg.view),)

    def scores(self, signals: Signals) -> torch.Tensor:
        return Fn.consistency(signals[self.needs[0]].transpose(0, 1))  # [N, K, C] -> [K, N, C]


@STRATEGIES.register("tod")
class TOD(ScoreStrategy):
    """Cyclic output discrepancy (Huang et al. 2021): 1/2 ||p_r - p_(r-1)||^2 between this
    round's model and the previous round's; in round 0 between the model and its EMA."""

    nonnegative_scores = True

    needs = (Probs(), PrevProbs())

    def scores(self, signals: Signals) -> torch.Tensor:
        return Fn.output_discrepancy(signals[Probs()], signals[PrevProbs()])


@STRATEGIES.register("cal")
class CAL(ScoreStrategy):
    """Contrastive active learning (Margatina et al. 2021): predictions that diverge from those
    of the nearest labeled samples in the encoder's feature space."""

    nonnegative_scores = True

    @dataclass
    class Config:
        neighbors: int = 10  # k

        def check(self, key: str, recipe) -> None:
            checks.at_least(f"{key}.neighbors", self.neighbors, 1)

    needs = (Probs(), Embeddings(), Probs(labeled=True), Embeddings(labeled=True))

    def scores(self, signals: Signals) -> torch.Tensor:
        return Fn.cal(signals[Embeddings()], signals[Probs()], signals[Embeddings(labeled=True)],
                      signals[Probs(labeled=True)], k=self.cfg.neighbors)


@STRATEGIES.register("feature_similarity")
class FeatureSimilarity(ScoreStrategy):
    """Samples least similar to every labeled class prototype in the contrastive feature space
    (Krishnan et al. 2021)."""

    needs = (Embeddings(), Embeddings(labeled=True), Labels())

    def scores(self, signals: Signals) -> torch.Tensor:
        return Fn.feature_similarity(signals[Embeddings()], signals[Embeddings(labeled=True)], signals[Labels()])
