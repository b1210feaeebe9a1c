"""The state of the active-learning pool: which indices are labeled, with which label, when."""

from __future__ import annotations

import torch

SKIP = -1  # the answer "skip" / "unsure": the image leaves the candidates without a label
_UNANSWERED = -2


class ActivePool:
    """``n`` pool indices; each is unanswered, labeled with a class, or skipped (an annotator could
    not tell: :data:`SKIP`), and an answered one records the round it joined.

    The round of an index is the first round whose training uses its label: the initial set is
    round 0, what round r selects is round r + 1. The pool's *entries* are the answered indices
    (labels and skips) in acquisition order; a skipped image is neither trained on nor selected again.
    """

    def __init__(self, n: int):
        if n <= 0:
            raise ValueError("a pool needs at least one sample")
        self.n = n
        self._labels = torch.full((n,), _UNANSWERED, dtype=torch.long)
        self._round = torch.full((n,), -1, dtype=torch.long)
        self._order: list[int] = []  # answered indices in acquisition order

    @property
    def labeled_mask(self) -> torch.Tensor:
        return self._labels >= 0

    @property
    def labeled_indices(self) -> torch.Tensor:
        """Labeled indices in acquisition order."""
        order = torch.tensor(self._order, dtype=torch.long)
        return order[self._labels[order] >= 0]

    @property
    def unlabeled_indices(self) -> torch.Tensor:
        """Indices nobody answered yet: the candidates of a selection."""
        return torch.nonzero(self._labels == _UNANSWERED).flatten()

    @property
    def skipped_indices(self) -> torch.Tensor:
        order = torch.tensor(self._order, dtype=torch.long)
        return order[self._labels[order] == SKIP]

    @property
    def n_labeled(self) -> int:
        return int(self.labeled_mask.sum())

    @property
    def n_entries(self) -> int:
        """Answered indices, labels and skips: the length of ``state_dict()["labeled"]``."""
        return len(self._order)

    @property
    def labels(self) -> torch.Tensor:
        """The observed labels of ``labeled_indices``, in the same order."""
        return self._labels[self.labeled_indices]

    def rounds(self) -> torch.Tensor:
        return self._round[self.labeled_indices]

    def label(self, indices, labels, round) -> None:
        """Label ``indices`` (in this order) with ``labels`` (a class, or :data:`SKIP`), acquired for
        ``round`` (int or per index).

        Refuses out-of-range, repeated or already-answered indices and changes nothing then.
        """
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        lab = torch.as_tensor(labels, dtype=torch.long).flatten()
        rnd = torch.as_tensor(round, dtype=torch.long).flatten().expand(len(idx))
        if len(idx) != len(lab):
            raise ValueError(f"{len(idx)} indices but {len(lab)} labels")
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"pool index out of range [0, {self.n})")
        if len(torch.unique(idx)) != len(idx):
            raise ValueError("the same index is labeled twice in one call")
        answered = self._labels[idx] != _UNANSWERED
        if answered.any():
            raise ValueError(f"indices already labeled: {idx[answered][:5].tolist()}")
        if len(lab) and lab.min() < SKIP:
            raise ValueError(f"labels must be >= 0 (or {SKIP}: skipped)")
        if len(rnd) and rnd.min() < 0:
            raise ValueError("rounds must be >= 0")
        self._labels[idx] = lab
        self._round[idx] = rnd
        self._order.extend(idx.tolist())

    def head(self, count: int) -> ActivePool:
        """A new pool with only the first ``count`` entries in acquisition order."""
        if not 0 <= count <= self.n_entries:
            raise ValueError(f"head({count}) of a pool with {self.n_entries} entries")
        out = ActivePool(self.n)
        keep = torch.tensor(self._order[:count], dtype=torch.long)
        out.label(keep, self._labels[keep], self._round[keep])
        return out

    def round_of(self, r: int) -> torch.Tensor:
        """The indices answered for round ``r`` (labels and skips), in acquisition order."""
        idx = torch.tensor(self._order, dtype=torch.long)
        return idx[self._round[idx] == r]

    def state_dict(self) -> dict:
        """``{"n", "labeled": [[index, label, round], ...]}`` in acquisition order; label -1: skipped."""
        return {"n": self.n, "labeled": [[i, int(self._labels[i]), int(self._round[i])] for i in self._order]}

    def load_state_dict(self, state: dict) -> None:
        """Replace this pool's state; a malformed ``state`` raises and leaves the pool as it was."""
        labeled = state["labeled"]
        if not isinstance(labeled, list) or not all(
                isinstance(row, (list, tuple)) and len(row) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) for v in row) for row in labeled):
            raise ValueError("'labeled' must be a list of [index, label, round] integer triples")
        fresh = ActivePool(int(state["n"]))
        rows = torch.tensor(labeled, dtype=torch.long).reshape(-1, 3)
        fresh.label(rows[:, 0], rows[:, 1], rows[:, 2])
        self.__dict__.update(fresh.__dict__)

    @classmethod
    def from_state(cls, state: dict) -> ActivePool:
        """A pool from :meth:`state_dict`'s form; a malformed ``state`` raises ValueError (or KeyError, ...)."""
        if not isinstance(state, dict) or isinstance(state.get("n"), bool) or not isinstance(state.get("n"), int):
            raise ValueError("'n' must be an integer")
        pool = cls(state["n"])
        pool.load_state_dict(state)
        return pool
