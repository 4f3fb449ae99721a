"""Neuron validation: NeuroTS (held out) against generated images, per class, with the
NeuroTS-vs-NeuroTS floor at the same size beside every figure; a class/randomness predictor
trained on the training split; image grids; the report and the gate."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from simgan.domains.neuron.io import NeuronImages, projection_of
from simgan.domains.neuron.observables import KEY_OBSERVABLES, image_features
from simgan.domains.neuron.simulator import CLASSES
from simgan.metrics.classifier import classifier_test
from simgan.metrics.distances import separation_power
from simgan.metrics.gate import gate_checks, gate_rows
from simgan.report.markdown import fmt, write_markdown_report
from simgan.report.plots import Labels, compare_hist, figure, save

MIN_PER_CLASS = 10


def summarise(ni: NeuronImages) -> dict:
    """What the comparison reads of one sample, computed once."""
    f = image_features(ni.images, projection_of(ni.attrs))
    cond = np.concatenate([np.eye(len(CLASSES))[ni.cell_class], ni.randomness[:, None]], 1)
    obs = np.stack([np.log(np.maximum(f["total_length"], 1.0)) if k == "total_length" else f[k] for k in f], 1)
    n, s = ni.images.shape[:2]
    pooled = np.log1p(ni.images.reshape(n, s // 4, 4, s // 4, 4).sum((2, 4)))  # 16 x 16 blocks of 4 x 4 pixels
    return {"ni": ni, "features": f, "observables": np.concatenate([obs, cond], 1),
            "images": np.concatenate([pooled.reshape(n, -1), cond], 1)}


def per_class(reference: dict, candidate: dict) -> dict:
    """Per class: mean and standard deviation of length and extent, the candidate's relative to
    the reference's."""
    out = {}
    rc, cc = reference["ni"].cell_class, candidate["ni"].cell_class
    for i, name in enumerate(CLASSES):
        mr, mc = rc == i, cc == i
        if mr.sum() < MIN_PER_CLASS or mc.sum() < MIN_PER_CLASS:
            continue
        row = {"n_reference": int(mr.sum()), "n_candidate": int(mc.sum())}
        for k in ("total_length", "max_extent", "occupancy"):
            a, b = reference["features"][k][mr], candidate["features"][k][mc]
            row[k] = {"mean_reference": float(a.mean()), "mean_candidate": float(b.mean()),
                      "mean_deviation": float(b.mean() / a.mean() - 1),
                      "std_reference": float(a.std()), "std_candidate": float(b.std()),
                      "std_deviation": float(b.std() / a.std() - 1) if a.std() > 0 else math.nan}
        out[name] = row
    return out


def _maxabs(rows: dict, key: str, what: str) -> float:
    vals = [abs(r[key][what]) for r in rows.values() if np.isfinite(r[key][what])]
    return max(vals) if vals else math.nan


def compare(reference: dict, candidate: dict, seeds: int, max_events: int) -> dict:
    rf, cf = reference["features"], candidate["features"]
    seps = {k: float(separation_power(rf[k], cf[k])) for k in rf}
    clf = classifier_test(reference["observables"], candidate["observables"], seeds=seeds, max_events=max_events)
    clf_im = classifier_test(reference["images"], candidate["images"], seeds=seeds, max_events=max_events)
    pc = per_class(reference, candidate)
    return {"auc": clf["auc"], "auc_std": clf["auc_std"], "classifier_events_per_class": clf["n_per_class"],
            "auc_images": clf_im["auc"], "separation_power": seps,
            "separation_power_mean": float(np.mean(list(seps.values()))), "per_class": pc,
            "length_mean_deviation_max": _maxabs(pc, "total_length", "mean_deviation"),
            "length_spread_deviation_max": _maxabs(pc, "total_length", "std_deviation"),
            "extent_mean_deviation_max": _maxabs(pc, "max_extent", "mean_deviation"),
            "extent_spread_deviation_max": _maxabs(pc, "max_extent", "std_deviation")}


