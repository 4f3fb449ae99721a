"""Particle-level water-Cherenkov station simulation: time traces from particles.

Per station and event, from the footprint model's expected signal S (VEM,
`simulator.ldf`):

- S is split into muons and electromagnetic (EM) particles. The muon share at 1000 m is the
  footprint model's f_mu(theta) (the one in its S1000); it rises with distance as the muon
  and EM lateral distributions differ, S_mu / S_em ~ r^1.4 (the exponents -4.7 and -6.1 of
  the toy simulation of Erdmann, Glombitza and Walz, "A deep learning-based reconstruction of
  cosmic ray-induced air showers", Astropart. Phys. 97 (2018) 46), and the muon signal grows as
  A^0.1 with the primary's mass number (the same factor as the footprint model's S1000).
- Muons: N_mu ~ Poisson(S_mu / <L>), each with the chord length L of a straight track through
  the tank (radius 1.8 m, height 1.2 m) along the shower axis, sampled uniformly over the
  tank's projected area; one vertical through-going muon is 1 VEM, and the mean chord is
  pi R^2 h / (pi R^2 cos theta + 2 R h sin theta).
- EM particles (electrons and photons of about 10 MeV): N_em ~ Poisson(S_em / 0.05 VEM), each
  depositing an exponentially distributed signal of mean 0.05 VEM.
- Arrival time: the shower front's time at the station plus a log-normal delay per component
  (median 50 + 140 (r/750 m)^1.4 (1 - 0.2 dX/1000) ns for muons, 80 + 200 (r/750 m)^1.4
  (1 - 0.1 dX/1000) ns for EM particles, the EM delays shifted later; sigma_ln 0.7; dX the
  slant depth between the shower maximum and the ground, g/cm^2: the 2018 toy simulation's
  parameterisation). Near the core the rise time is a few tens of ns; it grows with distance,
  falls with zenith (larger dX) and is longer for deeper showers (smaller dX).
- Light: each particle gives Poisson(95 s) photoelectrons (3 PMTs summed, s its signal in
  VEM), each emitted after an exponential delay of tau = 65 ns (the tank's light decay); the
  photoelectrons are counted in FADC bins of 25 ns from 50 ns before the front. Summing
  Poisson counts exactly, the photoelectrons in a bin are Poisson with mean 95 times the sum
  of each particle's signal times the fraction of its light that falls in that bin, which is
  what is drawn (no loop over photoelectrons).
- Baseline noise: Gaussian per bin (sigma 0.002 VEM), the trace clipped at 0.
- Trigger: integral >= 3 VEM, or time over threshold: at least 13 bins above 0.2 VEM_peak
  (VEM_peak: the mean largest bin of a vertical muon). The start time is the time at which
  the cumulative trace reaches 10% of its integral; the station's signal is the integral.
  Stations that do not trigger are silent: trace, signal and time 0.

Thinning: where a station would get more than `max_particles` particles of one component,
`max_particles` are simulated, each standing for w = N / max_particles particles (as
CORSIKA's thinning does): an EM group deposits Gamma(w, 0.05 VEM) (the exact sum of w
exponential deposits), a muon group w <L> + sqrt(w) (L - <L>) (the sum's mean and variance);
a group's particles share one arrival time.

Everything is vectorised over the particles of a whole chunk of events with numpy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class TankParams:
    """The water-Cherenkov tank, its light, the FADC and the trigger (recorded in every file)."""

    radius_m: float = 1.8
    height_m: float = 1.2
    pe_per_vem: float = 95.0
    decay_ns: float = 65.0
    bin_ns: float = 25.0
    n_bins: int = 80
    pre_front_ns: float = 50.0
    noise_vem: float = 0.002
    em_particle_vem: float = 0.05
    threshold_vem: float = 3.0
    tot_threshold_vem_peak: float = 0.2
    tot_bins: int = 13
    max_particles: int = 2000
    min_expected_vem: float = 0.01  # stations expecting less get no particles (they cannot trigger)

    def to_dict(self) -> dict:
        return asdict(self)


# the 2018 toy simulation's delay parameterisation (see the module docstring)
DELAY_SIGMA_LN = 0.7
MU_MUON_FRACTION_SLOPE = 1.4  # d logit(f_mu) / d ln r: S_mu / S_em ~ r^(6.1 - 4.7)


def projected_area_m2(theta, tank: TankParams = TankParams()):
    """The tank's area seen along zenith theta: pi R^2 cos + 2 R h sin."""
    r, h = tank.radius_m, tank.height_m
    return math.pi * r * r * np.cos(theta) + 2 * r * h * np.sin(theta)


