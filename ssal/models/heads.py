"""The classifier ssal trains: a timm backbone (pooled features) + a separate linear head."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ssal import rng


class SampleDropout(nn.Dropout):
    """Dropout whose mask for each sample comes from that sample's key (:mod:`ssal.rng`) while
    :func:`keyed_dropout` provides keys, so a sample's mask does not depend on the batch it is in
    or on the number of processes; without keys, plain dropout."""

    keys: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return h
        if self.keys is None or len(self.keys) != len(h):
            return super().forward(h)
        keep = rng.uniform(self.keys.to(h.device), "dropout", tuple(h.shape[1:])) >= self.p
        return h * keep.to(h.dtype) / (1.0 - self.p)


@contextlib.contextmanager
def keyed_dropout(module: nn.Module, keys: torch.Tensor | None) -> Iterator[None]:
    """Within the block, every :class:`SampleDropout` of ``module`` draws sample i's mask from ``keys[i]``."""
    layers = [m for m in module.modules() if isinstance(m, SampleDropout)]
    for m in layers:
        m.keys = keys
    try:
        yield
    finally:
        for m in layers:
            m.keys = None


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
        self.dropout = SampleDropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        h = self.features(x)
        logits = self.head(self.dropout(h))
        return (logits, h) if return_features else logits
