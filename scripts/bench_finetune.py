"""Retrain or fine-tune each round? The paired differences of a comparison made with
recipes/compare/fashion_mnist_finetune.yaml: for each method, its ``/finetune`` cells (train.reinit false,
a shorter schedule for continuing rounds) against its ``/retrain`` cells of the same seed. ``--arms A B``
pairs any two variants named ``method/A`` and ``method/B`` (e.g. ``strict ahead`` for
recipes/compare/fashion_mnist_lookahead.yaml).

    ssal compare recipes/compare/fashion_mnist_finetune.yaml --jobs 2 --out runs/finetune
    python scripts/bench_finetune.py runs/finetune
    python scripts/bench_finetune.py runs/lookahead --arms strict ahead

Prints, per method: test accuracy per labeled-set size (retrain, fine-tune, paired difference with its
95 % t interval over seeds), AUBC, and the training seconds of the continuing rounds (rounds >= 1)
with their ratio. Both arms of a seed ran under the same conditions (the comparison's --jobs), so
their times compare; across machines they do not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ssal.experiment.report import aubc, t_interval


def cells(out: Path, arms: tuple[str, str]) -> dict[tuple[str, str, int], list[dict]]:
    """(method, schedule, seed) -> the cell's metrics rows."""
    found = {}
    for cell in sorted((out / "cells").iterdir()):
        name, _, seed = cell.name.split("__")  # <method>_<schedule>__<strategy>__seed<N> (the method's / as _)
        method, _, schedule = name.rpartition("_")
        if schedule not in arms or not (cell / "metrics.jsonl").is_file():
            continue
        rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines() if line.strip()]
        found[(method, schedule, int(seed.removeprefix("seed")))] = rows
    return found


def paired(a: list[float], b: list[float]) -> str:
    m, lo, hi = t_interval([y - x for x, y in zip(a, b, strict=True)])
    return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the comparison's output folder")
    ap.add_argument("--arms", nargs=2, default=("retrain", "finetune"), metavar=("A", "B"),
                    help="the two variants to pair, B - A (default: retrain finetune)")
    args = ap.parse_args(argv)
    first, second = args.arms
    found = cells(args.out, (first, second))
    methods = sorted({m for m, _, _ in found})
    for method in methods:
        seeds = sorted(s for m, sched, s in found if m == method and sched == first
                       and (m, second, s) in found and len(found[(m, second, s)]) == len(found[(m, sched, s)]))
        if not seeds:
            continue
        re = [found[(method, first, s)] for s in seeds]
        ft = [found[(method, second, s)] for s in seeds]
        print(f"\n## {method}: {first} vs {second}, seeds {seeds} (paired {second} - {first}, 95 % t interval)\n")
        print(f"| labels | {first} | {second} | difference |")
        print("|---|---|---|---|")
        for k, row in enumerate(re[0]):
            a = [100 * rows[k]["test_acc"] for rows in re]
            b = [100 * rows[k]["test_acc"] for rows in ft]
            print(f"| {row['n_labeled']} | {sum(a) / len(a):.2f} | {sum(b) / len(b):.2f} | {paired(a, b)} |")
        a = [100 * aubc([r["n_labeled"] for r in rows], [r["test_acc"] for r in rows]) for rows in re]
        b = [100 * aubc([r["n_labeled"] for r in rows], [r["test_acc"] for r in rows]) for rows in ft]
        print(f"| AUBC | {sum(a) / len(a):.2f} | {sum(b) / len(b):.2f} | {paired(a, b)} |")
        ta = [sum(r["train_s"] for r in rows[1:]) for rows in re]
        tb = [sum(r["train_s"] for r in rows[1:]) for rows in ft]
        rounds = len(re[0]) - 1
        print(f"\ntraining of the {rounds} continuing rounds: {first} {sum(ta) / len(ta):.0f} s, {second} "
              f"{sum(tb) / len(tb):.0f} s (mean over seeds), ratio {sum(tb) / sum(ta):.2f}; per round "
              f"{sum(ta) / len(ta) / rounds:.1f} s vs {sum(tb) / len(tb) / rounds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
