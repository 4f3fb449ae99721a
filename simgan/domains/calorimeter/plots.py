"""Feature histograms with ratio panels, shower profiles, response and resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simgan.metrics.distances import reference_bins


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def feature_grid(ref_f, cand_f, names, seps, out: Path, picks: list[str]) -> Path:
    plt = _plt()
    idx = [names.index(p) for p in picks if p in names]
    ncol = 4
    nrow = int(np.ceil(len(idx) / ncol))
    fig, axes = plt.subplots(2 * nrow, ncol, figsize=(4 * ncol, 4 * nrow), gridspec_kw={"height_ratios": [3, 1] * nrow})
    axes = np.atleast_2d(axes)
    for k, j in enumerate(idx):
        r, c = divmod(k, ncol)
        ax, rax = axes[2 * r, c], axes[2 * r + 1, c]
        bins = reference_bins(ref_f[:, j])
        h1, _ = np.histogram(np.clip(ref_f[:, j], bins[0], bins[-1]), bins, density=True)
        h2, _ = np.histogram(np.clip(cand_f[:, j], bins[0], bins[-1]), bins, density=True)
        ax.stairs(h1, bins, label="Geant4 (held out)", color="k")
        ax.stairs(h2, bins, label="surrogate", color="tab:red")
        ax.set_title(f"{names[j]}  sep={seps[names[j]]:.3f}", fontsize=9)
        rax.stairs(np.divide(h2, h1, out=np.full_like(h2, np.nan), where=h1 > 0), bins, color="tab:red")
        rax.axhline(1, color="k", lw=0.5)
        rax.set_ylim(0.5, 1.5)
        rax.set_ylabel("ratio", fontsize=8)
        if k == 0:
            ax.legend(fontsize=8)
    for k in range(len(idx), nrow * ncol):
        r, c = divmod(k, ncol)
        axes[2 * r, c].axis("off")
        axes[2 * r + 1, c].axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def profiles(ref_f, cand_f, names, out: Path) -> Path:
    plt = _plt()
    lay = [j for j, n in enumerate(names) if n.startswith("e_layer_")]
    wid = [j for j, n in enumerate(names) if n.startswith("width_r_layer_")]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(lay))
    a1.plot(x, ref_f[:, lay].mean(0), "k-", label="Geant4 (held out)")
    a1.plot(x, cand_f[:, lay].mean(0), "r--", label="surrogate")
    a1.set_xlabel("layer")
    a1.set_ylabel("mean energy per layer [MeV]")
    a1.set_yscale("log")
    a1.legend()
    a2.plot(x, ref_f[:, wid].mean(0), "k-")
    a2.plot(x, cand_f[:, wid].mean(0), "r--")
    a2.set_xlabel("layer")
    a2.set_ylabel("mean radial width")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def response(ref_f, ref_e, cand_f, cand_e, out: Path) -> Path:
    plt = _plt()
    edges = np.geomspace(min(ref_e.min(), cand_e.min()), max(ref_e.max(), cand_e.max()) * 1.0001, 7)
    mid = np.sqrt(edges[:-1] * edges[1:]) / 1e3
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for f, e, style, label in ((ref_f, ref_e, "ko-", "Geant4 (held out)"), (cand_f, cand_e, "rs--", "surrogate")):
        r = f[:, 0]
        b = np.digitize(e, edges) - 1
        mean = np.array([r[b == i].mean() if (b == i).sum() > 1 else np.nan for i in range(len(mid))])
        res = np.array([r[b == i].std() / r[b == i].mean() if (b == i).sum() > 1 else np.nan for i in range(len(mid))])
        a1.plot(mid, mean, style, label=label)
        a2.plot(mid, res, style, label=label)
    for a in (a1, a2):
        a.set_xscale("log")
        a.set_xlabel("incident energy [GeV]")
    a1.set_ylabel("response <E_tot/E_inc>")
    a2.set_ylabel("resolution sigma/mean")
    a1.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def auc_breakdown(m: dict, out: Path) -> Path:
    """Classifier AUC per feature group and per incident-energy bin, candidate beside the floor."""
    plt = _plt()
    fl = m["floor"]
    groups = list(m["auc_high_by_group"])
    bins = m["auc_high_by_energy"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(groups))
    a1.bar(x - 0.2, [m["auc_high_by_group"][g] for g in groups], 0.4, color="tab:red", label="surrogate")
    a1.bar(x + 0.2, [fl["auc_high_by_group"][g] for g in groups], 0.4, color="0.5", label="Geant4 floor")
    a1.set_xticks(x, groups, rotation=20)
    a1.set_ylabel("classifier AUC")
    a1.set_ylim(0.4, 1.0)
    a1.axhline(0.5, color="k", lw=0.5)
    a1.legend(fontsize=8)
    x = np.arange(len(bins))
    nan = float("nan")
    a2.bar(x - 0.2, [b["auc_high"] if b["auc_high"] is not None else nan for b in bins], 0.4, color="tab:red")
    a2.bar(x + 0.2, [v if v is not None else nan for v in fl["auc_high_by_energy"]], 0.4, color="0.5")
    a2.set_xticks(x, [f"{b['lo_gev']:.0f}–{b['hi_gev']:.0f} GeV" for b in bins])
    a2.set_ylim(0.4, 1.0)
    a2.axhline(0.5, color="k", lw=0.5)
    a2.set_ylabel("classifier AUC, all high-level features")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
