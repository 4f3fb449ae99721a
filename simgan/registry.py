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


def _mlflow_env() -> None:
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

            from simgan.data.binning import parse_binning_xml
            from simgan.train.trainer import model_from_checkpoint

            self.model, ckpt = model_from_checkpoint(context.artifacts["checkpoint"], "cpu")
            self.extra = list(ckpt.get("extra_conditions", []))
            self.binning_xml = Path(context.artifacts["binning"]).read_text()
            self.binning = parse_binning_xml(self.binning_xml, "model binning")
            self.torch = torch

        def predict(self, context, model_input, params=None):
            torch = self.torch
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


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def register_model(checkpoint, binning_xml: str, name: str, uri: str, metrics: dict | None, data_hash: str,
                   run_id: str | None = None, alias: str = "champion", retries: int = 3) -> dict:
    """Log the pyfunc under the training run, register a version, tag it, move the alias if the gate passed."""
    _mlflow_env()
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

    model, ckpt = model_from_checkpoint(checkpoint)
    extra = list(ckpt.get("extra_conditions", []))
    example = pd.DataFrame({ENERGY_COLUMN: np.array([1000.0, 10000.0, 50000.0], dtype=np.float64),
                            **{k: np.zeros(3, dtype=np.float64) for k in extra}})
    import torch

    with torch.no_grad():
        x = torch.as_tensor(np.stack([example[k].to_numpy() for k in extra], 1)) if extra else None
        out_example = model.sample(torch.as_tensor(example[ENERGY_COLUMN].to_numpy().copy()), x).numpy()
    signature = infer_signature(example, out_example, params={"seed": 0, "precision": "fp32"})
    gate_pass = bool(metrics and metrics["gate"]["pass"])
    with tempfile.TemporaryDirectory() as td:
        xml = Path(td) / "binning.xml"
        xml.write_text(binning_xml)
        if not run_id:  # the training run is in another store: log under an experiment of this one
            mlflow.set_experiment(f"{name}-registrations")
        ctx = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name="register")
        with ctx as run:
            info = mlflow.pyfunc.log_model(name="surrogate", python_model=_pyfunc_class()(),
                                           artifacts={"checkpoint": str(checkpoint), "binning": str(xml)},
                                           signature=signature, input_example=example)
            if metrics:
                mlflow.log_metrics({"val_auc_high": metrics["auc_high"], "val_auc_low": metrics["auc_low"],
                                    "val_fpd": metrics["fpd"], "val_separation_mean": metrics["separation_power_mean"]})
            run_id = run.info.run_id
    mv = mlflow.register_model(info.model_uri, name)
    client = MlflowClient(uri)
    tags = {"gate": "pass" if gate_pass else "fail", "data_hash": data_hash, "git_commit": _git_commit(),
            "family": ckpt["model_args"]["config"]["family"], "simgan_version": ckpt["simgan_version"]}
    if metrics:
        tags.update({"auc_high": f"{metrics['auc_high']:.4f}", "auc_low": f"{metrics['auc_low']:.4f}",
                     "separation_mean": f"{metrics['separation_power_mean']:.4f}", "fpd": f"{metrics['fpd']:.4f}",
                     "kpd": f"{metrics['kpd']:.6f}"})
    for k, v in tags.items():
        client.set_model_version_tag(name, mv.version, k, v)
    if gate_pass:
        client.set_registered_model_alias(name, alias, mv.version)
    return {"name": name, "version": int(mv.version), "run_id": run_id, "tracking_uri": uri,
            "model_uri": f"models:/{name}/{mv.version}", "alias": alias if gate_pass else None,
            "alias_uri": f"models:/{name}@{alias}" if gate_pass else None, "gate": tags["gate"]}


def load_surrogate(model_uri: str, uri: str | None = None):
    _mlflow_env()
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
