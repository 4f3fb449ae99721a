"""Stage validate: the generated sample against the held-out test split."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import generate, prepare
from pipeline.contract import Context, run_domain_stage, stage_dir
from simgan.config import ExperimentConfig
from simgan.domains import domain_configs, domain_of_metrics, file_domain, get_domain, load_config
from simgan.errors import GateFailed, SimganError
from simgan.io import check_output_dir


def inputs(cfg: ExperimentConfig) -> dict[str, Path]:
    """The held-out test split is the reference; the training split (independent Geant4
    showers, as many as the test split taken from it) gives the Geant4-vs-Geant4 floor."""
    ins = {"reference": prepare.outputs(cfg)["test"], "candidate": generate.outputs(cfg)["showers"],
           "floor": prepare.outputs(cfg)["train"]}
    for key, path in generate.outputs(cfg).items():  # the extra samples the domain reports beside
        if key not in ("showers", "timing"):
            ins[key] = path
    return ins


def outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    d = stage_dir(cfg, "validate")
    return {"metrics": d / "metrics.json", "report": d / "report.html"}


def run(cfg: ExperimentConfig, ctx: Context) -> dict[str, Path]:
    return run_domain_stage("validate", cfg, ctx, inputs(cfg), outputs(cfg))


def verdict_line(cfg: ExperimentConfig) -> str:
    return summary_text(json.loads(outputs(cfg)["metrics"].read_text()), outputs(cfg)["report"])


def summary_text(m: dict, report) -> str:
    return domain_of_metrics(m, str(report)).summary_text(m, report)


def validate_cli(args) -> int:
    name = file_domain(args.reference)
    for flag, path in (("--candidate", args.candidate), ("--floor", args.floor)):
        other = file_domain(path) if path else name
        if other != name:
            raise SimganError(f"{flag} {path} holds {other} data but --reference {args.reference} holds {name} data; "
                              "compare files of one domain")
    if args.config:
        cfg = load_config(args.config, args.overrides)
        if cfg.domain.name != name:
            raise SimganError(f"--reference {args.reference} holds {name} data but {args.config} configures the "
                              f"{cfg.domain.name} domain")
        vcfg, dcfg = cfg.validate, cfg.domain
    else:
        if args.overrides:
            raise SimganError("key=value overrides need -c CONFIG")
        vcfg, dcfg = domain_configs(name).validate(), domain_configs(name).domain()
    if args.classifier:
        if "classifier" not in type(vcfg).model_fields:
            raise SimganError(f"--classifier: the {name} validation has no classifier choice (a calorimeter option)")
        vcfg = vcfg.model_copy(update={"classifier": args.classifier})
    check_output_dir(args.out, create=False)  # before the work, not after
    m = get_domain(name).validate_files(args.reference, args.candidate, args.floor, args.out, vcfg, dcfg,
                                        args.dask, args.scheduler, extra=args.ablation)
    print(summary_text(m, Path(args.out) / "report.html"))
    if not m["gate"]["pass"]:
        failed = [k for k, c in m["gate"]["checks"].items() if not c["pass"]]
        raise GateFailed(f"validation gate failed: {', '.join(failed)} (see {Path(args.out) / 'metrics.json'})")
    return 0
