"""The audit set (``active.audit``): random pool images asked with the first batch and held out, whose
answers give each round's accuracy with a 95 % Wilson interval, for runs without a test folder.

Checked here: the interval against its closed form by hand and against scipy, and its coverage; the
pool's bookkeeping; in a run, that no fit ever receives an audit image (labeled or unlabeled), that no
selection picks one, that the recorded accuracy is the round model's accuracy on them recomputed from
its checkpoint, that a resumed run reaches the same state, and that people are asked the audit images
among the first batch without being told which they are.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_recipe_dict
from scipy.stats import binomtest
from test_human_loop import CLASSES, colour_pool, folder_recipe  # noqa: F401  (colour_pool: a fixture)

from ssal.cli import main
from ssal.data import load_dataset
from ssal.data.pool import SKIP, ActivePool, draw_audit
from ssal.engine import Engine
from ssal.experiment import loop
from ssal.experiment.report import wilson_interval
from ssal.experiment.trainer import evaluation_model
from ssal.label.serve import Session
from ssal.models import build_model
from ssal.recipe import from_dict
from ssal.run.readers import read_metrics
from ssal.run.store import RunDir

# ----------------------------------------------------------------------------- the interval


def test_wilson_at_the_ends_is_its_closed_form_by_hand():
    z2 = 1.959963984540054 ** 2
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(z2 / (10 + z2), abs=1e-12)  # 0.2775...
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0, abs=1e-12) and low == pytest.approx(10 / (10 + z2), abs=1e-12)
    low, high = wilson_interval(5, 10)  # symmetric about 1/2: 1/2 +- z/(1 + z2/n) * sqrt(1/(4n) + z2/(4n^2))
    half = math.sqrt(z2) / (1 + z2 / 10) * math.sqrt(0.25 / 10 + z2 / 400)
    assert (low, high) == (pytest.approx(0.5 - half, abs=1e-12), pytest.approx(0.5 + half, abs=1e-12))


@pytest.mark.parametrize("right, n", [(1, 1), (3, 7), (41, 50), (49, 50), (180, 200), (0, 3)])
def test_wilson_equals_scipys(right, n):
    ref = binomtest(right, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(right, n) == (pytest.approx(ref.low, abs=1e-9), pytest.approx(ref.high, abs=1e-9))


def test_wilson_covers_the_true_accuracy_in_about_95_percent_of_samples():
    rng = np.random.default_rng(0)
    for p, n in ((0.8, 50), (0.95, 100), (0.6, 30)):
        right = rng.binomial(n, p, size=4000)
        covered = np.mean([lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in right)])
        assert 0.92 <= covered <= 0.975, (p, n, covered)


def test_wilson_of_nothing_is_refused():
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


# ----------------------------------------------------------------------------- the pool


def test_the_audit_set_is_neither_labeled_nor_a_candidate_and_survives_the_state_round_trip():
    pool = ActivePool(10, audit=[7, 2, 5])
    assert pool.audit_indices.tolist() == [2, 5, 7] and pool.audit_unanswered.tolist() == [2, 5, 7]
    assert pool.unlabeled_indices.tolist() == [0, 1, 3, 4, 6, 8, 9]
    pool.label([4, 2, 0, 5, 7], [1, 0, 2, SKIP, 1], 0)
    assert pool.labeled_indices.tolist() == [4, 0] and pool.labels.tolist() == [1, 2] and pool.n_labeled == 2
    idx, y = pool.audit_labeled()
    assert idx.tolist() == [2, 7] and y.tolist() == [0, 1]  # the skip measures nothing
    assert pool.skipped_indices.tolist() == [] and pool.audit_unanswered.tolist() == []
    assert pool.unlabeled_indices.tolist() == [1, 3, 6, 8, 9]
    state = pool.state_dict()
    assert state["audit"] == [2, 5, 7] and state["labeled"][1] == [2, 0, 0]
    again = ActivePool.from_state(json.loads(json.dumps(state)))
    assert again.state_dict() == state and again.labeled_indices.tolist() == [4, 0]
    assert pool.head(2).audit_indices.tolist() == [2, 5, 7]
    assert "audit" not in ActivePool(4).state_dict()  # a pool.json without an audit set is as before


@pytest.mark.parametrize("audit", [[3, 3], [12], "x", [1.5]])
def test_a_malformed_audit_set_is_refused(audit):
    with pytest.raises(ValueError):
        ActivePool.from_state({"n": 10, "labeled": [], "audit": audit})


def test_the_audit_draw_is_uniform_over_the_pool_less_the_seed_labels():
    exclude = torch.tensor([0, 1, 2, 3])
    counts = torch.zeros(20)
    for s in range(3000):
        drawn = draw_audit(20, 4, torch.Generator().manual_seed(s), exclude)
        assert len(drawn) == 4 and torch.equal(drawn, drawn.sort().values) and not torch.isin(drawn, exclude).any()
        counts[drawn] += 1
    expected = 3000 * 4 / 16
    chi2 = float(((counts[4:] - expected) ** 2 / expected).sum())
    assert chi2 < 37.7, chi2  # the chi-square test at 0.001 for 15 degrees of freedom
    seeded = lambda: draw_audit(20, 4, torch.Generator().manual_seed(1))  # noqa: E731
    assert torch.equal(seeded(), seeded())
    with pytest.raises(ValueError):
        draw_audit(5, 3, torch.Generator(), torch.tensor([0, 1, 2]))


# ----------------------------------------------------------------------------- a run


AUDIT = 30


def _recipe(out, **active):
    return tiny_recipe_dict(out, data={"pool_size": 300, "test_size": 100}, train={"steps": 15},
                            active={"initial": 20, "budget": 10, "rounds": 2, "audit": AUDIT, **active})


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A simulated run with an audit set, every round's model kept, and what each fit received."""
    tmp = tmp_path_factory.mktemp("audit")
    received = []
    fit = Engine.fit

    def recording(self, model, build, data, optim, **kw):
        received.append((data.labeled.clone(), None if data.unlabeled is None else data.unlabeled.clone()))
        return fit(self, model, build, data, optim, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunDir, "prune_checkpoints", lambda self, last: None)
        mp.setattr(Engine, "fit", recording)
        cfg = from_dict(_recipe(tmp / "run", strategy="entropy"))
        run = loop.run(cfg, progress=False)
    return cfg, run, received


