"""Deep ensembles (Beluch et al. 2018): K models trained per round from different seeds; their
disagreement selects, their mean prediction is what the round evaluates.

The method is its signal (the members' predictions) and its strategy, which declares
``members``: the round trainer (:mod:`ssal.experiment.trainer`) then trains that many models and
hands selection one :class:`~ssal.models.ensemble.Ensemble`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssal import checks
from ssal.models.ensemble import Ensemble
from ssal.select import functional as Fn
from ssal.select.base import STRATEGIES, ScoreStrategy, Signals
from ssal.select.signals import Chunk, Signal, produces

SCORES = {"variation_ratio": Fn.variation_ratio, "entropy": Fn.mean_entropy,
          "bald": Fn.bald}  # over the members instead of MC-dropout passes


@dataclass(frozen=True)
class MemberProbs(Signal):
    """Each ensemble member's probabilities, [N, K, C]."""


@produces(MemberProbs)
def _member_probs(req: MemberProbs, chunk: Chunk) -> torch.Tensor:
    model = chunk.ctx.model
    if not isinstance(model, Ensemble):
        raise ValueError("the members' predictions need an ensemble (active.strategy=ens)")
    return model.member_probs(chunk.x)


@STRATEGIES.register("ens")
class DeepEnsemble(ScoreStrategy):
    """Disagreement of ``members`` models trained from different seeds (Beluch et al. 2018): the
    variation ratio of their votes (the paper's best), the entropy of their mean prediction, or BALD
    over the members. Costs ``members`` times the training of one model per round."""

    nonnegative_scores = True

    @dataclass
    class Config:
        members: int = 5  # K models per round
        score: str = "variation_ratio"  # variation_ratio | entropy | bald

        def check(self, key: str, recipe) -> None:
            checks.at_least(f"{key}.members", self.members, 2, " (an ensemble of one has no disagreement)")
            checks.one_of(f"{key}.score", self.score, SCORES)

    needs = (MemberProbs(),)

    @property
    def members(self) -> int:
        return int(self.cfg.members)

    def scores(self, signals: Signals) -> torch.Tensor:
        return SCORES[self.cfg.score](signals[MemberProbs()].transpose(0, 1))  # [N, K, C] -> [K, N, C]

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        score = self.scores(signals)
        if self.cfg.score != "variation_ratio":
            return super().select(signals, budget, generator)
        # the vote takes K + 1 values at most: among equal ratios, the less certain mean prediction first
        tie = Fn.mean_entropy(signals[MemberProbs()].transpose(0, 1))
        order = Fn.top_k(tie, len(tie))
        return signals.candidates[order[Fn.top_k(score[order], budget)]]
