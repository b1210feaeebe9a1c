"""The active-learning rounds: train -> evaluate -> record -> select -> label, and resume.

Round r trains on the labeled set, evaluates on the test split, then (for r < R) selects
``active.budget`` indices that the oracle labels for round r + 1. Every random choice of a round
is seeded from (recipe seed, round, purpose) alone, so a resumed run repeats exactly what an
uninterrupted one does. The parts each own a step: the round trainer (:mod:`ssal.experiment.trainer`)
the fitted model and its checkpoint, the run directory (:class:`ssal.run.store.RunDir`) the files, the
lock and the commit of a round, the selection stage (:mod:`ssal.select.stage`) an acquisition, the
oracle (:mod:`ssal.label.oracles`) the answers and its queries; this module is the order of things.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssal import files
from ssal.data import ActivePool, load_dataset
from ssal.data.datasets import ImageDataset
from ssal.data.pool import SKIP, draw_audit
from ssal.engine import Engine, FitResult
from ssal.errors import ConfigError, Interrupted, SsalError
from ssal.experiment.pretraining import check_cache_dir, pretrained_encoder
from ssal.experiment.report import curve_files, wilson_interval
from ssal.experiment.sizing import NextBatch
from ssal.experiment.trainer import Carry, RoundTrainer
from ssal.faults import failpoint
from ssal.label.oracles import Oracle, create_oracle
from ssal.label.stopping import is_complete, stability, stops
from ssal.models import create_backbone, initial_weights
from ssal.recipe import validate_pool
from ssal.run.outputs import check_run_place, data_folders
from ssal.run.readers import measured
from ssal.run.store import Restored, RunDir
from ssal.select import INITIAL_STRATEGIES, ceal, create_strategy
from ssal.select.signals import MCDropout, candidates
from ssal.select.stage import Acquisition, acquire, generator, initial_set
from ssal.semi import OBJECTIVES

POOL_SAMPLE = 2048  # unlabeled images whose predictions describe a round without a test set (seeded)


@dataclass
class Parts:
    """What a run is made of, built (and so checked) before anything is written."""

    data: ImageDataset
    strategy: Any
    objective_cls: type
    initial_strategy: Any
    model_cfg: DictConfig
    oracle: Oracle
    audit: torch.Tensor  # the pool indices held out to measure accuracy (active.audit of them, seeded)
    stop_set: torch.Tensor  # the pool indices whose predictions are compared round to round (seeded)

    @classmethod
    def build(cls, cfg: DictConfig) -> Parts:
        data = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir)
        validate_pool(cfg, len(data.train), 0 if data.seed_labels is None else len(data.seed_labels[0]))
        strategy = create_strategy(cfg.active)
        model_cfg = cfg.model
        mc = [r for r in strategy.needs if isinstance(r, MCDropout)]
        if mc and cfg.model.drop_rate == 0:  # MC dropout needs a dropout to sample: train with the strategy's
            model_cfg = OmegaConf.merge(cfg.model, {"drop_rate": mc[0].dropout})
        strategy.check_model(create_backbone(cfg.model.backbone, data.channels, data.image_size[0]), data.num_classes)
        if cfg.model.pretrained or cfg.model.checkpoint is not None:  # load (and check) the weights now
            initial_weights(cfg.model.backbone, bool(cfg.model.pretrained), cfg.model.checkpoint, data.channels,
                            data.image_size[0])
        seeded = None if data.seed_labels is None else data.seed_labels[0]
        audit = draw_audit(len(data.train), cfg.active.audit, generator(cfg.seed, "audit"), seeded)
        stop_set = draw_audit(len(data.train), min(cfg.active.stop_set, len(data.train)),
                              generator(cfg.seed, "stop set"))
        return cls(data, strategy, OBJECTIVES.get(cfg.train.method),
                   INITIAL_STRATEGIES.get(cfg.active.initial_strategy), model_cfg, create_oracle(cfg, data), audit,
                   stop_set)

    def new_pool(self) -> ActivePool:
        """The pool before any acquisition: its audit set, and the seed labels of ``data.labels`` (round 0),
        if any."""
        pool = ActivePool(len(self.data.train), self.audit)
        if self.data.seed_labels is not None:
            pool.label(*self.data.seed_labels, 0)
        return pool


def run(cfg: DictConfig, *, resume: bool = False, force: bool = False, engine: Engine | None = None,
        progress: bool = True, use_cache: bool = True) -> Path:
    """Run (or resume) the active-learning loop of a validated recipe. Returns the run directory.

    Everything a user can get wrong is checked before anything is written, cheap checks (the output
    and cache folders) before the data set is loaded.
    """
    engine = engine or Engine(cfg.train.mixed_precision, cfg.data.num_workers, progress=progress)
    run_dir = RunDir(cfg.output_dir, writer=engine.is_main)
    # the main process alone checks (and later locks, creates or --force replaces) the run directory;
    # the others wait for its verdict, so none reads the folder while it is being replaced
    engine.guarded(lambda: _check_start(run_dir, cfg, resume, force) if engine.is_main else None)
    engine.announce(batch_sizes(cfg))  # and checks that the batches divide
    parts = Parts.build(cfg)
    run_dir.names = parts.data.names()
    if parts.data.train.files() is not None:  # a label is for an image's content, not only its path
        run_dir.contents = parts.data.train.digests
    if resume:
        engine.guarded(lambda: (run_dir.check_pool(parts.data.fingerprint()), run_dir.check_contents())
                       if engine.is_main else None)
    notes = engine.guarded(run_dir.lock)
    clock = NextBatch(OmegaConf.to_container(cfg), len(parts.data.train), run_dir.write_progress)
    if parts.oracle.asks_people:  # the labeling page shows what runs (progress.json, main process only)
        engine.on_progress = clock
    try:
        for note in [*parts.data.notes, *notes]:
            engine.print(f"[yellow]note: {note}")
        if engine.is_main:
            parts.data.save_caches()  # the image check's results, now that the run goes ahead
        Rounds(cfg, parts, engine, run_dir, use_cache, clock).run(resume, force)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted(run_dir)) from None
    except files.StorageError as e:
        raise files.StorageError(f"{e}, then continue with 'ssal run --resume {run_dir.path}'") from None
    finally:
        engine.on_progress = None
        run_dir.clear_progress()
        run_dir.unlock()
    return run_dir.path


def _interrupted(run_dir: RunDir) -> str:
    """What an interrupted run keeps, and how to go on."""
    try:
        rounds = len(run_dir.committed())
    except SsalError:  # damaged: --resume says what it finds
        rounds = None
    resume = f"'ssal run --resume {run_dir.path}'"
    if rounds == 0:
        return f"interrupted before round 0 was committed; {resume} starts it again (answers given so far are kept)"
    if rounds is None:
        kept = "the committed rounds are kept"
    else:
        kept = f"{'round 0' if rounds == 1 else f'rounds 0-{rounds - 1}'} committed and kept"
    return f"interrupted; {kept}: continue with {resume}"


def _check_start(run_dir: RunDir, cfg: DictConfig, resume: bool, force: bool) -> None:
    if resume:
        run_dir.check_resumable()
    else:
        run_dir.check_new(force)
    check_run_place(cfg.output_dir, data_folders(OmegaConf.to_container(cfg)))
    check_cache_dir(cfg)


def batch_sizes(cfg: DictConfig) -> dict[str, int]:
    """The global batches of a run's optimizer steps (recipe key -> samples per step)."""
    sizes = {"train.batch_size": cfg.train.batch_size}
    if cfg.pretrain.method != "none":
        sizes["pretrain.batch_size"] = cfg.pretrain.batch_size
    return sizes