def test_no_fit_receives_an_audit_image_and_no_selection_picks_one(audited):
    cfg, run, received = audited
    pool = json.loads((run / "pool.json").read_text())
    audit = torch.tensor(pool["audit"])
    assert len(audit) == AUDIT
    assert len(received) == cfg.active.rounds + 1
    for labeled, unlabeled in received:
        assert not torch.isin(labeled, audit).any()
        assert unlabeled is None or not torch.isin(unlabeled, audit).any()
    for r in range(cfg.active.rounds):
        picked = json.loads((run / "rounds" / f"r{r:02d}" / "selected.json").read_text())["indices"]
        assert not set(picked) & set(pool["audit"])
    initial = json.loads((run / "rounds" / "initial" / "selected.json").read_text())
    assert initial["audit"] == pool["audit"] and set(pool["audit"]) < set(initial["indices"])
    assert len(initial["indices"]) == cfg.active.initial + AUDIT
    rows = read_metrics(run)
    assert [r["n_labeled"] for r in rows] == [20, 30, 40]  # the audit set counts as no label


def test_each_rounds_audit_accuracy_is_its_model_on_the_audit_images(audited):
    cfg, run, _ = audited
    data = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir)
    audit = torch.tensor(json.loads((run / "pool.json").read_text())["audit"])
    truth = data.train.targets[audit]  # the simulated oracle answers the truth
    rd = RunDir(run, writer=False)
    for row in read_metrics(run):
        model = evaluation_model(rd.load_checkpoint(row["round"]), lambda: build_model(cfg.model, data))
        probs = Engine(progress=False).predict(model.eval(), data.train, audit, ("probs",), 64)["probs"]
        right = int((probs.argmax(1) == truth).sum())
        assert row["audit_n"] == AUDIT and row["audit_acc"] == pytest.approx(right / AUDIT, abs=1e-6)
        low, high = wilson_interval(right, AUDIT)
        assert (row["audit_low"], row["audit_high"]) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))
        assert "test_acc" in row  # with a test set too, both are recorded
    with open(run / "curve.csv", newline="") as f:
        curve = list(csv.DictReader(f))
    keys = ("test_acc", "audit_acc", "audit_low", "audit_high")
    assert list(curve[0]) == ["round", "n_labeled", *keys]
    assert [[float(c[k]) for k in keys] for c in curve] == \
        [[pytest.approx(m[k], abs=1e-6) for k in keys] for m in read_metrics(run)]


