"""Streaming access for training: a torch IterableDataset over file chunks.

Memory is bounded by one chunk (plus the batch), whatever the file size. Each epoch
visits the chunks in a seeded random order and shuffles within each chunk; under DDP
each rank takes every world_size-th chunk. With `batch_size`, it yields whole batches
(showers (B, V), energies (B,), conditions) cut from the shuffled chunk, for
`DataLoader(dataset, batch_size=None)`: no per-shower Python work.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset

from simgan.domains.calorimeter.data.calochallenge import inspect, iter_chunks


class ChunkedShowerDataset(IterableDataset):
    def __init__(self, path, chunk_size: int = 4096, seed: int = 0, rank: int = 0, world_size: int = 1,
                 check: bool = False, batch_size: int | None = None):
        self.path = str(path)
        self.info = inspect(path)
        self.chunk_size = chunk_size
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.check = check
        self.batch_size = batch_size
        self.epoch = 0

    def __len__(self) -> int:
        return self.info.n_events

    def __iter__(self):
        n = self.info.n_events
        starts = np.arange(0, n, self.chunk_size)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(starts))[self.rank::self.world_size]
        self.epoch += 1
        for c in order:
            lo = int(starts[c])
            for _, e, s, cond in iter_chunks(self.path, self.chunk_size, self.info.binning, start=lo,
                                             stop=lo + self.chunk_size, check=self.check):
                perm = rng.permutation(len(e))
                if self.batch_size:
                    for b in range(0, len(perm), self.batch_size):
                        i = perm[b:b + self.batch_size]
                        yield torch.from_numpy(s[i]), torch.from_numpy(e[i].astype(np.float64)), {
                            k: torch.from_numpy(np.asarray(v[i])) for k, v in cond.items()}
                    continue
                for i in perm:
                    yield torch.from_numpy(s[i]), torch.tensor(e[i], dtype=torch.float64), {
                        k: torch.tensor(v[i]) for k, v in cond.items()}
