"""One cluster job of the tracking-server test: the toy domain's whole chain (simulate, prepare,
train, generate, validate, register), tracked and registered at the URI given.

    python tests/core/toy_job.py RUNS_DIR TRACKING_URI SEED [NAME]

NAME (default toy-jobs) is the experiment and the registered model's name.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the package toy_domain
sys.path.insert(0, str(HERE.parent.parent))

from pipeline.runner import run_chain  # noqa: E402
from simgan.domains import load_config, register_domain  # noqa: E402

# (what is tested is the tracking: one draw, and a gate that 60 held-out events can judge)
TINY = ["simulate.events=300", "train.steps=20", "train.val_every=10", "train.checkpoint_every=10",
        "train.log_every=5", "train.progress=false", "validate.draws=1", "validate.gate.w1_mean_max=1.0",
        "validate.gate.auc_max=1.0"]

if __name__ == "__main__":
    runs_dir, uri, seed = sys.argv[1:4]
    name = sys.argv[4] if len(sys.argv) > 4 else "toy-jobs"
    register_domain("toy", "toy_domain")
    cfg = load_config(HERE / "toy_domain" / "configs" / "experiment" / "toy.yaml",
                      [f"runs_dir={runs_dir}", f"register.tracking_uri={uri}", f"seed={seed}", f"name={name}",
                       f"register.name={name}", *TINY])
    sys.exit(run_chain(cfg, progress=False))
