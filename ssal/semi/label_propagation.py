"""Label propagation on frozen features (Zhou et al. 2004, as Iscen et al. 2019 use it), and the objective
that trains no network: the labels spread over a kNN graph of the pool's features to every unlabeled image,
then a linear head is fitted on the frozen features to the labels and the propagated pseudo-labels, each
weighted by its certainty. A classifier for the whole pool in seconds (one pass of the encoder, no SGD on
images); the survey's "self-supervised features + label propagation" when the encoder is pretrained.

The graph (memory O(N k)): features centred on the pool's mean and L2-normalised;
a_ij = max(v_i . v_j, 0) ** gamma for the k nearest neighbours j of i (itself excluded), W = A + A^T,
W_n = D^-1/2 W D^-1/2 with D = diag(W 1). The labels: (I - alpha W_n) Z = Y, one column per class (Y is
1 / n_c on class c's n_c labeled rows: each class seeds the same mass), solved by conjugate gradient
(scipy; the matrix is symmetric positive definite for alpha < 1). Certainty of row i:
1 - H(z_i / |z_i|_1) / log C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ssal import checks
from ssal.blocks import rows_per_block
from ssal.semi.base import OBJECTIVES
from ssal.semi.linear_probe import ClosedForm, pool_features


def knn_graph(features: torch.Tensor, k: int, gamma: float = 3.0, chunk: int | None = None):
    """The symmetric normalised affinity W_n (a scipy CSR matrix, N x N, O(N k) entries)."""
    from scipy import sparse  # only label propagation needs sparse matrices

    x = features.double()
    v = torch.nn.functional.normalize(x - x.mean(dim=0), dim=1).float()  # centred: one common direction says nothing
    n = len(v)
    k = min(k, n - 1)
    rows, cols, vals = [], [], []
    chunk = chunk or rows_per_block(n)
    for start in range(0, n, chunk):
        s = v[start:start + chunk] @ v.T
        s[torch.arange(len(s)), torch.arange(start, start + len(s))] = -float("inf")  # not itself
        top = s.topk(k, dim=1) if k > 0 else None
        if top is None:
            continue
        rows.append(np.repeat(np.arange(start, start + len(s)), k))
        cols.append(top.indices.flatten().numpy())
        vals.append(top.values.clamp_min(0).pow(gamma).flatten().numpy().astype(np.float64))
    if not rows:
        return sparse.csr_matrix((n, n))
    a = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    w = a + a.T
    d = np.asarray(w.sum(axis=1)).flatten()
    inv = np.where(d > 0, 1.0 / np.sqrt(np.maximum(d, 1e-300)), 0.0)
    return sparse.diags(inv) @ w @ sparse.diags(inv)


def propagate(w_n, labeled: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.99,
              tol: float = 1e-6, max_iter: int = 50) -> np.ndarray:
    """Z [N, C]: (I - alpha W_n) Z = Y by conjugate gradient, one class column at a time; Y_ic = 1 / |labeled of
    class c| on class c's labeled rows (class mass balance: a class with many labels, CEAL's sure ones or an
    imbalanced set, does not take over the graph)."""
    from scipy import sparse  # only label propagation needs sparse matrices
    from scipy.sparse.linalg import cg  # (the same)

    n = w_n.shape[0]
    system = sparse.identity(n, format="csr") - alpha * w_n
    z = np.zeros((n, num_classes))
    for c in range(num_classes):
        y = np.zeros(n)
        seeds = labeled[labels == c]
        if len(seeds) == 0:
            continue
        y[seeds] = 1.0 / len(seeds)  # each class seeds the same mass, however many labels it has
        z[:, c], _ = cg(system, y, rtol=tol, maxiter=max_iter)
    return z


def certainty(z: np.ndarray) -> np.ndarray:
    """1 - H(z_i / |z_i|_1) / log C per row (0 where nothing reached the row)."""
    p = np.clip(z, 0, None)
    total = p.sum(axis=1, keepdims=True)
    p = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    out = 1.0 - entropy / math.log(z.shape[1]) if z.shape[1] > 1 else np.ones(len(z))
    return np.where(total.flatten() > 0, out, 0.0)


@OBJECTIVES.register("label_propagation")
class LabelPropagation(ClosedForm):
    """Labels spread over the kNN graph of the frozen features; a linear head fitted to them."""

    @dataclass
    class Config:
        neighbors: int = 50  # k (Iscen et al. 2019: 50)
        alpha: float = 0.99
        gamma: float = 3.0  # a_ij = s_ij ** gamma
        max_iter: int = 50  # conjugate-gradient iterations per class (Iscen et al.: 20)
        inverse_c: float = 1.0  # the head's L2 strength: scikit-learn's C

        def check(self, key: str, recipe: Any) -> None:
            checks.at_least(f"{key}.neighbors", self.neighbors, 1)
            checks.within(f"{key}.alpha", self.alpha, 0, 1, low_open=True, high_open=True)
            checks.at_least(f"{key}.gamma", self.gamma, 0)
            checks.at_least(f"{key}.max_iter", self.max_iter, 1)
            checks.require(self.inverse_c > 0, f"{key}.inverse_c must be > 0, got {self.inverse_c}")

    def solve(self, engine: Any, data: Any, seed: int) -> dict[str, float]:
        cfg = self.cfg or self.Config()
        every = torch.cat([data.labeled, data.unlabeled]) if data.unlabeled is not None else data.labeled
        feats = pool_features(engine, self.model, data.split, every, self.train_cfg.eval_batch_size)
        n_l = len(data.labeled)
        num_classes = self.model.head.out_features
        z = propagate(knn_graph(feats, cfg.neighbors, cfg.gamma), np.arange(n_l), data.labels.numpy(), num_classes,
                      cfg.alpha, max_iter=cfg.max_iter)
        pseudo, weight = z.argmax(axis=1), certainty(z)
        pseudo[:n_l], weight[:n_l] = data.labels.numpy(), 1.0  # the labels themselves, weight 1
        self.fit_head(feats, pseudo, weight, cfg.inverse_c)
        logs = {"pseudo_certainty": float(weight[n_l:].mean()) if len(weight) > n_l else 1.0}
        if data.unlabeled_labels is not None and len(weight) > n_l:  # simulation: how right the spread labels are
            logs["pseudo_acc"] = float((pseudo[n_l:] == data.unlabeled_labels.numpy()).mean())
        return logs
