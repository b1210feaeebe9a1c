"""Recipes: a typed schema (dataclasses + OmegaConf), ``extends:``, ``key=value`` overrides, validation.

Every mistake a user can make in a recipe is caught here, before anything runs, and raised as a
:class:`ConfigError` with one line that says what is wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from ssal.errors import ConfigError, closest, did_you_mean, one_line


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"
    root: Optional[str] = None  # None: the dataset's default location (if it has one)
    pool_size: Optional[int] = None  # seeded subsample of the train split used as the pool
    test_size: Optional[int] = None  # seeded subsample of the test split used for evaluation
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


@dataclass
class ModelConfig:
    backbone: str = "cnn_small"  # any timm model name, or cnn_small | resnet18_cifar | wrn_28_2
    drop_rate: float = 0.0  # dropout before the linear head
    pretrained: bool = False  # start from timm's pretrained weights (needs the network or timm's cache)
    checkpoint: Optional[str] = None  # start from the weights in this file (a state dict, timm/torchvision/ssal)


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
    eval_batch_size: int = 512
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate)


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


CHOICES = {
    "train.schedule": ("cosine", "fixmatch_cosine", "constant"),
    "train.augment": ("weak", "strong", "none"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "data.channels": (1, 3),
}


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
    from ssal.pretrain import PRETRAINERS
    from ssal.select import STRATEGIES
    from ssal.semi import OBJECTIVES

    fields = {
        "pretrain": _section_with_components(PretrainConfig, PRETRAINERS, "pretrain"),
        "train": _section_with_components(TrainConfig, OBJECTIVES, "train"),
        "active": _section_with_components(ActiveConfig, STRATEGIES, "active"),
    }
    return dataclasses.make_dataclass(
        "Recipe", [(k, t, field(default_factory=t)) for k, t in fields.items()], bases=(Recipe,))


# ----------------------------------------------------------------------------- loading

def read_yaml(path: Path, what: str = "recipe") -> Any:
    """The content of a YAML file; a one-line :class:`ConfigError` when it is missing, unreadable, not
    YAML, or sets a key twice (YAML keeps the last silently, which drops a whole block)."""
    if path.is_dir():
        raise ConfigError(f"{what} '{path}' is a folder; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} file '{path}' not found; check the path" +
                          (" (recipes live in recipes/)" if what == "recipe" else ""))
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} '{path}' is not a text file (not UTF-8); give a YAML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} '{path}': {e.strerror}") from None
    try:
        _check_duplicate_keys(yaml.compose(text), f"{what} '{path}'")
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{what} '{path}' nests its values too deeply to be a {what}; give a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what} '{path}' is not valid YAML:{where}: {problem}") from None


def _check_duplicate_keys(node: Any, where: str, prefix: str = "", seen: set | None = None) -> None:
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:  # an alias repeats a node already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise ConfigError(f"{where} sets '{prefix}{key}' twice (lines {lines[key]} and {line}); YAML would "
                                      "keep only the second: merge them into one")
                lines[key] = line
            _check_duplicate_keys(value_node, where, f"{prefix}{key}.", seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(item, where, f"{prefix}{i}.", seen)


def _read_recipe(path: Path) -> dict:
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe '{path}' must be a mapping of keys (got {type(data).__name__})")
    return data


def _chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The recipe and the recipes it extends, bases first. ``extends`` names one recipe or a list
    of them (merged in order, later ones winning); a recipe reached twice (two parents that extend
    the same base) is merged once, at its first place."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"recipe '{path}' extends itself (cycle: {' -> '.join(p.name for p in seen + (path,))})")
    data = _read_recipe(path)
    parents = data.pop("extends", None)
    if parents is None:
        return [(path, data)]
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not parents or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"'extends' in '{path}' must be a path to another recipe (or a list of them), relative to it")
    chain: list[tuple[Path, dict]] = []
    for parent in parents:
        for p, d in _chain(path.parent / parent, seen + (path,)):
            if all(p != q for q, _ in chain):
                chain.append((p, d))
    return chain + [(path, data)]


def _keys(node: Any, prefix: str = "") -> list[str]:
    if dataclasses.is_dataclass(node) or isinstance(node, DictConfig):
        items = (OmegaConf.to_container(node) if isinstance(node, DictConfig) else dataclasses.asdict(node)).items()
    elif isinstance(node, dict):
        items = node.items()
    else:
        return []
    out = []
    for k, v in items:
        out.append(f"{prefix}{k}")
        out += _keys(v, f"{prefix}{k}.")
    return out


def _missing_leaves(data: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???`` (OmegaConf's "must be set"), which a merge would ignore."""
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data)
    if not isinstance(data, dict):
        return []
    out = []
    for k, v in data.items():
        if isinstance(v, dict):
            out += _missing_leaves(v, f"{prefix}{k}.")
        elif v == "???":
            out.append(f"{prefix}{k}")
    return out


