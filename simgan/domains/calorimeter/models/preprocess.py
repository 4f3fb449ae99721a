"""Invertible preprocessing saved with the model.

u = standardise(log(x / E_inc + eps)) per voxel, after zeroing voxels below the domain's
readout threshold (as the evaluation does); the inverse clips at zero and zeroes voxels
below the threshold again, which restores the showers' sparsity. Conditions: log(E_inc)
standardised, then any extra condition standardised. The transform also keeps the mean and
spread of log(E_tot / E_inc), for generators that produce the total response explicitly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ShowerTransform(nn.Module):
    def __init__(self, n_voxels: int, n_extra: int = 0, eps: float = 1e-7, threshold_mev: float = 0.0):
        super().__init__()
        self.eps = eps
        self.threshold_mev = threshold_mev
        self.register_buffer("mean", torch.zeros(n_voxels))
        self.register_buffer("std", torch.ones(n_voxels))
        # per-voxel range of u seen in training: decoding clamps to it, so one wild generator
        # output cannot become an energy many times the incident energy
        self.register_buffer("u_lo", torch.full((n_voxels,), -1e3))
        self.register_buffer("u_hi", torch.full((n_voxels,), 1e3))
        self.register_buffer("r_mean", torch.zeros(()))
        self.register_buffer("r_std", torch.ones(()))
        self.register_buffer("cond_mean", torch.zeros(1 + n_extra))
        self.register_buffer("cond_std", torch.ones(1 + n_extra))

    @property
    def cond_dim(self) -> int:
        return self.cond_mean.numel()

    def _thresholded(self, showers):
        if self.threshold_mev <= 0:
            return showers
        if isinstance(showers, np.ndarray):
            return np.where(showers >= self.threshold_mev, showers, 0.0)
        return torch.where(showers >= self.threshold_mev, showers, torch.zeros_like(showers))

    def fit(self, energies: np.ndarray, showers: np.ndarray, extra: np.ndarray | None = None) -> ShowerTransform:
        showers = self._thresholded(showers)
        log_r = np.log(np.maximum(showers.sum(1, dtype=np.float64) / energies, 1e-12))
        self.r_mean.fill_(float(log_r.mean()))
        self.r_std.fill_(float(max(log_r.std(), 1e-3)))
        u = np.log(showers / energies[:, None] + self.eps)
        self.mean.copy_(torch.as_tensor(u.mean(0)))
        self.std.copy_(torch.as_tensor(np.maximum(u.std(0), 1e-3)))
        z = (u - u.mean(0)) / np.maximum(u.std(0), 1e-3)
        self.u_lo.copy_(torch.as_tensor(z.min(0)))
        self.u_hi.copy_(torch.as_tensor(z.max(0)))
        c = self._raw_cond(torch.as_tensor(energies), None if extra is None else torch.as_tensor(extra)).numpy()
        self.cond_mean.copy_(torch.as_tensor(c.mean(0)))
        self.cond_std.copy_(torch.as_tensor(np.maximum(c.std(0), 1e-3)))
        return self

    @staticmethod
    def _raw_cond(energies: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        c = torch.log(energies.double()).reshape(-1, 1)
        if extra is not None and extra.numel():
            c = torch.cat([c, extra.double().reshape(len(c), -1)], dim=1)
        return c

    def cond(self, energies: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        c = self._raw_cond(energies, extra).to(self.cond_mean.device)
        return ((c - self.cond_mean.double()) / self.cond_std.double()).float()

    def encode(self, showers: torch.Tensor, energies: torch.Tensor) -> torch.Tensor:
        x = self._thresholded(showers.double()) / energies.double().reshape(-1, 1)
        return ((torch.log(x + self.eps) - self.mean.double()) / self.std.double()).float()

    def decode(self, u: torch.Tensor, energies: torch.Tensor) -> torch.Tensor:
        """Inverse transform. Works in place on one fresh tensor: generation is memory-bound."""
        x = torch.clamp(u.float(), self.u_lo, self.u_hi)
        x.mul_(self.std).add_(self.mean).exp_().sub_(self.eps).clamp_min_(0)
        x.mul_(energies.float().reshape(-1, 1).to(x.device))
        if self.threshold_mev > 0:
            x.masked_fill_(x < self.threshold_mev, 0.0)
        return x

    def log_fraction(self, u: torch.Tensor) -> torch.Tensor:
        """u -> log(x / E_inc + eps), differentiable, in fp32."""
        return u.float() * self.std + self.mean

    def from_log_fraction(self, log_x: torch.Tensor) -> torch.Tensor:
        """log(x / E_inc + eps) -> u; log(eps) is an empty voxel."""
        return (log_x - self.mean) / self.std

    def fraction(self, u: torch.Tensor) -> torch.Tensor:
        """u -> x / E_inc, differentiable, not clamped to the training range."""
        return (torch.exp(self.log_fraction(u)) - self.eps).clamp_min(0)

    def decode_total_fraction(self, u: torch.Tensor) -> torch.Tensor:
        """Differentiable E_tot / E_inc of generated showers (for the energy-consistency aid)."""
        return self.fraction(u).sum(1)

