"""The stage contract: inputs, outputs, atomic writes and a manifest per stage.

A stage is `run(cfg, ctx) -> outputs`. Its manifest (JSON) records the resolved-config
hash (run-only keys excluded), the input hashes, package versions, seed, wall time and
counts. The runner skips a stage whose manifest matches its current config and inputs.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

import simgan
from simgan.config import ExperimentConfig, hashable_view
from simgan.domains import get_domain
from simgan.errors import SimganError
from simgan.io import file_sha256, text_sha256, write_json_atomic

STAGES = ("simulate", "prepare", "train", "generate", "validate", "register")
# config sections each stage's output depends on (besides its inputs' content)
SECTIONS = {
    "simulate": ("simulate", "domain"),
    "prepare": ("prepare", "domain"),
    "train": ("train", "model", "domain"),
    "generate": ("generate",),
    "validate": ("validate", "domain"),
    "register": ("register",),
}
PACKAGES = ("torch", "numpy", "h5py", "uproot", "mlflow", "geant4-pybind", "scikit-learn")


@dataclass
class Context:
    force: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)


def stage_dir(cfg: ExperimentConfig, stage: str) -> Path:
    return cfg.run_dir / stage


def manifest_path(cfg: ExperimentConfig, stage: str) -> Path:
    return stage_dir(cfg, stage) / "manifest.json"


def config_hash(cfg: ExperimentConfig, stage: str) -> str:
    view = hashable_view(cfg, SECTIONS[stage])
    view["seed"] = cfg.seed
    return text_sha256(json.dumps(view, sort_keys=True))


def input_hashes(paths: dict[str, Path]) -> dict[str, str]:
    out = {}
    for name, p in paths.items():
        p = Path(p)
        if p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file())
            out[name] = text_sha256("".join(f"{q.relative_to(p)}:{file_sha256(q)}" for q in files))
        else:
            out[name] = file_sha256(p)
    return out


def package_versions() -> dict[str, str]:
    out = {"simgan": simgan.__version__, "python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def read_manifest(cfg: ExperimentConfig, stage: str) -> dict | None:
    p = manifest_path(cfg, stage)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def is_complete(cfg: ExperimentConfig, stage: str, inputs: dict[str, Path]) -> bool:
    """Complete when the manifest matches the config and inputs and all outputs exist."""
    m = read_manifest(cfg, stage)
    if m is None or m.get("config_hash") != config_hash(cfg, stage):
        return False
    if any(not Path(p).exists() for p in inputs.values()):
        return False
    if m.get("input_hashes") != input_hashes(inputs):
        return False
    return all(Path(p).exists() for p in m.get("outputs", {}).values())


def run_domain_stage(stage: str, cfg: ExperimentConfig, ctx: Context, ins: dict[str, Path],
                     out: dict[str, Path], shards: list[Path] | None = None) -> dict[str, Path]:
    """Run a stage's body for the config's domain and write the stage's manifest. `shards`: the
    files of a job array to merge into the stage's output (the domains that run on Slurm)."""
    domain = get_domain(cfg.domain.name)
    body = domain.stages.get(stage)
    if body is None:
        raise SimganError(f"stage {stage}: the {domain.name} domain has no body for it")
    t0 = time.time()
    if shards is not None:
        if stage not in domain.sharded_stages:
            raise SimganError(f"stage {stage}: the {domain.name} domain does not merge job-array shards "
                              "(merge them with `simgan merge FILES --out FILE`)")
        info = body(cfg, ins, out, ctx.progress, shards=shards) or {}
    else:
        info = body(cfg, ins, out, ctx.progress) or {}
    write_manifest(cfg, stage, ins, out, t0, counts=info.get("counts"), extra=info.get("extra"))
    return out


def write_manifest(cfg: ExperimentConfig, stage: str, inputs: dict[str, Path], outputs: dict[str, Path],
                   started: float, counts: dict | None = None, extra: dict | None = None) -> dict:
    m = {
        "stage": stage,
        "config_hash": config_hash(cfg, stage),
        "config": hashable_view(cfg, SECTIONS[stage]),
        "seed": cfg.seed,
        "input_hashes": input_hashes(inputs),
        "inputs": {k: str(v) for k, v in inputs.items()},
        "outputs": {k: str(v) for k, v in outputs.items()},
        "packages": package_versions(),
        "wall_seconds": round(time.time() - started, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": counts or {},
    }
    if extra:
        m.update(extra)
    write_json_atomic(manifest_path(cfg, stage), m)
    return m
