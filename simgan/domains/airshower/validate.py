"""Air-shower validation: the spec's observables, simulation (held out) against generated, with
the simulator-vs-simulator floor at the same size beside every figure, plots and the gate."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from simgan.domains.airshower.io import Footprints, masses
from simgan.domains.airshower.observables import (
    STATION_BINS,
    TRACE_R_BINS,
    ZENITH_BINS_DEG,
    angular_resolution,
    event_features,
    radial_profiles,
    trace_event_features,
    trace_stations,
)
from simgan.domains.airshower.simulator import ArrayParams
from simgan.metrics.classifier import classifier_test
from simgan.metrics.distances import separation_power
from simgan.metrics.gate import gate_checks, gate_rows
from simgan.report.markdown import fmt, write_markdown_report
from simgan.report.plots import Labels, compare_profile, figure, profile_stats, save

# observables the classifier and the separation powers use (NaN where undefined: trees take it)
LG_BINS = (18.5, 19.0, 19.5, 20.0)


def params_of(fp: Footprints) -> ArrayParams:
    return ArrayParams(spacing_m=float(fp.attrs.get("spacing_m", 1500.0)),
                       altitude_m=float(fp.attrs.get("altitude_m", 1400.0)),
                       trigger_vem=float(fp.attrs.get("trigger_vem", 3.0)))


def features(fp: Footprints) -> dict[str, np.ndarray]:
    return event_features(fp.signal, fp.time, fp.triggered, fp.conditions, fp.xyz, params_of(fp))


def condition_matrix(fp: Footprints) -> np.ndarray:
    c = fp.conditions
    return np.stack([c["log10_energy_eV"], np.cos(c["zenith_rad"]), np.cos(c["azimuth_rad"]),
                     np.sin(c["azimuth_rad"]), c["core_x_m"], c["core_y_m"], np.log(masses(c))], 1)


def _finite_sep(a, b) -> float:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    return separation_power(a, b) if len(a) > 1 and len(b) > 1 else math.nan


def summarise(fp: Footprints) -> dict:
    """What the comparison reads of one sample, computed once: the observables (with traces:
    also the trace summaries per event and the per-station trace table), and the classifier
    inputs (log signal and trigger per station + conditions)."""
    f, c, n = features(fp), condition_matrix(fp), len(fp)
    stations = None
    if fp.traces is not None:
        stations = trace_stations(fp.traces, fp.triggered, fp.conditions, fp.xyz, params_of(fp),
                                  float(fp.attrs.get("trace_bin_ns", 25.0)), fp.trace_components.get("muon"))
        f.update(trace_event_features(stations, n))
    return {"fp": fp, "features": f, "conditions": c, "stations": stations,
            "footprints": np.concatenate([np.log10(1 + fp.signal.reshape(n, -1)), fp.triggered.reshape(n, -1), c], 1)}


def observables(summary: dict, keys) -> np.ndarray:
    """The observables classifier's input: the named per-event observables + conditions."""
    return np.concatenate([np.stack([summary["features"][k] for k in keys], 1), summary["conditions"]], 1)


