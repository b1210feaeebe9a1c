"""N processes are one experiment: ``ssal`` under ``torchrun --nproc_per_node 2`` (a gloo group on the
CPU) against the same command in one process.

What may differ between 1 and 2 processes is the floating-point reduction order alone, which grows
over training steps (as much as between 1 and 2 threads in one process), so later rounds' picks may
differ; what is seeded (the initial set), the round-0 accuracy and round 0's picks must agree, and
the fixed-model signals must be equal to float precision. Every launch runs with one thread per
process; the measured figures are printed (run pytest with -s to see them).

All of these are slow (each launch spends ~10 s importing torch & co. per process on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe_dict

from ssal import faults
from ssal.run.readers import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


# ----------------------------------------------------------------------------- launching

@dataclass
class Launch:
    proc: subprocess.CompletedProcess
    seconds: float
    out: Path | None = None

    @property
    def text(self) -> str:
        return self.proc.stdout + self.proc.stderr


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200", **extra}


def _launch(cmd: list[str], what: str, env: dict | None = None, out: Path | None = None,
            timeout: float = 300) -> Launch:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or _env(), cwd=ROOT)
    launch = Launch(proc, time.perf_counter() - t, out)
    print(f"[multiprocess] {what}: exit {proc.returncode} in {launch.seconds:.1f} s", flush=True)
    return launch


def one(*args: str, what: str, out: Path | None = None, **kw) -> Launch:
    """``python -m ssal ARGS --no-progress`` in one process (one thread)."""
    return _launch([sys.executable, "-m", "ssal", *args, "--no-progress"], f"1 process: {what}", out=out, **kw)


def two(port: int, *args: str, what: str, out: Path | None = None, script: Path | None = None,
        launcher: tuple[str, ...] = (), **kw) -> Launch:
    """``torchrun --nproc_per_node 2 --master_port PORT -m ssal ARGS --no-progress`` (one thread per
    process), or ``script ARGS`` instead of ``-m ssal ARGS``."""
    target = [str(script)] if script else ["-m", "ssal"]
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(port), *launcher, *target, *args]
    if not script:
        cmd.append("--no-progress")
    return _launch(cmd, f"2 processes: {what}", out=out, **kw)


def ok(launch: Launch) -> Launch:
    assert launch.proc.returncode == 0, launch.text[-4000:]
    assert "Traceback" not in launch.text, launch.text[-4000:]
    return launch


# ----------------------------------------------------------------------------- reading runs

def pool_of(run: Path) -> dict:
    return json.loads((run / "pool.json").read_text())


def accs(run: Path) -> list[float]:
    return [m["test_acc"] for m in read_metrics(run)]


def labeled_by(run: Path, last_round: int) -> set[int]:
    """Pool indices labeled for rounds 0..last_round (the initial set and the picks of the rounds before)."""
    return {i for i, _, r in pool_of(run)["labeled"] if r <= last_round}


def picks(run: Path, r: int) -> list[int]:
    return json.loads((run / "rounds" / f"r{r:02d}" / "selected.json").read_text())["indices"]


def start_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"ssal: \d+ process", line)]


def check_complete(run: Path, recipe: dict, stdout: str) -> list[dict]:
    """A finished run written once: every file of the contract, well-formed and consistent, each round
    committed and announced exactly once, no temporary file left. Returns its metrics rows."""
    a = recipe["active"]
    R, initial, budget = a["rounds"], a["initial"], a["budget"]
    for name in ("recipe.yaml", "run.json", "metrics.jsonl", "curve.csv", "curve.png", "pool.json"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    raw = (run / "metrics.jsonl").read_text()
    assert raw.endswith("\n") and len(raw.splitlines()) == R + 1, raw  # one line per round, none twice
    rows = read_metrics(run)  # checks each line (round i on line i, test_acc in [0, 1], ...)
    assert [r["round"] for r in rows] == list(range(R + 1))
    assert [r["n_labeled"] for r in rows] == [initial + r * budget for r in range(R + 1)]
    assert (run / "curve.csv").read_text().splitlines()[0] == "round,n_labeled,test_acc"
    assert len((run / "curve.csv").read_text().splitlines()) == R + 2
    pool = pool_of(run)
    entries = pool["labeled"]
    assert pool["n"] == recipe["data"]["pool_size"]
    assert len(entries) == initial + R * budget == rows[-1]["pool"]["labeled"]
    assert len({i for i, _, _ in entries}) == len(entries)  # no index twice
    assert [r for _, _, r in entries] == sorted(r for _, _, r in entries)  # acquisition order
    initial_set = json.loads((run / "rounds" / "initial" / "selected.json").read_text())["indices"]
    assert initial_set == [i for i, _, r in entries if r == 0]
    for r in range(R):
        sel = json.loads((run / "rounds" / f"r{r:02d}" / "selected.json").read_text())
        assert sel["round"] == r and sel["strategy"] == a["strategy"]
        assert sel["indices"] == [i for i, _, rr in entries if rr == r + 1]
        assert len(set(sel["indices"])) == budget
    assert not (run / "rounds" / f"r{R:02d}").exists()  # the last round selects nothing
    assert not list(run.rglob("*.tmp")), list(run.rglob("*.tmp"))
    # announced once: only the main process prints
    assert len(start_lines(stdout)) == 1, stdout
    for r in range(R + 1):
        assert len(re.findall(rf"^round {r}: ", stdout, re.M)) == 1, stdout
    assert stdout.count("done: ") == 1, stdout
    return rows


def overlap(a: set[int], b: set[int]) -> float:
    return len(a & b) / max(len(a), 1)


# ----------------------------------------------------------------------------- 1. ssal run, 1 vs 2 processes

# Tiny recipes. Where a method amplifies float noise fast, the recipe keeps round 0 comparable: measured
# in ONE process, 1 vs 2 threads (reduction order alone) after round 0's 20 steps, contrastive fine-tuning at
# lr 0.03 / temperature 0.5 parts the weights by max |dw| ~0.035 and the round-0 accuracy by 2 points; at
# lr 0.01 / temperature 1.0 by ~0.002 and 0 points. SimCLR pretraining is worse (1 vs 2 threads: max |dw|
# ~0.9 after 12 steps at lr 0.06; a 7e-5 difference in the encoder already moves round 0 by 3 points), so its
# round 0 is compared on the same encoder (see Runs.get) and the pretraining itself by the pretrain tests.
E2E = {
    "supervised+entropy": {"train": {"method": "supervised"}, "active": {"strategy": "entropy"}},
    "fixmatch+consistency": {"train": {"method": "fixmatch", "fixmatch": {"mu": 2}},
                             "active": {"strategy": "consistency"}},
    "contrastive+cal": {"train": {"method": "contrastive", "lr": 0.01, "contrastive": {"temperature": 1.0}},
                        "active": {"strategy": "cal"}},
    "simclr+typiclust": {"pretrain": {"method": "simclr", "epochs": 2, "batch_size": 128, "lr": 0.01,
                                      "eval_every": 0},
                         "active": {"strategy": "typiclust"}},
}
E2E_PORTS = dict(zip(E2E, (29610, 29611, 29612, 29613), strict=True))
SAME_ENCODER_PORT = 29636


def _cache_entries(cache: Path) -> list[Path]:
    return sorted((cache / "pretrain").glob("*.pt")) if (cache / "pretrain").exists() else []


def _entry(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _processes(entry: dict) -> int:
    return json.loads(entry["fields"])["execution"]["processes"]


def offer_encoder(src: Path, dst: Path, processes: int) -> None:
    """Store the encoder that one process pretrained (cache ``src``) in cache ``dst`` under the key of a
    run on ``processes`` processes (the key covers the number of processes), so that such a run uses it."""
    from ssal.experiment.pretraining import cache_key

    (entry,) = [e for e in map(_entry, _cache_entries(src)) if _processes(e) == 1]
    fields = json.loads(entry["fields"])
    fields["execution"]["processes"] = processes
    key = cache_key(fields)
    (dst / "pretrain").mkdir(parents=True)
    torch.save({**entry, "key": key, "fields": json.dumps(fields, sort_keys=True)}, dst / "pretrain" / f"{key}.pt")


class Runs:
    """The end-to-end runs of E2E, 1 and 2 processes each, made on first use and shared. A recipe that
    pretrains gets a third run: 2 processes on the encoder the 1-process run pretrained."""

    def __init__(self, root: Path):
        self.root = root
        self.done: dict[str, dict] = {}

    def recipe(self, name: str) -> tuple[dict, Path]:
        slug = name.replace("+", "_")
        recipe = tiny_recipe_dict(self.root / slug / "unused", **E2E[name], cache_dir=str(self.root / "cache"))
        path = self.root / f"{slug}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return recipe, path

    def get(self, name: str) -> dict:
        if name not in self.done:
            recipe, path = self.recipe(name)
            slug = name.replace("+", "_")
            o1, o2 = self.root / slug / "p1", self.root / slug / "p2"
            r1 = one("run", str(path), f"output_dir={o1}", what=name, out=o1)
            r2 = two(E2E_PORTS[name], "run", str(path), f"output_dir={o2}", what=name, out=o2)
            self.done[name] = got = {"recipe": recipe, "path": path, "one": r1, "two": r2}
            if recipe.get("pretrain", {}).get("method", "none") != "none" and r1.proc.returncode == 0:
                same, o3 = self.root / slug / "same_encoder_cache", self.root / slug / "p2_same_encoder"
                offer_encoder(Path(recipe["cache_dir"]), same, 2)
                got["two_same_encoder"] = two(SAME_ENCODER_PORT, "run", str(path), f"output_dir={o3}",
                                              f"cache_dir={same}", what=f"{name}, the 1-process encoder", out=o3)
        return self.done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("e2e"))


def _round0_figures(r1: Launch, r2: Launch) -> tuple[float, float, float]:
    """(round-0 accuracy difference, overlap of the labeled sets after round 1, overlap of round 0's picks)."""
    acc1, acc2 = accs(r1.out), accs(r2.out)
    return (abs(acc1[0] - acc2[0]), overlap(labeled_by(r1.out, 1), labeled_by(r2.out, 1)),
            overlap(set(picks(r1.out, 0)), set(picks(r2.out, 0))))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(E2E))
