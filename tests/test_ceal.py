"""CEAL: the threshold schedule and the confident set by hand, the pairs a selection records, the next
round training on them (and only on those still unlabeled), and a resume after a crash equal to the
uninterrupted run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ssal import faults
from ssal.errors import ConfigError
from ssal.experiment import loop
from ssal.recipe import load_recipe
from ssal.run.readers import read_metrics
from ssal.select import ceal


def test_the_threshold_decays_by_the_rule_and_stops_at_zero():
    assert [round(ceal.threshold(0.005, 0.00033, r), 8) for r in (0, 1, 10, 15, 16, 40)] == \
        [0.005, 0.00467, 0.0017, 0.00005, 0.0, 0.0]


def test_the_confident_set_is_the_entropy_below_the_threshold_by_hand():
    probs = torch.tensor([[0.999, 0.001, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0002, 0.9998], [0.9, 0.05, 0.05]])
    entropy = [-sum(p * math.log(p) for p in row if p > 0) for row in probs.tolist()]
    idx, labels = ceal.confident(probs, torch.tensor([10, 11, 12, 13]), 0.01)
    assert [10 + i for i, h in enumerate(entropy) if h < 0.01] == idx.tolist() == [10, 12]
    assert labels.tolist() == [0, 2]


def _recipe(write_recipe, name: str, **active):
    return write_recipe(name, train={"steps": 20, "reinit": False},
                        active={"rounds": 2, "strategy": "least_confidence", "ceal_threshold": 1.5,
                                "ceal_decay": 0.3, **active})


def test_a_selection_records_the_surest_images_and_the_next_round_trains_on_them(write_recipe, monkeypatch):
    from ssal.engine import training

    seen, trained = {}, []
    real_confident, real_fit = ceal.confident, training.Engine.fit

    def spy_confident(probs, indices, delta):
        seen.setdefault("calls", []).append((probs.clone(), indices.clone(), delta))
        return real_confident(probs, indices, delta)

    def spy_fit(self, model, build, data, optim, **kw):
        trained.append((data.labeled.clone(), data.labels.clone(), data.unlabeled.clone()))
        return real_fit(self, model, build, data, optim, **kw)

    monkeypatch.setattr(ceal, "confident", spy_confident)
    monkeypatch.setattr(training.Engine, "fit", spy_fit)
    run = loop.run(load_recipe(_recipe(write_recipe, "ceal")), progress=False)
    records = [json.loads((run / "rounds" / f"r{r:02d}" / "selected.json").read_text()) for r in (0, 1)]
    for r, (record, (probs, indices, delta)) in enumerate(zip(records, seen["calls"], strict=True)):
        assert delta == pytest.approx(1.5 - 0.3 * r) == record["ceal_threshold"]
        p = probs.double().numpy()
        entropy = -(p * np.log(np.where(p > 0, p, 1))).sum(axis=1)
        want = [[int(i), int(y)] for i, y, h in zip(indices, p.argmax(1), entropy, strict=True) if h < delta]
        assert record["ceal"] == want and want  # some images are that sure
        assert not {i for i, _ in want} & set(record["indices"])  # never one just queried
    rows = read_metrics(run)
    # round r + 1 trains on its labels plus the recorded pairs (still unlabeled), not on them as unlabeled
    pool0 = json.loads((run / "pool.json").read_text())["labeled"]
    for r in (1, 2):
        labeled, labels, unlabeled = trained[r]
        pairs = dict(records[r - 1]["ceal"])
        real = {i: y for i, y, got in pool0 if got <= r}
        assert dict(zip(labeled.tolist(), labels.tolist(), strict=True)) == {**pairs, **real}
        assert not set(pairs) & set(unlabeled.tolist())
        assert rows[r]["train_ceal_n"] == len(pairs) and 0 <= rows[r]["train_ceal_acc"] <= 1
    assert "train_ceal_n" not in rows[0]


def test_a_crash_after_a_round_then_resume_gives_the_uninterrupted_run(write_recipe, tmp_path):
    full = loop.run(load_recipe(_recipe(write_recipe, "full")), progress=False)
    cut = tmp_path / "cut"
    with faults.active("round.end=crash@1"), pytest.raises(faults.SimulatedCrash):
        loop.run(load_recipe(_recipe(write_recipe, "cut"), [f"output_dir={cut}"]), progress=False)
    loop.run(load_recipe(_recipe(write_recipe, "cut"), [f"output_dir={cut}"]), resume=True, progress=False)
    assert [m["test_acc"] for m in read_metrics(cut)] == [m["test_acc"] for m in read_metrics(full)]
    pool = json.loads((cut / "pool.json").read_text())["labeled"]
    assert pool == json.loads((full / "pool.json").read_text())["labeled"]


def test_the_recipe_checks_the_options(write_recipe):
    for active, fragment in [({"ceal_threshold": -1}, "active.ceal_threshold"), ({"ceal_decay": -0.1}, "ceal_decay")]:
        with pytest.raises(ConfigError, match=fragment):
            load_recipe(write_recipe(active=active))
