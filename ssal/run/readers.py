"""Reading a run directory's files, verified, without its lock: the committed rounds, the identity, the
records of the rounds, the checkpoints, and what ``ssal report`` and ``ssal compare`` read of a run (its
labels, its rounds, where its data were). Nothing here writes; a damaged file is :class:`Damaged` or a
one-line :class:`DataError` that says how to recover.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ssal import files
from ssal.data.pool import ActivePool
from ssal.errors import ConfigError, DataError, SsalError
from ssal.files import Damaged
from ssal.run import layout
from ssal.run.layout import CELL, CELLS, COMPARISON, FORMAT, IDENTITY, METRICS, POOL, RECIPE

# ----------------------------------------------------------------------------- the files of a run


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The committed rounds of a run directory, checked: line i is round i. A last line without its
    newline (cut off by a crash of an older version, or garbage appended) is not a committed round.
    Any other damaged line raises :class:`DataError` with one line that says how to recover."""
    path = Path(run_dir) / METRICS
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    lines = data.split(b"\n")[:-1]  # a last line without its newline was never committed
    rows: list[dict] = []
    for i, raw in enumerate(lines):
        problem = None
        try:
            row = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            row, problem = None, "is not a JSON line"
        if problem is None:
            problem = _row_problem(row, i)
        if problem:
            raise DataError(f"{path} line {i + 1} {problem}; the run directory is damaged: delete that line and "
                            "the ones after it, and 'ssal run --resume' runs those rounds again")
        rows.append(row)
    return rows


def _row_problem(row: Any, i: int) -> str | None:
    if not isinstance(row, dict):
        return "is not a JSON object"
    if row.get("round") != i or isinstance(row.get("round"), bool):
        return f"should be round {i}, found round {row.get('round')!r}"
    acc, n = row.get("test_acc"), row.get("n_labeled")
    if "test_acc" not in row and "pool_mean_conf" not in row:  # a run without a test set has the latter
        return "has neither test_acc nor pool_mean_conf"
    if "test_acc" in row and (not isinstance(acc, (int, float)) or isinstance(acc, bool) or not (0 <= acc <= 1)):
        return f"has no test_acc in [0, 1] (found {acc!r})"
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return f"has no n_labeled >= 1 (found {n!r})"
    return None


def read_identity(run_dir: Path) -> dict:
    """``run.json``: the recipe the run was made with and the fingerprints of it and of its pool."""
    path = run_dir / IDENTITY
    try:
        identity = files.read_sealed_json(path)
    except Damaged as d:
        raise DataError(f"{d.path} is {d.reason}; without it the run's labels cannot be verified: restore it "
                        "from a backup, or start a new run") from None
    if identity.get("format") != FORMAT or not isinstance(identity.get("recipe"), dict):
        raise DataError(f"{path} has format {identity.get('format')!r}, this ssal reads {FORMAT}; "
                        "use the ssal version that wrote it")
    return identity


def read_pool(run_dir: Path, pool_size: int) -> ActivePool:
    """pool.json verified (checksum, size, structure), or :class:`Damaged`."""
    path = run_dir / POOL
    body = files.read_sealed_json(path)
    if body.get("n") != pool_size:
        raise Damaged(path, f"for a pool of {body.get('n')!r} images, not {pool_size}")
    try:
        return ActivePool.from_state(body)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError, OverflowError) as e:
        raise Damaged(path, f"malformed ({e})") from None


def pool_as_committed(run_dir: Path) -> bool:
    """Whether pool.json holds exactly what the last committed round recorded."""
    rows = read_metrics(run_dir)
    want = rows[-1].get("pool") if rows else None
    if not isinstance(want, dict):
        return not rows
    try:
        body = files.read_sealed_json(run_dir / POOL)
        pool = ActivePool.from_state(body).head(want["labeled"])
    except (Damaged, ValueError, KeyError, TypeError, IndexError, RuntimeError):
        return False
    return files.json_digest(pool.state_dict()) == want.get("digest")


