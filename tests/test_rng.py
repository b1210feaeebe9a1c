"""ssal.rng: the SplitMix64 hash bit for bit against Python integers, the statistics of the draws,
and the properties the per-sample keys exist for (a sample's draws depend only on its key)."""

from __future__ import annotations

import hashlib
import math
import random

import pytest
import torch

from ssal import rng

U64 = (1 << 64) - 1


# ----------------------------------------------------------------------------- Python reference


def py_mix(z: int) -> int:
    """The SplitMix64 finaliser on unsigned Python ints, mod 2**64."""
    z = (z + 0x9E3779B97F4A7C15) & U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
    return z ^ (z >> 31)


def signed(u: int) -> int:
    u &= U64
    return u - (1 << 64) if u >= 1 << 63 else u


def unsigned(s: int) -> int:
    return s & U64


def py_name(tag: str | int) -> int:
    """A tag as 64 unsigned bits: an int as itself, a string by its 8-byte blake2b digest."""
    if isinstance(tag, int):
        return tag & U64
    return int.from_bytes(hashlib.blake2b(tag.encode(), digest_size=8).digest(), "little")


def py_sample_key(seed: int, *parts: int | str) -> int:
    key = py_mix(py_name(seed))
    for part in parts:
        key = py_mix(py_name(part) ^ key)
    return key


def py_bits(key: int, tag: str, j: int) -> int:
    """Draw j of (key, tag): unsigned 64 bits."""
    return py_mix((py_mix(unsigned(key) ^ py_name(tag)) + j) & U64)


def keys_of(n: int, seed: int = 0) -> torch.Tensor:
    return rng.sample_keys(seed, torch.arange(n))


EDGES = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15, (2**64 - 0x9E3779B97F4A7C15) & U64]


# ----------------------------------------------------------------------------- mix


def test_mix_matches_python_splitmix64_bit_for_bit():
    r = random.Random(1234)
    values = EDGES + [r.getrandbits(64) for _ in range(5000)] + list(range(-50, 50))
    z = torch.tensor([signed(v) for v in values], dtype=torch.long)
    before = z.clone()
    out = rng.mix(z)
    assert out.dtype == torch.int64 and out.shape == z.shape
    assert torch.equal(z, before)  # the input is not modified in place
    assert [unsigned(v) for v in out.tolist()] == [py_mix(unsigned(v)) for v in values]


def test_mix_edge_values_and_shapes():
    for v in EDGES:
        scalar = rng.mix(torch.tensor(signed(v), dtype=torch.long))
        assert scalar.dim() == 0 and unsigned(int(scalar)) == py_mix(v)
    # any shape, element by element; an expanded (non-contiguous) input works and stays untouched
    grid = torch.tensor([signed(v) for v in EDGES[:6]], dtype=torch.long).view(2, 3)
    assert torch.equal(rng.mix(grid), rng.mix(grid.flatten()).view(2, 3))
    col = grid[:, :1].expand(2, 4)
    assert torch.equal(rng.mix(col), rng.mix(grid[:, :1]).expand(2, 4))


def test_mix_is_injective_and_avalanches():
    z = torch.arange(-20000, 20000, dtype=torch.long)
    out = rng.mix(z)
    assert len(torch.unique(out)) == len(z)
    # consecutive inputs: on average half of the 64 output bits differ
    diff = [bin(unsigned(a) ^ unsigned(b)).count("1") for a, b in zip(out[:-1].tolist(), out[1:].tolist(), strict=True)]
    mean = sum(diff) / len(diff)
    assert abs(mean - 32) < 0.5, mean


# ----------------------------------------------------------------------------- uniform / randint


def test_uniform_and_randint_follow_the_documented_stream():
    """Element j of sample b is a function of (keys[b], tag, j) only: checked against Python."""
    keys = torch.tensor([signed(v) for v in EDGES] + [5, -5], dtype=torch.long)
    u = rng.uniform(keys, "hflip", (3,))
    i = rng.randint(keys, "dy", -4, 5, (3,))
    for b, key in enumerate(keys.tolist()):
        for j in range(3):
            assert float(u[b, j]) == (py_bits(key, "hflip", j) >> 40) / 2**24
            assert int(i[b, j]) == -4 + math.floor((py_bits(key, "dy", j) >> 11) / 2**53 * 9)
    # a scalar draw (shape ()) is element 0
    assert torch.equal(rng.uniform(keys, "hflip"), u[:, 0])
    assert torch.equal(rng.randint(keys, "dy", -4, 5), i[:, 0])


@pytest.mark.parametrize("shape", [(), (1,), (7,), (2, 3)])
def test_uniform_range_dtype_shape(shape):
    keys = keys_of(500)
    u = rng.uniform(keys, "t", shape)
    assert u.dtype == torch.float32 and u.shape == (500, *shape)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert torch.equal(u * 2**24, (u * 2**24).floor())  # 24-bit resolution, exact in float32


