"""Generation showers/s at batch 1, 100, 10^4 (CPU, and GPU when present), and the
surrogate vs Geant4 speed-up for the same energies in one run, on the same CPU."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

from benchmarks.common import machine_info
from simgan.config import SimulateConfig
from simgan.models.gan import ConditionalGAN, GANConfig

from simgan.generate import geant4_rate, surrogate_rate


def throughput(model, device, batch: int, total: int) -> float:
    model = model.to(device).eval()
    e = torch.full((batch,), 10000.0, device=device)
    g = torch.Generator(device=device)
    g.manual_seed(0)
    model.sample(e, None, g)
    n, t = 0, time.perf_counter()
    while n < total:
        model.sample(e, None, g)
        n += batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def main(checkpoint: str | None = None, g4_events: int = 40) -> dict:
    if checkpoint:
        from simgan.train.trainer import model_from_checkpoint

        model, _ = model_from_checkpoint(checkpoint)
    else:  # the quickstart architecture; speed does not depend on the weights
        model = ConditionalGAN(GANConfig(), 6480, [144] * 45, 0, 0.01515)
    out = {"machine": machine_info(), "cpu": {}}
    cpu = torch.device("cpu")
    for b, total in ((1, 300), (100, 3000), (10000, 20000)):
        out["cpu"][f"batch_{b}"] = throughput(model, cpu, b, total)
    if torch.cuda.is_available():
        out["gpu"] = {f"batch_{b}": throughput(model, torch.device("cuda"), b, t)
                      for b, t in ((1, 300), (100, 10000), (10000, 200000))}
    # same energies through Geant4 (all cores) and the surrogate in this run
    rng = np.random.default_rng(0)
    energies = np.exp(rng.uniform(np.log(1e3), np.log(6.4e4), g4_events))
    # shards small enough that every core has work
    cfg = SimulateConfig(shard_events=max(1, g4_events // (2 * (os.cpu_count() or 1))))
    g4, workers = geant4_rate(cfg, 1, energies, workers=0)
    sur = surrogate_rate(model, np.resize(energies, 10000), cpu)
    out["same_energies_1_64_GeV"] = {"geant4_showers_per_s_all_cores": g4, "geant4_processes": workers,
                                     "surrogate_showers_per_s_cpu": sur, "speedup": sur / g4}
    if torch.cuda.is_available():
        gpu = surrogate_rate(model, np.resize(energies, 100000), torch.device("cuda"))
        out["same_energies_1_64_GeV"].update(surrogate_showers_per_s_gpu=gpu, speedup_gpu=gpu / g4)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else None), indent=2))