class Rounds:
    """One run's rounds over its run directory."""

    def __init__(self, cfg: DictConfig, parts: Parts, engine: Engine, run_dir: RunDir, use_cache: bool,
                 clock: NextBatch | None = None):
        self.cfg, self.parts, self.engine, self.run_dir, self.use_cache = cfg, parts, engine, run_dir, use_cache
        # when the person's next batch comes (told on the page)
        self.clock = clock or NextBatch(OmegaConf.to_container(cfg), len(parts.data.train))
        self.R = cfg.active.rounds
        self.trainer = RoundTrainer(cfg, parts.data, parts.model_cfg, parts.objective_cls, parts.strategy, engine,
                                    parts.oracle.hidden)

    @property
    def has_curve(self) -> bool:
        """Whether the run measures an accuracy to draw: a test split, or an audit set."""
        return self.parts.data.has_test or len(self.parts.audit) > 0

    def note(self, text: str) -> None:
        self.engine.print(f"[yellow]note: {text}")

    # ------------------------------------------------------------------ start: a new run or a resumed one
    def start(self, resume: bool, force: bool) -> Restored:
        eng, rd = self.engine, self.run_dir
        if not resume:
            data = self.parts.data
            preprocess = {"classes": list(data.classes), "channels": data.channels, "image_size": data.image_size[0],
                          "mean": list(data.mean), "std": list(data.std)}
            seeded = [] if data.seed_labels is None else data.seed_labels[0].tolist()
            for note in eng.guarded(lambda: rd.create(self.cfg, data.fingerprint(), force, preprocess, seeded)):
                self.note(note)
            return Restored([], None)
        needed = lambda start, pending: self.trainer.checkpoints_needed(start, pending, self.R)  # noqa: E731
        state = rd.restore(self.parts.oracle.answers, self.parts.new_pool, needed)
        for note in state.notes:
            self.note(note)
        if state.start <= self.R:  # the run goes on: the keys changed on resume become its own
            for change in eng.guarded(lambda: rd.update_recipe(self.cfg)):
                self.note(f"recipe changed on resume: {change}")
        return state

    # ------------------------------------------------------------------ the rounds
    def run(self, resume: bool, force: bool) -> None:
        eng, rd = self.engine, self.run_dir
        state = self.start(resume, force)
        rows, pool = list(state.rows), state.pool
        if resume and is_complete(rows, OmegaConf.to_container(self.cfg.active)):
            eng.print(f"[green]{rd.path} is complete ({len(rows)} rounds); nothing to do")
            return
        rd.commit(rows)  # without the lines of rounds that run again
        self.clock.plan(state.start, rows, pretrain=state.start == 0)
        if pool is None and not getattr(self.parts.initial_strategy, "needs_features", False):
            pool = self.buy_initial_set(before_pretraining=True)  # people label it while pretraining runs
        self.trainer.encoder = pretrained_encoder(self.cfg, self.parts.data, eng, use_cache=self.use_cache,
                                                  run_dir=rd)
        pool = pool if pool is not None else self.buy_initial_set()
        carry = self.continue_from(state, pool) if pool is not None else None
        if carry is None:
            return  # labels are awaited
        if resume:
            eng.print(f"resuming {rd.path} at round {state.start} ({pool.n_labeled} labels)")
        for r in range(state.start, self.R + 1):
            carry = self.round(r, pool, carry, rows)
            if carry is None:
                return
            eng.accelerator.wait_for_everyone()
        eng.print(f"done: {rd.path}" + ("/curve.png" if self.has_curve else ""))

    def round(self, r: int, pool: ActivePool, carry: Carry, rows: list[dict]) -> Carry | None:
        """Round ``r``: train -> evaluate -> record -> select -> label. The next round's carry, or None
        when people's answers are awaited."""
        self.check_labels(r, pool)
        self.clock.plan(r, rows)
        fit = self.trainer.train(r, pool, carry, ceal_labels(self, r, pool))
        self.clock.now("after")
        t_eval = time.perf_counter()
        metrics = {**measure(self, r, fit, pool), **stable_predictions(self, fit.eval_model, rows, r)}
        eval_s = time.perf_counter() - t_eval
        self.run_dir.save_checkpoint(r, self.trainer.state(fit))
        labeled = pool.n_labeled
        select_s, received, acq = 0.0, True, None
        stopped = stops(metrics, self.cfg.active.stop_when)
        if r < self.R and not stopped:
            acq, received = self.buy(r, fit, pool, self.trainer.previous_model(r, fit, carry))
            select_s = acq.seconds
        self.record(r, fit, pool, rows, labeled, metrics, select_s, eval_s)
        failpoint("round.end")
        if not received:
            self.say_awaiting(acq)
            return None
        if stopped:
            a = self.cfg.active
            self.engine.print(f"[bold]stopping after round {r}[/bold]: the predictions of the last {a.stop_window} "
                              f"rounds agree (mean kappa {metrics['stable_kappa_mean']:.4f} >= active.stop_when "
                              f"{a.stop_when}); done: {self.run_dir.path}")
            return None
        return self.trainer.advance(fit)

    def record(self, r: int, fit: FitResult, pool: ActivePool, rows: list[dict], labeled: int, metrics: dict,
               select_s: float, eval_s: float) -> None:
        """Commit round ``r``'s line of metrics.jsonl (the round is done once it is written), then tell."""
        rd = self.run_dir
        rows.append({"round": r, "n_labeled": labeled, **metrics, "train_s": round(fit.seconds, 3),
                     "train_data_s": round(fit.data_seconds, 3),  # of train_s, waiting for batches
                     "select_s": round(select_s, 3), "eval_s": round(eval_s, 3),
                     **{f"train_{k}": round(v, 5) for k, v in fit.logs.items()},
                     "pool": {"labeled": pool.n_entries, "digest": files.json_digest(pool.state_dict())}})
        rd.commit(rows)
        rd.prune_checkpoints(r)
        if self.has_curve:
            rd.write_curve(*curve_files(rd.committed(), self.cfg.name))
        self.engine.print(f"[bold]round {r}[/bold]: {labeled} labels, {measured(rows[-1])}, "
                          f"train {fit.seconds:.1f} s, select {select_s:.1f} s")

    def continue_from(self, state: Restored, pool: ActivePool) -> Carry | None:
        """What round ``state.start`` continues from (weights and objective state, with ``train.reinit:
        false``) and what its selection compares with, read from the last round's checkpoint. First, the
        last round's batch is bought when it is not in the pool yet (its labels were awaited from people,
        or active.rounds grew): None when labels are still awaited."""
        last = state.checkpoints.get(state.start - 1)
        if last is None:
            return Carry()
        fit = self.trainer.restore(last)
        if state.pending_selection:
            r = state.start - 1
            before = Carry(previous=self.trainer.restore(state.checkpoints[r - 1]).eval_model
                           if self.trainer.compares and r > 0 else None)
            if self.run_dir.saved_selection(r) is None:
                self.engine.print(f"active.rounds is now {self.R}: round {r} selects its batch first")
            acq, received = self.buy(r, fit, pool, self.trainer.previous_model(r, fit, before), reuse=True)
            if not received:
                self.say_awaiting(acq)
                return None
        return self.trainer.advance(fit)

    # ------------------------------------------------------------------ select and label
    def wanted(self, r: int, pool: ActivePool) -> int:
        """How many labels acquisition ``r`` buys: what brings round r + 1 to its share of the budget
        (``active.budget``, plus what skipped answers left out earlier), and after the first batch at least
        ``active.budget`` (people who answered more than a batch ahead are ahead of the schedule; each
        round still asks a batch), as far as the pool allows."""
        seed = 0 if self.parts.data.seed_labels is None else len(self.parts.data.seed_labels[0])
        target = seed + self.cfg.active.initial + (r + 1) * self.cfg.active.budget
        short = target - pool.n_labeled if r < 0 else max(target - pool.n_labeled, self.cfg.active.budget)
        return max(0, min(short, len(pool.unlabeled_indices)))

    def reusable(self, r: int, pool: ActivePool) -> torch.Tensor | None:
        """Acquisition ``r`` as recorded when it fits the pool (a selection made before the run stopped to
        await labels is not made again), else None."""
        try:
            record = self.run_dir.selection_record(r)
        except files.Damaged:
            return None
        idx = torch.tensor(record["indices"], dtype=torch.long)
        audit = pool.audit_unanswered if r == -1 else torch.empty(0, dtype=torch.long)  # asked with the first batch
        wanted = max(self.wanted(r, pool), record.get("from_ahead", 0))  # answers given ahead are all taken
        fits = (len(idx) == wanted + len(audit) and len(torch.unique(idx)) == len(idx)
                and bool(torch.isin(idx, torch.cat([pool.unlabeled_indices, audit])).all()))
        return idx if fits else None

    def buy_initial_set(self, before_pretraining: bool = False) -> ActivePool | None:
        """The labels round 0 trains on (None while people's answers are awaited). ``before_pretraining``:
        the batch is asked now and taken after pretraining, when its answers may be complete."""
        parts, eng = self.parts, self.engine
        pool = parts.new_pool()
        picked = self.reusable(-1, pool)
        if picked is not None:
            acq = Acquisition(-1, self.cfg.active.initial_strategy, picked, None, 0.0)
        else:
            def embed(indices: torch.Tensor) -> torch.Tensor:  # the pool's features, for a cold-start strategy
                return eng.predict(self.trainer.fresh_model(), parts.data.train, indices, ("features",),
                                   self.cfg.train.eval_batch_size, desc="initial features")["features"]

            acq = initial_set(eng, self.cfg, parts.initial_strategy, pool.unlabeled_indices, parts.data.train.targets,
                              embed, self.wanted(-1, pool), parts.data.num_classes)
            acq, record = with_audit(acq, pool, self.cfg.seed)
            if self.cfg.active.lookahead:  # more by the same strategy, from the rest (a class-balanced draw is
                rest = pool.unlabeled_indices[~torch.isin(pool.unlabeled_indices, acq.indices)]  # no prefix of one)
                more = initial_set(eng, self.cfg, parts.initial_strategy, rest, parts.data.train.targets, embed,
                                   min(self.cfg.active.lookahead, len(rest)), parts.data.num_classes)
                record.update(ahead=more.indices.tolist(), from_ahead=0)  # labeled while round 0 trains
            self.run_dir.save_selection(record)
        if self.receive(acq, pool):
            return pool
        if before_pretraining and self.cfg.pretrain.method != "none":
            self.engine.print(f"[bold]the first {len(acq.indices)} images can be labeled now[/bold], while "
                              f"pretraining runs: 'ssal label serve {self.run_dir.path} --continue' (answers are "
                              "stored as they are given; the run takes them when pretraining ends)")
        elif not before_pretraining:
            self.say_awaiting(acq)
        return None

    def buy(self, r: int, fit: FitResult, pool: ActivePool, prev_model: torch.nn.Module | None,
            reuse: bool = False) -> tuple[Acquisition, bool]:
        """Round ``r``'s acquisition, answered for round r + 1 and recorded; False: answers are awaited."""
        picked = self.reusable(r, pool) if reuse else None
        if picked is not None:
            acq = Acquisition(r, self.cfg.active.strategy, picked, None, 0.0)
        else:
            acq, record = choose(self, r, fit, pool, prev_model)
            self.run_dir.save_selection(record)
        return acq, self.receive(acq, pool)

    def receive(self, acq: Acquisition, pool: ActivePool) -> bool:
        """Label acquisition ``acq`` with the oracle's answers (and save the pool); when they are not all
        given yet, the oracle asks (its queries are written) and this returns False. People's answers are
        read by the main process under the answers' lock, in the step that takes them into the pool, so
        none is stored after the batch was read (people label while the run works)."""
        oracle, rd = self.parts.oracle, self.run_dir
        if not oracle.asks_people:
            self.take(acq, pool, oracle.answers(acq.round, acq.indices))
            return True
        got = self.engine.decided(lambda: take_people_answers(self, acq, pool))
        if got is None:
            oracle.ask(rd, self.parts.data, acq.round, acq.indices)
            return False
        if not self.engine.is_main:  # the main process took them already
            self.take(acq, pool, torch.tensor(got, dtype=torch.long))
        return True

    def take(self, acq: Acquisition, pool: ActivePool, answers: torch.Tensor) -> None:
        """Label the pool with the answers to ``acq`` and save it."""
        rd = self.run_dir
        trained = ~torch.isin(acq.indices, pool.audit_indices)  # the audit set's answers only measure
        if pool.n_labeled == 0 and bool((answers[trained] == SKIP).all()):  # before anything is written
            raise ConfigError(f"every answer to the first batch ({rd.round_dir(acq.round).name}) is skip or unsure, so "
                              f"round 0 has no label to train on; change some of them ('ssal label serve {rd.path}' "
                              f"or 'ssal label import'), then 'ssal run --resume {rd.path}', or start again with a "
                              "larger active.initial (or data.labels naming a few labeled images) and --force")
        pool.label(acq.indices, answers, acq.round + 1)
        rd.save_pool(pool)

    def say_awaiting(self, acq: Acquisition) -> None:
        self.engine.print(self.parts.oracle.awaiting(self.run_dir, acq.round, acq.indices))

    # ------------------------------------------------------------------ evaluate
    def check_labels(self, r: int, pool: ActivePool) -> None:
        if pool.n_labeled == 0:  # only round 0 can get here: every answer to the first batch was skip/unsure
            raise ConfigError(f"round {r} has no label to train on: every answer to the first batch was skip or "
                              "unsure; start the run again (--force) with a larger active.initial, or with data.labels "
                              "naming a few labeled images")


