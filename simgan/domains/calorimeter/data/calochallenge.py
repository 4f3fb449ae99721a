"""Canonical CaloChallenge HDF5: `incident_energies` (N,1) MeV, `showers` (N,V) MeV.

The binning XML travels with the file (attribute `binning_xml`) so that a file names its
own geometry; public files without it are read against a binning given by the caller.
Extra conditions are extra datasets of length N (e.g. `incident_theta`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from simgan.domains.calorimeter.data.binning import SHIPPED, Binning, load_binning, parse_binning_xml
from simgan.errors import SimganError
from simgan.io import atomic_path, open_hdf5, quiet_failed_hdf5

ENERGY_KEY = "incident_energies"
SHOWER_KEY = "showers"
META_ATTR = "simgan_metadata"
XML_ATTR = "binning_xml"
# A file whose largest incident energy is below this (in MeV) is almost surely in GeV: the
# lowest energy of the CaloChallenge data sets is 256 MeV (photons), and a 1-60 GeV file
# written in GeV tops out at 60.
MIN_PLAUSIBLE_MEV = 256.0
# Showers holding more than this times the incident energy mean the energies are not in MeV;
# less than this (but not none) mean the deposits are in GeV: a sampling calorimeter's visible
# fraction is about 1% or more, and deposits in GeV with energies in MeV give about 0.1%.
MAX_PLAUSIBLE_RESPONSE = 20.0
MIN_PLAUSIBLE_RESPONSE = 0.002


@dataclass
class ShowerData:
    energies: np.ndarray  # (N,) MeV
    showers: np.ndarray  # (N, V) MeV
    binning: Binning
    conditions: dict[str, np.ndarray] = field(default_factory=dict)  # extra (N,) arrays
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.energies)

    def subset(self, idx) -> ShowerData:
        return ShowerData(self.energies[idx], self.showers[idx], self.binning,
                          {k: v[idx] for k, v in self.conditions.items()}, dict(self.metadata))


@dataclass
class FileInfo:
    path: Path
    n_events: int
    binning: Binning
    condition_keys: list[str]
    metadata: dict


def inspect(path: str | os.PathLike, binning: Binning | str | None = None) -> FileInfo:
    """Check layout (datasets, shapes, dtypes, geometry) without reading the data."""
    path = Path(path)
    with open_hdf5(path) as f:
        for key in (ENERGY_KEY, SHOWER_KEY):
            if key not in f:
                raise SimganError(f"{path}: missing dataset '{key}' (found {sorted(f.keys())})")
            if not isinstance(f[key], h5py.Dataset):
                raise SimganError(f"{path}: '{key}' is a group, expected a dataset")
        e, s = f[ENERGY_KEY], f[SHOWER_KEY]
        for key, ds in ((ENERGY_KEY, e), (SHOWER_KEY, s)):
            if ds.dtype.kind != "f":
                raise SimganError(f"{path}: dataset '{key}' has dtype {ds.dtype}, expected floating point")
        if not (e.ndim == 1 or (e.ndim == 2 and e.shape[1] == 1)):
            raise SimganError(f"{path}: dataset '{ENERGY_KEY}' has shape {e.shape}, expected (N, 1): one incident energy per shower")
        if s.ndim != 2:
            raise SimganError(f"{path}: dataset '{SHOWER_KEY}' has shape {s.shape}, expected (N, n_voxels)")
        if s.shape[0] != e.shape[0]:
            raise SimganError(f"{path}: '{SHOWER_KEY}' has {s.shape[0]} rows but '{ENERGY_KEY}' has {e.shape[0]}: one incident energy per shower")
        try:
            meta = json.loads(f.attrs[META_ATTR]) if META_ATTR in f.attrs else {}
        except ValueError as exc:
            raise SimganError(f"{path}: attribute '{META_ATTR}' is not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise SimganError(f"{path}: attribute '{META_ATTR}' is JSON but not an object")
        units = f.attrs.get("energy_units", "MeV")
        if isinstance(units, bytes):
            units = units.decode()
        if units != "MeV":
            raise SimganError(f"{path}: attribute energy_units is {units!r}, expected 'MeV'")
        file_binning = parse_binning_xml(_str(f.attrs[XML_ATTR]), source=f"{path}:{XML_ATTR}") if XML_ATTR in f.attrs else None
        if isinstance(binning, str):
            binning = load_binning(binning)
        if binning is not None and file_binning is not None and binning.digest() != file_binning.digest():
            raise SimganError(f"{path}: geometry in the file ({file_binning.n_voxels} voxels) differs from the expected binning {binning.source!r}")
        binning = file_binning or binning
        if binning is None:  # a public CaloChallenge file: the layout its voxel count names
            binning = binning_for_voxels(s.shape[1], path)
        if s.shape[1] != binning.n_voxels:
            raise SimganError(f"{path}: dataset '{SHOWER_KEY}' has {s.shape[1]} voxels per shower but the binning {binning.source!r} has {binning.n_voxels}")
        n = s.shape[0]
        cond = []
        for key, ds in f.items():
            if key in (ENERGY_KEY, SHOWER_KEY) or not isinstance(ds, h5py.Dataset):
                continue
            if ds.shape[:1] == (n,) and ds.size == n and ds.dtype.kind == "f":
                cond.append(key)
        return FileInfo(path, n, binning, sorted(cond), meta)


def binning_for_voxels(n_voxels: int, path) -> Binning:
    """The shipped layout with this many voxels (the CaloChallenge datasets: 368, 533, 6480,
    40500), for files that carry no binning XML."""

    layouts = {}
    for name in SHIPPED:
        b = load_binning(name)
        if b.n_voxels == n_voxels:
            layouts.setdefault(b.digest(), b)
    if len(layouts) != 1:
        raise SimganError(f"{path}: the file carries no binning XML and {n_voxels} voxels per shower match "
                          f"{'no' if not layouts else 'more than one'} shipped layout; pass one (--binning: "
                          f"{', '.join(SHIPPED)} or an XML path)")
    return next(iter(layouts.values()))


def why_not_condition(path, key: str) -> str:
    """Why dataset `key` of canonical file `path` is not a condition: absent, or its dtype or shape."""
    try:
        with h5py.File(path, "r") as f:
            n = f[SHOWER_KEY].shape[0] if SHOWER_KEY in f else None
            if key not in f:
                return f"no dataset '{key}'"
            ds = f[key]
            if not isinstance(ds, h5py.Dataset):
                return f"'{key}' is a group"
            if ds.dtype.kind != "f":
                return f"dataset '{key}' has dtype {ds.dtype}; a condition is floating point (cast it to float64)"
            return f"dataset '{key}' has shape {ds.shape}; a condition has one value per shower ({n},)"
    except OSError:
        return f"no dataset '{key}'"


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def check_values(path, start: int, energies: np.ndarray, showers: np.ndarray, conditions: dict | None = None) -> None:
    """Finite, non-negative showers; finite, positive energies in MeV. Names the first bad row."""
    def first(mask):
        return start + int(np.argmax(mask))

    bad = ~np.isfinite(energies)
    if bad.any():
        raise SimganError(f"{path}: dataset '{ENERGY_KEY}' row {first(bad)}: not finite ({energies[bad][0]})")
    bad = energies <= 0
    if bad.any():
        raise SimganError(f"{path}: dataset '{ENERGY_KEY}' row {first(bad)}: incident energy must be > 0 MeV (got {energies[bad][0]})")
    bad = ~np.isfinite(showers).all(axis=1)
    if bad.any():
        raise SimganError(f"{path}: dataset '{SHOWER_KEY}' row {first(bad)}: contains NaN or inf")
    bad = (showers < 0).any(axis=1)
    if bad.any():
        raise SimganError(f"{path}: dataset '{SHOWER_KEY}' row {first(bad)}: negative energy deposit")
    for key, v in (conditions or {}).items():
        bad = ~np.isfinite(v)
        if bad.any():
            raise SimganError(f"{path}: dataset '{key}' row {first(bad)}: not finite")


def check_energy_units(path, energies: np.ndarray, deposited: np.ndarray | None = None) -> None:
    """Incident energies in MeV, not GeV: the largest is at least MIN_PLAUSIBLE_MEV, and the
    showers (MeV) do not hold many times the incident energy (a GeV file with showers in MeV
    holds about 1000x; a calorimeter's visible or scaled energy is at most about 1x)."""
    if not len(energies):
        return
    if energies.max() < MIN_PLAUSIBLE_MEV:
        raise SimganError(f"{path}: dataset '{ENERGY_KEY}': largest incident energy is {energies.max():g}, which "
                          f"looks like GeV (a shower file in MeV reaches at least {MIN_PLAUSIBLE_MEV:g}); the "
                          "canonical unit is MeV: multiply energies and deposits by 1000")
    if deposited is not None:
        ratio = float(np.median(deposited / energies))
        if ratio > MAX_PLAUSIBLE_RESPONSE:
            raise SimganError(f"{path}: dataset '{SHOWER_KEY}' holds a median {ratio:.0f}x the incident energy: "
                              f"'{ENERGY_KEY}' looks like GeV while the deposits are MeV; the canonical unit is MeV")
        if 0 < ratio < MIN_PLAUSIBLE_RESPONSE:
            raise SimganError(f"{path}: dataset '{SHOWER_KEY}' holds a median {ratio:.2g} of the incident energy: "
                              f"the deposits look like GeV while '{ENERGY_KEY}' is MeV; the canonical unit is MeV "
                              "for both")


def iter_chunks(path, chunk_size: int = 2000, binning=None, start: int = 0, stop: int | None = None,
                check: bool = True) -> Iterator[tuple[int, np.ndarray, np.ndarray, dict]]:
    """Yield (first_row, energies (n,), showers (n,V) float32, conditions) chunk by chunk.

    Memory stays bounded by the chunk size whatever the file size. The file is opened
    here (h5py handles cannot cross processes), so this runs inside dask tasks too.
    """
    info = inspect(path, binning)
    stop = info.n_events if stop is None else min(stop, info.n_events)
    with open_hdf5(path) as f:
        e_ds, s_ds = f[ENERGY_KEY], f[SHOWER_KEY]
        for lo in range(start, stop, chunk_size):
            hi = min(lo + chunk_size, stop)
            e = np.asarray(e_ds[lo:hi], dtype=np.float64).reshape(-1)
            s = np.asarray(s_ds[lo:hi], dtype=np.float32)
            cond = {k: np.asarray(f[k][lo:hi], dtype=np.float64).reshape(-1) for k in info.condition_keys}
            if check:
                check_values(path, lo, e, s, cond)
            yield lo, e, s, cond


def read(path, binning=None, check: bool = True, max_events: int | None = None) -> ShowerData:
    info = inspect(path, binning)
    n = info.n_events if max_events is None else min(info.n_events, max_events)
    es, ss, cs = [], [], {k: [] for k in info.condition_keys}
    for _, e, s, c in iter_chunks(path, 10000, info.binning, stop=n, check=check):
        es.append(e)
        ss.append(s)
        for k in cs:
            cs[k].append(c[k])
    energies = np.concatenate(es) if es else np.zeros(0)
    showers = np.concatenate(ss) if ss else np.zeros((0, info.binning.n_voxels), np.float32)
    if check:
        check_energy_units(path, energies, showers.sum(1, dtype=np.float64))
    conditions = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cs.items()}  # (an empty shard: none)
    return ShowerData(energies, showers, info.binning, conditions, info.metadata)


