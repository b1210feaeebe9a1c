"""The classifier ssal trains: a timm backbone (pooled features) + a separate linear head."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """uint8/float images -> logits, with the penultimate ``features`` exposed.

    Inputs are images scaled to [0, 1]; the dataset's normalisation happens here, so every
    stage (training, views, inference) passes plain [0, 1] tensors.
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int,
                 mean: tuple[float, ...], std: tuple[float, ...], drop_rate: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        h = self.features(x)
        logits = self.head(self.dropout(h))
        return (logits, h) if return_features else logits
