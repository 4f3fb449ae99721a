"""Generation showers/s at batch 1, 100, 10^4 (CPU, and GPU when present), and the surrogate
vs Geant4 speed-up for the same energies in one run, on the same CPU: Geant4 with one
process per core against the surrogate both in one process (all threads) and in one
single-threaded process per core, as Geant4 runs; every rate is the median of 3 timed runs.
Repeated for the dataset-2 spectrum (log-uniform 1 GeV-1 TeV).

Speed depends on the trained weights (how many layers a shower fills and how many voxels
it hits), so this needs a trained checkpoint:

    python benchmarks/bench_generate.py [CHECKPOINT]   # default runs/quickstart/train/model.pt
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info  # noqa: E402
from simgan.domains.calorimeter.config import SimulateConfig  # noqa: E402
from simgan.domains.calorimeter.generate import geant4_rate, surrogate_rate  # noqa: E402

DEFAULT_CHECKPOINT = "runs/quickstart/train/model.pt"
REPEATS = 3  # every rate in the comparison is the median of 3 timed runs (this VM's rates vary by 10-20%)


def throughput(model, device, batch: int, total: int, precision: str) -> float:
    model = model.to(device).eval()
    e = torch.full((batch,), 10000.0, device=device)
    g = torch.Generator(device=device)
    g.manual_seed(0)
    buf = model.sample(e, None, g, precision=precision)
    n, t = 0, time.perf_counter()
    while n < total:
        model.sample(e, None, g, precision=precision, out=buf)
        n += batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def _one_process_rate(checkpoint: str, energies: np.ndarray, precision: str, start: float) -> float:
    from simgan.domains import model_from_checkpoint

    torch.set_num_threads(1)
    model, _ = model_from_checkpoint(checkpoint)
    model.sample(torch.as_tensor(energies[:100]), None, precision=precision)  # warm-up
    while time.time() < start:  # every process starts timing together
        time.sleep(0.01)
    return surrogate_rate(model, energies, "cpu", precision=precision, repeats=REPEATS)


def per_core_rate(checkpoint: str, energies: np.ndarray, precision: str, processes: int) -> float:
    """Showers/s of `processes` single-threaded processes sampling at once (summed)."""
    start = time.time() + 15
    with ProcessPoolExecutor(processes) as pool:
        parts = [pool.submit(_one_process_rate, checkpoint, energies, precision, start) for _ in range(processes)]
        return sum(p.result() for p in parts)


def compare(checkpoint: str, model, energies: np.ndarray, label: str) -> dict:
    cores = os.cpu_count() or 1
    # shards small enough that every core has work
    cfg = SimulateConfig(shard_events=max(1, len(energies) // (2 * cores)))
    g4, workers = geant4_rate(cfg, 1, energies, workers=0, repeats=REPEATS)
    many = np.resize(energies, 10000)
    out = {"label": label, "events_geant4": int(len(energies)), "mean_energy_gev": float(energies.mean() / 1e3),
           "geant4_showers_per_s": g4, "geant4_processes": workers}
    for precision in ("fp32", "bf16"):
        one = surrogate_rate(model, many, "cpu", precision=precision, repeats=REPEATS)
        procs = per_core_rate(checkpoint, many, precision, workers)
        out[precision] = {"one_process_showers_per_s": one, "speedup_one_process": one / g4,
                          "per_core_processes_showers_per_s": procs, "speedup_per_core_processes": procs / g4}
    return out


def main(checkpoint: str | None = None, g4_events: int = 200) -> dict:
    from simgan.domains import model_from_checkpoint

    checkpoint = checkpoint or DEFAULT_CHECKPOINT
    if not Path(checkpoint).is_file():
        raise SystemExit(f"{checkpoint}: no trained checkpoint; run `make quickstart` first or pass one")
    model, _ = model_from_checkpoint(checkpoint)
    out = {"machine": machine_info(), "checkpoint": checkpoint, "cpu": {}}
    cpu = torch.device("cpu")
    for precision in ("fp32", "bf16"):
        out["cpu"][precision] = {f"batch_{b}": throughput(model, cpu, b, total, precision)
                                 for b, total in ((1, 300), (100, 3000), (10000, 20000))}
    if torch.cuda.is_available():
        out["gpu"] = {p: {f"batch_{b}": throughput(model, torch.device("cuda"), b, t, p)
                          for b, t in ((1, 300), (100, 10000), (10000, 200000))} for p in ("fp32", "bf16")}
    rng = np.random.default_rng(0)
    quick = np.exp(rng.uniform(np.log(1e3), np.log(6.4e4), g4_events))
    out["same_energies_1_64_GeV"] = compare(checkpoint, model, quick, "log-uniform 1-64 GeV")
    ds2 = np.exp(rng.uniform(np.log(1e3), np.log(1e6), max(g4_events // 5, 8)))
    out["same_energies_ds2_1_GeV_1_TeV"] = compare(checkpoint, model, ds2, "log-uniform 1 GeV-1 TeV")
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else None), indent=2))
