"""Validation time and peak memory for N showers of 6480 voxels on CPU (goal: 100k in < 2 min).

Two samples of N showers are generated from a checkpoint (different seeds), then
`simgan validate` runs on them in a fresh process; peak memory is that process's VmHWM.
With --busy it runs a second time beside one other busy process (a single-threaded loop, as
another job on a shared node), and reports the ratio of the two times (target <= 2x: thread
pools sized to the CPUs, no OpenMP spin-waiting against the other job).

    python benchmarks/bench_validate.py CHECKPOINT [N] [--busy]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(checkpoint: str, n: int = 100_000, busy: bool = False) -> dict:
    from benchmarks.common import machine_info
    from simgan.domains import model_from_checkpoint
    from simgan.domains.calorimeter.data.binning import reference_binning
    from simgan.domains.calorimeter.generate import generate_to_file, log_uniform_energies

    model, _ = model_from_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        e = log_uniform_energies(n, 1, 64, 0)
        for name, seed in (("ref.h5", 1), ("cand.h5", 2)):
            generate_to_file(model, e, {}, td / name, reference_binning(), 10000, "cpu", seed, progress=False)
        code = ("import json,time,sys; from simgan.domains.calorimeter.validate import validate; "
                "from simgan.domains.calorimeter.config import CaloValidateConfig as ValidateConfig;"
                "t=time.perf_counter(); m=validate(sys.argv[1], sys.argv[2], sys.argv[3], ValidateConfig(), 0.01515);"
                "hwm=[int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]/1024;"
                "print(json.dumps({'seconds': time.perf_counter()-t, 'peak_rss_mb': hwm, 'auc_high': m['auc_high']}))")

        def timed(out_dir):
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code, str(td / "ref.h5"), str(td / "cand.h5"), str(out_dir)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["process_seconds"] = time.perf_counter() - t
            return r

        res = timed(td / "v")
        res["file_mb"] = (td / "ref.h5").stat().st_size / 2**20
        if busy:
            spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                beside = timed(td / "v_busy")
            finally:
                spin.kill()
                spin.wait()
            res["beside_busy_process_seconds"] = beside["process_seconds"]
            res["beside_busy_ratio"] = beside["process_seconds"] / res["process_seconds"]
    return {"machine": machine_info(), "events_per_sample": n, **res}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--busy"]
    print(json.dumps(main(args[0], int(args[1]) if len(args) > 1 else 100_000, "--busy" in sys.argv), indent=2))
