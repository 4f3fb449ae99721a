"""Conditional VAE: ELBO with beta and KL warm-up; the decoder generates at sampling time.

output=layers        two stages (simgan.domains.calorimeter.models.layered): an energy flow for the response
                     and the layer energies, then a VAE of each layer's voxel shares
                     conditioned on them (zero-inflated log-normal shares)
output=voxel         one VAE over all voxels, with one of these likelihoods:
likelihood=zero_inflated
                     per voxel, a hit probability and, for a hit, a Gaussian in the
                     transform's normalised log space; sampling draws both. Showers are
                     mostly empty voxels, which a single Gaussian in log space cannot fit
likelihood=gaussian  one Gaussian per voxel in normalised log space: its width spans
                     empty and hit voxels, and sampled showers come out 2.6-2.9x too energetic
likelihood=mse       squared error, sampling returns the decoder mean: showers regress to
                     the average and the readout threshold then deletes their tails
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from simgan.domains.calorimeter.models.energy import EnergyFlowConfig
from simgan.schema import ConfigModel


class VAEConfig(ConfigModel):

    family: Literal["vae"] = "vae"
    arch: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = Field(32, gt=0)
    hidden: list[int] = [512, 256]
    beta: float = Field(1.0, ge=0)
    kl_warmup_steps: int = Field(500, ge=0)
    lr: float = Field(1e-3, gt=0)
    energy_aux_weight: float = Field(0.0, ge=0)
    likelihood: Literal["zero_inflated", "gaussian", "mse"] = "zero_inflated"
    output: Literal["voxel", "layers"] = "voxel"
    energy: EnergyFlowConfig = EnergyFlowConfig()  # output=layers: the energy stage


import math  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from simgan.domains.calorimeter.models.base import ConditionalSurrogate  # noqa: E402
from simgan.domains.calorimeter.models.blocks import body  # noqa: E402
from simgan.models.latent import LOGVAR_MAX, LOGVAR_MIN, encode_decode, gaussian_nll, kl_normal, kl_weight  # noqa: E402


class ConditionalVAE(ConditionalSurrogate):
    """Encoder q(z|x,c), decoder p(x|z,c); the decoder is the generator at sampling time."""

    family = "vae"

    def __init__(self, cfg: VAEConfig, n_voxels: int, layer_voxels: list[int], n_extra: int = 0,
                 threshold_mev: float = 0.0):
        super().__init__(cfg, n_voxels, n_extra, threshold_mev)
        c = self.transform.cond_dim
        self.encoder = body(cfg.arch, n_voxels + c, cfg.hidden, 2 * cfg.latent_dim, layer_voxels)
        n_out = {"zero_inflated": 3, "gaussian": 2, "mse": 1}[cfg.likelihood] * n_voxels
        self.decoder = body(cfg.arch, cfg.latent_dim + c, list(reversed(cfg.hidden)), n_out, layer_voxels)
        self.n_voxels = n_voxels
        object.__setattr__(self, "g_run", self)  # the trainer may wrap the whole VAE in DDP

    def run_modules(self) -> dict[str, nn.Module]:
        return {"g_run": self}

    def ema_modules(self) -> list[nn.Module]:
        return [self.decoder]

    def forward(self, x: torch.Tensor, cond: torch.Tensor, eps: torch.Tensor):
        return encode_decode(self.encoder, self.decoder, x, cond, eps)

    @property
    def noise_dim(self) -> int:
        # latent z, then (gaussian) one standard normal per voxel for the decoder's noise
        per_voxel = {"zero_inflated": 2, "gaussian": 1, "mse": 0}[self.cfg.likelihood]
        return self.cfg.latent_dim + per_voxel * self.n_voxels

    def sampling_net(self) -> nn.Module:
        if self.cfg.likelihood == "mse":
            return self.decoder
        return _Sampler(self.decoder, self.cfg.latent_dim, self.n_voxels, self.transform,
                        self.cfg.likelihood == "zero_inflated")

    def hits(self, u: torch.Tensor) -> torch.Tensor:
        """Voxels above zero: log(x/E_inc + eps) clearly above log(eps)."""
        t = self.transform
        return t.log_fraction(u) > math.log(t.eps) + 0.1

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": torch.optim.Adam(self.parameters(), lr=self.cfg.lr)}

    def train_step(self, batches, opts, step: int, autocast, gens) -> dict[str, float]:
        x, cond = next(batches)
        eps = torch.randn(len(x), self.cfg.latent_dim, generator=gens["noise"], device=x.device)
        with autocast():
            recon, mu, logvar = (self.g_run if self.g_run is not self else super().__call__)(x, cond, eps)
        recon, mu, logvar = recon.float(), mu.float(), logvar.float()
        if self.cfg.likelihood == "zero_inflated":
            recon, x_logvar, hit_logit = recon.chunk(3, dim=1)
            rec = zero_inflated_nll(hit_logit, recon, x_logvar, x, self.hits(x)).mean()
        elif self.cfg.likelihood == "gaussian":
            recon, x_logvar = recon.chunk(2, dim=1)
            rec = gaussian_nll(recon, x_logvar, x).sum(1).mean()
        else:
            rec = ((recon - x) ** 2).sum(1).mean()
        kl = kl_normal(mu, logvar)
        loss = rec + kl_weight(self.cfg, step) * kl
        if self.cfg.energy_aux_weight > 0:
            aux = self.energy_aux(recon, x)
            loss = loss + self.cfg.energy_aux_weight * aux
        opts["vae"].zero_grad(set_to_none=True)
        loss.backward()
        opts["vae"].step()
        return {"loss": float(loss.detach()), "recon": float(rec.detach()), "kl": float(kl.detach())}


def zero_inflated_nll(hit_logit: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor,
                      hit: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: Bernoulli for whether each voxel is hit, and for a hit a Gaussian for x.
    `counted` masks voxels out (padding)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(hit_logit, hit.float(), reduction="none")
    if counted is not None:
        bce = bce * counted
    return (bce + torch.where(hit, gaussian_nll(mean, logvar, x), torch.zeros_like(x))).sum(1)


class _Sampler(nn.Module):
    """cat([z, eps, (eps_hit,) cond]) -> u drawn from the decoder's per-voxel distribution:
    mean + sigma * eps, and (zero-inflated) an empty voxel unless Phi(eps_hit) < p_hit."""

    def __init__(self, decoder: nn.Module, latent_dim: int, n_voxels: int, transform, zero_inflated: bool):
        super().__init__()
        self.decoder, self.latent_dim, self.n_voxels = decoder, latent_dim, n_voxels
        self.zero_inflated = zero_inflated
        object.__setattr__(self, "transform", transform)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        L, V = self.latent_dim, self.n_voxels
        k = 2 if self.zero_inflated else 1
        z, eps, cond = inp[:, :L], inp[:, L:L + k * V], inp[:, L + k * V:]
        out = self.decoder(torch.cat([z, cond], 1)).float()
        mean, logvar = out[:, :V], out[:, V:2 * V].clamp(LOGVAR_MIN, LOGVAR_MAX)
        u = mean + torch.exp(0.5 * logvar) * eps[:, :V]
        if self.zero_inflated:
            t = self.transform
            empty = t.from_log_fraction(torch.full_like(t.mean, math.log(t.eps)))
            # Phi(eps) < p_hit (erfc: one graph op for the export, where ndtri has none)
            hit = 0.5 * torch.erfc(eps[:, V:] * -math.sqrt(0.5)) < torch.sigmoid(out[:, 2 * V:])
            u = torch.where(hit, u, empty.expand_as(u))
        return u
