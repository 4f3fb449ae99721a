"""Stage validate: the generated sample against the held-out test split."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import generate, prepare
from pipeline.contract import Context, run_domain_stage, stage_dir
from simgan.cluster import dask_client
from simgan.config import ExperimentConfig, ValidateConfig
from simgan.domains import file_domain
from simgan.domains.calorimeter.stages import ABLATION_LABEL
from simgan.errors import GateFailed, SimganError
from simgan.io import check_output_dir
from simgan.validate import validate, verdict


def inputs(cfg: ExperimentConfig) -> dict[str, Path]:
    """The held-out test split is the reference; the training split (independent Geant4
    showers, as many as the test split taken from it) gives the Geant4-vs-Geant4 floor."""
    ins = {"reference": prepare.outputs(cfg)["test"], "candidate": generate.outputs(cfg)["showers"],
           "floor": prepare.outputs(cfg)["train"]}
    for key in ("ablation", "uncalibrated"):
        if key in generate.outputs(cfg):
            ins[key] = generate.outputs(cfg)[key]
    return ins




def outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    d = stage_dir(cfg, "validate")
    return {"metrics": d / "metrics.json", "report": d / "report.html"}


def run(cfg: ExperimentConfig, ctx: Context) -> dict[str, Path]:
    return run_domain_stage("validate", cfg, ctx, inputs(cfg), outputs(cfg))


def verdict_line(cfg: ExperimentConfig) -> str:
    return summary_text(json.loads(outputs(cfg)["metrics"].read_text()), outputs(cfg)["report"])


def summary_text(m: dict, report) -> str:
    fl = m["floor"]
    if m.get("domain") == "airshower":
        def pct(k):
            return f"{100 * m[k]:.1f}% [{100 * fl[k]:.1f}%]"
        return (f"validation: {verdict(m)} (AUC observables {m['auc']:.3f} [simulator floor {fl['auc']:.3f}], "
                f"footprints {m['auc_footprints']:.3f} [{fl['auc_footprints']:.3f}]; mean separation "
                f"{m['separation_power_mean']:.4f} [{fl['separation_power_mean']:.4f}]; stations within "
                f"{pct('station_count_deviation_max')}, angular resolution within "
                f"{pct('angular_resolution_deviation_max')}, S1000 bias {pct('s1000_bias_max')}); report: {report}")
    return (f"validation: {verdict(m)} (AUC high-level {m['auc_high']:.3f} [Geant4 floor {fl['auc_high']:.3f}], "
            f"voxels {m['auc_low']:.3f} [{fl['auc_low']:.3f}]; mean separation {m['separation_power_mean']:.4f} "
            f"[{fl['separation_power_mean']:.4f}]; E_tot/E_inc separation {m['separation_power']['etot_over_einc']:.3f} "
            f"[{fl['separation_etot_over_einc']:.3f}]; response within {100 * m['response_deviation_max']:.1f}% "
            f"[{100 * fl['response_deviation_max']:.1f}%]); report: {report}")


def validate_cli(args) -> int:
    if args.config:
        from simgan.config import load_config

        cfg = load_config(args.config, args.overrides)
        vcfg, threshold = cfg.validate, cfg.domain.threshold_mev
    else:
        if args.overrides:
            raise SimganError("key=value overrides need -c CONFIG")
        from simgan.config import DomainConfig

        vcfg, threshold = ValidateConfig(), DomainConfig().threshold_mev
    if args.classifier:
        vcfg = vcfg.model_copy(update={"classifier": args.classifier})
    extra = {ABLATION_LABEL: args.ablation} if args.ablation else None
    check_output_dir(args.out, create=False)  # before the work, not after
    if file_domain(args.reference) == "airshower":
        from simgan.config import AirshowerGateConfig
        from simgan.domains.airshower.domain import validate_files
        if not args.floor:
            raise SimganError("air-shower validation needs --floor: an independent simulated sample")
        if not args.config:
            vcfg = vcfg.model_copy(update={"gate": AirshowerGateConfig()})
        m = validate_files(args.reference, args.candidate, args.floor, args.out, vcfg)
    else:
        with dask_client(args.dask or vcfg.dask, vcfg.dask_workers, args.scheduler) as client:
            m = validate(args.reference, args.candidate, args.out, vcfg, threshold, client, floor=args.floor,
                         extra_candidates=extra)
    print(summary_text(m, Path(args.out) / "report.html"))
    if "auc_high_dnn" in m:
        print(f"CaloChallenge DNN classifier ({m['dnn_runs']} runs): AUC high-level {m['auc_high_dnn']:.3f}"
              f"±{m['auc_high_dnn_std']:.3f} [floor {m['floor']['auc_high_dnn']:.3f}], voxels {m['auc_low_dnn']:.3f}"
              f"±{m['auc_low_dnn_std']:.3f} [floor {m['floor']['auc_low_dnn']:.3f}]")
    if not m["gate"]["pass"]:
        failed = [k for k, c in m["gate"]["checks"].items() if not c["pass"]]
        raise GateFailed(f"validation gate failed: {', '.join(failed)} (see {Path(args.out) / 'metrics.json'})")
    return 0
