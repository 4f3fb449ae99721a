"""Stage simulate: the domain's reference simulator (Geant4 for the calorimeter); skipped when
prepare.input is set."""

from __future__ import annotations

from pathlib import Path

from pipeline.contract import Context, run_domain_stage, stage_dir
from simgan.config import ExperimentConfig


def outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    return {"showers": stage_dir(cfg, "simulate") / "showers.h5"}


def inputs(cfg: ExperimentConfig) -> dict[str, Path]:
    return {}


def shard_dir(cfg: ExperimentConfig) -> Path:
    """Where a job array's `simgan simulate --shard-index` files go (the Slurm chain)."""
    return stage_dir(cfg, "simulate") / "shards"


def run(cfg: ExperimentConfig, ctx: Context, shards: list[Path] | None = None) -> dict[str, Path]:
    """The simulate stage (the domain's simulator); with `shards` (the files of a job array),
    those are merged into the stage's output instead, after checking they are this run's."""
    return run_domain_stage("simulate", cfg, ctx, inputs(cfg), outputs(cfg), shards)

