"""The active-learning loop and the run-output contract (DESIGN.md), determinism and resume."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from ssal.cli import main
from ssal.data import load_dataset
from ssal.experiment import loop
from ssal.experiment.report import read_metrics
from ssal.recipe import load_recipe

SSAL = str(Path(sys.executable).with_name("ssal"))
INITIAL, BUDGET, ROUNDS = 20, 10, 3


def write(path: Path, recipe: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_recipe(path: Path, *overrides: str) -> Path:
    return loop.run(load_recipe(path, list(overrides)), progress=False)


def pool_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "pool.json").read_text())


def accs(run_dir: Path) -> list[float]:
    return [m["test_acc"] for m in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def ref(tmp_path_factory, tiny_recipe):
    """A finished tiny run: digits, entropy, 20 + 3 x 10 labels. Returns (recipe path, run dir)."""
    root = tmp_path_factory.mktemp("ref")
    recipe = write(root / "ref.yaml", tiny_recipe(root / "run_a", active={"rounds": ROUNDS}))
    return recipe, run_recipe(recipe)


# ----------------------------------------------------------------------------- the contract

def test_recipe_yaml_loads_back_as_the_same_recipe(ref):
    recipe, out = ref
    cfg = load_recipe(recipe)
    saved = load_recipe(out / "recipe.yaml")
    assert OmegaConf.to_container(saved) == OmegaConf.to_container(cfg)
    assert saved.name == "ref"  # the resolved name, not the stem of recipe.yaml


def test_metrics_jsonl(ref):
    _, out = ref
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == ROUNDS + 1
    rows = [json.loads(line) for line in lines]
    for r, row in enumerate(rows):
        assert row["round"] == r
        assert row["n_labeled"] == INITIAL + r * BUDGET
        assert 0.0 <= row["test_acc"] <= 1.0
        assert row["train_s"] > 0 and row["select_s"] >= 0
    assert rows[-1]["select_s"] == 0  # the last round selects nothing
    assert rows[-1]["test_acc"] > 0.2  # it learned something (chance is 0.1)


def test_curve_csv_and_png(ref):
    _, out = ref
    with open(out / "curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    metrics = read_metrics(out)
    assert len(rows) == len(metrics) == ROUNDS + 1
    for row, m in zip(rows, metrics, strict=True):
        assert int(row["round"]) == m["round"]
        assert int(row["n_labeled"]) == m["n_labeled"]
        assert float(row["test_acc"]) == pytest.approx(m["test_acc"], abs=1e-6)
    png = (out / "curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_pool_json(ref):
    recipe, out = ref
    cfg = load_recipe(recipe)
    targets = load_dataset(cfg.data, seed=cfg.seed).train.targets
    pool = pool_of(out)
    assert pool["n"] == cfg.data.pool_size == len(targets)
    labeled = pool["labeled"]
    assert len(labeled) == INITIAL + ROUNDS * BUDGET
    indices = [i for i, _, _ in labeled]
    assert len(set(indices)) == len(indices)
    assert all(0 <= i < pool["n"] for i in indices)
    assert all(y == int(targets[i]) for i, y, _ in labeled)  # SimulatedOracle: the ground truth
    # acquisition order: the initial set is round 0, what round r selected is round r + 1
    assert [rnd for _, _, rnd in labeled] == [0] * INITIAL + [r for r in range(1, ROUNDS + 1) for _ in range(BUDGET)]


def test_selected_json(ref):
    _, out = ref
    labeled = pool_of(out)["labeled"]
    for r in range(ROUNDS):
        sel = json.loads((out / "rounds" / f"r{r:02d}" / "selected.json").read_text())
        assert sel["round"] == r
        assert sel["strategy"] == "entropy"
        assert sel["indices"] == [i for i, _, rnd in labeled if rnd == r + 1]
        scores = sel["scores"]
        assert isinstance(scores, list) and len(scores) == BUDGET
        assert all(0.0 <= s <= 2.3026 for s in scores)  # entropy of 10 classes, nats
        assert scores == sorted(scores, reverse=True)  # the top-budget scores, best first
    assert not (out / "rounds" / f"r{ROUNDS:02d}").exists()  # the last round selects nothing


def test_checkpoint_of_the_last_round(ref):
    _, out = ref
    ckpts = sorted((out / "checkpoints").glob("*.pt"))
    assert ckpts, "no checkpoint written"
    import torch

    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    assert state["round"] == ROUNDS and state["model"]


# ----------------------------------------------------------------------------- determinism

def test_same_recipe_and_seed_give_the_same_run(ref, tmp_path):
    recipe, out_a = ref
    out_b = run_recipe(recipe, f"output_dir={tmp_path / 'run_b'}")
    assert pool_of(out_b)["labeled"] == pool_of(out_a)["labeled"]
    assert accs(out_b) == accs(out_a)
    for r in range(ROUNDS):
        a = json.loads((out_a / "rounds" / f"r{r:02d}" / "selected.json").read_text())
        b = json.loads((out_b / "rounds" / f"r{r:02d}" / "selected.json").read_text())
        assert a == b


def test_a_different_seed_selects_differently(ref, tmp_path):
    recipe, out_a = ref
    out = run_recipe(recipe, "seed=1", "active.rounds=1", f"output_dir={tmp_path / 'seed1'}")
    a, b = pool_of(out_a)["labeled"], pool_of(out)["labeled"]
    assert [x for x in b if x[2] == 0] != [x for x in a if x[2] == 0]
    assert [x for x in b if x[2] == 1] != [x for x in a if x[2] == 1]


def test_random_strategy_has_no_scores(write_recipe):
    path = write_recipe("rnd", train={"steps": 5}, active={"strategy": "random", "rounds": 1})
    out = run_recipe(path)
    sel = json.loads((out / "rounds" / "r00" / "selected.json").read_text())
    assert sel["strategy"] == "random" and sel["scores"] is None
    assert sel["indices"] == [i for i, _, rnd in pool_of(out)["labeled"] if rnd == 1]
    assert len(sel["indices"]) == BUDGET


def test_no_reinit_continues_training(ref, tmp_path):
    import torch

    recipe, out_a = ref
    out = run_recipe(recipe, "train.reinit=false", f"output_dir={tmp_path / 'cont'}")
    assert load_recipe(out / "recipe.yaml").train.reinit is False
    rows = read_metrics(out)
    assert [m["n_labeled"] for m in rows] == [INITIAL + r * BUDGET for r in range(ROUNDS + 1)]
    labeled, labeled_a = pool_of(out)["labeled"], pool_of(out_a)["labeled"]
    assert len(labeled) == INITIAL + ROUNDS * BUDGET
    # round 0 and its selection do not depend on reinit; what round 1 trains does
    assert labeled[: INITIAL + BUDGET] == labeled_a[: INITIAL + BUDGET]
    assert rows[0]["test_acc"] == read_metrics(out_a)[0]["test_acc"]
    last = f"round_{ROUNDS:02d}.pt"
    w = torch.load(out / "checkpoints" / last, weights_only=True)["model"]
    w_a = torch.load(out_a / "checkpoints" / last, weights_only=True)["model"]
    assert any(not torch.equal(w[k], w_a[k]) for k in w)


@pytest.mark.parametrize("reinit, continue_steps, expected", [
    (False, 4, [20, 4, 4]),  # rounds after round 0 continue the last model on the shorter schedule
    (False, None, [20, 20, 20]),  # null: train.steps every round
    (True, None, [20, 20, 20]),
])
def test_continuing_rounds_train_continue_steps(write_recipe, monkeypatch, reinit, continue_steps, expected):
    from ssal.engine import Engine

    steps, fit = [], Engine.fit

    def spy(self, model, build, data, optim, **kw):
        steps.append(optim.steps)
        return fit(self, model, build, data, optim, **kw)

    monkeypatch.setattr(Engine, "fit", spy)
    out = run_recipe(write_recipe("cont", train={"reinit": reinit, "continue_steps": continue_steps}))
    assert steps == expected
    assert [m["n_labeled"] for m in read_metrics(out)] == [20, 30, 40]


def test_continue_steps_with_reinit_is_refused(write_recipe, capsys):
    path = write_recipe("refused", train={"continue_steps": 5})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssal: error: train.continue_steps") and "train.reinit=false" in err
    assert not (path.parent / "runs" / "refused").exists()


def test_class_balanced_initial_set(write_recipe):
    path = write_recipe("bal", train={"steps": 3},
                        active={"initial": 30, "rounds": 0, "initial_strategy": "class_balanced"})
    out = run_recipe(path)
    labeled = pool_of(out)["labeled"]
    assert len(labeled) == 30
    assert Counter(y for _, y, _ in labeled) == {c: 3 for c in range(10)}


def test_zero_rounds_trains_once_and_selects_nothing(write_recipe):
    path = write_recipe("zero", train={"steps": 3}, active={"rounds": 0})
    out = run_recipe(path)
    rows = read_metrics(out)
    assert len(rows) == 1 and rows[0]["round"] == 0 and rows[0]["n_labeled"] == INITIAL
    assert len(pool_of(out)["labeled"]) == INITIAL
    assert not list((out / "rounds").glob("r*/selected.json"))
    assert (out / "curve.csv").read_text().count("\n") == 2  # header + one round


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("cut", ["between pool save and commit", "while committing"])
def test_resume_after_a_crash(ref, tmp_path, capsys, cut):
    recipe, out_a = ref
    out_b = run_recipe(recipe, f"output_dir={tmp_path / 'run_b'}")
    # a kill after round 1 committed and after round 2 saved its selection to pool.json,
    # or one in the middle of appending round 2's line to metrics.jsonl
    metrics = (out_b / "metrics.jsonl").read_text().splitlines(keepends=True)
    partial = metrics[2][: len(metrics[2]) // 2] if cut == "while committing" else ""
    (out_b / "metrics.jsonl").write_text("".join(metrics[:2]) + partial)
    assert len(read_metrics(out_b)) == 2
    assert len(pool_of(out_b)["labeled"]) == INITIAL + ROUNDS * BUDGET  # later rounds still in it
    for f in ("curve.csv", "curve.png"):
        (out_b / f).unlink()

    assert main(["run", "--resume", str(out_b), "--no-progress"]) == 0
    assert "error" not in capsys.readouterr().err
    assert pool_of(out_b) == pool_of(out_a)
    assert accs(out_b) == accs(out_a)
    assert [m["round"] for m in read_metrics(out_b)] == list(range(ROUNDS + 1))
    assert [json.loads(line)["round"] for line in (out_b / "metrics.jsonl").read_text().splitlines()] == \
        list(range(ROUNDS + 1))  # every line is whole
    assert (out_b / "curve.csv").is_file() and (out_b / "curve.png").is_file()


def test_resuming_a_complete_run_is_a_no_op(ref, tmp_path, capsys):
    _, out_a = ref
    copy = tmp_path / "copy"
    shutil.copytree(out_a, copy)
    # every file but the lock (taken and released again) is left as it was
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in copy.rglob("*") if p.is_file() and p.name != ".lock"}
    assert main(["run", "--resume", str(copy), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in copy.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_resume_with_a_corrupt_metrics_line_is_a_user_error(ref, tmp_path, capsys):
    _, out_a = ref
    copy = tmp_path / "copy"
    shutil.copytree(out_a, copy)
    lines = (copy / "metrics.jsonl").read_text().splitlines(keepends=True)
    (copy / "metrics.jsonl").write_text(lines[0] + "garbage\n" + "".join(lines[2:]))
    assert main(["run", "--resume", str(copy), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssal: error: ") and err.count("\n") == 1 and "metrics.jsonl" in err


@pytest.mark.slow
def test_resume_after_kill_9_matches_an_uninterrupted_run(tmp_path, tiny_recipe):
    # slow enough per round to be killed inside round 2; reinit=false so that the resumed run
    # must continue from the checkpoint that round 1 left
    rounds, steps = 4, 150
    killed = tmp_path / "killed"
    recipe = write(tmp_path / "slow.yaml",
                   tiny_recipe(killed, train={"steps": steps, "reinit": False}, active={"rounds": rounds}))
    import torch

    # the same thread count as this process, which runs the uninterrupted reference: float sums
    # (and so the selected samples) may differ in the last bits between thread counts
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([SSAL, "run", str(recipe), "--no-progress"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = killed / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 300
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "round 1 did not finish in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    committed = len(metrics.read_text().splitlines())
    assert 2 <= committed < rounds + 1  # killed mid-run

    res = subprocess.run([SSAL, "run", "--resume", str(killed), "--no-progress"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr

    whole = run_recipe(recipe, f"output_dir={tmp_path / 'whole'}")
    assert pool_of(killed) == pool_of(whole)
    assert [m["n_labeled"] for m in read_metrics(killed)] == [20 + r * 10 for r in range(rounds + 1)]
    assert accs(killed) == accs(whole)


@pytest.mark.parametrize("committed, words", [
    (0, "interrupted before round 0 was committed; 'ssal run --resume {run}' starts it again"),
    (1, "interrupted; round 0 committed and kept: continue with 'ssal run --resume {run}'"),
    (3, "interrupted; rounds 0-2 committed and kept: continue with 'ssal run --resume {run}'"),
])
def test_an_interruption_says_what_is_kept(tmp_path, monkeypatch, committed, words):
    from ssal.experiment.loop import _interrupted
    from ssal.run.store import RunDir

    monkeypatch.setattr(RunDir, "committed", lambda self: [{"round": r} for r in range(committed)])
    assert words.format(run=tmp_path) in _interrupted(RunDir(tmp_path))
