"""How the engine optimises: SGD with a learning-rate schedule, its numbers given resolved.

:class:`Optim` holds what a recipe section decided (the engine reads no recipe itself); the
section's name only serves the messages that tell a user which key to change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Optim:
    """``steps`` optimizer steps on global batches of ``batch_size`` labeled samples: SGD at ``lr``
    (times ``backbone_lr_scale`` on the model's backbone) under ``schedule`` (cosine | fixmatch_cosine |
    constant). ``section`` is the recipe section the numbers came from, named in error messages."""

    steps: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    backbone_lr_scale: float = 1.0
    section: str = "train"

    @classmethod
    def from_train(cls, train: Any) -> Optim:
        """The optimisation a recipe's ``train`` section asks for."""
        return cls(train.steps, train.batch_size, train.lr, train.momentum, train.nesterov, train.weight_decay,
                   train.schedule, train.backbone_lr_scale, "train")


def sgd(model: nn.Module, optim: Optim, lr_scales: dict[str, float] | None = None):
    """SGD over the trainable parameters, and its schedule; ``lr_scales`` maps a parameter-name prefix
    to a factor on ``optim.lr`` for the parameters under it (e.g. a gentler rate for a pretrained backbone)."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((f for prefix, f in (lr_scales or {}).items() if name.startswith(prefix)), 1.0)
            groups.setdefault(scale, []).append(p)
    lr, momentum = optim.lr, optim.momentum
    optimizer = torch.optim.SGD([{"params": ps, "lr": lr * f} for f, ps in groups.items()], lr=lr,
                                momentum=momentum, nesterov=optim.nesterov and momentum > 0,
                                weight_decay=optim.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(optim.schedule, optim.steps))


def schedule(name: str, steps: int) -> Callable[[int], float]:
    """The factor on the base learning rate at step k of ``steps``."""
    if name == "cosine":
        return lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, steps) / steps))
    if name == "fixmatch_cosine":  # cos(7 pi k / 16 K): ends at ~0.2 of the base rate (Sohn et al. 2020)
        return lambda k: math.cos(7.0 * math.pi * min(k, steps) / (16.0 * steps))
    if name == "constant":
        return lambda k: 1.0
    raise ValueError(f"unknown schedule '{name}'")
