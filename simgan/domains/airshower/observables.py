"""Air-shower observables for validation: per event, from the footprint and the conditions
(true geometry), as the spec lists them. Vectorised over events."""

from __future__ import annotations

import math
import warnings

import numpy as np

from simgan.domains.airshower.simulator import (
    C_M_PER_NS,
    ArrayParams,
    ldf,
    mean_xmax_proton,
    s1000_and_beta,
    shower_plane_geometry,
    timing_sigma,
)
from simgan.domains.airshower.traces import rise_fall_ns
from simgan.report.plots import profile_stats

R_BINS = np.array([0, 500, 750, 1000, 1250, 1500, 2000, 3000, 6000.0])


def geometry(cond: dict, xyz: np.ndarray, p: ArrayParams = ArrayParams()):
    """(vector from the core (N, 81, 3), axis distance r (N, 81), position along the axis (N, 81), axis (N, 3))."""
    return shower_plane_geometry(np.asarray(xyz, np.float64), np.stack([cond["core_x_m"], cond["core_y_m"]], 1),
                                 cond["zenith_rad"], cond["azimuth_rad"], p.altitude_m)


def nominal_s1000(cond: dict, p: ArrayParams = ArrayParams()):
    """S1000 and LDF slope from the conditions alone (Xmax at its proton mean, mass from the
    conditions or protons): what a reconstruction would expect, without the truth."""
    lg, th = cond["log10_energy_eV"], cond["zenith_rad"]
    mass = cond.get("mass_A", np.ones_like(lg))
    return s1000_and_beta(lg, th, mean_xmax_proton(lg, p), mass, p)


def plane_fit(t_ns, trig, xyz, weights=None):
    """Weighted least-squares plane front c t_i = c t0 - u_x x_i - u_y y_i over triggered stations
    (flat array). Returns the fitted axis (N, 3) (NaN with fewer than 3 stations)."""
    n = len(t_ns)
    x = np.broadcast_to(xyz[..., 0].reshape(1, -1), (n, xyz[..., 0].size))
    y = np.broadcast_to(xyz[..., 1].reshape(1, -1), (n, xyz[..., 1].size))
    w = trig.astype(np.float64) * (1.0 if weights is None else weights)
    ct = C_M_PER_NS * t_ns
    a = np.stack([np.ones_like(x), -x, -y], -1)  # unknowns (c t0, u_x, u_y)
    ata = np.einsum("ns,nsi,nsj->nij", w, a, a)
    atb = np.einsum("ns,nsi,ns->ni", w, a, ct)
    ok = trig.sum(1) >= 3
    sol = np.full((n, 3), np.nan)
    if ok.any():
        ata_ok = ata[ok] + 1e-9 * np.eye(3)
        sol[ok] = np.linalg.solve(ata_ok, atb[ok][..., None])[..., 0]
    ux, uy = sol[:, 1], sol[:, 2]
    uz = np.sqrt(np.clip(1 - ux**2 - uy**2, 0.0, None))
    u = np.stack([ux, uy, uz], 1)
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def space_angle_deg(u, v):
    return np.degrees(np.arccos(np.clip(np.einsum("ni,ni->n", u, v), -1.0, 1.0)))


def event_features(signal, time, triggered, cond: dict, xyz, p: ArrayParams = ArrayParams()) -> dict[str, np.ndarray]:
    """One row per event: station count, log10 total and largest signal, fitted S1000 over its
    nominal value, barycentre minus true core (x, y), the plane-fit angle to the true axis, the
    mean time residual to the plane front, and the lateral profile (median log10 S per r bin)."""
    n = len(signal)
    s = np.asarray(signal, np.float64).reshape(n, -1)
    t = np.asarray(time, np.float64).reshape(n, -1)
    trig = np.asarray(triggered).reshape(n, -1).astype(bool) & (s > 0)
    d, r, along, u_true = geometry(cond, xyz, p)
    n_trig = trig.sum(1)
    tot = s.sum(1)
    feats = {"n_triggered": n_trig.astype(np.float64), "log10_total_signal": np.log10(np.maximum(tot, 1e-3)),
             "log10_max_signal": np.log10(np.maximum(s.max(1), 1e-3))}
    # S1000: one-parameter fit of the nominal LDF shape to the triggered stations (in log S)
    s1000_nom, beta_nom = nominal_s1000(cond, p)
    shape = ldf(r, 1.0, beta_nom[:, None])
    logratio = np.where(trig, np.log(np.where(trig, s, 1.0) / shape), 0.0)
    w = trig * np.sqrt(np.where(trig, s, 0.0))  # Poisson-like weights: larger signals count more
    fit = np.exp((w * logratio).sum(1) / np.maximum(w.sum(1), 1e-12))
    feats["s1000_fit_over_nominal"] = np.where(n_trig > 0, fit / s1000_nom, np.nan)
    bx = (s * xyz[..., 0].reshape(1, -1)).sum(1) / np.maximum(tot, 1e-12)
    by = (s * xyz[..., 1].reshape(1, -1)).sum(1) / np.maximum(tot, 1e-12)
    feats["barycentre_dx_m"] = bx - cond["core_x_m"]
    feats["barycentre_dy_m"] = by - cond["core_y_m"]
    sigma = timing_sigma(s, r)
    u_fit = plane_fit(t, trig, xyz, 1.0 / sigma**2)
    feats["plane_fit_angle_deg"] = space_angle_deg(u_fit, u_true)
    resid = t + along / C_M_PER_NS  # time after the plane front through the core
    feats["mean_time_residual_ns"] = np.where(n_trig > 0, (resid * trig).sum(1) / np.maximum(n_trig, 1), np.nan)
    logs = np.where(trig, np.log10(np.where(trig, s, 1.0)), np.nan)
    for lo, hi in zip(R_BINS[:-1], R_BINS[1:]):
        m = (r >= lo) & (r < hi) & trig
        with warnings.catch_warnings():  # events without a station in the bin: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            col = np.nanmedian(np.where(m, logs, np.nan), axis=1) if m.any() else np.full(n, np.nan)
        feats[f"ldf_log10S_r{int(lo)}_{int(hi)}"] = col
    return feats


