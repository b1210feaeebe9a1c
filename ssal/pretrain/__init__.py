"""Self-supervised pretraining methods, registered by name, chosen with ``pretrain.method``."""

from ssal.registry import Registry

PRETRAINERS = Registry("pretraining method")


@PRETRAINERS.register("none")
class NoPretraining:
    """Start fine-tuning from random initialisation."""

    Config = None


__all__ = ["PRETRAINERS"]
