"""Physics validation of a candidate sample against held-out simulation; the gate."""

from __future__ import annotations

import html
import time
from pathlib import Path

import numpy as np

from simgan.config import ValidateConfig
from simgan.data import calochallenge as cc
from simgan.errors import SimganError
from simgan.io import atomic_path, write_json_atomic
from simgan.metrics.classifier import classifier_test, high_level_inputs, low_level_inputs
from simgan.metrics.distances import separation_power, wasserstein1_scaled
from simgan.metrics.features import feature_names, features_from_file, features_with_dask
from simgan.metrics.fpd import fpd, kpd


def _sample_rows(path, n_total: int, n: int, seed: int):
    idx = np.sort(np.random.default_rng(seed).choice(n_total, min(n, n_total), replace=False))
    with cc._open(path) as f:
        return np.asarray(f[cc.SHOWER_KEY][idx], np.float32), np.asarray(f[cc.ENERGY_KEY][idx], np.float64).reshape(-1)


def gate(metrics: dict, cfg: ValidateConfig) -> dict:
    g = cfg.gate
    checks = {
        "auc_high": (metrics["auc_high"], g.auc_high_max),
        "auc_low": (metrics["auc_low"], g.auc_low_max),
        "separation_etot_over_einc": (metrics["separation_power"]["etot_over_einc"], g.separation_etot_max),
        "separation_mean": (metrics["separation_power_mean"], g.separation_mean_max),
    }
    if g.fpd_max is not None:
        checks["fpd"] = (metrics["fpd"], g.fpd_max)
    out = {k: {"value": float(v), "max": float(t), "pass": bool(np.isfinite(v) and v <= t)} for k, (v, t) in checks.items()}
    return {"checks": out, "pass": all(c["pass"] for c in out.values())}


def validate(reference, candidate, out_dir, cfg: ValidateConfig, threshold_mev: float, client=None) -> dict:
    t0 = time.time()
    out_dir = Path(out_dir)
    ref_info, cand_info = cc.inspect(reference), cc.inspect(candidate)
    if ref_info.binning.digest() != cand_info.binning.digest():
        raise SimganError(f"{candidate}: geometry ({cand_info.binning.n_voxels} voxels, layout {cand_info.binning.digest()}) "
                          f"differs from the reference {reference} ({ref_info.binning.n_voxels} voxels, layout "
                          f"{ref_info.binning.digest()}); compare samples of the same binning")
    binning = ref_info.binning
    names = feature_names(binning)
    feats = []
    for path, info in ((reference, ref_info), (candidate, cand_info)):
        if client is not None:
            feats.append(features_with_dask(path, info.n_events, threshold_mev, cfg.chunk_size, client))
        else:
            feats.append(features_from_file(path, binning, threshold_mev, cfg.chunk_size))
    (rf, re), (cf, ce) = feats
    seps = {n: separation_power(rf[:, j], cf[:, j]) for j, n in enumerate(names)}
    w1s = {n: wasserstein1_scaled(rf[:, j], cf[:, j]) for j, n in enumerate(names)}
    high = classifier_test(high_level_inputs(rf, re), high_level_inputs(cf, ce), cfg.classifier_seeds, cfg.classifier_max_events)
    n_low = min(cfg.classifier_max_events_low, ref_info.n_events, cand_info.n_events)
    rs, rse = _sample_rows(reference, ref_info.n_events, n_low, 1)
    cs, cse = _sample_rows(candidate, cand_info.n_events, n_low, 2)
    low = classifier_test(low_level_inputs(np.where(rs >= threshold_mev, rs, 0), rse),
                          low_level_inputs(np.where(cs >= threshold_mev, cs, 0), cse),
                          cfg.classifier_seeds, cfg.classifier_max_events_low, max_iter=100)
    kpd_mean, kpd_std = kpd(rf, cf)
    metrics = {
        "auc_high": high["auc"], "auc_high_std": high["auc_std"], "jsd_high": high["jsd"],
        "auc_low": low["auc"], "auc_low_std": low["auc_std"], "jsd_low": low["jsd"],
        "separation_power": seps, "separation_power_mean": float(np.mean(list(seps.values()))),
        "wasserstein1": w1s, "wasserstein1_mean": float(np.nanmean(list(w1s.values()))),
        "fpd": fpd(rf, cf), "kpd": kpd_mean, "kpd_std": kpd_std,
        "n_reference": int(ref_info.n_events), "n_candidate": int(cand_info.n_events),
        "classifier_events_per_class": {"high": high["n_per_class"], "low": low["n_per_class"]},
        "reference": str(reference), "candidate": str(candidate), "threshold_mev": threshold_mev,
    }
    metrics["gate"] = gate(metrics, cfg)
    metrics["wall_seconds"] = time.time() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    if cfg.plots:
        from simgan.report import plots as P

        worst = sorted(seps, key=seps.get, reverse=True)[:4]
        picks = ["etot_over_einc"] + [n for n in names if n.endswith(("_layer_05", "_layer_20"))
                                      and n.startswith(("e_layer", "width_r", "sparsity"))] + worst
        picks = list(dict.fromkeys(picks))[:12]
        plots = [P.feature_grid(rf, cf, names, seps, out_dir / "features.png", picks),
                 P.profiles(rf, cf, names, out_dir / "profiles.png"),
                 P.response(rf, re, cf, ce, out_dir / "response.png")]
    write_report(out_dir, metrics, plots)
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics


