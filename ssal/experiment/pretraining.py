"""The pretraining stage: the encoder every round starts from, trained once and cached.

A cache entry lives at ``<cache_dir>/pretrain/<key>.pt`` where the key hashes everything that
determines the encoder's weights: the data section and a fingerprint of the pool, the backbone,
the pretraining section (the chosen method's options only, monitor settings excluded), the
seed, and how it ran: the number of processes, the device type and the mixed precision (each
changes the floating-point results, so an encoder trained otherwise is a different encoder).
So every run of a comparison grid that shares them pretrains once. An entry is written
atomically and carries a checksum of its tensors; one that cannot be read, belongs to another
key or fails the checksum is reported and rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssal import files
from ssal.engine import Engine
from ssal.errors import ConfigError
from ssal.models import build_model
from ssal.pretrain.base import PRETRAINERS
from ssal.pretrain.knn import knn_accuracy, pixels
from ssal.rng import derive_seed
from ssal.run.outputs import check_place, data_folders

FORMAT = 3  # 3: global batches split across processes, views keyed per sample
MONITOR_KEYS = ("method", "eval_every", "knn_k", "knn_temperature")  # do not change the weights
DATA_KEYS_IGNORED = ("num_workers", "test_size", "labels", "test_root")  # the views never see them
OPTIONAL_DATA_KEYS = ("classes", "hflip", "mean", "std")  # in the key only when set (older keys stay valid)


def pretrain_seed(cfg: DictConfig) -> int:
    """The seed of the pretraining: ``pretrain.seed``, or the run's ``seed`` when that is null."""
    return cfg.seed if cfg.pretrain.seed is None else cfg.pretrain.seed


def encoder_identity(cfg: DictConfig) -> dict:
    """What of the recipe determines the pretrained weights: the data section (but the pool's own
    fingerprint, known once the data is loaded, is added by :func:`key_fields`), the backbone, the
    pretraining section (the chosen method's options only, monitor settings excluded) and the seed."""
    p = OmegaConf.to_container(cfg.pretrain)
    section = {k: v for k, v in p.items() if k not in MONITOR_KEYS + ("seed",) and not isinstance(v, dict)}
    section["method"] = cfg.pretrain.method
    if isinstance(p.get(cfg.pretrain.method), dict):
        section[cfg.pretrain.method] = p[cfg.pretrain.method]
    d = {k: v for k, v in OmegaConf.to_container(cfg.data).items()
         if k not in DATA_KEYS_IGNORED and not (k in OPTIONAL_DATA_KEYS and v is None)}
    out = {"format": FORMAT, "data": d, "backbone": cfg.model.backbone, "pretrain": section,
           "seed": pretrain_seed(cfg)}
    if cfg.model.pretrained:  # the encoder starts from these weights
        out["pretrained"] = True
    if cfg.model.checkpoint is not None:
        out["checkpoint"] = _file_digest(cfg.model.checkpoint)
    return out