def read_selection_record(run_dir: Path, r: int) -> dict:
    """Acquisition ``r``'s ``selected.json``, checked, or :class:`Damaged`."""
    path = layout.selected_path(run_dir, r)
    data = files.read_json(path)
    if not isinstance(data, dict) or data.get("round") != r or not isinstance(data.get("indices"), list) \
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in data["indices"]):
        raise Damaged(path, "malformed")
    for key in ("paths", "suggestions", "confidences"):
        if key in data and (not isinstance(data[key], list) or len(data[key]) != len(data["indices"])):
            raise Damaged(path, "malformed")
    ahead, taken = data.get("ahead", []), data.get("from_ahead", 0)
    if not isinstance(ahead, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ahead) \
            or not isinstance(taken, int) or not 0 <= taken <= len(data["indices"]):
        raise Damaged(path, "malformed")
    for key in ("ahead_paths", "ahead_suggestions", "ahead_confidences", "ahead_digests"):
        if key in data and (not isinstance(data[key], list) or len(data[key]) != len(ahead)):
            raise Damaged(path, "malformed")
    ceal = data.get("ceal", [])  # CEAL's [image, the model's label] pairs for the next round's training
    if not isinstance(ceal, list) or not all(isinstance(p, list) and len(p) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in p) for p in ceal):
        raise Damaged(path, "malformed")
    return data


def read_answers(run_dir: Path, r: int) -> dict[int, int]:
    """The stored answers to acquisition ``r`` (index -> class, or -1: skipped); {} when none."""
    path = layout.answers_path(run_dir, r)
    if not path.exists():
        return {}
    try:
        body = files.read_sealed_json(path)
        rows = body["answers"]
        if body.get("round") != r or not all(isinstance(i, int) and isinstance(y, int) for i, y in rows):
            raise ValueError
        return {i: y for i, y in rows}
    except Damaged as d:
        reason = d.reason
    except (KeyError, TypeError, ValueError):
        reason = "malformed"
    raise DataError(f"{path} is {reason}; the labels it held are lost: delete it and import the label file "
                    "again with 'ssal label import'")


