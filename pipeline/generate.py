"""Stage generate: samples for the held-out test conditions; `simgan generate` on the command line."""

from __future__ import annotations

from pathlib import Path

from pipeline import prepare, train
from pipeline.contract import Context, run_domain_stage, stage_dir
from simgan.checkpoint import load_checkpoint
from simgan.config import ExperimentConfig
from simgan.domains import domain_of_args
from simgan.errors import SimganError
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
    if ckpt is None:
        from simgan.domains import get_domain
        return get_domain("calorimeter").generate_cli(args, None, out, fmt)  # a registered calorimeter model
    return domain_of_args(ckpt["model_args"]).generate_cli(args, ckpt, out, fmt)
