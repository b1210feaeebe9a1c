"""What a fine-tuning objective is: a module that owns the model being trained, any extra
modules of its method (an EMA teacher, an auxiliary head) and the loss."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
from torch import nn

from ssal.models.heads import keyed_dropout
from ssal.registry import Registry

OBJECTIVES = Registry("objective")


class Auxiliary(nn.Module):
    """A module a selection strategy trains along the objective (e.g. learning loss's loss predictor).

    ``watching(model, n)`` is a context manager around a forward pass of ``model`` whose first ``n``
    samples are the labeled batch (it may hook the model's layers to see them); ``loss(y_l, step,
    steps)`` then returns (loss, logs) from what it saw, added to the objective's loss.
    """

    def watching(self, model: nn.Module, n: int) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def loss(self, y_l: torch.Tensor, step: int, steps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


class Objective(nn.Module):
    """A fine-tuning method. ``forward(batch) -> (loss, logs)``; the engine optimises the whole
    module (so trainable extra modules train and shard with the model) and checkpoints it.

    ``views`` declares what a batch holds: key -> (source, view), source ``labeled`` or
    ``unlabeled``, view a name of :data:`ssal.data.views.VIEWS`. The engine builds that batch plus
    ``y_l`` (labels of the labeled samples), ``keys`` (view key -> one random key per sample) and,
    in simulation, ``y_u`` (the hidden labels of the unlabeled samples: for diagnostics such as
    pseudo-label accuracy, never for the loss). Forward the model with :meth:`run_model`.
    An unlabeled batch holds ``unlabeled_ratio`` times as many samples as a labeled one.

    Extra modules are submodules; frozen ones (EMA teachers) have ``requires_grad`` off and stay
    in eval mode. ``model`` is what is evaluated and kept after training (unless ``train.ema``).

    A method implements :meth:`loss`; ``forward`` adds the loss of the :class:`Auxiliary` a selection
    strategy may have attached (:meth:`attach`), which watches the model's passes over the labeled
    view and so trains along whatever objective trains the model.
    """

    Config: ClassVar[type | None] = None  # the method's own recipe sub-section (train.<name>)
    views: ClassVar[dict[str, tuple[str, str]]] = {"x_l": ("labeled", "weak")}

    def __init__(self, model: nn.Module, train_cfg: Any):
        super().__init__()
        self.model = model
        self.train_cfg = train_cfg
        self.cfg = getattr(train_cfg, type(self).registry_name, None)
        self.step = 0  # optimizer steps taken so far in this fit (kept up to date by the engine)
        self.auxiliary: Auxiliary | None = None  # see attach()

    @classmethod
    def uses_unlabeled(cls) -> bool:
        return any(source == "unlabeled" for source, _ in cls.views.values())

    @property
    def unlabeled_ratio(self) -> int:
        """Unlabeled samples per labeled sample in a batch (the method's ``mu``; 1 if it has none)."""
        return int(getattr(self.cfg, "mu", 1)) if self.uses_unlabeled() else 0

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """(loss, logs) of the method: logs are detached scalars, read only every few steps."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        loss, logs = self.loss(batch)
        if self.auxiliary is not None:
            extra, more = self.auxiliary.loss(batch["y_l"], self.step, self.train_cfg.steps)
            loss, logs = loss + extra, {**logs, **more}
        return loss, logs

    def attach(self, auxiliary: Auxiliary | None) -> None:
        """Train ``auxiliary`` with the model: a submodule, so it is optimised, synchronised and checkpointed
        with the objective's other modules."""
        if auxiliary is not None:
            self.auxiliary = auxiliary

    def run_model(self, batch: dict[str, Any], *views: str, **kwargs: Any) -> Any:
        """``model`` on the named views of ``batch``, concatenated in that order (one forward pass, so
        BatchNorm sees them together). Each sample's dropout mask is keyed by the sample (the batch's
        ``keys``, made by the engine), so it does not depend on how the batch is split. An attached
        auxiliary watches the pass that starts with the labeled view ``x_l``."""
        x = torch.cat([batch[v] for v in views]) if len(views) > 1 else batch[views[0]]
        keys = batch.get("keys")
        sample_keys = torch.cat([keys[v] for v in views]) if keys is not None else None
        watch = (self.auxiliary.watching(self.model, len(batch["x_l"]))
                 if self.auxiliary is not None and views[0] == "x_l" else contextlib.nullcontext())
        with keyed_dropout(self.model, sample_keys), watch:
            return self.model(x, **kwargs)

    def after_step(self, step: int) -> None:
        """Called after each optimizer step (EMA teachers update here)."""

    has_teacher: ClassVar[bool] = False  # whether teacher_model() returns a model (checked at validation)
    closed_form: ClassVar[bool] = False  # solved once (ssal.semi.linear_probe.ClosedForm), not trained by steps

    def teacher_model(self) -> nn.Module | None:
        """The method's EMA teacher, a model with ``model``'s interface, or None. Selection reads it
        (consistency scores, the round-0 output discrepancy)."""
        return None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The representation selection compares samples in (kNN, prototypes, clusters): the
        model's penultimate features here; a method with its own feature space overrides it."""
        return self.model.features(x)

    def train(self, mode: bool = True) -> Objective:
        super().train(mode)
        for m in self.children():
            if m is not self.model and not any(p.requires_grad for p in m.parameters()):
                m.eval()  # frozen extra modules (teachers) always predict with their running statistics
        return self

    def extra_state(self) -> dict[str, torch.Tensor]:
        """The state of everything but ``model`` (teachers, auxiliary heads, counters): checkpointed."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        own = {k: v for k, v in self.state_dict().items() if k.startswith("model.")}
        self.load_state_dict({**own, **state})


def resolve_views(views: dict[str, tuple[str, str]], base_view: str) -> dict[str, tuple[str, str]]:
    """``views`` with the base view ``weak`` replaced by ``base_view`` (a recipe's ``train.augment``:
    weak | strong | none); the views a method chose otherwise stay as declared."""
    return {key: (source, base_view if view == "weak" else view) for key, (source, view) in views.items()}


def make_objective(cls: type[Objective], model: nn.Module, train_cfg: Any, auxiliary: Auxiliary | None = None,
                   state: dict[str, torch.Tensor] | None = None) -> Objective:
    """``cls`` around ``model`` as a recipe's ``train`` section asks: its base view is ``train.augment``,
    ``auxiliary`` (a selection strategy's module) trains along, and ``state`` (an earlier fit's
    ``objective_state``) restores its extra modules (a teacher)."""
    objective = cls(model, train_cfg)
    objective.views = resolve_views(objective.views, train_cfg.augment)
    objective.attach(auxiliary)
    if state is not None:
        objective.load_extra_state(state)
    return objective