def mean_chord_vem(theta, tank: TankParams = TankParams()):
    """Mean signal (VEM) of a muon crossing the tank along zenith theta: the mean chord, the
    volume over the projected area, pi R^2 h / (pi R^2 cos + 2 R h sin), over the height h."""
    return math.pi * tank.radius_m ** 2 / projected_area_m2(theta, tank)


def chord_vem(theta: np.ndarray, rng: np.random.Generator, tank: TankParams = TankParams()) -> np.ndarray:
    """Track lengths (in VEM: units of the tank's height) of straight tracks at zenith
    `theta` (one per entry) through the cylinder, uniform over its projected area: drawn in
    the plane across the track over the projection's bounding box, misses drawn again."""
    theta = np.asarray(theta, float)
    out = np.empty(theta.shape)
    todo = np.arange(theta.size)
    r, h = tank.radius_m, tank.height_m
    while todo.size:
        th = theta[todo]
        s, c = np.maximum(np.sin(th), 1e-9), np.cos(th)
        # a along u = (cos, 0, -sin), b along y; the track is P(t) = a u + b y + t (sin, 0, cos)
        a = rng.uniform(-r * c - h * s, r * c, todo.size)
        b = rng.uniform(-r, r, todo.size)
        half = np.sqrt(np.maximum(r * r - b * b, 0.0))
        t1, t2 = (-a * c - half) / s, (-a * c + half) / s  # inside the infinite cylinder
        z1, z2 = a * s / c, (h + a * s) / c  # between the tank's bottom and top
        length = np.minimum(t2, z2) - np.maximum(t1, z1)
        hit = length > 0
        out.flat[todo[hit]] = length[hit] / h
        todo = todo[~hit]
    return out


def muon_share(r_m, theta, mass):
    """The muons' share of a station's expected signal: the footprint model's f_mu at 1000 m
    (min(0.4 + 0.3 (sec theta - 1), 0.9)), logit-linear in ln r (slope 1.4, r >= 150 m), the
    muon part times A^0.1; between 0.02 and 0.98 for protons."""
    theta = np.asarray(theta, float)
    f1000 = np.minimum(0.4 + 0.3 * (1.0 / np.cos(theta) - 1.0), 0.9)
    rp = np.maximum(np.asarray(r_m, float), 150.0)
    logit = np.log(f1000 / (1 - f1000)) + MU_MUON_FRACTION_SLOPE * np.log(rp / 1000.0)
    fp = np.clip(1.0 / (1.0 + np.exp(-logit)), 0.02, 0.98)
    boost = np.asarray(mass, float) ** 0.1
    return fp * boost / (fp * boost + 1.0 - fp)


def delay_medians_ns(r_m, dx_gcm2):
    """Median arrival delays (ns) behind the front of muons and EM particles."""
    x = (np.asarray(r_m, float) / 750.0) ** 1.4
    dx = np.clip(np.asarray(dx_gcm2, float), 0.0, 2000.0)
    return 50.0 + 140.0 * x * (1 - 0.2 * dx / 1000.0), 80.0 + 200.0 * x * (1 - 0.1 * dx / 1000.0)


def vem_peak(tank: TankParams = TankParams()) -> float:
    """The mean largest bin (VEM) of a vertical through-going muon's trace, its arrival
    uniform within a bin (the light decay spreads its 1 VEM over the bins)."""
    u = (np.arange(1000) + 0.5) / 1000 * tank.bin_ns
    own = 1 - np.exp(-u / tank.decay_ns)
    nxt = np.exp(-u / tank.decay_ns) * (1 - math.exp(-tank.bin_ns / tank.decay_ns))
    return float(np.maximum(own, nxt).mean())