def trace_figures(rs: dict | None, cs: dict | None) -> dict:
    """Traces of the reference against the candidate's: the median rise time of stations at
    900-1100 m per zenith bin, the mean trace shape (signal-weighted, unit sum) per distance bin
    and its deviation (half the L1 distance: the share of the signal in other bins), the median
    rise and fall time and the muon fraction per distance bin, and the slope of the rise time at
    1000 m in ln A where the reference mixes masses. NaN figures where either sample has none."""
    nan = {"rise_1000_deviation_max": math.nan, "trace_shape_deviation_max": math.nan,
           "rise_mass_slope_deviation": math.nan}
    if rs is None or cs is None:
        return {**nan, "traces": None}
    out = {"rise_1000_by_zenith": [], "by_distance": []}
    for lo, hi in zip(ZENITH_BINS_DEG[:-1], ZENITH_BINS_DEG[1:]):
        row = {"zenith_lo": lo, "zenith_hi": hi}
        for name, s in (("reference", rs), ("candidate", cs)):
            m = (s["r"] >= 900) & (s["r"] < 1100) & (s["zenith_deg"] >= lo) & (s["zenith_deg"] < hi)
            row[name] = float(np.median(s["rise_ns"][m])) if m.sum() >= 10 else math.nan
            row[f"n_{name}"] = int(m.sum())
        row["deviation"] = row["candidate"] / row["reference"] - 1
        out["rise_1000_by_zenith"].append(row)
    for lo, hi in zip(TRACE_R_BINS[:-1], TRACE_R_BINS[1:]):
        row = {"r_lo": float(lo), "r_hi": float(hi)}
        shapes = {}
        for name, s in (("reference", rs), ("candidate", cs)):
            m = (s["r"] >= lo) & (s["r"] < hi)
            row[f"n_{name}"] = int(m.sum())
            if m.sum() < 10:
                continue
            w = s["integral"][m]
            shapes[name] = (s["shape"][m] * w[:, None]).sum(0) / w.sum()
            row[f"rise_{name}"] = float(np.median(s["rise_ns"][m]))
            row[f"fall_{name}"] = float(np.median(s["fall_ns"][m]))
            mu = s["muon_fraction"][m]
            row[f"muon_fraction_{name}"] = float(np.median(mu)) if np.isfinite(mu).all() else math.nan
            row[f"mean_trace_{name}"] = shapes[name].tolist()
        row["shape_deviation"] = (0.5 * float(np.abs(shapes["reference"] - shapes["candidate"]).sum())
                                  if len(shapes) == 2 else math.nan)
        out["by_distance"].append(row)
    slopes = {}
    for name, s in (("reference", rs), ("candidate", cs)):
        m = (s["r"] >= 900) & (s["r"] < 1100)
        a = s["ln_a"][m]
        slopes[name] = float(np.polyfit(a, s["rise_ns"][m], 1)[0]) if m.sum() >= 20 and np.ptp(a) > 0 else math.nan
    out["rise_mass_slope_ns_per_ln_a"] = slopes

    def worst(rows, key, ref_key):
        rows = [r for r in rows if np.isfinite(r.get(ref_key, math.nan))]
        vals = [abs(r[key]) for r in rows]
        return max(vals) if vals and all(np.isfinite(vals)) else math.nan
    return {"rise_1000_deviation_max": worst(out["rise_1000_by_zenith"], "deviation", "reference"),
            "trace_shape_deviation_max": worst(out["by_distance"], "shape_deviation", "rise_reference"),
            "rise_mass_slope_deviation": abs(slopes["candidate"] / slopes["reference"] - 1)
            if np.isfinite(slopes["reference"]) and slopes["reference"] != 0 else math.nan,
            "traces": out}


