"""The one training / evaluation / inference loop, on HuggingFace Accelerate.

Pretraining, fine-tuning and the signal pass of selection all run through :class:`Engine`, so
the same code runs on one CPU, one GPU or several processes (``accelerate launch`` or
``torchrun``), as the same experiment:

- batch sizes are global (what one optimizer step sees), each process takes its slice;
- batches are drawn by a seeded sampler and made (loaded + augmented) by a DataLoader whose items
  are whole slices; every random draw of a sample is keyed by (seed, step, its slot in the global
  batch) (:mod:`ssal.rng`), so it does not depend on the worker or the process that makes it;
- BatchNorm uses the global batch's statistics (:mod:`ssal.models.sync_bn`), and all processes are
  checked to hold the same buffers after training;
- inference is sharded and gathered once per index, its random draws keyed by pool index.

What still depends on the number of processes (and of threads) is floating-point reduction order.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ssal import rng
from ssal.data.datasets import Split
from ssal.data.views import VIEWS, to_float
from ssal.errors import SsalError
from ssal.faults import failpoint
from ssal.models.ema import ema_model
from ssal.models.sync_bn import check_replicas_agree, synchronise_batchnorm
from ssal.rng import sample_keys


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from parts (e.g. the recipe seed, the round, a purpose), stable across runs."""
    import hashlib

    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def split_batch(global_batch: int, world: int, key: str) -> int:
    """The per-process share of a global batch of ``global_batch`` samples (recipe key ``key``);
    a one-line error when it does not divide evenly."""
    if global_batch % world:
        lo, hi = (global_batch // world) * world, (global_batch // world + 1) * world
        raise SsalError(f"{key}={global_batch} is the batch of one optimizer step, split across {world} processes, "
                        f"and does not divide by {world}: set {key} to a multiple of {world} (e.g. "
                        f"{f'{lo} or ' if lo else ''}{hi}) or start a number of processes that divides it")
    return global_batch // world


class InfiniteBatchSampler(Sampler):
    """Endless seeded reshuffles of ``range(n)`` cut into global batches of ``batch_size``.

    Yields ``(step, positions, first_slot)``: under several processes each process gets its
    slice of the global batch, which starts at slot ``first_slot`` of it. A sample's random
    draws are keyed by (seed, step, slot), so they do not depend on the number of processes.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.local = split_batch(batch_size, world, "batch_size")

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, int]]:
        g = torch.Generator().manual_seed(self.seed)
        buffer = torch.empty(0, dtype=torch.long)
        step, first = 0, self.rank * self.local
        while True:
            while len(buffer) < self.batch_size:
                buffer = torch.cat([buffer, torch.randperm(self.n, generator=g)])
            batch, buffer = buffer[:self.batch_size], buffer[self.batch_size:]
            yield step, batch[first:first + self.local], first
            step += 1


class ChunkSampler(Sampler):
    def __init__(self, n: int, chunk: int):
        self.n, self.chunk = n, chunk

    def __iter__(self):
        for start in range(0, self.n, self.chunk):
            yield start, torch.arange(start, min(start + self.chunk, self.n))

    def __len__(self) -> int:
        return math.ceil(self.n / self.chunk)


class ViewBatches(Dataset):
    """Item ``(step, positions, first_slot)`` -> a training batch of one source with its views.

    ``views`` maps a batch key to a view name; each sample's draws are keyed by (seed, step, its
    slot in the global batch, batch key).
    """

    def __init__(self, split: Split, indices: torch.Tensor, labels: torch.Tensor | None,
                 views: dict[str, str], hflip: bool, seed: int):
        self.split, self.indices, self.labels = split, indices, labels
        self.views, self.hflip, self.seed = views, hflip, seed

    def __getitem__(self, item: tuple[int, torch.Tensor, int]) -> dict[str, torch.Tensor]:
        step, pos, first = item
        x = self.split.load(self.indices[pos])
        keys = sample_keys(self.seed, step, torch.arange(first, first + len(pos)))
        view_keys = {key: rng.derive(keys, key) for key in self.views}
        out: dict[str, Any] = {key: VIEWS[view](x, view_keys[key], self.hflip) for key, view in self.views.items()}
        out["keys"] = view_keys  # the model's random draws (dropout) for each view of each sample
        if self.labels is not None:
            out["labels"] = self.labels[pos]
        return out

    def __len__(self) -> int:  # pragma: no cover - items come from the sampler
        return len(self.indices)


class PlainBatches(Dataset):
    def __init__(self, split: Split, indices: torch.Tensor):
        self.split, self.indices = split, indices

    def __getitem__(self, item: tuple[int, torch.Tensor]) -> torch.Tensor:
        return to_float(self.split.load(self.indices[item[1]]))

    def __len__(self) -> int:  # pragma: no cover
        return len(self.indices)


class TransformBatches(Dataset):
    """Item ``(step, positions, first_slot)`` -> ``{"view0": [B, C, H, W], "view1": ...}``, views made per sample.

    ``transform`` maps one uint8 image to a list of float views (lightly's transforms, which
    draw from torch's and numpy's global generators): both are seeded per sample from (seed,
    step, slot in the global batch) and restored afterwards, so a sample's views depend only on
    that, not on the number of processes.
    """

    def __init__(self, split: Split, indices: torch.Tensor, transform: Callable, seed: int):
        self.split, self.indices, self.transform, self.seed = split, indices, transform, seed

    def __getitem__(self, item: tuple[int, torch.Tensor, int]) -> dict[str, torch.Tensor]:
        step, pos, first = item
        images = self.split.load(self.indices[pos])
        seeds = rng.to_seed(sample_keys(self.seed, step, torch.arange(first, first + len(pos))))
        np_state = np.random.get_state()
        views = []
        with torch.random.fork_rng(devices=[]):
            for img, seed in zip(images, seeds, strict=True):
                torch.random.default_generator.manual_seed(seed)
                np.random.seed(seed % 2**32)
                views.append(self.transform(img))
        np.random.set_state(np_state)
        return {f"view{v}": torch.stack([s[v] for s in views]) for v in range(len(views[0]))}

    def __len__(self) -> int:  # pragma: no cover
        return len(self.indices)


def _loader(dataset: Dataset, sampler: Sampler, num_workers: int) -> DataLoader:
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None)


@dataclass
class FitResult:
    model: nn.Module  # the trained model (unwrapped)
    eval_model: nn.Module  # what to evaluate/select with: the EMA model when train.ema > 0
    seconds: float
    logs: dict[str, float] = field(default_factory=dict)
    ema: nn.Module | None = None
    objective: nn.Module | None = None  # the trained objective (its teacher, auxiliary heads)
    objective_state: dict[str, torch.Tensor] = field(default_factory=dict)  # its extra modules' state
    data_seconds: float = 0.0  # of ``seconds``, the time the loop waited for batches
    members: list[FitResult] = field(default_factory=list)  # an ensemble's members (ssal.select.ensemble)


def _plain_progress(desc: str, total: int) -> Callable[..., None]:
    """``update`` for a non-terminal: ``desc: done/total (elapsed s) info`` at every tenth of ``total``."""
    start, done, shown = time.perf_counter(), 0, 0

    def update(advance: int = 1, **info: float) -> None:
        nonlocal done, shown
        done += advance
        tenth = done * 10 // max(total, 1)
        if tenth > shown or done == total:
            shown = tenth
            extra = "  ".join(f"{k} {v:.3g}" for k, v in info.items())
            print(f"{desc}: {done}/{total} ({time.perf_counter() - start:.0f} s){'  ' + extra if extra else ''}",
                  flush=True)

    return update


class Engine:
    """Owns the Accelerator; trains, evaluates and runs streamed inference."""

    def __init__(self, mixed_precision: str = "no", num_workers: int = 0, progress: bool = True,
                 accelerator: Accelerator | None = None, channels_last: bool = True):
        # with no accelerator device, cpu=True lets Accelerate form a gloo process group under
        # torchrun / accelerate launch (DistributedType.MULTI_CPU) instead of staying single-process
        self.accelerator = accelerator or Accelerator(mixed_precision=mixed_precision, cpu=not _has_accelerator())
        self.num_workers = num_workers
        self.show_progress = progress
        # NHWC convolutions: ~20 % faster per step for cnn_small on CPU (docs/benchmarks.md), and
        # the layout tensor cores want under AMP
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def close(self) -> None:
        """Leave the process group (if any) cleanly."""
        if _distributed():
            self.accelerator.wait_for_everyone()
        shutdown_distributed()

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @contextlib.contextmanager
    def progress(self, desc: str, total: int) -> Iterator[Callable[..., None]]:
        """A rich progress bar on the main process; yields ``update(advance=1, **fields)``."""
        if not (self.show_progress and self.is_main):
            yield lambda advance=1, **kw: None
            return
        from rich.console import Console

        if not Console().is_terminal:  # a log file or a pipe (the labeling page): a plain line per tenth
            yield _plain_progress(desc, total)
            return
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(desc, total=total, info="")

            def update(advance: int = 1, **info: float) -> None:
                if info:
                    bar.update(task, advance=advance,
                               info="  ".join(f"{k} {v:.3g}" for k, v in info.items()))
                else:
                    bar.advance(task, advance)

            yield update

    def start_line(self, batches: dict[str, int]) -> str:
        """How this run executes, in one line: processes, backend, device(s), mixed precision and each
        global batch with its per-process share (``batches``: recipe key -> global batch size).
        Raises the one-line error of :func:`split_batch` for a batch that does not divide."""
        world = self.world
        shares = {key: split_batch(size, world, key) for key, size in batches.items()}
        procs = f"{world} processes ({torch.distributed.get_backend()})" if _distributed() else "1 process"
        if self.device.type == "cpu":
            threads = torch.get_num_threads()
            device = f"cpu ({threads} thread{'s' if threads > 1 else ''} per process)"
        else:
            name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else self.device.type
            device = f"{world} x {name}" if world > 1 else name
        batch = ", ".join(f"{key} {size}" + (f" ({shares[key]} per process)" if world > 1 else "")
                          for key, size in batches.items())
        return (f"ssal: {procs}, device {device}, mixed precision {self.accelerator.mixed_precision}; "
                f"global batch: {batch}")

    def announce(self, batches: dict[str, int]) -> None:
        """Print :meth:`start_line` (main process), and a warning when a launcher was asked for several
        processes but started one: ``accelerate launch --num_processes N`` without ``--multi_gpu``
        sets the rendezvous address, but runs a single process."""
        self.print(self.start_line(batches), highlight=False)
        if self.world == 1 and "MASTER_PORT" in os.environ and "ACCELERATE_USE_CPU" in os.environ \
                and "WORLD_SIZE" not in os.environ:
            self.print("[yellow]warning: accelerate launch was given several processes but started one; on CPUs use "
                       "'torchrun --nproc_per_node N -m ssal ...' or 'accelerate launch --multi_gpu --num_processes N "
                       "-m ssal ...'")

    def guarded(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on every process, for steps whose outcome the main process decides (it alone holds
        the run's lock and writes): a user error raised there is raised on every process, so that
        none waits forever for the others."""
        error, result = None, None
        try:
            result = fn()
        except SsalError as e:
            if not self.is_main:
                raise
            error = e
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            box = [None if error is None else str(error)]
            broadcast_object_list(box)
            if box[0] is not None and error is None:
                raise SsalError(box[0])
        if error is not None:
            raise error
        return result

    def print(self, *args, **kwargs) -> None:
        if self.is_main:
            from rich.console import Console

            Console(soft_wrap=True).print(*args, **kwargs)  # long paths stay on one line

    # ------------------------------------------------------------------ training
    def fit(self, model: nn.Module, objective_cls: type, train_cfg: Any, split: Split,
            labeled: torch.Tensor, labels: torch.Tensor, unlabeled: torch.Tensor | None = None, *,
            hflip: bool, seed: int, unlabeled_labels: torch.Tensor | None = None,
            objective_state: dict[str, torch.Tensor] | None = None, auxiliary: nn.Module | None = None,
            desc: str = "train") -> FitResult:
        """Train ``model`` for ``train_cfg.steps`` optimizer steps with an objective
        (a :class:`ssal.semi.base.Objective` subclass, built here around ``model``).

        ``labeled``/``unlabeled`` are indices into ``split``; ``labels`` the observed labels of
        ``labeled``; ``unlabeled_labels`` (simulation only) the hidden labels of ``unlabeled``, passed
        to the objective as ``y_u`` for diagnostics. ``objective_state`` restores the objective's
        extra modules (a teacher) from an earlier :attr:`FitResult.objective_state`; ``auxiliary`` (a
        selection strategy's module, :meth:`ssal.semi.base.Objective.attach`) trains along. Seeded: the
        same arguments give the same weights on the same machine.
        """
        t0 = time.perf_counter()
        acc = self.accelerator
        torch.manual_seed(derive_seed(seed, "torch"))  # dropout and other stochastic layers
        steps = train_cfg.steps
        model.to(memory_format=self.memory_format)
        objective = objective_cls(model, train_cfg)
        objective.attach(auxiliary)
        if objective_state is not None:
            objective.load_extra_state(objective_state)
        objective = synchronise_batchnorm(objective, self.device)
        optimizer, scheduler = _sgd(objective, train_cfg.lr, train_cfg.momentum, train_cfg.nesterov,
                                    train_cfg.weight_decay, train_cfg.schedule, steps,
                                    {"model.backbone.": train_cfg.backbone_lr_scale})
        prepared, optimizer = acc.prepare(objective, optimizer)
        inner = acc.unwrap_model(prepared)
        ema = ema_model(inner.model, train_cfg.ema) if train_cfg.ema > 0 else None
        if ema is not None and train_cfg.ema ** steps > 0.05:
            fix = f"lower train.ema (e.g. {1 - 5 / steps:.3g}) or train longer" if steps > 10 else "set train.ema=0"
            self.print(f"[yellow]warning: with train.ema={train_cfg.ema} and train.steps={steps} the averaged "
                       f"weights keep {100 * train_cfg.ema ** steps:.0f} % of the initial ones; {fix}")

        def after_step(step: int) -> None:
            inner.after_step(step)
            inner.step = step + 1
            if ema is not None:
                ema.update_parameters(inner.model)

        loaders = self._train_loaders(inner, train_cfg, split, labeled, labels, unlabeled, unlabeled_labels,
                                      hflip, seed)
        try:
            logs, waited = self._optimize(prepared, optimizer, scheduler, steps,
                                          lambda: self._next_batch(loaders), after_step, desc,
                                          "train", f"train.lr (now {train_cfg.lr:g})")
        finally:
            self._close(loaders)
        inner.eval()
        check_replicas_agree(inner, desc)
        if ema is not None:
            check_replicas_agree(ema, f"{desc} (EMA)")
        acc.free_memory()
        eval_model = ema.module if ema is not None else inner.model
        return FitResult(inner.model, eval_model, time.perf_counter() - t0, logs,
                         ema.module if ema is not None else None, inner, inner.extra_state(), waited)

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
        steps = cfg.epochs * per_epoch
        method = synchronise_batchnorm(method, self.device)
        optimizer, scheduler = _sgd(method, cfg.lr, cfg.momentum, True, cfg.weight_decay, "cosine", steps)
        method.to(memory_format=self.memory_format)
        prepared, optimizer = acc.prepare(method, optimizer)
        inner = acc.unwrap_model(prepared)
        ds = TransformBatches(split, indices, inner.transform, derive_seed(seed, "views"))
        sampler = InfiniteBatchSampler(len(indices), cfg.batch_size, derive_seed(seed, "order"), self.rank, self.world)
        loader = iter(_loader(ds, sampler, self.num_workers))
        shown: dict[str, float] = {}

        def after_step(step: int) -> dict[str, float]:
            inner.after_step(step, steps)
            if on_epoch is not None and (step + 1) % per_epoch == 0:
                shown.update(on_epoch((step + 1) // per_epoch))  # predict() restores train mode
            return shown

        try:
            logs, waited = self._optimize(prepared, optimizer, scheduler, steps,
                                          lambda: {k: self._to_device(v) for k, v in next(loader).items()},
                                          after_step, desc, "pretrain", f"pretrain.lr (now {cfg.lr:g})")
        finally:
            self._close({"views": loader})
        check_replicas_agree(inner, desc)
        acc.free_memory()
        return FitResult(inner, inner, time.perf_counter() - t0, logs, data_seconds=waited)

    def _optimize(self, model: nn.Module, optimizer, scheduler, steps: int,
                  next_batch: Callable[[], dict], after_step: Callable[[int], dict | None], desc: str,
                  stage: str, lr_key: str) -> tuple[dict[str, float], float]:
        """The optimisation loop shared by pretraining and fine-tuning: ``model(batch) -> (loss, logs)``
        (a Pretrainer or an Objective, as prepared). Returns the last logs and the seconds spent
        waiting for batches (loading and views not hidden behind compute).

        A loss that is not finite stops training with :class:`Diverged`, naming the first such step.
        It is tracked on the device without a sync and read with the logs (every 20 steps), agreed
        across processes so that all of them stop together."""
        acc = self.accelerator
        model.train()
        logs: dict[str, float] = {}
        waited = 0.0
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        with self.progress(desc, steps) as update:
            for step in range(steps):
                failpoint(f"{stage}.step")
                t = time.perf_counter()
                batch = next_batch()
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

    def _train_loaders(self, objective, train_cfg, split, labeled, labels, unlabeled, unlabeled_labels, hflip, seed):
        by_source: dict[str, dict[str, str]] = {}
        for key, (source, view) in objective.views.items():
            if view == "weak" and train_cfg.augment != "weak":  # the recipe's choice for the base view
                view = train_cfg.augment
            by_source.setdefault(source, {})[key] = view
        loaders = {}
        split_batch(train_cfg.batch_size, self.world, "train.batch_size")
        for source, views in by_source.items():
            if source == "labeled":
                indices, lab, bs = labeled, labels, train_cfg.batch_size
            elif source == "unlabeled":
                if unlabeled is None or len(unlabeled) == 0:
                    raise ValueError(f"{type(objective).__name__} needs unlabeled samples")
                indices, lab, bs = unlabeled, unlabeled_labels, train_cfg.batch_size * objective.unlabeled_ratio
            else:
                raise ValueError(f"unknown view source '{source}'")
            src_seed = derive_seed(seed, source)
            ds = ViewBatches(split, indices, lab, views, hflip, src_seed)
            sampler = InfiniteBatchSampler(len(indices), bs, derive_seed(src_seed, "order"), self.rank, self.world)
            loaders[source] = iter(_loader(ds, sampler, self.num_workers))
        return loaders

    def _next_batch(self, loaders) -> dict[str, Any]:
        batch: dict[str, Any] = {"keys": {}}
        for source, it in loaders.items():
            part = next(it)
            if "labels" in part:
                batch["y_l" if source == "labeled" else "y_u"] = part.pop("labels")
            batch["keys"].update(part.pop("keys"))
            batch.update(part)
        return {k: v if k == "keys" else self._to_device(v) for k, v in batch.items()}

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    @staticmethod
    def _close(loaders) -> None:
        for it in loaders.values():
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    # ------------------------------------------------------------------ inference
    @torch.no_grad()  # not inference_mode: the model may train again afterwards (pretraining monitor)
    def predict(self, model: nn.Module, split: Split, indices: torch.Tensor,
                outputs: tuple[str, ...] = ("probs",), batch_size: int = 512,
                desc: str | None = None) -> dict[str, torch.Tensor]:
        """Streamed inference on ``split[indices]``: a dict of CPU tensors aligned with ``indices``.

        ``outputs`` picks among ``probs`` (softmax, float32), ``logits`` and ``features`` (the
        penultimate layer). Work is sharded across processes and gathered once per index.
        """

        def forward(x: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
            logits, feats = model(x, return_features=True)
            got = {"logits": logits.float(), "features": feats.float()}
            if "probs" in outputs:
                got["probs"] = F.softmax(logits.float(), dim=1)
            return {k: got[k] for k in outputs}

        got = self.infer(forward, [model], split, indices, batch_size, desc)
        return {k: got.get(k, torch.empty(0)) for k in outputs}

    def infer(self, fn: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]], modules: list[nn.Module],
              split: Split, indices: torch.Tensor, batch_size: int = 512,
              desc: str | None = None) -> dict[str, torch.Tensor]:
        """``fn`` over ``split[indices]`` in chunks, under ``torch.inference_mode`` and autocast,
        with ``modules`` in eval mode on the device: ``fn(x, index)`` (images in [0, 1], [B, C, H, W],
        and their indices into ``split``, which key any random draw per sample) returns per-sample
        tensors (first dimension B); they come back concatenated on the CPU, aligned with
        ``indices``. Sharded across processes and gathered once per index.
        """
        indices = torch.as_tensor(indices, dtype=torch.long)
        n = len(indices)
        per_rank = math.ceil(n / self.world) if n else 0
        mine = indices[self.rank * per_rank:(self.rank + 1) * per_rank]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
            m.to(self.device, memory_format=self.memory_format)
        chunks: dict[str, list[torch.Tensor]] = {}
        loader = _loader(PlainBatches(split, mine), ChunkSampler(len(mine), batch_size), self.num_workers)
        bar = self.progress(desc, len(loader)) if desc else contextlib.nullcontext(lambda *a, **k: None)
        with bar as update, torch.inference_mode():
            for start, x in zip(range(0, len(mine), batch_size), loader, strict=True):
                with self.accelerator.autocast():
                    got = fn(self._to_device(x), mine[start:start + len(x)])
                for k, v in got.items():
                    chunks.setdefault(k, []).append(v.float() if v.is_floating_point() else v)
                update(1)
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)
        if not chunks and n:  # no local samples (more processes than samples): learn the output shapes
            with torch.inference_mode(), self.accelerator.autocast():
                got = fn(self._to_device(to_float(split.load(indices[:1]))), indices[:1])
            chunks = {k: [v[:0].float() if v.is_floating_point() else v[:0]] for k, v in got.items()}
        return {k: self._gather(torch.cat(parts), per_rank, n) for k, parts in chunks.items()}

    def _gather(self, local: torch.Tensor, per_rank: int, n: int) -> torch.Tensor:
        if self.world == 1:
            return local.cpu()
        # pad every shard to the same length, gather in rank order, drop the padding
        if len(local) < per_rank:
            pad = local.new_zeros((per_rank - len(local), *local.shape[1:]))
            local = torch.cat([local, pad])
        return self.accelerator.gather(local.contiguous())[:n].cpu()

    def evaluate(self, model: nn.Module, split: Split, batch_size: int = 512,
                 desc: str | None = "evaluate") -> dict[str, float]:
        """Top-1 accuracy on a whole split."""
        probs = self.predict(model, split, torch.arange(len(split)), ("probs",), batch_size, desc)["probs"]
        correct = (probs.argmax(1) == split.targets).float()
        failpoint("evaluate")
        return {"test_acc": float(correct.mean())}


