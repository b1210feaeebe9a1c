"""``ssal compare``: spec parsing and labels, up-front rejection, resumable runs, the report of a
real tiny grid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ssal.cli import main
from ssal.experiment.compare import load_spec, run_plan
from ssal.experiment.report import read_metrics, read_results_csv
from ssal.run.store import RunDir

SSAL = str(Path(sys.executable).with_name("ssal"))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def base(tmp_path, tiny_recipe) -> Path:
    path = tmp_path / "base.yaml"
    recipe = tiny_recipe(tmp_path / "unused", train={"steps": 4}, active={"rounds": 2, "strategy": "random"})
    recipe.pop("output_dir")
    path.write_text(yaml.safe_dump(recipe))
    return path


def spec(tmp_path: Path, grid: dict, **extra) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"recipe": "base.yaml", "output_dir": str(tmp_path / "cmp"), "grid": grid,
                                    **extra}))
    return path


def test_cells_labels_and_overrides(tmp_path, base):
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"extends": "base.yaml", "train": {"method": "fixmatch"},
                                                          "pretrain": {"method": "simclr", "epochs": 1}}))
    plan = load_spec(spec(tmp_path, {
        "method": {"sup": {}, "ssl": {"recipe": "other.yaml"}},
        "active.strategy": ["random", "margin"],
        "train.lr": [0.01, 0.1],
        "seed": [3],
    }, overrides={"active.budget": 5}))
    assert len(plan.cells) == 2 * 2 * 2
    names = sorted(c.name for c in plan.cells)
    # a named method axis gives the method label; the values of other axes (train.lr) are appended
    assert "sup_lr=0.01__margin__seed3" in names and "ssl_lr=0.1__random__seed3" in names and len(set(names)) == 8
    cell = next(c for c in plan.cells if c.labels["method"] == "ssl/lr=0.1" and c.labels["strategy"] == "margin")
    assert cell.cfg.train.method == "fixmatch" and cell.cfg.pretrain.method == "simclr"
    assert cell.cfg.active.budget == 5 and cell.cfg.seed == 3
    assert Path(cell.cfg.output_dir) == tmp_path / "cmp" / "cells" / cell.name
    assert not (tmp_path / "cmp").exists()  # parsing writes nothing


def test_derived_labels(tmp_path, base):
    plan = load_spec(spec(tmp_path, {"train.method": ["supervised", "fixmatch"],
                                     "active.strategy": ["random", "entropy"], "train.steps": [4, 8]}))
    labels = sorted((c.labels["method"], c.labels["strategy"], c.labels["seed"]) for c in plan.cells)
    assert ("fixmatch/steps=8", "entropy", 0) in labels and ("supervised/steps=4", "random", 0) in labels
    assert len(labels) == 8
    typi = load_spec(spec(tmp_path, {"strategy": {"typiclust": {"active.strategy": "typiclust",
                                                                "active.initial_strategy": "typiclust"}}}))
    assert typi.cells[0].labels["strategy"] == "typiclust" and typi.cells[0].labels["method"] == "supervised"


@pytest.mark.parametrize(("grid", "extra", "message"), [
    ({"active.strategy": ["tod"]}, {}, "cell tod: "),  # supervised training has no EMA for TOD
    ({"active.strategy": ["entropi"]}, {}, "did you mean 'entropy'"),
    ({"train.methd": ["supervised"]}, {}, "unknown recipe key 'train.methd'"),
    ({"active.strategy": []}, {}, "empty list"),
    ({"method": ["a", "b"]}, {}, "names a label"),
    ({"seed": [0, 0]}, {}, "same value twice"),
    ({"active.strategy": ["random"]}, {"overides": {}}, "unknown key 'overides'"),
    ({"active.strategy": ["random"]}, {"overrides": {"output_dir": "x"}}, "may not set 'output_dir'"),
    ({"active.strategy": ["random"]}, {"caution": 5}, "'caution' must be a sentence"),
    ({"active.strategy": ["random", "entropy"]}, {"pairs": [["entropi", "random"]]}, "did you mean 'entropy'"),
    ({"active.strategy": ["random", "entropy"]}, {"pairs": ["entropy"]}, "'pairs' must list strategy pairs"),
    ({"active.strategy": ["random", "entropy"]}, {"pairs": [["entropy", "entropy"]]}, "minus itself"),
    ({"active.strategy": ["random", "entropy"]}, {"pairs": [["entropy", "random"]]}, "paired with random already"),
])
def test_bad_specs_fail_with_one_line_and_write_nothing(tmp_path, base, capsys, grid, extra, message):
    assert main(["compare", str(spec(tmp_path, grid, **extra))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssal: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "cmp").exists()


SPECS = [pytest.param(p, marks=pytest.mark.slow) if p.name == "fashion_mnist.yaml" else p  # the full spec: 16 s
         for p in sorted((ROOT / "recipes" / "compare").glob("*.yaml"))]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_shipped_specs_load_and_validate(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths in a spec are relative to it, not to the working directory
    plan = load_spec(path)
    assert len(plan.cells) >= 8 and len({c.name for c in plan.cells}) == len(plan.cells)
    methods = {c.labels["method"] for c in plan.cells}
    strategies = {c.labels["strategy"] for c in plan.cells}
    assert len(methods) >= 1
    if len(strategies) > 1:  # a spec that compares strategies gives every method its random baseline
        assert all("random" in {c.labels["strategy"] for c in plan.cells if c.labels["method"] == m} for m in methods)
    assert not (tmp_path / "runs").exists()


def test_missing_spec_and_bad_jobs(tmp_path, base, capsys):
    assert main(["compare", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["compare", str(spec(tmp_path, {"seed": [0]})), "--jobs", "0"]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_grid_runs_and_reports(tmp_path, base):
    plan = load_spec(spec(tmp_path, {"active.strategy": ["random", "entropy"], "seed": [0, 1]}))
    assert run_plan(plan, jobs=2, progress=False) == 0
    out = tmp_path / "cmp"
    for name in ("results.csv", "summary.md", "curves.png", "aubc.png"):
        assert (out / name).is_file()
    rows = read_results_csv(out / "results.csv")
    assert len(rows) == 4 * 3  # cells x rounds
    for c in plan.cells:
        mine = [r for r in rows if (r["strategy"], r["seed"]) == (c.labels["strategy"], c.labels["seed"])]
        assert [r["test_acc"] for r in mine] == pytest.approx([m["test_acc"] for m in read_metrics(c.cfg.output_dir)])
        assert RunDir(c.cfg.output_dir).read_cell() == c.labels
        assert (out / "recipes" / f"{c.name}.yaml").is_file()
    # same seed, same initial labels and round-0 training: the paired difference at 20 labels is 0
    assert "| supervised | entropy | 2 | +0.00 [+0.00, +0.00] |" in (out / "summary.md").read_text()
    # ssal report on the comparison rebuilds the same table
    rep = tmp_path / "rep"
    assert main(["report", str(out), "--out", str(rep)]) == 0
    assert read_results_csv(rep / "results.csv") == [{**r, "run": r["run"]} for r in rows]

    # a done cell whose pool.json is damaged is not complete: the comparison resumes it, which repairs it
    cell = Path(plan.cells[0].cfg.output_dir)
    good = (cell / "pool.json").read_bytes()
    (cell / "pool.json").write_bytes(good[:-20])
    assert run_plan(load_spec(tmp_path / "spec.yaml"), progress=False) == 0
    assert (cell / "pool.json").read_bytes() == good
    assert "pool.json was" in (out / "logs" / f"{plan.cells[0].name}.log").read_text()

    # a changed spec does not silently mix runs of two recipes
    changed = spec(tmp_path, {"active.strategy": ["random", "entropy"], "seed": [0, 1]},
                   overrides={"train.steps": 5})
    with pytest.raises(Exception, match="was run with a different recipe .*train.steps: 4 there, 5 now"):
        run_plan(load_spec(changed), progress=False)


@pytest.mark.slow
def test_killed_compare_resumes_only_missing_cells(tmp_path, base):
    path = spec(tmp_path, {"active.strategy": ["random", "entropy", "margin"]})
    out = tmp_path / "cmp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([SSAL, "compare", str(path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first = out / "cells" / "supervised__random__seed0"
    second = out / "cells" / "supervised__entropy__seed0"
    deadline = time.time() + 240
    while time.time() < deadline and not (len(read_metrics(first)) == 3 and len(read_metrics(second)) >= 1):
        time.sleep(0.05)
    assert len(read_metrics(first)) == 3, proc.communicate()[0] if proc.poll() is not None else "timeout"
    proc.send_signal(signal.SIGTERM)  # midway: the second cell has committed 1 or 2 of its 3 rounds
    proc.wait(timeout=60)
    done_first = (first / "metrics.jsonl").read_bytes()
    partial = len(read_metrics(second))
    assert 1 <= partial < 3
    assert not (out / "cells" / "supervised__margin__seed0").exists()
    time.sleep(1.0)
    assert len(read_metrics(second)) == partial  # the cell's process ended with the comparison

    again = subprocess.run([SSAL, "compare", str(path)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 complete, 1 to resume, 1 to run" in again.stderr
    assert (first / "metrics.jsonl").read_bytes() == done_first  # untouched
    assert f"resuming {second}" in (out / "logs" / "supervised__entropy__seed0.log").read_text()
    assert [len(read_metrics(out / "cells" / n)) for n in ("supervised__random__seed0", "supervised__entropy__seed0",
                                                           "supervised__margin__seed0")] == [3, 3, 3]
    # the resumed cell equals an uninterrupted run of its recipe
    ref = tmp_path / "ref"  # a process with the cells' thread count (CPU results depend on it)
    subprocess.run([SSAL, "run", str(out / "recipes" / "supervised__entropy__seed0.yaml"), f"output_dir={ref}",
                    "--no-progress"], cwd=ROOT, env=env, check=True, capture_output=True)
    assert [m["test_acc"] for m in read_metrics(second)] == [m["test_acc"] for m in read_metrics(ref)]
    third = subprocess.run([SSAL, "compare", str(path)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert third.returncode == 0 and "3 complete, 0 to resume, 0 to run" in third.stderr


@pytest.mark.slow
def test_benchmark_script_quick_preset_at_a_tiny_size(tmp_path, fmnist_root):
    """scripts/benchmark_fashion_mnist.sh --quick, shrunk by overrides to the tiny idx files: its
    16 cells are 2 methods x 4 strategies x 2 seeds; a --cells selection of 8 of them runs here."""
    out = tmp_path / "bench"
    tiny = [f"data.root={fmnist_root}", "data.pool_size=null", "data.test_size=null", "active.initial=20",
            "active.budget=10", "active.rounds=1", "active.subset=100", "train.steps=2", "pretrain.epochs=1",
            f"cache_dir={tmp_path / 'cache'}"]
    dry = subprocess.run(["bash", "scripts/benchmark_fashion_mnist.sh", "--quick", "--out", str(out), "--dry-run",
                          *tiny], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr[-2000:]
    names = [line.split("\t")[0] for line in dry.stdout.splitlines()]
    assert len(names) == 16 and {n.split("__")[0] for n in names} == {"supervised", "simclr+fixmatch"}
    assert {n.split("__")[1] for n in names} == {"random", "entropy", "coreset", "consistency"}
    proc = subprocess.run(["bash", "scripts/benchmark_fashion_mnist.sh", "--quick", "--out", str(out),
                           "--cells", "*__random__*", "--cells", "*__coreset__*", *tiny],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_results_csv(out / "results.csv")
    assert {(r["method"], r["strategy"], r["seed"]) for r in rows} == {
        (m, s, seed) for m in ("supervised", "simclr+fixmatch") for s in ("random", "coreset") for seed in (0, 1)}
    assert len(rows) == 8 * 2
    summary = (out / "summary.md").read_text()
    assert "| simclr+fixmatch | coreset | 2 |" in summary and "verdict" in summary
    # 2 seeds give no verdict, and the preset says on screen and in summary.md that it cannot rank methods
    assert "**no verdict: 2 seeds, needs >= 3**" in summary and "**better**" not in summary
    assert summary.splitlines()[2].startswith("> **Caution:** This preset checks that the pipeline runs")
    assert "too short to rank" in summary.splitlines()[2]
    assert proc.stderr.count("compare: caution: This preset checks") == 2  # at the start and under the report
    assert "## Difference between methods under `random` selection" in summary and "(`supervised`)" in summary
    # 'ssal report' on the comparison writes the same summary: the spec's title and caution were recorded
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "summary.md").read_text() == summary
    assert (out / "curves.png").stat().st_size > 0 and (out / "aubc.png").stat().st_size > 0
    assert "pretraining for simclr+fixmatch" in proc.stderr


@pytest.mark.slow  # another process holds the comparison's lock
def test_a_comparison_in_use_is_refused_naming_its_holder(tmp_path, base, capsys):
    path = spec(tmp_path, {"active.strategy": ["random"]})
    out = tmp_path / "cmp"
    out.mkdir()
    code = ("import sys, time\nfrom ssal.run.lock import Lock\nLock(sys.argv[1]).acquire()\n"
            "print('locked', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted(p.name for p in out.rglob("*"))
        assert main(["compare", str(path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ssal: error: ") and f"pid {holder.pid}" in err
        assert sorted(p.name for p in out.rglob("*")) == before == [".lock"]
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


@pytest.mark.slow  # runs a cell
def test_a_cell_made_before_a_recipe_key_existed_is_done_while_a_changed_value_is_refused(tmp_path, base):
    from ssal import files
    from ssal.experiment.compare import cell_state

    plan = load_spec(spec(tmp_path, {"seed": [0]}))
    assert run_plan(plan, progress=False) == 0
    cell = plan.cells[0]
    identity = Path(cell.cfg.output_dir) / "run.json"
    data = json.loads(identity.read_text())
    for key in ("imbalance", "redundancy", "redundancy_noise"):  # as an ssal before the pool settings wrote it
        del data["recipe"]["data"][key]
    identity.write_text(json.dumps(files.seal({k: v for k, v in data.items() if k != "checksum"})))
    assert cell_state(load_spec(tmp_path / "spec.yaml").cells[0]) == ("done", 3)
    changed = load_spec(spec(tmp_path, {"seed": [0]}, overrides={"data.redundancy": 2})).cells[0]
    with pytest.raises(Exception, match=r"data.redundancy: None there, 2 now"):
        cell_state(changed)