def _finite_median(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else math.nan


def compare(reference: dict, candidate: dict, seeds: int, max_events: int) -> dict:
    """Every figure of a candidate against the reference, both `summarise`d (the generated
    sample has the reference's conditions row by row)."""
    ref, cand = reference["fp"], candidate["fp"]
    rf, cf = reference["features"], candidate["features"]
    keys = [k for k in rf if k in cf]  # (trace summaries where both samples have traces)
    seps = {k: _finite_sep(rf[k], cf[k]) for k in keys}
    clf = classifier_test(observables(reference, keys), observables(candidate, keys), seeds=seeds,
                          max_events=max_events)
    clf_fp = classifier_test(reference["footprints"], candidate["footprints"], seeds=seeds, max_events=max_events)
    lg_r, lg_c = ref.conditions["log10_energy_eV"], cand.conditions["log10_energy_eV"]
    stations, s1000 = [], []
    for lo, hi in zip(LG_BINS[:-1], LG_BINS[1:]):
        mr, mc = (lg_r >= lo) & (lg_r < hi), (lg_c >= lo) & (lg_c < hi)
        if mr.sum() < 10 or mc.sum() < 10:
            continue
        nr, nc = rf["n_triggered"][mr].mean(), cf["n_triggered"][mc].mean()
        sr, sc = _finite_median(rf["s1000_fit_over_nominal"][mr]), _finite_median(cf["s1000_fit_over_nominal"][mc])
        stations.append({"lg_lo": lo, "lg_hi": hi, "reference": float(nr), "candidate": float(nc),
                         "deviation": float(nc / nr - 1)})
        if np.isfinite(sr):  # (a candidate with no S1000 fit where the simulator has them: bias NaN, the gate fails)
            s1000.append({"lg_lo": lo, "lg_hi": hi, "reference": sr, "candidate": sc, "bias": sc / sr - 1})
    ang_r = angular_resolution(rf["plane_fit_angle_deg"], rf["n_triggered"])
    ang_c = angular_resolution(cf["plane_fit_angle_deg"], cf["n_triggered"])
    ang = [{"stations": k, "reference": ang_r[k], "candidate": ang_c[k],
            "deviation": ang_c[k] / ang_r[k] - 1 if np.isfinite(ang_r[k]) and np.isfinite(ang_c[k]) else math.nan}
           for k in ang_r]
    def corr(f):  # NaN for a constant column (a collapsed generator), without numpy's warning
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.corrcoef(f["log10_total_signal"], f["n_triggered"])[0, 1])

    finite = [v for v in seps.values() if np.isfinite(v)]

    def dev(rows, key):
        """The largest deviation over the bins where the simulator has a figure; NaN (no verdict
        but a failed check) when the candidate has none in one of them."""
        rows = [r for r in rows if np.isfinite(r["reference"])]
        if any(not np.isfinite(r[key]) for r in rows):
            return math.nan
        return max((abs(r[key]) for r in rows), default=math.nan)
    return {"auc": clf["auc"], "auc_std": clf["auc_std"], "classifier_events_per_class": clf["n_per_class"], "auc_footprints": clf_fp["auc"],
            "separation_power": seps, "separation_power_mean": float(np.mean(finite)),
            "stations_by_energy": stations, "station_count_deviation_max": dev(stations, "deviation"),
            "s1000_by_energy": s1000, "s1000_bias_max": dev(s1000, "bias"),
            "angular_resolution": ang, "angular_resolution_deviation_max": dev(ang, "deviation"),
            "corr_total_signal_vs_stations": {"reference": corr(rf), "candidate": corr(cf)},
            **trace_figures(reference["stations"], candidate["stations"])}


GATE_KEYS = {"auc": "auc_max", "separation_power_mean": "separation_mean_max",
             "station_count_deviation_max": "station_count_deviation_max",
             "angular_resolution_deviation_max": "angular_resolution_deviation_max",
             "s1000_bias_max": "s1000_bias_max", "rise_1000_deviation_max": "rise_1000_deviation_max",
             "trace_shape_deviation_max": "trace_shape_deviation_max",
             "rise_mass_slope_deviation": "rise_mass_slope_deviation_max"}


def gate(m: dict, gcfg) -> dict:
    return gate_checks(m, gcfg, GATE_KEYS, m["classifier_events_per_class"])


LABELS = Labels(reference="simulation (held out)", candidate="surrogate", floor="simulator floor")


