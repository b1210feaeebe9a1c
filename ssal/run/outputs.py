"""Where a command may put what it makes for people: ``--out`` files and folders, a run's
``output_dir`` and the cache.

One rule for every command: nothing is written inside a run directory or a comparison folder
except through that run's own :class:`~ssal.run.store.RunDir` (a predictions file written over
``pool.json`` would lose the run's labels), nor inside a data folder (a report's PNGs written into
the image folder would join the pool), and a file that exists and that ssal did not write is
replaced only with ``--force``. Paths are resolved first, so a link to a run's file is that file.
Every check reads only; a refusal is one :class:`~ssal.errors.ConfigError` line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ssal import files
from ssal.errors import ConfigError
from ssal.run.layout import COMPARISON_KIND, LOCKS, enclosing_store


@dataclass(frozen=True)
class Output:
    """A kind of file ssal writes for people: what it is, and how to recognise one it wrote."""

    what: str  # "a predictions CSV"
    is_ours: Callable[[Path], bool]


def starts_with(head: bytes) -> Callable[[Path], bool]:
    """A recogniser: the file begins with ``head`` (a CSV's header line, ...)."""

    def check(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                return f.read(len(head)) == head
        except OSError:
            return False

    return check


def resolved(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded and every link followed (also in a part that does not exist yet)."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def data_folders(recipe: dict) -> list[Path]:
    """The folders a recipe reads images from (data.root and data.test_root), resolved."""
    data = recipe.get("data") or {}
    return [resolved(p) for p in (data.get("root"), data.get("test_root")) if p]


def _inside(path: Path, folders: Iterable[Path]) -> Path | None:
    return next((f for f in folders if path == f or path.is_relative_to(f)), None)


def check_place(path: str | os.PathLike, what: str, data: Iterable[Path] = (), allow: Path | None = None,
                itself: bool = False) -> Path:
    """``path`` resolved, or a one-line error when it lies in a run directory, a comparison folder or one
    of the ``data`` folders. ``allow``: a store that may hold it (the comparison a cell runs in, the
    comparison whose own report this is); ``itself``: ``path`` may be a store (a run's own output_dir)."""
    real = resolved(path)
    store = enclosing_store(real.parent if itself else real)
    if store is not None and (allow is None or store[1] != resolved(allow)):
        kind, folder = store
        raise ConfigError(f"{what} '{path}' is inside the {kind} '{folder}', which only ssal's own commands on it "
                          "write (a file there could replace its labels): choose a path outside it")
    folder = _inside(real, data)
    if folder is not None:
        raise ConfigError(f"{what} '{path}' is inside the data folder '{folder}' (files written there could join "
                          "the pool): choose a path outside it")
    return real


def check_file(path: str | os.PathLike, kind: Output, force: bool, data: Iterable[Path] = (),
               what: str = "--out") -> Path:
    """Where to write the file ``path`` of ``kind`` (``--out FILE``): not in a store or a data folder
    (:func:`check_place`), in a folder that exists and can be written, and not over an existing file
    that ssal did not write (unless ``force``). Returns the path as given (a link is replaced, not
    followed, by the atomic write)."""
    path = Path(os.path.expanduser(str(path)))
    real = check_place(path, what, data)
    if path.is_dir() or real.is_dir():
        raise ConfigError(f"{what} '{path}' is a folder; give the name of a file to write ({kind.what})")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} '{path}': the folder '{parent}' does not exist; create it first, or choose "
                          f"another {what}")
    problem = files.writable_problem(parent)
    if problem:
        raise ConfigError(f"{what} '{path}' cannot be written: {problem}")
    if real.exists() and not force and not kind.is_ours(real):
        raise ConfigError(f"{what} '{path}' exists and is not {kind.what} written by ssal; choose another {what}, "
                          "or pass --force to replace it")
    return path


def check_folder(path: str | os.PathLike, is_ours: Callable[[Path], bool], what: str, force: bool | None = None,
                 data: Iterable[Path] = (), allow: Path | None = None, hint: str = "give a writable folder") -> Path:
    """Where to write the folder ``path`` (a report, a comparison): not in a store or a data folder
    (:func:`check_place`, ``allow`` excepted), writable, and absent, empty or ``is_ours`` (a folder ssal
    made for this); ``force`` (None: the command has no --force) lets it be a folder of other files."""
    path = Path(os.path.expanduser(str(path)))
    check_place(path, what, data, allow)
    problem = files.writable_problem(path)
    if problem:
        raise ConfigError(f"{what} '{path}' cannot be used: {problem}; {hint}")
    if path.is_dir() and not force and not is_ours(path):
        others = sorted(p.name for p in path.iterdir() if p.name not in LOCKS)  # a lock: its holder is reported later
        if others:
            raise ConfigError(f"{what} '{path}' holds other files (e.g. '{others[0]}'); choose a new or empty folder"
                              + (", or pass --force to write there anyway" if force is not None else f" ({hint})"))
    return path


def check_run_place(output_dir: str | os.PathLike, data: Iterable[Path]) -> None:
    """A run's ``output_dir`` lies outside other runs, comparisons (a run may be a cell of a comparison:
    ``<comparison>/cells/<name>``) and the run's data folders. (Its cache_dir: ``check_cache_dir``.)"""
    real = resolved(output_dir)
    store = enclosing_store(real.parent)
    cell_of = store[1] if store is not None and store[0] == COMPARISON_KIND and real.parent == store[1] / "cells" \
        else None
    check_place(output_dir, "output_dir", data, allow=cell_of, itself=True)
