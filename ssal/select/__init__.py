"""Selection: strategies (one file per family), their pure math in ``functional``, ``signals``."""

from typing import Any

# importing a strategy's module registers it
from ssal.select import (  # noqa: F401
    bait,
    bayesian,
    ceal,
    dfal,
    diversity,
    egl,
    ensemble,
    learning_loss,
    probcover,
    propagation,
    random_sampling,
    ssl,
    stochastic,
    uncertainty,
    vaal,
)
from ssal.select.base import INITIAL_STRATEGIES, STRATEGIES, ScoreStrategy, Signals, Strategy


def create_strategy(active: Any) -> Strategy:
    """The strategy a recipe's ``active`` section names, with its options (``active.<name>``); its batch drawn
    with probabilities from its scores when ``active.stochastic`` is set (:mod:`ssal.select.stochastic`)."""
    strategy = STRATEGIES.get(active.strategy)(getattr(active, active.strategy, None))
    mode = getattr(active, "stochastic", None)
    return stochastic.Stochastic(strategy, mode, float(active.stochastic_beta)) if mode else strategy


__all__ = ["INITIAL_STRATEGIES", "STRATEGIES", "ScoreStrategy", "Signals", "Strategy", "create_strategy"]