class Diverged(SsalError):
    """Training produced a loss that is not finite (NaN or infinite)."""


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def shutdown_distributed() -> None:
    """Destroy the process group if one is up: a process that exits inside a gloo group can
    abort at teardown ("terminate called without an active exception")."""
    if _distributed():
        torch.distributed.destroy_process_group()


def _has_accelerator() -> bool:
    probe = getattr(torch, "accelerator", None)
    return bool(probe.is_available()) if probe is not None else torch.cuda.is_available()


def _sgd(model: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float,
         schedule: str, steps: int, lr_scales: dict[str, float] | None = None):
    """SGD over the trainable parameters; ``lr_scales`` maps a parameter-name prefix to a factor on
    ``lr`` for the parameters under it (e.g. a gentler rate for a pretrained backbone)."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((f for prefix, f in (lr_scales or {}).items() if name.startswith(prefix)), 1.0)
            groups.setdefault(scale, []).append(p)
    optimizer = torch.optim.SGD([{"params": ps, "lr": lr * f} for f, ps in groups.items()], lr=lr,
                                momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(schedule, steps))


def _schedule(name: str, steps: int) -> Callable[[int], float]:
    if name == "cosine":
        return lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, steps) / steps))
    if name == "fixmatch_cosine":  # cos(7 pi k / 16 K): ends at ~0.2 of the base rate (Sohn et al. 2020)
        return lambda k: math.cos(7.0 * math.pi * min(k, steps) / (16.0 * steps))
    if name == "constant":
        return lambda k: 1.0
    raise ValueError(f"unknown schedule '{name}'")