def test_run_under_two_processes_is_the_one_process_experiment(runs, name):
    got = runs.get(name)
    recipe, r1, r2 = got["recipe"], ok(got["one"]), ok(got["two"])
    pretrains = recipe.get("pretrain", {}).get("method", "none") != "none"
    rows1 = check_complete(r1.out, recipe, r1.proc.stdout)
    rows2 = check_complete(r2.out, recipe, r2.proc.stdout)
    # how it ran, said once
    (line1,) = start_lines(r1.proc.stdout)
    (line2,) = start_lines(r2.proc.stdout)
    assert re.match(r"ssal: 1 process, device cpu \(1 threads? per process\), mixed precision no; "
                    r"global batch: train\.batch_size 32(,|$)", line1), line1
    assert re.match(r"ssal: 2 processes \(gloo\), device cpu \(1 threads? per process\), mixed precision no; "
                    r"global batch: train\.batch_size 32 \(16 per process\)(,|$)", line2), line2
    if pretrains:
        assert line2.endswith("pretrain.batch_size 128 (64 per process)"), line2
        assert r2.proc.stdout.count("pretrain: cached the encoder at") == 1, r2.proc.stdout
    assert [r["round"] for r in rows1] == [r["round"] for r in rows2]
    assert [r["n_labeled"] for r in rows1] == [r["n_labeled"] for r in rows2]
    # the seeded initial set is the same; round 0 trains on it and must give the same accuracy
    assert labeled_by(r1.out, 0) == labeled_by(r2.out, 0)
    d0, after1, picks0 = _round0_figures(r1, r2)
    print(f"[multiprocess] {name}: test acc 1 process {accs(r1.out)}, 2 processes {accs(r2.out)}; round-0 "
          f"difference {d0:.4f}; labeled set after round 1 overlaps {100 * after1:.1f} % (round-0 picks "
          f"{100 * picks0:.0f} %); wall {r1.seconds:.1f} s vs {r2.seconds:.1f} s", flush=True)
    if pretrains:  # each pretrained its own encoder: compare round 0 on the same one
        r2 = ok(got["two_same_encoder"])
        check_complete(r2.out, recipe, r2.proc.stdout)
        assert r2.proc.stdout.count("pretrain: used the cached simclr encoder") == 1, r2.proc.stdout
        d0, after1, picks0 = _round0_figures(r1, r2)
        print(f"[multiprocess] {name}, 2 processes on the 1-process encoder: test acc {accs(r2.out)}; round-0 "
              f"difference {d0:.4f}; labeled set after round 1 overlaps {100 * after1:.1f} % (round-0 picks "
              f"{100 * picks0:.0f} %)", flush=True)
    assert d0 < 0.01, (accs(r1.out), accs(r2.out))
    assert after1 >= 0.9, sorted(labeled_by(r1.out, 1) ^ labeled_by(r2.out, 1))


