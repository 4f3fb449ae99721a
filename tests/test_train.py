import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline import prepare
from pipeline.contract import Context
from simgan.errors import SimganError
from simgan.train.trainer import Trainer, load_checkpoint
from tests.conftest import REPO, small_cfg

TINY = ["model.hidden=[32,32]", "model.critic_hidden=[32,32]", "train.batch_size=16", "train.log_every=2",
        "train.val_every=4", "train.val_events=20", "train.checkpoint_every=3", "train.mlflow=false"]


@pytest.fixture(scope="module")
def splits(g4_sample, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("splits")
    cfg = small_cfg(tmp, f"prepare.input={g4_sample}")
    return prepare.run(cfg, Context(progress=False))


def _trainer(tmp, splits, *over):
    cfg = small_cfg(tmp, *TINY, *over)
    return Trainer(cfg, splits["train"], splits["val"], tmp / "train", progress=False)


def _losses(tmp):
    return [json.loads(l) for l in (tmp / "train" / "metrics.jsonl").read_text().splitlines()]


def test_prepare_splits_are_disjoint_and_deterministic(splits, g4_sample):
    from simgan.data import calochallenge as cc
    e = {k: cc.read(v).energies for k, v in splits.items()}
    assert sum(len(v) for v in e.values()) == 200
    assert not (set(e["train"]) & set(e["test"])) and not (set(e["val"]) & set(e["test"]))
    idx1 = prepare.split_indices(200, (0.6, 0.1, 0.3), 42)
    idx2 = prepare.split_indices(200, (0.6, 0.1, 0.3), 42)
    assert all(np.array_equal(idx1[k], idx2[k]) for k in idx1)


@pytest.mark.parametrize("model", ["wgan_gp", "gan_bce", "wgan_clip", "vae", "vae_mse", "wgan_gp_factorised"])
def test_each_family_trains_and_losses_change(tmp_path, splits, model):
    if model.startswith("vae"):
        tiny = [t for t in TINY if "critic_hidden" not in t]
        cfg = small_cfg(tmp_path, "model=vae", *tiny, "model.kl_warmup_steps=2", "train.steps=6",
                        f"model.likelihood={'mse' if model == 'vae_mse' else 'gaussian'}")
    elif model == "wgan_gp_factorised":
        cfg = small_cfg(tmp_path, "model=wgan_gp", *TINY, "model.n_critic=2", "train.steps=6",
                        "model.output=factorised", "model.critic_features=true")
    else:
        cfg = small_cfg(tmp_path, f"model={model}", *TINY, "model.n_critic=2", "train.steps=6")
    assert cfg.model.family == ("vae" if model.startswith("vae") else "gan")
    info = Trainer(cfg, splits["train"], splits["val"], tmp_path / "train", progress=False).fit()
    rows = _losses(tmp_path)
    key = "loss" if model.startswith("vae") else "loss_d"
    vals = [r[key] for r in rows]
    assert all(np.isfinite(v) for r in rows for v in r.values())
    assert len(set(vals)) > 1 and info["steps"] == 6
    assert "val_w1_etot" in rows[-1]


def test_resume_continues_identically(tmp_path, splits):
    full = _trainer(tmp_path / "a", splits, "train.steps=8")
    full.fit()
    part = _trainer(tmp_path / "b", splits, "train.steps=6")  # stops after a checkpoint at step 6
    part.fit()
    resumed = _trainer(tmp_path / "b", splits, "train.steps=8")
    resumed.fit()
    assert resumed.step == 8
    a = load_checkpoint(tmp_path / "a" / "train" / "model.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "train" / "model.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    keys = ("step", "loss_d", "loss_g", "wasserstein", "gp")
    strip = lambda rows: [{k: r[k] for k in keys} for r in rows]  # noqa: E731
    assert strip(_losses(tmp_path / "a")) == strip(_losses(tmp_path / "b"))


def test_time_budget_stops_at_a_checkpoint_and_the_rerun_finishes(tmp_path, splits):
    from pipeline import train as train_stage
    import shutil

    run_dir = tmp_path / "quickstart"
    (run_dir / "prepare").mkdir(parents=True)
    for k in ("train", "val"):
        shutil.copy(splits[k], run_dir / "prepare" / f"{k}.h5")
    over = [*TINY, "train.steps=8", "train.checkpoint_every=2"]
    short = small_cfg(tmp_path, *over, "train.max_seconds=1e-6")
    train_stage.run(short, Context(progress=False))
    assert load_checkpoint(run_dir / "train" / "model.pt")["step"] == 2
    info = json.loads((run_dir / "train" / "run_info.json").read_text())
    assert info["complete"] is False
    assert not (run_dir / "train" / "manifest.json").exists()  # not done: the runner will rerun it
    train_stage.run(small_cfg(tmp_path, *over), Context(progress=False))
    assert load_checkpoint(run_dir / "train" / "model.pt")["step"] == 8
    assert (run_dir / "train" / "manifest.json").exists()


def test_kill9_then_resume(tmp_path, splits):
    """A real `simgan train` process killed with SIGKILL resumes from its last checkpoint."""
    import shutil
    import signal
    import time

    cfg_over = [f"runs_dir={tmp_path}", *TINY, "train.steps=400", "train.checkpoint_every=2", "train.progress=false"]
    run_dir = tmp_path / "quickstart"
    (run_dir / "prepare").mkdir(parents=True)
    for k in ("train", "val"):
        shutil.copy(splits[k], run_dir / "prepare" / f"{k}.h5")
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "-c", str(REPO / "configs/experiment/quickstart.yaml"), "-q", *cfg_over]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "train" / "checkpoints" / "last.pt"
    t0 = time.time()
    while not last.exists() and time.time() - t0 < 120:
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    step_killed = load_checkpoint(last)["step"]
    assert 0 < step_killed < 400
    r = subprocess.run([*cmd[:-2], "train.steps=" + str(step_killed + 4), "train.progress=false"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(run_dir / "train" / "model.pt")["step"] == step_killed + 4


def test_bf16_path_on_cpu(tmp_path, splits):
    info = _trainer(tmp_path, splits, "train.steps=3", "train.precision=bf16").fit()
    assert info["precision"] == "bf16" and all(np.isfinite(r["loss_d"]) for r in _losses(tmp_path))


def test_checkpoint_from_other_model_refused(tmp_path, splits):
    _trainer(tmp_path, splits, "train.steps=3").fit()
    with pytest.raises(SimganError, match="different model"):
        _trainer(tmp_path, splits, "train.steps=6", "model.latent_dim=8").fit()


def test_nonfinite_loss_stops_with_clear_message(tmp_path, splits):
    with pytest.raises(SimganError, match="non-finite"):
        _trainer(tmp_path, splits, "train.steps=5", "model.lr_d=1e30", "model.lr_g=1e30").fit()


def test_mlflow_run_holds_params_and_metrics(tmp_path, splits):
    import mlflow
    cfg = small_cfg(tmp_path, *[t for t in TINY if t != "train.mlflow=false"], "train.steps=4")
    info = Trainer(cfg, splits["train"], splits["val"], tmp_path / "train", progress=False).fit()
    run = mlflow.tracking.MlflowClient(info["tracking_uri"]).get_run(info["mlflow_run_id"])
    assert run.data.params["model.loss"] == "wgan_gp" and "loss_d" in run.data.metrics
    assert "val_w1_etot" in run.data.metrics


def test_torchrun_two_processes_gloo(tmp_path, splits):
    import shutil
    run_dir = tmp_path / "quickstart"
    (run_dir / "prepare").mkdir(parents=True)
    for k in ("train", "val"):
        shutil.copy(splits[k], run_dir / "prepare" / f"{k}.h5")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "pipeline.cli", "train", "-q",
                        "-c", str(REPO / "configs/experiment/quickstart.yaml"), f"runs_dir={tmp_path}", *TINY,
                        "train.steps=4"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((run_dir / "train" / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == 4


@pytest.mark.gpu
def test_bf16_ddp_on_gpu(tmp_path, splits):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    info = _trainer(tmp_path, splits, "train.steps=10", "train.precision=bf16", "train.device=cuda").fit()
    assert info["device"].startswith("cuda")
