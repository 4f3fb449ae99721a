import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline import prepare
from pipeline.contract import Context
from simgan.checkpoint import load_checkpoint
from simgan.domains import get_domain
from simgan.errors import SimganError
from simgan.splits import split_indices
from simgan.train.trainer import Trainer
from tests.conftest import REPO, small_cfg

CALO = get_domain("calorimeter")

# the quickstart's two-stage VAE, shrunk: 3 energy-flow steps, then train.steps shape steps
TINY = ["model.hidden=[32,32]", "model.latent_dim=4", "model.energy.steps=3", "model.energy.hidden=[16,16]",
        "model.energy.transforms=2", "model.energy.batch_size=32", "train.batch_size=16", "train.log_every=2",
        "train.val_every=4", "train.val_events=20", "train.checkpoint_every=3", "train.mlflow=false"]
GAN = ["model=calorimeter/wgan_gp", "model.critic_hidden=[32,32]", "model.n_critic=2"]
ENERGY_STEPS = 3


@pytest.fixture(scope="module")
def splits(g4_sample, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("splits")
    cfg = small_cfg(tmp, f"prepare.input={g4_sample}")
    return prepare.run(cfg, Context(progress=False))


def _trainer(tmp, splits, *over):
    cfg = small_cfg(tmp, *TINY, *over)
    return Trainer(cfg, get_domain(cfg.domain.name), splits["train"], splits["val"], tmp / "train", progress=False)


def _losses(tmp):
    return [json.loads(l) for l in (tmp / "train" / "metrics.jsonl").read_text().splitlines()]


def _stage_dir(tmp, splits):
    """A run folder whose prepare stage holds the train and val splits (and no test split)."""
    import shutil
    run_dir = tmp / "quickstart"
    (run_dir / "prepare").mkdir(parents=True)
    for k in ("train", "val"):
        shutil.copy(splits[k], run_dir / "prepare" / f"{k}.h5")
    return run_dir


def test_prepare_splits_are_disjoint_and_deterministic(splits, g4_sample):
    from simgan.domains.calorimeter.data import calochallenge as cc
    e = {k: cc.read(v).energies for k, v in splits.items()}
    assert sum(len(v) for v in e.values()) == 200
    assert not (set(e["train"]) & set(e["test"])) and not (set(e["val"]) & set(e["test"]))
    idx1 = split_indices(200, (0.6, 0.1, 0.3), 42)
    idx2 = split_indices(200, (0.6, 0.1, 0.3), 42)
    assert all(np.array_equal(idx1[k], idx2[k]) for k in idx1)


FAMILIES = {
    "vae": [],  # two-stage VAE (the quickstart's)
    "wgan_gp": GAN,  # two-stage WGAN-GP with the likelihood term (the shipped config)
    "wgan_gp_pure": [*GAN, "model.likelihood_weight=0", "model.voxel_noise=false", "model.spectrum_weight=1",
                     "model.n_critic=1", "model.gp_every=3", "train.log_every=1"],  # + lazy gradient penalty
    "wgan_gp_shower": [*GAN, "model.critic=shower", "model.likelihood_weight=1", "model.spectrum_weight=1", "model.shower_latent_dim=4", "model.shower_batch=8",
                       "model.shower_channels=8"],  # two-stage WGAN-GP, whole-shower critic
    "wgan_gp_voxel": ["model=calorimeter/wgan_gp_voxel", "model.critic_hidden=[32,32]", "model.n_critic=2"],
    "wgan_gp_fact": ["model=calorimeter/wgan_gp_fact", "model.critic_hidden=[32,32]", "model.n_critic=2"],
    "gan_bce": ["model=calorimeter/gan_bce", "model.critic_hidden=[32,32]"],
    "wgan_clip": ["model=calorimeter/wgan_clip", "model.critic_hidden=[32,32]", "model.n_critic=2"],
    "vae_voxel": ["model=calorimeter/vae_voxel", "model.kl_warmup_steps=2", "model.likelihood=gaussian"],
    "vae_voxel_mse": ["model=calorimeter/vae_voxel", "model.kl_warmup_steps=2", "model.likelihood=mse"],
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_trains_and_losses_change(tmp_path, splits, family):
    over = FAMILIES[family]
    layered = family in ("vae", "wgan_gp", "wgan_gp_pure", "wgan_gp_shower")
    if not layered:  # the voxel models have no energy stage
        over = [o for o in TINY + over if not o.startswith(("model.energy", "model.latent_dim=4"))]
        cfg = small_cfg(tmp_path, *over, "train.steps=6")
    else:
        cfg = small_cfg(tmp_path, *TINY, *over, "train.steps=6")
    info = Trainer(cfg, get_domain(cfg.domain.name), splits["train"], splits["val"], tmp_path / "train", progress=False).fit()
    rows = _losses(tmp_path)
    assert all(np.isfinite(v) for r in rows for v in r.values() if v is not None)
    key = "loss" if cfg.model.family == "vae" else "loss_d"
    shape = [r[key] for r in rows if key in r]
    assert len(set(shape)) > 1
    assert info["steps"] == info["total_steps"] == 6 + (ENERGY_STEPS if layered else 0)
    assert "val_sep_mean" in rows[-1] and info["selected_step"] > 0
    if family == "wgan_gp_pure":  # gp_every=3, one critic step: the penalty on two of the six steps
        assert sum("gp" in r for r in rows if "loss_d" in r) == 2 and any("spectrum" in r for r in rows)
    if layered:  # the energy flow trained first, with its own loss
        energy = [r["energy_nll"] for r in rows if "energy_nll" in r]
        assert len(energy) >= 1 and rows[0]["step"] <= ENERGY_STEPS


def test_time_limit_then_resume_continues_identically(tmp_path, splits):
    """A run stopped by train.max_seconds (a run-only key) resumes exactly where it stopped."""
    _trainer(tmp_path / "a", splits, "train.steps=9").fit()
    part = _trainer(tmp_path / "b", splits, "train.steps=9", "train.max_seconds=1e-6").fit()
    assert part["steps"] == 3 and not part["complete"]
    with open(tmp_path / "b" / "train" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a row torn by a kill while it was written
    resumed = _trainer(tmp_path / "b", splits, "train.steps=9").fit()
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 12
    for name in ("model.pt", "checkpoints/last.pt"):
        a = load_checkpoint(tmp_path / "a" / "train" / name)
        b = load_checkpoint(tmp_path / "b" / "train" / name)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    keys = ("step", "energy_nll", "loss", "recon", "kl")
    strip = lambda rows: [{k: r[k] for k in keys if k in r} for r in rows]  # noqa: E731
    assert strip(_losses(tmp_path / "a")) == strip(_losses(tmp_path / "b"))


def test_time_budget_stage_writes_no_manifest_and_the_rerun_finishes(tmp_path, splits):
    from pipeline import train as train_stage

    run_dir = _stage_dir(tmp_path, splits)
    over = [*TINY, "train.steps=8", "train.checkpoint_every=2"]
    train_stage.run(small_cfg(tmp_path, *over, "train.max_seconds=1e-6"), Context(progress=False))
    assert load_checkpoint(run_dir / "train" / "model.pt")["step"] == 2
    info = json.loads((run_dir / "train" / "run_info.json").read_text())
    assert info["complete"] is False
    assert not (run_dir / "train" / "manifest.json").exists()  # not done: the runner will rerun it
    train_stage.run(small_cfg(tmp_path, *over), Context(progress=False))
    info = json.loads((run_dir / "train" / "run_info.json").read_text())
    assert info["steps"] == 8 + ENERGY_STEPS and info["resumed_from_step"] == 2
    assert (run_dir / "train" / "manifest.json").exists()


@pytest.mark.slow
def test_kill9_then_resume(tmp_path, splits):
    """A real `simgan train` process killed with SIGKILL resumes from its last checkpoint."""
    import signal
    import time

    run_dir = _stage_dir(tmp_path, splits)
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "-c", str(REPO / "configs/experiment/quickstart.yaml"), "-q",
           f"runs_dir={tmp_path}", *TINY, "train.steps=700", "train.checkpoint_every=2", "train.val_every=500",
           "train.progress=false"]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "train" / "checkpoints" / "last.pt"
    t0 = time.time()
    while not last.exists() and time.time() - t0 < 120:
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    step_killed = load_checkpoint(last)["step"]
    assert 0 < step_killed < 700
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    info = json.loads((run_dir / "train" / "run_info.json").read_text())
    assert info["resumed_from_step"] >= step_killed and info["steps"] == 700 + ENERGY_STEPS


def test_sigterm_saves_the_step_it_reached_then_resumes(tmp_path, splits):
    """SIGTERM (a batch system's time limit) saves last.pt at the current step, not the last
    periodic checkpoint (none is due in this run), exits 143 with a message, and the same command resumes."""
    import signal
    import time

    run_dir = _stage_dir(tmp_path, splits)
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "-c", str(REPO / "configs/experiment/quickstart.yaml"), "-q",
           f"runs_dir={tmp_path}", *TINY, "train.steps=1500", "train.checkpoint_every=1000", "train.val_every=500",
           "train.progress=false"]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = run_dir / "train" / "metrics.jsonl"
    t0 = time.time()
    while not (log.exists() and len(log.read_text().splitlines()) > 3) and time.time() - t0 < 120:
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 143 and "stopped by SIGTERM" in err, err
    step = load_checkpoint(run_dir / "train" / "checkpoints" / "last.pt")["step"]
    assert 0 < step < 1000 + ENERGY_STEPS and step % 1000 != 0
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    info = json.loads((run_dir / "train" / "run_info.json").read_text())
    assert info["resumed_from_step"] == step and info["steps"] == 1500 + ENERGY_STEPS


def test_changed_config_or_data_never_resumes(tmp_path, splits, capsys):
    _trainer(tmp_path, splits, "train.steps=6").fit()
    capsys.readouterr()
    info = _trainer(tmp_path, splits, "train.steps=6", "train.batch_size=8").fit()
    assert "another config or other training data" in capsys.readouterr().out
    assert info["resumed_from_step"] == 0 and info["steps"] == 6 + ENERGY_STEPS
    info = _trainer(tmp_path, splits, "train.steps=6", "train.batch_size=8").fit()  # same again: resumes, 0 steps
    assert info["resumed_from_step"] == 6 + ENERGY_STEPS
    # other training data (another split) under the same config: from scratch
    cfg = small_cfg(tmp_path, *TINY, "train.steps=6", "train.batch_size=8")
    info = Trainer(cfg, get_domain(cfg.domain.name), splits["test"], splits["val"], tmp_path / "train", progress=False).fit()
    assert info["resumed_from_step"] == 0


def test_changed_split_through_the_runner_retrains_from_scratch(tmp_path, g4_sample):
    """`simgan run` with new prepare.fractions after a finished train must not report the old
    model (trained on events of the new test split) under the new config."""
    from pipeline.runner import run_chain
    over = [f"prepare.input={g4_sample}", *TINY, "train.steps=4"]
    run_chain(small_cfg(tmp_path, *over), progress=False, until="train")
    cfg = small_cfg(tmp_path, *over, "prepare.fractions=[0.5,0.2,0.3]")
    run_chain(cfg, progress=False, until="train")
    info = json.loads((cfg.run_dir / "train" / "run_info.json").read_text())
    assert info["resumed_from_step"] == 0 and info["steps"] == 4 + ENERGY_STEPS and info["n_train"] == 100


def test_test_split_is_never_opened_by_training_or_selection(tmp_path, splits, monkeypatch):
    import h5py

    opened = []
    real = h5py.File

    def spy(name, *a, **kw):
        opened.append(os.path.realpath(str(name)))
        return real(name, *a, **kw)

    monkeypatch.setattr(h5py, "File", spy)
    info = _trainer(tmp_path, splits, "train.steps=8").fit()
    assert info["selected_step"] > ENERGY_STEPS
    assert opened and os.path.realpath(str(splits["test"])) not in opened
    assert {os.path.realpath(str(splits[k])) for k in ("train", "val")} <= set(opened)


def test_averaged_weights_sample_and_best_checkpoint_is_the_model(tmp_path, splits):
    info = _trainer(tmp_path, splits, "train.steps=12", "train.ema_decay=0.9").fit()
    model = load_checkpoint(tmp_path / "train" / "model.pt")
    last = load_checkpoint(tmp_path / "train" / "checkpoints" / "last.pt")
    assert model["averaged"] and model["step"] == info["selected_step"]
    key = next(k for k in model["model"] if k.startswith("shape.decoder") and k.endswith("weight"))
    if model["step"] == last["step"]:  # the raw weights are not what samples
        assert not torch.equal(model["model"][key], last["model"][key])
    scores = [r["val_sep_mean"] for r in _losses(tmp_path) if "val_sep_mean" in r]
    assert info["best_val_sep_mean"] == pytest.approx(min(scores))
    # cosine schedule: the shape optimiser ends at lr_min_factor x its base rate
    group = last["optimizers"]["vae"]["param_groups"][0]
    assert group["lr"] == pytest.approx(group["initial_lr"] * 0.05, rel=1e-6)


def test_ema_warms_up_so_a_short_run_does_not_sample_its_first_steps():
    """The averaged weights follow min(decay, (1+n)/(10+n)): a weight that jumps from 0 to 1
    after the first step is averaged to 1 within 1e-6 after 200 steps (decay 0.999 without the
    ramp gives 0.18: 82% of the average is still the first step), and the ramp ends at the
    configured decay."""
    from torch.optim.swa_utils import AveragedModel

    from simgan.train.trainer import ema_decay_at, ema_with_warmup

    assert ema_decay_at(0.999, 0) == pytest.approx(0.1) and ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.999, 10**6) == 0.999 and ema_decay_at(0.9, 200) == 0.9
    net = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(net, multi_avg_fn=ema_with_warmup(0.999))
    with torch.no_grad():
        net.weight.fill_(0.0)
        ema.update_parameters(net)  # the first update copies
        expected = 0.0
        net.weight.fill_(1.0)
        for n in range(1, 201):
            ema.update_parameters(net)
            expected += (1 - ema_decay_at(0.999, n)) * (1.0 - expected)
    value = float(ema.module.weight.detach())
    assert value == pytest.approx(expected, rel=1e-5) and value > 1 - 1e-6
    assert 1 - 0.999 ** 200 < 0.2  # what the fixed decay would have kept


