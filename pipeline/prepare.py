"""Stage prepare: the domain reads any supported input, checks it, splits train/val/test by seed.

The held-out test split is written to its own file and never read by training.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import simulate
from pipeline.contract import Context, run_domain_stage, stage_dir
from simgan.config import ExperimentConfig

SPLITS = ("train", "val", "test")


def inputs(cfg: ExperimentConfig) -> dict[str, Path]:
    src = Path(cfg.prepare.input) if cfg.prepare.input else simulate.outputs(cfg)["showers"]
    return {"source": src}


def outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    d = stage_dir(cfg, "prepare")
    return {s: d / f"{s}.h5" for s in SPLITS}


def run(cfg: ExperimentConfig, ctx: Context) -> dict[str, Path]:
    return run_domain_stage("prepare", cfg, ctx, inputs(cfg), outputs(cfg))

