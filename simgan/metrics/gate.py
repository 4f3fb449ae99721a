"""A gate: each checked figure at most its limit (a limit left as None is not checked)."""

from __future__ import annotations

import numpy as np


def gate_checks(metrics: dict, gcfg, keys: dict[str, str]) -> dict:
    """keys: metric name -> the gate config's field holding its maximum."""
    checks = {}
    for key, limit_key in keys.items():
        limit = getattr(gcfg, limit_key)
        if limit is None:
            continue
        v = metrics[key]
        checks[key] = {"value": v, "max": limit, "pass": bool(np.isfinite(v) and v <= limit)}
    return {"pass": all(c["pass"] for c in checks.values()), "checks": checks}


def verdict(metrics: dict) -> str:
    """PASS or FAIL: the word every domain's summary and report lead with."""
    return "PASS" if metrics["gate"]["pass"] else "FAIL"