def _sections(cfg: DictConfig, data: Any, source: str, prefix: str = "") -> Any:
    """``data`` with empty sections (``train:`` with nothing under it) dropped; a value given to a
    section that is not a mapping (``train=5``) is an error naming that section."""
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data)
    if not isinstance(data, dict) or not isinstance(cfg, DictConfig):
        return data
    out = {}
    for k, v in data.items():
        node = cfg._get_node(k) if isinstance(k, str) and k in cfg else None
        if isinstance(node, DictConfig):
            if v is None:
                continue
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: {prefix}{k} is a section of keys, not a value (got {v!r}); set one of "
                                  f"its keys, e.g. {prefix}{k}.{next(iter(node.keys()), 'key')}=...")
            v = _sections(node, v, source, f"{prefix}{k}.")
        out[k] = v
    return out


def _merge(cfg: DictConfig, data: Any, source: str) -> DictConfig:
    data = _sections(cfg, data, source)
    try:
        merged = OmegaConf.merge(cfg, data)
        for key in _missing_leaves(data):  # merging '???' keeps the old value; mark it as required
            OmegaConf.update(merged, key, "???", merge=False)
        return merged
    except ConfigKeyError as e:
        key = e.full_key or str(e.key)
        section = key.rpartition(".")[0]
        node = OmegaConf.select(cfg, section) if section else cfg
        children = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
        leaf = closest(key.rpartition(".")[2], children)
        hint = f" (did you mean '{section + '.' if section else ''}{leaf}'?)" if leaf else did_you_mean(key, _keys(cfg))
        valid = ", ".join(children)
        where = f"keys of '{section}'" if section else "top-level keys"
        raise ConfigError(f"{source}: unknown recipe key '{key}'{hint}; {where}: {valid}") from None
    except ValidationError as e:
        key = e.full_key
        expected = _expected_type(cfg, key)
        raise ConfigError(f"{source}: {key or 'recipe'} must be {expected}, got {e.value!r}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {str(e).splitlines()[0]}") from None


def _expected_type(cfg: DictConfig, key: str | None) -> str:
    if not key:
        return "a mapping"
    try:
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        node = parent._get_node(leaf)
        if isinstance(node, DictConfig):
            return "a mapping of keys"
        t = node._metadata.ref_type
        name = getattr(t, "__name__", str(t))
        if "Optional" in str(t):
            name = str(t).replace("typing.", "")
        if "List" in name or "list" in name:
            return "a list, e.g. [a, b]"
        return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(name, name)
    except Exception:  # pragma: no cover - best effort wording only
        return "of the declared type"


def parse_overrides(overrides: list[str]) -> DictConfig:
    for o in overrides:
        key = o.split("=", 1)[0]
        if "=" not in o or not key or " " in key:
            raise ConfigError(f"override '{o}' must look like key=value (e.g. active.strategy=entropy)")
        if not all(part.isidentifier() for part in key.split(".")):
            raise ConfigError(f"override '{o}': '{key}' is not a recipe key (dotted names, e.g. train.steps=5)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        raise ConfigError(f"cannot parse overrides {overrides}: {str(e).splitlines()[0]}") from None


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> DictConfig:
    """Load, merge and validate a recipe. Raises ConfigError with one line on any mistake."""
    path = Path(path)
    cfg = OmegaConf.structured(schema())
    for p, data in _chain(path):
        cfg = _merge(cfg, data, str(p if not p.is_relative_to(Path.cwd()) else p.relative_to(Path.cwd())))
    if overrides:
        cfg = _merge(cfg, parse_overrides(list(overrides)), "override")
    if not cfg.name:
        cfg.name = path.stem
    return finalize(cfg)


def from_dict(data: dict, overrides: list[str] = ()) -> DictConfig:
    """A validated recipe from a plain dict (for tests and the Python API)."""
    cfg = _merge(OmegaConf.structured(schema()), data, "recipe")
    if overrides:
        cfg = _merge(cfg, parse_overrides(list(overrides)), "override")
    if not cfg.name:
        cfg.name = "run"
    return finalize(cfg)


def finalize(cfg: DictConfig) -> DictConfig:
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve an interpolation in the recipe: {str(e).splitlines()[0]}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set (the recipe says ???); "
                          f"pass it as an override, e.g. {missing[0]}=...")
    if cfg.output_dir is None:
        cfg.output_dir = str(Path("runs") / cfg.name)
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


# ----------------------------------------------------------------------------- validation

