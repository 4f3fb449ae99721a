"""Observables of neuron projection images (per image; the soma at a fixed pixel).

total projected length (image sum, um); a 2D Sholl profile (length in rings about the soma
pixel); maximum extent (largest soma distance of a pixel above 1 um); occupancy (pixels above
1 um); elongation (sqrt of the ratio of the weighted second moments' eigenvalues) and the
centroid offset (weighted mean position relative to the soma, um; +y up).
"""

from __future__ import annotations

import numpy as np

from simgan.domains.neuron.simulator import Projection

OCCUPIED_UM = 1.0
SHOLL_STEP_UM = 128.0
SHOLL_RINGS = 8  # 0-1024 um in 128 um rings; the rest in the last


def pixel_positions(proj: Projection) -> tuple[np.ndarray, np.ndarray]:
    """x (right) and y (up) of every pixel centre relative to the soma, um, (size, size) each."""
    idx = np.arange(proj.size)
    x = (idx[None, :] - proj.soma_col) * proj.pixel_um
    y = (proj.soma_row - idx[:, None]) * proj.pixel_um
    return np.broadcast_to(x, (proj.size, proj.size)), np.broadcast_to(y, (proj.size, proj.size))


def sholl_profile(images: np.ndarray, proj: Projection) -> np.ndarray:
    """(N, SHOLL_RINGS) neurite length in rings of SHOLL_STEP_UM about the soma."""
    x, y = pixel_positions(proj)
    ring = np.minimum((np.hypot(x, y) / SHOLL_STEP_UM).astype(np.int64), SHOLL_RINGS - 1).ravel()
    flat = images.reshape(len(images), -1).astype(np.float64)
    onehot = np.zeros((flat.shape[1], SHOLL_RINGS))
    onehot[np.arange(flat.shape[1]), ring] = 1.0
    return flat @ onehot


def image_features(images: np.ndarray, proj: Projection) -> dict[str, np.ndarray]:
    n = len(images)
    flat = images.reshape(n, -1).astype(np.float64)
    x, y = (a.ravel() for a in pixel_positions(proj))
    total = flat.sum(1)
    occ = flat > OCCUPIED_UM
    dist = np.hypot(x, y)
    extent = np.where(occ, dist[None], 0.0).max(1)
    w = flat / np.maximum(total, 1e-12)[:, None]
    cx, cy = w @ x, w @ y
    sxx = w @ (x * x) - cx**2
    syy = w @ (y * y) - cy**2
    sxy = w @ (x * y) - cx * cy
    tr, det = sxx + syy, sxx * syy - sxy**2
    disc = np.sqrt(np.maximum(tr**2 / 4 - det, 0))
    l1, l2 = tr / 2 + disc, np.maximum(tr / 2 - disc, 1e-6)
    sholl = sholl_profile(images, proj)
    out = {"total_length": total, "max_extent": extent, "occupancy": occ.sum(1).astype(np.float64),
           "elongation": np.sqrt(l1 / l2), "centroid_dy": cy, "centroid_dx": cx,
           "radius_of_gyration": np.sqrt(np.maximum(tr, 0))}
    for k in range(SHOLL_RINGS):
        out[f"sholl_{k}"] = sholl[:, k] / np.maximum(total, 1e-12)  # the share of length in ring k
    return out


KEY_OBSERVABLES = ("total_length", "max_extent", "occupancy", "elongation", "centroid_dy")
