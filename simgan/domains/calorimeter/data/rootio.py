"""ROOT TTrees through uproot: chunked reading (uproot.iterate) and writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simgan.domains.calorimeter.data.binning import Binning
from simgan.domains.calorimeter.data.calochallenge import ShowerData, check_energy_units, check_values
from simgan.errors import SimganError
from simgan.extras import require
from simgan.io import atomic_path
from simgan.roottree import open_root_tree


def read_root(path, binning: Binning, tree: str = "showers", energy_branch: str = "incident_energy",
              shower_branch: str = "showers", chunk_size: int = 5000, check: bool = True) -> ShowerData:
    uproot = require("uproot")

    path = Path(path)
    f, t = open_root_tree(path, tree)
    with f:
        for b in (energy_branch, shower_branch):
            if b not in t.keys():
                raise SimganError(f"{path}: TTree '{tree}' has no branch '{b}' (found {t.keys()})")
        extra = [k for k in t.keys() if k not in (energy_branch, shower_branch)]
        if t.num_entries == 0:
            raise SimganError(f"{path}: TTree '{tree}' has no entries")
    es, ss, cs = [], [], {k: [] for k in extra}
    start = 0
    for batch in uproot.iterate(f"{path}:{tree}", [energy_branch, shower_branch, *extra],
                                step_size=chunk_size, library="np"):
        e = np.asarray(batch[energy_branch], dtype=np.float64).reshape(-1)
        s = batch[shower_branch]
        if s.dtype == object or s.ndim != 2:
            raise SimganError(f"{path}: branch '{shower_branch}' must be a fixed-size array per entry")
        if s.shape[1] != binning.n_voxels:
            raise SimganError(f"{path}: branch '{shower_branch}' has {s.shape[1]} voxels, the binning {binning.source!r} has {binning.n_voxels}")
        s = s.astype(np.float32)
        cond = {k: np.asarray(batch[k], dtype=np.float64).reshape(-1) for k in extra}
        if check:
            check_values(path, start, e, s, cond)
        es.append(e)
        ss.append(s)
        for k in extra:
            cs[k].append(cond[k])
        start += len(e)
    energies, showers = np.concatenate(es), np.concatenate(ss)
    if check:
        check_energy_units(f"{path}:{tree}", energies, showers.sum(1, dtype=np.float64))
    return ShowerData(energies, showers, binning, {k: np.concatenate(v) for k, v in cs.items()})


def write_root(path, data: ShowerData, tree: str = "showers", energy_branch: str = "incident_energy",
               shower_branch: str = "showers", chunk_size: int = 5000) -> Path:
    uproot = require("uproot")

    path = Path(path)
    with atomic_path(path, suffix=".root") as tmp:
        with uproot.recreate(tmp) as f:
            n = len(data.energies)
            for lo in range(0, max(n, 1), chunk_size):
                hi = min(lo + chunk_size, n)
                branches = {energy_branch: np.asarray(data.energies[lo:hi], dtype=np.float64),
                            shower_branch: np.asarray(data.showers[lo:hi], dtype=np.float32)}
                for k, v in data.conditions.items():
                    branches[k] = np.asarray(v[lo:hi], dtype=np.float64)
                if lo == 0:
                    f[tree] = branches
                else:
                    f[tree].extend(branches)
    return path
