"""Fine-tuning objectives: losses against hand computations, EMA math, tiny end-to-end runs and
resume of the extra modules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import run_two_processes
from torch import nn

from ssal.experiment import loop
from ssal.experiment.report import read_metrics
from ssal.models.ema import batch_statistics, ema_model
from ssal.recipe import load_recipe, resume_recipe
from ssal.semi import OBJECTIVES
from ssal.semi.base import Objective, make_objective, resolve_views
from ssal.semi.consistency import consistency_loss, sigmoid_rampup
from ssal.semi.contrastive import supcon_loss
from ssal.semi.fixmatch import adaptive_thresholds, fixmatch_loss, update_adaptive_state
from ssal.semi.tod import output_discrepancy_loss

METHODS = ["supervised", "fixmatch", "consistency", "tod", "contrastive"]


def softmax_row(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def ce_row(row: list[float], y: int) -> float:
    return -math.log(softmax_row(row)[y])


# ----------------------------------------------------------------------------- fixmatch

def test_fixmatch_loss_by_hand():
    l_x = [[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
    y = [0, 2]
    l_uw = [[6.0, 0.0, 0.0], [0.0, 0.2, 0.1], [0.0, 0.0, 9.0]]  # confident, unsure, confident
    l_us = [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 1.0, 1.5]]
    tau, lam = 0.95, 0.7
    q = [softmax_row(r) for r in l_uw]
    mask = [1.0 if max(p) >= tau else 0.0 for p in q]
    assert mask == [1.0, 0.0, 1.0]
    pseudo = [p.index(max(p)) for p in q]
    expected = sum(ce_row(r, t) for r, t in zip(l_x, y, strict=True)) / 2 + \
        lam * sum(m * ce_row(r, t) for r, t, m in zip(l_us, pseudo, mask, strict=True)) / 3

    t = lambda v: torch.tensor(v, requires_grad=True)  # noqa: E731
    uw = t(l_uw)
    loss, got_mask, got_pseudo = fixmatch_loss(t(l_x), torch.tensor(y), uw, t(l_us), tau, lam)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert got_mask.tolist() == mask and got_pseudo.tolist() == pseudo
    loss.backward()
    assert uw.grad is None or torch.count_nonzero(uw.grad) == 0  # pseudo-labels carry no gradient


def test_fixmatch_threshold_is_inclusive_and_an_empty_mask_leaves_the_supervised_loss():
    # two classes with logits (log p, log(1-p)) give confidence exactly p
    p = 0.75
    l_uw = torch.tensor([[math.log(p), math.log(1 - p)], [math.log(0.74), math.log(0.26)]])
    l_us = torch.tensor([[0.0, 3.0], [0.0, 3.0]])
    l_x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    _, mask, _ = fixmatch_loss(l_x, y, l_uw, l_us, threshold=0.75 - 1e-6, lambda_u=1.0)
    assert mask.tolist() == [1.0, 0.0]
    loss, mask, _ = fixmatch_loss(l_x, y, l_uw, l_us, threshold=0.99, lambda_u=1.0)
    assert mask.sum() == 0
    assert loss.item() == pytest.approx(ce_row([1.0, 0.0], 0))


def test_fixmatch_loss_with_one_threshold_per_class():
    # two classes with logits (log p, log(1-p)): confidence p, pseudo-label 0 when p > 0.5
    rows = [(0.8, 0), (0.6, 0), (0.3, 1), (0.1, 1)]  # (p of class 0, pseudo-label)
    l_uw = torch.tensor([[math.log(p), math.log(1 - p)] for p, _ in rows])
    l_us = torch.tensor([[0.5, 0.0], [0.0, 0.5], [1.0, 0.0], [0.0, 2.0]])
    l_x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    per_class = torch.tensor([0.7, 0.8])  # class 0 needs 0.7, class 1 needs 0.8
    loss, mask, pseudo = fixmatch_loss(l_x, y, l_uw, l_us, per_class, lambda_u=0.5)
    assert pseudo.tolist() == [t for _, t in rows]
    # confidences 0.8, 0.6, 0.7, 0.9 against thresholds 0.7, 0.7, 0.8, 0.8
    assert mask.tolist() == [1.0, 0.0, 0.0, 1.0]
    expected = ce_row([1.0, 0.0], 0) + 0.5 * (ce_row([0.5, 0.0], 0) + ce_row([0.0, 2.0], 1)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_adaptive_state_and_thresholds_by_hand():
    g, c = torch.tensor(1 / 3), torch.full((3,), 1 / 3)
    p1 = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    update_adaptive_state(g, c, p1, momentum=0.9)
    assert g.item() == pytest.approx(0.9 / 3 + 0.1 * 0.75)
    assert c.tolist() == pytest.approx([0.3 + 0.1 * 0.4, 0.3 + 0.1 * 0.5, 0.3 + 0.1 * 0.1])
    p2 = torch.tensor([[0.2, 0.2, 0.6]])
    update_adaptive_state(g, c, p2, momentum=0.9)
    g2 = 0.9 * (0.3 + 0.075) + 0.1 * 0.6
    c2 = [0.9 * 0.34 + 0.02, 0.9 * 0.35 + 0.02, 0.9 * 0.31 + 0.06]
    assert g.item() == pytest.approx(g2) and c.tolist() == pytest.approx(c2)
    # the most probable class gets the global threshold, the others proportionally less
    assert adaptive_thresholds(g, c).tolist() == pytest.approx([g2 * v / max(c2) for v in c2])


def test_adaptive_fixmatch_objective_updates_its_state_then_masks_with_it():
    torch.manual_seed(0)
    obj = OBJECTIVES.get("fixmatch")(Tiny(), cfg_for("fixmatch", mu=2, threshold_mode="adaptive",
                                                     adaptive_momentum=0.5)).train()
    assert obj.global_confidence.item() == pytest.approx(1 / 3)
    assert obj.class_probs.tolist() == pytest.approx([1 / 3] * 3)
    batch = batch_for(obj)
    snapshot = {k: v.clone() for k, v in obj.model.state_dict().items()}
    loss, logs = obj(batch)
    obj.model.load_state_dict(snapshot)
    logits = obj.model(torch.cat([batch["x_l"], batch["u_w"], batch["u_s"]]))
    probs = F.softmax(logits[4:12], dim=1)
    g = 0.5 / 3 + 0.5 * probs.max(dim=1).values.mean()
    c = 0.5 / 3 + 0.5 * probs.mean(dim=0)
    assert obj.global_confidence.item() == pytest.approx(g.item(), rel=1e-5)
    assert obj.class_probs.tolist() == pytest.approx(c.tolist(), rel=1e-5)
    tau = g * c / c.max()
    expected, mask, _ = fixmatch_loss(logits[:4], batch["y_l"], logits[4:12], logits[12:], tau, 1.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["mask"] == pytest.approx(mask.mean().item())
    assert logs["tau_max"].item() == pytest.approx(g.item(), rel=1e-5)
    assert set(obj.extra_state()) == {"global_confidence", "class_probs"}  # checkpointed with the run


# ----------------------------------------------------------------------------- consistency, tod

def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(1000, 100) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0


def test_consistency_loss_by_hand():
    s = [[1.0, 0.0, 2.0], [0.5, 0.5, -1.0]]
    t = [[0.0, 0.0, 0.0], [2.0, 1.0, 0.0]]
    expected = sum((a - b) ** 2 for rs, rt in zip(s, t, strict=True)
                   for a, b in zip(softmax_row(rs), softmax_row(rt), strict=True)) / 6
    teacher = torch.tensor(t, requires_grad=True)
    got = consistency_loss(torch.tensor(s), teacher)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_output_discrepancy_loss_by_hand():
    f = [[1.0, -2.0], [0.0, 3.0]]
    e = [[0.5, -1.0], [1.0, 1.0]]
    a = [[2.0, 0.0], [0.0, 0.0]]
    mse = lambda u, v: sum((x - y) ** 2 for ru, rv in zip(u, v, strict=True)  # noqa: E731
                           for x, y in zip(ru, rv, strict=True)) / 4
    T = torch.tensor
    assert output_discrepancy_loss(T(f), T(e)).item() == pytest.approx(mse(f, e))
    assert output_discrepancy_loss(T(f), T(e), T(a)).item() == pytest.approx(mse(f, a) + mse(a, e))


# ----------------------------------------------------------------------------- contrastive

def supcon_reference(z: torch.Tensor, y: list[int], t: float) -> float:
    n, total, anchors = len(z), 0.0, 0
    for i in range(n):
        pos = [p for p in range(n) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(n) if a != i)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in pos) / len(pos)
        anchors += 1
    return total / anchors


def test_supcon_loss_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1)
    y = [0, 1, 0, 2, 1, 0, 3]  # class 2 and 3 anchors have no positive
    got = supcon_loss(z, torch.tensor(y), 0.3)
    assert got.item() == pytest.approx(supcon_reference(z, y, 0.3), rel=1e-6)
    assert supcon_loss(z[:3], torch.tensor([0, 1, 2]), 0.3).item() == 0.0


# ----------------------------------------------------------------------------- EMA

def test_ema_model_math_with_and_without_warmup():
    g = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    decay = 0.6
    weights = [torch.randn(2, 3, generator=g) for _ in range(5)]
    for warmup in (False, True):
        ema = ema_model(net, decay, warmup=warmup)
        assert not any(p.requires_grad for p in ema.parameters())
        ref = None
        for k, w in enumerate(weights):
            with torch.no_grad():
                net[0].weight.copy_(w)
            net[1].num_batches_tracked.fill_(k)  # integer buffers are copied, not averaged
            ema.update_parameters(net)
            if k == 0:
                ref = w.clone()
            else:
                a = min(1 - 1 / (k + 1), decay) if warmup else decay
                ref = a * ref + (1 - a) * w
            assert torch.allclose(ema.module[0].weight, ref, atol=1e-6), (warmup, k)
            assert int(ema.module[1].num_batches_tracked) == k
    # with warm-up the first steps are plain means of the weights: (w0 + w1) / 2 after two updates
    ema = ema_model(net, 0.99, warmup=True)
    for w in weights[:2]:
        with torch.no_grad():
            net[0].weight.copy_(w)
        ema.update_parameters(net)
    assert torch.allclose(ema.module[0].weight, (weights[0] + weights[1]) / 2, atol=1e-6)


def test_batch_statistics_normalises_by_the_batch_and_leaves_running_stats_alone():
    g = torch.Generator().manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.5)).eval()
    with torch.no_grad():
        net[1].running_mean.fill_(5.0)
        net[1].running_var.fill_(9.0)
    x = torch.randn(16, 4, generator=g)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad(), batch_statistics(net):
        got = net(x)
    h = net[0](x)
    expected = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + net[1].eps) * net[1].weight + net[1].bias
    assert torch.allclose(got, expected, atol=1e-5)  # batch statistics, and dropout stayed off
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not net.training and not net[1].training and net[1].momentum == 0.1


# ----------------------------------------------------------------------------- the objectives as modules

class Tiny(nn.Module):
    """A classifier with the Classifier interface: features + linear head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.num_features = 8
        self.head = nn.Linear(8, 3)

    def features(self, x):
        return self.backbone(x)

    def forward(self, x, return_features=False):
        h = self.features(x)
        return (self.head(h), h) if return_features else self.head(h)


