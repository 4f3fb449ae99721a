"""The tracking server for clusters (workflows/mlflow_server.sh): `mlflow server` on 127.0.0.1
with a real PostgreSQL behind it, under jobs that log and register at once."""

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import MLFLOW_SERVER, REPO, everything_is_there, free_port

SCRIPT = MLFLOW_SERVER


def test_eight_training_jobs_at_once_track_and_register_everything(pg_server, tmp_path):
    """8 processes start together, each running a whole chain (the toy domain: simulate,
    train, generate, validate, register) under one experiment and one model name, as the
    seeds of one configuration on a cluster do: every training run with all its logged
    losses, and 8 model versions with their artifacts, are on the server afterwards."""
    uri, folder, env = pg_server
    jobs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "core" / "toy_job.py"), str(tmp_path / f"job{i}"),
                              uri, str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(8)]
    outs = [j.communicate(timeout=600)[0] for j in jobs]
    failed = [(i, out[-3000:]) for i, (j, out) in enumerate(zip(jobs, outs)) if j.returncode]
    assert not failed, failed[:1]
    everything_is_there(uri, "toy-jobs", [tmp_path / f"job{i}" for i in range(8)])
    assert len(list((folder / "artifacts").rglob("MLmodel"))) >= 8
    assert (folder / "pg" / "PG_VERSION").is_file() and not list(folder.rglob("*.db"))  # PostgreSQL, no sqlite
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


@pytest.mark.parametrize("script", ["mlflow_server.sh", "local_slurm.sh"])
def test_down_removes_only_what_up_made(script, tmp_path):
    """`down` on a folder that `up` did not make (a mistyped DIR, or the temporary folder
    itself) stops nothing and deletes nothing; in a folder `up` did make, files of the user's
    own are left in place with the folder."""
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "thesis.h5").write_text("precious")
    res = subprocess.run(["bash", str(REPO / "workflows" / script), "down", str(foreign)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and f"{foreign} is not a" in res.stderr and "nothing stopped or removed" in res.stderr
    assert (foreign / "thesis.h5").read_text() == "precious"
    res = subprocess.run(["bash", str(REPO / "workflows" / script), "down", tempfile.gettempdir()],
                         capture_output=True, text=True)
    assert res.returncode == 2 and Path(tempfile.gettempdir()).is_dir()

    mark = ".simgan-mlflow-server" if script == "mlflow_server.sh" else ".simgan-local-slurm"
    made = tmp_path / "made"
    (made / "log").mkdir(parents=True)
    (made / mark).touch()
    (made / "log" / "x.log").write_text("log")
    (made / "notes.txt").write_text("mine")
    res = subprocess.run(["bash", str(REPO / "workflows" / script), "down", str(made)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in made.iterdir()) == ["notes.txt"] and "left" in res.stderr


def test_up_refuses_a_port_another_service_answers(tmp_path):
    """An HTTP service that already answers /health on the port: `up` says the port is taken
    and exits 2, instead of reporting that service as the tracking server."""
    port = free_port()
    other = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            import time
            time.sleep(0.1)
        env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", "SIMGAN_MLFLOW_PORT": str(port)}
        res = subprocess.run(["bash", str(SCRIPT), "up", str(tmp_path / "srv")], env=env, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 2, (res.stdout, res.stderr)
        assert f"port {port} on 127.0.0.1 is taken by another service" in res.stderr
        assert "MLFLOW_TRACKING_URI" not in res.stdout and not (tmp_path / "srv").exists()
    finally:
        other.terminate()
        other.wait()
