"""The recipe a run continues with on ``--resume``: its ``recipe.yaml`` (plus overrides), checked against
the recipe the run was made with, so that nothing changes what its stored labels mean."""

from __future__ import annotations

import json
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssal.errors import ConfigError
from ssal.recipe.load import from_dict, load_recipe, parse_overrides
from ssal.recipe.schema import schema
from ssal.run.store import IDENTITY, RECIPE, SAFE_ON_RESUME, RunDir, differences


def resume_recipe(run_dir: str | os.PathLike | RunDir, overrides: list[str] = ()) -> DictConfig:
    """The recipe to continue with: recipe.yaml (+ ``overrides``), checked against the recipe the run
    was made with. A change outside :data:`SAFE_ON_RESUME` (or fewer rounds) is refused."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    recipe_file = rd.path / RECIPE
    stored = rd.check_resumable()["recipe"]
    # an override of a key that must not change is refused for that reason, before the recipe it would
    # make is checked (active.oracle=human on a run made for people is not an initial_strategy problem)
    given = OmegaConf.to_container(parse_overrides(list(overrides))) if overrides else {}
    for key, before, after in differences(stored, given):
        if after is not None and key not in SAFE_ON_RESUME and _has(stored, key):  # (a typo: load says so)
            _refuse_change(rd, "the overrides", key, before, after)
    where = f"'{recipe_file}'"
    if recipe_file.is_file():
        try:  # the file alone first: its errors are the file's, an override's are the override's
            load_recipe(recipe_file, [f"output_dir={json.dumps(str(rd.path))}"])
        except ConfigError as e:
            raise ConfigError(f"{recipe_file} cannot be used ({e}); undo the edit, or delete it and "
                              f"--resume rewrites it from {IDENTITY}") from None
        cfg = load_recipe(recipe_file, [*overrides, f"output_dir={json.dumps(str(rd.path))}"])
    else:
        cfg = from_dict({**stored, "output_dir": str(rd.path)}, list(overrides))
        where = f"the {IDENTITY} recipe"
    if overrides:
        where += " with the overrides"
    now = OmegaConf.to_container(cfg)
    for key, before, after in recipe_changes(stored, now):
        if key == "active.rounds" and isinstance(after, int) and after >= before:
            continue
        if key in SAFE_ON_RESUME and key != "active.rounds":
            continue
        _refuse_change(rd, where, key, before, after)
    return cfg


def recipe_changes(stored: dict, now: dict) -> list[tuple[str, Any, Any]]:
    """(key, stored value, value now) for every key that differs between a run's recorded recipe and a
    recipe now, except a key newer than the run's ssal at its default: what that ssal did."""
    defaults = OmegaConf.to_container(OmegaConf.structured(schema()))
    return [(key, before, after) for key, before, after in differences(stored, now)
            if _has(stored, key) or not _has(defaults, key) or after != _get(defaults, key)]


def _refuse_change(rd: RunDir, where: str, key: str, before: Any, after: Any) -> None:
    how = ("active.rounds may only grow on --resume" if key == "active.rounds" else
           f"only {', '.join(SAFE_ON_RESUME)} may change on --resume")
    raise ConfigError(f"{where} changes {key} from {before!r} to {after!r}, but {rd.path} was made with "
                      f"{before!r} and its stored labels and rounds depend on it ({how}); undo the change, "
                      "or start a new run with another output_dir")


def _get(tree: dict, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def _has(tree: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True
