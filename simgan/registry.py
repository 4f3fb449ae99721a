"""MLflow: tracking URI, the pyfunc wrapper, register, promote, load."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np

from simgan.errors import SimganError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ENERGY_COLUMN = "incident_energy"


def tracking_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_store_writable(uri: str) -> None:
    """A local sqlite store must be writable (the file and, for its journal, its folder); sqlite
    would otherwise retry its locks for minutes before failing."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):])
    folder = db.parent if str(db.parent) else Path(".")
    if db.exists() and not os.access(db, os.W_OK):
        raise SimganError(f"MLflow store {db} ({uri}) is read-only; give a writable register.tracking_uri "
                          "(or --tracking-uri)")
    if folder.is_dir() and not os.access(folder, os.W_OK):
        raise SimganError(f"MLflow store {db} ({uri}): its folder {folder} is read-only (sqlite writes a journal "
                          "beside the file); give a writable register.tracking_uri (or --tracking-uri)")


def mlflow_env() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # bounded: an unreachable registry fails in seconds, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _pyfunc_class():
    import mlflow.pyfunc

    class ShowerSurrogate(mlflow.pyfunc.PythonModel):
        """Input: a table of float64 conditions (incident_energy in MeV, extra conditions).
        Output: (N, n_voxels) float32 showers in MeV, CaloChallenge voxel order.
        Params: seed (int), precision ('fp32' or 'bf16': the network in bfloat16)."""

        def load_context(self, context):
            import torch

            from simgan.domains import domain_of_args
            from simgan.train.trainer import model_from_checkpoint

            self.model, ckpt = model_from_checkpoint(context.artifacts["checkpoint"], "cpu")
            self.ckpt = {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizers")}
            self.domain = domain_of_args(ckpt["model_args"])
            self.extra = list(ckpt.get("extra_conditions", []))
            if "binning" in context.artifacts:
                from simgan.data.binning import parse_binning_xml
                self.binning_xml = Path(context.artifacts["binning"]).read_text()
                self.binning = parse_binning_xml(self.binning_xml, "model binning")
            self.torch = torch

        def predict(self, context, model_input, params=None):
            torch = self.torch
            if self.domain.name != "calorimeter":  # the schema's conditions, by name
                params = params or {}
                precision = str(params.get("precision", "fp32"))
                if precision not in ("fp32", "bf16"):
                    raise ValueError(f"params 'precision' must be 'fp32' or 'bf16' (got {precision!r})")
                return self.domain.pyfunc_predict(self.model, self.ckpt, model_input, int(params.get("seed", 0)),
                                                  precision)
            cols = getattr(model_input, "columns", None)
            if cols is None or ENERGY_COLUMN not in cols:
                raise ValueError(f"input needs a float64 column '{ENERGY_COLUMN}' (MeV)")
            e = np.asarray(model_input[ENERGY_COLUMN], dtype=np.float64)
            if not np.all(np.isfinite(e)) or np.any(e <= 0):
                raise ValueError(f"'{ENERGY_COLUMN}' must be finite and > 0 MeV")
            x = None
            if self.extra:
                x = torch.as_tensor(np.stack([np.asarray(model_input[k], np.float64) for k in self.extra], 1))
            params = params or {}
            precision = str(params.get("precision", "fp32"))
            if precision not in ("fp32", "bf16"):
                raise ValueError(f"params 'precision' must be 'fp32' or 'bf16' (got {precision!r})")
            g = torch.Generator()
            g.manual_seed(int(params.get("seed", 0)))
            # a copy: the input may be read-only
            return self.model.sample(torch.tensor(e), x, g, precision=precision).numpy()

    return ShowerSurrogate


HEADLINE = {"auc_high": "auc_high", "auc_low": "auc_low", "fpd": "fpd", "kpd": "kpd",
            "separation_power_mean": "separation_mean", "auc": "auc", "auc_footprints": "auc_footprints",
            "angular_resolution_deviation_max": "angular_resolution_deviation_max",
            "station_count_deviation_max": "station_count_deviation_max", "s1000_bias_max": "s1000_bias_max"}


def headline(metrics: dict) -> dict[str, float]:
    """The validation figures a registered version carries (those of its domain present)."""
    out = {}
    for key, name in HEADLINE.items():
        v = metrics.get(key)
        if isinstance(v, (int, float)) and np.isfinite(v):
            out[name] = float(v)
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def gate_verdict(metrics: dict | None, checkpoint, source: str = "metrics.json") -> bool:
    """Whether the alias may move: the validation passed its gate for showers generated by
    this very checkpoint (the SHA-256 the generated file recorded). No metrics: False (the
    version is registered without the alias). A passed gate bound to another or to no
    checkpoint is an error, as is a verdict that is missing or malformed."""
    if metrics is None:
        return False
    gate = metrics.get("gate") if isinstance(metrics, dict) else None
    if not isinstance(gate, dict) or not isinstance(gate.get("pass"), bool):
        raise SimganError(f"{source}: no gate verdict (expected a 'gate' object with 'pass' true or false); "
                          "run `simgan validate` again")
    if not gate["pass"]:
        return False
    from simgan.io import file_sha256

    bound, actual = metrics.get("candidate_checkpoint_sha256"), file_sha256(checkpoint)
    if bound != actual:
        what = f"checkpoint sha256 {bound[:12]}" if bound else "no recorded checkpoint"
        raise SimganError(f"{source}: the gate passed for showers from {what}, not from {checkpoint} (sha256 "
                          f"{actual[:12]}); the alias moves only for the checkpoint that was validated: generate "
                          "from it and validate that")
    return True


def register_model(checkpoint, binning_xml: str | None, name: str, uri: str, metrics: dict | None, data_hash: str,
                   run_id: str | None = None, alias: str = "champion", retries: int = 3,
                   metrics_source: str = "metrics.json") -> dict:
    """Log the pyfunc under the training run, register a version, tag it, move the alias if the gate passed."""
    gate_pass = gate_verdict(metrics, checkpoint, metrics_source)  # before anything is logged
    check_store_writable(uri)
    mlflow_env()
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name  # MLflow's own rule, before a run is logged

    try:
        _validate_model_name(name)
    except MlflowException as exc:
        raise SimganError(f"register name {name!r}: {exc.message}") from None
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    last_exc: Exception | None = None
    for attempt in range(retries):
        try:
            mlflow.set_tracking_uri(uri)
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)  # reachability
            break
        except Exception as exc:  # network errors come in many types
            last_exc = exc
            time.sleep(min(2**attempt, 5))
    else:
        raise SimganError(f"MLflow registry at {uri} unreachable after {retries} tries: {last_exc}")
    import tempfile

    from simgan.train.trainer import model_from_checkpoint

    from simgan.domains import domain_of_args

    model, ckpt = model_from_checkpoint(checkpoint)
    domain = domain_of_args(ckpt["model_args"])
    import torch

    if domain.name == "calorimeter":
        extra = list(ckpt.get("extra_conditions", []))
        example = pd.DataFrame({ENERGY_COLUMN: np.array([1000.0, 10000.0, 50000.0], dtype=np.float64),
                                **{k: np.zeros(3, dtype=np.float64) for k in extra}})
        with torch.no_grad():
            x = torch.as_tensor(np.stack([example[k].to_numpy() for k in extra], 1)) if extra else None
            out_example = model.sample(torch.as_tensor(example[ENERGY_COLUMN].to_numpy().copy()), x).numpy()
    else:
        example = domain.pyfunc_example(ckpt)
        out_example = domain.pyfunc_predict(model, ckpt, example, 0, "fp32")
    signature = infer_signature(example, out_example, params={"seed": 0, "precision": "fp32"})
    with tempfile.TemporaryDirectory() as td:
        artifacts = {"checkpoint": str(checkpoint)}
        if binning_xml is not None:
            xml = Path(td) / "binning.xml"
            xml.write_text(binning_xml)
            artifacts["binning"] = str(xml)
        if not run_id:  # the training run is in another store: log under an experiment of this one
            mlflow.set_experiment(f"{name}-registrations")
        ctx = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name="register")
        with ctx as run:
            info = mlflow.pyfunc.log_model(name="surrogate", python_model=_pyfunc_class()(), artifacts=artifacts,
                                           signature=signature, input_example=example)
            if metrics:
                mlflow.log_metrics({f"val_{k}": v for k, v in headline(metrics).items()})
            run_id = run.info.run_id
    mv = mlflow.register_model(info.model_uri, name)
    client = MlflowClient(uri)
    tags = {"gate": "pass" if gate_pass else "fail", "data_hash": data_hash, "git_commit": _git_commit(),
            "family": ckpt["model_args"]["config"]["family"], "simgan_version": ckpt["simgan_version"],
            "domain": domain.name}
    if metrics:
        tags.update({k: f"{v:.6g}" for k, v in headline(metrics).items()})
    for k, v in tags.items():
        client.set_model_version_tag(name, mv.version, k, v)
    if gate_pass:
        client.set_registered_model_alias(name, alias, mv.version)
    return {"name": name, "version": int(mv.version), "run_id": run_id, "tracking_uri": uri,
            "model_uri": f"models:/{name}/{mv.version}", "alias": alias if gate_pass else None,
            "alias_uri": f"models:/{name}@{alias}" if gate_pass else None, "gate": tags["gate"]}


def load_surrogate(model_uri: str, uri: str | None = None):
    mlflow_env()
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(uri))
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:
        raise SimganError(f"cannot load {model_uri} from {tracking_uri(uri)}: {exc}") from exc


def generate_from_registry(model_uri: str, energies: np.ndarray, out, batch_size: int, fmt: str) -> dict:
    import pandas as pd

    from simgan.generate import write_generated

    loaded = load_surrogate(model_uri)
    binning = loaded.unwrap_python_model().binning

    def sample_batch(lo: int, hi: int) -> np.ndarray:
        return loaded.predict(pd.DataFrame({ENERGY_COLUMN: energies[lo:hi]}), params={"seed": lo})

    timing = write_generated(out, energies, {}, binning, batch_size, sample_batch, fmt, {"model_uri": model_uri},
                             progress=False)
    return {**timing, "model_uri": model_uri}
