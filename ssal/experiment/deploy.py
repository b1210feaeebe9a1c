"""A run's model, out of the run: predictions for any folder of images (``ssal predict``) and a
weights file that timm alone loads (``ssal export``).

Both read the last committed round's checkpoint (its EMA weights when the run kept an EMA: what the
round evaluated) and the preprocessing the run recorded in ``run.json``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf
from timm.models import split_model_name_tag

from ssal import files
from ssal.data import load_dataset
from ssal.data.datasets import FolderSplit
from ssal.data.imagecheck import check_images
from ssal.data.walk import walk_images
from ssal.engine import Engine
from ssal.errors import ConfigError, DataError
from ssal.experiment.trainer import evaluation_model
from ssal.files import Damaged
from ssal.models import build_model, create_backbone, size_kwargs
from ssal.models.ensemble import Ensemble
from ssal.recipe import from_dict
from ssal.run.outputs import Output, check_file, data_folders, resolved, starts_with
from ssal.run.store import RunDir

EXPORT_FORMAT = "ssal-export/1"
PREDICTION_COLUMNS = ("path", "index", "prediction", "confidence", "label")


def _trained(run_dir: str | os.PathLike):
    """(run dir, recipe, preprocessing, model, round) of a run's last committed round."""

    rd = RunDir(run_dir)
    kind = rd.kind()
    if kind != "run":
        raise ConfigError(f"'{rd.path}' is not a run directory (no run.json); give the output_dir of a run")
    identity = rd.identity()
    rows = rd.committed()
    if not rows:
        raise ConfigError(f"{rd.path} has no trained round yet; run it first ('ssal run --resume {rd.path}')")
    r = rows[-1]["round"]
    try:
        ckpt = rd.load_checkpoint(r)
    except Damaged as d:
        raise DataError(f"{d.path} is {d.reason}; 'ssal run --resume {rd.path}' after deleting the last line of "
                        f"metrics.jsonl trains that round again") from None
    cfg = from_dict({**identity["recipe"], "output_dir": str(rd.path)})
    prep = identity.get("preprocess")
    if prep is None:
        raise DataError(f"{rd.path}/run.json does not record the preprocessing (made by an older ssal); run it again "
                        "with this version")
    model_cfg = OmegaConf.merge(cfg.model, {"pretrained": False, "checkpoint": None})
    spec = SimpleNamespace(channels=prep["channels"], num_classes=len(prep["classes"]), mean=tuple(prep["mean"]),
                           std=tuple(prep["std"]), image_size=prep["image_size"])
    model = evaluation_model(ckpt, lambda: build_model(model_cfg, spec))
    model.eval()
    return rd, cfg, prep, model, r


PREDICTIONS = Output("a predictions CSV", starts_with(",".join(PREDICTION_COLUMNS).encode() + b"\r\n"))


def _is_export(path: Path) -> bool:
    if not starts_with(b"PK")(path):  # torch's zip format, before anything is unpickled
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file after all: not ours
        return False
    return isinstance(ck, dict) and ck.get("format") == EXPORT_FORMAT


EXPORT = Output("a model file of 'ssal export'", _is_export)


def _out(rd: RunDir, out: str | os.PathLike, kind: Output, force: bool, *more: str | os.PathLike) -> Path:
    """``out`` checked before any work: outside every run, comparison and the run's data folders."""
    if rd.kind() != "run":
        raise ConfigError(f"'{rd.path}' is not a run directory (no run.json); give the output_dir of a run")
    folders = data_folders(rd.identity()["recipe"]) + [resolved(m) for m in more]
    return check_file(out, kind, force, folders)


