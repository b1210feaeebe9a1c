"""Selection math against hand computation; every strategy's contract under hypothesis."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssal.select import INITIAL_STRATEGIES, STRATEGIES, Signals
from ssal.select import functional as Fn
from ssal.select import signals as S
from ssal.select.dfal import DeepFoolDistance
from ssal.select.ensemble import MemberProbs
from ssal.select.learning_loss import PredictedLoss
from ssal.select.signals import candidates, check_selection
from ssal.select.vaal import Images


def test_entropy_margin_least_confidence_by_hand():
    p = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    ent = [-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)), 0.0,
           -(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5))]
    assert torch.allclose(Fn.entropy(p), torch.tensor(ent))
    assert torch.allclose(Fn.margin(p), torch.tensor([1 - 0.25, 0.0, 1 - 0.2]))
    assert torch.allclose(Fn.least_confidence(p), torch.tensor([0.5, 0.0, 0.5]))


def test_entropy_of_uniform_is_log_c():
    assert torch.allclose(Fn.entropy(torch.full((4, 10), 0.1)), torch.full((4,), math.log(10)))


@pytest.mark.parametrize("fn", [Fn.entropy, Fn.margin, Fn.least_confidence])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_probs_raise(fn, bad):
    p = torch.full((3, 4), 0.25)
    p[1, 2] = bad
    with pytest.raises(ValueError, match="NaN/inf"):
        fn(p)


def test_top_k_breaks_ties_by_lowest_position():
    s = torch.tensor([0.5, 0.9, 0.5, 0.9, 0.1])
    assert Fn.top_k(s, 3).tolist() == [1, 3, 0]
    assert Fn.top_k(s, 10).tolist() == [1, 3, 0, 2, 4]


def _signals(n_pool: int, labeled_frac: float, seed: int, strategy=None, num_classes: int = 5) -> Signals:
    """Random values of every signal ``strategy`` requests (at least one labeled sample, as in a run)."""
    g = torch.Generator().manual_seed(seed)
    labeled_mask = torch.rand(n_pool, generator=g) < labeled_frac
    labeled_mask[0] = True
    cands = torch.nonzero(~labeled_mask).flatten()
    labeled = torch.nonzero(labeled_mask).flatten()

    def probs(*shape):
        p = torch.softmax(torch.randn(*shape, num_classes, generator=g) * 3, dim=-1)
        # quantise to create ties, which strategies must break deterministically
        p = torch.round(p * 20) / 20 + 1e-3
        return p / p.sum(-1, keepdim=True)

    makers = {S.Probs: probs, S.PrevProbs: probs, S.Logits: lambda n: probs(n).log(),
              S.Features: lambda n: torch.randn(n, 8, generator=g),
              S.Embeddings: lambda n: torch.randn(n, 6, generator=g),
              S.MCProbs: lambda n: probs(n, 4), S.BALDScore: lambda n: Fn.bald(probs(4, n)),
              S.AugProbs: lambda n: probs(n, 3), S.Labels: lambda n: torch.randint(0, num_classes, (n,), generator=g),
              DeepFoolDistance: lambda n: torch.rand(n, generator=g).round(decimals=1),
              PredictedLoss: lambda n: torch.rand(n, generator=g).round(decimals=1),
              MemberProbs: lambda n: probs(n, 3),
              Images: lambda n: torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)}
    needs = strategy.needs if strategy is not None else (S.Probs(),)
    values = {r: makers[type(r)](len(labeled) if r.labeled else len(cands)) for r in needs}
    return Signals(candidates=cands, labeled=labeled, values=values)


# options that keep a strategy's own training short
SMALL = {"vaal": {"steps": 2, "batch_size": 4, "width": 4, "latent": 4}}


def _default_cfg(name: str):
    cls = STRATEGIES.get(name)
    return cls.Config(**SMALL.get(name, {})) if cls.Config is not None else None


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "batchbald" else n  # 29 s alone
                                  for n in STRATEGIES.names()])
@settings(max_examples=40, deadline=None)
@given(n_pool=st.integers(1, 300), labeled_frac=st.floats(0.0, 0.95), budget=st.integers(1, 400),
       seed=st.integers(0, 2**31 - 1))
def test_strategy_contract(name, n_pool, labeled_frac, budget, seed):
    strategy = STRATEGIES.get(name)(_default_cfg(name))
    sig = _signals(n_pool, labeled_frac, seed, strategy)
    picked = strategy.select(sig, budget, torch.Generator().manual_seed(seed))
    want = min(budget, len(sig.candidates))
    assert picked.dtype == torch.long and len(picked) == want
    assert len(torch.unique(picked)) == want  # unique
    assert torch.isin(picked, sig.candidates).all()  # only previously unlabeled
    assert not torch.isin(picked, sig.labeled).any()
    again = strategy.select(sig, budget, torch.Generator().manual_seed(seed))
    assert torch.equal(picked, again)  # deterministic under a seed
    check_selection(picked, sig.candidates, budget, name)
    if budget >= len(sig.candidates):  # budget >= #unlabeled takes all
        assert set(picked.tolist()) == set(sig.candidates.tolist())


@pytest.mark.parametrize("name", ["entropy", "margin", "least_confidence"])
def test_score_strategies_take_the_top_scores(name):
    sig = _signals(200, 0.3, 1)
    fn = getattr(Fn, name)
    s = fn(sig[S.Probs()])
    picked = STRATEGIES.get(name)().select(sig, 15, torch.Generator())
    # brute force: every picked score >= every unpicked score
    mask = torch.isin(sig.candidates, picked)
    assert s[mask].min() >= s[~mask].max()


def test_random_strategy_depends_on_seed():
    sig = _signals(500, 0.1, 0)
    rnd = STRATEGIES.get("random")()
    a = rnd.select(sig, 20, torch.Generator().manual_seed(1))
    b = rnd.select(sig, 20, torch.Generator().manual_seed(2))
    assert not torch.equal(a.sort().values, b.sort().values)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 200), k=st.integers(1, 250), seed=st.integers(0, 1000), n_classes=st.integers(1, 7))
def test_initial_strategies_contract(n, k, seed, n_classes):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, n_classes, (n,), generator=g)
    unlabeled = torch.arange(n)
    feats = torch.randn(n, 4, generator=g)
    for name in INITIAL_STRATEGIES.names():
        picked = INITIAL_STRATEGIES.get(name)(unlabeled, targets, k, torch.Generator().manual_seed(seed),
                                              embed=lambda idx: feats[idx], classes=n_classes)
        assert len(picked) == min(k, n) and len(torch.unique(picked)) == len(picked)


def test_class_balanced_takes_k_over_c_per_class():
    targets = torch.arange(1000) % 10
    picked = INITIAL_STRATEGIES.get("class_balanced")(torch.arange(1000), targets, 100, torch.Generator())
    assert torch.bincount(targets[picked], minlength=10).tolist() == [10] * 10
    picked = INITIAL_STRATEGIES.get("class_balanced")(torch.arange(1000), targets, 23, torch.Generator())
    counts = torch.bincount(targets[picked], minlength=10)
    assert counts.sum() == 23 and counts.max() - counts.min() <= 1


def test_candidates_subset_is_seeded_and_sorted():
    unl = torch.arange(0, 1000, 3)
    a = candidates(unl, 50, torch.Generator().manual_seed(0))
    b = candidates(unl, 50, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and len(a) == 50 and torch.isin(a, unl).all()
    assert torch.equal(a, a.sort().values)
    assert torch.equal(candidates(unl, None, torch.Generator()), unl)
    assert torch.equal(candidates(unl, 10_000, torch.Generator()), unl)


def test_check_selection_rejects_broken_results():
    cands = torch.tensor([1, 4, 7, 9])
    with pytest.raises(RuntimeError):
        check_selection(torch.tensor([1, 1]), cands, 2, "x")
    with pytest.raises(RuntimeError):
        check_selection(torch.tensor([1, 2]), cands, 2, "x")
    with pytest.raises(RuntimeError):
        check_selection(torch.tensor([1]), cands, 2, "x")


def test_readme_strategy_example_selects_the_smallest_logit_gaps(monkeypatch):
    """The strategy written in README's 'Extending ssal' runs as shown."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "@STRATEGIES.register" in b)
    monkeypatch.setattr(STRATEGIES, "_items", dict(STRATEGIES._items))  # registered for this test only
    exec(compile(block, "README.md", "exec"), {})
    strategy = STRATEGIES.get("max_logit_gap")()
    logits = torch.tensor([[3.0, 1.0, 0.0], [2.0, 1.9, 0.0], [5.0, 0.0, 0.0], [1.0, 1.5, 1.2]])
    sig = Signals(candidates=torch.tensor([4, 7, 9, 11]), labeled=torch.tensor([0]), values={S.Logits(): logits})
    gaps = [2.0, 0.1, 5.0, 0.3]  # by hand: largest minus second largest
    picked = strategy.select(sig, 2, torch.Generator())
    assert picked.tolist() == [7, 11] and sorted(gaps)[:2] == [0.1, 0.3]


@pytest.mark.parametrize("name", [n for n in STRATEGIES.names() if n != "random"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_every_strategy_rejects_a_non_finite_signal(name, bad):
    """A NaN/inf in any float signal a strategy reads (a diverged model) is a one-line error, never a pick."""
    strategy = STRATEGIES.get(name)(_default_cfg(name))
    floats = [r for r in strategy.needs if not isinstance(r, (S.Labels, Images))]
    for request in floats:
        sig = _signals(120, 0.3, 5, strategy)
        sig.values[request] = sig.values[request].clone().float()
        sig.values[request].view(-1)[3] = bad
        with pytest.raises(ValueError, match="NaN/inf"):
            strategy.select(sig, 10, torch.Generator().manual_seed(0))
