"""One streamed pass over the candidates that computes only what a strategy ``needs``."""

from __future__ import annotations

import torch

from ssal.select.base import Signals, Strategy

# signals that one forward pass of the (evaluation) model gives, per candidate
FORWARD_SIGNALS = frozenset({"probs", "logits", "features"})
KNOWN_SIGNALS = FORWARD_SIGNALS | {"labeled_features", "labeled_probs"}


def candidates(unlabeled: torch.Tensor, subset: int | None, generator: torch.Generator) -> torch.Tensor:
    """All unlabeled indices, or a seeded random ``subset`` of them (sorted)."""
    if subset is None or len(unlabeled) <= subset:
        return unlabeled
    return unlabeled[torch.randperm(len(unlabeled), generator=generator)[:subset]].sort().values


def compute_signals(engine, strategy: Strategy, model, split, labeled: torch.Tensor, cands: torch.Tensor,
                    batch_size: int = 512) -> Signals:
    unknown = strategy.needs - KNOWN_SIGNALS
    if unknown:
        raise ValueError(f"{type(strategy).__name__} needs unknown signals {sorted(unknown)}")
    signals = Signals(candidates=cands, labeled=labeled)
    outputs = tuple(sorted(strategy.needs & FORWARD_SIGNALS))
    if outputs:
        signals.values = engine.predict(model, split, cands, outputs, batch_size, desc="signals")
    lab_outputs = tuple(sorted(n.removeprefix("labeled_") for n in strategy.needs if n.startswith("labeled_")))
    if lab_outputs:
        got = engine.predict(model, split, labeled, lab_outputs, batch_size)
        signals.labeled_values = {f"labeled_{k}": v for k, v in got.items()}
    return signals


def check_selection(selected: torch.Tensor, cands: torch.Tensor, budget: int, name: str) -> torch.Tensor:
    """Enforce the Strategy contract: min(budget, #candidates) unique candidate indices."""
    selected = torch.as_tensor(selected, dtype=torch.long).flatten()
    want = min(budget, len(cands))
    if len(selected) != want or len(torch.unique(selected)) != want or not torch.isin(selected, cands).all():
        raise RuntimeError(f"strategy '{name}' broke its contract: returned {len(selected)} indices "
                           f"(want {want} unique unlabeled candidates)")
    return selected
