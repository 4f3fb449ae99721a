import numpy as np

from pipeline.cli import main
from simgan.domains.calorimeter.data import calochallenge as cc
from simgan.domains.calorimeter.sim.g4data import tsai_scaled_dcs
from simgan.io import open_hdf5
from tests.conftest import QUICKSTART, REPO


def test_simulate_cli_writes_dataset2_shape(g4_sample):
    d = cc.read(g4_sample)
    assert d.energies.shape == (200,) and d.showers.shape == (200, 6480)
    with open_hdf5(g4_sample) as f:
        assert f["incident_energies"].shape == (200, 1)
    assert 1000 <= d.energies.min() and d.energies.max() <= 16000
    m = d.metadata
    assert m["geant4_version"].startswith("geant4-11") and m["physics_list"] == "emstandard_opt1"
    assert m["production_cut_mm"] == 0.7 and 0.02 < m["sampling_fraction_measured"] < 0.027
    ratio = d.showers.sum(1) / d.energies
    assert 0.9 < ratio.mean() < 1.1


def test_cli_200_showers(tmp_path):
    out = tmp_path / "s.h5"
    assert main(["simulate", "-c", str(QUICKSTART), "--events", "200", "--out", str(out), "-q",
                 "simulate.energy_max_gev=4", "simulate.shard_events=50"]) == 0
    assert cc.read(out).showers.shape == (200, 6480)


def test_reproducible_any_worker_count_and_shards_merge(tmp_path, capsys):
    common = ["-q", "--events", "20", "simulate.energy_max_gev=3", "simulate.shard_events=5"]
    assert main(["simulate", "-c", str(QUICKSTART), "--out", str(tmp_path / "w1.h5"), *common, "simulate.workers=1"]) == 0
    assert main(["simulate", "-c", str(QUICKSTART), "--out", str(tmp_path / "w2.h5"), *common, "simulate.workers=2"]) == 0
    a, b = cc.read(tmp_path / "w1.h5"), cc.read(tmp_path / "w2.h5")
    np.testing.assert_array_equal(a.showers, b.showers)
    for i in range(2):
        assert main(["simulate", "-c", str(QUICKSTART), "--out", str(tmp_path / f"s{i}.h5"), *common,
                     "--shard-index", str(i), "--shard-count", "2"]) == 0
    assert main(["merge", str(tmp_path / "s1.h5"), str(tmp_path / "s0.h5"), "--out", str(tmp_path / "m.h5")]) == 0
    np.testing.assert_array_equal(cc.read(tmp_path / "m.h5").showers, a.showers)
    # shards whose row numbers were written as integers (another writer) merge the same
    import h5py
    for i in range(2):
        with h5py.File(tmp_path / f"s{i}.h5", "a") as f:
            idx = f["event_index"][:].astype(np.int64)
            del f["event_index"]
            f["event_index"] = idx
    assert main(["merge", str(tmp_path / "s0.h5"), str(tmp_path / "s1.h5"), "--out", str(tmp_path / "mi.h5")]) == 0
    np.testing.assert_array_equal(cc.read(tmp_path / "mi.h5").showers, a.showers)
    # one shard of two is not the run: refused, nothing written (it used to claim 20 events for 10)
    assert main(["merge", str(tmp_path / "s0.h5"), "--out", str(tmp_path / "half.h5")]) == 2
    assert "10 events in 1 shard file(s), but the run has 20" in capsys.readouterr().err
    assert not (tmp_path / "half.h5").exists()


def test_dask_cluster_gives_the_same_showers(tmp_path):
    common = ["-q", "--events", "10", "simulate.energy_max_gev=2", "simulate.shard_events=5", "simulate.workers=2"]
    assert main(["simulate", "-c", str(QUICKSTART), "--out", str(tmp_path / "local.h5"), *common]) == 0
    assert main(["simulate", "-c", str(QUICKSTART), "--out", str(tmp_path / "dask.h5"), "--dask", *common]) == 0
    np.testing.assert_array_equal(cc.read(tmp_path / "local.h5").showers, cc.read(tmp_path / "dask.h5").showers)


def test_bad_output_name(tmp_path, capsys):
    assert main(["simulate", "-c", str(QUICKSTART), "--events", "2", "--out", str(tmp_path / "x.txt")]) == 2
    assert "x.txt" in capsys.readouterr().err


def test_tsai_radiation_length_of_tungsten():
    """Energy loss by bremsstrahlung at 1 GeV from our tables: X0(W) near 3.5 mm."""
    from scipy.integrate import trapezoid

    kappa = np.linspace(1e-6, 1, 2000)
    T = 1000.0
    chi = tsai_scaled_dcs(74, kappa, np.full_like(kappa, T))  # mb, = k dsigma/dk * beta^2/Z^2
    beta2 = T * (T + 2 * 0.511) / (T + 0.511) ** 2
    sigma_loss = trapezoid(chi * 74**2 / beta2, kappa) * 1e-27  # cm^2 per atom, x T
    n_atoms = 19.3 / 183.84 * 6.022e23
    x0_mm = 10.0 / (n_atoms * sigma_loss * T / (T + 0.511))
    assert 3.2 < x0_mm < 3.8


def test_kill9_of_simulate_takes_its_geant4_workers_along(tmp_path):
    """kill -9 of `simgan simulate` used to leave its Geant4 worker processes blocked on a pipe
    forever; now they die with it, and no output file appears."""
    import signal
    import subprocess
    import sys
    import time

    import psutil
    out = tmp_path / "k.h5"
    p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "simulate", "-c", str(QUICKSTART), "-q",
                          "--events", "400", "simulate.shard_events=5", "simulate.workers=2", "--out", str(out)],
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.5)
        workers = [c for c in psutil.Process(p.pid).children(recursive=True) if "resource_tracker" not in
                   " ".join(c.cmdline())]
    assert len(workers) >= 2, "the pool did not start"
    time.sleep(3)  # the workers are simulating
    p.send_signal(signal.SIGKILL)
    p.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"orphaned workers: {[w.pid for w in alive]}"
    assert not out.exists()
