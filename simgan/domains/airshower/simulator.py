"""Reference surface-detector simulator: 9x9 footprints of ultra-high-energy air showers.

A fast parametric stand-in for CORSIKA + detector simulation, calibrated to Pierre Auger
conventions (1500 m triangular grid at 1400 m altitude, signals in VEM): it makes training
and test data for the quickstart, the tests and the benchmarks. It is not a replacement for
a full simulation; users bring their CORSIKA/Offline footprints as HDF5 or ROOT.

Vectorised over events with numpy; each shard of `shard_events` is seeded by (seed, shard
index), so results do not depend on how the shards are spread over processes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from simgan.domains.airshower.traces import TankParams, station_traces

GRID = 9
C_M_PER_NS = 0.299792458
MASSES = (1, 4, 14, 56)


@dataclass(frozen=True)
class ArrayParams:
    """Detector and physics parameters (recorded in every file)."""

    spacing_m: float = 1500.0
    altitude_m: float = 1400.0
    trigger_vem: float = 3.0
    lg_e_min: float = 18.5
    lg_e_max: float = 20.0
    cos2_theta_min: float = 0.25  # theta <= 60 deg
    core_radius_m: float = 750.0
    mass_A: int = 1  # 1, 4, 14 or 56; 0 draws each event's mass uniformly from those
    xmax_p_at_18: float = 806.1  # EPOS-LHC proton <Xmax> at 10^18 eV, g/cm^2
    xmax_p_rate: float = 55.6  # g/cm^2 per decade
    xmax_p_sigma: float = 60.0
    s38_e0_ev: float = 1.86e17  # Auger calibration E = A S38^B
    s38_b: float = 1.031
    scale_height_m: float = 8236.0
    ground_depth_gcm2: float = 1033.8
    # particle-level station simulation (traces.py): signal, time and trigger from FADC traces
    traces: bool = False
    trace_components: bool = False  # also keep the muon and EM traces (without noise)

    def to_dict(self) -> dict:
        return asdict(self)


def station_xyz(p: ArrayParams = ArrayParams()) -> np.ndarray:
    """(9, 9, 3) station positions in m; z is the altitude. Station (i, j):
    x = d (i - 4 + ((j - 4) mod 2) / 2), y = d (j - 4) sqrt(3) / 2."""
    i, j = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    x = p.spacing_m * (i - 4 + np.mod(j - 4, 2) / 2)
    y = p.spacing_m * (j - 4) * math.sqrt(3) / 2
    return np.stack([x, y, np.full_like(x, p.altitude_m, dtype=np.float64)], -1)


def sample_conditions(n: int, rng: np.random.Generator, p: ArrayParams = ArrayParams()) -> dict[str, np.ndarray]:
    """lgE ~ U[18.5, 20], cos^2 theta ~ U[0.25, 1], phi ~ U[0, 2 pi), core uniform in a disc."""
    lg_e = rng.uniform(p.lg_e_min, p.lg_e_max, n)
    theta = np.arccos(np.sqrt(rng.uniform(p.cos2_theta_min, 1.0, n)))
    phi = rng.uniform(0.0, 2 * math.pi, n)
    rad = p.core_radius_m * np.sqrt(rng.uniform(0.0, 1.0, n))
    ang = rng.uniform(0.0, 2 * math.pi, n)
    mass = (np.full(n, float(p.mass_A)) if p.mass_A else rng.choice(np.array(MASSES, float), n))
    return {"log10_energy_eV": lg_e, "zenith_rad": theta, "azimuth_rad": phi, "core_x_m": rad * np.cos(ang),
            "core_y_m": rad * np.sin(ang), "mass_A": mass}


def mean_xmax_proton(lg_e, p: ArrayParams = ArrayParams()):
    return p.xmax_p_at_18 + p.xmax_p_rate * (np.asarray(lg_e) - 18.0)


def sample_xmax(lg_e: np.ndarray, mass: np.ndarray, rng: np.random.Generator, p: ArrayParams = ArrayParams()):
    """Gumbel-distributed Xmax (tail to deep showers): the proton mean of EPOS-LHC, shallower by
    25 g/cm^2 per unit of ln A, the spread 60 A^-0.27 g/cm^2 (60 for protons, 20 for iron)."""
    mean = mean_xmax_proton(lg_e, p) - 25.0 * np.log(mass)
    sigma = p.xmax_p_sigma * mass ** -0.27
    beta = sigma * math.sqrt(6) / math.pi  # Gumbel scale for this standard deviation
    return rng.gumbel(mean - np.euler_gamma * beta, beta)


def s1000_and_beta(lg_e, theta, xmax, mass, p: ArrayParams = ArrayParams()):
    """Nominal S1000 (VEM) and LDF slope: the inverted Auger calibration, the constant-intensity
    attenuation, Xmax and muon-content terms (delta correlates the whole event's fluctuations)."""
    delta = (xmax - mean_xmax_proton(lg_e, p)) / 100.0
    s38 = (10.0 ** lg_e / p.s38_e0_ev) ** (1.0 / p.s38_b)
    x = np.cos(theta) ** 2 - math.cos(math.radians(38.0)) ** 2
    f_cic = 1 + 0.95 * x - 1.4 * x**2 - 1.1 * x**3
    sec = 1.0 / np.cos(theta)
    f_mu = np.minimum(0.4 + 0.3 * (sec - 1), 0.9)
    s1000 = s38 * f_cic * np.exp(0.1 * delta) * (1 + f_mu * (mass**0.1 - 1))
    beta = -2.3 + 0.6 * (sec - 1) - 0.1 * delta
    return s1000, beta


def ldf(r, s1000, beta):
    """S(r) = S1000 (r'/1000)^beta ((r' + 700)/1700)^beta, r' = max(r, 150 m)."""
    rp = np.maximum(r, 150.0)
    return s1000 * (rp / 1000.0) ** beta * ((rp + 700.0) / 1700.0) ** beta


def axis(theta, phi) -> np.ndarray:
    """(N, 3) unit vectors pointing back along the shower axis (to where it came from)."""
    st = np.sin(theta)
    return np.stack([st * np.cos(phi), st * np.sin(phi), np.cos(theta)], -1)


def shower_plane_geometry(xyz: np.ndarray, core_xy: np.ndarray, theta, phi, altitude: float):
    """Per event and station: the vector from the core (N, S, 3), the distance to the axis r
    (N, S) and the position along it (N, S)."""
    core = np.concatenate([core_xy, np.full((len(core_xy), 1), altitude)], 1)
    d = xyz.reshape(1, -1, 3) - core[:, None, :]
    u = axis(theta, phi)
    along = np.einsum("nsk,nk->ns", d, u)
    r = np.sqrt(np.maximum(np.einsum("nsk,nsk->ns", d, d) - along**2, 0.0))
    return d, r, along, u


def simulate_events(cond: dict[str, np.ndarray], rng: np.random.Generator, p: ArrayParams = ArrayParams()) -> dict:
    """Footprints for the given conditions: signal (N, 9, 9) VEM, time (N, 9, 9) ns, triggered
    (N, 9, 9) uint8, and the truth (Xmax, S1000, beta)."""
    lg_e, theta, phi = cond["log10_energy_eV"], cond["zenith_rad"], cond["azimuth_rad"]
    mass = cond["mass_A"]
    n = len(lg_e)
    xyz = station_xyz(p)
    xmax = sample_xmax(lg_e, mass, rng, p)
    s1000, beta = s1000_and_beta(lg_e, theta, xmax, mass, p)
    d, r, _, u = shower_plane_geometry(xyz, np.stack([cond["core_x_m"], cond["core_y_m"]], 1), theta, phi,
                                       p.altitude_m)
    s_mean = ldf(r, s1000[:, None], beta[:, None])
    # spherical front from a virtual origin on the axis at the altitude h(Xmax / 2)
    h = -p.scale_height_m * np.log(0.5 * xmax * np.cos(theta) / p.ground_depth_gcm2)
    rc = (h - p.altitude_m) / np.cos(theta)  # h is an altitude; the array is at p.altitude_m
    to_origin = d - rc[:, None, None] * u[:, None, :]
    t = (np.linalg.norm(to_origin, axis=-1) - rc[:, None]) / C_M_PER_NS
    shape = (n, GRID, GRID)
    truth = {"xmax_gcm2": xmax, "s1000_vem": s1000, "beta": beta}
    if p.traces:
        return _from_traces(s_mean, r, t, theta, xmax, mass, rng, p, shape, truth)
    f = (0.32 + 0.42 / np.cos(theta))[:, None]
    s_obs = rng.gamma(s_mean / f**2, f**2)
    trig = s_obs >= p.trigger_vem
    t = t + timing_sigma(s_obs, r) * rng.standard_normal(t.shape)
    return {"signal": np.where(trig, s_obs, 0.0).astype(np.float32).reshape(shape),
            "time": np.where(trig, t, 0.0).astype(np.float32).reshape(shape),
            "triggered": trig.astype(np.uint8).reshape(shape), "truth": truth}


TRACE_CHUNK = 128  # events per call of the particle-level simulation (bounds its memory)


def tank_params(p: ArrayParams = ArrayParams()) -> TankParams:
    return TankParams(threshold_vem=p.trigger_vem)


def _from_traces(s_mean, r, t_front, theta, xmax, mass, rng, p: ArrayParams, shape, truth) -> dict:
    """Signal, start time and trigger from each station's particle-level trace (traces.py)."""
    tank = tank_params(p)
    depth = p.ground_depth_gcm2 * math.exp(-p.altitude_m / p.scale_height_m)  # vertical depth of the array
    parts = [station_traces(s_mean[i:i + TRACE_CHUNK], r[i:i + TRACE_CHUNK], t_front[i:i + TRACE_CHUNK],
                            theta[i:i + TRACE_CHUNK], xmax[i:i + TRACE_CHUNK], mass[i:i + TRACE_CHUNK], rng, tank,
                            depth, p.trace_components) for i in range(0, len(s_mean), TRACE_CHUNK)]
    res = {k: np.concatenate([q[k] for q in parts]) for k in parts[0]}
    out = {"signal": res["signal"].reshape(shape), "time": res["time"].reshape(shape),
           "triggered": res["triggered"].reshape(shape), "traces": res["trace"].reshape(*shape, tank.n_bins),
           "truth": {**truth, "muons": res["n_muons"].reshape(shape).sum((1, 2)).astype(np.float64)}}
    if p.trace_components:
        out["trace_components"] = {"muon": res["muon_trace"].reshape(*shape, tank.n_bins),
                                   "em": res["em_trace"].reshape(*shape, tank.n_bins)}
    return out


def timing_sigma(signal, r):
    """The simulator's time jitter (ns) for a station signal (VEM) at axis distance r (m)."""
    nn = np.maximum(signal, 1.0)
    t50 = 300.0 * np.asarray(r) / 1000.0
    return np.sqrt(15.0**2 + (2 * t50 / nn) ** 2 * (nn - 1) / (nn + 1))


def shard_seed(seed: int, shard: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), int(shard), 0x5A1])


