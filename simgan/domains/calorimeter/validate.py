"""Physics validation of a candidate sample against held-out simulation; the gate.

Besides the whole-sample metrics (separation power and W1 per feature, classifier AUC on
high-level features and on voxels, FPD/KPD) the report says what gives a sample away:
the classifier AUC per feature group and per incident-energy bin, and the response per
energy bin. Every figure stands beside the simulator-vs-simulator floor: the same metrics
for an independent simulated sample (`floor`) of the candidate's size against the same
reference. Optionally the CaloChallenge DNN classifier test runs beside the boosted trees.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from simgan.domains.calorimeter import plots as P
from simgan.domains.calorimeter.config import CaloValidateConfig as ValidateConfig
from simgan.domains.calorimeter.data import calochallenge as cc
from simgan.domains.calorimeter.features import feature_names, features_from_file, features_with_dask
from simgan.errors import SimganError
from simgan.io import open_hdf5, same_file, write_json_atomic
from simgan.metrics.classifier import (
    classifier_test,
    dnn_classifier_test,
    dnn_high_level_inputs,
    dnn_low_level_inputs,
    high_level_inputs,
    low_level_inputs,
)
from simgan.metrics.distances import separation_power, wasserstein1_scaled
from simgan.metrics.fpd import fpd, kpd
from simgan.metrics.gate import gate_from_values, gate_rows, verdict
from simgan.report.markdown import fmt, write_markdown_report

# feature groups for the per-group classifier AUC: name -> feature-name prefixes
GROUPS = {"response": ("etot_over_einc",), "layer_energies": ("e_layer_",),
          "centres": ("ce_x_", "ce_y_", "ce_r_"), "widths": ("width_x_", "width_y_", "width_r_"),
          "sparsity": ("sparsity_",)}
MIN_PER_BIN = 40  # showers per class below which an energy bin gets no classifier AUC


def _sample_rows(path, n_total: int, n: int, seed: int, rows: np.ndarray | None = None):
    """`n` random rows (or the given ones) of a file: showers float32, energies."""
    if rows is None:
        rows = np.random.default_rng(seed).choice(n_total, min(n, n_total), replace=False)
    idx = np.sort(rows)
    with open_hdf5(path) as f:
        return np.asarray(f[cc.SHOWER_KEY][idx], np.float32), np.asarray(f[cc.ENERGY_KEY][idx], np.float64).reshape(-1)


def energy_bins(energies: np.ndarray, n_bins: int) -> np.ndarray:
    """Edges of `n_bins` logarithmic incident-energy bins spanning the reference."""
    lo, hi = float(energies.min()), float(energies.max())
    return np.geomspace(lo, hi * (1 + 1e-9), n_bins + 1)


def response_by_bin(rf, re, cf, ce, edges) -> list[dict]:
    """Mean and relative spread of E_tot/E_inc per incident-energy bin, reference and candidate."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        r, c = rf[(re >= lo) & (re < hi), 0], cf[(ce >= lo) & (ce < hi), 0]
        row = {"lo_gev": lo / 1e3, "hi_gev": hi / 1e3, "n_reference": int(len(r)), "n_candidate": int(len(c))}
        if len(r) > 1 and len(c) > 1:
            row.update(reference=float(r.mean()), candidate=float(c.mean()), deviation=float(c.mean() / r.mean() - 1),
                       resolution_reference=float(r.std() / r.mean()), resolution_candidate=float(c.std() / c.mean()))
        out.append(row)
    return out