def _light_in_bins(pair: np.ndarray, t_rel: np.ndarray, pe: np.ndarray, n_pairs: int, tank: TankParams):
    """Expected photoelectrons per (pair, bin): each particle's `pe` emitted from time `t_rel`
    (ns after the window's start) with an exponential delay. Its own bin gets the light
    before the bin's end, the rest decays bin by bin (a recursion over the bins)."""
    nb, dt, tau = tank.n_bins, tank.bin_ns, tank.decay_ns
    k = np.floor(t_rel / dt).astype(np.int64)
    keep = (k >= 0) & (k < nb)
    k, t_rel, pe, pair = k[keep], t_rel[keep], pe[keep], pair[keep]
    left = np.exp(-((k + 1) * dt - t_rel) / tau)  # the share still to come at the bin's end
    idx = pair * nb + k
    own = np.bincount(idx, pe * (1 - left), n_pairs * nb).astype(np.float64, copy=False).reshape(n_pairs, nb)
    carry = np.bincount(idx, pe * left, n_pairs * nb).astype(np.float64, copy=False).reshape(n_pairs, nb)
    q = math.exp(-dt / tau)
    mu = own.copy()
    pending = np.zeros(n_pairs)
    for b in range(nb):
        mu[:, b] += pending * (1 - q)
        pending = pending * q + carry[:, b]
    return mu


def tank_response(pair: np.ndarray, t_ns: np.ndarray, signal_vem: np.ndarray, is_muon: np.ndarray, n_pairs: int,
                  rng: np.random.Generator, tank: TankParams = TankParams()) -> dict:
    """What `n_pairs` stations record of the particles that reach them: per particle its
    station (`pair`), arrival time (ns after the trace's first bin edge), signal in VEM (its
    track's light) and whether it is a muon. Poisson photoelectrons with the light decay in the
    FADC bins, baseline noise, the integral, the start time (ns after the first bin edge) and
    the trigger; the muon and EM traces without noise."""
    mu_pe = rng.poisson(_light_in_bins(pair[is_muon], t_ns[is_muon], tank.pe_per_vem * signal_vem[is_muon],
                                       n_pairs, tank))
    em_pe = rng.poisson(_light_in_bins(pair[~is_muon], t_ns[~is_muon], tank.pe_per_vem * signal_vem[~is_muon],
                                       n_pairs, tank))
    mu_tr, em_tr = mu_pe / tank.pe_per_vem, em_pe / tank.pe_per_vem
    tr = np.maximum(mu_tr + em_tr + tank.noise_vem * rng.standard_normal(mu_tr.shape), 0.0)
    integral = tr.sum(1)
    tot = (tr > tank.tot_threshold_vem_peak * vem_peak(tank)).sum(1) >= tank.tot_bins
    return {"trace": tr, "signal": integral, "triggered": (integral >= tank.threshold_vem) | tot,
            "start_ns": start_time_ns(tr, tank.bin_ns), "muon_trace": mu_tr, "em_trace": em_tr}