def test_bf16_path_on_cpu(tmp_path, splits):
    info = _trainer(tmp_path, splits, *GAN, "train.steps=3", "train.precision=bf16").fit()
    assert info["precision"] == "bf16" and all(np.isfinite(r["loss_d"]) for r in _losses(tmp_path) if "loss_d" in r)


def test_nonfinite_loss_stops_with_clear_message(tmp_path, splits):
    with pytest.raises(SimganError, match="non-finite"):
        _trainer(tmp_path, splits, "train.steps=5", "model.energy.lr=1e30").fit()


def test_mlflow_run_holds_params_and_metrics(tmp_path, splits):
    import mlflow
    cfg = small_cfg(tmp_path, *[t for t in TINY if t != "train.mlflow=false"], "train.steps=4")
    info = Trainer(cfg, get_domain(cfg.domain.name), splits["train"], splits["val"], tmp_path / "train", progress=False).fit()
    run = mlflow.tracking.MlflowClient(info["tracking_uri"]).get_run(info["mlflow_run_id"])
    assert run.data.params["model.family"] == "vae" and run.data.params["model.output"] == "layers"
    assert {"energy_nll", "loss", "val_sep_mean", "val_w1_etot"} <= set(run.data.metrics)


def test_interrupted_training_is_killed_in_mlflow(tmp_path, splits):
    """Ctrl-C ends the MLflow run as KILLED (it used to say FINISHED); an error ends it FAILED."""
    import mlflow
    cfg = small_cfg(tmp_path, *[t for t in TINY if t != "train.mlflow=false"], "train.steps=8")
    for exc, status in ((KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")):
        t = Trainer(cfg, get_domain(cfg.domain.name), splits["train"], splits["val"], tmp_path / f"train_{status}", progress=False)
        real = t.model.train_step

        def step(batches, opts, i, *a, real=real, exc=exc):
            if i == ENERGY_STEPS + 2:
                raise exc("stop")
            return real(batches, opts, i, *a)
        t.model.train_step = step
        with pytest.raises(exc):
            t.fit()
        client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        assert client.get_run(t.mlflow_run_id).info.status == status
        assert mlflow.active_run() is None


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path, splits):
    run_dir = _stage_dir(tmp_path, splits)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    for fam in ([], GAN):
        r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "pipeline.cli", "train", "-q",
                            "-c", str(REPO / "configs/experiment/quickstart.yaml"), f"runs_dir={tmp_path}", *TINY,
                            *fam, "train.steps=4"], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        info = json.loads((run_dir / "train" / "run_info.json").read_text())
        assert info["world_size"] == 2 and info["steps"] == 4 + ENERGY_STEPS and info["resumed_from_step"] == 0


