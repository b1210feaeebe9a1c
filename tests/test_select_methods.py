"""EGL, ensemble disagreement, BAIT and DeepFool/DFAL against autograd, hand counts and brute force."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssal.errors import ConfigError
from ssal.select import STRATEGIES
from ssal.select import functional as Fn
from ssal.select.base import Signals
from ssal.select.signals import Features, Probs

# ----------------------------------------------------------------------------- EGL


def _egl_by_autograd(trunk: nn.Module, head: nn.Linear, x: torch.Tensor) -> list[float]:
    """sum_c p_c ||d CE(head(trunk(x)), c) / d head.weight||_F, one backward per sample and class."""
    out = []
    for i in range(len(x)):
        with torch.no_grad():
            p = F.softmax(head(trunk(x[i:i + 1])), dim=1)[0]
        total = 0.0
        for c in range(head.out_features):
            loss = F.cross_entropy(head(trunk(x[i:i + 1])), torch.tensor([c]))
            (grad_w,) = torch.autograd.grad(loss, head.weight)
            total += float(p[c]) * float(grad_w.norm())
        out.append(total)
    return out


def test_egl_equals_the_expected_autograd_gradient_norm_of_the_head():
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU()).double()
    head = nn.Linear(6, 4).double()  # with a bias: its gradient is not part of EGL
    x = torch.randn(9, 5, dtype=torch.float64)
    want = torch.tensor(_egl_by_autograd(trunk, head, x), dtype=torch.float64)
    with torch.no_grad():
        h = trunk(x)
        probs = F.softmax(head(h), dim=1)
    got = Fn.egl(probs, h)
    assert got.shape == (9,)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-7), (got, want)
    # the float32 inputs the strategy is given give the same scores
    assert torch.allclose(Fn.egl(probs.float(), h.float()).double(), want, rtol=1e-5, atol=1e-6)


def test_egl_strategy_takes_the_largest_autograd_egl():
    torch.manual_seed(1)
    trunk = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
    head = nn.Linear(5, 3)
    x = torch.randn(12, 4) * 2
    want = torch.tensor(_egl_by_autograd(trunk, head, x))
    with torch.no_grad():
        h = trunk(x)
        probs = F.softmax(head(h), dim=1)
    cands = torch.arange(100, 112)
    signals = Signals(candidates=cands, labeled=torch.arange(3), values={Probs(): probs, Features(): h})
    picked = STRATEGIES.get("egl")().select(signals, 4, torch.Generator())
    best = sorted(range(12), key=lambda i: -float(want[i]))[:4]
    assert sorted(picked.tolist()) == sorted(int(cands[i]) for i in best)


def test_egl_of_one_hot_and_uniform_predictions_by_hand():
    h = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # p = e_k exactly: sum_c p_c ||p - e_c|| = ||e_k - e_k|| = 0
    onehot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert Fn.egl(onehot, h).tolist() == [0.0, 0.0, 0.0, 0.0]
    # uniform p over C = 3: ||p - e_c||^2 = (1 - 1/3)^2 + 2 (1/3)^2 = 2/3 for every c
    uniform = torch.full((4, 3), 1 / 3)
    want = [math.sqrt(2 / 3) * math.hypot(*row) for row in h.tolist()]
    assert Fn.egl(uniform, h).tolist() == pytest.approx(want, rel=1e-6)


def test_egl_rejects_nan_and_inf():
    probs = torch.full((3, 2), 0.5)
    h = torch.ones(3, 4)
    with pytest.raises(ValueError, match="NaN/inf"):
        Fn.egl(probs.clone().index_put_((torch.tensor([1]), torch.tensor([0])), torch.tensor(float("nan"))), h)
    with pytest.raises(ValueError, match="NaN/inf"):
        Fn.egl(probs, h.clone().index_put_((torch.tensor([2]), torch.tensor([3])), torch.tensor(float("inf"))))


# ----------------------------------------------------------------------------- ensembles


def _member_probs(votes: list[list[int]], num_classes: int, seed: int = 0) -> torch.Tensor:
    """[K, N, C] probabilities whose argmax for member k and sample n is votes[n][k]."""
    g = torch.Generator().manual_seed(seed)
    k, n = len(votes[0]), len(votes)
    p = torch.rand(k, n, num_classes, generator=g)
    for j in range(n):
        for m in range(k):
            p[m, j, votes[j][m]] = 2.0 + float(torch.rand(1, generator=g))
    return p / p.sum(dim=2, keepdim=True)


def test_variation_ratio_counts_the_votes():
    votes = [[0, 0, 0, 0], [0, 1, 0, 2], [0, 1, 1, 0], [3, 1, 2, 3], [0, 1, 2, 3], [2, 2, 2, 1]]
    member = _member_probs(votes, 4)
    assert member.argmax(dim=2).T.tolist() == votes  # the construction does what it says
    want = [1 - max(Counter(v).values()) / 4 for v in votes]
    assert want == [0.0, 0.5, 0.5, 0.5, 0.75, 0.25]
    assert Fn.variation_ratio(member).tolist() == pytest.approx(want)
    with pytest.raises(ValueError, match=r"\[K, N, C\]"):
        Fn.variation_ratio(member[0])


def test_mean_entropy_is_the_entropy_of_the_mean_prediction():
    member = _member_probs([[0, 1, 1, 2], [2, 2, 0, 1], [1, 1, 1, 1]], 3, seed=3).double()
    k, n, c = member.shape
    want = []
    for j in range(n):
        mean = [sum(float(member[m, j, cl]) for m in range(k)) / k for cl in range(c)]
        want.append(-sum(q * math.log(q) for q in mean))
    assert Fn.mean_entropy(member).tolist() == pytest.approx(want, rel=1e-9)
    # members that agree exactly: the entropy of their common prediction, log C when uniform
    assert Fn.mean_entropy(torch.full((5, 2, 4), 0.25)).tolist() == pytest.approx([math.log(4)] * 2, rel=1e-6)
    with pytest.raises(ValueError, match="NaN/inf"):
        Fn.mean_entropy(torch.full((2, 1, 2), float("nan")))


# ----------------------------------------------------------------------------- BAIT


def _kron_factor(p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """V with rows sqrt(p_c) kron(p - e_c, h), built by hand, [C, C*D]."""
    c = len(p)
    return torch.stack([p[k].sqrt() * torch.kron(p - torch.eye(c, dtype=p.dtype)[k], h) for k in range(c)])


@pytest.mark.parametrize("seed", range(4))
def test_fisher_embeddings_give_the_fisher_information(seed):
    g = torch.Generator().manual_seed(seed)
    n, c, d = 5, 2 + seed % 3, 3 + seed % 2
    probs = F.softmax(2 * torch.randn(n, c, generator=g, dtype=torch.float64), dim=1)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    v = Fn.fisher_embeddings(probs, h)
    assert v.shape == (n, c, c * d)
    for i in range(n):
        fisher = torch.zeros(c * d, c * d, dtype=torch.float64)
        for k in range(c):
            gk = torch.kron(probs[i] - torch.eye(c, dtype=torch.float64)[k], h[i])
            fisher += probs[i, k] * torch.outer(gk, gk)
        assert torch.allclose(v[i].T @ v[i], fisher, atol=1e-12)
        assert torch.allclose(v[i], _kron_factor(probs[i], h[i]), atol=1e-12)


class _BruteBait:
    """BAIT by the definition: full (C D)^2 matrices, the objective recomputed for every candidate."""

    def __init__(self, probs, h, labeled, budget, lam):
        self.n = len(probs)
        self.labeled = labeled
        self.budget = min(budget, int((~labeled).sum()))
        v = torch.stack([_kron_factor(probs[i], h[i]) for i in range(self.n)])  # [N, C, E]
        e = v.shape[2]
        self.fisher = sum(v[i].T @ v[i] for i in range(self.n)) / self.n
        scale = 1.0 / (int(labeled.sum()) + self.budget)
        self.base = lam * torch.eye(e, dtype=torch.float64) + scale * sum(
            (v[i].T @ v[i] for i in range(self.n) if labeled[i]), torch.zeros(e, e, dtype=torch.float64))
        self.v = v * math.sqrt(scale)
        self.min_gap = math.inf  # the smallest margin of any greedy decision (near-ties make the test moot)

    def objective(self, chosen) -> float:
        m = self.base + sum((self.v[i].T @ self.v[i] for i in chosen), torch.zeros_like(self.base))
        return float(torch.trace(torch.linalg.inv(m) @ self.fisher))

    def _best(self, options: list, key) -> int:
        vals = [key(o) for o in options]
        order = sorted(range(len(options)), key=lambda j: (vals[j], j))  # smallest, then the first
        if len(order) > 1:
            self.min_gap = min(self.min_gap, (vals[order[1]] - vals[order[0]]) / abs(vals[order[0]]))
        return order[0]

    def forward(self, steps: int) -> list[int]:
        chosen: list[int] = []
        free = [i for i in range(self.n) if not self.labeled[i]]
        for _ in range(min(steps, len(free))):
            i = free.pop(self._best(free, lambda i: self.objective(chosen + [i])))
            chosen.append(i)
        return chosen

    def prune(self, chosen: list[int]) -> list[int]:
        chosen = list(chosen)
        while len(chosen) > self.budget:
            chosen.pop(self._best(list(range(len(chosen))), lambda j: self.objective(chosen[:j] + chosen[j + 1:])))
        return chosen


def _bait_problem(seed: int, large: bool = False):
    g = torch.Generator().manual_seed(seed)
    n = 8 + seed % 7 if not large else 24 + seed % 7
    c, d = 2 + seed % 2, 2 + seed % 3
    probs = F.softmax(2 * torch.randn(n, c, generator=g, dtype=torch.float64), dim=1)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    labeled = torch.zeros(n, dtype=torch.bool)
    labeled[torch.randperm(n, generator=g)[: 1 + seed % 3]] = True
    budget = 1 + (seed // 2) % 3 + 3 * large
    lam = (0.03, 1.0, 2.5)[seed % 3]
    return probs, h, labeled, budget, lam


def test_bait_objective_is_the_trace_by_definition():
    probs, h, labeled, budget, lam = _bait_problem(5)
    brute = _BruteBait(probs, h, labeled, budget, lam)
    for chosen in ([], [0], [1, 4, 6]):
        got = Fn.bait_objective(brute.v, chosen, brute.fisher, brute.base)
        assert got == pytest.approx(brute.objective(chosen), rel=1e-10)
    # and its factors are fisher_embeddings' (scaled)
    scale = 1.0 / (int(labeled.sum()) + brute.budget)
    assert torch.allclose(Fn.fisher_embeddings(probs, h) * math.sqrt(scale), brute.v, atol=1e-12)


@pytest.mark.parametrize(("seed", "large"), [(s, False) for s in range(10)] + [(s, True) for s in range(20, 26)])
def test_bait_is_greedy_forward_selection_then_backward_pruning(seed, large):
    probs, h, labeled, budget, lam = _bait_problem(seed, large)
    oversample = 2 + seed % 2
    brute = _BruteBait(probs, h, labeled, budget, lam)
    want = brute.prune(brute.forward(oversample * budget))
    assert brute.min_gap > 1e-9, f"seed {seed} has a near-tie; the comparison would be by chance"
    got = Fn.bait(probs, h, labeled, budget, lam=lam, oversample=oversample)
    assert got.dtype == torch.long
    assert got.tolist() == want
    assert not labeled[got].any()
    # the float32 inputs a strategy passes select the same rows
    assert Fn.bait(probs.float(), h.float(), labeled, budget, lam=lam, oversample=oversample).tolist() == want


@pytest.mark.parametrize("seed", range(10, 16))
def test_bait_without_oversampling_is_plain_greedy(seed):
    probs, h, labeled, budget, lam = _bait_problem(seed)
    brute = _BruteBait(probs, h, labeled, budget, lam)
    want = brute.forward(budget)
    assert brute.min_gap > 1e-9
    assert Fn.bait(probs, h, labeled, budget, lam=lam, oversample=1).tolist() == want


def test_bait_with_more_classes_than_the_chunk():  # a step of chunk // C was 0 when C > chunk
    probs, h, labeled, budget, lam = _bait_problem(3)  # C = 3 > chunk = 2: the path of C > 1024 at chunk=1024
    brute = _BruteBait(probs, h, labeled, budget, lam)
    want = brute.prune(brute.forward(2 * budget))
    assert Fn.bait(probs, h, labeled, budget, lam=lam, chunk=2).tolist() == want


def test_bait_beats_random_batches_on_average():
    probs, h, labeled, _, lam = _bait_problem(7)
    budget = 3
    brute = _BruteBait(probs, h, labeled, budget, lam)
    got = Fn.bait(probs, h, labeled, budget, lam=lam).tolist()
    free = (~labeled).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(0)
    rand = [brute.objective(free[torch.randperm(len(free), generator=g)[:budget]].tolist()) for _ in range(30)]
    assert brute.objective(got) <= sum(rand) / len(rand)
    assert brute.objective(got) <= min(rand) + 1e-12 or brute.objective(got) < sorted(rand)[len(rand) // 4]


def test_bait_never_picks_labeled_rows_and_takes_every_unlabeled_row_when_the_budget_allows():
    g = torch.Generator().manual_seed(11)
    n, c, d = 40, 4, 6
    probs = F.softmax(torch.randn(n, c, generator=g), dim=1)
    h = torch.randn(n, d, generator=g)
    labeled = torch.rand(n, generator=g) < 0.4
    got = Fn.bait(probs, h, labeled, 8)
    assert len(got) == 8 and len(set(got.tolist())) == 8 and not labeled[got].any()

    small_lab = torch.zeros(10, dtype=torch.bool)
    small_lab[[0, 3, 4, 9]] = True
    unlabeled = (~small_lab).nonzero().squeeze(1).tolist()
    for budget in (6, 7, 100):
        got = Fn.bait(probs[:10], h[:10], small_lab, budget)
        assert sorted(got.tolist()) == unlabeled
    assert Fn.bait(probs[:10], h[:10], small_lab, 0).tolist() == []
    assert Fn.bait(probs[:10], h[:10], torch.ones(10, dtype=torch.bool), 3).tolist() == []


def test_bait_strategy_selects_greedy_bait_over_labeled_and_candidates():
    probs, h, labeled, budget, lam = _bait_problem(9)
    lab_idx, cand_idx = labeled.nonzero().squeeze(1), (~labeled).nonzero().squeeze(1)
    order = torch.cat([lab_idx, cand_idx])  # the strategy puts the labeled rows first
    brute = _BruteBait(probs[order], h[order], labeled[order], budget, lam)
    want = brute.prune(brute.forward(2 * budget))
    assert brute.min_gap > 1e-9
    pool_cands = 1000 + cand_idx  # arbitrary pool indices
    signals = Signals(candidates=pool_cands, labeled=500 + lab_idx,
                      values={Probs(): probs[cand_idx].float(), Features(): h[cand_idx].float(),
                              Probs(labeled=True): probs[lab_idx].float(), Features(labeled=True): h[lab_idx].float()})
    bait = STRATEGIES.get("bait")
    picked = bait(bait.Config(lam=lam)).select(signals, budget, torch.Generator().manual_seed(0))
    assert picked.tolist() == [int(pool_cands[i - len(lab_idx)]) for i in want]


# ----------------------------------------------------------------------------- BAIT's memory check


class _Features(int):
    """A feature count that is also a backbone with ``num_features`` (``check_model`` has taken either)."""

    @property
    def num_features(self) -> int:
        return int(self)


def _bait_bytes(num_features: int, num_classes: int) -> int:
    return 8 * 8 * (num_features * num_classes) ** 2  # eight float64 (C D)^2 matrices


def test_bait_memory_check_names_the_projection_option(monkeypatch):
    import ssal.select.bait as bait_mod

    bait = STRATEGIES.get("bait")
    monkeypatch.setattr(bait_mod, "available_memory", lambda: 10 * 10**6)
    with pytest.raises(ConfigError, match=r"active\.bait\.dim") as err:
        bait().check_model(_Features(128), 10)
    # the largest listed size that fits in 10 MB: (10 x 32)^2 x 64 B = 6.6 MB; (10 x 64)^2 x 64 B = 26 MB
    assert "active.bait.dim=32" in str(err.value)
    monkeypatch.setattr(bait_mod, "available_memory", lambda: 64 * 2**30)
    bait().check_model(_Features(128), 10)


@pytest.mark.parametrize("dim", [None, 16, 64, 1000])
def test_bait_memory_check_uses_the_projected_size(monkeypatch, dim):
    import ssal.select.bait as bait_mod

    bait = STRATEGIES.get("bait")
    strategy = bait(bait.Config(dim=dim))
    d = 128 if dim is None else min(dim, 128)
    need = _bait_bytes(d, 10)
    monkeypatch.setattr(bait_mod, "available_memory", lambda: need)
    strategy.check_model(_Features(128), 10)  # exactly enough
    monkeypatch.setattr(bait_mod, "available_memory", lambda: need - 1)
    with pytest.raises(ConfigError, match="bait"):
        strategy.check_model(_Features(128), 10)
    monkeypatch.setattr(bait_mod, "available_memory", lambda: 10 * 10**6)
    if need <= 10 * 10**6:  # dim=16 fits where the full 128 features do not
        strategy.check_model(_Features(128), 10)
    else:
        with pytest.raises(ConfigError):
            strategy.check_model(_Features(128), 10)


# ----------------------------------------------------------------------------- DeepFool


@pytest.mark.parametrize("num_classes", [2, 4])
def test_deepfool_on_a_linear_model_is_the_closed_form_distance(num_classes):
    torch.manual_seed(num_classes)
    p = 6
    model = nn.Linear(p, num_classes)
    x = torch.randn(15, p)
    w, b = model.weight.detach().double(), model.bias.detach().double()
    f = x.double() @ w.T + b
    got = Fn.deepfool(model, x, max_iter=50, overshoot=0.02)
    assert got.dtype == torch.float32 and got.shape == (15,)
    assert torch.equal(Fn.deepfool(model, x, max_iter=1, overshoot=0.02), got)  # one step on a linear model
    assert torch.equal(Fn.deepfool(model, x, max_iter=0), torch.zeros(15))
    for i in range(15):
        k0 = int(f[i].argmax())
        dists = {k: abs(float(f[i, k] - f[i, k0])) / float((w[k] - w[k0]).norm())
                 for k in range(num_classes) if k != k0}
        best = min(dists, key=dists.get)
        assert float(got[i]) == pytest.approx(1.02 * dists[best], rel=1e-5, abs=1e-6)
        wl = w[best] - w[k0]
        r = abs(float(f[i, best] - f[i, k0])) / float(wl @ wl) * wl
        assert float((1.02 * r).norm()) == pytest.approx(float(got[i]), rel=1e-5, abs=1e-6)
        with torch.no_grad():
            assert int(model((x[i].double() + 1.02 * r).float()).argmax()) != k0
            # equally: moving along the closed-form direction by the returned distance
            moved = x[i].double() + float(got[i]) * wl / wl.norm()
            assert int(model(moved.float()).argmax()) != k0
            assert int(model(x[i]).argmax()) == k0


def _deepfool_reference(model: nn.Module, x: torch.Tensor, max_iter: int, overshoot: float):
    """One sample, by the paper: linearise every class at x + (1 + overshoot) r with the full Jacobian."""
    x0 = x.detach().float()
    with torch.no_grad():
        k0 = int(model(x0[None]).argmax())
    r = torch.zeros_like(x0)
    steps = 0
    for _ in range(max_iter):
        xi = x0 + (1 + overshoot) * r
        with torch.no_grad():
            logits = model(xi[None])[0]
        if int(logits.argmax()) != k0:
            break
        jac = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], xi).flatten(1)  # [C, P]
        best = None
        for k in range(len(logits)):
            if k == k0:
                continue
            wk, fk = jac[k] - jac[k0], float(logits[k] - logits[k0])
            if best is None or abs(fk) / float(wk.norm()) < best[0]:
                best = (abs(fk) / float(wk.norm()), fk, wk)
        _, fk, wk = best
        r = r + ((abs(fk) + 1e-8) / float(wk @ wk) * wk).view_as(x0)
        steps += 1
    return r, k0, steps


def _tiny_mlp(seed: int, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(),
                         nn.Linear(12, classes)).eval()


def test_deepfool_on_an_mlp_matches_the_per_sample_reference_and_flips_the_prediction():
    model = _tiny_mlp(0)
    x = torch.randn(10, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    got = Fn.deepfool(model, x, max_iter=50, overshoot=0.02)
    per_sample = torch.cat([Fn.deepfool(model, x[i:i + 1], max_iter=50, overshoot=0.02) for i in range(10)])
    assert torch.allclose(got, per_sample, rtol=1e-5, atol=1e-7)
    assert torch.isfinite(got).all() and (got > 0).all()
    multi_step = 0
    for i in range(10):
        r, k0, steps = _deepfool_reference(model, x[i], 50, 0.02)
        assert steps < 50
        multi_step += steps > 1
        assert float(got[i]) == pytest.approx(float((1.02 * r).norm()), rel=1e-4)
        with torch.no_grad():
            assert int(model((x[i] + 1.02 * r)[None]).argmax()) != k0
    assert multi_step > 0  # the nonlinear model needs more than one step for some sample


def test_deepfool_stops_at_max_iter_with_the_norm_reached():
    model = _tiny_mlp(2, classes=4)
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    for max_iter in (1, 2):
        got = Fn.deepfool(model, x, max_iter=max_iter, overshoot=0.1)
        want = [float((1.1 * _deepfool_reference(model, x[i], max_iter, 0.1)[0]).norm()) for i in range(6)]
        assert got.tolist() == pytest.approx(want, rel=1e-4)


def test_deepfool_rejects_a_diverged_model():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN/inf"):
        Fn.deepfool(model, torch.randn(2, 3))


# ----------------------------------------------------------------------------- DFAL end to end


def test_dfal_signal_is_deepfool_on_the_evaluation_model_and_selects_the_smallest():
    from ssal.data import load_dataset
    from ssal.data.views import to_float
    from ssal.engine import Engine
    from ssal.models import build_model
    from ssal.recipe import DataConfig, ModelConfig
    from ssal.select.dfal import DeepFoolDistance
    from ssal.select.signals import SelectionContext, compute_signals

    data = load_dataset(DataConfig(dataset="digits"))
    torch.manual_seed(0)
    model = build_model(ModelConfig(), data).eval()
    engine = Engine(progress=False)
    labeled, cands = torch.arange(0, 10), torch.arange(20, 60, 2)
    ctx = SelectionContext(model, labeled, data.train.targets[labeled], None, None, True, 0, batch_size=8)
    dfal = STRATEGIES.get("dfal")
    strategy = dfal(dfal.Config(max_iter=5))
    sig = compute_signals(engine, strategy, ctx, data.train, cands)
    dist = sig[DeepFoolDistance(max_iter=5, overshoot=0.02)]
    assert set(sig.values) == {DeepFoolDistance(max_iter=5, overshoot=0.02)}
    want = Fn.deepfool(model, to_float(data.train.load(cands)), max_iter=5, overshoot=0.02)
    assert dist.shape == (20,)
    assert torch.allclose(dist, want, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(dist).all() and (dist > 0).all()
    picked = strategy.select(sig, 6, torch.Generator().manual_seed(0))
    order = sorted(range(20), key=lambda i: (float(dist[i]), i))
    assert sorted(picked.tolist()) == sorted(int(cands[i]) for i in order[:6])
    chosen = torch.isin(cands, picked)
    assert dist[chosen].max() <= dist[~chosen].min()


def test_deepfool_ranks_a_sample_without_input_gradient_last():
    """Dead units: no gradient towards any boundary, so no step moves the sample; it is not "on" the boundary."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(3, 2))
        net[0].bias.zero_()
        net[2].bias.copy_(torch.tensor([1.0, 0.0]))
    d = Fn.deepfool(net, torch.tensor([[-5.0, -5.0], [0.5, 0.2]]))
    assert d[0] == torch.finfo(torch.float32).max
    assert 0 < d[1] < 10


