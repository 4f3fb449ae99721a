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
