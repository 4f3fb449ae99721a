"""Streaming loader throughput vs a raw sequential h5py read, and its peak memory.

The file is several times larger than the chunk size; peak memory is measured in a
fresh process (ru_maxrss) so the numbers are not polluted by the writer.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def make_file(path: Path, n: int) -> None:
    from simgan.domains.calorimeter.data import calochallenge as cc
    from simgan.domains.calorimeter.data.binning import reference_binning

    b = reference_binning()
    rng = np.random.default_rng(0)
    with cc.ShowerWriter(path, b, compression=None) as w:
        for lo in range(0, n, 2000):
            m = min(2000, n - lo)
            s = (rng.exponential(1.0, (m, b.n_voxels)) * (rng.random((m, b.n_voxels)) < 0.15)).astype(np.float32)
            w.append(rng.uniform(1e3, 6.4e4, m), s)


def child(mode: str, path: str, chunk: int) -> None:
    if mode.startswith("torch"):  # the import (about 1.5 s) is not part of reading
        import torch  # noqa: F401
    t = time.perf_counter()
    rows = 0
    if mode == "raw":
        with h5py.File(path, "r") as f:
            ds = f["showers"]
            for lo in range(0, ds.shape[0], chunk):
                rows += len(ds[lo:lo + chunk])
    elif mode == "chunks":
        from simgan.domains.calorimeter.data.calochallenge import iter_chunks

        for _, e, _s, _ in iter_chunks(path, chunk, check=True):
            rows += len(e)
    else:
        from torch.utils.data import DataLoader

        from simgan.domains.calorimeter.data.stream import ChunkedShowerDataset

        if mode == "torch":  # one shower per item, collated by the DataLoader
            loader = DataLoader(ChunkedShowerDataset(path, chunk), batch_size=256)
        else:  # "torch_batches": the dataset cuts batches itself
            loader = DataLoader(ChunkedShowerDataset(path, chunk, batch_size=256), batch_size=None)
        for _x, e, _ in loader:
            rows += len(e)
    dt = time.perf_counter() - t
    print(json.dumps({"rows": rows, "seconds": dt, "rows_per_s": rows / dt,
                      "peak_rss_mb": _vm_hwm_mb()}))


def _vm_hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM); ru_maxrss would carry the parent's peak across exec."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def main(n: int = 20000, chunk: int = 2000) -> dict:
    from benchmarks.common import machine_info

    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / "big.h5"
        make_file(path, n)
        size_mb = path.stat().st_size / 2**20
        res = {}
        for mode in ("raw", "chunks", "torch", "torch_batches"):
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_loader", "--child", mode, str(path), str(chunk)],
                                 capture_output=True, text=True, check=True)
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    chunk_mb = chunk * 6480 * 4 / 2**20
    return {"machine": machine_info(), "file_mb": size_mb, "chunk_mb": chunk_mb, "events": n, **res,
            "chunks_vs_raw": res["chunks"]["rows_per_s"] / res["raw"]["rows_per_s"],
            "torch_vs_raw": res["torch"]["rows_per_s"] / res["raw"]["rows_per_s"],
            "torch_batches_vs_raw": res["torch_batches"]["rows_per_s"] / res["raw"]["rows_per_s"]}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        print(json.dumps(main(), indent=2))
