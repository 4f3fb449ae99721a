"""CaloGAN HDF5 (layer_0 3x96, layer_1 12x12, layer_2 12x6, overflow, energy in GeV).

Converted to the canonical form: energies to MeV, the three layers flattened (row-major)
into 504 voxels, with a binning whose layers are marked grid="cartesian".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simgan.domains.calorimeter.data.binning import CALOGAN_LAYERS, calogan_binning
from simgan.domains.calorimeter.data.calochallenge import ShowerData, check_values
from simgan.errors import SimganError
from simgan.io import open_hdf5

LAYERS = CALOGAN_LAYERS
# CaloGAN energies are GeV (the published samples: 1-100 GeV); more than this means MeV
MAX_PLAUSIBLE_GEV = 10000.0


def read_calogan(path, check: bool = True) -> ShowerData:
    path = Path(path)
    with open_hdf5(path) as f:
        for key in (*LAYERS, "energy"):
            if key not in f:
                raise SimganError(f"{path}: missing dataset '{key}' for CaloGAN format")
        energy_gev = np.asarray(f["energy"][:], dtype=np.float64).reshape(-1)
        n = len(energy_gev)
        parts = []
        for key, shape in LAYERS.items():
            arr = np.asarray(f[key][:], dtype=np.float32)
            if arr.shape != (n, *shape):
                raise SimganError(f"{path}: dataset '{key}' has shape {arr.shape}, expected ({n}, {shape[0]}, {shape[1]})")
            # canonical order is (layer, alpha, r) with r fastest: alpha=column, r=row
            parts.append(arr.transpose(0, 2, 1).reshape(n, -1))
        overflow = np.asarray(f["overflow"][:], dtype=np.float64) if "overflow" in f else None
    showers = np.concatenate(parts, axis=1)
    if check and len(energy_gev) and energy_gev.max() > MAX_PLAUSIBLE_GEV:
        raise SimganError(f"{path}: dataset 'energy': largest value {energy_gev.max():g} looks like MeV; CaloGAN "
                          f"files store the incident energy in GeV (at most {MAX_PLAUSIBLE_GEV:g})")
    energies = energy_gev * 1000.0
    if check:
        check_values(path, 0, energies, showers)
    cond = {}
    if overflow is not None and overflow.shape == (n, 3):
        cond = {f"overflow_{i}": overflow[:, i] for i in range(3)}
    return ShowerData(energies, showers, calogan_binning(), cond, {"source_format": "calogan"})
