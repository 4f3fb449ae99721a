"""The CPUs this process may use, and thread pools sized to them.

On a shared node the machine's core count is the wrong number: a Slurm job gets
SLURM_CPUS_PER_TASK cores, the affinity mask (taskset, cgroups cpusets) and a cgroup CPU quota
(containers) can be smaller still, and torchrun starts several processes on one node. Thread
pools sized to the machine then oversubscribe the cores they have, and OpenMP's spin-waiting
makes that far worse (boosted trees beside another busy process ran up to 50x slower).
`limit_threads` sizes torch's intra-op pool and the BLAS and OpenMP pools (threadpoolctl) to
`usable_cpus()`, and passes the number on to child processes (OMP_NUM_THREADS).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from simgan.errors import SimganError


def _cgroup_quota(root: Path) -> int | None:
    """The cgroup v2 CPU quota (cpu.max: "QUOTA PERIOD", or "max"), rounded up to cores."""
    try:
        text = (root / "cpu.max").read_text().split()
    except OSError:
        return None
    if len(text) != 2 or text[0] == "max":
        return None
    try:
        quota, period = float(text[0]), float(text[1])
    except ValueError:
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def _whole_number(var: str, raw: str) -> int:
    """An environment variable's count, >= 1, or an error naming it."""
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise SimganError(f"environment variable {var}={raw!r}: expected a whole number >= 1")
    return value


def usable_cpus(environ=None, affinity=None, cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """The CPUs this process may use: the affinity mask, at most SLURM_CPUS_PER_TASK and the
    cgroup quota, divided among torchrun's processes on this node (LOCAL_WORLD_SIZE)."""
    environ = os.environ if environ is None else environ
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    n = len(affinity)
    for var in ("SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE"):
        raw = environ.get(var)
        if raw in (None, ""):
            continue
        value = _whole_number(var, raw)
        n = min(n, value) if var == "SLURM_CPUS_PER_TASK" else n // value
    quota = _cgroup_quota(Path(cgroup_root))
    if quota is not None:
        n = min(n, quota)
    return max(1, n)


def limit_threads(n: int | None = None) -> int:
    """Size torch's pool, the BLAS and OpenMP pools and child processes' OMP_NUM_THREADS to
    `n` (default `usable_cpus()`); returns it. SIMGAN_THREADS overrides."""
    if n is None:
        raw = os.environ.get("SIMGAN_THREADS")
        n = _whole_number("SIMGAN_THREADS", raw) if raw else usable_cpus()
    os.environ["OMP_NUM_THREADS"] = str(n)
    import torch  # (heavy; the commands that come here use it anyway)
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)
    return n
