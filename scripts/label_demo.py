"""The human labeling loop on real images, with a scripted annotator, against the simulated oracle.

Writes Fashion-MNIST images as PNG files in class folders (``train/<class>/``, ``test/<class>/``: the
simulated oracle needs the labels; the human one never reads them), runs a recipe with
``active.oracle: human`` through ``ssal run`` / ``ssal label import`` /
``ssal run --resume`` (the annotator answers each queries.csv from the hidden labels), runs the same
recipe with the simulated oracle, and prints the time of each command, the accuracies, and whether
the two runs made the same selections. ``--sheet PATH`` copies round 0's contact sheet there.

    .venv/bin/python scripts/label_demo.py --out /tmp/label_demo [--sheet docs/img/contact_sheet.png]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ssal.data.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN, _find_idx, read_idx

CLASSES = [c.replace("/", "-") for c in FASHION_MNIST_CLASSES]  # folder names cannot hold '/'


def write_images(out: Path, pool: int, test: int) -> dict[str, str]:
    root = Path(FASHION_MNIST_DEBIAN)
    truth = {}
    for split, prefix, n in (("train", "train", pool), ("test", "t10k", test)):
        images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))[:n]
        labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))[:n]
        for i, (im, y) in enumerate(zip(images, labels, strict=True)):
            rel = f"{split}/{CLASSES[y]}/img{i:05d}.png"
            path = out / "data" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(im)).save(path)
            truth[rel] = CLASSES[y]
    return truth


def ssal(*args: str) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ssal", *args, *(["--no-progress"] if args[0] == "run" else [])],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"ssal {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/ssal_label_demo"))
    ap.add_argument("--pool", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sheet", type=Path, default=None)
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    truth = write_images(args.out, args.pool, 500)
    recipe = {
        "seed": 0, "cache_dir": str(args.out / "cache"),
        "data": {"dataset": "imagefolder", "root": str(args.out / "data"), "image_size": 28, "channels": 1,
                 "hflip": True},
        "model": {"backbone": "cnn_small"},
        "train": {"method": "supervised", "steps": 300, "batch_size": 32},
        "active": {"oracle": "human", "initial": 50, "budget": 50, "rounds": args.rounds,
                   "initial_strategy": "random", "strategy": "margin"},
    }
    path = args.out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    human, sim = args.out / "human", args.out / "simulated"
    times = {"run (stops at the first batch)": ssal("run", str(path), f"output_dir={human}")}
    for k in range(args.rounds + 1):
        folder = "initial" if k == 0 else f"r{k - 1:02d}"
        queries = human / "rounds" / folder / "queries.csv"
        rows = list(csv.DictReader(queries.open()))
        answers = args.out / f"answers_{folder}.csv"
        with answers.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows([r["path"], truth[r["path"]]] for r in rows)
        times[f"label import ({folder}, {len(rows)} answers)"] = ssal("label", "import", str(human), str(answers))
        times[f"run --resume (after {folder})"] = ssal("run", "--resume", str(human))
    times["simulated run (all rounds)"] = ssal("run", str(path), f"output_dir={sim}", "active.oracle=simulated")
    if args.sheet is not None:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(human / "rounds" / "r00" / "queries.png", args.sheet)

    def selections(run: Path) -> dict[str, list[int]]:
        return {p.parent.name: json.loads(p.read_text())["indices"] for p in sorted(run.glob("rounds/*/selected.json"))}

    same = selections(human) == selections(sim)
    pool_same = json.loads((human / "pool.json").read_text())["labeled"] == \
        json.loads((sim / "pool.json").read_text())["labeled"]
    print(f"{args.pool} pool images, 500 test images, {args.rounds} rounds of 50")
    for what, seconds in times.items():
        print(f"  {what:45s} {seconds:6.1f} s")
    for run in (human, sim):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        accs = [f"{100 * json.loads(line)['test_acc']:.1f}" for line in lines]
        print(f"  {run.name:10s} test acc per round: {', '.join(accs)} %")
    print(f"same selections: {same}, same pool: {pool_same}")
    if not (same and pool_same):
        sys.exit(1)


if __name__ == "__main__":
    main()
