from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ssal.registry import Registry

OBJECTIVES = Registry("objective")


class Objective:
    """The loss of one fine-tuning method.

    ``views`` declares what a batch holds: name -> (source, view), source ``labeled`` or
    ``unlabeled``, view a name of ``ssal.data.views.VIEWS``. The engine builds that batch (plus
    ``y_l``, the labels of the labeled samples) and calls ``loss(batch)``. ``self.model`` is the
    model being trained (as prepared by the engine). Extra modules (an EMA teacher, a second
    head) go in ``modules``; the engine checkpoints them.
    """

    Config: ClassVar[type | None] = None  # the method's own recipe sub-section (train.<name>)
    views: ClassVar[dict[str, tuple[str, str]]] = {"x_l": ("labeled", "weak")}
    uses_unlabeled: ClassVar[bool] = False

    def __init__(self, model: nn.Module, train_cfg: Any):
        self.model = model
        self.train_cfg = train_cfg
        self.cfg = getattr(train_cfg, type(self).registry_name, None)
        self.modules: dict[str, nn.Module] = {}

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after each optimizer step (EMA teachers update here)."""
