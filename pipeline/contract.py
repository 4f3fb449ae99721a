"""The stage contract: inputs, outputs, atomic writes and a manifest per stage.

A stage is `run(cfg, ctx) -> outputs`. Its manifest (JSON) records the resolved-config
hash (run-only keys excluded), the input hashes, package versions, seed, wall time and
counts. The runner skips a stage whose manifest matches its current config and inputs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

import simgan
from simgan.config import ExperimentConfig, hashable_view
from simgan.domains import get_domain
from simgan.errors import SimganError
from simgan.io import check_outputs_apart, file_sha256, text_sha256, write_json_atomic

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


_HELD: dict[Path, int] = {}  # run folders this process holds the lock of (re-entrant)


@contextlib.contextmanager
def run_folder_lock(cfg: ExperimentConfig):
    """One command at a time runs stages in a run folder: a second `simgan run` (or stage
    command) on the same folder fails at once, naming the process that holds it, instead of
    running every stage again beside it. Under torchrun only rank 0 takes it."""
    run_dir = Path(cfg.run_dir).resolve()
    if int(os.environ.get("RANK", "0")) != 0 or run_dir in _HELD:
        _HELD[run_dir] = _HELD.get(run_dir, 0) + 1
        try:
            yield
        finally:
            _HELD[run_dir] -= 1
            if not _HELD[run_dir]:
                del _HELD[run_dir]
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise SimganError(f"{run_dir}: cannot create the run folder's lock file ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise SimganError(f"{run_dir}: another simgan command is running stages in this run folder "
                              f"({holder}); wait for it to finish, or give this run another name=") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {platform.node()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        _HELD[run_dir] = 1
        try:
            yield
        finally:
            del _HELD[run_dir]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the lock; the kernel releases it for a killed process too


def read_manifest(cfg: ExperimentConfig, stage: str) -> dict | None:
    """The stage's manifest, or None when there is none or it is not one this code wrote (torn
    JSON, a list, nulls or wrong types where paths and hashes belong): the stage then re-runs."""
    p = manifest_path(cfg, stage)
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(m, dict) or not isinstance(m.get("config_hash"), str):
        return None
    for key in ("outputs", "input_hashes"):
        value = m.get(key)
        if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
            return None
    if not m["outputs"]:
        return None
    return m


def is_complete(cfg: ExperimentConfig, stage: str, inputs: dict[str, Path],
                outputs: dict[str, Path] | None = None) -> bool:
    """Complete when the manifest matches the config and inputs, and the outputs it names and
    the stage's `outputs` all exist."""
    m = read_manifest(cfg, stage)
    if m is None or m["config_hash"] != config_hash(cfg, stage):
        return False
    if any(not Path(p).exists() for p in inputs.values()):
        return False
    if m["input_hashes"] != input_hashes(inputs):
        return False
    expected = [str(p) for p in (outputs or {}).values()]
    return all(Path(p).exists() for p in [*m["outputs"].values(), *expected])


def run_domain_stage(stage: str, cfg: ExperimentConfig, ctx: Context, ins: dict[str, Path],
                     out: dict[str, Path], shards: list[Path] | None = None) -> dict[str, Path]:
    """Run a stage's body for the config's domain and write the stage's manifest. `shards`: the
    files of a job array to merge into the stage's output (the domains that run on Slurm)."""
    check_outputs_apart(out, ins, stage)
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