def plots(ref: dict, cand: dict, floor: dict, m: dict, out_dir: Path) -> list[Path]:
    """Footprint maps, the lateral distribution, time residuals and angular resolution (and
    with traces the trace figures) of the `summarise`d samples, the floor sample as a band."""
    paths = [footprint_maps(ref["fp"], cand["fp"], out_dir / "footprints.png")]
    with figure(1, 3, panel_size=(4.6, 3.8)) as (fig, (a1, a2, a3)):
        # per sample: (r, ldf, its error, front, its error)
        prof = [radial_profiles(fp.signal, fp.time, fp.triggered, fp.conditions, fp.xyz, params_of(fp))
                for fp in (ref["fp"], cand["fp"], floor["fp"])]
        r = prof[0][0]
        compare_profile(a1, r, *(p[1:3] for p in prof), "distance to the axis r", "m", "median log10(S / VEM)", "1",
                        LABELS, title="lateral distribution", legend=True)
        compare_profile(a2, r, *(p[3:5] for p in prof), "distance to the axis r", "m",
                        "median time after the plane front", "ns", LABELS, title="time residuals")
        labels = [f"{lo}-{hi}" for lo, hi in STATION_BINS]
        res = [angular_resolution_with_errors(sm["features"]) for sm in (ref, cand, floor)]
        compare_profile(a3, np.arange(len(labels)), *res, "triggered stations", "1", "68% space angle", "deg",
                        LABELS, title="angular resolution (plane fit)")
        a3.set_xticks(np.arange(len(labels)), labels, fontsize=8)
        paths.append(save(fig, out_dir / "observables.png", dpi=90))
    if m.get("traces") and ref["stations"] is not None and cand["stations"] is not None:
        paths.append(trace_plot(ref["stations"], cand["stations"], floor["stations"], out_dir,
                                float(ref["fp"].attrs.get("trace_bin_ns", 25.0))))
    return paths


