"""Read any supported input (by extension/format) and convert between formats."""

from __future__ import annotations

from pathlib import Path

import h5py

from simgan.domains.calorimeter.data import calochallenge as cc
from simgan.domains.calorimeter.data.binning import load_binning
from simgan.domains.calorimeter.data.calogan import read_calogan
from simgan.domains.calorimeter.data.rootio import read_root, write_root
from simgan.errors import SimganError


def detect_format(path) -> str:
    path = Path(path)
    if path.suffix.lower() == ".root":
        return "root"
    if path.suffix.lower() in (".h5", ".hdf5"):
        if not path.is_file():
            raise SimganError(f"{path}: file not found")
        try:
            with h5py.File(path, "r") as f:
                keys = set(f.keys())
        except OSError as exc:
            raise SimganError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {exc}") from exc
        if cc.ENERGY_KEY not in keys and keys & {"layer_0", "layer_1", "layer_2"}:
            return "calogan"  # its reader names a missing layer
        return "calochallenge"
    raise SimganError(f"{path}: unknown file type (expected .h5/.hdf5 or .root)")


def read_any(path, fmt: str = "auto", binning: str | None = None, root_tree: str = "showers",
             root_energy_branch: str = "incident_energy", root_shower_branch: str = "showers") -> cc.ShowerData:
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "calochallenge":
        return cc.read(path, binning)
    if fmt == "calogan":
        data = read_calogan(path)
        if binning is not None and load_binning(binning).digest() != data.binning.digest():
            b = load_binning(binning)
            raise SimganError(f"{path}: a CaloGAN file holds the CaloGAN layout ({data.binning.n_voxels} voxels in "
                              f"{len(data.binning.layers)} layers) but domain.geometry is {binning!r} ({b.n_voxels} "
                              "voxels); set domain.geometry=calogan")
        return data
    if fmt == "root":
        if binning is None:
            raise SimganError(f"{path}: ROOT input needs a binning (a shipped name or an XML path)")
        return read_root(path, load_binning(binning), root_tree, root_energy_branch, root_shower_branch)
    raise SimganError(f"{path}: unknown format {fmt!r}")


def write_any(path, data: cc.ShowerData) -> Path:
    path = Path(path)
    if path.suffix.lower() == ".root":
        return write_root(path, data)
    if path.suffix.lower() in (".h5", ".hdf5"):
        return cc.write(path, data)
    raise SimganError(f"{path}: unknown output type (expected .h5/.hdf5 or .root)")


def convert(src, dst, fmt: str = "auto", binning: str | None = None) -> Path:
    return write_any(dst, read_any(src, fmt, binning))
