"""What the engine's loops iterate: seeded samplers of global batches, and datasets whose items are a
process's whole slice of a batch, loaded and augmented per sample (each draw keyed by the sample,
so batches do not depend on the worker or the process that makes them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ssal import rng
from ssal.data.splits import Split
from ssal.data.views import VIEWS, to_float
from ssal.errors import SsalError
from ssal.rng import derive_seed, sample_keys
from ssal.semi.base import Objective


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


def loader(dataset: Dataset, sampler: Sampler, num_workers: int) -> DataLoader:
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None)


@dataclass(frozen=True)
class TrainData:
    """What a fit trains on: ``labeled`` and ``unlabeled`` are indices into ``split``, ``labels`` the
    observed labels of ``labeled``; ``unlabeled_labels`` (simulation only) the hidden labels of
    ``unlabeled``, given to the objective as ``y_u`` for diagnostics; ``hflip`` whether views may flip."""

    split: Split
    labeled: torch.Tensor
    labels: torch.Tensor
    unlabeled: torch.Tensor | None = None
    _: KW_ONLY
    hflip: bool
    unlabeled_labels: torch.Tensor | None = None


def train_loaders(objective: Objective, data: TrainData, batch_size: int, seed: int, rank: int, world: int,
                  num_workers: int) -> dict[str, Iterator[dict[str, Any]]]:
    """One endless loader per source (``labeled``, ``unlabeled``) of the views ``objective.views`` declares:
    ``batch_size`` labeled samples a step, ``objective.unlabeled_ratio`` times as many unlabeled ones."""
    by_source: dict[str, dict[str, str]] = {}
    for key, (source, view) in objective.views.items():
        by_source.setdefault(source, {})[key] = view
    loaders = {}
    for source, views in by_source.items():
        if source == "labeled":
            indices, lab, bs = data.labeled, data.labels, batch_size
        elif source == "unlabeled":
            if data.unlabeled is None or len(data.unlabeled) == 0:
                raise ValueError(f"{type(objective).__name__} needs unlabeled samples")
            indices, lab, bs = data.unlabeled, data.unlabeled_labels, batch_size * objective.unlabeled_ratio
        else:
            raise ValueError(f"unknown view source '{source}'")
        src_seed = derive_seed(seed, source)
        ds = ViewBatches(data.split, indices, lab, views, data.hflip, src_seed)
        sampler = InfiniteBatchSampler(len(indices), bs, derive_seed(src_seed, "order"), rank, world)
        loaders[source] = iter(loader(ds, sampler, num_workers))
    return loaders


def next_batch(loaders: dict[str, Iterator[dict[str, Any]]]) -> dict[str, Any]:
    """The sources' next parts as one batch: their views, ``y_l`` / ``y_u`` and the merged ``keys``."""
    batch: dict[str, Any] = {"keys": {}}
    for source, it in loaders.items():
        part = next(it)
        if "labels" in part:
            batch["y_l" if source == "labeled" else "y_u"] = part.pop("labels")
        batch["keys"].update(part.pop("keys"))
        batch.update(part)
    return batch


def close_loaders(loaders: dict[str, Iterator]) -> None:
    """Stop the loaders' worker processes now rather than at garbage collection."""
    for it in loaders.values():
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
