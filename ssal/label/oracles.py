"""Oracles answer the label queries of an acquisition: simulated from ground truth (benchmarks), or
people (``active.oracle: human``), whose answers come back through ``ssal label import``.

An oracle's :meth:`answers` gives the labels of acquisition ``r``'s ``indices`` (a class index, or
:data:`~ssal.data.pool.SKIP` for "skip"/"unsure"), or None while some are still missing; then the
oracle writes its queries (:meth:`Oracle.ask`), the run stops, and ``ssal run --resume`` asks again.
The selections do not depend on who answers: the same seed and the same answers give the same run.
Each oracle is built from the recipe by :func:`create_oracle`.
"""

from __future__ import annotations

from typing import Any

import torch

from ssal.errors import ConfigError
from ssal.label.answers import take_filled_queries
from ssal.label.queries import contact_sheet, queries_csv, thumbnails
from ssal.registry import Registry
from ssal.rng import derive_seed
from ssal.run.store import RunDir

ORACLES = Registry("oracle")


def create_oracle(cfg: Any, data: Any) -> Oracle:
    """The oracle ``active.oracle`` names, for recipe ``cfg`` and its data set."""
    return ORACLES.get(cfg.active.oracle).create(cfg, data)


class Oracle:
    """Who answers label queries."""

    asks_people = False  # True: answers come from outside the run (queries written, the run stops)

    @classmethod
    def create(cls, cfg: Any, data: Any) -> Oracle:
        raise NotImplementedError

    def collect(self, rd: RunDir, r: int) -> str | None:
        """Take answers given outside ssal's own paths (main process, lock held); a note of what was taken."""
        return None

    def ask(self, rd: RunDir, data: Any, r: int, indices: torch.Tensor) -> None:
        """Put acquisition ``r``'s questions where people answer them (main process)."""

    def awaiting(self, rd: RunDir, r: int, indices: torch.Tensor) -> str:
        """What the person must do before ``ssal run --resume`` can go on."""
        return ""

    def answers(self, r: int, indices: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError

    def missing(self, r: int, indices: torch.Tensor) -> int:
        """How many of acquisition ``r``'s ``indices`` have no answer yet."""
        return 0

    def take_ahead(self, rd: RunDir, r: int, ahead: list[int]) -> list[int]:
        """The images acquisition ``r`` chose ahead that were answered while the next round trained, in
        their order; the next acquisition takes them. A simulated person keeps pace: all of them."""
        return list(ahead)

    def hidden(self, indices: torch.Tensor) -> torch.Tensor | None:
        """The labels of samples not (yet) bought: for diagnostics only (pseudo-label accuracy), never for
        training or selection. None when nobody knows them."""
        return None


@ORACLES.register("simulated")
class SimulatedOracle(Oracle):
    """Answers with the data set's ground-truth labels; with ``noise`` > 0 a seeded fraction of the
    answers is a uniformly drawn wrong class (fixed per image, whatever the order of the queries)."""

    @classmethod
    def create(cls, cfg: Any, data: Any) -> SimulatedOracle:
        if not data.has_truth:
            raise ConfigError(f"data.root '{cfg.data.root}' is a pool without labels, so active.oracle=simulated has "
                              "nothing to answer with: set active.oracle=human (people label the queries)")
        return cls(data.train.targets, cfg.active.oracle_noise, derive_seed(cfg.seed, "oracle"), data.num_classes)

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

    @classmethod
    def create(cls, cfg: Any, data: Any) -> HumanOracle:
        return cls(RunDir(cfg.output_dir, writer=False))

    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir

    def collect(self, rd: RunDir, r: int) -> str | None:
        """A ``queries.csv`` a person filled in place (instead of ``ssal label import``)."""
        return take_filled_queries(rd, r)

    def ask(self, rd: RunDir, data: Any, r: int, indices: torch.Tensor) -> None:
        """``queries.csv`` and ``queries.png`` of the acquisition, unless they exist (a person may be filling
        in the CSV)."""
        csv_path, png_path = rd.queries_csv(r), rd.queries_png(r)
        indices = indices.tolist()
        if rd.writer and not csv_path.exists():
            record = rd.selection_record(r)
            suggestions = record.get("suggestions") or [""] * len(indices)
            confidences = record.get("confidences") or [None] * len(indices)
            rd.write_new(csv_path, queries_csv(indices, rd.names, suggestions, confidences, rd.run_id()))
        if rd.writer and not png_path.exists():
            record = rd.selection_record(r)
            guesses = record.get("suggestions") or [""] * len(indices)
            captions = [f"#{q} {g}?" if g else f"#{q}" for q, g in enumerate(guesses, start=1)]
            rd.write_new(png_path, contact_sheet(thumbnails(data.train, indices), captions))

    def awaiting(self, rd: RunDir, r: int, indices: torch.Tensor) -> str:
        csv_path, png_path = rd.queries_csv(r), rd.queries_png(r)
        missing = self.missing(r, indices)
        head = (f"{missing} images await labels" if missing == len(indices) else
                f"{missing} of the {len(indices)} images of {rd.round_dir(r).name} still await labels")
        return (f"[bold]{head}[/bold]: label them in the browser with 'ssal label serve {rd.path}', or fill "
                f"the label column of {csv_path} (see {png_path}) or use Label Studio ('ssal label export "
                f"{rd.path}') and 'ssal label import {rd.path} FILE'; then 'ssal run --resume {rd.path}'")

    def take_ahead(self, rd: RunDir, r: int, ahead: list[int]) -> list[int]:
        """(The main process.) Under the answers' lock: the answered ones, and ``ahead.json`` closed, so no
        answer is added after they were taken (a page answering later is told to reload)."""
        with rd.answers_held():
            answers, closed = rd.read_ahead(r)
            if not closed:
                rd.save_ahead(r, answers, True)
        return [i for i in ahead if i in answers]

    def missing(self, r: int, indices: torch.Tensor) -> int:
        got = self.run_dir.answers_of(r)
        return sum(int(i) not in got for i in indices.tolist())

    def answers(self, r: int, indices: torch.Tensor) -> torch.Tensor | None:
        got = self.run_dir.answers_of(r)
        if any(int(i) not in got for i in indices.tolist()):
            return None
        return torch.tensor([got[int(i)] for i in indices.tolist()], dtype=torch.long)
