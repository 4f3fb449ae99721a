"""The tracking server for clusters (workflows/mlflow_server.sh): `mlflow server` on 127.0.0.1
with a real PostgreSQL behind it, under jobs that log and register at once."""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, service_missing, wait_for_jobs

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
        service_missing(why)
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
    _everything_is_there(uri, "toy-jobs", [tmp_path / f"job{i}" for i in range(8)])
    assert len(list((folder / "artifacts").rglob("MLmodel"))) >= 8
    assert (folder / "pg" / "PG_VERSION").is_file() and not list(folder.rglob("*.db"))  # PostgreSQL, no sqlite
    status = subprocess.run(["bash", str(SCRIPT), "status", str(folder)], env=env, capture_output=True, text=True)
    assert status.returncode == 0 and uri in status.stdout


def _everything_is_there(uri: str, name: str, run_dirs: list[Path]) -> None:
    """Every job's training run (finished, with every loss it logged) and one model version per
    job, each from its job's run."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    every = client.search_runs([exp.experiment_id], max_results=1000)
    runs = [r for r in every if "nll" in r.data.metrics]
    assert len(runs) == len(run_dirs) and {r.info.status for r in runs} == {"FINISHED"}, \
        [(r.info.run_id, r.info.run_name, r.info.status, sorted(r.data.metrics)) for r in every]
    logged = [json.loads(x) for d in run_dirs for x in (d / name / "train" / "metrics.jsonl").read_text().splitlines()]
    assert sum(len(client.get_metric_history(r.info.run_id, "nll")) for r in runs) == \
        sum("nll" in row for row in logged) > len(run_dirs)
    versions = client.search_model_versions(f"name = '{name}'", max_results=100)
    assert sorted(int(v.version) for v in versions) == list(range(1, len(run_dirs) + 1))
    assert {v.run_id for v in versions} == {r.info.run_id for r in runs}  # each job's version is its run's


@pytest.mark.slurm
def test_a_slurm_job_array_tracks_and_registers_on_the_server(pg_server, local_slurm, tmp_path):
    """A real Slurm job array (4 tasks, each the toy chain with its task's seed) against the
    same server: every task's run, losses and model version are there."""
    uri, _, env = pg_server
    script = tmp_path / "array.sh"
    script.write_text(f"#!/bin/bash\nexec {sys.executable} {REPO / 'tests' / 'core' / 'toy_job.py'} "
                      f"{tmp_path}/task$SLURM_ARRAY_TASK_ID {uri} $((100 + SLURM_ARRAY_TASK_ID)) toy-array\n")
    env = {**env, "SLURM_CONF": local_slurm}
    r = subprocess.run(["sbatch", "--parsable", "--array=0-3", "--cpus-per-task=1", "--mem=1G",
                        f"--output={tmp_path}/%A_%a.out", str(script)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    wait_for_jobs([job], env, 600)
    done = [(tmp_path / f"task{i}" / "toy-array" / "register" / "manifest.json").is_file() for i in range(4)]
    assert all(done), "".join(p.read_text()[-1500:] for p in tmp_path.glob("*.out"))
    _everything_is_there(uri, "toy-array", [tmp_path / f"task{i}" for i in range(4)])


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
    port = _free_port()
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
