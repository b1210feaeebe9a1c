"""Fine-tuning objectives: one file each, registered by name, chosen with ``train.method``."""

from ssal.semi import consistency, contrastive, fixmatch, supervised, tod  # noqa: F401,E402  (register)
from ssal.semi.base import OBJECTIVES, Objective

__all__ = ["OBJECTIVES", "Objective"]
