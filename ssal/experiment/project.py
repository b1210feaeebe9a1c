"""``ssal init``: a recipe for labeling a folder of one's own images.

:data:`HUMAN_RECIPE` is the recipe ``recipes/imagefolder/human.yaml`` holds (a test keeps them equal);
``init`` fills in the folder and the classes and writes it where the user says.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ssal import files
from ssal.data import DATASETS
from ssal.data.label_files import read_seed_labels
from ssal.errors import ConfigError, one_line
from ssal.experiment import sizing
from ssal.experiment.pretraining import check_cache_dir
from ssal.recipe import from_dict
from ssal.run.outputs import check_place, check_run_place, data_folders

HUMAN_RECIPE = {
    "data": {"dataset": "imagefolder", "root": "???", "classes": "???", "image_size": 64, "channels": 3,
             "hflip": True},
    "model": {"backbone": "resnet18", "pretrained": False},
    "pretrain": {"method": "simclr", "epochs": 20, "batch_size": 128, "view_size": 64},
    "train": {"method": "fixmatch", "steps": 500, "batch_size": 32, "lr": 0.03, "backbone_lr_scale": 0.1,
              "ema": 0.99, "reinit": False, "continue_steps": 125},
    "active": {"oracle": "human", "initial": 50, "budget": 50, "rounds": 10, "initial_strategy": "random",
               "strategy": "margin", "audit": 100, "lookahead": 50},
}

HEADER = """\
# Label your own images with ssal: {images}
# 'ssal label serve {recipe}' starts the run and its labeling page: the first batch is asked at once,
# pretraining runs behind it, and each complete batch trains the next round from the page.
# (Or: 'ssal run {recipe}', then 'ssal label import RUN_DIR FILE' and 'ssal run --resume RUN_DIR'.)
# Sized by 'ssal init' for this folder and machine:
{sizing}
# With the network (or timm's cache), ImageNet weights start much better on photos:
#   model.backbone: resnet18.a1_in1k, model.pretrained: true, pretrain.method: none
"""


def init_project(folder: str | os.PathLike, images: str | os.PathLike, classes: list[str], test: str | None = None,
                 labels: str | None = None, force: bool = False) -> tuple[Path, list[str]]:
    """Write ``folder/recipe.yaml`` (checked like any recipe, its folders walked): its path, and lines for
    people saying what was found."""

    folder = Path(os.path.expanduser(str(folder)))
    path = folder / "recipe.yaml"
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; edit it, or pass --force to write it again")
    images = Path(os.path.expanduser(str(images))).resolve()
    if not images.is_dir():
        raise ConfigError(f"--images '{images}' is not a folder; give the folder of images to label")
    recipe = {k: dict(v) for k, v in HUMAN_RECIPE.items()}
    recipe["name"] = folder.resolve().name
    recipe["output_dir"] = str((folder / "run").resolve())
    recipe["data"].update(root=str(images), classes=list(classes))
    if test is not None:
        recipe["data"]["test_root"] = str(Path(os.path.expanduser(test)).resolve())
    if labels is not None:
        recipe["data"]["labels"] = str(Path(os.path.expanduser(labels)).resolve())
    cfg = from_dict(recipe)  # the same checks as a recipe file (classes, names, values)
    data = _check_data(cfg)
    recipe, told = _sized(recipe, data)
    cfg = from_dict(recipe)
    check_place(folder, "DIR", data_folders(recipe))
    check_run_place(cfg.output_dir, data_folders(recipe))
    check_cache_dir(cfg)
    problem = files.writable_problem(folder)
    if problem:
        raise ConfigError(f"'{folder}' cannot be written: {problem}; choose another folder")
    files.mkdirs(folder)
    sized = "\n".join(f"#   {line}" for line in told)
    text = HEADER.format(images=one_line(str(images)), recipe=one_line(str(path)), sizing=sized) + \
        yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    files.write_text(path, text)
    audit = recipe["active"]["audit"]
    found = [f"{len(data.train)} images to label in {one_line(str(images))}"
             + (f", {len(data.test)} test images in {len(data.classes)} classes" if data.has_test else
                f" (no test folder: {audit} random images asked with the first batch and never trained on measure "
                "each round's accuracy, active.audit; --test FOLDER measures it on a labeled folder instead)")
             + (f", {len(data.seed_labels[0])} labeled already" if data.seed_labels is not None else "")]
    return path, found + told + [f"note: {note}" for note in data.notes]


def _sized(recipe: dict, data) -> tuple[dict, list[str]]:
    """The recipe sized to the folder and this machine (:mod:`ssal.experiment.sizing`), and what to tell."""
    root, names = data.train.files()
    folder, open_s = sizing.look([root / name for name in names])
    machine = sizing.this_machine()
    recipe = sizing.sized(recipe, folder, machine, data.has_test)
    per_image = sizing.seconds_per_image(recipe, len(data.classes))
    recipe["pretrain"]["epochs"] = sizing.epochs_for(folder.count, per_image, machine.gpu is not None,
                                                     HUMAN_RECIPE["pretrain"]["epochs"])
    est = sizing.estimate(recipe, folder.count, per_image, open_s)
    if recipe["active"].get("lookahead"):
        recipe["active"]["lookahead"] = sizing.lookahead_for(recipe, est)
    return recipe, sizing.describe(folder, machine, recipe, est)


def _check_data(cfg):
    """The folders and the label file of ``cfg`` as a run reads them (walked, not decoded): an empty image
    folder, a test folder whose class folders are not the classes, a label file that is missing or names
    other images are one-line errors now, not at the run."""

    data = DATASETS.get("imagefolder")(cfg.data)
    if cfg.data.labels is not None:
        data.seed_labels = read_seed_labels(cfg.data.labels, data)
    return data
