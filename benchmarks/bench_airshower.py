"""Air-shower generation speed: the footprint surrogate against the reference simulator for the
same conditions, in one run, on the same CPU (events/s; medians of 3 timed runs).

Two reference simulators: the closed-form footprint formula (a vectorised parametric stand-in
for CORSIKA + detector simulation, itself thousands of times faster than CORSIKA, hours per
event at 10^19 eV), and the particle-level station simulation with traces
(`simulate.traces`), timed per bin of energy too. A model trained on trace files is compared
with the particle-level simulator; every ratio compares with these stand-ins, not CORSIKA.

    python benchmarks/bench_airshower.py [CHECKPOINT]   # default runs/airshower_quickstart/train/model.pt
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info, median_seconds  # noqa: E402
from simgan.domains import model_from_checkpoint  # noqa: E402
from simgan.domains.airshower.models import CONDITIONS  # noqa: E402
from simgan.domains.airshower.simulator import ArrayParams, sample_conditions, simulate_events  # noqa: E402

DEFAULT_CHECKPOINT = "runs/airshower_quickstart/train/model.pt"


def median_rate(fn, n: int, repeats: int = 3) -> float:
    return n / median_seconds(fn, repeats)


def particle_level_cost(n_per_bin: int = 500, p: ArrayParams = ArrayParams(traces=True)) -> dict:
    """ms per event of the particle-level simulation in bins of lgE (the rest of the conditions
    drawn as the simulator draws them)."""
    out = {}
    for lo in (18.5, 18.75, 19.0, 19.25, 19.5, 19.75):
        q = ArrayParams(**{**p.to_dict(), "lg_e_min": lo, "lg_e_max": lo + 0.25})
        cond = sample_conditions(n_per_bin, np.random.default_rng(2), q)
        out[f"{lo:.2f}-{lo + 0.25:.2f}"] = 1e3 / median_rate(lambda: simulate_events(cond, np.random.default_rng(3), q),
                                                            n_per_bin)
    return out


def main(checkpoint: str = DEFAULT_CHECKPOINT, n: int = 20000, n_traces: int = 2000) -> dict:
    p = ArrayParams()
    rng = np.random.default_rng(0)
    cond = sample_conditions(n, rng, p)
    sim = median_rate(lambda: simulate_events(cond, np.random.default_rng(1), p), n)
    few = {k: v[:n_traces] for k, v in cond.items()}
    pt = ArrayParams(traces=True)
    sim_traces = median_rate(lambda: simulate_events(few, np.random.default_rng(1), pt), n_traces)
    model, _ = model_from_checkpoint(checkpoint)
    traces = bool(getattr(model, "n_bins", 0))
    c = torch.as_tensor(np.stack([*(cond[k] for k in CONDITIONS), cond["mass_A"]], 1), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    out = {"machine": machine_info(), "events": n, "simulator_events_per_s": sim,
           "particle_level_simulator_events_per_s": sim_traces, "model_generates_traces": traces,
           "particle_level_ms_per_event_by_lgE": particle_level_cost()}
    reference = sim_traces if traces else sim
    for precision in ("fp32", "bf16"):
        for batch in (1000, 10000):
            def run():
                for lo in range(0, n, batch):
                    model.sample(c[lo:lo + batch], None, g, precision=precision)
            rate = median_rate(run, n)
            out[f"surrogate_{precision}_batch{batch}_events_per_s"] = rate
            out[f"ratio_{precision}_batch{batch}"] = rate / reference
    out["ratio_against"] = "the particle-level simulator" if traces else "the formula simulator"
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:2]), indent=2))