# ----------------------------------------------------------------------------- 2 + 3. signals, BatchNorm: a script

SCRIPT = textwrap.dedent('''
    """Fixed-model signals and picks; then Engine.fit's BatchNorm buffers on every rank. Saves per rank."""
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    import ssal.engine.training as engine_mod
    from ssal.data import load_dataset
    from ssal.engine import Engine, Optim, TrainData
    from ssal.rng import derive_seed
    from ssal.models import build_model
    from ssal.models.sync_bn import GlobalBatchNorm
    from ssal.recipe import DataConfig, ModelConfig, load_recipe
    from ssal.select import STRATEGIES
    from ssal.select.base import Strategy
    from ssal.select import signals as S
    from ssal.select.signals import SelectionContext, compute_signals
    from ssal.semi import OBJECTIVES
    from ssal.semi.base import make_objective

    out, recipe = Path(sys.argv[1]), sys.argv[2]
    engine = Engine(progress=False)
    rank, world = engine.rank, engine.world
    saved = {"world": world}

    # --- 2. signals of a fixed model on an uneven number of candidates
    data = load_dataset(DataConfig(dataset="digits"))
    torch.manual_seed(0)
    model = build_model(ModelConfig(drop_rate=0.5), data).eval()
    labeled, cands = torch.arange(0, 40), torch.arange(41, 302, 2)  # 131 candidates: 66 + 65 over two
    assert len(cands) == 131  # processes, in chunks of 16 (the last one short)
    ctx = SelectionContext(model, labeled, data.train.targets[labeled], None, None, True, 7, batch_size=16)


    class Everything(Strategy):
        needs = (S.Probs(), S.Features(), S.BALDScore(samples=6), S.MCProbs(samples=6),
                 S.AugProbs(views=4, view="strong"))


    sig = compute_signals(engine, Everything(), ctx, data.train, cands)
    saved["signals"] = dict(zip(("probs", "features", "bald", "mc_probs", "aug_probs"),
                                (sig[r] for r in Everything.needs), strict=True))
    strategies = {"entropy": STRATEGIES.get("entropy")(),
                  "bald": STRATEGIES.get("bald")(STRATEGIES.get("bald").Config(samples=6)),
                  "consistency": STRATEGIES.get("consistency")(STRATEGIES.get("consistency").Config(views=4,
                                                                                                  view="strong"))}
    saved["picks"] = {}
    for name, strategy in strategies.items():
        own = compute_signals(engine, strategy, ctx, data.train, cands)  # only what it needs
        saved["picks"][name] = strategy.select(own, 10, torch.Generator().manual_seed(5))
        for k, v in own.values.items():  # the same per-sample draws whichever signals were asked
            assert torch.equal(v, sig.values[k]), (name, k)

    # --- 3. BatchNorm buffers after Engine.fit, on every rank
    spreads = {}
    check = engine_mod.check_replicas_agree


    def gathered_spread(module):
        flat = torch.cat([b.detach().double().flatten() for b in module.buffers() if b.is_floating_point()])
        if world == 1:
            return 0.0
        parts = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(parts, flat)
        return max(float((p - parts[0]).abs().max()) for p in parts)


    def probe(module, what, tolerance=1e-6):  # the buffers as training left them, before fit aligns them
        spreads[what] = gathered_spread(module)
        return check(module, what, tolerance)


    engine_mod.check_replicas_agree = probe
    saved["fits"] = {}
    for method in ("supervised", "fixmatch"):
        cfg = load_recipe(recipe, [f"train.method={method}"])
        pool = load_dataset(cfg.data, seed=cfg.seed)
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        net = build_model(cfg.model, pool)
        lab = torch.arange(40)
        data = TrainData(pool.train, lab, pool.train.targets[lab], torch.arange(40, len(pool.train)), hflip=pool.hflip)
        fit = engine.fit(net, lambda m: make_objective(OBJECTIVES.get(method), m, cfg.train), data,
                         Optim.from_train(cfg.train), seed=derive_seed(cfg.seed, "fit"), ema=cfg.train.ema, desc=method)
        bn = [m for m in fit.objective.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert bn, "the backbone has BatchNorm layers"
        assert all(isinstance(m, GlobalBatchNorm) for m in bn) == (world > 1), [type(m) for m in bn]
        after = gathered_spread(fit.objective)
        assert after == 0.0, (method, after)  # every rank holds the same buffers
        counts = torch.cat([m.num_batches_tracked.view(1) for m in bn])
        if world > 1:
            parts = [torch.empty_like(counts) for _ in range(world)]
            dist.all_gather(parts, counts)
            assert all(torch.equal(p, counts) for p in parts)
        saved["fits"][method] = {
            "spread": spreads[method], "after": after, "steps": counts.tolist(),
            "buffers": {k: v.clone() for k, v in fit.objective.state_dict().items()
                        if "running_" in k},
            "weights": {k: v.detach().clone() for k, v in fit.model.named_parameters()}}

    # --- one pretraining step of each method on a global batch of 64: the same loss and update
    from ssal.pretrain.base import PRETRAINERS

    saved["pretrain_step"] = {}
    for name in ("simclr", "byol"):
        cfg = load_recipe(recipe, [f"pretrain.method={name}", "pretrain.batch_size=64", "pretrain.epochs=1"])
        torch.manual_seed(0)
        method = PRETRAINERS.get(name)(build_model(cfg.model, pool), cfg.pretrain, pool)
        fit = engine.pretrain(method, pool.train, torch.arange(64), cfg.pretrain, seed=1, desc=name)
        saved["pretrain_step"][name] = {"loss": fit.logs["loss"],  # this process's share of the batch
                                        "weights": {k: v.detach().clone() for k, v in fit.model.named_parameters()}}

    if world > 1:  # the control: without synchronised BatchNorm the ranks' buffers part, and fit says so
        engine_mod.synchronise_batchnorm = lambda module, device: module
        cfg = load_recipe(recipe, ["train.method=supervised"])
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        net = build_model(cfg.model, pool)
        try:
            engine.fit(net, lambda m: make_objective(OBJECTIVES.get("supervised"), m, cfg.train),
                       TrainData(pool.train, lab, pool.train.targets[lab], hflip=pool.hflip),
                       Optim.from_train(cfg.train), seed=derive_seed(cfg.seed, "fit"), ema=cfg.train.ema,
                       desc="unsynchronised")
            raise AssertionError("plain BatchNorm under 2 processes went unnoticed")
        except RuntimeError as e:
            assert "processes hold different buffers" in str(e), e
        saved["unsynchronised_spread"] = spreads["unsynchronised"]

    torch.save(saved, out / f"rank{rank}.pt")
    print(f"rank {rank} ok", flush=True)
    engine.close()
''')


