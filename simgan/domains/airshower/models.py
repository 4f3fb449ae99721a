"""Conditional surrogates of 9x9 footprints: a VAE and a WGAN-GP, convolutional over the grid.

Model view: per station log10 S, the time residual to the plane front through the true core
(standardised), and the trigger mask; per station also the geometry the conditions fix (the
distance to the axis and the position along it), so the convolutions see where each station
sits in the shower. The condition vector is (lgE - 19.25)/0.75, cos theta, cos phi, sin phi,
core_x/750, core_y/750 (never raw phi: it wraps).

A station triggers when its signal reaches the threshold (3 VEM), as in the detector: the
VAE's decoder gives each station a log-normal signal censored at the threshold (silent
stations contribute the probability of falling below it; the Tobit likelihood) and a
Gaussian time residual; the GAN's generator draws the signal and the residual, and the
trigger follows from the signal. Generated footprints are consistent by construction.
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from simgan.domains.airshower.simulator import C_M_PER_NS, GRID, ArrayParams, station_xyz
from simgan.models.adversarial import AdversarialModel
from simgan.models.blocks import logistic
from simgan.models.latent import code_flow, codes_from_noise, fit_code_flow, kl_normal
from simgan.schema import ConfigModel

CONDITIONS = ("log10_energy_eV", "zenith_rad", "azimuth_rad", "core_x_m", "core_y_m")
LN10 = math.log(10.0)


class FootprintVAEConfig(ConfigModel):
    family: Literal["footprint_vae"] = "footprint_vae"
    latent_dim: int = Field(8, gt=0)
    width: int = Field(64, gt=0)
    depth: int = Field(4, gt=0)
    lr: float = Field(1e-3, gt=0)
    kl_weight: float = Field(1.0, ge=0)
    kl_warmup: int = Field(500, ge=0)
    # with traces in the training data: a latent per station (its trace's shape) and the weight
    # of the trace-shape term (cross-entropy of the unit-sum trace, per triggered station)
    station_latent_dim: int = Field(4, gt=0)
    trace_weight: float = Field(1.0, ge=0)
    # the weight of the granularity term: each station's muon share (how much of its light
    # arrives in muon-sized quanta) fitted so that the drawn traces' spikiness matches the data's
    granularity_weight: float = Field(1.0, ge=0)
    # where sampling draws the event codes: the prior N(0, 1), or a conditional flow fitted after
    # training to the encoder's means of the training split (simgan.models.latent.code_flow)
    latent_sampler: Literal["prior", "flow"] = "prior"
    flow_steps: int = Field(2000, gt=0)


class FootprintGANConfig(ConfigModel):
    family: Literal["footprint_gan"] = "footprint_gan"
    loss: Literal["wgan_gp"] = "wgan_gp"  # read by the shared adversarial step and optimisers
    latent_dim: int = Field(16, gt=0)
    station_noise: int = Field(4, ge=0)  # per-station noise channels
    width: int = Field(64, gt=0)
    depth: int = Field(4, gt=0)
    critic_width: int = Field(64, gt=0)
    gp_lambda: float = Field(10.0, ge=0)
    # the gradient penalty on every gp_every-th critic step only, weighted gp_every times (lazy
    # regularisation, as StyleGAN2's): its double backward is most of a critic step's cost on a CPU
    gp_every: int = Field(1, gt=0)
    n_critic: int = Field(5, gt=0)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.9)
    soft_trigger: float = Field(0.05, gt=0)  # width in log10 S of the mask the critic sees on generated footprints
    # weight of a likelihood term beside the critic (0: none, the pure WGAN-GP). Above 0 the
    # generator writes the VAE's per-station head (a log-normal signal censored at the threshold
    # and a Gaussian time residual) from a global latent, an encoder reads real footprints, and
    # the VAE's loss (Tobit NLL + KL, latent_dim and kl_warmup as the VAE's) is added to the
    # critic's: a VAE-GAN hybrid; sampling draws the latent from the prior
    likelihood_weight: float = Field(0.0, ge=0)
    kl_warmup: int = Field(500, ge=0)
    # with traces (the hybrid only): as the VAE's
    station_latent_dim: int = Field(4, gt=0)
    trace_weight: float = Field(1.0, ge=0)
    # the weight of the granularity term: each station's muon share (how much of its light
    # arrives in muon-sized quanta) fitted so that the drawn traces' spikiness matches the data's
    granularity_weight: float = Field(1.0, ge=0)


MASS = "mass_A"  # the sixth column of the condition matrix (1 where a file has none); a model
# condition when the training data hold more than one mass (model args "conditions")
LN56 = math.log(56.0)


def condition_vector(c: torch.Tensor, with_mass: bool = False) -> torch.Tensor:
    """(N, 5 or 6) conditions in CONDITIONS (+ mass_A) order -> (N, 6 or 7) network conditions:
    (lgE - 19.25) / 0.75, cos theta, cos phi, sin phi, core / 750 m (and ln A / ln 56)."""
    lg, th, ph, cx, cy = c[:, :5].unbind(1)
    parts = [(lg - 19.25) / 0.75, torch.cos(th), torch.cos(ph), torch.sin(ph), cx / 750.0, cy / 750.0]
    if with_mass:
        parts.append(torch.log(torch.clamp(c[:, 5], min=1.0)) / LN56)
    return torch.stack(parts, 1)


class Geometry(nn.Module):
    """Per station, from the conditions: distance to the axis r and position along it (m)."""

    def __init__(self, params: dict):
        super().__init__()
        p = ArrayParams(**params)
        self.register_buffer("xyz", torch.as_tensor(station_xyz(p).reshape(-1, 3), dtype=torch.float32))
        self.altitude = p.altitude_m

    def forward(self, c: torch.Tensor):
        th, ph = c[:, 1], c[:, 2]
        u = torch.stack([torch.sin(th) * torch.cos(ph), torch.sin(th) * torch.sin(ph), torch.cos(th)], 1)
        core = torch.stack([c[:, 3], c[:, 4], torch.full_like(c[:, 3], self.altitude)], 1)
        d = self.xyz.to(c.dtype)[None] - core[:, None, :]
        along = (d * u[:, None, :]).sum(-1)
        r = torch.sqrt(torch.clamp((d * d).sum(-1) - along**2, min=0.0))
        return r, along  # (N, 81) each

    def channels(self, c: torch.Tensor) -> torch.Tensor:
        """(N, 3, 9, 9): log10 of max(r, 150 m) / 1000 m, r / 3000 m, along / 3000 m."""
        r, along = self(c)
        ch = torch.stack([torch.log10(torch.clamp(r, min=150.0) / 1000.0), r / 3000.0, along / 3000.0], 1)
        return ch.view(-1, 3, GRID, GRID)


def conv_stack(n_in: int, width: int, depth: int, n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(n_in, width, 3, padding=1), nn.LeakyReLU(0.2)]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2)]
    layers.append(nn.Conv2d(width, n_out, 1))
    return nn.Sequential(*layers)


def broadcast(v: torch.Tensor) -> torch.Tensor:
    return v[:, :, None, None].expand(-1, -1, GRID, GRID)


class FootprintSurrogate(nn.Module):
    """What both families share: the transform between footprints and the model view, the
    geometry channels, fit() and the sample() the pipeline calls."""

    domain = "airshower"

    def __init__(self, cfg, params: dict, threshold_vem: float, with_mass: bool = False, traces: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.with_mass = bool(with_mass)
        self.geometry = Geometry(params)
        self.log_thr = math.log10(threshold_vem)
        # traces: the data's FADC and trigger (bins, bin_ns, pe_per_vem, noise_vem, threshold_vem,
        # tot_threshold_vem, tot_bins); the view then adds the unit-sum trace shape per station
        self.trace = dict(traces) if traces else None
        self.n_bins = int(self.trace["bins"]) if self.trace else 0
        self.register_buffer("t_mean", torch.zeros(()))
        self.register_buffer("t_std", torch.ones(()))
        if self.n_bins:  # the tank's light decay over the bins, and the spread of the traces' spikiness
            self.register_buffer("decay", decay_matrix(self.n_bins, self.trace["bin_ns"], self.trace["decay_ns"]))
            self.register_buffer("q_var", torch.ones(()))

    def add_trace_parts(self, latent_dim: int, width: int, station_latent_dim: int) -> None:
        """A trace model's parts: the station latent's encoder (per station, from its view) and
        the trace head (from the event code, the conditions and that latent: logits per FADC bin
        of the light's arrival before the tank's decay, and the logit of the muon share)."""
        self.station_encoder = nn.Sequential(nn.Conv2d(3 + self.n_bins, width, 1), nn.LeakyReLU(0.2),
                                             nn.Conv2d(width, width, 1), nn.LeakyReLU(0.2),
                                             nn.Conv2d(width, 2 * station_latent_dim, 1))
        self.trace_head = conv_stack(latent_dim + self.n_cond_channels + station_latent_dim, width, 2,
                                     self.n_bins + 1)

    def trace_outputs(self, z, inputs, zs):
        """The trace head's (N, 81, T) arrival distribution (unit sum) and (N, 81) muon share."""
        out = self.trace_head(torch.cat([broadcast(z), inputs, zs], 1)).float().flatten(2)
        return torch.softmax(out[:, :-1], 1).transpose(1, 2), logistic(out[:, -1])

    def muon_quantum(self, inputs) -> torch.Tensor:
        """(N, 1) the mean signal of one muon (VEM) along the shower axis (inputs' cos theta)."""
        cos = inputs[:, 4, 0, 0].float().clamp(0.0, 1.0)[:, None]
        r, h = self.trace["tank_radius_m"], self.trace["tank_height_m"]
        return math.pi * r * r / (math.pi * r * r * cos + 2 * r * h * torch.sqrt(1 - cos * cos))

    def draw_codes(self, c: torch.Tensor, generator=None) -> torch.Tensor:
        """(N, latent_dim) event codes for conditions c: the prior's."""
        return torch.randn(len(c), self.cfg.latent_dim, generator=generator, device=c.device)

    def trace_modules(self) -> dict[str, nn.Module]:
        return ({"station_encoder": self._modules["station_encoder"], "trace_head": self._modules["trace_head"]}
                if self.n_bins else {})

    # -- transform -------------------------------------------------------------------------
    def to_view(self, signal, time, trig, c, traces=None):
        """Footprints (N, 9, 9) each + conditions (N, 6) -> view (N, 3, 9, 9): log10 S (0 where
        silent), standardised time residual (0 where silent), mask. With traces (N, 9, 9, T):
        the time is the trace's window start (start time minus t10), and T channels follow
        with each triggered station's trace divided by its sum."""
        _, along = self.geometry(c)
        n = len(c)
        m = trig.reshape(n, -1).float()
        logs = torch.log10(torch.clamp(signal.reshape(n, -1), min=1e-6)) * m
        t = time.reshape(n, -1)
        if self.n_bins:
            tr = torch.as_tensor(traces, dtype=torch.float32).reshape(n, -1, self.n_bins)
            t = t - start_time_torch(tr, self.trace["bin_ns"])
        resid = (t + along / C_M_PER_NS - self.t_mean) / self.t_std * m
        chans = [logs, resid, m]
        if self.n_bins:
            shape = tr / torch.clamp(tr.sum(-1, keepdim=True), min=1e-12) * m[..., None]
            chans += list(shape.permute(2, 0, 1))
        return torch.stack(chans, 1).view(n, 3 + self.n_bins, GRID, GRID)

    def from_view(self, logs, resid, mask, c, traces=None):
        """(N, 81) each -> (N, 3, 9, 9): signal VEM, time ns, triggered (0/1); with traces
        (N, 81, T) the T bins follow (N, 3 + T, 9, 9) and the time is the window's start plus
        the trace's t10."""
        _, along = self.geometry(c)
        t = resid * self.t_std + self.t_mean - along / C_M_PER_NS
        if traces is not None:
            t = t + start_time_torch(traces, self.trace["bin_ns"])
        signal = torch.where(mask > 0, 10.0**logs, torch.zeros_like(logs))
        time = torch.where(mask > 0, t, torch.zeros_like(logs))
        chans = [signal, time, mask]
        if traces is not None:
            chans += list((traces * mask[..., None]).permute(2, 0, 1))
        return torch.stack(chans, 1).view(-1, len(chans), GRID, GRID)

    def fit(self, signal: np.ndarray, time: np.ndarray, trig: np.ndarray, cond: np.ndarray, traces=None) -> dict:
        """The time standardisation from the training set; returns the training table."""
        c = torch.as_tensor(cond, dtype=torch.float32)
        _, along = self.geometry(c)
        m = torch.as_tensor(trig.reshape(len(c), -1), dtype=torch.bool)
        t = torch.as_tensor(time.reshape(len(c), -1), dtype=torch.float32)
        if self.n_bins:
            t = t - start_time_torch(torch.as_tensor(traces, dtype=torch.float32).reshape(len(c), -1, self.n_bins),
                                     self.trace["bin_ns"])
        resid = t + along / C_M_PER_NS
        self.t_mean.fill_(float(resid[m].mean()))
        self.t_std.fill_(float(resid[m].std()) or 1.0)
        view = self.to_view(torch.as_tensor(signal), torch.as_tensor(time), m, c, traces)
        if self.n_bins:
            q = view[:, 3:].square().sum(1).flatten(1)[m]
            self.q_var.fill_(float(q.var()) if q.numel() > 1 else 1.0)
        return {"main": (view, c)}

    def run_modules(self) -> dict[str, nn.Module]:
        return {}

    def phases(self):
        return [(None, None)]

    def inputs(self, c: torch.Tensor) -> torch.Tensor:
        """Per-station conditioning channels: geometry and the broadcast condition vector."""
        return torch.cat([self.geometry.channels(c), broadcast(condition_vector(c, self.with_mass))], 1)

    @property
    def n_cond_channels(self) -> int:
        return 3 + 6 + int(self.with_mass)


