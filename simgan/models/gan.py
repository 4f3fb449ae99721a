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
