"""The seeded train/val/test split every domain's prepare stage uses."""

from __future__ import annotations

import numpy as np

from simgan.errors import SimganError


def split_indices(n: int, fractions, seed: int) -> dict[str, np.ndarray]:
    perm = np.random.default_rng([seed, 0x5A]).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    if min(n_train, n_val, n - n_train - n_val) < 1:
        raise SimganError(f"prepare: {n} events are too few to split into train/val/test with fractions {tuple(fractions)}")
    return {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
            "test": np.sort(perm[n_train + n_val:])}
