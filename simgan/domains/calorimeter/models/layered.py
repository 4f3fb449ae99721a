"""Two-stage surrogates (output=layers): the energy flow, then the voxel shares of each layer.

Stage 1 (simgan.domains.calorimeter.models.energy) draws the response and the energy of every layer. Stage 2
draws, for each non-empty layer, the shares of its voxels, conditioned on the incident
energy (and extra conditions), the layer's energy, its neighbours' energies and the layer
index. One shape network serves every layer (about 30 layer samples per shower), and the
shower is shares x layer energy, so the layer energies and the response are exactly those
of stage 1.

The shape network writes, per voxel, a hit probability, and the mean and log-variance of
its log share when hit. A shower layer is drawn from that distribution (hits by
Bernoulli, log shares by Gaussian), normalised to the layer energy, cut at the readout
threshold and normalised again; a layer left with no voxel above threshold puts its
energy in the one voxel it drew largest. The VAE trains this head by its likelihood
(zero-inflated log-normal shares); the GAN trains it adversarially, with straight-through
gradients for the hits and a soft threshold, against a critic that sees the layer's log
shares and its centres, widths and hit count.

Layers with fewer voxels than the widest (CaloChallenge dataset 1, CaloGAN) are padded;
padded voxels are never hit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simgan.domains.calorimeter.models.base import ConditionalSurrogate
from simgan.domains.calorimeter.models.energy import CouplingSampler, LayerEnergyFlow, fast_exp
from simgan.domains.calorimeter.models.vae import zero_inflated_nll
from simgan.errors import SimganError
from simgan.models.adversarial import adversarial_step, gan_optimizers
from simgan.models.blocks import logistic, mlp
from simgan.models.latent import LOGVAR_MAX, LOGVAR_MIN, encode_decode, kl_normal, kl_weight

LOG_SHARE_FLOOR = math.log(1e-8)  # an empty voxel in the log-share view
SOFT_THRESHOLD_WIDTH = 0.2  # in log energy: the GAN's differentiable readout threshold


def log_share_view(s: torch.Tensor) -> torch.Tensor:
    """Shares in [0, 1] -> log share on [-1, 1]; an empty voxel is -1."""
    return 2 * (torch.log(s + 1e-8) - LOG_SHARE_FLOOR) / -LOG_SHARE_FLOOR - 1


class LayeredSurrogate(ConditionalSurrogate):
    """Shared by the VAE and GAN families: the energy flow, layer tables, sampling."""

    def __init__(self, cfg, n_voxels: int, layer_voxels: list[int], n_extra: int = 0, threshold_mev: float = 0.0):
        super().__init__(cfg, n_voxels, n_extra, threshold_mev)
        if len(layer_voxels) < 2:
            raise SimganError(f"model.output=layers needs a geometry with at least 2 layers (got {len(layer_voxels)})")
        self.layer_voxels = list(layer_voxels)
        self.n_layers, self.v_max = len(layer_voxels), max(layer_voxels)
        self.uniform = len(set(layer_voxels)) == 1
        self.threshold = threshold_mev
        c = self.transform.cond_dim
        self.energy = LayerEnergyFlow(cfg.energy, self.n_layers, c, threshold_mev)
        self.floor = self.energy.floor
        # cond, log E_layer, log E of the layer before and after, one-hot layer index
        self.lcond_dim = c + 3 + self.n_layers
        valid = torch.zeros(self.n_layers, self.v_max, dtype=torch.bool)
        for i, n in enumerate(layer_voxels):
            valid[i, :n] = True
        self.register_buffer("valid", valid)
        self.register_buffer("le_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("le_std", torch.ones((), dtype=torch.float64))
        self.register_buffer("coords", torch.zeros(self.n_layers, self.v_max, 3))
        # the optional calibration: per layer, the calibrated log share of a kept voxel on a
        # grid of log shares (identity until fit_calibration)
        self.register_buffer("calibration", _calibration_grid().repeat(self.n_layers, 1))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        object.__setattr__(self, "energy_run", self.energy)

    # -- layout -------------------------------------------------------------------------------
    def to_layers(self, x: torch.Tensor) -> torch.Tensor:
        """(N, V) -> (N, L, v_max), padded with zeros."""
        if self.uniform:
            return x.reshape(len(x), self.n_layers, self.v_max)
        out = x.new_zeros(len(x), self.n_layers, self.v_max)
        out[:, self.valid] = x
        return out

    def from_layers(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1) if self.uniform else x[:, self.valid]

    def layer_cond(self, cond: torch.Tensor, e_layers: torch.Tensor, sid: torch.Tensor, lid: torch.Tensor) -> torch.Tensor:
        """What the shape network is conditioned on, for layer `lid` of shower `sid`."""
        return self.all_layer_conds(cond, e_layers)[sid, lid]

    def all_layer_conds(self, cond: torch.Tensor, e_layers: torch.Tensor) -> torch.Tensor:
        """(N, L, lcond_dim): the shape network's condition for every layer of every shower:
        the shower's condition, the layer's normalised log energy, its neighbours' (beyond the
        first and last layer a value of its own; an empty layer reads log(floor)) and the
        one-hot layer index."""
        n, L = e_layers.shape
        le = ((torch.log(e_layers.double() + self.floor) - self.le_mean) / self.le_std).float()
        empty = ((math.log(2 * self.floor) - self.le_mean) / self.le_std).to(le.dtype).expand(n, 1)
        prev, nxt = torch.cat([empty, le[:, :-1]], 1), torch.cat([le[:, 1:], empty], 1)
        onehot = torch.eye(L, device=le.device, dtype=le.dtype).expand(n, L, L)
        return torch.cat([cond.float()[:, None].expand(n, L, cond.shape[1]), le[..., None], prev[..., None],
                          nxt[..., None], onehot], 2)

    def layer_energy_of(self, lcond: torch.Tensor) -> torch.Tensor:
        c = self.transform.cond_dim
        return torch.exp(lcond[:, c].double() * self.le_std + self.le_mean).float() - self.floor

    def layer_index_of(self, lcond: torch.Tensor) -> torch.Tensor:
        return lcond[:, -self.n_layers:].argmax(1)

    # -- training tables ----------------------------------------------------------------------
    def fit(self, energies, showers, extra, binning) -> dict:
        self.transform.fit(energies, showers, extra)
        e_inc = torch.as_tensor(np.asarray(energies, np.float64))
        cond = self.transform.cond(e_inc, None if extra is None else torch.as_tensor(extra))
        x = torch.as_tensor(np.asarray(showers, np.float32))
        if self.threshold > 0:
            x = torch.where(x >= self.threshold, x, torch.zeros((), dtype=x.dtype))
        layers = self.to_layers(x)
        e_layers = layers.sum(2, dtype=torch.float64)
        self.energy.fit(e_layers, e_inc)
        full = e_layers >= self.floor
        if not full.any():
            raise SimganError(f"training showers have no layer above {self.floor:g} MeV: nothing to learn")
        le = torch.log(e_layers[full] + self.floor)
        self.le_mean.fill_(float(le.mean()))
        self.le_std.fill_(float(le.std().clamp_min(1e-3)) if le.numel() > 1 else 1.0)
        xyz = torch.as_tensor(np.stack(binning.voxel_xy, 1), dtype=torch.float32)  # (V, 3)
        self.coords.copy_(_pad_coords(xyz, self.layer_voxels, self.v_max))
        sid, lid = torch.nonzero(full, as_tuple=True)
        shares = (layers[sid, lid].double() / e_layers[sid, lid, None]).float()
        lcond = self.layer_cond(cond, e_layers, sid, lid)
        self.fit_shape(shares, lcond)
        return {"showers": (e_layers, e_inc, cond), "layers": (shares, lcond)}

    def fit_shape(self, shares: torch.Tensor, lcond: torch.Tensor) -> None:
        """Statistics the shape network keeps from the training layers (the GAN's feature scales)."""

    # -- schedule -----------------------------------------------------------------------------
    def phases(self) -> list[tuple[tuple[str, ...], int | None]]:
        """(optimisers, steps): the energy flow for its own steps, then the shape network for train.steps."""
        return [(("energy",), self.cfg.energy.steps), (self.shape_optimizers(), None)]

    def shape_optimizers(self) -> tuple[str, ...]:
        raise NotImplementedError

    def energy_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.energy.parameters(), lr=self.cfg.energy.lr)

    def train_step(self, batches, opts, step: int, autocast, gens) -> dict[str, float]:
        if step < self.cfg.energy.steps:
            return self.energy_step(batches, opts, gens)
        return self.shape_step(batches, opts, step - self.cfg.energy.steps, autocast, gens)

    def energy_step(self, batches, opts, gens) -> dict[str, float]:
        e_layers, e_inc, cond = batches.take("showers", self.cfg.energy.batch_size)
        noise = torch.rand(e_layers.shape, generator=gens["noise"], device=e_layers.device, dtype=torch.float64)
        loss = self.energy_run(self.energy.to_v(e_layers, e_inc, noise), cond).mean()
        opts["energy"].zero_grad(set_to_none=True)
        loss.backward()
        opts["energy"].step()
        return {"energy_nll": float(loss.detach())}

    def shape_step(self, batches, opts, step: int, autocast, gens) -> dict[str, float]:
        raise NotImplementedError

    # -- sampling -----------------------------------------------------------------------------
    def raw_shape(self, lcond: torch.Tensor, generator: torch.Generator | None, sid: torch.Tensor | None = None,
                  n_showers: int = 0, z: torch.Tensor | None = None, zs: torch.Tensor | None = None) -> torch.Tensor:
        """(m, 3 v_max): per voxel the hit logit, log-share mean and log-share log-variance, for
        layers of the showers `sid` (of n_showers). z: the layers' codes (m, latent_dim) and zs
        (GAN with model.shower_latent_dim) the showers' (n_showers, shower_latent_dim), drawn
        from `generator` when not given."""
        raise NotImplementedError

    def split_head(self, raw: torch.Tensor, lid: torch.Tensor):
        """Views of the head: hit logit, log-share mean and log-variance (clamped where used)."""
        V = self.v_max
        hit_logit, mean, logvar = raw[:, :V], raw[:, V:2 * V], raw[:, 2 * V:]
        if not self.uniform:
            hit_logit = torch.where(self.valid[lid], hit_logit, torch.full_like(hit_logit, -1e4))
        return hit_logit, mean, logvar

    def draw_shares(self, raw: torch.Tensor, lid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Differentiable shares drawn from the head (GAN training): hits by Bernoulli with
        straight-through gradients of their probability, log shares by Gaussian, normalised over
        the hits. `draw_voxels` draws from the same distribution for sampling."""
        hit_logit, mean, logvar = self.split_head(raw, lid)
        p = torch.sigmoid(hit_logit.float())
        if self.cfg.voxel_noise:
            hard = torch.rand(p.shape, generator=generator, device=p.device) < p
        else:  # the generator decides: a voxel is hit where its probability is above one half
            hard = p > 0.5
        eps = torch.randn(p.shape, generator=generator, device=p.device)
        hit = hard.to(p.dtype) + p - p.detach()
        log_s = mean.float() + torch.exp(0.5 * logvar.float().clamp(LOGVAR_MIN, LOGVAR_MAX)) * eps
        w = torch.exp(log_s - log_s.max(1, keepdim=True).values) * hit
        return w / w.sum(1, keepdim=True).clamp_min(1e-30)

    def draw_voxels(self, raw: torch.Tensor, lid: torch.Tensor, e_layer: torch.Tensor,
                    generator: torch.Generator | None, calibrate: bool = False, u: torch.Tensor | None = None,
                    eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample the voxels of m layers: (row, index in the (m, v_max) grid, energy) of every
        voxel kept.

        A voxel is hit with its probability; a hit's log share is Gaussian; the hits are
        normalised to the layer energy, cut at the readout threshold and normalised again. A
        layer that drew no hit takes its most probable voxel; one left with none above the
        threshold keeps only its largest hit. Sparse after the hit draw: generation is
        memory-bound, and about 7% of voxels are hit. On a CPU the hit uniforms come from
        numpy's PCG64 (2x faster than torch's generator), seeded from `generator`. Given `u`
        and `eps` ((m, v_max) uniforms and normals), the draw takes its noise from them, as
        `draw_dense` does."""
        V, m = self.v_max, len(e_layer)
        hit_logit, mean, logvar = self.split_head(raw, lid)
        if u is None:
            if not self.hit_uniforms_drawn():  # (GAN) hits where the probability is above one half
                u = torch.full(hit_logit.shape, 0.5, device=hit_logit.device)
            elif hit_logit.device.type == "cpu":
                seed = int(torch.randint(0, 2**62, (1,), generator=generator))
                u = torch.from_numpy(np.random.default_rng(seed).random(hit_logit.shape, dtype=np.float32))
            else:
                u = torch.rand(hit_logit.shape, generator=generator, device=hit_logit.device)
        p = hit_logit.float()  # (a bfloat16 comparison is 3x slower)
        hard = u < (p.sigmoid_() if p.data_ptr() != hit_logit.data_ptr() else torch.sigmoid(p))
        idx = hard.view(-1).nonzero().squeeze(1)
        row = torch.div(idx, V, rounding_mode="floor")
        none = (torch.bincount(row, minlength=m) == 0).nonzero().squeeze(1)
        if len(none):
            idx = torch.cat([idx, none * V + hit_logit[none].argmax(1)])
            row = torch.cat([row, none])
        # (index_select: 10x faster than take or [] on a CPU, measured)
        at = idx + row * (raw.shape[1] - V)  # the hits' places in the contiguous head output
        flat = raw.view(-1)
        mu = flat.index_select(0, at.add_(V))
        sigma = fast_exp(flat.index_select(0, at.add_(V)).float().clamp_(LOGVAR_MIN, LOGVAR_MAX).mul_(0.5))
        log_s = (torch.randn(len(idx), generator=generator, device=idx.device) if eps is None
                 else eps.reshape(-1).index_select(0, idx).clone()).mul_(sigma).add_(mu)
        top = torch.full((m,), -math.inf, device=idx.device).scatter_reduce_(0, row, log_s, "amax")
        w = fast_exp(log_s.sub_(top.index_select(0, row)))  # each layer's largest hit has weight exactly 1
        row, idx, w = self._above_threshold(row, idx, w, e_layer)
        if calibrate:  # map each kept voxel's share, then cut and normalise again
            w = w / torch.zeros(m, device=w.device).index_add_(0, row, w).index_select(0, row)
            w = fast_exp(self._calibrated_log_share(torch.log(w), lid.index_select(0, row)))
            top = torch.zeros(m, device=w.device).scatter_reduce_(0, row, w, "amax")
            row, idx, w = self._above_threshold(row, idx, w / top.index_select(0, row), e_layer)
        scale = e_layer / torch.zeros(m, device=w.device).index_add_(0, row, w)
        return row, idx, w.mul_(scale.index_select(0, row))

    def _above_threshold(self, row: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, e_layer: torch.Tensor):
        """The voxels (weights w, each layer's largest exactly 1) that are above the readout
        threshold once each layer is normalised to its energy; a layer with none keeps only
        its largest: a voxel stays if w >= min(threshold x sum(w) / e_layer, 1)."""
        if self.threshold <= 0:
            return row, idx, w
        total = torch.zeros(len(e_layer), device=w.device).index_add_(0, row, w)
        kept = (w >= (total * (self.threshold / e_layer)).clamp_max_(1.0).index_select(0, row)).nonzero().squeeze(1)
        return row.index_select(0, kept), idx.index_select(0, kept), w.index_select(0, kept)

    def hit_uniforms_drawn(self) -> bool:
        """Whether the hits are drawn (else a voxel is hit where its probability is above one half)."""
        return getattr(self.cfg, "voxel_noise", True)

    def draw_dense(self, raw: torch.Tensor, lid: torch.Tensor, e_layer: torch.Tensor, u: torch.Tensor | None,
                   eps: torch.Tensor, calibrate: bool = False) -> torch.Tensor:
        """`draw_voxels` on the dense (m, v_max) grid with its noise given: u, the hits'
        uniforms (None where the hits are not drawn), eps, the log shares' normals; returns
        the (m, v_max) voxel energies. The same values as draw_voxels given the same noise (to
        float32 rounding of sums), without data-dependent shapes: the exported graph
        (simgan.domains.calorimeter.export). A layer of energy 0 comes out empty."""
        V = self.v_max
        hit_logit, mean, logvar = self.split_head(raw.float(), lid)
        if u is None:
            u = torch.full_like(hit_logit, 0.5)
        hit = u < logistic(hit_logit)
        top_voxel = torch.arange(V, device=raw.device) == hit_logit.argmax(1, keepdim=True)
        hit = hit | (top_voxel & ~hit.any(1, keepdim=True))
        sigma = fast_exp(logvar.clamp(LOGVAR_MIN, LOGVAR_MAX) * 0.5)
        log_s = eps * sigma + mean
        top = torch.where(hit, log_s, torch.full_like(log_s, -math.inf)).amax(1, keepdim=True)
        w = torch.where(hit, fast_exp(log_s - top), torch.zeros_like(log_s))
        w = self._above_threshold_dense(w, e_layer)
        if calibrate:
            w = w / w.sum(1, keepdim=True)
            kept = w > 0
            lids = lid[:, None].expand_as(w).reshape(-1)
            cal = self._calibrated_log_share(torch.log(torch.where(kept, w, torch.ones_like(w))).reshape(-1), lids)
            w = torch.where(kept, fast_exp(cal.view_as(w)), torch.zeros_like(w))
            w = self._above_threshold_dense(w / w.amax(1, keepdim=True), e_layer)
        return w * (e_layer / w.sum(1))[:, None]

    def _above_threshold_dense(self, w: torch.Tensor, e_layer: torch.Tensor) -> torch.Tensor:
        """`_above_threshold` on the dense grid: the weights of the voxels dropped are zero."""
        if self.threshold <= 0:
            return w
        cut = (w.sum(1) * (self.threshold / e_layer)).clamp_max(1.0)
        return torch.where(w >= cut[:, None], w, torch.zeros_like(w))

    def _calibrated_log_share(self, log_s: torch.Tensor, lid: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear lookup in the layer's calibration table."""
        pos = ((log_s - CALIBRATION_LO) / -CALIBRATION_LO * (CALIBRATION_POINTS - 1)).clamp(0, CALIBRATION_POINTS - 1)
        lo = pos.floor().long().clamp_max(CALIBRATION_POINTS - 2)
        frac = pos - lo
        at = lid * CALIBRATION_POINTS + lo
        table = self.calibration.view(-1)
        a, b = table.index_select(0, at), table.index_select(0, at + 1)
        return a + frac * (b - a)

    def fit_calibration(self, showers: np.ndarray, generated: np.ndarray, min_hits: int = 200) -> dict:
        """Per layer, a monotone map of the kept voxels' log shares of `generated` (the model
        fed the same showers' layer energies) onto those of `showers` (simulation): quantile
        matching on the training split. Layers with fewer than `min_hits` voxels above the
        threshold in either keep the identity."""
        grid = _calibration_grid().numpy()
        p = np.linspace(0.0005, 0.9995, 400)
        table = np.tile(grid, (self.n_layers, 1))
        fitted = []
        for layer, (sim, gen) in enumerate(zip(_log_shares(showers, self.layer_voxels, self.threshold),
                                               _log_shares(generated, self.layer_voxels, self.threshold))):
            if min(len(sim), len(gen)) < min_hits:
                continue
            qg, qs = np.quantile(gen, p), np.quantile(sim, p)
            qg = np.maximum.accumulate(qg + np.arange(len(qg)) * 1e-9)  # strictly increasing for interp
            mapped = np.interp(grid, qg, qs)
            mapped = np.where(grid < qg[0], grid + (qs[0] - qg[0]), mapped)
            table[layer] = np.minimum(np.where(grid > qg[-1], grid + (qs[-1] - qg[-1]), mapped), 0.0)
            fitted.append(layer)
        self.calibration.copy_(torch.as_tensor(table, dtype=torch.float32))
        self.calibrated.fill_(True)
        return {"layers_fitted": len(fitted), "layers": self.n_layers, "min_hits": min_hits}

    def showers_from_layer_energies(self, cond: torch.Tensor, e_layers: torch.Tensor,
                                    generator: torch.Generator | None, precision: str = "fp32",
                                    out: torch.Tensor | None = None, calibrate: bool = False) -> torch.Tensor:
        """(N, V) showers in MeV whose layer energies are exactly `e_layers` (layers below the
        threshold empty), written into `out` when given. precision=bf16 runs the shape network
        in bfloat16."""
        n = len(e_layers)
        padded = torch.zeros(n, self.n_layers, self.v_max, device=e_layers.device) if not self.uniform else None
        if out is None:
            out = torch.zeros(n, self.transform.mean.numel(), device=e_layers.device)
        else:
            out.zero_()
        full = e_layers >= self.floor
        sid, lid = torch.nonzero(full, as_tuple=True)
        if len(sid):
            lcond = self.layer_cond(cond, e_layers, sid, lid)
            with torch.autocast(device_type=lcond.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                raw = self.raw_shape(lcond, generator, sid, n)
            row, idx, x = self.draw_voxels(raw, lid, e_layers[sid, lid].float(), generator, calibrate)
            # from the (m, v_max) grid of the drawn layers to the (n, n_layers, v_max) output
            offset = (sid * self.n_layers + lid - torch.arange(len(sid), device=sid.device)) * self.v_max
            place = offset.index_select(0, row).add_(idx)
            (out if self.uniform else padded).view(-1)[place] = x
        if not self.uniform:
            out.copy_(self.from_layers(padded))
        return out

    @torch.no_grad()
    def sample(self, energies: torch.Tensor, extra: torch.Tensor | None = None,
               generator: torch.Generator | None = None, block: int | None = None, precision: str = "fp32",
               layer_energies: torch.Tensor | None = None, calibrated: bool = True,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """Showers in MeV, `block` showers at a time, written into `out` when given.
        `layer_energies` (N, L) replaces stage 1 (the ablation mode: the shape model fed,
        e.g., Geant4's own layer energies).
        `calibrated=False` leaves out a fitted calibration."""
        cond = self.transform.cond(energies, extra)
        e_inc = energies.to(cond.device).double()
        if block is None:
            # on a CPU, 512 measured fastest of 128-2048 with one process per core
            block = 1 << 16 if cond.device.type == "cuda" else 512
        sampler = CouplingSampler.of(self.energy) if layer_energies is None else None
        out = self.output_buffer(len(cond), out, cond.device)
        for lo in range(0, len(cond), block):
            sl = slice(lo, min(lo + block, len(cond)))
            if layer_energies is None:
                e_layers = self.energy.sample(cond[sl], e_inc[sl], generator, sampler)
            else:
                e_layers = layer_energies[sl].to(cond.device).double()
                e_layers = torch.where(e_layers >= self.floor, e_layers, torch.zeros_like(e_layers))
            self.showers_from_layer_energies(cond[sl], e_layers, generator, precision, out=out[sl],
                                             calibrate=calibrated and bool(self.calibrated))
        return out


CALIBRATION_LO, CALIBRATION_POINTS = math.log(1e-7), 256


def _calibration_grid() -> torch.Tensor:
    return torch.linspace(CALIBRATION_LO, 0.0, CALIBRATION_POINTS)


def _log_shares(showers: np.ndarray, layer_voxels: list[int], threshold: float) -> list[np.ndarray]:
    """Per layer, log(voxel / layer energy) of every voxel above the threshold."""
    out, lo = [], 0
    for n in layer_voxels:
        x = showers[:, lo:lo + n].astype(np.float64)
        x = np.where(x >= max(threshold, 1e-30), x, 0.0)
        e = x.sum(1, keepdims=True)
        hit = x > 0
        out.append(np.log((x / np.where(e > 0, e, 1.0))[hit]))
        lo += n
    return out


def _pad_coords(xyz: torch.Tensor, layer_voxels: list[int], v_max: int) -> torch.Tensor:
    """(V, 3) voxel centres -> (L, v_max, 3), zero-padded."""
    out = torch.zeros(len(layer_voxels), v_max, 3)
    for i, part in enumerate(torch.split(xyz, layer_voxels)):
        out[i, :len(part)] = part
    return out


# ----------------------------------------------------------------------------------------------
# VAE family
# ----------------------------------------------------------------------------------------------

class ShapeVAE(nn.Module):
    """Encoder q(z | log shares, layer condition), decoder p(shares | z, layer condition)."""

    def __init__(self, v_max: int, lcond_dim: int, hidden: list[int], latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = mlp(v_max + lcond_dim, hidden, 2 * latent_dim)
        self.decoder = mlp(latent_dim + lcond_dim, list(reversed(hidden)), 3 * v_max)

    def forward(self, view: torch.Tensor, lcond: torch.Tensor, eps: torch.Tensor):
        return encode_decode(self.encoder, self.decoder, view, lcond, eps)


class LayeredVAE(LayeredSurrogate):
    family = "vae"

    def __init__(self, cfg, n_voxels, layer_voxels, n_extra=0, threshold_mev=0.0):
        super().__init__(cfg, n_voxels, layer_voxels, n_extra, threshold_mev)
        if cfg.likelihood != "zero_inflated":
            raise SimganError(f"model.likelihood={cfg.likelihood!r} with model.output=layers: the layer shape VAE "
                              "has the zero-inflated likelihood only")
        self.shape = ShapeVAE(self.v_max, self.lcond_dim, list(cfg.hidden), cfg.latent_dim)
        object.__setattr__(self, "shape_run", self.shape)

    def run_modules(self) -> dict[str, nn.Module]:
        return {"energy_run": self.energy, "shape_run": self.shape}

    def ema_modules(self) -> list[nn.Module]:
        return [self.shape.decoder]

    def shape_optimizers(self) -> tuple[str, ...]:
        return ("vae",)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"energy": self.energy_optimizer(), "vae": torch.optim.Adam(self.shape.parameters(), lr=self.cfg.lr)}

    def shape_step(self, batches, opts, step: int, autocast, gens) -> dict[str, float]:
        s, lcond = batches.take("layers")
        eps = torch.randn(len(s), self.cfg.latent_dim, generator=gens["noise"], device=s.device)
        with autocast():
            raw, mu, logvar = self.shape_run(log_share_view(s), lcond, eps)
        lid = self.layer_index_of(lcond)
        hit_logit, mean, x_logvar = self.split_head(raw.float(), lid)
        rec = zero_inflated_nll(hit_logit, mean, x_logvar, torch.log(s.clamp_min(1e-30)), s > 0,
                                None if self.uniform else self.valid[lid]).mean()
        kl = kl_normal(mu.float(), logvar.float())
        loss = rec + kl_weight(self.cfg, step) * kl
        opts["vae"].zero_grad(set_to_none=True)
        loss.backward()
        opts["vae"].step()
        return {"loss": float(loss.detach()), "recon": float(rec.detach()), "kl": float(kl.detach())}

    def raw_shape(self, lcond, generator, sid=None, n_showers=0, z=None, zs=None):
        if z is None:
            z = torch.randn(len(lcond), self.cfg.latent_dim, generator=generator, device=lcond.device)
        return self.shape.decoder(torch.cat([z, lcond], 1))


# ----------------------------------------------------------------------------------------------
# GAN family
# ----------------------------------------------------------------------------------------------

N_LAYER_FEATURES = 7  # centre x, y, r; width x, y, r; (soft) fraction of voxels hit
SPECTRUM_BINS, SPECTRUM_GROUPS = 48, 4  # the hit-spectrum term: bins of log hit energy, groups of layer energy


def hit_spectrum(log_e: torch.Tensor, weight: torch.Tensor, group: torch.Tensor, per_group: torch.Tensor,
                 centres: torch.Tensor) -> torch.Tensor:
    """(G, bins): per group, the hits per layer in each bin of log energy, each hit spread by a
    Gaussian one bin wide (differentiable in the energies and weights)."""
    width = centres[1] - centres[0]
    k = torch.exp(-0.5 * ((log_e[:, None] - centres[None]) / width) ** 2) * weight[:, None]
    h = k.new_zeros(len(per_group), len(centres)).index_add_(0, group, k)
    return h / per_group.clamp_min(1)[:, None]


class ShowerCritic(nn.Module):
    """A critic of whole showers: input (B, L * (v_max + F) + C + L), the critic view of every
    layer, the shower condition and the normalised log layer energies. One network embeds each
    layer (its view, the condition, its energy and index); convolutions along the depth see
    the embeddings of all layers together, so a change in any layer, and the correlations
    between layers, move the score."""

    def __init__(self, n_layers: int, view_dim: int, cond_dim: int, hidden: list[int], channels: int):
        super().__init__()
        self.n_layers, self.view_dim, self.cond_dim = n_layers, view_dim, cond_dim
        self.embed = mlp(view_dim + cond_dim + 1 + n_layers, list(hidden), channels)
        self.depth = nn.Sequential(
            nn.Conv1d(channels + 1, channels, 5, padding=2), nn.LeakyReLU(0.2),
            nn.Conv1d(channels, channels, 5, padding=2), nn.LeakyReLU(0.2))
        self.head = mlp(channels * n_layers + cond_dim, [channels], 1)
        self.register_buffer("eye", torch.eye(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L, V, C = self.n_layers, self.view_dim, self.cond_dim
        b = len(x)
        view = x[:, :L * V].reshape(b, L, V)
        cond, le = x[:, L * V:L * V + C], x[:, L * V + C:]
        per_layer = torch.cat([view, cond[:, None].expand(b, L, C), le[:, :, None], self.eye.expand(b, L, L)], 2)
        h = F.leaky_relu(self.embed(per_layer.reshape(b * L, -1)), 0.2).reshape(b, L, -1)
        h = self.depth(torch.cat([h, le[:, :, None]], 2).transpose(1, 2))
        return self.head(torch.cat([h.flatten(1), cond], 1))




class LayeredGAN(LayeredSurrogate):
    family = "gan"

    def __init__(self, cfg, n_voxels, layer_voxels, n_extra=0, threshold_mev=0.0):
        super().__init__(cfg, n_voxels, layer_voxels, n_extra, threshold_mev)
        if cfg.energy_aux_weight > 0:
            raise SimganError("model.energy_aux_weight applies to voxel outputs; with model.output=layers the "
                              "energy flow fixes the response (set it to 0)")
        self.generator = mlp(cfg.latent_dim + cfg.shower_latent_dim + self.lcond_dim, list(cfg.hidden), 3 * self.v_max)
        n_feat = N_LAYER_FEATURES if cfg.critic_features else 0
        if cfg.critic == "shower":
            self.critic = ShowerCritic(self.n_layers, self.v_max + n_feat, self.transform.cond_dim,
                                       list(cfg.critic_hidden), cfg.shower_channels)
        else:
            self.critic = mlp(self.v_max + n_feat + self.lcond_dim, list(cfg.critic_hidden), 1)
        self.encoder = None
        if cfg.likelihood_weight > 0:
            if not cfg.voxel_noise:
                raise SimganError("model.likelihood_weight > 0 needs model.voxel_noise=true: the likelihood of a "
                                  "layer's log shares is that of the per-voxel noise the generator writes")
            self.encoder = mlp(self.v_max + self.lcond_dim, list(cfg.hidden), 2 * cfg.latent_dim)
            object.__setattr__(self, "e_run", self.encoder)
        self.register_buffer("feat_mean", torch.zeros(n_feat))
        self.register_buffer("feat_std", torch.ones(n_feat))
        # the hit-spectrum term's grid of log hit energy (MeV), set from the training hits
        self.register_buffer("spectrum_centres", torch.linspace(-5.0, 10.0, SPECTRUM_BINS))
        object.__setattr__(self, "g_run", self.generator)
        object.__setattr__(self, "d_run", self.critic)

    def run_modules(self) -> dict[str, nn.Module]:
        extra = {} if self.encoder is None else {"e_run": self.encoder}
        return {"energy_run": self.energy, "g_run": self.generator, "d_run": self.critic, **extra}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before the hit-spectrum term have no grid: the default one
        state_dict.setdefault(prefix + "spectrum_centres", self.spectrum_centres.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def ema_modules(self) -> list[nn.Module]:
        return [self.generator]

    def shape_optimizers(self) -> tuple[str, ...]:
        return ("g", "d")

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        generator = self.generator if self.encoder is None else nn.ModuleList([self.generator, self.encoder])
        return {"energy": self.energy_optimizer(), **gan_optimizers(self.cfg, generator, self.critic)}

    def fit(self, energies, showers, extra, binning) -> dict:
        tables = super().fit(energies, showers, extra, binning)
        if self.cfg.critic == "shower":  # whole showers: every layer's shares and the shower condition
            e_layers, _, cond = tables["showers"]
            shares, lcond = tables["layers"]
            sid, lid = torch.nonzero(e_layers >= self.floor, as_tuple=True)
            whole = torch.zeros(len(e_layers), self.n_layers, self.v_max)
            whole[sid, lid] = shares
            tables["whole"] = (whole.reshape(len(whole), -1), self.shower_cond(cond, e_layers))
        return tables

    def shower_cond(self, cond: torch.Tensor, e_layers: torch.Tensor) -> torch.Tensor:
        """(B, C + L): the shower's condition and its normalised log layer energies."""
        le = ((torch.log(e_layers.double() + self.floor) - self.le_mean) / self.le_std).float()
        return torch.cat([cond.float(), le], 1)

    def _unpack(self, scond: torch.Tensor):
        """The shower condition back into (cond, layer energies, the layers above the floor)."""
        c = self.transform.cond_dim
        cond, le = scond[:, :c], scond[:, c:]
        e_layers = torch.exp(le.double() * self.le_std + self.le_mean) - self.floor
        return cond, e_layers, e_layers >= 0.5 * self.floor

    def _full_layers(self, scond: torch.Tensor):
        """critic=shower: the layers above the floor of the showers of `scond`, in row-major order:
        their shower and layer indices, their layer conditions and their energies."""
        shower, e_layers, full = self._unpack(scond)
        sid, lid = torch.nonzero(full, as_tuple=True)
        return sid, lid, self.layer_cond(shower, e_layers, sid, lid), e_layers[sid, lid].float()

    # what the adversarial step needs (simgan.models.adversarial.adversarial_step)
    def real_batch(self, batches):
        if self.cfg.critic == "shower":
            return batches.take("whole", self.cfg.shower_batch)
        return batches.take("layers")

    def fake(self, cond: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Differentiable shares: straight-through hits, then a soft readout threshold; for the
        layers of `cond` (critic=layer) or for every layer of the showers of `cond`, empty
        layers zero (critic=shower)."""
        if self.cfg.critic != "shower":
            return self._fake_layers(cond, generator)
        sid, lid, lcond, _ = self._full_layers(cond)
        s = self._fake_layers(lcond, generator, sid, len(cond))
        out = s.new_zeros(len(cond), self.n_layers, self.v_max)
        out[sid, lid] = s
        return out.reshape(len(cond), -1)

    def _fake_layers(self, lcond, generator, sid=None, n_showers=0):
        raw = self.raw_shape(lcond, generator, sid, n_showers, run=self.g_run).float()
        s = self.draw_shares(raw, self.layer_index_of(lcond), generator)
        if self.threshold > 0:
            s = s * self._soft_hit(s, self.layer_energy_of(lcond))
            s = s / s.sum(1, keepdim=True).clamp_min(1e-30)
        return s

    def _soft_hit(self, s: torch.Tensor, e_layer: torch.Tensor) -> torch.Tensor:
        """The differentiable readout threshold of shares s of layers of energy e_layer."""
        x = s * e_layer[:, None]
        return torch.sigmoid((torch.log(x + 1e-30) - math.log(self.threshold)) / SOFT_THRESHOLD_WIDTH)

    def layer_features(self, s: torch.Tensor, lcond: torch.Tensor) -> torch.Tensor:
        """Centres and widths of energy (x, y, r) and the (soft) fraction of voxels hit."""
        lid = self.layer_index_of(lcond)
        c = self.coords[lid]  # (m, V, 3)
        mean = torch.einsum("mv,mvk->mk", s, c)
        width = torch.sqrt((torch.einsum("mv,mvk->mk", s, c * c) - mean**2).clamp_min(0) + 1e-4)
        hit = self._soft_hit(s, self.layer_energy_of(lcond)) if self.threshold > 0 else (s > 0).float()
        n = torch.as_tensor(self.layer_voxels, device=s.device, dtype=s.dtype)[lid]
        return torch.cat([mean, width, (hit * self.valid[lid]).sum(1, keepdim=True) / n[:, None]], 1)

    def fit_shape(self, shares, lcond) -> None:
        e = self.layer_energy_of(lcond)
        lo = math.log(self.threshold) if self.threshold > 0 else float(torch.log((shares * e[:, None])[shares > 0]).min())
        hi = float(torch.log((shares.max(1).values * e).max()))
        self.spectrum_centres.copy_(torch.linspace(lo - 0.5, hi + 0.5, SPECTRUM_BINS))
        if not self.feat_mean.numel():
            return
        f = torch.cat([self.layer_features(shares[i:i + 8192], lcond[i:i + 8192]) for i in range(0, len(shares), 8192)])
        self.feat_mean.copy_(f.mean(0))
        self.feat_std.copy_(f.std(0).clamp_min(1e-3))

    def critic_view(self, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """A layer's log shares and standardised features; critic=shower: those of every layer of
        the shower, flattened (empty layers: empty voxels and features 0)."""
        if self.cfg.critic != "shower":
            return self._layer_view(s, cond)
        shower, e_layers, full = self._unpack(cond)
        b = len(s)
        sid = torch.arange(b, device=s.device).repeat_interleave(self.n_layers)
        lid = torch.arange(self.n_layers, device=s.device).repeat(b)
        v = self._layer_view(s.reshape(b * self.n_layers, self.v_max), self.layer_cond(shower, e_layers, sid, lid))
        if self.feat_mean.numel():
            v[:, self.v_max:] = v[:, self.v_max:] * full.reshape(-1, 1)
        return v.reshape(b, -1)

    def _layer_view(self, s: torch.Tensor, lcond: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=s.device.type, enabled=False):
            s = s.float()
            v = log_share_view(s)
            if self.threshold > 0:  # a voxel below the readout threshold looks empty, as it is once cut
                v = self._soft_hit(s, self.layer_energy_of(lcond)) * (v + 1) - 1
            if not self.feat_mean.numel():
                return v
            f = (self.layer_features(s, lcond) - self.feat_mean) / self.feat_std
            return torch.cat([v, f * self.cfg.critic_feature_weight], 1)

    def shape_step(self, batches, opts, step: int, autocast, gens) -> dict[str, float]:
        return adversarial_step(self, batches, opts, autocast, gens, step)

    def generator_aux(self, fake: torch.Tensor, real: torch.Tensor, cond: torch.Tensor, generator=None,
                      step: int = 0) -> dict[str, torch.Tensor]:
        """The terms beside the critic: hit spectrum (model.spectrum_weight) and likelihood
        (model.likelihood_weight)."""
        out = {}
        if self.cfg.spectrum_weight > 0:
            out["spectrum"] = self.cfg.spectrum_weight * self.spectrum_distance(fake.float(), real.float(), cond)
        if self.encoder is not None:
            out["likelihood"] = self.cfg.likelihood_weight * self.likelihood(real.float(), cond, generator)
        return out

    def likelihood(self, real: torch.Tensor, cond: torch.Tensor, generator=None) -> torch.Tensor:
        """Per layer, the negative ELBO of the real layers: the zero-inflated log-normal NLL of their
        shares under the generator fed the encoder's code, plus the code's KL from the prior."""
        sid, n_showers = None, 0
        if self.cfg.critic == "shower":
            n_showers = len(cond)
            sid, lid, cond, _ = self._full_layers(cond)
            real = real.reshape(n_showers, self.n_layers, self.v_max)[sid, lid]
        mu, logvar = self.e_run(torch.cat([log_share_view(real), cond], 1)).float().chunk(2, dim=1)
        logvar = logvar.clamp(-20, 10)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator, device=mu.device)
        raw = self.raw_shape(cond, generator, sid, n_showers, run=self.g_run, z=z).float()
        lid = self.layer_index_of(cond)
        hit_logit, mean, x_logvar = self.split_head(raw, lid)
        rec = zero_inflated_nll(hit_logit, mean, x_logvar, torch.log(real.clamp_min(1e-30)), real > 0,
                                None if self.uniform else self.valid[lid]).mean()
        return rec + kl_normal(mu, logvar)

    def spectrum_distance(self, fake: torch.Tensor, real: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Relative squared distance between the hit spectra (hits per layer in bins of log
        energy, see hit_spectrum) of fake and real layers drawn for the same conditions, in
        SPECTRUM_GROUPS groups of layer energy. A fake hit counts with its soft readout
        threshold, so a hit pushed below the threshold leaves the spectrum."""
        if self.cfg.critic == "shower":
            sid, lid, _, e = self._full_layers(cond)
            shape = (len(cond), self.n_layers, self.v_max)
            fake, real = fake.reshape(shape)[sid, lid], real.reshape(shape)[sid, lid]
        else:
            e = self.layer_energy_of(cond)
        m = len(e)
        group = torch.empty(m, dtype=torch.long, device=e.device)
        group[e.argsort()] = torch.arange(m, device=e.device) * SPECTRUM_GROUPS // max(m, 1)
        per_group = torch.bincount(group, minlength=SPECTRUM_GROUPS).float()
        spectra = []
        # (fake voxels far below the threshold weigh nothing: left out, their log would overflow the gradient)
        least = self.threshold * 1e-3 if self.threshold > 0 else 1e-30
        for s, soft in ((fake, True), (real, False)):
            row, col = torch.nonzero(s * e[:, None] > least, as_tuple=True)
            x = s[row, col] * e[row]
            w = self._soft_hit(s, e)[row, col] if soft and self.threshold > 0 else torch.ones_like(x)
            spectra.append(hit_spectrum(torch.log(x), w, group[row], per_group, self.spectrum_centres))
        h_fake, h_real = spectra
        return ((h_fake - h_real) ** 2).sum() / (h_real**2).sum().clamp_min(1e-12)

    def raw_shape(self, lcond, generator, sid=None, n_showers=0, z=None, zs=None, run=None):
        if z is None:  # from the prior (sampling); the likelihood term hands the encoder's code
            z = torch.randn(len(lcond), self.cfg.latent_dim, generator=generator, device=lcond.device)
        parts = [z, lcond]
        if self.cfg.shower_latent_dim:  # one draw per shower, shared by its layers
            if zs is None:
                zs = torch.randn(n_showers, self.cfg.shower_latent_dim, generator=generator, device=lcond.device)
            parts.insert(1, zs[sid].to(z.dtype))
        raw = (run or self.generator)(torch.cat(parts, 1))
        if not self.cfg.voxel_noise:  # the log shares' width at its floor: exp(LOGVAR_MIN / 2) = 0.7%
            raw = torch.cat([raw[:, :2 * self.v_max], torch.full_like(raw[:, 2 * self.v_max:], LOGVAR_MIN)], 1)
        return raw