def verdict(metrics: dict) -> str:
    g = metrics["gate"]
    return "PASS" if g["pass"] else "FAIL"


def write_report(out_dir: Path, m: dict, plots: list[Path]) -> None:
    rows = [f"| {k} | {c['value']:.4f} | {c['max']:.4f} | {'pass' if c['pass'] else 'FAIL'} |" for k, c in m["gate"]["checks"].items()]
    worst = sorted(m["separation_power"].items(), key=lambda kv: kv[1], reverse=True)[:10]
    md = [f"# Validation report: {verdict(m)}", "",
          f"Reference: `{m['reference']}` ({m['n_reference']} showers); candidate: `{m['candidate']}` ({m['n_candidate']} showers).", "",
          "## Gate", "", "| metric | value | max | result |", "|---|---|---|---|", *rows, "",
          "## Summary", "",
          f"- classifier AUC, high-level features: {m['auc_high']:.3f} ± {m['auc_high_std']:.3f} (JSD {m['jsd_high']:.3f})",
          f"- classifier AUC, voxels: {m['auc_low']:.3f} ± {m['auc_low_std']:.3f} (JSD {m['jsd_low']:.3f})",
          f"- mean separation power: {m['separation_power_mean']:.4f}; E_tot/E_inc: {m['separation_power']['etot_over_einc']:.4f}",
          f"- FPD {m['fpd']:.4f}, KPD {m['kpd']:.5f} ± {m['kpd_std']:.5f}", "",
          "## Largest separation powers", "", "| feature | separation | W1/σ |", "|---|---|---|",
          *[f"| {k} | {v:.4f} | {m['wasserstein1'][k]:.3f} |" for k, v in worst], "",
          *[f"![{p.stem}]({p.name})" for p in plots], ""]
    text = "\n".join(md)
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(text)
    body = []
    for line in md:
        if line.startswith("!["):
            name = line[line.index("(") + 1:-1]
            body.append(f'<img src="{html.escape(name)}" style="max-width:100%">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line:
            body.append(f"<pre>{html.escape(line)}</pre>" if line.startswith("|") else f"<p>{html.escape(line)}</p>")
    with atomic_path(out_dir / "report.html") as tmp:
        tmp.write_text("<html><head><meta charset='utf-8'><title>simgan validation</title></head><body>"
                       + "\n".join(body) + "</body></html>\n")
