"""Objectives that train no network: the encoder stays frozen and a linear head is fitted on its features in
closed form (a convex problem, scikit-learn's multinomial logistic regression). ``linear_probe``, the plain
baseline of self-supervised learning, fits it on the labeled images; ``label_propagation``
(:mod:`ssal.semi.label_propagation`) also on pseudo-labels spread over the pool.

A :class:`ClosedForm` objective implements :meth:`solve`; the engine calls it instead of running
``train.steps`` optimizer steps (``train.steps``, the learning rate and the views do not apply).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ssal import checks
from ssal.semi.base import OBJECTIVES, Objective

NO_CLASS = -30.0  # the logit of a class no labeled image has (its probability ~1e-13 of the others')


def pool_features(engine: Any, model: torch.nn.Module, split: Any, indices: torch.Tensor,
                  batch_size: int) -> torch.Tensor:
    """The frozen encoder's features of ``split[indices]`` (the model's penultimate layer)."""
    model.eval()
    return engine.predict(model, split, indices, ("features",), batch_size, desc="frozen features")["features"]


class ClosedForm(Objective):
    """An objective solved once instead of trained by steps; the model's backbone stays as it was given."""

    closed_form = True
    views: dict = {}

    def loss(self, batch):  # never called: the engine calls solve
        raise NotImplementedError("a closed-form objective is solved, not stepped")

    def solve(self, engine: Any, data: Any, seed: int) -> dict[str, float]:
        """Fit the model's head on ``data`` (a :class:`ssal.engine.TrainData`); returns the logs."""
        raise NotImplementedError

    def fit_head(self, features: torch.Tensor, labels: np.ndarray, weights: np.ndarray | None,
                 inverse_c: float) -> None:
        """Set ``model.head`` to the multinomial logistic regression of ``labels`` on the standardised
        ``features`` (each row weighted by ``weights``; rows of weight 0 left out): scikit-learn's logits."""
        from sklearn.linear_model import LogisticRegression  # heavy (scikit-learn), and only these objectives

        head = self.model.head
        x = features.double().numpy()
        keep = np.ones(len(x), dtype=bool) if weights is None else weights > 0
        present = np.unique(labels[keep])
        weight = torch.zeros_like(head.weight, dtype=torch.float64)
        bias = torch.full_like(head.bias, NO_CLASS, dtype=torch.float64)
        if len(present) == 1:  # one class: it wins everywhere
            bias[int(present[0])] = 0.0
        else:
            # standardised features (an encoder's scale is arbitrary: a fresh BatchNorm network's is ~1e-3),
            # the scaling then folded into the head: w x' + b = (w / s) x + (b - w m / s)
            mean, scale = x[keep].mean(axis=0), x[keep].std(axis=0) + 1e-12
            clf = LogisticRegression(C=inverse_c, max_iter=1000)
            clf.fit((x[keep] - mean) / scale, labels[keep], sample_weight=None if weights is None else weights[keep])
            coef, intercept = clf.coef_, clf.intercept_
            if len(present) == 2:  # scikit-learn keeps one row for two classes: logit of class 1 vs 0
                coef, intercept = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
            coef = coef / scale
            weight[present] = torch.from_numpy(coef)
            bias[present] = torch.from_numpy(intercept - coef @ mean)
        with torch.no_grad():
            head.weight.copy_(weight.to(head.weight.dtype))
            head.bias.copy_(bias.to(head.bias.dtype))


@OBJECTIVES.register("linear_probe")
class LinearProbe(ClosedForm):
    """A linear head on the frozen encoder's features of the labeled images (the plain baseline)."""

    @dataclass
    class Config:
        inverse_c: float = 1.0  # the head's L2 strength: scikit-learn's C (larger: weaker)

        def check(self, key: str, recipe: Any) -> None:
            checks.require(self.inverse_c > 0, f"{key}.inverse_c must be > 0, got {self.inverse_c}")

    def solve(self, engine: Any, data: Any, seed: int) -> dict[str, float]:
        cfg = self.cfg or self.Config()
        feats = pool_features(engine, self.model, data.split, data.labeled, self.train_cfg.eval_batch_size)
        self.fit_head(feats, data.labels.numpy(), None, cfg.inverse_c)
        return {}
