"""Engine overhead: time per training step of ssal's Engine vs a minimal hand-written torch loop,
and, per semi-supervised objective, the time of one step and the share of it spent waiting for
data (loading + views not hidden behind compute).

Same model (cnn_small), same data (Fashion-MNIST-sized uint8 images in memory), same batch size,
optimizer (SGD, nesterov momentum, weight decay) and cosine schedule. The engine runs with
``train.augment=none`` so both loops do the same work, in the same memory layout (NHWC,
``channels_last``, the engine's default); the weak-view cost and the layout gain are printed apart.

    .venv/bin/python scripts/bench_engine.py [--steps 200] [--repeats 3] [--batch-size 64]
    .venv/bin/python scripts/bench_engine.py --objectives [--steps 30] [--workers 0 2]
    .venv/bin/python scripts/bench_engine.py --processes [--steps 40] [--repeats 3]

``--processes`` times the FixMatch step (recipes/fashion_mnist/fixmatch.yaml's train section, its
global batch) as one process with 2 threads and as 2 processes (torchrun, gloo) with 1 thread each,
interleaved, and prints samples/s (labeled + unlabeled samples per second) and their ratio.

On a GPU the same script times the CUDA path; ``--mixed-precision bf16`` (or fp16) times the
objective steps under that autocast mode (Accelerate's ``mixed_precision``, one mode per process).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ssal.data.datasets import ImageDataset, TensorSplit
from ssal.engine import Engine, FitResult, Optim, TrainData
from ssal.models import build_model
from ssal.models.ema import ema_advice
from ssal.recipe import ModelConfig, TrainConfig, load_recipe
from ssal.semi import OBJECTIVES
from ssal.semi.base import make_objective

ROOT = Path(__file__).resolve().parents[1]


def make_data(n: int = 10_000) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    targets = torch.randint(0, 10, (n,), generator=g)
    split = TensorSplit(images, targets)
    return ImageDataset("bench", split, split, [str(i) for i in range(10)], 1, (28, 28), (0.286,), (0.353,), True)


def hand_loop(data: ImageDataset, cfg: TrainConfig, labeled: torch.Tensor) -> float:
    torch.manual_seed(0)
    fmt, device = torch.channels_last, _device()
    model = build_model(ModelConfig(), data).to(device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / cfg.steps)))
    g = torch.Generator().manual_seed(0)
    images, targets = data.train.images, data.train.targets
    model.train()
    t0 = time.perf_counter()
    perm = torch.empty(0, dtype=torch.long)
    for _ in range(cfg.steps):
        if len(perm) < cfg.batch_size:
            perm = torch.cat([perm, torch.randperm(len(labeled), generator=g)])
        pos, perm = perm[: cfg.batch_size], perm[cfg.batch_size:]
        idx = labeled[pos]
        x, y = images[idx].to(device).float().div_(255).contiguous(memory_format=fmt), targets[idx].to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / cfg.steps


def train(engine: Engine, cls: type, cfg: TrainConfig, data: ImageDataset, labeled: torch.Tensor,
          unlabeled: torch.Tensor | None = None) -> FitResult:
    """``engine.fit`` of objective ``cls`` as a run calls it (train section ``cfg``), seed 0, on a fresh model."""
    advice = ema_advice(cfg.ema, cfg.steps)
    if advice is not None:
        engine.print(f"[yellow]warning: {advice}")
    return engine.fit(build_model(ModelConfig(), data), lambda m: make_objective(cls, m, cfg),
                      TrainData(data.train, labeled, data.train.targets[labeled], unlabeled, hflip=True),
                      Optim.from_train(cfg), seed=0, ema=cfg.ema)


def engine_loop(engine: Engine, data: ImageDataset, cfg: TrainConfig, labeled: torch.Tensor) -> float:
    torch.manual_seed(0)
    return train(engine, OBJECTIVES.get("supervised"), cfg, data, labeled).seconds / cfg.steps


def objective_steps(data: ImageDataset, steps: int, workers: list[int], batch_size: int,
                    precision: str) -> None:
    """Per objective (the train section of recipes/fashion_mnist/<name>.yaml, Fashion-MNIST-sized
    images, 100 labels): ms per step and the share of the step spent waiting for the batch, for
    each DataLoader worker count."""
    labeled, unlabeled = torch.arange(100), torch.arange(100, len(data.train))
    print(f"objective steps: batch {batch_size} labeled (+ mu x unlabeled), {steps} steps after 3 warm-up, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, device {_device_name()}")
    print(f"{'objective':<12} {'precision':>9} {'workers':>7} {'ms/step':>9} {'waiting for data':>17}")
    for name in ("supervised", "fixmatch", "consistency", "tod", "contrastive"):
        cls = OBJECTIVES.get(name)
        recipe = load_recipe(ROOT / "recipes" / "fashion_mnist" / f"{name}.yaml",
                             [f"train.steps={steps}", f"train.batch_size={batch_size}"])
        cfg = recipe.train
        for w in workers:
            engine = Engine(precision, progress=False, num_workers=w)
            torch.manual_seed(0)
            warm = OmegaConf.merge(cfg, {"steps": 3})
            train(engine, cls, warm, data, labeled, unlabeled)
            fit = train(engine, cls, cfg, data, labeled, unlabeled)
            share = 100 * fit.data_seconds / fit.seconds
            print(f"{name:<12} {precision:>9} {w:>7} {1000 * fit.seconds / steps:>9.1f} {share:>16.1f}%")


def fixmatch_fit(data: ImageDataset, steps: int) -> tuple[float, int]:
    """(seconds of ``steps`` FixMatch steps after 3 warm-up steps, samples per step), under however
    many processes this one belongs to (the slowest process's time)."""
    recipe = load_recipe(ROOT / "recipes" / "fashion_mnist" / "fixmatch.yaml", [f"train.steps={steps}"])
    cfg, cls = recipe.train, OBJECTIVES.get("fixmatch")
    labeled, unlabeled = torch.arange(100), torch.arange(100, len(data.train))
    engine = Engine(progress=False)
    times = []
    for c in (OmegaConf.merge(cfg, {"steps": 3, "ema": 0.0}), cfg):
        torch.manual_seed(0)
        times.append(train(engine, cls, c, data, labeled, unlabeled).seconds)
    seconds = torch.tensor([times[-1]])
    if engine.world > 1:
        torch.distributed.all_reduce(seconds, op=torch.distributed.ReduceOp.MAX)
    engine.close()
    return float(seconds), cfg.batch_size * (1 + cfg.fixmatch.mu)


def processes(data: ImageDataset, steps: int, repeats: int) -> None:
    """1 process x 2 threads vs 2 processes x 1 thread on the FixMatch step, interleaved."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           "--fixmatch-worker", "--steps", str(steps)]
    one, two = [], []
    per_step = 0
    for _ in range(repeats):
        torch.set_num_threads(2)
        seconds, per_step = fixmatch_fit(data, steps)
        one.append(per_step * steps / seconds)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        two.append(per_step * steps / float(out.split("seconds")[-1].split()[0]))
    a, b = statistics.median(one), statistics.median(two)
    print(f"FixMatch step (cnn_small, 28x28, global batch {per_step} samples), {steps} steps x {repeats} repeats, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"1 process x 2 threads   {a:8.1f} samples/s   ({', '.join(f'{v:.0f}' for v in one)})")
    print(f"2 processes x 1 thread  {b:8.1f} samples/s   ({', '.join(f'{v:.0f}' for v in two)})")
    print(f"ratio 2 processes / 1   {b / a:8.3f}")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--labeled", type=int, default=1000)
    ap.add_argument("--objectives", action="store_true", help="time one step of each semi-supervised objective")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers (--objectives)")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"],
                    help="autocast mode of the objective steps (fp16 needs a GPU)")
    ap.add_argument("--processes", action="store_true", help="1 process x 2 threads vs 2 processes x 1 thread")
    ap.add_argument("--fixmatch-worker", action="store_true", help=argparse.SUPPRESS)  # one torchrun process
    args = ap.parse_args()

    data = make_data()
    if args.fixmatch_worker:
        seconds, _ = fixmatch_fit(data, args.steps)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"seconds {seconds}")
        return
    if args.processes:
        processes(data, args.steps, args.repeats)
        return
    if args.objectives:
        objective_steps(data, args.steps, args.workers, args.batch_size, args.mixed_precision)
        return
    labeled = torch.arange(args.labeled)
    base = dict(steps=args.steps, batch_size=args.batch_size)
    cfg = SimpleNamespace(**{**TrainConfig().__dict__, **base, "augment": "none"})
    cfg_weak = SimpleNamespace(**{**TrainConfig().__dict__, **base, "augment": "weak"})
    engine = Engine(progress=False)
    engine_nchw = Engine(progress=False, accelerator=engine.accelerator, channels_last=False)

    hand_loop(data, cfg, labeled)  # warm-up (allocator, kernels)
    hand, eng, weak, nchw = [], [], [], []
    for _ in range(args.repeats):  # interleaved so drift hits both alike
        hand.append(hand_loop(data, cfg, labeled))
        eng.append(engine_loop(engine, data, cfg, labeled))
        weak.append(engine_loop(engine, data, cfg_weak, labeled))
        nchw.append(engine_loop(engine_nchw, data, cfg, labeled))
    h, e, w, c = (statistics.median(t) for t in (hand, eng, weak, nchw))
    print(f"cnn_small, batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"hand-written loop        {1000 * h:7.2f} ms/step")
    print(f"ssal Engine (no views)   {1000 * e:7.2f} ms/step")
    print(f"ratio engine / hand      {e / h:7.3f}")
    print(f"ssal Engine (weak views) {1000 * w:7.2f} ms/step  (views add {100 * (w / e - 1):.1f} %)")
    print(f"ssal Engine (NCHW)       {1000 * c:7.2f} ms/step  (channels_last saves {100 * (1 - e / c):.1f} %)")


if __name__ == "__main__":
    main()
