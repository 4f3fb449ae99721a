"""Feature histograms with ratio panels, shower profiles, response and resolution, the AUC
breakdown: every figure beside the Geant4-vs-Geant4 floor (simgan.report.plots)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simgan.metrics.distances import reference_bins
from simgan.report.plots import Labels, compare_hist, compare_profile, figure, profile_stats, save

LABELS = Labels(reference="Geant4 (held out)", candidate="surrogate", floor="Geant4 floor")


def feature_unit(name: str, length_unit: str) -> tuple[str, str]:
    """(quantity, unit) of a high-level feature (simgan.domains.calorimeter.features)."""
    if name == "etot_over_einc":
        return "E_tot / E_inc", "1"
    kind, _, layer = name.rpartition("_layer_")
    quantity = {"e": "E", "ce_x": "centre x", "ce_y": "centre y", "ce_r": "centre r", "width_x": "width x",
                "width_y": "width y", "width_r": "width r", "sparsity": "hit fraction"}.get(kind, kind)
    unit = "MeV" if kind == "e" else "1" if kind == "sparsity" else length_unit
    return f"{quantity}, layer {int(layer)}", unit


def feature_grid(ref_f, cand_f, floor_f, names, seps, out: Path, picks: list[str], length_unit: str = "mm") -> Path:
    idx = [names.index(p) for p in picks if p in names]
    ncol = 4
    nrow = int(np.ceil(len(idx) / ncol))
    with figure(nrow, ncol, ratio=True) as (fig, panels):
        for k, j in enumerate(idx):
            bins = reference_bins(ref_f[:, j])
            quantity, unit = feature_unit(names[j], length_unit)
            compare_hist(panels[k], ref_f[:, j], cand_f[:, j], None if floor_f is None else floor_f[:, j], bins,
                         quantity, unit, LABELS, title=f"separation {seps[names[j]]:.3f}", legend=k == 0)
        for ax, rax in panels[len(idx):]:
            ax.axis("off")
            rax.axis("off")
        return save(fig, out)


def profiles(ref_f, cand_f, floor_f, names, out: Path, length_unit: str = "mm") -> Path:
    """Mean energy and mean radial width per layer, with standard errors."""
    lay = [j for j, n in enumerate(names) if n.startswith("e_layer_")]
    wid = [j for j, n in enumerate(names) if n.startswith("width_r_layer_")]
    x = np.array([int(names[j].rpartition("_")[2]) for j in lay], float)

    def stats(f, cols):
        if f is None:
            return None
        return f[:, cols].mean(0), f[:, cols].std(0, ddof=1) / np.sqrt(len(f))

    with figure(1, 2) as (fig, (a1, a2)):
        compare_profile(a1, x, stats(ref_f, lay), stats(cand_f, lay), stats(floor_f, lay), "layer", "1",
                        "mean energy in the layer", "MeV", LABELS, logy=True, legend=True)
        compare_profile(a2, x, stats(ref_f, wid), stats(cand_f, wid), stats(floor_f, wid), "layer", "1",
                        "mean radial width", length_unit, LABELS)
        return save(fig, out)


def response(ref_f, ref_e, cand_f, cand_e, floor_f, floor_e, out: Path) -> Path:
    """Mean response and resolution per bin of incident energy, with their errors."""
    edges = np.geomspace(min(ref_e.min(), cand_e.min()), max(ref_e.max(), cand_e.max()) * 1.0001, 7)
    mid = np.sqrt(edges[:-1] * edges[1:]) / 1e3
    with figure(1, 2) as (fig, (a1, a2)):
        for ax, stat, quantity in ((a1, "mean", "response <E_tot / E_inc>"), (a2, "resolution", "resolution σ / mean")):
            got = [None if f is None else profile_stats(e, f[:, 0], edges, stat)
                   for f, e in ((ref_f, ref_e), (cand_f, cand_e), (floor_f, floor_e))]
            compare_profile(ax, mid, *got, "incident energy", "GeV", quantity, "1", LABELS, logx=True,
                            legend=ax is a1)
        return save(fig, out)


def auc_breakdown(m: dict, out: Path) -> Path:
    """Classifier AUC per feature group and per incident-energy bin, candidate beside the floor."""
    fl = m["floor"]
    groups = list(m["auc_high_by_group"])
    bins = m["auc_high_by_energy"]
    nan = float("nan")
    with figure(1, 2, panel_size=(5.5, 4.0)) as (fig, (a1, a2)):
        x = np.arange(len(groups))
        a1.bar(x - 0.2, [m["auc_high_by_group"][g] for g in groups], 0.4, color="tab:red", label="surrogate")
        a1.bar(x + 0.2, [fl["auc_high_by_group"][g] for g in groups], 0.4, color="0.6", label="Geant4 floor")
        a1.set_xticks(x, groups, rotation=20, fontsize=8)
        a1.set_ylabel("classifier AUC, the group's features", fontsize=10)
        a1.legend(fontsize=8)
        x = np.arange(len(bins))
        a2.bar(x - 0.2, [b["auc_high"] if b["auc_high"] is not None else nan for b in bins], 0.4, color="tab:red")
        a2.bar(x + 0.2, [v if v is not None else nan for v in fl["auc_high_by_energy"]], 0.4, color="0.6")
        a2.set_xticks(x, [f"{b['lo_gev']:.0f}–{b['hi_gev']:.0f}" for b in bins], fontsize=8)
        a2.set_xlabel("incident energy [GeV]", fontsize=10)
        a2.set_ylabel("classifier AUC, all high-level features", fontsize=10)
        for a in (a1, a2):
            a.set_ylim(0.4, 1.0)
            a.axhline(0.5, color="k", lw=0.5)
        return save(fig, out)
