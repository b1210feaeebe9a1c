"""Random numbers keyed per sample: one independent stream per sample, vectorised over a batch.

Every random choice ssal makes for a sample (its augmented views, a dropout mask, an MC-dropout
pass) is a pure function of a 64-bit *key* of that sample, e.g. the key of (seed, step, slot in
the global batch) in training or (seed, pool index, pass) in selection. So a sample gets the same
draws whichever process, DataLoader worker or chunk handles it, and N processes make the same
experiment as one.

``torch.Generator`` holds one stream per generator (a Python loop per sample to get one stream
each) and has no counter-based interface, so the streams are hashed here by hand: the SplitMix64
finaliser (Steele, Lea & Flood 2014) in wrapping int64 arithmetic, exact on any device.
Tests check it bit for bit against the same function on Python integers.
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any

import torch

_U64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    c &= _U64
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _M1, _M2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 on int64 tensors: a bijective, well-avalanched hash of every element.
    ``>>`` on int64 is arithmetic, so each shift is masked to make it logical."""
    z = z + _GOLDEN  # a new tensor: the rest works in place on it
    for shift, mult in ((30, _M1), (27, _M2)):
        z.bitwise_xor_((z >> shift).bitwise_and_((1 << (64 - shift)) - 1)).mul_(mult)
    return z.bitwise_xor_((z >> 31).bitwise_and_((1 << 33) - 1))


@functools.lru_cache(maxsize=1024)
def _name(tag: str | int) -> int:
    """A stable int64 for a tag (a purpose such as ``"hflip"``, or a number)."""
    if isinstance(tag, int):
        return _signed(tag)

    return _signed(int.from_bytes(hashlib.blake2b(tag.encode(), digest_size=8).digest(), "little"))


def sample_keys(seed: int, *ids: torch.Tensor | int | str) -> torch.Tensor:
    """Keys (int64) from a seed and per-sample ids: tensors (broadcast together), ints or tags.
    ``sample_keys(seed, step, slots)`` -> one key per slot."""
    key = mix(torch.tensor(_name(seed), dtype=torch.long))
    for part in ids:
        part = torch.as_tensor(_name(part) if isinstance(part, (int, str)) else part, dtype=torch.long)
        key = mix(part ^ key)  # a 0-dim key broadcasts over the part, on the part's device
    return key


def derive(keys: torch.Tensor, tag: str | int) -> torch.Tensor:
    """Keys of a sub-stream (e.g. each of a sample's two RandAugment ops): a new key per sample."""
    return mix(keys.long() ^ _name(tag))


def _bits(keys: torch.Tensor, tag: str, shape: tuple[int, ...]) -> torch.Tensor:
    """[B, *shape] well-mixed int64 draws, element j of sample b from (keys[b], tag, j)."""
    base = derive(keys, tag)
    n = math.prod(shape)
    if n == 1 and not shape:
        return mix(base)
    z = mix(base.unsqueeze(1) + torch.arange(n, device=keys.device))  # element j: the j-th draw
    return z.view(len(keys), *shape)


def uniform(keys: torch.Tensor, tag: str, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """float32 in [0, 1) (24 random bits), shape [B, *shape]."""
    return (_bits(keys, tag, shape) >> 40).bitwise_and_((1 << 24) - 1).float().mul_(2.0 ** -24)


def randint(keys: torch.Tensor, tag: str, low: int, high: int, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """int64 uniform in [low, high) (53 random bits, so the bias is below 2^-40 for any range used)."""
    u = ((_bits(keys, tag, shape) >> 11) & ((1 << 53) - 1)).double() * (2.0 ** -53)
    return (u * (high - low)).floor().long() + low


def to_seed(keys: torch.Tensor) -> list[int]:
    """Non-negative 63-bit seeds from keys, for libraries that draw from a global generator."""
    return (keys & ((1 << 63) - 1)).tolist()


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from parts (e.g. the recipe seed, the round, a purpose), stable across runs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
