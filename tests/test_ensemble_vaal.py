"""Deep ensembles (active.strategy=ens) and VAAL (active.strategy=vaal): their scores and losses against
computations by hand, their networks and signals, and whole runs (evaluation, resume, predict/export)."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ssal import faults
from ssal.cli import main
from ssal.data import load_dataset
from ssal.data.views import to_float
from ssal.engine import Engine, FitResult
from ssal.experiment import loop
from ssal.experiment.report import read_metrics
from ssal.experiment.trainer import combine
from ssal.models import build_model
from ssal.models.ensemble import Ensemble
from ssal.recipe import DataConfig, ModelConfig, load_recipe
from ssal.rng import derive_seed
from ssal.run.store import RunDir
from ssal.select import STRATEGIES
from ssal.select import vaal as V
from ssal.select.base import Signals
from ssal.select.ensemble import MemberProbs
from ssal.select.signals import SelectionContext, candidates, compute_signals
from ssal.select.stage import generator

ENS = STRATEGIES.get("ens")
VAAL = STRATEGIES.get("vaal")


def _recipe(root: Path, tiny_recipe, name: str, **sections) -> Path:
    """A tiny recipe (digits, 160 pool images, 60 test images) as YAML; ``sections`` update its sections."""
    base = {"train": {"steps": 10, "batch_size": 8}, "data": {"pool_size": 160, "test_size": 60},
            "active": {"initial": 20, "budget": 7, "rounds": 1, "subset": 60}}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(root / name, **base)))
    return path


def _float_tensors_differ(a: dict, b: dict) -> list[str]:
    return [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]


# ============================================================================ ENS: scores by hand

# 6 candidates, K = 4 members, 3 classes; the votes (argmax of each row) are in the comments
MEMBER_PROBS = [
    [[.80, .10, .10], [.70, .20, .10], [.90, .05, .05], [.60, .30, .10]],  # 0 0 0 0: ratio 0
    [[.90, .05, .05], [.85, .10, .05], [.10, .85, .05], [.05, .90, .05]],  # 0 0 1 1: ratio 1/2, sure members
    [[.60, .30, .10], [.50, .40, .10], [.55, .35, .10], [.30, .60, .10]],  # 0 0 0 1: ratio 1/4
    [[.40, .35, .25], [.30, .40, .30], [.30, .32, .38], [.38, .30, .32]],  # 0 1 2 0: ratio 1/2, unsure
    [[.10, .10, .80], [.20, .10, .70], [.05, .05, .90], [.10, .60, .30]],  # 2 2 2 1: ratio 1/4
    [[.34, .33, .33], [.33, .34, .33], [.33, .33, .34], [.34, .33, .33]],  # 0 1 2 0: ratio 1/2, near uniform
]
CANDIDATES = [11, 3, 42, 7, 20, 5]  # pool indices of the 6 rows (not sorted: rows map to these)


def _ens_signals() -> Signals:
    return Signals(candidates=torch.tensor(CANDIDATES), labeled=torch.tensor([0, 1]),
                   values={MemberProbs(): torch.tensor(MEMBER_PROBS, dtype=torch.float32)})


def _entropy(p: list[float]) -> float:
    return -sum(q * math.log(q) for q in p if q > 0)


def _by_hand(rows: list[list[float]]) -> dict[str, float]:
    k = len(rows)
    votes = Counter(max(range(len(r)), key=lambda c, r=r: r[c]) for r in rows)
    mean = [sum(r[c] for r in rows) / k for c in range(len(rows[0]))]
    h_mean = _entropy(mean)
    return {"variation_ratio": 1 - max(votes.values()) / k, "entropy": h_mean,
            "bald": h_mean - sum(_entropy(r) for r in rows) / k}


@pytest.mark.parametrize("score", ["variation_ratio", "entropy", "bald"])
def test_ens_scores_equal_votes_entropy_and_bald_by_hand(score):
    sig = _ens_signals()
    strategy = ENS(ENS.Config(members=4, score=score))
    want = [_by_hand(rows)[score] for rows in MEMBER_PROBS]
    got = strategy.scores(sig)
    assert got.shape == (6,)
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    if score != "variation_ratio":  # ranked by the score alone: highest first (no ties among these)
        assert min(abs(a - b) for i, a in enumerate(want) for b in want[i + 1:]) > 1e-4
        order = sorted(range(6), key=lambda i: -want[i])
        for budget in (1, 3, 6):
            picked = strategy.select(sig, budget, torch.Generator().manual_seed(0))
            assert picked.tolist() == [CANDIDATES[i] for i in order[:budget]]


def test_ens_variation_ratio_ties_go_to_the_less_certain_mean_prediction():
    sig = _ens_signals()
    strategy = ENS(ENS.Config(members=4, score="variation_ratio"))
    hand = [_by_hand(rows) for rows in MEMBER_PROBS]
    ratio = [h["variation_ratio"] for h in hand]
    ent = [h["entropy"] for h in hand]
    want = sorted(range(6), key=lambda i: (-ratio[i], -ent[i], i))
    # the tie matters here: by ratio alone (ties to the lowest position) the order would differ
    assert want != sorted(range(6), key=lambda i: (-ratio[i], i))
    assert want[:3] == [5, 3, 1]  # the three ratios of 1/2, most uncertain mean prediction first
    for budget in (1, 2, 4, 6, 10):
        picked = strategy.select(sig, budget, torch.Generator().manual_seed(0))
        assert picked.tolist() == [CANDIDATES[i] for i in want[:budget]]


# ============================================================================ ENS: the module

class _Net(nn.Module):
    """A tiny model with ssal's interface: forward(x, return_features) -> logits (, features)."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(5, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x, return_features=False):
        h = torch.tanh(self.body(x))
        logits = self.head(h)
        return (logits, h) if return_features else logits


