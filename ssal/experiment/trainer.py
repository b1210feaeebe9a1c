"""The round trainer: "train round r on the labeled pool -> a fitted model", and that model's checkpoint
round trip.

A strategy declares what it needs from training and the trainer provides it: ``Strategy.members`` > 1
trains an ensemble (the members one after another, returned as one fit whose model is an
:class:`~ssal.models.ensemble.Ensemble`), ``Strategy.auxiliary`` a module that trains along the
objective, a :class:`~ssal.select.signals.PrevProbs` request the previous round's model. What one
round hands the next is a :class:`Carry`, advanced in one place (:meth:`RoundTrainer.advance`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from ssal.data.datasets import ImageDataset
from ssal.data.pool import ActivePool
from ssal.engine import Engine, FitResult, Optim, TrainData
from ssal.models import build_model
from ssal.models.ema import ema_advice
from ssal.models.ensemble import Ensemble
from ssal.rng import derive_seed
from ssal.select.signals import PrevProbs
from ssal.semi.base import make_objective

Weights = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]  # a model's and its objective's state


@dataclass(frozen=True)
class Carry:
    """What a round hands the next: the weights it continues from (``train.reinit: false``; one pair per
    ensemble member) and the model its selection compares with (a strategy that needs the previous
    round's model). The first round carries nothing."""

    warm: list[Weights] | None = None
    previous: nn.Module | None = None


def combine(fits: list[FitResult]) -> FitResult:
    """One round's fit from its members' fits: the models as an :class:`Ensemble`, times summed, logs
    averaged over the members."""
    logs = {k: sum(f.logs[k] for f in fits) / len(fits) for k in fits[0].logs}
    return FitResult(Ensemble([f.model for f in fits]), Ensemble([f.eval_model for f in fits]),
                     sum(f.seconds for f in fits), logs, data_seconds=sum(f.data_seconds for f in fits),
                     members=list(fits))


def round0_previous_model(fit: FitResult) -> nn.Module:
    """Round 0 has no previous round: its model is compared with its EMA (the objective's teacher, or
    ``train.ema``'s average; when that is what is evaluated, with the raw weights)."""
    prev = fit.objective.teacher_model() if fit.ema is None else fit.ema
    return fit.model if prev is fit.eval_model else prev


def uses_previous_model(strategy: Any) -> bool:
    """Whether the strategy compares this round's model with the previous round's."""
    return any(isinstance(r, PrevProbs) for r in strategy.needs)


def evaluation_model(ckpt: dict, build: Callable[[], nn.Module]) -> nn.Module:
    """The model a round evaluated, from its checkpoint (the EMA when it kept one; an ensemble's members
    as one model); ``build`` makes an untrained model of the run's architecture."""
    if "members" in ckpt:
        return Ensemble([evaluation_model(member, build) for member in ckpt["members"]])
    model = build()
    model.load_state_dict(ckpt["ema"] if "ema" in ckpt else ckpt["model"])
    return model


class RoundTrainer:
    """Trains a run's rounds: the same initial weights every round (the pretrained encoder, a fresh
    head), seeded by (recipe seed, round, member) alone."""

    def __init__(self, cfg: DictConfig, data: ImageDataset, model_cfg: DictConfig, objective_cls: type,
                 strategy: Any, engine: Engine, hidden: Callable[[torch.Tensor], torch.Tensor | None]):
        self.cfg, self.data, self.model_cfg, self.objective_cls = cfg, data, model_cfg, objective_cls
        self.strategy, self.engine, self.hidden = strategy, engine, hidden
        self.encoder: dict[str, torch.Tensor] | None = None  # the pretrained backbone, once known
        self.compares = uses_previous_model(strategy)
        self.optim = Optim.from_train(cfg.train)
        advice = ema_advice(cfg.train.ema, cfg.train.steps)
        if advice:
            engine.print(f"[yellow]warning: {advice}")

    def fresh_model(self, member: int = 0) -> nn.Module:
        """The initial weights (the same every round); an ensemble's member k > 0 has its own seed."""
        torch.manual_seed(derive_seed(self.cfg.seed, "init", *((member,) if member else ())))
        model = build_model(self.model_cfg, self.data)  # a fresh head every round
        if self.encoder is not None:
            model.backbone.load_state_dict(self.encoder)
        return model

    # ------------------------------------------------------------------ train
    def train(self, r: int, pool: ActivePool, carry: Carry,
              pseudo: tuple[torch.Tensor, torch.Tensor] | None = None) -> FitResult:
        """Round ``r``'s model, or the ``Strategy.members`` models of an ensemble, one after another
        (member 0 with the seeds of a single model). ``pseudo``: unlabeled images and the labels they are
        trained with this round as if labeled (CEAL, :mod:`ssal.select.ceal`)."""
        k = self.strategy.members
        fits = [self._train_member(r, pool, carry.warm[i] if carry.warm is not None else None, i, pseudo)
                for i in range(k)]
        fit = fits[0] if k == 1 else combine(fits)
        if pseudo is not None:
            fit.logs["ceal_n"] = float(len(pseudo[0]))
            truth = self.hidden(pseudo[0])
            if truth is not None and len(truth):  # simulation: how right the model's own labels were
                fit.logs["ceal_acc"] = float((truth == pseudo[1]).float().mean())
        return fit

    def _train_member(self, r: int, pool: ActivePool, warm: Weights | None, member: int,
                      pseudo: tuple[torch.Tensor, torch.Tensor] | None = None) -> FitResult:
        cfg, k = self.cfg, self.strategy.members
        model = self.fresh_model(member)
        objective_state = None
        if warm is not None:
            model.load_state_dict(warm[0])
            objective_state = warm[1]
        labeled, labels, unlabeled = pool.labeled_indices, pool.labels, pool.unlabeled_indices
        if pseudo is not None and len(pseudo[0]):  # trained as labeled, and not also as unlabeled
            labeled, labels = torch.cat([labeled, pseudo[0]]), torch.cat([labels, pseudo[1]])
            unlabeled = unlabeled[~torch.isin(unlabeled, pseudo[0])]
        auxiliary = self.strategy.auxiliary(model)  # its weights drawn here, before the fit seeds torch
        data = TrainData(self.data.train, labeled, labels, unlabeled, hflip=self.data.hflip,
                         unlabeled_labels=self.hidden(unlabeled))
        which = f" member {member + 1}/{k}" if k > 1 else ""
        optim = self.optim
        if warm is not None and cfg.train.continue_steps is not None:  # a shorter schedule continues the last model
            optim = dataclasses.replace(optim, steps=cfg.train.continue_steps)
        return self.engine.fit(model, lambda m: make_objective(self.objective_cls, m, cfg.train, auxiliary,
                                                               objective_state),
                               data, optim, seed=derive_seed(cfg.seed, "train", r, *((member,) if member else ())),
                               ema=cfg.train.ema, desc=f"round {r} train{which} ({len(labeled)} labels)")

    # ------------------------------------------------------------------ what carries over
    def previous_model(self, r: int, fit: FitResult, carry: Carry) -> nn.Module | None:
        """What round ``r``'s selection compares ``fit`` with, when the strategy compares."""
        if not self.compares:
            return None
        return round0_previous_model(fit) if r == 0 else carry.previous

    def advance(self, fit: FitResult) -> Carry:
        """What the round after ``fit``'s continues from (with ``train.reinit: false``) and compares with."""
        warm = None
        if not self.cfg.train.reinit:
            warm = [({k: v.detach().clone() for k, v in f.model.state_dict().items()},
                     {k: v.detach().clone() for k, v in f.objective_state.items()}) for f in fit.members or [fit]]
        return Carry(warm, fit.eval_model if self.compares else None)

    def checkpoints_needed(self, start: int, pending_selection: bool, last_round: int) -> list[int]:
        """The rounds whose checkpoints continuing at round ``start`` reads."""
        if start == 0 or start > last_round:
            return []
        rounds = set()
        if not self.cfg.train.reinit or self.compares or pending_selection:
            rounds.add(start - 1)  # to continue training from, to compare with, or to select with
        if pending_selection and self.compares and start > 1:
            rounds.add(start - 2)  # what the pending selection compares with
        return sorted(rounds)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def state(cls, fit: FitResult) -> dict:
        """A fitted round as its checkpoint holds it."""
        if fit.members:
            return {"members": [cls.state(member) for member in fit.members]}
        state = {"model": fit.model.state_dict(), "objective": fit.objective_state}
        if fit.ema is not None:
            state["ema"] = fit.ema.state_dict()
        return state

    def restore(self, ckpt: dict) -> FitResult:
        """A trained round as its checkpoint holds it: the model, its EMA and the objective's modules
        (each member's, for an ensemble)."""
        if "members" in ckpt:
            return combine([self.restore(member) for member in ckpt["members"]])
        model = self.fresh_model()
        model.load_state_dict(ckpt["model"])
        objective = make_objective(self.objective_cls, model, self.cfg.train, self.strategy.auxiliary(model),
                                   ckpt["objective"])
        objective.eval()
        ema = None
        if "ema" in ckpt:
            ema = self.fresh_model()
            ema.load_state_dict(ckpt["ema"])
            ema.eval()
        return FitResult(model, ema if ema is not None else model, 0.0, {}, ema, objective, ckpt["objective"])
