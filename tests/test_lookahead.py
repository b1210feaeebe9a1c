"""active.lookahead: each acquisition also chooses L images ahead, which people answer while the next round
trains; the next acquisition takes the answered ones first and picks only the rest with its new model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssal.experiment import loop
from ssal.label.answers import import_labels
from ssal.label.serve import Problem, Session
from ssal.recipe import load_recipe
from ssal.run.readers import read_metrics
from ssal.run.store import RunDir
from tests.test_human_loop import (  # noqa: F401  (one_thread: autouse, in-process training on one thread)
    BUDGET,
    CLASSES,
    colour_pool,
    fill_queries,
    folder_recipe,
    one_thread,
    selections,
)


def _records(run: Path) -> list[dict]:
    return [json.loads((run / "rounds" / name / "selected.json").read_text())
            for name in ["initial", *sorted(p.name for p in (run / "rounds").glob("r*"))]]


def test_a_simulated_person_who_keeps_pace_labels_each_batch_chosen_one_round_earlier(write_recipe):
    """lookahead = budget and every image chosen ahead answered: acquisition r is exactly what r - 1 chose
    ahead (the stale worst case), with the labels per round of the strict loop."""
    run = loop.run(load_recipe(write_recipe("ahead", active={"rounds": 3, "lookahead": 10})), progress=False)
    records = _records(run)
    assert [len(rec["indices"]) for rec in records] == [20, 10, 10, 10]
    assert all(len(rec["ahead"]) == 10 for rec in records)
    for before, after in zip(records, records[1:], strict=False):
        assert after["indices"] == before["ahead"] and after["from_ahead"] == 10
        assert after["scores"] is None or after["scores"] == [None] * 10
    for rec in records:  # what is chosen ahead is never chosen twice nor labeled
        assert not set(rec["ahead"]) & set(rec["indices"])
    assert [m["n_labeled"] for m in read_metrics(run)] == [20, 30, 40, 50]
    pool = json.loads((run / "pool.json").read_text())
    assert [i for i, _, _ in pool["labeled"]] == [i for rec in records for i in rec["indices"]]


def test_lookahead_zero_is_the_strict_loop(write_recipe, tmp_path):
    strict = loop.run(load_recipe(write_recipe("strict", active={"rounds": 2})), progress=False)
    zero = loop.run(load_recipe(write_recipe("zero", active={"rounds": 2, "lookahead": 0})), progress=False)
    assert _records(strict) == _records(zero) and all("ahead" not in rec for rec in _records(zero))
    assert [m["test_acc"] for m in read_metrics(strict)] == [m["test_acc"] for m in read_metrics(zero)]


def test_a_lookahead_run_resumed_after_its_rounds_grow_equals_the_uninterrupted_one(write_recipe, tmp_path):
    short = write_recipe("short", active={"rounds": 1, "lookahead": 5})
    run = loop.run(load_recipe(short), progress=False)
    loop.run(load_recipe(run / "recipe.yaml", ["active.rounds=2"]), resume=True, progress=False)
    whole = loop.run(load_recipe(write_recipe("whole", active={"rounds": 2, "lookahead": 5})), progress=False)
    assert [{k: v for k, v in rec.items() if k != "paths"} for rec in _records(run)] == \
        [{k: v for k, v in rec.items() if k != "paths"} for rec in _records(whole)]
    assert json.loads((run / "pool.json").read_text()) == json.loads((whole / "pool.json").read_text())


@pytest.fixture
def folder(colour_pool):  # noqa: F811  (the session's folder of coloured images, and their truth)
    return colour_pool


def test_people_answer_images_chosen_ahead_while_the_next_round_trains(folder, tmp_path, monkeypatch):
    """Batch r00 answered, the run takes it and trains round 1; meanwhile the page offers r00's images chosen
    ahead and stores answers to three of them. Acquisition 1 takes exactly those first (answered already),
    picks the rest with round 1's model, and closes what was chosen ahead of it."""
    root, truth = folder
    recipe = folder_recipe(tmp_path, root, "ahead", active={"rounds": 2, "lookahead": 6, "initial_strategy": "random"})
    run = loop.run(load_recipe(recipe), progress=False)
    import_labels(run, fill_queries(run / "rounds" / "initial", truth, tmp_path / "first.csv"))
    loop.run(load_recipe(run / "recipe.yaml"), resume=True, progress=False)  # round 0, then r00 is asked
    import_labels(run, fill_queries(run / "rounds" / "r00", truth, tmp_path / "r00.csv"))
    r00 = json.loads((run / "rounds" / "r00" / "selected.json").read_text())
    ahead = r00["ahead"]
    assert len(ahead) == 6 and len(r00["ahead_paths"]) == 6 and len(r00["ahead_suggestions"]) == 6
    given, real_train = {}, loop.RoundTrainer.train

    def train(self, r, pool, carry, *more):
        if r == 1:  # while round 1 trains, a person on the page answers three images chosen ahead
            page = Session(run)
            state = page.state()
            assert state["ahead"] is True and state["round"] == 0 and [it["index"] for it in state["items"]] == ahead
            for item in state["items"][:3]:
                page.answer({"round": 0, "index": item["index"], "label": truth[item["path"]], "ahead": True})
                given[item["index"]] = CLASSES.index(truth[item["path"]])
            assert page.state()["answers"] == {str(i): CLASSES[y] for i, y in given.items()}
        return real_train(self, r, pool, carry, *more)

    monkeypatch.setattr(loop.RoundTrainer, "train", train)
    loop.run(load_recipe(run / "recipe.yaml"), resume=True, progress=False)  # takes r00, trains round 1, asks r01
    r01 = json.loads((run / "rounds" / "r01" / "selected.json").read_text())
    assert r01["from_ahead"] == 3 and r01["indices"][:3] == ahead[:3]
    assert len(r01["indices"]) == BUDGET and not set(r01["indices"][3:]) & set(ahead)  # 3 + the model's 6
    rd = RunDir(run)
    assert {i: rd.answers_of(1)[i] for i in ahead[:3]} == given  # the batch opens with them answered
    assert rd.read_ahead(0) == (given, True)  # closed: taken by acquisition 1
    page = Session(run)
    state = page.state()
    assert state["round"] == 1 and state["ahead"] is False
    assert {int(i) for i in state["answers"]} == set(ahead[:3])
    with pytest.raises(Problem) as late:  # an answer to r00's ahead images after acquisition 1 took them
        page.answer({"round": 0, "index": ahead[4], "label": "red", "ahead": True})
    assert late.value.status == 409
    # the rest of r01 answered: --resume takes it with the three answered ahead, and the pool says so
    import_labels(run, fill_queries(run / "rounds" / "r01", truth, tmp_path / "r01.csv",
                                    keep=lambda k: k >= 3))
    loop.run(load_recipe(run / "recipe.yaml"), resume=True, progress=False)
    pool = json.loads((run / "pool.json").read_text())
    acquired = {i: (y, r) for i, y, r in pool["labeled"]}
    assert all(acquired[i] == (given[i], 2) for i in ahead[:3])


