"""Benchmark settings of the pool: a long tail of classes (``data.imbalance``) and repeated images
(``data.redundancy``, ``data.redundancy_noise``). Label noise is the simulated oracle's
(``active.oracle_noise``).

They change what the pool's indices mean, so they are applied once, when the data set is loaded
(after ``data.pool_size``), and enter the pool's fingerprint: a run directory refuses to resume
with other values, and the pretraining cache keys on them. Both are seeded by the run's seed. The
test split is never touched: accuracy is measured on the data set's own test images (balanced for
every builtin), so an imbalanced pool is judged on how well it serves every class.

Long tail (as CIFAR-10-LT): with C classes and ratio rho, class c keeps
``floor(n_max * rho ** (-c / (C - 1)))`` images, class 0 the most and class C-1 ``n_max / rho``;
``n_max`` is the smallest class count in the pool, the most every class can give. Which images a
class keeps is a seeded draw.

Redundancy (as Repeated MNIST): the pool of n images becomes k * n, index ``j * n + i`` being copy
j of image i. Copy 0 is the image itself; with ``redundancy_noise`` = sigma every other copy gets
its own Gaussian pixel noise (sigma in units of the full intensity range), drawn from a key of
(seed, index), so the same copy looks the same in every batch, process and round.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

from ssal import rng
from ssal.data.splits import Split
from ssal.errors import DataError


def long_tail_counts(counts: Sequence[int], ratio: float) -> list[int]:
    """Images class c keeps under an exponential long tail of ``ratio`` (largest : smallest class)."""
    n_max, c = min(counts), len(counts)
    return [math.floor(n_max * ratio ** (-k / (c - 1))) for k in range(c)]


def long_tail(split: Split, ratio: float, seed: int, classes: Sequence[str]) -> Split:
    """The seeded subset of ``split`` whose class counts follow :func:`long_tail_counts`."""
    targets = split.targets
    counts = torch.bincount(targets, minlength=len(classes)).tolist()
    if min(counts) == 0:
        empty = classes[counts.index(0)]
        raise DataError(f"data.imbalance needs images of every class, and the pool has none of class '{empty}': "
                        "raise data.pool_size or remove it")
    keep = long_tail_counts(counts, ratio)
    if keep[-1] < 1:
        raise DataError(f"data.imbalance={ratio} leaves class '{classes[-1]}' no image (the smallest class count "
                        f"in the pool is {min(counts)}): lower data.imbalance or raise data.pool_size")
    g = torch.Generator().manual_seed(rng.derive_seed(seed, "data.imbalance"))
    chosen = []
    for c, k in enumerate(keep):
        members = (targets == c).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=g)[:k]])
    return split.subset(torch.cat(chosen).sort().values)


class RepeatedSplit(Split):
    """``copies`` copies of ``base`` one after the other; copies after the first carry seeded noise."""

    def __init__(self, base: Split, copies: int, noise: float, seed: int):
        self.base, self.copies, self.noise, self.seed = base, copies, noise, seed
        self.targets = base.targets.repeat(copies)

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        indices = torch.as_tensor(indices, dtype=torch.long)
        images = self.base.load(indices % len(self.base))
        noisy = indices >= len(self.base)
        if self.noise > 0 and noisy.any():
            images = images.clone()
            keys = rng.sample_keys(self.seed, "data.redundancy", indices[noisy])
            shape = tuple(images.shape[1:])
            # Box-Muller from two uniforms of each pixel's key: rng.py draws uniforms only
            u1 = 1.0 - rng.uniform(keys, "u1", shape)  # (0, 1]: the log stays finite
            u2 = rng.uniform(keys, "u2", shape)
            z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
            images[noisy] = (images[noisy].float() + 255.0 * self.noise * z).round().clamp(0, 255).to(torch.uint8)
        return images

    def _digest(self) -> str:
        what = f"{self.base.fingerprint()}|copies={self.copies}|noise={self.noise!r}|seed={self.seed}"
        return hashlib.blake2b(what.encode(), digest_size=16).hexdigest()

    def files(self):
        base = self.base.files()
        return None if base is None else (base[0], base[1] * self.copies)


def apply_pool_settings(ds, cfg, seed: int) -> None:
    """Apply a recipe's ``data.imbalance`` and ``data.redundancy`` to ``ds.train`` in place, with a note
    for people saying what the pool became."""
    ratio, copies = cfg.imbalance, cfg.redundancy
    if ratio is None and copies == 1:
        return
    if not ds.has_truth:
        raise DataError("data.imbalance and data.redundancy build a benchmark pool from known classes, but this "
                        "pool's images are unlabeled: remove them, or use a data set with class folders")
    if ratio is not None:
        before = len(ds.train)
        ds.train = long_tail(ds.train, ratio, seed, ds.classes)
        counts = torch.bincount(ds.train.targets, minlength=ds.num_classes).tolist()
        ds.notes.append(f"data.imbalance={ratio:g}: the pool keeps {len(ds.train):,} of {before:,} images, "
                        f"{counts[0]:,} of class '{ds.classes[0]}' down to {counts[-1]:,} of '{ds.classes[-1]}'; "
                        "the test split is unchanged")
    if copies > 1:
        ds.train = RepeatedSplit(ds.train, copies, cfg.redundancy_noise, seed)
        how = (f"the copies with Gaussian pixel noise of std {cfg.redundancy_noise:g}" if cfg.redundancy_noise
               else "exact copies")
        ds.notes.append(f"data.redundancy={copies}: each pool image appears {copies} times ({how}), "
                        f"{len(ds.train):,} pool images")
