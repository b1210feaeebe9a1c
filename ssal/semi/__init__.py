"""Fine-tuning objectives: one file each, registered by name, chosen with ``train.method``."""

from ssal.semi.base import OBJECTIVES, Objective
from ssal.semi import supervised  # noqa: F401,E402  (registers)

__all__ = ["OBJECTIVES", "Objective"]
