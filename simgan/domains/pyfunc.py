"""The registered model's code (MLflow "models from code"): `register` logs this file, not a
pickled object, so loading a registered model needs simgan installed and nothing pickled.

The model's config names its domain (and the package that holds it, for domains added with
`register_domain`); the checkpoint and the domain's extra files are its artifacts.

Input: a table of float64 conditions, the columns the checkpoint's domain names (calorimeter:
incident_energy in MeV and the extra conditions; air showers: log10_energy_eV, zenith_rad,
azimuth_rad, core_x_m, core_y_m and optionally mass_A; neurons: cell_class, randomness).
Output: the domain's samples (calorimeter: (N, n_voxels) float32 showers in MeV,
CaloChallenge voxel order; air showers: (N, 3, 9, 9) signal, time, triggered, and the trace
bins after them where the model generates traces; neurons: (N, 64, 64) um per pixel).
Params: seed (int), precision ('fp32' or 'bf16': the network in bfloat16), extrapolate (bool,
default False: conditions outside the training range are refused). Bad input (a missing,
non-numeric or non-finite column, an empty frame, a condition out of range, an output too
large for the memory) raises MlflowException INVALID_PARAMETER_VALUE naming the column and
row: `mlflow models serve` answers it as HTTP 400 with that message.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from simgan.checkpoint import build_model, load_checkpoint
from simgan.domains import get_domain, names, register_domain
from simgan.errors import SimganError

CODE_PATH = Path(__file__)


class ShowerSurrogate(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        cfg = context.model_config or {}
        name = cfg.get("domain")
        if not name:
            raise SimganError("the registered model's config names no domain (expected model_config['domain'])")
        if name not in names() and cfg.get("domain_package"):
            register_domain(name, cfg["domain_package"])
        self.domain = get_domain(name)
        ckpt = load_checkpoint(context.artifacts["checkpoint"])
        self.model = build_model(ckpt, self.domain, "cpu")
        self.ckpt = {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizers")}
        self.extras = self.domain.pyfunc_load(self.ckpt, dict(context.artifacts))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        from mlflow.exceptions import MlflowException

        params = params or {}
        try:
            precision = str(params.get("precision", "fp32"))
            if precision not in ("fp32", "bf16"):
                raise ValueError(f"params 'precision' must be 'fp32' or 'bf16' (got {precision!r})")
            return self.domain.pyfunc_predict(self.model, self.ckpt, model_input, int(params.get("seed", 0)),
                                              precision, extrapolate=bool(params.get("extrapolate", False)))
        except (ValueError, SimganError) as exc:
            # what `mlflow models serve` answers as HTTP 400 with this message (not a stack trace)
            raise MlflowException.invalid_parameter_value(str(exc)) from None


mlflow.models.set_model(ShowerSurrogate())
