"""Diversity and representativeness: core-set, BADGE and TypiClust."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssal import checks
from ssal.select import functional as Fn
from ssal.select.base import INITIAL_STRATEGIES, STRATEGIES, Signals, Strategy, reads_features
from ssal.select.signals import Embeddings, Features, Probs, Signal


def with_labeled(signals: Signals, request: Signal) -> tuple[torch.Tensor, torch.Tensor]:
    """Labeled rows first, then the candidates; and the mask of the labeled rows."""
    lab = signals[request.on_labeled()]
    feats = torch.cat([lab, signals[request]])
    mask = torch.zeros(len(feats), dtype=torch.bool)
    mask[: len(lab)] = True
    return feats, mask


@STRATEGIES.register("coreset")
class CoreSet(Strategy):
    """k-center greedy in the model's feature space (Sener & Savarese 2018): cover the pool."""

    needs = (Features(), Features(labeled=True))

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        feats, mask = with_labeled(signals, Features())
        picked = Fn.kcenter_greedy(feats, mask, budget)
        return signals.candidates[picked - int(mask.sum())]


@STRATEGIES.register("badge")
class Badge(Strategy):
    """k-means++ seeding on gradient embeddings (Ash et al. 2020): uncertain and diverse."""

    needs = (Probs(), Features())

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        return signals.candidates[Fn.badge(signals[Probs()], signals[Features()], budget, generator)]


@STRATEGIES.register("typiclust")
class TypiClust(Strategy):
    """Most typical point of the least covered clusters of the SSL features (Hacohen et al. 2022)."""

    @dataclass
    class Config:
        neighbors: int = 20  # k of the typicality (inverse mean distance to k nearest neighbours)
        max_clusters: int = 500

        def check(self, key: str, recipe) -> None:
            checks.at_least(f"{key}.neighbors", self.neighbors, 1)
            checks.at_least(f"{key}.max_clusters", self.max_clusters, 1)

    needs = (Embeddings(), Embeddings(labeled=True))

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        feats, mask = with_labeled(signals, Embeddings())
        picked = Fn.typiclust(feats, mask, budget, generator, k=self.cfg.neighbors, max_clusters=self.cfg.max_clusters)
        return signals.candidates[picked - int(mask.sum())]


@INITIAL_STRATEGIES.register("typiclust")
@reads_features
def initial_typiclust(unlabeled: torch.Tensor, targets: torch.Tensor, k: int, generator: torch.Generator,
                      embed=None, classes=None) -> torch.Tensor:
    """Cold start: TypiClust on the features of the pool (the pretrained encoder's when the recipe
    pretrains). ``embed(indices)`` gives the features; no label is read."""
    if embed is None:
        raise ValueError("the typiclust initial strategy needs the pool's features")
    feats = embed(unlabeled)
    picked = Fn.typiclust(feats, torch.zeros(len(unlabeled), dtype=torch.bool), k, generator)
    return unlabeled[picked]
