"""Simulate and validate on a Slurm cluster through dask-jobqueue: every dask worker is a
Slurm job (one single-threaded process per core: Geant4 is one application per process).

    python workflows/dask_jobqueue_recipe.py simulate -c CONFIG --out SHOWERS.h5 [--queue Q --jobs N]
    python workflows/dask_jobqueue_recipe.py validate -c CONFIG --reference REF.h5 --candidate GEN.h5 --out DIR

The results equal the in-process run: simulation shards are seeded by their index, and the
validation features are computed shower by shower (a `slurm` test checks both on the local
Slurm of workflows/local_slurm.sh).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simgan.config import ExperimentConfig
from simgan.domains import load_config  # noqa: E402


@contextmanager
def slurm_client(queue: str, jobs: int = 2, cores: int = 1, memory: str = "4GB", walltime: str = "01:00:00",
                 timeout: float = 300, log_directory: str | None = None):
    """A dask Client on `jobs` Slurm jobs of `cores` single-threaded worker processes each,
    waited for until all have joined; the jobs' logs go to `log_directory` (default: the
    current folder, Slurm's slurm-JOBID.out)."""
    from simgan.extras import require

    Client = require("dask.distributed").Client
    SLURMCluster = require("dask_jobqueue").SLURMCluster

    cluster = SLURMCluster(queue=queue, cores=cores, processes=cores, memory=memory, walltime=walltime,
                           python=sys.executable, log_directory=log_directory,
                           job_script_prologue=["export HDF5_USE_FILE_LOCKING=FALSE", "export OMP_NUM_THREADS=1"])
    try:
        cluster.scale(jobs=jobs)
        with Client(cluster) as client:
            client.wait_for_workers(jobs * cores, timeout=timeout)
            yield client
    finally:
        cluster.close()


def simulate(cfg: ExperimentConfig, out, client) -> dict:
    from simgan.domains.calorimeter.sim.geant4 import DaskGeantPool
    from simgan.domains.calorimeter.sim.produce import settings_of, simulate_to_file

    return simulate_to_file(cfg.simulate, cfg.seed, out, progress=False,
                            pool=DaskGeantPool(settings_of(cfg.simulate), client))


def validate(cfg: ExperimentConfig, reference, candidate, out, client) -> dict:
    from simgan.domains.calorimeter.validate import validate as run

    return run(reference, candidate, out, cfg.validate, cfg.domain.threshold_mev, client)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["simulate", "validate"])
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--reference")
    p.add_argument("--candidate")
    p.add_argument("--queue", default="cpu")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--cores", type=int, default=4)
    p.add_argument("--memory", default="16GB")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    cfg = load_config(a.config, a.overrides)
    with slurm_client(a.queue, a.jobs, a.cores, a.memory) as client:
        if a.what == "simulate":
            simulate(cfg, a.out, client)
            print(f"wrote {a.out}")
        else:
            if not (a.reference and a.candidate):
                p.error("validate needs --reference and --candidate")
            m = validate(cfg, a.reference, a.candidate, a.out, client)
            print("gate:", "PASS" if m["gate"]["pass"] else "FAIL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
