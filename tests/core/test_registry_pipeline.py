"""Runner end to end on a tiny config, MLflow registry (sqlite and a real mlflow server)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.runner import run_chain
from simgan.domains import load_config
from simgan.domains.calorimeter.data import calochallenge as cc
from simgan.errors import SimganError
from tests.conftest import QUICKSTART, REPO, small_cfg

# limits a tiny sample can judge (the quickstart's own are uninformative at 45 held-out showers)
OPEN_GATE = ["validate.gate.auc_high_max=1.0", "validate.gate.min_events=20", "validate.gate.separation_etot_max=1.0",
             "validate.gate.separation_mean_max=1.0", "validate.gate.response_deviation_max=1.0"]
TINY = ["simulate.events=150", "simulate.energy_max_gev=8", "simulate.shard_events=25",
        "model.hidden=[32,32]", "model.latent_dim=4", "model.energy.steps=3", "model.energy.hidden=[16,16]",
        "model.energy.transforms=2", "train.steps=6", "train.batch_size=16", "train.log_every=3",
        "train.val_every=3", "train.val_events=20", "train.checkpoint_every=3", "generate.ablation=true",
        "validate.classifier_seeds=1", "validate.plots=false", "register.export=none"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    cfg = small_cfg(tmp, *TINY, *OPEN_GATE, "register.name=tiny")
    assert run_chain(cfg, progress=False) == 0
    return tmp, cfg


def test_chain_writes_manifests_and_registers(chain, capsys):
    tmp, cfg = chain
    for stage in ("simulate", "prepare", "train", "generate", "validate", "register"):
        m = json.loads((cfg.run_dir / stage / "manifest.json").read_text())
        assert m["config_hash"] and "packages" in m and m["seed"] == cfg.seed
    reg = json.loads((cfg.run_dir / "register" / "registered.json").read_text())
    assert reg["alias_uri"] == "models:/tiny@champion" and reg["gate"] == "pass"
    gen = cc.read(cfg.run_dir / "generate" / "generated.h5")
    test = cc.read(cfg.run_dir / "prepare" / "test.h5")
    np.testing.assert_array_equal(gen.energies, test.energies)
    # the ablation sample: the shape model fed the test split's own layer energies keeps them exactly
    from simgan.domains.calorimeter.models.energy import layer_energies
    abl = cc.read(cfg.run_dir / "generate" / "generated_ablation.h5")
    lv = [144] * 45
    np.testing.assert_allclose(layer_energies(abl.showers, lv, 0.01515), layer_energies(test.showers, lv, 0.01515),
                               rtol=1e-4, atol=1e-3)
    m = json.loads((cfg.run_dir / "validate" / "metrics.json").read_text())
    assert set(m["extra_candidates"]) == {"shape only (Geant4 layer energies)"}
    assert m["floor_source"].endswith("the candidate's size)") and "train.h5" in m["floor_source"]
    assert 0.3 < m["floor"]["auc_high"] < 0.8 and set(m["auc_high_by_group"]) >= {"response", "widths", "sparsity"}


def test_second_run_skips_and_changed_config_reruns_dependents(chain, capsys):
    tmp, cfg = chain
    capsys.readouterr()
    run_chain(cfg, progress=False)
    out = capsys.readouterr().out
    assert out.count("up to date, skipped") == 6
    cfg2 = small_cfg(tmp, *TINY, "validate.gate.auc_high_max=1.0", "validate.gate.min_events=20", "validate.gate.separation_etot_max=1.0",
                     "validate.gate.separation_mean_max=1.0", "validate.gate.response_deviation_max=1.0",
                     "register.name=tiny", "generate.batch_size=7")
    run_chain(cfg2, progress=False)
    out = capsys.readouterr().out
    for s in ("simulate", "prepare", "train"):
        assert f"[{s}] up to date" in out
    for s in ("generate", "validate", "register"):
        assert f"[{s}] running" in out
    assert json.loads((cfg.run_dir / "register" / "registered.json").read_text())["version"] == 2


def test_alias_moves_only_for_the_validated_checkpoint(chain, tmp_path, capsys):
    """Gate integrity: the verdict names the checkpoint its showers came from (SHA-256 through
    the generated file); `register` refuses to move the alias for another checkpoint, a
    verdict bound to none, or a torn or gate-less metrics.json, and logs nothing."""
    import shutil

    from mlflow.tracking import MlflowClient

    from simgan.io import file_sha256
    _, cfg = chain
    ckpt = cfg.run_dir / "train" / "model.pt"
    m = json.loads((cfg.run_dir / "validate" / "metrics.json").read_text())
    assert m["gate"]["pass"] and m["candidate_checkpoint_sha256"] == file_sha256(ckpt)
    assert cc.inspect(cfg.run_dir / "generate" / "generated.h5").metadata["checkpoint_sha256"] == file_sha256(ckpt)
    run = tmp_path / "run"
    shutil.copytree(cfg.run_dir, run)
    uri = f"sqlite:///{tmp_path}/reg.db"
    last = run / "train" / "checkpoints" / "last.pt"  # raw weights; model.pt holds the averaged ones
    assert file_sha256(last) != file_sha256(ckpt)
    shutil.copy(last, run / "train" / "model.pt")  # another checkpoint than the validated one
    capsys.readouterr()
    assert main(["register", "--run-dir", str(run), "--name", "swapped", "--tracking-uri", uri]) == 2
    assert "the alias moves only for the checkpoint that was validated" in capsys.readouterr().err
    shutil.copy(ckpt, run / "train" / "model.pt")
    metrics = run / "validate" / "metrics.json"
    auc = m["gate"]["checks"]["auc_high"]
    failing = json.loads(json.dumps(m))  # a failing figure with the verdict edited to pass by hand
    failing["gate"]["checks"]["auc_high"]["value"] = auc["max"] + 0.01
    contradicting = {**m, "auc_high": 0.25}  # the file's figure beside a check that says otherwise
    raised = json.loads(json.dumps(m))  # a limit raised after validation, the flags made to agree
    raised["gate"]["checks"]["auc_high"]["max"] = 1.01
    lucky = json.loads(json.dumps(m))  # a draw that failed, dropped from the check by hand
    lucky["gate"]["checks"]["auc_high"]["values"] = [auc["value"] - 0.1, auc["value"] - 0.2]
    for text, msg in (('{"auc_high": 0.5', "not valid JSON"), ('{"auc_high": 0.5}', "no gate verdict"),
                      (json.dumps({**m, "candidate_checkpoint_sha256": None}), "no recorded checkpoint"),
                      (json.dumps(failing), "does not follow from its own checks: check 'auc_high' says pass=True"),
                      (json.dumps(contradicting), "the figure auc_high = 0.25 disagrees with its gate check's"),
                      (json.dumps(raised), f"check 'auc_high' has the limit 1.01, but the validation recorded "
                                           f"validate.gate.auc_high_max = {auc['max']}"),
                      (json.dumps(lucky), "check 'auc_high' gives")):
        metrics.write_text(text)
        assert main(["register", "--run-dir", str(run), "--name", "swapped", "--tracking-uri", uri]) == 2, msg
        assert msg in capsys.readouterr().err
    metrics.write_text(json.dumps(m))
    assert main(["register", "--run-dir", str(run), "--name", "bad/name", "--tracking-uri", uri]) == 2
    assert "register name 'bad/name'" in capsys.readouterr().err
    assert not MlflowClient(uri).search_registered_models()  # nothing logged or registered
    assert not MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()])
    metrics.write_text(json.dumps(m))  # the true verdict for the true checkpoint: the alias moves
    assert main(["register", "--run-dir", str(run), "--name", "swapped", "--tracking-uri", uri]) == 0
    assert MlflowClient(uri).get_registered_model("swapped").aliases == {"champion": 1}


def test_fresh_process_loads_champion_and_generates(chain, tmp_path):
    tmp, cfg = chain
    code = ("import mlflow, pandas as pd, numpy as np, sys;"
            f"mlflow.set_tracking_uri('sqlite:///{tmp}/mlflow.db');"
            "m = mlflow.pyfunc.load_model('models:/tiny@champion');"
            "x = m.predict(pd.DataFrame({'incident_energy': np.array([2000.0, 5000.0])}));"
            "print(x.shape, float(x.sum()) > 0);"
            # the consumer's bad input: one MlflowException (HTTP 400 when served) naming the column and row
            "from mlflow.exceptions import MlflowException\n"
            "for frame in (pd.DataFrame({'E': [1000.0]}), pd.DataFrame({'incident_energy': ['a']}),"
            "              pd.DataFrame({'incident_energy': [2000.0, np.nan]}), pd.DataFrame({'incident_energy': []}),"
            "              pd.DataFrame({'incident_energy': [2000.0, 300.0]})):\n"
            "    try: m.predict(frame); print('NO ERROR')\n"
            "    except MlflowException as e: print('ERR', e.error_code, e.message.splitlines()[-1])\n"
            "x = m.predict(pd.DataFrame({'incident_energy': [300.0]}), params={'extrapolate': True});"
            "print('extrapolated', x.shape)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert r.returncode == 0, r.stderr[-2000:]
    # logged from code (simgan/domains/pyfunc.py), nothing pickled; loading printed no warning
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    local = Path(mlflow.artifacts.download_artifacts("models:/tiny@champion"))
    mlmodel = (local / "MLmodel").read_text()
    assert "model_code_path" in mlmodel and "domain: calorimeter" in mlmodel, mlmodel
    assert not list(local.rglob("*.pkl")) and "Warning" not in r.stderr, r.stderr[-2000:]
    assert "(2, 6480) True" in r.stdout and "NO ERROR" not in r.stdout, r.stdout
    errors = [line for line in r.stdout.splitlines() if line.startswith("ERR")]
    assert len(errors) == 5 and all("INVALID_PARAMETER_VALUE" in e for e in errors), r.stdout
    # (the first two MLflow's schema check answers, naming the column; the rest the model's own checks)
    assert "missing inputs ['incident_energy']" in errors[0] and "incident_energy" in errors[1], r.stdout
    assert "'incident_energy' row 1: nan" in errors[2] and "has no rows" in errors[3], r.stdout
    assert "row 1: 300 is outside the training range" in errors[4] and "extrapolated (1, 6480)" in r.stdout
    out = tmp_path / "g.h5"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    try:
        assert main(["generate", "--model", "models:/tiny@champion", "--out", str(out), "--events", "10",
                     "--energy-range", "1", "8"]) == 0
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    assert cc.read(out).showers.shape == (10, 6480)


def test_gate_failure_gets_no_alias(chain, tmp_path):
    import shutil
    _, cfg = chain
    tmp = tmp_path  # a copy of the run, so the shared one keeps its passing gate
    shutil.copytree(cfg.run_dir, tmp / cfg.name)
    # a limit between the simulator's floor and the tiny model's worst draw: informative, and failed
    auc = json.loads((cfg.run_dir / "validate" / "metrics.json").read_text())["gate"]["checks"]["auc_high"]
    limit = round((auc["value"] + max(auc["floor"], 0.5)) / 2, 4)
    assert auc["floor"] - 0.5 <= 0.8 * (limit - 0.5) and auc["value"] > limit
    failing = small_cfg(tmp, *TINY, *OPEN_GATE, f"validate.gate.auc_high_max={limit}", "register.name=tiny-fail")
    from pipeline import register, validate
    from pipeline.contract import Context
    validate.run(failing, Context(progress=False))
    register.run(failing, Context(progress=False))
    reg = json.loads((failing.run_dir / "register" / "registered.json").read_text())
    assert reg["alias"] is None and reg["gate"] == "fail"
    from mlflow.tracking import MlflowClient
    c = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    v = c.get_model_version("tiny-fail", str(reg["version"]))
    assert v.tags["gate"] == "fail" and not c.get_registered_model("tiny-fail").aliases


def test_generate_checkpoint_cli_and_bad_input(chain, tmp_path, capsys):
    tmp, cfg = chain
    ckpt = cfg.run_dir / "train" / "model.pt"
    out = tmp_path / "g.root"
    assert main(["generate", "--checkpoint", str(ckpt), "--out", str(out), "--events", "12",
                 "--energy-range", "1", "8", "--batch-size", "5", "-q"]) == 0
    from simgan.domains.calorimeter.data.binning import reference_binning
    from simgan.domains.calorimeter.data.rootio import read_root
    assert read_root(out, reference_binning()).showers.shape == (12, 6480)
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "c.h5"), "--events", "4",
                 "--energy-range", "1", "2", "--compare-geant4", "4", "-q"]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[compare]")][0]
    speedup = float(line.rsplit("x", 1)[1])
    assert line.startswith("[compare] 4 showers: Geant4") and speedup > 0
    # below a training range that starts near 1 GeV (5% of the span would reach below zero): warned, once
    assert main(["generate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "low.h5"), "--events", "4",
                 "--energy-range", "0.5", "0.8", "-q"]) == 0
    assert capsys.readouterr().err.count("have incident_energy outside the training range") == 1
    bad = tmp_path / "x.h5"
    assert main(["generate", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(bad), "--events", "3",
                 "--energy-range", "1", "2"]) == 2
    assert "nope.pt" in capsys.readouterr().err and not bad.exists()
    assert main(["generate", "--checkpoint", str(ckpt), "--out", str(bad), "--events", "3"]) == 2
    assert not bad.exists()
    # the ablation from the command line: the shape model fed the file's own layer energies
    test = cfg.run_dir / "prepare" / "test.h5"
    abl = tmp_path / "abl.h5"
    assert main(["generate", "--checkpoint", str(ckpt), "--layer-energies-from", str(test), "--out", str(abl),
                 "-q"]) == 0
    from simgan.domains.calorimeter.models.energy import layer_energies
    ref, gen = cc.read(test), cc.read(abl)
    lv = [l.n_voxels for l in ref.binning.layers if l.n_voxels]
    np.testing.assert_allclose(layer_energies(gen.showers, lv, 0.01515), layer_energies(ref.showers, lv, 0.01515),
                               rtol=1e-4, atol=1e-3)
    assert main(["generate", "--checkpoint", str(ckpt), "--layer-energies-from", str(tmp_path / "nope.h5"),
                 "--out", str(bad), "-q"]) == 2
    assert "nope.h5: file not found" in capsys.readouterr().err and not bad.exists()


def test_outputs_never_replace_their_inputs(chain, tmp_path, capsys):
    """Data loss: generate, convert and merge refuse an --out that is one of their inputs (also
    through a symlink) or a directory, before any work, and leave the input as it was."""
    import hashlib
    tmp, cfg = chain
    ckpt = cfg.run_dir / "train" / "model.pt"
    g4 = tmp_path / "g4.h5"
    g4.write_bytes((cfg.run_dir / "prepare" / "test.h5").read_bytes())
    link = tmp_path / "link.h5"
    link.symlink_to(g4)
    digest = hashlib.sha256(g4.read_bytes()).hexdigest()
    capsys.readouterr()
    for out, flag in ((g4, "--energies-from"), (link, "--energies-from"), (g4, "--layer-energies-from")):
        assert main(["generate", "--checkpoint", str(ckpt), flag, str(g4), "--out", str(out), "-q"]) == 2
        err = capsys.readouterr().err
        assert f"is the {flag} file" in err and "replace" in err
    assert main(["convert", str(g4), "--out", str(link)]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert main(["merge", str(g4), "--out", str(g4)]) == 2
    assert "is the shard #0 file" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(ckpt), "--energies-from", str(g4), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    # folder outputs given a file: refused before any work, nothing created
    assert main(["validate", "--reference", str(g4), "--candidate", str(g4), "--out", str(g4)]) == 2
    assert "--out " + str(g4) + ": is a file; --out names a folder" in capsys.readouterr().err
    assert main(["validate", "--reference", str(g4), "--candidate", str(g4), "--out", str(g4 / "sub")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["workflow", "-c", str(QUICKSTART), "--out", str(g4)]) == 2
    assert "is a file; --out names a folder" in capsys.readouterr().err
    assert hashlib.sha256(g4.read_bytes()).hexdigest() == digest and link.is_symlink()


def test_sharded_and_dask_generation_equal_the_stage_output(chain, tmp_path):
    """Array-style shards joined by `simgan merge`, and the dask switch on a real LocalCluster,
    reproduce the generate stage's file shower for shower."""
    tmp, cfg = chain
    ckpt = cfg.run_dir / "train" / "model.pt"
    test = cfg.run_dir / "prepare" / "test.h5"
    from pipeline.runner import run_stages
    run_stages(cfg, ["generate"], force=True, progress=False)  # an earlier test changed its settings
    stage = cc.read(cfg.run_dir / "generate" / "generated.h5")
    common = ["generate", "--checkpoint", str(ckpt), "--energies-from", str(test), "--seed", str(cfg.seed),
              "--batch-size", "7", "-q"]
    ref = tmp_path / "one.h5"
    assert main([*common, "--out", str(ref)]) == 0
    shards = [tmp_path / f"s{i}.h5" for i in range(3)]
    for i, s in enumerate(shards):
        assert main([*common, "--shard-index", str(i), "--shard-count", "3", "--out", str(s)]) == 0
    merged = tmp_path / "merged.h5"
    assert main(["merge", *map(str, reversed(shards)), "--out", str(merged)]) == 0
    via_dask = tmp_path / "dask.h5"
    assert main([*common, "--dask", "--dask-workers", "2", "--shards", "3", "--out", str(via_dask)]) == 0
    one = cc.read(ref)
    for other in (cc.read(merged), cc.read(via_dask)):
        np.testing.assert_array_equal(other.energies, one.energies)
        np.testing.assert_array_equal(other.showers, one.showers)
        assert "event_index" not in other.conditions
    assert not (tmp_path / ".dask.h5.shards").exists()
    # the stage used batch size 1000 (one batch): same energies, another batching; the stage's
    # own dask switch rewrites its file identically
    np.testing.assert_array_equal(stage.energies, one.energies)
    dcfg = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"dask": True})})
    run_stages(dcfg, ["generate"], force=True, progress=False)
    np.testing.assert_array_equal(cc.read(cfg.run_dir / "generate" / "generated.h5").showers, stage.showers)
    assert main([*common, "--shard-index", "3", "--shard-count", "3", "--out", str(tmp_path / "bad.h5")]) == 2
    assert main([*common, "--shard-index", "0", "--out", str(tmp_path / "bad.h5")]) == 2
    assert not (tmp_path / "bad.h5").exists()