@pytest.mark.gpu
def test_bf16_ddp_on_gpu(tmp_path, splits):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    info = _trainer(tmp_path, splits, "train.steps=10", "train.precision=bf16", "train.device=cuda").fit()
    assert info["device"].startswith("cuda")


def test_unreachable_tracking_server_fails_fast_with_a_message(tmp_path, splits):
    """Training against a tracking server nobody listens on stops within seconds, naming the
    URI and the way out (it used to retry for about 250 s and end in a traceback)."""
    import socket
    import time
    with socket.socket() as s:  # a free port, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = small_cfg(tmp_path, *[t for t in TINY if t != "train.mlflow=false"], "train.steps=2",
                    f"register.tracking_uri=http://127.0.0.1:{port}")
    t0 = time.time()
    with pytest.raises(SimganError, match=rf"MLflow tracking at http://127.0.0.1:{port} failed.*train.mlflow=false"):
        Trainer(cfg, get_domain(cfg.domain.name), splits["train"], splits["val"], tmp_path / "train", progress=False).fit()
    assert time.time() - t0 < 60


def test_batch_larger_than_the_data_says_so(tmp_path, splits, capsys):
    _trainer(tmp_path, splits, "train.steps=1", "model.energy.batch_size=5000").fit()
    err = capsys.readouterr().err
    assert "batches of 5000 from 120 training rows (showers): rows repeat" in err


