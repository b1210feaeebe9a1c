"""One streamed pass over the candidates (and one over the labeled set) that computes only what
a strategy ``needs``.

Signals (per candidate; the ``labeled_`` prefix asks for the same on the labeled set):

============== ==============================================================================
probs          softmax of the evaluation model
logits         its logits
features       its penultimate features
embeddings     the objective's representation (``Objective.embed``: the contrastive projection,
               else the penultimate features)
bald           BALD score of ``samples`` MC-dropout passes, reduced per chunk (O(N) kept)
mc_probs       the MC-dropout passes themselves, [N, T, C]
aug_probs      probabilities over ``views`` random training views, [N, K, C]; from the
               objective's EMA teacher when it has one
prev_probs     probabilities of the previous round's evaluation model (round 0: the EMA of this
               round's model)
labeled_labels the observed labels of the labeled set
============== ==============================================================================

Everything runs through :meth:`ssal.engine.Engine.infer` (``torch.inference_mode``, chunks,
sharded across processes and gathered once per index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssal import rng
from ssal.data.views import VIEWS
from ssal.rng import sample_keys
from ssal.select import functional as Fn
from ssal.select.base import Signals, Strategy

PER_SAMPLE = frozenset({"probs", "logits", "features", "embeddings", "bald", "mc_probs", "aug_probs", "prev_probs"})
KNOWN_SIGNALS = PER_SAMPLE | {f"labeled_{s}" for s in PER_SAMPLE} | {"labeled_labels"}
MC_SIGNALS = frozenset({"bald", "mc_probs"})


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


def candidates(unlabeled: torch.Tensor, subset: int | None, generator: torch.Generator) -> torch.Tensor:
    """All unlabeled indices, or a seeded random ``subset`` of them (sorted)."""
    if subset is None or len(unlabeled) <= subset:
        return unlabeled
    return unlabeled[torch.randperm(len(unlabeled), generator=generator)[:subset]].sort().values


def _option(strategy: Strategy, name: str, default):
    return getattr(strategy.cfg, name, default) if strategy.cfg is not None else default


def _stream(engine, strategy: Strategy, ctx: SelectionContext, split, indices: torch.Tensor,
            needs: frozenset[str], seed: int, desc: str | None) -> dict[str, torch.Tensor]:
    model, objective = ctx.model, ctx.objective
    teacher = objective.teacher_model() if objective is not None else None
    samples = int(_option(strategy, "samples", 20))
    views, view = int(_option(strategy, "views", 10)), _option(strategy, "view", "weak")

    def fn(x: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        # every random draw is keyed by (seed, pool index, pass or view): the same signals whatever
        # the chunking and the number of processes
        out: dict[str, torch.Tensor] = {}
        if needs & ({"probs", "logits", "features"} | MC_SIGNALS):
            logits, h = model(x, return_features=True)
            out.update(probs=F.softmax(logits.float(), dim=1), logits=logits, features=h)
            if needs & MC_SIGNALS:  # dropout before the head, T times; BatchNorm stays in eval mode
                p = model.dropout.p
                passes = []
                for t in range(samples):
                    keep = rng.uniform(sample_keys(seed, "mc", index, t).to(h.device), "dropout", h.shape[1:]) >= p
                    dropped = h * keep.to(h.dtype) / (1.0 - p)
                    passes.append(F.softmax(model.head(dropped).float(), dim=1))
                if "mc_probs" in needs:
                    out["mc_probs"] = torch.stack(passes, dim=1)
                if "bald" in needs:
                    out["bald"] = Fn.bald(torch.stack(passes))
        if "embeddings" in needs:
            out["embeddings"] = (objective.embed(x) if objective is not None else model.features(x)).float()
        if "aug_probs" in needs:
            m = teacher if teacher is not None else model
            cpu = x.cpu()  # views are made on the CPU, as in training
            out["aug_probs"] = torch.stack([F.softmax(m(VIEWS[view](cpu, sample_keys(seed, "view", index, k), ctx.hflip)
                                                          .to(x.device)).float(), dim=1)
                                            for k in range(views)], dim=1)
        if "prev_probs" in needs:
            out["prev_probs"] = F.softmax(ctx.prev_model(x).float(), dim=1)
        return {k: v for k, v in out.items() if k in needs}

    modules = [m for m in (model, objective, teacher, ctx.prev_model) if m is not None]
    return engine.infer(fn, modules, split, indices, ctx.batch_size, desc)


def compute_signals(engine, strategy: Strategy, ctx: SelectionContext, split, cands: torch.Tensor) -> Signals:
    """The signals ``strategy.needs`` on ``cands`` (and on the labeled set), nothing else."""
    unknown = strategy.needs - KNOWN_SIGNALS
    if unknown:
        raise ValueError(f"{type(strategy).__name__} needs unknown signals {sorted(unknown)}")
    if "prev_probs" in strategy.needs and ctx.prev_model is None:
        raise ValueError(f"{type(strategy).__name__} needs the previous round's model (or an EMA in round 0)")
    signals = Signals(candidates=cands, labeled=ctx.labeled)
    own = frozenset(n for n in strategy.needs if not n.startswith("labeled_"))
    lab = frozenset(n.removeprefix("labeled_") for n in strategy.needs if n.startswith("labeled_")) - {"labels"}
    if own:
        signals.values = _stream(engine, strategy, ctx, split, cands, own, ctx.seed, "signals")
    if lab:
        got = _stream(engine, strategy, ctx, split, ctx.labeled, lab, ctx.seed + 1, None)
        signals.labeled_values = {f"labeled_{k}": v for k, v in got.items()}
    if "labeled_labels" in strategy.needs:
        signals.labeled_values["labeled_labels"] = ctx.labels
    return signals


def check_selection(selected: torch.Tensor, cands: torch.Tensor, budget: int, name: str) -> torch.Tensor:
    """Enforce the Strategy contract: min(budget, #candidates) unique candidate indices."""
    selected = torch.as_tensor(selected, dtype=torch.long).flatten()
    want = min(budget, len(cands))
    if len(selected) != want or len(torch.unique(selected)) != want or not torch.isin(selected, cands).all():
        raise RuntimeError(f"strategy '{name}' broke its contract: returned {len(selected)} indices "
                           f"(want {want} unique unlabeled candidates)")
    return selected
