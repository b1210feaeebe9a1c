"""Temporal output discrepancy as a semi-supervised objective (Huang et al. 2021): cross-entropy on
labeled samples plus w times the discrepancy between the model's outputs and those of its EMA
(its own recent past) on labeled and unlabeled samples. With ``aux_head`` (as in the paper) a
second linear head on the same features is pulled towards both the model's outputs and the EMA's,
which regularises the shared features without dragging the classifier head itself."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssal import checks
from ssal.models.ema import batch_statistics, ema_model
from ssal.semi.base import OBJECTIVES, Objective


def output_discrepancy_loss(logits: torch.Tensor, ema_logits: torch.Tensor,
                            aux_logits: torch.Tensor | None = None) -> torch.Tensor:
    """MSE(logits, ema) without an auxiliary head; else MSE(logits, aux) + MSE(aux, ema).
    Means over samples and classes; no gradient to the EMA."""
    ema_logits = ema_logits.detach().float()
    if aux_logits is None:
        return F.mse_loss(logits.float(), ema_logits)
    return F.mse_loss(logits.float(), aux_logits.float()) + F.mse_loss(aux_logits.float(), ema_logits)


@OBJECTIVES.register("tod")
class TOD(Objective):
    @dataclass
    class Config:
        weight: float = 0.02  # w, the weight of the discrepancy terms (the paper's, at CIFAR scale)
        ema_decay: float = 0.999  # alpha = min(1 - 1/(step + 1), ema_decay)
        aux_head: bool = True  # a second linear head takes the discrepancy terms (as in the paper)
        mu: int = 1  # unlabeled samples per labeled sample in a batch
        student_view: str = "weak"  # the model's view of an unlabeled sample: weak | strong (the EMA's is weak)

        def check(self, key: str, recipe) -> None:
            checks.at_least(f"{key}.weight", self.weight, 0)
            checks.within(f"{key}.ema_decay", self.ema_decay, 0, 1, high_open=True)
            checks.at_least(f"{key}.mu", self.mu, 1, " (unlabeled per labeled sample)")
            checks.one_of(f"{key}.student_view", self.student_view, ("weak", "strong"))

    views = {"x_l": ("labeled", "weak"), "u": ("unlabeled", "weak")}

    def __init__(self, model, train_cfg):
        super().__init__(model, train_cfg)
        if self.cfg.student_view != "weak":
            self.views = {**type(self).views, "u_student": ("unlabeled", self.cfg.student_view)}
        self.ema = ema_model(model, self.cfg.ema_decay, warmup=True)
        head = model.head
        self.aux = nn.Linear(head.in_features, head.out_features) if self.cfg.aux_head else None

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        b = len(batch["x_l"])
        x = torch.cat([batch["x_l"], batch["u"]])
        student = "u_student" if "u_student" in batch else "u"
        logits, h = self.run_model(batch, "x_l", student, return_features=True)
        aux = self.aux(h) if self.aux is not None else None
        with torch.no_grad(), batch_statistics(self.ema):
            ema_logits = self.ema(x)
        supervised = F.cross_entropy(logits[:b], batch["y_l"])
        # the labeled and the unlabeled parts each contribute their own mean, as in the paper
        parts = [slice(0, b), slice(b, None)]
        disc = sum(output_discrepancy_loss(logits[p], ema_logits[p], None if aux is None else aux[p]) for p in parts)
        return supervised + self.cfg.weight * disc, {"disc": disc.detach()}

    has_teacher = True

    def teacher_model(self) -> nn.Module:
        return self.ema.module

    def after_step(self, step: int) -> None:
        self.ema.update_parameters(self.model)
