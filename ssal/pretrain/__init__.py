"""Self-supervised pretraining methods, registered by name, chosen with ``pretrain.method``."""

from ssal.pretrain import byol, simclr  # noqa: F401  (register the methods)
from ssal.pretrain.base import PRETRAINERS, Pretrainer

__all__ = ["PRETRAINERS", "Pretrainer"]
