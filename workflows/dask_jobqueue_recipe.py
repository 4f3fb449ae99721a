"""Validation features on a Slurm cluster through dask-jobqueue (pip install dask-jobqueue).

    python workflows/dask_jobqueue_recipe.py REFERENCE.h5 CANDIDATE.h5 OUT_DIR

The same code runs on a LocalCluster in the tests (`simgan validate --dask`).
"""

import sys

from dask.distributed import Client
from dask_jobqueue import SLURMCluster

from simgan.config import DomainConfig, ValidateConfig
from simgan.validate import validate

if __name__ == "__main__":
    ref, cand, out = sys.argv[1:4]
    cluster = SLURMCluster(queue="cpu", cores=4, memory="16GB", walltime="01:00:00",
                           job_script_prologue=["export HDF5_USE_FILE_LOCKING=FALSE"])
    cluster.scale(jobs=4)
    with Client(cluster) as client:
        m = validate(ref, cand, out, ValidateConfig(), DomainConfig().threshold_mev, client)
    print("gate:", "PASS" if m["gate"]["pass"] else "FAIL")