def compare(rf, re, cf, ce, names, low_ref, low_cand, cfg: ValidateConfig, edges, thr: float) -> dict:
    """Every metric of one candidate (features cf, energies ce; voxel rows low_cand) against the
    reference (rf, re; low_ref)."""
    seps = {n: separation_power(rf[:, j], cf[:, j]) for j, n in enumerate(names)}
    w1s = {n: wasserstein1_scaled(rf[:, j], cf[:, j]) for j, n in enumerate(names)}
    high = classifier_test(high_level_inputs(rf, re), high_level_inputs(cf, ce), cfg.classifier_seeds,
                           cfg.classifier_max_events)
    (rs, rse), (cs, cse) = low_ref, low_cand
    low = classifier_test(low_level_inputs(np.where(rs >= thr, rs, 0), rse), low_level_inputs(np.where(cs >= thr, cs, 0), cse),
                          cfg.classifier_seeds, cfg.classifier_max_events_low, max_iter=100)
    groups = {}
    for g, prefixes in GROUPS.items():
        cols = [j for j, n in enumerate(names) if n.startswith(prefixes)]
        groups[g] = classifier_test(high_level_inputs(rf[:, cols], re), high_level_inputs(cf[:, cols], ce),
                                    cfg.classifier_seeds, cfg.classifier_max_events)["auc"]
    by_bin = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        r, c = (re >= lo) & (re < hi), (ce >= lo) & (ce < hi)
        auc = None
        if min(r.sum(), c.sum()) >= MIN_PER_BIN:
            auc = classifier_test(high_level_inputs(rf[r], re[r]), high_level_inputs(cf[c], ce[c]), cfg.classifier_seeds,
                                  cfg.classifier_max_events)["auc"]
        by_bin.append({"lo_gev": lo / 1e3, "hi_gev": hi / 1e3, "auc_high": auc, "n": int(min(r.sum(), c.sum()))})
    response = response_by_bin(rf, re, cf, ce, edges)
    devs = [abs(b["deviation"]) for b in response if "deviation" in b]
    kpd_mean, kpd_std = kpd(rf, cf)
    m = {
        "auc_high": high["auc"], "auc_high_std": high["auc_std"], "jsd_high": high["jsd"],
        "auc_low": low["auc"], "auc_low_std": low["auc_std"], "jsd_low": low["jsd"],
        "auc_high_by_group": groups, "auc_high_by_energy": by_bin,
        "response_by_energy": response, "response_deviation_max": float(max(devs)) if devs else float("nan"),
        "separation_power": seps, "separation_power_mean": float(np.mean(list(seps.values()))),
        "wasserstein1": w1s, "wasserstein1_mean": float(np.nanmean(list(w1s.values()))),
        "fpd": fpd(rf, cf), "kpd": kpd_mean, "kpd_std": kpd_std,
        "classifier_events_per_class": {"high": high["n_per_class"], "low": low["n_per_class"]},
    }
    if cfg.classifier == "dnn":
        dh = dnn_classifier_test(dnn_high_level_inputs(rf, re, names), dnn_high_level_inputs(cf, ce, names),
                                 cfg.dnn_runs, epochs=cfg.dnn_epochs, max_events=cfg.classifier_max_events)
        dl = dnn_classifier_test(dnn_low_level_inputs(np.where(rs >= thr, rs, 0), rse),
                                 dnn_low_level_inputs(np.where(cs >= thr, cs, 0), cse), cfg.dnn_runs,
                                 epochs=cfg.dnn_epochs, max_events=cfg.classifier_max_events_low)
        m.update(auc_high_dnn=dh["auc"], auc_high_dnn_std=dh["auc_std"], jsd_high_dnn=dh["jsd"],
                 auc_low_dnn=dl["auc"], auc_low_dnn_std=dl["auc_std"], jsd_low_dnn=dl["jsd"], dnn_runs=dh["runs"])
    return m


def gate(metrics: dict, cfg: ValidateConfig) -> dict:
    g, fl = cfg.gate, metrics.get("floor") or {}
    return gate_from_values({
        "auc_high": (metrics["auc_high"], g.auc_high_max, "auc_high_max", fl.get("auc_high")),
        "auc_low": (metrics["auc_low"], g.auc_low_max, "auc_low_max", fl.get("auc_low")),
        "separation_etot_over_einc": (metrics["separation_power"]["etot_over_einc"], g.separation_etot_max,
                                      "separation_etot_max", fl.get("separation_etot_over_einc")),
        "separation_mean": (metrics["separation_power_mean"], g.separation_mean_max, "separation_mean_max",
                            fl.get("separation_power_mean")),
        "response_deviation_max": (metrics["response_deviation_max"], g.response_deviation_max,
                                   "response_deviation_max", fl.get("response_deviation_max")),
        "fpd": (metrics.get("fpd", float("nan")), g.fpd_max, "fpd_max", fl.get("fpd")),
    }, metrics["classifier_events_per_class"]["high"], g.min_events, metrics.get("n_candidate"))


def _features(path, info, binning, threshold_mev, cfg, client):
    """(features, energies) of a file, whose units are checked as every reader checks them (a
    candidate in GeV is named, not compared into a response of nan%)."""
    if client is not None:
        f, e = features_with_dask(path, info.n_events, threshold_mev, cfg.chunk_size, client)
    else:
        f, e = features_from_file(path, binning, threshold_mev, cfg.chunk_size)
    cc.check_energy_units(path, e, f[:, 0] * e)  # (the first feature is E_tot / E_inc)
    return f, e


MIN_SHOWERS = 20


