"""A human-labeled run under kill -9: in the stopped and resumed rounds and in the label import, a
killed command run again ends in exactly the uninterrupted run (no label lost or duplicated)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from ssal.data import load_dataset
from ssal.recipe import load_recipe
from ssal.run.readers import read_metrics
from tests.test_crash_safety import SSAL, _env, faults, ssal


def command(*args: str, failpoints: str | None = None) -> subprocess.CompletedProcess:
    """``ssal run ...`` (without progress bars) or ``ssal label ...``, in a subprocess."""
    if args[0] == "run":
        return ssal(*args, failpoints=failpoints)
    env = _env(**({faults.ENV: failpoints} if failpoints else {}))
    return subprocess.run([SSAL, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def human_recipe(tmp_path_factory, tiny_recipe):
    root = tmp_path_factory.mktemp("human_kill")
    recipe = tiny_recipe(root / "unused", active={"oracle": "human", "rounds": 2}, cache_dir=str(root / "cache"))
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cfg = load_recipe(path)
    truth = load_dataset(cfg.data, seed=cfg.seed).train.targets
    return path, truth


def answer(run: Path, truth, out: Path) -> Path:
    """A scripted annotator: the open batch's queries.csv with the true labels (by index)."""
    folder = sorted((run / "rounds").iterdir(), key=lambda p: (p.name != "initial", p.name))
    open_ = [f for f in folder if (f / "queries.csv").exists() and not (f / "answers.json").exists()][-1]
    rows = list(csv.DictReader((open_ / "queries.csv").open()))
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label"])
        for row in rows:
            w.writerow([row["index"], str(int(truth[int(row["index"])]))])
    return out


def drive(recipe: Path, truth, run: Path, kill: tuple[int, str] | None = None) -> list[str]:
    """run, then (import, resume) until the run is complete; step ``kill[0]`` runs first with the failpoint
    ``kill[1]`` (and must die of SIGKILL), then again without it. Returns the problems found."""
    steps = [("run", str(recipe), f"output_dir={run}")]
    problems, k = [], 0
    while True:
        for args in steps:
            if kill is not None and k == kill[0]:
                killed = command(*args, failpoints=kill[1])
                if killed.returncode != -signal.SIGKILL:
                    problems.append(f"step {k} {args[0]} not killed by {kill[1]}: exit {killed.returncode}")
                if args[0] == "run" and "--resume" not in args:  # a killed first run is continued, as ever
                    args = ("run", "--resume", str(run))
            proc = command(*args)
            if proc.returncode != 0:
                return [*problems, f"step {k} {' '.join(args)}: exit {proc.returncode}: {proc.stderr[-400:]}"]
            k += 1
        if len(read_metrics(run)) == 3:
            return problems
        if k > 12:
            return [*problems, "did not complete"]
        labels = answer(run, truth, run.parent / f"{run.name}_answers_{k}.csv")
        steps = [("label", "import", str(run), str(labels)), ("run", "--resume", str(run))]


def final_state(run: Path) -> tuple[list, list]:
    return json.loads((run / "pool.json").read_text())["labeled"], [m["test_acc"] for m in read_metrics(run)]


# (step, failpoint): step 0 is the first run, then import (odd) and resume (even) alternate
HUMAN_KILL_POINTS = [
    (0, "write:queries.csv=kill"),          # the first stop, writing its queries
    (1, "write:answers.json=kill"),         # importing the first answers
    (2, "write:pool.json=kill"),            # the resume moving the answers into the pool
    (2, "train.step=kill@10"),              # training the first resumed round
    (2, "write:metrics.jsonl=kill@2"),      # committing it (the stop after its selection)
    (4, "write:selected.json=kill"),        # the next resume's selection
]


@pytest.mark.slow
def test_kill_9_in_human_rounds_and_imports_then_again_gives_the_uninterrupted_run(human_recipe, tmp_path):
    recipe, truth = human_recipe
    ref = tmp_path / "ref"
    assert drive(recipe, truth, ref) == []
    want = final_state(ref)
    assert len(want[0]) == 20 + 2 * 10 and len({i for i, _, _ in want[0]}) == len(want[0])

    def one(case: tuple[int, str]) -> list[str]:
        run = tmp_path / f"k{case[0]}_{case[1].split('=')[0].replace(':', '_')}"
        problems = drive(recipe, truth, run, case)
        if not problems and final_state(run) != want:
            problems.append(f"{case}: final pool/accuracies differ from the uninterrupted run")
        if not problems and list(run.rglob(".*.tmp")):
            problems.append(f"{case}: temp files left: {list(run.rglob('.*.tmp'))}")
        return problems

    with ThreadPoolExecutor(2) as ex:
        problems = [p for ps in ex.map(one, HUMAN_KILL_POINTS) for p in ps]
    assert problems == []
