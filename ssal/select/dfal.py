"""Adversarial margin (DFAL): the samples closest to the decision boundary in input space."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssal import checks
from ssal.select import functional as Fn
from ssal.select.base import STRATEGIES, ScoreStrategy, Signals
from ssal.select.signals import Chunk, Signal, produces


@dataclass(frozen=True)
class DeepFoolDistance(Signal):
    """The L2 norm (on images scaled to [0, 1]) of DeepFool's perturbation of each sample, [N]."""

    max_iter: int = 50
    overshoot: float = 0.02
    classes: int = 10


@produces(DeepFoolDistance)
def _deepfool(req: DeepFoolDistance, chunk: Chunk) -> torch.Tensor:
    # selection runs under inference_mode; DeepFool needs input gradients, so it leaves it for the chunk
    # (the evaluation model is in eval mode: samples are independent, BatchNorm uses its running stats)
    with torch.inference_mode(False):
        x = chunk.x.clone()
        return Fn.deepfool(chunk.ctx.model, x, req.max_iter, req.overshoot, req.classes)


@STRATEGIES.register("dfal")
class DFAL(ScoreStrategy):
    """Smallest DeepFool perturbation that changes the prediction (Ducoffe & Precup 2018): a margin
    measured in input space. Costs ``classes`` backward passes per DeepFool step (at most ``max_iter``)
    per candidate chunk. The paper also adds the adversarial images with the queried labels to the
    training set; here only the queried images are labeled, as for every other strategy."""

    @dataclass
    class Config:
        max_iter: int = 50  # DeepFool steps at most per sample
        overshoot: float = 0.02  # the perturbation applied is (1 + overshoot) r
        classes: int = 10  # boundaries to the top this many classes only (DeepFool's default); one backward each

        def check(self, key: str, recipe) -> None:
            checks.at_least(f"{key}.max_iter", self.max_iter, 1)
            checks.at_least(f"{key}.overshoot", self.overshoot, 0)
            checks.at_least(f"{key}.classes", self.classes, 2)

    @property
    def needs(self) -> tuple[DeepFoolDistance]:
        return (DeepFoolDistance(max_iter=self.cfg.max_iter, overshoot=self.cfg.overshoot, classes=self.cfg.classes),)

    def scores(self, signals: Signals) -> torch.Tensor:
        return -signals[self.needs[0]]  # the closest to the boundary first
