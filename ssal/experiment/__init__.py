"""Experiments: the rounds of a run, pretraining's cache, comparisons, reports and deployment."""
