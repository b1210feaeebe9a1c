"""The active-learning rounds: train, evaluate, select, label — and resume.

Round r trains on the labeled set, evaluates on the test split, then (for r < R) selects
``active.budget`` indices that the oracle labels for round r + 1. Every random choice of a round
is seeded from (recipe seed, round, purpose) alone, so a resumed run repeats exactly what an
uninterrupted one does. The run directory (:class:`ssal.rundir.RunDir`) owns the files, the lock
and the commit of a round; the selection stage (:mod:`ssal.select.stage`) owns an acquisition;
this module is the order of things.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssal import files
from ssal.data import ActivePool, load_dataset
from ssal.data.datasets import ImageDataset
from ssal.engine import Engine, FitResult, derive_seed
from ssal.errors import Interrupted
from ssal.faults import failpoint
from ssal.models import build_model
from ssal.oracle import SimulatedOracle
from ssal.pretrain.stage import check_cache_dir, pretrained_encoder
from ssal.recipe import validate_pool
from ssal.rundir import Restored, RunDir
from ssal.select import INITIAL_STRATEGIES, STRATEGIES
from ssal.select.signals import MC_SIGNALS
from ssal.select.stage import acquire, initial_set, round0_previous_model, uses_previous_model
from ssal.semi import OBJECTIVES


def resume_recipe(run_dir: str | os.PathLike, overrides: list[str] = ()) -> DictConfig:
    """The recipe to continue a run with (its recipe.yaml, checked against the run's identity)."""
    return RunDir(run_dir).resume_recipe(list(overrides))


@dataclass
class Parts:
    """What a run is made of, built (and so checked) before anything is written."""

    data: ImageDataset
    strategy: Any
    objective_cls: type
    initial_strategy: Any
    model_cfg: DictConfig
    oracle: SimulatedOracle

    @classmethod
    def build(cls, cfg: DictConfig) -> Parts:
        data = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir)
        validate_pool(cfg, len(data.train))
        strategy = STRATEGIES.get(cfg.active.strategy)(getattr(cfg.active, cfg.active.strategy, None))
        model_cfg = cfg.model
        if strategy.needs & MC_SIGNALS and cfg.model.drop_rate == 0:  # MC dropout needs a dropout to sample
            model_cfg = OmegaConf.merge(cfg.model, {"drop_rate": strategy.cfg.dropout})
        return cls(data, strategy, OBJECTIVES.get(cfg.train.method),
                   INITIAL_STRATEGIES.get(cfg.active.initial_strategy), model_cfg, SimulatedOracle(data.train.targets))


def run(cfg: DictConfig, *, resume: bool = False, force: bool = False, engine: Engine | None = None,
        progress: bool = True, use_cache: bool = True) -> Path:
    """Run (or resume) the active-learning loop of a validated recipe. Returns the run directory.

    Everything a user can get wrong is checked before anything is written, cheap checks (the output
    and cache folders) before the data set is loaded.
    """
    run_dir = RunDir(cfg.output_dir)
    if resume:
        run_dir.check_resumable()
    else:
        run_dir.check_new(force)
    check_cache_dir(cfg)
    parts = Parts.build(cfg)
    if resume:
        run_dir.check_pool(parts.data.fingerprint())
    engine = engine or Engine(cfg.train.mixed_precision, cfg.data.num_workers, progress=progress)
    run_dir.writer = engine.is_main
    notes = engine.guarded(run_dir.lock)
    try:
        for note in notes:
            engine.print(f"[yellow]note: {note}")
        if engine.is_main:
            parts.data.save_caches()  # the image check's results, now that the run goes ahead
        _Rounds(cfg, parts, engine, run_dir, use_cache).run(resume, force)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; the committed rounds are kept: continue with 'ssal run --resume "
                          f"{run_dir.path}'") from None
    except files.StorageError as e:
        raise files.StorageError(f"{e}, then continue with 'ssal run --resume {run_dir.path}'") from None
    finally:
        run_dir.unlock()
    return run_dir.path


