"""The store's checks before a run directory is used: whether a folder may become a new run or be
resumed, and whether the run's data and images are still the ones its labels were given for. They read
only; a refusal is one line that says how to fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ssal import files
from ssal.errors import ConfigError, DataError
from ssal.files import Damaged
from ssal.run.layout import IDENTITY, LOCKS, SELECTED, round_folder
from ssal.run.lock import RunInUse

if TYPE_CHECKING:
    from ssal.run.store import RunDir


def check_new(rd: RunDir, force: bool) -> None:
    """Raise a one-line error unless a new run may be written in ``rd``."""
    out = rd.path
    problem = files.writable_problem(out)
    if problem:
        raise ConfigError(f"output_dir '{out}' cannot be used: {problem}; choose another output_dir=...")
    kind = rd.kind()
    if kind in ("absent", "empty"):
        return
    if kind == "other":
        example = next(iter(sorted(p.name for p in out.iterdir() if p.name not in LOCKS)))
        raise ConfigError(f"output_dir '{out}' holds other files (e.g. '{example}') and is not an ssal run; "
                          "ssal never deletes such a folder, --force included: choose another output_dir=...")
    if not force:
        raise ConfigError(f"output_dir '{out}' already holds a run; continue it with 'ssal run --resume {out}', "
                          "choose another output_dir=..., or pass --force to replace it")
    cwd = Path.cwd().resolve()
    if cwd == out.resolve() or out.resolve() in cwd.parents:
        raise ConfigError(f"output_dir '{out}' contains the current folder; --force would delete it: "
                          "run from elsewhere or choose another output_dir=...")
    who = rd.holder()
    if who:
        raise RunInUse(f"{out} is in use by another ssal process ({who}); --force does not replace a run "
                       "in progress")


def check_resumable(rd: RunDir) -> dict:
    """The run's identity (run.json), or a one-line error when ``rd`` cannot be resumed."""
    kind = rd.kind()
    if kind == "empty":
        raise ConfigError(f"'{rd.path}' holds no run yet (empty, or interrupted while it was being made); "
                          f"start it with 'ssal run RECIPE output_dir={rd.path}'")
    if kind in ("absent", "file", "other"):
        what = {"absent": "does not exist", "file": "is a file"}.get(kind, "is not a run directory (no run.json)")
        raise ConfigError(f"'{rd.path}' {what}; give the output_dir of a run to --resume")
    if kind == "legacy":
        raise ConfigError(f"'{rd.path}' has no run.json (deleted, or the run was made by an older ssal), so its "
                          "labels cannot be verified against its recipe and data; restore run.json from a backup, "
                          "or start the run again with 'ssal run RECIPE --force' (which deletes it)")
    identity = rd.identity()
    who = rd.holder()
    if who:
        raise RunInUse(f"{rd.path} is in use by another ssal process ({who}); wait for it to finish")
    return identity


def check_pool(rd: RunDir, fingerprint: dict) -> None:
    """Refuse to resume on data other than the run's (the stored indices would point at other images)."""
    stored = rd.identity()["pool"]
    if stored == fingerprint:
        return
    if stored.get("n") != fingerprint.get("n"):
        what = f"the pool has {fingerprint.get('n')} images, the run's had {stored.get('n')}"
    elif stored.get("classes") != fingerprint.get("classes"):
        what = "the class names differ"
    else:
        what = "the images or labels differ"
    raise DataError(f"the data of {rd.path} changed ({what}); its stored labels would point at other images: "
                    "point data.root at the data the run was made with")


def check_contents(rd: RunDir) -> None:
    """Every image the run holds a label or a query for is still the image it was (run.json's seed
    labels, every selected.json): one :class:`DataError` line naming the first that changed."""
    if rd.contents is None:
        return
    seed = rd.identity().get("seed_digests")
    if seed:
        indices = [i for i, _ in seed]
        check_unchanged(indices, [d for _, d in seed], rd.contents(indices), rd.names, IDENTITY)
    rows = rd.committed()
    for r in range(-1, (rows[-1]["round"] if rows else -1) + 1):
        try:
            record = rd.selection_record(r)
        except Damaged:
            continue  # a missing or damaged record is --resume's to repair, not a changed image
        if isinstance(record.get("digests"), list) and len(record["digests"]) == len(record["indices"]):
            check_unchanged(record["indices"], record["digests"], rd.contents(record["indices"]), rd.names,
                            f"{round_folder(r)}/{SELECTED}")


def check_unchanged(indices: list[int], recorded: list[str], now: list[str], names, where: str) -> None:
    """A one-line :class:`DataError` naming the first of ``indices`` whose file no longer holds what
    ``recorded`` says it held when ``where`` recorded it: a label is for the image a person saw."""
    changed = [k for k, (a, b) in enumerate(zip(now, recorded, strict=True)) if a != b]
    if changed:
        i = indices[changed[0]]
        name = f"'{names[i]}'" if names is not None else f"index {i}"
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        what = "is missing or unreadable" if now[changed[0]].startswith("unreadable") else "has other content"
        raise DataError(f"the image {name}{more} {what} since {where} recorded it; the run's label or query is for the "
                        "image that was there: put the original file back, or start a new run")
