"""Render the Slurm templates in workflows/slurm for a config: thin wrappers over the CLI."""

from __future__ import annotations

import math
import os
from pathlib import Path
from string import Template

from simgan.config import ExperimentConfig
from simgan.errors import SimganError

TEMPLATES = Path(__file__).resolve().parent.parent / "workflows" / "slurm"
STAGE_CPUS = {"validate": 8, "register": 1}


def render(cfg: ExperimentConfig, config_path: str, out_dir, partition: str = "cpu", gpu_partition: str = "gpu",
           nodes: int = 1, gpus_per_node: int = 4, generate_shards: int = 4) -> list[Path]:
    if not TEMPLATES.is_dir():
        raise SimganError(f"{TEMPLATES}: workflow templates not found (run from a source checkout)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = math.ceil(cfg.simulate.events / cfg.simulate.shard_events)
    if cfg.generate.format != "hdf5":
        raise SimganError("generate.format: the Slurm generate array writes HDF5 shards; use hdf5 (convert afterwards)")
    if generate_shards <= 0:
        raise SimganError(f"--generate-shards {generate_shards}: expected a positive number")
    values = {
        "name": cfg.name, "config": os.path.abspath(config_path), "run_dir": os.path.abspath(cfg.run_dir),
        "partition": partition, "gpu_partition": gpu_partition, "nodes": nodes, "gpus_per_node": gpus_per_node,
        "shard_count": shards, "last_shard": shards - 1, "precision": "bf16",
        "time_simulate": "04:00:00", "time_train": "24:00:00",
        "seed": cfg.seed, "gen_batch": cfg.generate.batch_size, "gen_shards": generate_shards,
        "last_gen_shard": generate_shards - 1,
        "events_arg": f"--events {cfg.generate.events}" if cfg.generate.events else "",
    }
    written = []
    for tpl in sorted(TEMPLATES.glob("*.in")):
        if tpl.name == "stage.sbatch.in":
            continue
        written.append(_write(out_dir / tpl.name[:-3], Template(tpl.read_text()).substitute(values)))
    stage_tpl = Template((TEMPLATES / "stage.sbatch.in").read_text())
    for stage, cpus in STAGE_CPUS.items():
        written.append(_write(out_dir / f"{stage}.sbatch", stage_tpl.substitute(values, stage=stage, cpus=cpus)))
    return written


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path
