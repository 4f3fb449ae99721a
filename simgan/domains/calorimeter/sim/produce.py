"""Drive the Geant4 calorimeter: energies, shards, parallel workers, canonical output.

Energies are drawn once from the seed, then cut into fixed-size shards, each with its own
seed, so the output is the same for any number of workers, and a cluster job can run a
subset of the shards (`shard_index`/`shard_count`) and `merge_shards` joins the files.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import h5py
import numpy as np

import simgan
from simgan.domains.calorimeter.config import SimulateConfig
from simgan.domains.calorimeter.data import calochallenge as cc
from simgan.domains.calorimeter.data.binning import reference_binning
from simgan.domains.calorimeter.sim.geant4 import G4Settings, GeantPool, shard_seed
from simgan.errors import SimganError
from simgan.io import atomic_path, open_hdf5

PDG = {"e-": 11, "gamma": 22}
DATA_NOTE = ("EM standard physics with generated tables: bremsstrahlung below 1 GeV from Tsai's "
             "screened Bethe-Heitler formula; photoelectric with one shell (Sandia cross section); "
             "no Rayleigh, no fluorescence")


def sample_energies_mev(cfg: SimulateConfig, seed: int, n: int | None = None) -> np.ndarray:
    n = cfg.events if n is None else n
    if cfg.energies_gev:
        return np.resize(np.asarray(cfg.energies_gev, dtype=float), n) * 1000.0
    rng = np.random.default_rng([seed, 0xE])
    lo, hi = math.log(cfg.energy_min_gev * 1000.0), math.log(cfg.energy_max_gev * 1000.0)
    return np.exp(rng.uniform(lo, hi, n))


def settings_of(cfg: SimulateConfig) -> G4Settings:
    return G4Settings(cfg.particle, cfg.cut_mm, cfg.physics_list, cfg.theta_deg)


def simulate_energies(cfg: SimulateConfig, energies_mev: np.ndarray, seed: int, progress: bool = True,
                      shards: list[int] | None = None, pool: GeantPool | None = None):
    """Run Geant4 on given energies; returns (showers scaled to MeV, per-shard stats, event index)."""
    n = len(energies_mev)
    size = cfg.shard_events
    all_shards = list(range(math.ceil(n / size)))
    shards = all_shards if shards is None else shards
    tasks = [(energies_mev[s * size:(s + 1) * size], shard_seed(seed, s)) for s in shards]
    index = np.concatenate([np.arange(s * size, min((s + 1) * size, n)) for s in shards]) if shards else np.zeros(0, int)
    own = pool is None
    pool = pool or GeantPool(settings_of(cfg), cfg.workers)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(index), desc="Geant4 showers", unit="shower")
    results = []
    try:
        for res in pool.map_shards(tasks):
            results.append(res)
            if bar:
                bar.update(len(res["voxels_mev"]))
    finally:
        if bar:
            bar.close()
        if own:
            pool.close()
    visible = np.concatenate([r["voxels_mev"] for r in results]) if results else np.zeros((0, 6480), np.float32)
    outer = np.concatenate([r["outer_mev"] for r in results]) if results else np.zeros(0)
    stats = {
        "geant4_version": results[0]["geant4_version"] if results else "",
        "cpu_seconds": float(sum(r["wall_s"] for r in results)),
        "si_visible_over_e": float(np.mean((visible.sum(1) + outer) / energies_mev[index])) if len(index) else float("nan"),
        "readout_over_all_si": float(visible.sum() / max(visible.sum() + outer.sum(), 1e-30)),
    }
    return visible / np.float32(cfg.sampling_fraction), stats, index


def simulate_to_file(cfg: SimulateConfig, seed: int, out: str | Path, progress: bool = True,
                     shard_index: int | None = None, shard_count: int | None = None, pool=None) -> dict:
    """`pool`: a GeantPool or DaskGeantPool to run the shards on (default: local processes)."""
    out = Path(out)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise SimganError(f"{out}: simulate writes canonical HDF5; use a .h5 or .hdf5 name")
    energies = sample_energies_mev(cfg, seed)
    shards = None
    if shard_count is not None:
        if not (0 <= (shard_index or 0) < shard_count):
            raise SimganError(f"shard index {shard_index} out of range for {shard_count} shards")
        shards = list(range(shard_index or 0, math.ceil(cfg.events / cfg.shard_events), shard_count))
    with atomic_path(out, suffix=".h5") as tmp:  # fail early if the folder is not writable
        t0 = time.perf_counter()
        showers, stats, index = simulate_energies(cfg, energies, seed, progress, shards, pool)
        wall = time.perf_counter() - t0
        meta = {
            "producer": f"simgan {simgan.__version__}",
            "simulator": "geant4", "geant4_version": stats["geant4_version"],
            "physics_list": cfg.physics_list, "production_cut_mm": cfg.cut_mm,
            "physics_tables": DATA_NOTE,
            "particle": cfg.particle, "pdg": PDG[cfg.particle], "seed": seed,
            "energy_range_gev": [cfg.energy_min_gev, cfg.energy_max_gev] if not cfg.energies_gev else None,
            "energies_gev": cfg.energies_gev, "theta_deg": cfg.theta_deg,
            "sampling_fraction": cfg.sampling_fraction,
            "sampling_fraction_measured": stats["si_visible_over_e"],
            "readout_over_all_si": stats["readout_over_all_si"],
            "events_total": cfg.events, "shard_events": cfg.shard_events,
            "shard_index": shard_index, "shard_count": shard_count,
            "geant4_cpu_seconds": stats["cpu_seconds"], "wall_seconds": wall,
        }
        cond = {"event_index": index.astype(np.float64)} if shard_count is not None else {}
        if cfg.theta_deg:
            cond["incident_theta"] = np.full(len(index), math.radians(cfg.theta_deg))
        data = cc.ShowerData(energies[index], showers, reference_binning(), cond, meta)
        with cc.ShowerWriter(tmp, data.binning, meta, list(cond)) as w:
            w.append(data.energies, data.showers, data.conditions)
    return meta


def shard_event_index(path, n: int) -> np.ndarray:
    """A shard's `event_index` dataset of any numeric dtype (n rows), or an error naming it."""
    with open_hdf5(path) as f:
        ds = f.get("event_index")
        if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "iuf" or ds.shape[:1] != (n,) or ds.size != n:
            raise SimganError(f"{path}: not a shard file ({cc.why_not_condition(path, 'event_index')})")
        return np.asarray(ds[:], np.float64).reshape(-1)


