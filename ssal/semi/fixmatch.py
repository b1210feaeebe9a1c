"""FixMatch (Sohn et al. 2020): cross-entropy on labeled weak views plus, on unlabeled samples,
cross-entropy of the strong view's prediction against the weak view's confident pseudo-label."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssal.semi.base import OBJECTIVES, Objective


def fixmatch_loss(logits_l: torch.Tensor, y_l: torch.Tensor, logits_uw: torch.Tensor, logits_us: torch.Tensor,
                  threshold: float, lambda_u: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mask, pseudo-labels): CE(l, y) + lambda_u * mean(1[max q >= threshold] * CE(us, argmax q)),
    q = softmax(uw) without gradient."""
    supervised = F.cross_entropy(logits_l, y_l)
    with torch.no_grad():
        confidence, pseudo = F.softmax(logits_uw.detach().float(), dim=1).max(dim=1)
        mask = (confidence >= threshold).float()
    unsupervised = (F.cross_entropy(logits_us, pseudo, reduction="none") * mask).mean()
    return supervised + lambda_u * unsupervised, mask, pseudo


@OBJECTIVES.register("fixmatch")
class FixMatch(Objective):
    @dataclass
    class Config:
        threshold: float = 0.95  # confidence a pseudo-label needs (tau)
        lambda_u: float = 1.0  # weight of the unlabeled loss
        mu: int = 7  # unlabeled samples per labeled sample in a batch

    views = {"x_l": ("labeled", "weak"), "u_w": ("unlabeled", "weak"), "u_s": ("unlabeled", "strong")}

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        b, n_u = len(batch["x_l"]), len(batch["u_w"])
        # one forward pass over all three parts: BatchNorm sees them together, as in the paper
        logits = self.model(torch.cat([batch["x_l"], batch["u_w"], batch["u_s"]]))
        l_x, l_uw, l_us = logits.split([b, n_u, n_u])
        loss, mask, pseudo = fixmatch_loss(l_x, batch["y_l"], l_uw, l_us, self.cfg.threshold, self.cfg.lambda_u)
        logs = {"mask": mask.mean()}
        if "y_u" in batch:  # simulation only: how often the confident pseudo-labels are right
            right = (pseudo == batch["y_u"]).float()
            logs["pseudo_acc"] = (right * mask).sum() / mask.sum().clamp_min(1.0)
        return loss, logs
