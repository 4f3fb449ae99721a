"""Physics sanity of real Geant4 output (small runs)."""

import numpy as np
import pytest

from simgan.domains import load_config
from simgan.domains.calorimeter.sim.geant4 import GeantPool
from simgan.domains.calorimeter.sim.produce import settings_of, simulate_energies
from tests.conftest import QUICKSTART

ENERGIES_GEV = [1, 4, 16, 64]
N = 40


@pytest.fixture(scope="module")
def showers():
    out = {}
    for particle in ("e-", "gamma"):
        cfg = load_config(QUICKSTART, [f"simulate.particle={particle}", "simulate.shard_events=20"])
        energies = ENERGIES_GEV if particle == "e-" else [16]
        with GeantPool(settings_of(cfg.simulate), 2) as pool:
            for e in energies:
                s, _, _ = simulate_energies(cfg.simulate, np.full(N, e * 1000.0), 5, False, pool=pool)
                out[(particle, e)] = s.reshape(N, 45, 144)
    return out


def _tot(s):
    return s.sum((1, 2))


def test_response_roughly_constant(showers):
    r = [(_tot(showers[("e-", e)]) / (e * 1000)).mean() for e in ENERGIES_GEV]
    assert max(r) / min(r) < 1.1, r


def test_resolution_improves_as_inverse_sqrt_e(showers):
    res = np.array([np.std(_tot(showers[("e-", e)])) / np.mean(_tot(showers[("e-", e)])) for e in ENERGIES_GEV])
    assert np.all(np.diff(res) < 0), res
    slope = np.polyfit(np.log(ENERGIES_GEV), np.log(res), 1)[0]
    assert -0.75 < slope < -0.3, slope  # stochastic term: -0.5


def _depth(s):
    prof = s.sum(2)  # (N, 45)
    return (prof * np.arange(45)).sum(1) / prof.sum(1)


def test_shower_depth_grows_with_log_energy(showers):
    d = np.array([_depth(showers[("e-", e)]).mean() for e in ENERGIES_GEV])
    assert np.all(np.diff(d) > 0), d
    steps = np.diff(d)  # equal steps in ln E -> roughly equal steps in depth
    assert steps.max() / steps.min() < 2.5, d


def test_photons_start_deeper_than_electrons(showers):
    def first(s):  # first layer with > 1 MeV (scaled)
        return np.argmax(s.sum(2) > 1.0, axis=1)

    assert first(showers[("gamma", 16)]).mean() > first(showers[("e-", 16)]).mean()
    assert _depth(showers[("gamma", 16)]).mean() > _depth(showers[("e-", 16)]).mean()