def measure(rounds: Rounds, r: int, fit: FitResult, pool: ActivePool) -> dict:
    """Test accuracy; without a test set, what can be measured honestly: the model's class distribution
    and mean confidence on (up to POOL_SAMPLE seeded images of) the unlabeled pool."""
    eng, data, cfg = rounds.engine, rounds.parts.data, rounds.cfg
    audit = audit_accuracy(eng, fit.eval_model, data, pool, cfg.train.eval_batch_size, r)
    if data.has_test:
        return {**eng.evaluate(fit.eval_model, data.test, cfg.train.eval_batch_size, desc=f"round {r} evaluate"),
                **audit}
    sample = candidates(pool.unlabeled_indices, POOL_SAMPLE, generator(cfg.seed, "measure", r))
    if len(sample) == 0:
        sample = pool.labeled_indices
    probs = eng.predict(fit.eval_model, data.train, sample, ("probs",), cfg.train.eval_batch_size,
                        desc=f"round {r} measure")["probs"]
    conf, guess = probs.max(1)
    share = torch.bincount(guess, minlength=data.num_classes).float() / max(1, len(guess))
    return {**audit, "pool_mean_conf": round(float(conf.mean()), 5),
            "pool_class_dist": {c: round(float(v), 5) for c, v in zip(data.classes, share, strict=True)}}