def angular_resolution_with_errors(f: dict, boots: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """The 68% space angle per station-count bin (angular_resolution) and its bootstrap error."""
    angle, n_trig = f["plane_fit_angle_deg"], f["n_triggered"]
    val = np.array(list(angular_resolution(angle, n_trig).values()))
    rng = np.random.default_rng(0)
    reps = []
    for _ in range(boots):
        i = rng.integers(0, len(angle), len(angle))
        reps.append(list(angular_resolution(angle[i], n_trig[i]).values()))
    with warnings.catch_warnings():  # a bin without enough events in any resample: NaN, no error bar
        warnings.simplefilter("ignore", RuntimeWarning)
        return val, np.nanstd(np.array(reps), 0)


def footprint_maps(ref: Footprints, cand: Footprints, path: Path) -> Path:
    """The same conditions, simulated and generated: stations sized by signal, coloured by time."""
    n_show = min(4, len(ref))
    idx = np.argsort(-ref.conditions["log10_energy_eV"])[:n_show]
    x, y = ref.xyz[..., 0].ravel() / 1000, ref.xyz[..., 1].ravel() / 1000
    with figure(2, n_show, panel_size=(3.4, 3.4)) as (fig, axes):
        for k, i in enumerate(idx):
            for row, (fp, label) in enumerate(((ref, "simulated"), (cand, "generated"))):
                ax = axes[row * n_show + k]
                s = fp.signal[i].ravel()
                on = s > 0
                ax.scatter(x[~on], y[~on], s=4, c="lightgrey")
                pts = ax.scatter(x[on], y[on], s=20 + 40 * np.log10(1 + s[on]), c=fp.time[i].ravel()[on],
                                 cmap="viridis")
                ax.plot(fp.conditions["core_x_m"][i] / 1000, fp.conditions["core_y_m"][i] / 1000, "r*")
                ax.set_title(f"{label}: lgE {fp.conditions['log10_energy_eV'][i]:.2f}, "
                             f"θ {math.degrees(fp.conditions['zenith_rad'][i]):.0f}°", fontsize=8)
                ax.set_aspect("equal")
                ax.set_xlabel("x [km]", fontsize=8)
                ax.set_ylabel("y [km]", fontsize=8)
                ax.tick_params(labelsize=7)
                if on.any():
                    fig.colorbar(pts, ax=ax, shrink=0.7).set_label("start time [ns]", fontsize=7)
        return save(fig, path, dpi=90)


def _mean_trace(st: dict, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The signal-weighted mean of the unit-sum traces of the stations `m`, and its error."""
    w, shape = st["integral"][m], st["shape"][m]
    mean = (shape * w[:, None]).sum(0) / w.sum()
    err = np.sqrt((w[:, None] ** 2 * (shape - mean) ** 2).sum(0)) / w.sum()
    return mean, err


def trace_plot(rs: dict, cs: dict, fs: dict | None, out_dir: Path, bin_ns: float) -> Path:
    """Mean traces per distance bin and the median rise time against distance, with their
    errors: simulation, surrogate and the simulator floor."""
    def inside(s, lo, hi):  # the stations of `s` in the distance bin, where it holds at least 10
        m = (s["r"] >= lo) & (s["r"] < hi)
        return m if m.sum() >= 10 else None

    bins = [(lo, hi) for lo, hi in zip(TRACE_R_BINS[:-1], TRACE_R_BINS[1:])
            if inside(rs, lo, hi) is not None and inside(cs, lo, hi) is not None]
    with figure(1, len(bins) + 1, panel_size=(3.4, 3.4)) as (fig, axes):
        for ax, (lo, hi) in zip(axes, bins):
            masks = [None if s is None else inside(s, lo, hi) for s in (rs, cs, fs)]
            curves = [None if m is None else _mean_trace(s, m) for s, m in zip((rs, cs, fs), masks)]
            t = (np.arange(len(curves[0][0])) + 0.5) * bin_ns
            compare_profile(ax, t, *curves, "time in the trace", "ns", "share of the signal per bin", "1", LABELS,
                            title=f"r {lo:.0f}-{hi:.0f} m", legend=ax is axes[0])
        edges = np.asarray(TRACE_R_BINS, np.float64)
        rise = [None if s is None else profile_stats(s["r"], s["rise_ns"], edges, "median") for s in (rs, cs, fs)]
        compare_profile(axes[-1], 0.5 * (edges[1:] + edges[:-1]), *rise, "distance to the axis r", "m",
                        "median rise time t10-50", "ns", LABELS, title="rise time")
        return save(fig, out_dir / "traces.png", dpi=90)


def write_report(out_dir: Path, m: dict, plot_paths: list[Path]) -> None:
    fl = m["floor"]

    f = fmt

    md = [f"# Air-shower validation report: {'PASS' if m['gate']['pass'] else 'FAIL'}", "",
          f"Reference: `{m['reference']}` ({m['n_reference']} events); candidate: `{m['candidate']}` "
          f"({m['n_candidate']} events). Floor: {m['floor_source']}.", "",
          "| gate | value | limit | result |", "|---|---|---|---|",
          *gate_rows(m["gate"], lambda v: f(v, 4)), "",
          "| metric | candidate | simulator floor |", "|---|---|---|",
          *[f"| {k} | {f(m[k], 4)} | {f(fl[k], 4)} |" for k in
            ("auc", "auc_footprints", "separation_power_mean", "station_count_deviation_max",
             "angular_resolution_deviation_max", "s1000_bias_max", "rise_1000_deviation_max",
             "trace_shape_deviation_max", "rise_mass_slope_deviation")], "",
          "| observable | separation | floor |", "|---|---|---|",
          *[f"| {k} | {f(v, 4)} | {f(fl['separation_power'][k], 4)} |" for k, v in m["separation_power"].items()], "",
          "| stations | angular resolution simulation [deg] | surrogate | deviation |", "|---|---|---|---|",
          *[f"| {a['stations']} | {f(a['reference'])} | {f(a['candidate'])} | {f(a['deviation'])} |"
            for a in m["angular_resolution"]], "",
          "| lgE | mean stations simulation | surrogate | S1000 fit/nominal simulation | surrogate |",
          "|---|---|---|---|---|",
          *[f"| {s['lg_lo']}-{s['lg_hi']} | {f(s['reference'], 2)} | {f(s['candidate'], 2)} | {f(t['reference'])} | "
            f"{f(t['candidate'])} |" for s, t in zip(m["stations_by_energy"], m["s1000_by_energy"])], "",
          *[f"![{p.stem}]({p.name})" for p in plot_paths], ""]
    write_markdown_report(out_dir, md, "simgan air-shower validation")