@pytest.fixture(scope="module")
def script_results(tmp_path_factory) -> dict:
    """The script in one process and under torchrun (2 processes): what each rank saved."""
    root = tmp_path_factory.mktemp("script")
    script = root / "signals_and_bn.py"
    script.write_text(SCRIPT)
    recipe = root / "fit.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(root / "unused", train={"fixmatch": {"mu": 2}})))
    results = {}
    for world in (1, 2):
        out = root / f"w{world}"
        out.mkdir()
        if world == 1:
            launch = _launch([sys.executable, str(script), str(out), str(recipe)], "1 process: signals + fit script")
        else:
            launch = two(29614, str(out), str(recipe), script=script, what="signals + fit script")
        assert launch.proc.returncode == 0, launch.text[-4000:]
        for r in range(world):
            assert f"rank {r} ok" in launch.proc.stdout, launch.text[-4000:]
        results[world] = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
    return results


@pytest.mark.slow
def test_fixed_model_signals_and_picks_under_two_processes_equal_one(script_results):
    (ref,), (r0, r1) = script_results[1], script_results[2]
    assert ref["world"] == 1 and r0["world"] == r1["world"] == 2
    shapes = {"probs": (131, 10), "bald": (131,), "mc_probs": (131, 6, 10), "aug_probs": (131, 4, 10)}
    diffs = {}
    for k, want in ref["signals"].items():
        got = r0["signals"][k]
        assert got.shape == want.shape and torch.isfinite(got).all(), k
        if k in shapes:
            assert tuple(got.shape) == shapes[k], (k, got.shape)
        diffs[k] = float((got - want).abs().max())
        assert torch.equal(r1["signals"][k], got), k  # every rank gathered the same values
    assert set(ref["signals"]) == {"probs", "features", "bald", "mc_probs", "aug_probs"}
    assert (ref["signals"]["bald"] > 0).all()  # the dropout passes differ ...
    assert float((ref["signals"]["aug_probs"][:, 0] - ref["signals"]["aug_probs"][:, 1]).abs().max()) > 1e-4  # views
    print("[multiprocess] fixed-model signals, max |2 processes - 1 process|: "
          + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()), flush=True)
    for name, want in ref["picks"].items():
        print(f"[multiprocess] picks of {name}: 1 process {want.tolist()}, 2 processes {r0['picks'][name].tolist()}")
    assert max(diffs.values()) <= 1e-5, diffs
    for name, want in ref["picks"].items():
        assert torch.equal(r0["picks"][name], want), name
        assert torch.equal(r1["picks"][name], want), name


