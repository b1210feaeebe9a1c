"""``ssal init`` sizes the human recipe to the folder and the machine and says how long a person waits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ssal import cli
from ssal.experiment import sizing
from ssal.experiment.project import HUMAN_RECIPE
from ssal.experiment.sizing import Estimate, Folder, Machine
from ssal.recipe import load_recipe

CPU, GPU = Machine(2, None), Machine(16, "NVIDIA H100")


def test_small_greyscale_images_on_a_cpu_train_the_small_cnn_at_their_own_size():
    r = sizing.sized(HUMAN_RECIPE, Folder(3000, 28, True), CPU, has_test=False)
    assert (r["data"]["image_size"], r["data"]["channels"], r["model"]["backbone"]) == (28, 1, "cnn_small")
    assert r["pretrain"]["view_size"] == 28 and r["train"]["fixmatch"] == {"mu": 3}
    assert {k: r["active"][k] for k in ("initial", "budget", "rounds", "audit", "lookahead")} == \
        {"initial": 50, "budget": 50, "rounds": 10, "audit": 100, "lookahead": 50}
    assert HUMAN_RECIPE["data"]["image_size"] == 64  # the shipped recipe is left as it is


def test_photos_are_scaled_to_the_machine_and_a_test_folder_needs_no_audit():
    cpu = sizing.sized(HUMAN_RECIPE, Folder(3000, 480, False), CPU, has_test=True)
    assert (cpu["data"]["image_size"], cpu["data"]["channels"], cpu["model"]["backbone"]) == (64, 3, "resnet18")
    assert cpu["active"]["audit"] == 0
    gpu = sizing.sized(HUMAN_RECIPE, Folder(3000, 480, False), GPU, has_test=False)
    assert (gpu["data"]["image_size"], gpu["model"]["backbone"]) == (96, "resnet18")
    assert "fixmatch" not in gpu["train"]  # the recipe's own mu on a GPU
    tiny = sizing.sized(HUMAN_RECIPE, Folder(3000, 8, False), CPU, has_test=False)
    assert tiny["data"]["image_size"] == 16  # never below what the backbones take


@pytest.mark.parametrize("count, expected", [
    (3000, (50, 10, 100)),  # budget, rounds, audit
    (300, (30, 8, 30)),  # (300 - 30 - 30) // 30 = 8 rounds
    (40, (4, 8, 4)),  # (40 - 4 - 4) // 4 = 8
    (4, (1, 3, 0)),
])
def test_the_batches_and_rounds_fit_the_folder(count, expected):
    a = sizing.sized(HUMAN_RECIPE, Folder(count, 64, False), CPU, has_test=False)["active"]
    assert (a["budget"], a["rounds"], a["audit"]) == expected and a["initial"] == a["budget"] == a["lookahead"]
    assert a["audit"] + a["initial"] + a["rounds"] * a["budget"] <= count  # the run's own check passes


def test_pretraining_epochs_fit_the_budget_on_a_cpu():
    # 3000 images, two views each, 1 ms per image: 6 s an epoch -> 100 fit 600 s, capped at the recipe's 20
    assert sizing.epochs_for(3000, 0.001, gpu=False, most=20) == 20
    # 20 ms per image: 120 s an epoch -> 5 epochs in 600 s
    assert sizing.epochs_for(3000, 0.02, gpu=False, most=20) == 5
    assert sizing.epochs_for(300_000, 0.02, gpu=False, most=20) == 1  # at least one
    assert sizing.epochs_for(300_000, 0.02, gpu=True, most=20) == 20


def test_the_estimates_by_hand():
    recipe = sizing.sized(HUMAN_RECIPE, Folder(3000, 28, True), CPU, has_test=False)
    recipe["pretrain"]["epochs"] = 5
    recipe["train"].update(steps=200, continue_steps=50)
    est = sizing.estimate(recipe, 3000, per_image=0.002, open_s=0.001)
    # first: 10 s to start + 2 reads of 3000 files at 1 ms; pretraining: 5 epochs x 2 views x 3000 x 2 ms;
    # a FixMatch step: batch 32 x (1 + 2 x 3) views x 2 ms = 0.448 s; evaluation: 3000 x 2 ms / 3 = 2 s
    assert est == Estimate(first_s=16.0, pretrain_s=60.0, round_s=pytest.approx(200 * 0.448 + 2),
                           continue_s=pytest.approx(50 * 0.448 + 2))
    lines = sizing.describe(Folder(3000, 28, True), CPU, recipe, est)
    assert lines[0] == "this machine: 2 CPU cores, no GPU; the images: 3000, about 28 px, greyscale"
    assert lines[1].startswith("chosen: cnn_small at 28 px, 1 channel; simclr 5 epochs; fixmatch 200 steps, later "
                               "rounds continue for 50; 50 images per batch, 10 rounds, 100 audit images")
    assert lines[2] == ("expected here: the first images to label about 16 s after the run starts; pretraining about "
                        "60 s (label meanwhile); each round about 2 min of training (24 s once it continues the "
                        "last model)")


def test_seconds_per_image_is_measured_on_this_machine():
    recipe = sizing.sized(HUMAN_RECIPE, Folder(100, 16, True), CPU, has_test=False)
    t = sizing.seconds_per_image(recipe, classes=3)
    assert 1e-6 < t < 0.5


def _folder(root: Path, n: int, side: int, grey: bool) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (side, side) if grey else (side, side, 3)
        (root / f"{i // 10}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / f"{i // 10}" / f"{i}.png")
    return root


def test_ssal_init_writes_the_sized_recipe_and_prints_what_it_expects(tmp_path, capsys):
    images = _folder(tmp_path / "scans", 60, 20, grey=True)
    proj = tmp_path / "proj"
    assert cli.main(["init", str(proj), "--images", str(images), "--classes", "a,b"]) == 0
    out = capsys.readouterr().out
    assert "this machine: " in out and "the images: 60, about 20 px, greyscale" in out
    assert "chosen: cnn_small at 20 px, 1 channel; simclr " in out
    assert "expected here: the first images to label about " in out
    cfg = load_recipe(proj / "recipe.yaml")
    assert (cfg.data.image_size, cfg.data.channels, cfg.model.backbone) == (20, 1, "cnn_small")
    assert (cfg.active.initial, cfg.active.budget, cfg.active.audit, cfg.active.rounds) == (6, 6, 6, 8)
    text = (proj / "recipe.yaml").read_text()
    assert "# Sized by 'ssal init' for this folder and machine:\n#   this machine: " in text
    assert yaml.safe_load(text)["data"]["channels"] == 1


def test_the_next_batch_is_the_running_stage_plus_the_stages_after_it_at_the_speed_measured():
    recipe = sizing.sized(HUMAN_RECIPE, Folder(3000, 28, True), CPU, has_test=False)
    recipe["pretrain"]["epochs"] = 5
    recipe["train"].update(steps=200, continue_steps=50)
    # image passes: pretraining 5 x 2 x 3000 = 30,000; a FixMatch step 32 x (1 + 2 x 3) = 224, so round 0
    # 200 x 224 = 44,800 and a continuing round 50 x 224 = 11,200; after training 3000 / 3 = 1,000
    assert sizing.work(recipe, 3000) == {"pretrain": 30_000, "train": 44_800, "continue": 11_200, "after": 1000}
    now, told = [0.0], []
    clock = sizing.NextBatch(recipe, 3000, told.append, clock=lambda: now[0])

    def tell(stage, done, total, elapsed, remaining):
        clock({"stage": stage, "done": done, "total": total, "elapsed_s": elapsed, "remaining_s": remaining})
        return told[-1].get("next_batch_s")

    clock.plan(0, [], pretrain=True)  # a new run: pretraining, round 0, the selection
    assert tell("pretrain simclr", 0, 100, 0.0, None) is None  # no speed known yet
    # a quarter of pretraining in 15 s: 15 / 7,500 passes = 2 ms a pass; 45 s left, then 44,800 + 1,000 passes
    assert tell("pretrain simclr", 25, 100, 15.0, 45.0) == pytest.approx(45 + 89.6 + 2)
    now[0] = 70.0  # a forward pass after pretraining (a cold-start strategy's features) does not set the pace
    assert tell("initial features", 1, 3, 0.5, 1.0) == pytest.approx(0 + 89.6 + 2)
    clock.plan(0, [])
    # round 0's training is slower than pretraining said: 30 s for a quarter, 30 / 11,200 passes a second
    per_pass = 30 / 11_200
    assert tell("round 0 train (50 labels)", 50, 200, 30.0, 90.0) == pytest.approx(90 + 1000 * per_pass, abs=0.05)
    clock.now("after")
    now[0] += 1.0  # 1 s into the forward passes after training, of 1,000 x per_pass expected
    assert tell("round 0 audit", 1, 2, 0.5, 0.5) == pytest.approx(1000 * per_pass - 1, abs=0.05)
    # a later run, started for round 1: the speed and what follows training come from round 0's times
    clock = sizing.NextBatch(recipe, 3000, told.append, clock=lambda: now[0])
    clock.plan(1, [{"round": 0, "train_s": 89.6, "eval_s": 3.0, "select_s": 1.5}])
    assert tell("round 1 train (100 labels)", 0, 50, 0.0, None) == pytest.approx(11_200 * 0.002 + 4.5)
    clock = sizing.NextBatch(recipe, 3000, told.append, clock=lambda: now[0])
    clock.plan(1, [{"round": 0, "n_labeled": 50}])  # a line without its times: no speed, no whole wait yet
    assert tell("round 1 train (100 labels)", 0, 50, 0.0, None) is None


def test_what_is_chosen_ahead_lasts_a_quick_person_through_the_longest_wait():
    recipe = sizing.sized(HUMAN_RECIPE, Folder(3000, 28, True), CPU, has_test=False)  # batches of 50, 100 audit
    est = lambda pretrain_s, round_s: Estimate(10.0, pretrain_s, round_s, 40.0)  # noqa: E731
    # the first batch (150 images) takes 150 s at 1 image/s: 30 s of pretraining are left, then round 0
    assert sizing.lookahead_for(recipe, est(180.0, 70.0)) == 100
    assert sizing.lookahead_for(recipe, est(60.0, 100.0)) == 100  # pretraining ended before the batch did
    assert sizing.lookahead_for(recipe, est(60.0, 10.0)) == 50  # at least a batch
    assert sizing.lookahead_for(recipe, est(180.0, 180.0)) == 200  # at most 4 batches (210 s of labeling)