def cfg_for(method: str, **kw):
    from types import SimpleNamespace

    from ssal.recipe import TrainConfig

    cls = OBJECTIVES.get(method)
    section = cls.Config(**kw) if cls.Config else None
    return SimpleNamespace(**{**TrainConfig().__dict__, "steps": 10, method: section})


def batch_for(objective: Objective, b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, (source, _) in objective.views.items():
        n = b if source == "labeled" else b * objective.unlabeled_ratio
        out[key] = torch.rand(n, 3, 2, 2, generator=g)
    out["y_l"] = torch.randint(0, 3, (b,), generator=g)
    return out


def test_fixmatch_objective_is_fixmatch_loss_over_one_forward_pass():
    torch.manual_seed(0)
    obj = OBJECTIVES.get("fixmatch")(Tiny(), cfg_for("fixmatch", mu=2, threshold=0.4)).train()
    batch = batch_for(obj)
    assert len(batch["u_w"]) == 8
    snapshot = {k: v.clone() for k, v in obj.model.state_dict().items()}
    loss, logs = obj({**batch, "y_u": torch.zeros(8, dtype=torch.long)})
    obj.model.load_state_dict(snapshot)  # undo the BatchNorm statistics update of that pass
    logits = obj.model(torch.cat([batch["x_l"], batch["u_w"], batch["u_s"]]))
    expected, mask, pseudo = fixmatch_loss(logits[:4], batch["y_l"], logits[4:12], logits[12:], 0.4, 1.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["mask"] == pytest.approx(mask.mean().item())
    right = ((pseudo == 0).float() * mask).sum() / mask.sum().clamp_min(1)
    assert logs["pseudo_acc"] == pytest.approx(right.item())


def test_consistency_objective_uses_the_teacher_and_the_ramped_weight():
    torch.manual_seed(0)
    obj = OBJECTIVES.get("consistency")(Tiny(), cfg_for("consistency", weight=10.0, rampup=0.5)).train()
    assert not obj.teacher.training and obj.model.training  # the teacher predicts in eval mode
    with torch.no_grad():
        for p in obj.teacher.parameters():
            p.add_(0.1)  # a teacher that differs from the student
    obj.step = 2
    batch = batch_for(obj)
    snapshot = {k: v.clone() for k, v in obj.model.state_dict().items()}
    loss, logs = obj(batch)
    obj.model.load_state_dict(snapshot)
    logits = obj.model(torch.cat([batch["x_l"], batch["u_student"]]))
    with torch.no_grad(), batch_statistics(obj.teacher):
        t = obj.teacher(batch["u_teacher"])
    w = 10.0 * math.exp(-5 * (1 - 2 / 5) ** 2)
    expected = F.cross_entropy(logits[:4], batch["y_l"]) + w * consistency_loss(logits[4:], t)
    assert logs["w"] == pytest.approx(w)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    before = obj.teacher.module.head.weight.clone()
    obj.after_step(0)  # the first update copies the student
    assert torch.equal(obj.teacher.module.head.weight, obj.model.head.weight)
    assert not torch.equal(before, obj.teacher.module.head.weight)


@pytest.mark.parametrize("aux", [True, False])
def test_tod_objective(aux):
    torch.manual_seed(0)
    obj = OBJECTIVES.get("tod")(Tiny(), cfg_for("tod", weight=0.5, aux_head=aux)).train()
    assert (obj.aux is not None) == aux
    with torch.no_grad():
        for p in obj.ema.parameters():
            p.mul_(0.9)
    batch = batch_for(obj)
    snapshot = {k: v.clone() for k, v in obj.model.state_dict().items()}
    loss, _ = obj(batch)
    obj.model.load_state_dict(snapshot)
    x = torch.cat([batch["x_l"], batch["u"]])
    logits, h = obj.model(x, return_features=True)
    with torch.no_grad(), batch_statistics(obj.ema):
        e = obj.ema(x)
    a = obj.aux(h) if aux else None
    disc = sum(output_discrepancy_loss(logits[s], e[s], None if a is None else a[s])
               for s in (slice(0, 4), slice(4, None)))
    expected = F.cross_entropy(logits[:4], batch["y_l"]) + 0.5 * disc
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_student_view_option_asks_for_a_strong_student_view():
    cons = OBJECTIVES.get("consistency")(Tiny(), cfg_for("consistency", student_view="strong"))
    assert cons.views["u_student"] == ("unlabeled", "strong") and cons.views["u_teacher"] == ("unlabeled", "weak")
    assert OBJECTIVES.get("consistency").views["u_student"] == ("unlabeled", "weak")  # the class default is intact
    tod = OBJECTIVES.get("tod")(Tiny(), cfg_for("tod", student_view="strong", aux_head=False)).train()
    assert tod.views["u_student"] == ("unlabeled", "strong") and tod.views["u"] == ("unlabeled", "weak")
    batch = batch_for(tod)
    snapshot = {k: v.clone() for k, v in tod.model.state_dict().items()}
    loss, _ = tod(batch)
    tod.model.load_state_dict(snapshot)
    # the model sees the strong view of the unlabeled samples, the EMA the weak one
    logits = tod.model(torch.cat([batch["x_l"], batch["u_student"]]))
    with torch.no_grad(), batch_statistics(tod.ema):
        e = tod.ema(torch.cat([batch["x_l"], batch["u"]]))
    disc = sum(output_discrepancy_loss(logits[s], e[s]) for s in (slice(0, 4), slice(4, None)))
    expected = F.cross_entropy(logits[:4], batch["y_l"]) + tod.cfg.weight * disc
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_recipes_augment_replaces_the_weak_view_only_where_the_method_did_not_choose():
    train = cfg_for("consistency", student_view="strong")
    train.augment = "none"
    cons = make_objective(OBJECTIVES.get("consistency"), Tiny(), train)
    assert cons.views == {"x_l": ("labeled", "none"), "u_teacher": ("unlabeled", "none"),
                          "u_student": ("unlabeled", "strong")}
    assert OBJECTIVES.get("consistency").views["u_teacher"] == ("unlabeled", "weak")  # the class default is intact
    assert resolve_views({"x_l": ("labeled", "weak")}, "weak") == {"x_l": ("labeled", "weak")}


def test_contrastive_objective_is_the_sum_of_its_losses():
    from lightly.loss import NTXentLoss

    torch.manual_seed(0)
    obj = OBJECTIVES.get("contrastive")(Tiny(), cfg_for("contrastive", temperature=0.2, supcon_weight=0.5)).train()
    batch = batch_for(obj)
    snapshot = {k: v.clone() for k, v in obj.state_dict().items()}
    loss, logs = obj(batch)
    obj.load_state_dict(snapshot)
    x = torch.cat([batch["x_l"], batch["x_l2"], batch["u_a"], batch["u_b"]])
    logits, h = obj.model(x, return_features=True)
    z = F.normalize(obj.projection(h), dim=1)
    y = batch["y_l"]
    expected = (F.cross_entropy(logits[:4], y) + 0.5 * supcon_loss(z[:8], torch.cat([y, y]), 0.2)
                + NTXentLoss(temperature=0.2)(z[8:12], z[12:]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["supcon"] == pytest.approx(supcon_loss(z[:8], torch.cat([y, y]), 0.2).item(), rel=1e-5)
    emb = obj.embed(batch["x_l"])
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)


def test_extra_state_round_trips_and_excludes_the_model():
    obj = OBJECTIVES.get("tod")(Tiny(), cfg_for("tod"))
    state = obj.extra_state()
    assert state and not any(k.startswith("model.") for k in state)
    assert any(k.startswith("ema.") for k in state) and any(k.startswith("aux.") for k in state)
    other = OBJECTIVES.get("tod")(Tiny(), cfg_for("tod"))
    other.load_extra_state(state)
    for k, v in other.extra_state().items():
        assert torch.equal(v, state[k]), k


# ----------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("method", METHODS)
def test_tiny_run_per_objective(write_recipe, method):
    path = write_recipe(f"tiny_{method}", train={"method": method, "steps": 6, "batch_size": 8},
                        active={"rounds": 1, "strategy": "entropy"})
    out = loop.run(load_recipe(path), progress=False)
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [0, 1]
    assert all(math.isfinite(r["train_loss"]) and 0.0 <= r["test_acc"] <= 1.0 for r in rows)
    if method == "fixmatch":
        assert 0.0 <= rows[-1]["train_mask"] <= 1.0 and "train_pseudo_acc" in rows[-1]
    ckpt = torch.load(out / "checkpoints" / "round_01.pt", weights_only=True)
    has_extra = method in ("consistency", "tod", "contrastive")
    assert bool(ckpt["objective"]) == has_extra


def test_tiny_run_with_adaptive_thresholds(write_recipe):
    path = write_recipe("tiny_adaptive", train={"method": "fixmatch", "steps": 6, "batch_size": 8,
                                                "fixmatch": {"threshold_mode": "adaptive", "adaptive_momentum": 0.5}},
                        active={"rounds": 1, "strategy": "entropy"})
    out = loop.run(load_recipe(path), progress=False)
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [0, 1]
    assert all(0.0 < r["train_tau_min"] <= r["train_tau_max"] <= 1.0 for r in rows)
    state = torch.load(out / "checkpoints" / "round_01.pt", weights_only=True)["objective"]
    assert set(state) == {"global_confidence", "class_probs"}
    assert state["class_probs"].sum().item() == pytest.approx(1.0, rel=1e-5)  # a running mean of distributions


@pytest.mark.slow  # 9 s
def test_resume_restores_the_teacher(write_recipe, monkeypatch):
    """reinit=false continues the student and its EMA teacher across rounds; a run killed in
    round 1 and resumed ends with exactly the teacher of an uninterrupted run."""
    from ssal.faults import SimulatedCrash

    common = dict(train={"method": "consistency", "steps": 5, "batch_size": 8, "reinit": False},
                  active={"rounds": 2, "strategy": "entropy"})
    full = loop.run(load_recipe(write_recipe("full", **common)), progress=False)

    real_load, handed = Objective.load_extra_state, []

    def crash_in_round_1(self, state):  # the first objective handed a state: round 1's, round 0 starts afresh
        handed.append(state)
        raise SimulatedCrash("killed while training round 1")

    cut_recipe = load_recipe(write_recipe("cut", **common))
    monkeypatch.setattr(Objective, "load_extra_state", crash_in_round_1)
    with pytest.raises(SimulatedCrash):
        loop.run(cut_recipe, progress=False)
    assert [m["round"] for m in read_metrics(cut_recipe.output_dir)] == [0] and handed[0]  # round 0's teacher
    resumed = []
    monkeypatch.setattr(Objective, "load_extra_state", lambda self, state: resumed.append(state) or
                        real_load(self, state))
    cut = loop.run(resume_recipe(cut_recipe.output_dir), resume=True, progress=False)
    for k, v in handed[0].items():  # the resumed round 1 starts from the checkpointed teacher
        assert torch.equal(resumed[0][k], v), k
    a = torch.load(full / "checkpoints" / "round_02.pt", weights_only=True)["objective"]
    b = torch.load(cut / "checkpoints" / "round_02.pt", weights_only=True)["objective"]
    assert a and set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [m["test_acc"] for m in read_metrics(cut)] == [m["test_acc"] for m in read_metrics(full)]


def test_the_readme_objective_example_trains(write_recipe, monkeypatch):
    """The objective written in README's 'Extending ssal' runs end to end as shown."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "@OBJECTIVES.register" in b)
    monkeypatch.setattr(OBJECTIVES, "_items", dict(OBJECTIVES._items))  # registered for this test only
    exec(compile(block, "README.md", "exec"), {})
    path = write_recipe("readme", train={"method": "entropy_min", "steps": 4, "batch_size": 8},
                        active={"rounds": 0})
    rows = read_metrics(loop.run(load_recipe(path), progress=False))
    assert len(rows) == 1 and math.isfinite(rows[0]["train_entropy"])


@pytest.mark.slow  # a process group or a real process: 9-21 s; CI runs it
def test_objectives_with_extra_modules_under_two_processes(tmp_path):
    """torchrun, 2 CPU processes: the objective module is what DDP wraps, so TOD's trainable
    auxiliary head and contrastive's projection head train in sync on both replicas, and the EMA
    teachers' weights (no gradients) stay identical too. (BatchNorm running statistics are per
    process between DDP's broadcasts, as in any DDP training.)"""
    script = tmp_path / "dist_semi.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from ssal.data import load_dataset\n"
        "from ssal.engine import Engine, Optim, TrainData\n"
        "from ssal.models import build_model\n"
        "from ssal.recipe import from_dict\n"
        "from ssal.semi import OBJECTIVES\n"
        "from ssal.semi.base import make_objective\n"
        "engine = Engine(progress=False)\n"
        "assert engine.world == 2\n"
        "def train(cfg, data, lab, unl):\n"
        "    cls = OBJECTIVES.get(cfg.train.method)\n"
        "    return engine.fit(build_model(cfg.model, data), lambda m: make_objective(cls, m, cfg.train),\n"
        "                      TrainData(data.train, lab, data.train.targets[lab], unl, hflip=False),\n"
        "                      Optim.from_train(cfg.train), seed=1, ema=cfg.train.ema)\n"
        "for method in ('tod', 'contrastive', 'consistency'):\n"
        "    cfg = from_dict({'data': {'dataset': 'digits', 'pool_size': 300},\n"
        "                     'train': {'method': method, 'steps': 3, 'batch_size': 8},\n"
        "                     'active': {'initial': 20, 'rounds': 0}})\n"
        "    data = load_dataset(cfg.data)\n"
        "    torch.manual_seed(0)\n"
        "    lab, unl = torch.arange(20), torch.arange(20, 300)\n"
        "    fit = train(cfg, data, lab, unl)\n"
        "    obj = fit.objective\n"
        "    flat = torch.cat([t.detach().flatten() for t in obj.parameters()])  # teachers' too\n"
        "    both = [torch.zeros_like(flat) for _ in range(2)]\n"
        "    dist.all_gather(both, flat)\n"
        "    assert torch.equal(both[0], both[1]), method\n"
        "    extra = [p for n, p in obj.named_parameters() if p.requires_grad and not n.startswith('model.')]\n"
        "    assert (len(extra) > 0) == (method != 'consistency'), method\n"
        "# adaptive FixMatch thresholds: each process sees its own batches, both keep the same state\n"
        "cfg = from_dict({'data': {'dataset': 'digits', 'pool_size': 300},\n"
        "                 'train': {'method': 'fixmatch', 'steps': 3, 'batch_size': 8,\n"
        "                           'fixmatch': {'threshold_mode': 'adaptive', 'adaptive_momentum': 0.5, 'mu': 2}},\n"
        "                 'active': {'initial': 20, 'rounds': 0}})\n"
        "torch.manual_seed(0)\n"
        "fit = train(cfg, data, lab, unl)\n"
        "state = torch.cat([fit.objective.global_confidence.view(1), fit.objective.class_probs])\n"
        "assert abs(state[0].item() - 0.1) > 1e-4  # it moved from 1 / C\n"
        "both = [torch.zeros_like(state) for _ in range(2)]\n"
        "dist.all_gather(both, state)\n"
        "assert torch.equal(both[0], both[1]), both\n"
        "print(f'rank {engine.rank} ok', flush=True)\n"
        "engine.close()\n"
    )
    run_two_processes(script, port=29547)
