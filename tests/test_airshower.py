"""Air-shower domain: the reference simulator's sanity figures (the spec's, from >= 10k protons),
its determinism, the footprint format's checks, and the ROOT converter."""

import math

import h5py
import numpy as np
import pytest

from simgan.domains.airshower import io as aio
from simgan.domains.airshower.observables import angular_resolution, event_features
from simgan.domains.airshower.simulator import (C_M_PER_NS, ArrayParams, shower_plane_geometry, simulate,
                                                station_xyz)
from simgan.errors import SimganError

P = ArrayParams()


@pytest.fixture(scope="module")
def sim():
    ev = simulate(20000, 1, P)
    c = ev["conditions"]
    n = len(c["zenith_rad"])
    _, r, along, _ = shower_plane_geometry(station_xyz(P), np.stack([c["core_x_m"], c["core_y_m"]], 1),
                                           c["zenith_rad"], c["azimuth_rad"], P.altitude_m)
    return ev, c, ev["signal"].reshape(n, -1).astype(np.float64), ev["triggered"].reshape(n, -1).astype(bool), r, along


def test_signal_scale_and_energy_slope(sim):
    ev, c, s, trig, r, _ = sim
    th = c["zenith_rad"]
    for lo, hi in ((0, 30), (30, 45), (45, 61)):
        m = trig & ((r > 950) & (r < 1050)) & ((th >= math.radians(lo)) & (th < math.radians(hi)))[:, None]
        ratio = np.median((s / ev["truth"]["s1000_vem"][:, None])[m])
        assert abs(ratio - 1.0) < 0.05, (lo, hi, ratio)
    slope = np.polyfit(c["log10_energy_eV"], np.log10(s.sum(1)), 1)[0]
    assert abs(slope - 0.97) < 0.03, slope
    m10 = (np.abs(c["log10_energy_eV"] - 19) < 0.1) & (th < math.radians(25))
    for rr, expected in ((600, 300), (1000, 52), (1500, 12), (2000, 4.5)):
        med = np.median(s[m10[:, None] & (np.abs(r - rr) < 50) & trig])
        assert abs(med / expected - 1) < 0.15, (rr, med)


def test_station_multiplicity(sim):
    ev, c, s, trig, r, _ = sim
    n, lg, th = trig.sum(1), c["log10_energy_eV"], c["zenith_rad"]
    for (lo, hi), expected in (((18.5, 18.75), 6.5), ((19.0, 19.25), 12), ((19.75, 20.0), 29)):
        mean = n[(lg >= lo) & (lg < hi)].mean()
        assert abs(mean / expected - 1) < 0.15, (lo, mean)
    ratio = n[th > math.radians(45)].mean() / n[th < math.radians(30)].mean()
    assert 1.4 <= ratio <= 1.7, ratio
    assert n.min() >= 3


def test_front_delay_and_angular_resolution_fall_with_station_count(sim):
    ev, c, s, trig, r, along = sim
    t = ev["time"].reshape(len(s), -1)
    delay = np.median((t + along / C_M_PER_NS)[trig & (r > 950) & (r < 1050)])
    assert abs(delay - 156) < 20, delay
    f = event_features(ev["signal"], ev["time"], ev["triggered"], c, station_xyz(P), P)
    res = angular_resolution(f["plane_fit_angle_deg"], f["n_triggered"])
    for key, expected in (("3-5", 2.4), ("8-10", 1.5), ("11-15", 0.8), ("26-81", 0.6)):
        assert abs(res[key] / expected - 1) < 0.15, (key, res)
    values = list(res.values())
    assert all(a >= b for a, b in zip(values, values[1:])), res


def test_barycentre_is_symmetric_about_the_core(sim):
    ev, c, s, trig, r, _ = sim
    f = event_features(ev["signal"], ev["time"], ev["triggered"], c, station_xyz(P), P)
    m = c["zenith_rad"] < math.radians(20)
    for k in ("barycentre_dx_m", "barycentre_dy_m"):
        assert abs(f[k][m].mean()) < 20 and abs(np.sqrt((f[k][m] ** 2).mean()) / 190 - 1) < 0.15, k


