"""One rule for derived seeds: a seed for each (run seed, shard, step, rank, row, ...) key."""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int, bound: int = 2**62, bits: int = 64) -> int:
    """An integer in [0, bound) from numpy's SeedSequence of `keys`: independent streams for
    every key tuple, the same on every machine and however the work is split."""
    dtype = np.uint64 if bits == 64 else np.uint32
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=dtype)[0] % bound)
