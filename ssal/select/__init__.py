"""Selection: strategies (one file per family), their pure math in ``functional``, ``signals``."""

from ssal.select import bait, bayesian, dfal, diversity, egl, ensemble, learning_loss, random_sampling, ssl, uncertainty  # noqa: F401  (registers)
from ssal.select.base import INITIAL_STRATEGIES, STRATEGIES, ScoreStrategy, Signals, Strategy

__all__ = ["INITIAL_STRATEGIES", "STRATEGIES", "ScoreStrategy", "Signals", "Strategy"]
