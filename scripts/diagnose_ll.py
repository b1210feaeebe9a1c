"""Why a learning-loss run selects what it selects: how well its loss-prediction module ranks the
true losses, and which classes its picks fall in (a simulated run, whose pool labels are known).

    .venv/bin/python scripts/diagnose_ll.py RUN_DIR [RUN_DIR ...] [--round R]

For each run: the Spearman correlation, on the test split, between the module's predicted loss and
the cross-entropy of the model it selects with (the EMA model when train.ema > 0), at the round's
checkpoint (the last kept one by default); then the class counts of every round's picks.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from ssal.engine import Engine
from ssal.errors import SsalError
from ssal.experiment.loop import Parts, Rounds
from ssal.files import Damaged
from ssal.recipe import resume_recipe
from ssal.run.store import RunDir


def diagnose(run: Path, round_: int | None) -> None:
    cfg = resume_recipe(run)
    if cfg.active.strategy != "ll":
        raise SsalError(f"{run} is an active.strategy={cfg.active.strategy} run; give an active.strategy=ll run")
    parts = Parts.build(cfg)
    if not (parts.data.has_test and parts.data.has_truth):
        raise SsalError(f"{run} has no test split or no pool labels to compare with: give a simulated run")
    engine = Engine(cfg.train.mixed_precision, 0, progress=False)
    run_dir = RunDir(run, writer=False)
    kept = sorted(int(p.stem.removeprefix("round_")) for p in (run / "checkpoints").glob("round_*.pt"))
    if not kept or (round_ is not None and round_ not in kept):
        raise SsalError(f"{run} keeps the checkpoints of rounds {kept or 'none'}: pick --round among them")
    r = kept[-1] if round_ is None else round_
    fit = Rounds(cfg, parts, engine, run_dir, True).trainer.restore(run_dir.load_checkpoint(r))
    module, model, test = fit.objective.auxiliary, fit.eval_model, parts.data.test

    def fn(x: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        with module.watching(model, len(x)):
            logits = model(x)
        return {"predicted": module.predict().float(),
                "loss": F.cross_entropy(logits.float(), test.targets[index], reduction="none")}

    with torch.no_grad():
        got = engine.infer(fn, [model, module], test, torch.arange(len(test)), 256, None)
    rho = spearmanr(got["predicted"].numpy(), got["loss"].numpy()).statistic
    print(f"{run.name}: round {r}, predicted vs true loss on {len(test)} test images: Spearman {rho:+.3f}")
    counts: collections.Counter = collections.Counter()
    for r in range(cfg.active.rounds):
        if (run_dir.round_dir(r) / "selected.json").exists():  # read (and verified) by the run directory
            counts.update(parts.data.train.targets[torch.tensor(run_dir.read_selection(r))].tolist())
    print(f"{run.name}: picks per class {[counts[c] for c in range(parts.data.num_classes)]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--round", type=int, default=None, help="the checkpoint's round (default: the last kept)")
    args = p.parse_args()
    try:
        for run in args.runs:
            diagnose(run, args.round)
    except (SsalError, Damaged) as e:
        print(f"diagnose_ll: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