def test_ensemble_predicts_the_mean_probability_and_concatenates_features():
    members = [_Net(s) for s in (1, 2, 3)]
    ens = Ensemble(members)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        each = [F.softmax(m(x), dim=1) for m in members]
        mean = sum(each) / 3
        assert torch.allclose(F.softmax(ens(x), dim=1), mean, atol=1e-6)
        logits, feats = ens(x, return_features=True)
        assert torch.allclose(F.softmax(logits, dim=1), mean, atol=1e-6)
        assert torch.equal(feats, torch.cat([torch.tanh(m.body(x)) for m in members], dim=1))
        assert feats.shape == (7, 12)
        mp = ens.member_probs(x)
        assert mp.shape == (7, 3, 3)
        for k in range(3):
            assert torch.allclose(mp[:, k], each[k], atol=1e-7)
    # the members differ, so their mean differs from each one of them (the check above can fail)
    assert all((mean - p).abs().max() > 1e-3 for p in each)


def test_combine_makes_one_fit_of_the_members():
    fits = [FitResult(_Net(s), _Net(s + 10), float(s), {"loss": float(s), "acc": 2.0 * s}, data_seconds=0.5 * s)
            for s in (1, 2, 4)]
    fit = combine(fits)
    assert isinstance(fit.model, Ensemble) and isinstance(fit.eval_model, Ensemble)
    assert list(fit.model.members) == [f.model for f in fits]
    assert list(fit.eval_model.members) == [f.eval_model for f in fits]
    assert fit.seconds == 7.0 and fit.data_seconds == 3.5
    assert fit.logs == pytest.approx({"loss": 7 / 3, "acc": 14 / 3})
    assert fit.members == fits


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(dataset="digits"))


