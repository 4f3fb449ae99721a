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


# -- the CaloChallenge DNN classifier test ------------------------------------------------------

def dnn_classifier_test(ref: np.ndarray, cand: np.ndarray, runs: int = 10, n_layer: int = 2, n_hidden: int = 512,
                        dropout: float = 0.0, lr: float = 2e-4, batch_size: int = 1000, epochs: int = 50,
                        max_events: int | None = None, seed: int = 0) -> dict:
    """The classifier test of the CaloChallenge evaluation (evaluate.py, modes cls-high/cls-low):
    a fully connected net (input -> n_hidden, then n_layer more hidden layers of n_hidden,
    LeakyReLU, dropout) trained with BCE and Adam(lr) for `epochs` epochs on 60% of the
    events, the epoch with the best accuracy on a 20% "test" part kept, isotonic
    calibration on that part, AUC and JSD on the remaining 20%. Reference is label 1.

    Unlike evaluate.py it works on small samples: the batch size shrinks to give at least
    ten steps per epoch (evaluate.py's batch of 1000 gives a 1000-event sample one step per
    epoch, and an untrained classifier). It runs in float32 (evaluate.py: float64) and
    repeats `runs` times with different splits and initial weights (mean and spread)."""
    rng = np.random.default_rng(seed)
    n = min(len(ref), len(cand)) if max_events is None else min(len(ref), len(cand), max_events)
    ref = ref[rng.choice(len(ref), n, replace=False)]
    cand = cand[rng.choice(len(cand), n, replace=False)]
    res = [_dnn_run(ref, cand, s, n_layer, n_hidden, dropout, lr, batch_size, epochs) for s in range(seed, seed + runs)]
    aucs, jsds = np.array([r[0] for r in res]), np.array([r[1] for r in res])
    return {"auc": float(aucs.mean()), "auc_std": float(aucs.std()), "jsd": float(jsds.mean()),
            "jsd_std": float(jsds.std()), "n_per_class": int(n), "runs": runs}


def _dnn_run(ref, cand, seed, n_layer, n_hidden, dropout, lr, batch_size, epochs) -> tuple[float, float]:
    import torch
    from torch import nn

    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)

    def split(x):  # evaluate.py's ttv_split: 60% train, 20% "test" (selection, calibration), 20% "val"
        x = x[rng.permutation(len(x))]
        a, b = int(0.6 * len(x)), int(0.8 * len(x))
        return x[:a], x[a:b], x[b:]

    ref_parts, cand_parts = split(ref), split(cand)
    parts = [np.concatenate(p) for p in zip(ref_parts, cand_parts)]
    labels = [np.concatenate([np.ones(len(r)), np.zeros(len(c))]) for r, c in zip(ref_parts, cand_parts)]
    (x_tr, x_te, x_va), (y_tr, y_te, y_va) = [torch.as_tensor(p, dtype=torch.float32) for p in parts], \
        [torch.as_tensor(y, dtype=torch.float32) for y in labels]
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(x_tr.shape[1], n_hidden), nn.LeakyReLU(), nn.Dropout(dropout)]
    for _ in range(n_layer):
        layers += [nn.Linear(n_hidden, n_hidden), nn.LeakyReLU(), nn.Dropout(dropout)]
    net = nn.Sequential(*layers, nn.Linear(n_hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    bs = max(1, min(batch_size, len(x_tr) // 10))
    best_acc, best_state = -1.0, None
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x_tr), generator=g)
        for lo in range(0, len(x_tr), bs):
            idx = order[lo:lo + bs]
            loss = loss_fn(net(x_tr[idx])[:, 0], y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = float(((net(x_te)[:, 0] > 0).float() == y_te).float().mean())
        if acc > best_acc:
            best_acc, best_state = acc, {k: v.clone() for k, v in net.state_dict().items()}
        if acc == 1.0:
            break
    net.load_state_dict(best_state)
    with torch.no_grad():
        p_te = torch.sigmoid(net(x_te)[:, 0]).numpy()
        p_va = torch.sigmoid(net(x_va)[:, 0]).numpy()
    iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1 - 1e-6).fit(p_te, y_te.numpy())
    p = iso.predict(p_va)
    y = y_va.numpy()
    auc = roc_auc_score(y, p)
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(auc), float((np.log(2.0) - bce) / np.log(2.0))


def dnn_high_level_inputs(features: np.ndarray, energies: np.ndarray, names: list[str]) -> np.ndarray:
    """evaluate.py's cls-high inputs: log10 E_inc, log10(E_layer + 1e-8), and the centres and
    widths in x (eta) and y (phi) in units of 100 mm."""
    col = {n: i for i, n in enumerate(names)}
    pick = lambda prefix: features[:, [i for n, i in col.items() if n.startswith(prefix)]]  # noqa: E731
    return np.concatenate([np.log10(energies)[:, None], np.log10(pick("e_layer_") + 1e-8), pick("ce_x_") / 1e2,
                           pick("ce_y_") / 1e2, pick("width_x_") / 1e2, pick("width_y_") / 1e2], 1).astype(np.float32)


def dnn_low_level_inputs(showers: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """evaluate.py's cls-low inputs: log10 E_inc and the voxel energies over E_inc."""
    return np.concatenate([np.log10(energies)[:, None], showers / energies[:, None]], 1).astype(np.float32)
