"""Consistency regularisation with a mean teacher (the training of consistency-based
semi-supervised AL, Gao et al. 2020): cross-entropy on labeled weak views plus w(t) times the
squared difference between the student's class probabilities on one view of an unlabeled
sample and the EMA teacher's on another view, w ramped up along a sigmoid-shaped curve."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssal import checks
from ssal.models.ema import batch_statistics, ema_model
from ssal.semi.base import OBJECTIVES, Objective


def sigmoid_rampup(step: int, rampup_steps: int) -> float:
    """exp(-5 (1 - t)^2) for t = step / rampup_steps in [0, 1], then 1 (Laine & Aila 2017)."""
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step, 0), rampup_steps) / rampup_steps
    return math.exp(-5.0 * (1.0 - t) ** 2)


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over samples and classes of (softmax student - softmax teacher)^2; no gradient to the teacher."""
    return F.mse_loss(F.softmax(student_logits.float(), dim=1), F.softmax(teacher_logits.detach().float(), dim=1))


@OBJECTIVES.register("consistency")
class Consistency(Objective):
    @dataclass
    class Config:
        weight: float = 100.0  # maximum consistency weight (on the mean over classes of the squared error)
        rampup: float = 0.3  # fraction of train.steps over which the weight ramps up
        teacher_decay: float = 0.999  # EMA decay of the teacher (a plain mean of the weights until then)
        mu: int = 1  # unlabeled samples per labeled sample in a batch
        student_view: str = "weak"  # the student's view of an unlabeled sample: weak | strong (the teacher's is weak)

        def check(self, key: str, recipe) -> None:
            checks.at_least(f"{key}.weight", self.weight, 0)
            checks.within(f"{key}.rampup", self.rampup, 0, 1, note=" (a fraction of train.steps)")
            checks.within(f"{key}.teacher_decay", self.teacher_decay, 0, 1, high_open=True)
            checks.at_least(f"{key}.mu", self.mu, 1, " (unlabeled per labeled sample)")
            checks.one_of(f"{key}.student_view", self.student_view, ("weak", "strong"))

    views = {"x_l": ("labeled", "weak"), "u_student": ("unlabeled", "weak"), "u_teacher": ("unlabeled", "weak")}

    def __init__(self, model, train_cfg):
        super().__init__(model, train_cfg)
        self.views = {**type(self).views, "u_student": ("unlabeled", self.cfg.student_view)}
        self.teacher = ema_model(model, self.cfg.teacher_decay, warmup=True)

    def weight(self, step: int) -> float:
        return self.cfg.weight * sigmoid_rampup(step, int(self.cfg.rampup * self.train_cfg.steps))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        b = len(batch["x_l"])
        logits = self.run_model(batch, "x_l", "u_student")
        supervised = F.cross_entropy(logits[:b], batch["y_l"])
        with torch.no_grad(), batch_statistics(self.teacher):
            teacher_logits = self.teacher(batch["u_teacher"])
        cons = consistency_loss(logits[b:], teacher_logits)
        w = self.weight(self.step)
        return supervised + w * cons, {"cons": cons.detach(), "w": w}

    has_teacher = True

    def teacher_model(self) -> nn.Module:
        return self.teacher.module

    def after_step(self, step: int) -> None:
        self.teacher.update_parameters(self.model)
