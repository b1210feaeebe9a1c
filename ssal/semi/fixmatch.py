"""FixMatch (Sohn et al. 2020): cross-entropy on labeled weak views plus, on unlabeled samples,
cross-entropy of the strong view's prediction against the weak view's confident pseudo-label.

"Confident" means a fixed threshold tau, or (``threshold_mode: adaptive``) self-adaptive class
thresholds (the SAT of FreeMatch, Wang et al. 2023): a running mean of the model's top
confidence on unlabeled samples, scaled per class by that class's running mean probability
relative to the largest one, so that classes the model is less sure of get lower thresholds."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ssal import checks
from ssal.semi.base import OBJECTIVES, Objective


def fixmatch_loss(logits_l: torch.Tensor, y_l: torch.Tensor, logits_uw: torch.Tensor, logits_us: torch.Tensor,
                  threshold: float | torch.Tensor, lambda_u: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mask, pseudo-labels): CE(l, y) + lambda_u * mean(1[max q >= threshold] * CE(us, argmax q)),
    q = softmax(uw) without gradient. ``threshold`` is one number or one per class (indexed by argmax q)."""
    supervised = F.cross_entropy(logits_l, y_l)
    with torch.no_grad():
        confidence, pseudo = F.softmax(logits_uw.detach().float(), dim=1).max(dim=1)
        if isinstance(threshold, torch.Tensor):
            threshold = threshold.to(confidence)[pseudo]
        mask = (confidence >= threshold).float()
    unsupervised = (F.cross_entropy(logits_us, pseudo, reduction="none") * mask).mean()
    return supervised + lambda_u * unsupervised, mask, pseudo


def adaptive_thresholds(global_confidence: torch.Tensor, class_probs: torch.Tensor) -> torch.Tensor:
    """Per-class thresholds global_confidence * class_probs / max(class_probs)."""
    return global_confidence * class_probs / class_probs.max()


def update_adaptive_state(global_confidence: torch.Tensor, class_probs: torch.Tensor, probs: torch.Tensor,
                          momentum: float) -> None:
    """In place: global_confidence <- m * it + (1 - m) * mean top probability of ``probs`` (N x C),
    class_probs <- m * it + (1 - m) * mean of ``probs`` over samples; batch means are averaged over
    processes first, so every process keeps the same state."""
    stats = torch.cat([probs.max(dim=1).values.mean().view(1), probs.mean(dim=0)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats)
        stats /= dist.get_world_size()
    global_confidence.mul_(momentum).add_(stats[0], alpha=1 - momentum)
    class_probs.mul_(momentum).add_(stats[1:], alpha=1 - momentum)


@OBJECTIVES.register("fixmatch")
class FixMatch(Objective):
    @dataclass
    class Config:
        threshold: float = 0.95  # confidence a pseudo-label needs (tau), with threshold_mode fixed
        lambda_u: float = 1.0  # weight of the unlabeled loss
        mu: int = 7  # unlabeled samples per labeled sample in a batch
        threshold_mode: str = "fixed"  # fixed: tau | adaptive: self-adaptive class thresholds (module docstring)
        adaptive_momentum: float = 0.999  # momentum of the running means behind the adaptive thresholds

        def check(self, key: str, recipe) -> None:
            checks.within(f"{key}.threshold", self.threshold, 0, 1)
            checks.at_least(f"{key}.lambda_u", self.lambda_u, 0)
            checks.at_least(f"{key}.mu", self.mu, 1, " (unlabeled per labeled sample)")
            checks.one_of(f"{key}.threshold_mode", self.threshold_mode, ("fixed", "adaptive"))
            checks.within(f"{key}.adaptive_momentum", self.adaptive_momentum, 0, 1, high_open=True)

    views = {"x_l": ("labeled", "weak"), "u_w": ("unlabeled", "weak"), "u_s": ("unlabeled", "strong")}

    def __init__(self, model, train_cfg):
        super().__init__(model, train_cfg)
        if self.cfg.threshold_mode == "adaptive":
            c = model.head.out_features  # both running means start at 1 / C (no preference, no confidence)
            self.register_buffer("global_confidence", torch.tensor(1.0 / c))
            self.register_buffer("class_probs", torch.full((c,), 1.0 / c))

    def threshold(self, logits_uw: torch.Tensor) -> float | torch.Tensor:
        """The confidence each pseudo-label needs in this step (the adaptive state updated by this batch)."""
        if self.cfg.threshold_mode != "adaptive":
            return self.cfg.threshold
        with torch.no_grad():
            update_adaptive_state(self.global_confidence, self.class_probs,
                                  F.softmax(logits_uw.detach().float(), dim=1), self.cfg.adaptive_momentum)
            return adaptive_thresholds(self.global_confidence, self.class_probs)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        b, n_u = len(batch["x_l"]), len(batch["u_w"])
        # one forward pass over all three parts: BatchNorm sees them together, as in the paper
        logits = self.run_model(batch, "x_l", "u_w", "u_s")
        l_x, l_uw, l_us = logits.split([b, n_u, n_u])
        threshold = self.threshold(l_uw)
        loss, mask, pseudo = fixmatch_loss(l_x, batch["y_l"], l_uw, l_us, threshold, self.cfg.lambda_u)
        logs = {"mask": mask.mean()}
        if isinstance(threshold, torch.Tensor):
            logs["tau_min"], logs["tau_max"] = threshold.min(), threshold.max()
        if "y_u" in batch:  # simulation only: how often the confident pseudo-labels are right
            right = (pseudo == batch["y_u"]).float()
            logs["pseudo_acc"] = (right * mask).sum() / mask.sum().clamp_min(1.0)
        return loss, logs
