"""Stage train: fit the configured surrogate on the prepare stage's train/val splits."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline import prepare
from pipeline.contract import Context, manifest_path, stage_dir, write_manifest
from simgan.config import ExperimentConfig
from simgan.domains import get_domain
from simgan.train.trainer import Trainer


def inputs(cfg: ExperimentConfig) -> dict[str, Path]:
    out = prepare.outputs(cfg)
    return {"train": out["train"], "val": out["val"]}  # never the held-out test split


def outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    d = stage_dir(cfg, "train")
    return {"model": d / "model.pt", "run_info": d / "run_info.json"}


def run(cfg: ExperimentConfig, ctx: Context) -> dict[str, Path]:
    t0 = time.time()
    ins = inputs(cfg)
    out = outputs(cfg)
    if ctx.extra.get("fresh"):  # `run --force` starts from scratch; `simgan train` resumes
        last = stage_dir(cfg, "train") / "checkpoints" / "last.pt"
        last.unlink(missing_ok=True)
    info = Trainer(cfg, get_domain(cfg.domain.name), ins["train"], ins["val"], stage_dir(cfg, "train"), progress=ctx.progress).fit()
    if not info["complete"]:
        # no manifest: the stage is not done, and the next run resumes from the checkpoint
        manifest_path(cfg, "train").unlink(missing_ok=True)
        print(f"[train] stopped at step {info['steps']} of {cfg.train.steps} after train.max_seconds="
              f"{cfg.train.max_seconds:g}; model.pt holds that step; run again to continue")
        return out
    write_manifest(cfg, "train", ins, out, t0, counts={"steps": info["steps"], "n_train": info["n_train"]},
                   extra={"training": info})
    return out
