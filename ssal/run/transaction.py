"""One short transaction on a run directory under its lock: answers stored by ``ssal label import`` or the
labeling page, the open batch exported for a labeling tool. :meth:`RunDir.transaction` opens it (the
lock taken, what a killed write left removed) and always closes it (the lock released).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ssal import files
from ssal.data.pool import ActivePool

if TYPE_CHECKING:
    from ssal.run.store import RunDir


class Transaction:
    """What a transaction needs of its locked run: the notes of taking the lock, the run's files (each
    record read once: the open batch's records do not change while the answers' lock is held, since the
    run takes a batch into the pool only under it), and its writes, sealed by the store. It answers the
    reads the label commands make of a run, so they take either."""

    def __init__(self, rd: RunDir, notes: list[str]):
        self.rd = rd
        self.notes = notes  # a dead holder's lock taken over, for people
        self._rows: list[dict] | None = None
        self._records: dict[int, dict] = {}
        self._run_id: str | None = None

    @property
    def path(self) -> Path:
        return self.rd.path

    def run_id(self) -> str:
        if self._run_id is None:
            self._run_id = self.rd.run_id()
        return self._run_id

    def committed(self) -> list[dict]:
        if self._rows is None:
            self._rows = self.rd.committed()
        return self._rows

    def selection_record(self, r: int) -> dict:
        """Acquisition ``r``'s ``selected.json``, checked, or :class:`~ssal.files.Damaged` (read again)."""
        if r not in self._records:
            self._records[r] = self.rd.selection_record(r)
        return self._records[r]

    def read_selection(self, r: int) -> list[int]:
        return self.selection_record(r)["indices"]

    def saved_selection(self, r: int) -> list[int] | None:
        try:
            return self.read_selection(r)
        except files.Damaged:
            return None

    def load_pool(self, pool_size: int) -> ActivePool:
        return self.rd.load_pool(pool_size)

    def read_answers(self, r: int) -> dict[int, int]:
        return self.rd.read_answers(r)

    def answers_of(self, r: int) -> dict[int, int]:
        return self.rd.answers_of(r)

    def read_ahead(self, r: int) -> tuple[dict[int, int], bool]:
        return self.rd.read_ahead(r)

    def save_ahead(self, r: int, answers: dict[int, int], closed: bool, names: dict[int, str] | None = None) -> None:
        self.rd.save_ahead(r, answers, closed, names)

    def save_answers(self, r: int, answers: dict[int, int], names: dict[int, str] | None = None) -> None:
        self.rd.save_answers(r, answers, names)

    def write_text(self, path: Path, text: str) -> None:
        """A file the transaction makes (Label Studio tasks beside the queries), written atomically."""
        if self.rd.writer:
            files.write_text(path, text)


@contextlib.contextmanager
def transaction(rd: RunDir, purpose: str = "answers", wait: float = 0.0, clean: bool = True) -> Iterator[Transaction]:
    """The lock of ``rd`` taken for ``purpose`` ("answers": the answers' lock, which a run holding the run's
    lock leaves free; else the run's lock), waiting up to ``wait`` seconds for another transaction
    (:class:`~ssal.run.lock.RunInUse` after that), yielding the :class:`Transaction`, always released.
    ``clean``: first remove the temporary files that killed writes left (their processes are gone)."""
    notes = rd.lock(wait, purpose)
    try:
        if clean and rd.writer:
            files.remove_stale_tmp(rd.path, only_dead=True)  # the run may be writing beside an answers transaction
        yield Transaction(rd, notes)
    finally:
        rd.unlock(purpose)