@pytest.mark.slow
def test_batchnorm_buffers_agree_on_every_rank_after_fit(script_results):
    (ref,), (r0, r1) = script_results[1], script_results[2]
    for method in ("supervised", "fixmatch"):
        f0, f1, f_ref = r0["fits"][method], r1["fits"][method], ref["fits"][method]
        # equal on the ranks as training left them (before fit's final alignment), and after
        assert f0["spread"] == f1["spread"] <= 1e-6 and f0["after"] == f1["after"] == 0.0, (f0["spread"], f0["after"])
        assert f0["steps"] == f_ref["steps"] == [20] * len(f0["steps"])
        for k, v in f0["buffers"].items():
            assert torch.equal(v, f1["buffers"][k]), k
        bn_d = max(float((v - f_ref["buffers"][k]).abs().max()) for k, v in f0["buffers"].items())
        w_d = max(float((v - f_ref["weights"][k]).abs().max()) for k, v in f0["weights"].items())
        print(f"[multiprocess] {method} fit (20 steps): BatchNorm buffers spread across ranks {f0['spread']:.2e}; "
              f"vs 1 process: max |d running stats| {bn_d:.2e}, max |dw| {w_d:.2e}", flush=True)
        # the same training up to reduction order (1 vs 2 threads in one process: max |dw| ~0.02 after 20 steps)
        assert bn_d < 0.05 and w_d < 0.05, (bn_d, w_d)
    print(f"[multiprocess] control, plain BatchNorm under 2 processes: spread {r0['unsynchronised_spread']:.2e} "
          "(fit refused it)", flush=True)
    assert r0["unsynchronised_spread"] > 1e-6


@pytest.mark.slow
def test_one_pretraining_step_under_two_processes_equals_one(script_results):
    """One SimCLR / BYOL step on a global batch of 64: the same loss (SimCLR's negatives come from both
    processes) and the same update. Longer pretraining is compared by the ``ssal pretrain`` tests."""
    (ref,), (r0, r1) = script_results[1], script_results[2]
    for name in ("simclr", "byol"):
        want, got0, got1 = ref["pretrain_step"][name], r0["pretrain_step"][name], r1["pretrain_step"][name]
        loss2 = (got0["loss"] + got1["loss"]) / 2  # each process's loss is the mean over its half
        w = max(float((v - want["weights"][k]).abs().max()) for k, v in got0["weights"].items())
        print(f"[multiprocess] one {name} step: loss {want['loss']:.6f} (1 process) vs {loss2:.6f} (mean of 2); "
              f"max |dw| {w:.2e}", flush=True)
        assert abs(loss2 - want["loss"]) < 1e-5 * max(1.0, abs(want["loss"])), (loss2, want["loss"])
        assert w < 1e-5, w
        assert all(torch.equal(v, got1["weights"][k]) for k, v in got0["weights"].items())


# ----------------------------------------------------------------------------- 4. kill -9 of one rank, then --resume

