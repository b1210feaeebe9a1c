"""How many rows of an N-wide matrix to compute at a time (pairwise distances, similarities), so that one
block stays within a fixed memory however large the pool: 256 MB of float32 by default."""

from __future__ import annotations

BLOCK_BYTES = 2**28


def rows_per_block(n: int, item_bytes: int = 4, budget: int = BLOCK_BYTES, most: int = 4096) -> int:
    """Rows of an ``n``-wide block of ``item_bytes`` entries that fit ``budget`` bytes (at least 1)."""
    return max(1, min(most, budget // max(1, n * item_bytes)))