def test_member_probs_signal_is_each_members_softmax(digits):
    torch.manual_seed(0)
    models = [build_model(ModelConfig(backbone="cnn_small"), digits) for _ in range(3)]
    ens = Ensemble(models)
    labeled = torch.arange(5)
    cands = torch.tensor([40, 12, 33, 7, 100, 61, 8, 9, 10, 11, 300])  # 11: chunks of 8 and 3
    ctx = SelectionContext(ens, labeled, digits.train.targets[labeled], None, None, False, 0, batch_size=8)
    sig = compute_signals(Engine(progress=False), ENS(ENS.Config(members=3)), ctx, digits.train, cands)
    got = sig[MemberProbs()]
    x = to_float(digits.train.load(cands))
    with torch.no_grad():
        want = torch.stack([F.softmax(m.eval()(x), dim=1) for m in models], dim=1)
    assert got.shape == (11, 3, 10)
    assert torch.allclose(got, want, atol=1e-5)
    # one model is no ensemble: the signal says so
    single = SelectionContext(models[0], labeled, digits.train.targets[labeled], None, None, False, 0, batch_size=8)
    with pytest.raises(ValueError, match="ensemble"):
        compute_signals(Engine(progress=False), ENS(ENS.Config(members=3)), single, digits.train, cands)


# ============================================================================ ENS: whole runs

ENS_ACTIVE = {"strategy": "ens", "ens": {"members": 3}}


@pytest.fixture(scope="module")
def ens_runs(tiny_recipe, tmp_path_factory):
    """An ensemble run of 3 members (rounds 0 and 1) and the same recipe with active.strategy=entropy."""
    root = tmp_path_factory.mktemp("ens")
    path = _recipe(root, tiny_recipe, "ens", active=ENS_ACTIVE)
    assert main(["run", str(path), "--no-progress"]) == 0
    single = _recipe(root, tiny_recipe, "single", active={"strategy": "entropy"})
    assert main(["run", str(single), "--no-progress"]) == 0
    return {"root": root, "path": path, "out": root / "ens", "single": root / "single"}


def _members(path: Path, ckpt: dict, data) -> list[nn.Module]:
    cfg = load_recipe(path)
    models = []
    for part in ckpt["members"]:
        assert "ema" not in part  # train.ema is 0: the raw weights are what the round evaluated
        model = build_model(cfg.model, data)
        model.load_state_dict(part["model"])
        models.append(model.eval())
    return models


