"""Oracles answer the label queries of an acquisition: simulated from ground truth (benchmarks), or
people (``active.oracle: human``), whose answers come back through ``ssal label import``.

An oracle's :meth:`answers` gives the labels of acquisition ``r``'s ``indices`` (a class index, or
:data:`~ssal.data.pool.SKIP` for "skip"/"unsure"), or None while some are still missing; then the run
writes the queries and stops, and ``ssal run --resume`` asks again. The selections do not depend on
who answers: the same seed and the same answers give the same run.
"""

from __future__ import annotations

import torch

from ssal.registry import Registry

ORACLES = Registry("oracle")


class Oracle:
    """Who answers label queries."""

    asks_people = False  # True: answers come from outside the run (queries written, the run stops)

    def answers(self, r: int, indices: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError

    def missing(self, r: int, indices: torch.Tensor) -> int:
        """How many of acquisition ``r``'s ``indices`` have no answer yet."""
        return 0

    def hidden(self, indices: torch.Tensor) -> torch.Tensor | None:
        """The labels of samples not (yet) bought: for diagnostics only (pseudo-label accuracy), never for
        training or selection. None when nobody knows them."""
        return None


@ORACLES.register("simulated")
class SimulatedOracle(Oracle):
    """Answers with the data set's ground-truth labels; with ``noise`` > 0 a seeded fraction of the
    answers is a uniformly drawn wrong class (fixed per image, whatever the order of the queries)."""

    def __init__(self, targets: torch.Tensor, noise: float = 0.0, seed: int = 0, num_classes: int | None = None):
        self.targets = targets
        self.given = targets
        if noise > 0:
            c = int(num_classes if num_classes is not None else int(targets.max()) + 1)
            g = torch.Generator().manual_seed(seed)
            wrong = torch.rand(len(targets), generator=g) < noise
            shift = torch.randint(1, max(c, 2), (len(targets),), generator=g)
            self.given = torch.where(wrong, (targets + shift) % c, targets)

    def answers(self, r: int, indices: torch.Tensor) -> torch.Tensor:
        return self.given[indices]

    def hidden(self, indices: torch.Tensor) -> torch.Tensor:
        return self.targets[indices]


@ORACLES.register("human")
class HumanOracle(Oracle):
    """People answer: acquisition ``r``'s answers are what ``ssal label import`` stored in the run
    directory (``rounds/rXX/answers.json``)."""

    asks_people = True

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def missing(self, r: int, indices: torch.Tensor) -> int:
        got = self.run_dir.read_answers(r)
        return sum(int(i) not in got for i in indices.tolist())

    def answers(self, r: int, indices: torch.Tensor) -> torch.Tensor | None:
        got = self.run_dir.read_answers(r)
        if any(int(i) not in got for i in indices.tolist()):
            return None
        return torch.tensor([got[int(i)] for i in indices.tolist()], dtype=torch.long)
