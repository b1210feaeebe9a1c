"""Oracles answer label queries: simulated from ground truth (benchmarks) or a person (CSV files)."""

from __future__ import annotations

import torch


class SimulatedOracle:
    """Answers with the data set's ground-truth labels."""

    def __init__(self, targets: torch.Tensor):
        self.targets = targets

    def query(self, indices: torch.Tensor) -> torch.Tensor:
        return self.targets[indices]

    def hidden(self, indices: torch.Tensor) -> torch.Tensor:
        """The labels of samples not (yet) bought: for diagnostics only (pseudo-label accuracy), never
        for training or selection."""
        return self.targets[indices]
