"""Fréchet and kernel physics distances (FPD, KPD) on standardised high-level features."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def _standardise(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = ref.mean(0), ref.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return (ref - mu) / sd, (cand - mu) / sd


def fpd(ref: np.ndarray, cand: np.ndarray) -> float:
    r, c = _standardise(ref, cand)
    mu1, mu2 = r.mean(0), c.mean(0)
    s1, s2 = np.cov(r, rowvar=False), np.cov(c, rowvar=False)
    with warnings.catch_warnings():  # near-singular covariances (constant features) are expected
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(max(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean), 0.0))


def kpd(ref: np.ndarray, cand: np.ndarray, batches: int = 10, batch_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel, mean and std over batches."""
    r, c = _standardise(ref, cand)
    d = r.shape[1]
    rng = np.random.default_rng(seed)
    n = min(batch_size, len(r), len(c))
    vals = []
    for _ in range(batches):
        x = r[rng.choice(len(r), n, replace=False)]
        y = c[rng.choice(len(c), n, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))
