"""Recipes: ``extends:``, ``key=value`` overrides, validation, defaults, the shipped recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from ssal.data import DATASETS
from ssal.errors import ConfigError
from ssal.recipe import from_dict, load_recipe, parse_overrides
from ssal.select import INITIAL_STRATEGIES, STRATEGIES
from ssal.semi import OBJECTIVES

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if p.parent.name != "compare")  # compare/: specs


def _dump(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


# ----------------------------------------------------------------------------- extends

def test_extends_is_relative_to_the_recipe_file_multi_level_child_wins(tmp_path, tiny_recipe, monkeypatch):
    base = tiny_recipe(tmp_path / "out")
    base["active"]["strategy"] = "random"
    _dump(tmp_path / "a" / "base.yaml", base)
    _dump(tmp_path / "a" / "b" / "mid.yaml",
          {"extends": "../base.yaml", "active": {"strategy": "margin", "budget": 5}, "train": {"steps": 7}})
    leaf = _dump(tmp_path / "c" / "leaf.yaml",
                 {"extends": "../a/b/mid.yaml", "active": {"strategy": "entropy"}, "seed": 3})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # parents are found relative to the file, not the working directory

    cfg = load_recipe(leaf)
    assert cfg.active.strategy == "entropy"  # leaf overrides mid overrides base
    assert cfg.active.budget == 5  # from mid
    assert cfg.train.steps == 7  # from mid
    assert cfg.seed == 3  # from leaf
    assert cfg.data.dataset == "digits" and cfg.data.pool_size == 400  # from base
    assert cfg.train.batch_size == 32  # base value survives two levels
    assert cfg.name == "leaf"  # the stem of the file that was loaded, not of a parent
    assert "extends" not in cfg

    mid = load_recipe(tmp_path / "a" / "b" / "mid.yaml")
    assert mid.active.strategy == "margin" and mid.name == "mid"


def test_extends_a_list_merges_in_order_and_a_shared_base_once(tmp_path, tiny_recipe):
    base = tiny_recipe(tmp_path / "out")
    _dump(tmp_path / "base.yaml", base)
    _dump(tmp_path / "pre.yaml", {"extends": "base.yaml", "pretrain": {"method": "simclr", "epochs": 3},
                                  "train": {"steps": 11}})
    _dump(tmp_path / "semi.yaml", {"extends": "base.yaml", "train": {"method": "fixmatch", "lr": 0.5}})
    both = _dump(tmp_path / "both.yaml", {"extends": ["pre.yaml", "semi.yaml"], "seed": 4})
    cfg = load_recipe(both)
    # base is merged once, first: semi.yaml's copy of it does not reset pre.yaml's pretrain section
    assert cfg.pretrain.method == "simclr" and cfg.pretrain.epochs == 3
    assert cfg.train.method == "fixmatch" and cfg.train.lr == 0.5 and cfg.train.steps == 11
    assert cfg.seed == 4 and cfg.data.dataset == "digits"
    _dump(tmp_path / "bad.yaml", {"extends": ["base.yaml", 3]})
    with pytest.raises(ConfigError, match="list of them"):
        load_recipe(tmp_path / "bad.yaml")


def test_extends_cycle_is_a_config_error(tmp_path, tiny_recipe):
    _dump(tmp_path / "a.yaml", {"extends": "b.yaml", **tiny_recipe(tmp_path / "out")})
    _dump(tmp_path / "b.yaml", {"extends": "sub/c.yaml"})
    _dump(tmp_path / "sub" / "c.yaml", {"extends": "../a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_extends_itself_is_a_config_error(tmp_path):
    _dump(tmp_path / "self.yaml", {"extends": "self.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(tmp_path / "self.yaml")


def test_extends_missing_parent_is_a_config_error(tmp_path):
    _dump(tmp_path / "child.yaml", {"extends": "nope/parent.yaml"})
    with pytest.raises(ConfigError, match="parent.yaml"):
        load_recipe(tmp_path / "child.yaml")


def test_extends_must_be_a_path(tmp_path):
    _dump(tmp_path / "child.yaml", {"extends": ["a.yaml", "b.yaml"]})
    with pytest.raises(ConfigError, match="extends"):
        load_recipe(tmp_path / "child.yaml")


# ----------------------------------------------------------------------------- overrides

@pytest.mark.parametrize("override, key, value, typ", [
    ("train.steps=7", "train.steps", 7, int),
    ("seed=12", "seed", 12, int),
    ("train.lr=0.25", "train.lr", 0.25, float),
    ("train.lr=1e-2", "train.lr", 0.01, float),
    ("train.lr=1", "train.lr", 1.0, float),  # an int given to a float key becomes a float
    ("train.ema=0.5", "train.ema", 0.5, float),
    ("active.subset=null", "active.subset", None, type(None)),
    ("data.pool_size=null", "data.pool_size", None, type(None)),
    ("data.pool_size=300", "data.pool_size", 300, int),
    ("train.reinit=false", "train.reinit", False, bool),
    ("train.reinit=False", "train.reinit", False, bool),
    ("train.nesterov=true", "train.nesterov", True, bool),
    ("active.strategy=margin", "active.strategy", "margin", str),
    ("data.root=/some/where", "data.root", "/some/where", str),
])
def test_overrides_are_typed(write_recipe, override, key, value, typ):
    cfg = load_recipe(write_recipe(), [override])
    got = OmegaConf.select(cfg, key)
    assert got == value
    assert type(got) is typ


def test_several_overrides_apply_in_order_and_beat_the_file(write_recipe):
    cfg = load_recipe(write_recipe(train={"steps": 20}), ["train.steps=5", "active.budget=3", "train.steps=9"])
    assert cfg.train.steps == 9 and cfg.active.budget == 3


@pytest.mark.parametrize("override, closest", [
    ("active.budgt=5", "active.budget"),
    ("active.stratgy=margin", "active.strategy"),
    ("sed=1", "seed"),
    ("trian.steps=3", "train"),
])
def test_unknown_key_names_the_closest_key(write_recipe, override, closest):
    with pytest.raises(ConfigError, match=f"did you mean '{closest}'"):
        load_recipe(write_recipe(), [override])


def test_unknown_key_in_the_recipe_file_names_the_closest_key(write_recipe):
    path = write_recipe(active={"strategi": "margin"})
    with pytest.raises(ConfigError, match=r"unknown recipe key 'active\.strategi'.*'active\.strategy'"):
        load_recipe(path)


@pytest.mark.parametrize("override, key", [
    ("active.budget=abc", "active.budget"),
    ("train.steps=1.5", "train.steps"),
    ("train.lr=fast", "train.lr"),
    ("train.reinit=maybe", "train.reinit"),
])
def test_wrong_type_is_a_config_error(write_recipe, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        load_recipe(write_recipe(), [override])
    assert "\n" not in str(e.value)


def test_wrong_type_in_the_recipe_file(write_recipe):
    with pytest.raises(ConfigError, match=r"active\.rounds must be an integer"):
        load_recipe(write_recipe(active={"rounds": "three"}))


@pytest.mark.parametrize("override", ["active.strategy", "=5", "", "active strategy=entropy"])
def test_override_without_equals_is_a_config_error(write_recipe, override):
    with pytest.raises(ConfigError, match="key=value"):
        load_recipe(write_recipe(), [override])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides([override])


# ----------------------------------------------------------------------------- names

@pytest.mark.parametrize("override, suggestion, registry", [
    ("active.strategy=entropyy", "entropy", STRATEGIES),
    ("data.dataset=digitz", "digits", DATASETS),
    ("train.method=supervisd", "supervised", OBJECTIVES),
    ("active.initial_strategy=class_balance", "class_balanced", INITIAL_STRATEGIES),
    ("model.backbone=cnn_smal", "cnn_small", None),
])
def test_unknown_registry_names(write_recipe, override, suggestion, registry):
    with pytest.raises(ConfigError) as e:
        load_recipe(write_recipe(), [override])
    msg = str(e.value)
    assert f"'{override.split('=')[1]}'" in msg  # says what was wrong
    assert f"did you mean '{suggestion}'" in msg  # and the closest valid name
    if registry is not None:
        assert all(name in msg for name in registry.names())  # and lists the choices


def test_unknown_name_far_from_everything_still_lists_the_choices(write_recipe):
    with pytest.raises(ConfigError, match="choose one of") as e:
        load_recipe(write_recipe(), ["active.strategy=qqqqqqqq"])
    assert "did you mean" not in str(e.value)


def test_unknown_name_in_the_recipe_file(write_recipe):
    with pytest.raises(ConfigError, match="entropy"):
        load_recipe(write_recipe(active={"strategy": "entropyy"}))


# ----------------------------------------------------------------------------- values

@pytest.mark.parametrize("overrides, pattern", [
    (["active.rounds=-1"], r"active\.rounds"),
    (["active.budget=0"], r"active\.budget"),
    (["active.initial=0"], r"active\.initial"),
    (["active.rounds=100"], r"data\.pool_size"),  # 20 + 100 * 10 > 400
    (["data.pool_size=39"], r"data\.pool_size"),  # 20 + 2 * 10 = 40 > 39
    (["active.subset=5"], r"active\.subset"),  # subset < budget
    (["train.ema=1.0"], r"train\.ema"),
    (["train.ema=1.5"], r"train\.ema"),
    (["train.ema=-0.1"], r"train\.ema"),
    (["train.steps=0"], r"train\.steps"),
    (["train.lr=0"], r"train\.lr"),
    (["train.momentum=1"], r"train\.momentum"),
    (["train.schedule=cosin"], r"train\.schedule.*did you mean 'cosine'"),
    (["data.channels=2"], r"data\.channels"),
    (["train.backbone_lr_scale=-1"], r"train\.backbone_lr_scale"),
    (["train.method=fixmatch", "train.fixmatch.threshold=1.5"], r"train\.fixmatch\.threshold"),
    (["train.method=fixmatch", "train.fixmatch.mu=0"], r"train\.fixmatch\.mu"),
    (["train.method=fixmatch", "train.fixmatch.lambda_u=-1"], r"train\.fixmatch\.lambda_u"),
    (["train.method=fixmatch", "train.fixmatch.threshold_mode=adaptve"],
     r"train\.fixmatch\.threshold_mode: 'adaptve' is not one of fixed, adaptive \(did you mean 'adaptive'"),
    (["train.method=fixmatch", "train.fixmatch.adaptive_momentum=1"], r"train\.fixmatch\.adaptive_momentum"),
    (["train.method=consistency", "train.consistency.teacher_decay=1"], r"train\.consistency\.teacher_decay"),
    (["train.method=consistency", "train.consistency.rampup=2"], r"train\.consistency\.rampup"),
    (["train.method=tod", "train.tod.ema_decay=-0.5"], r"train\.tod\.ema_decay"),
    (["train.method=tod", "train.tod.weight=-1"], r"train\.tod\.weight"),
    (["train.method=contrastive", "train.contrastive.temperature=0"], r"train\.contrastive\.temperature"),
    (["train.method=contrastive", "train.contrastive.proj_dim=0"], r"train\.contrastive\.proj_dim"),
    (["train.method=fixmatch", "train.fixmatch.tau=0.9"], r"train\.fixmatch\.tau"),  # unknown key
])
def test_impossible_values_are_config_errors(write_recipe, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_recipe(write_recipe(), overrides)


def test_the_largest_possible_budget_is_accepted(write_recipe):
    cfg = load_recipe(write_recipe(), ["data.pool_size=40", "active.subset=null"])  # 20 + 2 * 10 == 40
    assert cfg.data.pool_size == 40
    cfg = load_recipe(write_recipe(), ["active.rounds=0", "active.subset=10"])  # subset == budget
    assert cfg.active.rounds == 0


def test_a_semi_supervised_objective_needs_unlabeled_images_in_the_last_round(write_recipe):
    from ssal.recipe import validate_pool

    supervised = load_recipe(write_recipe(), ["data.pool_size=40", "active.subset=null"])
    validate_pool(supervised, 40)  # every image labeled by the end: fine for supervised training
    semi = load_recipe(write_recipe(), ["data.pool_size=40", "active.subset=null", "train.method=fixmatch"])
    with pytest.raises(ConfigError, match="train.method=fixmatch trains on unlabeled images"):
        validate_pool(semi, 40)
    validate_pool(semi, 41)


def test_an_initial_strategy_that_reads_ground_truth_is_refused_when_people_answer(write_recipe):
    human = ["active.oracle=human"]
    with pytest.raises(ConfigError, match=r"^active\.initial_strategy=class_balanced reads the ground-truth labels, "
                                          r"which people have not given yet; with active\.oracle=human use ") as e:
        load_recipe(write_recipe(), [*human, "active.initial_strategy=class_balanced"])
    usable = str(e.value).rpartition(" use ")[2]
    assert "random" in usable and "typiclust" in usable and "class_balanced" not in usable
    for name in usable.replace(" or ", ", ").split(", "):
        assert load_recipe(write_recipe(), [*human, f"active.initial_strategy={name}"]).active.oracle == "human"
    load_recipe(write_recipe(), ["active.initial_strategy=class_balanced"])  # a simulated oracle has the truth


def test_the_refusal_follows_the_initial_strategys_declaration_not_its_name(write_recipe, monkeypatch):
    monkeypatch.setattr(INITIAL_STRATEGIES.get("random"), "needs_truth", True, raising=False)
    with pytest.raises(ConfigError, match=r"active\.initial_strategy=random reads the ground-truth labels"):
        load_recipe(write_recipe(), ["active.oracle=human", "active.initial_strategy=random"])


# ----------------------------------------------------------------------------- files

def test_malformed_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 0\ndata:\n  dataset: [digits\n  pool_size: 10\n")
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        load_recipe(path)
    assert "line" in str(e.value) and "\n" not in str(e.value)


def test_recipe_that_is_not_a_mapping_is_a_config_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(path)


def test_missing_recipe_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_a_directory_is_not_a_recipe(tmp_path):
    with pytest.raises(ConfigError):
        load_recipe(tmp_path)


# ----------------------------------------------------------------------------- defaults

def test_name_defaults_to_the_stem_and_output_dir_to_runs_name(tmp_path, tiny_recipe):
    data = tiny_recipe(tmp_path / "unused")
    del data["output_dir"]
    path = _dump(tmp_path / "my_experiment.yaml", data)
    cfg = load_recipe(path)
    assert cfg.name == "my_experiment"
    assert Path(cfg.output_dir) == Path("runs") / "my_experiment"

    cfg = load_recipe(path, ["name=other"])
    assert cfg.name == "other" and Path(cfg.output_dir) == Path("runs") / "other"

    cfg = load_recipe(path, ["output_dir=/tmp/somewhere"])
    assert cfg.name == "my_experiment" and cfg.output_dir == "/tmp/somewhere"


def test_explicit_name_and_output_dir_are_kept(tmp_path, tiny_recipe):
    path = _dump(tmp_path / "stem.yaml", {**tiny_recipe(tmp_path / "out"), "name": "given"})
    cfg = load_recipe(path)
    assert cfg.name == "given"
    assert cfg.output_dir == str(tmp_path / "out")


def test_from_dict_defaults():
    cfg = from_dict({"data": {"dataset": "digits"}})
    assert cfg.name == "run" and Path(cfg.output_dir) == Path("runs") / "run"
    with pytest.raises(ConfigError, match="entropy"):
        from_dict({"active": {"strategy": "entropyy"}})


def test_resolved_recipe_is_read_only(write_recipe):
    cfg = load_recipe(write_recipe())
    with pytest.raises(ReadonlyConfigError):
        cfg.seed = 5
    with pytest.raises(ReadonlyConfigError):
        cfg.active.budget = 1
    assert cfg.seed == 0 and cfg.active.budget == 10


# ----------------------------------------------------------------------------- shipped recipes

def _needs_root(path: Path) -> bool:
    """Whether the recipe (after the recipes it extends) leaves data.root as ``???``."""
    from ssal.recipe.load import _chain

    roots = [(d.get("data") or {}).get("root") for _, d in _chain(path)]
    roots = [r for r in roots if r is not None]
    return bool(roots) and roots[-1] == "???"


def test_shipped_recipes_are_found():
    names = {p.relative_to(REPO / "recipes").as_posix() for p in SHIPPED}
    assert {"quickstart.yaml", "fashion_mnist/base.yaml", "cifar10/base.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_shipped_recipes_load_and_validate(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `extends:` must not depend on the working directory
    overrides = ["data.root=/data/somewhere"] if _needs_root(path) else []
    if path.name == "human.yaml":  # a folder of one's own images: the classes are the user's too
        overrides.append("data.classes=[cat,dog]")
    cfg = load_recipe(path, overrides)
    assert cfg.name  # a name, from the recipe or its stem
    assert cfg.output_dir
    assert cfg.data.dataset in DATASETS
    assert cfg.train.method in OBJECTIVES
    assert cfg.active.strategy in STRATEGIES
    assert OmegaConf.missing_keys(cfg) == set()


def test_cifar10_base_needs_data_root():
    path = REPO / "recipes" / "cifar10" / "base.yaml"
    with pytest.raises(ConfigError, match=r"data\.root"):
        load_recipe(path)
    assert load_recipe(path, ["data.root=/data/cifar"]).data.root == "/data/cifar"


def test_required_value_can_be_demanded_by_an_override(write_recipe):
    with pytest.raises(ConfigError, match=r"data\.root"):
        load_recipe(write_recipe(), ["data.root=???"])
