"""Views: vectorised per-sample augmentations against brute-force per-sample references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w), generator=gen(seed), dtype=torch.uint8)


def ref_translate(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """One image at a time: numpy reflect padding, then a crop at the drawn (dy, dx)."""
    b, _, h, w = x.shape
    dy = torch.randint(0, 2 * s + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * s + 1, (b,), generator=g)
    out = []
    for i in range(b):
        padded = np.pad(x[i].numpy(), ((0, 0), (s, s), (s, s)), mode="reflect")
        out.append(padded[:, dy[i]:dy[i] + h, dx[i]:dx[i] + w])
    return torch.from_numpy(np.stack(out))


def ref_hflip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    draws = torch.rand(x.shape[0], generator=g)
    return torch.stack([img.flip(-1) if d < p else img for img, d in zip(x, draws, strict=True)])


def ref_weak(x: torch.Tensor, g: torch.Generator, hflip: bool) -> torch.Tensor:
    h, w = x.shape[-2:]
    s = int(round(0.125 * min(h, w)))
    if hflip:
        x = ref_hflip(x, g)
    return x.float() / 255.0 if s == 0 else ref_translate(x, s, g).float() / 255.0


@pytest.mark.parametrize("shape,s", [((16, 1, 28, 28), 4), ((9, 3, 32, 32), 4), ((7, 1, 8, 8), 1),
                                     ((5, 3, 12, 20), 3), ((4, 2, 6, 6), 5)])
def test_random_translate_matches_per_sample_reference(shape, s):
    x = random_images(*shape, seed=s)
    out = random_translate(x, s, gen(123))
    ref = ref_translate(x, s, gen(123))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, ref)
    # float input goes through the same path
    xf = x.float() / 255.0
    assert torch.allclose(random_translate(xf, s, gen(123)), ref.float() / 255.0)


def test_random_translate_is_a_shift():
    # with dy = dx = s the output is the input; interior pixels move by exactly (dy - s, dx - s)
    x = random_images(64, 1, 10, 10, seed=3)
    s = 2
    g = gen(7)
    dy = torch.randint(0, 2 * s + 1, (64,), generator=g) - s
    dx = torch.randint(0, 2 * s + 1, (64,), generator=g) - s
    out = random_translate(x, s, gen(7))
    assert ((dy == 0) & (dx == 0)).any()
    for i in range(64):
        a, b = int(dy[i]), int(dx[i])
        for y in range(max(0, -a), min(10, 10 - a)):
            assert torch.equal(out[i, 0, y, max(0, -b):min(10, 10 - b)], x[i, 0, y + a, max(0, b):min(10, 10 + b)])


def test_random_translate_zero_shift_is_identity():
    x = random_images(3, 1, 5, 5)
    g = gen(0)
    state = g.get_state()
    assert torch.equal(random_translate(x, 0, g), x)
    assert torch.equal(g.get_state(), state)  # no draws consumed


@pytest.mark.parametrize("p", [0.5, 0.0, 1.0, 0.2])
def test_random_hflip_flips_exactly_the_drawn_samples(p):
    x = random_images(33, 2, 5, 7, seed=1)
    x_before = x.clone()
    out = random_hflip(x, gen(11), p=p)
    assert torch.equal(out, ref_hflip(x, gen(11), p))
    assert torch.equal(x, x_before)  # the input is not modified in place
    draws = torch.rand(33, generator=gen(11))
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
    out = weak(x, gen(5), hflip=hflip)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out, ref_weak(x, gen(5), hflip), atol=0, rtol=0)


def test_weak_differs_per_sample_and_is_reproducible():
    x = asymmetric_batch(16)
    a = weak(x, gen(0), hflip=True)
    b = weak(x, gen(0), hflip=True)
    c = weak(x, gen(1), hflip=True)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    distinct = {img.numpy().tobytes() for img in a}
    assert len(distinct) >= 8
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert float(a.max()) == 1.0  # 255 maps to exactly 1
    # consecutive batches from one generator differ (the generator advances)
    g = gen(0)
    assert not torch.equal(weak(x, g, hflip=True), weak(x, g, hflip=True))


def test_weak_without_hflip_never_flips():
    x = asymmetric_batch(32)
    assert not torch.equal(x[0], x[0].flip(-1))
    out = weak(x, gen(3), hflip=False, translate=0.0)
    assert torch.equal(out, x.float() / 255.0)
    # with flips allowed the same call flips some samples and leaves the others
    out = weak(x, gen(3), hflip=True, translate=0.0)
    flipped = [torch.equal(o, x[0].flip(-1).float() / 255.0) for o in out]
    kept = [torch.equal(o, x[0].float() / 255.0) for o in out]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 32


def test_weak_shift_derives_from_image_size():
    # 28 x 28: shift = round(3.5) = 4 -> offsets reach +-4 but never 5
    x = torch.zeros(400, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 14, 14] = 255
    out = weak(x, gen(9), hflip=False)
    pos = torch.nonzero(out[:, 0] == 1.0)
    assert len(pos) == 400  # one bright pixel each (it never reaches the border, so no reflection copies)
    dy, dx = pos[:, 1] - 14, pos[:, 2] - 14
    assert int(dy.abs().max()) == 4 and int(dx.abs().max()) == 4
    assert set(dy.tolist()) == set(range(-4, 5)) and set(dx.tolist()) == set(range(-4, 5))


def test_to_float_and_views_table():
    x = torch.tensor([0, 1, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2)
    f = to_float(x)
    assert f.dtype == torch.float32
    assert torch.equal(f, torch.tensor([0.0, 1 / 255, 128 / 255, 1.0]).view(1, 1, 2, 2))
    assert torch.equal(VIEWS["none"](x, gen(0), True), f)
    assert torch.equal(VIEWS["weak"](x.expand(3, 1, 2, 2), gen(4), False),
                       ref_weak(x.expand(3, 1, 2, 2), gen(4), False))


# ----------------------------------------------------------------------------- strong view

DETERMINISTIC_OPS = ("identity", "autocontrast", "equalize", "posterize", "solarize")  # no random sign


def test_solarize_posterize_autocontrast_by_hand():
    x = torch.tensor([0.0, 0.2, 0.5, 0.7, 0.9, 1.0]).view(1, 1, 2, 3)
    m = torch.tensor([0.4])  # solarize threshold 0.6: 0.7, 0.9, 1.0 are inverted
    assert torch.allclose(RAND_AUGMENT_OPS["solarize"](x, m, gen(0)),
                          torch.tensor([0.0, 0.2, 0.5, 0.3, 0.1, 0.0]).view(1, 1, 2, 3))
    px = torch.tensor([0, 15, 16, 200, 255], dtype=torch.float32).view(1, 1, 1, 5) / 255
    out = RAND_AUGMENT_OPS["posterize"](px, torch.tensor([1.0]), gen(0)) * 255  # drop 4 bits: multiples of 16
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 16.0, 192.0, 240.0]).view(1, 1, 1, 5), atol=1e-4)
    y = torch.tensor([0.2, 0.3, 0.6]).view(1, 1, 1, 3)
    assert torch.allclose(RAND_AUGMENT_OPS["autocontrast"](y, torch.tensor([0.5]), gen(0)),
                          torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3))
    flat = torch.full((1, 1, 2, 2), 0.4)  # a constant image is left alone
    assert torch.equal(RAND_AUGMENT_OPS["autocontrast"](flat, torch.tensor([0.5]), gen(0)), flat)


def test_brightness_and_translate_follow_the_drawn_sign():
    x = to_float(random_images(6, 1, 28, 28, seed=2))
    m = torch.full((6,), 0.5)
    sign = torch.randint(0, 2, (6,), generator=gen(4)) * 2 - 1
    out = RAND_AUGMENT_OPS["brightness"](x, m, gen(4))
    factor = 1 + 0.45 * sign.float()
    assert torch.allclose(out, (x * factor.view(-1, 1, 1, 1)).clamp(0, 1), atol=1e-6)
    # a translation by exactly 4 px: 0.6 * m normalised units = 4 px of 28 -> m = 4 / 8.4
    m = torch.full((6,), 4 / 8.4)
    out = RAND_AUGMENT_OPS["translate_x"](x, m, gen(4))
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
    out = RAND_AUGMENT_OPS[name](x, torch.rand(5, generator=gen(0)), gen(1))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    if name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y", "brightness", "contrast", "color",
                "sharpness", "identity"):
        assert torch.allclose(RAND_AUGMENT_OPS[name](x, torch.zeros(5), gen(1)), x, atol=1e-5)


def test_rand_augment_applies_each_samples_own_op():
    x = to_float(asymmetric_batch(64)) * 0.8 + 0.1  # identical images: any difference comes from the draws
    g = gen(12)
    out = rand_augment(x, g, num_ops=1)
    g = gen(12)
    choice = torch.randint(0, len(RAND_AUGMENT_OPS), (64,), generator=g)
    magnitude = torch.rand(64, generator=g)
    names = list(RAND_AUGMENT_OPS)
    checked = 0
    for i in range(64):
        name = names[int(choice[i])]
        if name in DETERMINISTIC_OPS:  # the reference: that op alone on that sample alone
            ref = RAND_AUGMENT_OPS[name](x[i:i + 1], magnitude[i:i + 1], gen(0))
            assert torch.allclose(out[i:i + 1], ref, atol=1e-6), name
            checked += 1
    assert checked >= 5
    assert len({int(c) for c in choice}) >= 10  # the batch mixes many ops
    assert len({o.numpy().tobytes() for o in out}) >= 40


def ref_cutout(x: torch.Tensor, g: torch.Generator, max_size: float = 0.5, fill: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    side = torch.rand(b, generator=g) * max_size * min(h, w)
    cy, cx = torch.rand(b, generator=g) * h, torch.rand(b, generator=g) * w
    out = x.clone()
    for i in range(b):
        for r in range(h):
            for c in range(w):
                if abs(r + 0.5 - cy[i]) <= side[i] / 2 and abs(c + 0.5 - cx[i]) <= side[i] / 2:
                    out[i, :, r, c] = fill
    return out


def test_cutout_matches_per_pixel_reference_and_is_at_most_half_the_side():
    x = to_float(random_images(20, 2, 12, 10, seed=5))
    out = cutout(x, gen(8))
    assert torch.equal(out, ref_cutout(x, gen(8)))
    filled = (out != x).any(1).flatten(1).sum(1)
    assert int(filled.max()) <= (0.5 * 10 + 1) ** 2
    assert int((filled > 0).sum()) >= 10


def test_strong_view_is_seeded_per_sample_and_stronger_than_weak():
    x = asymmetric_batch(32)
    a, b, c = strong(x, gen(0), True), strong(x, gen(0), True), strong(x, gen(1), True)
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({img.numpy().tobytes() for img in a}) == 32  # every sample its own draws
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    w = weak(x, gen(0), True)
    assert float((a - to_float(x)).abs().mean()) > float((w - to_float(x)).abs().mean())
    assert torch.equal(VIEWS["strong"](x, gen(3), True), strong(x, gen(3), True))
