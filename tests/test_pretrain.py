"""Pretraining stage: views, the two methods, kNN monitor, the cache, and the hand-off to round 0."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import run_two_processes
from torchvision.transforms import v2 as T

from ssal.cli import main as cli_main
from ssal.data import load_dataset
from ssal.data.datasets import ImageDataset, TensorSplit
from ssal.engine import Engine, TransformBatches
from ssal.experiment import loop
from ssal.experiment import pretraining as stage
from ssal.models import build_model
from ssal.pretrain import PRETRAINERS
from ssal.pretrain.base import BLUR_MIN_SIZE
from ssal.pretrain.knn import knn_accuracy
from ssal.recipe import from_dict

ROOT = Path(__file__).resolve().parents[1]


def pre_cfg(tmp_path, tiny_recipe, method="simclr", sections=None, **pretrain):
    return from_dict(tiny_recipe(tmp_path / "run", cache_dir=str(tmp_path / "cache"),
                                 pretrain={"method": method, "epochs": 1, "batch_size": 32, "eval_every": 0,
                                           **pretrain}, **(sections or {})))


@pytest.fixture(scope="module")
def digits(tiny_recipe, tmp_path_factory):
    cfg = from_dict(tiny_recipe(tmp_path_factory.mktemp("d")))
    return load_dataset(cfg.data, seed=0)


def rgb_data(size: int) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randint(0, 256, (16, 3, size, size), dtype=torch.uint8, generator=g),
                        torch.arange(16) % 4)
    return ImageDataset("rgb", split, split, list("abcd"), 3, (size, size), (0.5,) * 3, (0.25,) * 3, True)


# ----------------------------------------------------------------------------- views

@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_views_are_tensor_ops_in_unit_range_and_seeded(method, digits, tmp_path, tiny_recipe):
    cfg = pre_cfg(tmp_path, tiny_recipe, method)
    m = PRETRAINERS.get(method)(build_model(cfg.model, digits), cfg.pretrain, digits)
    ds = TransformBatches(digits.train, torch.arange(40), m.transform, seed=3)
    a = ds[(0, torch.arange(8), 0)]
    b = ds[(0, torch.arange(8), 0)]
    c = ds[(1, torch.arange(8), 0)]
    assert set(a) == {"view0", "view1"}
    for v in a.values():
        assert v.shape == (8, 1, 8, 8) and v.dtype == torch.float32
        assert 0.0 <= float(v.min()) and float(v.max()) <= 1.0
    assert all(torch.equal(a[k], b[k]) for k in a)  # same (seed, step): same views
    assert not torch.equal(a["view0"], c["view0"])  # another step: other views
    assert not torch.equal(a["view0"], a["view1"])  # two different views of each image
    # a sample's views depend on its slot in the global batch, not on the process that makes them
    halves = [ds[(0, torch.arange(4), 0)], ds[(0, torch.arange(4, 8), 4)]]
    assert all(torch.equal(torch.cat([h[k] for h in halves]), a[k]) for k in a)
    # the global generators are left as they were
    state = torch.get_rng_state()
    ds[(5, torch.arange(4), 0)]
    assert torch.equal(state, torch.get_rng_state())


def test_views_adapt_to_the_data_set(tmp_path, tiny_recipe, digits):
    cfg = pre_cfg(tmp_path, tiny_recipe, "byol")
    small = PRETRAINERS.get("byol")(build_model(cfg.model, digits), cfg.pretrain, digits)
    big_data = rgb_data(BLUR_MIN_SIZE + 7)
    big = PRETRAINERS.get("byol")(build_model(cfg.model, big_data), cfg.pretrain, big_data)

    def steps(m):
        # the transform of view 1 is a closure over lightly's view transforms
        views = [c.cell_contents for c in m.transform.__closure__]
        return [type(t).__name__ for v in views for t in v.transform.transforms] + \
            [type(t.transforms[0]).__name__ for v in views for t in v.transform.transforms
             if isinstance(t, T.RandomApply)]

    s, b = steps(small), steps(big)
    assert "GaussianBlur" not in s and "GaussianBlur" in b  # blur only above 32 px
    assert "RandomSolarize" in s  # BYOL's second view solarizes, as a tensor op
    assert not any(n in ("RandomSolarization",) for n in s + b)  # no PIL round trips left
    assert "RandomHorizontalFlip" in s
    # digits must not be flipped (hflip False): the flip probability is 0
    flips = [t for c in small.transform.__closure__ for t in c.cell_contents.transform.transforms
             if isinstance(t, T.RandomHorizontalFlip)]
    assert flips and all(f.p == 0 for f in flips)
    out = big.transform(big_data.train.load(torch.arange(1))[0])
    assert out[0].shape == (3, BLUR_MIN_SIZE + 7, BLUR_MIN_SIZE + 7) and out[0].dtype == torch.float32


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_view_size_resizes_the_crops_and_the_encoder_still_takes_whole_images(method, tmp_path, tiny_recipe):
    data = rgb_data(BLUR_MIN_SIZE + 7)
    cfg = pre_cfg(tmp_path, tiny_recipe, method, view_size=12)
    m = PRETRAINERS.get(method)(build_model(cfg.model, data), cfg.pretrain, data)
    views = m.transform(data.train.load(torch.arange(1))[0])
    assert [tuple(v.shape) for v in views] == [(3, 12, 12)] * 2
    # views of 12 px are below the blur threshold: no blur even though the images are 39 px
    steps = [t for c in m.transform.__closure__ for t in c.cell_contents.transform.transforms]
    wrapped = [u for t in steps if isinstance(t, T.RandomApply) for u in t.transforms]
    assert not any(isinstance(t, T.GaussianBlur) for t in steps + wrapped)
    loss, _ = m({"view0": torch.stack([views[0]] * 4), "view1": torch.stack([views[1]] * 4)})
    assert torch.isfinite(loss)
    # the features of a whole image do not depend on the view size the encoder was trained at
    assert m.embed(data.train.load(torch.arange(2)).float() / 255).shape == (2, m.encoder.num_features)
    # the view size is part of what the cached weights depend on
    one = SimpleNamespace(world=1, device=torch.device("cpu"), accelerator=SimpleNamespace(mixed_precision="no"))
    other = pre_cfg(tmp_path, tiny_recipe, method)
    assert stage.cache_key(stage.key_fields(cfg, data, one)) != stage.cache_key(stage.key_fields(other, data, one))


# ----------------------------------------------------------------------------- methods

def _fixed_batch(m, digits):
    ds = TransformBatches(digits.train, torch.arange(64), m.transform, seed=11)
    return ds[(0, torch.arange(64), 0)]


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_a_tiny_pretraining_run_lowers_the_loss(method, digits, tmp_path, tiny_recipe):
    cfg = pre_cfg(tmp_path, tiny_recipe, method, epochs=15, batch_size=64, lr=0.1)
    torch.manual_seed(0)
    m = PRETRAINERS.get(method)(build_model(cfg.model, digits), cfg.pretrain, digits)
    batch = _fixed_batch(m, digits)

    def loss_now() -> float:
        with torch.no_grad():
            return float(m(batch)[0])

    before = loss_now()
    fit = Engine(progress=False).pretrain(m, digits.train, torch.arange(64), cfg.pretrain, seed=0)
    after = loss_now()
    assert math.isfinite(fit.logs["loss"])
    assert after < before - 0.05, (before, after)


def test_byol_target_is_the_scheduled_ema_of_the_online_network(digits, tmp_path, tiny_recipe):
    cfg = pre_cfg(tmp_path, tiny_recipe, "byol", byol={"momentum_start": 0.9, "momentum_end": 1.0})
    torch.manual_seed(0)
    m = PRETRAINERS.get("byol")(build_model(cfg.model, digits), cfg.pretrain, digits)
    # the target starts as an exact copy of the online network
    for p, q in zip(m.encoder.backbone.parameters(), m.target_backbone.parameters(), strict=True):
        assert torch.equal(p, q) and not q.requires_grad
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    batch = _fixed_batch(m, digits)
    total = 10
    for step in range(3):
        old_target = [q.detach().clone() for q in m.target_backbone.parameters()]
        old_proj = [q.detach().clone() for q in m.target_projection.parameters()]
        loss, _ = m(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(step, total)
        expected_m = 1.0 - (1.0 - 0.9) * (math.cos(math.pi * step / (total - 1)) + 1) / 2  # cosine 0.9 -> 1
        assert m.momentum == pytest.approx(expected_m)
        pairs = [(m.encoder.backbone, m.target_backbone, old_target), (m.projection, m.target_projection, old_proj)]
        for online_net, target_net, olds in pairs:
            for online, target, old in zip(online_net.parameters(), target_net.parameters(), olds, strict=True):
                torch.testing.assert_close(target, expected_m * old + (1 - expected_m) * online.detach())
    online_target = zip(m.encoder.backbone.parameters(), m.target_backbone.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in online_target)


def test_simclr_loss_is_lightlys_nt_xent_on_projections(digits, tmp_path, tiny_recipe):
    cfg = pre_cfg(tmp_path, tiny_recipe, "simclr", simclr={"temperature": 0.2})
    torch.manual_seed(0)
    m = PRETRAINERS.get("simclr")(build_model(cfg.model, digits), cfg.pretrain, digits).eval()
    batch = _fixed_batch(m, digits)
    with torch.no_grad():
        loss, _ = m(batch)
        z = torch.cat([m.projection(m.embed(batch["view0"])), m.projection(m.embed(batch["view1"]))])
    # NT-Xent by hand: each of the 2B projections must pick its partner among the other 2B - 1
    z = F.normalize(z, dim=1)
    n = len(z) // 2
    sim = z @ z.t() / 0.2
    sim.fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    torch.testing.assert_close(loss, F.cross_entropy(sim, partner), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- kNN

def test_knn_accuracy_matches_a_brute_force_vote():
    g = torch.Generator().manual_seed(0)
    bank, labels = torch.randn(60, 5, generator=g), torch.randint(0, 3, (60,), generator=g)
    queries, qlabels = torch.randn(25, 5, generator=g), torch.randint(0, 3, (25,), generator=g)
    k, t = 7, 0.1
    correct = 0
    for q, y in zip(queries, qlabels, strict=True):
        sims = [float(F.cosine_similarity(q, b, dim=0)) for b in bank]
        top = sorted(range(60), key=lambda i: -sims[i])[:k]
        votes = [0.0, 0.0, 0.0]
        for i in top:
            votes[int(labels[i])] += math.exp(sims[i] / t)
        correct += int(max(range(3), key=lambda c: votes[c]) == int(y))
    assert knn_accuracy(bank, labels, queries, qlabels, 3, k, t, chunk=4) == pytest.approx(correct / 25)
    # a bank that is the queries themselves, labelled by them, with k = 1: always right
    assert knn_accuracy(queries, qlabels, queries, qlabels, 3, k=1) == 1.0


# ----------------------------------------------------------------------------- cache

@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = stage.train_encoder

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(stage, "train_encoder", spy)
    return calls


def test_cache_hit_miss_and_key(tmp_path, tiny_recipe, digits, counted, capsys):
    cfg = pre_cfg(tmp_path, tiny_recipe)
    engine = Engine(progress=False)
    first = stage.pretrained_encoder(cfg, digits, engine)
    assert len(counted) == 1
    files = sorted((tmp_path / "cache" / "pretrain").iterdir())
    assert [f.suffix for f in files] == [".jsonl", ".pt"]
    log = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert log[0]["epoch"] == 0 and "knn_pixels_acc" in log[0] and log[-1]["epoch"] == 1

    capsys.readouterr()
    again = stage.pretrained_encoder(cfg, digits, engine)
    assert len(counted) == 1  # a hit: no pretraining work
    assert "used the cached simclr encoder" in capsys.readouterr().out
    assert all(torch.equal(first[k], again[k]) for k in first)

    def key(c, ran=engine):
        return stage.cache_key(stage.key_fields(c, digits, ran))

    # monitor settings do not change the weights: same key
    same = pre_cfg(tmp_path, tiny_recipe, eval_every=3, knn_k=5)
    assert key(same) == key(cfg)
    # another method's options do not either; the chosen method's options, the seed and the backbone do
    other = pre_cfg(tmp_path, tiny_recipe, byol={"momentum_start": 0.95})
    assert key(other) == key(cfg)
    for changed in (pre_cfg(tmp_path, tiny_recipe, lr=0.01),
                    pre_cfg(tmp_path, tiny_recipe, simclr={"temperature": 0.1}),
                    from_dict({**tiny_recipe(tmp_path / "run", cache_dir=str(tmp_path / "cache"),
                                             pretrain={"method": "simclr", "epochs": 1, "batch_size": 32}),
                               "seed": 1})):
        assert key(changed) != key(cfg)

    # a fixed pretrain.seed makes runs of other seeds share the encoder of that seed
    def seeded(seed, pretrain_seed=None):
        return from_dict({**tiny_recipe(tmp_path / "run", cache_dir=str(tmp_path / "cache"),
                                        pretrain={"method": "simclr", "epochs": 1, "batch_size": 32,
                                                  "eval_every": 0, "seed": pretrain_seed}), "seed": seed})
    assert stage.pretrain_seed(seeded(1)) == 1 and stage.pretrain_seed(seeded(1, 0)) == 0
    capsys.readouterr()
    shared = stage.pretrained_encoder(seeded(1, 0), digits, engine)
    assert len(counted) == 1 and "used the cached simclr encoder" in capsys.readouterr().out
    assert all(torch.equal(first[k], shared[k]) for k in first)
    assert key(seeded(0, 1)) == \
        key(seeded(1)) != key(cfg)
    # how it ran changes the floats, so the encoder: processes, device type and mixed precision are in the key
    for world, device, precision in ((2, "cpu", "no"), (1, "cuda", "no"), (1, "cpu", "bf16")):
        ran = SimpleNamespace(world=world, device=torch.device(device),
                              accelerator=SimpleNamespace(mixed_precision=precision))
        assert key(cfg, ran) != key(cfg)

    # --no-cache trains anew
    stage.pretrained_encoder(cfg, digits, engine, use_cache=False)
    assert len(counted) == 2


@pytest.mark.slow  # 10 s
def test_corrupt_or_partial_cache_entries_are_rebuilt(tmp_path, tiny_recipe, digits, counted, capsys):
    cfg = pre_cfg(tmp_path, tiny_recipe)
    engine = Engine(progress=False)
    good = stage.pretrained_encoder(cfg, digits, engine)
    path = next((tmp_path / "cache" / "pretrain").glob("*.pt"))
    intact = path.read_bytes()

    def damage_and_reload(data: bytes, expect: str):
        path.write_bytes(data)
        capsys.readouterr()
        n = len(counted)
        state = stage.pretrained_encoder(cfg, digits, engine)
        out = capsys.readouterr().out
        assert len(counted) == n + 1, "a bad entry must be rebuilt"
        assert expect in out, out
        assert all(torch.equal(good[k], state[k]) for k in good)  # seeded: the rebuild is the same encoder
        assert stage.load_entry(path, path.stem)[0] is not None  # and the entry is valid again

    damage_and_reload(intact[: len(intact) // 2], "unreadable")  # cut off while written
    damage_and_reload(b"not a torch file", "unreadable")
    # a tensor changed behind the checksum's back
    entry = torch.load(path, weights_only=True)
    name = next(iter(entry["backbone"]))
    entry["backbone"][name] = entry["backbone"][name] + 1
    torch.save(entry, path)
    damage_and_reload(path.read_bytes(), "checksum mismatch")


# ----------------------------------------------------------------------------- into the rounds

def test_round_zero_starts_from_the_pretrained_backbone_with_a_fresh_head(tmp_path, tiny_recipe, monkeypatch):
    cfg = pre_cfg(tmp_path, tiny_recipe, sections={"active": {"rounds": 1}})
    seen = []
    real_fit = Engine.fit

    def spy(self, model, *a, **k):
        seen.append({k_: v.detach().clone() for k_, v in model.state_dict().items()})
        return real_fit(self, model, *a, **k)

    monkeypatch.setattr(Engine, "fit", spy)
    out = loop.run(cfg, engine=Engine(progress=False))
    entry = torch.load(next((tmp_path / "cache" / "pretrain").glob("*.pt")), weights_only=True)
    assert len(seen) == 2
    for state in seen:  # with train.reinit every round reloads the pretrained backbone
        for k, v in entry["backbone"].items():
            assert torch.equal(state[f"backbone.{k}"], v), k
    torch.manual_seed(0)
    fresh = build_model(cfg.model, load_dataset(cfg.data, seed=cfg.seed))
    assert not torch.equal(seen[0]["backbone." + next(iter(entry["backbone"]))],
                           fresh.backbone.state_dict()[next(iter(entry["backbone"]))])
    assert torch.equal(seen[0]["head.weight"], seen[1]["head.weight"])  # the same fresh head each round
    lines = [json.loads(x) for x in (out / "pretrain.jsonl").read_text().splitlines()]
    assert lines[0]["epoch"] == 0 and lines[-1]["epoch"] == 1 and "cache" in lines[0]


def test_ssal_pretrain_command(write_recipe, tmp_path, capsys):
    recipe = write_recipe("pre", cache_dir=str(tmp_path / "c"),
                          pretrain={"method": "byol", "epochs": 1, "batch_size": 32})
    assert cli_main(["pretrain", str(recipe), "--no-progress"]) == 0
    assert "cached the encoder" in capsys.readouterr().out
    assert cli_main(["pretrain", str(recipe), "--no-progress"]) == 0
    assert "used the cached byol encoder" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()  # the stage alone writes no run directory

    none = write_recipe("none", cache_dir=str(tmp_path / "c"))
    assert cli_main(["pretrain", str(none)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssal: error:") and "pretrain.method=simclr" in err and err.count("\n") == 1


@pytest.mark.parametrize("override, needle", [
    ("pretrain.method=simclrr", "simclr"),
    ("pretrain.simclr.temperature=0", "pretrain.simclr.temperature"),
    ("pretrain.byol.momentum_start=1.5", "momentum_start"),
    ("pretrain.epochs=0", "pretrain.epochs"),
    ("pretrain.view_size=4", "pretrain.view_size"),
    ("pretrain.temprature=0.1", "keys of 'pretrain'"),
])
def test_bad_pretrain_settings_are_one_line_errors(write_recipe, tmp_path, capsys, override, needle):
    recipe = write_recipe("bad", pretrain={"method": "byol" if "byol" in override else "simclr"})
    assert cli_main(["run", str(recipe), override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssal: error:") and needle in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # a process group or a real process: 9-21 s; CI runs it
def test_pretraining_under_two_processes_keeps_replicas_in_sync(tmp_path):
    """torchrun, 2 CPU processes: each process takes its half of every global batch (pretrain.batch_size), SimCLR's loss
    gathers negatives across processes, and DDP keeps both replicas identical."""
    script = tmp_path / "dist_pretrain.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from ssal.data import load_dataset\n"
        "from ssal.engine import Engine\n"
        "from ssal.models import build_model\n"
        "from ssal.pretrain import PRETRAINERS\n"
        "from ssal.recipe import from_dict\n"
        "cfg = from_dict({'data': {'dataset': 'digits', 'pool_size': 256},\n"
        "                 'pretrain': {'method': 'simclr', 'epochs': 2, 'batch_size': 32},\n"
        "                 'active': {'initial': 10, 'rounds': 0}})\n"
        "data = load_dataset(cfg.data)\n"
        "engine = Engine(progress=False)\n"
        "assert engine.world == 2\n"
        "torch.manual_seed(0)\n"
        "m = PRETRAINERS.get('simclr')(build_model(cfg.model, data), cfg.pretrain, data)\n"
        "assert m.criterion.gather_distributed\n"
        "seen = []\n"
        "real = m.criterion.forward\n"
        "m.criterion.forward = lambda a, b: (seen.append(len(a)), real(a, b))[1]\n"
        "fit = engine.pretrain(m, data.train, torch.arange(256), cfg.pretrain, seed=0)\n"
        "assert seen and all(n == 16 for n in seen) and len(seen) == 2 * 256 // 32, seen  # global batch 32\n"
        "flat = torch.cat([p.detach().flatten() for p in m.encoder.backbone.parameters()])\n"
        "both = [torch.zeros_like(flat) for _ in range(2)]\n"
        "dist.all_gather(both, flat)\n"
        "assert torch.equal(both[0], both[1])\n"
        "print(f'rank {engine.rank} ok', flush=True)\n"
        "engine.close()\n"
    )
    run_two_processes(script, port=29541)
