"""ssal: self-/semi-supervised active learning for image classification.

The package in layers, bottom to top; each imports only its own layer and those below it
(``python scripts/architecture.py`` measures it, tests/test_architecture.py holds it):

=============  ==============================================================================
ground         errors, rng (keyed seeds, ``derive_seed``), registry, checks, faults, files
models/        backbones (timm), heads, EMA, synchronised BatchNorm, the ensemble module
data/          data sets, the pool, views, folder walks, image checks, label files (pure parsing)
semi/          fine-tuning objectives, one file each (``OBJECTIVES``)
pretrain/      self-supervised methods, one file each (``PRETRAINERS``)
engine/        the one loop on Accelerate: runtime, batches, optim, training, inference
select/        strategies, one file per family (``STRATEGIES``), signals, the selection stage
run/           the run directory: layout, lock, sealed store, transaction, restore, readers, outputs
label/         people's labels: oracles (``ORACLES``), answers, queries, the labeling page
recipe/        the schema (each section checks itself), loading, the recipe of a resumed run
experiment/    the rounds (loop, trainer), pretraining's cache, compare, report, deploy, init
cli            the ``ssal`` command line
=============  ==============================================================================
"""

__version__ = "0.1.0"
