"""The engine: seeded sampling, training that learns, EMA math, streamed inference."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_two_processes

from ssal.data import load_dataset
from ssal.engine import Engine, InfiniteBatchSampler, Optim, TrainData, split_batch
from ssal.errors import SsalError
from ssal.models import build_model
from ssal.models.ema import ema_advice
from ssal.recipe import DataConfig, ModelConfig, TrainConfig
from ssal.rng import derive_seed
from ssal.semi import OBJECTIVES
from ssal.semi.base import make_objective

ROOT = Path(__file__).resolve().parents[1]


def train_cfg(**kw):
    return SimpleNamespace(**{**TrainConfig().__dict__, **kw})


def digits():
    return load_dataset(DataConfig(dataset="digits"))


def fit(engine, model, cfg, data, labeled, *, hflip, seed, build=None):
    """``engine.fit`` of the supervised objective on ``data.train[labeled]`` as a run calls it."""
    build = build or (lambda m: make_objective(OBJECTIVES.get("supervised"), m, cfg))
    return engine.fit(model, build, TrainData(data.train, labeled, data.train.targets[labeled], hflip=hflip),
                      Optim.from_train(cfg), seed=seed, ema=cfg.ema)


def test_infinite_sampler_reshuffles_whole_epochs():
    s = iter(InfiniteBatchSampler(10, 4, seed=3))
    got = torch.cat([next(s)[1] for _ in range(5)])  # 20 draws = 2 epochs
    assert sorted(got[:10].tolist()) == list(range(10)) and sorted(got[10:].tolist()) == list(range(10))
    again = iter(InfiniteBatchSampler(10, 4, seed=3))
    assert torch.equal(torch.cat([next(again)[1] for _ in range(5)]), got)


def test_infinite_sampler_ranks_partition_the_global_batch():
    """batch_size is global: 2 processes split each batch of 8 into their halves (slots 0-3, 4-7)."""
    single = iter(InfiniteBatchSampler(50, 8, seed=1, rank=0, world=1))
    r0 = iter(InfiniteBatchSampler(50, 8, seed=1, rank=0, world=2))
    r1 = iter(InfiniteBatchSampler(50, 8, seed=1, rank=1, world=2))
    for step in range(10):
        (s0, p0, f0), (s1, p1, f1), (s, p, f) = next(r0), next(r1), next(single)
        assert s0 == s1 == s == step and (f0, f1, f) == (0, 4, 0) and len(p0) == len(p1) == 4
        assert torch.equal(torch.cat([p0, p1]), p)


def test_a_global_batch_that_does_not_divide_is_a_one_line_error():
    with pytest.raises(SsalError, match=r"train.batch_size=10 .* does not divide by 4: set train.batch_size to a "
                                        r"multiple of 4 \(e.g. 8 or 12\)"):
        split_batch(10, 4, "train.batch_size")
    assert split_batch(12, 4, "train.batch_size") == 3 and split_batch(7, 1, "x") == 7


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "train", 1) == derive_seed(0, "train", 1)
    assert len({derive_seed(0, "train", r) for r in range(100)}) == 100


def test_fit_learns_digits_and_is_deterministic():
    data = digits()
    labeled = torch.arange(300)
    engine = Engine(progress=False)
    cfg = train_cfg(steps=60, batch_size=32, lr=0.05)

    def train():
        torch.manual_seed(0)
        model = build_model(ModelConfig(), data)
        return fit(engine, model, cfg, data, labeled, hflip=False, seed=7)

    a, b = train(), train()
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    acc = engine.evaluate(a.eval_model, data.test, desc=None)["test_acc"]
    assert acc > 0.7, acc  # chance is 0.1


def test_views_do_not_depend_on_worker_count():
    data = digits()
    labeled = torch.arange(100)
    cfg = train_cfg(steps=6, batch_size=16)
    states = []
    for workers in (0, 2):
        torch.manual_seed(0)
        model = build_model(ModelConfig(), data)
        states.append(fit(Engine(num_workers=workers, progress=False), model, cfg, data, labeled, hflip=True,
                          seed=1).model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_ema_is_the_exponential_average_of_the_weights():
    data = digits()
    labeled = torch.arange(64)
    engine = Engine(progress=False)
    decay = 0.7

    def run(steps, ema):
        torch.manual_seed(0)
        model = build_model(ModelConfig(), data)
        cfg = train_cfg(steps=steps, batch_size=16, schedule="constant", ema=ema)
        return fit(engine, model, cfg, data, labeled, hflip=False, seed=5)

    w1 = run(1, 0.0).model.state_dict()
    w2 = run(2, 0.0).model.state_dict()
    averaged = run(2, decay)
    assert averaged.eval_model is not averaged.model
    ema = averaged.eval_model.state_dict()
    for k, v in w2.items():
        if v.dtype.is_floating_point:
            # first update copies the weights, the second averages: d * w1 + (1 - d) * w2
            assert torch.allclose(ema[k], decay * w1[k] + (1 - decay) * v, atol=1e-6), k


def test_predict_is_aligned_with_indices_and_chunking_invariant():
    data = digits()
    torch.manual_seed(0)
    model = build_model(ModelConfig(), data).eval()
    engine = Engine(progress=False)
    idx = torch.tensor([5, 3, 200, 17, 17, 0, 99])
    out = engine.predict(model, data.train, idx, ("probs", "features", "logits"), batch_size=3)
    with torch.no_grad():
        logits, feats = model(data.train.load(idx).float() / 255, return_features=True)
    assert torch.allclose(out["logits"], logits, atol=1e-5)
    assert torch.allclose(out["features"], feats, atol=1e-5)
    assert torch.allclose(out["probs"], logits.softmax(1), atol=1e-6)
    big = engine.predict(model, data.train, idx, ("probs",), batch_size=512)["probs"]
    assert torch.allclose(big, out["probs"], atol=1e-6)
    assert engine.predict(model, data.train, torch.empty(0, dtype=torch.long), ("probs",))["probs"].numel() == 0


@pytest.mark.slow  # a process group: 15 s; CI runs it
def test_predict_under_two_processes_matches_one(tmp_path):
    """torchrun with 2 CPU processes (gloo): sharded inference gathers every index exactly once."""
    script = tmp_path / "dist_predict.py"
    script.write_text(
        "import torch, sys\n"
        "from ssal.data import load_dataset\n"
        "from ssal.engine import Engine\n"
        "from ssal.models import build_model\n"
        "from ssal.recipe import DataConfig, ModelConfig\n"
        "data = load_dataset(DataConfig(dataset='digits'))\n"
        "torch.manual_seed(0)\n"
        "model = build_model(ModelConfig(), data).eval()\n"
        "engine = Engine(progress=False)\n"
        "assert engine.world == 2, engine.world\n"
        "idx = torch.arange(0, 301, 2)  # 151 indices: uneven shards\n"
        "got = engine.predict(model, data.train, idx, ('probs', 'features'), batch_size=16)\n"
        "with torch.no_grad():\n"
        "    logits, feats = model(data.train.load(idx).float() / 255, return_features=True)\n"
        "assert got['probs'].shape == (151, 10)\n"
        "assert torch.allclose(got['probs'], logits.softmax(1), atol=1e-5)\n"
        "assert torch.allclose(got['features'], feats, atol=1e-5)\n"
        "print(f'rank {engine.rank} ok', flush=True)\n"
        "engine.close()\n"
    )
    run_two_processes(script, port=29533)


def test_backbone_lr_scale_sets_the_backbone_rate():
    data = digits()
    labeled = torch.arange(64)
    engine = Engine(progress=False)

    def run(scale):
        torch.manual_seed(0)
        model = build_model(ModelConfig(), data)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = train_cfg(steps=3, batch_size=16, backbone_lr_scale=scale, weight_decay=0.0)
        return before, fit(engine, model, cfg, data, labeled, hflip=False, seed=5).model.state_dict()

    before, after = run(0.0)  # a frozen backbone: only the head (and BatchNorm statistics) change
    for k, v in after.items():
        if k.startswith("backbone.") and "running" not in k and "num_batches" not in k:
            assert torch.equal(v, before[k]), k
    assert not torch.equal(after["head.weight"], before["head.weight"])
    _, full = run(1.0)
    assert any(not torch.equal(full[k], before[k]) for k in full if k.startswith("backbone.") and "weight" in k)


def test_an_ema_too_slow_for_the_schedule_is_advised_against():
    assert ema_advice(0.99, 10) == ("with train.ema=0.99 and train.steps=10 the averaged weights keep 90 % of the "
                                    "initial ones; set train.ema=0")  # 0.99 ** 10 = 0.904
    assert ema_advice(0.999, 100).endswith("keep 90 % of the initial ones; lower train.ema (e.g. 0.95) or train longer")
    assert ema_advice(0.5, 10) is None and ema_advice(0.0, 10) is None


def test_fit_builds_the_objective_once_torch_is_seeded_and_the_model_laid_out():
    """What ``build`` draws (an objective's new head) depends on fit's seed alone, not on the state torch's
    generator was left in; the model it wraps is already in the engine's memory format."""
    data = digits()
    labeled = torch.arange(32)
    cfg = train_cfg(steps=1, batch_size=8)
    engine = Engine(progress=False)
    drawn = []

    def build(model):
        conv = next(p for p in model.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=engine.memory_format)
        drawn.append(torch.randn(4))
        return make_objective(OBJECTIVES.get("supervised"), model, cfg)

    for left_at, seed in ((1, 3), (2, 3), (1, 4)):
        torch.manual_seed(0)
        model = build_model(ModelConfig(), data)
        torch.manual_seed(left_at)  # whatever state the caller left torch's generator in
        fit(engine, model, cfg, data, labeled, hflip=False, seed=seed, build=build)
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2])
