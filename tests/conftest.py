"""Shared fixtures: small real Geant4 samples, made once per session."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

from simgan.domains import load_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "experiment" / "quickstart.yaml"


def small_cfg(tmp: Path, *overrides: str):
    return load_config(QUICKSTART, [f"runs_dir={tmp}", "register.tracking_uri=sqlite:///" + str(tmp / "mlflow.db"),
                                    "train.progress=false", *overrides])


@pytest.fixture(scope="session")
def g4_sample(tmp_path_factory) -> Path:
    """200 real Geant4 electron showers, 1-16 GeV."""
    from simgan.domains.calorimeter.sim.produce import simulate_to_file

    cfg = load_config(QUICKSTART, ["simulate.events=200", "simulate.energy_max_gev=16", "simulate.shard_events=50"])
    out = tmp_path_factory.mktemp("g4") / "showers.h5"
    simulate_to_file(cfg.simulate, 7, out, progress=False)
    return out


@pytest.fixture(scope="session")
def g4_pair(tmp_path_factory):
    """Two independent Geant4 samples with the same energies (300 showers each, 1-16 GeV)."""
    from simgan.domains.calorimeter.data import calochallenge as cc
    from simgan.domains.calorimeter.data.binning import reference_binning
    from simgan.domains.calorimeter.sim.geant4 import GeantPool
    from simgan.domains.calorimeter.sim.produce import sample_energies_mev, settings_of, simulate_energies

    cfg = load_config(QUICKSTART, ["simulate.events=300", "simulate.energy_max_gev=16", "simulate.shard_events=50"])
    e = sample_energies_mev(cfg.simulate, 11)
    d = tmp_path_factory.mktemp("pair")
    paths = []
    with GeantPool(settings_of(cfg.simulate), 2) as pool:
        for seed, name in ((101, "a.h5"), (202, "b.h5")):
            showers, _, _ = simulate_energies(cfg.simulate, e, seed, False, pool=pool)
            paths.append(cc.write(d / name, cc.ShowerData(e, showers, reference_binning())))
    return paths


def rng():
    return np.random.default_rng(0)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs at tmp_path/'disk' (a full disk for writers); needs mount rights (root)."""
    import subprocess

    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


# every test that drives the machine's one Slurm is in this module
SLURM_MODULE = "test_workflows.py"


def pytest_collection_modifyitems(config, items):
    """The Slurm tests first: under pytest-xdist (`make test` runs two workers, --dist loadfile:
    a module's tests in one worker, one after the other) the longest module starts at once
    while the other worker takes the rest."""
    items.sort(key=lambda item: item.path.name != SLURM_MODULE)


def service_missing(why: str):
    """Skip a test whose service is missing; under SIMGAN_REQUIRE_SERVICES=1 (.ci/run) fail it, so
    a CI that lost a service says so instead of skipping what HPC users depend on."""
    if os.environ.get("SIMGAN_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{why}; SIMGAN_REQUIRE_SERVICES=1 requires it (bash workflows/ci_services.sh installs it)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def local_slurm():
    """A single-node Slurm on 127.0.0.1 through workflows/local_slurm.sh (reused if one runs)."""
    import shutil
    missing = [x for x in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(x)]
    if missing:
        service_missing(f"no local Slurm: {missing} not found (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        service_missing("the local Slurm needs root")
    script = REPO / "workflows" / "local_slurm.sh"
    running = subprocess.run([str(script), "status"], capture_output=True).returncode == 0
    r = subprocess.run([str(script), "up"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    conf = r.stdout.strip().split("=", 1)[1]
    yield conf
    if not running:
        subprocess.run([str(script), "down"], capture_output=True, timeout=60)


def wait_for_jobs(jobs, env, seconds):
    """Until none of `jobs` is queued or running; whatever happens, none stays queued."""
    import time
    deadline = time.time() + seconds
    try:
        while time.time() < deadline:
            q = subprocess.run(["squeue", "-h", "-j", ",".join(map(str, jobs))], capture_output=True, text=True,
                               env=env)
            if not q.stdout.strip():
                return
            time.sleep(2)
    finally:
        subprocess.run(["scancel", *map(str, jobs)], capture_output=True, env=env)


MLFLOW_SERVER = REPO / "workflows" / "mlflow_server.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_missing() -> str | None:
    if not (shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb")):
        return "PostgreSQL's initdb not found (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401  (the driver mlflow server needs: the `server` extra)
    except ImportError:
        return "psycopg not installed (pip install 'simgan[server]')"
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        return "running as root needs the 'postgres' user (Debian's postgresql)"
    return None


@pytest.fixture(scope="module")
def pg_server():
    """`mlflow server` on 127.0.0.1 with a real PostgreSQL behind it (workflows/mlflow_server.sh):
    (tracking URI, its folder, the environment that reaches it)."""
    why = pg_missing()
    if why:
        service_missing(why)
    # under /tmp itself: the database user must reach the folder (pytest's are private to root)
    folder = Path(tempfile.mkdtemp(prefix="simgan-mlflow-", dir="/tmp"))
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
           "SIMGAN_MLFLOW_PORT": str(free_port()), "SIMGAN_PG_PORT": str(free_port()), "SIMGAN_MLFLOW_WORKERS": "2"}
    up = subprocess.run(["bash", str(MLFLOW_SERVER), "up", str(folder)], env=env, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr[-2000:]
    line = up.stdout.strip().splitlines()[-1]
    assert line.startswith("export MLFLOW_TRACKING_URI=http://127.0.0.1:")
    yield line.split("=", 1)[1], folder, env
    subprocess.run(["bash", str(MLFLOW_SERVER), "down", str(folder)], env=env, capture_output=True, timeout=120)
    assert not folder.exists()


def everything_is_there(uri: str, name: str, run_dirs: list[Path]) -> None:
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
