"""Deep ensembles (Beluch et al. 2018): K models trained per round from different seeds; their
disagreement selects, their mean prediction is what the round evaluates.

Everything of the method is here: the :class:`Ensemble` module that evaluates as one model, how
the members' fits combine into the round's fit (:func:`combine`), the signal of the members'
predictions and the strategy. The loop trains ``Strategy.members`` models per round, one after
another (each on all processes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssal import checks
from ssal.select import functional as Fn
from ssal.select.base import STRATEGIES, ScoreStrategy, Signals
from ssal.select.signals import Chunk, Signal, produces

SCORES = {"variation_ratio": Fn.variation_ratio, "entropy": Fn.mean_entropy,
          "bald": Fn.bald}  # over the members instead of MC-dropout passes


class Ensemble(nn.Module):
    """Members that predict as one model: the logits are the log of the members' mean probability (so
    a softmax gives it back), the features the members' features side by side."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def member_probs(self, x: torch.Tensor) -> torch.Tensor:
        """[N, K, C]: each member's softmax."""
        return torch.stack([F.softmax(m(x).float(), dim=1) for m in self.members], dim=1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        outs = [m(x, return_features=True) for m in self.members]
        probs = torch.stack([F.softmax(o[0].float(), dim=1) for o in outs]).mean(dim=0)
        logits = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        return (logits, torch.cat([o[1] for o in outs], dim=1)) if return_features else logits


def combine(fits: list) -> object:
    """One round's fit (:class:`ssal.engine.FitResult`) from its members' fits: the models as an
    :class:`Ensemble`, times summed, logs averaged over the members."""
    from ssal.engine import FitResult

    logs = {k: sum(f.logs[k] for f in fits) / len(fits) for k in fits[0].logs}
    return FitResult(Ensemble([f.model for f in fits]), Ensemble([f.eval_model for f in fits]),
                     sum(f.seconds for f in fits), logs, data_seconds=sum(f.data_seconds for f in fits),
                     members=list(fits))


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
