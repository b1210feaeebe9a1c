"""kNN accuracy of features: the standard monitor of self-supervised encoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.1,
                 chunk: int = 512) -> float:
    """Top-1 accuracy of a similarity-weighted kNN vote (cosine, ``exp(sim / temperature)``).

    ``bank`` [N, D] with ``bank_labels`` [N] votes for ``queries`` [M, D]; features are
    L2-normalised here. Queries go in chunks so at most ``chunk x N`` similarities exist at once.
    """
    # imported here: lightly.utils.benchmarking pulls in pytorch_lightning, 3.3 of the 10 s that
    # importing ssal.experiment.loop took (python -X importtime), paid by every command, typos included
    from lightly.utils.benchmarking import knn_predict

    bank_t = F.normalize(bank.float(), dim=1).t().contiguous()
    k = min(k, len(bank))
    correct = 0
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        pred = knn_predict(q, bank_t, bank_labels, num_classes, knn_k=k, knn_t=temperature)[:, 0]
        correct += int((pred == query_labels[start:start + chunk]).sum())
    return correct / max(1, len(queries))


def pixels(split, max_dims: int = 4096, chunk: int = 4096) -> torch.Tensor | None:
    """A split's images as flat float vectors (for the raw-pixel kNN reference), or None when
    images are larger than ``max_dims`` values."""
    first = split.load(torch.arange(1))
    if first[0].numel() > max_dims:
        return None
    out = [split.load(torch.arange(s, min(s + chunk, len(split)))).flatten(1).float()
           for s in range(0, len(split), chunk)]
    return torch.cat(out)
