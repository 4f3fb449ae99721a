"""Stage register: the trained model into the MLflow Model Registry; alias only if the gate passed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline import train, validate
from pipeline.contract import Context, input_hashes, stage_dir, write_manifest
from simgan.checkpoint import load_checkpoint
from simgan.config import ExperimentConfig
from simgan.domains import domain_of_checkpoint, load_config
from simgan.errors import SimganError
from simgan.io import write_json_atomic
from simgan.registry import register_model
from simgan.tracking import tracking_uri


def inputs(cfg: ExperimentConfig) -> dict[str, Path]:
    t = train.outputs(cfg)
    return {"model": t["model"], "run_info": t["run_info"], "metrics": validate.outputs(cfg)["metrics"]}


def outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    return {"registered": stage_dir(cfg, "register") / "registered.json"}


def _register_dir(run_dir: Path, name: str, uri: str, alias: str, retries: int, export: str = "none") -> dict:
    model = run_dir / "train" / "model.pt"
    if not model.is_file():
        raise SimganError(f"{run_dir}: no trained model at {model}")
    metrics_path = run_dir / "validate" / "metrics.json"
    metrics = None
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except ValueError as exc:
            raise SimganError(f"{metrics_path}: not valid JSON ({exc}); run `simgan validate` again") from exc
    if metrics is not None:
        check_recorded_limits(metrics, metrics_path, run_dir / "validate" / "manifest.json")
    info_path = run_dir / "train" / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    run_id = info.get("mlflow_run_id") or None
    if run_id and info.get("tracking_uri") != uri:
        run_id = None  # the training run lives in another store
    train_split = run_dir / "prepare" / "train.h5"
    data_hash = input_hashes({"t": train_split})["t"] if train_split.is_file() else "unknown"
    domain = domain_of_checkpoint(load_checkpoint(model), str(model))
    return register_model(model, domain, name, uri, metrics, data_hash, run_id, alias, retries, str(metrics_path),
                          export)


def check_recorded_limits(metrics: dict, metrics_path: Path, manifest_path: Path) -> None:
    """The gate's limits and draws as the validate stage's manifest recorded its config: a
    metrics.json whose limit was raised (or whose draws were cut) after validation is refused,
    even where its pass flags were made to agree. Without a manifest (`simgan validate` run by
    hand) there is nothing recorded to compare."""
    if not manifest_path.is_file():
        return
    try:
        recorded = json.loads(manifest_path.read_text())["config"]["validate"]
    except (ValueError, KeyError, TypeError):
        return  # a torn or foreign manifest: the runner validates again before register runs
    gate = metrics.get("gate") if isinstance(metrics, dict) else None
    if not isinstance(gate, dict) or not isinstance(gate.get("checks"), dict):
        return  # gate_verdict names what is missing
    limits = recorded.get("gate") or {}
    for name, c in gate["checks"].items():
        key = c.get("limit_key") if isinstance(c, dict) else None
        if key is None or key not in limits:
            continue
        have = c.get("min", c.get("max"))
        if have != limits[key]:
            raise SimganError(f"{metrics_path}: check {name!r} has the limit {have}, but the validation recorded "
                              f"validate.gate.{key} = {limits[key]} ({manifest_path}); the file was changed after "
                              "validation: run `simgan validate` again")
    draws = recorded.get("draws")
    if draws is not None and gate.get("draws", 1) != draws:
        raise SimganError(f"{metrics_path}: a verdict over {gate.get('draws', 1)} draws, but the validation recorded "
                          f"validate.draws = {draws} ({manifest_path}); run `simgan validate` again")


def run(cfg: ExperimentConfig, ctx: Context) -> dict[str, Path]:
    t0 = time.time()
    ins, out = inputs(cfg), outputs(cfg)
    res = _register_dir(cfg.run_dir, cfg.register.name, tracking_uri(cfg.register.tracking_uri), cfg.register.alias,
                        cfg.register.retries, cfg.register.export)
    write_json_atomic(out["registered"], res)
    write_manifest(cfg, "register", ins, out, t0, extra={"registered": res})
    return out


def summary_line(cfg: ExperimentConfig) -> str:
    r = json.loads(outputs(cfg)["registered"].read_text())
    if r["alias"]:
        return f"registered: {r['alias_uri']} (version {r['version']}, {r['tracking_uri']})"
    return f"registered: {r['model_uri']} (gate failed: no alias moved; {r['tracking_uri']})"


def register_cli(args) -> int:
    if args.run_dir:
        run_dir = Path(args.run_dir)
        cfg = None
        if args.config:
            cfg = load_config(args.config, args.overrides)
    elif args.config:
        cfg = load_config(args.config, args.overrides)
        run_dir = cfg.run_dir
    else:
        raise SimganError("give --run-dir DIR or -c CONFIG")
    name = args.name or (cfg.register.name if cfg else None)
    if not name:
        raise SimganError("give --name NAME (or -c CONFIG with register.name)")
    uri = tracking_uri(args.tracking_uri or (cfg.register.tracking_uri if cfg else None))
    res = _register_dir(run_dir, name, uri, cfg.register.alias if cfg else "champion", cfg.register.retries if cfg else 3,
                        cfg.register.export if cfg else "none")
    print(json.dumps(res, indent=2))
    return 0

