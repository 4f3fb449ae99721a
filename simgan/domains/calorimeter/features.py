"""CaloChallenge high-level features, computed chunk by chunk (optionally on dask).

E_tot/E_inc; per layer: energy, centre of energy and width in x, y (eta/phi) and r,
sparsity (fraction of voxels above threshold). Voxels below the threshold are zeroed
first, in both samples, as the official evaluation does.
"""

from __future__ import annotations

import numpy as np
import torch

from simgan.domains.calorimeter.data.binning import Binning
from simgan.domains.calorimeter.data.calochallenge import inspect, iter_chunks


def feature_names(binning: Binning) -> list[str]:
    names = ["etot_over_einc"]
    for layer in binning.layers:
        if layer.n_voxels == 0:
            continue
        i = layer.id
        names += [f"e_layer_{i:02d}", f"ce_x_layer_{i:02d}", f"ce_y_layer_{i:02d}", f"ce_r_layer_{i:02d}",
                  f"width_x_layer_{i:02d}", f"width_y_layer_{i:02d}", f"width_r_layer_{i:02d}",
                  f"sparsity_layer_{i:02d}"]
    return names


def layer_sum(t: torch.Tensor, layer_voxels: list[int]) -> torch.Tensor:
    """Sum the last axis (voxels, layer after layer) within each non-empty layer: (..., V) -> (..., L)."""
    if len(set(layer_voxels)) == 1:
        return t.reshape(*t.shape[:-1], len(layer_voxels), layer_voxels[0]).sum(-1)
    return torch.stack([part.sum(-1) for part in torch.split(t, layer_voxels, dim=-1)], -1)


def layer_moments(y: torch.Tensor, layer_voxels: list[int], coords: torch.Tensor, width_eps: float = 0.0,
                  empty_below: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-layer energy (B, L), centres of energy (3, B, L) and widths (3, B, L) of showers
    y (B, V), differentiable. `coords` (3, V) are voxel x, y, r. A layer whose energy is
    not above `empty_below` is empty: its centres and widths are 0, as in CaloChallenge.
    `width_eps` under the square root keeps gradients finite for single-voxel layers."""
    e = layer_sum(y, layer_voxels)
    full = e > empty_below
    safe = torch.where(full, e, torch.ones_like(e))
    if len(set(layer_voxels)) == 1:  # (B, L, n) against (3, L, n): no (3, B, V) temporaries, 7x faster
        y3 = y.reshape(len(y), len(layer_voxels), layer_voxels[0])
        c3 = coords.reshape(3, len(layer_voxels), layer_voxels[0])
        mean = torch.einsum("bln,cln->cbl", y3, c3) / safe
        var = torch.einsum("bln,cln->cbl", y3, c3 * c3) / safe - mean**2
    else:
        wy = y * coords[:, None, :]  # (3, B, V)
        mean = layer_sum(wy, layer_voxels) / safe
        var = layer_sum(wy * coords[:, None, :], layer_voxels) / safe - mean**2
    width = torch.sqrt(var.clamp_min(0) + width_eps)
    zero = torch.zeros_like(mean)
    return e, torch.where(full, mean, zero), torch.where(full, width, zero)


def high_level_features(showers: np.ndarray, energies: np.ndarray, binning: Binning,
                        threshold_mev: float = 0.0) -> np.ndarray:
    """(N, F) float64 in the order of feature_names(binning)."""
    x = torch.as_tensor(np.asarray(showers), dtype=torch.float64)
    if threshold_mev > 0:
        if x.data_ptr() == torch.as_tensor(np.asarray(showers)).data_ptr():
            x = x.clone()  # already float64: do not zero the caller's array
        x.masked_fill_(x < threshold_mev, 0.0)
    layer_voxels = [layer.n_voxels for layer in binning.layers if layer.n_voxels]
    coords = torch.as_tensor(np.stack(binning.voxel_xy), dtype=torch.float64)
    e, mean, width = layer_moments(x, layer_voxels, coords)
    sparsity = layer_sum((x > 0).to(torch.float32), layer_voxels).double() / torch.as_tensor(layer_voxels)
    per_layer = torch.stack([e, mean[0], mean[1], mean[2], width[0], width[1], width[2], sparsity], 2)
    etot = x.sum(1, keepdim=True) / torch.as_tensor(np.asarray(energies), dtype=torch.float64).reshape(-1, 1)
    return torch.cat([etot, per_layer.reshape(len(x), -1)], 1).numpy()


def features_from_file(path, binning: Binning | None = None, threshold_mev: float = 0.0, chunk_size: int = 2000,
                       start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features, energies) for rows [start, stop) of a canonical file, chunk by chunk."""

    fs, es = [], []
    for _, e, s, _ in iter_chunks(path, chunk_size, binning, start=start, stop=stop):
        fs.append(high_level_features(s, e, binning or _binning_of(path), threshold_mev))
        es.append(e)
    return np.concatenate(fs), np.concatenate(es)


def _binning_of(path) -> Binning:

    return inspect(path).binning


def _features_task(path, lo, hi, threshold_mev, chunk_size):
    import os

    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    return features_from_file(path, None, threshold_mev, chunk_size, lo, hi)


def features_with_dask(path, n_events: int, threshold_mev: float, chunk_size: int, client) -> tuple[np.ndarray, np.ndarray]:
    """Each task opens the file itself (h5py handles cannot be pickled) and reads its rows."""
    bounds = [(lo, min(lo + chunk_size, n_events)) for lo in range(0, n_events, chunk_size)]
    futures = [client.submit(_features_task, str(path), lo, hi, threshold_mev, chunk_size, pure=False)
               for lo, hi in bounds]
    parts = client.gather(futures)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
