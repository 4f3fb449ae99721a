"""Batched fast generation, streamed to disk (bounded memory for any N), with timing."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from simgan.data import calochallenge as cc
from simgan.data.binning import Binning
from simgan.data.rootio import write_root
from simgan.errors import SimganError
from simgan.io import atomic_path


def energies_from_file(path, max_events: int | None = None) -> tuple[np.ndarray, dict]:
    """Incident energies (and extra conditions) of a canonical file, read chunk by chunk."""
    es, conds = [], {}
    for _, e, _, c in cc.iter_chunks(path, 20000, stop=max_events, check=False):
        es.append(e)
        for k, v in c.items():
            conds.setdefault(k, []).append(v)
    return np.concatenate(es), {k: np.concatenate(v) for k, v in conds.items()}


def log_uniform_energies(n: int, lo_gev: float, hi_gev: float, seed: int) -> np.ndarray:
    if not (0 < lo_gev <= hi_gev):
        raise SimganError(f"--energy-range {lo_gev} {hi_gev}: expected 0 < MIN <= MAX (GeV)")
    rng = np.random.default_rng([seed, 0xE])
    return np.exp(rng.uniform(math.log(lo_gev * 1e3), math.log(hi_gev * 1e3), n))


def write_generated(out, energies: np.ndarray, conditions: dict, binning: Binning, batch_size: int, sample_batch,
                    fmt: str = "hdf5", metadata: dict | None = None, progress: bool = True, device="cpu") -> dict:
    """Write len(energies) showers into `out` atomically, `batch_size` at a time; returns timing.

    sample_batch(lo, hi) returns the (hi - lo, n_voxels) showers for energies[lo:hi];
    HDF5 is streamed (bounded memory), ROOT is written at the end.
    """
    out = Path(out)
    keys = sorted(conditions)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(energies), desc="generate", unit="shower")
    meta = {"generator": "simgan", **(metadata or {})}
    sample_time = 0.0
    chunks = []
    with atomic_path(out, suffix=out.suffix or ".h5") as tmp:
        writer = cc.ShowerWriter(tmp, binning, meta, keys) if fmt == "hdf5" else None
        try:
            for lo in range(0, len(energies), batch_size):
                hi = min(lo + batch_size, len(energies))
                t = time.perf_counter()
                x = sample_batch(lo, hi)
                sample_time += time.perf_counter() - t
                if writer:
                    writer.append(energies[lo:hi], x, {k: conditions[k][lo:hi] for k in keys})
                else:
                    chunks.append(x)
                if bar:
                    bar.update(hi - lo)
            timing = {"events": int(len(energies)), "sample_seconds": sample_time,
                      "showers_per_s": len(energies) / sample_time if sample_time > 0 else float("inf"),
                      "batch_size": batch_size, "device": str(device)}
            if writer:
                writer.set_metadata({**meta, "timing": timing})
        finally:
            if writer:
                writer.close()
            if bar:
                bar.close()
        if fmt == "root":
            write_root(tmp, cc.ShowerData(energies, np.concatenate(chunks), binning, conditions, meta))
    return timing


def generate_to_file(model, energies: np.ndarray, conditions: dict, out, binning: Binning, batch_size: int = 1000,
                     device="cpu", seed: int = 0, fmt: str = "hdf5", metadata: dict | None = None,
                     progress: bool = True) -> dict:
    """Generate from a simgan model (checkpoint) into `out` atomically; returns timing."""
    keys = sorted(conditions)
    extra = np.stack([conditions[k] for k in keys], 1) if keys else None
    expected = model.transform.cond_dim - 1
    if (0 if extra is None else extra.shape[1]) != expected:
        raise SimganError(f"the model expects {expected} extra condition(s) besides the energy, got {keys}")
    model = model.to(device).eval()
    g = torch.Generator(device=device)
    g.manual_seed(seed)

    def sample_batch(lo: int, hi: int) -> np.ndarray:
        e = torch.as_tensor(energies[lo:hi], device=device)
        x = None if extra is None else torch.as_tensor(extra[lo:hi], device=device)
        return model.sample(e, x, g).cpu().numpy()

    return write_generated(out, energies, conditions, binning, batch_size, sample_batch, fmt, metadata, progress,
                           device)
