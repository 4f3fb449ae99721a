"""Geant4 seconds per shower at 1, 10, 50 GeV on one core, and showers/s with all cores."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from benchmarks.common import machine_info
from simgan.domains.calorimeter.config import SimulateConfig
from simgan.domains.calorimeter.sim.geant4 import G4Settings, GeantPool
from simgan.domains.calorimeter.sim.produce import simulate_energies


def main(n_per_energy: int = 20) -> dict:
    cfg = SimulateConfig(shard_events=10)
    out = {"machine": machine_info(), "per_shower_one_core_s": {}}
    with GeantPool(G4Settings(), 1) as pool:
        simulate_energies(cfg, np.full(2, 1000.0), 1, False, pool=pool)  # warm-up
        for e in (1, 10, 50):
            energies = np.full(n_per_energy, e * 1000.0)
            _, stats, _ = simulate_energies(cfg, energies, 2, False, pool=pool)
            out["per_shower_one_core_s"][f"{e}GeV"] = stats["cpu_seconds"] / n_per_energy
    cores = os.cpu_count() or 1
    energies = np.full(10 * cores * 2, 10000.0)
    with GeantPool(G4Settings(), cores) as pool:
        simulate_energies(cfg, np.full(cores, 1000.0), 1, False, pool=pool)
        t = time.perf_counter()
        simulate_energies(cfg, energies, 3, False, pool=pool)
        out["showers_per_s_all_cores_10GeV"] = len(energies) / (time.perf_counter() - t)
        out["cores"] = cores
    return out


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20), indent=2))
