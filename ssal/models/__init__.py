"""Models: any timm backbone by name (plus ssal's small nets registered into timm) + a linear head."""

from __future__ import annotations

import timm

from ssal.errors import ConfigError, did_you_mean
from ssal.models import backbones  # noqa: F401  (registers cnn_small, resnet18_cifar, wrn_28_2 into timm)
from ssal.models.heads import Classifier


def check_backbone(name: str) -> None:
    if not timm.is_model(name):
        hint = did_you_mean(name, [*backbones.SMALL_BACKBONES, *timm.list_models()])  # the closest of all
        raise ConfigError(f"unknown model.backbone '{name}'{hint}; use one of {', '.join(backbones.SMALL_BACKBONES)} "
                          "or any name from timm.list_models()")


def build_model(cfg, dataset) -> Classifier:
    """The recipe's ``model`` section on ``dataset`` (input channels, classes, normalisation)."""
    check_backbone(cfg.backbone)
    backbone = timm.create_model(cfg.backbone, pretrained=False, num_classes=0, in_chans=dataset.channels)
    return Classifier(backbone, backbone.num_features, dataset.num_classes, dataset.mean, dataset.std,
                      drop_rate=cfg.drop_rate)