class FootprintVAE(FootprintSurrogate):
    family = "footprint_vae"

    def __init__(self, cfg: FootprintVAEConfig, params: dict, threshold_vem: float, with_mass: bool = False,
                 traces: dict | None = None):
        super().__init__(cfg, params, threshold_vem, with_mass, traces)
        k = self.n_cond_channels
        self.encoder = nn.Sequential(conv_stack(3 + self.n_bins + k, cfg.width, cfg.depth, cfg.width),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cfg.width, 2 * cfg.latent_dim))
        # per station: mean and log sd of log10 S (censored at the threshold), of the time residual
        self.decoder = conv_stack(cfg.latent_dim + k, cfg.width, cfg.depth, 4 + int(self.n_bins > 0))
        if self.n_bins:  # the trace shapes: a latent per station, encoded from its trace; logits per bin
            self.add_trace_parts(cfg.latent_dim, cfg.width, cfg.station_latent_dim)
        if cfg.latent_sampler == "flow":  # fitted when training completes (the monitor uses the prior)
            self.latent_flow = code_flow(cfg.latent_dim, k - 3, passes=2)
            self.register_buffer("flow_fitted", torch.zeros((), dtype=torch.bool))

    @property
    def uses_flow(self) -> bool:
        return self.cfg.latent_sampler == "flow" and bool(self.flow_fitted)

    def draw_codes(self, c, generator=None):
        """Event codes for conditions c: the prior's draws, through the fitted flow (its base noise
        drawn from `generator`, so a seed gives the same codes)."""
        eps = super().draw_codes(c, generator)
        return codes_from_noise(self.latent_flow, condition_vector(c, self.with_mass), eps) if self.uses_flow else eps

    def fit_latent_flow(self, data, cond: np.ndarray, seed: int, chunk: int = 512) -> dict:
        """The flow fitted to the encoder's means of the training footprints (Footprints `data`,
        conditions (N, 6); maximum likelihood)."""
        c = torch.as_tensor(cond, dtype=torch.float32)
        mus = []
        with torch.no_grad():
            for i in range(0, len(c), chunk):
                part = slice(i, i + chunk)
                view = self.to_view(torch.as_tensor(data.signal[part]), torch.as_tensor(data.time[part]),
                                    torch.as_tensor(data.triggered[part]).bool(), c[part],
                                    None if data.traces is None else data.traces[part])
                mus.append(self.encoder(torch.cat([view, self.inputs(c[part])], 1)).float().chunk(2, 1)[0])
        mu = torch.cat(mus)
        nll = fit_code_flow(self.latent_flow, mu, condition_vector(c, self.with_mass), self.cfg.flow_steps, seed)
        self.flow_fitted.fill_(True)
        return {"latent_flow_nll": nll, "latent_flow_steps": self.cfg.flow_steps, "latent_flow_rows": len(mu)}

    def run_modules(self):
        return {"encoder": self._modules["encoder"], "decoder": self._modules["decoder"], **self.trace_modules()}

    def ema_modules(self):
        return [self._modules["decoder"], *([self._modules["trace_head"]] if self.n_bins else [])]

    def make_optimizers(self):
        return {"vae": torch.optim.Adam(self.parameters(), lr=self.cfg.lr)}

    def decode(self, z, inputs):
        return decode_heads(self.decoder, z, inputs)

    def train_step(self, batches, opts, step, autocast, gens):
        view, c = next(batches)
        inputs = self.inputs(c)
        rec, kl, z = vae_terms(self, self.encoder, self.decoder, view, inputs, gens["noise"], autocast, True)
        if self.n_bins:
            ce, kl_s = trace_terms(self, view, inputs, z, gens["noise"], autocast)
            rec, kl = rec + self.cfg.trace_weight * ce, kl + kl_s
        loss = rec + self.cfg.kl_weight * kl_warm(self.cfg, step) * kl
        opts["vae"].zero_grad(set_to_none=True)
        loss.backward()
        opts["vae"].step()
        return {"loss": float(loss.detach()), "recon": float(rec.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def sample(self, conditions: torch.Tensor, extra=None, generator=None, precision: str = "fp32", **_):
        return sample_heads(self, self.decoder, conditions, generator, precision)


def start_time_torch(trace: torch.Tensor, bin_ns: float, q: float = 0.1) -> torch.Tensor:
    """Where each trace's cumulative signal reaches the fraction q of its integral (ns from the
    first bin's start, linear within the bin; 0 for an empty trace): traces.trace_quantile_ns."""
    cum = trace.cumsum(-1)
    total = cum[..., -1:]
    level = q * total
    k = (cum < level).sum(-1, keepdim=True).clamp(max=trace.shape[-1] - 1)
    before = torch.where(k > 0, cum.gather(-1, (k - 1).clamp(min=0)), torch.zeros_like(level))
    inside = cum.gather(-1, k) - before
    frac = torch.where(inside > 0, (level - before) / inside.clamp(min=1e-12), torch.zeros_like(level))
    out = (k + frac.clamp(0, 1)) * bin_ns
    return torch.where(total > 0, out, torch.zeros_like(out)).squeeze(-1)


def decay_matrix(n_bins: int, bin_ns: float, decay_ns: float) -> torch.Tensor:
    """(T, T): the share of light arriving uniformly within bin j that the tank emits in bin b
    (its exponential decay, tau = decay_ns; light after the last bin is lost):
    traces._light_in_bins for one particle per bin, averaged over its place in the bin."""
    q = math.exp(-bin_ns / decay_ns)
    left = decay_ns / bin_ns * (1 - q)  # the mean share still to come at the arrival bin's end
    k = torch.arange(n_bins)
    lag = (k[None, :] - k[:, None]).double()
    later = left * (1 - q) * q ** (lag - 1).clamp(min=0)
    return torch.where(lag == 0, torch.full_like(lag, 1 - left), torch.where(lag > 0, later, torch.zeros_like(lag))
                       ).float()


def expected_shape(model, arrival):
    """The unit-sum expected trace of (N, 81, T) arrival distributions and the share kept in the
    window (N, 81)."""
    raw = arrival @ model.decay
    kept = raw.sum(-1)
    return raw / kept.clamp(min=1e-12)[..., None], kept


def spikiness(model, arrival, muon_share, signal, quantum):
    """The expected sum of squares of a station's unit-sum trace (N, 81) drawn by `draw_traces`
    with `signal` VEM: the expected shape's, plus the quanta's spread (muons quantum^1, EM
    particles 2 x their mean: exponential deposits; a multinomial over the bins, the light
    decayed), plus the photoelectrons' and the baseline's."""
    tr = model.trace
    shape, kept = expected_shape(model, arrival)
    own = (model.decay.square().sum(1) * arrival).sum(-1)  # sum_j p_j |H_j|^2
    spread = own - kept.square() * shape.square().sum(-1)
    per_vem = muon_share * quantum + (1 - muon_share) * 2 * tr["em_vem"]
    s = signal.clamp(min=1e-3)
    return (shape.square().sum(-1) + per_vem * spread / (kept.clamp(min=1e-12) * s) + 1 / (tr["pe_per_vem"] * s)
            + tr["bins"] * tr["noise_vem"] ** 2 / s.square())


def trace_terms(model, view, inputs, z, generator, autocast):
    """The trace terms: each triggered station's unit-sum trace against its expected shape (the
    head's arrival distribution through the tank's decay; cross-entropy, summed over stations,
    batch mean), its sum of squares (spikiness) against the expectation under the head's muon
    share (squared error over its variance in the training set, the shape held fixed), given
    the event's code z and the station's latent encoded from its trace; that latent's KL from
    the prior, over triggered stations. Returns (cross-entropy + granularity_weight x spikiness
    term, KL)."""
    m = view[:, 2].flatten(1)
    with autocast():
        mu, logvar = model.station_encoder(view).float().chunk(2, 1)
        logvar = logvar.clamp(-12, 6)
        eps = torch.randn(mu.shape, generator=generator, device=view.device)
        zs = mu + torch.exp(0.5 * logvar) * eps
        arrival, share = model.trace_outputs(z, inputs, zs)
    obs = view[:, 3:].flatten(2).transpose(1, 2)  # (N, 81, T)
    shape, _ = expected_shape(model, arrival)
    ce = -(obs * torch.log(shape.clamp(min=1e-30))).sum(-1)  # (N, 81)
    signal = 10.0 ** view[:, 0].float().flatten(1)
    pred = spikiness(model, arrival.detach(), share, signal, model.muon_quantum(inputs))
    spike = (pred - obs.square().sum(-1)).square() / (2 * model.q_var)
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1).flatten(1)
    return ((ce + model.cfg.granularity_weight * spike) * m).sum(1).mean(), (kl * m).sum(1).mean()


def draw_traces(model, signal, arrival, muon_share, quantum, generator):
    """(N, 81, T) traces in VEM of stations with `signal` VEM: the light arrives in quanta, in
    each bin Poisson muons of `quantum` VEM (N, 1) and Poisson EM particles of exponential
    deposits (mean em_vem), at the head's arrival distribution, their total scaled to the
    signal; decayed by the tank; Poisson photoelectrons (pe_per_vem per VEM) plus baseline
    noise, clipped at 0."""
    tr = model.trace
    light = (signal / expected_shape(model, arrival)[1].clamp(min=1e-12))[..., None] * arrival  # before the decay
    q_mu = quantum[..., None]
    n_mu = torch.poisson(muon_share[..., None] * light / q_mu, generator=generator)
    n_em = torch.poisson((1 - muon_share[..., None]) * light / tr["em_vem"], generator=generator)
    em = torch.zeros_like(n_em)  # the sum of n exponential deposits: Gamma(n), drawn where n > 0 only (most
    hit = n_em > 0               # bins are empty, and a Gamma of a tiny shape is slow to draw)
    em[hit] = torch._standard_gamma(n_em[hit], generator=generator) * tr["em_vem"]
    drawn = (n_mu * q_mu + em) @ model.decay
    total = drawn.sum(-1, keepdim=True)
    expected = torch.where(total > 0, drawn * (signal[..., None] / total.clamp(min=1e-12)),
                           signal[..., None] * expected_shape(model, arrival)[0])
    pe = torch.poisson(tr["pe_per_vem"] * expected, generator=generator)
    trace = pe / tr["pe_per_vem"] + tr["noise_vem"] * torch.randn(pe.shape, generator=generator, device=pe.device)
    return torch.clamp(trace, min=0.0)


def kl_warm(cfg, step: int) -> float:
    """The KL term's weight ramped up linearly over the first cfg.kl_warmup steps."""
    return min(1.0, (step + 1) / cfg.kl_warmup) if cfg.kl_warmup else 1.0


def decode_heads(decoder: nn.Module, z: torch.Tensor, inputs: torch.Tensor):
    """Per station: mean and log sd of log10 S (censored at the threshold), of the time residual
    (and, for trace models, the logit of a station below the threshold triggering by time over
    threshold: `tot_logit`)."""
    return split_heads(decoder(torch.cat([broadcast(z), inputs], 1)).flatten(2))[:4]


def split_heads(out: torch.Tensor):
    """The decoder's (N, 4 or 5, 81) output as (mean, clamped log sd) of log10 S and of the time
    residual, and the time-over-threshold logit (None without it)."""
    heads = out.unbind(1)  # (a tuple's length: the channel count stays a Python int when traced)
    return (heads[0], heads[1].clamp(-6, 2), heads[2], heads[3].clamp(-6, 2), heads[4] if len(heads) > 4 else None)


def vae_terms(model, encoder, decoder, view, inputs, generator, autocast, return_code: bool = False):
    """The footprint VAE's loss on real footprints: (Tobit NLL of the signals + Gaussian NLL of
    the triggered stations' time residuals, batch mean; KL of the code from the prior), and
    with `return_code` the code drawn. With traces the Tobit's observed stations are those at
    or above the threshold (a station below it is censored whether or not it triggered by time
    over threshold), and the stations below it add the cross-entropy of triggering by time
    over threshold (the decoder's fifth channel)."""
    eps = torch.randn(len(view), model.cfg.latent_dim, generator=generator, device=view.device)
    with autocast():
        mu, logvar = encoder(torch.cat([view, inputs], 1)).float().chunk(2, 1)
        logvar = logvar.clamp(-12, 6)
        z = mu + torch.exp(0.5 * logvar) * eps
        out = decoder(torch.cat([broadcast(z), inputs], 1)).float().flatten(2)
    mu_s, ls_s, mu_t, ls_t, tot = split_heads(out)
    logs, resid, m = view[:, :3].float().flatten(2).unbind(1)
    sd_s = torch.exp(ls_s)
    observed = m * (logs >= model.log_thr).float() if model.n_bins else m
    # Tobit: observed stations the density of log10 S, the others P(log10 S < threshold)
    nll_trig = 0.5 * ((logs - mu_s) / sd_s) ** 2 + ls_s + 0.5 * math.log(2 * math.pi)
    below = torch.special.log_ndtr((model.log_thr - mu_s) / sd_s)
    nll_s = torch.where(observed > 0, nll_trig, -below).sum(1)
    if model.n_bins:  # below the threshold: triggered (by time over threshold) or silent
        bce = nn.functional.binary_cross_entropy_with_logits(tot, m, reduction="none")
        nll_s = nll_s + (bce * (1 - observed)).sum(1)
    nll_t = ((0.5 * ((resid - mu_t) / torch.exp(ls_t)) ** 2 + ls_t + 0.5 * math.log(2 * math.pi)) * m).sum(1)
    if return_code:
        return (nll_s + nll_t).mean(), kl_normal(mu, logvar), z
    return (nll_s + nll_t).mean(), kl_normal(mu, logvar)


def draw_heads(model, decoder, inputs, generator, soft: bool = False, return_code: bool = False, z=None):
    """A footprint drawn from the per-station heads for the code z (default: from the prior):
    (log10 S, residual, trigger mask), the mask softened (differentiable, for a critic) or hard;
    with `return_code` the code too."""
    if z is None:
        z = torch.randn(len(inputs), model.cfg.latent_dim, generator=generator, device=inputs.device)
    # (drawn as (2, N, 81): the same footprints for a seed as before the noise was an argument)
    eps = torch.randn(2, len(inputs), GRID * GRID, generator=generator, device=inputs.device).transpose(0, 1)
    logs, resid, mask = heads_from_noise(model, decoder, inputs, z, eps, soft)
    return (logs, resid, mask, z) if return_code else (logs, resid, mask)


def heads_from_noise(model, decoder, inputs, z, eps, soft: bool = False):
    """(log10 S, residual, trigger mask) per station from the code z and the per-station
    normal draws eps (N, 2, 81) of the signal and the residual."""
    mu_s, ls_s, mu_t, ls_t = (t.float() for t in decode_heads(decoder, z, inputs))
    logs = mu_s + torch.exp(ls_s) * eps[:, 0]
    resid = mu_t + torch.exp(ls_t) * eps[:, 1]
    if soft:
        mask = torch.sigmoid((logs - model.log_thr) / model.cfg.soft_trigger)
    else:
        mask = (logs >= model.log_thr).float()
    return logs, resid, mask


def sample_heads(model, decoder, conditions, generator, precision):
    c = conditions.float()
    if model.n_bins:
        return sample_traces(model, decoder, c, generator, precision)
    z = model.draw_codes(c, generator)
    with torch.autocast(device_type=c.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logs, resid, mask = draw_heads(model, decoder, model.inputs(c), generator, z=z)
    return model.from_view(logs, resid, mask, c)


def sample_traces(model, decoder, c, generator, precision):
    """Footprints with traces: the event code and the station latents from the prior
    (`trace_parts`), then each station's trace drawn in quanta (`finish_traces`)."""
    n, dev = len(c), c.device
    z = model.draw_codes(c, generator)
    zs = torch.randn(n, model.cfg.station_latent_dim, GRID, GRID, generator=generator, device=dev)
    eps = torch.randn(n, 2, GRID * GRID, generator=generator, device=dev)
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        parts = trace_parts(model, decoder, c, z, zs, eps)
    return finish_traces(model, c, *(t.float() for t in parts), generator)


def trace_parts(model, decoder, c, z, zs, eps):
    """What a station's trace is drawn from, given the code z, the station latents zs and the
    normal draws eps (N, 2, 81): its signal (VEM, from the signal head), its time residual
    (standardised), the trace head's arrival distribution (N, 81, T) and muon share (N, 81),
    the mean signal of one muon (N, 1) VEM, and the probability that a station below the
    threshold triggers by time over threshold (N, 81)."""
    inputs = model.inputs(c)
    mu_s, ls_s, mu_t, ls_t, tot = split_heads(decoder(torch.cat([broadcast(z), inputs], 1)).float().flatten(2))
    arrival, share = model.trace_outputs(z, inputs, zs)
    signal = 10.0 ** torch.clamp(mu_s + torch.exp(ls_s) * eps[:, 0], max=6.0)
    resid = mu_t + torch.exp(ls_t) * eps[:, 1]
    return signal, resid, arrival, share, model.muon_quantum(inputs), logistic(tot)  # (exported: full precision in the tail)


def finish_traces(model, c, signal, resid, arrival, share, quantum, tot_probability, generator, tries: int = 16):
    """Footprints from the trace parts: each station's trace drawn in quanta and its trigger
    (`draw_station_traces`); the signal (the integral) and the start time (window + t10) from
    the trace. (N, 3 + T, 9, 9)."""
    trace, mask = draw_station_traces(model, signal, arrival, share, quantum, tot_probability, generator, tries)
    return model.from_view(torch.log10(torch.clamp(trace.sum(-1), min=1e-12)), resid, mask, c, trace)


class Tank:
    """What the trace post-step needs of a model (its `trace` settings and the tank's `decay`
    matrix): from a model, or from an export's sidecar (`post_step_parameters`)."""

    def __init__(self, trace: dict):
        self.trace = dict(trace)
        self.decay = decay_matrix(int(trace["bins"]), float(trace["bin_ns"]), float(trace["decay_ns"]))


def draw_station_traces(tank, signal, arrival, share, quantum, tot_probability, generator, tries: int = 16):
    """Each station's trace drawn in quanta (`draw_traces`) and its trigger (N, 81): threshold
    or time over threshold. `tank`: the model, or a Tank.

    Below the threshold, whether a station triggers by time over threshold is drawn first
    (with `tot_probability`, which the likelihood fits to every station below the threshold,
    silent or not), and its trace is drawn again (up to `tries` times) until its time over
    threshold agrees: the trace shapes are learnt from recorded, hence triggered, stations,
    and their own rate of passing would count stations the detector does not record. A
    station whose draws never agree keeps its last trace, and the trace decides."""
    tr = tank.trace

    def tot_of(trace):
        return (trace > tr["tot_threshold_vem"]).sum(-1) >= tr["tot_bins"]

    trace = draw_traces(tank, signal, arrival, share, quantum, generator)
    wanted = torch.rand(tot_probability.shape, generator=generator, device=signal.device) < tot_probability
    redo = (trace.sum(-1) < tr["threshold_vem"]) & (tot_of(trace) != wanted)
    for _ in range(tries):
        if not bool(redo.any()):
            break
        i = redo.nonzero(as_tuple=True)
        again = draw_traces(tank, signal[i][:, None], arrival[i][:, None], share[i][:, None], quantum[i[0]],
                            generator)[:, 0]
        ok = (again.sum(-1) >= tr["threshold_vem"]) | (tot_of(again) == wanted[i])
        trace[i] = torch.where(ok[:, None], again, trace[i])
        redo[i] = ~ok
    total = trace.sum(-1)
    return trace, ((total >= tr["threshold_vem"]) | tot_of(trace)).float()


def footprints_from_parts(tank: Tank, signal, window_ns, arrival, share, quantum, tot_probability, generator):
    """The post-step of an exported trace model: its graph's outputs (N, 81) each, arrival (N,
    81, T), quantum (N, 81) -> footprints (N, 3 + T, 9, 9): signal (the trace's integral),
    start time (window + t10), trigger, then the T bins, as the model's own sampler makes them."""
    trace, mask = draw_station_traces(tank, signal, arrival, share, quantum[:, :1], tot_probability, generator)
    time = window_ns + start_time_torch(trace, tank.trace["bin_ns"])
    chans = [trace.sum(-1) * mask, time * mask, mask, *(trace * mask[..., None]).permute(2, 0, 1)]
    return torch.stack(chans, 1).view(len(signal), len(chans), GRID, GRID)


class FootprintGAN(AdversarialModel, FootprintSurrogate):
    family = "footprint_gan"

    def __init__(self, cfg: FootprintGANConfig, params: dict, threshold_vem: float, with_mass: bool = False,
                 traces: dict | None = None):
        super().__init__(cfg, params, threshold_vem, with_mass, traces)
        k, nb = self.n_cond_channels, self.n_bins
        self.hybrid = cfg.likelihood_weight > 0
        if nb and not self.hybrid:
            raise ValueError("the pure footprint WGAN-GP (model.likelihood_weight=0) does not generate traces; "
                             "use the hybrid (model.likelihood_weight > 0) or the VAE")
        if self.hybrid:  # the VAE's decoder (per-station heads from a global latent) and encoder
            generator = conv_stack(cfg.latent_dim + k, cfg.width, cfg.depth, 4 + int(nb > 0))
            self.encoder = nn.Sequential(conv_stack(3 + nb + k, cfg.width, cfg.depth, cfg.width),
                                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cfg.width, 2 * cfg.latent_dim))
            object.__setattr__(self, "e_run", self.encoder)
            if nb:  # the VAE's trace parts: a latent per station and the trace head
                self.add_trace_parts(cfg.latent_dim, cfg.width, cfg.station_latent_dim)
        else:
            generator = conv_stack(cfg.latent_dim + cfg.station_noise + k, cfg.width, cfg.depth, 2)
        self.set_networks(generator, nn.Sequential(conv_stack(3 + nb + k, cfg.critic_width, cfg.depth,
                                                              cfg.critic_width),
                                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                   nn.Linear(cfg.critic_width, 1)))

    def run_modules(self):
        return {**super().run_modules(), **({"e_run": self._modules["encoder"]} if self.hybrid else {}),
                **self.trace_modules()}

    def make_optimizers(self):
        opts = super().make_optimizers()
        if self.hybrid:
            extra = [self._modules["encoder"], *self.trace_modules().values()]
            opts["g"].add_param_group({"params": [q for m in extra for q in m.parameters()]})
        return opts

    def ema_modules(self):
        return [self._modules["generator"], *([self._modules["trace_head"]] if self.n_bins else [])]

    def fake_with_traces(self, inputs, generator):
        """A generated view with trace shapes for the critic: the trigger softened, each shape
        drawn in quanta (`draw_traces`) with its gradient passed through the expected shape."""
        n, dev = len(inputs), inputs.device
        logs, resid, mask, z = draw_heads(self, self.g_run, inputs, generator, soft=True, return_code=True)
        zs = torch.randn(n, self.cfg.station_latent_dim, GRID, GRID, generator=generator, device=dev)
        arrival, share = self.trace_outputs(z, inputs, zs)
        shape = expected_shape(self, arrival)[0]  # (N, 81, T)
        with torch.no_grad():
            drawn = draw_traces(self, torch.clamp(10.0 ** logs.detach(), max=1e6), arrival.detach(), share.detach(),
                                self.muon_quantum(inputs), generator)
            drawn = drawn / torch.clamp(drawn.sum(-1, keepdim=True), min=1e-12)
        shape = (shape + (drawn - shape).detach()).transpose(1, 2).reshape(n, self.n_bins, GRID, GRID)
        head = torch.stack([logs * mask, resid * mask, mask], 1).view(n, 3, GRID, GRID)
        return torch.cat([head, shape * mask.view(n, 1, GRID, GRID)], 1)

    def generate_view(self, inputs, generator, soft: bool):
        if self.hybrid:
            return draw_heads(self, self.g_run, inputs, generator, soft)
        n, device = len(inputs), inputs.device
        z = torch.randn(n, self.cfg.latent_dim, generator=generator, device=device)
        zs = torch.randn(n, self.cfg.station_noise, GRID, GRID, generator=generator, device=device)
        return self.view_from_noise(inputs, z, zs, soft)

    def view_from_noise(self, inputs, z, zs, soft: bool = False):
        """The pure generator's (log10 S, residual, mask) from the code z and the station noise zs."""
        out = self.g_run(torch.cat([broadcast(z), zs, inputs], 1)).flatten(2)
        logs, resid = out[:, 0], out[:, 1]
        if soft:  # differentiable trigger for the critic
            mask = torch.sigmoid((logs - self.log_thr) / self.cfg.soft_trigger)
        else:
            mask = (logs >= self.log_thr).float()
        return logs, resid, mask

    def generator_aux(self, fake, real, cond, generator=None, step: int = 0):
        """The likelihood term (model.likelihood_weight) beside the critic."""
        if not self.hybrid:
            return {}
        rec, kl, z = vae_terms(self, self.e_run, self.g_run, real, cond, generator, contextlib.nullcontext, True)
        if self.n_bins:
            ce, kl_s = trace_terms(self, real, cond, z, generator, contextlib.nullcontext)
            rec, kl = rec + self.cfg.trace_weight * ce, kl + kl_s
        return {"likelihood": self.cfg.likelihood_weight * (rec + kl_warm(self.cfg, step) * kl)}

    # what the shared adversarial step needs; its "cond" is the per-station conditioning channels
    def real_batch(self, batches):
        view, c = next(batches)
        return view, self.inputs(c)

    def fake(self, inputs, generator):
        if self.n_bins:
            return self.fake_with_traces(inputs, generator)
        logs, resid, mask = self.generate_view(inputs, generator, soft=True)
        return torch.stack([logs * mask, resid * mask, mask], 1).view(len(inputs), 3, GRID, GRID)

    @torch.no_grad()
    def sample(self, conditions: torch.Tensor, extra=None, generator=None, precision: str = "fp32", **_):
        c = conditions.float()
        if self.n_bins:
            return sample_traces(self, self.g_run, c, generator, precision)
        with torch.autocast(device_type=c.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logs, resid, mask = self.generate_view(self.inputs(c), generator, soft=False)
        return self.from_view(logs.float(), resid.float(), mask.float(), c)


FAMILIES = {"footprint_vae": (FootprintVAEConfig, FootprintVAE), "footprint_gan": (FootprintGANConfig, FootprintGAN)}


class FootprintSampler(nn.Module):
    """A footprint model's sampler as one graph of the conditions and the noise (`simgan
    export`): the same functions as `sample`, the random draws passed in.

    kind "heads" (the VAE and the hybrid): (conditions, z, eps) -> footprint (N, 3, 9, 9);
    the VAE's fitted latent flow (model.latent_sampler=flow) maps z to the code inside the graph;
    "gan" (the pure WGAN-GP): (conditions, z, station_noise) -> footprint;
    "traces": (conditions, z, station_latent, eps) -> the trace parts (`trace_parts`: signal,
    trace window, arrival, muon share, muon quantum, time-over-threshold probability), the
    traces then drawn by `finish_traces`."""

    def __init__(self, model, decoder, kind: str):
        super().__init__()
        self.model, self.decoder, self.kind = model, decoder, kind
        self.flow = getattr(model, "uses_flow", False)  # the VAE's fitted latent flow: z -> code in the graph

    def forward(self, conditions, z, noise, eps=None):
        c = conditions.float()
        if self.flow:
            z = codes_from_noise(self.model.latent_flow, condition_vector(c, self.model.with_mass), z)
        if self.kind == "traces":
            signal, resid, arrival, share, quantum, tot = trace_parts(self.model, self.decoder, c, z, noise, eps)
            _, along = self.model.geometry(c)
            window = resid * self.model.t_std + self.model.t_mean - along / C_M_PER_NS
            return signal, window, arrival, share, quantum.expand(-1, GRID * GRID), tot
        inputs = self.model.inputs(c)
        if self.kind == "gan":
            logs, resid, mask = self.model.view_from_noise(inputs, z, noise)
        else:
            logs, resid, mask = heads_from_noise(self.model, self.decoder, inputs, z, noise)
        return self.model.from_view(logs, resid, mask, c)
