"""BAIT: the batch that best shrinks the Fisher-weighted error of the last layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ssal import checks
from ssal.errors import ConfigError
from ssal.select import functional as Fn
from ssal.select.base import STRATEGIES, Signals, Strategy
from ssal.select.signals import Features, Probs


def available_memory() -> int:
    """Bytes this machine can still give (MemAvailable of /proc/meminfo; elsewhere, a generous 16 GiB)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 16 * 2**30


def bait_memory(num_features: int, num_classes: int) -> int:
    """Bytes :func:`ssal.select.functional.bait` holds at its peak: about eight (C D)^2 float64 matrices."""
    e = num_features * num_classes
    return 8 * e * e * 8


@STRATEGIES.register("bait")
class BAIT(Strategy):
    """Fisher-information batch selection (Ash et al. 2021): greedily add the candidates that most
    lower tr(M^-1 F), F the last layer's mean Fisher information over the pool and M that of the
    labeled set with the batch (plus ``lam`` I), up to ``oversample`` times the budget, then prune
    back to the budget. Memory grows with (classes x features)^2: ``dim`` projects the features
    (a seeded Gaussian random projection) to fit large models."""

    @dataclass
    class Config:
        lam: float = 1.0  # the regulariser lam I added to the labeled Fisher (the paper's lambda)
        oversample: int = 2  # forward selection takes oversample * budget, backward pruning keeps budget
        dim: Optional[int] = None  # project the features to this many dimensions (None: keep them)

        def check(self, key: str, recipe) -> None:
            checks.positive(f"{key}.lam", self.lam)
            checks.at_least(f"{key}.oversample", self.oversample, 1)
            checks.require(self.dim is None or self.dim >= 1, f"{key}.dim must be >= 1 or null, got {self.dim}")

    needs = (Probs(), Features(), Probs(labeled=True), Features(labeled=True))

    def check_model(self, backbone, num_classes: int) -> None:
        d = min(backbone.num_features, self.cfg.dim or backbone.num_features)
        need, have = bait_memory(d, num_classes), available_memory()
        if need > have:
            fit = next((k for k in (512, 256, 128, 64, 32, 16, 8) if bait_memory(k, num_classes) <= have), None)
            hint = f"set active.bait.dim={fit}" if fit and fit < d else "use a strategy without a Fisher matrix"
            raise ConfigError(f"active.strategy=bait needs {need / 2**30:.1f} GiB for ({num_classes} classes x {d} "
                              f"features)^2 matrices and this machine has {have / 2**30:.1f} GiB free: {hint} "
                              "(a random projection of the features)")

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        lab_h, cand_h = signals[Features(labeled=True)], signals[Features()]
        h = torch.cat([lab_h, cand_h])
        if self.cfg.dim is not None and self.cfg.dim < h.shape[1]:
            proj = torch.randn(h.shape[1], self.cfg.dim, generator=generator, dtype=torch.float64) / self.cfg.dim ** 0.5
            h = h.double() @ proj
        probs = torch.cat([signals[Probs(labeled=True)], signals[Probs()]])
        mask = torch.zeros(len(h), dtype=torch.bool)
        mask[: len(lab_h)] = True
        picked = Fn.bait(probs, h, mask, budget, lam=self.cfg.lam, oversample=self.cfg.oversample)
        return signals.candidates[picked - len(lab_h)]