def _killed_rank1(text: str) -> bool:
    """torchrun's failure report says rank 1 ended by SIGKILL."""
    return bool(re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*-9", text)) or \
        bool(re.search(r"local_rank: 1 \(pid: \d+\).*Signal 9", text))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["entropy", "tod"])
def test_kill_9_of_one_rank_then_resume_under_two_processes(runs, tmp_path, case):
    if case == "entropy":  # the uninterrupted 2-process run is test 1's
        got = runs.get("supervised+entropy")
        recipe, path, full = got["recipe"], got["path"], ok(got["two"]).out
        point, ports = "train.step=kill@30", (29615, 29616)  # 20 steps a round: step 10 of round 1
    else:
        recipe = tiny_recipe_dict(tmp_path / "unused", train={"method": "tod"}, active={"strategy": "tod"})
        path = tmp_path / "tod.yaml"
        path.write_text(yaml.safe_dump(recipe))
        full = tmp_path / "full"
        ok(two(29617, "run", str(path), f"output_dir={full}", what="tod, uninterrupted"))
        point, ports = "evaluate=kill@2", (29618, 29619)  # round 1, between training and its checkpoint
    out = tmp_path / "killed"
    killed = two(ports[0], "run", str(path), f"output_dir={out}", what=f"{case}, rank 1 killed at {point}",
                 env=_env(**{faults.ENV: f"{point}#1"}))  # '#1': the failpoint acts in rank 1 only
    assert killed.proc.returncode != 0 and _killed_rank1(killed.text), killed.text[-4000:]
    committed = len(read_metrics(out))
    assert committed == 1, committed  # round 0 committed, round 1 cut off
    resumed = ok(two(ports[1], "run", "--resume", str(out), what=f"{case}, --resume"))
    assert f"resuming {out} at round 1" in resumed.proc.stdout, resumed.text
    print(f"[multiprocess] kill -9 of rank 1 ({case}, {point}): {committed} round committed; after --resume pool.json "
          f"{'equals' if pool_of(out) == pool_of(full) else 'DIFFERS from'} the uninterrupted run's; "
          f"test acc {accs(out)} vs {accs(full)}", flush=True)
    assert pool_of(out) == pool_of(full)
    assert accs(out) == accs(full)
    assert len(read_metrics(out)) == recipe["active"]["rounds"] + 1
    assert not list(out.rglob("*.tmp"))


# ----------------------------------------------------------------------------- 5. --force, ten times

@pytest.mark.slow
def test_force_under_two_processes_replaces_a_run_ten_times_out_of_ten(tmp_path):
    recipe = tiny_recipe_dict(tmp_path / "run", data={"pool_size": 200, "test_size": 100}, train={"steps": 5},
                              active={"rounds": 1})
    path = tmp_path / "force.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    first = ok(one("run", str(path), what="the run to replace", out=out))
    check_complete(out, recipe, first.proc.stdout)
    ref_acc = accs(out)
    pools, results = [], []
    for i in range(10):
        (out / "marker.txt").write_text(str(i))  # a file of the old run: --force deletes the whole run
        created = json.loads((out / "run.json").read_text())["created"]  # to the second; a run takes longer
        launch = two(29620 + i, "run", str(path), "--force", what=f"--force #{i + 1}")
        results.append(launch.proc.returncode)
        assert launch.proc.returncode == 0, f"--force #{i + 1}: {launch.text[-4000:]}"
        assert "Traceback" not in launch.text, launch.text[-4000:]
        check_complete(out, recipe, launch.proc.stdout)
        assert not (out / "marker.txt").exists()
        assert json.loads((out / "run.json").read_text())["created"] != created
        pools.append(pool_of(out))
        assert abs(accs(out)[0] - ref_acc[0]) < 0.01, (accs(out), ref_acc)
    print(f"[multiprocess] --force under 2 processes: exit codes {results}; {sum(r == 0 for r in results)}/10 "
          f"complete; all pool.json equal: {all(p == pools[0] for p in pools)}", flush=True)
    assert all(p == pools[0] for p in pools)  # the same experiment every time


# ----------------------------------------------------------------------------- 6. ssal pretrain and ssal compare

def _compare_encoders(e1: dict, e2: dict, what: str) -> tuple[float, float, float]:
    w = max(float((e1["backbone"][k].double() - v.double()).abs().max()) for k, v in e2["backbone"].items()
            if v.is_floating_point())
    knn1, knn2 = e1["log"][-1]["knn_acc"], e2["log"][-1]["knn_acc"]
    init1, init2 = e1["log"][0]["knn_acc"], e2["log"][0]["knn_acc"]
    print(f"[multiprocess] {what}: kNN at random init {init1} vs {init2}, after pretraining {knn1} (1 process) vs "
          f"{knn2} (2 processes); max |dw| of the encoders {w:.2e}", flush=True)
    return abs(init1 - init2), abs(knn1 - knn2), w


@pytest.mark.slow
def test_pretrain_simclr_under_two_processes(runs, tmp_path):
    """``ssal pretrain --no-cache`` under torchrun trains the encoder again: the same bits as the one the
    2-process run of test 1 trained (and cached), close to the 1-process one (6 steps: measured max |dw|
    3.0e-3, as between 1 and 2 threads in one process, 2.95e-3)."""
    got = runs.get("simclr+typiclust")
    ok(got["one"]), ok(got["two"])
    cache = Path(got["recipe"]["cache_dir"])
    before = {p.name: _entry(p) for p in _cache_entries(cache)}
    by_world = {json.loads(e["fields"])["execution"]["processes"]: name for name, e in before.items()}
    assert sorted(by_world) == [1, 2], by_world  # one entry per execution (1 and 2 processes)
    launch = ok(two(29631, "pretrain", str(got["path"]), "--no-cache", what="ssal pretrain simclr --no-cache"))
    assert launch.proc.stdout.count("pretrain: cached the encoder at") == 1, launch.text
    (line,) = start_lines(launch.proc.stdout)
    assert re.match(r"ssal: 2 processes \(gloo\), .*pretrain\.batch_size 128 \(64 per process\)$", line), line
    after = {p.name: _entry(p) for p in _cache_entries(cache)}
    assert sorted(after) == sorted(before) and not list(cache.rglob("*.tmp"))
    again = after[by_world[2]]
    assert all(torch.equal(v, before[by_world[2]]["backbone"][k]) for k, v in again["backbone"].items())
    d_init, d_knn, w = _compare_encoders(before[by_world[1]], again, "simclr pretraining (6 steps)")
    assert d_init < 0.01 and d_knn < 0.03 and w < 0.05, (d_init, d_knn, w)


@pytest.mark.slow
def test_pretrain_byol_under_two_processes(tmp_path):
    recipe = tiny_recipe_dict(tmp_path / "unused", pretrain={"method": "byol", "epochs": 2, "batch_size": 64,
                                                             "eval_every": 0})
    path = tmp_path / "byol.yaml"
    path.write_text(yaml.safe_dump(recipe))
    entries = {}
    for world in (1, 2):
        cache = tmp_path / f"cache{world}"
        args = ("pretrain", str(path), f"cache_dir={cache}")
        launch = ok(one(*args, what="ssal pretrain byol") if world == 1 else
                    two(29632, *args, what="ssal pretrain byol"))
        assert launch.proc.stdout.count("pretrain: cached the encoder at") == 1, launch.text
        (line,) = start_lines(launch.proc.stdout)
        share = " (32 per process)" if world == 2 else ""
        assert line.startswith(f"ssal: {world} process") and line.endswith(f"pretrain.batch_size 64{share}"), line
        (entry,) = _cache_entries(cache)
        assert entry.with_suffix(".jsonl").is_file() and not list(cache.rglob("*.tmp"))
        entries[world] = _entry(entry)
        assert json.loads(entries[world]["fields"])["execution"]["processes"] == world
    d_init, d_knn, w = _compare_encoders(entries[1], entries[2], "byol pretraining (12 steps)")
    assert d_init < 0.01 and d_knn < 0.03 and w < 0.05, (d_init, d_knn, w)


@pytest.mark.slow
def test_compare_under_two_processes(runs, tmp_path):
    """A tiny grid (random, entropy) under torchrun: one comparison, complete, reported once; its entropy
    cell is test 1's supervised+entropy recipe, whose 1-process run is the reference."""
    got = runs.get("supervised+entropy")
    base = dict(got["recipe"])
    base.pop("output_dir")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = tmp_path / "spec.yaml"
    out = tmp_path / "cmp"
    spec.write_text(yaml.safe_dump({"recipe": "base.yaml", "output_dir": str(out),
                                    "grid": {"active.strategy": ["random", "entropy"]}}))
    launch = two(29633, "compare", str(spec), what="ssal compare (2 cells)", timeout=400)
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((out / "logs").glob("*.log"))) \
        if (out / "logs").exists() else ""
    assert launch.proc.returncode == 0, launch.text[-4000:] + logs
    assert "Traceback" not in launch.text, launch.text[-4000:]
    assert len(re.findall(r"^compare: 2 cells in ", launch.text, re.M)) == 1, launch.text  # said once
    for name in ("results.csv", "summary.md", "curves.png", "aubc.png"):
        assert (out / name).is_file(), name
    R = base["active"]["rounds"]
    cells = {s: out / "cells" / f"supervised__{s}__seed0" for s in ("random", "entropy")}
    for cell in cells.values():
        assert len(read_metrics(cell)) == R + 1
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 2 * (R + 1)
    ref = ok(got["one"]).out
    d0 = abs(accs(cells["entropy"])[0] - accs(ref)[0])
    after1 = overlap(labeled_by(ref, 1), labeled_by(cells["entropy"], 1))
    print(f"[multiprocess] compare under 2 processes: entropy cell test acc {accs(cells['entropy'])} vs the "
          f"1-process run {accs(ref)}; round-0 difference {d0:.4f}; labeled set after round 1 overlaps "
          f"{100 * after1:.1f} %", flush=True)
    assert d0 < 0.01 and after1 >= 0.9
    assert accs(cells["random"])[0] == accs(cells["entropy"])[0]  # same initial set, same round-0 training