# -- the class / randomness predictor ---------------------------------------------------------
class Predictor(nn.Module):
    """A small CNN: log1p image -> 3 class logits and the randomness."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(1, w, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(4 * w, 4 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(4 * w * 16, 64), nn.LeakyReLU(0.2), nn.Linear(64, len(CLASSES) + 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(torch.log1p(images.clamp(min=0))[:, None])


def train_predictor(train: NeuronImages, steps: int = 600, batch: int = 64, seed: int = 0) -> Predictor:
    torch.manual_seed(seed)
    model = Predictor()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = torch.as_tensor(train.images)
    y = torch.as_tensor(train.cell_class, dtype=torch.long)
    r = torch.as_tensor((train.randomness - 0.25) / 0.15, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(x), (batch,), generator=g)
        out = model(x[i])
        loss = nn.functional.cross_entropy(out[:, :-1], y[i]) + nn.functional.mse_loss(out[:, -1], r[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predictor_scores(model: Predictor, ni: NeuronImages) -> dict:
    out = torch.cat([model(torch.as_tensor(ni.images[i:i + 1024])) for i in range(0, len(ni), 1024)])
    pred = out[:, :-1].argmax(1).numpy()
    r_hat = out[:, -1].numpy() * 0.15 + 0.25
    return {"class_accuracy": float((pred == ni.cell_class).mean()),
            "randomness_rmse": float(np.sqrt(np.mean((r_hat - ni.randomness) ** 2)))}


GATE_KEYS = {"auc": "auc_max", "separation_power_mean": "separation_mean_max",
             "length_mean_deviation_max": "length_mean_deviation_max",
             "length_spread_deviation_max": "length_spread_deviation_max",
             "extent_mean_deviation_max": "extent_mean_deviation_max",
             "extent_spread_deviation_max": "extent_spread_deviation_max",
             "class_accuracy_drop": "class_accuracy_drop_max"}


# the trees' checks (tree families): their figures exist where both samples kept trees
TREE_GATE_KEYS = {"invalid_fraction": "invalid_fraction_max", "auc_morphometrics": "auc_morphometrics_max",
                  "ks_max": "ks_max"}


def gate(m: dict, gcfg) -> dict:
    """The image checks, and the trees' where the config sets their limits (a candidate without
    trees then fails them: its figure is NaN)."""
    tree_keys = {k: lk for k, lk in TREE_GATE_KEYS.items() if getattr(gcfg, lk) is not None}
    filled = {**m, **{k: m.get(k, math.nan) for k in tree_keys},
              "floor": {**m["floor"], **{k: m["floor"].get(k, math.nan) for k in tree_keys}}}
    return gate_checks(filled, gcfg, {**GATE_KEYS, **tree_keys}, m["classifier_events_per_class"])


def tree_figures(trees: dict) -> tuple[dict, dict]:
    """The gate's figures of the trees' comparison (morphometrics.compare), the candidate's and
    the floor's."""
    return ({"invalid_fraction": 1 - trees["validity"], "auc_morphometrics": trees["auc_morphometrics"],
             "ks_max": trees["ks_max"]},
            {"invalid_fraction": 1 - trees["validity_floor"], "auc_morphometrics": trees["auc_morphometrics_floor"],
             "ks_max": trees["ks_floor_max"]})


