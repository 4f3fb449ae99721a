"""Layer-structured convolutional blocks for calorimeter showers."""

from __future__ import annotations

import torch
from torch import nn

from simgan.errors import SimganError
from simgan.models.blocks import mlp


class LayerConvNet(nn.Module):
    """Maps (features, cond) to an output through 1D convolutions along the depth (layer) axis.

    Each calorimeter layer is one position; its voxels are the channels. Needs a binning
    whose layers all have the same number of voxels (datasets 2 and 3, our reference).
    """

    def __init__(self, n_in: int, n_layers: int, per_layer: int, n_out: int, width: int = 64):
        super().__init__()
        self.n_layers, self.width = n_layers, width
        self.inp = nn.Linear(n_in, n_layers * width)
        self.conv = nn.Sequential(
            nn.LeakyReLU(0.2), nn.Conv1d(width, width, 5, padding=2),
            nn.LeakyReLU(0.2), nn.Conv1d(width, width, 5, padding=2), nn.LeakyReLU(0.2),
        )
        self.out_per_layer = nn.Conv1d(width, per_layer, 1)
        self.head = nn.Linear(n_layers * per_layer, n_out) if n_out != n_layers * per_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x).view(-1, self.width, self.n_layers)
        h = self.out_per_layer(self.conv(h))  # (B, per_layer, n_layers)
        return self.head(h.transpose(1, 2).reshape(x.shape[0], -1))


def layer_shape(layer_voxels: list[int]) -> tuple[int, int]:
    if len(set(layer_voxels)) != 1:
        raise SimganError("arch=conv needs a binning with the same number of voxels in every layer; use arch=mlp")
    return len(layer_voxels), layer_voxels[0]


def body(arch: str, n_in: int, hidden: list[int], n_out: int, layer_voxels: list[int], norm: bool = False) -> nn.Module:
    if arch == "conv":
        n_layers, per_layer = layer_shape(layer_voxels)
        return LayerConvNet(n_in, n_layers, per_layer, n_out, width=hidden[0] // 4 if hidden else 64)
    return mlp(n_in, hidden, n_out, norm)
