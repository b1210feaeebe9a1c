"""The active-learning rounds: train, evaluate, select, label; checkpoints and resume.

Round r trains on the labeled set, evaluates on the test split, then (for r < R) selects
``active.budget`` indices that the oracle labels for round r + 1. Every random choice of a round
is seeded from (recipe seed, round, purpose) alone, so a resumed run repeats exactly what an
uninterrupted one does. A round is committed by appending its line to ``metrics.jsonl`` (the
last write of the round); resume continues after the last committed round.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ssal.data import ActivePool, load_dataset
from ssal.data.pool import atomic_write_text
from ssal.engine import Engine, derive_seed
from ssal.errors import ConfigError
from ssal.models import build_model
from ssal.oracle import SimulatedOracle
from ssal.pretrain.stage import pretrained_encoder
from ssal.recipe import load_recipe, to_yaml, validate_pool
from ssal.report import read_metrics, write_curve
from ssal.select import INITIAL_STRATEGIES, STRATEGIES
from ssal.select.signals import MC_SIGNALS, SelectionContext, candidates, check_selection, compute_signals
from ssal.semi import OBJECTIVES


def _generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def _ckpt(run_dir: Path, r: int) -> Path:
    return run_dir / "checkpoints" / f"round_{r:02d}.pt"


def prepare_run_dir(cfg: DictConfig, force: bool) -> Path:
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir '{out}' is a file; choose another output_dir=...")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"output_dir '{out}' already holds a run; continue it with 'ssal run --resume {out}', "
                              "choose another output_dir=..., or pass --force to overwrite it")
        shutil.rmtree(out)
    return out


def resume_recipe(run_dir: str | os.PathLike) -> DictConfig:
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise ConfigError(f"'{run_dir}' is not a run directory (no recipe.yaml); give the output_dir of a run")
    return load_recipe(run_dir / "recipe.yaml", [f"output_dir={run_dir}"])


def run(cfg: DictConfig, *, resume: bool = False, force: bool = False, engine: Engine | None = None,
        progress: bool = True, use_cache: bool = True) -> Path:
    """Run (or resume) the active-learning loop of a validated recipe. Returns the run directory."""
    # --- everything that can fail because of the user happens before anything is written
    data = load_dataset(cfg.data, seed=cfg.seed)
    validate_pool(cfg, len(data.train))
    strategy = STRATEGIES.get(cfg.active.strategy)(getattr(cfg.active, cfg.active.strategy, None))
    objective_cls = OBJECTIVES.get(cfg.train.method)
    initial_strategy = INITIAL_STRATEGIES.get(cfg.active.initial_strategy)
    model_cfg = cfg.model
    if strategy.needs & MC_SIGNALS and cfg.model.drop_rate == 0:  # MC dropout needs a dropout to sample
        model_cfg = OmegaConf.merge(cfg.model, {"drop_rate": strategy.cfg.dropout})
    out = Path(cfg.output_dir) if resume else prepare_run_dir(cfg, force)
    engine = engine or Engine(cfg.train.mixed_precision, cfg.data.num_workers, progress=progress)
    main = engine.is_main

    done = read_metrics(out) if resume else []
    R = cfg.active.rounds
    if resume and len(done) >= R + 1:
        engine.print(f"[green]{out} is complete ({len(done)} rounds); nothing to do")
        return out
    if main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "recipe.yaml", to_yaml(cfg))
        if not resume:
            (out / "metrics.jsonl").write_text("")
        else:  # only the committed rounds (drops a line cut off by a crash while it was written)
            atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in done))
    engine.accelerator.wait_for_everyone()

    oracle = SimulatedOracle(data.train.targets)
    pool = ActivePool(len(data.train))
    start = len(done)
    if resume and (out / "pool.json").is_file():
        pool = ActivePool.load(out / "pool.json")
        pool.truncate(start)  # drop labels bought by a round that did not commit
    encoder = pretrained_encoder(cfg, data, engine, use_cache=use_cache, run_dir=out if main else None)

    def fresh_model() -> torch.nn.Module:
        torch.manual_seed(derive_seed(cfg.seed, "init"))  # the same initial weights every round
        model = build_model(model_cfg, data)  # a fresh head every round
        if encoder is not None:
            model.backbone.load_state_dict(encoder)
        return model

    if pool.n_labeled == 0:
        def embed(indices: torch.Tensor) -> torch.Tensor:  # the pool's features, for a cold-start strategy
            return engine.predict(fresh_model(), data.train, indices, ("features",), cfg.train.eval_batch_size,
                                  desc="initial features")["features"]

        first = initial_strategy(pool.unlabeled_indices, data.train.targets, cfg.active.initial,
                                 _generator(cfg.seed, "initial"), embed=embed)
        pool.label(first, oracle.query(first), 0)
        if main:
            pool.save(out / "pool.json")
    if resume:
        engine.print(f"resuming {out} at round {start} ({pool.n_labeled} labels)")

    model_state = objective_state = prev_model = None
    if start > 0 and (not cfg.train.reinit or "prev_probs" in strategy.needs):
        last = torch.load(_ckpt(out, start - 1), map_location="cpu", weights_only=True)
        if not cfg.train.reinit:
            model_state, objective_state = last["model"], last.get("objective")
        if "prev_probs" in strategy.needs:  # the previous round's evaluation model
            prev_model = fresh_model()
            prev_model.load_state_dict(last["ema"] if "ema" in last else last["model"])

    for r in range(start, R + 1):
        model = fresh_model()
        if model_state is not None:
            model.load_state_dict(model_state)
        labeled, unlabeled = pool.labeled_indices, pool.unlabeled_indices
        fit = engine.fit(model, objective_cls, cfg.train, data.train, labeled, pool.labels, unlabeled,
                         hflip=data.hflip, seed=derive_seed(cfg.seed, "train", r),
                         unlabeled_labels=oracle.hidden(unlabeled), objective_state=objective_state,
                         desc=f"round {r} train ({len(labeled)} labels)")
        t_eval = time.perf_counter()
        metrics = engine.evaluate(fit.eval_model, data.test, cfg.train.eval_batch_size, desc=f"round {r} evaluate")
        eval_s = time.perf_counter() - t_eval
        if not cfg.train.reinit:  # the next round continues from these weights (and teacher)
            model_state = {k: v.detach().clone() for k, v in fit.model.state_dict().items()}
            objective_state = {k: v.detach().clone() for k, v in fit.objective_state.items()}
        if main:
            ckpt = {"round": r, "model": fit.model.state_dict(), "objective": fit.objective_state}
            if fit.ema is not None:
                ckpt["ema"] = fit.ema.state_dict()
            torch.save(ckpt, _ckpt(out, r))

        select_s = 0.0
        if r < R:
            t_sel = time.perf_counter()
            cands = candidates(pool.unlabeled_indices, cfg.active.subset, _generator(cfg.seed, "subset", r))
            if r == 0 and "prev_probs" in strategy.needs:  # no previous round: the EMA of this one
                prev_model = fit.objective.teacher_model() if fit.ema is None else fit.ema
                if prev_model is fit.eval_model:  # train.ema evaluates with the EMA: compare it with the weights
                    prev_model = fit.model
            ctx = SelectionContext(fit.eval_model, labeled, pool.labels, fit.objective, prev_model, data.hflip,
                                   derive_seed(cfg.seed, "signals", r), cfg.train.eval_batch_size)
            signals = compute_signals(engine, strategy, ctx, data.train, cands)
            picked = strategy.select(signals, cfg.active.budget, _generator(cfg.seed, "select", r))
            picked = check_selection(picked, cands, cfg.active.budget, cfg.active.strategy)
            scores = strategy.scores(signals)
            pool.label(picked, oracle.query(picked), r + 1)
            select_s = time.perf_counter() - t_sel
            if main:
                rdir = out / "rounds" / f"r{r:02d}"
                rdir.mkdir(parents=True, exist_ok=True)
                pos = torch.searchsorted(cands, picked) if scores is not None else None
                atomic_write_text(rdir / "selected.json", json.dumps({
                    "round": r, "strategy": cfg.active.strategy, "indices": picked.tolist(),
                    "scores": None if scores is None else scores[pos].tolist()}))
                pool.save(out / "pool.json")

        if "prev_probs" in strategy.needs:  # next round compares with this one
            prev_model = fit.eval_model
        line = {"round": r, "n_labeled": len(labeled), **metrics, "train_s": round(fit.seconds, 3),
                "train_data_s": round(fit.data_seconds, 3),  # of train_s, waiting for batches
                "select_s": round(select_s, 3), "eval_s": round(eval_s, 3),
                **{f"train_{k}": round(v, 5) for k, v in fit.logs.items()}}
        if main:
            with open(out / "metrics.jsonl", "a") as f:  # the commit point of the round
                f.write(json.dumps(line) + "\n")
                f.flush()
                os.fsync(f.fileno())
            for old in range(r):
                _ckpt(out, old).unlink(missing_ok=True)
            write_curve(out, title=cfg.name)
        engine.print(f"[bold]round {r}[/bold]: {len(labeled)} labels, test acc {100 * metrics['test_acc']:.2f} %, "
                     f"train {fit.seconds:.1f} s, select {select_s:.1f} s")
        engine.accelerator.wait_for_everyone()
    engine.print(f"done: {out}/curve.png")
    return out