def tree_plot(ref: NeuronImages, cand: NeuronImages, out_dir: Path, n_show: int = 4) -> Path:
    """Neurons drawn as trees (their segments in the image plane), NeuroTS above the surrogate,
    per class."""
    from matplotlib.collections import LineCollection
    with figure(2 * len(CLASSES), n_show, panel_size=(2.4, 2.4)) as (fig, axes):
        for ci, name in enumerate(CLASSES):
            for j, (ni, label) in enumerate(((ref, "NeuroTS"), (cand, "surrogate"))):
                rows = np.flatnonzero(ni.cell_class == ci)[:n_show]
                for k in range(n_show):
                    ax = axes[(2 * ci + j) * n_show + k]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.set_aspect("equal")
                    if k < len(rows):
                        a, b = ni.trees[int(rows[k])].segments()
                        ax.add_collection(LineCollection(np.stack([a[:, :2], b[:, :2]], 1), linewidths=0.4,
                                                         colors="k"))
                        ax.autoscale()
                        ax.set_title(f"{label} {name} r={ni.randomness[rows[k]]:.2f}", fontsize=7)
        return save(fig, out_dir / "trees.png")


LABELS = Labels(reference="NeuroTS (held out)", candidate="surrogate", floor="NeuroTS floor")
UNITS = {"total_length": ("total projected length", "um"), "max_extent": ("maximum extent", "um"),
         "occupancy": ("occupied pixels", "1"), "elongation": ("elongation", "1"),
         "centroid_dy": ("centroid offset y", "um"), "radius_of_gyration": ("radius of gyration", "um")}


def plots(reference: dict, candidate: dict, floor: dict | None, out_dir: Path) -> list[Path]:
    """Example images per class, and per class the observables' histograms with ratio panels,
    the NeuroTS floor sample as a band (the samples `summarise`d)."""
    ref, cand = reference["ni"], candidate["ni"]
    paths = []
    n_show = 4
    with figure(2 * len(CLASSES), n_show, panel_size=(2.4, 2.4)) as (fig, axes):
        for ci, name in enumerate(CLASSES):
            rows = np.flatnonzero(ref.cell_class == ci)[:n_show]
            for k in range(n_show):
                for j, (ni, label) in enumerate(((ref, "NeuroTS"), (cand, "surrogate"))):
                    ax = axes[(2 * ci + j) * n_show + k]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if k < len(rows):
                        im = ax.imshow(np.log1p(ni.images[rows[k]]), cmap="magma", vmin=0, vmax=5)
                        ax.set_title(f"{label} {name} r={ni.randomness[rows[k]]:.2f}", fontsize=7)
        fig.colorbar(im, ax=axes, shrink=0.4).set_label("log(1 + neurite length per pixel / um)", fontsize=8)
        paths.append(save(fig, out_dir / "images.png"))
    keys = (*KEY_OBSERVABLES, "radius_of_gyration")
    with figure(len(CLASSES), len(keys), ratio=True, panel_size=(3.2, 3.0)) as (fig, panels):
        for ci, name in enumerate(CLASSES):
            mr, mc = ref.cell_class == ci, cand.cell_class == ci
            for j, k in enumerate(keys):
                panel = panels[ci * len(keys) + j]
                a, b = reference["features"][k][mr], candidate["features"][k][mc]
                f = None if floor is None else floor["features"][k][floor["ni"].cell_class == ci]
                if len(a) and len(b):
                    bins = np.histogram_bin_edges(np.concatenate([a, b]), 20)
                    compare_hist(panel, a, b, f, bins, *UNITS[k], LABELS, title=name,
                                 legend=ci == 0 and j == 0)
        paths.append(save(fig, out_dir / "observables.png"))
    return paths


