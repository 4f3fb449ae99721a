"""`simgan <stage> -c CONFIG [key=value ...]` and `simgan run -c CONFIG`.

Thin: parse, load the config, call the stage. User errors print one line naming the
file/field/key and exit non-zero (2; 3 when the validation gate fails).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from simgan.errors import SimganError
from simgan.io import check_output_file


def _int_at_least(lo: int):
    """An argparse type: an integer >= lo (argparse then names the option and exits 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {value}")
        return value
    parse.__name__ = f"integer >= {lo}"
    return parse


def _positive_finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _shards(args) -> None:
    if (args.shard_index is None) != (args.shard_count is None):
        raise SimganError("give both --shard-index and --shard-count, or neither")
    if args.shard_count is not None and args.shard_index >= args.shard_count:
        raise SimganError(f"--shard-index {args.shard_index}: expected 0 <= index < --shard-count {args.shard_count}")


def _config(args, extra: list[str] | None = None):
    from simgan.domains import load_config  # lazy: the domains load torch; `simgan --help` stays fast

    return load_config(args.config, list(args.overrides) + (extra or []))


def cmd_simulate(args) -> int:
    _shards(args)
    extra = [f"simulate.events={args.events}"] if args.events is not None else []
    cfg = _config(args, extra)
    from simgan.domains import get_domain  # lazy: see _config

    print(get_domain(cfg.domain.name).simulate_file(cfg, args.out, not args.quiet, args.shard_index, args.shard_count,
                                                     args.dask, args.scheduler))
    return 0


def cmd_merge(args) -> int:
    if args.stage:
        args.overrides = [a for a in args.shards if "=" in a]  # key=value overrides of the config
        if len(args.overrides) != len(args.shards) or args.out or not args.config:
            raise SimganError(f"--stage {args.stage} takes -c CONFIG [key=value ...] and nothing else: it merges the "
                              "stage's shards (RUN/STAGE/shards/shard_*.h5) into its output and writes its manifest")
        from pipeline.contract import Context, run_folder_lock  # lazy: see _config
        from pipeline.runner import stage_module

        cfg = _config(args)
        mod = stage_module(args.stage)
        shards = sorted(mod.shard_dir(cfg).glob("shard_*.h5"))
        with run_folder_lock(cfg):
            out = mod.run(cfg, Context(progress=False), shards=shards)
        print(f"[{args.stage}] merged {len(shards)} shards into {out['showers']}")
        return 0
    if not args.shards or not args.out:
        raise SimganError("give the shard files and --out FILE (or --stage STAGE -c CONFIG)")

    check_output_file(args.out, {f"shard #{i}": s for i, s in enumerate(args.shards)})
    from simgan.domains import file_domain, get_domain  # lazy: see _config

    get_domain(file_domain(args.shards[0])).merge_files(args.shards, args.out)
    print(f"wrote {args.out} from {len(args.shards)} shards")
    return 0


def cmd_convert(args) -> int:
    from simgan.domains import get_domain, names  # lazy: see _config
    from simgan.domains.base import ConvertRequest

    check_output_file(args.out, {"input": args.input, "--labels": args.labels})
    # the domain that reads this input format (auto: the calorimeter's formats, by extension)
    readers = {f: n for n in reversed(names()) for f in get_domain(n).convert_formats}
    if args.format not in readers:
        raise SimganError(f"--format {args.format!r}: expected one of {', '.join(readers)}")
    get_domain(readers[args.format]).convert(ConvertRequest(
        input=Path(args.input), out=Path(args.out), format=args.format, binning=args.binning,
        labels=Path(args.labels) if args.labels else None, scale_um=args.scale_um, cores=args.cores,
        core=tuple(args.core) if args.core else None, seed=args.seed))
    print(f"wrote {args.out}")
    return 0


def _stage(name):
    def run(args) -> int:
        from pipeline.runner import run_stages  # lazy: see _config

        cfg = _config(args)
        run_stages(cfg, [name], force=True, progress=not args.quiet, fresh=False)  # resumes
        return 0
    return run


def cmd_run(args) -> int:
    from pipeline.runner import run_chain  # lazy: see _config

    cfg = _config(args)
    return run_chain(cfg, force=args.force, start=args.from_stage, until=args.until, progress=not args.quiet)


def cmd_generate(args) -> int:
    from pipeline.generate import generate_cli  # lazy: see _config

    _shards(args)
    return generate_cli(args)


def cmd_validate(args) -> int:
    from pipeline.validate import validate_cli  # lazy: see _config

    return validate_cli(args)


def cmd_register(args) -> int:
    from pipeline.register import register_cli  # lazy: see _config

    return register_cli(args)


def cmd_export(args) -> int:
    from pipeline.export import export_cli  # lazy: see _config

    return export_cli(args)


def cmd_workflow(args) -> int:
    from pipeline.workflow import render  # lazy: see _config

    cfg = _config(args)
    for path in render(cfg, args.config, args.out, args.partition, args.gpu_partition, args.nodes, args.gpus_per_node,
                       args.generate_shards, args.cpus, args.time_train):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simgan", description="Fast generative surrogates for physics simulation")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp, required=True):
        sp.add_argument("-c", "--config", required=required, help="experiment YAML")
        sp.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("simulate", help="run Geant4 and write canonical HDF5")
    with_config(s)
    s.add_argument("--events", type=_int_at_least(1))
    s.add_argument("--out", required=True)
    s.add_argument("--shard-index", type=_int_at_least(0))
    s.add_argument("--shard-count", type=_int_at_least(1))
    s.add_argument("--dask", action="store_true", help="run the shards on a dask.distributed cluster")
    s.add_argument("--scheduler", help="dask scheduler address (default: a LocalCluster of worker processes)")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("merge", help="merge shard files (or complete a stage from its job array's shards)")
    s.add_argument("shards", nargs="*", help="shard files (with --stage: key=value overrides of the config)")
    s.add_argument("--out")
    s.add_argument("--stage", choices=["simulate", "generate"],
                   help="merge RUN/STAGE/shards/shard_*.h5 into the stage's output and write its manifest")
    s.add_argument("-c", "--config")
    s.set_defaults(overrides=[])
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("convert", help="convert between CaloChallenge HDF5, CaloGAN HDF5 and ROOT; rasterise a "
                                       "folder of neuron morphologies (SWC) into a neuron image file")
    s.add_argument("input")
    s.add_argument("--out", required=True)
    s.add_argument("--format", default="auto",
                   help="input format, one a domain reads: auto (calorimeter files by extension), calochallenge, "
                        "calogan, root; swc (a folder of neuron morphologies); corsika (a CORSIKA 7 particle file: "
                        "air-shower footprints with traces)")
    s.add_argument("--binning", help="shipped binning name or XML path (needed for ROOT input)")
    s.add_argument("--labels", help="--format swc: CSV with columns file, cell_class (IN, PC, L5_TPC), optionally "
                                    "randomness")
    s.add_argument("--scale-um", type=_positive_finite, default=1.0,
                   help="--format swc: um per unit of the morphology files (0.008 for 8 nm)")
    s.add_argument("--cores", type=int, default=1,
                   help="--format corsika: core positions per shower (each a footprint), drawn in the array's disc")
    s.add_argument("--core", type=float, nargs=2, metavar=("X_M", "Y_M"),
                   help="--format corsika: put every shower's core here (m from the array centre)")
    s.add_argument("--seed", type=int, default=0, help="--format corsika: seed of the core positions and the tanks")
    s.set_defaults(func=cmd_convert)

    for name in ("prepare", "train"):
        s = sub.add_parser(name, help=f"run the {name} stage")
        with_config(s)
        s.set_defaults(func=_stage(name))

    s = sub.add_parser("generate", help="generate showers from a checkpoint or a registered model")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint")
    src.add_argument("--model", help="MLflow model URI, e.g. models:/NAME@champion")
    src.add_argument("--export", metavar="DIR", help="a folder written by `simgan export`: the graph run in "
                     "onnxruntime (or TorchScript) with the noise its sidecar names, as a C++ consumer runs it")
    s.add_argument("--out", required=True)
    s.add_argument("--events", type=_int_at_least(1))
    s.add_argument("--energies-from", help="canonical file whose incident energies to use")
    s.add_argument("--layer-energies-from", help="canonical file whose incident energies, conditions and layer "
                   "energies to use: the shape model fed the simulator's layer energies (ablation; output=layers models)")
    s.add_argument("--energy-range", nargs=2, type=_positive_finite, metavar=("MIN_GEV", "MAX_GEV"))
    s.add_argument("--batch-size", type=_int_at_least(1), default=1000)
    s.add_argument("--format", choices=["hdf5", "root"])
    s.add_argument("--device", default="auto")
    s.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: the network in bfloat16 (faster on CPUs with AVX512-BF16 or AMX, and on GPUs)")
    s.add_argument("--seed", type=_int_at_least(0), default=0)
    s.add_argument("--compare-geant4", type=_int_at_least(0), default=0, metavar="N")
    s.add_argument("--shard-index", type=_int_at_least(0),
                   help="write only this shard of the rows (join shards with `simgan merge`)")
    s.add_argument("--shard-count", type=_int_at_least(1))
    s.add_argument("--dask", action="store_true", help="generate the shards on a dask.distributed cluster, then merge")
    s.add_argument("--scheduler", help="dask scheduler address (default: a LocalCluster)")
    s.add_argument("--dask-workers", type=_int_at_least(1), default=2, help="LocalCluster size (default 2)")
    s.add_argument("--shards", type=_int_at_least(1), help="number of dask shards (default: one per worker)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("validate", help="compare generated showers with held-out simulation")
    s.add_argument("--reference", required=True)
    s.add_argument("--candidate", required=True, action="append",
                   help="generated samples; give it once per draw of the sampler (validate.draws): the verdict "
                   "passes only where every draw passes")
    s.add_argument("--out", required=True)
    s.add_argument("-c", "--config")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--floor", help="an independent simulated sample for the simulator-vs-simulator floor "
                   "(default: the reference's two halves, at half the size)")
    s.add_argument("--classifier", choices=["gbdt", "dnn"],
                   help="dnn: also run the CaloChallenge DNN classifier test (default: from the config, gbdt)")
    s.add_argument("--ablation", help="a second candidate to report beside, e.g. generated with "
                   "`simgan generate --layer-energies-from` (shape model fed the simulator's layer energies)")
    s.add_argument("--dask", action="store_true", help="compute features on a dask.distributed cluster")
    s.add_argument("--scheduler", help="dask scheduler address (default: a LocalCluster)")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("register", help="register a trained model in MLflow")
    s.add_argument("--run-dir")
    s.add_argument("-c", "--config")
    s.add_argument("--name")
    s.add_argument("--tracking-uri")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(func=cmd_register)

    s = sub.add_parser("export", help="export a model's sampler as one ONNX or TorchScript graph for C++ consumers")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint")
    g.add_argument("--model", help="MLflow model URI, e.g. models:/NAME@champion")
    s.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    s.add_argument("--out", required=True, help="a new or empty folder: model.onnx or model.pt, and model.json")
    s.add_argument("--metrics", help="the metrics.json of this checkpoint's validation (recorded in the sidecar)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("workflow", help="render Slurm job scripts for a config (dry run: nothing is submitted)")
    with_config(s)
    s.add_argument("--out", required=True)
    s.add_argument("--partition", default="cpu")
    s.add_argument("--gpu-partition", default="gpu")
    s.add_argument("--nodes", type=_int_at_least(1), default=1)
    s.add_argument("--gpus-per-node", type=_int_at_least(0), default=4)
    s.add_argument("--generate-shards", type=_int_at_least(1), default=4, help="array tasks for generation (default 4)")
    s.add_argument("--cpus", type=_int_at_least(1), default=8,
                   help="CPUs of the validate job and of the train job (default 8); with --gpus-per-node 0 the "
                        "train job runs one gloo process per CPU")
    s.add_argument("--time-train", default="24:00:00",
                   help="the train job's time limit (Slurm format, default 24:00:00); a job that hits it saves "
                        "its step, and `OUT/submit.sh train` resumes the chain from there")
    s.set_defaults(func=cmd_workflow)

    s = sub.add_parser("run", help="run the whole chain")
    with_config(s)
    s.add_argument("--force", action="store_true", help="re-run completed stages")
    s.add_argument("--from", dest="from_stage")
    s.add_argument("--until")
    s.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides after an option (`simgan run -c C --force train.steps=9`) are overrides too
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.parse_args(argv)  # argparse's own message for what is not an override, exit 2
        args.overrides = [*args.overrides, *extra]
    try:
        from simgan.cpus import limit_threads  # lazy: see _config

        limit_threads()  # the CPUs this process may use (affinity, Slurm, cgroup quota, torchrun)
        return int(args.func(args) or 0)
    except SimganError as exc:
        print(f"simgan: error: {exc}", file=sys.stderr)
        if argv is None and getattr(exc, "hard_exit", False):  # the command line: leave before HDF5's exit hooks
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        print("simgan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
