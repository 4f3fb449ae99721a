"""Stage simulate: Geant4 showers for the experiment (skipped when prepare.input is set)."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.contract import Context, run_domain_stage, stage_dir, write_manifest
from simgan.config import ExperimentConfig
from simgan.errors import SimganError
from simgan.sim.produce import merge_shards, simulate_to_file


def outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    return {"showers": stage_dir(cfg, "simulate") / "showers.h5"}


def inputs(cfg: ExperimentConfig) -> dict[str, Path]:
    return {}


def shard_dir(cfg: ExperimentConfig) -> Path:
    """Where a job array's `simgan simulate --shard-index` files go (the Slurm chain)."""
    return stage_dir(cfg, "simulate") / "shards"


def run(cfg: ExperimentConfig, ctx: Context, shards: list[Path] | None = None) -> dict[str, Path]:
    """The simulate stage; with `shards` (the files of a job array), those are merged into the
    stage's showers instead of simulating here, after checking they are this run's."""
    done = run_domain_stage("simulate", cfg, ctx, inputs(cfg), outputs(cfg)) if shards is None else None
    if done is not None:
        return done
    t0 = time.time()
    out = outputs(cfg)
    if shards is not None:
        if not shards:
            raise SimganError(f"no simulate shards to merge (expected {shard_dir(cfg)}/shard_*.h5)")
        from simgan.data.calochallenge import inspect
        for p in shards:
            m = inspect(p).metadata
            if m.get("seed") != cfg.seed or m.get("events_total") != cfg.simulate.events:
                raise SimganError(f"{p}: a shard of another run (seed {m.get('seed')}, {m.get('events_total')} "
                                  f"events; this config: seed {cfg.seed}, {cfg.simulate.events}); simulate again")
        meta = merge_shards(shards, out["showers"])
    else:
        meta = simulate_to_file(cfg.simulate, cfg.seed, out["showers"], progress=ctx.progress)
    write_manifest(cfg, "simulate", {}, out, t0, counts={"events": cfg.simulate.events},
                   extra={"geant4": {k: meta[k] for k in ("geant4_version", "sampling_fraction_measured",
                                                         "geant4_cpu_seconds")}})
    return out