# ----------------------------------------------------------------------------- 7. DataLoader workers

@pytest.mark.slow
def test_num_workers_do_not_change_a_two_process_run(runs, tmp_path):
    got = runs.get("supervised+entropy")
    ref = ok(got["two"]).out  # data.num_workers=0
    out = tmp_path / "workers"
    launch = ok(two(29634, "run", str(got["path"]), f"output_dir={out}", "data.num_workers=2",
                    what="supervised+entropy, data.num_workers=2"))
    check_complete(out, got["recipe"], launch.proc.stdout)
    print(f"[multiprocess] data.num_workers 2 vs 0 under 2 processes: pool.json "
          f"{'equal' if pool_of(out) == pool_of(ref) else 'DIFFERENT'}; test acc {accs(out)} vs {accs(ref)}",
          flush=True)
    assert pool_of(out) == pool_of(ref)
    assert accs(out) == accs(ref)


# ----------------------------------------------------------------------------- 8. a global batch that does not divide

@pytest.mark.slow
def test_a_batch_that_does_not_divide_is_one_error_line(tmp_path):
    path = tmp_path / "odd.yaml"
    out = tmp_path / "run"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(out)))
    logs = tmp_path / "logs"
    launch = two(29635, "run", str(path), "train.batch_size=33", what="train.batch_size=33",
                 launcher=("--log-dir", str(logs), "--redirects", "3"))
    assert launch.proc.returncode != 0
    # each process exited 2 (torchrun's report; torchrun itself exits 1 when a process fails)
    codes = re.findall(r"rank\s*:\s*(\d) \(local_rank: \d\)\s*\n\s*exitcode\s*:\s*(-?\d+)", launch.text)
    assert ("0", "2") in codes or ("1", "2") in codes, launch.text
    # the other exits 2 too, unless torchrun's SIGTERM (sent once the first one failed) reaches it first
    assert len(codes) == 2 and all(code in ("2", "130", "-15") for _, code in codes), codes
    rank_dirs = sorted(logs.rglob("attempt_0/*"))
    assert [d.name for d in rank_dirs] == ["0", "1"], rank_dirs
    err0 = (rank_dirs[0] / "stderr.log").read_text()
    lines = err0.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssal: error: train.batch_size=33 "), err0
    assert "train.batch_size" in lines[0] and "divide" in lines[0]
    assert (rank_dirs[1] / "stderr.log").read_text() == ""  # the other process says nothing
    assert all((d / "stdout.log").read_text() == "" for d in rank_dirs)  # not even the start line
    assert "Traceback" not in err0
    assert not out.exists()
    print(f"[multiprocess] train.batch_size=33 under 2 processes: exit codes by rank {codes}; {lines[0]!r}",
          flush=True)


