"""Extending ssal: a strategy that needs the previous round's model, and one that needs an ensemble's
members, are each one class in one file (this one), registered by name; nothing else in ssal changes.

The strategies below are examples, not shipped: each is what a new method's file would hold. The
tests run them through the real loop and recompute every selection by brute force from the stored
checkpoints: the trainer gave each strategy what it declared (the previous model; K members).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_recipe_dict

from ssal.data import load_dataset
from ssal.engine import Engine
from ssal.experiment import loop
from ssal.experiment.trainer import evaluation_model
from ssal.models import build_model
from ssal.recipe import from_dict
from ssal.run.store import RunDir
from ssal.select import STRATEGIES, ScoreStrategy
from ssal.select.ensemble import MemberProbs
from ssal.select.signals import PrevProbs, Probs

# ----------------------------------------------------------------------------- the two example files


class PreviousShift(ScoreStrategy):
    """Total variation between this round's and the previous round's predictions (how much the model
    changed its mind about a sample)."""

    needs = (Probs(), PrevProbs())

    def scores(self, signals):
        return 0.5 * (signals[Probs()] - signals[PrevProbs()]).abs().sum(1)


class CommitteeKL(ScoreStrategy):
    """Mean KL divergence of each of 3 members from the committee's consensus."""

    members = 3
    needs = (MemberProbs(),)

    def scores(self, signals):
        p = signals[MemberProbs()].clamp_min(1e-12)  # [N, K, C]
        mean = p.mean(1, keepdim=True)
        return (p * (p.log() - mean.log())).sum(2).mean(1)


EXAMPLES = {"example_prev_shift": PreviousShift, "example_committee": CommitteeKL}


@pytest.fixture(autouse=True)
def _registered():
    """What ``@STRATEGIES.register(name)`` on each class does in a shipped file; undone after each test so
    that tests enumerating the registry do not see the examples."""
    for name, cls in EXAMPLES.items():
        STRATEGIES.register(name)(cls)
    yield
    for name in EXAMPLES:
        STRATEGIES._items.pop(name)


# ----------------------------------------------------------------------------- brute force


def _run(tmp_path, strategy: str, rounds: int, monkeypatch, **train):
    monkeypatch.setattr(RunDir, "prune_checkpoints", lambda self, last: None)  # keep every round's model
    cfg = from_dict(tiny_recipe_dict(tmp_path / strategy, train={"steps": 15, **train},
                                     active={"strategy": strategy, "rounds": rounds, "subset": None}))
    run = loop.run(cfg, progress=False)
    data = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir)
    return cfg, run, data


def _unlabeled_before(run, r: int, n: int) -> torch.Tensor:
    """The pool indices unlabeled when round ``r`` selected (bought in rounds <= r are labeled)."""
    labeled = {i for i, _, got in json.loads((run / "pool.json").read_text())["labeled"] if got <= r}
    return torch.tensor([i for i in range(n) if i not in labeled], dtype=torch.long)


def _check_choice(run, r: int, candidates: torch.Tensor, scores: torch.Tensor) -> None:
    """Round ``r`` took the top scores of the candidates (ties within float noise either way)."""
    record = json.loads((run / "rounds" / f"r{r:02d}" / "selected.json").read_text())
    chosen = torch.tensor(record["indices"])
    at = torch.searchsorted(candidates, chosen)
    assert torch.equal(candidates[at], chosen)
    torch.testing.assert_close(torch.tensor(record["scores"]), scores[at], rtol=1e-4, atol=1e-5)
    rest = torch.ones(len(candidates), dtype=torch.bool)
    rest[at] = False
    assert scores[at].min() >= scores[rest].max() - 1e-5


def _probs(model, data, indices, cfg) -> torch.Tensor:
    return Engine(progress=False).predict(model.eval(), data.train, indices, ("probs",),
                                          cfg.train.eval_batch_size)["probs"]


def test_a_strategy_needing_the_previous_model_is_one_class(tmp_path, monkeypatch):
    cfg, run, data = _run(tmp_path, "example_prev_shift", 2, monkeypatch, ema=0.9)
    rd = RunDir(run, writer=False)
    build = lambda: build_model(cfg.model, data)  # noqa: E731
    for r in (0, 1):
        cands = _unlabeled_before(run, r, len(data.train))
        ckpt = rd.load_checkpoint(r)
        now = _probs(evaluation_model(ckpt, build), data, cands, cfg)  # the EMA: what the round evaluates
        if r == 0:  # no previous round: compared with the raw weights of its own training
            prev_model = build()
            prev_model.load_state_dict(ckpt["model"])
        else:
            prev_model = evaluation_model(rd.load_checkpoint(r - 1), build)
        prev = _probs(prev_model, data, cands, cfg)
        _check_choice(run, r, cands, 0.5 * (now - prev).abs().sum(1))


def test_a_strategy_needing_ensemble_members_is_one_class(tmp_path, monkeypatch):
    cfg, run, data = _run(tmp_path, "example_committee", 1, monkeypatch)
    ckpt = RunDir(run, writer=False).load_checkpoint(0)
    assert len(ckpt["members"]) == 3  # the trainer trained the members the strategy declared
    cands = _unlabeled_before(run, 0, len(data.train))
    members = []
    for part in ckpt["members"]:
        model = build_model(cfg.model, data)
        model.load_state_dict(part["model"])
        members.append(_probs(model, data, cands, cfg))
    p = torch.stack(members, 1).clamp_min(1e-12)
    mean = p.mean(1, keepdim=True)
    _check_choice(run, 0, cands, (p * (p.log() - mean.log())).sum(2).mean(1))
    weights = [torch.cat([v.flatten().float() for v in part["model"].values()]) for part in ckpt["members"]]
    assert not torch.equal(weights[0], weights[1])  # members are trained from their own seeds
