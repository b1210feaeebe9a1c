"""Fine-tuning objectives: one file each, registered by name, chosen with ``train.method``."""

from ssal.semi import (  # noqa: F401,E402  (register)
    consistency,
    contrastive,
    fixmatch,
    label_propagation,
    linear_probe,
    supervised,
    tod,
)
from ssal.semi.base import OBJECTIVES, Objective

__all__ = ["OBJECTIVES", "Objective"]
