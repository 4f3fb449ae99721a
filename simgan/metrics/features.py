"""CaloChallenge high-level features, computed chunk by chunk (optionally on dask).

E_tot/E_inc; per layer: energy, centre of energy and width in x, y (eta/phi) and r,
sparsity (fraction of voxels above threshold). Voxels below the threshold are zeroed
first, in both samples, as the official evaluation does.
"""

from __future__ import annotations

import numpy as np

from simgan.data.binning import Binning


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


def high_level_features(showers: np.ndarray, energies: np.ndarray, binning: Binning,
                        threshold_mev: float = 0.0) -> np.ndarray:
    """(N, F) float64 in the order of feature_names(binning)."""
    x = np.where(showers >= threshold_mev, showers, 0.0).astype(np.float64) if threshold_mev > 0 else showers.astype(np.float64)
    vx, vy, vr = binning.voxel_xy
    cols = [x.sum(1) / energies]
    for sl, layer in zip(binning.layer_slices, binning.layers):
        if layer.n_voxels == 0:
            continue
        e = x[:, sl]
        el = e.sum(1)
        safe = np.where(el > 0, el, 1.0)
        feats = [el]
        means = []
        for coord in (vx[sl], vy[sl], vr[sl]):
            m = (e * coord).sum(1) / safe
            means.append(m)
            feats.append(np.where(el > 0, m, 0.0))
        for coord, m in zip((vx[sl], vy[sl], vr[sl]), means):
            var = (e * coord**2).sum(1) / safe - m**2
            feats.append(np.where(el > 0, np.sqrt(np.clip(var, 0, None)), 0.0))
        feats.append((e > 0).mean(1))
        cols.extend(feats)
    return np.stack(cols, 1)


def features_from_file(path, binning: Binning | None = None, threshold_mev: float = 0.0, chunk_size: int = 2000,
                       start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features, energies) for rows [start, stop) of a canonical file, chunk by chunk."""
    from simgan.data.calochallenge import iter_chunks

    fs, es = [], []
    for _, e, s, _ in iter_chunks(path, chunk_size, binning, start=start, stop=stop):
        fs.append(high_level_features(s, e, binning or _binning_of(path), threshold_mev))
        es.append(e)
    return np.concatenate(fs), np.concatenate(es)


def _binning_of(path) -> Binning:
    from simgan.data.calochallenge import inspect

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
