"""Classifier two-sample test: seeded split, isotonic calibration, AUC and JSD over seeds.

A classifier learns to tell reference from candidate. AUC 0.5 and JSD 0: it cannot;
AUC 1 and JSD 1: the samples are disjoint.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split


def _one(ref: np.ndarray, cand: np.ndarray, seed: int, max_iter: int) -> tuple[float, float]:
    X = np.concatenate([ref, cand])
    y = np.concatenate([np.ones(len(ref)), np.zeros(len(cand))])
    X_tr, X_rest, y_tr, y_rest = train_test_split(X, y, test_size=0.4, random_state=seed, stratify=y)
    X_cal, X_te, y_cal, y_te = train_test_split(X_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest)
    clf = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=0.1, early_stopping=True,
                                         validation_fraction=0.2, random_state=seed)
    clf.fit(X_tr, y_tr)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1 - 1e-6)
    iso.fit(clf.predict_proba(X_cal)[:, 1], y_cal)
    p = iso.predict(clf.predict_proba(X_te)[:, 1])
    auc = roc_auc_score(y_te, p)
    p = np.clip(p, 1e-6, 1 - 1e-6)
    jsd = 1 + 0.5 * (np.mean(np.log2(p[y_te == 1])) + np.mean(np.log2(1 - p[y_te == 0])))
    return float(max(auc, 1 - auc) if auc < 0.5 else auc), float(np.clip(jsd, 0.0, 1.0))


def classifier_test(ref: np.ndarray, cand: np.ndarray, seeds: int = 3, max_events: int = 20000,
                    max_iter: int = 200) -> dict:
    rng = np.random.default_rng(1234)
    n = min(len(ref), len(cand), max_events)
    ref = ref[rng.choice(len(ref), n, replace=False)]
    cand = cand[rng.choice(len(cand), n, replace=False)]
    res = [_one(ref, cand, s, max_iter) for s in range(seeds)]
    aucs, jsds = np.array([r[0] for r in res]), np.array([r[1] for r in res])
    return {"auc": float(aucs.mean()), "auc_std": float(aucs.std()), "jsd": float(jsds.mean()),
            "jsd_std": float(jsds.std()), "n_per_class": int(n), "seeds": seeds}


def low_level_inputs(showers: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """Voxel inputs for the classifier: log of the energy fraction, plus log E_inc."""
    x = np.log10(showers / energies[:, None] + 1e-8)
    return np.concatenate([x, np.log10(energies)[:, None]], 1).astype(np.float32)


def high_level_inputs(features: np.ndarray, energies: np.ndarray) -> np.ndarray:
    return np.concatenate([features, np.log10(energies)[:, None]], 1)