def simulate(n: int, seed: int, p: ArrayParams = ArrayParams(), shard_events: int = 10000, progress: bool = False,
             shards: range | None = None) -> dict:
    """n events in shards of `shard_events` (shard k seeded by (seed, k)); returns the arrays
    and conditions of the shards in `shards` (default all)."""
    count = max(1, math.ceil(n / shard_events))
    shards = range(count) if shards is None else shards
    parts = []
    sizes = {k: max(0, min(shard_events, n - k * shard_events)) for k in shards}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(sizes.values()), desc="simulate air showers", unit="event")
    for k in shards:
        m = sizes[k]
        if m <= 0:
            continue
        rng = np.random.default_rng(shard_seed(seed, k))
        cond = sample_conditions(m, rng, p)
        ev = simulate_events(cond, rng, p)
        parts.append((cond, ev))
        if bar is not None:
            bar.update(m)
    if bar is not None:
        bar.close()
    if not parts:
        raise ValueError("no events in the requested shards")
    cond = {k: np.concatenate([c[k] for c, _ in parts]) for k in parts[0][0]}
    out = {k: np.concatenate([e[k] for _, e in parts]) for k in ("signal", "time", "triggered", "traces")
           if k in parts[0][1]}
    if "trace_components" in parts[0][1]:
        out["trace_components"] = {k: np.concatenate([e["trace_components"][k] for _, e in parts])
                                   for k in parts[0][1]["trace_components"]}
    out["truth"] = {k: np.concatenate([e["truth"][k] for _, e in parts]) for k in parts[0][1]["truth"]}
    out["conditions"] = cond
    return out
