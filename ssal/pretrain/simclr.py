"""SimCLR: two views per image, a projection head and the NT-Xent loss (lightly's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform

from ssal import checks
from ssal.pretrain.base import PRETRAINERS, Pretrainer, blur_kernel, tensor_native, view_options


@PRETRAINERS.register("simclr")
class SimCLR(Pretrainer):
    @dataclass
    class Config:
        temperature: float = 0.5  # NT-Xent temperature
        projection_dim: int = 128
        hidden_dim: int = 512

        def check(self, key: str, recipe) -> None:
            checks.positive(f"{key}.temperature", self.temperature)
            checks.at_least(f"{key}.projection_dim", self.projection_dim, 1)
            checks.at_least(f"{key}.hidden_dim", self.hidden_dim, 1)

    def __init__(self, encoder, cfg, data):
        super().__init__(encoder, cfg, data)
        c = self.method_cfg
        self.projection = SimCLRProjectionHead(encoder.num_features, c.hidden_dim, c.projection_dim)
        # negatives from every process: the effective batch is batch_size x processes
        self.criterion = NTXentLoss(temperature=c.temperature, gather_distributed=True)
        view = tensor_native(SimCLRTransform(**view_options(cfg, data)).transforms[0], blur_kernel(cfg, data))
        self.transform = lambda img: [view(img), view(img)]

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        z0 = self.projection(self.embed(batch["view0"]))
        z1 = self.projection(self.embed(batch["view1"]))
        return self.criterion(z0, z1), {}
