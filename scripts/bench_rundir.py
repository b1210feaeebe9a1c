"""What the run directory's safety costs, against references measured in the same run.

  fingerprint   hashing the pool (what --resume checks the data against), vs loading the data set
  checkpoint    an atomic, checksummed checkpoint write (tmp + fsync + rename), vs a plain torch.save
  commit        a round's pool.json (sealed) + metrics.jsonl rewrite, fsynced, vs json.dump to plain files

    .venv/bin/python scripts/bench_rundir.py [--dataset fashion_mnist] [--backbone cnn_small]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from ssal.data import ActivePool, load_dataset
from ssal.models import build_model
from ssal.recipe import from_dict
from ssal.run.store import RunDir


def best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--backbone", default="cnn_small")
    p.add_argument("--labels", type=int, default=1000, help="labels in the pool file")
    args = p.parse_args()

    cfg = from_dict({"data": {"dataset": args.dataset}, "model": {"backbone": args.backbone}})
    t = time.perf_counter()
    data = load_dataset(cfg.data, seed=0)
    load_s = time.perf_counter() - t

    def fingerprint() -> None:
        data.train._fingerprint = None  # measure the hash, not its memo
        data.train.fingerprint()

    fp_s = best(fingerprint, 3)

    model = build_model(cfg.model, data)
    state = {"model": model.state_dict(), "objective": {}, "ema": model.state_dict()}
    mb = sum(v.numel() * v.element_size() for v in model.state_dict().values()) * 2 / 2**20
    pool = ActivePool(len(data.train))
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train), generator=g)[: args.labels]
    pool.label(idx, data.train.targets[idx], 0)
    rows = [{"round": r, "n_labeled": 100 * (r + 1), "test_acc": 0.8, "train_s": 1.0} for r in range(10)]

    with tempfile.TemporaryDirectory(dir=os.getcwd()) as tmp:  # the disk runs are written to
        run = RunDir(Path(tmp) / "run")
        run.path.mkdir()
        plain = Path(tmp) / "plain"
        plain.mkdir()
        ckpt_s = best(lambda: run.save_checkpoint(0, state))
        plain_ckpt_s = best(lambda: torch.save(state, plain / "round_00.pt"))

        def commit() -> None:
            run.save_pool(pool)
            run.commit(rows)

        def plain_commit() -> None:
            (plain / "pool.json").write_text(json.dumps(pool.state_dict()))
            (plain / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

        commit_s = best(commit)
        plain_commit_s = best(plain_commit)
        load_ckpt_s = best(lambda: run.load_checkpoint(0))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; files on {os.getcwd()}")
    print(f"fingerprint  {len(data.train)} {args.dataset} images: {fp_s:.3f} s = {fp_s / load_s:.2f}x loading "
          f"the data set ({load_s:.3f} s)")
    print(f"checkpoint   {args.backbone} model + EMA ({mb:.1f} MB): atomic {1e3 * ckpt_s:.1f} ms = "
          f"{ckpt_s / plain_ckpt_s:.2f}x torch.save ({1e3 * plain_ckpt_s:.1f} ms); verified load "
          f"{1e3 * load_ckpt_s:.1f} ms")
    print(f"commit       pool.json ({args.labels} labels) + metrics.jsonl (10 lines): {1e3 * commit_s:.1f} ms = "
          f"{commit_s / plain_commit_s:.2f}x plain writes ({1e3 * plain_commit_s:.2f} ms)")


if __name__ == "__main__":
    main()