def with_audit(acq: Acquisition, pool: ActivePool, seed: int) -> tuple[Acquisition, dict]:
    """The first batch with the audit images among its picks, in a seeded order (nothing tells a person
    which is which), and its record, which names the audit images."""
    audit = pool.audit_unanswered
    if len(audit) == 0:
        return acq, acq.record()
    both = torch.cat([acq.indices, audit])
    both = both[torch.randperm(len(both), generator=generator(seed, "audit order"))]
    mixed = Acquisition(acq.round, acq.strategy, both, None, acq.seconds)
    return mixed, {**mixed.record(), "audit": audit.tolist()}


def choose(rounds: Rounds, r: int, fit: FitResult, pool: ActivePool,
           prev_model: torch.nn.Module | None) -> tuple[Acquisition, dict]:
    """Round ``r``'s acquisition and its record. With ``active.lookahead`` L, the images the last acquisition
    chose ahead and people answered while this round trained come first; the strategy picks the rest with
    this round's model, and L more, ranked after them, to be answered while the next round trains."""
    cfg, parts = rounds.cfg, rounds.parts
    look = cfg.active.lookahead
    wanted = rounds.wanted(r, pool)
    taken = torch.tensor(taken_ahead(rounds, r - 1, wanted) if look else [], dtype=torch.long)
    need = max(0, wanted - len(taken))
    free = len(pool.unlabeled_indices) - len(taken)
    acq = acquire(rounds.engine, cfg, parts.strategy, parts.data, fit, pool, prev_model, r, min(need + look, free),
                  exclude=taken)
    picks, ahead = acq.indices[:need], acq.indices[need:]
    indices = torch.cat([taken, picks])
    scores = None if acq.scores is None else acq.scores[:need]
    record = {"round": r, "strategy": cfg.active.strategy, "indices": indices.tolist(),
              "scores": None if scores is None else [None] * len(taken) + scores.tolist()}
    if look:
        record.update(ahead=ahead.tolist(), from_ahead=len(taken))
    if cfg.active.ceal_threshold is not None:  # the next round also trains on the model's surest labels
        rest = pool.unlabeled_indices[~torch.isin(pool.unlabeled_indices, torch.cat([indices, ahead]))]
        probs = rounds.engine.predict(fit.eval_model, parts.data.train, rest, ("probs",), cfg.train.eval_batch_size,
                                      desc=f"round {r} CEAL")["probs"]
        delta = ceal.threshold(cfg.active.ceal_threshold, cfg.active.ceal_decay, r)
        sure, labels = ceal.confident(probs, rest, delta)
        record.update(ceal_threshold=delta, ceal=[[int(i), int(y)] for i, y in zip(sure, labels, strict=True)])
    if parts.oracle.asks_people:  # the model's guess, to speed people up
        record.update(suggest(rounds, fit, indices))
        if look:
            record.update({f"ahead_{k}": v for k, v in suggest(rounds, fit, ahead).items()})
    return Acquisition(r, cfg.active.strategy, indices, scores if len(taken) == 0 else None, acq.seconds), record


