"""A dask.distributed client for the stages that fan out (simulate, generate, validate)."""

from __future__ import annotations

import contextlib
import os

from simgan.extras import require


@contextlib.contextmanager
def dask_client(enabled: bool, workers: int, scheduler: str | None = None):
    if not enabled:
        yield None
        return
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

    dd = require("dask.distributed")
    Client, LocalCluster = dd.Client, dd.LocalCluster

    if scheduler:
        with Client(scheduler) as c:
            yield c
        return
    # ":0": its HTTP server (dashboard and metrics) on a free port; None still takes 8787, so two
    # jobs on one node collided ("Port 8787 is already in use")
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cl, Client(cl) as c:
        yield c
