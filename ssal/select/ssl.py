"""Strategies that read the signals of the self-/semi-supervised stage."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssal.select import functional as Fn
from ssal.select.base import STRATEGIES, ScoreStrategy, Signals


@STRATEGIES.register("consistency")
class Consistency(ScoreStrategy):
    """Inconsistency of the predictions over K training views (Gao et al. 2020), from the
    objective's EMA teacher when it has one."""

    @dataclass
    class Config:
        views: int = 10  # K
        view: str = "weak"  # the training view: weak | strong

    needs = frozenset({"aug_probs"})

    def scores(self, signals: Signals) -> torch.Tensor:
        return Fn.consistency(signals["aug_probs"].transpose(0, 1))  # [N, K, C] -> [K, N, C]


@STRATEGIES.register("tod")
class TOD(ScoreStrategy):
    """Cyclic output discrepancy (Huang et al. 2021): 1/2 ||p_r - p_(r-1)||^2 between this
    round's model and the previous round's; in round 0 between the model and its EMA."""

    needs = frozenset({"probs", "prev_probs"})

    def scores(self, signals: Signals) -> torch.Tensor:
        return Fn.output_discrepancy(signals["probs"], signals["prev_probs"])


@STRATEGIES.register("cal")
class CAL(ScoreStrategy):
    """Contrastive active learning (Margatina et al. 2021): predictions that diverge from those
    of the nearest labeled samples in the encoder's feature space."""

    @dataclass
    class Config:
        neighbors: int = 10  # k

    needs = frozenset({"probs", "embeddings", "labeled_probs", "labeled_embeddings"})

    def scores(self, signals: Signals) -> torch.Tensor:
        lab = signals.labeled_values
        return Fn.cal(signals["embeddings"], signals["probs"], lab["labeled_embeddings"], lab["labeled_probs"],
                      k=self.cfg.neighbors if self.cfg else 10)


@STRATEGIES.register("feature_similarity")
class FeatureSimilarity(ScoreStrategy):
    """Samples least similar to every labeled class prototype in the contrastive feature space
    (Krishnan et al. 2021)."""

    needs = frozenset({"embeddings", "labeled_embeddings", "labeled_labels"})

    def scores(self, signals: Signals) -> torch.Tensor:
        lab = signals.labeled_values
        return Fn.feature_similarity(signals["embeddings"], lab["labeled_embeddings"], lab["labeled_labels"])
