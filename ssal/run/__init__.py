"""The run directory as one package: its layout (names), its store (lock, sealed writes, checks, the
transaction of a batch of answers), what --resume restores, the readers (report, compare) and where
outputs may go. Imports nothing above the data layer; every read and write of a run or a comparison
cell goes through it."""

from ssal.run.lock import Lock, RunInUse
from ssal.run.readers import read_metrics
from ssal.run.restore import Restored
from ssal.run.store import RunDir, differences
from ssal.run.transaction import Transaction

__all__ = ["Lock", "Restored", "RunDir", "RunInUse", "Transaction", "differences", "read_metrics"]
