"""A verdict over several draws of the sampler: the same model generates the held-out
conditions again at other seeds, each draw is validated against the same reference and floor,
and the gate passes only where every check passes at every draw. A model that passes at one
seed and fails at another is refused; the figures are reported as their median with their
spread over the draws."""

from __future__ import annotations

import math

import numpy as np

from simgan.metrics.gate import worst_of

RULE = ("a check passes when it passes at every draw of the sampler; each figure is the median over the draws, "
        "[min, max] its spread; a check's value is its worst draw")
# figures of one validation that are bookkeeping, not a property of the sample
NOT_FIGURES = {"n_reference", "n_candidate", "wall_seconds", "threshold_mev"}


def draw_seeds(seed: int, draws: int) -> list[int]:
    """The sampler's seeds: the run's own for the first draw (the generate stage's sample),
    then seed + 1, seed + 2, ... (what `simgan generate --seed` takes, to repeat one)."""
    return [seed + k for k in range(draws)]


def combine_draws(per_draw: list[dict], seeds: list[int], candidates: list[str]) -> dict:
    """One metrics dict from the validations of several draws: the first draw's figures in
    full (its plots and tables), every scalar figure found in all draws replaced by its median,
    with median/min/max/values under draws.figures, and a gate whose every check holds all
    draws' values, is as good as its worst draw and passes only if it passed at every draw."""
    first = per_draw[0]
    out = dict(first)
    figures = {}
    for key, v in first.items():
        if key in NOT_FIGURES or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        values = [m.get(key) for m in per_draw]
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in values):
            continue
        arr = np.asarray(values, dtype=float)
        if not np.isfinite(arr).all():
            figures[key] = {"median": float("nan"), "min": float("nan"), "max": float("nan"), "values": values}
            out[key] = float("nan")
            continue
        figures[key] = {"median": float(np.median(arr)), "min": float(arr.min()), "max": float(arr.max()),
                        "values": [float(x) for x in arr]}
        if arr.min() != arr.max():  # (one value at every draw, e.g. a count, keeps its type)
            out[key] = figures[key]["median"]
    names = list(dict.fromkeys(k for m in per_draw for k in m["gate"]["checks"]))
    checks = {}
    for name in names:
        per = [m["gate"]["checks"].get(name) for m in per_draw]
        if any(c is None for c in per):
            missing = [i for i, c in enumerate(per) if c is None]
            base = next(c for c in per if c is not None)
            checks[name] = {**base, "value": float("nan"), "pass": False, "values": [c and c["value"] for c in per],
                            "missing_in_draws": missing}
            continue
        values = [c["value"] for c in per]
        lower = "min" in per[0]
        worst = worst_of(values, lower)
        if isinstance(per[0]["value"], int) and math.isfinite(worst):
            worst = int(worst)
        finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        checks[name] = {**per[0], "value": worst, "values": values,
                        "median": float(np.median(finite)) if len(finite) == len(values) else float("nan"),
                        "pass": all(c["pass"] for c in per)}
    uninformative = {}
    for m in per_draw:  # the floor is the same at every draw; a check uninformative at any is so
        uninformative.update(m["gate"].get("uninformative") or {})
    gate = {"pass": bool(checks) and all(c["pass"] for c in checks.values()) and not uninformative,
            "checks": checks, "draws": len(per_draw), "rule": RULE}
    if uninformative:
        gate["uninformative"] = uninformative
    out["gate"] = gate
    out["draws"] = {"count": len(per_draw), "seeds": list(seeds), "candidates": [str(c) for c in candidates],
                    "pass": [bool(m["gate"]["pass"]) for m in per_draw], "rule": RULE, "figures": figures}
    return out


def spread_text(m: dict, key: str, fmt=lambda v: f"{v:.3f}") -> str:
    """' [min-max over N draws]' for a figure of a combined metrics dict, '' for one draw."""
    f = (m.get("draws") or {}).get("figures", {}).get(key)
    if not f or len(f["values"]) < 2:
        return ""
    return f" [{fmt(f['min'])}-{fmt(f['max'])} over {len(f['values'])} draws]"


def draws_report(m: dict) -> list[str]:
    """The report's section on the draws: the rule, each draw's seed and verdict, and each
    check's values at every draw."""
    d = m.get("draws")
    if not d or d["count"] < 2:
        return []
    lines = [f"Verdict over {d['count']} draws: {'PASS' if m['gate']['pass'] else 'FAIL'} "
             f"({sum(d['pass'])} of {d['count']} draws pass on their own).", "", "## Draws of the sampler", "",
             f"Judged on {d['count']} draws (sampler seeds {', '.join(map(str, d['seeds']))}): {d['rule']}. "
             "The plots and per-bin tables below are the first draw's.", "",
             "| draw | seed | candidate | gate |", "|---|---|---|---|"]
    for i, (s, c, p) in enumerate(zip(d["seeds"], d["candidates"], d["pass"])):
        lines.append(f"| {i} | {s} | `{c}` | {'pass' if p else 'FAIL'} |")
    lines += ["", "| check | " + " | ".join(f"draw {i}" for i in range(d["count"])) + " | median | limit | result |",
              "|---|" + "---|" * (d["count"] + 4)]
    for name, c in m["gate"]["checks"].items():
        vals = " | ".join("n/a" if not isinstance(v, (int, float)) else f"{v:.4g}" for v in c.get("values", []))
        limit = f">= {c['min']}" if "min" in c else f"<= {c['max']:.4g}"
        med = c.get("median")
        lines.append(f"| {name} | {vals} | {'n/a' if med is None else f'{med:.4g}'} | {limit} | "
                     f"{'pass' if c['pass'] else 'FAIL'} |")
    return lines + [""]
