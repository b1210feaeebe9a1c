"""Stochastic batch acquisition (Kirsch et al., TMLR 2023): instead of a ranking strategy's top ``budget``,
draw the batch without replacement with probabilities from its scores, so that a batch is not filled with
near-copies of one high-scoring region. One wrapper for every strategy that ranks by a score
(``active.stochastic``), with the paper's three ways of turning a score s_i into a probability:

- ``power``:    p_i ∝ s_i ** beta           (scores >= 0: entropy, margin, BALD, ...)
- ``softmax``:  p_i ∝ exp(beta * s_i)
- ``softrank``: p_i ∝ rank_i ** -beta       (rank 1 = the highest score; only the order counts)

beta = 1 is the paper's default; beta -> infinity gives back the top ``budget``. The draw is the
Gumbel-top-k trick: the ``budget`` largest log p_i + Gumbel noise are a sample without replacement,
each pick proportional to p_i among those not yet taken (written by hand: torch.multinomial draws with
a different sequence and has no log-space form for a softmax over large scores).
"""

from __future__ import annotations

from typing import Any

import torch

from ssal.select.base import ScoreStrategy, Signals, Strategy
from ssal.select.functional import top_k

MODES = ("power", "softmax", "softrank")


def log_weights(scores: torch.Tensor, mode: str, beta: float) -> torch.Tensor:
    """log p_i up to a constant, in float64 (a zero score under ``power``: -inf, never drawn while others remain)."""
    s = scores.to(torch.float64)
    if mode == "power":
        return beta * torch.log(s.clamp_min(0))
    if mode == "softmax":
        return beta * s
    if mode == "softrank":
        rank = torch.empty_like(s)
        rank[top_k(s, len(s))] = torch.arange(1, len(s) + 1, dtype=torch.float64)  # ties: by position, as top_k
        return -beta * torch.log(rank)
    raise ValueError(f"unknown stochastic mode {mode!r}; one of {', '.join(MODES)}")


def probabilities(scores: torch.Tensor, mode: str, beta: float) -> torch.Tensor:
    """p_i of each candidate being the first pick."""
    return torch.softmax(log_weights(scores, mode, beta), dim=0)


def draw(scores: torch.Tensor, k: int, mode: str, beta: float, generator: torch.Generator) -> torch.Tensor:
    """Positions of ``k`` candidates drawn without replacement, each pick ∝ p_i among the rest."""
    u = torch.rand(len(scores), generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp(1e-300, 1 - 1e-16)))
    logw = log_weights(scores, mode, beta)
    drawable = torch.isfinite(logw)  # p_i > 0
    where = torch.nonzero(drawable).flatten()
    picked = where[top_k(logw[drawable] + gumbel[drawable], k)]
    if len(picked) < k:  # fewer candidates with p_i > 0 than the budget: the rest in a uniform random order
        rest = torch.nonzero(~drawable).flatten()
        picked = torch.cat([picked, rest[top_k(gumbel[~drawable], k - len(picked))]])
    return picked


class Stochastic(Strategy):
    """``inner``'s signals, model and scores; its batch drawn by :func:`draw`."""

    def __init__(self, inner: ScoreStrategy, mode: str, beta: float):
        super().__init__(inner.cfg)
        self.inner, self.mode, self.beta = inner, mode, beta

    def __getattr__(self, name: str) -> Any:  # anything else the stage asks of a strategy: the inner one's
        inner = self.__dict__.get("inner")
        if inner is None:  # (while copy or pickle build the object)
            raise AttributeError(name)
        return getattr(inner, name)

    @property
    def needs(self) -> tuple[Any, ...]:
        return self.inner.needs

    @property
    def members(self) -> int:
        return self.inner.members

    def check_model(self, backbone: Any, num_classes: int) -> None:
        self.inner.check_model(backbone, num_classes)

    def auxiliary(self, model: Any) -> Any:
        return self.inner.auxiliary(model)

    def scores(self, signals: Signals) -> torch.Tensor:
        return self.inner.scores(signals)

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:
        return signals.candidates[draw(self.scores(signals), budget, self.mode, self.beta, generator)]


def usable(strategy_class: type, mode: str) -> str | None:
    """Why ``mode`` cannot wrap the strategy (None: it can)."""
    if not issubclass(strategy_class, ScoreStrategy):
        return "it does not rank the candidates by a score"
    if mode == "power" and not strategy_class.nonnegative_scores:
        return "power needs scores >= 0 and its scores can be negative (use softmax or softrank)"
    return None
