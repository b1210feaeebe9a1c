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
import os
import statistics
import time
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


def estimate(recipe: dict, count: int, per_image: float, open_s: float) -> Estimate:
    """How long the run takes, from the measured seconds per image (training, ``per_image``; opening a file,
    ``open_s``) and the recipe's schedule."""
    train, pre = recipe["train"], recipe["pretrain"]
    mu = (train.get("fixmatch") or {}).get("mu", 7) if train["method"] == "fixmatch" else 0
    per_step = train["batch_size"] * (1 + 2 * mu) * per_image  # labeled + weak and strong unlabeled views
    evaluate = count * per_image / 3  # a forward pass over the pool (signals, suggestions)
    pretrain_s = 0.0 if pre["method"] == "none" else pre["epochs"] * 2 * count * per_image
    steps_later = train.get("continue_steps") or train["steps"]
    return Estimate(FIXED_START_S + 2 * count * open_s, pretrain_s, train["steps"] * per_step + evaluate,
                    steps_later * per_step + evaluate)


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
        + (f", {a['audit']} audit images" if a.get("audit") else ""),
        f"expected here: the first images to label about {duration(est.first_s)} after the run starts; pretraining "
        f"about {duration(est.pretrain_s)} (label meanwhile); each round about {duration(est.round_s)} of "
        f"training" + (f" ({duration(est.continue_s)} once it continues the last model)" if later else ""),
    ]
