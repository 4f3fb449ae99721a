"""Neuron generation speed: the image surrogate against NeuroTS + orientation + projection for
the same conditions, in one run, on the same CPU (images/s; one core for NeuroTS, as it runs
one process per core; the surrogate with torch's threads; medians of 3 timed runs).

    python benchmarks/bench_neuron.py [CHECKPOINT] [N_NEUROTS]   # default runs/neuron_quickstart/train/model.pt, 30
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info, median_seconds  # noqa: E402
from simgan.domains import model_from_checkpoint  # noqa: E402
from simgan.domains.neuron.models import condition_array  # noqa: E402
from simgan.domains.neuron.simulator import CLASSES, event_plan, simulate  # noqa: E402

DEFAULT_CHECKPOINT = "runs/neuron_quickstart/train/model.pt"


def main(checkpoint: str = DEFAULT_CHECKPOINT, n_neurots: int = 30, n: int = 4096) -> dict:
    n_neurots = int(n_neurots)
    out = {"machine": machine_info(), "neurots_neurons": n_neurots, "surrogate_images": n}
    t0 = time.perf_counter()
    ev = simulate(n_neurots, 11, CLASSES, (0.1, 0.4), workers=1)
    sim_rate = n_neurots / (time.perf_counter() - t0)
    out["neurots_images_per_s_one_core"] = sim_rate
    out["neurots_seconds_per_neuron"] = 1 / sim_rate
    model, _ = model_from_checkpoint(checkpoint)
    plan = event_plan(n, 12, CLASSES, (0.1, 0.4))
    c = torch.as_tensor(condition_array(plan["cell_class"], plan["randomness"]))
    g = torch.Generator().manual_seed(0)
    for precision in ("fp32", "bf16"):
        for batch in (256, 1024):
            def run():
                for lo in range(0, n, batch):
                    model.sample(c[lo:lo + batch], None, g, precision=precision)
            rate = n / median_seconds(run)
            out[f"surrogate_{precision}_batch{batch}_images_per_s"] = rate
            out[f"ratio_{precision}_batch{batch}_vs_one_core"] = rate / sim_rate
            out[f"ratio_{precision}_batch{batch}_vs_all_cores"] = rate / (sim_rate * (torch.get_num_threads() or 1))
    out["neurots_class_mix"] = {k: int((ev["conditions"]["cell_class"] == i).sum()) for i, k in enumerate(CLASSES)}
    out["neurots_mean_length_um"] = float(np.mean(ev["truth"]["total_length"]))
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:3]), indent=2))
