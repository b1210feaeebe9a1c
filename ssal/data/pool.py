"""The state of the active-learning pool: which indices are labeled, with which label, when."""

from __future__ import annotations

import torch


class ActivePool:
    """``n`` pool indices; each is unlabeled or labeled with a class and the round it joined.

    The round of an index is the first round whose training uses its label: the initial set is
    round 0, what round r selects is round r + 1.
    """

    def __init__(self, n: int):
        if n <= 0:
            raise ValueError("a pool needs at least one sample")
        self.n = n
        self._labels = torch.full((n,), -1, dtype=torch.long)
        self._round = torch.full((n,), -1, dtype=torch.long)
        self._order: list[int] = []  # labeled indices in acquisition order

    @property
    def labeled_mask(self) -> torch.Tensor:
        return self._labels >= 0

    @property
    def labeled_indices(self) -> torch.Tensor:
        """Labeled indices in acquisition order."""
        return torch.tensor(self._order, dtype=torch.long)

    @property
    def unlabeled_indices(self) -> torch.Tensor:
        return torch.nonzero(~self.labeled_mask).flatten()

    @property
    def n_labeled(self) -> int:
        return len(self._order)

    @property
    def labels(self) -> torch.Tensor:
        """The observed labels of ``labeled_indices``, in the same order."""
        return self._labels[self.labeled_indices]

    def rounds(self) -> torch.Tensor:
        return self._round[self.labeled_indices]

    def label(self, indices, labels, round) -> None:
        """Label ``indices`` (in this order) with ``labels``, acquired for ``round`` (int or per index).

        Refuses out-of-range, repeated or already-labeled indices and changes nothing then.
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
        if self.labeled_mask[idx].any():
            already = idx[self.labeled_mask[idx]][:5].tolist()
            raise ValueError(f"indices already labeled: {already}")
        if len(lab) and lab.min() < 0:
            raise ValueError("labels must be >= 0")
        if len(rnd) and rnd.min() < 0:
            raise ValueError("rounds must be >= 0")
        self._labels[idx] = lab
        self._round[idx] = rnd
        self._order.extend(idx.tolist())

    def head(self, count: int) -> ActivePool:
        """A new pool with only the first ``count`` labels in acquisition order."""
        if not 0 <= count <= self.n_labeled:
            raise ValueError(f"head({count}) of a pool with {self.n_labeled} labels")
        out = ActivePool(self.n)
        keep = torch.tensor(self._order[:count], dtype=torch.long)
        out.label(keep, self._labels[keep], self._round[keep])
        return out

    def round_of(self, r: int) -> torch.Tensor:
        """The indices acquired for round ``r``, in acquisition order."""
        idx = self.labeled_indices
        return idx[self._round[idx] == r]

    def state_dict(self) -> dict:
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
