"""Batched fast generation, streamed to disk (bounded memory for any N), with timing."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from simgan.checkpoint import checkpoint_metadata, load_checkpoint
from simgan.domains.base import warn_outside
from simgan.domains.calorimeter.data import calochallenge as cc
from simgan.domains.calorimeter.data.binning import Binning, load_binning, parse_binning_xml
from simgan.domains.calorimeter.data.rootio import write_root
from simgan.domains.calorimeter.models.energy import layer_energies
from simgan.domains.calorimeter.models.registry import model_from_args
from simgan.domains.calorimeter.sim.geant4 import GeantPool
from simgan.domains.calorimeter.sim.produce import merge_shards, settings_of, simulate_energies
from simgan.errors import SimganError
from simgan.io import atomic_path
from simgan.seeding import derive_seed

ENERGY_COLUMN = "incident_energy"  # the registered model's input column, MeV


def calorimeter_model(ckpt: dict, device="cpu"):
    """The model of a loaded calorimeter checkpoint, in eval mode on `device`."""
    model = model_from_args(ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def checkpoint_binning(ckpt: dict, source: str = "<checkpoint>") -> Binning:
    """The voxel layout a checkpoint generates: the training data's, stored in it (older
    checkpoints: the config's domain.geometry)."""
    if ckpt.get("binning_xml"):
        return parse_binning_xml(ckpt["binning_xml"], source=f"{source} (binning_xml)")
    return load_binning((ckpt["config"].get("domain") or {}).get("geometry", "reference"))


def energies_from_file(path, max_events: int | None = None) -> tuple[np.ndarray, dict]:
    """Incident energies (and extra conditions) of a canonical file, read chunk by chunk and
    checked: finite, > 0 and in MeV (the showers only serve the unit check)."""
    es, deposited, conds = [], [], {}
    for lo, e, s, c in cc.iter_chunks(path, 20000, stop=max_events, check=False):
        cc.check_values(path, lo, e, np.zeros((len(e), 0), np.float32), c)
        es.append(e)
        deposited.append(s.sum(1, dtype=np.float64))
        for k, v in c.items():
            conds.setdefault(k, []).append(v)
    if not es:
        raise SimganError(f"{path}: no showers to take incident energies from")
    energies = np.concatenate(es)
    cc.check_energy_units(path, energies, np.concatenate(deposited))
    return energies, {k: np.concatenate(v) for k, v in conds.items()}


def model_conditions(ckpt: dict, conditions: dict, source) -> dict:
    """The extra conditions a checkpoint was trained with, taken by name from `conditions` (a
    file's datasets); other datasets of the file are not the model's business."""
    names = list(ckpt.get("extra_conditions", []))
    missing = [k for k in names if k not in conditions]
    if missing:
        raise SimganError(f"{source}: no dataset {missing}: the model was trained with the extra condition(s) "
                          f"{names} besides the energy (found {sorted(conditions) or 'none'})")
    return {k: conditions[k] for k in names}


def layer_energies_from_file(path, layer_voxels: list[int], threshold_mev: float,
                             max_events: int | None = None) -> np.ndarray:
    """(N, L) per-layer sums of the voxels above the threshold, read chunk by chunk."""
    return np.concatenate([layer_energies(s, layer_voxels, threshold_mev)
                           for _, _, s, _ in cc.iter_chunks(path, 20000, stop=max_events, check=False)])


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


def _block_seed(seed: int, row: int) -> int:
    return derive_seed(seed, row)


def shard_rows(n: int, batch_size: int, index: int, count: int) -> tuple[int, int]:
    """Rows [lo, hi) of shard `index` of `count`: whole batches, spread evenly. Because each
    batch's noise is seeded by (seed, first row), shards merged equal one unsharded run."""
    if count <= 0 or not 0 <= index < count:
        raise SimganError(f"--shard-index {index} --shard-count {count}: expected 0 <= index < count")
    n_batches = math.ceil(n / batch_size)
    lo, hi = index * n_batches // count, (index + 1) * n_batches // count
    return min(lo * batch_size, n), min(hi * batch_size, n)


