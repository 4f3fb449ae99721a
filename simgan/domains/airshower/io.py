"""Air-shower footprint files (HDF5) with their checks, and the ROOT converter.

    /footprint/signal      float32 (N, 9, 9)  VEM, 0 = silent
    /footprint/time        float32 (N, 9, 9)  ns, 0 = silent
    /footprint/triggered   uint8   (N, 9, 9)
    /footprint/traces      float32 (N, 9, 9, T)  VEM per FADC bin (optional; attrs bin_ns, n_bins):
                           each station's trace; its sum is the station's signal, silent stations 0
    /footprint/traces_muon, traces_em   float32 (N, 9, 9, T)  the muon and EM parts (simulator only)
    /conditions/log10_energy_eV, zenith_rad, azimuth_rad, core_x_m, core_y_m, mass_A   (N,)
    /truth/xmax_gcm2, s1000_vem, beta   (N,)   (simulator only; optional in user files)
    /stations/xyz          float32 (9, 9, 3)  m
    attrs: schema_version, spacing_m, altitude_m, trigger_vem, seed, parameters (JSON)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from simgan.domains.airshower.simulator import GRID, ArrayParams, station_xyz, tank_params
from simgan.errors import SimganError
from simgan.extras import require
from simgan.io import atomic_path, open_hdf5, ordered_shards, quiet_failed_hdf5
from simgan.roottree import open_root_tree

SCHEMA_VERSION = 1
CONDITIONS = ("log10_energy_eV", "zenith_rad", "azimuth_rad", "core_x_m", "core_y_m")
OPTIONAL_CONDITIONS = ("mass_A",)
TRUTH = ("xmax_gcm2", "s1000_vem", "beta")
CHANNELS = ("signal", "time", "triggered")
TRACE_COMPONENTS = ("muon", "em")
TRACE_TOLERANCE_VEM = 1e-3  # |sum of a trace - signal| allowed, plus 1e-4 of the signal (float32 sums)


@dataclass
class Footprints:
    """N events: signal (N, 9, 9) VEM, time (N, 9, 9) ns, triggered (N, 9, 9) bool, conditions
    (name -> (N,)), truth (optional), station positions (9, 9, 3) m and file attributes."""

    signal: np.ndarray
    time: np.ndarray
    triggered: np.ndarray
    conditions: dict[str, np.ndarray]
    xyz: np.ndarray
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    traces: np.ndarray | None = None  # (N, 9, 9, T) VEM per bin
    trace_components: dict[str, np.ndarray] = field(default_factory=dict)  # muon, em: (N, 9, 9, T)

    def __len__(self) -> int:
        return len(self.signal)

    def subset(self, idx) -> Footprints:
        return Footprints(self.signal[idx], self.time[idx], self.triggered[idx],
                          {k: v[idx] for k, v in self.conditions.items()}, self.xyz,
                          {k: v[idx] for k, v in self.truth.items()}, dict(self.attrs),
                          None if self.traces is None else self.traces[idx],
                          {k: v[idx] for k, v in self.trace_components.items()})


def from_simulation(ev: dict, p: ArrayParams, seed: int) -> Footprints:
    attrs = {"spacing_m": p.spacing_m, "altitude_m": p.altitude_m, "trigger_vem": p.trigger_vem,
             "seed": int(seed), "parameters": json.dumps(p.to_dict(), sort_keys=True)}
    if "traces" in ev:
        tank = tank_params(p)
        attrs.update({"trace_bin_ns": tank.bin_ns, "trace_bins": tank.n_bins,
                      "tank": json.dumps(tank.to_dict(), sort_keys=True)})
    return Footprints(ev["signal"], ev["time"], ev["triggered"].astype(bool), ev["conditions"],
                      station_xyz(p).astype(np.float32), ev.get("truth", {}), attrs, ev.get("traces"),
                      dict(ev.get("trace_components", {})))


def write(path, fp: Footprints) -> Path:
    """Write atomically (temp file beside `path`, then rename); checks first."""
    path = Path(path)
    check(fp, str(path))
    with atomic_path(path, suffix=".h5") as tmp:
        quiet_failed_hdf5()
        with h5py.File(tmp, "w") as f:
            g = f.create_group("footprint")
            kw = {"compression": "gzip", "compression_opts": 1, "chunks": (min(max(len(fp), 1), 4096), GRID, GRID)}
            g.create_dataset("signal", data=fp.signal.astype(np.float32), **kw)
            g.create_dataset("time", data=fp.time.astype(np.float32), **kw)
            g.create_dataset("triggered", data=fp.triggered.astype(np.uint8), **kw)
            if fp.traces is not None:
                tkw = {"compression": "gzip", "compression_opts": 1,
                       "chunks": (min(max(len(fp), 1), 256), GRID, GRID, fp.traces.shape[-1])}
                g.create_dataset("traces", data=fp.traces.astype(np.float32), **tkw)
                for k, v in fp.trace_components.items():
                    g.create_dataset(f"traces_{k}", data=v.astype(np.float32), **tkw)
            c = f.create_group("conditions")
            for k, v in fp.conditions.items():
                c.create_dataset(k, data=np.asarray(v, np.float64))
            if fp.truth:
                t = f.create_group("truth")
                for k, v in fp.truth.items():
                    t.create_dataset(k, data=np.asarray(v, np.float64))
            f.create_group("stations").create_dataset("xyz", data=np.asarray(fp.xyz, np.float32))
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["domain"] = "airshower"
            for k, v in fp.attrs.items():
                if k not in ("schema_version", "domain"):
                    f.attrs[k] = v
    return path


def masses(cond: dict) -> np.ndarray:
    """The primary's mass number per event; 1 (protons, the simulator's default) where a file has none."""
    return np.asarray(cond["mass_A"], np.float64) if "mass_A" in cond else np.ones(len(cond[CONDITIONS[0]]))


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask.reshape(len(mask), -1).any(1)) if mask.ndim > 1 else np.argmax(mask))


def check(fp: Footprints, where: str, start: int = 0) -> None:
    """Shapes, finiteness, signal >= 0, time only where triggered, units of the conditions.
    Names `where`, the dataset and the first bad row."""
    n = len(fp.signal)
    for name in CHANNELS:
        arr = getattr(fp, name)
        if arr.shape != (n, GRID, GRID):
            raise SimganError(f"{where}: dataset 'footprint/{name}' has shape {arr.shape}, expected ({n}, {GRID}, {GRID}): "
                              f"a {GRID}x{GRID} station grid per event")
    if np.shape(fp.xyz) != (GRID, GRID, 3):
        raise SimganError(f"{where}: dataset 'stations/xyz' has shape {np.shape(fp.xyz)}, expected ({GRID}, {GRID}, 3)")
    trig = fp.triggered.astype(bool)
    for name, arr in (("signal", fp.signal), ("time", fp.time)):
        bad = ~np.isfinite(arr)
        if bad.any():
            row = _first(bad)
            what = "on a triggered station" if (bad & trig).any() else "on a silent station"
            raise SimganError(f"{where}: dataset 'footprint/{name}' row {start + row}: not finite ({what}); "
                              "the format has no NaN: silent stations carry 0")
    bad = fp.signal < 0
    if bad.any():
        raise SimganError(f"{where}: dataset 'footprint/signal' row {start + _first(bad)}: negative signal "
                          f"({fp.signal[bad][0]:g} VEM)")
    bad = ~trig & ((fp.signal != 0) | (fp.time != 0))
    if bad.any():
        raise SimganError(f"{where}: row {start + _first(bad)}: a silent station (footprint/triggered = 0) has a "
                          "signal or a time; silent stations carry signal 0 and time 0")
    bad = trig & (fp.signal <= 0)
    if bad.any():
        raise SimganError(f"{where}: dataset 'footprint/signal' row {start + _first(bad)}: a triggered station "
                          "has no signal")
    missing = [k for k in CONDITIONS if k not in fp.conditions]
    if missing:
        raise SimganError(f"{where}: missing condition(s) {['conditions/' + k for k in missing]} "
                          f"(found {sorted(fp.conditions)})")
    for k, v in fp.conditions.items():
        v = np.asarray(v)
        if v.shape != (n,):
            raise SimganError(f"{where}: dataset 'conditions/{k}' has shape {v.shape}, expected ({n},)")
        bad = ~np.isfinite(v)
        if bad.any():
            raise SimganError(f"{where}: dataset 'conditions/{k}' row {start + _first(bad)}: not finite")
    check_condition_units(fp.conditions, where, start)
    if fp.traces is not None or fp.trace_components:
        check_traces(fp, where, start)


def check_traces(fp: Footprints, where: str, start: int = 0) -> None:
    """Traces (N, 9, 9, T): finite, non-negative, each summing to its station's signal (silent
    stations all 0), T and the bin width named in the attributes; the components likewise,
    adding up to no more than the trace. Names the dataset and the first bad row."""
    n = len(fp.signal)
    if fp.traces is None:
        raise SimganError(f"{where}: trace components {sorted(fp.trace_components)} without 'footprint/traces'")
    tr = fp.traces
    if tr.ndim != 4 or tr.shape[:3] != (n, GRID, GRID):
        raise SimganError(f"{where}: dataset 'footprint/traces' has shape {tr.shape}, expected ({n}, {GRID}, {GRID}, T): "
                          "one trace of T bins per station")
    for key in ("trace_bin_ns", "trace_bins"):
        if key not in fp.attrs:
            raise SimganError(f"{where}: 'footprint/traces' needs the file attribute '{key}' (the FADC bin width "
                              "in ns and the number of bins T)")
    if int(fp.attrs["trace_bins"]) != tr.shape[-1]:
        raise SimganError(f"{where}: attribute 'trace_bins' = {fp.attrs['trace_bins']}, but 'footprint/traces' has "
                          f"{tr.shape[-1]} bins")
    for name, arr in (("traces", tr), *((f"traces_{k}", v) for k, v in fp.trace_components.items())):
        if arr.shape != tr.shape:
            raise SimganError(f"{where}: dataset 'footprint/{name}' has shape {arr.shape}, expected {tr.shape}")
        bad = ~np.isfinite(arr)
        if bad.any():
            raise SimganError(f"{where}: dataset 'footprint/{name}' row {start + _first(bad)}: not finite")
        bad = arr < 0
        if bad.any():
            raise SimganError(f"{where}: dataset 'footprint/{name}' row {start + _first(bad)}: negative value "
                              f"({arr[bad][0]:g} VEM); traces are in VEM per bin, >= 0")
    total = tr.sum(-1, dtype=np.float64)
    bad = np.abs(total - fp.signal) > TRACE_TOLERANCE_VEM + 1e-4 * np.abs(fp.signal)
    if bad.any():
        row = _first(bad)
        i = np.argwhere(bad)[0]
        raise SimganError(f"{where}: dataset 'footprint/traces' row {start + row}: station {tuple(i[1:])} sums to "
                          f"{total[tuple(i)]:.4g} VEM but its signal is {fp.signal[tuple(i)]:.4g} VEM; a station's "
                          "signal is its trace's integral")
    if fp.trace_components:
        parts = sum(v.sum(-1, dtype=np.float64) for v in fp.trace_components.values())
        bad = parts > total + 1.0 + 0.05 * total  # the total adds baseline noise, clipped at 0
        if bad.any():
            raise SimganError(f"{where}: row {start + _first(bad)}: the trace components (footprint/traces_*) add "
                              "up to more than the trace")


def check_condition_units(cond: dict, where: str, start: int = 0) -> None:
    """Radians, not degrees; log10(E/eV), not EeV or eV; the core in metres."""
    def first(mask):
        return start + int(np.argmax(mask))

    if "log10_energy_eV" in cond:
        lg = np.asarray(cond["log10_energy_eV"], float)
        bad = (lg < 15) | (lg > 22)
        if bad.any():
            v = lg[bad][0]
            hint = ("EeV was written (log10(E/eV) = 18 + log10(E/EeV))" if 0 < v < 15 else
                    "E in eV was written, not log10(E/eV)" if v > 1e10 else "expected log10(E/eV) in 15-22")
            raise SimganError(f"{where}: dataset 'conditions/log10_energy_eV' row {first(bad)}: {v:g}: {hint}")
    if "zenith_rad" in cond:
        th = np.asarray(cond["zenith_rad"], float)
        bad = (th < 0) | (th > math.pi / 2)
        if bad.any():
            v = th[bad][0]
            hint = "looks like degrees; the format takes radians" if v > math.pi / 2 else "expected 0 to pi/2 rad"
            raise SimganError(f"{where}: dataset 'conditions/zenith_rad' row {first(bad)}: {v:g}: {hint}")
    if "mass_A" in cond:
        a = np.asarray(cond["mass_A"], float)
        bad = (a < 1) | (a > 300)
        if bad.any():
            raise SimganError(f"{where}: dataset 'conditions/mass_A' row {first(bad)}: {a[bad][0]:g}: expected the "
                              "primary's mass number A (1 proton, 4 helium, 14 nitrogen, 56 iron)")
    if "azimuth_rad" in cond:
        ph = np.asarray(cond["azimuth_rad"], float)
        bad = (ph < -2 * math.pi) | (ph > 2 * math.pi)
        if bad.any():
            raise SimganError(f"{where}: dataset 'conditions/azimuth_rad' row {first(bad)}: {ph[bad][0]:g}: looks "
                              "like degrees; the format takes radians (-2 pi to 2 pi)")


def read(path, max_events: int | None = None, check_values: bool = True) -> Footprints:
    path = Path(path)
    with open_hdf5(path) as f:
        for name in CHANNELS:
            key = f"footprint/{name}"
            if key not in f:
                raise SimganError(f"{path}: missing dataset '{key}' (an air-shower footprint file has "
                                  f"{', '.join('footprint/' + c for c in CHANNELS)})")
        if "conditions" not in f:
            raise SimganError(f"{path}: missing group 'conditions' ({', '.join(CONDITIONS)})")
        n = f["footprint/signal"].shape[0]
        m = n if max_events is None else min(n, max_events)
        for name, kind in (("signal", "f"), ("time", "f"), ("triggered", "ui")):
            ds = f[f"footprint/{name}"]
            if ds.dtype.kind not in kind and not (name == "triggered" and ds.dtype.kind == "b"):
                raise SimganError(f"{path}: dataset 'footprint/{name}' has dtype {ds.dtype}, expected "
                                  f"{'floating point' if kind == 'f' else 'uint8 (0/1)'}")
            if ds.shape[0] != n:
                raise SimganError(f"{path}: dataset 'footprint/{name}' has {ds.shape[0]} events, "
                                  f"'footprint/signal' has {n}")
        trig_raw = f["footprint/triggered"][:m]
        if trig_raw.size and not np.isin(trig_raw, (0, 1)).all():
            raise SimganError(f"{path}: dataset 'footprint/triggered' row {_first(~np.isin(trig_raw, (0, 1)))}: "
                              "values other than 0 and 1")
        cond = {}
        for k, ds in f["conditions"].items():
            if ds.shape[:1] != (n,):
                raise SimganError(f"{path}: dataset 'conditions/{k}' has shape {ds.shape}, expected ({n},)")
            cond[k] = np.asarray(ds[:m], np.float64)
        truth = {k: np.asarray(ds[:m], np.float64) for k, ds in f["truth"].items()} if "truth" in f else {}
        if "stations/xyz" in f:
            xyz = np.asarray(f["stations/xyz"][:], np.float32)
        else:
            xyz = station_xyz(ArrayParams(spacing_m=float(f.attrs.get("spacing_m", 1500.0)),
                                          altitude_m=float(f.attrs.get("altitude_m", 1400.0)))).astype(np.float32)
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        traces = None
        if "footprint/traces" in f:
            ds = f["footprint/traces"]
            if ds.dtype.kind != "f":
                raise SimganError(f"{path}: dataset 'footprint/traces' has dtype {ds.dtype}, expected floating point "
                                  "(VEM per bin)")
            if ds.shape[:1] != (n,):
                raise SimganError(f"{path}: dataset 'footprint/traces' has {ds.shape[0]} events, "
                                  f"'footprint/signal' has {n}")
            traces = np.asarray(ds[:m], np.float32)
        comps = {k: np.asarray(f[f"footprint/traces_{k}"][:m], np.float32) for k in TRACE_COMPONENTS
                 if f"footprint/traces_{k}" in f}
        fp = Footprints(np.asarray(f["footprint/signal"][:m], np.float32), np.asarray(f["footprint/time"][:m], np.float32),
                        trig_raw.astype(bool), cond, xyz, truth, attrs, traces, comps)
    if check_values:
        check(fp, str(path))
    return fp


def read_root(path, tree: str = "footprints", branches: dict[str, str] | None = None,
              trace_bin_ns: float = 25.0) -> Footprints:
    """A ROOT TTree with one entry per event: fixed-size 81-value (or 9x9) branches for signal,
    time and triggered, one value per condition, optionally a `traces` branch of 81 x T values
    (VEM per FADC bin of `trace_bin_ns`). `branches` maps this format's names (signal, time,
    triggered, traces and the condition names) to the tree's branch names."""
    require("uproot")  # the tree is read through simgan.roottree

    names = {k: k for k in (*CHANNELS, *CONDITIONS, *OPTIONAL_CONDITIONS, "traces")}
    if branches:
        unknown = sorted(set(branches) - set(names))
        if unknown:
            raise SimganError(f"prepare.root_branches: unknown name(s) {unknown}; known: {sorted(names)}")
        names.update(branches)
    path = Path(path)
    f, t = open_root_tree(path, tree)
    with f:
        have = set(t.keys())
        required = [*CHANNELS, *CONDITIONS]
        missing = [f"{k} (branch '{names[k]}')" for k in required if names[k] not in have]
        if missing:
            raise SimganError(f"{path}: TTree '{tree}' lacks {missing} (found {sorted(have)}); map names to branches "
                              "with prepare.root_branches, e.g. prepare.root_branches='{signal: S, time: T}'")
        if t.num_entries == 0:
            raise SimganError(f"{path}: TTree '{tree}' has no entries")
        wanted = [names[k] for k in (*required, *OPTIONAL_CONDITIONS, "traces") if names[k] in have]
        arrays = t.arrays(wanted, library="np")
    n = t.num_entries
    grids = {}
    for k in CHANNELS:
        a = arrays[names[k]]
        if a.dtype == object or a.size != n * GRID * GRID:
            raise SimganError(f"{path}: branch '{names[k]}' must hold {GRID * GRID} values per entry (a {GRID}x{GRID} "
                              f"grid), found shape {a.shape}")
        grids[k] = a.reshape(n, GRID, GRID)
    cond = {k: np.asarray(arrays[names[k]], np.float64).reshape(-1) for k in (*CONDITIONS, *OPTIONAL_CONDITIONS)
            if names[k] in arrays}
    attrs, traces = {"source": f"{path}:{tree}"}, None
    if names["traces"] in arrays:  # optional: 81 x T values per entry (VEM per FADC bin)
        a = arrays[names["traces"]]
        per = a.size // max(n, 1) if a.dtype != object else 0
        if a.dtype == object or per % (GRID * GRID) or per == 0:
            raise SimganError(f"{path}: branch '{names['traces']}' must hold {GRID * GRID} x T values per entry "
                              f"(a trace of T bins per station), found shape {a.shape}")
        traces = a.reshape(n, GRID, GRID, per // (GRID * GRID)).astype(np.float32)
        attrs.update({"trace_bins": traces.shape[-1], "trace_bin_ns": float(trace_bin_ns)})
    fp = Footprints(grids["signal"].astype(np.float32), grids["time"].astype(np.float32),
                    grids["triggered"].astype(bool), cond, station_xyz().astype(np.float32), {}, attrs, traces)
    check(fp, f"{path}:{tree}")
    return fp


def write_root(path, fp: Footprints, tree: str = "footprints") -> Path:
    """The inverse of read_root with the default branch names (for tests and exchange)."""
    uproot = require("uproot")

    path = Path(path)
    with atomic_path(path, suffix=".root") as tmp:
        with uproot.recreate(tmp) as f:
            n = len(fp)
            f[tree] = {"signal": fp.signal.reshape(n, -1).astype(np.float32),
                       "time": fp.time.reshape(n, -1).astype(np.float32),
                       "triggered": fp.triggered.reshape(n, -1).astype(np.uint8),
                       **({"traces": fp.traces.reshape(n, -1).astype(np.float32)} if fp.traces is not None else {}),
                       **{k: np.asarray(v, np.float64) for k, v in fp.conditions.items()}}
    return path


def merge_shards(paths, out) -> Path:
    """Shards of one simulation (same seed and size, shard_count of them, each index once) into
    one file, in index order: the events of one unsharded run."""
    parts = ordered_shards([read(q) for q in paths], list(paths))
    first = parts[0].attrs
    merged = Footprints(np.concatenate([fp.signal for fp in parts]), np.concatenate([fp.time for fp in parts]),
                        np.concatenate([fp.triggered for fp in parts]),
                        {k: np.concatenate([fp.conditions[k] for fp in parts]) for k in parts[0].conditions},
                        parts[0].xyz, {k: np.concatenate([fp.truth[k] for fp in parts]) for k in parts[0].truth},
                        {k: v for k, v in first.items() if k not in ("shard_index", "shard_count", "first_event")},
                        None if parts[0].traces is None else np.concatenate([fp.traces for fp in parts]),
                        {k: np.concatenate([fp.trace_components[k] for fp in parts]) for k in parts[0].trace_components})
    if len(merged) != int(first["events_total"]):
        raise SimganError(f"merged {len(merged)} events, the simulation has {first['events_total']}")
    return write(out, merged)
