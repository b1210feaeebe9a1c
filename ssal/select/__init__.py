"""Selection: strategies (one file per family), their pure math in ``functional``, ``signals``."""

from ssal.select import bait, bayesian, dfal, diversity, egl, random_sampling, ssl, uncertainty  # noqa: F401,E402  (registers)
from ssal.select.base import INITIAL_STRATEGIES, STRATEGIES, ScoreStrategy, Signals, Strategy

__all__ = ["INITIAL_STRATEGIES", "STRATEGIES", "ScoreStrategy", "Signals", "Strategy"]