def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    """Names and values that can be checked without loading data."""
    from ssal.data import DATASETS
    from ssal.models import check_backbone
    from ssal.oracle import ORACLES
    from ssal.pretrain import PRETRAINERS
    from ssal.select import INITIAL_STRATEGIES, STRATEGIES
    from ssal.semi import OBJECTIVES

    _require_finite(cfg)
    name = cfg.name
    _require(name not in (".", "..") and name.isprintable() and not set(name) & {"/", "\\"},
             f"name '{one_line(name)}' must be a plain name (no '/', '\\', '..' or control characters): it names the "
             "run's folder under runs/ and its plots")
    for key in ("seed", "pretrain.seed"):
        value = OmegaConf.select(cfg, key)
        _require(value is None or 0 <= value < 2**63, f"{key} must be in [0, 2**63), got {value}")
    for key, reg in (("data.dataset", DATASETS), ("pretrain.method", PRETRAINERS), ("train.method", OBJECTIVES),
                     ("active.strategy", STRATEGIES), ("active.initial_strategy", INITIAL_STRATEGIES),
                     ("active.oracle", ORACLES)):
        name = OmegaConf.select(cfg, key)
        if name not in reg:
            raise ConfigError(f"{key}: unknown {reg.kind} '{name}'{did_you_mean(name, reg.names())}; "
                              f"choose one of: {', '.join(reg.names())}")
    check_backbone(cfg.model.backbone, cfg.model.pretrained)
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        _require(value in choices, f"{key}: '{value}' is not one of {', '.join(map(str, choices))}"
                 f"{did_you_mean(value, map(str, choices))}")

    p = cfg.pretrain
    _require(p.epochs >= 1, f"pretrain.epochs must be >= 1, got {p.epochs}")
    _require(p.batch_size >= 2, f"pretrain.batch_size must be >= 2 (views of other images are negatives), "
                                f"got {p.batch_size}")
    _require(p.lr > 0, f"pretrain.lr must be > 0, got {p.lr}")
    _require(0 <= p.momentum < 1, f"pretrain.momentum must be in [0, 1), got {p.momentum}")
    _require(p.weight_decay >= 0, f"pretrain.weight_decay must be >= 0, got {p.weight_decay}")
    _require(0 < p.min_scale <= 1, f"pretrain.min_scale must be in (0, 1], got {p.min_scale}")
    _require(p.cj_strength >= 0, f"pretrain.cj_strength must be >= 0, got {p.cj_strength}")
    _require(p.view_size is None or p.view_size >= 8,
             f"pretrain.view_size must be >= 8 px or null (the images' own size), got {p.view_size}")
    _require(p.eval_every >= 0, f"pretrain.eval_every must be >= 0 (0: only at the end), got {p.eval_every}")
    _require(p.knn_k >= 1, f"pretrain.knn_k must be >= 1, got {p.knn_k}")
    _require(p.knn_temperature > 0, f"pretrain.knn_temperature must be > 0, got {p.knn_temperature}")

    t, a, d = cfg.train, cfg.active, cfg.data
    _require(t.steps >= 1, f"train.steps must be >= 1, got {t.steps}")
    _require(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    _require(t.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {t.eval_batch_size}")
    _require(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    _require(0 <= t.momentum < 1, f"train.momentum must be in [0, 1), got {t.momentum}")
    _require(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}")
    _require(0 <= t.ema < 1, f"train.ema must be in [0, 1) (0 turns EMA off), got {t.ema}")
    _require(t.backbone_lr_scale >= 0, f"train.backbone_lr_scale must be >= 0 (0 freezes the backbone), "
             f"got {t.backbone_lr_scale}")
    _validate_methods(cfg)
    _require(0 <= cfg.model.drop_rate < 1, f"model.drop_rate must be in [0, 1), got {cfg.model.drop_rate}")
    if d.labels is None:
        _require(a.initial >= 1, f"active.initial must be >= 1 (round 0 trains on it), got {a.initial}")
    else:
        _require(a.initial >= 0, f"active.initial must be >= 0, got {a.initial}")
    _require(0 <= a.oracle_noise < 1, f"active.oracle_noise must be in [0, 1), got {a.oracle_noise}")
    _require(a.oracle == "simulated" or a.oracle_noise == 0,
             "active.oracle_noise simulates wrong answers of the simulated oracle; with active.oracle=human "
             "set it to 0")
    _require(a.oracle == "simulated" or a.initial_strategy != "class_balanced",
             "active.initial_strategy=class_balanced reads the ground-truth labels, which people have not given "
             "yet; with active.oracle=human use random or typiclust")
    _validate_folder_keys(d)
    _require(a.budget >= 1, f"active.budget must be >= 1, got {a.budget}")
    _require(a.rounds >= 0, f"active.rounds must be >= 0, got {a.rounds}")
    _require(a.subset is None or a.subset >= a.budget,
             f"active.subset ({a.subset}) must be >= active.budget ({a.budget}) or null")
    _require(d.pool_size is None or d.pool_size >= 1, f"data.pool_size must be >= 1 or null, got {d.pool_size}")
    _require(d.test_size is None or d.test_size >= 1, f"data.test_size must be >= 1 or null, got {d.test_size}")
    _require(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
    _require(d.image_size >= 8, f"data.image_size must be >= 8, got {d.image_size}")
    needed = a.initial + a.rounds * a.budget
    if d.pool_size is not None:
        _require(needed <= d.pool_size,
                 f"active.initial + active.rounds * active.budget = {needed} labels, more than data.pool_size="
                 f"{d.pool_size}; lower the budget or rounds, or enlarge the pool")


def _validate_folder_keys(d: DictConfig) -> None:
    """The data keys of image folders: classes, seed labels, a test folder, normalisation."""
    for key in ("classes", "labels", "test_root"):
        _require(d[key] is None or d.dataset == "imagefolder",
                 f"data.{key} is for data.dataset=imagefolder; data.dataset={d.dataset} has its own classes, "
                 "labels and test split: remove it")
    if d.classes is not None:
        names = list(d.classes)
        _require(len(names) >= 2, f"data.classes needs at least 2 classes (got {names}); a classifier of one class "
                                  "learns nothing")
        _require(all(isinstance(c, str) and c.strip() == c and c for c in names),
                 f"data.classes must be non-empty names without leading/trailing spaces, got {names}")
        _require(all(c.isprintable() for c in names),  # a name shows on buttons, in CSV cells and in XML
                 f"data.classes must be printable names (no line breaks, tabs or control characters), got "
                 f"{[c for c in names if not c.isprintable()][:1]}")
        dup = sorted({c for c in names if names.count(c) > 1})
        _require(not dup, f"data.classes names {', '.join(dup)} twice; give each class once")
        lowered = [c.lower() for c in names]
        _require("skip" not in lowered and "unsure" not in lowered,
                 "data.classes may not use 'skip' or 'unsure': those answers mean 'no label' (the image is skipped)")
    else:
        _require(d.labels is None, "data.labels (a seed set of labeled images) needs data.classes (the class names, "
                                   "in order), e.g. data.classes=[cat,dog]")
    for key in ("mean", "std"):
        values = d[key]
        if values is not None:
            _require(all(isinstance(v, (int, float)) and math.isfinite(v) for v in values),
                     f"data.{key} must be finite numbers, got {list(values)}")
            _require(len(values) in (1, d.channels) if d.dataset == "imagefolder" else len(values) >= 1,
                     f"data.{key} needs one value per channel (data.channels={d.channels}), got {list(values)}")
    if d.std is not None:
        _require(all(v > 0 for v in d.std), f"data.std values must be > 0, got {list(d.std)}")
    _require((d.mean is None) == (d.std is None), "set data.mean and data.std together (or neither: the data "
                                                  "set's own, computed on the pool for image folders)")


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
    from ssal.checks import check_options
    from ssal.pretrain import PRETRAINERS
    from ssal.select import STRATEGIES
    from ssal.semi import OBJECTIVES

    for section, registry in (("pretrain", PRETRAINERS), ("train", OBJECTIVES), ("active", STRATEGIES)):
        name = cfg[section].method if section != "active" else cfg.active.strategy
        options = OmegaConf.select(cfg, f"{section}.{name}")
        check_options(f"{section}.{name}", registry.get(name), options, cfg)
    strategy = STRATEGIES.get(cfg.active.strategy)
    for request in strategy(OmegaConf.select(cfg, f"active.{cfg.active.strategy}")).needs:
        request.check(cfg, cfg.active.strategy)


def validate_pool(cfg: DictConfig, pool_size: int, seeded: int = 0) -> None:
    """Checks that need the size of the pool (known once the data set is found) and the number of images
    ``data.labels`` labels already (``seeded``)."""
    from ssal.semi import OBJECTIVES

    a = cfg.active
    needed = seeded + a.initial + a.rounds * a.budget
    seed = f"the {seeded} of data.labels + " if seeded else ""
    _require(needed <= pool_size,
             f"{seed}active.initial + active.rounds * active.budget = {needed} labels, more than the "
             f"{pool_size} images in the pool; lower active.budget or active.rounds"
             + (" (or label fewer images in data.labels)" if seeded else ""))
    _require(not OBJECTIVES.get(cfg.train.method).uses_unlabeled() or needed < pool_size,
             f"train.method={cfg.train.method} trains on unlabeled images, but the last round would have none "
             f"({needed} labels, {pool_size} images in the pool); lower active.budget or active.rounds")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
