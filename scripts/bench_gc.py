"""What freezing the imported objects saves (``ssal.engine.runtime._freeze_the_imports``), against the
same runs without it, in one process.

accelerate's ``free_memory`` ends every fit with a full garbage collection, which walks every object
the process holds: ~460k once torch, timm and matplotlib are imported. The engine moves what exists
when it starts out of the collector's sight (``gc.freeze``), once per process. This script times

  collect   one full collection, before and after the freeze
  run       a tiny ``ssal run`` (digits, cnn_small, 2 rounds of 3 steps: what most tests run), in process

    .venv/bin/python scripts/bench_gc.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from ssal.cli import main as ssal_main
from ssal.engine import runtime
from ssal.experiment import (
    loop,  # noqa: F401  (what `ssal run` imports, before anything is timed)
    report,  # noqa: F401
)

RECIPE = {
    "seed": 0,
    "data": {"dataset": "digits", "pool_size": 160, "test_size": 60},
    "model": {"backbone": "cnn_small"},
    "train": {"method": "supervised", "steps": 3, "batch_size": 8, "eval_batch_size": 256},
    "active": {"initial": 20, "budget": 7, "rounds": 1, "strategy": "entropy", "subset": 60},
}


def collect_seconds(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tiny_runs(folder: Path, tag: str, repeats: int) -> float:
    times = []
    for i in range(repeats):
        path = folder / f"{tag}{i}.yaml"
        path.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(folder / f"{tag}{i}")}))
        t = time.perf_counter()
        assert ssal_main(["run", str(path), "--no-progress"]) == 0
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads {__import__('torch').get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runtime._frozen = True  # the reference: the engine leaves the collector as it is
        tiny_runs(folder, "warm", 1)
        objects = len(gc.get_objects())
        collect_before = collect_seconds(args.repeats)
        run_before = tiny_runs(folder, "plain", args.repeats)
        runtime._frozen = False  # the next engine freezes what exists
        run_after = tiny_runs(folder, "frozen", args.repeats)
        collect_after = collect_seconds(args.repeats)
    print(f"objects tracked before the freeze: {objects}")
    print(f"collect: {collect_before * 1e3:8.1f} ms -> {collect_after * 1e3:8.1f} ms")
    print(f"tiny run: {run_before:8.3f} s -> {run_after:8.3f} s  (ratio {run_after / run_before:.2f}, median of "
          f"{args.repeats})")


if __name__ == "__main__":
    main()
