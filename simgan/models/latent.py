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


def code_flow(latent_dim: int, context_dim: int, passes: int | None = None) -> nn.Module:
    """A VAE's latent sampler: a conditional neural spline flow (zuko) of the codes given the
    conditions, fitted after training to the encoder's means of the training set (the aggregate
    posterior, which the prior N(0, 1) matches only roughly). passes=2: coupling transforms, whose
    inverse (the sampling direction) is one network pass each, not one per latent dimension."""
    import zuko
    return zuko.flows.NSF(features=latent_dim, context=context_dim, transforms=3, hidden_features=[128, 128],
                          **({"passes": passes} if passes else {}))


def fit_code_flow(flow: nn.Module, codes: torch.Tensor, context: torch.Tensor, steps: int, seed: int,
                  batch: int = 256, lr: float = 1e-3) -> float:
    """Maximum likelihood of the codes (N, latent) given the context (N, C) for `steps` Adam steps
    on random batches (seeded); returns the final mean negative log-likelihood over all codes."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    for _ in range(steps):
        i = torch.randint(len(codes), (min(batch, len(codes)),), generator=g)
        loss = -flow(context[i]).log_prob(codes[i]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(-flow(context).log_prob(codes).mean())


def codes_from_noise(flow: nn.Module, context: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The codes for standard-normal draws eps (N, latent): the flow's inverse, given the context."""
    return flow(context).transform.inv(eps)
