"""Conditional GANs: WGAN-GP (default), and the seed baselines as configs of the same code.

loss=wgan_gp     gradient penalty on interpolates, n_critic critic steps, Adam
loss=bce         non-saturating GAN with binary cross-entropy
loss=wgan_clip   WGAN with weight clipping (RMSProp, c=0.01, n_critic=5)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GANConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: Literal["gan"] = "gan"
    loss: Literal["wgan_gp", "bce", "wgan_clip"] = "wgan_gp"
    arch: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = Field(64, gt=0)
    hidden: list[int] = [256, 512]
    critic_hidden: list[int] = [512, 256]
    gp_lambda: float = Field(10.0, ge=0)
    n_critic: int = Field(5, gt=0)
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.9)
    clip_value: float = Field(0.01, gt=0)
    energy_aux_weight: float = Field(0.0, ge=0)


import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from simgan.models.components.blocks import body  # noqa: E402
from simgan.models.base import ConditionalSurrogate  # noqa: E402


class ConditionalGAN(ConditionalSurrogate):
    """Generator G(z, c) and critic D(x, c); x lives in the transform's normalised space."""

    family = "gan"

    def __init__(self, cfg: GANConfig, n_voxels: int, layer_voxels: list[int], n_extra: int = 0,
                 threshold_mev: float = 0.0):
        super().__init__(cfg, n_voxels, n_extra, threshold_mev)
        c = self.transform.cond_dim
        self.generator = body(cfg.arch, cfg.latent_dim + c, cfg.hidden, n_voxels, layer_voxels)
        self.critic = body(cfg.arch, n_voxels + c, cfg.critic_hidden, 1, layer_voxels)
        # what the trainer runs (DDP wrappers under torchrun); kept out of the module registry
        # so that state_dict keys do not depend on how the model is run
        object.__setattr__(self, "g_run", self.generator)
        object.__setattr__(self, "d_run", self.critic)

    def generate_u(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(len(cond), self.cfg.latent_dim, generator=generator, device=cond.device)
        return self.g_run(torch.cat([z, cond], 1))

    def sampling_net(self) -> nn.Module:
        return self.generator

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.cfg
        if c.loss == "wgan_clip":
            return {"g": torch.optim.RMSprop(self.generator.parameters(), lr=c.lr_g),
                    "d": torch.optim.RMSprop(self.critic.parameters(), lr=c.lr_d)}
        return {"g": torch.optim.Adam(self.generator.parameters(), lr=c.lr_g, betas=tuple(c.betas)),
                "d": torch.optim.Adam(self.critic.parameters(), lr=c.lr_d, betas=tuple(c.betas))}

    def gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor,
                         gen: torch.Generator | None) -> torch.Tensor:
        """In fp32, out of autocast; out-of-place autograd.grad so it is correct under DDP."""
        with torch.autocast(device_type=real.device.type, enabled=False):
            eps = torch.rand(len(real), 1, generator=gen, device=real.device)
            inter = (eps * real.float() + (1 - eps) * fake.float()).requires_grad_(True)
            out = self.critic(torch.cat([inter, cond.float()], 1))
            (grad,) = torch.autograd.grad(out.sum(), inter, create_graph=True)
            return ((grad.norm(2, dim=1) - 1) ** 2).mean()

    def train_step(self, batches, opts, step: int, autocast, gens) -> dict[str, float]:
        """One generator step after n_critic critic steps. `batches` yields (u_real, cond)."""
        c = self.cfg
        logs: dict[str, float] = {}
        self.critic.requires_grad_(True)
        for _ in range(c.n_critic):
            real, cond = next(batches)
            with torch.no_grad(), autocast():
                fake = self.generate_u(cond, gens["noise"])
            with autocast():
                d_out = self.d_run(torch.cat([torch.cat([real, fake.to(real.dtype)]), torch.cat([cond, cond])], 1)).float()
            d_real, d_fake = d_out[: len(real)], d_out[len(real):]
            if c.loss == "bce":
                loss_d = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + \
                    F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
            else:
                wdist = d_real.mean() - d_fake.mean()
                loss_d = -wdist
                logs["wasserstein"] = float(wdist.detach())
                if c.loss == "wgan_gp":
                    gp = self.gradient_penalty(real, fake.detach(), cond, gens["noise"])
                    loss_d = loss_d + c.gp_lambda * gp
                    logs["gp"] = float(gp.detach())
            opts["d"].zero_grad(set_to_none=True)
            loss_d.backward()
            opts["d"].step()
            if c.loss == "wgan_clip":
                with torch.no_grad():
                    for p in self.critic.parameters():
                        p.clamp_(-c.clip_value, c.clip_value)
        logs["loss_d"] = float(loss_d.detach())
        self.critic.requires_grad_(False)
        real, cond = next(batches)
        with autocast():
            fake = self.generate_u(cond, gens["noise"])
            d_fake = self.critic(torch.cat([fake, cond.to(fake.dtype)], 1)).float()
        if c.loss == "bce":
            loss_g = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        else:
            loss_g = -d_fake.mean()
        if c.energy_aux_weight > 0:
            aux = self.energy_aux(fake, real)
            loss_g = loss_g + c.energy_aux_weight * aux
            logs["energy_aux"] = float(aux.detach())
        opts["g"].zero_grad(set_to_none=True)
        loss_g.backward()
        opts["g"].step()
        self.critic.requires_grad_(True)
        logs["loss_g"] = float(loss_g.detach())
        return logs