def generate_to_file(model, energies: np.ndarray, conditions: dict, out, binning: Binning, batch_size: int = 1000,
                     device="cpu", seed: int = 0, fmt: str = "hdf5", metadata: dict | None = None,
                     progress: bool = True, rows: tuple[int, int] | None = None, precision: str = "fp32",
                     layer_energies: np.ndarray | None = None, calibrated: bool = True) -> dict:
    """Generate from a simgan model (checkpoint) into `out` atomically; returns timing.

    Each batch's noise is seeded by (seed, its first row), so the showers are a function of
    (model, energies, seed, batch_size) however the rows are split. `rows=(lo, hi)` writes
    only those rows (lo a multiple of batch_size), with an `event_index` for `simgan merge`.
    `layer_energies` (N, L) replace a two-stage model's energy stage (the ablation mode);
    `calibrated=False` leaves out a fitted calibration.
    """
    keys = sorted(conditions)
    extra = np.stack([conditions[k] for k in keys], 1) if keys else None
    expected = model.transform.cond_dim - 1
    if (0 if extra is None else extra.shape[1]) != expected:
        raise SimganError(f"the model expects {expected} extra condition(s) besides the energy, got {keys}")
    offset, stop = rows if rows is not None else (0, len(energies))
    if offset % batch_size:
        raise SimganError(f"rows start at {offset}, not a multiple of the batch size {batch_size}")
    model = model.to(device).eval()
    g = torch.Generator(device=device)
    # HDF5 batches are written before the next is drawn, so on a CPU one buffer serves them all
    reuse = fmt == "hdf5" and torch.device(device).type == "cpu"
    buf = torch.empty(min(batch_size, stop - offset), model.transform.mean.numel()) if reuse else None

    def sample_batch(lo: int, hi: int) -> np.ndarray:
        g.manual_seed(_block_seed(seed, offset + lo))
        sl = slice(offset + lo, offset + hi)
        e = torch.as_tensor(energies[sl], device=device)
        x = None if extra is None else torch.as_tensor(extra[sl], device=device)
        given = None if layer_energies is None else torch.as_tensor(layer_energies[sl], device=device)
        return model.sample(e, x, g, precision=precision, layer_energies=given, calibrated=calibrated,
                            out=None if buf is None else buf[:hi - lo]).cpu().numpy()

    file_conds = {k: v[offset:stop] for k, v in conditions.items()}
    if rows is not None:
        file_conds["event_index"] = np.arange(offset, stop, dtype=np.int64)
        metadata = {**(metadata or {}), "shard_rows": [int(offset), int(stop)], "rows_total": int(len(energies))}
    return write_generated(out, energies[offset:stop], file_conds, binning, batch_size, sample_batch, fmt, metadata,
                           progress, device)


def _shard_task(checkpoint: str, energies, conditions, out: str, batch_size: int, seed: int, rows,
                threads: int, precision: str = "fp32") -> dict:
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    # the caller's thread count: float32 matrix products round differently with another
    # split, and the shards should reproduce the in-process run exactly on the same CPU
    torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint)
    model = calorimeter_model(ckpt)
    binning = checkpoint_binning(ckpt, str(checkpoint))
    return generate_to_file(model, energies, conditions, out, binning, batch_size, "cpu", seed, "hdf5",
                            checkpoint_metadata(checkpoint), False, rows, precision)


def generate_with_dask(checkpoint, energies: np.ndarray, conditions: dict, out, batch_size: int, seed: int,
                       client, n_shards: int | None = None, precision: str = "fp32") -> dict:
    """Shards as dask tasks (each loads the checkpoint and writes its own file), then one
    merge into `out`. On workers with the same CPU the result equals the in-process
    generation with the same seed; other CPUs round float32 products differently."""
    out = Path(out)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise SimganError(f"{out}: generation on dask writes canonical HDF5 (.h5); convert afterwards")
    n_shards = n_shards or max(1, len(client.scheduler_info()["workers"]))
    n_shards = min(n_shards, math.ceil(len(energies) / batch_size))
    shard_dir = out.parent / f".{out.name}.shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        futures = [client.submit(_shard_task, str(checkpoint), energies, conditions, str(shard_dir / f"shard_{i}.h5"),
                                 batch_size, seed, shard_rows(len(energies), batch_size, i, n_shards),
                                 torch.get_num_threads(), precision, pure=False)
                   for i in range(n_shards)]
        parts = client.gather(futures)
        wall = time.perf_counter() - t
        merge_shards(sorted(shard_dir.glob("shard_*.h5")), out)
    finally:
        for f in shard_dir.glob("*"):
            f.unlink()
        shard_dir.rmdir()
    return {"events": int(len(energies)), "shards": n_shards, "wall_seconds": wall,
            "sample_seconds": sum(p["sample_seconds"] for p in parts),
            "showers_per_s": len(energies) / wall, "batch_size": batch_size, "device": "dask"}