def test_seeded_and_independent_of_sharding():
    a = simulate(3000, 5, P, shard_events=1000)
    b = simulate(3000, 5, P, shard_events=1000, shards=range(1, 3))
    np.testing.assert_array_equal(a["signal"][1000:], b["signal"])
    assert not np.array_equal(simulate(1000, 6, P)["signal"], a["signal"][:1000])


def _fp(n=50, seed=2):
    return aio.from_simulation(simulate(n, seed, P), P, seed)


def test_hdf5_and_root_roundtrip(tmp_path):
    fp = _fp()
    back = aio.read(aio.write(tmp_path / "fp.h5", fp))
    for k in ("signal", "time", "triggered"):
        np.testing.assert_array_equal(getattr(back, k), getattr(fp, k))
    assert set(back.conditions) == set(aio.CONDITIONS) | {"mass_A"} and back.attrs["seed"] == 2
    assert back.attrs["schema_version"] == aio.SCHEMA_VERSION and "xmax_gcm2" in back.truth
    root = aio.read_root(aio.write_root(tmp_path / "fp.root", fp))
    np.testing.assert_array_equal(root.signal, fp.signal)
    np.testing.assert_allclose(root.conditions["zenith_rad"], fp.conditions["zenith_rad"])


def test_root_branch_names_are_configurable(tmp_path):
    import uproot
    fp = _fp(20)
    n = len(fp)
    with uproot.recreate(tmp_path / "custom.root") as f:
        f["events"] = {"vem": fp.signal.reshape(n, -1), "t_ns": fp.time.reshape(n, -1),
                       "trig": fp.triggered.reshape(n, -1).astype(np.uint8),
                       **{k: v for k, v in fp.conditions.items()}}
    with pytest.raises(SimganError, match="lacks .*signal \\(branch 'signal'\\)"):
        aio.read_root(tmp_path / "custom.root", "events")
    got = aio.read_root(tmp_path / "custom.root", "events", {"signal": "vem", "time": "t_ns", "triggered": "trig"})
    np.testing.assert_array_equal(got.signal, fp.signal)


@pytest.mark.parametrize("case, match", [
    ("degrees", "conditions/zenith_rad' row 3: .*looks like degrees"),
    ("eev", "conditions/log10_energy_eV' row 0: .*EeV was written"),
    ("nan_time", "footprint/time' row 4: not finite \\(on a triggered station\\)"),
    ("grid", "footprint/signal' has shape \\(50, 8, 8\\), expected \\(50, 9, 9\\)"),
    ("missing", "missing condition\\(s\\) \\['conditions/core_y_m'\\]"),
    ("silent_time", "row 7: a silent station .* has a signal or a time"),
])
def test_bad_footprints_are_named_and_nothing_is_written(tmp_path, case, match):
    fp = _fp()
    if case == "degrees":
        fp.conditions["zenith_rad"][3] = 40.0
    elif case == "eev":
        fp.conditions["log10_energy_eV"] = 10 ** (fp.conditions["log10_energy_eV"] - 18)
    elif case == "nan_time":
        fp.time[4][fp.triggered[4]] = np.nan
    elif case == "grid":
        fp.signal, fp.time, fp.triggered = fp.signal[:, :8, :8], fp.time[:, :8, :8], fp.triggered[:, :8, :8]
    elif case == "missing":
        del fp.conditions["core_y_m"]
    elif case == "silent_time":
        fp.time[7][~fp.triggered[7]] = 12.0
    with pytest.raises(SimganError, match=match):
        aio.write(tmp_path / "bad.h5", fp)
    assert list(tmp_path.iterdir()) == []
    # the same defect in a file written by someone else is named by the reader
    if case in ("degrees", "nan_time"):
        good = aio.write(tmp_path / "x.h5", _fp())
        with h5py.File(good, "a") as f:
            if case == "degrees":
                f["conditions/zenith_rad"][3] = 40.0
            else:
                t = f["footprint/time"][4]
                t[f["footprint/triggered"][4].astype(bool)] = np.nan
                f["footprint/time"][4] = t
        with pytest.raises(SimganError, match=match):
            aio.read(good)