def radial_profiles(signal, time, triggered, cond, xyz, p: ArrayParams = ArrayParams(), bins=R_BINS):
    """Over all events, per bin of distance to the axis (true geometry): the bin centres, the
    median log10 S of triggered stations (lateral distribution) and its error, their median
    time after the plane front through the core (ns) and its error (1.2533 sd / sqrt(n))."""
    n = len(signal)
    s = np.asarray(signal, np.float64).reshape(n, -1)
    t = np.asarray(time, np.float64).reshape(n, -1)
    trig = np.asarray(triggered).reshape(n, -1).astype(bool)
    _, r, along, _ = geometry(cond, xyz, p)
    resid = t + along / C_M_PER_NS
    hit = trig & (s > 0)
    bins = np.asarray(bins, np.float64)
    ldf, ldf_err = profile_stats(r[hit], np.log10(s[hit]), bins, "median")
    front, front_err = profile_stats(r[trig], resid[trig], bins, "median")
    return 0.5 * (bins[:-1] + bins[1:]), ldf, ldf_err, front, front_err


STATION_BINS = ((3, 5), (6, 7), (8, 10), (11, 15), (16, 25), (26, 81))


def angular_resolution(angle_deg, n_triggered, bins=STATION_BINS) -> dict[str, float]:
    """68% quantile of the space angle per station-count bin (Auger's definition)."""
    out = {}
    for lo, hi in bins:
        m = (n_triggered >= lo) & (n_triggered <= hi) & np.isfinite(angle_deg)
        out[f"{lo}-{hi}"] = float(np.quantile(angle_deg[m], 0.68)) if m.sum() >= 10 else math.nan
    return out


__all__ = ["event_features", "radial_profiles", "angular_resolution", "plane_fit",
           "nominal_s1000", "geometry"]


# -- traces ---------------------------------------------------------------------------------------
TRACE_R_BINS = np.array([0, 500, 750, 1000, 1250, 1500, 2000, 3000.0])
ZENITH_BINS_DEG = (0.0, 30.0, 45.0, 61.0)


def trace_stations(traces, triggered, cond: dict, xyz, p: ArrayParams = ArrayParams(), bin_ns: float = 25.0,
                   muon_traces=None) -> dict[str, np.ndarray]:
    """One row per triggered station with a trace: its event, distance to the axis r (true
    geometry), zenith, ln A, integral, rise time t10-50 and fall time t50-90 (ns), area over
    peak (integral / largest bin, in bins), the trace normalised to unit sum, and the muon
    fraction (NaN without the muon trace)."""
    n = len(traces)
    tr = np.asarray(traces, np.float64).reshape(n, -1, traces.shape[-1])
    _, r, _, _ = geometry(cond, xyz, p)
    total = tr.sum(-1)
    on = np.asarray(triggered).reshape(n, -1).astype(bool) & (total > 0)
    ev, st = np.nonzero(on)
    t = tr[ev, st]
    rise, fall = rise_fall_ns(t, bin_ns)
    mass = np.asarray(cond["mass_A"], np.float64) if "mass_A" in cond else np.ones(n)
    mu = (np.asarray(muon_traces, np.float64).reshape(n, -1, traces.shape[-1])[ev, st].sum(-1) / total[ev, st]
          if muon_traces is not None else np.full(len(ev), np.nan))
    return {"event": ev, "r": r[ev, st], "zenith_deg": np.degrees(np.asarray(cond["zenith_rad"]))[ev],
            "ln_a": np.log(mass)[ev], "integral": total[ev, st], "rise_ns": rise, "fall_ns": fall,
            "area_over_peak": total[ev, st] / np.maximum(t.max(-1), 1e-12), "shape": t / total[ev, st][:, None],
            "muon_fraction": mu}


def trace_event_features(stations: dict, n: int) -> dict[str, np.ndarray]:
    """Per event: the signal-weighted mean rise time, fall time and area over peak of its
    stations, and the rise time of the station closest to 1000 m (NaN without stations)."""
    ev, w = stations["event"], stations["integral"]
    out = {}
    wsum = np.bincount(ev, w, n)
    for key in ("rise_ns", "fall_ns", "area_over_peak"):
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"trace_{key}_weighted"] = np.bincount(ev, w * stations[key], n) / wsum
    near = np.full(n, np.nan)
    d = np.abs(stations["r"] - 1000.0)
    idx = np.nonzero(d < 250.0)[0]
    order = idx[np.lexsort((d[idx], ev[idx]))]  # by event, the closest first
    first = np.r_[True, ev[order][1:] != ev[order][:-1]] if len(order) else np.zeros(0, bool)
    near[ev[order][first]] = stations["rise_ns"][order][first]
    out["trace_rise_ns_near_1000m"] = near
    return out