def _mean_probs(models: list[nn.Module], images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with torch.no_grad():
        each = [F.softmax(m(to_float(images)), dim=1) for m in models]
    return torch.stack(each).mean(dim=0), each


def test_ens_run_evaluates_the_mean_prediction_of_its_members(ens_runs):
    path, out = ens_runs["path"], ens_runs["out"]
    cfg = load_recipe(path)
    data = load_dataset(cfg.data, seed=cfg.seed)
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [0, 1]
    rd = RunDir(out)
    test = data.test.load(torch.arange(len(data.test)))
    for row in rows:  # both checkpoints are kept (the last two rounds' are)
        ckpt = rd.load_checkpoint(row["round"])
        assert len(ckpt["members"]) == 3
        mean, each = _mean_probs(_members(path, ckpt, data), test)
        acc = float((mean.argmax(1) == data.test.targets).float().mean())
        assert abs(acc - row["test_acc"]) <= 1e-6, (acc, row["test_acc"])
        # the mean prediction is not just one member's: the check above tells them apart
        assert any(bool((p.argmax(1) != mean.argmax(1)).any()) for p in each)


def test_ens_members_are_trained_from_different_seeds(ens_runs):
    rd = RunDir(ens_runs["out"])
    for r in (0, 1):
        states = [m["model"] for m in rd.load_checkpoint(r)["members"]]
        n_float = sum(v.is_floating_point() for v in states[0].values())
        for i in range(3):
            for j in range(i + 1, 3):
                assert len(_float_tensors_differ(states[i], states[j])) == n_float, (r, i, j)
    # and from different initial weights: member k's own seed is (seed, "init", k), member 0's a single
    # model's (seed, "init"); after 10 steps each member is still nearest to its own initial weights
    cfg = load_recipe(ens_runs["path"])
    data = load_dataset(cfg.data, seed=cfg.seed)
    inits = []
    for k in range(3):
        torch.manual_seed(derive_seed(cfg.seed, "init", *((k,) if k else ())))
        inits.append(build_model(cfg.model, data).state_dict())
    states = [m["model"] for m in rd.load_checkpoint(0)["members"]]

    def dist(a: dict, b: dict) -> float:
        return sum(float((a[k] - b[k]).pow(2).sum()) for k in a if a[k].is_floating_point())

    for k, state in enumerate(states):
        d = [dist(state, init) for init in inits]
        assert min(range(3), key=d.__getitem__) == k, d


def test_ens_member_0_is_the_single_model_of_the_same_seeds(ens_runs):
    # active.rounds=1 keeps both checkpoints (rundir.KEEP_CHECKPOINTS = 2: the last round's and the one
    # before), so round 0's exists in both runs; round 0 trains on the same initial set in both, round 1
    # does not (the strategies picked different batches)
    ens, single = RunDir(ens_runs["out"]), RunDir(ens_runs["single"])
    members = [m["model"] for m in ens.load_checkpoint(0)["members"]]
    model = single.load_checkpoint(0)["model"]
    assert members[0].keys() == model.keys()
    assert all(torch.equal(members[0][k], model[k]) for k in model)
    assert _float_tensors_differ(members[1], model) and _float_tensors_differ(members[2], model)
    assert read_metrics(ens_runs["single"])[0]["n_labeled"] == read_metrics(ens_runs["out"])[0]["n_labeled"]


def test_ens_run_predicts_with_the_mean_and_refuses_export(ens_runs, capsys):
    path, out, root = ens_runs["path"], ens_runs["out"], ens_runs["root"]
    csv_path = root / "pred.csv"
    assert main(["predict", str(out), "--out", str(csv_path), "--no-progress"]) == 0
    cfg = load_recipe(path)
    data = load_dataset(cfg.data, seed=cfg.seed)
    mean, _ = _mean_probs(_members(path, RunDir(out).load_checkpoint(1), data),
                          data.train.load(torch.arange(len(data.train))))
    conf, guess = mean.max(1)
    labels = {i: y for i, y, _ in json.loads((out / "pool.json").read_text())["labeled"]}
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data.train) == 160
    for i, row in enumerate(rows):
        assert int(row["index"]) == i
        assert row["prediction"] == data.classes[int(guess[i])]
        assert abs(float(row["confidence"]) - float(conf[i])) <= 5.1e-5
        assert row["label"] == (data.classes[labels[i]] if i in labels else "")
    capsys.readouterr()
    pt = root / "m.pt"
    assert main(["export", str(out), "--out", str(pt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssal: error: ") and "ensemble" in err and err.count("\n") == 1, err
    assert not pt.exists()


@pytest.mark.slow  # 11 s each; CI runs it
@pytest.mark.parametrize("reinit", [True, False])
def test_ens_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path, tiny_recipe, reinit):
    # 2 members, rounds 0-2: the crash comes after round 0, so the resumed run trains rounds 1 and 2 and
    # selects in round 1 with members it restored (reinit=false: each continues from its own round-0
    # weights, read back from the checkpoint, where the uninterrupted run kept them in memory)
    path = _recipe(tmp_path, tiny_recipe, "a", train={"reinit": reinit},
                   active={"strategy": "ens", "ens": {"members": 2}, "rounds": 2})
    assert main(["run", str(path), "--no-progress"]) == 0
    full = tmp_path / "a"
    b = tmp_path / "b"
    with faults.active("round.end=crash@1"), pytest.raises(faults.SimulatedCrash):
        loop.run(load_recipe(path, [f"output_dir={b}"]), progress=False)
    assert len(read_metrics(b)) == 1
    assert main(["run", "--resume", str(b), "--no-progress"]) == 0
    assert json.loads((b / "pool.json").read_text()) == json.loads((full / "pool.json").read_text())
    for r in (0, 1):
        f = Path("rounds") / f"r{r:02d}" / "selected.json"
        assert json.loads((b / f).read_text()) == json.loads((full / f).read_text())

    def measured(run: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if not k.endswith("_s")} for row in read_metrics(run)]

    assert measured(b) == measured(full)
    for r in (1, 2):
        got, want = RunDir(b).load_checkpoint(r)["members"], RunDir(full).load_checkpoint(r)["members"]
        assert len(got) == len(want) == 2
        for g, w in zip(got, want, strict=True):
            assert all(torch.equal(g["model"][k], w["model"][k]) for k in w["model"])


@pytest.mark.parametrize("override, message", [
    ("active.ens.members=1", "active.ens.members must be >= 2"),
    ("active.ens.score=foo", "active.ens.score: 'foo' is not one of"),
])
def test_ens_bad_options_are_rejected_before_anything_is_written(tmp_path, tiny_recipe, capsys, override, message):
    path = _recipe(tmp_path, tiny_recipe, "run", active=ENS_ACTIVE)
    assert main(["run", str(path), override, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssal: error: active.ens.") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


# ============================================================================ VAAL: losses by hand

def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_vae_loss_is_mse_plus_beta_times_the_mean_kl_term():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64)
    recon = torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64)
    mu = torch.randn(2, 4, generator=g, dtype=torch.float64)
    logvar = torch.randn(2, 4, generator=g, dtype=torch.float64)
    xs, rs, ms, ls = x.flatten().tolist(), recon.flatten().tolist(), mu.flatten().tolist(), logvar.flatten().tolist()
    mse = sum((a - b) ** 2 for a, b in zip(xs, rs, strict=True)) / len(xs)
    kld = -0.5 * sum(1 + lv - m * m - math.exp(lv) for m, lv in zip(ms, ls, strict=True)) / len(ms)
    for beta in (0.0, 1.0, 0.3):
        assert float(V.vae_loss(x, recon, mu, logvar, beta)) == pytest.approx(mse + beta * kld, rel=1e-12)
    assert kld > 0  # the KL term is there (beta = 0 and 1 differ)


def test_discriminator_and_adversarial_losses_are_the_bce_by_hand():
    d_l = torch.tensor([2.0, -0.5, 0.1], dtype=torch.float64)
    d_u = torch.tensor([-1.5, 0.7, 3.0, -0.2], dtype=torch.float64)
    p_l = [_sigmoid(z) for z in d_l.tolist()]
    p_u = [_sigmoid(z) for z in d_u.tolist()]
    want_d = -sum(math.log(p) for p in p_l) / 3 - sum(math.log(1 - p) for p in p_u) / 4
    want_a = -sum(math.log(p) for p in p_l) / 3 - sum(math.log(p) for p in p_u) / 4
    assert float(V.discriminator_loss(d_l, d_u)) == pytest.approx(want_d, rel=1e-12)
    assert float(V.adversarial_loss(d_l, d_u)) == pytest.approx(want_a, rel=1e-12)


# ============================================================================ VAAL: networks and signal

def test_images_signal_gives_back_the_stored_uint8_images(digits):
    model = build_model(ModelConfig(backbone="cnn_small"), digits)
    labeled = torch.tensor([5, 900, 3, 17, 64, 2, 1000, 8, 9, 77, 31])  # 11: chunks of 8 and 3
    cands = torch.tensor([400, 12, 33, 7, 100, 61, 800, 99, 10, 11, 300, 1300, 4, 6, 45, 46, 47, 48, 500, 0])  # 20
    ctx = SelectionContext(model, labeled, digits.train.targets[labeled], None, None, True, 0, batch_size=8)
    sig = compute_signals(Engine(progress=False), VAAL(), ctx, digits.train, cands)
    got, lab = sig[V.Images()], sig[V.Images(labeled=True)]
    assert got.dtype == torch.uint8 and lab.dtype == torch.uint8
    assert torch.equal(got, digits.train.load(cands))
    assert torch.equal(lab, digits.train.load(labeled))
    assert int(got.max()) > 200  # real images, not zeros: the check can fail


def test_labeled_probability_is_the_discriminators_sigmoid_on_the_codes():
    torch.manual_seed(0)
    vae, disc = V.VAE(1, 4, width=4).eval(), V.Discriminator(4, hidden=8).eval()
    g = torch.Generator().manual_seed(1)
    small = torch.randint(0, 256, (5, 1, 8, 8), generator=g, dtype=torch.uint8)
    full = torch.randint(0, 256, (3, 1, 32, 32), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        x = F.interpolate(small.double().div(255).float(), size=(32, 32), mode="bilinear", align_corners=False)
        want_small = torch.sigmoid(disc(vae.encode(x)[0]))
        want_full = torch.sigmoid(disc(vae.encode(full.double().div(255).float())[0]))  # 32 x 32: no resize
    assert torch.allclose(V.labeled_probability(vae, disc, small, chunk=2), want_small, atol=1e-6)
    assert torch.allclose(V.labeled_probability(vae, disc, full), want_full, atol=1e-6)
    assert V.labeled_probability(vae, disc, small[:0]).shape == (0,)


# ============================================================================ VAAL: the strategy

def _vaal_signals(n: int, cands: list[int]) -> Signals:
    g = torch.Generator().manual_seed(n)
    return Signals(candidates=torch.tensor(cands), labeled=torch.tensor([1, 2, 3]),
                   values={V.Images(): torch.randint(0, 256, (len(cands), 1, 8, 8), generator=g, dtype=torch.uint8),
                           V.Images(labeled=True): torch.randint(0, 256, (3, 1, 8, 8), generator=g,
                                                                 dtype=torch.uint8)})


def test_vaal_selects_the_lowest_probability_of_labeled(monkeypatch):
    cands = [30, 4, 17, 9, 22, 41, 5, 13]
    probability = [0.9, 0.15, 0.6, 0.05, 0.7, 0.3, 0.95, 0.2]
    sig = _vaal_signals(1, cands)
    strategy = VAAL(VAAL.Config(steps=2))
    calls = []

    def fake_train(labeled, unlabeled, cfg, gen, device="cpu"):
        calls.append((labeled, unlabeled, cfg))
        return "vae", "disc"

    def fake_probability(vae, disc, images, device="cpu", chunk=512):
        assert (vae, disc) == ("vae", "disc") and torch.equal(images, sig[V.Images()])
        return torch.tensor(probability)

    monkeypatch.setattr(V, "train_vaal", fake_train)
    monkeypatch.setattr(V, "labeled_probability", fake_probability)
    assert strategy.scores(sig) is None  # nothing trained yet
    want = sorted(range(8), key=lambda i: probability[i])
    for budget in (1, 3, 7):
        picked = strategy.select(sig, budget, torch.Generator().manual_seed(0))
        assert picked.tolist() == [cands[i] for i in want[:budget]]
        assert strategy.scores(sig).tolist() == pytest.approx([-p for p in probability])
    labeled, unlabeled, cfg = calls[0]
    assert len(calls) == 3 and cfg is strategy.cfg
    assert torch.equal(labeled, sig[V.Images(labeled=True)]) and torch.equal(unlabeled, sig[V.Images()])
    # scores belong to the candidates they were computed for
    other = _vaal_signals(2, [30, 4, 17, 9, 22, 41, 5, 14])
    assert strategy.scores(other) is None


def test_vaal_takes_every_candidate_without_training_when_the_budget_covers_them(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(V, "train_vaal", boom)
    sig = _vaal_signals(3, [8, 2, 6])
    for budget in (3, 10):
        assert torch.equal(VAAL(VAAL.Config()).select(sig, budget, torch.Generator()), sig.candidates)


SMALL = VAAL.Config(steps=3, batch_size=4, width=4, latent=4)


def test_train_vaal_is_seeded_by_its_generator_alone():
    g = torch.Generator().manual_seed(0)
    labeled = torch.randint(0, 256, (10, 1, 8, 8), generator=g, dtype=torch.uint8)
    unlabeled = torch.randint(0, 256, (12, 1, 8, 8), generator=g, dtype=torch.uint8)
    probe = torch.randint(0, 256, (6, 1, 8, 8), generator=g, dtype=torch.uint8)

    def probability(seed: int) -> torch.Tensor:
        vae, disc = V.train_vaal(labeled, unlabeled, SMALL, torch.Generator().manual_seed(seed))
        assert not vae.training and not disc.training
        return V.labeled_probability(vae, disc, probe)

    state = torch.get_rng_state()
    a = probability(7)
    torch.manual_seed(123)  # the global generator plays no part ...
    b = probability(7)
    assert torch.equal(a, b)
    assert not torch.equal(a, probability(8))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    probability(9)
    assert torch.equal(torch.get_rng_state(), before)  # ... and is left as it was
    torch.set_rng_state(state)


def _dark_and_bright(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dark = torch.randint(0, 50, (40, 1, 8, 8), generator=g, dtype=torch.uint8)
    bright = torch.randint(200, 256, (40, 1, 8, 8), generator=g, dtype=torch.uint8)
    return dark, bright


def test_train_vaal_discriminator_learns_labeled_from_unlabeled():
    # labeled images all dark, unlabeled all bright. The VAE's adversarial loss is off (adversary 0):
    # at this size the VAE wins the minimax game within 100 steps and every probability is ~0.5, which
    # says nothing about the discriminator. The codes are taken the way training takes them: one batch
    # of one kind through the VAE in training mode (BatchNorm on the batch's own statistics); on
    # held-out images, labeled (dark) must look more "labeled" than unlabeled (bright).
    dark, bright = _dark_and_bright(0)
    cfg = VAAL.Config(steps=60, batch_size=8, width=4, latent=8, adversary=0.0, lr=1e-3)
    vae, disc = V.train_vaal(dark[:30], bright[:30], cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        vae.train()
        p_dark = torch.sigmoid(disc(vae.encode(V._prepare(dark[30:]))[0]))
        p_bright = torch.sigmoid(disc(vae.encode(V._prepare(bright[30:]))[0]))
    assert p_dark.mean() > p_bright.mean() + 0.05, (p_dark.mean(), p_bright.mean())
    # untrained (steps 0 is what 0 iterations give): no preference either way
    untrained = V.train_vaal(dark[:30], bright[:30], VAAL.Config(steps=0, width=4, latent=8, adversary=0.0),
                             torch.Generator().manual_seed(0))
    with torch.no_grad():
        untrained[0].train()
        q = [torch.sigmoid(untrained[1](untrained[0].encode(V._prepare(x[30:]))[0])).mean() for x in (dark, bright)]
    assert abs(float(q[0] - q[1])) < abs(float(p_dark.mean() - p_bright.mean()))


def test_vaal_run_selects_by_the_probabilities_of_its_own_networks(tmp_path, tiny_recipe):
    path = _recipe(tmp_path, tiny_recipe, "run", train={"steps": 3},
                   active={"strategy": "vaal", "vaal": {"steps": 3, "batch_size": 8}})
    assert main(["run", str(path), "--no-progress"]) == 0
    out = tmp_path / "run"
    sel = json.loads((out / "rounds" / "r00" / "selected.json").read_text())
    scores = sel["scores"]
    assert sel["strategy"] == "vaal" and len(sel["indices"]) == len(scores) == 7
    assert scores == sorted(scores, reverse=True)  # ascending probability of "labeled"
    assert all(-1 <= s <= 0 for s in scores)
    # the same networks again, from what round 0 had: its labeled set (in acquisition order), its
    # candidates (the seeded subset), the seeds of its selection
    cfg = load_recipe(path)
    data = load_dataset(cfg.data, seed=cfg.seed)
    pool = RunDir(out).load_pool(len(data.train)).head(20)
    cands = candidates(pool.unlabeled_indices, cfg.active.subset, generator(cfg.seed, "subset", 0))
    assert len(cands) == 60
    vae, disc = V.train_vaal(data.train.load(pool.labeled_indices), data.train.load(cands), cfg.active.vaal,
                             generator(cfg.seed, "select", 0))
    probability = V.labeled_probability(vae, disc, data.train.load(cands)).tolist()
    order = sorted(range(len(cands)), key=lambda i: probability[i])
    assert sel["indices"] == [int(cands[i]) for i in order[:7]]
    assert scores == pytest.approx([-probability[i] for i in order[:7]], abs=1e-6)
