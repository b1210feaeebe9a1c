"""Selection: strategies (one file per family), their pure math in ``functional``, ``signals``."""

from ssal.select import (  # noqa: F401  (registers)
    bait, bayesian, dfal, diversity, egl, learning_loss, random_sampling, ssl, uncertainty)
from ssal.select.base import INITIAL_STRATEGIES, STRATEGIES, ScoreStrategy, Signals, Strategy

__all__ = ["INITIAL_STRATEGIES", "STRATEGIES", "ScoreStrategy", "Signals", "Strategy"]
