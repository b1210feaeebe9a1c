"""Where pretraining time goes: per-sample views (lightly's transforms) vs the model step.

Times, per image, (1) making the two views of a pretraining method on the CPU, (2) one
optimizer step of the method on ready-made views, and (3) the engine's whole pretraining step
(views made by the DataLoader, in the main process or in ``--num-workers`` workers). The share
of (1) in (3) says whether the CPU spends its time in the model.

    .venv/bin/python scripts/bench_pretrain.py [--method simclr] [--batch-size 256] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from ssal.data.datasets import ImageDataset, TensorSplit
from ssal.engine import Engine
from ssal.models import build_model
from ssal.pretrain import PRETRAINERS
from ssal.recipe import from_dict


def make_data(n: int, channels: int, size: int) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    split = TensorSplit(images, torch.randint(0, 10, (n,), generator=g))
    return ImageDataset("bench", split, split, [str(i) for i in range(10)], channels, (size, size),
                        (0.5,) * channels, (0.25,) * channels, True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="simclr", choices=[n for n in PRETRAINERS.names() if n != "none"])
    ap.add_argument("--backbone", default="cnn_small")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--num-workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    args = ap.parse_args()

    bs, steps = args.batch_size, args.steps
    data = make_data(bs * steps, args.channels, args.size)
    cfg = from_dict({"model": {"backbone": args.backbone},
                     "pretrain": {"method": args.method, "batch_size": bs, "epochs": 1}})
    torch.manual_seed(0)
    method = PRETRAINERS.get(args.method)(build_model(cfg.model, data), cfg.pretrain, data)

    # (1) views alone
    imgs = data.train.load(torch.arange(bs))
    t0 = time.perf_counter()
    views = [method.transform(x) for x in imgs]
    views_ms = 1000 * (time.perf_counter() - t0) / bs
    batch = {f"view{v}": torch.stack([s[v] for s in views]) for v in range(len(views[0]))}

    # (2) the model step on ready views, as the engine runs it (NHWC, SGD)
    engine = Engine(mixed_precision=args.mixed_precision, progress=False)
    fmt = engine.memory_format
    method.to(memory_format=fmt)
    batch = {k: v.contiguous(memory_format=fmt) for k, v in batch.items()}
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    method.train()

    def step() -> None:
        with engine.accelerator.autocast():
            loss, _ = method(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(0, 10)

    step()
    t0 = time.perf_counter()
    for _ in range(5):
        step()
    model_ms = 1000 * (time.perf_counter() - t0) / 5 / bs

    print(f"{args.method} on {args.backbone}, {args.channels}x{args.size}x{args.size}, batch {bs}, "
          f"{torch.get_num_threads()} threads, mixed precision {args.mixed_precision}, torch {torch.__version__}")
    print(f"views (2 per image, per sample)   {views_ms:7.3f} ms/image")
    print(f"model step on ready views         {model_ms:7.3f} ms/image")
    for nw in args.num_workers:
        eng = Engine(mixed_precision=args.mixed_precision, num_workers=nw, progress=False,
                     accelerator=engine.accelerator)
        torch.manual_seed(0)
        m = PRETRAINERS.get(args.method)(build_model(cfg.model, data), cfg.pretrain, data)
        fit = eng.pretrain(m, data.train, torch.arange(len(data.train)), cfg.pretrain, seed=0)
        total_ms = 1000 * fit.seconds / (steps * bs)
        share_views, share_model = 100 * views_ms / total_ms, 100 * model_ms / total_ms
        print(f"engine step, num_workers={nw}        {total_ms:7.3f} ms/image  "
              f"(views {share_views:4.1f} % of it if made inline; model {share_model:4.1f} %)")


if __name__ == "__main__":
    main()
