"""The math of selection: plain torch, no framework types, usable and testable alone.

Scores follow one convention: higher = more informative (selected first).
"""

from __future__ import annotations

import torch


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} has {bad} NaN/inf values; the model diverged (lower train.lr or check the data)")
    return x


def _check_probs(probs: torch.Tensor) -> torch.Tensor:
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {tuple(probs.shape)}")
    return check_finite(probs, "probs")


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy -sum_c p_c log p_c, in nats."""
    probs = _check_probs(probs)
    return -torch.special.xlogy(probs, probs).sum(dim=1)


def margin(probs: torch.Tensor) -> torch.Tensor:
    """1 - (p_top1 - p_top2): high when the two most likely classes are close."""
    probs = _check_probs(probs)
    if probs.shape[1] < 2:
        return torch.ones(probs.shape[0], dtype=probs.dtype)
    top2 = probs.topk(2, dim=1).values
    return 1.0 - (top2[:, 0] - top2[:, 1])


def least_confidence(probs: torch.Tensor) -> torch.Tensor:
    """1 - max_c p_c."""
    probs = _check_probs(probs)
    return 1.0 - probs.max(dim=1).values


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` highest scores; ties go to the lowest position (deterministic)."""
    scores = check_finite(scores, "scores")
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[: min(k, len(scores))]
