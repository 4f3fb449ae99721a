"""Network blocks shared by the domains."""

from __future__ import annotations

import torch
from torch import nn


def mlp(n_in: int, hidden: list[int], n_out: int, norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    prev = n_in
    for h in hidden:
        layers.append(nn.Linear(prev, h))
        if norm:
            layers.append(nn.LayerNorm(h))
        layers.append(nn.LeakyReLU(0.2))
        prev = h
    layers.append(nn.Linear(prev, n_out))
    return nn.Sequential(*layers)


def logistic(x: torch.Tensor) -> torch.Tensor:
    """The logistic function (torch.sigmoid) with full relative precision in both tails, in
    elementwise ops: what exported graphs use, since onnxruntime's Sigmoid loses it below
    x = -20 (measured: 0.1% at -30 in float64, a factor of 6 in float32)."""
    e = torch.exp(-x.abs())
    return torch.where(x >= 0, 1 / (1 + e), e / (1 + e))
