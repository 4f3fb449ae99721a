"""The pieces of a conditional VAE that do not depend on the domain: the reparameterised
encoder pass, the KL term and its warm-up, the Gaussian likelihood."""

from __future__ import annotations

import torch
from torch import nn

LOGVAR_MIN, LOGVAR_MAX = -10.0, 4.0


def encode_decode(encoder: nn.Module, decoder: nn.Module, x: torch.Tensor, cond: torch.Tensor, eps: torch.Tensor):
    """q(z | x, c) by reparameterisation with noise eps, then the decoder: (decoded, mu, logvar)."""
    mu, logvar = encoder(torch.cat([x, cond], 1)).chunk(2, dim=1)
    logvar = logvar.clamp(-20, 10)
    z = mu + torch.exp(0.5 * logvar) * eps
    return decoder(torch.cat([z, cond], 1)), mu, logvar


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(N(mu, exp(logvar)) || N(0, 1))."""
    return (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()


def kl_weight(cfg, step: int) -> float:
    """beta, ramped up linearly over the first kl_warmup_steps."""
    warm = 1.0 if cfg.kl_warmup_steps == 0 else min(1.0, step / cfg.kl_warmup_steps)
    return cfg.beta * warm


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-voxel negative log-likelihood of x under N(mean, exp(logvar)), without the constant."""
    logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
    return 0.5 * ((mean - x) ** 2 * torch.exp(-logvar) + logvar)


