"""Stage validate: the generated sample against the held-out test split."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from pipeline import generate, prepare
from pipeline.contract import Context, stage_dir, write_manifest
from simgan.config import ExperimentConfig, ValidateConfig
from simgan.errors import GateFailed, SimganError
from simgan.validate import validate, verdict


def inputs(cfg: ExperimentConfig) -> dict[str, Path]:
    return {"reference": prepare.outputs(cfg)["test"], "candidate": generate.outputs(cfg)["showers"]}


def outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    d = stage_dir(cfg, "validate")
    return {"metrics": d / "metrics.json", "report": d / "report.html"}


@contextlib.contextmanager
def dask_client(enabled: bool, workers: int, scheduler: str | None = None):
    if not enabled:
        yield None
        return
    import os

    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    from dask.distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as c:
            yield c
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl, Client(cl) as c:
        yield c


def run(cfg: ExperimentConfig, ctx: Context) -> dict[str, Path]:
    t0 = time.time()
    ins, out = inputs(cfg), outputs(cfg)
    if ins["candidate"].suffix == ".root":
        raise SimganError(f"{ins['candidate']}: validate reads canonical HDF5; convert ROOT output with `simgan convert`")
    with dask_client(cfg.validate.dask, cfg.validate.dask_workers) as client:
        m = validate(ins["reference"], ins["candidate"], stage_dir(cfg, "validate"), cfg.validate,
                     cfg.domain.threshold_mev, client)
    write_manifest(cfg, "validate", ins, out, t0, counts={"reference": m["n_reference"], "candidate": m["n_candidate"]},
                   extra={"gate_pass": m["gate"]["pass"]})
    return out


def verdict_line(cfg: ExperimentConfig) -> str:
    m = json.loads(outputs(cfg)["metrics"].read_text())
    return (f"validation: {verdict(m)} (AUC high-level {m['auc_high']:.3f}, voxels {m['auc_low']:.3f}, "
            f"E_tot/E_inc separation {m['separation_power']['etot_over_einc']:.3f}); report: {outputs(cfg)['report']}")


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
    with dask_client(args.dask or vcfg.dask, vcfg.dask_workers, args.scheduler) as client:
        m = validate(args.reference, args.candidate, args.out, vcfg, threshold, client)
    print(f"validation: {verdict(m)}  AUC(high) {m['auc_high']:.3f}±{m['auc_high_std']:.3f}  "
          f"AUC(voxels) {m['auc_low']:.3f}±{m['auc_low_std']:.3f}  FPD {m['fpd']:.3f}  report: {Path(args.out) / 'report.html'}")
    if not m["gate"]["pass"]:
        failed = [k for k, c in m["gate"]["checks"].items() if not c["pass"]]
        raise GateFailed(f"validation gate failed: {', '.join(failed)} (see {Path(args.out) / 'metrics.json'})")
    return 0
