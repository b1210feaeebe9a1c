"""Signals: typed requests, and one streamed pass that produces exactly what was requested.

A strategy's ``needs`` is a tuple of requests. A request is a frozen dataclass whose fields are its
parameters (an MC-dropout request carries its number of passes and its dropout rate), so two
strategies asking for the same thing ask with equal, hashable requests. ``labeled=True`` asks for
the signal on the labeled set instead of the candidates.

============== ==============================================================================
Probs          softmax of the evaluation model, [N, C]
Logits         its logits, [N, C]
Features       its penultimate features, [N, D]
Embeddings     the objective's representation (``Objective.embed``: the contrastive projection,
               else the penultimate features), [N, E]
BALDScore      BALD of ``samples`` MC-dropout passes, reduced per chunk (O(N) kept), [N]
MCProbs        the MC-dropout passes themselves, [N, T, C]
AugProbs       probabilities over ``views`` random training views, [N, K, C]; from the
               objective's EMA teacher when it has one
PrevProbs      probabilities of the previous round's evaluation model (round 0: the EMA of this
               round's model), [N, C]
Labels         the observed labels (labeled set only; given, not computed), [L]
============== ==============================================================================

Each request type has one producer in :data:`PRODUCERS`; a producer turns one chunk of images into
its signal and shares the chunk's forward pass with the others (:class:`Chunk`). Adding a signal is
one request class and one producer. Everything runs through :meth:`ssal.engine.Engine.infer`
(``torch.inference_mode``, chunks, sharded across processes and gathered once per index); every
random draw is keyed by (seed, pool index, pass), so the signals do not depend on the chunking or
on the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ssal import rng
from ssal.data.views import VIEWS
from ssal.errors import ConfigError
from ssal.rng import sample_keys
from ssal.select import functional as Fn
from ssal.select.base import Signals, Strategy
from ssal.semi import OBJECTIVES

# ----------------------------------------------------------------------------- requests

@dataclass(frozen=True, kw_only=True)
class Signal:
    """A request for one per-sample signal; subclasses add their parameters as fields (``labeled`` is
    keyword-only, so ``BALDScore(20, 0.5)`` sets the subclass's own fields)."""

    labeled: bool = False  # on the labeled set instead of the candidates

    given: ClassVar[bool] = False  # known without running the model (no producer)

    def on_labeled(self) -> Signal:
        """The same request for the labeled set."""
        return replace(self, labeled=True)

    def check(self, cfg: Any, strategy: str) -> None:
        """Raise :class:`ConfigError` when recipe ``cfg`` cannot provide this signal (e.g. the objective
        keeps no EMA to compare with)."""


@dataclass(frozen=True)
class Probs(Signal):
    pass


@dataclass(frozen=True)
class Logits(Signal):
    pass


@dataclass(frozen=True)
class Features(Signal):
    pass


@dataclass(frozen=True)
class Embeddings(Signal):
    pass


@dataclass(frozen=True)
class MCDropout(Signal):
    """``samples`` stochastic passes of the head with dropout ``dropout`` before it (BatchNorm in eval
    mode). A model built with ``model.drop_rate: 0`` gets ``dropout`` for training too (``ssal.experiment.loop``),
    so the passes sample the network it was trained as."""

    samples: int = 20
    dropout: float = 0.5


@dataclass(frozen=True)
class BALDScore(MCDropout):
    pass


@dataclass(frozen=True)
class MCProbs(MCDropout):
    pass


@dataclass(frozen=True)
class AugProbs(Signal):
    views: int = 10
    view: str = "weak"


@dataclass(frozen=True)
class PrevProbs(Signal):
    def check(self, cfg: Any, strategy: str) -> None:

        if cfg.active.rounds > 0 and not (OBJECTIVES.get(cfg.train.method).has_teacher or cfg.train.ema > 0):
            raise ConfigError(f"active.strategy={strategy} compares the round-0 model with its EMA, and train.method="
                              f"{cfg.train.method} keeps none; set train.ema (e.g. train.ema=0.99) or use train.method "
                              "consistency or tod")


@dataclass(frozen=True, kw_only=True)
class Labels(Signal):
    labeled: bool = True
    given: ClassVar[bool] = True


# ----------------------------------------------------------------------------- producers

@dataclass
class SelectionContext:
    """What a round offers selection: the models and the labeled set."""

    model: nn.Module  # the evaluation model (the EMA of the weights when train.ema > 0)
    labeled: torch.Tensor  # labeled pool indices
    labels: torch.Tensor  # their observed labels
    objective: Any = None  # the trained Objective (embed, teacher_model) or None
    prev_model: nn.Module | None = None  # previous round's evaluation model (or the round-0 EMA)
    hflip: bool = True  # whether views may flip horizontally
    seed: int = 0  # for the random views and dropout masks
    batch_size: int = 512

    def teacher(self) -> nn.Module | None:
        return self.objective.teacher_model() if self.objective is not None else None

    def modules(self) -> list[nn.Module]:
        """What inference puts in eval mode on the device."""
        return [m for m in (self.model, self.objective, self.teacher(), self.prev_model) if m is not None]


class Chunk:
    """One chunk of images under inference, and what its producers share (the forward pass, once)."""

    def __init__(self, x: torch.Tensor, index: torch.Tensor, ctx: SelectionContext, seed: int):
        self.x, self.index, self.ctx, self.seed = x, index, ctx, seed

    @cached_property
    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, penultimate features) of the evaluation model."""
        return self.ctx.model(self.x, return_features=True)

    def keys(self, *tag: Any) -> torch.Tensor:
        """One random key per sample of the chunk, from (seed, *tag, pool index)."""
        return sample_keys(self.seed, tag[0], self.index, *tag[1:]).to(self.x.device)


Producer = Callable[[Any, Chunk], torch.Tensor]
PRODUCERS: dict[type[Signal], Producer] = {}


def produces(kind: type[Signal]) -> Callable[[Producer], Producer]:
    def add(fn: Producer) -> Producer:
        PRODUCERS[kind] = fn
        return fn

    return add


@produces(Probs)
def _probs(req: Probs, chunk: Chunk) -> torch.Tensor:
    return F.softmax(chunk.forward[0].float(), dim=1)


@produces(Logits)
def _logits(req: Logits, chunk: Chunk) -> torch.Tensor:
    return chunk.forward[0]


@produces(Features)
def _features(req: Features, chunk: Chunk) -> torch.Tensor:
    return chunk.forward[1]


@produces(Embeddings)
def _embeddings(req: Embeddings, chunk: Chunk) -> torch.Tensor:
    objective = chunk.ctx.objective
    return (objective.embed(chunk.x) if objective is not None else chunk.ctx.model.features(chunk.x)).float()


def _mc_passes(req: MCDropout, chunk: Chunk) -> list[torch.Tensor]:
    """The head on the features with dropout, ``req.samples`` times; masks keyed by (seed, "mc", index, t)."""
    model, h = chunk.ctx.model, chunk.forward[1]
    p = model.dropout.p
    passes = []
    for t in range(req.samples):
        keep = rng.uniform(chunk.keys("mc", t), "dropout", h.shape[1:]) >= p
        passes.append(F.softmax(model.head(h * keep.to(h.dtype) / (1.0 - p)).float(), dim=1))
    return passes


@produces(BALDScore)
def _bald(req: BALDScore, chunk: Chunk) -> torch.Tensor:
    return Fn.bald(torch.stack(_mc_passes(req, chunk)))


@produces(MCProbs)
def _mc_probs(req: MCProbs, chunk: Chunk) -> torch.Tensor:
    return torch.stack(_mc_passes(req, chunk), dim=1)


@produces(AugProbs)
def _aug_probs(req: AugProbs, chunk: Chunk) -> torch.Tensor:
    teacher = chunk.ctx.teacher()
    m = teacher if teacher is not None else chunk.ctx.model
    cpu = chunk.x.cpu()  # views are made on the CPU, as in training
    views = [VIEWS[req.view](cpu, chunk.keys("view", k).cpu(), chunk.ctx.hflip).to(chunk.x.device)
             for k in range(req.views)]
    return torch.stack([F.softmax(m(v).float(), dim=1) for v in views], dim=1)


@produces(PrevProbs)
def _prev_probs(req: PrevProbs, chunk: Chunk) -> torch.Tensor:
    return F.softmax(chunk.ctx.prev_model(chunk.x).float(), dim=1)


# ----------------------------------------------------------------------------- the pass

def candidates(unlabeled: torch.Tensor, subset: int | None, generator: torch.Generator) -> torch.Tensor:
    """All unlabeled indices, or a seeded random ``subset`` of them (sorted)."""
    if subset is None or len(unlabeled) <= subset:
        return unlabeled
    return unlabeled[torch.randperm(len(unlabeled), generator=generator)[:subset]].sort().values


def _stream(engine: Any, ctx: SelectionContext, split: Any, indices: torch.Tensor, requests: list[Signal],
            seed: int, desc: str | None) -> dict[Signal, torch.Tensor]:
    def fn(x: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        chunk = Chunk(x, index, ctx, seed)
        return {str(i): PRODUCERS[type(r)](r, chunk) for i, r in enumerate(requests)}

    got = engine.infer(fn, ctx.modules(), split, indices, ctx.batch_size, desc)
    return {r: got[str(i)] for i, r in enumerate(requests)}


def compute_signals(engine: Any, strategy: Strategy, ctx: SelectionContext, split: Any,
                    cands: torch.Tensor) -> Signals:
    """The signals ``strategy.needs`` on ``cands`` (and on the labeled set), nothing else: one pass
    over each set."""
    needs = list(dict.fromkeys(strategy.needs))  # unique, in order
    for r in needs:
        if not isinstance(r, Signal) or not (r.given or type(r) in PRODUCERS):
            raise ValueError(f"{type(strategy).__name__} needs {r!r}, which is not a signal with a producer")
        if isinstance(r, PrevProbs) and ctx.prev_model is None:
            raise ValueError(f"{type(strategy).__name__} needs the previous round's model (or an EMA in round 0)")
    signals = Signals(candidates=cands, labeled=ctx.labeled)
    own = [r for r in needs if not r.labeled and not r.given]
    lab = [r for r in needs if r.labeled and not r.given]
    if own:
        signals.values.update(_stream(engine, ctx, split, cands, own, ctx.seed, "signals"))
    if lab:
        signals.values.update(_stream(engine, ctx, split, ctx.labeled, lab, ctx.seed + 1, None))
    for r in needs:
        if isinstance(r, Labels):
            signals.values[r] = ctx.labels
    return signals


def check_selection(selected: torch.Tensor, cands: torch.Tensor, budget: int, name: str) -> torch.Tensor:
    """Enforce the Strategy contract: min(budget, #candidates) unique candidate indices."""
    selected = torch.as_tensor(selected, dtype=torch.long).flatten()
    want = min(budget, len(cands))
    if len(selected) != want or len(torch.unique(selected)) != want or not torch.isin(selected, cands).all():
        raise RuntimeError(f"strategy '{name}' broke its contract: returned {len(selected)} indices "
                           f"(want {want} unique unlabeled candidates)")
    return selected
