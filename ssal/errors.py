"""Errors a user can cause. The CLI prints them as one line ``ssal: error: ...`` and exits 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SsalError(Exception):
    """Base class of the errors that are the user's to fix (bad recipe, missing data, ...)."""


class ConfigError(SsalError):
    """A recipe, an override or a name on the command line is wrong."""


class DataError(SsalError):
    """A data set or label file is missing or malformed."""


class Interrupted(SsalError):
    """Ctrl-C or SIGTERM during a run: what is committed stays; the message says how to continue."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``name``, or None when nothing is reasonably close."""
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    match = closest(name, choices)
    return f" (did you mean '{match}'?)" if match else ""


def one_line(text: str) -> str:
    """``text`` as it may appear in a one-line error: line breaks and other control characters escaped."""
    return text if text.isprintable() else repr(text)[1:-1]
