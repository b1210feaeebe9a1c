"""Augmented views of uint8 image batches, drawn independently per sample.

Vectorised over the batch (one gather, no per-sample Python loop), driven by an explicit
``torch.Generator`` so a batch's views depend only on its seed, not on which process or
DataLoader worker made them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 in [0, 1]."""
    return x.float().div_(255.0)


def random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own (dy, dx) in [-max_shift, max_shift], reflect-padding the border."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x.float() if x.dtype == torch.uint8 else x, (max_shift,) * 4, mode="reflect").to(x.dtype)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :]  # [B, 1, W]
    out = padded[torch.arange(b)[:, None, None], :, rows, cols]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < p
    if flip.any():
        x = x.clone()
        x[flip] = x[flip].flip(-1)
    return x


def weak(x: torch.Tensor, generator: torch.Generator, hflip: bool, translate: float = 0.125) -> torch.Tensor:
    """The weak view: horizontal flip (where the data set allows it) + translation up to 12.5 %."""
    shift = int(round(translate * min(x.shape[-2:])))
    if hflip:
        x = random_hflip(x, generator)
    return to_float(random_translate(x, shift, generator))


VIEWS = {
    "none": lambda x, generator, hflip: to_float(x),
    "weak": weak,
}
