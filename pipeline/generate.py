"""Stage generate: samples for the held-out test conditions; `simgan generate` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import prepare, train
from pipeline.contract import Context, run_domain_stage, stage_dir
from simgan.checkpoint import checkpoint_binning, load_checkpoint, model_of, resolve_device
from simgan.config import ExperimentConfig
from simgan.domains import warn_outside
from simgan.domains.calorimeter.stages import compare_geant4, model_layer_voxels
from simgan.errors import SimganError
from simgan.generate import (checkpoint_metadata, energies_from_file, generate_to_file, layer_energies_from_file,
                             log_uniform_energies, model_conditions)
from simgan.io import check_output_file


def inputs(cfg: ExperimentConfig) -> dict[str, Path]:
    return {"model": train.outputs(cfg)["model"], "test": prepare.outputs(cfg)["test"]}


def outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    ext = "root" if cfg.generate.format == "root" else "h5"
    d = stage_dir(cfg, "generate")
    out = {"showers": d / f"generated.{ext}", "timing": d / "timing.json"}
    if cfg.generate.ablation:
        out["ablation"] = d / "generated_ablation.h5"
    if cfg.train.calibrate:
        out["uncalibrated"] = d / "generated_uncalibrated.h5"
    return out


def shard_dir(cfg: ExperimentConfig) -> Path:
    """Where a job array's `simgan generate --shard-index` files go (the Slurm chain)."""
    return stage_dir(cfg, "generate") / "shards"


def run(cfg: ExperimentConfig, ctx: Context, shards: list[Path] | None = None) -> dict[str, Path]:
    """The generate stage; with `shards` (the files of a job array), those are merged into the
    stage's output instead of generating here, after checking they are this run's."""
    return run_domain_stage("generate", cfg, ctx, inputs(cfg), outputs(cfg), shards)


def _generate_footprints_cli(args, ckpt: dict, out, fmt) -> int:
    """An air-shower checkpoint: footprints for the conditions of --energies-from (a footprint file)."""
    from simgan.domains.airshower import io as aio
    from simgan.domains.airshower.domain import generate_footprints

    if not args.energies_from or args.layer_energies_from or args.energy_range or fmt != "hdf5":
        raise SimganError("an air-shower model generates HDF5 footprints for the conditions of a footprint file: "
                          "give --energies-from FILE (its conditions are used) and an .h5 --out")
    if args.shard_index is not None or args.shard_count is not None or args.dask or args.compare_geant4:
        raise SimganError("an air-shower model generates in one process (no --shard-index, --dask or "
                          "--compare-geant4)")
    model = model_of(ckpt, resolve_device(args.device))
    src = aio.read(args.energies_from, args.events)
    warn_outside(ckpt.get("condition_ranges", {}), src.conditions, str(args.energies_from))
    timing = generate_footprints(model, src, out, args.batch_size, args.seed, args.precision,
                                 checkpoint_metadata(args.checkpoint))
    print(f"wrote {out}: {timing['events']} footprints at {timing['events_per_s']:.0f} events/s")
    print(json.dumps(timing))
    return 0


def generate_cli(args) -> int:
    """`simgan generate --checkpoint CKPT | --model URI --out FILE ...`"""
    out = check_output_file(args.out, {"--energies-from": args.energies_from,
                                       "--layer-energies-from": args.layer_energies_from,
                                       "--checkpoint": args.checkpoint})
    fmt = args.format or ("root" if out.suffix.lower() == ".root" else "hdf5")
    if fmt == "hdf5" and out.suffix.lower() not in (".h5", ".hdf5"):
        raise SimganError(f"{out}: HDF5 output needs a .h5 or .hdf5 name (or --format root with .root)")
    if fmt == "root" and out.suffix.lower() != ".root":
        raise SimganError(f"{out}: --format root needs a .root name")
    ckpt = load_checkpoint(args.checkpoint) if args.checkpoint else None  # read once, used throughout
    if ckpt is not None and ckpt["model_args"].get("domain", "calorimeter") == "airshower":
        return _generate_footprints_cli(args, ckpt, out, fmt)
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