def merge_shards(shard_files: list[str | Path], out: str | Path) -> dict:
    """Join shard files (any order) into one file ordered by event index."""
    parts = [cc.read(p) for p in shard_files]
    if not parts:
        raise SimganError("merge: no shard files given")
    for p, d in zip(shard_files, parts):
        if "event_index" not in d.conditions:  # (row numbers written as integers by another writer)
            d.conditions["event_index"] = shard_event_index(p, len(d))
        if d.binning.digest() != parts[0].binning.digest():
            raise SimganError(f"{p}: geometry differs from {shard_files[0]}")
    idx = np.concatenate([d.conditions["event_index"] for d in parts]).astype(int)
    if len(np.unique(idx)) != len(idx):
        raise SimganError("merge: shard files overlap (repeated event_index)")
    order = np.argsort(idx)
    # every row of the run, once: the total the shards recorded (simulate: events_total,
    # sharded generate: rows_total), or at least no gap from row 0
    totals = {int(t) for d in parts for t in (d.metadata.get("events_total"), d.metadata.get("rows_total"))
              if t is not None}
    if len(totals) > 1:
        raise SimganError(f"merge: the shards come from runs of different sizes {sorted(totals)}")
    expected = totals.pop() if totals else len(idx)
    missing = np.setdiff1d(np.arange(expected), idx)
    if len(missing) or len(idx) != expected:
        raise SimganError(f"merge: {len(idx)} events in {len(parts)} shard file(s), but the run has {expected}; "
                          f"{len(missing)} missing (first: event {int(missing[0]) if len(missing) else len(idx)}): "
                          "give every shard")
    cond_keys = [k for k in parts[0].conditions if k != "event_index"]
    meta = dict(parts[0].metadata)
    meta.update(shard_index=None, shard_count=None, merged_from=len(parts))
    if any("geant4_cpu_seconds" in d.metadata for d in parts):
        meta["geant4_cpu_seconds"] = sum(d.metadata.get("geant4_cpu_seconds", 0) for d in parts)
    for per_shard in ("shard_rows", "timing"):  # generated shards: true of one shard only
        meta.pop(per_shard, None)
    merged = cc.ShowerData(
        np.concatenate([d.energies for d in parts])[order],
        np.concatenate([d.showers for d in parts])[order], parts[0].binning,
        {k: np.concatenate([d.conditions[k] for d in parts])[order] for k in cond_keys}, meta)
    cc.write(out, merged)
    return meta
