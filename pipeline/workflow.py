"""Render the Slurm templates in workflows/slurm for a config: thin wrappers over the CLI."""

from __future__ import annotations

import os
import re
from pathlib import Path
from string import Template

import yaml

from simgan.config import ExperimentConfig
from simgan.domains import get_domain
from simgan.errors import SimganError
from simgan.io import atomic_path, check_output_dir
from simgan.tracking import tracking_uri

TEMPLATES = Path(__file__).resolve().parent.parent / "workflows" / "slurm"


SLURM_TIME = re.compile(r"\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+(:\d{1,2}){0,2}")


def render(cfg: ExperimentConfig, config_path: str, out_dir, partition: str = "cpu", gpu_partition: str = "gpu",
           nodes: int = 1, gpus_per_node: int = 4, generate_shards: int = 4, train_cpus: int = 8,
           time_train: str = "24:00:00") -> list[Path]:
    """Job scripts for the chain, every job reading `OUT/config.yaml`: the experiment fully
    resolved (groups, command-line overrides, an absolute runs_dir and MLflow store), so the jobs and a later
    `simgan run -c OUT/config.yaml` see the same experiment and the same stage manifests.
    gpus_per_node=0 trains on a CPU partition: torchrun with one gloo process per CPU of the
    job (train_cpus, also the validate job's CPUs); otherwise one NCCL process per GPU.
    time_train is the train job's Slurm time limit: a job that hits it saves its step and
    `submit.sh train` resumes it."""
    if not TEMPLATES.is_dir():
        raise SimganError(f"{TEMPLATES}: workflow templates not found (run from a source checkout)")
    if min(nodes, generate_shards, train_cpus) < 1 or gpus_per_node < 0:
        raise SimganError(f"--nodes {nodes}, --generate-shards {generate_shards}, --cpus {train_cpus} must be "
                          f">= 1 and --gpus-per-node {gpus_per_node} >= 0")
    if not SLURM_TIME.fullmatch(time_train) or not any(c != "0" for c in re.sub(r"\D", "", time_train)):
        raise SimganError(f"--time-train {time_train!r}: expected a Slurm time limit above 0 (minutes, MM:SS, "
                          "HH:MM:SS or D-HH[:MM[:SS]])")
    domain = get_domain(cfg.domain.name)
    if "simulate" not in domain.sharded_stages:
        raise SimganError(f"domain {cfg.domain.name!r}: its simulate stage does not merge job-array shards; run it "
                          "with `simgan run`")
    if getattr(cfg.generate, "format", "hdf5") != "hdf5":
        raise SimganError("generate.format: the Slurm generate array writes HDF5 shards; use hdf5 (convert afterwards)")
    if cfg.prepare.input:
        raise SimganError("prepare.input is set: the Slurm chain simulates; run `simgan run` for given data")
    if Path(out_dir, "config.yaml").resolve() == Path(config_path).resolve():
        raise SimganError(f"--out {out_dir}: its config.yaml is the -c config itself, which the workflow would "
                          "overwrite with its resolved copy; choose another --out (or edit that file and run "
                          f"{Path(out_dir) / 'submit.sh'} again)")
    out_dir = check_output_dir(out_dir)
    uri = tracking_uri(cfg.register.tracking_uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # relative to where jobs run: pin it
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    resolved = cfg.model_copy(update={"runs_dir": os.path.abspath(cfg.runs_dir),
                                      "register": cfg.register.model_copy(update={"tracking_uri": uri})})
    config = out_dir / "config.yaml"
    with atomic_path(config, suffix=".yaml") as tmp:
        tmp.write_text(f"# {cfg.name}, resolved from {os.path.abspath(config_path)} by `simgan workflow`: "
                       "every job reads this file\n" + yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False))
    shards = domain.simulate_shards(cfg)
    gen_array = "generate" in domain.sharded_stages  # else one generate job
    gpu = gpus_per_node > 0
    values = {
        "name": cfg.name, "config": str(config.resolve()), "run_dir": os.path.abspath(resolved.run_dir),
        "partition": partition, "train_partition": gpu_partition if gpu else partition, "nodes": nodes,
        "gres": f"#SBATCH --gpus-per-node={gpus_per_node}" if gpu else "# CPU partition: gloo, one process per CPU",
        "nproc": str(gpus_per_node) if gpu else '"${SLURM_CPUS_PER_TASK}"', "train_cpus": train_cpus,
        "shard_count": shards, "last_shard": shards - 1,
        "time_simulate": "04:00:00", "time_train": time_train,
        "seed": cfg.seed, "gen_batch": cfg.generate.batch_size, "gen_shards": generate_shards,
        "last_gen_shard": generate_shards - 1, "gen_cpus": min(4, train_cpus),
        "events_arg": f"--events {cfg.generate.events}" if cfg.generate.events else "",
        "precision": cfg.generate.precision,
        "workers_arg": "simulate.workers=1" if "workers" in type(cfg.simulate).model_fields else "",
        "stages": " ".join(["simulate:simulate_array", "prepare:merge", "train:train"]
                           + (["generate:generate_array", "generate-merge:generate_merge"] if gen_array
                              else ["generate:generate"]) + ["validate:validate", "register:register"]),
    }
    written = [config]
    for tpl in sorted(TEMPLATES.glob("*.in")):
        if tpl.name == "stage.sbatch.in" or (not gen_array and tpl.name.startswith("generate_")):
            continue
        written.append(_write(out_dir / tpl.name[:-3], Template(tpl.read_text()).substitute(values)))
    stage_tpl = Template((TEMPLATES / "stage.sbatch.in").read_text())
    single = [("validate", train_cpus), ("register", 1)] + ([] if gen_array else [("generate", min(4, train_cpus))])
    for stage, cpus in single:
        written.append(_write(out_dir / f"{stage}.sbatch", stage_tpl.substitute(values, stage=stage, cpus=cpus)))
    return written


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path
