"""Streamed inference: a function of the model over a split's indices in chunks, sharded across
processes and gathered exactly once per index, its random draws keyed by the index; predictions
(probabilities, logits, features) and test accuracy are built on it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ssal.data.splits import Split
from ssal.data.views import to_float
from ssal.engine.batches import ChunkSampler, PlainBatches, loader
from ssal.engine.runtime import Runtime
from ssal.faults import failpoint


class Inference(Runtime):
    """Evaluates and runs streamed inference on this process's share of the indices."""

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
        chunked = loader(PlainBatches(split, mine), ChunkSampler(len(mine), batch_size), self.num_workers)
        bar = self.progress(desc, len(chunked)) if desc else contextlib.nullcontext(lambda *a, **k: None)
        with bar as update, torch.inference_mode():
            for start, x in zip(range(0, len(mine), batch_size), chunked, strict=True):
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
