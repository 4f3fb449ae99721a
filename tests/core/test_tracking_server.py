"""The tracking server for clusters (workflows/mlflow_server.sh): `mlflow server` on 127.0.0.1
with a real PostgreSQL behind it, under jobs that log and register at once."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "workflows" / "mlflow_server.sh"


def _missing() -> str | None:
    if not (shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb")):
        return "PostgreSQL's initdb not found (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401  (the driver mlflow server needs: the `server` extra)
    except ImportError:
        return "psycopg not installed (pip install 'simgan[server]')"
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        return "running as root needs the 'postgres' user (Debian's postgresql)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pg_server():
    why = _missing()
    if why:
        pytest.skip(why)
    # under /tmp itself: the database user must reach the folder (pytest's are private to root)
    folder = Path(tempfile.mkdtemp(prefix="simgan-mlflow-", dir="/tmp"))
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
           "SIMGAN_MLFLOW_PORT": str(_free_port()), "SIMGAN_PG_PORT": str(_free_port()), "SIMGAN_MLFLOW_WORKERS": "2"}
    up = subprocess.run(["bash", str(SCRIPT), "up", str(folder)], env=env, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr[-2000:]
    line = up.stdout.strip().splitlines()[-1]
    assert line.startswith("export MLFLOW_TRACKING_URI=http://127.0.0.1:")
    yield line.split("=", 1)[1], folder, env
    subprocess.run(["bash", str(SCRIPT), "down", str(folder)], env=env, capture_output=True, timeout=120)
    assert not folder.exists()


def test_eight_jobs_at_once_lose_nothing_on_the_postgres_backed_server(pg_server):
    """8 processes start together, each logs a run with 20 metric values and an artifact and
    registers a model version; every one is found afterwards, in PostgreSQL (not a sqlite
    file) and the artifacts in the server's folder."""
    from benchmarks.bench_tracking import main

    uri, folder, env = pg_server
    res = main(uri, processes=8, metrics=20)
    assert res["failed_workers"] == {}, res["failed_workers"]
    assert (res["lost_runs"], res["lost_metric_values"], res["lost_versions"]) == (0, 0, 0), res
    assert res["log_metric_p95_ms"] > 0
    assert (folder / "pg" / "PG_VERSION").is_file() and not list(folder.rglob("*.db"))
    assert len(list((folder / "artifacts").rglob("model.json"))) == 8
    status = subprocess.run(["bash", str(SCRIPT), "status", str(folder)], env=env, capture_output=True, text=True)
    assert status.returncode == 0 and uri in status.stdout


def test_the_server_script_names_what_is_missing(tmp_path):
    """Without an mlflow executable it stops before starting anything, saying what to set."""
    env = {**os.environ, "MLFLOW": str(tmp_path / "no-mlflow")}
    res = subprocess.run(["bash", str(SCRIPT), "up", str(tmp_path / "srv")], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "no-mlflow not found (set MLFLOW" in res.stderr
    assert not (tmp_path / "srv").exists()
    res = subprocess.run(["bash", str(SCRIPT), "sideways"], capture_output=True, text=True)
    assert res.returncode == 2 and "usage:" in res.stderr