def _file_digest(path: str) -> str:
    """The content digest of a weights file (its path alone would miss a file replaced in place)."""

    h = hashlib.blake2b(digest_size=16)
    try:
        with open(os.path.expanduser(path), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return f"unreadable:{path}"
    return h.hexdigest()


def key_fields(cfg: DictConfig, data: Any, engine: Engine) -> dict:
    """What determines the pretrained weights (hashed into the cache key)."""
    execution = {"processes": engine.world, "device": engine.device.type,
                 "mixed_precision": engine.accelerator.mixed_precision}
    return {**encoder_identity(cfg), "pool": data.fingerprint(), "execution": execution}


def cache_key(fields: dict) -> str:
    return files.json_digest(fields)


def cache_path(cfg: DictConfig, key: str) -> Path:
    return Path(os.path.expanduser(cfg.cache_dir)) / "pretrain" / f"{key}.pt"


def check_cache_dir(cfg: DictConfig) -> None:
    """A one-line error when the recipe's cache_dir cannot be written (the pretrained encoders, and for
    folders the image check and the normalisation, are kept there), or lies in a run directory, a
    comparison or a data folder of the recipe (:mod:`ssal.run.outputs`). Reads only."""
    check_place(cfg.cache_dir, "cache_dir", data_folders(OmegaConf.to_container(cfg)))
    problem = files.writable_problem(cfg.cache_dir)
    if problem:
        raise ConfigError(f"cache_dir '{cfg.cache_dir}' cannot be used: {problem}; set cache_dir=... to a "
                          "writable folder")


def load_entry(path: Path, key: str) -> tuple[dict | None, str | None]:
    """(entry, None) for a valid cache entry, (None, reason) otherwise (None, None: no entry)."""
    if not path.exists():
        return None, None
    try:
        with warnings.catch_warnings():  # garbage bytes can look like an odd pickle protocol to torch
            warnings.simplefilter("ignore")
            entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, pickle errors: all mean "rebuild"
        return None, f"unreadable: {type(e).__name__}"
    if not isinstance(entry, dict) or not {"format", "key", "backbone", "checksum", "log"} <= entry.keys():
        return None, "not an ssal pretraining cache entry"
    if entry["format"] != FORMAT or entry["key"] != key:
        return None, "written for another key or format"
    if files.tensor_checksum(entry["backbone"]) != entry["checksum"]:
        return None, "checksum mismatch"
    return entry, None


def save_entry(path: Path, key: str, fields: dict, state: dict, log: list[dict]) -> None:
    files.mkdirs(path.parent)
    files.remove_stale_tmp(path.parent, only_dead=True)  # other processes may be writing entries now
    entry = {"format": FORMAT, "key": key, "fields": json.dumps(fields, sort_keys=True), "backbone": state,
             "checksum": files.tensor_checksum(state), "log": log}
    files.torch_save(path, entry)
    files.write_text(path.with_suffix(".jsonl"), "".join(files.dumps(line) + "\n" for line in log))


def pretrained_encoder(cfg: DictConfig, data: Any, engine: Engine, *, use_cache: bool = True,
                       run_dir: Any = None) -> dict[str, torch.Tensor] | None:
    """The pretrained backbone's state dict (from the cache or trained now), or None for
    ``pretrain.method: none``. Writes the monitor log to the run directory (a
    :class:`ssal.run.store.RunDir`)'s ``pretrain.jsonl``."""
    if cfg.pretrain.method == "none":
        return None
    fields = key_fields(cfg, data, engine)
    key = cache_key(fields)
    path = cache_path(cfg, key)
    entry, problem = load_entry(path, key) if use_cache else (None, None)
    if entry is not None:
        last = entry["log"][-1] if entry["log"] else {}
        engine.print(f"pretrain: used the cached {cfg.pretrain.method} encoder {path} "
                     f"(kNN accuracy {100 * last.get('knn_acc', float('nan')):.2f} %); --no-cache trains a new one")
        state, log = entry["backbone"], entry["log"]
    else:
        if problem:
            engine.print(f"[yellow]pretrain: cache entry {path} is {problem}; pretraining again")
        state, log = train_encoder(cfg, data, engine)
        if engine.is_main:
            save_entry(path, key, fields, state, log)
            engine.print(f"pretrain: cached the encoder at {path}")
        engine.accelerator.wait_for_everyone()
    if run_dir is not None:
        run_dir.write_pretrain_log([{**line, "cache": str(path)} for line in log])
    return state


def train_encoder(cfg: DictConfig, data: Any, engine: Engine) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Pretrain a fresh backbone on the whole pool; kNN-monitor it on the test split."""
    p = cfg.pretrain
    torch.manual_seed(derive_seed(pretrain_seed(cfg), "pretrain", "init"))
    encoder = build_model(cfg.model, data)
    method = PRETRAINERS.get(p.method)(encoder, p, data)
    pool = torch.arange(len(data.train))
    test = torch.arange(len(data.test))
    log: list[dict] = []
    t0 = time.perf_counter()

    def knn(bank: torch.Tensor, queries: torch.Tensor) -> float:
        return knn_accuracy(bank, data.train.targets, queries, data.test.targets, data.num_classes,
                            p.knn_k, p.knn_temperature)

    labeled = data.has_truth and data.has_test

    def monitor(epoch: int) -> dict[str, float]:
        if not labeled:  # a pool without labels (people label it): nothing to measure the features against
            log.append({"epoch": epoch, "elapsed_s": round(time.perf_counter() - t0, 2)})
            return {}
        bs = cfg.train.eval_batch_size
        bank = engine.predict(encoder, data.train, pool, ("features",), bs)["features"]
        queries = engine.predict(encoder, data.test, test, ("features",), bs)["features"]
        line = {"epoch": epoch, "knn_acc": round(knn(bank, queries), 5),
                "elapsed_s": round(time.perf_counter() - t0, 2)}
        if epoch == 0:  # references: random initialisation (this line) and raw pixels
            px_bank, px_test = pixels(data.train), pixels(data.test)
            line["knn_pixels_acc"] = None if px_bank is None else round(knn(px_bank, px_test), 5)
        log.append(line)
        return {"knn": line["knn_acc"]}

    monitor(0)
    if labeled:
        engine.print(f"pretrain {p.method}: kNN accuracy at random init {100 * log[0]['knn_acc']:.2f} %, "
                     f"raw pixels {100 * (log[0]['knn_pixels_acc'] or float('nan')):.2f} %")

    def on_epoch(epoch: int) -> dict[str, float]:
        if epoch == p.epochs or (p.eval_every > 0 and epoch % p.eval_every == 0):
            return monitor(epoch)
        return {}

    fit = engine.pretrain(method, data.train, pool, p, seed=derive_seed(pretrain_seed(cfg), "pretrain"),
                          on_epoch=on_epoch, desc=f"pretrain {p.method}")
    log[-1].update({f"train_{k}": round(v, 5) for k, v in fit.logs.items()}, train_s=round(fit.seconds, 2))
    knn_note = f", kNN accuracy {100 * log[-1]['knn_acc']:.2f} %" if labeled else ""
    engine.print(f"pretrain {p.method}: {p.epochs} epochs in {fit.seconds:.0f} s{knn_note}")
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.backbone.state_dict().items()}
    return state, log
