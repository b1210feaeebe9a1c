"""Curves and plots of finished rounds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ssal.errors import DataError


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The committed rounds of a run (a last line cut off by a crash while committing is not one)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise DataError(f"{path} line {i + 1} is not valid JSON; fix or remove that line") from None
    return rows


def write_curve(run_dir: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """``curve.csv`` and ``curve.png`` (n_labeled vs test_acc) from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    csv_path, png_path = run_dir / "curve.csv", run_dir / "curve.png"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "n_labeled", "test_acc"])
        for r in rows:
            w.writerow([r["round"], r["n_labeled"], f"{r['test_acc']:.6f}"])
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot([r["n_labeled"] for r in rows], [100 * r["test_acc"] for r in rows], marker="o")
    ax.set_xlabel("labeled samples")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or run_dir.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return csv_path, png_path
