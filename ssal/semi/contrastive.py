"""Contrastive fine-tuning: cross-entropy on labeled weak views, a supervised contrastive loss on
two views of each labeled sample (same-class samples are positives) and lightly's NT-Xent on two
strong views of each unlabeled sample, through one projection head. Its normalised projections
(``embed``) are the contrastive features selection strategies can read."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.utils import dist

from ssal import checks
from ssal.semi.base import OBJECTIVES, Objective


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the L_out form) of L2-normalised ``z`` [N, D].

    For anchor i with positives P(i) = {p != i : y_p = y_i}:
    -1/|P(i)| sum_p log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) ), averaged over the
    anchors that have a positive. Under several processes the anchors of this process are compared
    with the samples of all of them, and the mean is over all anchors (as the processes' gradients
    are averaged, this process's sum is scaled by world / #anchors): the loss of the global batch.
    Written here because lightly has no supervised contrastive loss.
    """
    n = len(z)
    world, offset = dist.world_size(), dist.rank() * n
    z_all = torch.cat(dist.gather(z)) if world > 1 else z
    labels_all = torch.cat(dist.gather(labels)) if world > 1 else labels
    sim = (z @ z_all.T).float() / temperature
    self_mask = torch.zeros_like(sim, dtype=torch.bool)
    rows = torch.arange(n, device=z.device)
    self_mask[rows, offset + rows] = True
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (labels[:, None] == labels_all[None, :]) & ~self_mask
    n_pos = positives.sum(1)
    has = n_pos > 0
    anchors = has.sum().float()
    if world > 1:
        torch.distributed.all_reduce(anchors)
    if float(anchors) == 0:
        return z.sum() * 0.0  # no anchor has a positive: nothing to pull together
    mean_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)[has] / n_pos[has]
    return -mean_log_prob.sum() * (world / anchors)


@OBJECTIVES.register("contrastive")
class Contrastive(Objective):
    @dataclass
    class Config:
        temperature: float = 0.5  # of both contrastive losses
        supcon_weight: float = 1.0
        ntxent_weight: float = 1.0
        proj_dim: int = 128
        mu: int = 1  # unlabeled samples per labeled sample in a batch

        def check(self, key: str, recipe) -> None:
            checks.positive(f"{key}.temperature", self.temperature)
            checks.at_least(f"{key}.supcon_weight", self.supcon_weight, 0)
            checks.at_least(f"{key}.ntxent_weight", self.ntxent_weight, 0)
            checks.at_least(f"{key}.proj_dim", self.proj_dim, 1)
            checks.at_least(f"{key}.mu", self.mu, 1, " (unlabeled per labeled sample)")

    views = {"x_l": ("labeled", "weak"), "x_l2": ("labeled", "strong"),
             "u_a": ("unlabeled", "strong"), "u_b": ("unlabeled", "strong")}

    def __init__(self, model, train_cfg):
        super().__init__(model, train_cfg)
        d = model.num_features
        self.projection = SimCLRProjectionHead(d, d, self.cfg.proj_dim)
        self.ntxent = NTXentLoss(temperature=self.cfg.temperature, gather_distributed=True)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised projection features of images in [0, 1]."""
        return F.normalize(self.projection(self.model.features(x)), dim=1)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        b, n_u = len(batch["x_l"]), len(batch["u_a"])
        logits, h = self.run_model(batch, "x_l", "x_l2", "u_a", "u_b", return_features=True)
        z = F.normalize(self.projection(h), dim=1)
        ce = F.cross_entropy(logits[:b], batch["y_l"])
        z_l = z[:2 * b]
        supcon = supcon_loss(z_l, torch.cat([batch["y_l"], batch["y_l"]]), self.cfg.temperature)
        z_u = rearrange(z[2 * b:], "(v n) d -> v n d", v=2, n=n_u)
        ntxent = self.ntxent(z_u[0], z_u[1])
        loss = ce + self.cfg.supcon_weight * supcon + self.cfg.ntxent_weight * ntxent
        return loss, {"ce": ce.detach(), "supcon": supcon.detach(), "ntxent": ntxent.detach()}
