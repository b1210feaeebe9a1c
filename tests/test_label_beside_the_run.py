"""People label while the run works: the first batch is asked before pretraining (when its strategy reads
no features), answers are stored while the run holds its lock, and the run takes a batch that was
completed meanwhile without another command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ssal.experiment import loop, sizing
from ssal.label.answers import import_labels
from ssal.recipe import load_recipe
from ssal.run.store import RunDir
from tests.test_human_loop import (  # noqa: F401  (one_thread: autouse, in-process training on one thread)
    CLASSES,
    colour_pool,
    fill_queries,
    folder_recipe,
    one_thread,
    selections,
)


@pytest.fixture
def folder(colour_pool):  # noqa: F811  (the session's folder of 300 coloured images, and their truth)
    return colour_pool


PRETRAIN = {"method": "simclr", "epochs": 1, "batch_size": 16, "view_size": 16, "eval_every": 0}


def _run(path: Path) -> Path:
    return loop.run(load_recipe(path), progress=False)


def _watch_pretraining(monkeypatch, during) -> list[dict]:
    """Call ``during(run_dir)`` when the run starts pretraining; returns what it saw then."""
    seen, real = [], loop.pretrained_encoder

    def spy(cfg, data, engine, **kw):
        run = Path(cfg.output_dir)
        seen.append({"queries": (run / "rounds" / "initial" / "queries.csv").is_file(),
                     "holder": RunDir(run).holder()})
        during(run)
        return real(cfg, data, engine, **kw)

    monkeypatch.setattr(loop, "pretrained_encoder", spy)
    return seen


def test_the_first_batch_is_asked_before_pretraining_and_taken_after_it_without_a_command(
        folder, tmp_path, monkeypatch, capsys):
    root, truth = folder

    def answer_everything(run: Path) -> None:  # a person labels the whole batch while pretraining runs
        import_labels(run, fill_queries(run / "rounds" / "initial", truth, tmp_path / "first.csv"))

    seen = _watch_pretraining(monkeypatch, answer_everything)
    run = _run(folder_recipe(tmp_path, root, pretrain=PRETRAIN, active={"initial_strategy": "random"}))
    out = capsys.readouterr().out
    assert seen[0]["queries"] and seen[0]["holder"] is not None  # asked first, while the run held its lock
    assert "can be labeled now, while pretraining runs" in out and f"ssal label serve {run} --continue" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0]  # round 0 trained on the answers given during pretraining
    pool = json.loads((run / "pool.json").read_text())
    first = selections(run)["initial"]
    assert [i for i, _, r in pool["labeled"] if r == 0] == first["indices"]
    assert {p: CLASSES[y] for p, (_, y, _) in zip(pool["paths"], pool["labeled"], strict=True)} == \
        {p: truth[p] for p in pool["paths"]}
    assert (run / "rounds" / "r00" / "queries.csv").is_file()  # and it asks for the next batch


def test_a_partly_answered_first_batch_waits_and_a_strategy_that_reads_features_waits_for_pretraining(
        folder, tmp_path, monkeypatch, capsys):
    root, truth = folder
    seen = _watch_pretraining(monkeypatch, lambda run: None)
    run = _run(folder_recipe(tmp_path, root, "random", pretrain=PRETRAIN, active={"initial_strategy": "random"}))
    assert seen[-1]["queries"]
    assert not (run / "metrics.jsonl").read_text()  # nothing answered: no round trained
    assert "images await labels" in capsys.readouterr().out
    run = _run(folder_recipe(tmp_path, root, "typiclust", pretrain=PRETRAIN,
                             active={"initial_strategy": "typiclust"}))
    assert not seen[-1]["queries"]  # TypiClust picks from the pretrained features: after pretraining
    assert (run / "rounds" / "initial" / "queries.csv").is_file()


def test_answers_given_during_pretraining_or_after_it_give_the_same_run(folder, tmp_path, monkeypatch):
    """The same answers give the same selections and labels whenever they arrive."""
    root, truth = folder
    when = {"during": True}

    def answer(run: Path) -> None:
        if when["during"]:
            import_labels(run, fill_queries(run / "rounds" / "initial", truth, tmp_path / f"{run.name}.csv"))

    _watch_pretraining(monkeypatch, answer)
    during = _run(folder_recipe(tmp_path, root, "during", pretrain=PRETRAIN, active={"initial_strategy": "random"}))
    when["during"] = False
    after = _run(folder_recipe(tmp_path, root, "after", pretrain=PRETRAIN, active={"initial_strategy": "random"}))
    assert not (after / "metrics.jsonl").read_text()
    import_labels(after, fill_queries(after / "rounds" / "initial", truth, tmp_path / "after.csv"))
    loop.run(load_recipe(after / "recipe.yaml"), resume=True, progress=False)
    assert {k: v["indices"] for k, v in selections(during).items()} == \
        {k: v["indices"] for k, v in selections(after).items()}
    assert json.loads((during / "pool.json").read_text())["labeled"] == \
        json.loads((after / "pool.json").read_text())["labeled"]


# ----------------------------------------------------------------------------- what runs, for the page

def test_a_human_run_tells_each_stage_and_leaves_no_progress_file(folder, tmp_path, monkeypatch):
    from ssal.run.store import RunDir as Store

    root, truth = folder
    told, real = [], Store.write_progress

    def spy(self, state):
        told.append(dict(state))
        real(self, state)
        assert json.loads((self.path / "progress.json").read_text()) == state

    monkeypatch.setattr(Store, "write_progress", spy)
    _watch_pretraining(monkeypatch, lambda run: import_labels(
        run, fill_queries(run / "rounds" / "initial", truth, tmp_path / "first.csv")))
    run = _run(folder_recipe(tmp_path, root, pretrain=PRETRAIN, active={"initial_strategy": "random"}))
    stages = [t["stage"] for t in told]
    assert stages[0] == "pretrain simclr" and any(s.startswith("round 0 train") for s in stages)
    for stage in set(stages):
        mine = [t for t in told if t["stage"] == stage]
        assert mine[0]["done"] == 0 and mine[-1]["done"] == mine[-1]["total"]  # its start and its end
        assert [t["done"] for t in mine] == sorted(t["done"] for t in mine)
    # the whole wait: once round 0's training ends, only the forward passes over the pool are left, at its pace
    end = [t for t in told if t["stage"].startswith("round 0 train")][-1]
    work = sizing.work(OmegaConf.to_container(load_recipe(run / "recipe.yaml")), len(truth))
    assert end["next_batch_s"] == pytest.approx(end["elapsed_s"] * work["after"] / work["train"], abs=0.11)
    assert not (run / "progress.json").exists()  # gone when the run stops


def test_progress_is_told_at_most_once_a_second_with_the_remaining_time_of_the_pace_so_far(monkeypatch):
    from ssal.engine import runtime

    clock = iter([0.0, 0.3, 0.6, 1.2, 1.5, 2.0])  # the start, then one per step
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: next(clock))
    told = []
    advance = runtime._progress_teller(told.append, "round 0 train", 5)
    for _ in range(5):
        advance()
    assert [(t["done"], t["elapsed_s"], t["remaining_s"]) for t in told] == [
        (0, 0.0, None),  # at the start
        (3, 1.2, 0.8),  # 1.2 s for 3 steps: 0.4 s each, 2 to go (0.3 and 0.6 came within the second)
        (5, 2.0, 0.0),  # the end is always told
    ]


def test_what_runs_in_words():
    from ssal.run.readers import doing, duration

    assert [duration(s) for s in (0.2, 45, 89.4, 90, 299, 3600, 5400, 7260)] == \
        ["1 s", "45 s", "89 s", "2 min", "5 min", "60 min", "1 h 30 min", "2 h 1 min"]
    assert doing({"stage": "pretrain simclr", "done": 12, "total": 40, "remaining_s": 1080}) == \
        "pretrain simclr: 30 %, about 18 min left"
    assert doing({"stage": "round 0 train", "done": 0, "total": 0, "remaining_s": None}) == "round 0 train: starting"
    assert doing({"stage": "round 1 train", "done": 5, "total": 20, "remaining_s": 30, "next_batch_s": 150}) == \
        "round 1 train: 25 %, about 30 s left; the next batch in about 2 min"


# ----------------------------------------------------------------------------- one command: the page runs the loop

def _get(port: int, path: str) -> dict:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _post(page, path: str, body: dict) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", page.port, timeout=60)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json", "X-SSAL-Token": page.token})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def _until(what: str, check, timeout: float = 120.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow  # a server that starts a run, each in its own process
def test_ssal_label_serve_of_a_recipe_runs_the_loop_from_the_page(folder, tmp_path):
    from tests.test_hostile_page import Page

    root, truth = folder
    recipe = folder_recipe(tmp_path, root, "served", pretrain=PRETRAIN, active={"initial_strategy": "random"})
    run = tmp_path / "runs" / "served"
    page = Page(recipe).ready()  # 'ssal label serve RECIPE': no run yet, so it starts one
    try:
        state = _until("the first batch", lambda: (s := _get(page.port, "/api/batch"))["round"] == -1 and s)
        assert (run / "run.json").is_file()
        for item in state["items"]:  # labeled while the run may still pretrain: stored all the same
            status, text = _post(page, "/api/answer", {"round": -1, "index": item["index"],
                                                       "label": truth[item["path"]]})
            assert status == 200, text
        clicks = []

        def next_batch():  # the run takes them after pretraining; if it ended first, one click goes on
            s = _get(page.port, "/api/batch")
            if s["round"] == -1 and not s["busy"]:
                clicks.append(_post(page, "/api/continue", {}))
            return s if s["round"] == 0 else None

        state = _until("round 0's batch", next_batch, timeout=240)
        assert all(status == 200 for status, _ in clicks) and len(clicks) <= 1, clicks
        assert state["round"] == 0 and all(it["suggestion"] in CLASSES for it in state["items"])
        assert state["accuracy"].startswith("round 0: ")
        pool = json.loads((run / "pool.json").read_text())
        assert {p: CLASSES[y] for p, (_, y, _) in zip(pool["paths"], pool["labeled"], strict=True)} == \
            {p: truth[p] for p in pool["paths"]}
    finally:
        assert page.stop() == 0


def test_serving_a_recipe_that_people_do_not_answer_is_one_line_and_starts_nothing(write_recipe, capsys):
    from ssal.cli import main

    path = write_recipe("simulated")
    assert main(["label", "serve", str(path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "active.oracle: simulated" in err and "active.oracle: human" in err
    assert not (path.parent / "runs" / "simulated").exists()


def test_serving_the_recipe_of_a_stopped_run_goes_on_with_it(folder, tmp_path):
    """Stopped during pretraining (the page closed), its first batch half answered: serving its recipe
    again restarts the run, which pretrains while the rest is labeled."""
    from ssal.label.serve import open_session

    root, truth = folder
    recipe = folder_recipe(tmp_path, root, "again", active={"initial_strategy": "random"})
    run = _run(recipe)  # asks its first batch, then stops awaiting it (as after Ctrl-C on the page)
    assert (run / "rounds" / "initial" / "queries.csv").is_file()
    session = open_session(run, False, recipe)
    try:
        assert session.job is not None and session.allow_continue
        assert session.state()["busy"] == "the run is working"
    finally:
        session.close()


@pytest.mark.slow  # a run killed in a real process
def test_a_run_killed_while_pretraining_keeps_its_first_batch_and_resumes_to_the_same_run(folder, tmp_path,
                                                                                            monkeypatch):
    """kill -9 inside pretraining, after the first batch was asked: the batch and every answer stored are
    kept, and --resume (which pretrains again, then takes the answers) reaches the run that answers given
    during an uninterrupted pretraining reach."""
    import os
    import signal
    import subprocess
    import sys

    from ssal import faults

    root, truth = folder
    killed = folder_recipe(tmp_path, root, "killed", pretrain=PRETRAIN, active={"initial_strategy": "random"})
    env = {**os.environ, "OMP_NUM_THREADS": "1", faults.ENV: "pretrain.step=kill@3"}
    proc = subprocess.run([sys.executable, "-m", "ssal", "run", str(killed), "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run = tmp_path / "runs" / "killed"
    assert (run / "rounds" / "initial" / "queries.csv").is_file() and not (run / "metrics.jsonl").read_text()
    import_labels(run, fill_queries(run / "rounds" / "initial", truth, tmp_path / "killed.csv"))
    loop.run(load_recipe(run / "recipe.yaml"), resume=True, progress=False)

    _watch_pretraining(monkeypatch, lambda r: import_labels(
        r, fill_queries(r / "rounds" / "initial", truth, tmp_path / "whole.csv")))
    whole = _run(folder_recipe(tmp_path, root, "whole", pretrain=PRETRAIN, active={"initial_strategy": "random"}))
    assert {k: v["indices"] for k, v in selections(run).items()} == \
        {k: v["indices"] for k, v in selections(whole).items()}
    assert json.loads((run / "pool.json").read_text())["labeled"] == \
        json.loads((whole / "pool.json").read_text())["labeled"]
