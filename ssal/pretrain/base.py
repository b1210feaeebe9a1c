"""What a self-supervised pretraining method is: a module that owns the encoder, its heads and
its loss, plus the per-sample view transform it trains on (lightly's, adapted to the data set).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightly.transforms.gaussian_blur import GaussianBlur
from lightly.transforms.solarize import RandomSolarization
from torch import nn
from torchvision.transforms import v2 as T

from ssal.models.heads import Classifier
from ssal.registry import Registry

PRETRAINERS = Registry("pretraining method")

BLUR_MIN_SIZE = 33  # no Gaussian blur at <= 32 px: it wipes out most of a small image's detail


@PRETRAINERS.register("none")
class NoPretraining:
    """Start fine-tuning from random initialisation."""

    Config = None


class Pretrainer(nn.Module):
    """A pretraining method. ``forward(batch) -> (loss, logs)`` on a batch of views
    ``{"view0": [B, C, H, W], "view1": ...}`` in [0, 1]; the engine optimises it like any model.

    ``encoder`` is the :class:`~ssal.models.heads.Classifier` that fine-tuning will start from;
    only its ``backbone`` is trained and kept (the classifier head is frozen here and replaced
    by a fresh one in every round). ``transform`` maps one uint8 ``[C, H, W]`` image to its list
    of views; the engine applies it per sample.
    """

    Config: ClassVar[type | None] = None  # the method's own recipe sub-section (pretrain.<name>)

    def __init__(self, encoder: Classifier, cfg: Any, data: Any):
        super().__init__()
        self.encoder = encoder
        self.encoder.head.requires_grad_(False)  # unused here; frozen so DDP finds no unused grads
        self.cfg = cfg
        self.method_cfg = getattr(cfg, type(self).registry_name, None)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's pooled features: what fine-tuning, kNN and selection see."""
        return self.encoder.features(x)

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after every optimizer step (momentum encoders update here)."""


def view_options(cfg: Any, data: Any) -> dict[str, Any]:
    """Keyword arguments of lightly's view transforms for this data set and recipe.

    Flips only where they keep the label, no colour-only jitter on grayscale images, no blur at
    <= 32 px, and no normalisation (the model normalises its [0, 1] inputs itself). The crops are
    resized to ``cfg.view_size`` px when it is set: a convolutional backbone's cost grows with the
    pixel count, so e.g. 20 px views of 28 px images buy ~1.7x the epochs per CPU-minute, while
    the encoder still sees whole images at their own size when fine-tuned and evaluated.
    """
    gray = data.channels == 1
    size = view_size(cfg, data)
    small = min(size) < BLUR_MIN_SIZE
    opts: dict[str, Any] = dict(input_size=size, min_scale=cfg.min_scale,
                                cj_strength=cfg.cj_strength, hf_prob=0.5 if data.hflip else 0.0, normalize=None)
    if gray:
        opts.update(cj_sat=0.0, cj_hue=0.0, random_gray_scale=0.0)
    if small:
        opts.update(gaussian_blur=0.0)
    return opts


def view_size(cfg: Any, data: Any) -> tuple[int, int]:
    """(height, width) of the views: ``pretrain.view_size`` squared, or the images' own size."""
    return tuple(data.image_size) if cfg.view_size is None else (cfg.view_size, cfg.view_size)


def tensor_native(view: Any, blur_kernel: int) -> Any:
    """Make a lightly view transform run on uint8 tensors end to end.

    lightly's ``GaussianBlur`` and ``RandomSolarization`` go through PIL (the blur converts every
    image to PIL and back even when it does not blur; solarization rejects tensors). They are
    swapped for torchvision's tensor ops with the same probabilities, or dropped when their
    probability is 0; every other step is lightly's, unchanged.
    """
    steps = []
    for t in view.transform.transforms:
        if isinstance(t, GaussianBlur):
            if t.prob > 0:
                steps.append(T.RandomApply([T.GaussianBlur(blur_kernel, sigma=tuple(t.sigmas))], p=t.prob))
        elif isinstance(t, RandomSolarization):
            if t.prob > 0:
                steps.append(T.RandomSolarize(threshold=t.threshold, p=t.prob))
        else:
            steps.append(t)
    view.transform = T.Compose(steps)
    return view


def blur_kernel(cfg: Any, data: Any) -> int:
    k = max(3, int(0.1 * min(view_size(cfg, data))))  # 10 % of the view's side, as in SimCLR
    return k + 1 - k % 2  # odd