def _wait_until_up(srv: subprocess.Popen, url: str, seconds: float) -> None:
    """Poll a server started as `srv` until `url` answers (or `seconds` pass); fail at once if it exits."""
    import urllib.request
    t0 = time.time()
    while time.time() - t0 < seconds:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert srv.poll() is None, f"the server for {url} exited"
            time.sleep(0.5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_register_against_real_mlflow_server(chain, tmp_path):
    tmp, cfg = chain
    port = _free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    srv = subprocess.Popen([mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port),
                            "--backend-store-uri", f"sqlite:///{tmp_path}/srv.db",
                            "--artifacts-destination", str(tmp_path / "art"), "--workers", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(srv, f"{uri}/health", 90)
        for _ in range(2):
            assert main(["register", "--run-dir", str(cfg.run_dir), "--name", "srv", "--tracking-uri", uri]) == 0
        from mlflow.tracking import MlflowClient
        versions = MlflowClient(uri).search_model_versions("name='srv'")
        assert sorted(int(v.version) for v in versions) == [1, 2]
        assert MlflowClient(uri).get_model_version_by_alias("srv", "champion").version == "2"
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def test_unreachable_registry_fails_clearly(chain, capsys):
    tmp, cfg = chain
    rc = main(["register", "--run-dir", str(cfg.run_dir), "--name", "x", "--tracking-uri",
               f"http://127.0.0.1:{_free_port()}"])
    assert rc == 2 and "unreachable" in capsys.readouterr().err


def test_run_rejects_unknown_stage(tmp_path):
    cfg = small_cfg(tmp_path)
    with pytest.raises(SimganError, match="--until"):
        run_chain(cfg, until="bogus")


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_full_disk_gives_a_message_and_no_partial_output(chain, small_disk, g4_sample):
    """simulate, convert and generate on a full disk: one line naming the file and the cause, exit 2, no
    file left, no crash at exit (HDF5 segfaulted at interpreter exit after a failed write)."""
    tmp, cfg = chain
    test_h5 = g4_sample  # 200 showers: more than the 64 KiB disk holds
    runs = {"simulate": ("simulate", "-c", QUICKSTART, "-q", "--events", 200, "--out", small_disk / "g4.h5",
                         "simulate.energy_max_gev=8"),
            "convert": ("convert", test_h5, "--out", small_disk / "x.root"),
            "generate": ("generate", "--checkpoint", cfg.run_dir / "train" / "model.pt", "--energies-from", test_h5,
                         "--out", small_disk / "gen.h5", "-q")}
    for name, args in runs.items():
        r = _cli(*args)
        assert r.returncode == 2, (name, r.returncode, r.stderr[-2000:])
        assert "no space left on device" in r.stderr and "Traceback" not in r.stderr, (name, r.stderr[-2000:])
        assert list(small_disk.iterdir()) == [], name


def test_read_only_store_fails_at_once(chain, tmp_path):
    """register against a read-only sqlite store: a clear error in seconds (sqlite retried its locks for minutes)."""
    tmp, cfg = chain
    src, ro = tmp_path / "store", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    import mlflow

    mlflow.MlflowClient(f"sqlite:///{src}/mlflow.db").search_experiments()  # a real store, seen read-only at ro/
    mlflow.set_tracking_uri(cfg.register.tracking_uri)
    if subprocess.run(["mount", "--bind", str(src), str(ro)]).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        assert subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)]).returncode == 0
        uri = f"sqlite:///{ro}/mlflow.db"
        t0 = time.monotonic()
        r = _cli("register", "--run-dir", cfg.run_dir, "--name", "ro_store", "--tracking-uri", uri, timeout=100)
        assert r.returncode == 2 and "read-only" in r.stderr and "mlflow.db" in r.stderr, r.stderr[-2000:]
        assert time.monotonic() - t0 < 60
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_read_only_output_place_is_refused_before_any_work(tmp_path, g4_sample):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        for args in (("convert", g4_sample, "--out", ro / "x.root"),
                     ("simulate", "-c", QUICKSTART, "-q", "--events", 10, "--out", ro / "g4.h5")):
            r = _cli(*args)
            assert r.returncode == 2 and f"output folder {ro} is not writable" in r.stderr, r.stderr[-2000:]
        assert list(ro.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_the_gan_twin_of_the_quickstart_runs_the_chain(chain, tmp_path):
    """configs/experiment/quickstart_gan.yaml, shrunk, through every stage on the chain's Geant4
    showers: the WGAN-GP hybrid trains (critic and likelihood terms logged); the quickstart's
    gate refuses to judge a sample this small; with limits it can judge, the model is validated
    and registered under its own name."""
    _, base = chain
    shrunk = [f"runs_dir={tmp_path}", f"register.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
              f"prepare.input={base.run_dir / 'simulate' / 'showers.h5'}", "train.progress=false",
              *[o for o in TINY if not o.startswith(("simulate.", "generate.ablation"))],
              "model.critic_hidden=[32,32]", "model.n_critic=2"]
    cfg = load_config(QUICKSTART.parent / "quickstart_gan.yaml", shrunk)
    assert cfg.validate.gate == load_config(QUICKSTART).validate.gate  # the quickstart's own gate
    # which cannot judge 45 showers: the run refuses it, naming the size it needs
    with pytest.raises(SimganError, match="the gate cannot judge at this size.*validate.gate.separation_etot_max = "
                                          "0.1: the simulator against itself gives"):
        run_chain(cfg, progress=False)
    m = json.loads((cfg.run_dir / "validate" / "metrics.json").read_text())
    assert not m["gate"]["pass"] and "separation_etot_over_einc" in m["gate"]["uninformative"]
    assert m["gate"]["uninformative"]["separation_etot_over_einc"]["events_needed"] > m["n_candidate"]
    assert not (cfg.run_dir / "validate" / "manifest.json").exists()  # refused: the stage is not done
    cfg = load_config(QUICKSTART.parent / "quickstart_gan.yaml", [*shrunk, *OPEN_GATE])
    assert run_chain(cfg, progress=False) == 0
    rows = [json.loads(x) for x in (cfg.run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_d", "loss_g", "gp", "likelihood"} <= set().union(*rows)
    m = json.loads((cfg.run_dir / "validate" / "metrics.json").read_text())
    assert set(m["gate"]["checks"]) >= {"auc_high", "separation_mean", "response_deviation_max"}
    reg = json.loads((cfg.run_dir / "register" / "registered.json").read_text())
    assert reg["name"] == "simgan-quickstart-gan" and reg["gate"] == ("pass" if m["gate"]["pass"] else "fail")


def _copy_prepared(chain, tmp_path, name):
    """A run of the chain's config under another name, holding copies of its simulate and prepare
    stages (the manifests pointing at the copies): stage tests without a new simulation."""
    import shutil
    tmp, cfg = chain
    new = small_cfg(tmp_path, *TINY, f"name={name}")
    for stage in ("simulate", "prepare"):
        shutil.copytree(cfg.run_dir / stage, new.run_dir / stage)
        m = new.run_dir / stage / "manifest.json"
        m.write_text(m.read_text().replace(str(cfg.run_dir), str(new.run_dir)))
    return new


def test_a_stage_never_writes_onto_its_own_input(chain, tmp_path):
    """prepare.input naming the prepare stage's own train.h5 (directly or through a symlink) is
    refused before any work, and the file is left as it was."""
    import hashlib
    cfg = _copy_prepared(chain, tmp_path, "own")
    train = cfg.run_dir / "prepare" / "train.h5"
    digest = hashlib.sha256(train.read_bytes()).hexdigest()
    link = tmp_path / "link.h5"
    link.symlink_to(train)
    for source in (train, link):
        bad = small_cfg(tmp_path, *TINY, "name=own", f"prepare.input={source}")
        with pytest.raises(SimganError, match="is its own output .*train.h5"):
            run_chain(bad, until="prepare", progress=False)
    assert hashlib.sha256(train.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("manifest", ["[]", '{"config_hash": null, "outputs": null}', '{"config_hash": "x", "outp',
                                      "SAME_NO_OUTPUTS", "SAME_NULL_OUTPUT", "SAME_TRAIN_DELETED"])
def test_a_corrupt_or_foreign_manifest_means_the_stage_reruns(chain, tmp_path, manifest, capsys):
    from pipeline.contract import manifest_path
    cfg = _copy_prepared(chain, tmp_path, "torn")
    path = manifest_path(cfg, "prepare")
    good = json.loads(path.read_text())
    if manifest == "SAME_NO_OUTPUTS":
        manifest = json.dumps({k: v for k, v in good.items() if k != "outputs"})
    elif manifest == "SAME_NULL_OUTPUT":
        manifest = json.dumps({**good, "outputs": {**good["outputs"], "train": None}})
    elif manifest == "SAME_TRAIN_DELETED":  # a manifest that lists no train.h5, and the file gone
        manifest = json.dumps({**good, "outputs": {"test": good["outputs"]["test"]}})
        (cfg.run_dir / "prepare" / "train.h5").unlink()
    path.write_text(manifest)
    capsys.readouterr()
    assert run_chain(cfg, until="prepare", progress=False) == 0
    out = capsys.readouterr().out
    assert "[prepare] running" in out and "[simulate] up to date" in out
    assert (cfg.run_dir / "prepare" / "train.h5").is_file() and json.loads(path.read_text())["outputs"]["train"]


def test_one_command_at_a_time_in_a_run_folder(chain, tmp_path, capsys):
    """A second command on a run folder that another holds fails at once, naming the holder;
    the lock goes with the process that held it."""
    import fcntl
    cfg = _copy_prepared(chain, tmp_path, "locked")
    lock = open(cfg.run_dir / ".lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write("pid 12345 on elsewhere since 10:00:00")
    lock.flush()
    try:
        capsys.readouterr()
        assert main(["run", "-c", str(QUICKSTART), f"runs_dir={tmp_path}", "name=locked", "--until", "prepare",
                     "-q"]) == 2
        err = capsys.readouterr().err
        assert "another simgan command is running stages in this run folder (pid 12345" in err
    finally:
        lock.close()
    assert main(["run", "-c", str(QUICKSTART), f"runs_dir={tmp_path}", "name=locked", *TINY, "--until", "prepare",
                 "-q"]) == 0


def test_validate_refuses_a_floor_that_is_the_reference_and_files_of_another_domain(chain, tmp_path, capsys):
    from simgan.domains.neuron import io as nio
    _, cfg = chain
    test, gen = cfg.run_dir / "prepare" / "test.h5", cfg.run_dir / "generate" / "generated.h5"
    copy = tmp_path / "copy.h5"
    copy.write_bytes(test.read_bytes())  # the same showers under another name
    capsys.readouterr()
    assert main(["validate", "--reference", str(test), "--candidate", str(gen), "--floor", str(copy), "--out",
                 str(tmp_path / "v")]) == 2
    assert "the floor is the reference file itself" in capsys.readouterr().err and not (tmp_path / "v").exists()
    r = np.random.default_rng(0)
    neurons = nio.write(tmp_path / "n.h5", nio.NeuronImages(r.random((30, 64, 64), dtype=np.float32),
                                                            r.integers(0, 3, 30), r.uniform(0.1, 0.4, 30)))
    assert main(["validate", "--reference", str(test), "--candidate", str(neurons), "--out", str(tmp_path / "v")]) == 2
    assert "--candidate " + str(neurons) + " holds neuron data but --reference" in capsys.readouterr().err


@pytest.mark.slow
def test_a_served_model_answers_bad_requests_with_400_and_the_reason(chain, tmp_path):
    """`mlflow models serve` (local env): a good request gets showers; a condition outside the
    training range or a missing column gets HTTP 400 whose message names it (no stack trace to
    dig in), never a 200 with nonsense."""
    import urllib.error
    import urllib.request
    tmp, _ = chain
    port = _free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    srv = subprocess.Popen([mlflow_bin, "models", "serve", "-m", "models:/tiny@champion", "--env-manager", "local",
                            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
                                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",  # (uvicorn: the venv's bin)
                                "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")})

    def post(rows, columns=("incident_energy",)):
        body = json.dumps({"dataframe_split": {"columns": list(columns), "data": rows}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    try:
        _wait_until_up(srv, f"http://127.0.0.1:{port}/ping", 120)
        status, body = post([[2000.0], [5000.0]])
        assert status == 200 and np.asarray(body["predictions"]).shape == (2, 6480)
        status, body = post([[2000.0], [300.0]])
        assert status == 400 and "'incident_energy' row 1: 300 is outside the training range" in body["message"]
        status, body = post([[2000.0]], columns=("E",))
        assert status == 400 and "incident_energy" in body["message"]
    finally:
        srv.terminate()
        srv.wait(timeout=30)
