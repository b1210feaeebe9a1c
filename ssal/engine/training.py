"""Training: fine-tuning an objective around a model (:meth:`Engine.fit`) and self-supervised
pretraining (:meth:`Engine.pretrain`), both through one optimisation loop. The engine trains
what it is given: the caller builds the objective and resolves the recipe's choices.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ssal.data.splits import Split
from ssal.engine.batches import (
    InfiniteBatchSampler,
    TrainData,
    TransformBatches,
    close_loaders,
    loader,
    next_batch,
    split_batch,
    train_loaders,
)
from ssal.engine.inference import Inference
from ssal.engine.optim import Optim, sgd
from ssal.errors import SsalError
from ssal.faults import failpoint
from ssal.models.ema import ema_model
from ssal.models.sync_bn import check_replicas_agree, synchronise_batchnorm
from ssal.rng import derive_seed
from ssal.semi.base import Objective


@dataclass
class FitResult:
    model: nn.Module  # the trained model (unwrapped)
    eval_model: nn.Module  # what to evaluate/select with: the EMA model when fit's ema > 0
    seconds: float
    logs: dict[str, float] = field(default_factory=dict)
    ema: nn.Module | None = None
    objective: nn.Module | None = None  # the trained objective (its teacher, auxiliary heads)
    objective_state: dict[str, torch.Tensor] = field(default_factory=dict)  # its extra modules' state
    data_seconds: float = 0.0  # of ``seconds``, the time the loop waited for batches
    members: list[FitResult] = field(default_factory=list)  # an ensemble's members (ssal.select.ensemble)


class Diverged(SsalError):
    """Training produced a loss that is not finite (NaN or infinite)."""


class Engine(Inference):
    """Owns the Accelerator; trains, evaluates and runs streamed inference."""

    def fit(self, model: nn.Module, build: Callable[[nn.Module], Objective], data: TrainData, optim: Optim, *,
            seed: int, ema: float = 0.0, desc: str = "train") -> FitResult:
        """Train ``model`` for ``optim.steps`` optimizer steps with the objective ``build(model)`` returns
        (a :class:`ssal.semi.base.Objective`; its ``views`` are the batch it gets, none renamed here).

        ``build`` is called after torch's generator is seeded from ``seed`` and ``model`` is put in the
        engine's memory format, so an objective's new heads draw their initial weights from ``seed`` and a
        teacher copies the model as laid out (:func:`ssal.semi.base.make_objective` builds one as a
        recipe asks). ``ema`` > 0 also averages the model's weights with that decay; the average is then
        :attr:`FitResult.eval_model`. Seeded: the same arguments give the same weights on the same machine.
        """
        t0 = time.perf_counter()
        acc = self.accelerator
        torch.manual_seed(derive_seed(seed, "torch"))  # new heads' weights, dropout and other stochastic layers
        model.to(memory_format=self.memory_format)
        objective = synchronise_batchnorm(build(model), self.device)
        if objective.closed_form:  # no steps: the objective solves for its head on frozen features
            logs = objective.solve(self, data, seed)
            objective.eval()
            check_replicas_agree(objective, desc)
            return FitResult(objective.model, objective.model, time.perf_counter() - t0, logs, None, objective,
                             objective.extra_state(), 0.0)
        optimizer, scheduler = sgd(objective, optim, {"model.backbone.": optim.backbone_lr_scale})
        prepared, optimizer = acc.prepare(objective, optimizer)
        inner = acc.unwrap_model(prepared)
        averaged = ema_model(inner.model, ema) if ema > 0 else None

        def after_step(step: int) -> None:
            inner.after_step(step)
            inner.step = step + 1
            if averaged is not None:
                averaged.update_parameters(inner.model)

        split_batch(optim.batch_size, self.world, f"{optim.section}.batch_size")
        loaders = train_loaders(inner, data, optim.batch_size, seed, self.rank, self.world, self.num_workers)
        try:
            logs, waited = self._optimize(prepared, optimizer, scheduler, optim, lambda: self._batch(loaders),
                                          after_step, desc, "train")
        finally:
            close_loaders(loaders)
        inner.eval()
        check_replicas_agree(inner, desc)
        if averaged is not None:
            check_replicas_agree(averaged, f"{desc} (EMA)")
        acc.free_memory()
        eval_model = averaged.module if averaged is not None else inner.model
        return FitResult(inner.model, eval_model, time.perf_counter() - t0, logs,
                         averaged.module if averaged is not None else None, inner, inner.extra_state(), waited)

    def pretrain(self, method: nn.Module, split: Split, indices: torch.Tensor, cfg: Any, *, seed: int,
                 on_epoch: Callable[[int], dict[str, float]] | None = None, desc: str = "pretrain") -> FitResult:
        """Self-supervised training of ``method`` (a :class:`ssal.pretrain.base.Pretrainer`).

        ``cfg.epochs`` passes over ``split[indices]`` in global batches of ``cfg.batch_size`` (split
        across processes), views made per sample by ``method.transform``. SGD with nesterov momentum and cosine decay.
        ``on_epoch(epoch)`` runs after each epoch; what it returns is shown in the progress bar.
        """
        t0 = time.perf_counter()
        acc = self.accelerator
        torch.manual_seed(derive_seed(seed, "torch"))
        indices = torch.as_tensor(indices, dtype=torch.long)
        split_batch(cfg.batch_size, self.world, "pretrain.batch_size")
        per_epoch = max(1, len(indices) // cfg.batch_size)
        optim = Optim(cfg.epochs * per_epoch, cfg.batch_size, cfg.lr, cfg.momentum, True, cfg.weight_decay,
                      "cosine", section="pretrain")
        method = synchronise_batchnorm(method, self.device)
        optimizer, scheduler = sgd(method, optim)
        method.to(memory_format=self.memory_format)
        prepared, optimizer = acc.prepare(method, optimizer)
        inner = acc.unwrap_model(prepared)
        ds = TransformBatches(split, indices, inner.transform, derive_seed(seed, "views"))
        sampler = InfiniteBatchSampler(len(indices), cfg.batch_size, derive_seed(seed, "order"), self.rank, self.world)
        views = iter(loader(ds, sampler, self.num_workers))
        shown: dict[str, float] = {}

        def after_step(step: int) -> dict[str, float]:
            inner.after_step(step, optim.steps)
            if on_epoch is not None and (step + 1) % per_epoch == 0:
                shown.update(on_epoch((step + 1) // per_epoch))  # predict() restores train mode
            return shown

        try:
            logs, waited = self._optimize(prepared, optimizer, scheduler, optim,
                                          lambda: {k: self._to_device(v) for k, v in next(views).items()},
                                          after_step, desc, "pretrain")
        finally:
            close_loaders({"views": views})
        check_replicas_agree(inner, desc)
        acc.free_memory()
        return FitResult(inner, inner, time.perf_counter() - t0, logs, data_seconds=waited)

    def _batch(self, loaders: dict) -> dict[str, Any]:
        return {k: v if k == "keys" else self._to_device(v) for k, v in next_batch(loaders).items()}

    def _optimize(self, model: nn.Module, optimizer, scheduler, optim: Optim, draw: Callable[[], dict],
                  after_step: Callable[[int], dict | None], desc: str, stage: str) -> tuple[dict[str, float], float]:
        """The optimisation loop shared by pretraining and fine-tuning: ``model(batch) -> (loss, logs)``
        (a Pretrainer or an Objective, as prepared) on the batches ``draw()`` makes. Returns the last
        logs and the seconds spent waiting for batches (loading and views not hidden behind compute).

        A loss that is not finite stops training with :class:`Diverged`, naming the first such step.
        It is tracked on the device without a sync and read with the logs (every 20 steps), agreed
        across processes so that all of them stop together."""
        acc, steps = self.accelerator, optim.steps
        lr_key = f"{optim.section}.lr (now {optim.lr:g})"
        model.train()
        logs: dict[str, float] = {}
        waited = 0.0
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        with self.progress(desc, steps) as update:
            for step in range(steps):
                failpoint(f"{stage}.step")
                t = time.perf_counter()
                batch = draw()
                waited += time.perf_counter() - t
                with acc.autocast():
                    loss, extra = model(batch)
                optimizer.zero_grad(set_to_none=True)
                acc.backward(loss)
                optimizer.step()
                scheduler.step()
                bad = ~torch.isfinite(loss.detach()) & (first_bad < 0)
                first_bad = torch.where(bad, torch.full_like(first_bad, step), first_bad)
                shown = after_step(step) or {}
                if step % 20 == 0 or step == steps - 1:
                    self._check_finite(first_bad, loss, desc, lr_key)
                    logs = {"loss": float(loss.detach()), **{k: float(v) for k, v in extra.items()}}
                    update(1, **logs, **shown)
                else:
                    update(1)
        return logs, waited

    def _check_finite(self, first_bad: torch.Tensor, loss: torch.Tensor, desc: str, lr_key: str) -> None:
        if self.world > 1:
            first_bad = first_bad.clone()
            torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MAX)
        step = int(first_bad)
        if step >= 0:
            raise Diverged(f"{desc}: the loss is not finite ({float(loss.detach()):g} now) since step {step}; the "
                           f"learning rate is the usual cause: lower {lr_key} and start the run again")
