"""The checks a method's ``Config`` runs on its own options (``Config.check``), each a one-line
:class:`ConfigError` that names the recipe key and what it must be.

A method's ``Config`` may define ``check(self, key: str, recipe) -> None``: ``key`` is its
section (``train.fixmatch``), ``recipe`` the whole validated recipe (for cross-checks, e.g. with
the objective). :func:`ssal.recipe.validate` calls it for the chosen pretrainer, objective and
strategy, and for each section of the recipe (``DataConfig.check`` with ``key`` = ``data``, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from omegaconf import OmegaConf

from ssal.errors import ConfigError, did_you_mean


def require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def at_least(key: str, value: Any, low: float, note: str = "", *, optional: bool = False) -> None:
    """``value >= low``; with ``optional``, null passes too (the key's default: say so in ``note``)."""
    if optional and value is None:
        return
    require(value >= low, f"{key} must be >= {low}{note}, got {value}")


def positive(key: str, value: Any, note: str = "") -> None:
    require(value > 0, f"{key} must be > 0{note}, got {value}")


def within(key: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False,
           note: str = "") -> None:
    """``low <= value <= high`` (``low < value`` with ``low_open``, ``< high`` with ``high_open``)."""
    ok = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    require(ok, f"{key} must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}{note}, "
                f"got {value}")


def fraction(key: str, value: Any, note: str = "") -> None:
    """A rate, decay or probability in [0, 1): 1 would keep (or drop) everything forever."""
    within(key, value, 0, 1, high_open=True, note=note)


def seed(key: str, value: Any) -> None:
    """A seed: null (where it means the run's) or an integer in [0, 2**63)."""
    require(value is None or 0 <= value < 2**63, f"{key} must be in [0, 2**63), got {value}")


def one_of(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    require(value in choices, f"{key}: '{value}' is not one of {', '.join(map(str, choices))}"
                              f"{did_you_mean(value, map(str, choices))}")


def check_config(key: str, config: type, options: Any, recipe: Any) -> None:
    """``config.check`` on ``options`` (the recipe's ``key``, a DictConfig of ``config`` or a ``config``)."""
    if options is None or not hasattr(config, "check"):
        return
    if not isinstance(options, config):
        options = OmegaConf.to_object(options)
    options.check(key, recipe)


def check_options(section: str, cls: Any, options: Any, recipe: Any) -> None:
    """``cls.Config.check`` on ``options`` (the recipe's ``section``, a DictConfig or a Config)."""
    config = getattr(cls, "Config", None)
    if config is not None:
        check_config(section, config, options, recipe)