def write(path, data: ShowerData, compression: str | None = "gzip") -> Path:
    """Write atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    n = len(data.energies)
    if data.showers.shape != (n, data.binning.n_voxels):
        raise SimganError(f"{path}: showers shape {data.showers.shape} does not match {n} energies x {data.binning.n_voxels} voxels")
    with atomic_path(path, suffix=".h5") as tmp:
        with ShowerWriter(tmp, data.binning, data.metadata, list(data.conditions), compression) as w:
            w.append(data.energies, data.showers, data.conditions)
    return path


class ShowerWriter:
    """Append chunks to a canonical file (resizable datasets): bounded memory for any N."""

    def __init__(self, path, binning: Binning, metadata: dict | None = None, condition_keys=(),
                 compression: str | None = "gzip", chunk_rows: int = 256):
        self.path = Path(path)
        self.binning = binning
        quiet_failed_hdf5()  # a full disk: one message, not h5py's echoes as the dead file's objects are freed
        self.f = h5py.File(self.path, "w")
        v = binning.n_voxels
        rows = max(1, min(chunk_rows, (1 << 20) // max(v, 1)))
        kw = {"compression": compression, "compression_opts": 1} if compression == "gzip" else {}
        self.f.create_dataset(ENERGY_KEY, (0, 1), maxshape=(None, 1), dtype="f8", chunks=(4096, 1))
        self.f.create_dataset(SHOWER_KEY, (0, v), maxshape=(None, v), dtype="f4", chunks=(rows, v), **kw)
        for k in condition_keys:
            self.f.create_dataset(k, (0,), maxshape=(None,), dtype="f8", chunks=(4096,))
        self.f.attrs[XML_ATTR] = binning.to_xml()
        self.f.attrs["energy_units"] = "MeV"
        self.f.attrs[META_ATTR] = json.dumps(metadata or {}, sort_keys=True, default=str)
        self.n = 0

    def append(self, energies, showers, conditions: dict | None = None) -> None:
        m = len(energies)
        lo, hi = self.n, self.n + m
        self.f[ENERGY_KEY].resize((hi, 1))
        self.f[ENERGY_KEY][lo:hi] = np.asarray(energies, dtype=np.float64).reshape(-1, 1)
        self.f[SHOWER_KEY].resize((hi, self.binning.n_voxels))
        self.f[SHOWER_KEY][lo:hi] = np.asarray(showers, dtype=np.float32)
        for k, v in (conditions or {}).items():
            self.f[k].resize((hi,))
            self.f[k][lo:hi] = np.asarray(v, dtype=np.float64).reshape(-1)
        self.n = hi

    def set_metadata(self, metadata: dict) -> None:
        self.f.attrs[META_ATTR] = json.dumps(metadata, sort_keys=True, default=str)

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # the first error is the one to report
            self.close()
