"""ProbCover: its delta rule against a brute-force search over radii, its graph against dense distances, its
greedy against a naive max-coverage greedy on sets and against the optimum of tiny problems, the selection
contract, and a run that uses it for the first batch and for the rounds."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from ssal.errors import ConfigError
from ssal.recipe import load_recipe
from ssal.select import STRATEGIES, Signals
from ssal.select.probcover import ball_graph, max_coverage, nearest_other, probcover, purity_delta
from ssal.select.signals import Embeddings, Probs


def _points(n: int, seed: int, dim: int = 2) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def _balls(x: torch.Tensor, delta: float) -> list[set[int]]:
    d = torch.cdist(x, x)
    return [set(torch.nonzero(d[i] < delta).flatten().tolist()) for i in range(len(x))]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("alpha", [0.5, 0.8, 0.95, 1.0])
def test_the_delta_rule_is_the_largest_radius_with_enough_pure_balls(seed, alpha):
    x = _points(25, seed)
    pseudo = torch.randint(0, 3, (25,), generator=torch.Generator().manual_seed(100 + seed))
    d = torch.cdist(x, x)

    def purity(delta: float) -> float:  # the share of balls whose points all share the centre's label
        return sum(all(pseudo[j] == pseudo[i] for j in range(25) if d[i, j] < delta) for i in range(25)) / 25

    # purity only changes where a radius passes a distance: the best radius is one of them
    radii = sorted(set(d.flatten().tolist()) - {0.0})
    best = max(r for r in radii if purity(r) >= alpha)
    assert purity_delta(x, pseudo, alpha) == pytest.approx(best, abs=1e-6)


def test_nearest_other_is_the_distance_to_the_closest_point_of_another_label():
    x = torch.tensor([[0.0, 0], [1, 0], [3, 0], [3.5, 0]])
    assert nearest_other(x, torch.tensor([0, 0, 1, 1]), chunk=3).tolist() == [3.0, 2.0, 2.0, 2.5]


@pytest.mark.parametrize("seed", range(3))
def test_the_ball_graph_is_the_dense_one(seed):
    x = _points(40, seed, dim=3)
    indptr, indices = ball_graph(x, 0.9, chunk=7)
    balls = _balls(x, 0.9)
    assert indices.dtype == np.int32 and len(indptr) == 41
    for i in range(40):
        assert set(indices[indptr[i]:indptr[i + 1]].tolist()) == balls[i]


def naive_greedy(balls: list[set[int]], labeled: set[int], budget: int) -> list[int]:
    covered = set().union(*(balls[i] for i in labeled)) if labeled else set()
    picks = []
    for _ in range(budget):
        gains = [(len(balls[i] - covered), -i) for i in range(len(balls)) if i not in labeled and i not in picks]
        gain, neg = max(gains)
        if gain == 0:
            break
        picks.append(-neg)
        covered |= balls[-neg]
    return picks


@pytest.mark.parametrize("seed", range(8))
def test_the_greedy_is_the_naive_max_coverage_greedy(seed):
    x = _points(30, seed)
    delta = 0.6 + 0.1 * (seed % 3)
    labeled = set(torch.randperm(30, generator=torch.Generator().manual_seed(seed))[: seed % 4].tolist())
    mask = np.array([i in labeled for i in range(30)])
    want = naive_greedy(_balls(x, delta), labeled, 8)
    got = max_coverage(*ball_graph(x, delta), mask, 8, torch.Generator().manual_seed(0)).tolist()
    assert got[: len(want)] == want
    assert len(got) == 8 and len(set(got)) == 8 and not set(got) & labeled  # the rest: random, never labeled


@pytest.mark.parametrize("seed", range(6))
def test_the_greedy_covers_at_least_1_minus_1_over_e_of_the_optimum(seed):
    x = _points(12, seed)
    balls = _balls(x, 0.8)
    k = 3
    best = max(len(set().union(*(balls[i] for i in c))) for c in itertools.combinations(range(12), k))
    got = max_coverage(*ball_graph(x, 0.8), np.zeros(12, dtype=bool), k).tolist()
    assert len(set().union(*(balls[i] for i in got))) >= (1 - 1 / math.e) * best


def test_once_everything_is_covered_the_rest_is_random_and_seeded():
    x = torch.tensor([[0.0, 0], [0.1, 0], [5, 5], [5.1, 5], [9, 9]])
    graph = ball_graph(x, 1.0)
    a = max_coverage(*graph, np.zeros(5, dtype=bool), 5, torch.Generator().manual_seed(1)).tolist()
    assert a[:3] == [0, 2, 4] and sorted(a) == [0, 1, 2, 3, 4]
    assert max_coverage(*graph, np.zeros(5, dtype=bool), 5, torch.Generator().manual_seed(1)).tolist() == a


def test_the_strategy_keeps_the_selection_contract_and_reads_the_class_count():
    n_lab, n_cand = 15, 120
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g) * 3
    emb = centres[torch.arange(n_lab + n_cand) % 4] + torch.randn(n_lab + n_cand, 8, generator=g) * 0.3
    signals = Signals(candidates=torch.arange(1000, 1000 + n_cand), labeled=torch.arange(n_lab), values={
        Embeddings(labeled=True): emb[:n_lab], Embeddings(): emb[n_lab:],
        Probs(): torch.full((n_cand, 4), 0.25)})
    strategy = STRATEGIES.get("probcover")()
    for budget in (1, 10, 200):
        picked = strategy.select(signals, budget, torch.Generator().manual_seed(2))
        assert len(picked) == min(budget, n_cand) and len(set(picked.tolist())) == len(picked)
        assert set(picked.tolist()) <= set(range(1000, 1000 + n_cand))
    # the same picks as ProbCover on the stacked features (labeled first), four clusters
    mask = torch.arange(n_lab + n_cand) < n_lab
    want, delta = probcover(emb, mask, 10, torch.Generator().manual_seed(2), clusters=4)
    assert strategy.select(signals, 10, torch.Generator().manual_seed(2)).tolist() == (want + 1000 - n_lab).tolist()
    assert 0 < delta < 2


def test_the_recipe_checks_its_options(write_recipe):
    for options, fragment in [({"delta": 0}, "active.probcover.delta"), ({"delta": 3}, "active.probcover.delta"),
                              ({"alpha": 1.5}, "active.probcover.alpha"),
                              ({"clusters": 1}, "active.probcover.clusters")]:
        with pytest.raises(ConfigError, match=fragment):
            load_recipe(write_recipe(active={"strategy": "probcover", "probcover": options}))


def test_a_run_covers_with_its_first_batch_and_its_rounds(write_recipe):
    from ssal.experiment import loop

    recipe = write_recipe("pc", train={"steps": 3}, active={"strategy": "probcover", "initial_strategy": "probcover",
                                                             "rounds": 1, "budget": 10})
    run = loop.run(load_recipe(recipe), progress=False)
    picks = {name: json.loads((run / "rounds" / name / "selected.json").read_text())["indices"]
             for name in ("initial", "r00")}
    assert len(set(picks["initial"])) == len(picks["initial"]) and len(set(picks["r00"])) == 10
    assert not set(picks["initial"]) & set(picks["r00"])


def test_a_graph_too_large_is_one_line_naming_the_way_out():
    x = torch.nn.functional.normalize(_points(50, 0, dim=3), dim=1)
    with pytest.raises(ConfigError, match=r"would hold about 2,500 edges .* active.probcover.delta lower"):
        ball_graph(x, 2.5, chunk=10, max_edges=1000)  # every ball holds every point