class _Rounds:
    """One run's rounds over its run directory."""

    def __init__(self, cfg: DictConfig, parts: Parts, engine: Engine, run_dir: RunDir, use_cache: bool):
        self.cfg, self.parts, self.engine, self.run_dir, self.use_cache = cfg, parts, engine, run_dir, use_cache
        self.R = cfg.active.rounds
        self.encoder: dict[str, torch.Tensor] | None = None

    def note(self, text: str) -> None:
        self.engine.print(f"[yellow]note: {text}")

    # ------------------------------------------------------------------ models
    def fresh_model(self) -> torch.nn.Module:
        torch.manual_seed(derive_seed(self.cfg.seed, "init"))  # the same initial weights every round
        model = build_model(self.parts.model_cfg, self.parts.data)  # a fresh head every round
        if self.encoder is not None:
            model.backbone.load_state_dict(self.encoder)
        return model

    def restore_fit(self, ckpt: dict) -> FitResult:
        """A trained round as its checkpoint holds it: the model, its EMA and the objective's modules."""
        model = self.fresh_model()
        model.load_state_dict(ckpt["model"])
        objective = self.parts.objective_cls(model, self.cfg.train)
        objective.load_extra_state(ckpt["objective"])
        objective.eval()
        ema = None
        if "ema" in ckpt:
            ema = self.fresh_model()
            ema.load_state_dict(ckpt["ema"])
            ema.eval()
        return FitResult(model, ema if ema is not None else model, 0.0, {}, ema, objective, ckpt["objective"])

    @staticmethod
    def checkpoint(fit: FitResult) -> dict:
        state = {"model": fit.model.state_dict(), "objective": fit.objective_state}
        if fit.ema is not None:
            state["ema"] = fit.ema.state_dict()
        return state

    # ------------------------------------------------------------------ start: a new run or a resumed one
    def checkpoints_needed(self, start: int, pending_selection: bool) -> list[int]:
        """The rounds whose checkpoints continuing at round ``start`` reads."""
        if start == 0 or start > self.R:
            return []
        rounds = set()
        if not self.cfg.train.reinit or uses_previous_model(self.parts.strategy) or pending_selection:
            rounds.add(start - 1)  # to continue training from, to compare with, or to select with
        if pending_selection and uses_previous_model(self.parts.strategy) and start > 1:
            rounds.add(start - 2)  # what the pending selection compares with
        return sorted(rounds)

    def start(self, resume: bool, force: bool) -> Restored:
        eng, rd = self.engine, self.run_dir
        if not resume:
            for note in eng.guarded(lambda: rd.create(self.cfg, self.parts.data.fingerprint(), force)):
                self.note(note)
            return Restored([], None)
        for change in eng.guarded(lambda: rd.update_recipe(self.cfg)):
            self.note(f"recipe changed on resume: {change}")
        state = rd.restore(self.parts.oracle.query, len(self.parts.data.train), self.checkpoints_needed)
        for note in state.notes:
            self.note(note)
        return state

    # ------------------------------------------------------------------ the rounds
    def run(self, resume: bool, force: bool) -> None:
        cfg, eng, rd, parts = self.cfg, self.engine, self.run_dir, self.parts
        state = self.start(resume, force)
        rows, pool = list(state.rows), state.pool
        if resume and state.start > self.R:
            eng.print(f"[green]{rd.path} is complete ({len(rows)} rounds); nothing to do")
            return
        rd.commit(rows)  # without the lines of rounds that run again
        self.encoder = pretrained_encoder(cfg, parts.data, eng, use_cache=self.use_cache, run_dir=rd)
        if pool is None:
            pool = self.buy_initial_set()
        if resume:
            eng.print(f"resuming {rd.path} at round {state.start} ({pool.n_labeled} labels)")

        warm, prev_model = self.continue_from(state, pool)

        for r in range(state.start, self.R + 1):
            fit = self.train(r, pool, warm)
            t_eval = time.perf_counter()
            metrics = eng.evaluate(fit.eval_model, parts.data.test, cfg.train.eval_batch_size,
                                   desc=f"round {r} evaluate")
            eval_s = time.perf_counter() - t_eval
            rd.save_checkpoint(r, self.checkpoint(fit))
            labeled = pool.n_labeled
            select_s = 0.0
            if r < self.R:
                if r == 0 and uses_previous_model(parts.strategy):
                    prev_model = round0_previous_model(fit)
                select_s = self.buy(r, fit, pool, prev_model).seconds
            rows.append({"round": r, "n_labeled": labeled, **metrics, "train_s": round(fit.seconds, 3),
                         "train_data_s": round(fit.data_seconds, 3),  # of train_s, waiting for batches
                         "select_s": round(select_s, 3), "eval_s": round(eval_s, 3),
                         **{f"train_{k}": round(v, 5) for k, v in fit.logs.items()},
                         "pool": {"labeled": pool.n_labeled, "digest": files.json_digest(pool.state_dict())}})
            rd.commit(rows)  # the round is done once this returns
            rd.prune_checkpoints(r)
            rd.write_curve(cfg.name)
            eng.print(f"[bold]round {r}[/bold]: {labeled} labels, test acc {100 * metrics['test_acc']:.2f} %, "
                      f"train {fit.seconds:.1f} s, select {select_s:.1f} s")
            failpoint("round.end")
            if not cfg.train.reinit:  # the next round continues from these weights (and teacher)
                warm = ({k: v.detach().clone() for k, v in fit.model.state_dict().items()},
                        {k: v.detach().clone() for k, v in fit.objective_state.items()})
            if uses_previous_model(parts.strategy):  # the next round compares with this one
                prev_model = fit.eval_model
            eng.accelerator.wait_for_everyone()
        eng.print(f"done: {rd.path}/curve.png")

    def continue_from(self, state: Restored, pool: ActivePool) -> tuple[tuple[dict, dict] | None, Any]:
        """What round ``state.start`` continues from (weights and objective state, with ``train.reinit:
        false``) and what its selection compares with (the previous round's model), read from the last
        round's checkpoint; first, when active.rounds grew, that round's missing batch is bought."""
        warm, prev_model = None, None
        last = state.checkpoints.get(state.start - 1)
        if last is None:
            return warm, prev_model
        fit = self.restore_fit(last)
        compares = uses_previous_model(self.parts.strategy)
        if state.pending_selection:
            prev = None
            if compares:
                prev = (round0_previous_model(fit) if state.start == 1 else
                        self.restore_fit(state.checkpoints[state.start - 2]).eval_model)
            self.engine.print(f"active.rounds is now {self.R}: round {state.start - 1} selects its batch first")
            self.buy(state.start - 1, fit, pool, prev)
        if not self.cfg.train.reinit:
            warm = (fit.model.state_dict(), fit.objective_state)
        if compares:
            prev_model = fit.eval_model
        return warm, prev_model

    def buy_initial_set(self) -> ActivePool:
        parts, eng = self.parts, self.engine
        pool = ActivePool(len(parts.data.train))

        def embed(indices: torch.Tensor) -> torch.Tensor:  # the pool's features, for a cold-start strategy
            return eng.predict(self.fresh_model(), parts.data.train, indices, ("features",),
                               self.cfg.train.eval_batch_size, desc="initial features")["features"]

        acq = initial_set(eng, self.cfg, parts.initial_strategy, pool.unlabeled_indices, parts.data.train.targets,
                          embed)
        pool.label(acq.indices, parts.oracle.query(acq.indices), 0)
        self.run_dir.save_selection(acq.record())
        self.run_dir.save_pool(pool)
        return pool

    def buy(self, r: int, fit: FitResult, pool: ActivePool, prev_model: torch.nn.Module | None):
        """Round ``r``'s acquisition, labeled by the oracle for round r + 1 and recorded."""
        acq = acquire(self.engine, self.cfg, self.parts.strategy, self.parts.data, fit, pool, prev_model, r)
        pool.label(acq.indices, self.parts.oracle.query(acq.indices), r + 1)
        self.run_dir.save_selection(acq.record())
        self.run_dir.save_pool(pool)
        return acq

    def train(self, r: int, pool: ActivePool, warm: tuple[dict, dict] | None) -> FitResult:
        cfg, parts = self.cfg, self.parts
        model = self.fresh_model()
        objective_state = None
        if warm is not None:
            model.load_state_dict(warm[0])
            objective_state = warm[1]
        labeled, unlabeled = pool.labeled_indices, pool.unlabeled_indices
        return self.engine.fit(model, parts.objective_cls, cfg.train, parts.data.train, labeled, pool.labels,
                               unlabeled, hflip=parts.data.hflip, seed=derive_seed(cfg.seed, "train", r),
                               unlabeled_labels=parts.oracle.hidden(unlabeled), objective_state=objective_state,
                               desc=f"round {r} train ({len(labeled)} labels)")
