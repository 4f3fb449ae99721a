"""The MLflow tracking store: which one (config, $MLFLOW_TRACKING_URI, a local sqlite file),
bounded retries, and a writable sqlite store checked before use."""

from __future__ import annotations

import os
from pathlib import Path

from simgan.errors import SimganError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


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
