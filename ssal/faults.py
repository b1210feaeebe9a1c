"""Failpoints: named places in the code where a test makes this process die or an I/O call fail.

Crash safety is only believable when it is tested at exact points, not after a sleep. A test sets
``SSAL_FAILPOINTS`` to comma-separated ``name=action`` pairs, e.g.
``SSAL_FAILPOINTS="train.step=kill@30,write:pool.json=enospc"``:

- ``name`` is a failpoint's name or a glob of names (``write:round_*.pt``);
- ``action`` is ``kill`` (SIGKILL to this process: a crash at exactly that point, no cleanup
  runs), ``sigint`` / ``sigterm`` (this process sends itself that signal, as a person's Ctrl-C
  or a scheduler's stop, at exactly that point; the handlers run as for any signal), ``crash``
  (raise :class:`SimulatedCrash`, which no handler of ssal catches: for tests that run in the
  test process) or an ``OSError`` to raise: ``enospc`` (disk full), ``eacces`` (permission
  denied), ``erofs`` (read-only file system), ``eio`` (I/O error);
- ``@n`` acts on the n-th hit of that name (default: the first), ``@n+`` on every hit from the n-th;
- ``#r`` (after the rest) acts only in the process of rank r under torchrun / accelerate launch
  (``train.step=kill@5#1``: process 1 dies before its 5th optimizer step; the others see it die).

The names in the code: ``pretrain.step`` and ``train.step`` (before each optimizer step),
``evaluate``, ``signals`` (after the signal pass), ``select`` (after a strategy chose),
``round.end`` (after a round is committed), and ``write:<file name>`` (every atomic write, after
the temporary file is on disk and before it replaces the target). Without the variable (always,
outside tests) a failpoint is a call of an empty function.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import signal
from collections.abc import Iterator

from ssal.errors import SsalError

ENV = "SSAL_FAILPOINTS"
_SIGNALS = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM}
_ERRORS = {"enospc": errno.ENOSPC, "eacces": errno.EACCES, "erofs": errno.EROFS, "eio": errno.EIO}


class SimulatedCrash(BaseException):  # noqa: N818 - a crash, not an error: nothing should catch it
    """The ``crash`` action: the process "dies" here, as far as ssal's own code can tell."""


def _parse(spec: str) -> list[tuple[str, str, int, bool]]:
    rules = []
    rank = os.environ.get("RANK", "0")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, only = action.partition("#")
        action, _, at = action.partition("@")
        if action not in ("kill", "crash", *_SIGNALS, *_ERRORS) or not name or (only and not only.isdigit()):
            actions = "|".join(("kill", "crash", *_SIGNALS, *_ERRORS))
            raise ValueError(f"{ENV}: bad failpoint '{item}' (want name={actions}[@n][#rank])")
        if only and only != rank:
            continue  # another process's failpoint
        every = at.endswith("+")
        rules.append((name, action, int(at.rstrip("+") or 1), every))
    return rules


def _from_env() -> tuple[list, str | None]:
    try:
        return _parse(os.environ.get(ENV, "")), None
    except ValueError as e:  # reported at the first failpoint, as a one-line user error
        return [("*", "invalid", 1, False)], str(e)


_RULES, _INVALID = _from_env()
_HITS: dict[str, int] = {}


@contextlib.contextmanager
def active(spec: str) -> Iterator[None]:
    """Failpoints of ``spec`` (the syntax of ``SSAL_FAILPOINTS``) in this process, for a ``with`` block."""
    global _RULES
    saved = _RULES, dict(_HITS)
    _RULES = _parse(spec)
    _HITS.clear()
    try:
        yield
    finally:
        _RULES = saved[0]
        _HITS.clear()
        _HITS.update(saved[1])


def check_env() -> None:
    """A one-line user error when ``SSAL_FAILPOINTS`` is malformed (the command line calls it first)."""
    if _INVALID and _RULES and _RULES[0][1] == "invalid":

        raise SsalError(f"{_INVALID}; unset {ENV} (it is for tests)")


def failpoint(name: str) -> None:
    """Do what ``SSAL_FAILPOINTS`` says for ``name`` (nothing when it does not name it)."""
    if not _RULES:
        return
    check_env()
    for pattern, action, at, every in _RULES:
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        _HITS[pattern] = hit = _HITS.get(pattern, 0) + 1
        if hit == at or (every and hit > at):
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if action == "crash":
                raise SimulatedCrash(name)
            if action in _SIGNALS:  # its handler runs right after this call returns
                os.kill(os.getpid(), _SIGNALS[action])
                continue
            code = _ERRORS[action]
            raise OSError(code, os.strerror(code))