def validate(reference, candidate, out_dir, cfg: ValidateConfig, threshold_mev: float, client=None,
             floor=None, extra_candidates: dict | None = None) -> dict:
    """Candidate against reference. `floor`: an independent simulated sample; its rows, as
    many as the candidate has, give the simulator-vs-simulator floor (without one, the
    reference's two halves give it at half the size, and the report says so).
    `extra_candidates`: label -> file, validated the same way and reported beside (e.g. the
    shape-only ablation)."""
    t0 = time.time()
    out_dir = Path(out_dir)
    samples = {"reference": reference, "candidate": candidate, **({"floor": floor} if floor else {}),
               **(extra_candidates or {})}
    infos = {label: cc.inspect(path) for label, path in samples.items()}  # each file opened once here
    ref_info, cand_info = infos["reference"], infos["candidate"]
    for label, path in samples.items():
        if infos[label].n_events < MIN_SHOWERS:
            raise SimganError(f"{path}: the {label} holds {infos[label].n_events} showers; validation needs at "
                              f"least {MIN_SHOWERS} (the classifiers split each sample three ways)")
    for label, path in {"candidate": candidate, **({"floor": floor} if floor else {}),
                        **(extra_candidates or {})}.items():
        if same_file(reference, path):
            raise SimganError(f"{path}: the {label} is the reference file itself; a sample compared with itself "
                              f"says nothing" + (" (the floor must be other simulated showers, e.g. the train "
                                                 "split)" if label == "floor" else ""))
    binning = ref_info.binning
    for label, path in samples.items():
        info = infos[label]
        if info.binning.digest() != binning.digest():
            raise SimganError(f"{path}: geometry ({info.binning.n_voxels} voxels, layout {info.binning.digest()}) "
                              f"differs from the reference {reference} ({binning.n_voxels} voxels, layout "
                              f"{binning.digest()}); compare samples of the same binning")
    names = feature_names(binning)
    rf, re = _features(reference, ref_info, binning, threshold_mev, cfg, client)
    edges = energy_bins(re, cfg.energy_bins)
    n_low = min(cfg.classifier_max_events_low, ref_info.n_events, cand_info.n_events)
    low_ref = _sample_rows(reference, ref_info.n_events, n_low, 1)

    def one(path, info) -> dict:
        f, e = _features(path, info, binning, threshold_mev, cfg, client)
        return compare(rf, re, f, e, names, low_ref, _sample_rows(path, info.n_events, n_low, 2), cfg, edges,
                       threshold_mev), f, e

    metrics, cf, ce = one(candidate, cand_info)
    # the floor at the candidate's size
    if floor is not None:
        fl_info = infos["floor"]
        f_all, e_all = _features(floor, fl_info, binning, threshold_mev, cfg, client)
        rows = np.sort(np.random.default_rng(3).choice(fl_info.n_events, min(cand_info.n_events, fl_info.n_events),
                                                       replace=False))
        floor_m = compare(rf, re, f_all[rows], e_all[rows], names, low_ref,
                          _sample_rows(floor, fl_info.n_events, n_low, 3), cfg, edges, threshold_mev)
        floor_desc = f"{floor} ({len(rows)} showers, the candidate's size)"
        plot_floor = (f_all[rows], e_all[rows])
    else:  # the reference's halves
        half = np.random.default_rng(3).permutation(ref_info.n_events)
        a, b = np.sort(half[: len(half) // 2]), np.sort(half[len(half) // 2:])
        low_a = _sample_rows(reference, ref_info.n_events, 0, 0, a[: n_low // 2])
        low_b = _sample_rows(reference, ref_info.n_events, 0, 0, b[: n_low // 2])
        floor_m = compare(rf[a], re[a], rf[b], re[b], names, low_a, low_b, cfg, edges, threshold_mev)
        floor_desc = f"the reference split in halves ({len(a)} vs {len(b)} showers: half the size)"
        plot_floor = (rf[b], re[b])
    extras = {}
    for label, path in (extra_candidates or {}).items():
        extras[label] = one(path, infos[label])[0]
    metrics.update({
        "domain": "calorimeter", "n_reference": int(ref_info.n_events), "n_candidate": int(cand_info.n_events),
        "reference": str(reference), "candidate": str(candidate), "threshold_mev": threshold_mev,
        # what binds this verdict to a model: `register` moves an alias only for this checkpoint
        "candidate_checkpoint_sha256": cand_info.metadata.get("checkpoint_sha256"),
        "floor": _summary(floor_m), "floor_source": floor_desc, "floor_detail": floor_m,
        "extra_candidates": {k: {"file": str(extra_candidates[k]), **v} for k, v in extras.items()},
    })
    metrics["gate"] = gate(metrics, cfg)
    metrics["wall_seconds"] = time.time() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    if cfg.plots:
        seps = metrics["separation_power"]
        worst = sorted(seps, key=seps.get, reverse=True)[:4]
        picks = ["etot_over_einc"] + [n for n in names if n.endswith(("_layer_05", "_layer_20"))
                                      and n.startswith(("e_layer", "width_r", "sparsity"))] + worst
        picks = list(dict.fromkeys(picks))[:12]
        unit = "cells" if any(l.grid == "cartesian" for l in binning.layers) else "mm"
        ff, fe = plot_floor
        plots = [P.feature_grid(rf, cf, ff, names, seps, out_dir / "features.png", picks, unit),
                 P.profiles(rf, cf, ff, names, out_dir / "profiles.png", unit),
                 P.response(rf, re, cf, ce, ff, fe, out_dir / "response.png"),
                 P.auc_breakdown(metrics, out_dir / "auc_breakdown.png")]
    write_report(out_dir, metrics, plots)
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics


SUMMARY_KEYS = ("auc_high", "auc_low", "auc_high_dnn", "auc_low_dnn", "separation_power_mean", "fpd", "kpd",
                "response_deviation_max")


def _summary(m: dict) -> dict:
    out = {k: m[k] for k in SUMMARY_KEYS if k in m}
    out["separation_etot_over_einc"] = m["separation_power"]["etot_over_einc"]
    out["auc_high_by_group"] = m["auc_high_by_group"]
    out["auc_high_by_energy"] = [b["auc_high"] for b in m["auc_high_by_energy"]]
    return out


_fmt = fmt


def write_report(out_dir: Path, m: dict, plots: list[Path]) -> None:
    fl = m["floor"]
    rows = gate_rows(m["gate"])
    worst = sorted(m["separation_power"].items(), key=lambda kv: kv[1], reverse=True)[:10]
    extras = m.get("extra_candidates", {})
    head = "| metric | candidate | " + "".join(f"{k} | " for k in extras) + "Geant4 floor |"
    summary = [head, "|---|---|" + "---|" * len(extras) + "---|"]

    def line(label, key, digits=3):
        vals = [m.get(key)] + [e.get(key) for e in extras.values()] + [fl.get(key)]
        summary.append(f"| {label} | " + " | ".join(_fmt(v, digits) for v in vals) + " |")

    line("classifier AUC, high-level features", "auc_high")
    line("classifier AUC, voxels", "auc_low")
    if "auc_high_dnn" in m:
        line(f"DNN classifier AUC, high-level (CaloChallenge, {m['dnn_runs']} runs)", "auc_high_dnn")
        line(f"DNN classifier AUC, voxels (CaloChallenge, {m['dnn_runs']} runs)", "auc_low_dnn")
    line("mean separation power", "separation_power_mean", 4)
    summary.append("| E_tot/E_inc separation power | " + " | ".join(
        _fmt(v, 4) for v in [m["separation_power"]["etot_over_einc"]]
        + [e["separation_power"]["etot_over_einc"] for e in extras.values()] + [fl["separation_etot_over_einc"]]) + " |")
    line("largest response deviation over energy bins", "response_deviation_max", 4)
    line("FPD", "fpd", 3)
    groups = ["| feature group | AUC candidate | AUC floor |", "|---|---|---|",
              *[f"| {g} | {_fmt(v)} | {_fmt(fl['auc_high_by_group'][g])} |" for g, v in m["auc_high_by_group"].items()]]
    bins = ["| E_inc [GeV] | AUC candidate | AUC floor | response Geant4 | response candidate | deviation | "
            "resolution Geant4 | resolution candidate |", "|---|---|---|---|---|---|---|---|"]
    for b, fb, r in zip(m["auc_high_by_energy"], fl["auc_high_by_energy"], m["response_by_energy"]):
        bins.append(f"| {b['lo_gev']:.1f}–{b['hi_gev']:.1f} | {_fmt(b['auc_high'])} | {_fmt(fb)} | "
                    f"{_fmt(r.get('reference'), 4)} | {_fmt(r.get('candidate'), 4)} | {_fmt(r.get('deviation'), 4)} | "
                    f"{_fmt(r.get('resolution_reference'), 4)} | {_fmt(r.get('resolution_candidate'), 4)} |")
    md = [f"# Validation report: {verdict(m)}", "",
          f"Reference: `{m['reference']}` ({m['n_reference']} showers); candidate: `{m['candidate']}` ({m['n_candidate']} showers).",
          f"Geant4 floor: {m['floor_source']}.", "",
          "## Gate", "", "| metric | value | limit | result |", "|---|---|---|---|", *rows, "",
          "## Summary", "", *summary, "",
          "## What gives it away: classifier AUC per feature group", "", *groups, "",
          "## Per incident-energy bin", "", *bins, "",
          "## Largest separation powers", "", "| feature | separation | W1/σ |", "|---|---|---|",
          *[f"| {k} | {v:.4f} | {m['wasserstein1'][k]:.3f} |" for k, v in worst], "",
          *[f"![{p.stem}]({p.name})" for p in plots], ""]
    write_markdown_report(out_dir, md, "simgan validation")
