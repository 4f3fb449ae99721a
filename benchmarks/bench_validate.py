"""Validation time and peak memory for N showers of 6480 voxels on CPU (goal: 100k in < 2 min).

Two samples of N showers are generated from a checkpoint (different seeds), then
`simgan validate` runs on them in a fresh process; peak memory is that process's VmHWM.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path



def main(checkpoint: str, n: int = 100_000) -> dict:
    from benchmarks.common import machine_info
    from simgan.domains.calorimeter.data.binning import reference_binning
    from simgan.domains.calorimeter.generate import generate_to_file, log_uniform_energies
    from simgan.domains import model_from_checkpoint

    model, _ = model_from_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        e = log_uniform_energies(n, 1, 64, 0)
        for name, seed in (("ref.h5", 1), ("cand.h5", 2)):
            generate_to_file(model, e, {}, td / name, reference_binning(), 10000, "cpu", seed, progress=False)
        code = ("import json,time,sys; from simgan.domains.calorimeter.validate import validate; from simgan.domains.calorimeter.config import CaloValidateConfig as ValidateConfig;"
                "t=time.perf_counter(); m=validate(sys.argv[1], sys.argv[2], sys.argv[3], ValidateConfig(), 0.01515);"
                "hwm=[int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]/1024;"
                "print(json.dumps({'seconds': time.perf_counter()-t, 'peak_rss_mb': hwm, 'auc_high': m['auc_high']}))")
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code, str(td / "ref.h5"), str(td / "cand.h5"), str(td / "v")],
                             capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res["process_seconds"] = time.perf_counter() - t
        res["file_mb"] = (td / "ref.h5").stat().st_size / 2**20
    return {"machine": machine_info(), "events_per_sample": n, **res}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100_000), indent=2))
