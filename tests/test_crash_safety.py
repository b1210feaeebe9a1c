"""The run directory under faults: kill -9 at twelve points, damaged files, a full disk, two runs at
once, interrupts, a diverging loss. Each ends in exactly the uninterrupted run's state, or in one
line ``ssal: error: ...`` that changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ssal import faults
from ssal.cli import main
from ssal.experiment import loop
from ssal.recipe import load_recipe
from ssal.run.readers import read_metrics

SSAL = str(Path(sys.executable).with_name("ssal"))


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Paths, sizes and content hashes of everything under ``roots``."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")) if root.exists() else []:
            out[str(p)] = ("dir",) if p.is_dir() else (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def one_error_line(err: str, *fragments: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssal: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    return lines[0]


def pool_of(run: Path) -> dict:
    return json.loads((run / "pool.json").read_text())


def accs(run: Path) -> list[float]:
    return [m["test_acc"] for m in read_metrics(run)]


def tmp_files(run: Path) -> list[Path]:
    return [p for p in run.rglob(".*.tmp")]


# ----------------------------------------------------------------------------- kill -9 at twelve points

def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    # one thread: the killed, the resumed and the reference runs must reduce floats in the same order
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200", **extra}


def ssal(*args: str, failpoints: str | None = None, cwd: Path | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    env = _env(**({faults.ENV: failpoints} if failpoints else {}))
    return subprocess.run([SSAL, *args, "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def killable(tmp_path_factory, tiny_recipe):
    """A recipe with every stage (SimCLR pretraining, training that continues from the last round, entropy
    selection) and its uninterrupted run, in a subprocess like the killed ones."""
    root = tmp_path_factory.mktemp("kill")
    recipe = tiny_recipe(root / "unused", train={"steps": 30, "reinit": False}, active={"rounds": 3},
                         pretrain={"method": "simclr", "epochs": 2, "batch_size": 64}, cache_dir=str(root / "cache"))
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    ref = root / "ref"
    proc = ssal("run", str(path), f"output_dir={ref}")
    assert proc.returncode == 0, proc.stderr
    return path, ref


# (name, failpoint): 30 steps per round, so train.step@45 is inside round 1; the initial set is the first
# selected.json and pool.json write; metrics.jsonl is written at creation, before the first round (the
# committed lines, none) and at each commit
KILL_POINTS = [
    ("during pretraining", "pretrain.step=kill@4"),
    ("during training", "train.step=kill@45"),
    ("during evaluation", "evaluate=kill@2"),
    ("during selection (signals)", "signals=kill@2"),
    ("after a selection", "select=kill@1"),
    ("writing recipe.yaml", "write:recipe.yaml=kill"),
    ("writing selected.json", "write:selected.json=kill@2"),
    ("writing pool.json", "write:pool.json=kill@3"),
    ("writing a checkpoint", "write:round_*.pt=kill@2"),
    ("committing metrics.jsonl", "write:metrics.jsonl=kill@4"),
    ("writing curve.png", "write:curve.png=kill@2"),
    ("between rounds", "round.end=kill@2"),
]


@pytest.mark.slow
def test_kill_9_at_twelve_points_then_resume_gives_the_uninterrupted_run(killable, tmp_path):
    recipe, ref = killable

    def kill_and_resume(case: tuple[str, str]) -> str | None:
        name, point = case
        out = tmp_path / point.split("=")[0].replace("*", "x").replace(":", "_")
        extra = [f"cache_dir={tmp_path / 'fresh_cache'}"] if point.startswith("pretrain") else []
        killed = ssal("run", str(recipe), f"output_dir={out}", *extra, failpoints=point)
        if killed.returncode != -signal.SIGKILL:
            return f"{name}: not killed (exit {killed.returncode}): {killed.stderr[-500:]}"
        resumed = ssal("run", "--resume", str(out))
        if resumed.returncode != 0 or "Traceback" in resumed.stderr:
            return f"{name}: resume failed (exit {resumed.returncode}): {resumed.stderr[-800:]}"
        if pool_of(out) != pool_of(ref):
            return f"{name}: pool.json differs from the uninterrupted run's"
        if accs(out) != accs(ref):
            return f"{name}: accuracies {accs(out)} != {accs(ref)}"
        if tmp_files(out):
            return f"{name}: temporary files left: {tmp_files(out)}"
        return None

    with ThreadPoolExecutor(2) as pool:  # two cases at a time, one thread each
        failures = [f for f in pool.map(kill_and_resume, KILL_POINTS) if f]
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------- damaged files (in process)

def _recipe(root: Path, tiny_recipe, **active) -> Path:
    path = root / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(root / "unused", train={"steps": 20, "reinit": False},
                                               active={"rounds": 3, **active})))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_recipe):
    """(recipe, the uninterrupted run, a run cut right after round 1 committed)."""
    root = tmp_path_factory.mktemp("runs")
    recipe = _recipe(root, tiny_recipe)
    full = loop.run(load_recipe(recipe, [f"output_dir={root / 'full'}"]), progress=False)
    with faults.active("round.end=crash@2"), pytest.raises(faults.SimulatedCrash):
        loop.run(load_recipe(recipe, [f"output_dir={root / 'cut'}"]), progress=False)
    assert len(read_metrics(root / "cut")) == 2
    return recipe, full, root / "cut"


@pytest.fixture
def cut(runs, tmp_path) -> Path:
    copy = tmp_path / "cut"
    shutil.copytree(runs[2], copy)
    return copy


def resume(run: Path, *overrides: str) -> int:
    return main(["run", "--resume", str(run), *overrides, "--no-progress"])


def assert_repaired(run: Path, full: Path, capsys, *notes: str) -> None:
    assert resume(run) == 0
    out = capsys.readouterr()
    assert "error" not in out.err
    assert pool_of(run) == pool_of(full)
    assert accs(run) == accs(full)
    for note in notes:
        assert note in out.out, out.out


def assert_refused(run: Path, capsys, *fragments: str, args: tuple = ()) -> None:
    before = snapshot(run)
    capsys.readouterr()
    assert main(["run", "--resume", str(run), *args, "--no-progress"]) == 2
    one_error_line(capsys.readouterr().err, *fragments)
    assert snapshot(run) == before


def test_the_cut_run_resumes_to_the_uninterrupted_one(runs, cut, capsys):
    assert_repaired(cut, runs[1], capsys)


@pytest.mark.parametrize("damage", ["truncated", "missing", "garbage"])
def test_a_damaged_last_checkpoint_makes_its_round_run_again(runs, cut, capsys, damage):
    ckpt = cut / "checkpoints" / "round_01.pt"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif damage == "missing":
        ckpt.unlink()
    else:
        ckpt.write_bytes(os.urandom(3000))
    assert_repaired(cut, runs[1], capsys, "round_01.pt", "round 1 runs again")


def test_a_checkpoint_changed_behind_its_checksum_is_not_loaded(runs, cut, capsys):
    ckpt = cut / "checkpoints" / "round_01.pt"
    state = torch.load(ckpt, weights_only=True)
    key = next(iter(state["model"]))
    state["model"][key] = state["model"][key] + 1
    torch.save(state, ckpt)
    assert_repaired(cut, runs[1], capsys, "checksum mismatch", "round 1 runs again")


def test_both_kept_checkpoints_damaged_reruns_back_to_round_0(runs, cut, capsys):
    for r in (0, 1):
        (cut / "checkpoints" / f"round_{r:02d}.pt").write_bytes(b"")
    assert_repaired(cut, runs[1], capsys, "round 0 runs again")


@pytest.mark.parametrize("damage", ["missing", "truncated", "label changed", "label changed, checksum redone",
                                    "a bought label dropped"])
def test_a_damaged_pool_json_is_rebuilt_from_the_selections(runs, cut, capsys, damage):
    from ssal import files

    pool = cut / "pool.json"
    data = json.loads(pool.read_text())
    if damage == "missing":
        pool.unlink()
    elif damage == "truncated":
        pool.write_text(pool.read_text()[:40])
    elif damage == "label changed":
        data["labeled"][3][1] = (data["labeled"][3][1] + 1) % 10
        pool.write_text(json.dumps(data))
    elif damage == "label changed, checksum redone":
        data["labeled"][3][1] = (data["labeled"][3][1] + 1) % 10
        pool.write_text(json.dumps(files.seal(data)))
    else:
        data["labeled"].pop(25)
        pool.write_text(json.dumps(files.seal(data)))
    assert_repaired(cut, runs[1], capsys, "pool.json", "rebuilt")


def test_a_pool_json_that_the_selections_cannot_rebuild_is_refused(cut, capsys):
    (cut / "pool.json").unlink()
    (cut / "rounds" / "r00" / "selected.json").unlink()
    assert_refused(cut, capsys, "pool.json", "missing", "restore pool.json")


def test_an_altered_selection_cannot_pass_for_the_bought_labels(cut, capsys):
    (cut / "pool.json").unlink()
    sel = json.loads((cut / "rounds" / "r00" / "selected.json").read_text())
    sel["indices"][0] = next(i for i in range(400) if i not in sel["indices"])
    (cut / "rounds" / "r00" / "selected.json").write_text(json.dumps(sel))
    assert_refused(cut, capsys, "pool.json", "do not rebuild")


def test_garbage_after_the_last_commit_is_dropped(runs, cut, capsys):
    with open(cut / "metrics.jsonl", "ab") as f:
        f.write(b'{"round": 2, "n_lab\x00\xff\xfe')
    assert_repaired(cut, runs[1], capsys)


@pytest.mark.parametrize("garbage", [b"garbage\n", b"\xff\xfe\x00\x01\n", b'{"round": 7}\n', b"[1, 2]\n"])
def test_a_damaged_committed_line_is_refused(cut, capsys, garbage):
    lines = (cut / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (cut / "metrics.jsonl").write_bytes(lines[0] + garbage + b"".join(lines[1:]))
    assert_refused(cut, capsys, "metrics.jsonl line 2", "delete that line")


@pytest.mark.parametrize("edit, key", [
    (lambda text: text.replace("pool_size: 400", "pool_size: 300"), "data.pool_size"),
    (lambda text: text.replace("seed: 0", "seed: 5", 1), "seed"),
    (lambda text: text.replace("steps: 20", "steps: 25"), "train.steps"),
])
def test_an_edited_recipe_yaml_is_refused_naming_the_key(cut, capsys, edit, key):
    path = cut / "recipe.yaml"
    path.write_text(edit(path.read_text()))
    assert_refused(cut, capsys, key, "undo the change")


def test_a_recipe_yaml_cut_at_a_line_is_refused(cut, capsys):
    path = cut / "recipe.yaml"
    text = path.read_text()
    path.write_text(text[: text.index("\ntrain:")])  # what is left is valid YAML; the rest would be defaults
    assert_refused(cut, capsys, "recipe.yaml", "rewrites it from run.json")


def test_a_recipe_yaml_cut_mid_line_is_refused(cut, capsys):
    path = cut / "recipe.yaml"
    text = path.read_text()
    path.write_text(text[: text.index("\ndata:")] + "\ndata: {dataset: dig")
    assert_refused(cut, capsys, "recipe.yaml", "not valid YAML")


def test_a_missing_recipe_yaml_is_written_again_from_run_json(runs, cut, capsys):
    (cut / "recipe.yaml").unlink()
    assert_repaired(cut, runs[1], capsys, "recipe.yaml was missing")
    assert load_recipe(cut / "recipe.yaml").train.steps == 20


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_a_damaged_run_json_is_refused(cut, capsys, damage):
    if damage == "missing":
        (cut / "run.json").unlink()
        assert_refused(cut, capsys, "has no run.json", "restore run.json from a backup")
    else:
        data = json.loads((cut / "run.json").read_text())
        data["recipe"]["seed"] = 3
        (cut / "run.json").write_text(json.dumps(data))
        assert_refused(cut, capsys, "run.json", "checksum mismatch")


def test_resume_refuses_other_data_and_accepts_moved_data(tmp_path, fmnist_root, tiny_recipe, capsys):
    data = tmp_path / "data"
    shutil.copytree(fmnist_root, data)
    recipe = tmp_path / "f.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path / "run", data={"dataset": "fashion_mnist", "root": str(data),
                                                                        "pool_size": 150, "test_size": 50},
                                                 train={"steps": 3}, active={"rounds": 1})))
    with faults.active("round.end=crash@1"), pytest.raises(faults.SimulatedCrash):
        loop.run(load_recipe(recipe), progress=False)
    run = tmp_path / "run"
    # the data moved: data.root may change on resume, and the pool is the same
    moved = tmp_path / "moved"
    data.rename(moved)
    assert_refused(run, capsys, "data.root", str(data))  # the old root is gone: one line
    # other labels in the same files: the stored indices would mean other things
    from conftest import write_idx

    labels = (np.arange(200) + 3) % 10
    saved = (moved / "train-labels-idx1-ubyte.gz").read_bytes()
    write_idx(moved / "train-labels-idx1-ubyte", labels.astype(np.uint8))
    assert_refused(run, capsys, "data of", "changed", args=(f"data.root={moved}",))
    (moved / "train-labels-idx1-ubyte.gz").write_bytes(saved)
    assert resume(run, f"data.root={moved}") == 0
    assert len(read_metrics(run)) == 2
    assert load_recipe(run / "recipe.yaml").data.root == str(moved)


def test_resume_refuses_fewer_rounds_and_unsafe_overrides(cut, capsys):
    assert_refused(cut, capsys, "active.rounds", "only grow", args=("active.rounds=1",))
    assert_refused(cut, capsys, "train.lr", args=("train.lr=0.1",))
    assert_refused(cut, capsys, "unknown recipe key", args=("train.lrr=0.1",))


def test_stale_temporary_files_are_removed_at_the_next_start(runs, cut, capsys):
    (cut / ".pool.json.99999.abcd.tmp").write_text("half")
    (cut / "checkpoints" / ".round_02.pt.99999.x1.tmp").write_bytes(b"\x00" * 10)
    assert_repaired(cut, runs[1], capsys)
    assert tmp_files(cut) == []


# ----------------------------------------------------------------------------- more rounds on resume

@pytest.mark.slow  # 14 s (entropy), 17 s (tod)
@pytest.mark.parametrize("strategy, method", [("entropy", "supervised"), ("tod", "tod")])
def test_growing_rounds_on_resume_buys_the_missing_batch_first(tmp_path, tiny_recipe, capsys, strategy, method):
    recipe = _recipe(tmp_path, tiny_recipe, strategy=strategy)
    over = [f"train.method={method}", f"active.strategy={strategy}"]
    full = loop.run(load_recipe(recipe, [*over, f"output_dir={tmp_path / 'full'}"]), progress=False)
    short = loop.run(load_recipe(recipe, [*over, "active.rounds=1", f"output_dir={tmp_path / 'short'}"]),
                     progress=False)
    assert [m["n_labeled"] for m in read_metrics(short)] == [20, 30]
    assert resume(short, "active.rounds=3") == 0
    assert "selects its batch first" in capsys.readouterr().out
    assert [m["n_labeled"] for m in read_metrics(short)] == [20, 30, 40, 50]
    assert pool_of(short) == pool_of(full)
    assert accs(short) == accs(full)
    assert load_recipe(short / "recipe.yaml").active.rounds == 3


# ----------------------------------------------------------------------------- the lock

def _holder(run: Path) -> subprocess.Popen:
    """A process that holds ``run``'s lock the way ssal does, until killed."""
    code = ("import sys, time\nfrom ssal.run.store import RunDir\nRunDir(sys.argv[1]).lock()\n"
            "print('locked', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow  # a second process holds the lock
def test_a_second_process_on_a_locked_run_gets_one_line_naming_the_holder(runs, cut, capsys):
    holder = _holder(cut)
    try:
        before = snapshot(cut)
        for argv in (["run", "--resume", str(cut)], ["run", str(runs[0]), f"output_dir={cut}", "--force"]):
            capsys.readouterr()
            assert main([*argv, "--no-progress"]) == 2
            one_error_line(capsys.readouterr().err, "in use by another ssal process", f"pid {holder.pid}")
            assert snapshot(cut) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder died with kill -9 semantics: its lock is gone, its name is reported and taken over
    assert resume(cut) == 0
    out = capsys.readouterr().out
    assert f"took over the lock of pid {holder.pid}" in out
    assert not (cut / ".lock").exists()  # released at the end


@pytest.mark.slow
def test_two_runs_at_once_on_one_output_dir(runs, tmp_path):
    recipe = runs[0]
    out = tmp_path / "both"
    procs = [subprocess.Popen([SSAL, "run", str(recipe), f"output_dir={out}", "--no-progress"], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(e for code, e in results if code == 2)
    one_error_line(err)
    assert "in use by another ssal process" in err or "already holds a run" in err
    assert [m["round"] for m in read_metrics(out)] == [0, 1, 2, 3]  # one run's rounds, not interleaved


# ----------------------------------------------------------------------------- --force

def test_force_never_deletes_a_folder_that_is_not_a_run(runs, tmp_path, capsys, monkeypatch):
    docs = tmp_path / "documents"
    docs.mkdir()
    (docs / "thesis.tex").write_text("years of work")
    before = snapshot(tmp_path)
    assert main(["run", str(runs[0]), f"output_dir={docs}", "--force", "--no-progress"]) == 2
    one_error_line(capsys.readouterr().err, "not an ssal run", "never deletes")
    monkeypatch.chdir(docs)
    assert main(["run", str(runs[0]), "output_dir=.", "--force", "--no-progress"]) == 2
    one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


def test_force_refuses_the_folder_it_runs_in(runs, cut, capsys, monkeypatch):
    monkeypatch.chdir(cut)
    before = snapshot(cut)
    assert main(["run", str(runs[0]), "output_dir=.", "--force", "--no-progress"]) == 2
    one_error_line(capsys.readouterr().err, "contains the current folder")
    assert snapshot(cut) == before


def test_force_replaces_a_run(runs, cut, capsys):
    (cut / "notes.txt").write_text("inside a run: goes with it")
    assert main(["run", str(runs[0]), f"output_dir={cut}", "--force", "--no-progress"]) == 0
    assert not (cut / "notes.txt").exists()
    assert pool_of(cut) == pool_of(runs[1])


# ----------------------------------------------------------------------------- a full disk

def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_gives_one_line_and_a_resumable_run(runs, tmp_path, capsys):
    recipe, full, _ = runs
    disk = tmp_path / "disk"
    out = disk / "run"
    if _mount_tmpfs(disk, "300k"):  # a real full disk: room for round 0, not for every checkpoint
        try:
            code = main(["run", str(recipe), f"output_dir={out}", "--no-progress"])
            err = capsys.readouterr().err
            assert code == 2
            one_error_line(err, "no space left on device", f"ssal run --resume {out}")
            assert tmp_files(out) == []
            for path in out.rglob("*.json"):  # what is there is whole
                json.loads(path.read_text())
            subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
            assert resume(out) == 0
            assert pool_of(out) == pool_of(full) and accs(out) == accs(full)
        finally:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    else:  # no root mounts here: the same through a write that fails
        with faults.active("write:round_*.pt=enospc@3"):
            code = main(["run", str(recipe), f"output_dir={out}", "--no-progress"])
        assert code == 2
        one_error_line(capsys.readouterr().err, "no space left on device", f"ssal run --resume {out}")
        assert tmp_files(out) == []
        assert resume(out) == 0
        assert pool_of(out) == pool_of(full) and accs(out) == accs(full)


def test_a_write_error_on_the_commit_leaves_the_round_uncommitted(runs, tmp_path, capsys):
    recipe, full, _ = runs
    out = tmp_path / "eio"
    with faults.active("write:metrics.jsonl=eio@4"):  # round 1's commit
        assert main(["run", str(recipe), f"output_dir={out}", "--no-progress"]) == 2
    one_error_line(capsys.readouterr().err, "metrics.jsonl", "input/output error")
    assert len(read_metrics(out)) == 1
    assert resume(out) == 0
    assert pool_of(out) == pool_of(full) and accs(out) == accs(full)


# ----------------------------------------------------------------------------- interrupts, divergence

@pytest.mark.slow
@pytest.mark.parametrize("sig", ["sigint", "sigterm"])
def test_an_interrupt_ends_with_one_line_saying_how_to_continue(runs, tmp_path, sig):
    recipe, full, _ = runs
    out = tmp_path / "int"
    # the signal arrives at round 1's 5th optimizer step (round 0 trains 20), from outside the Python code
    env = {**_env(), faults.ENV: f"train.step={sig}@25"}
    proc = subprocess.run([SSAL, "run", str(recipe), f"output_dir={out}", "--no-progress"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr
    lines = proc.stderr.strip("\n").splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr  # one line, no "error": a person stopped it
    assert lines[0] == f"ssal: interrupted; round 0 committed and kept: continue with 'ssal run --resume {out}'"
    assert not (out / ".lock").exists()  # released at the end
    assert len(read_metrics(out)) == 1
    assert ssal("run", "--resume", str(out)).returncode == 0
    assert pool_of(out) == pool_of(full) and accs(out) == accs(full)


def test_a_diverging_loss_stops_the_run_with_one_line(runs, tmp_path, capsys):
    recipe, _, _ = runs
    out = tmp_path / "nan"
    assert main(["run", str(recipe), f"output_dir={out}", "train.lr=1e30", "--no-progress"]) == 2
    one_error_line(capsys.readouterr().err, "not finite", "since step", "train.lr")
    text = (out / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    for line in text.splitlines():
        json.loads(line)
