"""Selection: strategies (one file per family), their pure math in ``functional``, ``signals``."""

# importing a strategy's module registers it
from ssal.select import (  # noqa: F401
    bait,
    bayesian,
    dfal,
    diversity,
    egl,
    ensemble,
    learning_loss,
    random_sampling,
    ssl,
    uncertainty,
    vaal,
)
from ssal.select.base import INITIAL_STRATEGIES, STRATEGIES, ScoreStrategy, Signals, Strategy, create_strategy

__all__ = ["INITIAL_STRATEGIES", "STRATEGIES", "ScoreStrategy", "Signals", "Strategy", "create_strategy"]
