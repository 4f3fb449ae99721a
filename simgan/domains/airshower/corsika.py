"""CORSIKA 7 ground-particle files into footprints with traces (`simgan convert --format corsika`).

CORSIKA is the physicist's real (slow) air-shower simulator; its particle output ("DAT"
files, thinned or not) lists every particle reaching the observation level. They are read
with corsikaio, the field's reader. Each shower is placed on the 9x9 array at a core position
(drawn in the disc of the simulator's core radius, or given), and each station receives the
particles of a sampling region around it, the usual resampling of thinned showers (as in the
Pierre Auger Offline framework): particles within +-10% of the station's distance to the axis
(at least 10 m) and a matching azimuthal sector in the shower plane, each standing for its
thinning weight, reach the tank Poisson(w A_tank(theta) / A_region) times, where A_tank is the
tank's area seen along the particle's direction. Each particle that reaches the tank goes
through the same tank simulation as the reference simulator's (traces.tank_response):

- muons and charged hadrons: a straight track (chord of the cylinder along the particle's
  direction, traces.chord_vem); a muon that stops in the water deposits its kinetic energy
  (2 MeV/cm, 240 MeV = 1 VEM), no more than its chord;
- electrons, positrons and photons: a calorimetric approximation: the kinetic energy over
  240 MeV, times the shower containment 1 - exp(-L / X0) along the chord L (X0 = 36.1 cm of
  water); a photon first converts with probability 1 - exp(-7 L / 9 X0);
- arrival time: the particle's own time behind the plane shower front, moved to the station
  on that plane, on a clock whose zero is the front crossing the core (the 5% quantile of the
  plane-front delays within 200 m of the axis).

Coordinates: CORSIKA's x points to (magnetic) north and y to the west; they are the array's
x and y. CORSIKA's azimuth is the direction the primary moves to; the footprint's azimuth is
the direction the shower comes from (pi more). The file's observation level must be the
array's altitude.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simgan.domains.airshower.io import Footprints
from simgan.domains.airshower.simulator import C_M_PER_NS, ArrayParams, axis, station_xyz, tank_params
from simgan.domains.airshower.traces import TankParams, chord_vem, projected_area_m2, tank_response
from simgan.errors import SimganError
from simgan.extras import require

MUONS = (5, 6)
EM = (1, 2, 3)  # photon, positron, electron
CHARGED_HADRONS = (8, 9, 11, 12, 14, 15)  # pi+-, K+-, p, pbar
MASS_GEV = {1: 0.0, 2: 0.000511, 3: 0.000511, 5: 0.10566, 6: 0.10566, 8: 0.13957, 9: 0.13957, 11: 0.49368,
            12: 0.49368, 14: 0.93827, 15: 0.93827}
VEM_GEV = 0.240  # a vertical through-going muon in 1.2 m of water at 2 MeV/cm
DEDX_GEV_PER_M = 0.2
X0_WATER_M = 0.361
WORDS = {False: 273, True: 312}  # words per sub-block, without and with thinning
SUBBLOCKS = 21  # sub-blocks per Fortran record


@dataclass
class Shower:
    """One CORSIKA event: the primary and its particles at the observation level (metres, ns)."""

    particle_id: int
    energy_gev: float
    zenith_rad: float
    azimuth_rad: float  # CORSIKA's: the direction the primary moves to
    observation_height_m: float
    xmax_gcm2: float = math.nan
    particles: dict[str, np.ndarray] = field(default_factory=dict)  # id, px, py, pz_down, x_m, y_m, t_ns, weight


def primary_mass(particle_id: int, where: str) -> float:
    """The mass number of a CORSIKA primary: 14 proton, A x 100 + Z a nucleus."""
    if particle_id == 14:
        return 1.0
    if particle_id >= 200:
        return float(particle_id // 100)
    raise SimganError(f"{where}: primary particle id {particle_id} is not a proton or a nucleus (CORSIKA ids: 14 "
                      "proton, A x 100 + Z for nuclei, e.g. 5626 iron)")


def _is_thinned(path: Path) -> bool:
    """From the first Fortran record's length (21 sub-blocks of 273 or 312 words), or for an
    unblocked file from where the second sub-block (EVTH) starts."""
    with open(path, "rb") as f:
        head = f.read(4 + 312 * 4 + 4)
    if len(head) < 8:
        raise SimganError(f"{path}: not a CORSIKA particle file (too short)")
    if head[:4] == b"RUNH":
        return head[312 * 4:312 * 4 + 4] == b"EVTH"
    size = int(np.frombuffer(head[:4], np.int32)[0])
    if size in (SUBBLOCKS * 4 * WORDS[False], SUBBLOCKS * 4 * WORDS[True]) and head[4:8] == b"RUNH":
        return size == SUBBLOCKS * 4 * WORDS[True]
    raise SimganError(f"{path}: not a CORSIKA particle file (it starts with neither a RUNH sub-block nor a Fortran "
                      "record of 21 sub-blocks holding one)")


def read_particle_file(path) -> list[Shower]:
    """Every event of a CORSIKA 7 particle file (thinned or not; plain, gzip or zstd)."""
    corsikaio = require("corsikaio")
    path = Path(path)
    if not path.is_file():
        raise SimganError(f"{path}: no such CORSIKA file")
    thin = _is_thinned(path)
    showers = []
    try:
        with corsikaio.CorsikaParticleFile(path, thinning=thin) as f:
            for ev in f:
                h, p = ev.header, ev.particles
                if int(h["n_observation_levels"]) < 1:
                    raise SimganError(f"{path}: event {int(h['event_number'])}: no observation level")
                desc = np.asarray(p["particle_description"], np.float64)
                keep = desc > 0
                pid = (desc[keep] // 1000).astype(np.int64)
                weight = (np.asarray(p["thinning_weight"], np.float64)[keep] if thin else np.ones(int(keep.sum())))
                xmax = math.nan
                fit = ev.end["longitudinal_fit_parameters"] if "longitudinal_fit_parameters" in ev.end.dtype.names else None
                if fit is not None and np.isfinite(fit[2]) and fit[2] > 0:
                    xmax = float(fit[2])
                showers.append(Shower(
                    int(h["particle_id"]), float(h["total_energy"]), float(h["zenith"]), float(h["azimuth"]),
                    float(h["observation_height"][0]) / 100.0, xmax,
                    {"id": pid, "px": np.asarray(p["px"][keep], np.float64), "py": np.asarray(p["py"][keep], np.float64),
                     "pz_down": np.asarray(p["pz"][keep], np.float64),
                     "x_m": np.asarray(p["x"][keep], np.float64) / 100.0,
                     "y_m": np.asarray(p["y"][keep], np.float64) / 100.0,
                     "t_ns": np.asarray(p["t"][keep], np.float64), "weight": weight}))
    except (OSError, ValueError, KeyError) as exc:
        raise SimganError(f"{path}: not a readable CORSIKA particle file ({str(exc).splitlines()[0][:200]})") from None
    if not showers:
        raise SimganError(f"{path}: the CORSIKA file holds no events")
    return showers


# -- writing (tests and exchange: the format of the CORSIKA 7 user's guide) -------------------------
def _tag(text: bytes) -> float:
    return float(np.frombuffer(text, np.float32)[0])


def write_particle_file(path, showers: list[Shower], thinning: bool = False, version: float = 7.7) -> Path:
    """A CORSIKA 7 particle file: Fortran records of 21 sub-blocks (RUNH, per event EVTH, the
    particle sub-blocks of 39 particles, EVTE, then RUNE), 273 words each (312 thinned)."""
    n_words = WORDS[thinning]
    per = 8 if thinning else 7
    blocks = []

    def block(tag: bytes, values: dict[int, float]):
        b = np.zeros(n_words, np.float32)
        b[0] = _tag(tag)
        for word, v in values.items():
            b[word - 1] = v
        blocks.append(b)

    height = showers[0].observation_height_m * 100.0 if showers else 0.0
    block(b"RUNH", {2: 1, 3: 261204, 4: version, 5: 1, 6: height})
    for i, s in enumerate(showers, 1):
        pz = math.cos(s.zenith_rad) * s.energy_gev
        block(b"EVTH", {2: i, 3: s.particle_id, 4: s.energy_gev, 8: math.sin(s.zenith_rad) * math.cos(s.azimuth_rad) * s.energy_gev,
                        9: math.sin(s.zenith_rad) * math.sin(s.azimuth_rad) * s.energy_gev, 10: pz,
                        11: s.zenith_rad, 12: s.azimuth_rad, 44: 1, 46: version, 47: 1, 48: s.observation_height_m * 100.0})
        p = s.particles
        n = len(p.get("id", ()))
        rows = np.zeros((n, per), np.float32)
        if n:
            rows[:, 0] = np.asarray(p["id"]) * 1000 + 1  # observation level 1
            rows[:, 1], rows[:, 2], rows[:, 3] = p["px"], p["py"], p["pz_down"]
            rows[:, 4], rows[:, 5], rows[:, 6] = np.asarray(p["x_m"]) * 100.0, np.asarray(p["y_m"]) * 100.0, p["t_ns"]
            if thinning:
                rows[:, 7] = p.get("weight", np.ones(n))
        per_block = n_words // per
        for lo in range(0, n, per_block):
            b = np.zeros(n_words, np.float32)
            chunk = rows[lo:lo + per_block].ravel()
            b[:chunk.size] = chunk
            blocks.append(b)
        end = {2: i, 7: n}
        if math.isfinite(s.xmax_gcm2):
            end[258] = s.xmax_gcm2  # the longitudinal fit's Xmax
        block(b"EVTE", end)
    block(b"RUNE", {2: 1, 3: len(showers)})
    while len(blocks) % SUBBLOCKS:
        blocks.append(np.zeros(n_words, np.float32))
    path = Path(path)
    size = np.array([SUBBLOCKS * n_words * 4], np.int32).tobytes()
    with open(path, "wb") as f:
        for r in range(0, len(blocks), SUBBLOCKS):
            f.write(size + np.concatenate(blocks[r:r + SUBBLOCKS]).tobytes() + size)
    return path


# -- particles into the stations' tanks ---------------------------------------------------------------
def _shower_plane(vectors: np.ndarray, u: np.ndarray):
    """Distance to the axis and azimuth about it, in a fixed basis of the shower plane."""
    e1 = np.cross(u, [0.0, 0.0, 1.0])
    e1 = e1 / np.linalg.norm(e1) if np.linalg.norm(e1) > 1e-9 else np.array([1.0, 0.0, 0.0])
    e2 = np.cross(u, e1)
    a, b = vectors @ e1, vectors @ e2
    return np.hypot(a, b), np.arctan2(b, a)


def _deposits(pid, e_kin, chord, rng) -> tuple[np.ndarray, np.ndarray]:
    """Signal (VEM) of each particle that reaches the tank and whether it is a muon."""
    is_mu = np.isin(pid, MUONS)
    track = np.isin(pid, MUONS + CHARGED_HADRONS)
    height = TankParams().height_m
    length = chord * height
    sig = np.zeros(len(pid))
    sig[track] = np.minimum(length[track], e_kin[track] / DEDX_GEV_PER_M) / height
    em = np.isin(pid, EM)
    contained = 1.0 - np.exp(-length / X0_WATER_M)
    converts = (pid != 1) | (rng.uniform(size=len(pid)) < 1.0 - np.exp(-7.0 / 9.0 * length / X0_WATER_M))
    sig[em] = np.where(converts[em], e_kin[em] / VEM_GEV * contained[em], 0.0)
    return sig, is_mu


def shower_particles(shower: Shower, p: ArrayParams, tank: TankParams, where: str = "CORSIKA") -> dict:
    """What every core position of a shower shares: its axis, and per particle its place in the
    shower plane, its delay behind the plane front through the core, its direction, kinetic
    energy and the tank area it sees."""
    if abs(shower.observation_height_m - p.altitude_m) > 1.0:
        raise SimganError(f"{where}: the observation level is at {shower.observation_height_m:.1f} m, the array at "
                          f"{p.altitude_m:.1f} m (domain.altitude_m); simulate with the array's altitude")
    theta, phi = shower.zenith_rad, (shower.azimuth_rad + math.pi) % (2 * math.pi)
    u = axis(np.array([theta]), np.array([phi]))[0]
    q = shower.particles
    pos = np.stack([q["x_m"], q["y_m"], np.zeros(len(q["x_m"]))], 1)
    r_p, psi_p = _shower_plane(pos, u)
    reduced = q["t_ns"] + (pos @ u) / C_M_PER_NS  # delay behind the plane front through the core
    near = r_p < 200.0
    t0 = float(np.quantile(reduced[near] if near.sum() >= 5 else reduced, 0.05)) if len(reduced) else 0.0
    p_tot = np.sqrt(q["px"] ** 2 + q["py"] ** 2 + q["pz_down"] ** 2)
    cos_p = np.clip(q["pz_down"] / np.maximum(p_tot, 1e-12), 1e-3, 1.0)
    theta_p = np.arccos(cos_p)
    kinds, inverse = np.unique(q["id"], return_inverse=True)
    mass = np.array([MASS_GEV.get(int(i), 0.0) for i in kinds])[inverse] if len(kinds) else np.zeros(0)
    e_kin = np.sqrt(p_tot ** 2 + mass ** 2) - mass
    return {"u": u, "id": q["id"], "weight": q["weight"], "r": r_p, "psi": psi_p, "delay": reduced - t0,
            "theta": theta_p, "e_kin": e_kin, "area": projected_area_m2(theta_p, tank)}


def shower_footprint(sp: dict, core_xy, p: ArrayParams, tank: TankParams, rng: np.random.Generator) -> dict:
    """The 81 stations' particles and traces of one shower (`shower_particles`) with its core at
    `core_xy`."""
    u, r_p, psi_p, theta_p = sp["u"], sp["r"], sp["psi"], sp["theta"]
    xyz = station_xyz(p).reshape(-1, 3)
    rel = xyz - np.array([core_xy[0], core_xy[1], p.altitude_m])
    r_s, psi_s = _shower_plane(rel, u)
    t_plane_s = -(rel @ u) / C_M_PER_NS
    st_idx, copies_t, copies_s, copies_mu = [], [], [], []
    for s in range(len(xyz)):
        half = max(0.1 * r_s[s], 10.0)
        if r_s[s] <= half:  # a disc about the axis
            sel = r_p <= r_s[s] + half
            region = math.pi * (r_s[s] + half) ** 2
        else:
            dpsi = min(math.pi, half / r_s[s])
            dang = np.abs((psi_p - psi_s[s] + math.pi) % (2 * math.pi) - math.pi)
            sel = (np.abs(r_p - r_s[s]) <= half) & (dang <= dpsi)
            region = 4 * dpsi * r_s[s] * half
        idx = np.nonzero(sel)[0]
        if not idx.size:
            continue
        k = rng.poisson(sp["weight"][idx] * sp["area"][idx] / region)
        idx = np.repeat(idx, k)
        if not idx.size:
            continue
        chord = chord_vem(theta_p[idx], rng, tank)
        sig, is_mu = _deposits(sp["id"][idx], sp["e_kin"][idx], chord, rng)
        lit = sig > 0  # (neutrons, unconverted photons: no light, no say in the trace's window)
        idx, sig, is_mu = idx[lit], sig[lit], is_mu[lit]
        st_idx.append(np.full(idx.size, s))
        copies_t.append(sp["delay"][idx] + t_plane_s[s])
        copies_s.append(sig)
        copies_mu.append(is_mu)
    n_st = len(xyz)
    if st_idx:
        pair, t, sig, mu = (np.concatenate(a) for a in (st_idx, copies_t, copies_s, copies_mu))
    else:
        pair, t, sig, mu = np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0, bool)
    first = np.full(n_st, np.inf)
    np.minimum.at(first, pair, t)
    window = np.where(np.isfinite(first), first - tank.pre_front_ns, 0.0)
    res = tank_response(pair, t - window[pair], sig, mu, n_st, rng, tank)
    trig = res["triggered"] & np.isfinite(first)
    res["time"] = np.where(trig, window + res["start_ns"], 0.0)
    res["triggered"] = trig
    return res


def corsika_footprints(path, p: ArrayParams = ArrayParams(), seed: int = 0, cores: int = 1,
                       core_xy: tuple[float, float] | None = None):
    """Footprints (with traces and their muon and EM parts) of every shower of a CORSIKA file,
    each placed at `cores` core positions (drawn uniformly in the disc of p.core_radius_m, or
    `core_xy`)."""
    if cores < 1:
        raise SimganError(f"--cores {cores}: expected at least 1 core position per shower")
    path = Path(path)
    showers = read_particle_file(path)
    tank = tank_params(p)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC05]))
    rows, cond = [], {k: [] for k in ("log10_energy_eV", "zenith_rad", "azimuth_rad", "core_x_m", "core_y_m",
                                      "mass_A")}
    xmax = []
    for i, s in enumerate(showers):
        where = f"{path}: event {i + 1}"
        mass = primary_mass(s.particle_id, where)
        sp = shower_particles(s, p, tank, where)
        for _ in range(cores):
            if core_xy is None:
                rad, ang = p.core_radius_m * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
                core = (rad * math.cos(ang), rad * math.sin(ang))
            else:
                core = (float(core_xy[0]), float(core_xy[1]))
            rows.append(shower_footprint(sp, core, p, tank, rng))
            cond["log10_energy_eV"].append(math.log10(s.energy_gev * 1e9))
            cond["zenith_rad"].append(s.zenith_rad)
            cond["azimuth_rad"].append((s.azimuth_rad + math.pi) % (2 * math.pi))
            cond["core_x_m"].append(core[0])
            cond["core_y_m"].append(core[1])
            cond["mass_A"].append(mass)
            xmax.append(s.xmax_gcm2)
    n, g, nb = len(rows), int(round(math.sqrt(len(rows[0]["signal"])))), tank.n_bins

    def grid(key, dtype=np.float32, per_bin=False):
        arr = np.stack([np.where(r["triggered"][:, None] if per_bin else r["triggered"], r[key], 0) for r in rows])
        return arr.reshape((n, g, g, nb) if per_bin else (n, g, g)).astype(dtype)

    truth = {"xmax_gcm2": np.asarray(xmax, np.float64)} if np.isfinite(xmax).all() else {}
    attrs = {"spacing_m": p.spacing_m, "altitude_m": p.altitude_m, "trigger_vem": p.trigger_vem, "seed": int(seed),
             "source": str(path), "simulator": "CORSIKA particles through the simgan tank simulation",
             "trace_bin_ns": tank.bin_ns, "trace_bins": nb, "tank": json.dumps(tank.to_dict(), sort_keys=True),
             "cores_per_shower": cores}
    return Footprints(grid("signal"), grid("time"), grid("triggered", np.uint8).astype(bool),
                      {k: np.asarray(v, np.float64) for k, v in cond.items()}, station_xyz(p).astype(np.float32),
                      truth, attrs, grid("trace", per_bin=True),
                      {"muon": grid("muon_trace", per_bin=True), "em": grid("em_trace", per_bin=True)})