def read_checkpoint(run_dir: Path, r: int) -> dict[str, Any]:
    """Round ``r``'s checkpoint, verified, or :class:`Damaged`."""
    path = layout.checkpoint_path(run_dir, r)
    if not path.is_file():
        raise Damaged(path, "missing")
    try:
        with warnings.catch_warnings():  # garbage bytes can look like an odd pickle protocol to torch
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, a pickle error: all mean "damaged"
        raise Damaged(path, f"unreadable ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "checksum" not in ckpt:
        raise Damaged(path, "not an ssal checkpoint")
    body = {k: v for k, v in ckpt.items() if k != "checksum"}
    if files.tensor_checksum(body) != ckpt["checksum"] or body.get("round") != r:
        raise Damaged(path, "checksum mismatch")
    return body


def read_cell(run_dir: Path) -> dict | None:
    """The comparison's labels of this run (``cell.json``), verified; None when it has none. A damaged
    file is a one-line :class:`DataError`."""
    path = run_dir / CELL
    if not path.exists():
        return None
    try:
        labels = files.read_sealed_json(path)
    except Damaged as d:
        raise DataError(f"{d}; delete it (the labels then come from the run's recipe)") from None
    if not {"method", "strategy", "seed"} <= labels.keys():
        raise DataError(f"{path} lacks method, strategy and seed; delete it (the labels then come from "
                        "the run's recipe)")
    return labels


def measured(row: dict) -> str:
    """What a committed round measured, in words (the run's log line, the labeling page): test accuracy,
    the audit set's accuracy with its 95 % interval, or, with neither, the model's mean confidence,
    which is no accuracy."""
    parts = []
    if "test_acc" in row:
        parts.append(f"test acc {100 * row['test_acc']:.2f} %")
    if "audit_acc" in row:
        parts.append(f"audit acc {100 * row['audit_acc']:.1f} % (95 % interval {100 * row['audit_low']:.1f}-"
                     f"{100 * row['audit_high']:.1f}, {row['audit_n']} images)")
    elif row.get("audit_n") == 0:
        parts.append("no audit accuracy (every audit image was skipped)")
    if not parts and "pool_mean_conf" in row:
        parts.append(f"mean confidence on the pool {100 * row['pool_mean_conf']:.1f} % (no test set; active.audit "
                     "measures accuracy)")
    if "stable_kappa" in row:  # the stop signal (ssal.label.stopping)
        parts.append(f"predictions {100 * row['stable_agree']:.1f} % as the last round's (kappa "
                     f"{row['stable_kappa']:.3f}" + (f", mean of the last rounds {row['stable_kappa_mean']:.3f}"
                                                     if "stable_kappa_mean" in row else "") + ")")
    return ", ".join(parts)


def doing(progress: dict) -> str:
    """What a running run does, in words (the labeling page): ``round 0 train: 30 %, about 4 min left; the next
    batch in about 5 min`` (the whole wait, when the run has measured its speed)."""
    done, total, left = progress.get("done") or 0, progress.get("total") or 0, progress.get("remaining_s")
    share = f"{100 * done / total:.0f} %" if total else "starting"
    whole = progress.get("next_batch_s")
    return (f"{progress['stage']}: {share}" + ("" if left is None else f", about {duration(left)} left")
            + ("" if whole is None else f"; the next batch in about {duration(whole)}"))


def duration(seconds: float) -> str:
    """``45 s``, ``3 min``, ``1 h 20 min``: a time a person waits, rounded as people say it."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60} min"


# ----------------------------------------------------------------------------- a run, read

class RunFiles:
    """A run directory as it can be read without its lock: each file verified by the functions above.
    :class:`~ssal.run.store.RunDir` adds the lock and the writes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def kind(self) -> str:
        """``absent``, ``file``, ``empty``, ``run``, ``legacy`` or ``other`` (:func:`layout.folder_kind`)."""
        return layout.folder_kind(self.path)

    def identity(self) -> dict:
        return read_identity(self.path)

    def run_id(self) -> str:
        """A short id of this run (label files say which run they answer)."""
        identity = self.identity()
        return files.json_digest({"created": identity.get("created"), "recipe": identity.get("recipe_digest"),
                                  "pool": identity.get("pool")})[:12]

    def committed(self) -> list[dict]:
        return read_metrics(self.path)

    def load_pool(self, pool_size: int) -> ActivePool:
        """pool.json verified (checksum, size, structure), or :class:`Damaged`."""
        return read_pool(self.path, pool_size)

    def verified_pool(self) -> bool:
        """Whether pool.json holds exactly what the last committed round recorded."""
        return pool_as_committed(self.path)

    def round_dir(self, r: int) -> Path:
        """``rounds/rXX`` of acquisition ``r`` (round -1: the initial set, ``rounds/initial``)."""
        return layout.round_dir(self.path, r)

    def queries_csv(self, r: int) -> Path:
        """``rounds/rXX/queries.csv``: acquisition ``r``'s questions for people (a person may fill it in)."""
        return layout.queries_csv(self.path, r)

    def queries_png(self, r: int) -> Path:
        """``rounds/rXX/queries.png``: the contact sheet of acquisition ``r``'s queries."""
        return layout.queries_png(self.path, r)

    def tasks_json(self, r: int) -> Path:
        """``rounds/rXX/tasks.json``: where ``ssal label export`` puts Label Studio tasks by default."""
        return layout.tasks_json(self.path, r)

    def answers_path(self, r: int) -> Path:
        return layout.answers_path(self.path, r)

    def selection_record(self, r: int) -> dict:
        """Acquisition ``r``'s ``selected.json``, checked, or :class:`Damaged`."""
        return read_selection_record(self.path, r)

    def read_selection(self, r: int) -> list[int]:
        return self.selection_record(r)["indices"]

    def saved_selection(self, r: int) -> list[int] | None:
        """Acquisition ``r``'s indices as recorded, or None when there is no readable record."""
        try:
            return self.read_selection(r)
        except Damaged:
            return None

    def read_answers(self, r: int) -> dict[int, int]:
        """The stored answers to acquisition ``r`` (index -> class, or -1: skipped); {} when none."""
        return read_answers(self.path, r)

    def read_ahead(self, r: int) -> tuple[dict[int, int], bool]:
        """The answers given to acquisition ``r``'s images chosen ahead (``ahead.json``) and whether the next
        acquisition has taken them (closed: no answer is added after that); ({}, False) when none."""
        path = layout.ahead_path(self.path, r)
        if not path.exists():
            return {}, False
        try:
            body = files.read_sealed_json(path)
            rows, closed = body["answers"], body["closed"]
            if body.get("round") != r or not isinstance(closed, bool) or \
                    not all(isinstance(i, int) and isinstance(y, int) for i, y in rows):
                raise ValueError
            return {i: y for i, y in rows}, closed
        except Damaged as d:
            reason = d.reason
        except (KeyError, TypeError, ValueError):
            reason = "malformed"
        raise DataError(f"{path} is {reason}; the answers it held are lost: delete it (its images are chosen again)")

    def answers_of(self, r: int) -> dict[int, int]:
        """Every answer to acquisition ``r``: those given to it, over those its first ``from_ahead`` images got
        while they were chosen ahead (in acquisition r - 1's ``ahead.json``)."""
        stored = read_answers(self.path, r)
        try:
            record = read_selection_record(self.path, r)
        except Damaged:
            return stored
        k = record.get("from_ahead") or 0
        if not k:
            return stored
        ahead, _ = self.read_ahead(r - 1)
        return {**{i: ahead[i] for i in record["indices"][:k] if i in ahead}, **stored}

    def progress(self) -> dict | None:
        """What the running run is doing (``progress.json``: stage, done, total, elapsed_s, remaining_s),
        or None (no run is running, or the file is being replaced or damaged: it is advisory)."""
        try:
            body = json.loads((self.path / layout.PROGRESS).read_text())
            return body if isinstance(body, dict) and isinstance(body.get("stage"), str) else None
        except (OSError, ValueError):
            return None

    def load_checkpoint(self, r: int) -> dict[str, Any]:
        """Round ``r``'s checkpoint, verified, or :class:`Damaged`."""
        return read_checkpoint(self.path, r)

    def read_cell(self) -> dict | None:
        """The comparison's labels of this run (cell.json), verified; None when it has none."""
        return read_cell(self.path)


# ----------------------------------------------------------------------------- what a report reads of a run

def method_label(recipe: dict) -> str:
    """``train.method``, prefixed by the pretraining method when there is one (``simclr+fixmatch``)."""
    pre = (recipe.get("pretrain") or {}).get("method", "none")
    train = (recipe.get("train") or {}).get("method", "supervised")
    return train if pre in (None, "none") else f"{pre}+{train}"


def strategy_label(recipe: dict) -> str:
    """``active.strategy``, prefixed by the initial strategy when that is a strategy of its own
    (``typiclust`` for typiclust -> typiclust, ``typiclust>entropy`` for typiclust -> entropy)."""
    active = recipe.get("active") or {}
    strategy, initial = active.get("strategy", "random"), active.get("initial_strategy", "class_balanced")
    return strategy if initial in ("class_balanced", "random", strategy) else f"{initial}>{strategy}"


def run_labels(run_dir: Path) -> dict:
    """The comparison cell a run belongs to: ``method``, ``strategy`` (strings) and ``seed`` (an int), from
    its ``cell.json`` (written by ``ssal compare``), else from the recipe in its ``run.json`` (or
    ``recipe.yaml`` for a run of an ssal without run.json). A damaged file is a one-line :class:`DataError`."""
    if not (run_dir / METRICS).is_file():
        raise DataError(f"'{run_dir}' is not a run directory (no metrics.jsonl); give the output_dir of a run "
                        "or of 'ssal compare'")
    labels = read_cell(run_dir)
    if labels is None:
        labels = _recipe_labels(run_dir)
    try:
        seed = int(labels["seed"])
    except (TypeError, ValueError):
        raise DataError(f"'{run_dir}': seed {labels['seed']!r} is not an integer; the run directory is "
                        "damaged") from None
    return {"method": str(labels["method"]), "strategy": str(labels["strategy"]), "seed": seed}


def _recipe_labels(run_dir: Path) -> dict:
    if (run_dir / IDENTITY).is_file():  # the recipe the run was made with, verified
        recipe = read_identity(run_dir)["recipe"]
        return {"method": method_label(recipe), "strategy": strategy_label(recipe), "seed": recipe["seed"]}
    if not (run_dir / RECIPE).is_file():
        raise DataError(f"'{run_dir}' has no recipe.yaml; it is not the output_dir of an ssal run")
    try:  # a run of an ssal without run.json
        recipe = files.read_yaml(run_dir / RECIPE, "recipe") or {}
    except ConfigError as e:
        raise DataError(f"cannot report on '{run_dir}': {e}") from None
    if not isinstance(recipe, dict):
        raise DataError(f"{run_dir / RECIPE} is not a recipe (not a mapping); the run directory is damaged")
    try:
        return {"method": method_label(recipe), "strategy": strategy_label(recipe), "seed": recipe.get("seed", 0)}
    except AttributeError:
        raise DataError(f"{run_dir / RECIPE} is not a recipe (its sections are not mappings); the run "
                        "directory is damaged") from None


def tested_rounds(run_dir: Path) -> list[dict]:
    """The committed rounds of a run for a report, which compares test accuracy: a one-line
    :class:`DataError` when they are damaged or the run has no test set."""
    try:
        metrics = read_metrics(run_dir)
    except DataError as e:
        raise DataError(f"cannot report on '{run_dir}': {e}") from None
    if any("test_acc" not in m for m in metrics):
        raise DataError(f"'{run_dir}' has no test accuracy (its data has no test set), and a report compares test "
                        "accuracy: give the run a labeled test folder (data.test_root) to compare it; its rounds' "
                        "pool statistics are in its metrics.jsonl")
    return metrics


def is_comparison(path: Path) -> bool:
    """Whether ``path`` is read as the folder of ``ssal compare`` (it has ``cells/``)."""
    return (path / CELLS).is_dir()


def comparison_report_options(path: Path) -> dict:
    """What ``ssal compare`` recorded for its folder's report (title, caution, pairs); {} for an older or
    damaged marker: the report is then written without them."""
    try:
        marker = files.read_sealed_json(path / COMPARISON)
    except (OSError, files.Damaged):
        return {}
    return {k: marker[k] for k in ("title", "caution", "pairs") if k in marker}


def runs_under(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The run directories given: a folder of ``ssal compare`` stands for its cells (the runs in it)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            what = "is a file, not a folder" if p.exists() else "does not exist"
            raise DataError(f"'{p}' {what}; give run directories or the output_dir of 'ssal compare'")
        if (p / METRICS).is_file():
            out.append(p)
        elif is_comparison(p):
            out += sorted(c for c in (p / CELLS).iterdir() if (c / METRICS).is_file())
        else:
            raise DataError(f"'{p}' holds neither a run (metrics.jsonl) nor a comparison (cells/)")
    return out


def recorded_recipe(run_dir: Path) -> Any:
    """The recipe a run was made with (run.json's, else the recipe.yaml of an ssal without run.json, as
    written: not always a mapping), or None when neither can be read."""
    try:
        return read_identity(run_dir)["recipe"]
    except SsalError:
        try:
            return files.read_yaml(run_dir / RECIPE)
        except SsalError:
            return None
