"""The names in a run directory and in a comparison folder, and the paths of a round's files: the one
place that knows where a file lies. The store, the readers and the label commands ask it, so a file's
name is written once; nothing here reads or writes a file's content.

::

    run.json                  identity: the resolved recipe and fingerprints of it and of the pool (sealed)
    recipe.yaml               the resolved recipe, for people; checked against run.json on --resume
    metrics.jsonl             one line per committed round; rewriting it with a new line commits the round
    pool.json                 {"n", "labeled": [[index, label, round], ...], "checksum"}
    rounds/initial/selected.json, rounds/rXX/selected.json     what was bought, for the pool's rebuild
    rounds/*/queries.csv, queries.png, answers.json            with a human oracle: the questions for
                              people, and their answers (``ssal label import``; sealed)
    checkpoints/round_XX.pt   the last two rounds' models (checksummed)
    curve.csv, curve.png, pretrain.jsonl
    .lock                     held (flock) by the process that runs the directory (or stores answers);
                              says who that is; removed when released
    cell.json                 a comparison cell's labels (sealed)

A comparison folder: compare.json, recipes/<cell>.yaml, cells/<cell>/ (a run each), logs/, its report.
"""

from __future__ import annotations

from pathlib import Path

from ssal import files

FORMAT = 1  # of run.json and the checkpoints: a reader refuses another
LOCK, IDENTITY, RECIPE, METRICS, POOL = ".lock", "run.json", "recipe.yaml", "metrics.jsonl", "pool.json"
ANSWERS_LOCK = ".answers.lock"  # people's answers are stored under it, beside a run that holds LOCK
LOCKS = (LOCK, ANSWERS_LOCK)
CELL = "cell.json"  # a comparison cell's labels (method, strategy, seed), written by ``ssal compare``
COMPARISON = "compare.json"  # marks the output folder of ``ssal compare``
CELLS = "cells"  # a comparison's runs, one folder per cell
ROUNDS, CHECKPOINTS = "rounds", "checkpoints"
CURVE_CSV, CURVE_PNG, PRETRAIN_LOG = "curve.csv", "curve.png", "pretrain.jsonl"
PROGRESS = "progress.json"  # what a running human run is doing (for the labeling page); gone when it stops
SELECTED, ANSWERS, QUERIES_CSV, QUERIES_PNG, TASKS = (
    "selected.json", "answers.json", "queries.csv", "queries.png", "tasks.json")
AHEAD = "ahead.json"  # answers to the images chosen ahead (active.lookahead), given while the next round trains
RUN_KIND, COMPARISON_KIND = "run directory", "comparison folder"


def round_name(r: int) -> str:
    """The folder name of acquisition ``r`` under ``rounds/``: ``rXX``, or ``initial`` for round -1."""
    return "initial" if r < 0 else f"r{r:02d}"


def round_folder(r: int) -> str:
    """``rounds/rXX`` (``rounds/initial``) as people read it in messages, relative to the run."""
    return f"{ROUNDS}/{round_name(r)}"


def round_dir(run: Path, r: int) -> Path:
    return run / ROUNDS / round_name(r)


def selected_path(run: Path, r: int) -> Path:
    return round_dir(run, r) / SELECTED


def answers_path(run: Path, r: int) -> Path:
    return round_dir(run, r) / ANSWERS


def ahead_path(run: Path, r: int) -> Path:
    return round_dir(run, r) / AHEAD


def queries_csv(run: Path, r: int) -> Path:
    """The questions of acquisition ``r`` for people (a person may fill in its label column)."""
    return round_dir(run, r) / QUERIES_CSV


def queries_png(run: Path, r: int) -> Path:
    """The contact sheet of acquisition ``r``'s queries."""
    return round_dir(run, r) / QUERIES_PNG


def tasks_json(run: Path, r: int) -> Path:
    """Where ``ssal label export`` puts acquisition ``r``'s Label Studio tasks by default."""
    return round_dir(run, r) / TASKS


def checkpoint_path(run: Path, r: int) -> Path:
    return run / CHECKPOINTS / f"round_{r:02d}.pt"


def folder_kind(path: Path) -> str:
    """``absent``, ``file``, ``empty`` (nothing but a lock file and stale temporary files), ``run``
    (has run.json), ``legacy`` (a run of an ssal without run.json) or ``other``."""
    if not path.exists():
        return "absent"
    if not path.is_dir():
        return "file"
    names = {p.name for p in path.iterdir()}
    if IDENTITY in names:
        return "run"
    if {RECIPE, METRICS, POOL} <= names:
        return "legacy"
    if all(n in LOCKS or n.endswith(files.TMP_SUFFIX) for n in names):
        return "empty"
    return "other"


def store_kind(folder: Path) -> str | None:
    """Whether ``folder`` is a run directory (also one of an ssal without run.json) or the folder of a
    comparison (also one made before compare.json marked it), or neither (None)."""
    if (folder / IDENTITY).is_file() or all((folder / n).is_file() for n in (RECIPE, METRICS, POOL)):
        return RUN_KIND
    if (folder / COMPARISON).is_file() or all((folder / n).is_dir() for n in (CELLS, "recipes", "logs")):
        return COMPARISON_KIND
    return None


def enclosing_store(path: Path) -> tuple[str, Path] | None:
    """The innermost run directory or comparison folder that holds the resolved ``path`` (or is it):
    (kind, folder), or None."""
    for folder in (path, *path.parents):
        kind = store_kind(folder)
        if kind is not None:
            return kind, folder
    return None