def write_report(out_dir: Path, m: dict, plot_paths: list[Path]) -> None:
    fl = m["floor"]

    f = fmt

    pc_rows = []
    for name, r in m["per_class"].items():
        for k in ("total_length", "max_extent", "occupancy"):
            q, fq = r[k], fl["per_class"].get(name, {}).get(k, {})
            pc_rows.append(f"| {name} | {k} | {f(q['mean_reference'], 1)} | {f(q['mean_candidate'], 1)} | "
                           f"{f(q['mean_deviation'])} [{f(fq.get('mean_deviation'))}] | {f(q['std_reference'], 1)} | "
                           f"{f(q['std_candidate'], 1)} | {f(q['std_deviation'])} [{f(fq.get('std_deviation'))}] |")
    md = [f"# Neuron validation report: {'PASS' if m['gate']['pass'] else 'FAIL'}", "",
          f"Reference: `{m['reference']}` ({m['n_reference']} images); candidate: `{m['candidate']}` "
          f"({m['n_candidate']} images). Floor: {m['floor_source']}. The reference simulator is NeuroTS "
          "(topological synthesis), standing in for real FlyCircuit-style neurons.", "",
          "| gate | value | limit | result |", "|---|---|---|---|",
          *gate_rows(m["gate"], lambda v: f(v, 4)), "",
          "| metric | candidate | NeuroTS floor |", "|---|---|---|",
          *[f"| {k} | {f(m[k], 4)} | {f(fl[k], 4)} |" for k in
            ("auc", "auc_images", "separation_power_mean", "length_mean_deviation_max", "length_spread_deviation_max",
             "extent_mean_deviation_max", "extent_spread_deviation_max")], "",
          f"Class predictor (CNN trained on the training split): accuracy on held-out NeuroTS "
          f"{f(m['predictor']['reference']['class_accuracy'])}, on generated "
          f"{f(m['predictor']['candidate']['class_accuracy'])} (drop {f(m['class_accuracy_drop'])}); randomness "
          f"RMSE {f(m['predictor']['reference']['randomness_rmse'])} vs "
          f"{f(m['predictor']['candidate']['randomness_rmse'])}.", "",
          "| class | observable | mean NeuroTS | mean surrogate | deviation [floor] | sd NeuroTS | sd surrogate | "
          "deviation [floor] |", "|---|---|---|---|---|---|---|---|", *pc_rows, "",
          "| observable | separation | floor |", "|---|---|---|",
          *[f"| {k} | {f(v, 4)} | {f(fl['separation_power'][k], 4)} |" for k, v in m["separation_power"].items()], "",
          *tree_rows(m), *[f"![{p.stem}]({p.name})" for p in plot_paths], ""]
    write_markdown_report(out_dir, md, "simgan neuron validation")


def tree_rows(m: dict, worst: int = 15) -> list[str]:
    """The report's section on the trees: validity, the morphometric classifier, the largest KS
    distances per class beside the floor's, the TMD distances beside the floor's spread."""
    t = m.get("trees")
    if not t:
        return []
    f = fmt
    ks = sorted(((c, k, v, t["ks_floor"].get(c, {}).get(k, math.nan)) for c, row in t["ks"].items()
                 for k, v in row.items()), key=lambda r: -(r[2] - (r[3] if np.isfinite(r[3]) else 0)))
    return ["## Trees (NeuroM, TMD)", "",
            f"Valid neurons (MorphIO loads them, NeuroM's checks pass): {f(100 * t['validity'], 1)}% "
            f"[NeuroTS floor {f(100 * t['validity_floor'], 1)}%]. Classifier on per-neuron morphometrics: AUC "
            f"{f(t['auc_morphometrics'], 4)} [floor {f(t['auc_morphometrics_floor'], 4)}]. Largest KS distance "
            f"{f(t['ks_max'], 3)} [floor {f(t['ks_floor_max'], 3)}]; a feature meets the target where KS <= 0.10 or "
            "within 0.05 of its floor.", "",
            "| class | feature@neurite type | KS | floor KS | target |", "|---|---|---|---|---|",
            *[f"| {c} | {k} | {f(v, 3)} | {f(fl, 3)} | {'met' if v <= 0.10 or v <= fl + 0.05 else 'missed'} |"
              for c, k, v, fl in ks[:worst]], "",
            "| class@type | TMD image distance | floor median | floor 95th percentile |", "|---|---|---|---|",
            *[f"| {k} | {f(r['distance'], 3)} | {f(r['floor_median'], 3)} | {f(r['floor_p95'], 3)} |"
              for k, r in t["tmd"].items()], ""]
