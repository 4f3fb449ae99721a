"""Stage generate: samples for the held-out test conditions; `simgan generate` on the command line."""

from __future__ import annotations

from pathlib import Path

from pipeline import prepare, train
from pipeline.contract import Context, run_domain_stage, stage_dir
from simgan.checkpoint import load_checkpoint
from simgan.config import ExperimentConfig
from simgan.domains import domain_of_checkpoint, get_domain
from simgan.domains.base import GenerateRequest
from simgan.errors import SimganError
from simgan.io import check_output_file
from simgan.registry import load_surrogate


def inputs(cfg: ExperimentConfig) -> dict[str, Path]:
    return {"model": train.outputs(cfg)["model"], "test": prepare.outputs(cfg)["test"]}


def outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    return get_domain(cfg.domain.name).generate_outputs(cfg, stage_dir(cfg, "generate"))


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
                                       "--checkpoint": args.checkpoint, "--export": args.export})
    fmt = args.format or ("root" if out.suffix.lower() == ".root" else "hdf5")
    if fmt == "hdf5" and out.suffix.lower() not in (".h5", ".hdf5"):
        raise SimganError(f"{out}: HDF5 output needs a .h5 or .hdf5 name (or --format root with .root)")
    if fmt == "root" and out.suffix.lower() != ".root":
        raise SimganError(f"{out}: --format root needs a .root name")
    ckpt = load_checkpoint(args.checkpoint) if args.checkpoint else None  # read once, used throughout
    path = lambda v: Path(v) if v else None  # noqa: E731
    req = GenerateRequest(
        out=out, fmt=fmt, checkpoint=path(args.checkpoint), ckpt=ckpt, model_uri=args.model, events=args.events,
        energies_from=path(args.energies_from), layer_energies_from=path(args.layer_energies_from),
        energy_range=tuple(args.energy_range) if args.energy_range else None, batch_size=args.batch_size,
        device=args.device, precision=args.precision, seed=args.seed, compare_geant4=args.compare_geant4,
        shard_index=args.shard_index, shard_count=args.shard_count, dask=args.dask, scheduler=args.scheduler,
        dask_workers=args.dask_workers, shards=args.shards, progress=not args.quiet)
    if ckpt is not None:
        domain = domain_of_checkpoint(ckpt, str(args.checkpoint))
    elif args.export:
        from simgan.export import ExportedSampler  # lazy: onnxruntime

        dropped = [f for f, v in (("--compare-geant4", args.compare_geant4), ("--precision bf16",
                                                                              args.precision == "bf16")) if v]
        if dropped:
            raise SimganError(f"{' and '.join(dropped)} go with --checkpoint or --model: an export runs its graph as "
                              "exported (float32 in onnxruntime or TorchScript), without Geant4 beside it")
        req.exported = ExportedSampler(Path(args.export))
        domain = get_domain(req.exported.sidecar.get("domain", "?"))
        if not domain.generates_from_export:
            raise SimganError(f"--export {args.export}: the {domain.name} domain does not generate from an export; "
                              "generate from the checkpoint")
    else:  # a registered model: loaded once here, its pyfunc knows its domain
        req.loaded = load_surrogate(args.model)
        domain = req.loaded.unwrap_python_model().domain
    print(domain.generate_to(req))
    return 0