def test_checkpoint_carries_the_training_datas_binning(tmp_path, splits):
    """Generation takes the voxel layout from the checkpoint (the training data's), not from
    domain.geometry, which for converted data (CaloGAN) may name another or a missing file."""
    from simgan.domains.calorimeter.data import calochallenge as cc
    from simgan.domains.calorimeter.generate import checkpoint_binning
    _trainer(tmp_path, splits, "train.steps=1").fit()
    ckpt = load_checkpoint(tmp_path / "train" / "model.pt")
    assert checkpoint_binning(ckpt).digest() == cc.inspect(splits["train"]).binning.digest()
    ckpt["config"]["domain"]["geometry"] = str(tmp_path / "moved_away.xml")
    assert checkpoint_binning(ckpt).n_voxels == 6480  # the stored layout, not the missing file
    del ckpt["binning_xml"]  # a checkpoint of an earlier version: the config's geometry
    with pytest.raises(SimganError, match="moved_away.xml: binning XML not found"):
        checkpoint_binning(ckpt)


def test_generate_takes_the_models_extra_conditions_by_name(tmp_path, g4_sample, capsys):
    """A model trained with incident_theta: generate takes that dataset by name (others in the
    file are ignored), and a file without it is refused, naming it."""
    from pipeline.cli import main
    from simgan.domains.calorimeter.data import calochallenge as cc
    d = cc.read(g4_sample)
    theta = np.linspace(0.0, 0.3, len(d))
    d.conditions = {"incident_theta": theta}
    src = cc.write(tmp_path / "theta.h5", d)
    cfg = small_cfg(tmp_path, f"prepare.input={src}")
    sp = prepare.run(cfg, Context(progress=False))
    Trainer(small_cfg(tmp_path, *TINY, "train.steps=1"), CALO, sp["train"], sp["val"], tmp_path / "train",
            progress=False).fit()
    ckpt = tmp_path / "train" / "model.pt"
    assert load_checkpoint(ckpt)["extra_conditions"] == ["incident_theta"]
    d.conditions = {"incident_phi": theta, "run_number": theta}  # as many extras, other names
    other = cc.write(tmp_path / "other.h5", d)
    assert main(["generate", "--checkpoint", str(ckpt), "--energies-from", str(other), "--out",
                 str(tmp_path / "g.h5"), "-q"]) == 2
    assert "no dataset ['incident_theta']: the model was trained with the extra condition(s)" in capsys.readouterr().err
    assert not (tmp_path / "g.h5").exists()
    d.conditions = {"incident_theta": theta, "run_number": theta}
    both = cc.write(tmp_path / "both.h5", d)
    assert main(["generate", "--checkpoint", str(ckpt), "--energies-from", str(both), "--out",
                 str(tmp_path / "g.h5"), "-q"]) == 0
    np.testing.assert_array_equal(cc.read(tmp_path / "g.h5").conditions["incident_theta"], theta)
    assert list(cc.read(tmp_path / "g.h5").conditions) == ["incident_theta"]