def station_traces(expected_vem: np.ndarray, r_m: np.ndarray, t_front_ns: np.ndarray, theta: np.ndarray,
                   xmax_gcm2: np.ndarray, mass: np.ndarray, rng: np.random.Generator,
                   tank: TankParams = TankParams(), ground_depth_gcm2: float = 872.4,
                   components: bool = False) -> dict:
    """Traces of every station of N events (stations on the last axis, any shape (N, ...)).

    expected_vem, r_m, t_front_ns: per station; theta, xmax_gcm2, mass: per event;
    ground_depth_gcm2: the vertical atmospheric depth of the array. Returns trace (..., T)
    float32 in VEM per bin, signal (its integral), time (the start time, ns, on the front's
    clock), triggered, window_ns (the absolute time of the trace's first bin edge), the
    particle counts (muons, em) and, with `components`, the muon and EM traces (without noise).
    """
    expected = np.asarray(expected_vem, float)
    shape = expected.shape
    n = shape[0]
    flat = expected.reshape(n, -1)
    s_per = flat.shape[1]
    r = np.asarray(r_m, float).reshape(n, -1)
    t_front = np.asarray(t_front_ns, float).reshape(n, -1)
    theta = np.broadcast_to(np.asarray(theta, float)[:, None], (n, s_per))
    dx = np.broadcast_to((ground_depth_gcm2 / np.cos(np.asarray(theta[:, 0])) - np.asarray(xmax_gcm2))[:, None],
                         (n, s_per))
    mass = np.broadcast_to(np.asarray(mass, float)[:, None], (n, s_per))

    active = flat >= tank.min_expected_vem
    ev, st = np.nonzero(active)
    m = ev.size
    share = muon_share(r[ev, st], theta[ev, st], mass[ev, st])
    s_mu, s_em = flat[ev, st] * share, flat[ev, st] * (1 - share)
    chord_mean = mean_chord_vem(theta[ev, st], tank)
    n_mu = rng.poisson(s_mu / chord_mean)
    n_em = rng.poisson(s_em / tank.em_particle_vem)
    med_mu, med_em = delay_medians_ns(r[ev, st], dx[ev, st])
    window = t_front[ev, st] - tank.pre_front_ns

    pairs, times, signals, muon = [], [], [], []
    for kind, count in (("mu", n_mu), ("em", n_em)):
        sim = np.minimum(count, tank.max_particles)
        w = np.where(sim > 0, count / np.maximum(sim, 1), 0.0)
        pair = np.repeat(np.arange(m), sim)
        wp = w[pair]
        if kind == "mu":
            c = chord_vem(theta[ev, st][pair], rng, tank)
            cm = chord_mean[pair]
            sig = np.where(wp > 1, wp * cm + np.sqrt(wp) * (c - cm), c)
            delay = med_mu[pair] * np.exp(DELAY_SIGMA_LN * rng.standard_normal(pair.size))
        else:
            sig = rng.gamma(np.maximum(wp, 1e-12), tank.em_particle_vem)
            delay = (med_em[pair] * np.exp(DELAY_SIGMA_LN * rng.standard_normal(pair.size))
                     + (med_em - med_mu)[pair] / 1.5)
        pairs.append(pair)
        times.append(tank.pre_front_ns + delay)
        signals.append(sig)
        muon.append(np.full(pair.size, kind == "mu"))
    tanks = tank_response(np.concatenate(pairs), np.concatenate(times), np.concatenate(signals),
                          np.concatenate(muon), m, rng, tank)
    tr, integral, trig = tanks["trace"], tanks["signal"], tanks["triggered"]
    mu_tr, em_tr = tanks["muon_trace"], tanks["em_trace"]
    start = window + tanks["start_ns"]

    def full(values, dtype=np.float32, per_bin=False):
        out = np.zeros((n, s_per, tank.n_bins) if per_bin else (n, s_per), dtype)
        out[ev[trig], st[trig]] = values[trig]
        return out.reshape(*shape, tank.n_bins) if per_bin else out.reshape(shape)

    res = {"trace": full(tr, per_bin=True), "signal": full(integral), "time": full(start),
           "triggered": full(np.ones(m), np.uint8), "window_ns": full(window),
           "n_muons": full(n_mu, np.int64), "n_em": full(n_em, np.int64)}
    if components:
        res["muon_trace"] = full(mu_tr, per_bin=True)
        res["em_trace"] = full(em_tr, per_bin=True)
    return res


def _crossing(cum: np.ndarray, level: np.ndarray, bin_ns: float) -> np.ndarray:
    """Time (ns from the first bin's start) at which a cumulative trace reaches `level`,
    linear within the bin."""
    k = np.minimum((cum < level[:, None]).sum(1), cum.shape[1] - 1)
    rows = np.arange(len(cum))
    before = np.where(k > 0, cum[rows, np.maximum(k - 1, 0)], 0.0)
    inside = cum[rows, k] - before
    frac = np.where(inside > 0, (level - before) / np.where(inside > 0, inside, 1.0), 0.0)
    return (k + np.clip(frac, 0.0, 1.0)) * bin_ns


def trace_quantile_ns(trace: np.ndarray, q: float, bin_ns: float = 25.0) -> np.ndarray:
    """Time (ns from the first bin's start) at which each trace's cumulative signal reaches the
    fraction q of its integral (traces on the last axis; 0 for empty traces)."""
    tr = np.asarray(trace, float)
    flat = tr.reshape(-1, tr.shape[-1])
    cum = np.cumsum(flat, 1)
    out = _crossing(cum, q * cum[:, -1], bin_ns)
    return np.where(cum[:, -1] > 0, out, 0.0).reshape(tr.shape[:-1])


def start_time_ns(trace: np.ndarray, bin_ns: float = 25.0) -> np.ndarray:
    """The start time: where the cumulative trace reaches 10% of its integral."""
    return trace_quantile_ns(trace, 0.1, bin_ns)


def rise_fall_ns(trace: np.ndarray, bin_ns: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """The rise time t10-50 and the fall time t50-90 (ns) of each trace."""
    t10, t50, t90 = (trace_quantile_ns(trace, q, bin_ns) for q in (0.1, 0.5, 0.9))
    return t50 - t10, t90 - t50
