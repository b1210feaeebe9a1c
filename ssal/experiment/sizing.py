"""``ssal init`` sizes the human recipe to the images and the machine, and says how long a person waits.

What it reads: the number of images, the median short side and the colour of a seeded sample of them
(opened, not decoded in full), the CPU cores and whether a GPU is there. What it measures: one forward
and backward pass of the chosen backbone on a batch at the chosen size, on this machine (about a
second). From that it picks the image size, channels and backbone, the pretraining epochs that fit
:data:`PRETRAIN_BUDGET_S` on a CPU, the batch sizes, and prints the expected time to the first image,
of pretraining (which runs while the person labels) and of a round. The estimates are from the
measured speed and the schedule, so they are estimates: the run's progress shows the real times.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ssal.models import create_backbone
from ssal.run.readers import duration

SAMPLE = 24  # images opened to learn the folder's size and colour
PRETRAIN_BUDGET_S = 600  # a CPU's pretraining is sized to about this (it runs while the person labels)
SMALL_SIDE = 32  # images at most this size train the small CNN on a CPU; larger ones resnet18
CPU_SIDE, GPU_SIDE = 64, 96  # the largest training size chosen on a CPU, on a GPU
FIXED_START_S = 10  # seconds a run takes to start before it reads the images (imports, checks)
PACE = 1.0  # images a second a quick person labels: what is chosen ahead should last that long
MOST_AHEAD = 4  # batches chosen ahead at most: past that a trained model had better choose (the page tells the wait)


@dataclass(frozen=True)
class Folder:
    count: int
    side: int  # the median short side of the sampled images, px
    grey: bool  # every sampled image is single-channel


@dataclass(frozen=True)
class Machine:
    cores: int
    gpu: str | None  # the GPU's name, or None


def look(files: list[Path]) -> tuple[Folder, float]:
    """The folder as the sample shows it, and the seconds it took to open one image."""
    step = max(1, len(files) // SAMPLE)
    sample = files[::step][:SAMPLE]
    sides, grey, t = [], True, time.perf_counter()
    for path in sample:
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
                grey = grey and im.mode in ("1", "L", "LA", "I", "I;16", "F")
                im.load()
        except Exception:  # an unreadable file: the run's image check names it; sizing needs only the others
            continue
    per_image = (time.perf_counter() - t) / max(1, len(sample))
    return Folder(len(files), int(statistics.median(sides)) if sides else CPU_SIDE, grey and bool(sides)), per_image


def this_machine() -> Machine:
    return Machine(os.cpu_count() or 1, torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def sized(recipe: dict, folder: Folder, machine: Machine, has_test: bool) -> dict:
    """``recipe`` (the human recipe) fitted to ``folder`` and ``machine``; the pretraining epochs are set by
    :func:`epochs_for` once the speed is measured. Pure: the tests check it by hand."""
    out = copy.deepcopy(recipe)
    side = max(16, min(folder.side, GPU_SIDE if machine.gpu else CPU_SIDE))
    out["data"].update(image_size=side, channels=1 if folder.grey else 3)
    out["model"]["backbone"] = "cnn_small" if machine.gpu is None and side <= SMALL_SIDE else "resnet18"
    out["pretrain"]["view_size"] = side
    if machine.gpu is None:
        out["train"]["fixmatch"] = {"mu": 3}  # 3 unlabeled images per labeled one: a CPU round in minutes
    batch = max(1, min(50, folder.count // 10))
    audit = 0 if has_test else min(100, folder.count // 10)
    rounds = max(0, min(10, (folder.count - audit - batch) // batch))
    out["active"].update(initial=batch, budget=batch, rounds=rounds, audit=audit)
    if out["active"].get("lookahead"):  # a batch's worth chosen ahead: people label on while a round trains
        out["active"]["lookahead"] = batch
    return out


def seconds_per_image(recipe: dict, classes: int) -> float:
    """One optimizer step's forward and backward pass per image of the recipe's backbone at its image size on
    this machine (its own threads), measured after a warm-up step."""
    data, batch = recipe["data"], 32
    net = create_backbone(recipe["model"]["backbone"], data["channels"], data["image_size"])
    head = torch.nn.Linear(net.num_features, classes)
    opt = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=0.01)
    x = torch.randn(batch, data["channels"], data["image_size"], data["image_size"])
    y = torch.randint(0, classes, (batch,))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(net(x)), y).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return min(times[1:]) / batch


def epochs_for(count: int, per_image: float, gpu: bool, most: int) -> int:
    """Pretraining epochs: the recipe's ``most`` on a GPU; on a CPU as many as fit :data:`PRETRAIN_BUDGET_S`
    (two views of every image per epoch), at least one."""
    if gpu:
        return most
    return max(1, min(most, int(PRETRAIN_BUDGET_S / max(1e-9, 2 * count * per_image))))


@dataclass(frozen=True)
class Estimate:
    first_s: float  # from 'ssal run' to the first image on screen
    pretrain_s: float  # behind the labeling
    round_s: float  # training of round 0
    continue_s: float  # training of a round that continues the last model


def work(recipe: dict, count: int) -> dict[str, float]:
    """Each stage's work in passes of one image through the backbone, forward and backward (a forward pass
    alone counts a third): ``pretrain`` (two views of every image an epoch), ``train`` (round 0, or every
    round that starts again) and ``continue`` (a round that continues the last model) with a labeled image
    plus the weak and strong views of mu unlabeled ones per labeled image in a step, and ``after``: the
    forward passes over the pool once a round is trained (its measurement, signals, suggestions)."""
    train, pre = recipe["train"], recipe["pretrain"]
    mu = (train.get("fixmatch") or {}).get("mu", 7) if train["method"] == "fixmatch" else 0
    per_step = train["batch_size"] * (1 + 2 * mu)
    return {"pretrain": 0.0 if pre["method"] == "none" else pre["epochs"] * 2 * count,
            "train": train["steps"] * per_step,
            "continue": (train.get("continue_steps") or train["steps"]) * per_step,
            "after": count / 3}


def estimate(recipe: dict, count: int, per_image: float, open_s: float) -> Estimate:
    """How long the run takes, from the measured seconds per image (training, ``per_image``; opening a file,
    ``open_s``) and the recipe's schedule (:func:`work`)."""
    w = work(recipe, count)
    return Estimate(FIXED_START_S + 2 * count * open_s, w["pretrain"] * per_image,
                    (w["train"] + w["after"]) * per_image, (w["continue"] + w["after"]) * per_image)


