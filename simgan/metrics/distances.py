"""One-dimensional distances between reference and candidate distributions."""

from __future__ import annotations

import numpy as np
from scipy.stats import wasserstein_distance


def reference_bins(ref: np.ndarray, n_bins: int = 50) -> np.ndarray:
    """Binning fixed by the reference (its 0.5-99.5 percentile range, widened slightly)."""
    ref = ref[np.isfinite(ref)]
    if len(ref) == 0:
        return np.linspace(0, 1, n_bins + 1)
    lo, hi = np.percentile(ref, [0.5, 99.5])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    return np.linspace(lo - pad, hi + pad, n_bins + 1)


def separation_power(ref: np.ndarray, cand: np.ndarray, bins: np.ndarray | None = None) -> float:
    """1/2 sum (h1-h2)^2/(h1+h2) over normalised histograms (0: identical, 1: disjoint).

    Entries outside the reference's range go to the edge bins so they still count.
    """
    bins = reference_bins(ref) if bins is None else bins
    r = np.clip(ref[np.isfinite(ref)], bins[0], bins[-1])
    c = np.clip(cand[np.isfinite(cand)], bins[0], bins[-1])
    h1, _ = np.histogram(r, bins)
    h2, _ = np.histogram(c, bins)
    h1 = h1 / max(h1.sum(), 1)
    h2 = h2 / max(h2.sum(), 1)
    s = h1 + h2
    m = s > 0
    return float(0.5 * np.sum((h1[m] - h2[m]) ** 2 / s[m]))


def wasserstein1_scaled(ref: np.ndarray, cand: np.ndarray) -> float:
    """W1 in units of the reference's standard deviation."""
    ref = ref[np.isfinite(ref)]
    cand = cand[np.isfinite(cand)]
    if len(ref) == 0 or len(cand) == 0:
        return float("nan")
    scale = np.std(ref) or 1.0
    return float(wasserstein_distance(ref, cand) / scale)