def ceal_labels(rounds: Rounds, r: int, pool: ActivePool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The images CEAL's last selection (acquisition ``r`` - 1) chose to train round ``r`` with the model's
    label, those still unlabeled; None without CEAL or before round 1."""
    if rounds.cfg.active.ceal_threshold is None or r == 0:
        return None
    pairs = torch.tensor(rounds.run_dir.selection_record(r - 1).get("ceal") or [], dtype=torch.long).view(-1, 2)
    keep = torch.isin(pairs[:, 0], pool.unlabeled_indices)
    return pairs[keep, 0], pairs[keep, 1]


def taken_ahead(rounds: Rounds, r: int, wanted: int) -> list[int]:
    """The images acquisition ``r`` chose ahead that were answered meanwhile, in order; people's are read and
    closed by the main process alone. A simulated oracle keeps pace: it answers the next batch's worth
    (``wanted``; all of them when the lookahead is at most a batch), so each round buys its budget."""
    rd, oracle = rounds.run_dir, rounds.parts.oracle
    try:
        ahead = rd.selection_record(r).get("ahead") or []
    except files.Damaged:
        return []
    if not ahead or not oracle.asks_people:
        return oracle.take_ahead(rd, r, ahead[:wanted])
    return rounds.engine.decided(lambda: oracle.take_ahead(rd, r, ahead))


def suggest(rounds: Rounds, fit: FitResult, indices: torch.Tensor) -> dict:
    """The model's guess and its confidence for ``indices``, for people."""
    probs = rounds.engine.predict(fit.eval_model, rounds.parts.data.train, indices, ("probs",),
                                  rounds.cfg.train.eval_batch_size)["probs"]
    conf, guess = probs.max(1) if len(probs) else (torch.empty(0), torch.empty(0, dtype=torch.long))
    return {"suggestions": [rounds.parts.data.classes[int(c)] for c in guess],
            "confidences": [round(float(c), 4) for c in conf]}


def take_people_answers(rounds: Rounds, acq: Acquisition, pool: ActivePool) -> list[int] | None:
    """(The main process.) Under the answers' lock: the answers to ``acq`` (with those a person wrote into
    its queries.csv), taken into the pool when all are given; None while some are missing."""
    oracle, rd = rounds.parts.oracle, rounds.run_dir
    with rd.answers_held():
        taken = oracle.collect(rd, acq.round)
        if taken:
            rounds.note(taken)
        answers = oracle.answers(acq.round, acq.indices)
        if answers is None:
            return None
        rounds.take(acq, pool, answers)
        return answers.tolist()


def stable_predictions(rounds: Rounds, model: torch.nn.Module, rows: list[dict], r: int) -> dict:
    """The round's predictions on the stop set, compared with the last round's (:mod:`ssal.label.stopping`);
    {} without a stop set."""
    parts, cfg = rounds.parts, rounds.cfg
    if len(parts.stop_set) == 0:
        return {}
    probs = rounds.engine.predict(model, parts.data.train, parts.stop_set, ("probs",), cfg.train.eval_batch_size,
                                  desc=f"round {r} stop set")["probs"]
    return stability(probs.argmax(1), rows, parts.data.num_classes, cfg.active.stop_window)


def audit_accuracy(engine: Engine, model: torch.nn.Module, data: ImageDataset, pool: ActivePool, batch_size: int,
                   r: int) -> dict:
    """Accuracy on the answered audit images (skips left out) with its 95 % Wilson interval; {} without
    an audit set."""
    if len(pool.audit_indices) == 0:
        return {}
    idx, truth = pool.audit_labeled()
    if len(idx) == 0:
        return {"audit_n": 0}
    probs = engine.predict(model, data.train, idx, ("probs",), batch_size, desc=f"round {r} audit")["probs"]
    right = int((probs.argmax(1) == truth).sum())
    low, high = wilson_interval(right, len(idx))
    return {"audit_acc": round(right / len(idx), 6), "audit_low": round(low, 6), "audit_high": round(high, 6),
            "audit_n": len(idx)}
