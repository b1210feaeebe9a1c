"""Small backbones for low-resolution images, registered into timm's own model registry.

After importing this module, ``timm.create_model("cnn_small" | "resnet18_cifar" | "wrn_28_2",
in_chans=..., num_classes=0)`` builds them like any timm model. With ``num_classes=0`` a model
returns its pooled penultimate features (``num_features`` wide), as timm models do.
"""

from __future__ import annotations

import torch
from einops import reduce
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


class _TimmStyle(nn.Module):
    """The part of timm's model interface ssal relies on: features, pooled head, reset_classifier."""

    num_features: int

    def _init_head(self, num_classes: int, drop_rate: float) -> None:
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = reduce(x, "b c h w -> b c", "mean")
        return x if pre_logits else self.fc(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(_TimmStyle):
    """Three blocks of (conv-BN-ReLU) x 2 + max-pool; 128 features. Fast on CPU at 28x28."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, drop_rate: float = 0.0,
                 widths: tuple[int, ...] = (32, 64, 128), **kwargs):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        self.feature_info = []  # timm's convention: the stages' output modules (e.g. for learning loss)
        for i, w in enumerate(widths):
            layers += _conv_bn(c, w) + _conv_bn(w, w) + [nn.MaxPool2d(2, ceil_mode=True)]
            self.feature_info.append({"module": f"features.{len(layers) - 1}", "num_chs": w, "reduction": 2 ** (i + 1)})
            c = w
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self._init_head(num_classes, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class _WideBasic(nn.Module):
    """Pre-activation wide residual block (BN-LeakyReLU-conv twice)."""

    def __init__(self, c_in: int, c_out: int, stride: int, activate_before_residual: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=0.001)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=0.001)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act = nn.LeakyReLU(0.1, inplace=False)
        self.shortcut = None if c_in == c_out and stride == 1 else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act(self.bn1(x))
        if self.shortcut is not None and self.activate_before_residual:
            x = o
        out = self.conv2(self.act(self.bn2(self.conv1(o))))
        return out + (x if self.shortcut is None else self.shortcut(o if self.activate_before_residual else x))


class WideResNet(_TimmStyle):
    """WRN-depth-width for 32x32 inputs, the backbone of the FixMatch/USB benchmarks."""

    def __init__(self, depth: int = 28, widen_factor: int = 2, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, **kwargs):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WideResNet depth must be 6n + 4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        self.feature_info = []  # timm's convention: the stages' output modules (e.g. for learning loss)
        for g, stride in enumerate((1, 2, 2)):
            for i in range(n):
                blocks.append(_WideBasic(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                                         stride if i == 0 else 1, activate_before_residual=(g == 0 and i == 0)))
            if g < 2:  # the last group's output is the features after the final BN and activation
                self.feature_info.append({"module": f"blocks.{len(blocks) - 1}", "num_chs": widths[g + 1],
                                          "reduction": 2 ** g})
        self.feature_info.append({"module": "act", "num_chs": widths[-1], "reduction": 4})
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[-1], momentum=0.001)
        self.act = nn.LeakyReLU(0.1)
        self.num_features = widths[-1]
        self._init_head(num_classes, drop_rate)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.blocks(self.conv1(x))))


def _kwargs(kwargs: dict, pretrained: bool, name: str) -> dict:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; use pretrain.method to pretrain it")
    return {k: v for k, v in kwargs.items() if k not in _TIMM_ONLY_KWARGS}


@register_model
def cnn_small(pretrained: bool = False, **kwargs) -> SmallCNN:
    return SmallCNN(**_kwargs(kwargs, pretrained, "cnn_small"))


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> ResNet:
    """timm's ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32x32 inputs."""
    kw = _kwargs(kwargs, pretrained, "resnet18_cifar")
    in_chans = kw.pop("in_chans", 3)
    model = ResNet(block=BasicBlock, layers=(2, 2, 2, 2), in_chans=in_chans, **kw)
    model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_model
def wrn_28_2(pretrained: bool = False, **kwargs) -> WideResNet:
    return WideResNet(depth=28, widen_factor=2, **_kwargs(kwargs, pretrained, "wrn_28_2"))


SMALL_BACKBONES = ("cnn_small", "resnet18_cifar", "wrn_28_2")