def test_deepfool_with_the_top_classes_only_is_the_closed_form_over_them():
    torch.manual_seed(3)
    lin = torch.nn.Linear(5, 6)
    x = torch.randn(40, 5)
    w, f = lin.weight.detach(), lin(x).detach()
    top = f.topk(3, dim=1).indices
    want = torch.stack([min(abs(f[i, k] - f[i, top[i, 0]]) / (w[k] - w[top[i, 0]]).norm() for k in top[i, 1:])
                        for i in range(len(x))]) * 1.02
    assert torch.allclose(Fn.deepfool(lin, x, classes=3), want, atol=1e-5)
    everything = Fn.deepfool(lin, x, classes=None)
    assert (everything <= want + 1e-5).all() and (everything < want - 1e-4).any()  # more boundaries, nearer ones


def test_a_bait_too_large_for_the_machine_is_refused_before_anything_is_written(tmp_path, write_recipe, capsys,
                                                                                   monkeypatch):
    import ssal.select.bait as bait_module
    from ssal.cli import main

    monkeypatch.setattr(bait_module, "available_memory", lambda: 50 * 2**20)  # 50 MiB free
    out = tmp_path / "run"
    path = write_recipe("bait", out=out, active={"strategy": "bait"})
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssal: error: active.strategy=bait needs")
    assert "active.bait.dim=" in err[0] and not out.exists()
    # with the projection it suggests, the same machine runs it (the check passes; rounds=0 keeps it short)
    dim = int(err[0].split("active.bait.dim=")[1].split()[0])
    assert main(["run", str(path), "--no-progress", f"active.bait.dim={dim}", "active.rounds=0"]) == 0
