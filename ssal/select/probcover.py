"""ProbCover (Yehuda et al., NeurIPS 2022): for low budgets, label the points whose delta-balls in a
self-supervised feature space cover the most of the pool not covered yet.

- The features are L2-normalised; ``x -> y`` is an edge when ||x - y|| < delta (every point covers itself).
- delta (unless given): the paper's purity rule. k-means with one cluster per class gives pseudo-labels;
  a ball is pure when every point in it has its centre's pseudo-label; delta is the largest radius at
  which at least ``alpha`` (0.95) of the balls are pure. With d_x the distance from x to its nearest
  point of another pseudo-label, x's ball is pure exactly when d_x >= delta, so that radius is the
  ceil(alpha N)-th largest d_x: computed exactly, no grid of radii.
- Greedy max coverage: the labeled points' balls count as covered; each pick is the point whose ball
  holds the most uncovered points (ties: the lowest position). Once everything is covered the rest of
  the batch is drawn at random (seeded).

Memory: the graph is O(N x average degree) (int32 neighbour lists: 4 bytes an edge, plus 8 bytes a
point; more than 2^29 edges is refused with one line); distances are computed a block of rows at a time,
at most 256 MB (:mod:`ssal.blocks`). Time O(N^2 D) for the distances, O(edges) for the greedy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ssal import checks
from ssal.blocks import rows_per_block
from ssal.errors import ConfigError
from ssal.select.base import INITIAL_STRATEGIES, STRATEGIES, Signals, Strategy, reads_features
from ssal.select.diversity import with_labeled
from ssal.select.functional import _normalize, check_finite
from ssal.select.signals import Embeddings, Probs

MAX_EDGES = 2**29  # 2 GB of int32 neighbour lists


def nearest_other(x: torch.Tensor, pseudo: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """d_x: the distance from each row of ``x`` to the nearest row with another ``pseudo`` label (inf: none)."""
    out = []
    chunk = chunk or rows_per_block(len(x))
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start:start + chunk], x)
        d[pseudo[start:start + chunk, None] == pseudo[None, :]] = float("inf")
        out.append(d.min(dim=1).values)
    return torch.cat(out) if out else torch.zeros(0)


def purity_delta(x: torch.Tensor, pseudo: torch.Tensor, alpha: float = 0.95, chunk: int | None = None) -> float:
    """The largest delta at which at least ``alpha`` of the balls {y : ||x - y|| < delta} are pure; 0 (no
    edges: the picks are random) when fewer than two pseudo-labels leave every radius pure."""
    d = nearest_other(x, pseudo, chunk)
    if len(d) == 0:
        return 0.0
    m = max(1, math.ceil(alpha * len(d) - 1e-9))
    delta = float(torch.sort(d, descending=True).values[m - 1])
    return delta if math.isfinite(delta) else 0.0


def pseudo_labels(x: torch.Tensor, clusters: int, generator: torch.Generator | None) -> torch.Tensor:
    from sklearn.cluster import KMeans  # heavy (scikit-learn), and only the clustering strategies need it

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    km = KMeans(n_clusters=min(clusters, len(x)), n_init=1, random_state=seed)
    return torch.as_tensor(km.fit_predict(x.numpy()), dtype=torch.long)


def ball_graph(x: torch.Tensor, delta: float, chunk: int | None = None,
               max_edges: int = MAX_EDGES) -> tuple[np.ndarray, np.ndarray]:
    """The delta-ball graph as CSR: ``indptr`` [N + 1] (int64) and the neighbours ``indices`` (int32) of each
    row, itself included (the graph is symmetric: a distance is)."""
    indptr, indices = [np.zeros(1, dtype=np.int64)], []
    total = 0
    chunk = chunk or rows_per_block(len(x))
    for start in range(0, len(x), chunk):
        mask = torch.cdist(x[start:start + chunk], x) < delta
        counts = mask.sum(dim=1).numpy().astype(np.int64)
        if total + counts.sum() > max_edges:
            mean = (total + counts.sum()) / (start + len(counts))
            raise ConfigError(f"probcover: the delta-ball graph of {len(x):,} points at delta {delta:.3g} would hold "
                              f"about {mean * len(x):,.0f} edges ({mean:,.0f} a point; {4 * mean * len(x) / 2**30:.1f} "
                              f"GB), over the {max_edges:,} allowed: set active.probcover.delta lower or active.subset")
        indices.append(mask.nonzero()[:, 1].numpy().astype(np.int32))
        indptr.append(total + np.cumsum(counts))
        total += int(counts.sum())
    # one array without a second copy of the graph: each block is freed as it is moved in (np.empty touches no
    # page until it is written, so the resident size grows as the blocks shrink)
    out = np.empty(total, dtype=np.int32)
    at = 0
    for k, block in enumerate(indices):
        out[at:at + len(block)] = block
        at += len(block)
        indices[k] = None
    return np.concatenate(indptr), out


def _neighbours(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The neighbour lists of ``rows``, concatenated."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int32)
    return np.concatenate([indices[indptr[r]:indptr[r + 1]] for r in rows])


def max_coverage(indptr: np.ndarray, indices: np.ndarray, labeled: np.ndarray, budget: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy max coverage on a symmetric CSR graph: ``budget`` positions not in ``labeled``, each covering the
    most uncovered points (ties: the lowest position); once all is covered, the rest at random."""
    n = len(indptr) - 1
    covered = np.zeros(n, dtype=bool)
    degree = np.diff(indptr).astype(np.int64)  # uncovered neighbours of each point

    def cover(rows: np.ndarray) -> None:
        new = np.unique(_neighbours(indptr, indices, rows))
        new = new[~covered[new]]
        covered[new] = True
        # each newly covered y leaves the count of every point whose ball holds it: its neighbours (symmetric)
        degree[:] -= np.bincount(_neighbours(indptr, indices, new), minlength=n)

    free = ~labeled.copy()
    cover(np.flatnonzero(labeled))
    picks: list[int] = []
    budget = min(int(budget), int(free.sum()))
    while len(picks) < budget:
        best = int(np.argmax(np.where(free, degree, -1)))
        if degree[best] <= 0:  # all covered: the rest of the batch at random
            rest = torch.as_tensor(np.flatnonzero(free))
            order = torch.randperm(len(rest), generator=generator)[: budget - len(picks)]
            picks += rest[order].tolist()
            break
        picks.append(best)
        free[best] = False
        cover(np.array([best]))
    return torch.tensor(picks, dtype=torch.long)


