"""Learning loss (active.strategy=ll): the ranking loss, the loss-prediction module and its hooks, the stop
gradient, the module trained along an objective, end to end with resume, up-front rejections, two processes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import run_two_processes
from torch import nn

from ssal import faults
from ssal.cli import main
from ssal.data import load_dataset
from ssal.data.views import to_float
from ssal.errors import ConfigError
from ssal.experiment import loop
from ssal.experiment.report import read_metrics
from ssal.models import build_model
from ssal.recipe import DataConfig, ModelConfig, TrainConfig, from_dict, load_recipe
from ssal.select import STRATEGIES
from ssal.select.learning_loss import LossPrediction, ranking_loss
from ssal.select.signals import candidates
from ssal.select.stage import generator
from ssal.semi import OBJECTIVES
from ssal.semi.fixmatch import fixmatch_loss

LL = STRATEGIES.get("ll")


# ----------------------------------------------------------------------------- helpers (independent computations)

def ranking_by_hand(predicted: list[float], target: list[float], margin: float) -> float:
    """The paper's pairs (i, B - 1 - i), i < B // 2, in plain Python."""
    b = len(predicted)
    terms = []
    for i in range(b // 2):
        j = b - 1 - i
        sign = 1.0 if target[i] > target[j] else -1.0
        terms.append(max(0.0, margin - sign * (predicted[i] - predicted[j])))
    return sum(terms) / len(terms)


def ranking_grad_by_hand(predicted: list[float], target: list[float], margin: float) -> list[float]:
    b = len(predicted)
    grad = [0.0] * b
    pairs = b // 2
    for i in range(pairs):
        j = b - 1 - i
        sign = 1.0 if target[i] > target[j] else -1.0
        if margin - sign * (predicted[i] - predicted[j]) > 0:
            grad[i] -= sign / pairs
            grad[j] += sign / pairs
    return grad


class StageTap:
    """Our own forward hooks on the stages ``aux`` reads and on the head: what they output, whole."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.maps: dict[str, torch.Tensor] = {}
        self.logits: torch.Tensor | None = None
        self.handles = [model.backbone.get_submodule(name).register_forward_hook(self._keep(name)) for name in names]
        self.handles.append(model.head.register_forward_hook(self._keep_logits))

    def _keep(self, name: str):
        def hook(module, args, output):
            self.maps[name] = output
        return hook

    def _keep_logits(self, module, args, output):
        self.logits = output

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def predict_by_hand(aux: LossPrediction, maps: list[torch.Tensor], n: int) -> torch.Tensor:
    """Per stage: GAP over H, W of the first n samples -> fc_i -> ReLU; concatenated -> out."""
    parts = []
    for fc, m in zip(aux.fcs, maps, strict=True):
        pooled = m[:n].float().sum(dim=(2, 3)) / (m.shape[2] * m.shape[3])
        parts.append(torch.clamp(pooled @ fc.weight.T + fc.bias, min=0.0))
    h = torch.cat(parts, dim=1)
    return (h @ aux.out.weight.T + aux.out.bias)[:, 0]


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(dataset="digits"))


def fresh(digits, seed: int = 0, cfg=None) -> tuple[nn.Module, LossPrediction]:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(), digits)
    return model, LL(cfg).auxiliary(model)


def batch_of(digits, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.arange(start, start + n)
    return to_float(digits.train.load(idx)), digits.train.targets[idx].long()


# ----------------------------------------------------------------------------- 1. ranking_loss

def test_ranking_loss_matches_the_pairs_by_hand():
    predicted = torch.tensor([0.3, -1.2, 2.0, 0.5, 0.9, -0.4])
    target = torch.tensor([1.0, 0.2, 0.7, 0.7, 3.0, 0.1])  # pair (2, 3) ties: sign -1
    for margin in (0.0, 0.5, 1.0, 2.5):
        want = ranking_by_hand(predicted.tolist(), target.tolist(), margin)
        assert ranking_loss(predicted, target, margin).item() == pytest.approx(want, abs=1e-6)
    # margin 1 is the default
    assert ranking_loss(predicted, target).item() == pytest.approx(
        ranking_by_hand(predicted.tolist(), target.tolist(), 1.0), abs=1e-6)
    # a pair with equal targets takes sign -1: loss max(0, m + (p_i - p_j))
    tie = ranking_loss(torch.tensor([0.3, 0.0]), torch.tensor([2.0, 2.0]), 1.0)
    assert tie.item() == pytest.approx(1.3, abs=1e-6)


def test_an_odd_batch_leaves_the_middle_sample_out():
    predicted = torch.tensor([0.3, -1.2, 2.0, 7.0, 0.5, 0.9, -0.4])
    target = torch.tensor([1.0, 0.2, 0.7, 9.0, 0.7, 3.0, 0.1])
    want = ranking_by_hand(predicted.tolist(), target.tolist(), 1.0)
    got = ranking_loss(predicted, target, 1.0)
    assert got.item() == pytest.approx(want, abs=1e-6)
    # the middle sample is in no pair: changing it changes nothing
    other_p, other_t = predicted.clone(), target.clone()
    other_p[3], other_t[3] = -50.0, -3.0
    assert ranking_loss(other_p, other_t, 1.0).item() == pytest.approx(got.item(), abs=1e-7)
    # the even batch without the middle sample is the same loss
    keep = torch.tensor([0, 1, 2, 4, 5, 6])
    assert ranking_loss(predicted[keep], target[keep], 1.0).item() == pytest.approx(got.item(), abs=1e-7)
    # a single sample has no pair: zero, and backward still works
    one = torch.tensor([0.7], requires_grad=True)
    loss = ranking_loss(one, torch.tensor([1.0]), 1.0)
    assert loss.item() == 0.0
    loss.backward()
    assert one.grad is not None and one.grad.abs().sum().item() == 0.0


def test_ranking_loss_gradient_reaches_the_prediction_not_the_target():
    for values in ([0.3, -1.2, 2.0, 0.5, 0.9, -0.4], [0.3, -1.2, 2.0, 7.0, 0.5, 0.9, -0.4]):
        b = len(values)
        predicted = torch.tensor(values, requires_grad=True)
        target = torch.linspace(0.0, 1.0, b).flip(0).roll(2).clone().requires_grad_(True)
        ranking_loss(predicted, target, 0.8).backward()
        assert target.grad is None
        want = ranking_grad_by_hand(values, target.detach().tolist(), 0.8)
        assert torch.allclose(predicted.grad, torch.tensor(want), atol=1e-6)
        assert predicted.grad.abs().sum() > 0
        if b % 2:
            assert predicted.grad[b // 2] == 0.0


# ----------------------------------------------------------------------------- 2. the module

def test_the_module_reads_the_last_stages_of_the_backbone(digits):
    model, aux = fresh(digits)
    info = model.backbone.feature_info
    assert aux.names == [s["module"] for s in info[-4:]]
    assert [fc.in_features for fc in aux.fcs] == [s["num_chs"] for s in info[-4:]]
    assert all(fc.out_features == 128 for fc in aux.fcs) and aux.out.in_features == 128 * len(aux.fcs)

    class Six(nn.Module):  # more stages than four: the last four
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(*[nn.Conv2d(2, 2, 1) for _ in range(6)])
            self.feature_info = [{"module": f"blocks.{i}", "num_chs": 2 + i, "reduction": 1} for i in range(6)]

    fake = nn.Module()
    fake.backbone = Six()
    six = LossPrediction(fake, dim=5, margin=1.0, weight=1.0, stop_gradient=0.6)
    assert six.names == ["blocks.2", "blocks.3", "blocks.4", "blocks.5"]
    assert [fc.in_features for fc in six.fcs] == [4, 5, 6, 7] and six.out.in_features == 20


def test_predict_is_the_head_over_the_labeled_samples_stages(digits):
    model, aux = fresh(digits)
    n = 6
    x, _ = batch_of(digits, 0, 2 * n)
    tap = StageTap(model, aux.names)
    with aux.watching(model, n):
        model(x)
        predicted = aux.predict()
    tap.remove()
    assert predicted.shape == (n,)
    want = predict_by_hand(aux, [tap.maps[name] for name in aux.names], n)
    assert torch.allclose(predicted, want, atol=1e-6)
    # the labeled samples alone: the unlabeled half does not enter (eval mode: no batch statistics)
    model.eval()
    with aux.watching(model, n):
        model(x)
        both = aux.predict()
    with aux.watching(model, n):
        model(x[:n])
        alone = aux.predict()
    assert torch.allclose(both, alone, atol=1e-5)
    # the hooks are gone after the block
    for name in aux.names:
        assert len(model.backbone.get_submodule(name)._forward_hooks) == 0
    assert len(model.head._forward_hooks) == 0
    model(x)  # a pass outside the block is not seen
    assert torch.equal(aux.predict(), alone)


def test_the_hooks_are_removed_when_the_pass_fails(digits):
    model, aux = fresh(digits)
    with pytest.raises(RuntimeError), aux.watching(model, 2):
        model(torch.zeros(4, 3, 8, 8))  # wrong channels
    for name in aux.names:
        assert len(model.backbone.get_submodule(name)._forward_hooks) == 0
    assert len(model.head._forward_hooks) == 0


# ----------------------------------------------------------------------------- 3. loss and stop gradient

def _loss_at(digits, step: int, steps: int, cfg=None):
    model, aux = fresh(digits, cfg=cfg)
    n = 8
    x, y = batch_of(digits, 20, 2 * n)
    tap = StageTap(model, aux.names)
    with aux.watching(model, n):
        model(x)
    tap.remove()
    hand_pred = predict_by_hand(aux, [tap.maps[name] for name in aux.names], n)
    ce = F.cross_entropy(tap.logits[:n].float(), y[:n], reduction="none")
    loss, logs = aux.loss(y[:n], step, steps)
    return model, aux, loss, logs, hand_pred, ce


def test_loss_is_the_weighted_ranking_loss_of_predicted_and_true_losses(digits):
    cfg = LL.Config(weight=0.7, margin=0.4, dim=16)
    model, aux, loss, logs, hand_pred, ce = _loss_at(digits, 0, 10, cfg)
    want = ranking_by_hand(hand_pred.tolist(), ce.tolist(), 0.4)
    assert logs["ll_loss"].item() == pytest.approx(want, abs=1e-6)
    assert not logs["ll_loss"].requires_grad
    assert loss.item() == pytest.approx(0.7 * want, abs=1e-6)
    assert want > 0
    assert aux._seen == {}  # what was seen is used once


def _grads(module: nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def assert_module_trains(aux: LossPrediction) -> None:
    """Every weight of the module gets a gradient; the output bias one of zero (a ranking loss sees only
    differences of predictions)."""
    for name, p in aux.named_parameters():
        assert p.grad is not None, name
        if name == "out.bias":
            assert p.grad.abs().item() < 1e-6
        else:
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("step", [0, 5])
def test_before_the_stop_the_loss_trains_the_backbone(digits, step):
    model, aux, loss, _, _, _ = _loss_at(digits, step, 10)
    loss.backward()
    backbone = [g for g in _grads(model.backbone) if g is not None]
    assert backbone and sum(g.abs().sum().item() for g in backbone) > 0
    assert all(g is None for g in _grads(model.head))  # the target (CE of the logits) carries no gradient
    assert_module_trains(aux)


@pytest.mark.parametrize("step", [6, 9])
def test_after_the_stop_the_loss_trains_only_its_module(digits, step):
    model, aux, loss, _, _, _ = _loss_at(digits, step, 10)  # stop_gradient 0.6 of 10 steps: from step 6
    loss.backward()
    assert all(g is None or g.abs().sum() == 0 for g in _grads(model.backbone))
    assert all(g is None for g in _grads(model.head))
    assert_module_trains(aux)


# ----------------------------------------------------------------------------- 4. along an objective

def _train_cfg(method: str):
    return from_dict({"train": {"method": method, "steps": 10, "batch_size": 4,
                                "fixmatch": {"mu": 2, "threshold": 0.0}}})["train"]


@pytest.mark.parametrize("method", ["supervised", "fixmatch"])
def test_the_objective_adds_the_module_loss(digits, method):
    model, aux = fresh(digits)
    obj = OBJECTIVES.get(method)(model, _train_cfg(method))
    assert obj.auxiliary is None
    obj.attach(None)
    assert obj.auxiliary is None
    obj.attach(aux)
    assert obj.auxiliary is aux
    assert {id(p) for p in aux.parameters()} <= {id(p) for p in obj.parameters()}
    obj.train()
    n = 4
    x, y = batch_of(digits, 40, n)
    batch = {"x_l": x, "y_l": y}
    if method == "fixmatch":
        u, _ = batch_of(digits, 100, 2 * n)
        batch.update(u_w=u, u_s=u.flip(3))
    tap = StageTap(model, aux.names)
    loss, logs = obj(batch)
    tap.remove()
    logits = tap.logits
    if method == "supervised":
        base = F.cross_entropy(logits, y)
    else:
        assert len(logits) == 5 * n  # one pass over labeled and unlabeled; the module kept the labeled rows
        l_x, l_uw, l_us = logits.split([n, 2 * n, 2 * n])
        base = fixmatch_loss(l_x, y, l_uw, l_us, 0.0, 1.0)[0]
    hand_pred = predict_by_hand(aux, [tap.maps[name] for name in aux.names], n)
    ce = F.cross_entropy(logits[:n].float(), y, reduction="none")
    ll = ranking_by_hand(hand_pred.tolist(), ce.tolist(), 1.0)
    assert "ll_loss" in logs and logs["ll_loss"].item() == pytest.approx(ll, abs=1e-6)
    assert loss.item() == pytest.approx(base.item() + 1.0 * ll, abs=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in aux.parameters())
    state = obj.extra_state()
    assert state and all(k.startswith("auxiliary.") for k in state)
    assert set(state) >= {f"auxiliary.{k}" for k in aux.state_dict()}
    # the state restores into a fresh objective with a fresh module
    model2, aux2 = fresh(digits, seed=1)
    obj2 = OBJECTIVES.get(method)(model2, _train_cfg(method))
    obj2.attach(aux2)
    obj2.load_extra_state(state)
    for k, v in aux.state_dict().items():
        assert torch.equal(aux2.state_dict()[k], v), k


def test_the_plain_config_objective(digits):
    """TrainConfig() (no recipe): the objective is cross-entropy plus the module's ranking loss at its
    default weight and margin (1.0 each), computed by hand from the tapped stages."""
    model, aux = fresh(digits)
    obj = OBJECTIVES.get("supervised")(model, TrainConfig())
    obj.attach(aux)
    obj.train()
    n = 6
    x, y = batch_of(digits, 0, n)
    tap = StageTap(model, aux.names)
    loss, logs = obj({"x_l": x, "y_l": y})
    tap.remove()
    hand_pred = predict_by_hand(aux, [tap.maps[name] for name in aux.names], n)
    ce = F.cross_entropy(tap.logits.float(), y, reduction="none")
    ll = ranking_by_hand(hand_pred.tolist(), ce.tolist(), LL.Config().margin)
    assert ll > 0
    assert logs["ll_loss"].item() == pytest.approx(ll, abs=1e-6)
    assert loss.item() == pytest.approx(ce.mean().item() + LL.Config().weight * ll, abs=1e-5)


# ----------------------------------------------------------------------------- 5. end to end

def _recipe(tmp: Path, tiny_recipe, name: str, method: str) -> Path:
    train = {"method": method, "steps": 10, "batch_size": 8}
    if method == "fixmatch":
        train["fixmatch"] = {"mu": 2}
    sections = {"train": train, "data": {"pool_size": 160, "test_size": 60},
                "active": {"initial": 20, "budget": 7, "rounds": 2, "subset": 60, "strategy": "ll"}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp / name, **sections)))
    return path


@pytest.fixture(scope="module", params=["supervised", "fixmatch"])
def ll_run(request, tmp_path_factory, tiny_recipe):
    tmp = tmp_path_factory.mktemp(f"ll_{request.param}")
    path = _recipe(tmp, tiny_recipe, "full", request.param)
    assert main(["run", str(path), "--no-progress"]) == 0
    return path, tmp / "full"


def _selection(out: Path, r: int | str) -> dict:
    name = r if isinstance(r, str) else f"r{r:02d}"
    return json.loads((out / "rounds" / name / "selected.json").read_text())


def test_a_run_selects_the_highest_predicted_losses(ll_run):
    path, out = ll_run
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(math.isfinite(r["train_ll_loss"]) and r["train_ll_loss"] >= 0 for r in rows)
    for r in (0, 1):
        sel = _selection(out, r)
        assert sel["strategy"] == "ll" and len(sel["indices"]) == 7
        scores = sel["scores"]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    # round 1's selection again, from round 1's checkpoint: its module on the same candidates
    cfg = load_recipe(path)
    data = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir)
    ckpt = torch.load(out / "checkpoints" / "round_01.pt", weights_only=True)
    model = build_model(cfg.model, data)
    model.load_state_dict(ckpt["model"])
    aux = LL(cfg.active.ll).auxiliary(model)
    assert set(ckpt["objective"]) >= {f"auxiliary.{k}" for k in aux.state_dict()}
    aux.load_state_dict({k[len("auxiliary."):]: v for k, v in ckpt["objective"].items() if k.startswith("auxiliary.")})
    model.eval()
    aux.eval()
    labeled = set(_selection(out, "initial")["indices"]) | set(_selection(out, 0)["indices"])
    unlabeled = torch.tensor([i for i in range(len(data.train)) if i not in labeled])
    cands = candidates(unlabeled, cfg.active.subset, generator(cfg.seed, "subset", 1))
    tap = StageTap(model, aux.names)
    with torch.no_grad():
        model(to_float(data.train.load(cands)))
        predicted = predict_by_hand(aux, [tap.maps[name] for name in aux.names], len(cands))
    tap.remove()
    order = torch.sort(predicted, descending=True, stable=True).indices[:7]
    sel = _selection(out, 1)
    assert cands[order].tolist() == sel["indices"]
    assert torch.allclose(predicted[order], torch.tensor(sel["scores"]), atol=1e-5)


@pytest.mark.slow  # 3-4 s each; CI runs it
def test_resume_after_round_0_selects_as_the_uninterrupted_run(ll_run, tmp_path):
    path, full = ll_run
    b = tmp_path / "b"
    with faults.active("round.end=crash@1"), pytest.raises(faults.SimulatedCrash):
        loop.run(load_recipe(path, [f"output_dir={b}"]), progress=False)
    assert len(read_metrics(b)) == 1
    assert main(["run", "--resume", str(b), "--no-progress"]) == 0
    assert json.loads((b / "pool.json").read_text()) == json.loads((full / "pool.json").read_text())
    for r in ("initial", 0, 1):
        assert _selection(b, r) == _selection(full, r)
    assert [row["train_ll_loss"] for row in read_metrics(b)] == [row["train_ll_loss"] for row in read_metrics(full)]


@pytest.mark.slow  # 4-5 s each; CI runs it
def test_resume_of_a_pending_selection_restores_the_module(ll_run, tmp_path):
    """Killed after round 1 chose but before it was recorded: the resumed run selects again with round 1's
    checkpoint, whose module (the objective's state) must come back with the model."""
    path, full = ll_run
    b = tmp_path / "b"
    with faults.active("select=crash@2"), pytest.raises(faults.SimulatedCrash):
        loop.run(load_recipe(path, [f"output_dir={b}"]), progress=False)
    assert len(read_metrics(b)) == 1 and not (b / "rounds" / "r01").exists()
    assert main(["run", "--resume", str(b), "--no-progress"]) == 0
    assert _selection(b, 1) == _selection(full, 1)
    assert json.loads((b / "pool.json").read_text()) == json.loads((full / "pool.json").read_text())


# ----------------------------------------------------------------------------- 6. rejected up front

def test_a_backbone_without_stages_is_rejected():
    with pytest.raises(ConfigError, match="feature_info"):
        LL().check_model(torch.nn.Linear(2, 2), 10)


@pytest.mark.parametrize(("override", "start"), [
    ("active.ll.stop_gradient=2", "ssal: error: active.ll.stop_gradient"),
    ("active.ll.stop_gradient=-0.1", "ssal: error: active.ll.stop_gradient"),
    ("active.ll.dim=0", "ssal: error: active.ll.dim"),
    ("active.ll.margin=-1", "ssal: error: active.ll.margin"),
    ("active.ll.weight=-1", "ssal: error: active.ll.weight"),
    ("train.batch_size=1", "ssal: error: active.strategy=ll pairs the labeled samples"),
])
def test_bad_settings_are_rejected_in_one_line(tmp_path, tiny_recipe, capsys, override, start):
    out = tmp_path / "out"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(out, active={"strategy": "ll"})))
    capsys.readouterr()
    assert main(["run", str(path), override]) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(start), err


