"""Oracles answer label queries: simulated from ground truth (benchmarks) or a person (CSV files)."""

from __future__ import annotations

import torch


class SimulatedOracle:
    """Answers with the data set's ground-truth labels."""

    def __init__(self, targets: torch.Tensor):
        self.targets = targets

    def query(self, indices: torch.Tensor) -> torch.Tensor:
        return self.targets[indices]
