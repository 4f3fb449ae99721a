import os
import subprocess
import sys

import pytest

from pipeline.cli import main
from tests.conftest import QUICKSTART, REPO, wait_for_jobs


def test_rendered_slurm_scripts_pass_bash_n(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # (mlflow.set_tracking_uri in other tests sets it)
    assert main(["workflow", "-c", str(QUICKSTART), "--out", str(tmp_path), "--nodes", "2", "simulate.events=1000",
                 "simulate.shard_events=100"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.yaml", "generate_array.sbatch", "generate_merge.sbatch", "merge.sbatch",
                     "register.sbatch", "simulate_array.sbatch", "submit.sh", "train.sbatch", "validate.sbatch"]
    from simgan.domains import load_config
    resolved = load_config(tmp_path / "config.yaml")  # the overrides are in it, and it loads as it is
    assert resolved.simulate.events == 1000 and resolved.simulate.shard_events == 100
    assert os.path.isabs(resolved.runs_dir) and resolved.register.tracking_uri.startswith("sqlite:////")
    for p in tmp_path.glob("*.s*"):
        r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
        assert r.returncode == 0, (p.name, r.stderr)
    sim = (tmp_path / "simulate_array.sbatch").read_text()
    assert "#SBATCH --array=0-9" in sim and "--shard-count 10" in sim and str(tmp_path / "config.yaml") in sim
    assert '${SLURM_ARRAY_TASK_ID}' in sim
    train = (tmp_path / "train.sbatch").read_text()
    assert "--nnodes=2" in train and "pipeline.cli train" in train and "--nproc_per_node=4" in train
    assert "--gpus-per-node=4" in train and "precision" not in train.split("pipeline.cli train")[1]
    assert "--kill-on-invalid-dep=yes" in (tmp_path / "submit.sh").read_text()
    assert "afterok" in (tmp_path / "submit.sh").read_text()
    gen = (tmp_path / "generate_array.sbatch").read_text()
    assert "#SBATCH --array=0-3" in gen and "--shard-count 4" in gen and "--seed 42" in gen
    assert "simgan merge --stage generate" in (tmp_path / "generate_merge.sbatch").read_text()


def test_workflow_bad_key_is_refused(tmp_path, capsys):
    assert main(["workflow", "-c", str(QUICKSTART), "--out", str(tmp_path / "w"), "simulate.shards=3"]) == 2
    assert "simulate.shards" in capsys.readouterr().err and not (tmp_path / "w").exists()


def test_workflow_keeps_its_input_config_and_takes_overrides_after_options(tmp_path, capsys):
    """`--out DIR` whose config.yaml is the -c config is refused before anything is written (the
    resolved copy would overwrite it); overrides after an option are overrides, a word that is no
    key=value is refused by name."""
    wf = tmp_path / "wf"
    assert main(["workflow", "-c", str(QUICKSTART), "--out", str(wf), f"runs_dir={tmp_path}"]) == 0
    before = (wf / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["workflow", "-c", str(wf / "config.yaml"), "--out", str(wf)]) == 2
    assert "its config.yaml is the -c config itself" in capsys.readouterr().err
    assert (wf / "config.yaml").read_text() == before
    assert main(["workflow", "-c", str(QUICKSTART), "--out", str(tmp_path / "w2"), "--nodes", "1",
                 f"runs_dir={tmp_path}", "--cpus", "3", "simulate.events=300"]) == 0
    assert "events: 300" in (tmp_path / "w2" / "config.yaml").read_text()
    assert main(["workflow", "-c", str(QUICKSTART), "--out", str(tmp_path / "w3"), "--cpus", "3", "a=1", "stray"]) == 2
    assert "override 'stray': expected key=value" in capsys.readouterr().err


def test_prepare_missing_input_and_merge_of_non_shard(tmp_path, capsys):
    missing = tmp_path / "nope.h5"
    assert main(["prepare", "-c", str(QUICKSTART), "-q", f"runs_dir={tmp_path}", f"prepare.input={missing}"]) == 2
    assert "nope.h5" in capsys.readouterr().err
    assert not (tmp_path / "quickstart" / "prepare").exists()
    import numpy as np

    from simgan.domains.calorimeter.data import calochallenge as cc
    from simgan.domains.calorimeter.data.binning import reference_binning
    plain = cc.write(tmp_path / "plain.h5", cc.ShowerData(np.array([1000.0]), np.zeros((1, 6480), np.float32),
                                                          reference_binning()))
    out = tmp_path / "merged.h5"
    assert main(["merge", str(plain), "--out", str(out)]) == 2
    assert "not a shard file" in capsys.readouterr().err and not out.exists()


def _submit(wf, env, *stage):
    r = subprocess.run(["bash", str(wf / "submit.sh"), *stage], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return dict(x.split() for x in r.stdout.split(":", 1)[1].split(","))


@pytest.mark.slurm
@pytest.mark.slow
def test_quickstart_chain_on_a_real_slurm_resumes_after_the_time_limit(local_slurm, tmp_path):
    """`simgan workflow` + submit.sh on a real Slurm: the overrides reach every job (one
    resolved config; the Geant4 showers simulated and split beforehand with `simgan run` on the
    same config, as a user who has them does, so the chain is submitted from train: the
    air-shower test below runs a simulate job array), the CPU train job runs torchrun with a gloo
    process per CPU. Its 1-minute
    time limit kills it mid-training (Slurm checks limits every 30 s: at 60-90 s): it saves its
    step on SIGTERM, the jobs after it are cancelled, and `submit.sh train` resumes from that
    step and registers the model. `simgan run` on the same config afterwards finds every stage done."""
    import json

    from simgan.checkpoint import load_checkpoint
    env = {**os.environ, "SLURM_CONF": local_slurm, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    wf, runs = tmp_path / "wf", tmp_path / "runs"
    # about 105 s of training on this 2-core machine (320 steps/s; the kill came at 51-59% of
    # 33,200 steps), after the job's 10-15 s of start: past the kill at 60-90 s on this kind of
    # machine (a run that ends before its limit fails this test); the resumed rest is short
    steps, energy_steps = 34000, 200
    flags = ["-c", str(QUICKSTART), "--out", str(wf), "--partition", "debug", "--gpu-partition", "debug",
             "--gpus-per-node", "0", "--cpus", "2", "--generate-shards", "1"]
    # (fewer jobs than the chain has on a cluster: each job's start costs seconds; one validation draw)
    overrides = [f"runs_dir={runs}", "simulate.events=100", "simulate.shard_events=50", f"train.steps={steps}",
                 f"model.energy.steps={energy_steps}", "model.energy.batch_size=32", "train.batch_size=64",
                 "train.val_every=5000", "train.checkpoint_every=5000", "train.log_every=1000", "train.val_events=20",
                 "model.hidden=[32,32]", "model.latent_dim=4", "model.energy.hidden=[16,16]",
                 "model.energy.transforms=2", "generate.batch_size=10", "validate.classifier_seeds=1",
                 "validate.draws=1", "validate.plots=false", "validate.gate.auc_high_max=1.0",
                 "validate.gate.min_events=20", "validate.gate.separation_etot_max=1.0",
                 "validate.gate.separation_mean_max=1.0", "validate.gate.response_deviation_max=1.0",
                 "register.name=slurm-chain", f"register.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    assert main(["workflow", *flags, "--time-train", "1", *overrides]) == 0
    assert main(["run", "-c", str(wf / "config.yaml"), "--until", "prepare", "-q"]) == 0
    jobs = _submit(wf, env, "train")
    wait_for_jobs(jobs.values(), env, 300)
    run, logs = runs / "quickstart", runs / "quickstart" / "logs"
    tails = {p.name: p.read_text()[-600:] for p in sorted(logs.glob("*.out"))}
    state = subprocess.run(["scontrol", "show", "job", jobs["train"]], capture_output=True, text=True, env=env).stdout
    assert "JobState=TIMEOUT" in state, (state, tails)
    assert "stopped by SIGTERM" in (logs / "train.out").read_text(), tails
    killed_at = load_checkpoint(run / "train" / "checkpoints" / "last.pt")["step"]
    assert 0 < killed_at < steps + energy_steps
    assert not (run / "generate").exists()  # the dependent jobs were cancelled, not left pending

    # the user gives the job more time (the same experiment: the same config.yaml) and resubmits from train
    assert main(["workflow", *flags, "--time-train", "10", *overrides]) == 0
    jobs = _submit(wf, env, "train")
    assert list(jobs) == ["train", "generate", "generate-merge", "validate", "register"]
    wait_for_jobs(jobs.values(), env, 300)
    tails = {p.name: p.read_text()[-600:] for p in sorted(logs.glob("*.out"))}
    reg = run / "register" / "registered.json"
    assert reg.exists(), tails
    assert json.loads(reg.read_text())["alias_uri"] == "models:/slurm-chain@champion"
    train = json.loads((run / "train" / "run_info.json").read_text())
    assert train["world_size"] == 2 and train["ddp"] and train["precision"] == "fp32"
    assert train["resumed_from_step"] == killed_at and train["steps"] == steps + energy_steps
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "-c", str(wf / "config.yaml"), "-q"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("up to date, skipped") == 6, out.stdout


@pytest.mark.slow
@pytest.mark.slurm
def test_dask_jobqueue_on_a_real_slurm_equals_the_in_process_run(local_slurm, tmp_path, monkeypatch):
    """workflows/dask_jobqueue_recipe.py: simulate and validate with dask workers that are
    Slurm jobs give what the same calls give in this process."""
    import importlib.util

    import numpy as np

    from simgan.domains.calorimeter.data import calochallenge as cc
    from simgan.domains.calorimeter.sim.produce import simulate_to_file
    from simgan.domains.calorimeter.validate import validate
    from tests.conftest import small_cfg
    monkeypatch.setenv("SLURM_CONF", local_slurm)
    spec = importlib.util.spec_from_file_location("recipe", REPO / "workflows" / "dask_jobqueue_recipe.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    cfg = small_cfg(tmp_path, "simulate.events=60", "simulate.energy_max_gev=3", "simulate.shard_events=10",
                    "validate.classifier_seeds=1", "validate.plots=false")
    other = cfg.model_copy(update={"seed": cfg.seed + 1})
    simulate_to_file(cfg.simulate, cfg.seed, tmp_path / "local.h5", progress=False)
    simulate_to_file(other.simulate, other.seed, tmp_path / "ref.h5", progress=False)
    local = validate(tmp_path / "ref.h5", tmp_path / "local.h5", tmp_path / "v_local", cfg.validate,
                     cfg.domain.threshold_mev)
    with recipe.slurm_client("debug", jobs=2, cores=1, memory="2GB", walltime="00:10:00",
                             log_directory=str(tmp_path / "logs")) as client:
        recipe.simulate(cfg, tmp_path / "slurm.h5", client)
        remote = recipe.validate(cfg, tmp_path / "ref.h5", tmp_path / "slurm.h5", tmp_path / "v_slurm", client)
    np.testing.assert_array_equal(cc.read(tmp_path / "slurm.h5").showers, cc.read(tmp_path / "local.h5").showers)
    for key in ("auc_high", "auc_low", "separation_power_mean", "response_deviation_max"):
        assert remote[key] == local[key], key


def test_prepare_names_the_conditions_it_takes(tmp_path, capsys, g4_sample):
    """Extra datasets no longer become model conditions silently: prepare says which, and
    prepare.conditions chooses them (a missing one is named)."""
    import numpy as np

    from simgan.domains.calorimeter.data import calochallenge as cc
    d = cc.read(g4_sample)
    d.conditions = {"incident_theta": np.zeros(len(d)), "run_number": np.arange(len(d), dtype=np.float64)}
    src = cc.write(tmp_path / "with_extras.h5", d)
    import h5py
    with h5py.File(src, "a") as f:
        f["event_index"] = np.arange(len(d), dtype=np.int64)  # not a condition: integer
    common = ["prepare", "-c", str(QUICKSTART), "-q", f"runs_dir={tmp_path / 'r'}", f"prepare.input={src}"]
    assert main(common) == 0
    assert "model conditions besides the incident energy: incident_theta, run_number (all extra" in capsys.readouterr().out
    assert main([*common, "prepare.conditions=[incident_theta]"]) == 0
    train = cc.read(tmp_path / "r" / "quickstart" / "prepare" / "train.h5")
    assert list(train.conditions) == ["incident_theta"]
    assert main([*common, "prepare.conditions=[incident_phi]"]) == 2
    assert "no dataset 'incident_phi' for prepare.conditions" in capsys.readouterr().err
    assert main([*common, "prepare.conditions=[event_index]"]) == 2
    assert "dataset 'event_index' has dtype int64; a condition is floating point" in capsys.readouterr().err


def test_prepare_refuses_empty_showers(tmp_path, capsys, g4_sample):
    from simgan.domains.calorimeter.data import calochallenge as cc
    d = cc.read(g4_sample)
    d.showers[[3, 7]] = 0.0
    src = cc.write(tmp_path / "holes.h5", d)
    assert main(["prepare", "-c", str(QUICKSTART), "-q", f"runs_dir={tmp_path / 'r'}", f"prepare.input={src}"]) == 2
    assert "2 of 200 showers deposit nothing above the 0.01515 MeV readout threshold (first: row 3)" in \
        capsys.readouterr().err
    assert not (tmp_path / "r" / "quickstart" / "prepare").exists()


def test_merge_stage_refuses_bad_input(tmp_path, capsys):
    """`simgan merge --stage`: only -c CONFIG; no shards is named; shards of another run (seed or
    size) are refused, and the stage writes neither its output nor its manifest."""
    assert main(["merge", "--stage", "simulate", "--out", str(tmp_path / "x.h5"), "-c", str(QUICKSTART)]) == 2
    assert "--stage simulate takes -c CONFIG [key=value ...] and nothing else" in capsys.readouterr().err
    import yaml

    from simgan.domains import load_config
    cfg = load_config(QUICKSTART, [f"runs_dir={tmp_path}", "simulate.events=10", "simulate.shard_events=5",
                                   "simulate.energy_max_gev=2"])
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["merge", "--stage", "simulate", "-c", str(conf)]) == 2
    assert "no simulate shards to merge" in capsys.readouterr().err
    shards = tmp_path / "quickstart" / "simulate" / "shards"
    for i in range(2):  # shards of a run with another seed
        assert main(["simulate", "-c", str(conf), "-q", "--shard-index", str(i), "--shard-count", "2",
                     "--out", str(shards / f"shard_{i}.h5"), "seed=7"]) == 0
    assert main(["merge", "--stage", "simulate", "-c", str(conf)]) == 2
    assert "a shard of another run (seed 7, 10 events; this config: seed 42, 10)" in capsys.readouterr().err
    stage = tmp_path / "quickstart" / "simulate"
    assert not (stage / "showers.h5").exists() and not (stage / "manifest.json").exists()


@pytest.mark.slurm
@pytest.mark.slow
def test_airshower_chain_on_a_real_slurm(local_slurm, tmp_path):
    """Sharding is part of every domain's stage contract: the air-shower chain runs on Slurm as
    a simulate job array (3 shards of the simulator, merged into the events of one run), a CPU
    train job (torchrun, 2 gloo processes), one generate job, validate and register."""
    import json

    import h5py

    env = {**os.environ, "SLURM_CONF": local_slurm, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    wf, runs = tmp_path / "wf", tmp_path / "runs"
    air = REPO / "configs" / "experiment" / "airshower_quickstart.yaml"
    overrides = [f"runs_dir={runs}", "simulate.events=1500", "simulate.shard_events=500", "train.steps=20",
                 "train.batch_size=64", "train.val_every=20", "train.checkpoint_every=20", "train.log_every=10",
                 "train.val_events=200", "model.width=16", "model.depth=2", "model.flow_steps=30",
                 "validate.classifier_seeds=1", "validate.plots=false", "validate.draws=1",
                 "validate.gate.angular_resolution_deviation_max=1.0",  # (300 held-out events: floor about 0.45)
                 "register.name=slurm-air", f"register.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    assert main(["workflow", "-c", str(air), "--out", str(wf), "--partition", "debug", "--gpu-partition", "debug",
                 "--gpus-per-node", "0", "--cpus", "2", *overrides]) == 0
    jobs = _submit(wf, env)
    assert list(jobs) == ["simulate", "prepare", "train", "generate", "validate", "register"]
    wait_for_jobs(jobs.values(), env, 300)
    run, logs = runs / "airshower_quickstart", runs / "airshower_quickstart" / "logs"
    tails = {p.name: p.read_text()[-600:] for p in sorted(logs.glob("*.out"))}
    assert len(list((run / "simulate" / "shards").glob("shard_*.h5"))) == 3, tails
    with h5py.File(run / "simulate" / "showers.h5", "r") as f:
        assert f.attrs["domain"] == "airshower" and len(f["footprint/signal"]) == 1500
    reg = json.loads((run / "register" / "registered.json").read_text()) if (run / "register").exists() else None
    assert reg is not None and reg["name"] == "slurm-air", tails
    train = json.loads((run / "train" / "run_info.json").read_text())
    assert train["world_size"] == 2 and train["ddp"] and train["complete"]
    m = json.loads((run / "validate" / "metrics.json").read_text())
    assert m["domain"] == "airshower" and m["n_reference"] == 300