def probcover(features: torch.Tensor, labeled: torch.Tensor, budget: int, generator: torch.Generator | None = None,
              clusters: int = 10, delta: float | None = None, alpha: float = 0.95) -> tuple[torch.Tensor, float]:
    """ProbCover's picks (positions among the rows of ``features``, never ``labeled`` ones) and the delta used."""
    x = _normalize(check_finite(features, "features")).float()
    if delta is None:
        delta = purity_delta(x, pseudo_labels(x, clusters, generator), alpha)
    indptr, indices = ball_graph(x, delta)
    return max_coverage(indptr, indices, torch.as_tensor(labeled, dtype=torch.bool).numpy(), budget, generator), delta


@STRATEGIES.register("probcover")
class ProbCover(Strategy):
    """The points whose delta-balls cover the most of the pool not covered yet (Yehuda et al. 2022)."""

    @dataclass
    class Config:
        delta: Optional[float] = None  # ball radius on the unit sphere; null: the purity rule
        alpha: float = 0.95  # the purity rule's share of pure balls
        clusters: Optional[int] = None  # k-means clusters of the purity rule; null: one per class

        def check(self, key: str, recipe) -> None:
            if self.delta is not None:
                checks.within(f"{key}.delta", self.delta, 0, 2, low_open=True, note=" (unit vectors are at most "
                              "2 apart) or null (the purity rule)")
            checks.within(f"{key}.alpha", self.alpha, 0, 1, low_open=True)
            checks.at_least(f"{key}.clusters", self.clusters, 2, " or null (one per class)", optional=True)

    needs = (Embeddings(), Embeddings(labeled=True), Probs())  # Probs: the number of classes

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        feats, mask = with_labeled(signals, Embeddings())
        clusters = self.cfg.clusters or check_finite(signals[Probs()], "probs").shape[1]  # a diverged model: an error
        picked, _ = probcover(feats, mask, budget, generator, clusters, self.cfg.delta, self.cfg.alpha)
        return signals.candidates[picked - int(mask.sum())]


@INITIAL_STRATEGIES.register("probcover")
@reads_features
def initial_probcover(unlabeled: torch.Tensor, targets: torch.Tensor, k: int, generator: torch.Generator,
                      embed=None, classes: int | None = None) -> torch.Tensor:
    """Cold start: ProbCover on the features of the pool (the pretrained encoder's when the recipe pretrains),
    delta by the purity rule with one cluster per class. No label is read."""
    if embed is None or classes is None:
        raise ValueError("the probcover initial strategy needs the pool's features and the number of classes")
    picked, _ = probcover(embed(unlabeled), torch.zeros(len(unlabeled), dtype=torch.bool), k, generator, classes)
    return unlabeled[picked]
