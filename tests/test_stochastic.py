"""Stochastic batch acquisition (``active.stochastic``): the probabilities against the paper's formulas
computed here by hand, the draws against them (chi-square over many seeded draws, for one pick and for
ordered pairs against sequential sampling without replacement), the selection contract, and the recipe
refusing what cannot work."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from ssal.errors import ConfigError
from ssal.recipe import load_recipe
from ssal.select import STRATEGIES, Signals, create_strategy
from ssal.select.stochastic import Stochastic, draw, probabilities
from ssal.select.uncertainty import Entropy

SCORES = torch.tensor([0.9, 0.1, 0.5, 0.0, 0.5, 2.0])


def by_hand(scores: list[float], mode: str, beta: float) -> list[float]:
    if mode == "power":
        w = [s ** beta for s in scores]
    elif mode == "softmax":
        w = [math.exp(beta * s) for s in scores]
    else:  # rank 1 = highest score, equal scores ranked by position
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        rank = {i: r + 1 for r, i in enumerate(order)}
        w = [rank[i] ** -beta for i in range(len(scores))]
    return [x / sum(w) for x in w]


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank"])
@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_probabilities_are_the_formulas(mode, beta):
    got = probabilities(SCORES, mode, beta)
    assert torch.allclose(got, torch.tensor(by_hand(SCORES.tolist(), mode, beta), dtype=torch.float64), atol=1e-12)


def _draws(k: int, mode: str, beta: float, n: int, scores=SCORES) -> list[tuple[int, ...]]:
    g = torch.Generator().manual_seed(1234)
    return [tuple(draw(scores, k, mode, beta, g).tolist()) for _ in range(n)]


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank"])
def test_one_pick_follows_the_probabilities(mode):
    n = 6_000
    p = np.array(by_hand(SCORES.tolist(), mode, 1.0))
    counts = np.bincount([d[0] for d in _draws(1, mode, 1.0, n)], minlength=len(p))
    support = p > 0
    assert counts[~support].sum() == 0  # a zero score under power is never drawn
    assert chisquare(counts[support], p[support] * n).pvalue > 1e-3
    # the test can tell: the same draws are far from uniform and from the top-1
    assert chisquare(counts[support], np.full(support.sum(), n / support.sum())).pvalue < 1e-9


@pytest.mark.parametrize("mode", ["softmax", "softrank"])
def test_ordered_pairs_follow_sequential_sampling_without_replacement(mode):
    scores = torch.tensor([1.0, 0.2, 0.6, 0.4])
    p = by_hand(scores.tolist(), mode, 1.0)
    pairs = list(itertools.permutations(range(4), 2))
    expected = np.array([p[i] * p[j] / (1 - p[i]) for i, j in pairs])  # first i, then j among the rest
    n = 8_000
    drawn = _draws(2, mode, 1.0, n, scores)
    counts = np.array([sum(1 for d in drawn if d == pair) for pair in pairs])
    assert chisquare(counts, expected * n).pvalue > 1e-3
    # with replacement would be p_i * p_j (normalised): the test rejects it
    wrong = np.array([p[i] * p[j] for i, j in pairs])
    assert chisquare(counts, wrong / wrong.sum() * n).pvalue < 1e-9


def test_a_large_beta_gives_the_top_budget():
    scores = torch.tensor([0.9, 0.1, 0.5, 0.0, 0.45, 2.0])
    for seed in range(10):
        assert draw(scores, 3, "softmax", 1e4, torch.Generator().manual_seed(seed)).tolist() == [5, 0, 2]


def _signals(n: int, seed: int = 0) -> Signals:
    probs = torch.softmax(torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)) * 2, dim=1)
    from ssal.select.signals import Probs

    return Signals(candidates=torch.arange(100, 100 + n), labeled=torch.arange(10), values={Probs(): probs})


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank"])
@pytest.mark.parametrize(("n", "budget"), [(50, 10), (7, 7), (5, 9)])
def test_the_selection_contract_holds(mode, n, budget):
    strategy = Stochastic(Entropy(), mode, 1.0)
    picked = strategy.select(_signals(n), budget, torch.Generator().manual_seed(3))
    assert len(picked) == min(budget, n) and len(set(picked.tolist())) == len(picked)
    assert set(picked.tolist()) <= set(range(100, 100 + n))
    # the same generator seed: the same batch; the scores are the inner strategy's
    again = strategy.select(_signals(n), budget, torch.Generator().manual_seed(3))
    assert torch.equal(picked, again)
    assert torch.equal(strategy.scores(_signals(n)), Entropy().scores(_signals(n)))


def test_power_with_fewer_positive_scores_than_the_budget_takes_them_all_first():
    scores = torch.tensor([0.0, 0.3, 0.0, 0.7, 0.0])
    for seed in range(20):
        picked = draw(scores, 3, "power", 1.0, torch.Generator().manual_seed(seed)).tolist()
        assert sorted(picked[:2]) == [1, 3] and len(set(picked)) == 3


def test_the_recipe_wraps_the_strategy_and_refuses_what_cannot_work(write_recipe):
    cfg = load_recipe(write_recipe(active={"strategy": "margin", "stochastic": "power", "stochastic_beta": 2.0}))
    strategy = create_strategy(cfg.active)
    assert isinstance(strategy, Stochastic) and isinstance(strategy.inner, STRATEGIES.get("margin"))
    assert (strategy.mode, strategy.beta, strategy.needs) == ("power", 2.0, strategy.inner.needs)
    assert not isinstance(create_strategy(load_recipe(write_recipe(active={"strategy": "margin"})).active), Stochastic)
    for active, fragment in [
        ({"strategy": "entropy", "stochastic": "gumbel"}, "active.stochastic must be one of power, softmax, softrank"),
        ({"strategy": "coreset", "stochastic": "softmax"}, "does not rank the candidates by a score"),
        ({"strategy": "dfal", "stochastic": "power"}, "power needs scores >= 0"),
        ({"strategy": "entropy", "stochastic": "softrank", "stochastic_beta": 0}, "stochastic_beta must be > 0"),
    ]:
        with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
            load_recipe(write_recipe(active=active))
    load_recipe(write_recipe(active={"strategy": "dfal", "stochastic": "softmax"}))  # softmax takes any score


def test_a_run_draws_its_batch_reproducibly_and_not_the_top_budget(write_recipe):
    from ssal.experiment import loop

    def r00(name: str, **active) -> list[int]:
        recipe = write_recipe(name, train={"steps": 3}, active={"strategy": "entropy", "rounds": 1, "budget": 10,
                                                                 **active})
        run = loop.run(load_recipe(recipe), progress=False)
        return json.loads((run / "rounds" / "r00" / "selected.json").read_text())["indices"]

    top = r00("top")
    drawn = r00("drawn", stochastic="softrank")
    assert r00("again", stochastic="softrank") == drawn  # seeded from (seed, round): a resume draws the same
    assert len(set(drawn)) == 10 and drawn != top  # the same round-0 model: the draw, not the top 10