def test_uniform_mean_and_variance():
    u = rng.uniform(keys_of(1000, seed=3), "stats", (1000,)).double().flatten()  # 1e6 draws
    n = u.numel()
    se_mean = math.sqrt(1 / 12 / n)
    se_var = math.sqrt((1 / 80 - 1 / 144) / n)  # Var[(U - 1/2)^2] = 1/80 - 1/144
    assert abs(float(u.mean()) - 0.5) < 5 * se_mean
    assert abs(float(((u - 0.5) ** 2).mean()) - 1 / 12) < 5 * se_var
    # every tenth of [0, 1) gets its share (chi-square, 9 degrees of freedom; p(chi2 > 40) ~ 1e-5)
    counts = torch.histc(u, bins=10, min=0.0, max=1.0)
    chi2 = float(((counts - n / 10) ** 2 / (n / 10)).sum())
    assert chi2 < 40, chi2


@pytest.mark.parametrize("low,high", [(0, 2), (-3, 7), (0, 14), (5, 6), (-2**40, -2**40 + 3)])
def test_randint_covers_exactly_the_range_uniformly(low, high):
    draws = rng.randint(keys_of(2000, seed=1), "r", low, high, (100,))  # 2e5 draws
    assert draws.dtype == torch.int64 and draws.shape == (2000, 100)
    k = high - low
    counts = torch.bincount((draws - low).flatten(), minlength=k)
    assert len(counts) == k  # nothing >= high, and (bincount) nothing < low
    assert int(counts.min()) > 0  # every value occurs
    if k > 1:
        expected = draws.numel() / k
        chi2 = float(((counts.double() - expected) ** 2 / expected).sum())
        assert chi2 < k - 1 + 10 * math.sqrt(2 * (k - 1)) + 10, chi2  # loose: ~ mean + 10 sd


def test_randint_large_range_has_no_visible_bias():
    # a range that is not a power of two: both halves get half of the draws
    draws = rng.randint(keys_of(1000, seed=2), "big", 0, 3 * 2**40, (200,)).flatten()
    assert int(draws.min()) >= 0 and int(draws.max()) < 3 * 2**40
    frac = float((draws < 3 * 2**39).double().mean())
    assert abs(frac - 0.5) < 5 * math.sqrt(0.25 / draws.numel())


# ----------------------------------------------------------------------------- keyed properties


@pytest.mark.parametrize("shape", [(), (5,), (2, 3)])
def test_draws_are_batch_independent(shape):
    keys = keys_of(40, seed=9)
    u = rng.uniform(keys, "a", shape)
    r = rng.randint(keys, "b", 0, 10, shape)
    for b in range(40):
        assert torch.equal(u[b], rng.uniform(keys[b:b + 1], "a", shape)[0])
        assert torch.equal(r[b], rng.randint(keys[b:b + 1], "b", 0, 10, shape)[0])
    # any reordering or sub-batch: the same draws follow their keys
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:25]
    assert torch.equal(rng.uniform(keys[perm], "a", shape), u[perm])
    assert torch.equal(rng.randint(keys[perm], "b", 0, 10, shape), r[perm])
    # longer draws extend shorter ones (element j depends on j, not on the total count)
    if shape == (5,):
        assert torch.equal(rng.uniform(keys, "a", (3,)), u[:, :3])
        assert torch.equal(rng.uniform(keys, "a"), u[:, 0])


def test_same_keys_same_draws_and_inputs_untouched():
    keys = keys_of(100, seed=4)
    before = keys.clone()
    a = rng.uniform(keys, "x", (4,))
    b = rng.uniform(keys.clone(), "x", (4,))
    assert torch.equal(a, b)
    assert torch.equal(rng.randint(keys, "y", 0, 1000), rng.randint(keys, "y", 0, 1000))
    rng.derive(keys, "z")
    assert torch.equal(keys, before)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_different_tags_and_keys_give_uncorrelated_draws():
    keys = keys_of(4000, seed=5)
    a, b = rng.uniform(keys, "dx"), rng.uniform(keys, "dy")
    n = len(keys)
    assert (a != b).float().mean() > 0.99
    assert abs(corr(a, b)) < 5 / math.sqrt(n)
    # neighbouring keys (even raw consecutive integers) and neighbouring draws of one key
    raw = rng.uniform(torch.arange(n), "t")
    assert abs(corr(raw[:-1], raw[1:])) < 5 / math.sqrt(n)
    assert abs(float(raw.double().mean()) - 0.5) < 5 * math.sqrt(1 / 12 / n)
    seq = rng.uniform(keys[:100], "t", (40,))
    assert abs(corr(seq[:, :-1], seq[:, 1:])) < 5 / math.sqrt(seq[:, 1:].numel())
    # an int tag and a str tag work and differ from each other
    assert (rng.uniform(keys, 1) != rng.uniform(keys, "1")).float().mean() > 0.99


