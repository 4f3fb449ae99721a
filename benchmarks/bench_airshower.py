"""Air-shower generation speed: the footprint surrogate against the reference simulator for the
same conditions, in one run, on the same CPU (events/s; medians of 3 timed runs).

The reference simulator is a vectorised parametric stand-in for CORSIKA + detector simulation,
itself thousands of times faster than CORSIKA (hours per event at 10^19 eV): this ratio
compares the surrogate with that stand-in, not with CORSIKA.

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
from simgan.domains.airshower.models import CONDITIONS  # noqa: E402
from simgan.domains.airshower.simulator import ArrayParams, sample_conditions, simulate_events  # noqa: E402
from simgan.domains import model_from_checkpoint  # noqa: E402

DEFAULT_CHECKPOINT = "runs/airshower_quickstart/train/model.pt"


def median_rate(fn, n: int, repeats: int = 3) -> float:
    return n / median_seconds(fn, repeats)


def main(checkpoint: str = DEFAULT_CHECKPOINT, n: int = 20000) -> dict:
    p = ArrayParams()
    rng = np.random.default_rng(0)
    cond = sample_conditions(n, rng, p)
    sim = median_rate(lambda: simulate_events(cond, np.random.default_rng(1), p), n)
    model, _ = model_from_checkpoint(checkpoint)
    c = torch.as_tensor(np.stack([cond[k] for k in CONDITIONS], 1), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    out = {"machine": machine_info(), "events": n, "simulator_events_per_s": sim}
    for precision in ("fp32", "bf16"):
        for batch in (1000, 10000):
            def run():
                for lo in range(0, n, batch):
                    model.sample(c[lo:lo + batch], None, g, precision=precision)
            rate = median_rate(run, n)
            out[f"surrogate_{precision}_batch{batch}_events_per_s"] = rate
            out[f"ratio_{precision}_batch{batch}"] = rate / sim
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:2]), indent=2))
