"""Learning loss (Yoo & Kweon 2019): a small module learns to predict the task loss of a sample from
the backbone's intermediate features; selection takes the highest predicted losses.

Everything of the method is here: the loss-prediction module, trained along whatever objective
trains the model (an :class:`ssal.semi.base.Auxiliary` that watches the model's passes over the
labeled view), its margin ranking loss, the signal that reads it at selection time and the strategy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightly.utils import dist
from torch import nn

from ssal import checks
from ssal.errors import ConfigError
from ssal.select.base import STRATEGIES, ScoreStrategy, Signals
from ssal.select.signals import Chunk, Signal, produces
from ssal.semi.base import Auxiliary

STAGES = 4  # the paper's four ResNet blocks; fewer when the backbone has fewer


def stages(backbone: nn.Module) -> list[dict]:
    """The last (up to) four stages of ``backbone`` (timm's ``feature_info``: module name, channels)."""
    info = list(getattr(backbone, "feature_info", None) or [])
    return info[-STAGES:]


def ranking_loss(predicted: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The paper's loss-prediction loss: samples are paired (i, B - 1 - i) over the batch and, per pair,
    max(0, -sign(l_i - l_j) (l^_i - l^_j) + margin) with sign +1 when l_i > l_j and -1 otherwise;
    the mean over the B / 2 pairs. ``target`` (the true losses) gets no gradient. An odd batch leaves
    its middle sample unpaired."""
    b = len(predicted) // 2
    if b == 0:
        return predicted.sum() * 0.0
    diff = (predicted - predicted.flip(0))[:b]
    sign = torch.where((target - target.flip(0))[:b].detach() > 0, 1.0, -1.0)
    return F.relu(margin - sign * diff).mean()


class LossPrediction(Auxiliary):
    """Per stage: global average pooling, a linear layer to ``dim`` and a ReLU; the concatenation goes
    through one linear layer to the predicted loss. Trained with ``weight`` times :func:`ranking_loss`
    over the global labeled batch; its gradient stops reaching the backbone after ``stop_gradient`` of
    the steps (the paper's 120 of 200 epochs)."""

    def __init__(self, model: nn.Module, dim: int, margin: float, weight: float, stop_gradient: float):
        super().__init__()
        self.names = [s["module"] for s in stages(model.backbone)]
        self.fcs = nn.ModuleList(nn.Linear(s["num_chs"], dim) for s in stages(model.backbone))
        self.out = nn.Linear(dim * len(self.fcs), 1)
        self.margin, self.weight, self.stop_gradient = margin, weight, stop_gradient
        self._seen: dict = {}

    @contextlib.contextmanager
    def watching(self, model: nn.Module, n: int) -> Iterator[None]:
        """Keep the first ``n`` samples of the stages' outputs and of the logits of this pass."""
        self._seen = {"maps": [None] * len(self.names)}

        def keep(i: int):
            def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                self._seen["maps"][i] = output[:n]
            return hook

        handles = [model.backbone.get_submodule(name).register_forward_hook(keep(i))
                   for i, name in enumerate(self.names)]
        handles.append(model.head.register_forward_hook(
            lambda module, args, output: self._seen.__setitem__("logits", output[:n])))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def predict(self, detach: bool = False) -> torch.Tensor:
        """The predicted losses of the samples seen in the last watched pass, [n]."""
        parts = []
        for fc, m in zip(self.fcs, self._seen["maps"], strict=True):
            m = m.detach() if detach else m
            pooled = m.float().mean(dim=(2, 3)) if m.ndim == 4 else m.float().mean(dim=1) if m.ndim == 3 else m.float()
            parts.append(F.relu(fc(pooled)))
        return self.out(torch.cat(parts, dim=1)).squeeze(1)

    def loss(self, y_l: torch.Tensor, step: int, steps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        predicted = self.predict(detach=step >= self.stop_gradient * steps)
        target = F.cross_entropy(self._seen["logits"].float(), y_l, reduction="none").detach()
        if dist.world_size() > 1:  # pair over the global batch: the same pairs whatever the processes
            predicted, target = torch.cat(dist.gather(predicted)), torch.cat(dist.gather(target))
        loss = ranking_loss(predicted, target, self.margin)
        self._seen = {}
        return self.weight * loss, {"ll_loss": loss.detach()}


@dataclass(frozen=True)
class PredictedLoss(Signal):
    """The loss-prediction module's output for each sample, [N]."""


@produces(PredictedLoss)
def _predicted_loss(req: PredictedLoss, chunk: Chunk) -> torch.Tensor:
    module = getattr(chunk.ctx.objective, "auxiliary", None)
    if not isinstance(module, LossPrediction):
        raise ValueError("the predicted loss needs a model trained with the learning-loss module (active.strategy=ll)")
    with module.watching(chunk.ctx.model, len(chunk.x)):
        chunk.ctx.model(chunk.x)
    return module.predict().float()


@STRATEGIES.register("ll")
class LearningLoss(ScoreStrategy):
    """Highest predicted loss (Yoo & Kweon 2019). The loss-prediction module trains with the model,
    whatever ``train.method``, on the backbone's last (up to) four stages."""

    @dataclass
    class Config:
        weight: float = 1.0  # lambda, the weight of the loss-prediction loss
        margin: float = 1.0  # xi, the margin of the ranking loss
        stop_gradient: float = 0.6  # after this fraction of train.steps the module stops training the backbone
        dim: int = 128  # width of each stage's linear layer

        def check(self, key: str, recipe) -> None:
            checks.at_least(f"{key}.weight", self.weight, 0)
            checks.at_least(f"{key}.margin", self.margin, 0)
            checks.within(f"{key}.stop_gradient", self.stop_gradient, 0, 1, note=" (a fraction of train.steps)")
            checks.at_least(f"{key}.dim", self.dim, 1)
            checks.require(recipe.train.batch_size >= 2, "active.strategy=ll pairs the labeled samples of a batch: "
                                                         f"set train.batch_size >= 2 (got {recipe.train.batch_size})")

    needs = (PredictedLoss(),)

    def check_model(self, backbone: nn.Module, num_classes: int) -> None:
        if not stages(backbone):
            raise ConfigError(f"active.strategy=ll reads the backbone's intermediate stages, and "
                              f"{type(backbone).__name__} lists none (no timm feature_info): choose another "
                              "model.backbone or strategy")

    def auxiliary(self, model: nn.Module) -> LossPrediction:
        c = self.cfg
        return LossPrediction(model, c.dim, c.margin, c.weight, c.stop_gradient)

    def scores(self, signals: Signals) -> torch.Tensor:
        return signals[PredictedLoss()]