@pytest.mark.slow  # 4 launches
def test_a_human_run_under_two_processes_takes_the_answers_as_one_process_does(tmp_path):
    """People's answers are read by the main process alone (under the answers' lock, while a page may be
    writing them) and handed to the other: two processes take the same batch and pick round 0's batch as
    one process does."""
    import csv

    from omegaconf import OmegaConf

    from ssal.cli import main
    from ssal.data import load_dataset
    from ssal.data.label_files import QUERY_COLUMNS

    recipe = tiny_recipe_dict(tmp_path / "unused",
                              active={"oracle": "human", "rounds": 2, "initial_strategy": "random"})
    path = tmp_path / "human.yaml"
    path.write_text(yaml.safe_dump(recipe))

    def answer(run: Path) -> None:
        """A scripted annotator: the true class of every queried image."""
        identity = json.loads((run / "run.json").read_text())
        cfg = OmegaConf.create(identity["recipe"])
        targets = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir).train.targets
        rows = list(csv.DictReader((run / "rounds" / "initial" / "queries.csv").open(newline="")))
        for row in rows:
            row["label"] = identity["pool"]["classes"][int(targets[int(row["index"])])]
        answers = tmp_path / f"{run.name}.csv"
        with answers.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(QUERY_COLUMNS))
            w.writeheader()
            w.writerows(rows)
        assert main(["label", "import", str(run), str(answers)]) == 0

    runs = {1: tmp_path / "p1", 2: tmp_path / "p2"}
    ok(one("run", str(path), f"output_dir={runs[1]}", what="human, first batch"))
    ok(two(29640, "run", str(path), f"output_dir={runs[2]}", what="human, first batch"))
    for run in runs.values():
        assert (run / "rounds" / "initial" / "queries.csv").is_file() and not (run / "pool.json").exists()
        answer(run)
    ok(one("run", "--resume", str(runs[1]), what="human, --resume"))
    ok(two(29641, "run", "--resume", str(runs[2]), what="human, --resume"))
    assert [r["round"] for r in read_metrics(runs[2])] == [0]
    assert pool_of(runs[2])["labeled"] == pool_of(runs[1])["labeled"]
    assert picks(runs[2], 0) == picks(runs[1], 0)
    assert (runs[2] / "rounds" / "r00" / "queries.csv").is_file()
