"""The calorimeter's stage bodies: Geant4 simulation, prepare (any input format, checked and
split), generation (in process, on dask, or merged from a job array's shards, with the
ablation and uncalibrated samples) and validation. Each takes (cfg, inputs, outputs,
progress) and returns what the stage's manifest records."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simgan.checkpoint import model_from_checkpoint, resolve_device
from simgan.data import calochallenge as cc
from simgan.domains import warn_outside
from simgan.errors import SimganError
from simgan.generate import (checkpoint_metadata, energies_from_file, generate_to_file, layer_energies_from_file,
                             model_conditions)
from simgan.io import write_json_atomic

SPLITS = ("train", "val", "test")
ABLATION_LABEL = "shape only (Geant4 layer energies)"
EXTRA_LABELS = {"ablation": ABLATION_LABEL, "uncalibrated": "without calibration"}


def simulate(cfg, ins, out, progress: bool, shards: list[Path] | None = None) -> dict:
    """Geant4 showers; with `shards` (a job array's files), those are merged instead, after
    checking they are this run's."""
    from simgan.sim.produce import merge_shards, simulate_to_file

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
    from simgan.data.convert import read_any
    from simgan.data.splits import split_indices

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
    model, ckpt = model_from_checkpoint(ins["model"], device)
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
        from simgan.cluster import dask_client
        from simgan.generate import generate_with_dask
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
        timing["geant4"] = compare_geant4(cfg, model, energies, conds, g.compare_geant4, device)
    write_json_atomic(out["timing"], timing)
    print(f"[generate] {timing['events']} showers at {timing['showers_per_s']:.0f} showers/s ({device})")
    return {"counts": {"events": timing["events"]}, "extra": {"timing": timing}}


def merge_generated(shards: list[Path], out: Path, meta: dict, n: int) -> dict:
    from simgan.sim.produce import merge_shards

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


def compare_geant4(cfg, model, energies: np.ndarray, conds: dict, n: int, device) -> dict:
    """Same energies through Geant4 and the surrogate in this run, on this machine."""
    from simgan.generate import geant4_rate, surrogate_rate

    e = energies[:n]
    keys = sorted(conds)
    x = np.stack([conds[k][:n] for k in keys], 1) if keys else None
    g4, workers = geant4_rate(cfg.simulate, cfg.seed, e)
    sur = surrogate_rate(model, e, device, precision=cfg.generate.precision, conditions=x)
    res = {"events": int(n), "geant4_showers_per_s": g4, "geant4_workers": workers,
           "surrogate_showers_per_s": sur, "speedup": sur / g4, "mean_energy_gev": float(e.mean() / 1e3)}
    print(f"[compare] {n} showers: Geant4 {g4:.1f}/s ({workers} processes), "
          f"surrogate {sur:.0f}/s on {device}: speed-up x{res['speedup']:.0f}")
    return res


def validate(cfg, ins, out, progress: bool) -> dict:
    """The generated showers against the held-out test split, the floor from the training split."""
    from simgan.cluster import dask_client
    from simgan.validate import validate as run_validation

    if ins["candidate"].suffix == ".root":
        raise SimganError(f"{ins['candidate']}: validate reads canonical HDF5; convert ROOT output with `simgan convert`")
    extra = {label: ins[key] for key, label in EXTRA_LABELS.items() if key in ins} or None
    with dask_client(cfg.validate.dask, cfg.validate.dask_workers) as client:
        m = run_validation(ins["reference"], ins["candidate"], out["metrics"].parent, cfg.validate,
                           cfg.domain.threshold_mev, client, floor=ins["floor"], extra_candidates=extra)
    return {"counts": {"reference": m["n_reference"], "candidate": m["n_candidate"]},
            "extra": {"gate_pass": m["gate"]["pass"]}}


STAGES = {"simulate": simulate, "prepare": prepare, "generate": generate, "validate": validate}


def generate_cli(args, ckpt: dict | None, out, fmt: str) -> int:
    """`simgan generate` for a calorimeter checkpoint (or a registered model): showers for the
    energies (and extra conditions) of --energies-from, or log-uniform in --energy-range."""
    import json

    from simgan.checkpoint import checkpoint_binning, model_of
    from simgan.generate import log_uniform_energies

    conds: dict = {}
    if args.layer_energies_from and (args.energies_from or args.energy_range or args.model):
        raise SimganError("--layer-energies-from takes the energies from that file: give it with --checkpoint, "
                          "without --energies-from or --energy-range")
    if args.layer_energies_from:
        energies, conds = energies_from_file(args.layer_energies_from, args.events)
    elif args.energies_from:
        energies, conds = energies_from_file(args.energies_from, args.events)
    elif args.events and args.energy_range:
        energies = log_uniform_energies(args.events, *args.energy_range, args.seed)
    else:
        raise SimganError("give --energies-from FILE, or --events N with --energy-range MIN_GEV MAX_GEV")
    if ckpt is not None:
        source = args.layer_energies_from or args.energies_from or "--energy-range"
        conds = model_conditions(ckpt, conds, source)
        warn_outside(ckpt.get("condition_ranges", {}), {"incident_energy": energies, **conds}, source)
    sharded = args.shard_index is not None or args.shard_count is not None
    if args.layer_energies_from and (sharded or args.dask):
        raise SimganError("--layer-energies-from runs in one process (no --shard-index or --dask)")
    if (sharded or args.dask) and not args.checkpoint:
        raise SimganError("--shard-index/--shard-count and --dask work with --checkpoint")
    if (sharded or args.dask) and fmt != "hdf5":
        raise SimganError("sharded and dask generation write HDF5 (merge, then `simgan convert`)")
    if args.dask:
        from simgan.cluster import dask_client
        from simgan.generate import generate_with_dask
        with dask_client(True, args.dask_workers, args.scheduler) as client:
            timing = generate_with_dask(args.checkpoint, energies, conds, out, args.batch_size, args.seed, client,
                                        args.shards, args.precision)
    elif args.checkpoint:
        device = resolve_device(args.device)
        model = model_of(ckpt, device)
        from simgan.config import config_from_dict
        cfg = config_from_dict(ckpt["config"], args.checkpoint)
        binning = checkpoint_binning(ckpt, str(args.checkpoint))
        rows = None
        if sharded:
            from simgan.generate import shard_rows
            rows = shard_rows(len(energies), args.batch_size, args.shard_index, args.shard_count)
        given = None
        if args.layer_energies_from:
            given = layer_energies_from_file(args.layer_energies_from, model_layer_voxels(model),
                                             cfg.domain.threshold_mev, args.events)
        timing = generate_to_file(model, energies, conds, out, binning, args.batch_size, device, args.seed, fmt,
                                  checkpoint_metadata(args.checkpoint), not args.quiet, rows, args.precision, given)
        if args.compare_geant4:
            timing["geant4"] = compare_geant4(cfg.model_copy(update={"generate": cfg.generate.model_copy(
                update={"precision": args.precision})}), model, energies, conds, args.compare_geant4, device)
    else:
        from simgan.registry import generate_from_registry
        timing = generate_from_registry(args.model, energies, out, args.batch_size, fmt)
    print(f"wrote {out}: {timing['events']} showers at {timing['showers_per_s']:.0f} showers/s")
    print(json.dumps({k: v for k, v in timing.items() if k != "geant4"}))
    return 0
