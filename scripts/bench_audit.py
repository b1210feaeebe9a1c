"""How often the audit set's 95 % interval covers the test accuracy, over seeds and rounds (simulated).

Each seed runs the same small recipe with ``active.audit`` images; every round records the accuracy on
the audit images with its Wilson interval and the accuracy on the test split. The audit set is a random
sample of the pool, so its interval should cover the model's accuracy on the pool's distribution,
which the test split estimates too (with its own sampling noise, so the coverage of the test accuracy is
a little below the nominal 95 %).

    .venv/bin/python scripts/bench_audit.py [--dataset digits] [--seeds 20] [--audit 100] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from ssal.experiment import loop
from ssal.recipe import from_dict
from ssal.run.readers import read_metrics

PRESETS = {  # small schedules: the point is the interval, not the accuracy
    "digits": {"data": {"dataset": "digits", "pool_size": 1200, "test_size": 450},
               "train": {"steps": 60, "batch_size": 32}, "active": {"initial": 30, "budget": 30}},
    "fashion_mnist": {"data": {"dataset": "fashion_mnist", "pool_size": 6000, "test_size": 2000},
                      "train": {"steps": 150, "batch_size": 64}, "active": {"initial": 100, "budget": 100}},
}


def recipe(dataset: str, seed: int, audit: int, rounds: int, out: Path) -> dict:
    p = PRESETS[dataset]
    return {"seed": seed, "output_dir": str(out), **{k: dict(v) for k, v in p.items()},
            "model": {"backbone": "cnn_small"},
            "active": {**p["active"], "rounds": rounds, "audit": audit, "strategy": "margin"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits", choices=sorted(PRESETS))
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--audit", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.dataset}, audit {args.audit}, "
          f"{args.seeds} seeds x {args.rounds + 1} rounds")
    covered = total = 0
    widths, misses = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            cfg = from_dict(recipe(args.dataset, seed, args.audit, args.rounds, Path(tmp) / f"s{seed}"))
            run = loop.run(cfg, progress=False)
            for row in read_metrics(run):
                inside = row["audit_low"] <= row["test_acc"] <= row["audit_high"]
                covered += inside
                total += 1
                widths.append(row["audit_high"] - row["audit_low"])
                if not inside:
                    misses.append((seed, row["round"], row["test_acc"], row["audit_low"], row["audit_high"]))
    print(f"the interval covers the test accuracy in {covered} of {total} rounds ({100 * covered / total:.1f} %); "
          f"mean width {100 * sum(widths) / len(widths):.1f} points; {time.perf_counter() - t0:.0f} s")
    for seed, r, acc, lo, hi in misses:
        print(f"  miss: seed {seed} round {r}: test {100 * acc:.1f} % outside [{100 * lo:.1f}, {100 * hi:.1f}]")


if __name__ == "__main__":
    main()
