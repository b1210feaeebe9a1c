"""The selection math of ssal.select.functional against hand computation and brute force."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssal.select import functional as Fn


def test_bald_by_hand():
    # two passes that disagree completely: H(mean) = ln 2, mean H = 0
    mc = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]])  # [T=2, N=2, C=2]
    assert torch.allclose(Fn.bald(mc), torch.tensor([math.log(2), 0.0]))
    p1, p2 = torch.tensor([0.9, 0.1]), torch.tensor([0.3, 0.7])
    mean = (p1 + p2) / 2

    def h(p):
        return float(-(p * p.log()).sum())

    want = h(mean) - (h(p1) + h(p2)) / 2
    assert Fn.bald(torch.stack([p1, p2]).unsqueeze(1)).item() == pytest.approx(want, rel=1e-6)


def test_bald_is_zero_without_dropout_and_streams_like_the_stack():
    p = torch.softmax(torch.randn(50, 10), dim=1)
    same = Fn.bald(p.expand(20, 50, 10))  # dropout p = 0: every pass identical
    assert torch.isfinite(same).all() and same.abs().max() < 1e-6 and (same >= 0).all()
    mc = torch.softmax(torch.randn(7, 50, 10), dim=2)
    stream = Fn.BALDStream()
    for t in range(7):
        stream.update(mc[t])
    assert torch.allclose(stream.score(), Fn.bald(mc))
    with pytest.raises(ValueError, match="at least one"):
        Fn.BALDStream().score()


def test_consistency_and_output_discrepancy_by_hand():
    aug = torch.tensor([[[1.0, 0.0], [0.2, 0.8]], [[0.0, 1.0], [0.2, 0.8]], [[0.5, 0.5], [0.2, 0.8]]])  # K=3
    # views of sample 0: class 0 takes 1, 0, .5 (mean .5, population variance (.25+.25+0)/3), class 1 the same
    assert torch.allclose(Fn.consistency(aug), torch.tensor([2 * 0.5 / 3, 0.0]))
    a = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    b = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    assert torch.allclose(Fn.output_discrepancy(a, b), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="equal shapes"):
        Fn.output_discrepancy(a, b[:1])


def test_cal_by_hand():
    lab_f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    lab_p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    cand_f = torch.tensor([[2.0, 0.1], [0.0, 3.0]])  # nearest (cosine): 0 then 2; 1 then 2
    cand_p = torch.tensor([[0.6, 0.4], [0.7, 0.3]])

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))

    want_k1 = [kl([0.9, 0.1], [0.6, 0.4]), kl([0.2, 0.8], [0.7, 0.3])]
    assert torch.allclose(Fn.cal(cand_f, cand_p, lab_f, lab_p, k=1), torch.tensor(want_k1))
    want_k2 = [(kl([0.9, 0.1], [0.6, 0.4]) + kl([0.5, 0.5], [0.6, 0.4])) / 2,
               (kl([0.2, 0.8], [0.7, 0.3]) + kl([0.5, 0.5], [0.7, 0.3])) / 2]
    assert torch.allclose(Fn.cal(cand_f, cand_p, lab_f, lab_p, k=2, chunk=1), torch.tensor(want_k2))
    # k larger than the labeled set: the mean over all of it
    want_all = [sum(kl(p, [0.6, 0.4]) for p in lab_p.tolist()) / 3, sum(kl(p, [0.7, 0.3]) for p in lab_p.tolist()) / 3]
    assert torch.allclose(Fn.cal(cand_f, cand_p, lab_f, lab_p, k=10), torch.tensor(want_all))


def test_feature_similarity_by_hand():
    lab_f = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    lab_y = torch.tensor([0, 0, 2])  # class 1 has no labeled sample
    cand = torch.tensor([[1.0, 1.0], [3.0, 0.0], [-1.0, 0.0]])
    s = 1 / math.sqrt(2)
    assert torch.allclose(Fn.feature_similarity(cand, lab_f, lab_y), torch.tensor([-s, -1.0, 0.0]))
    protos = Fn.class_prototypes(lab_f, lab_y)
    assert torch.allclose(protos, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))


def _kcenter_brute(x: torch.Tensor, labeled: torch.Tensor, budget: int) -> list[int]:
    """Full distance matrix, direct differences; ties to the lowest index."""
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    centers = labeled.clone()
    picks = []
    for _ in range(min(budget, int((~labeled).sum()))):
        if centers.any():
            min_d = d[:, centers].min(dim=1).values
        else:
            min_d = ((x - x.mean(0)) ** 2).sum(1)
        min_d[centers] = -1
        i = int(torch.argmax(min_d))
        picks.append(i)
        centers[i] = True
    return picks


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), dim=st.integers(1, 6), labeled_frac=st.floats(0.0, 0.9), budget=st.integers(1, 45),
       seed=st.integers(0, 10_000), chunk=st.integers(1, 5))
def test_kcenter_greedy_equals_brute_force(n, dim, labeled_frac, budget, seed, chunk):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-4, 5, (n, dim), generator=g).float()  # small integers: exact arithmetic, many ties
    labeled = torch.rand(n, generator=g) < labeled_frac
    if not labeled.any():  # farthest from the mean: a mean of integers with n a power of two is exact
        x = x[: 2 ** int(math.log2(n))]
        labeled = labeled[: len(x)]
    got = Fn.kcenter_greedy(x, labeled, budget, chunk=chunk)
    assert got.tolist() == _kcenter_brute(x, labeled, budget)


def test_kcenter_greedy_takes_all_and_never_a_labeled_point():
    x = torch.randn(30, 4)
    labeled = torch.zeros(30, dtype=torch.bool)
    labeled[::3] = True
    got = Fn.kcenter_greedy(x, labeled, 100)
    assert sorted(got.tolist()) == (~labeled).nonzero().squeeze(1).tolist()
    assert len(Fn.kcenter_greedy(x, torch.ones(30, dtype=torch.bool), 5)) == 0


def _gradient_embeddings(probs, feats):
    a = probs.clone()
    a[torch.arange(len(a)), probs.argmax(1)] -= 1
    return torch.einsum("nc,nd->ncd", a, feats).reshape(len(a), -1)


def test_badge_first_pick_and_d2_weights_match_the_materialised_embeddings():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(40, 5, generator=g) * 2, dim=1).double()
    feats = torch.randn(40, 7, generator=g).double()
    emb = _gradient_embeddings(probs, feats)
    first = int(torch.argmax((emb ** 2).sum(1)))
    assert Fn.badge(probs, feats, 1).tolist() == [first]
    centers = [first, 3, 17]
    brute = torch.cdist(emb, emb[centers]).pow(2).min(dim=1).values
    got = Fn.gradient_embedding_sq_dist(probs, feats, torch.tensor(centers))
    assert torch.allclose(got.double(), brute, rtol=1e-4, atol=1e-5)


def test_badge_draws_the_second_pick_with_d2_probabilities():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(6, 3, generator=g) * 2, dim=1)
    feats = torch.randn(6, 4, generator=g)
    emb = _gradient_embeddings(probs, feats)
    first = int(torch.argmax((emb ** 2).sum(1)))
    d2 = ((emb - emb[first]) ** 2).sum(1)
    want = d2 / d2.sum()
    draws = 4000
    counts = torch.zeros(6)
    for seed in range(draws):
        second = Fn.badge(probs, feats, 2, generator=torch.Generator().manual_seed(seed))[1]
        counts[second] += 1
    assert counts[first] == 0
    # each frequency within 4 binomial standard deviations of its D^2 probability
    sd = (want * (1 - want) / draws).sqrt()
    assert ((counts / draws - want).abs() <= 4 * sd + 1e-3).all(), (counts / draws, want)


def test_badge_with_duplicates_still_returns_distinct_indices():
    probs = torch.full((10, 3), 1 / 3)
    feats = torch.ones(10, 4)
    got = Fn.badge(probs, feats, 10, generator=torch.Generator().manual_seed(0))
    assert sorted(got.tolist()) == list(range(10))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_raise(bad):
    probs = torch.full((6, 3), 1 / 3)
    feats = torch.randn(6, 4)
    bad_p, bad_f = probs.clone(), feats.clone()
    bad_p[2, 1], bad_f[3, 0] = bad, bad
    labeled = torch.zeros(6, dtype=torch.bool)
    calls = [
        lambda: Fn.bald(bad_p.expand(3, 6, 3)),
        lambda: Fn.consistency(bad_p.expand(3, 6, 3)),
        lambda: Fn.output_discrepancy(bad_p, probs),
        lambda: Fn.cal(feats, bad_p, feats, probs),
        lambda: Fn.cal(bad_f, probs, feats, probs),
        lambda: Fn.feature_similarity(bad_f, feats, torch.zeros(6, dtype=torch.long)),
        lambda: Fn.kcenter_greedy(bad_f, labeled, 2),
        lambda: Fn.badge(probs, bad_f, 2),
        lambda: Fn.badge(bad_p, feats, 2),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="NaN/inf"):
            call()


def _joint_mi_brute(mc: torch.Tensor, batch: list[int]) -> float:
    """I(y_batch; w) by enumerating every label configuration of the batch."""
    import itertools

    t, _, c = mc.shape
    h_joint = 0.0
    for config in itertools.product(range(c), repeat=len(batch)):
        p = torch.ones(t, dtype=torch.float64)
        for i, y in zip(batch, config, strict=True):
            p = p * mc[:, i, y].double()
        q = float(p.mean())
        h_joint -= q * math.log(q) if q > 0 else 0.0
    cond = sum(float(-(mc[:, i] * mc[:, i].log()).sum(1).mean()) for i in batch)
    return h_joint - cond


def test_batchbald_greedy_equals_brute_force_joint_mutual_information():
    g = torch.Generator().manual_seed(0)
    mc = torch.softmax(torch.randn(5, 8, 3, generator=g) * 2, dim=2).double()  # T=5, N=8, C=3
    got = Fn.batchbald(mc, 3, num_samples=1000).tolist()  # 3^3 = 27 configurations: exact
    chosen: list[int] = []
    for _ in range(3):
        best = max((i for i in range(8) if i not in chosen), key=lambda i: _joint_mi_brute(mc, chosen + [i]))
        chosen.append(best)
    assert got == chosen
    assert got[0] == int(torch.argmax(Fn.bald(mc)))  # one sample: BatchBALD is BALD


def test_batchbald_avoids_a_duplicate_that_bald_would_take_twice():
    g = torch.Generator().manual_seed(1)
    mc = torch.softmax(torch.randn(8, 5, 4, generator=g), dim=2)
    mc[:, 0] = torch.eye(4)[torch.arange(8) % 4] * 0.9 + 0.025  # the passes disagree most on sample 0
    mc[:, 1] = torch.eye(4)[torch.arange(8) // 2] * 0.6 + 0.1  # less, and along another split of the passes
    mc = torch.cat([mc, mc[:, :1]], dim=1)  # sample 5 duplicates sample 0
    assert Fn.top_k(Fn.bald(mc), 2).tolist() == [0, 5]  # BALD takes both copies
    # the copy's label says little new about the weights once sample 0's is known: sample 1 comes first
    assert Fn.batchbald(mc, 2, num_samples=1000).tolist() == [0, 1]


def test_batchbald_sampled_configurations_are_seeded_and_distinct():
    g = torch.Generator().manual_seed(2)
    mc = torch.softmax(torch.randn(6, 30, 5, generator=g) * 2, dim=2)
    a = Fn.batchbald(mc, 12, num_samples=50, generator=torch.Generator().manual_seed(0))
    b = Fn.batchbald(mc, 12, num_samples=50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and len(set(a.tolist())) == 12


def test_typiclust_takes_the_most_typical_point_of_uncovered_clusters():
    # three tight blobs; in each, the centre point is the most typical (closest to its neighbours)
    centres = torch.tensor([[0.0, 10.0], [10.0, 0.0], [-10.0, -10.0]])
    ring = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.7, 0.7], [-0.7, -0.7]])
    pts = torch.cat([torch.cat([c[None], c + 0.3 * ring]) for c in centres])  # 7 per blob, centre first
    labeled = torch.zeros(len(pts), dtype=torch.bool)
    labeled[7 + 2] = True  # blob 1 is covered
    got = Fn.typiclust(pts, labeled, 2, torch.Generator().manual_seed(0), k=6, min_cluster_size=2)
    assert sorted(got.tolist()) == [0, 14]  # the centres of the two uncovered blobs
    t = Fn.typicality(pts[:7], k=6)
    assert int(torch.argmax(t)) == 0


def test_typicality_is_the_inverse_mean_squared_distance_to_the_k_nearest():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    d2 = [[(a - c) ** 2 + (b - e) ** 2 for c, e in pts.tolist()] for a, b in pts.tolist()]
    want = [1.0 / (sum(sorted(row[:i] + row[i + 1:])[:2]) / 2 + 1e-5) for i, row in enumerate(d2)]
    assert torch.allclose(Fn.typicality(pts, k=2), torch.tensor(want))


def test_typiclust_drops_small_clusters_and_clusters_normalised_features():
    # two blobs of 12 directions and a far blob of 3; at unit norm the far blob is a cluster of its own
    g = torch.Generator().manual_seed(0)
    blob = lambda angle, n: torch.stack([torch.cos(angle + 0.02 * torch.randn(n, generator=g)),  # noqa: E731
                                         torch.sin(angle + 0.02 * torch.randn(n, generator=g))], dim=1)
    pts = torch.cat([blob(torch.tensor(0.0), 12), blob(torch.tensor(2.0), 12), blob(torch.tensor(4.0), 3)])
    pts = pts * torch.rand(len(pts), 1, generator=g).mul(10).add(1)  # any length: only the direction counts
    labeled = torch.zeros(len(pts), dtype=torch.bool)
    picked = Fn.typiclust(pts, labeled, 3, torch.Generator().manual_seed(0), min_cluster_size=5)
    # 3 clusters (0 labeled + budget 3); the blob of 3 is dropped, so the two big ones give their turns
    assert len(picked) == 3 and not (picked >= 24).any()
    # each big blob's first pick is its most typical direction (typicality on the unit vectors)
    unit = torch.nn.functional.normalize(pts, dim=1)
    for lo in (0, 12):
        block = picked[(picked >= lo) & (picked < lo + 12)]
        assert int(block[0]) == lo + int(torch.argmax(Fn.typicality(unit[lo:lo + 12], k=6)))
