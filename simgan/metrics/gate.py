"""A gate: each checked figure at most its limit (a limit left as None is not checked), and
enough events behind the classifier test for its figures to be evidence."""

from __future__ import annotations

import math

import numpy as np


def gate_from_values(values: dict[str, tuple[float, float | None]], events: int | None = None,
                     min_events: int | None = None) -> dict:
    """values: check name -> (figure, its maximum or None). With `events` (per class in the
    classifier test) and `min_events`, a check that there were at least that many: below
    about a hundred the classifier cannot tell even clearly different samples apart (at 20-25
    events it gives AUC 0.500 for any pair), so its figure is no evidence either way. No
    check at all is no verdict: the gate fails."""
    checks = {k: {"value": float(v), "max": float(t), "pass": bool(np.isfinite(v) and v <= t)}
              for k, (v, t) in values.items() if t is not None}
    if events is not None and min_events is not None:
        checks["events_per_class"] = {"value": int(events), "min": int(min_events), "pass": bool(events >= min_events)}
    return {"pass": bool(checks) and all(c["pass"] for c in checks.values()), "checks": checks}


def gate_checks(metrics: dict, gcfg, keys: dict[str, str], events: int | None = None) -> dict:
    """keys: metric name -> the gate config's field holding its maximum; `events`: per class in
    the classifier test, checked against the gate's `min_events` where it has one."""
    return gate_from_values({k: (metrics[k], getattr(gcfg, lk)) for k, lk in keys.items()}, events,
                            getattr(gcfg, "min_events", None))


def check_passes(check: dict) -> bool:
    """What a check's own figures say: value <= max, or value >= min."""
    v = check.get("value")
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return False
    if "min" in check:
        return isinstance(check["min"], (int, float)) and v >= check["min"]
    return isinstance(check.get("max"), (int, float)) and v <= check["max"]


def inconsistency(gate: dict) -> str | None:
    """Why a stored verdict does not follow from its own checks (a hand-edited metrics.json),
    or None when it does."""
    checks = gate.get("checks")
    if not isinstance(checks, dict) or not checks or not all(isinstance(c, dict) for c in checks.values()):
        return "it lists no checks"
    for name, c in checks.items():
        if c.get("pass") is not check_passes(c):
            return f"check {name!r} says pass={c.get('pass')} but its figures ({c.get('value')} against " \
                   f"{'min ' + str(c.get('min')) if 'min' in c else 'max ' + str(c.get('max'))}) say otherwise"
    if gate.get("pass") is not all(c["pass"] for c in checks.values()):
        return f"'pass' is {gate.get('pass')} but its checks say {all(c['pass'] for c in checks.values())}"
    return None


def gate_rows(gate: dict, fmt=lambda v: f"{v:.4f}") -> list[str]:
    """The gate as markdown rows: | check | value | limit | result |."""
    rows = []
    for k, c in gate["checks"].items():
        limit = f">= {c['min']}" if "min" in c else f"<= {fmt(c['max'])}"
        value = str(c["value"]) if "min" in c else fmt(c["value"])
        rows.append(f"| {k} | {value} | {limit} | {'pass' if c['pass'] else 'FAIL'} |")
    return rows


def verdict(metrics: dict) -> str:
    """PASS or FAIL: the word every domain's summary and report lead with."""
    return "PASS" if metrics["gate"]["pass"] else "FAIL"