def geant4_rate(sim_cfg, seed: int, energies: np.ndarray, workers: int | None = None,
                repeats: int = 1) -> tuple[float, int]:
    """(showers/s, processes) for these energies through Geant4 on this machine, with the
    pool's start-up and physics tables built before the clock starts; the median of
    `repeats` timed runs."""
    rates = []
    with GeantPool(settings_of(sim_cfg), sim_cfg.workers if workers is None else workers) as pool:
        simulate_energies(sim_cfg, energies[:1], seed, False, pool=pool)
        for r in range(repeats):
            t = time.perf_counter()
            simulate_energies(sim_cfg, energies, seed + 1 + r, False, pool=pool)
            rates.append(len(energies) / (time.perf_counter() - t))
        return float(np.median(rates)), pool.workers


def surrogate_rate(model, energies: np.ndarray, device, seed: int = 0, precision: str = "fp32",
                   conditions: np.ndarray | None = None, repeats: int = 1) -> float:
    """Showers/s of model.sample for these energies (and extra conditions) in one call into an
    output buffer that a warm-up call has already filled, as the generate stage reuses one;
    the median of `repeats` calls."""
    device = torch.device(device)
    model = model.to(device).eval()
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    e = torch.as_tensor(energies, device=device)
    x = None if conditions is None else torch.as_tensor(conditions, device=device)
    buf = model.sample(e, x, g, precision=precision)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.sample(e, x, g, precision=precision, out=buf)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(e) / (time.perf_counter() - t))
    return float(np.median(rates))


def generate_from_registry(loaded, model_uri: str, energies: np.ndarray, out, batch_size: int, fmt: str) -> dict:
    """Showers from a registered model, `loaded` as a consumer loads it (its pyfunc from
    `model_uri`), for these energies."""
    import pandas as pd  # heavy; a registered model's consumer has it (mlflow needs it)
    from mlflow.exceptions import MlflowException

    surrogate = loaded.unwrap_python_model()
    binning = surrogate.extras["binning"]
    # like --checkpoint: a warning outside the training range, then generated (the pyfunc would refuse)
    warn_outside(surrogate.ckpt.get("condition_ranges", {}), {"incident_energy": energies}, model_uri)

    def sample_batch(lo: int, hi: int) -> np.ndarray:
        try:
            return loaded.predict(pd.DataFrame({ENERGY_COLUMN: energies[lo:hi]}),
                                  params={"seed": lo, "extrapolate": True})
        except MlflowException as exc:
            raise SimganError(f"{model_uri}: {exc.message.splitlines()[-1]}") from None

    timing = write_generated(out, energies, {}, binning, batch_size, sample_batch, fmt, {"model_uri": model_uri},
                             progress=False)
    return {**timing, "model_uri": model_uri}


def generate_from_export(sampler, energies: np.ndarray, conds: dict, names: list[str], out, batch_size: int, fmt: str,
                         seed: int, progress: bool = False) -> dict:
    """Showers from an export folder (simgan.export.ExportedSampler: the graph in onnxruntime or
    TorchScript, the noise drawn by numpy per batch from [seed, first row]) in the voxel layout
    it carries."""
    binning = parse_binning_xml(sampler.file("binning").read_text(), str(sampler.file("binning")))
    width = sampler.outputs[0].shape[-1]
    if width != binning.n_voxels:
        raise SimganError(f"--export {sampler.folder}: the graph's {sampler.outputs[0].name} has {width} voxels but "
                          f"{sampler.file('binning').name} lays out {binning.n_voxels}; export the model again")

    def sample_batch(lo: int, hi: int) -> np.ndarray:
        c = [energies[lo:hi]] + ([np.stack([conds[k][lo:hi] for k in names], 1)] if names else [])
        return sampler(c, np.random.default_rng([seed, lo]))[0]

    meta = {"export": str(sampler.folder), "export_format": sampler.fmt}
    timing = write_generated(out, energies, conds, binning, batch_size, sample_batch, fmt, meta, progress)
    return {**timing, **meta}
