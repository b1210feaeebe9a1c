"""The recipe's schema: one dataclass per section, each checking its own keys (``check``, as a method's own
``Config`` does), and :func:`validate`, which adds the rules across sections. Every mistake is a
:class:`ConfigError` of one line saying how to fix it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from ssal import checks
from ssal.data import DATASETS
from ssal.errors import ConfigError, did_you_mean, one_line
from ssal.label.oracles import ORACLES
from ssal.models import check_backbone
from ssal.pretrain import PRETRAINERS
from ssal.select import INITIAL_STRATEGIES, STRATEGIES, Strategy, stochastic
from ssal.select.signals import PrevProbs
from ssal.semi import OBJECTIVES

CHOICES = {
    "train.schedule": ("cosine", "fixmatch_cosine", "constant"),
    "train.augment": ("weak", "strong", "none"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "data.channels": (1, 3),
}


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"
    root: Optional[str] = None  # None: the dataset's default location (if it has one)
    pool_size: Optional[int] = None  # seeded subsample of the train split used as the pool
    test_size: Optional[int] = None  # seeded subsample of the test split used for evaluation
    # benchmark pools (ssal.data.pool_settings), seeded, applied after pool_size; the test split is unchanged
    imbalance: Optional[float] = None  # long tail: largest / smallest class count (exponential profile), e.g. 10
    redundancy: int = 1  # each pool image appears this many times
    redundancy_noise: float = 0.0  # std of the Gaussian pixel noise on copies after the first (0..1 scale)
    image_size: int = 32  # imagefolder: images are resized/cropped to this size
    channels: int = 3  # imagefolder: 1 (grayscale) or 3 (RGB)
    num_workers: int = 0  # DataLoader workers that load/augment batches (0: main process)
    # imagefolder without labels: every image under root is the pool; these name its classes, in order
    classes: Optional[list[str]] = None
    labels: Optional[str] = None  # CSV of path,label for images already labeled (a seed set), paths under root
    test_root: Optional[str] = None  # a labeled test folder (class subfolders); none: no test accuracy
    hflip: Optional[bool] = None  # whether a horizontal flip keeps the label (None: the data set's default)
    mean: Optional[list[float]] = None  # per-channel normalisation (None: the data set's, or computed on the pool)
    std: Optional[list[float]] = None

    def check(self, key: str, recipe: Any) -> None:
        checks.one_of(f"{key}.channels", self.channels, CHOICES["data.channels"])
        for name in ("classes", "labels", "test_root"):
            checks.require(getattr(self, name) is None or self.dataset == "imagefolder",
                           f"{key}.{name} is for {key}.dataset=imagefolder; {key}.dataset={self.dataset} has its own "
                           "classes, labels and test split: remove it")
        if self.classes is not None:
            self._check_classes(key)
        else:
            checks.require(self.labels is None, f"{key}.labels (a seed set of labeled images) needs {key}.classes (the "
                                                f"class names, in order), e.g. {key}.classes=[cat,dog]")
        self._check_normalisation(key)
        checks.at_least(f"{key}.pool_size", self.pool_size, 1, " or null", optional=True)
        checks.at_least(f"{key}.test_size", self.test_size, 1, " or null", optional=True)
        checks.at_least(f"{key}.num_workers", self.num_workers, 0)
        self._check_pool_settings(key, recipe)
        checks.at_least(f"{key}.image_size", self.image_size, 8)

    def _check_pool_settings(self, key: str, recipe: Any) -> None:
        checks.at_least(f"{key}.imbalance", self.imbalance, 1, " (largest / smallest class count) or null",
                        optional=True)
        checks.at_least(f"{key}.redundancy", self.redundancy, 1, " (1: each image once)")
        checks.within(f"{key}.redundancy_noise", self.redundancy_noise, 0, 1)
        checks.require(self.redundancy_noise == 0 or self.redundancy > 1,
                       f"{key}.redundancy_noise perturbs the copies of {key}.redundancy, which is 1 (no copies): set "
                       f"{key}.redundancy >= 2 or remove {key}.redundancy_noise")
        oracle = recipe.active.oracle if recipe is not None else "simulated"
        checks.require(oracle == "simulated" or (self.imbalance is None and self.redundancy == 1),
                       f"{key}.imbalance and {key}.redundancy build a benchmark pool for the simulated oracle; with "
                       f"active.oracle={oracle} a person labels the pool as it is: remove them")

    def _check_classes(self, key: str) -> None:
        names = list(self.classes or ())
        checks.require(len(names) >= 2, f"{key}.classes needs at least 2 classes (got {names}); a classifier of one "
                                        "class learns nothing")
        checks.require(all(isinstance(c, str) and c.strip() == c and c for c in names),
                       f"{key}.classes must be non-empty names without leading/trailing spaces, got {names}")
        checks.require(all(c.isprintable() for c in names),  # a name shows on buttons, in CSV cells and in XML
                       f"{key}.classes must be printable names (no line breaks, tabs or control characters), got "
                       f"{[c for c in names if not c.isprintable()][:1]}")
        dup = sorted({c for c in names if names.count(c) > 1})
        checks.require(not dup, f"{key}.classes names {', '.join(dup)} twice; give each class once")
        lowered = [c.lower() for c in names]
        checks.require("skip" not in lowered and "unsure" not in lowered,
                       f"{key}.classes may not use 'skip' or 'unsure': those answers mean 'no label' (the image is "
                       "skipped)")

    def _check_normalisation(self, key: str) -> None:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None:
                checks.require(all(isinstance(v, (int, float)) and math.isfinite(v) for v in values),
                               f"{key}.{name} must be finite numbers, got {list(values)}")
                # an image folder's channels are known now; a builtin's only once it is loaded
                checks.require(len(values) in (1, self.channels) if self.dataset == "imagefolder" else len(values) >= 1,
                               f"{key}.{name} needs one value per channel ({key}.channels={self.channels}), got "
                               f"{list(values)}")
        if self.std is not None:
            checks.require(all(v > 0 for v in self.std), f"{key}.std values must be > 0, got {list(self.std)}")
        checks.require((self.mean is None) == (self.std is None), f"set {key}.mean and {key}.std together (or "
                       "neither: the data set's own, computed on the pool for image folders)")


@dataclass
class ModelConfig:
    backbone: str = "cnn_small"  # any timm model name, or cnn_small | resnet18_cifar | wrn_28_2
    drop_rate: float = 0.0  # dropout before the linear head
    pretrained: bool = False  # start from timm's pretrained weights (needs the network or timm's cache)
    checkpoint: Optional[str] = None  # start from the weights in this file (a state dict, timm/torchvision/ssal)

    def check(self, key: str, recipe: Any) -> None:
        checks.fraction(f"{key}.drop_rate", self.drop_rate)


@dataclass
class PretrainConfig:
    method: str = "none"  # none | simclr | byol
    epochs: int = 10  # passes over the whole pool
    batch_size: int = 256  # images per step (per process)
    lr: float = 0.06
    momentum: float = 0.9
    weight_decay: float = 5e-4
    min_scale: float = 0.2  # smallest random-resized-crop area (fraction of the image)
    cj_strength: float = 0.5  # colour-jitter strength of the views
    view_size: Optional[int] = None  # side of the views in px (None: the images' size); smaller = more epochs/CPU-min
    seed: Optional[int] = None  # the pretraining's own seed (None: the run's); fixed, a seed sweep shares one encoder
    eval_every: int = 5  # kNN-monitor every this many epochs (and at the end); 0: only at the end
    knn_k: int = 200
    knn_temperature: float = 0.1

    def check(self, key: str, recipe: Any) -> None:
        checks.seed(f"{key}.seed", self.seed)
        checks.at_least(f"{key}.epochs", self.epochs, 1)
        checks.at_least(f"{key}.batch_size", self.batch_size, 2, " (views of other images are negatives)")
        checks.positive(f"{key}.lr", self.lr)
        checks.fraction(f"{key}.momentum", self.momentum)
        checks.at_least(f"{key}.weight_decay", self.weight_decay, 0)
        checks.within(f"{key}.min_scale", self.min_scale, 0, 1, low_open=True)
        checks.at_least(f"{key}.cj_strength", self.cj_strength, 0)
        checks.at_least(f"{key}.view_size", self.view_size, 8, " px or null (the images' own size)", optional=True)
        checks.at_least(f"{key}.eval_every", self.eval_every, 0, " (0: only at the end)")
        checks.at_least(f"{key}.knn_k", self.knn_k, 1)
        checks.positive(f"{key}.knn_temperature", self.knn_temperature)


@dataclass
class TrainConfig:
    method: str = "supervised"
    steps: int = 1000  # optimizer steps per round
    batch_size: int = 64  # labeled samples per step
    lr: float = 0.03
    backbone_lr_scale: float = 1.0  # the backbone's lr = lr * this (e.g. 0.1 fine-tunes a pretrained one gently)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine (to 0) | fixmatch_cosine (cos 7 pi k / 16 K) | constant
    ema: float = 0.0  # EMA decay of the weights used for evaluation; 0 turns EMA off
    augment: str = "weak"  # the objectives' weak view: weak (flip + shift) | strong (+ RandAugment, Cutout) | none
    reinit: bool = True  # each round trains from the initial weights (else continues)
    continue_steps: Optional[int] = None  # with reinit false: steps of the rounds after round 0 (null: steps)
    eval_batch_size: int = 512
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate)

    def check(self, key: str, recipe: Any) -> None:
        for name in ("schedule", "augment", "mixed_precision"):
            checks.one_of(f"{key}.{name}", getattr(self, name), CHOICES[f"train.{name}"])
        checks.at_least(f"{key}.steps", self.steps, 1)
        checks.at_least(f"{key}.batch_size", self.batch_size, 1)
        checks.at_least(f"{key}.eval_batch_size", self.eval_batch_size, 1)
        checks.positive(f"{key}.lr", self.lr)
        checks.fraction(f"{key}.momentum", self.momentum)
        checks.at_least(f"{key}.weight_decay", self.weight_decay, 0)
        checks.fraction(f"{key}.ema", self.ema, " (0 turns EMA off)")
        checks.at_least(f"{key}.backbone_lr_scale", self.backbone_lr_scale, 0, " (0 freezes the backbone)")
        checks.at_least(f"{key}.continue_steps", self.continue_steps, 1, " or null (train.steps)", optional=True)
        checks.require(self.continue_steps is None or not self.reinit,
                       f"{key}.continue_steps is the schedule of rounds that continue from the last model; with "
                       f"{key}.reinit=true every round starts again: set {key}.reinit=false, or continue_steps=null")


@dataclass
class ActiveConfig:
    initial: int = 100  # labels bought before round 0
    budget: int = 100  # labels bought per round
    rounds: int = 5  # acquisitions; the run trains rounds + 1 times
    strategy: str = "random"
    initial_strategy: str = "random"
    subset: Optional[int] = None  # score a seeded random subset of this many unlabeled samples
    oracle: str = "simulated"  # who answers: simulated (ground truth) | human (queries out, ssal label import)
    oracle_noise: float = 0.0  # simulated: this seeded fraction of the answers is a wrong class
    audit: int = 0  # random pool images asked with the first batch and held out: each round's accuracy on them
    lookahead: int = 0  # images chosen beyond each batch, answered while the next round trains (0: strict loop)
    stop_set: int = 1000  # seeded pool images whose predictions are compared round to round (0: no stop signal)
    stop_when: Optional[float] = None  # end the run once the mean kappa of the last stop_window rounds reaches it
    stop_window: int = 3
    stochastic: Optional[str] = None  # power | softmax | softrank: draw the batch from the strategy's scores
    stochastic_beta: float = 1.0  # the draw's sharpness (higher: closer to the top budget)
    ceal_threshold: Optional[float] = None  # CEAL: images of entropy below this train with the model's label
    ceal_decay: float = 0.00033  # the CEAL threshold's decrease per round

    def check(self, key: str, recipe: Any) -> None:
        """Everything but ``initial``, whose floor depends on ``data.labels`` (see :func:`validate`)."""
        checks.fraction(f"{key}.oracle_noise", self.oracle_noise)
        checks.require(self.oracle == "simulated" or self.oracle_noise == 0,
                       f"{key}.oracle_noise simulates wrong answers of the simulated oracle; with "
                       f"{key}.oracle={self.oracle} set it to 0")
        if self.oracle != "simulated" and _needs_truth(self.initial_strategy):
            usable = [n for n in INITIAL_STRATEGIES.names() if not _needs_truth(n)]
            raise ConfigError(f"{key}.initial_strategy={self.initial_strategy} reads the ground-truth labels, which "
                              f"people have not given yet; with {key}.oracle={self.oracle} use {_either(usable)}")
        checks.at_least(f"{key}.budget", self.budget, 1)
        checks.at_least(f"{key}.rounds", self.rounds, 0)
        checks.at_least(f"{key}.audit", self.audit, 0, " (0: no audit set)")
        checks.at_least(f"{key}.lookahead", self.lookahead, 0, " (0: the strict loop)")
        checks.at_least(f"{key}.stop_set", self.stop_set, 0, " (0: no stop signal)")
        checks.at_least(f"{key}.stop_window", self.stop_window, 1)
        if self.stop_when is not None:
            checks.within(f"{key}.stop_when", self.stop_when, 0, 1, low_open=True,
                          note=" (a kappa, e.g. 0.99) or null")
            checks.require(self.stop_set > 0, f"{key}.stop_when needs the stop signal: set {key}.stop_set > 0 "
                                              "(e.g. 1000), or stop_when: null")
        if self.stochastic is not None:
            checks.require(self.stochastic in stochastic.MODES, f"{key}.stochastic must be one of "
                           f"{', '.join(stochastic.MODES)} or null, got '{one_line(str(self.stochastic))}'"
                           f"{did_you_mean(str(self.stochastic), stochastic.MODES)}")
            why = stochastic.usable(STRATEGIES.get(self.strategy), self.stochastic)
            checks.require(why is None, f"{key}.stochastic={self.stochastic} cannot draw the batch of "
                           f"{key}.strategy={self.strategy}: {why}; use it with a ranking strategy (e.g. entropy) "
                           "or set stochastic: null")
            checks.require(self.stochastic_beta > 0, f"{key}.stochastic_beta must be > 0, got {self.stochastic_beta}")
        checks.at_least(f"{key}.ceal_threshold", self.ceal_threshold, 0, " (nats) or null (no CEAL)", optional=True)
        checks.at_least(f"{key}.ceal_decay", self.ceal_decay, 0)
        checks.require(self.subset is None or self.subset >= self.budget,
                       f"{key}.subset ({self.subset}) must be >= {key}.budget ({self.budget}) or null")


def _needs_truth(initial_strategy: str) -> bool:
    """Whether the initial strategy declares that it reads ground-truth labels (``select.base.reads_truth``)."""
    return getattr(INITIAL_STRATEGIES.get(initial_strategy), "needs_truth", False)


def _either(names: list[str]) -> str:
    """``a, b or c``."""
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


@dataclass
class Recipe:
    name: str = ""  # defaults to the recipe file's stem
    seed: int = 0
    output_dir: Optional[str] = None  # defaults to runs/<name>
    cache_dir: str = "~/.cache/ssal"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    active: ActiveConfig = field(default_factory=ActiveConfig)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "pretrain": PretrainConfig, "train": TrainConfig,
            "active": ActiveConfig}


def _section_with_components(base: type, registry, section: str) -> type:
    """``base`` extended by one sub-section per registered component that declares a ``Config``.

    A method's own options live in its own file (``class Config`` on the registered class) and
    appear in recipes as ``<section>.<method name>.<option>``.
    """
    extra = [(name, cls.Config, field(default_factory=cls.Config))
             for name, cls in registry.items() if getattr(cls, "Config", None) is not None]
    if not extra:
        return base
    return dataclasses.make_dataclass(base.__name__, extra, bases=(base,))


def schema() -> type:
    """The full recipe dataclass, including the sub-sections of every registered method."""
    fields = {
        "pretrain": _section_with_components(PretrainConfig, PRETRAINERS, "pretrain"),
        "train": _section_with_components(TrainConfig, OBJECTIVES, "train"),
        "active": _section_with_components(ActiveConfig, STRATEGIES, "active"),
    }
    return dataclasses.make_dataclass(
        "Recipe", [(k, t, field(default_factory=t)) for k, t in fields.items()], bases=(Recipe,))


# ----------------------------------------------------------------------------- validation

def validate(cfg: DictConfig) -> None:
    """Names and values that can be checked without loading data. Each section checks its own keys (its
    ``check``, e.g. :meth:`DataConfig.check`); this adds the rules that cross sections."""
    _require_finite(cfg)
    name = cfg.name
    checks.require(name not in (".", "..") and name.isprintable() and not set(name) & {"/", "\\"},
                   f"name '{one_line(name)}' must be a plain name (no '/', '\\', '..' or control characters): it "
                   "names the run's folder under runs/ and its plots")
    checks.seed("seed", cfg.seed)
    _check_names(cfg)
    for key in ("pretrain", "train"):
        _check_section(cfg, key)
    _validate_methods(cfg)
    _check_section(cfg, "model")
    a, d = cfg.active, cfg.data
    if d.labels is None:
        checks.at_least("active.initial", a.initial, 1, " (round 0 trains on it)")
    else:
        checks.at_least("active.initial", a.initial, 0)
    _check_section(cfg, "active")
    _check_section(cfg, "data")
    needed = a.initial + a.rounds * a.budget
    # a long tail's size is known once the classes are counted: ssal.recipe.validate_pool checks it then
    if d.pool_size is not None and d.imbalance is None and needed > d.pool_size * d.redundancy:
        copies = f" x data.redundancy={d.redundancy}" if d.redundancy > 1 else ""
        raise ConfigError(f"active.initial + active.rounds * active.budget = {needed} labels, more than the "
                          f"{d.pool_size * d.redundancy} images of data.pool_size={d.pool_size}{copies}; lower the "
                          "budget or rounds, or enlarge the pool")


def _check_section(cfg: DictConfig, key: str) -> None:
    checks.check_config(key, SECTIONS[key], cfg[key], cfg)


def _check_names(cfg: DictConfig) -> None:
    """Every named component exists, before any section's check (a check may look up another's, e.g. a
    strategy's the objective's)."""
    for key, reg in (("data.dataset", DATASETS), ("pretrain.method", PRETRAINERS), ("train.method", OBJECTIVES),
                     ("active.strategy", STRATEGIES), ("active.initial_strategy", INITIAL_STRATEGIES),
                     ("active.oracle", ORACLES)):
        name = OmegaConf.select(cfg, key)
        if name not in reg:
            raise ConfigError(f"{key}: unknown {reg.kind} '{name}'{did_you_mean(name, reg.names())}; "
                              f"choose one of: {', '.join(reg.names())}")
    check_backbone(cfg.model.backbone, cfg.model.pretrained)


def _require_finite(node: Any, prefix: str = "") -> None:
    """Every number of the recipe is finite (inf and nan pass most range checks and poison training)."""
    if isinstance(node, DictConfig):
        for k in node.keys():
            _require_finite(node[k], f"{prefix}{k}.")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{prefix.rstrip('.')} must be a finite number, got {node}")


def _validate_methods(cfg: DictConfig) -> None:
    """The chosen methods check their own options (``Config.check``, in their files), and the
    strategy's signals check that the recipe can provide them (e.g. an EMA to compare with)."""

    for section, registry in (("pretrain", PRETRAINERS), ("train", OBJECTIVES), ("active", STRATEGIES)):
        name = cfg[section].method if section != "active" else cfg.active.strategy
        options = OmegaConf.select(cfg, f"{section}.{name}")
        checks.check_options(f"{section}.{name}", registry.get(name), options, cfg)
    strategy = STRATEGIES.get(cfg.active.strategy)(OmegaConf.select(cfg, f"active.{cfg.active.strategy}"))
    if OBJECTIVES.get(cfg.train.method).closed_form:  # solved on frozen features: no steps, one model
        method = f"train.method={cfg.train.method} fits a linear head on frozen features, with no training steps"
        checks.require(not cfg.train.ema, f"{method}: there are no weights to average; set train.ema: 0")
        trains = ("several models" if strategy.members > 1 else
                  "a module along the training steps" if type(strategy).auxiliary is not Strategy.auxiliary else
                  "the weights' EMA to compare with in round 0" if any(isinstance(r, PrevProbs) for r in strategy.needs)
                  else None)
        checks.require(trains is None, f"{method}, and active.strategy={cfg.active.strategy} needs {trains}; "
                                       "choose another strategy or train.method")
    for request in strategy.needs:
        request.check(cfg, cfg.active.strategy)


def validate_pool(cfg: DictConfig, pool_size: int, seeded: int = 0) -> None:
    """Checks that need the size of the pool (known once the data set is found) and the number of images
    ``data.labels`` labels already (``seeded``)."""

    a = cfg.active
    needed = seeded + a.audit + a.initial + a.rounds * a.budget
    seed = f"the {seeded} of data.labels + " if seeded else ""
    audit = "active.audit + " if a.audit else ""
    checks.require(needed <= pool_size,
                   f"{seed}{audit}active.initial + active.rounds * active.budget = {needed} labels, more than the "
                   f"{pool_size} images in the pool; lower active.budget or active.rounds"
                   + (" (or label fewer images in data.labels)" if seeded else "")
                   + (" (or active.audit)" if a.audit else ""))
    checks.require(not OBJECTIVES.get(cfg.train.method).uses_unlabeled() or needed < pool_size,
                   f"train.method={cfg.train.method} trains on unlabeled images, but the last round would have none "
                   f"({needed} labels, {pool_size} images in the pool); lower active.budget or active.rounds")
