"""A split: a list of labelled images, ``load(indices)`` -> ``uint8 [B, C, H, W]``, with a fingerprint of
what each index means. Data sets (:mod:`ssal.data.datasets`) and pool settings
(:mod:`ssal.data.pool_settings`) build them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ssal import files
from ssal.errors import DataError


class Split:
    """A list of labelled images. ``load(indices)`` returns ``uint8 [B, C, H, W]``."""

    targets: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def subset(self, indices: torch.Tensor) -> Split:
        return SubsetSplit(self, indices)

    def fingerprint(self) -> str:
        """A digest of what index i means for every i: the images (or their files) and labels, in order."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = self._digest()
        return self._fingerprint

    def _digest(self) -> str:
        raise NotImplementedError

    def files(self) -> tuple[Path, list[str]] | None:
        """(root, paths relative to it) for images decoded from files, None for images in memory."""
        return None

    def digests(self, indices: list[int]) -> list[str]:
        """Checksums of the files of ``indices`` (images decoded from files only): what they hold now."""
        root, rels = self.files()
        return [files.file_identity(root / rels[i]) for i in indices]


class TensorSplit(Split):
    """All images in memory as one uint8 tensor."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be uint8 [N, C, H, W]")
        if len(images) != len(targets):
            raise DataError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = targets.long()

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]

    def subset(self, indices: torch.Tensor) -> Split:
        return TensorSplit(self.images[indices], self.targets[indices])

    def _digest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(tuple(self.images.shape)).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        h.update(self.targets.numpy().tobytes())
        return h.hexdigest()


class SubsetSplit(Split):
    def __init__(self, base: Split, indices: torch.Tensor):
        self.base, self.indices = base, indices.long()
        self.targets = base.targets[self.indices]

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return self.base.load(self.indices[indices])

    def _digest(self) -> str:
        return hashlib.blake2b(self.base.fingerprint().encode() + self.indices.numpy().tobytes(),
                               digest_size=16).hexdigest()

    def files(self) -> tuple[Path, list[str]] | None:
        base = self.base.files()
        return None if base is None else (base[0], [base[1][i] for i in self.indices.tolist()])