def test_the_first_batch_is_the_strict_loops_and_what_is_chosen_ahead_of_it_follows_the_same_strategy(write_recipe):
    """A class-balanced first batch stays class-balanced with a lookahead (a balanced draw of 20 is no
    balanced draw of 10 followed by 10 more), and the images chosen ahead of it are balanced too."""
    from collections import Counter

    from ssal.data import load_dataset

    common = {"rounds": 0, "initial": 20, "initial_strategy": "class_balanced"}
    strict = loop.run(load_recipe(write_recipe("bal", active=common)), progress=False)
    ahead = loop.run(load_recipe(write_recipe("bal_ahead", active={**common, "lookahead": 10})), progress=False)
    a, b = _records(strict)[0], _records(ahead)[0]
    assert b["indices"] == a["indices"] and len(b["ahead"]) == 10 and not set(b["ahead"]) & set(a["indices"])
    cfg = load_recipe(ahead / "recipe.yaml")
    targets = load_dataset(cfg.data, seed=cfg.seed).train.targets
    assert Counter(int(targets[i]) for i in b["ahead"]) == {c: 1 for c in range(10)}


def test_a_complete_first_batch_leads_on_to_the_images_chosen_ahead_while_pretraining_runs(folder, tmp_path,
                                                                                           monkeypatch):
    """The first batch, answered in full while the run pretrains (it takes the batch when pretraining ends):
    the page goes on to the images chosen ahead of it instead of waiting. Answered beyond a batch, they are
    taken whole, and the round after still asks a full batch. With nothing running, a complete batch shows
    its done view as before."""
    root, truth = folder
    recipe = folder_recipe(tmp_path, root, "early", pretrain={"method": "simclr", "epochs": 1, "batch_size": 16,
                                                               "view_size": 16, "eval_every": 0},
                           active={"rounds": 2, "lookahead": BUDGET + 3, "initial_strategy": "random"})
    seen, real = {}, loop.pretrained_encoder

    def pretraining(cfg, data, engine, **kw):  # a person on the page while the run pretrains
        run = Path(cfg.output_dir)
        page = Session(run)
        assert page.state()["ahead"] is False  # the batch first
        import_labels(run, fill_queries(run / "rounds" / "initial", truth, tmp_path / "first.csv"))
        state = page.state()
        ahead = json.loads((run / "rounds" / "initial" / "selected.json").read_text())["ahead"]
        assert state["ahead"] is True and state["round"] == -1 and [it["index"] for it in state["items"]] == ahead
        for item in state["items"][:BUDGET + 2]:  # more than a batch
            page.answer({"round": -1, "index": item["index"], "label": truth[item["path"]], "ahead": True})
            seen[item["index"]] = CLASSES.index(truth[item["path"]])
        return real(cfg, data, engine, **kw)

    monkeypatch.setattr(loop, "pretrained_encoder", pretraining)
    run = loop.run(load_recipe(recipe), progress=False)  # pretrains, takes the batch, round 0, then round 1
    r00 = json.loads((run / "rounds" / "r00" / "selected.json").read_text())
    assert r00["from_ahead"] == BUDGET + 2 and r00["indices"] == list(seen)  # all of them, none wasted
    pool = {i: (y, r) for i, y, r in json.loads((run / "pool.json").read_text())["labeled"]}
    assert all(pool[i] == (y, 1) for i, y in seen.items())
    r01 = json.loads((run / "rounds" / "r01" / "selected.json").read_text())
    assert r01["from_ahead"] == 0 and len(r01["indices"]) == BUDGET  # ahead of the schedule, still a batch
    assert Session(run).state()["ahead"] is False  # nothing runs now: the open batch r01
    monkeypatch.setattr(loop, "pretrained_encoder", real)
    second = folder_recipe(tmp_path, root, "idle", active={"rounds": 1, "lookahead": 6, "initial_strategy": "random"},
                           pretrain={"method": "none"})
    idle = loop.run(load_recipe(second), progress=False)
    import_labels(idle, fill_queries(idle / "rounds" / "initial", truth, tmp_path / "idle.csv"))
    state = Session(idle).state()  # complete, nobody takes it: the done view of the batch, not the images ahead
    assert state["ahead"] is False and state["round"] == -1 and len(state["answers"]) == len(state["items"])
