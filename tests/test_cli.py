"""The command line: user errors are one line + exit 2 + nothing on disk; run/--force/--resume; list."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ssal.cli import main
from ssal.data import DATASETS
from ssal.pretrain import PRETRAINERS
from ssal.select import INITIAL_STRATEGIES, STRATEGIES
from ssal.semi import OBJECTIVES

SSAL = str(Path(sys.executable).with_name("ssal"))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` with its content hash and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def assert_one_error_line(err: str, *fragments: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("ssal: error: "), lines[0]
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    return lines[0]


# ----------------------------------------------------------------------------- user errors

def _malformed(tmp_path: Path, recipe: Path) -> list[str]:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"output_dir: {tmp_path / 'runs' / 'bad'}\ndata:\n  dataset: [digits\n  pool_size: 10\n")
    return ["run", str(bad)]


USER_ERRORS = {
    "strategy typo": (lambda t, r: ["run", str(r), "active.strategy=entropyy"], ["'entropyy'", "'entropy'"]),
    "unknown key": (lambda t, r: ["run", str(r), "active.budgett=5"], ["active.budgett", "'active.budget'"]),
    "wrong type": (lambda t, r: ["run", str(r), "active.budget=abc"], ["active.budget", "abc"]),
    "budget > pool_size": (lambda t, r: ["run", str(r), "data.pool_size=100", "active.budget=50"],
                           ["data.pool_size", "120"]),
    "budget > data set": (
        lambda t, r: ["run", str(r), "data.pool_size=null", "active.budget=1000", "active.subset=null"],
        ["2020", "1347"]),
    "pool_size > data set": (lambda t, r: ["run", str(r), "data.pool_size=100000"], ["data.pool_size"]),
    "missing data.root": (lambda t, r: ["run", str(r), "data.dataset=fashion_mnist", "data.root=/nonexistent"],
                          ["data.root", "/nonexistent"]),
    "malformed yaml": (_malformed, ["not valid YAML", "line"]),
    "missing recipe": (lambda t, r: ["run", str(t / "nope.yaml")], ["nope.yaml", "not found"]),
    "override without =": (lambda t, r: ["run", str(r), "active.strategy"], ["key=value"]),
    "model typo": (lambda t, r: ["run", str(r), "model.backbone=cnn_smal"], ["'cnn_small'"]),
    "impossible value": (lambda t, r: ["run", str(r), "train.ema=1"], ["train.ema"]),
    "no recipe": (lambda t, r: ["run"], ["--resume"]),
    "resume plus recipe": (lambda t, r: ["run", str(r), "--resume", str(t / "runs" / "tiny")], ["--resume"]),
    "resume not a run": (lambda t, r: ["run", "--resume", str(t)], ["not a run directory", "run.json"]),
    "resume missing dir": (lambda t, r: ["run", "--resume", str(t / "runs" / "tiny")], ["does not exist"]),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_error_is_one_line_exit_2_and_changes_nothing(case, write_recipe, tmp_path, capsys):
    recipe = write_recipe("tiny")
    out_dir = tmp_path / "runs" / "tiny"
    make_args, fragments = USER_ERRORS[case]
    args = make_args(tmp_path, recipe)
    before = snapshot(tmp_path)
    capsys.readouterr()

    assert main([*args, "--no-progress"]) == 2

    err = capsys.readouterr().err
    assert_one_error_line(err, *fragments)
    assert not out_dir.exists()
    assert not (tmp_path / "runs").exists()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv, fragment", [
    ([], "command"),  # no subcommand
    (["frobnicate"], "frobnicate"),
    (["run", "--bogus"], "--bogus"),
    (["list", "extra"], "extra"),
])
def test_argparse_misuse_is_one_line_exit_2(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert_one_error_line(capsys.readouterr().err, fragment, "--help")
    assert list(tmp_path.iterdir()) == []


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "--force" in out and "overrides" in out


# ----------------------------------------------------------------------------- real processes

def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([SSAL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # the console script in a process
def test_subprocess_user_error_has_no_traceback(write_recipe, tmp_path):
    recipe = write_recipe("tiny")
    before = snapshot(tmp_path)
    proc = _run(["run", str(recipe), "active.strategy=entropyy", "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "'entropy'")
    assert proc.stdout == ""
    assert snapshot(tmp_path) == before


@pytest.mark.slow  # 11 s of process starts; the in-process argparse tests cover the messages
def test_subprocess_argparse_misuse(tmp_path):
    proc = _run([], cwd=tmp_path)
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr)
    proc = _run(["run", "--resume", str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "holds no run")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # 9 s of process start
def test_subprocess_list_prints_every_name(tmp_path):
    proc = _run(["list"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in [*DATASETS.names(), *OBJECTIVES.names(), *STRATEGIES.names()]:
        assert re.search(rf"\b{re.escape(name)}\b", proc.stdout), name


# ----------------------------------------------------------------------------- list

def test_list_prints_every_registered_name(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    names = {*DATASETS.names(), *OBJECTIVES.names(), *STRATEGIES.names(), *INITIAL_STRATEGIES.names(),
             *PRETRAINERS.names()}
    assert {"digits", "fashion_mnist", "supervised", "random", "entropy", "margin", "class_balanced"} <= names
    for name in names:
        assert re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", out), f"{name} missing from:\n{out}"
    for key in ("data.dataset", "train.method", "active.strategy", "active.stochastic", "active.ceal_threshold"):
        assert key in out
    for mode in ("power", "softmax", "softrank"):
        assert re.search(rf"\b{mode}\b", out), mode


# ----------------------------------------------------------------------------- existing run dir

def test_existing_run_dir_needs_force(write_recipe, tmp_path, capsys):
    recipe = write_recipe("tiny", train={"steps": 5}, active={"rounds": 0})
    out_dir = tmp_path / "runs" / "tiny"
    assert main(["run", str(recipe), "--no-progress"]) == 0
    first_pool = json.loads((out_dir / "pool.json").read_text())
    assert len((out_dir / "metrics.jsonl").read_text().splitlines()) == 1
    (out_dir / "stale.txt").write_text("from before")
    before = snapshot(tmp_path)
    capsys.readouterr()

    # without --force: exit 2, one line, nothing touched
    assert main(["run", str(recipe), "--no-progress"]) == 2
    assert_one_error_line(capsys.readouterr().err, str(out_dir), "--force", "--resume")
    assert snapshot(tmp_path) == before

    # with --force: a fresh run replaces the old one
    assert main(["run", str(recipe), "--force", "--no-progress"]) == 0
    assert not (out_dir / "stale.txt").exists()
    assert len((out_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert json.loads((out_dir / "pool.json").read_text()) == first_pool
    assert (out_dir / "recipe.yaml").is_file() and (out_dir / "curve.png").is_file()


def test_output_dir_that_is_a_file_is_a_user_error(write_recipe, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    recipe = write_recipe("tiny", out=target)
    before = snapshot(tmp_path)
    assert main(["run", str(recipe), "--no-progress"]) == 2
    assert_one_error_line(capsys.readouterr().err, "output_dir")
    assert snapshot(tmp_path) == before


def test_empty_existing_output_dir_is_used(write_recipe, tmp_path):
    out_dir = tmp_path / "empty_out"
    out_dir.mkdir()
    recipe = write_recipe("tiny", out=out_dir, train={"steps": 3}, active={"rounds": 0})
    assert main(["run", str(recipe), "--no-progress"]) == 0
    assert (out_dir / "metrics.jsonl").read_text().count("\n") == 1


def test_overrides_may_follow_options(write_recipe, tmp_path, capsys):
    recipe = write_recipe("late", train={"steps": 5}, active={"rounds": 0})
    out_dir = tmp_path / "runs" / "late"
    assert main(["run", str(recipe), "--no-progress", "train.steps=3", "--force", "seed=7"]) == 0
    saved = (out_dir / "recipe.yaml").read_text()
    assert "steps: 3" in saved and "seed: 7" in saved
    with pytest.raises(SystemExit) as e:  # a stray word after an option is still a usage error
        main(["run", str(recipe), "--force", "stray"])
    assert e.value.code == 2
    assert_one_error_line(capsys.readouterr().err, "stray")