# ----------------------------------------------------------------------------- 7. two processes

@pytest.mark.slow  # torchrun, 2 CPU processes
def test_two_processes_pair_over_the_global_batch(tmp_path):
    script = tmp_path / "dist_ll.py"
    script.write_text(
        "import torch\n"
        "import torch.distributed as dist\n"
        "import torch.nn.functional as F\n"
        "from ssal.data import load_dataset\n"
        "from ssal.data.views import to_float\n"
        "from ssal.engine import Engine\n"
        "from ssal.models import build_model\n"
        "from ssal.recipe import DataConfig, ModelConfig\n"
        "from ssal.select import STRATEGIES\n"
        "from ssal.select.learning_loss import ranking_loss\n"
        "engine = Engine(progress=False)\n"
        "assert engine.world == 2 and dist.is_initialized()\n"
        "rank = engine.rank\n"
        "data = load_dataset(DataConfig(dataset='digits'))\n"
        "torch.manual_seed(0)\n"
        "model = build_model(ModelConfig(), data).eval()  # per-sample features: no batch statistics\n"
        "strategy = STRATEGIES.get('ll')(STRATEGIES.get('ll').Config(weight=0.5, margin=0.3))\n"
        "aux = strategy.auxiliary(model)\n"
        "x = to_float(data.train.load(torch.arange(30, 38)))\n"
        "y = data.train.targets[torch.arange(30, 38)].long()\n"
        "# the reference: the whole batch of 8 in this process, paired (i, 7 - i)\n"
        "with aux.watching(model, 8):\n"
        "    logits = model(x)\n"
        "    pred = aux.predict()\n"
        "ce = F.cross_entropy(logits, y, reduction='none').detach()\n"
        "ref = 0.5 * ranking_loss(pred, ce, 0.3)\n"
        "ref_grads = torch.autograd.grad(ref, list(aux.parameters()))\n"
        "local = 0.5 * ranking_loss(pred[4 * rank: 4 * rank + 4], ce[4 * rank: 4 * rank + 4], 0.3)\n"
        "# this rank's 4 rows\n"
        "with aux.watching(model, 4):\n"
        "    model(x[4 * rank: 4 * rank + 4])\n"
        "loss, logs = aux.loss(y[4 * rank: 4 * rank + 4], 0, 10)\n"
        "assert abs(loss.item() - ref.item()) < 1e-6, (rank, loss.item(), ref.item())\n"
        "assert abs(logs['ll_loss'].item() - ref.item() / 0.5) < 1e-6\n"
        "assert abs(local.item() - ref.item()) > 1e-4, 'the batch does not tell global from local pairs'\n"
        "both = torch.stack([loss.detach(), ref.detach()])\n"
        "seen = [torch.zeros(2), torch.zeros(2)]\n"
        "dist.all_gather(seen, both)\n"
        "assert torch.allclose(seen[0], seen[1], atol=1e-7)\n"
        "# gradients: averaged over the processes (as DDP does) they are the single process's\n"
        "grads = torch.autograd.grad(loss, list(aux.parameters()))\n"
        "for g, want in zip(grads, ref_grads):\n"
        "    g = g.clone()\n"
        "    dist.all_reduce(g)\n"
        "    assert torch.allclose(g / 2, want, atol=1e-6), (rank, (g / 2 - want).abs().max())\n"
        "engine.close()  # leave the group: a process that exits inside it may abort in gloo's teardown\n"
        "print(f'rank {rank} ok', flush=True)\n")
    run_two_processes(script, port=29581)
