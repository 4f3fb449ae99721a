"""Shared fixtures: small real Geant4 samples, made once per session."""

from __future__ import annotations

import os
import subprocess
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
