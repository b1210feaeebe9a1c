"""Augmented views of uint8 image batches, drawn independently per sample.

Vectorised over the batch (one gather, no per-sample Python loop). Every draw of a sample comes
from its own key (:mod:`ssal.rng`), so a sample's view depends only on its key: not on the batch
it is in, nor on which process or DataLoader worker made it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ssal import rng


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 in [0, 1]; float images (already in [0, 1]) as float32."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def random_translate(x: torch.Tensor, max_shift: int, keys: torch.Tensor) -> torch.Tensor:
    """Shift each image by its own (dy, dx) in [-max_shift, max_shift], reflect-padding the border."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x.float() if x.dtype == torch.uint8 else x, (max_shift,) * 4, mode="reflect").to(x.dtype)
    dy = rng.randint(keys, "dy", 0, 2 * max_shift + 1)
    dx = rng.randint(keys, "dx", 0, 2 * max_shift + 1)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :]  # [B, 1, W]
    out = padded[torch.arange(b)[:, None, None], :, rows, cols]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, keys: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    flip = rng.uniform(keys, "hflip") < p
    if flip.any():
        x = x.clone()
        x[flip] = x[flip].flip(-1)
    return x


def weak(x: torch.Tensor, keys: torch.Tensor, hflip: bool, translate: float = 0.125) -> torch.Tensor:
    """The weak view: horizontal flip (where the data set allows it) + translation up to 12.5 %."""
    shift = int(round(translate * min(x.shape[-2:])))
    if hflip:
        x = random_hflip(x, keys)
    return to_float(random_translate(x, shift, keys))


# ----------------------------------------------------------------------------- strong view
# RandAugment with a random magnitude per sample and op (as in FixMatch) + Cutout, vectorised:
# each op runs once on the sub-batch of samples that drew it, with per-sample magnitudes.
# Hand-written because torchvision's RandAugment draws one op and magnitude per call, so
# per-sample draws would mean a Python loop over images (measured: ~0.35 ms per image with
# Cutout, about 20x this; scripts/bench_engine.py).


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """b + factor * (a - b) per sample (PIL's ImageEnhance), clamped to [0, 1]."""
    return (b + factor.view(-1, 1, 1, 1) * (a - b)).clamp_(0.0, 1.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _signed(m: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    sign = rng.randint(keys, "sign", 0, 2).to(m.dtype).mul_(2).sub_(1)
    return m * sign


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Per-sample affine warp (theta [B, 2, 3] in normalised coordinates), zero fill."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _identity_theta(n: int) -> torch.Tensor:
    return torch.eye(2, 3).repeat(n, 1, 1)


def _rotate(x, m, k):
    a = _signed(m, k) * math.radians(30.0)
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    return _affine(x, theta)


def _shear(axis: int):
    def op(x, m, k):
        theta = _identity_theta(len(x))
        theta[:, axis, 1 - axis] = _signed(m, k) * 0.3
        return _affine(x, theta)
    return op


def _translate(axis: int):
    def op(x, m, k):
        theta = _identity_theta(len(x))
        theta[:, axis, 2] = _signed(m, k) * 0.3 * 2.0  # up to 30 % of the side (normalised coords span 2)
        return _affine(x, theta)
    return op


def _autocontrast(x, m, k):
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(hi > lo, 1.0 / (hi - lo).clamp_min(1e-8), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x).clamp_(0.0, 1.0)


def _equalize(x, m, k):
    u8 = x.mul(255.0).round_().to(torch.uint8)
    return TF.equalize(u8).float().div_(255.0)


def _posterize(x, m, k):
    shift = (m * 4).round().to(torch.int64).view(-1, 1, 1, 1)  # drop 0..4 low bits
    step = (2 ** shift).float()
    return torch.floor(x.mul(255.0).round_() / step) * step / 255.0


def _solarize(x, m, k):
    threshold = (1.0 - m).view(-1, 1, 1, 1)
    return torch.where(x >= threshold, 1.0 - x, x)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre 5, the rest 1, over 13) on the interior pixels: as a sum of
    shifted slices, elementwise, so a sample's result does not depend on its batch (a conv2d's
    does, by a few ulps, on 1-channel CPU images)."""
    h, w = x.shape[-2:]
    total = 4.0 * x[..., 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            total = total + x[..., dy:h - 2 + dy, dx:w - 2 + dx]
    return total / 13.0


def _sharpness(x, m, k):
    blurred = x.clone()
    blurred[..., 1:-1, 1:-1] = _smooth(x)  # border pixels unchanged (as PIL)
    return _blend(x, blurred, 1.0 + _signed(m, k) * 0.9)


RAND_AUGMENT_OPS = {
    "identity": lambda x, m, k: x,
    "autocontrast": _autocontrast,
    "brightness": lambda x, m, k: _blend(x, torch.zeros_like(x), 1.0 + _signed(m, k) * 0.9),
    "color": lambda x, m, k: _blend(x, _gray(x).expand_as(x), 1.0 + _signed(m, k) * 0.9),
    "contrast": lambda x, m, k: _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x),
                                       1.0 + _signed(m, k) * 0.9),
    "equalize": _equalize,
    "posterize": _posterize,
    "rotate": _rotate,
    "sharpness": _sharpness,
    "shear_x": _shear(0),
    "shear_y": _shear(1),
    "solarize": _solarize,
    "translate_x": _translate(0),
    "translate_y": _translate(1),
}


def rand_augment(x: torch.Tensor, keys: torch.Tensor, num_ops: int = 2) -> torch.Tensor:
    """RandAugment on float images in [0, 1]: each sample draws ``num_ops`` ops uniformly and a
    magnitude uniformly in [0, 1] for each (the op maps it to its own range)."""
    ops = list(RAND_AUGMENT_OPS.values())
    for j in range(num_ops):
        op_keys = rng.derive(keys, f"op{j}")
        choice = rng.randint(op_keys, "choice", 0, len(ops))
        magnitude = rng.uniform(op_keys, "magnitude")
        out = x.clone()
        for i, op in enumerate(ops):
            idx = (choice == i).nonzero().flatten()
            if len(idx):
                out[idx] = op(x[idx], magnitude[idx], op_keys[idx])
        x = out
    return x


def cutout(x: torch.Tensor, keys: torch.Tensor, max_size: float = 0.5, fill: float = 0.5) -> torch.Tensor:
    """Fill one square per sample, side drawn in (0, max_size] of the image side, centre anywhere
    in the image (the square may cross the border)."""
    b, _, h, w = x.shape
    side = rng.uniform(keys, "cutout_side") * max_size * min(h, w)
    cy = rng.uniform(keys, "cutout_y") * h
    cx = rng.uniform(keys, "cutout_x") * w
    rows = torch.arange(h).view(1, h, 1) + 0.5
    cols = torch.arange(w).view(1, 1, w) + 0.5
    half = (side / 2).view(b, 1, 1)
    box = ((rows - cy.view(b, 1, 1)).abs() <= half) & ((cols - cx.view(b, 1, 1)).abs() <= half)
    return x.masked_fill(box.unsqueeze(1), fill)


def strong(x: torch.Tensor, keys: torch.Tensor, hflip: bool) -> torch.Tensor:
    """The strong view: the weak view + RandAugment (2 ops, random magnitudes) + Cutout, per sample."""
    return cutout(rand_augment(weak(x, keys, hflip), keys), keys)


# name -> view(x uint8 [B, C, H, W], keys int64 [B], hflip) -> float [B, C, H, W] in [0, 1]
VIEWS = {
    "none": lambda x, keys, hflip: to_float(x),
    "weak": weak,
    "strong": strong,
}