def predict(run_dir: str | os.PathLike, out: str | os.PathLike, images: str | os.PathLike | None = None,
            batch_size: int | None = None, progress: bool = True, force: bool = False, say=print) -> tuple[Path, int]:
    """Write ``out``: path, index, predicted class, confidence (and the label people gave, for pool
    images) for every image of the run's pool, or of the folder ``images``. ``say`` prints a note."""

    out = _out(RunDir(run_dir), out, PREDICTIONS, force, *([images] if images is not None else []))
    rd, cfg, prep, model, r = _trained(run_dir)
    labels: dict[int, int] = {}
    if images is None:
        data = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir)
        for note in data.notes:
            say(f"note: {note}")
        if data.fingerprint() != rd.identity()["pool"]:
            raise DataError(f"the data under data.root changed since {rd.path} was made; give --images FOLDER to "
                            "predict other images")
        split, names = data.train, data.names()
        try:
            labels = {i: y for i, y, _ in rd.load_pool(len(split)).state_dict()["labeled"] if y >= 0}
        except Damaged:
            labels = {}
    else:
        root = Path(os.path.expanduser(str(images)))
        if not root.is_dir():
            raise ConfigError(f"--images '{images}' is not a folder; give a folder of images")
        found = walk_images(root)
        paths = found.files
        if not paths:
            raise DataError(f"--images '{images}' holds no image files" +
                            (f" ({found.note('it')})" if found.note("it") else ""))
        if found.note("--images"):
            say(f"note: {found.note('--images')}")
        size = (prep["image_size"], prep["image_size"])
        split = FolderSplit([(p, -1) for p in paths], size, prep["channels"], root)
        names = split.files()[1]
        check_images(root, names, cfg.cache_dir)
    engine = Engine("no", cfg.data.num_workers, progress=progress)
    probs = engine.predict(model, split, torch.arange(len(split)), ("probs",), batch_size or cfg.train.eval_batch_size,
                           desc=f"predict ({len(split)} images)")["probs"]
    conf, guess = probs.max(1)
    classes = prep["classes"]
    rows = ([names[i] if names else "", i, classes[int(guess[i])], f"{float(conf[i]):.4f}",
             classes[labels[i]] if i in labels else ""] for i in range(len(split)))
    if engine.is_main:
        files.write_text(out, files.csv_text(PREDICTION_COLUMNS, rows))
    return Path(out), len(split)


def export(run_dir: str | os.PathLike, out: str | os.PathLike, force: bool = False) -> Path:
    """Write the run's model as a timm state dict with its class names and preprocessing (see README)."""

    out = _out(RunDir(run_dir), out, EXPORT, force)
    rd, cfg, prep, model, r = _trained(run_dir)
    if isinstance(model, Ensemble):
        raise ConfigError(f"{rd.path} trained an ensemble of {len(model.members)} models (active.strategy=ens) and "
                          "a timm file holds one: use 'ssal predict' with this run, or export a run of one model")
    arch = split_model_name_tag(cfg.model.backbone)[0]
    classes = prep["classes"]
    kwargs = size_kwargs(arch, prep["image_size"])
    net = create_backbone(arch, prep["channels"], prep["image_size"], num_classes=len(classes))
    result = net.load_state_dict(model.backbone.state_dict(), strict=False)
    head = net.get_classifier()
    head_keys = {k for k in net.state_dict() if k not in model.backbone.state_dict()}
    if result.unexpected_keys or set(result.missing_keys) != head_keys or not isinstance(head, torch.nn.Linear) \
            or head.weight.shape != model.head.weight.shape:
        raise ConfigError(f"model.backbone={cfg.model.backbone} has no single linear classifier in timm, so its "
                          "weights cannot be exported for timm; load the checkpoint in checkpoints/ with ssal instead")
    head.load_state_dict(model.head.state_dict())
    net.eval()
    mean = torch.tensor(prep["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(prep["std"]).view(1, -1, 1, 1)
    side = prep["image_size"]
    x = torch.rand(2, prep["channels"], side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.allclose(model(x), net((x - mean) / std), atol=1e-4, rtol=1e-4)
    if not same:  # pragma: no cover - a timm model whose forward differs from features + classifier
        raise ConfigError(f"model.backbone={cfg.model.backbone}: timm's model does not reproduce ssal's outputs, so "
                          "it cannot be exported for timm alone")
    files.torch_save(out, {
        "format": EXPORT_FORMAT, "arch": arch, "num_classes": len(classes), "in_chans": prep["channels"],
        "classes": list(classes), "image_size": prep["image_size"], "mean": list(prep["mean"]),
        "std": list(prep["std"]), "resize": "shorter side to image_size (bilinear), then center crop",
        "kwargs": kwargs,  # more timm.create_model arguments (img_size for models built for one size)
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
        "run": rd.run_id(), "round": r})
    return Path(out)
