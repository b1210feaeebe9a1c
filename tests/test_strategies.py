"""Strategies end to end: every strategy with the objectives it can meet, the signals they read, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_two_processes

from ssal import faults
from ssal.cli import main
from ssal.data import load_dataset
from ssal.data.views import to_float
from ssal.engine import Engine, Optim, TrainData
from ssal.experiment import loop
from ssal.experiment.report import read_metrics
from ssal.experiment.trainer import uses_previous_model
from ssal.models import build_model
from ssal.recipe import load_recipe
from ssal.rng import derive_seed
from ssal.select import STRATEGIES, Strategy
from ssal.select import functional as Fn
from ssal.select import signals as S
from ssal.select.signals import SelectionContext, compute_signals
from ssal.semi import OBJECTIVES
from ssal.semi.base import make_objective

OBJECTIVE_NAMES = ["supervised", "fixmatch", "consistency", "tod", "contrastive"]


def _recipe(tmp_path: Path, tiny_recipe, name: str, **sections) -> Path:
    base = {"train": {"steps": 3, "batch_size": 8}, "data": {"pool_size": 160, "test_size": 60},
            "active": {"initial": 20, "budget": 7, "rounds": 1, "subset": 60}}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path / name, **base)))
    return path


OWN_PASSES = {"bald", "batchbald", "dfal"}  # run their own passes through the model (dropout, input gradients)


def meets_the_objective(name: str) -> bool:
    """Whether a strategy's selection depends on the objective beyond the weights it trained: it trains a
    module along the objective, trains several members, reads what the objective's own parts produce (its
    representation, its teacher, the previous model), or runs its own passes through the model."""
    cls = STRATEGIES.get(name)
    strategy = cls()
    return (cls.auxiliary is not Strategy.auxiliary or strategy.members > 1 or name in OWN_PASSES
            or any(isinstance(r, (S.Embeddings, S.AugProbs, S.PrevProbs)) for r in strategy.needs))


PLAIN = [s for s in STRATEGIES.names() if not meets_the_objective(s)]
# every strategy that meets the objective with every objective; the others (scores of the evaluation model's
# outputs) each with one objective, in turn, so each objective still runs under several of them
GRID = [(s, o) for s in STRATEGIES.names() if meets_the_objective(s) for o in OBJECTIVE_NAMES] + \
    [(s, OBJECTIVE_NAMES[i % len(OBJECTIVE_NAMES)]) for i, s in enumerate(PLAIN)]


def test_the_grid_covers_every_strategy_and_objective_and_splits_as_designed():
    assert {s for s, _ in GRID} == set(STRATEGIES.names()) and {o for _, o in GRID} == set(OBJECTIVE_NAMES)
    assert {"ll", "ens", "tod", "consistency", "cal", "bald", "dfal"} <= set(STRATEGIES.names()) - set(PLAIN)
    assert {"margin", "entropy", "badge", "coreset", "random"} <= set(PLAIN)


@pytest.mark.parametrize("strategy, objective", GRID)
def test_the_strategies_run_with_the_objectives_they_can_meet(tmp_path, tiny_recipe, strategy, objective):
    needs_ema = uses_previous_model(STRATEGIES.get(strategy)()) and not OBJECTIVES.get(objective).has_teacher
    train = {"method": objective, **({"ema": 0.5} if needs_ema else {})}
    small = {"vaal": {"steps": 3, "batch_size": 8}, "ens": {"members": 2}}.get(strategy)  # their own training
    active = {"strategy": strategy, **({strategy: small} if small else {})}
    path = _recipe(tmp_path, tiny_recipe, "run", train=train, active=active)
    assert main(["run", str(path), "--no-progress"]) == 0
    out = tmp_path / "run"
    rows = read_metrics(out)
    assert [r["n_labeled"] for r in rows] == [20, 27] and all("select_s" in r for r in rows)
    sel = json.loads((out / "rounds" / "r00" / "selected.json").read_text())
    assert sel["strategy"] == strategy and len(set(sel["indices"])) == 7
    first = [i for i, _, r in json.loads((out / "pool.json").read_text())["labeled"] if r == 0]
    assert not set(first) & set(sel["indices"])


def test_tod_strategy_without_an_ema_is_rejected_at_validation(tmp_path, tiny_recipe, capsys):
    path = _recipe(tmp_path, tiny_recipe, "run", active={"strategy": "tod"})
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssal: error: active.strategy=tod") and "train.ema" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("active.consistency.view=strnog", "active.consistency.view"),
    ("active.bald.samples=0", "active.bald.samples must be >= 1"),
    ("active.bald.dropout=1.5", "active.bald.dropout must be in [0, 1)"),
    ("active.cal.neighbors=0", "active.cal.neighbors must be >= 1"),
])
def test_strategy_options_are_validated(tmp_path, tiny_recipe, capsys, override, message):
    path = _recipe(tmp_path, tiny_recipe, "run", active={"strategy": override.split(".")[1]})
    assert main(["run", str(path), override, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssal: error: ") and message in err and err.count("\n") == 1


def test_bald_scores_come_from_a_dropout_added_before_the_head(tmp_path, tiny_recipe):
    # model.drop_rate is 0 in the recipe: BALD adds its dropout, so the passes disagree (scores > 0) ...
    path = _recipe(tmp_path, tiny_recipe, "run", active={"strategy": "bald"})
    out = loop.run(load_recipe(path), progress=False)
    scores = json.loads((out / "rounds" / "r00" / "selected.json").read_text())["scores"]
    assert min(scores) > 0
    # ... and with dropout 0 every pass is the same network: BALD is exactly 0, not NaN
    out = loop.run(load_recipe(path, ["active.bald.dropout=0", f"output_dir={tmp_path / 'p0'}"]), progress=False)
    scores = json.loads((out / "rounds" / "r00" / "selected.json").read_text())["scores"]
    assert scores == [0.0] * 7


class _Needs(Strategy):
    def __init__(self, *needs):
        super().__init__()
        self._needs = needs

    @property
    def needs(self):
        return self._needs


@pytest.fixture(scope="module")
def trained(tiny_recipe, tmp_path_factory):
    """A consistency-trained tiny model (it has an EMA teacher), its data and an engine."""
    root = tmp_path_factory.mktemp("sig")
    cfg = load_recipe(_recipe(root, tiny_recipe, "x", train={"method": "consistency", "steps": 5}))
    data = load_dataset(cfg.data, seed=0)
    engine = Engine(progress=False)
    torch.manual_seed(0)
    model = build_model(cfg.model, data)
    labeled = torch.arange(20)
    fit = engine.fit(model, lambda m: make_objective(OBJECTIVES.get("consistency"), m, cfg.train),
                     TrainData(data.train, labeled, data.train.targets[:20], torch.arange(20, 160), hflip=data.hflip),
                     Optim.from_train(cfg.train), seed=0, ema=cfg.train.ema)
    return engine, data, fit, labeled


def _ctx(fit, labeled, data, prev=None, seed=3):
    return SelectionContext(fit.eval_model, labeled, data.train.targets[labeled], fit.objective, prev, data.hflip,
                            seed, batch_size=32)


def test_mc_signals_bald_equals_the_passes_and_is_streamed_per_chunk(trained):
    engine, data, fit, labeled = trained
    fit.eval_model.dropout.p = 0.5
    cands = torch.arange(20, 120)
    sig = compute_signals(engine, _Needs(S.BALDScore(samples=6), S.MCProbs(samples=6), S.Probs()),
                          _ctx(fit, labeled, data), data.train, cands)
    mc = sig[S.MCProbs(samples=6)]
    assert mc.shape == (100, 6, 10)
    assert torch.allclose(sig[S.BALDScore(samples=6)], Fn.bald(mc.transpose(0, 1)), atol=1e-6)
    assert sig[S.BALDScore(samples=6)].min() > 0  # the passes differ
    again = compute_signals(engine, _Needs(S.MCProbs(samples=6)), _ctx(fit, labeled, data), data.train, cands)
    assert torch.equal(again[S.MCProbs(samples=6)], mc)  # seeded
    # masks are keyed per (seed, pool index, pass): a candidate's passes do not depend on which other
    # candidates share its chunk (nor, so, on the number of processes)
    sub = cands.flip(0)[::3]
    part = compute_signals(engine, _Needs(S.MCProbs(samples=6)), _ctx(fit, labeled, data), data.train, sub)
    assert torch.allclose(part[S.MCProbs(samples=6)], mc[sub - 20], atol=1e-6)
    fit.eval_model.dropout.p = 0.0
    sig = compute_signals(engine, _Needs(S.BALDScore(samples=6), S.Probs()), _ctx(fit, labeled, data), data.train,
                          cands)
    assert torch.equal(sig[S.BALDScore(samples=6)], torch.zeros(100))


def test_aug_probs_come_from_the_teacher_and_views_differ(trained):
    engine, data, fit, labeled = trained
    cands = torch.arange(20, 60)
    sig = compute_signals(engine, _Needs(S.AugProbs(views=4, view="strong")), _ctx(fit, labeled, data),
                          data.train, cands)
    aug = sig[S.AugProbs(views=4, view="strong")]
    assert aug.shape == (40, 4, 10) and torch.allclose(aug.sum(2), torch.ones(40, 4))
    assert (aug[:, 0] - aug[:, 1]).abs().max() > 1e-4  # different random views
    # the same views through the teacher by hand, from the uint8 images, each sample's view k keyed by
    # (seed, "view", pool index, k): whole candidate set at once, no chunks (the draws are per sample)
    from ssal.data.views import VIEWS
    from ssal.rng import sample_keys

    teacher = fit.objective.teacher_model().eval()
    images = data.train.load(cands)
    with torch.no_grad():
        want = [torch.stack([torch.softmax(teacher(VIEWS["strong"](images, sample_keys(3, "view", cands, k),
                                                                  data.hflip)), 1) for k in range(4)], dim=1)]
    assert torch.allclose(aug, torch.cat(want), atol=1e-5)


def test_prev_probs_embeddings_and_labeled_signals(trained):
    engine, data, fit, labeled = trained
    cands = torch.arange(30, 50)
    prev = fit.objective.teacher_model()
    sig = compute_signals(engine, _Needs(S.Probs(), S.PrevProbs(), S.Embeddings(), S.Embeddings(labeled=True),
                                         S.Labels()), _ctx(fit, labeled, data, prev), data.train, cands)
    x = to_float(data.train.load(cands))
    with torch.no_grad():
        assert torch.allclose(sig[S.PrevProbs()], torch.softmax(prev.eval()(x), 1), atol=1e-5)
        assert torch.allclose(sig[S.Embeddings()], fit.eval_model.eval().features(x), atol=1e-5)
        lab_x = to_float(data.train.load(labeled))
        assert torch.allclose(sig[S.Embeddings(labeled=True)], fit.eval_model.features(lab_x), atol=1e-5)
    assert torch.equal(sig[S.Labels()], data.train.targets[labeled])
    assert set(sig.values) == {S.Probs(), S.PrevProbs(), S.Embeddings(), S.Embeddings(labeled=True), S.Labels()}


@pytest.mark.slow  # 10 s
def test_resume_of_a_tod_run_reloads_the_previous_round_model(tmp_path, tiny_recipe, monkeypatch):
    path = _recipe(tmp_path, tiny_recipe, "a", train={"method": "tod"}, active={"strategy": "tod", "rounds": 3})
    full = loop.run(load_recipe(path), progress=False)
    # crash right after round 1 commits: its checkpoint (the model round 2 compares with) stays
    b = tmp_path / "b"
    with faults.active("round.end=crash@2"), pytest.raises(faults.SimulatedCrash):
        loop.run(load_recipe(path, [f"output_dir={b}"]), progress=False)
    assert len(read_metrics(b)) == 2
    assert main(["run", "--resume", str(b), "--no-progress"]) == 0
    assert json.loads((b / "pool.json").read_text()) == json.loads((full / "pool.json").read_text())
    for r in range(3):
        f = Path("rounds") / f"r{r:02d}" / "selected.json"
        assert json.loads((b / f).read_text()) == json.loads((full / f).read_text())


@pytest.mark.slow  # a process group or a real process: 9-21 s; CI runs it
def test_signals_under_two_processes_match_one(tmp_path):
    """torchrun, 2 CPU processes: signals are sharded and gathered once per index, so a selection
    made from them on each rank is the one a single process makes."""
    script = tmp_path / "dist_signals.py"
    script.write_text(
        "import torch\n"
        "from ssal.data import load_dataset\n"
        "from ssal.data.views import to_float\n"
        "from ssal.engine import Engine\n"
        "from ssal.models import build_model\n"
        "from ssal.recipe import DataConfig, ModelConfig\n"
        "from ssal.select import STRATEGIES\n"
        "from ssal.select import functional as Fn\n"
        "from ssal.select.signals import BALDScore, Features, SelectionContext, compute_signals\n"
        "data = load_dataset(DataConfig(dataset='digits'))\n"
        "torch.manual_seed(0)\n"
        "model = build_model(ModelConfig(drop_rate=0.5), data).eval()\n"
        "engine = Engine(progress=False)\n"
        "assert engine.world == 2\n"
        "labeled, cands = torch.arange(0, 40), torch.arange(41, 300, 2)  # 130 candidates: uneven chunks\n"
        "ctx = SelectionContext(model, labeled, data.train.targets[labeled], None, None, True, 0, batch_size=16)\n"
        "coreset = STRATEGIES.get('coreset')()\n"
        "sig = compute_signals(engine, coreset, ctx, data.train, cands)\n"
        "with torch.no_grad():\n"
        "    feats = model.features(to_float(data.train.load(cands)))\n"
        "    lab = model.features(to_float(data.train.load(labeled)))\n"
        "assert torch.allclose(sig[Features()], feats, atol=1e-5)\n"
        "assert torch.allclose(sig[Features(labeled=True)], lab, atol=1e-5)\n"
        "picked = coreset.select(sig, 10, torch.Generator())\n"
        "mask = torch.cat([torch.ones(40, dtype=torch.bool), torch.zeros(130, dtype=torch.bool)])\n"
        "want = cands[Fn.kcenter_greedy(torch.cat([lab, feats]), mask, 10) - 40]\n"
        "assert torch.equal(picked, want), (picked, want)\n"
        "bald = compute_signals(engine, STRATEGIES.get('bald')(STRATEGIES.get('bald').Config(samples=5)), ctx,\n"
        "                       data.train, cands)[BALDScore(samples=5)]\n"
        "assert bald.shape == (130,) and torch.isfinite(bald).all() and (bald > 0).all()\n"
        "print(f'rank {engine.rank} ok', flush=True)\n"
        "engine.close()\n"
    )
    run_two_processes(script, port=29553)


def test_typiclust_cold_start_picks_typical_points_of_the_encoder_features(tmp_path, tiny_recipe):
    path = _recipe(tmp_path, tiny_recipe, "run", active={"initial_strategy": "typiclust", "rounds": 0})
    out = loop.run(load_recipe(path), progress=False)
    first = [i for i, _, r in json.loads((out / "pool.json").read_text())["labeled"] if r == 0]
    assert len(set(first)) == 20
    # the same picks as TypiClust on the features of the initial model, computed here by hand
    cfg = load_recipe(path)
    data = load_dataset(cfg.data, seed=cfg.seed)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_model(cfg.model, data).eval()
    with torch.no_grad():
        feats = model.features(to_float(data.train.load(torch.arange(len(data.train)))))
    want = Fn.typiclust(feats, torch.zeros(len(feats), dtype=torch.bool), 20,
                        torch.Generator().manual_seed(derive_seed(cfg.seed, "initial")))
    assert first == want.tolist()
