"""Fine-tuning objectives: one file each, registered by name, chosen with ``train.method``."""

from ssal.semi import supervised  # noqa: F401,E402  (registers)
from ssal.semi.base import OBJECTIVES, Objective

__all__ = ["OBJECTIVES", "Objective"]
