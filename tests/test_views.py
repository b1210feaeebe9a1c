"""Views: vectorised per-sample augmentations against brute-force per-sample references, and the
point of the per-sample keys: a sample's view depends only on its key, not on its batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssal import rng
from ssal.data.views import (
    RAND_AUGMENT_OPS,
    VIEWS,
    cutout,
    rand_augment,
    random_hflip,
    random_translate,
    strong,
    to_float,
    weak,
)


def keys_for(n: int, seed: int = 0, step: int = 0) -> torch.Tensor:
    """One key per slot of a batch, as the engine makes them: (seed, step, slot)."""
    return rng.sample_keys(seed, step, torch.arange(n))


def random_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ----------------------------------------------------------------------------- per-sample references
# One sample at a time, drawing from that sample's key alone (keys[i:i + 1]) with the tags of
# ssal.data.views, so they also check that the batched draws are the per-sample draws.


def ref_translate(x: torch.Tensor, s: int, keys: torch.Tensor) -> torch.Tensor:
    """numpy reflect padding, then a crop at the drawn (dy, dx)."""
    _, _, h, w = x.shape
    out = []
    for i in range(len(x)):
        dy = int(rng.randint(keys[i:i + 1], "dy", 0, 2 * s + 1))
        dx = int(rng.randint(keys[i:i + 1], "dx", 0, 2 * s + 1))
        padded = np.pad(x[i].numpy(), ((0, 0), (s, s), (s, s)), mode="reflect")
        out.append(padded[:, dy:dy + h, dx:dx + w])
    return torch.from_numpy(np.stack(out))


def ref_hflip(x: torch.Tensor, keys: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    return torch.stack([img.flip(-1) if float(rng.uniform(keys[i:i + 1], "hflip")) < p else img
                        for i, img in enumerate(x)])


def ref_weak(x: torch.Tensor, keys: torch.Tensor, hflip: bool) -> torch.Tensor:
    h, w = x.shape[-2:]
    s = int(round(0.125 * min(h, w)))
    if hflip:
        x = ref_hflip(x, keys)
    return x.float() / 255.0 if s == 0 else ref_translate(x, s, keys).float() / 255.0


def ref_rand_augment(x: torch.Tensor, keys: torch.Tensor, num_ops: int = 2) -> torch.Tensor:
    """Each sample alone: its own op j from derive(key, f"op{j}"), with its own magnitude."""
    ops = list(RAND_AUGMENT_OPS.values())
    out = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        for j in range(num_ops):
            k = rng.derive(keys[i:i + 1], f"op{j}")
            choice = int(rng.randint(k, "choice", 0, len(ops)))
            xi = ops[choice](xi, rng.uniform(k, "magnitude"), k)
        out.append(xi)
    return torch.cat(out)


def ref_cutout(x: torch.Tensor, keys: torch.Tensor, max_size: float = 0.5, fill: float = 0.5) -> torch.Tensor:
    """Pixel by pixel."""
    b, _, h, w = x.shape
    out = x.clone()
    for i in range(b):
        k = keys[i:i + 1]
        side = float(rng.uniform(k, "cutout_side")) * max_size * min(h, w)
        cy, cx = float(rng.uniform(k, "cutout_y")) * h, float(rng.uniform(k, "cutout_x")) * w
        for r in range(h):
            for c in range(w):
                if abs(r + 0.5 - cy) <= side / 2 and abs(c + 0.5 - cx) <= side / 2:
                    out[i, :, r, c] = fill
    return out


# ----------------------------------------------------------------------------- translate / flip / weak


@pytest.mark.parametrize("shape,s", [((16, 1, 28, 28), 4), ((9, 3, 32, 32), 4), ((7, 1, 8, 8), 1),
                                     ((5, 3, 12, 20), 3), ((4, 2, 6, 6), 5)])
def test_random_translate_matches_per_sample_reference(shape, s):
    x = random_images(*shape, seed=s)
    keys = keys_for(shape[0], seed=123)
    out = random_translate(x, s, keys)
    ref = ref_translate(x, s, keys)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, ref)
    # float input goes through the same path
    xf = x.float() / 255.0
    assert torch.allclose(random_translate(xf, s, keys), ref.float() / 255.0, atol=0, rtol=0)


def test_random_translate_is_a_shift():
    # with dy = dx = s the output is the input; interior pixels move by exactly (dy - s, dx - s)
    x = random_images(64, 1, 10, 10, seed=3)
    s = 2
    keys = keys_for(64, seed=7)
    dy = rng.randint(keys, "dy", 0, 2 * s + 1) - s
    dx = rng.randint(keys, "dx", 0, 2 * s + 1) - s
    out = random_translate(x, s, keys)
    assert ((dy == 0) & (dx == 0)).any()
    assert set(dy.tolist()) == set(range(-s, s + 1)) and set(dx.tolist()) == set(range(-s, s + 1))
    for i in range(64):
        a, b = int(dy[i]), int(dx[i])
        for y in range(max(0, -a), min(10, 10 - a)):
            assert torch.equal(out[i, 0, y, max(0, -b):min(10, 10 - b)], x[i, 0, y + a, max(0, b):min(10, 10 + b)])


def test_random_translate_zero_shift_is_identity():
    x = random_images(3, 1, 5, 5)
    keys = keys_for(3)
    before = keys.clone()
    assert torch.equal(random_translate(x, 0, keys), x)
    assert torch.equal(random_translate(x, -1, keys), x)
    assert torch.equal(keys, before)


@pytest.mark.parametrize("p", [0.5, 0.0, 1.0, 0.2])
def test_random_hflip_flips_exactly_the_drawn_samples(p):
    x = random_images(33, 2, 5, 7, seed=1)
    x_before = x.clone()
    keys = keys_for(33, seed=11)
    out = random_hflip(x, keys, p=p)
    assert torch.equal(out, ref_hflip(x, keys, p))
    assert torch.equal(x, x_before)  # the input is not modified in place
    draws = rng.uniform(keys, "hflip")
    flipped = [not torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert flipped == (draws < p).tolist()
    if p == 0.5:
        assert 0 < sum(flipped) < 33


def asymmetric_batch(b: int, h: int = 28, w: int = 28) -> torch.Tensor:
    img = torch.zeros(1, h, w, dtype=torch.uint8)
    img[:, 3:9, 1:5] = 255        # a block near the top-left corner
    img[:, h // 2, :] = torch.arange(w, dtype=torch.uint8) * 9  # a left-to-right ramp
    return img.expand(b, 1, h, w).clone()


@pytest.mark.parametrize("hflip", [True, False])
@pytest.mark.parametrize("hw", [(28, 28), (8, 8), (32, 32), (12, 20)])
def test_weak_matches_reference(hflip, hw):
    x = random_images(12, 1, *hw, seed=hw[1])
    keys = keys_for(12, seed=5)
    out = weak(x, keys, hflip=hflip)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.equal(out, ref_weak(x, keys, hflip))


def test_weak_differs_per_sample_and_is_reproducible():
    x = asymmetric_batch(16)
    a = weak(x, keys_for(16, seed=0), hflip=True)
    b = weak(x, keys_for(16, seed=0), hflip=True)
    c = weak(x, keys_for(16, seed=1), hflip=True)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    distinct = {img.numpy().tobytes() for img in a}
    assert len(distinct) >= 8
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert float(a.max()) == 1.0  # 255 maps to exactly 1
    # the next step's keys give the same slots new views
    assert not torch.equal(weak(x, keys_for(16, step=1), hflip=True), weak(x, keys_for(16, step=0), hflip=True))


def test_weak_without_hflip_never_flips():
    x = asymmetric_batch(32)
    keys = keys_for(32, seed=3)
    assert not torch.equal(x[0], x[0].flip(-1))
    out = weak(x, keys, hflip=False, translate=0.0)
    assert torch.equal(out, x.float() / 255.0)
    # with flips allowed the same call flips some samples and leaves the others
    out = weak(x, keys, hflip=True, translate=0.0)
    flipped = [torch.equal(o, x[0].flip(-1).float() / 255.0) for o in out]
    kept = [torch.equal(o, x[0].float() / 255.0) for o in out]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 32
    assert flipped == (rng.uniform(keys, "hflip") < 0.5).tolist()


def test_weak_shift_derives_from_image_size():
    # 28 x 28: shift = round(3.5) = 4 -> offsets reach +-4 but never 5
    x = torch.zeros(400, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 14, 14] = 255
    out = weak(x, keys_for(400, seed=9), hflip=False)
    pos = torch.nonzero(out[:, 0] == 1.0)
    assert len(pos) == 400  # one bright pixel each (it never reaches the border, so no reflection copies)
    dy, dx = pos[:, 1] - 14, pos[:, 2] - 14
    assert int(dy.abs().max()) == 4 and int(dx.abs().max()) == 4
    assert set(dy.tolist()) == set(range(-4, 5)) and set(dx.tolist()) == set(range(-4, 5))
    # dy and dx are drawn separately: every one of the 81 offsets occurs
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) == 81


def test_to_float_and_views_table():
    x = torch.tensor([0, 1, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2)
    f = to_float(x)
    assert f.dtype == torch.float32
    assert torch.equal(f, torch.tensor([0.0, 1 / 255, 128 / 255, 1.0]).view(1, 1, 2, 2))
    assert torch.equal(VIEWS["none"](x, keys_for(1), True), f)
    x3, k3 = x.expand(3, 1, 2, 2), keys_for(3, seed=4)
    assert torch.equal(VIEWS["weak"](x3, k3, False), ref_weak(x3, k3, False))
    assert torch.equal(VIEWS["weak"](x3, k3, True), weak(x3, k3, True))


def test_to_float_leaves_float_images_unscaled():
    # regression: float images (already in [0, 1]) used to be divided by 255 a second time
    xf = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 2, 2)
    assert to_float(xf).dtype == torch.float32
    assert torch.equal(to_float(xf), xf)
    assert torch.equal(to_float(xf.double()), xf)
    assert torch.equal(to_float(to_float(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))),
                       torch.tensor([[[[0.0, 1.0]]]]))
    assert torch.equal(VIEWS["none"](xf, keys_for(1), True), xf)
    assert torch.equal(weak(xf, keys_for(1), hflip=False, translate=0.0), xf)


# ----------------------------------------------------------------------------- strong view


def test_solarize_posterize_autocontrast_by_hand():
    k = keys_for(1)
    x = torch.tensor([0.0, 0.2, 0.5, 0.7, 0.9, 1.0]).view(1, 1, 2, 3)
    m = torch.tensor([0.4])  # solarize threshold 0.6: 0.7, 0.9, 1.0 are inverted
    assert torch.allclose(RAND_AUGMENT_OPS["solarize"](x, m, k),
                          torch.tensor([0.0, 0.2, 0.5, 0.3, 0.1, 0.0]).view(1, 1, 2, 3))
    px = torch.tensor([0, 15, 16, 200, 255], dtype=torch.float32).view(1, 1, 1, 5) / 255
    out = RAND_AUGMENT_OPS["posterize"](px, torch.tensor([1.0]), k) * 255  # drop 4 bits: multiples of 16
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 16.0, 192.0, 240.0]).view(1, 1, 1, 5), atol=1e-4)
    y = torch.tensor([0.2, 0.3, 0.6]).view(1, 1, 1, 3)
    assert torch.allclose(RAND_AUGMENT_OPS["autocontrast"](y, torch.tensor([0.5]), k),
                          torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3))
    flat = torch.full((1, 1, 2, 2), 0.4)  # a constant image is left alone
    assert torch.equal(RAND_AUGMENT_OPS["autocontrast"](flat, torch.tensor([0.5]), k), flat)


def test_brightness_and_translate_follow_the_drawn_sign():
    x = to_float(random_images(6, 1, 28, 28, seed=2))
    keys = keys_for(6, seed=4)
    m = torch.full((6,), 0.5)
    sign = rng.randint(keys, "sign", 0, 2) * 2 - 1
    out = RAND_AUGMENT_OPS["brightness"](x, m, keys)
    factor = 1 + 0.45 * sign.float()
    assert torch.allclose(out, (x * factor.view(-1, 1, 1, 1)).clamp(0, 1), atol=1e-6)
    # a translation by exactly 4 px: 0.6 * m normalised units = 4 px of 28 -> m = 4 / 8.4
    m = torch.full((6,), 4 / 8.4)
    out = RAND_AUGMENT_OPS["translate_x"](x, m, keys)
    for i in range(6):
        if sign[i] > 0:  # output(x) = input(x + 4)
            assert torch.allclose(out[i, :, :, :-4], x[i, :, :, 4:], atol=1e-5)
            assert float(out[i, :, :, -4:].abs().max()) < 1e-4  # zero fill
        else:
            assert torch.allclose(out[i, :, :, 4:], x[i, :, :, :-4], atol=1e-5)
    assert (sign > 0).any() and (sign < 0).any()


@pytest.mark.parametrize("name", sorted(RAND_AUGMENT_OPS))
def test_every_op_keeps_shape_and_range_and_zero_magnitude_geometry_is_identity(name):
    x = to_float(random_images(5, 3, 16, 16, seed=1))
    keys = keys_for(5, seed=1)
    out = RAND_AUGMENT_OPS[name](x, rng.uniform(keys, "m"), keys)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    if name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y", "brightness", "contrast", "color",
                "sharpness", "identity"):
        assert torch.allclose(RAND_AUGMENT_OPS[name](x, torch.zeros(5), keys), x, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(RAND_AUGMENT_OPS))
def test_every_op_is_batch_independent(name, channels):
    """rand_augment runs an op on the sub-batch of samples that drew it, whose size depends on
    the batch: so for views to depend only on keys, each op must give a sample exactly the same
    result alone as inside any sub-batch."""
    x = to_float(random_images(9, channels, 12, 12, seed=channels))
    keys = keys_for(9, seed=2)
    m = rng.uniform(keys, "m")
    op = RAND_AUGMENT_OPS[name]
    out = op(x, m, keys)
    for i in range(9):
        assert torch.equal(op(x[i:i + 1], m[i:i + 1], keys[i:i + 1]), out[i:i + 1]), i
    perm = torch.tensor([5, 0, 8, 3])
    assert torch.equal(op(x[perm], m[perm], keys[perm]), out[perm])


def test_rand_augment_applies_each_samples_own_op():
    x = to_float(asymmetric_batch(64)) * 0.8 + 0.1  # identical images: any difference comes from the draws
    keys = keys_for(64, seed=12)
    out = rand_augment(x, keys, num_ops=1)
    op_keys = rng.derive(keys, "op0")
    choice = rng.randint(op_keys, "choice", 0, len(RAND_AUGMENT_OPS))
    magnitude = rng.uniform(op_keys, "magnitude")
    names = list(RAND_AUGMENT_OPS)
    for i in range(64):  # the reference: that sample's op alone on that sample alone
        name = names[int(choice[i])]
        ref = RAND_AUGMENT_OPS[name](x[i:i + 1], magnitude[i:i + 1], op_keys[i:i + 1])
        assert torch.allclose(out[i:i + 1], ref, atol=1e-6), name
    assert len({int(c) for c in choice}) >= 10  # the batch mixes many ops
    assert len({o.numpy().tobytes() for o in out}) >= 40


@pytest.mark.parametrize("num_ops", [1, 2, 3])
def test_rand_augment_matches_per_sample_reference(num_ops):
    x = to_float(random_images(24, 3, 12, 12, seed=num_ops))
    keys = keys_for(24, seed=20 + num_ops)
    x_before = x.clone()
    out = rand_augment(x, keys, num_ops=num_ops)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.allclose(out, ref_rand_augment(x, keys, num_ops), atol=1e-6)
    assert torch.equal(x, x_before)  # the input is not modified in place
    assert torch.equal(rand_augment(x, keys, num_ops=0), x)


def test_cutout_matches_per_pixel_reference_and_is_at_most_half_the_side():
    x = to_float(random_images(20, 2, 12, 10, seed=5))
    keys = keys_for(20, seed=8)
    out = cutout(x, keys)
    assert torch.equal(out, ref_cutout(x, keys))
    filled = (out != x).any(1).flatten(1).sum(1)
    assert int(filled.max()) <= (0.5 * 10 + 1) ** 2
    assert int((filled > 0).sum()) >= 10


def test_strong_matches_per_sample_reference():
    x = random_images(12, 3, 16, 16, seed=4)
    keys = keys_for(12, seed=31)
    out = strong(x, keys, True)
    ref = ref_cutout(ref_rand_augment(ref_weak(x, keys, True), keys), keys)
    assert torch.allclose(out, ref, atol=1e-6)


def test_strong_view_is_seeded_per_sample_and_stronger_than_weak():
    x = asymmetric_batch(32)
    a, b, c = strong(x, keys_for(32, 0), True), strong(x, keys_for(32, 0), True), strong(x, keys_for(32, 1), True)
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({img.numpy().tobytes() for img in a}) == 32  # every sample its own draws
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    w = weak(x, keys_for(32, 0), True)
    assert float((a - to_float(x)).abs().mean()) > float((w - to_float(x)).abs().mean())
    assert torch.equal(VIEWS["strong"](x, keys_for(32, 3), True), strong(x, keys_for(32, 3), True))


# ----------------------------------------------------------------------------- keyed views


@pytest.mark.parametrize("channels,hw", [(1, 28), (3, 32)])
@pytest.mark.parametrize("hflip", [True, False])
@pytest.mark.parametrize("view", ["weak", "strong"])
def test_view_depends_only_on_the_samples_key(view, hflip, channels, hw):
    """The view of sample i inside batch A is exactly its view alone, inside a reordered batch
    mixed with other samples, and in any split of A across processes."""
    f = VIEWS[view]
    n = 20
    x = random_images(n, channels, hw, hw, seed=channels)
    keys = keys_for(n, seed=17, step=3)
    a = f(x, keys, hflip)
    assert a.shape == x.shape and a.dtype == torch.float32
    for i in range(n):  # alone
        assert torch.equal(f(x[i:i + 1], keys[i:i + 1], hflip)[0], a[i]), i
    # a differently composed batch: 12 of A's samples in another order, among 8 samples of another step
    other = random_images(8, channels, hw, hw, seed=99)
    pick = torch.tensor([13, 2, 19, 7, 0, 11, 5, 16, 8, 3, 17, 10])
    xb = torch.cat([other[:4], x[pick], other[4:]])
    kb = torch.cat([keys_for(8, seed=17, step=4)[:4], keys[pick], keys_for(8, seed=17, step=4)[4:]])
    b = f(xb, kb, hflip)
    assert torch.equal(b[4:16], a[pick])
    # the global batch split across two or three processes
    for sizes in ([7, 13], [5, 5, 10]):
        parts = [f(xs, ks, hflip) for xs, ks in zip(x.split(sizes), keys.split(sizes), strict=True)]
        assert torch.equal(torch.cat(parts), a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("view", ["none", "weak", "strong"])
def test_float_images_in_unit_range_give_the_uint8_view(view, dtype):
    x = random_images(16, 3, 16, 16, seed=6)
    xf = x.to(dtype) / 255.0
    keys = keys_for(16, seed=40)
    u = VIEWS[view](x, keys, True)
    f = VIEWS[view](xf, keys, True)
    assert f.dtype == torch.float32 and f.shape == u.shape
    assert torch.allclose(f, u, atol=1e-6, rtol=0)
    assert float(f.max()) > 0.9  # not scaled down a second time


@pytest.mark.parametrize("view", ["weak", "strong"])
def test_different_keys_different_views_same_keys_same_views(view):
    f = VIEWS[view]
    x = asymmetric_batch(32)  # identical images: any difference comes from the keys
    k0, k1 = keys_for(32, seed=0, step=0), keys_for(32, seed=0, step=1)
    a0, a1 = f(x, k0, True), f(x, k1, True)
    assert torch.equal(a0, f(x, k0.clone(), True))  # same keys: identical views
    same = sum(torch.equal(p, q) for p, q in zip(a0, a1, strict=True))
    assert same <= (3 if view == "weak" else 0)  # weak: 162 outcomes, strong: continuous magnitudes
    distinct = len({img.numpy().tobytes() for img in a0})
    assert distinct >= (24 if view == "weak" else 32)
    # another seed changes the views too
    assert sum(torch.equal(p, q) for p, q in zip(a0, f(x, keys_for(32, seed=1), True), strict=True)) <= 3
    # a key repeated inside a batch gives the same view wherever it sits
    kr = torch.stack([k0[0], k0[5], k0[0], k0[7], k0[0]])
    r = f(x[:5], kr, True)
    assert torch.equal(r[0], r[2]) and torch.equal(r[0], r[4]) and torch.equal(r[0], a0[0])
    assert torch.equal(r[1], a0[5]) and torch.equal(r[3], a0[7])