def test_a_calogan_trained_model_generates_calogan_showers_and_warns_outside_its_range(tmp_path, capsys):
    """The voxel layout and the energy range travel in the checkpoint: a model trained on converted
    CaloGAN data (504 voxels) generates 504-voxel showers, and energies beyond its training
    range are named in a warning."""
    import h5py

    from pipeline.cli import main
    from simgan.domains.calorimeter.data import calochallenge as cc
    from simgan.domains.calorimeter.data.calogan import LAYERS
    r = np.random.default_rng(3)
    n = 300
    src = tmp_path / "calogan.h5"
    e_gev = r.uniform(10, 50, n)
    with h5py.File(src, "w") as f:
        for key, shape in LAYERS.items():
            f[key] = (r.gamma(0.5, 1.0, (n, *shape)) * (r.random((n, *shape)) < 0.3) * e_gev[:, None, None] * 3
                      ).astype(np.float32)
        f["energy"] = e_gev.reshape(-1, 1)
    assert main(["convert", str(src), "--out", str(tmp_path / "c.h5")]) == 0
    xml = tmp_path / "calogan.xml"
    xml.write_text(cc.inspect(tmp_path / "c.h5").binning.to_xml())
    data = [f"prepare.input={tmp_path / 'c.h5'}", f"domain.geometry={xml}"]
    sp = prepare.run(small_cfg(tmp_path, *data), Context(progress=False))
    Trainer(small_cfg(tmp_path, *TINY, "train.steps=1", *data), CALO, sp["train"], sp["val"], tmp_path / "train",
            progress=False).fit()
    xml.unlink()  # the checkpoint carries the layout: the config's XML is not needed any more
    ckpt = tmp_path / "train" / "model.pt"
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(ckpt), "--energies-from", str(sp["test"]), "--out",
                 str(tmp_path / "g.h5"), "-q"]) == 0
    assert cc.read(tmp_path / "g.h5", check=False).showers.shape[1] == 504
    assert "outside the training range" not in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(ckpt), "--events", "20", "--energy-range", "80", "90",
                 "--out", str(tmp_path / "high.h5"), "-q"]) == 0
    assert "have incident_energy outside the training range" in capsys.readouterr().err