def test_a_resumed_run_with_an_audit_set_is_the_uninterrupted_one(audited, tmp_path):
    cfg, run, _ = audited
    short = from_dict(_recipe(tmp_path / "run", strategy="entropy", rounds=1))
    loop.run(short, progress=False)
    assert main(["run", "--resume", str(tmp_path / "run"), "active.rounds=2", "--no-progress"]) == 0
    assert (tmp_path / "run" / "pool.json").read_bytes() == (run / "pool.json").read_bytes()
    # times differ; a row's "pool" is the pool after its round's purchase, and round 1 of the short run,
    # its last, bought nothing before active.rounds grew
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_s") and k != "pool"}  # noqa: E731
                          for r in rows]
    assert strip(read_metrics(tmp_path / "run")) == strip(read_metrics(run))


def test_without_an_audit_set_nothing_is_recorded_for_it(tmp_path):
    cfg = from_dict(tiny_recipe_dict(tmp_path / "run", train={"steps": 3}, active={"rounds": 0}))
    run = loop.run(cfg, progress=False)
    assert "audit" not in json.loads((run / "pool.json").read_text())
    assert not any(k.startswith("audit") for k in read_metrics(run)[0])


@pytest.mark.parametrize("override, fragments", [
    ("active.audit=-1", ("active.audit must be >= 0",)),
    ("active.audit=500", ("active.audit + active.initial", "more than the 400 images")),
])
def test_a_bad_audit_size_is_one_line(tmp_path, capsys, override, fragments):
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(tiny_recipe_dict(tmp_path / "run")))
    assert main(["run", str(path), override, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssal: error: ") and "\n" not in err and all(f in err for f in fragments), err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- people


def test_people_are_asked_the_audit_images_among_the_first_batch(colour_pool, tmp_path, capsys):  # noqa: F811
    root, truth = colour_pool
    recipe = folder_recipe(tmp_path, root, model={"backbone": "cnn_small"}, train={"steps": 3},
                           active={"rounds": 1, "audit": 6})
    assert main(["run", str(recipe), "--no-progress"]) == 0
    run = tmp_path / "runs" / "human"
    initial = json.loads((run / "rounds" / "initial" / "selected.json").read_text())
    with open(run / "rounds" / "initial" / "queries.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == initial["indices"]  # one batch; which are audit is not said
    assert set(initial["audit"]) < {int(r["index"]) for r in rows} and "audit" not in rows[0]
    positions = [initial["indices"].index(i) for i in initial["audit"]]
    assert positions != list(range(len(positions))) and positions != list(range(len(rows) - 6, len(rows)))
    for r in rows:
        r["label"] = truth[r["path"]]
    answers = tmp_path / "answers.csv"
    with open(answers, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["label", "import", str(run), str(answers)]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    row = read_metrics(run)[0]
    assert row["audit_n"] == 6 and row["n_labeled"] == len(rows) - 6 and 0 <= row["audit_acc"] <= 1
    assert "audit acc" in out and "6 images" in out
    with open(run / "curve.csv", newline="") as f:  # no test folder: the curve is the audit's
        assert list(csv.reader(f)) == [["round", "n_labeled", "audit_acc", "audit_low", "audit_high"],
                                       ["0", str(row["n_labeled"]), *(f"{row[k]:.6f}" for k in
                                                                       ("audit_acc", "audit_low", "audit_high"))]]
    assert (run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = Session(run).state()  # the labeling page's header
    assert page["accuracy"] == f"round 0: audit acc {100 * row['audit_acc']:.1f} % (95 % interval " \
                               f"{100 * row['audit_low']:.1f}-{100 * row['audit_high']:.1f}, 6 images)"
    pool = ActivePool.from_state(json.loads((run / "pool.json").read_text()))
    idx, y = pool.audit_labeled()
    assert sorted(idx.tolist()) == initial["audit"]
    assert [CLASSES[int(c)] for c in y] == [truth[rows[initial["indices"].index(int(i))]["path"]] for i in idx]


def test_a_run_made_before_active_audit_existed_resumes(tmp_path):
    """Its recorded recipe lacks the key; the default (0) is what that ssal did, so it is no change."""
    from ssal import files

    run = tmp_path / "run"
    loop.run(from_dict(tiny_recipe_dict(run, train={"steps": 3}, active={"rounds": 1})), progress=False)
    identity = files.read_sealed_json(run / "run.json")
    del identity["recipe"]["active"]["audit"]
    files.write_json(run / "run.json", files.seal(identity))
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    del recipe["active"]["audit"]
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", "--resume", str(run), "active.rounds=2", "--no-progress"]) == 0
    assert [r["round"] for r in read_metrics(run)] == [0, 1, 2]
    assert main(["run", "--resume", str(run), "active.audit=5", "--no-progress"]) == 2  # a real change: refused