class NextBatch:
    """When a person's next batch comes, for a human run's ``progress.json``: the stage that runs now (its
    remaining time, from its own pace) plus the stages after it before the run selects, at the speed
    measured so far in seconds per image pass (:func:`work`): this stop's own pace once pretraining or
    training runs, else the last round's. The last round's evaluation and selection time stands for what
    follows training. It sits between the engine's progress and ``tell``: each state passed on gains
    ``next_batch_s`` once a speed is known. The loop says where the stop is (:meth:`plan`, :meth:`now`)."""

    def __init__(self, recipe: dict, count: int, tell: Callable[[dict], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.work, self.tell, self.clock = work(recipe, count), tell, clock
        self.per_pass: float | None = None  # seconds per image pass
        self.after_s: float | None = None  # what followed training in the last round (evaluate + select)
        self.stages: list[str] = []  # this stop's stages still to run, the running one first
        self.since, self.r = clock(), 0

    def plan(self, r: int, rows: list[dict], pretrain: bool = False) -> None:
        """The stop that ends with round ``r``'s selection: pretraining first when ``pretrain``, then round r's
        training (``rows``: the committed rounds, whose times are the speed until this stop measures its own)."""
        last = rows[-1] if rows else {}
        if isinstance(last.get("train_s"), (int, float)) and self.work["train"] > 0:  # a row without times: no speed
            self.per_pass = last["train_s"] / self.work["train" if last.get("round") == 0 else "continue"]
            self.after_s = float(last.get("eval_s") or 0.0) + float(last.get("select_s") or 0.0)
        self.stages = [*(["pretrain"] if pretrain and self.work["pretrain"] else []),
                       "train" if r == 0 else "continue", "after"]
        self.since, self.r = self.clock(), r

    def now(self, stage: str) -> None:
        """``stage`` starts (the stages planned before it are done)."""
        if stage in self.stages:
            self.stages = self.stages[self.stages.index(stage):]
        self.since = self.clock()

    def __call__(self, state: dict) -> None:
        stage = self.stages[0] if self.stages else None
        bar = "pretrain" if stage == "pretrain" else f"round {self.r} train"  # the stage's own progress bar
        own = state["stage"].startswith(bar)  # (not a forward pass before or inside it)
        if own and stage in ("pretrain", "train", "continue") and state["done"] and state["elapsed_s"] > 0:
            self.per_pass = state["elapsed_s"] / (self.work[stage] * state["done"] / state["total"])
        left = self.left(stage, state["remaining_s"] if own and stage != "after" else None)
        if self.tell is not None:
            self.tell(state if left is None else {**state, "next_batch_s": round(left, 1)})

    def expected(self, stage: str) -> float:
        if stage == "after" and self.after_s is not None:
            return self.after_s
        return self.work[stage] * self.per_pass

    def left(self, stage: str | None, remaining: float | None) -> float | None:
        """Seconds until the next batch: what remains of ``stage`` (``remaining`` when its bar tells it, else
        its expected time less what it ran so far) and the stages after it."""
        if self.per_pass is None or stage is None:
            return None
        if remaining is None:
            remaining = max(0.0, self.expected(stage) - (self.clock() - self.since))
        return remaining + sum(self.expected(s) for s in self.stages[1:])


def lookahead_for(recipe: dict, est: Estimate) -> int:
    """Images chosen ahead (``active.lookahead``): enough for a quick person (:data:`PACE`) through the longest
    wait, the rest of pretraining after the first batch plus round 0's training; at least a batch, at most
    :data:`MOST_AHEAD` batches. Later rounds are shorter: the person answers the part of them that fits and
    the run picks the rest of each batch with the model just trained."""
    a = recipe["active"]
    labeling_first_s = (a["initial"] + (a.get("audit") or 0)) / PACE
    wait = max(0.0, est.pretrain_s - labeling_first_s) + est.round_s
    return int(min(MOST_AHEAD * a["budget"], max(a["budget"], math.ceil(wait * PACE))))


def describe(folder: Folder, machine: Machine, recipe: dict, est: Estimate) -> list[str]:
    """The lines ``ssal init`` prints: what it found, what it chose, and how long things take here."""
    where = (f"GPU {machine.gpu}" if machine.gpu else f"{machine.cores} CPU core{'s' if machine.cores > 1 else ''}, "
             "no GPU")
    d, a, t, p = recipe["data"], recipe["active"], recipe["train"], recipe["pretrain"]
    later = f", later rounds continue for {t['continue_steps']}" if t.get("continue_steps") else ""
    return [
        f"this machine: {where}; the images: {folder.count}, about {folder.side} px, "
        f"{'greyscale' if folder.grey else 'colour'}",
        f"chosen: {recipe['model']['backbone']} at {d['image_size']} px, {d['channels']} channel"
        f"{'s' if d['channels'] > 1 else ''}; {p['method']} {p['epochs']} epochs; {t['method']} {t['steps']} steps"
        f"{later}; {a['initial']} images per batch, {a['rounds']} rounds"
        + (f", {a['audit']} audit images" if a.get("audit") else "")
        + (f", {a['lookahead']} chosen ahead (to label while a round trains)" if a.get("lookahead") else ""),
        f"expected here: the first images to label about {duration(est.first_s)} after the run starts; pretraining "
        f"about {duration(est.pretrain_s)} (label meanwhile); each round about {duration(est.round_s)} of "
        f"training" + (f" ({duration(est.continue_s)} once it continues the last model)" if later else ""),
    ]
