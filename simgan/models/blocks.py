"""Network blocks shared by the domains."""

from __future__ import annotations

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
