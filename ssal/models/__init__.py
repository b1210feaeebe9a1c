"""Models: any timm backbone by name (plus ssal's small nets registered into timm) + a linear head.

A backbone starts from random weights, timm's pretrained weights (``model.pretrained``) or a
checkpoint file (``model.checkpoint``); a pretraining stage and the rounds start from there.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings

import timm
import torch
from timm.models import is_model_pretrained, split_model_name_tag

from ssal.errors import ConfigError, did_you_mean
from ssal.models import backbones  # noqa: F401  (registers cnn_small, resnet18_cifar, wrn_28_2 into timm)
from ssal.models.heads import Classifier

CHECKPOINT_WRAPPERS = ("state_dict", "model", "model_state_dict", "module")  # where checkpoints keep weights


def check_backbone(name: str, pretrained: bool = False) -> None:
    """A one-line error for an unknown backbone, or weights asked for (or named) that do not exist."""
    if not timm.is_model(name):
        hint = did_you_mean(name, [*backbones.SMALL_BACKBONES, *timm.list_models()])  # the closest of all
        raise ConfigError(f"unknown model.backbone '{name}'{hint}; use one of {', '.join(backbones.SMALL_BACKBONES)} "
                          "or any name from timm.list_models()")
    arch, tag = split_model_name_tag(name)
    if tag and not pretrained:
        raise ConfigError(f"model.backbone={name} names pretrained weights ('.{tag}') but model.pretrained is false, "
                          f"which would train from random weights: set model.pretrained=true, or use "
                          f"model.backbone={arch} for random initial weights")
    if not pretrained:
        return
    if arch in backbones.SMALL_BACKBONES:
        raise ConfigError(f"model.backbone={name} has no pretrained weights; pretrain it on your pool with "
                          "pretrain.method=simclr (or byol), or choose a timm model that has some")
    tags = timm.list_pretrained(f"{arch}.*")
    if tag and name not in tags:
        raise ConfigError(f"model.backbone={name}: timm has no weights '.{tag}' for {arch}; its weights: "
                          f"{', '.join(tags) or 'none'}")
    if not is_model_pretrained(name):
        raise ConfigError(f"model.backbone={name} has no pretrained weights in timm; set model.pretrained=false "
                          "(and maybe pretrain.method=simclr), or choose a model from timm.list_pretrained()")


@functools.lru_cache(maxsize=16)
def size_kwargs(name: str, image_size: int | None) -> dict:
    """``{"img_size": image_size}`` for timm models built for one input size (ViTs, ...), which then fit
    the data's size (position embeddings resampled); {} for models that take any size."""
    if image_size is None or split_model_name_tag(name)[0] in backbones.SMALL_BACKBONES:
        return {}
    try:
        timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size)
    except TypeError:  # the model's constructor has no img_size: it takes any input size
        return {}
    return {"img_size": image_size}


def create_backbone(name: str, in_chans: int, image_size: int | None = None, num_classes: int = 0,
                    pretrained: bool = False) -> torch.nn.Module:
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans,
                             **dict(size_kwargs(name, image_size)))


def build_model(cfg, dataset) -> Classifier:
    """The recipe's ``model`` section on ``dataset`` (input channels, image size, classes, normalisation);
    the backbone starts from ``model.pretrained``/``model.checkpoint`` weights when the recipe asks."""
    pretrained, checkpoint = bool(getattr(cfg, "pretrained", False)), getattr(cfg, "checkpoint", None)
    check_backbone(cfg.backbone, pretrained)
    size = getattr(dataset, "image_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    backbone = create_backbone(cfg.backbone, dataset.channels, size)
    state = initial_weights(cfg.backbone, pretrained, checkpoint, dataset.channels, size)
    if state is not None:
        backbone.load_state_dict(state)
    return Classifier(backbone, backbone.num_features, dataset.num_classes, dataset.mean, dataset.std,
                      drop_rate=cfg.drop_rate)


@functools.lru_cache(maxsize=2)
def initial_weights(name: str, pretrained: bool, checkpoint: str | None, in_chans: int,
                    image_size: int | None = None) -> dict | None:
    """The backbone's starting weights (headless, timm's key names), or None for a random start.
    Raises a one-line :class:`ConfigError` when they cannot be had or do not fit."""
    if checkpoint is not None:
        return _checkpoint_weights(name, os.path.expanduser(checkpoint), in_chans, image_size)
    if not pretrained:
        return None
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    hub.setLevel(logging.ERROR)  # its retry lines; the error below says what went wrong
    try:
        model = create_backbone(name, in_chans, image_size, pretrained=True)
    except Exception as e:  # no network and no cache (OSError family), a broken download, ...
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"cannot load timm's pretrained weights for model.backbone={name} ({first[:160]}); they "
                          "need the network the first time (then timm's cache ~/.cache/huggingface): connect, or "
                          "copy that cache here, or set model.pretrained=false") from None
    finally:
        hub.setLevel(level)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _checkpoint_weights(name: str, path: str, in_chans: int, image_size: int | None) -> dict:
    where = f"model.checkpoint '{path}'"
    if not os.path.isfile(path):
        raise ConfigError(f"{where} not found; give the path of a weights file")
    try:
        with _quiet_warnings():  # torch warns about odd pickle protocols of garbage bytes
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a zip/pickle, a pickle with code in it, a truncated file: all "unreadable"
        raise ConfigError(f"{where} is not a torch weights file ({type(e).__name__}); give a state dict saved "
                          "with torch.save") from None
    for _ in range(3):  # unwrap {"state_dict": {...}}, {"model": {...}} (ssal's round checkpoints), ...
        inner = next((state[k] for k in CHECKPOINT_WRAPPERS if isinstance(state, dict)
                      and isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{where} holds no weights (no tensors found); give a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("backbone.") for k in state):  # an ssal classifier: its backbone
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    headless = create_backbone(name, in_chans, image_size).state_dict()
    full = create_backbone(name, in_chans, image_size, num_classes=2).state_dict()
    classifier = set(full) - set(headless)  # a checkpoint's classification head is not used
    missing = sorted(set(headless) - set(state))
    unexpected = sorted(set(state) - set(headless) - classifier)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the backbone's weights are missing (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"it has {len(unexpected)} weights the backbone lacks (e.g. '{unexpected[0]}')")
        raise ConfigError(f"{where} does not fit model.backbone={name}: {'; '.join(parts)}; give a checkpoint of "
                          "this architecture")
    for k, v in headless.items():
        if state[k].shape != v.shape:
            raise ConfigError(f"{where} does not fit model.backbone={name} with {in_chans} input channel(s): "
                              f"'{k}' has shape {tuple(state[k].shape)}, the backbone needs {tuple(v.shape)}")
    return {k: state[k].to(v.dtype) for k, v in headless.items()}


@contextlib.contextmanager
def _quiet_warnings():

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
