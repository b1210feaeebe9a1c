"""Reading recipes: YAML files with ``extends:``, ``key=value`` overrides, merged over the schema and
checked (:mod:`ssal.recipe.schema`) into a read-only ``DictConfig``."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from ssal.errors import ConfigError, closest, did_you_mean
from ssal.files import read_yaml
from ssal.recipe.schema import schema, validate

# ----------------------------------------------------------------------------- loading

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


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
