"""Training samples/s and peak memory per precision (fp32, bf16) on the device at hand.

    python benchmarks/bench_train.py --data train.h5 [--steps 200] [--precisions fp32,bf16] [key=value ...]

Each precision runs a short warm-up fit (CUDA context, kernels) and then a timed fit from
scratch; samples/s counts critic and generator samples, as the trainer reports it.
Without --data it simulates a small Geant4 file first.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import machine_info  # noqa: E402
from simgan.domains import (
    get_domain,  # noqa: E402
    load_config,  # noqa: E402
)
from simgan.train.trainer import Trainer  # noqa: E402

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "experiment" / "quickstart.yaml"


def measure(cfg_path, data: str, precision: str, steps: int, overrides: list[str]) -> dict:
    base = [f"train.precision={precision}", "train.mlflow=false", "train.progress=false",
            "train.val_every=1000000", "train.log_every=1000000", "train.checkpoint_every=1000000"]
    with tempfile.TemporaryDirectory() as tmp:
        warm = load_config(cfg_path, base + ["train.steps=10"] + overrides)
        Trainer(warm, get_domain(warm.domain.name), data, data, Path(tmp) / "warm", progress=False).fit()
        cfg = load_config(cfg_path, base + [f"train.steps={steps}"] + overrides)
        trainer = Trainer(cfg, get_domain(cfg.domain.name), data, data, Path(tmp) / "run", progress=False)
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        info = trainer.fit()
    out = {"precision": precision, "device": info["device"], "ddp": info["ddp"], "batch_size": cfg.train.batch_size,
           "steps": steps, "samples_per_s": round(info["samples_per_s"], 1),
           "model": cfg.model.model_dump(mode="json")}
    if "peak_gpu_mib" in info:
        out["peak_gpu_mib"] = round(info["peak_gpu_mib"], 1)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(QUICKSTART))
    ap.add_argument("--data", help="canonical HDF5 to train on (default: simulate 400 showers)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from simgan.domains.calorimeter.sim.produce import simulate_to_file

            cfg = load_config(args.config, ["simulate.events=400", "simulate.shard_events=50"])
            data = str(Path(tmp) / "train.h5")
            simulate_to_file(cfg.simulate, cfg.seed, data, progress=False)
        rows = [measure(args.config, data, p, args.steps, args.overrides) for p in args.precisions.split(",")]
    return {"machine": machine_info(), "train": rows}


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
