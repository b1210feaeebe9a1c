"""Exponential moving averages of a model's weights: evaluation EMA, mean teachers, TOD."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_model(model: nn.Module, decay: float, warmup: bool = False) -> AveragedModel:
    """An exponential moving average of ``model`` (parameters and BatchNorm buffers), frozen.

    The first ``update_parameters(model)`` copies the weights; the k-th later one (k = 1, 2, ...)
    does ``ema <- a * ema + (1 - a) * model`` with ``a = decay``, or with ``warmup``
    ``a = min(1 - 1/(k+1), decay)`` (the plain mean of the weights seen so far until that reaches
    ``decay``). Before any update it holds a copy of ``model``.
    """
    def average(ema_params: list[torch.Tensor], params: list[torch.Tensor], k: torch.Tensor) -> None:
        if not ema_params[0].is_floating_point():  # integer buffers (BatchNorm's batch counter)
            torch._foreach_copy_(ema_params, params)
            return
        a = min(1.0 - 1.0 / (int(k) + 1), decay) if warmup else decay
        torch._foreach_lerp_(ema_params, params, 1.0 - a)  # ema + (1 - a) (p - ema), one fused op

    ema = AveragedModel(model, multi_avg_fn=average, use_buffers=True)
    ema.requires_grad_(False)
    return ema


@contextlib.contextmanager
def batch_statistics(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` with its BatchNorm layers normalising by the statistics of the batch (as in
    training) while leaving their running statistics untouched; dropout stays as it is.

    Teachers predict like this (Mean Teacher, TOD): averaged weights with averaged running
    statistics do not match each other early in training, batch statistics always do.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.train()
        m.momentum = 0.0  # running <- (1 - 0) * running + 0 * batch: unchanged
    try:
        yield module
    finally:
        for m, (training, momentum, tracked) in zip(norms, saved, strict=True):
            m.train(training)
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def ema_advice(decay: float, steps: int) -> str | None:
    """What is wrong with averaging the weights with ``decay`` over ``steps`` steps, and the fix, or None:
    the average still holds ``decay ** steps`` of the initial weights, so more than 5 % of them misleads."""
    if decay <= 0 or decay ** steps <= 0.05:
        return None
    fix = f"lower train.ema (e.g. {1 - 5 / steps:.3g}) or train longer" if steps > 10 else "set train.ema=0"
    return (f"with train.ema={decay} and train.steps={steps} the averaged weights keep "
            f"{100 * decay ** steps:.0f} % of the initial ones; {fix}")
