"""The checks a method's ``Config`` runs on its own options (``Config.check``), each a one-line
:class:`ConfigError` that names the recipe key and what it must be.

A method's ``Config`` may define ``check(self, key: str, recipe) -> None``: ``key`` is its
section (``train.fixmatch``), ``recipe`` the whole validated recipe (for cross-checks, e.g. with
the objective). :func:`ssal.recipe.validate` calls it for the chosen pretrainer, objective and
strategy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ssal.errors import ConfigError, did_you_mean


def require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def at_least(key: str, value: Any, low: float, note: str = "") -> None:
    require(value >= low, f"{key} must be >= {low}{note}, got {value}")


def positive(key: str, value: Any, note: str = "") -> None:
    require(value > 0, f"{key} must be > 0{note}, got {value}")


def within(key: str, value: Any, low: float, high: float, *, high_open: bool = False, note: str = "") -> None:
    """``low <= value <= high`` (``< high`` with ``high_open``)."""
    ok = low <= value < high if high_open else low <= value <= high
    require(ok, f"{key} must be in [{low}, {high}{')' if high_open else ']'}{note}, got {value}")


def one_of(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    require(value in choices, f"{key}: '{value}' is not one of {', '.join(map(str, choices))}"
                              f"{did_you_mean(value, map(str, choices))}")


def check_options(section: str, cls: Any, options: Any, recipe: Any) -> None:
    """``cls.Config.check`` on ``options`` (the recipe's ``section``, a DictConfig or a Config)."""
    config = getattr(cls, "Config", None)
    if config is None or not hasattr(config, "check") or options is None:
        return
    if not isinstance(options, config):
        from omegaconf import OmegaConf

        options = OmegaConf.to_object(options)
    options.check(section, recipe)
