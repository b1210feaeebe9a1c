"""The state of the active-learning pool: which indices are labeled, with which label, when; and the
audit set, labeled images held out to measure accuracy."""

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

    The ``audit`` indices are asked like the others but held out: their answers measure the model's
    accuracy (an unbiased sample of the pool, as selected images are not), and they are neither
    trained on, labeled or not, nor selected.
    """

    def __init__(self, n: int, audit=()):
        if n <= 0:
            raise ValueError("a pool needs at least one sample")
        self.n = n
        self._labels = torch.full((n,), _UNANSWERED, dtype=torch.long)
        self._round = torch.full((n,), -1, dtype=torch.long)
        self._order: list[int] = []  # answered indices in acquisition order
        audit = torch.as_tensor(audit, dtype=torch.long).flatten()
        if len(audit) and (audit.min() < 0 or audit.max() >= n or len(torch.unique(audit)) != len(audit)):
            raise ValueError(f"the audit indices must be distinct pool indices in [0, {n})")
        self._audit = torch.zeros(n, dtype=torch.bool)
        self._audit[audit] = True

    @property
    def labeled_mask(self) -> torch.Tensor:
        """The labels a round trains on (the audit set's are not)."""
        return (self._labels >= 0) & ~self._audit

    def _answered(self, which: torch.Tensor) -> torch.Tensor:
        order = torch.tensor(self._order, dtype=torch.long)
        return order[which[order]]

    @property
    def labeled_indices(self) -> torch.Tensor:
        """Labeled indices in acquisition order, the audit set left out."""
        return self._answered(self.labeled_mask)

    @property
    def unlabeled_indices(self) -> torch.Tensor:
        """Indices nobody answered yet, the audit set left out: the candidates of a selection."""
        return torch.nonzero((self._labels == _UNANSWERED) & ~self._audit).flatten()

    @property
    def skipped_indices(self) -> torch.Tensor:
        return self._answered((self._labels == SKIP) & ~self._audit)

    @property
    def audit_indices(self) -> torch.Tensor:
        """The whole audit set, ascending."""
        return torch.nonzero(self._audit).flatten()

    @property
    def audit_unanswered(self) -> torch.Tensor:
        """The audit images still to ask, ascending."""
        return torch.nonzero(self._audit & (self._labels == _UNANSWERED)).flatten()

    def audit_labeled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The audit images with a class (skips left out), in acquisition order, and their classes."""
        idx = self._answered(self._audit & (self._labels >= 0))
        return idx, self._labels[idx]

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
        out = ActivePool(self.n, self.audit_indices)
        keep = torch.tensor(self._order[:count], dtype=torch.long)
        out.label(keep, self._labels[keep], self._round[keep])
        return out

    def round_of(self, r: int) -> torch.Tensor:
        """The indices answered for round ``r`` (labels and skips), in acquisition order."""
        idx = torch.tensor(self._order, dtype=torch.long)
        return idx[self._round[idx] == r]

    def state_dict(self) -> dict:
        """``{"n", "labeled": [[index, label, round], ...]}`` in acquisition order (label -1: skipped), and
        ``"audit": [index, ...]`` when there is an audit set."""
        state = {"n": self.n, "labeled": [[i, int(self._labels[i]), int(self._round[i])] for i in self._order]}
        if self._audit.any():
            state["audit"] = self.audit_indices.tolist()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Replace this pool's state; a malformed ``state`` raises and leaves the pool as it was."""
        labeled = state["labeled"]
        if not isinstance(labeled, list) or not all(
                isinstance(row, (list, tuple)) and len(row) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) for v in row) for row in labeled):
            raise ValueError("'labeled' must be a list of [index, label, round] integer triples")
        audit = state.get("audit", [])
        if not isinstance(audit, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in audit):
            raise ValueError("'audit' must be a list of pool indices")
        fresh = ActivePool(int(state["n"]), audit)
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


def draw_audit(n: int, k: int, generator: torch.Generator, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``k`` pool indices drawn uniformly without replacement from ``range(n)`` less ``exclude`` (the seed
    labels, already trained on), ascending: a random sample of the pool, so that accuracy on it estimates
    accuracy on the pool."""
    allowed = torch.ones(n, dtype=torch.bool)
    if exclude is not None:
        allowed[torch.as_tensor(exclude, dtype=torch.long)] = False
    open_ = torch.nonzero(allowed).flatten()
    if k > len(open_):
        raise ValueError(f"an audit set of {k} from {len(open_)} images")
    return open_[torch.randperm(len(open_), generator=generator)[:k]].sort().values
