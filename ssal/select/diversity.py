"""Diversity and representativeness: core-set, BADGE and TypiClust."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssal.select import functional as Fn
from ssal.select.base import INITIAL_STRATEGIES, STRATEGIES, Signals, Strategy


def _with_labeled(signals: Signals, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Labeled rows first, then the candidates; and the mask of the labeled rows."""
    lab = signals.labeled_values[f"labeled_{name}"]
    feats = torch.cat([lab, signals[name]])
    mask = torch.zeros(len(feats), dtype=torch.bool)
    mask[: len(lab)] = True
    return feats, mask


@STRATEGIES.register("coreset")
class CoreSet(Strategy):
    """k-center greedy in the model's feature space (Sener & Savarese 2018): cover the pool."""

    needs = frozenset({"features", "labeled_features"})

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        feats, mask = _with_labeled(signals, "features")
        picked = Fn.kcenter_greedy(feats, mask, budget)
        return signals.candidates[picked - int(mask.sum())]


@STRATEGIES.register("badge")
class Badge(Strategy):
    """k-means++ seeding on gradient embeddings (Ash et al. 2020): uncertain and diverse."""

    needs = frozenset({"probs", "features"})

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        return signals.candidates[Fn.badge(signals["probs"], signals["features"], budget, generator)]


@STRATEGIES.register("typiclust")
class TypiClust(Strategy):
    """Most typical point of the least covered clusters of the SSL features (Hacohen et al. 2022)."""

    @dataclass
    class Config:
        neighbors: int = 20  # k of the typicality (inverse mean distance to k nearest neighbours)
        max_clusters: int = 500

    needs = frozenset({"embeddings", "labeled_embeddings"})

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        feats, mask = _with_labeled(signals, "embeddings")
        cfg = self.cfg or self.Config()
        picked = Fn.typiclust(feats, mask, budget, generator, k=cfg.neighbors, max_clusters=cfg.max_clusters)
        return signals.candidates[picked - int(mask.sum())]


@INITIAL_STRATEGIES.register("typiclust")
def initial_typiclust(unlabeled: torch.Tensor, targets: torch.Tensor, k: int, generator: torch.Generator,
                      embed=None) -> torch.Tensor:
    """Cold start: TypiClust on the features of the pool (the pretrained encoder's when the recipe
    pretrains). ``embed(indices)`` gives the features; no label is read."""
    if embed is None:
        raise ValueError("the typiclust initial strategy needs the pool's features")
    feats = embed(unlabeled)
    picked = Fn.typiclust(feats, torch.zeros(len(unlabeled), dtype=torch.bool), k, generator)
    return unlabeled[picked]
