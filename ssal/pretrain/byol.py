"""BYOL: an online network predicts a momentum (EMA) target network's projection of the other
view; lightly's heads, loss, momentum update and cosine momentum schedule."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from ssal import checks
from ssal.pretrain.base import PRETRAINERS, Pretrainer, blur_kernel, tensor_native, view_options


@PRETRAINERS.register("byol")
class BYOL(Pretrainer):
    @dataclass
    class Config:
        momentum_start: float = 0.99  # target-network momentum, cosine schedule start -> end
        momentum_end: float = 1.0
        projection_dim: int = 128
        hidden_dim: int = 512

        def check(self, key: str, recipe) -> None:
            checks.require(0 <= self.momentum_start <= self.momentum_end <= 1,
                           f"{key} needs 0 <= momentum_start <= momentum_end <= 1, got {self.momentum_start} "
                           f"and {self.momentum_end}")
            checks.at_least(f"{key}.projection_dim", self.projection_dim, 1)
            checks.at_least(f"{key}.hidden_dim", self.hidden_dim, 1)

    def __init__(self, encoder, cfg, data):
        super().__init__(encoder, cfg, data)
        c = self.method_cfg
        self.projection = BYOLProjectionHead(encoder.num_features, c.hidden_dim, c.projection_dim)
        self.prediction = BYOLPredictionHead(c.projection_dim, c.hidden_dim, c.projection_dim)
        # the target: a momentum copy of the online backbone + projection, never trained directly
        self.target_backbone = copy.deepcopy(encoder.backbone)
        self.target_projection = copy.deepcopy(self.projection)
        deactivate_requires_grad(self.target_backbone)
        deactivate_requires_grad(self.target_projection)
        self.criterion = NegativeCosineSimilarity()
        opts, k = view_options(cfg, data), blur_kernel(cfg, data)
        t = BYOLTransform(BYOLView1Transform(**opts), BYOLView2Transform(**opts))
        v1, v2 = (tensor_native(v, k) for v in t.transforms)
        self.transform = lambda img: [v1(img), v2(img)]
        self.momentum = c.momentum_start

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.target_backbone((x - self.encoder.mean) / self.encoder.std)
            return self.target_projection(h)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x0, x1 = batch["view0"], batch["view1"]
        p0 = self.prediction(self.projection(self.embed(x0)))
        p1 = self.prediction(self.projection(self.embed(x1)))
        loss = 0.5 * (self.criterion(p0, self._target(x1)) + self.criterion(p1, self._target(x0)))
        return loss, {"momentum": self.momentum}

    def after_step(self, step: int, total_steps: int) -> None:
        """target <- m * target + (1 - m) * online, m on a cosine schedule from start to end."""
        self.momentum = cosine_schedule(step, total_steps, self.method_cfg.momentum_start, self.method_cfg.momentum_end)
        update_momentum(self.encoder.backbone, self.target_backbone, self.momentum)
        update_momentum(self.projection, self.target_projection, self.momentum)

    def train(self, mode: bool = True) -> nn.Module:
        super().train(mode)
        self.target_backbone.train(mode)  # BN of the target uses batch statistics, as the online one
        return self
