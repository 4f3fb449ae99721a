"""A gate: each checked figure at most its limit (a limit left as None is not checked), and
enough events behind the classifier test for its figures to be evidence."""

from __future__ import annotations

import math

import numpy as np

# A check can fail a model only where the simulator against itself, at the same size, sits clearly
# inside its limit: the floor's distance from the ideal value at most this share of the limit's.
FLOOR_SHARE = 0.8
# checks whose ideal value is not 0 (a classifier's AUC is 0.5 for samples it cannot tell apart)
IDEAL = {"auc": 0.5, "auc_high": 0.5, "auc_low": 0.5, "auc_images": 0.5, "auc_footprints": 0.5,
         "auc_morphometrics": 0.5}


def floor_verdict(floor: float, limit: float, ideal: float, n: int | None) -> dict:
    """Whether a check at this size can tell a model from the simulator: its floor (simulator
    against simulator) within FLOOR_SHARE of the way from the ideal value to the limit. If not,
    the size that would bring it there, taking the floor to shrink as 1/sqrt(N) (statistical
    figures; those that shrink as 1/N need less)."""
    room, excess = limit - ideal, floor - ideal
    ok = bool(np.isfinite(floor) and excess <= FLOOR_SHARE * room)
    out = {"floor": float(floor), "informative": ok}
    if not ok and n and room > 0 and np.isfinite(floor):
        out["events_needed"] = int(math.ceil(n * (excess / (FLOOR_SHARE * room)) ** 2))
    return out


def gate_from_values(values: dict[str, tuple], events: int | None = None, min_events: int | None = None,
                     n: int | None = None) -> dict:
    """values: check name -> (figure, its maximum or None[, the config field of that maximum
    [, the simulator floor's figure]]). With a floor, the check says whether it is
    informative at this size (`floor_verdict`; `n` the events per sample); a gate with an
    uninformative check fails and names it under 'uninformative', with the size it needs. With
    `events` (per class in the classifier test) and `min_events`, a check that there were at
    least that many: below about a hundred the classifier cannot tell even clearly different
    samples apart (at 20-25 events it gives AUC 0.500 for any pair), so its figure is no
    evidence either way. No check at all is no verdict: the gate fails."""
    checks, uninformative = {}, {}
    for k, (v, t, *rest) in values.items():
        if t is None:
            continue
        c = {"value": float(v), "max": float(t), "pass": bool(np.isfinite(v) and v <= t)}
        if rest and rest[0]:
            c["limit_key"] = rest[0]
        if len(rest) > 1 and rest[1] is not None:
            c.update(floor_verdict(float(rest[1]), float(t), IDEAL.get(k, 0.0), n))
            if not c["informative"]:
                uninformative[k] = {x: c[x] for x in ("floor", "max", "events_needed") if x in c}
        checks[k] = c
    if events is not None and min_events is not None:
        checks["events_per_class"] = {"value": int(events), "min": int(min_events), "pass": bool(events >= min_events),
                                      "limit_key": "min_events"}
    gate = {"pass": bool(checks) and all(c["pass"] for c in checks.values()) and not uninformative, "checks": checks}
    if uninformative:
        gate["uninformative"] = uninformative
    return gate


def gate_checks(metrics: dict, gcfg, keys: dict[str, str], events: int | None = None) -> dict:
    """keys: metric name -> the gate config's field holding its maximum; `events`: per class in
    the classifier test, checked against the gate's `min_events` where it has one. The floor of
    each check is metrics['floor'][name] where the floor was compared the same way."""
    floor = metrics.get("floor") or {}
    return gate_from_values({k: (metrics[k], getattr(gcfg, lk), lk, floor.get(k)) for k, lk in keys.items()}, events,
                            getattr(gcfg, "min_events", None), metrics.get("n_candidate"))


def uninformative_message(gate: dict, where: str = "validate.gate") -> str | None:
    """Why a gate's config cannot judge at this size (the checks whose floor is not clearly
    inside their limit, with the size each would need), or None."""
    bad = gate.get("uninformative")
    if not bad:
        return None
    parts = []
    for name, u in bad.items():
        key = gate["checks"][name].get("limit_key", name)
        need = f"; about {u['events_needed']} events per sample would bring it there" if "events_needed" in u else ""
        parts.append(f"{where}.{key} = {u['max']:.4g}: the simulator against itself gives {name} = {u['floor']:.4g} "
                     f"at this size, not clearly inside the limit{need}")
    return ("the gate cannot judge at this size (a check whose floor is not clearly inside its limit would fail "
            "the simulator itself or pass by the draw): " + "; ".join(parts)
            + ": use more events, or a statistic or limit the floor sits clearly inside")


def check_passes(check: dict) -> bool:
    """What a check's own figures say: value <= max, or value >= min."""
    v = check.get("value")
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return False
    if "min" in check:
        return isinstance(check["min"], (int, float)) and v >= check["min"]
    return isinstance(check.get("max"), (int, float)) and v <= check["max"]


def worst_of(values: list, lower_bound: bool) -> float:
    """A check's figure over several draws: its worst draw (the smallest for a check with a
    minimum, the largest otherwise), NaN where a draw has no finite figure."""
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        return float("nan")
    return float(min(values) if lower_bound else max(values))


def _same(a, b) -> bool:
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
        return False
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def inconsistency(gate: dict, metrics: dict | None = None) -> str | None:
    """Why a stored verdict does not follow from its own checks (a hand-edited metrics.json),
    or None when it does: each check's pass from its value and limit, a check over several draws
    as good as its worst draw, and (with `metrics`) each figure of the file that a check judges
    equal to that check's figure (its median over the draws)."""
    checks = gate.get("checks")
    if not isinstance(checks, dict) or not checks or not all(isinstance(c, dict) for c in checks.values()):
        return "it lists no checks"
    for name, c in checks.items():
        if c.get("pass") is not check_passes(c):
            return f"check {name!r} says pass={c.get('pass')} but its figures ({c.get('value')} against " \
                   f"{'min ' + str(c.get('min')) if 'min' in c else 'max ' + str(c.get('max'))}) say otherwise"
        values = c.get("values")
        if values is not None:
            if not isinstance(values, list) or not values:
                return f"check {name!r} lists no draws"
            if not _same(c.get("value"), worst_of(values, "min" in c)):
                return f"check {name!r} gives {c.get('value')}, not the worst of its draws {values}"
            if c.get("pass") and not all(check_passes({**c, "value": v}) for v in values):
                return f"check {name!r} passes although a draw of {values} fails it"
    if metrics is not None:
        for name, c in checks.items():
            top = metrics.get(name)
            if top is None or name == "events_per_class":
                continue
            want = c.get("median", c.get("value")) if c.get("values") is not None else c.get("value")
            if not _same(top, want):
                return f"the figure {name} = {top} disagrees with its gate check's {want}"
    expected = all(c["pass"] for c in checks.values()) and not gate.get("uninformative")
    if gate.get("pass") is not expected:
        return f"'pass' is {gate.get('pass')} but its checks say {expected}"
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
