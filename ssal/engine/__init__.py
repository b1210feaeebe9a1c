"""The one training / evaluation / inference loop, on HuggingFace Accelerate.

Pretraining, fine-tuning and the signal pass of selection all run through :class:`Engine`, so
the same code runs on one CPU, one GPU or several processes (``accelerate launch`` or
``torchrun``), as the same experiment:

- batch sizes are global (what one optimizer step sees), each process takes its slice;
- batches are drawn by a seeded sampler and made (loaded + augmented) by a DataLoader whose items
  are whole slices; every random draw of a sample is keyed by (seed, step, its slot in the global
  batch) (:mod:`ssal.rng`), so it does not depend on the worker or the process that makes it;
- BatchNorm uses the global batch's statistics (:mod:`ssal.models.sync_bn`), and all processes are
  checked to hold the same buffers after training;
- inference is sharded and gathered once per index, its random draws keyed by pool index.

What still depends on the number of processes (and of threads) is floating-point reduction order.

The engine trains what it is given: the caller builds the objective (:func:`ssal.semi.base.make_objective`)
and resolves the recipe's numbers (:meth:`Optim.from_train`). Modules: ``runtime`` (the process),
``batches`` (samplers, batch datasets), ``optim``, ``inference``, ``training``.
"""

from ssal.engine.batches import (
    ChunkSampler,
    InfiniteBatchSampler,
    PlainBatches,
    TrainData,
    TransformBatches,
    ViewBatches,
    split_batch,
)
from ssal.engine.inference import Inference
from ssal.engine.optim import Optim
from ssal.engine.runtime import Runtime, shutdown_distributed
from ssal.engine.training import Diverged, Engine, FitResult

__all__ = ["ChunkSampler", "Diverged", "Engine", "FitResult", "Inference", "InfiniteBatchSampler", "Optim",
           "PlainBatches", "Runtime", "TrainData", "TransformBatches", "ViewBatches", "shutdown_distributed",
           "split_batch"]
