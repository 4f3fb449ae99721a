"""Conditional VAE: ELBO with beta and KL warm-up; the decoder generates at sampling time."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class VAEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: Literal["vae"] = "vae"
    arch: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = Field(32, gt=0)
    hidden: list[int] = [512, 256]
    beta: float = Field(1.0, ge=0)
    kl_warmup_steps: int = Field(500, ge=0)
    lr: float = Field(1e-3, gt=0)
    energy_aux_weight: float = Field(0.0, ge=0)


import torch  # noqa: E402
from torch import nn  # noqa: E402

from simgan.models.components.blocks import body  # noqa: E402
from simgan.models.base import ConditionalSurrogate  # noqa: E402


class ConditionalVAE(ConditionalSurrogate):
    """Encoder q(z|x,c), decoder p(x|z,c); the decoder is the generator at sampling time."""

    family = "vae"

    def __init__(self, cfg: VAEConfig, n_voxels: int, layer_voxels: list[int], n_extra: int = 0,
                 threshold_mev: float = 0.0):
        super().__init__(cfg, n_voxels, n_extra, threshold_mev)
        c = self.transform.cond_dim
        self.encoder = body(cfg.arch, n_voxels + c, cfg.hidden, 2 * cfg.latent_dim, layer_voxels)
        self.decoder = body(cfg.arch, cfg.latent_dim + c, list(reversed(cfg.hidden)), n_voxels, layer_voxels)
        object.__setattr__(self, "g_run", self)  # the trainer may wrap the whole VAE in DDP

    def forward(self, x: torch.Tensor, cond: torch.Tensor, eps: torch.Tensor):
        mu, logvar = self.encoder(torch.cat([x, cond], 1)).chunk(2, dim=1)
        logvar = logvar.clamp(-20, 10)
        z = mu + torch.exp(0.5 * logvar) * eps  # reparameterisation
        return self.decoder(torch.cat([z, cond], 1)), mu, logvar

    def sampling_net(self) -> nn.Module:
        return self.decoder

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": torch.optim.Adam(self.parameters(), lr=self.cfg.lr)}

    def kl_weight(self, step: int) -> float:
        warm = 1.0 if self.cfg.kl_warmup_steps == 0 else min(1.0, step / self.cfg.kl_warmup_steps)
        return self.cfg.beta * warm

    def train_step(self, batches, opts, step: int, autocast, gens) -> dict[str, float]:
        x, cond = next(batches)
        eps = torch.randn(len(x), self.cfg.latent_dim, generator=gens["noise"], device=x.device)
        with autocast():
            recon, mu, logvar = (self.g_run if self.g_run is not self else super().__call__)(x, cond, eps)
        recon, mu, logvar = recon.float(), mu.float(), logvar.float()
        rec = ((recon - x) ** 2).sum(1).mean()
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()
        loss = rec + self.kl_weight(step) * kl
        if self.cfg.energy_aux_weight > 0:
            aux = self.energy_aux(recon, x)
            loss = loss + self.cfg.energy_aux_weight * aux
        opts["vae"].zero_grad(set_to_none=True)
        loss.backward()
        opts["vae"].step()
        return {"loss": float(loss.detach()), "recon": float(rec.detach()), "kl": float(kl.detach())}
