"""Stage simulate: Geant4 showers for the experiment (skipped when prepare.input is set)."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.contract import Context, stage_dir, write_manifest
from simgan.config import ExperimentConfig
from simgan.sim.produce import simulate_to_file


def outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    return {"showers": stage_dir(cfg, "simulate") / "showers.h5"}


def inputs(cfg: ExperimentConfig) -> dict[str, Path]:
    return {}


def run(cfg: ExperimentConfig, ctx: Context) -> dict[str, Path]:
    t0 = time.time()
    out = outputs(cfg)
    meta = simulate_to_file(cfg.simulate, cfg.seed, out["showers"], progress=ctx.progress)
    write_manifest(cfg, "simulate", {}, out, t0, counts={"events": cfg.simulate.events},
                   extra={"geant4": {k: meta[k] for k in ("geant4_version", "sampling_fraction_measured",
                                                         "geant4_cpu_seconds")}})
    return out