def test_derive_gives_new_distinct_keys():
    keys = keys_of(10000, seed=6)
    d = rng.derive(keys, "op0")
    assert d.dtype == torch.int64 and d.shape == keys.shape
    assert torch.equal(d, rng.derive(keys, "op0"))
    assert not torch.isin(d, keys).any()  # new keys, not the old ones
    assert len(torch.unique(d)) == len(keys)  # distinct keys stay distinct
    e = rng.derive(keys, "op1")
    assert (d != e).all()
    # batch-independent like every other draw
    assert torch.equal(rng.derive(keys[3:7], "op0"), d[3:7])
    # a derived stream is not the parent stream under the same tag
    assert (rng.uniform(d, "m") != rng.uniform(keys, "m")).float().mean() > 0.99
    # against Python: mix(key ^ name(tag))
    for key, out in zip(keys[:50].tolist(), d[:50].tolist(), strict=True):
        assert unsigned(out) == py_mix(unsigned(key) ^ py_name("op0"))


# ----------------------------------------------------------------------------- sample_keys / to_seed


def test_sample_keys_matches_python_reference():
    for seed, parts in [(0, ()), (7, (3,)), (7, (3, 4)), (123456789, ("view", 17, 2)), (2**40, (-1, "mc")),
                        (-5, (2**63, 2**64 - 1))]:
        key = rng.sample_keys(seed, *parts)
        assert key.dim() == 0 and key.dtype == torch.int64
        assert unsigned(int(key)) == py_sample_key(seed, *parts), (seed, parts)


def test_sample_keys_broadcasts_int_str_and_tensor_parts():
    seed, step = 11, 5
    slots = torch.arange(8)
    keys = rng.sample_keys(seed, step, slots)
    assert keys.shape == (8,) and keys.dtype == torch.int64
    assert len(torch.unique(keys)) == 8
    for i in range(8):
        assert int(keys[i]) == int(rng.sample_keys(seed, step, i))  # int and tensor parts agree
        assert int(keys[i]) == int(rng.sample_keys(seed, torch.tensor(step), torch.tensor(i)))
        assert unsigned(int(keys[i])) == py_sample_key(seed, step, i)
    # two tensor parts broadcast together: [S, 1] x [N] -> [S, N]
    steps = torch.arange(3).view(3, 1)
    grid = rng.sample_keys(seed, steps, slots)
    assert grid.shape == (3, 8)
    for s in range(3):
        assert torch.equal(grid[s], rng.sample_keys(seed, s, slots))
    # str parts: as in selection, (seed, "view", index, k)
    index = torch.tensor([4, 9, 4])
    v = rng.sample_keys(seed, "view", index, 1)
    assert v.shape == (3,) and int(v[0]) == int(v[2]) and int(v[0]) != int(v[1])
    for j in range(3):
        assert unsigned(int(v[j])) == py_sample_key(seed, "view", int(index[j]), 1)
    assert not torch.isin(v, rng.sample_keys(seed, "mc", index, 1)).any()
    # other integer dtypes are taken as int64
    assert torch.equal(rng.sample_keys(seed, step, slots.int()), keys)


def test_sample_keys_deterministic_and_sensitive_to_every_part():
    slots = torch.arange(1000)
    a = rng.sample_keys(1, 2, slots)
    assert torch.equal(a, rng.sample_keys(1, 2, slots))
    others = [rng.sample_keys(2, 2, slots), rng.sample_keys(1, 3, slots), rng.sample_keys(1, "2", slots),
              rng.sample_keys(1, 2, slots, 0)]
    for o in others:
        assert not torch.isin(a, o).any()
    # the order of the parts matters: (1, i, 2) is (1, 2, i) only for i == 2
    swapped = rng.sample_keys(1, slots, 2)
    assert (swapped == a).nonzero().flatten().tolist() == [2]
    assert not torch.isin(a[slots != 2], swapped).any()
    # across 50 steps x 1000 slots no key repeats
    grid = rng.sample_keys(1, torch.arange(50).view(50, 1), slots)
    assert len(torch.unique(grid)) == grid.numel()


def test_to_seed_gives_non_negative_63_bit_ints():
    keys = torch.cat([torch.tensor([signed(v) for v in EDGES], dtype=torch.long), keys_of(2000, seed=8)])
    seeds = rng.to_seed(keys)
    assert isinstance(seeds, list) and len(seeds) == len(keys)
    assert all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds)
    assert seeds == [unsigned(k) & (2**63 - 1) for k in keys.tolist()]  # the low 63 bits
    assert len(set(seeds[len(EDGES):])) == 2000
    assert any(s >= 2**62 for s in seeds)  # the top usable bit is used
    torch.Generator().manual_seed(max(seeds))  # accepted as a seed
