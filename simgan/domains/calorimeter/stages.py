"""The calorimeter's stage bodies: Geant4 simulation, prepare (any input format, checked and
split), generation (in process, on dask, or merged from a job array's shards, with the
ablation and uncalibrated samples) and validation. Each takes (cfg, inputs, outputs,
progress) and returns what the stage's manifest records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from simgan.checkpoint import checkpoint_metadata, load_checkpoint, resolve_device
from simgan.cluster import dask_client
from simgan.domains.base import GenerateRequest, warn_outside
from simgan.domains.calorimeter.config import SimulateConfig
from simgan.domains.calorimeter.data import calochallenge as cc
from simgan.domains.calorimeter.data.convert import read_any
from simgan.domains.calorimeter.generate import (
    calorimeter_model,
    checkpoint_binning,
    energies_from_file,
    geant4_rate,
    generate_from_export,
    generate_from_registry,
    generate_to_file,
    generate_with_dask,
    layer_energies_from_file,
    log_uniform_energies,
    model_conditions,
    shard_rows,
    surrogate_rate,
)
from simgan.domains.calorimeter.sim.produce import merge_shards, simulate_to_file
from simgan.domains.calorimeter.validate import validate as run_validation
from simgan.errors import SimganError
from simgan.io import write_json_atomic
from simgan.splits import split_indices

SPLITS = ("train", "val", "test")
ABLATION_LABEL = "shape only (Geant4 layer energies)"
EXTRA_LABELS = {"ablation": ABLATION_LABEL, "uncalibrated": "without calibration"}


def simulate(cfg, ins, out, progress: bool, shards: list[Path] | None = None) -> dict:
    """Geant4 showers; with `shards` (a job array's files), those are merged instead, after
    checking they are this run's."""
    if shards is not None:
        if not shards:
            raise SimganError(f"no simulate shards to merge (expected {out['showers'].parent}/shards/shard_*.h5)")
        for p in shards:
            m = cc.inspect(p).metadata
            if m.get("seed") != cfg.seed or m.get("events_total") != cfg.simulate.events:
                raise SimganError(f"{p}: a shard of another run (seed {m.get('seed')}, {m.get('events_total')} "
                                  f"events; this config: seed {cfg.seed}, {cfg.simulate.events}); simulate again")
        meta = merge_shards(shards, out["showers"])
    else:
        meta = simulate_to_file(cfg.simulate, cfg.seed, out["showers"], progress=progress)
    return {"counts": {"events": cfg.simulate.events},
            "extra": {"geant4": {k: meta[k] for k in ("geant4_version", "sampling_fraction_measured",
                                                      "geant4_cpu_seconds")}}}


def prepare(cfg, ins, out, progress: bool) -> dict:
    """Read any supported input, check it, split train/val/test by seed (the test split is
    written to its own file and never read by training)."""
    src = ins["source"]
    p = cfg.prepare
    # the domain's geometry is checked against the file's own (or given to files without one)
    data = read_any(src, p.format, cfg.domain.geometry, p.root_tree, p.root_energy_branch, p.root_shower_branch)
    data.metadata = {**data.metadata, "prepared_from": str(src)}
    thr = cfg.domain.threshold_mev
    empty = ~(data.showers >= thr).any(axis=1) if thr > 0 else ~(data.showers > 0).any(axis=1)
    if empty.any():
        raise SimganError(f"{src}: {int(empty.sum())} of {len(data)} showers deposit nothing above the "
                          f"{thr:g} MeV readout threshold (first: row {int(np.argmax(empty))}); a surrogate cannot "
                          "learn a response of 0: remove them, or check the file and domain.threshold_mev")
    if p.conditions is not None:
        missing = [k for k in p.conditions if k not in data.conditions]
        if missing:
            why = "; ".join(cc.why_not_condition(src, k) for k in missing) if str(src).endswith((".h5", ".hdf5")) \
                else f"no branch {missing}"
            raise SimganError(f"{src}: {why} for prepare.conditions {p.conditions} "
                              f"(conditions found: {sorted(data.conditions) or 'none'})")
        data.conditions = {k: data.conditions[k] for k in p.conditions}
    if data.conditions:
        print(f"[prepare] model conditions besides the incident energy: {', '.join(sorted(data.conditions))}"
              + (" (all extra datasets of the input; prepare.conditions chooses)" if p.conditions is None else ""))
    idx = split_indices(len(data), p.fractions, cfg.seed)
    for name in SPLITS:
        part = data.subset(idx[name])
        part.metadata = {**part.metadata, "split": name}
        cc.write(out[name], part)
    return {"counts": {k: int(len(v)) for k, v in idx.items()},
            "extra": {"n_voxels": data.binning.n_voxels, "geometry": data.binning.digest()}}


def generate(cfg, ins, out, progress: bool, shards: list[Path] | None = None) -> dict:
    """Showers for the held-out test energies; with `shards` (a job array's files), those are
    merged instead, after checking they come from this checkpoint."""
    device = resolve_device(cfg.generate.device)
    ckpt = load_checkpoint(ins["model"])
    model = calorimeter_model(ckpt, device)
    energies, conds = energies_from_file(ins["test"], cfg.generate.events)
    conds = model_conditions(ckpt, conds, ins["test"])
    warn_outside(ckpt.get("condition_ranges", {}), {"incident_energy": energies, **conds}, str(ins["test"]))
    binning = cc.inspect(ins["test"]).binning
    g = cfg.generate
    meta = checkpoint_metadata(ins["model"])
    if shards is not None:
        timing = merge_generated(shards, out["showers"], meta, len(energies))
    elif g.dask:
        if g.format != "hdf5":
            raise SimganError("generate.dask=true writes HDF5; set generate.format=hdf5")
        with dask_client(True, g.dask_workers) as client:
            timing = generate_with_dask(ins["model"], energies, conds, out["showers"], g.batch_size, cfg.seed, client,
                                        precision=g.precision)
    else:
        timing = generate_to_file(model, energies, conds, out["showers"], binning, g.batch_size, device, cfg.seed,
                                  g.format, meta, progress, precision=g.precision)
    if g.ablation:
        given = layer_energies_from_file(ins["test"], model_layer_voxels(model), cfg.domain.threshold_mev, g.events)
        timing["ablation"] = generate_to_file(
            model, energies, conds, out["ablation"], binning, g.batch_size, device, cfg.seed, "hdf5",
            {**meta, "layer_energies_from": str(ins["test"])}, progress,
            precision=g.precision, layer_energies=given)
    if "uncalibrated" in out:  # the report shows the showers with and without the calibration
        timing["uncalibrated"] = generate_to_file(
            model, energies, conds, out["uncalibrated"], binning, g.batch_size, device, cfg.seed, "hdf5",
            {**meta, "calibrated": False}, progress, precision=g.precision,
            calibrated=False)
    if g.compare_geant4:
        timing["geant4"] = compare_geant4(cfg.simulate, cfg.seed, g.precision, model, energies, conds,
                                          g.compare_geant4, device)
    write_json_atomic(out["timing"], timing)
    print(f"[generate] {timing['events']} showers at {timing['showers_per_s']:.0f} showers/s ({device})")
    return {"counts": {"events": timing["events"]}, "extra": {"timing": timing}}


def merge_generated(shards: list[Path], out: Path, meta: dict, n: int) -> dict:
    if not shards:
        raise SimganError("no generate shards to merge (expected RUN/generate/shards/shard_*.h5)")
    seconds = 0.0
    for p in shards:
        m = cc.inspect(p).metadata
        if m.get("checkpoint_sha256") != meta["checkpoint_sha256"]:
            raise SimganError(f"{p}: generated from another checkpoint than {meta['checkpoint']}; generate the "
                              "shards again")
        if m.get("rows_total") != n:
            raise SimganError(f"{p}: a shard of {m.get('rows_total')} rows, but this run generates {n}")
        seconds += (m.get("timing") or {}).get("sample_seconds", 0.0)
    merge_shards(shards, out)
    return {"events": n, "merged_from": len(shards), "sample_seconds": seconds,
            "showers_per_s": n / seconds if seconds > 0 else float("inf"), "device": "job array"}


def model_layer_voxels(model) -> list[int]:
    if not hasattr(model, "layer_voxels"):
        raise SimganError("the ablation mode (layer energies given) needs a two-stage model (model.output=layers)")
    return model.layer_voxels


def compare_geant4(sim_cfg, seed: int, precision: str, model, energies: np.ndarray, conds: dict, n: int,
                   device) -> dict:
    """Same energies through Geant4 and the surrogate in this run, on this machine."""
    e = energies[:n]
    keys = sorted(conds)
    x = np.stack([conds[k][:n] for k in keys], 1) if keys else None
    g4, workers = geant4_rate(sim_cfg, seed, e)
    sur = surrogate_rate(model, e, device, precision=precision, conditions=x)
    res = {"events": int(n), "geant4_showers_per_s": g4, "geant4_workers": workers,
           "surrogate_showers_per_s": sur, "speedup": sur / g4, "mean_energy_gev": float(e.mean() / 1e3)}
    print(f"[compare] {n} showers: Geant4 {g4:.1f}/s ({workers} processes), "
          f"surrogate {sur:.0f}/s on {device}: speed-up x{res['speedup']:.0f}")
    return res


def validate(cfg, ins, out, progress: bool) -> dict:
    """The generated showers against the held-out test split, the floor from the training split."""
    if ins["candidate"].suffix == ".root":
        raise SimganError(f"{ins['candidate']}: validate reads canonical HDF5; convert ROOT output with `simgan convert`")
    extra = {label: ins[key] for key, label in EXTRA_LABELS.items() if key in ins} or None
    with dask_client(cfg.validate.dask, cfg.validate.dask_workers) as client:
        m = run_validation(ins["reference"], ins["candidate"], out["metrics"].parent, cfg.validate,
                           cfg.domain.threshold_mev, client, floor=ins["floor"], extra_candidates=extra)
    return {"counts": {"reference": m["n_reference"], "candidate": m["n_candidate"]},
            "extra": {"gate_pass": m["gate"]["pass"]}}


STAGES = {"simulate": simulate, "prepare": prepare, "generate": generate, "validate": validate}


def generate_request(req: GenerateRequest) -> str:
    """`simgan generate` for a calorimeter checkpoint (or a registered model): showers for the
    energies (and extra conditions) of req.energies_from, or log-uniform in req.energy_range;
    returns what to print."""
    conds: dict = {}
    if req.layer_energies_from and (req.energies_from or req.energy_range or req.model_uri or req.exported):
        raise SimganError("--layer-energies-from takes the energies from that file: give it with --checkpoint, "
                          "without --energies-from or --energy-range")
    if req.layer_energies_from:
        energies, conds = energies_from_file(req.layer_energies_from, req.events)
    elif req.energies_from:
        energies, conds = energies_from_file(req.energies_from, req.events)
    elif req.events and req.energy_range:
        energies = log_uniform_energies(req.events, *req.energy_range, req.seed)
    else:
        raise SimganError("give --energies-from FILE, or --events N with --energy-range MIN_GEV MAX_GEV")
    names = None
    if req.exported is not None:  # the model's extra conditions: the names its graph's input columns carry
        names = next((p.columns for p in req.exported.conditions if p.columns), None) or []
        conds = model_conditions({"extra_conditions": names}, conds, req.energies_from or "--energy-range")
        warn_outside(req.exported.sidecar.get("condition_ranges", {}), {"incident_energy": energies, **conds},
                     str(req.energies_from or "--energy-range"))
    elif req.ckpt is not None:
        source = req.layer_energies_from or req.energies_from or "--energy-range"
        conds = model_conditions(req.ckpt, conds, source)
        warn_outside(req.ckpt.get("condition_ranges", {}), {"incident_energy": energies, **conds}, str(source))
    sharded = req.shard_index is not None or req.shard_count is not None
    if req.layer_energies_from and (sharded or req.dask):
        raise SimganError("--layer-energies-from runs in one process (no --shard-index or --dask)")
    if (sharded or req.dask) and not req.checkpoint:
        raise SimganError("--shard-index/--shard-count and --dask work with --checkpoint")
    if (sharded or req.dask) and req.fmt != "hdf5":
        raise SimganError("sharded and dask generation write HDF5 (merge, then `simgan convert`)")
    if req.exported is not None:
        timing = generate_from_export(req.exported, energies, conds, names, req.out, req.batch_size, req.fmt,
                                      req.seed, req.progress)
    elif req.dask:
        with dask_client(True, req.dask_workers, req.scheduler) as client:
            timing = generate_with_dask(req.checkpoint, energies, conds, req.out, req.batch_size, req.seed, client,
                                        req.shards, req.precision)
    elif req.checkpoint:
        device = resolve_device(req.device)
        model = calorimeter_model(req.ckpt, device)
        binning = checkpoint_binning(req.ckpt, str(req.checkpoint))
        rows = shard_rows(len(energies), req.batch_size, req.shard_index, req.shard_count) if sharded else None
        given = None
        if req.layer_energies_from:
            given = layer_energies_from_file(req.layer_energies_from, model_layer_voxels(model),
                                             req.ckpt["model_args"]["threshold_mev"], req.events)
        timing = generate_to_file(model, energies, conds, req.out, binning, req.batch_size, device, req.seed, req.fmt,
                                  checkpoint_metadata(req.checkpoint), req.progress, rows, req.precision, given)
        if req.compare_geant4:  # Geant4 as the checkpoint's experiment configured it
            sim = SimulateConfig.model_validate(req.ckpt["config"]["simulate"])
            timing["geant4"] = compare_geant4(sim, int(req.ckpt["config"]["seed"]), req.precision, model, energies,
                                              conds, req.compare_geant4, device)
    else:
        timing = generate_from_registry(req.loaded, req.model_uri, energies, req.out, req.batch_size, req.fmt)
    return (f"wrote {req.out}: {timing['events']} showers at {timing['showers_per_s']:.0f} showers/s\n"
            + json.dumps({k: v for k, v in timing.items() if k != "geant4"}))
