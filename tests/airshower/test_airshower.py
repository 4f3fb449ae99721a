"""Air-shower domain: the reference simulator's sanity figures (the spec's, from >= 10k protons),
its determinism, the footprint format's checks, and the ROOT converter."""

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from simgan.domains.airshower import io as aio
from simgan.domains.airshower.observables import angular_resolution, event_features
from simgan.domains.airshower.simulator import C_M_PER_NS, ArrayParams, shower_plane_geometry, simulate, station_xyz
from simgan.errors import SimganError

P = ArrayParams()


@pytest.fixture(scope="module")
def sim():
    ev = simulate(20000, 1, P)
    c = ev["conditions"]
    n = len(c["zenith_rad"])
    _, r, along, _ = shower_plane_geometry(station_xyz(P), np.stack([c["core_x_m"], c["core_y_m"]], 1),
                                           c["zenith_rad"], c["azimuth_rad"], P.altitude_m)
    return ev, c, ev["signal"].reshape(n, -1).astype(np.float64), ev["triggered"].reshape(n, -1).astype(bool), r, along


def test_signal_scale_and_energy_slope(sim):
    ev, c, s, trig, r, _ = sim
    th = c["zenith_rad"]
    for lo, hi in ((0, 30), (30, 45), (45, 61)):
        m = trig & ((r > 950) & (r < 1050)) & ((th >= math.radians(lo)) & (th < math.radians(hi)))[:, None]
        ratio = np.median((s / ev["truth"]["s1000_vem"][:, None])[m])
        assert abs(ratio - 1.0) < 0.05, (lo, hi, ratio)
    slope = np.polyfit(c["log10_energy_eV"], np.log10(s.sum(1)), 1)[0]
    assert abs(slope - 0.97) < 0.03, slope
    m10 = (np.abs(c["log10_energy_eV"] - 19) < 0.1) & (th < math.radians(25))
    for rr, expected in ((600, 300), (1000, 52), (1500, 12), (2000, 4.5)):
        med = np.median(s[m10[:, None] & (np.abs(r - rr) < 50) & trig])
        assert abs(med / expected - 1) < 0.15, (rr, med)


def test_station_multiplicity(sim):
    ev, c, s, trig, r, _ = sim
    n, lg, th = trig.sum(1), c["log10_energy_eV"], c["zenith_rad"]
    for (lo, hi), expected in (((18.5, 18.75), 6.5), ((19.0, 19.25), 12), ((19.75, 20.0), 29)):
        mean = n[(lg >= lo) & (lg < hi)].mean()
        assert abs(mean / expected - 1) < 0.15, (lo, mean)
    ratio = n[th > math.radians(45)].mean() / n[th < math.radians(30)].mean()
    assert 1.4 <= ratio <= 1.7, ratio
    assert n.min() >= 3


def test_front_delay_and_angular_resolution_fall_with_station_count(sim):
    ev, c, s, trig, r, along = sim
    t = ev["time"].reshape(len(s), -1)
    delay = np.median((t + along / C_M_PER_NS)[trig & (r > 950) & (r < 1050)])
    assert abs(delay - 156) < 20, delay
    f = event_features(ev["signal"], ev["time"], ev["triggered"], c, station_xyz(P), P)
    res = angular_resolution(f["plane_fit_angle_deg"], f["n_triggered"])
    for key, expected in (("3-5", 2.4), ("8-10", 1.5), ("11-15", 0.8), ("26-81", 0.6)):
        assert abs(res[key] / expected - 1) < 0.15, (key, res)
    values = list(res.values())
    assert all(a >= b for a, b in zip(values, values[1:])), res


def test_barycentre_is_symmetric_about_the_core(sim):
    ev, c, s, trig, r, _ = sim
    f = event_features(ev["signal"], ev["time"], ev["triggered"], c, station_xyz(P), P)
    m = c["zenith_rad"] < math.radians(20)
    for k in ("barycentre_dx_m", "barycentre_dy_m"):
        assert abs(f[k][m].mean()) < 20 and abs(np.sqrt((f[k][m] ** 2).mean()) / 190 - 1) < 0.15, k


def test_seeded_and_independent_of_sharding():
    a = simulate(3000, 5, P, shard_events=1000)
    b = simulate(3000, 5, P, shard_events=1000, shards=range(1, 3))
    np.testing.assert_array_equal(a["signal"][1000:], b["signal"])
    assert not np.array_equal(simulate(1000, 6, P)["signal"], a["signal"][:1000])


def _fp(n=50, seed=2):
    return aio.from_simulation(simulate(n, seed, P), P, seed)


def test_hdf5_and_root_roundtrip(tmp_path):
    fp = _fp()
    back = aio.read(aio.write(tmp_path / "fp.h5", fp))
    for k in ("signal", "time", "triggered"):
        np.testing.assert_array_equal(getattr(back, k), getattr(fp, k))
    assert set(back.conditions) == set(aio.CONDITIONS) | {"mass_A"} and back.attrs["seed"] == 2
    assert back.attrs["schema_version"] == aio.SCHEMA_VERSION and "xmax_gcm2" in back.truth
    root = aio.read_root(aio.write_root(tmp_path / "fp.root", fp))
    np.testing.assert_array_equal(root.signal, fp.signal)
    np.testing.assert_allclose(root.conditions["zenith_rad"], fp.conditions["zenith_rad"])


def test_root_branch_names_are_configurable(tmp_path):
    import uproot
    fp = _fp(20)
    n = len(fp)
    with uproot.recreate(tmp_path / "custom.root") as f:
        f["events"] = {"vem": fp.signal.reshape(n, -1), "t_ns": fp.time.reshape(n, -1),
                       "trig": fp.triggered.reshape(n, -1).astype(np.uint8),
                       **{k: v for k, v in fp.conditions.items()}}
    with pytest.raises(SimganError, match="lacks .*signal \\(branch 'signal'\\)"):
        aio.read_root(tmp_path / "custom.root", "events")
    got = aio.read_root(tmp_path / "custom.root", "events", {"signal": "vem", "time": "t_ns", "triggered": "trig"})
    np.testing.assert_array_equal(got.signal, fp.signal)
    # the prepare stage's way to the map, which the message names
    from simgan.domains import get_domain, load_config
    cfg = load_config(AIR, [f"prepare.input={tmp_path / 'custom.root'}", "prepare.root_tree=events",
                                  "prepare.root_branches={signal: vem, time: t_ns, triggered: trig}"])
    np.testing.assert_array_equal(get_domain("airshower").read_source(cfg, cfg.prepare.input).time, fp.time)
    with pytest.raises(SimganError, match="with prepare.root_branches, e.g."):
        get_domain("airshower").read_source(load_config(AIR, ["prepare.root_tree=events"]), tmp_path / "custom.root")


@pytest.mark.parametrize("case, match", [
    ("degrees", "conditions/zenith_rad' row 3: .*looks like degrees"),
    ("eev", "conditions/log10_energy_eV' row 0: .*EeV was written"),
    ("nan_time", "footprint/time' row 4: not finite \\(on a triggered station\\)"),
    ("grid", "footprint/signal' has shape \\(50, 8, 8\\), expected \\(50, 9, 9\\)"),
    ("missing", "missing condition\\(s\\) \\['conditions/core_y_m'\\]"),
    ("silent_time", "row 7: a silent station .* has a signal or a time"),
])
def test_bad_footprints_are_named_and_nothing_is_written(tmp_path, case, match):
    fp = _fp()
    if case == "degrees":
        fp.conditions["zenith_rad"][3] = 40.0
    elif case == "eev":
        fp.conditions["log10_energy_eV"] = 10 ** (fp.conditions["log10_energy_eV"] - 18)
    elif case == "nan_time":
        fp.time[4][fp.triggered[4]] = np.nan
    elif case == "grid":
        fp.signal, fp.time, fp.triggered = fp.signal[:, :8, :8], fp.time[:, :8, :8], fp.triggered[:, :8, :8]
    elif case == "missing":
        del fp.conditions["core_y_m"]
    elif case == "silent_time":
        fp.time[7][~fp.triggered[7]] = 12.0
    with pytest.raises(SimganError, match=match):
        aio.write(tmp_path / "bad.h5", fp)
    assert list(tmp_path.iterdir()) == []
    # the same defect in a file written by someone else is named by the reader
    if case in ("degrees", "nan_time"):
        good = aio.write(tmp_path / "x.h5", _fp())
        with h5py.File(good, "a") as f:
            if case == "degrees":
                f["conditions/zenith_rad"][3] = 40.0
            else:
                t = f["footprint/time"][4]
                t[f["footprint/triggered"][4].astype(bool)] = np.nan
                f["footprint/time"][4] = t
        with pytest.raises(SimganError, match=match):
            aio.read(good)


# -- the domain end to end ----------------------------------------------------------------------
from tests.conftest import REPO  # noqa: E402

AIR = REPO / "configs" / "experiment" / "airshower_quickstart.yaml"
AIR_TINY = ["simulate.events=3000", "simulate.shard_events=1000", "train.steps=60", "train.batch_size=64",
            "train.val_every=30", "train.checkpoint_every=30", "train.log_every=30", "train.val_events=200",
            "model.width=16", "model.depth=2", "validate.classifier_seeds=1", "validate.plots=true",
            "train.progress=false"]
# the chain of footprints without traces, protons only (the quickstart's traces, mixed masses and
# latent flow: test_the_trace_quickstart_runs_the_chain)
PLAIN = ["simulate.traces=false", "simulate.trace_components=false", "simulate.mass_A=1",
         "model.latent_sampler=prior", "validate.gate.rise_1000_deviation_max=null",
         "validate.gate.trace_shape_deviation_max=null", "validate.gate.rise_mass_slope_deviation_max=null"]
OPEN_GATE = ["validate.gate.auc_max=1.0", "validate.gate.min_events=20", "validate.gate.separation_mean_max=1.0",
             "validate.gate.station_count_deviation_max=1e6", "validate.gate.s1000_bias_max=1e6",
             # (60 steps draw no footprint of 26 stations or more: no angular resolution there, a failed check)
             "validate.gate.angular_resolution_deviation_max=null"]


@pytest.fixture(scope="module")
def air_chain(tmp_path_factory):
    from pipeline.runner import run_chain
    from simgan.domains import load_config
    tmp = tmp_path_factory.mktemp("air")
    cfg = load_config(AIR, [f"runs_dir={tmp}", f"register.tracking_uri=sqlite:///{tmp}/mlflow.db",
                            "register.name=air-tiny", *AIR_TINY, *PLAIN, *OPEN_GATE])
    assert run_chain(cfg, progress=False) == 0
    return tmp, cfg


def test_the_trace_quickstart_runs_the_chain(tmp_path):
    """configs/experiment/airshower_quickstart.yaml as it ships (particle-level traces, mixed
    masses, the latent flow), shrunk: the flow is fitted after training, the registered model
    takes the mass number and returns footprints whose traces sum to their signals, and its
    ONNX export holds the flow."""
    import json

    import mlflow
    import pandas as pd

    from pipeline.runner import run_chain
    from simgan.domains import load_config
    cfg = load_config(AIR, [f"runs_dir={tmp_path}", f"register.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                            "register.name=air-traces", *AIR_TINY, "simulate.events=800", "simulate.shard_events=400",
                            "train.steps=20", "train.val_every=10", "train.checkpoint_every=10", "train.log_every=10",
                            "train.val_events=100", "model.flow_steps=30", *OPEN_GATE,
                            # (160 held-out events leave a zenith bin without stations near 1000 m: no rise time)
                            "validate.gate.rise_1000_deviation_max=null", "validate.gate.trace_shape_deviation_max=1e6",
                            "validate.gate.rise_mass_slope_deviation_max=1e6"])
    assert cfg.simulate.traces and cfg.simulate.mass_A == 0 and cfg.model.latent_sampler == "flow"
    assert run_chain(cfg, progress=False) == 0
    info = json.loads((cfg.run_dir / "train" / "run_info.json").read_text())
    assert info["calibration"]["latent_flow_steps"] == 30 and info["selected_step"] == 20
    m = json.loads((cfg.run_dir / "validate" / "metrics.json").read_text())
    assert {"trace_shape_deviation_max", "rise_mass_slope_deviation"} <= set(m["gate"]["checks"])
    mlflow.set_tracking_uri(cfg.register.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/air-traces@champion")
    frame = pd.DataFrame({"log10_energy_eV": [19.0, 19.5], "zenith_rad": [0.1, 0.6], "azimuth_rad": [0.0, 1.0],
                          "core_x_m": [0.0, 100.0], "core_y_m": [0.0, 50.0], "mass_A": [1.0, 56.0]})
    out = model.predict(frame, params={"seed": 3})
    assert out.shape == (2, 83, 9, 9)
    trig = out[:, 2] > 0
    assert trig.any() and np.allclose(out[:, 3:].sum(1)[trig], out[:, 0][trig], rtol=1e-4)
    local = Path(mlflow.artifacts.download_artifacts("models:/air-traces@champion"))
    side = json.loads(next(local.rglob("model.json")).read_text())
    assert "latent flow" in side["inputs"][1]["meaning"] and side["outputs"][0]["name"] == "signal"


def test_airshower_chain_registers_and_a_consumer_predicts_from_a_dataframe(air_chain):
    import json

    import mlflow
    import pandas as pd
    tmp, cfg = air_chain
    run = cfg.run_dir
    reg = json.loads((run / "register" / "registered.json").read_text())
    assert reg["alias_uri"] == "models:/air-tiny@champion"
    m = json.loads((run / "validate" / "metrics.json").read_text())
    assert m["domain"] == "airshower" and 0.3 < m["floor"]["auc"] < 0.7 and m["gate"]["pass"]
    assert m["reference"] == str(run / "prepare" / "test.h5") and m["n_reference"] == m["n_candidate"]
    assert (run / "validate" / "footprints.png").is_file() and (run / "validate" / "observables.png").is_file()
    mlflow.set_tracking_uri(cfg.register.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/air-tiny@champion")
    frame = pd.DataFrame({"log10_energy_eV": [19.0, 19.5, 19.9], "zenith_rad": [0.1, 0.6, 0.9],
                          "azimuth_rad": [0.0, 1.0, 5.0], "core_x_m": [0.0, 100.0, -300.0],
                          "core_y_m": [0.0, 50.0, 200.0]})
    out = out_protons = model.predict(frame, params={"seed": 3})
    assert out.shape == (3, 3, 9, 9)
    signal, time, trig = out[:, 0], out[:, 1], out[:, 2]
    assert set(np.unique(trig)) <= {0.0, 1.0} and (signal[trig > 0] >= 3).all() and (signal[trig == 0] == 0).all()
    assert (time[trig == 0] == 0).all()
    np.testing.assert_array_equal(model.predict(frame, params={"seed": 3}), out)
    with pytest.raises(Exception, match="zenith_rad.*degrees"):
        model.predict(frame.assign(zenith_rad=[10.0, 30.0, 50.0]))
    with pytest.raises(Exception, match="core_y_m"):
        model.predict(frame.drop(columns=["core_y_m"]))
    # nonsense conditions are named (served: HTTP 400 with this message), never an empty or infinite footprint
    from mlflow.exceptions import MlflowException
    for col, v, says in (("core_x_m", np.nan, "column 'core_x_m' row 1: nan; expected a finite number"),
                         ("log10_energy_eV", np.nan, "column 'log10_energy_eV' row 1: nan"),
                         ("core_x_m", 5e4, "column 'core_x_m' row 1: 50000 is outside the training range"),
                         ("core_x_m", 1e6, "outside the training range")):
        with pytest.raises(MlflowException, match=says) as exc:
            model.predict(frame.assign(**{col: [0.0, v, 0.0]}))
        assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException, match="has no rows"):
        model.predict(frame.iloc[:0])
    out = model.predict(frame.assign(core_x_m=[0.0, 900.0, 0.0]), params={"extrapolate": True})
    assert np.isfinite(out).all()  # a little past the range, asked for: generated
    # the mass number: optional (protons), checked against the (proton-only) training data and its units
    np.testing.assert_array_equal(model.predict(frame.assign(mass_A=1.0), params={"seed": 3}), out_protons)
    # the README's own example: an integer mass number is a mass number; a proton-only model refuses
    # another even with extrapolate (it learnt no mass dependence); a fractional one is refused
    np.testing.assert_array_equal(model.predict(frame.assign(mass_A=1), params={"seed": 3}), out_protons)
    for params in ({}, {"extrapolate": True}):
        with pytest.raises(MlflowException, match="column 'mass_A' row 0: 56; the model was trained on primaries of "
                                                  "mass number 1 only"):
            model.predict(frame.assign(mass_A=56), params=params)
    with pytest.raises(MlflowException, match="column 'mass_A' row 0: 2.5; expected a whole mass number"):
        model.predict(frame.assign(mass_A=2.5))
    # a vertical shower (which the simulator draws) is inside the training range
    assert np.isfinite(model.predict(frame.assign(zenith_rad=[0.0, 0.0, 0.0]))).all()
    with pytest.raises(MlflowException, match="column 'mass_A' row 0: 0: expected the primary's mass number"):
        model.predict(frame.assign(mass_A=0.0))
    # a C++-style consumer pulls the ONNX export by the alias: the graph, its sidecar with the verdict, and
    # footprints from its own noise through onnxruntime
    import onnxruntime as ort
    local = Path(mlflow.artifacts.download_artifacts("models:/air-tiny@champion"))
    side = json.loads(next(local.rglob("model.json")).read_text())
    assert side["validation"]["gate"] == "pass" and side["checkpoint_sha256"] == reg_sha(cfg)
    assert reg["export"]["format"] == "onnx" and side["round_trip"]["max_relative_difference_all"] <= 1e-4
    sess = ort.InferenceSession(str(next(local.rglob(side["file"]))), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"conditions": np.array([[19.0, 0.1, 0.0, 0.0, 0.0, 1.0], [19.5, 0.6, 1.0, 100.0, 50.0, 1.0]], np.float32)}
    for port in side["inputs"][1:]:
        feed[port["name"]] = rng.standard_normal((2, *port["shape"][1:])).astype(np.float32)
    fp = sess.run(None, feed)[0]
    assert fp.shape == (2, 3, 9, 9) and ((fp[:, 2] == 0) | (fp[:, 0] >= 3)).all() and fp[:, 2].sum() > 0
    # `simgan export --model` takes the registered version's checkpoint and its gate
    import os

    from pipeline.cli import main
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = cfg.register.tracking_uri
    try:
        out = Path(tmp) / "export_by_alias"
        assert main(["export", "--model", "models:/air-tiny@champion", "--out", str(out), "--format", "torchscript"]) == 0
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI") if before is None else os.environ.update(MLFLOW_TRACKING_URI=before)
    by_alias = json.loads((out / "model.json").read_text())
    assert by_alias["validation"]["gate"] == "pass" and by_alias["checkpoint_sha256"] == reg_sha(cfg)


def reg_sha(cfg):
    from simgan.io import file_sha256
    return file_sha256(cfg.run_dir / "train" / "model.pt")


def test_checkpoint_carries_the_schema_and_generate_warns_outside_the_training_range(air_chain, tmp_path, capsys):
    import json
    import os

    from pipeline.cli import main
    from simgan.checkpoint import load_checkpoint
    from simgan.domains import model_from_checkpoint
    tmp, cfg = air_chain
    ckpt_path = cfg.run_dir / "train" / "model.pt"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["model_args"]["domain"] == "airshower"
    assert ckpt["schema"]["conditions"] == [*aio.CONDITIONS, "mass_A"] and ckpt["schema"]["sample_shape"] == [9, 9]
    assert ckpt["model_args"]["conditions"] == list(aio.CONDITIONS)  # protons only: the mass is no model input
    assert ckpt["condition_ranges"]["mass_A"] == [1.0, 1.0]
    lo, hi = ckpt["condition_ranges"]["log10_energy_eV"]
    assert 18.5 <= lo < hi <= 20.0
    model, _ = model_from_checkpoint(ckpt_path)  # rebuilt from the checkpoint alone
    test = aio.read(cfg.run_dir / "prepare" / "test.h5")
    test.conditions["log10_energy_eV"] = np.full(len(test), 20.6)  # beyond the training range
    src = aio.write(tmp_path / "high.h5", test.subset(np.arange(50)))
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(ckpt_path), "--energies-from", str(src), "--out",
                 str(tmp_path / "gen.h5")]) == 0
    assert "log10_energy_eV outside the training range" in capsys.readouterr().err
    gen = aio.read(tmp_path / "gen.h5")
    assert gen.signal.shape == (50, 9, 9) and (gen.signal[gen.triggered] >= 3).all()
    # the registered model generates the same way (`generate --model`)
    os.environ["MLFLOW_TRACKING_URI"] = cfg.register.tracking_uri
    try:
        assert main(["generate", "--model", "models:/air-tiny@champion", "--energies-from", str(src), "--out",
                     str(tmp_path / "reg.h5"), "-q"]) == 0
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    reg = aio.read(tmp_path / "reg.h5")
    assert reg.signal.shape == (50, 9, 9) and json.loads(reg.attrs["metadata"])["model_uri"] == "models:/air-tiny@champion"


def test_validate_cli_takes_the_domain_from_the_reference_file(air_chain, tmp_path, capsys):
    import json

    from pipeline.cli import main
    tmp, cfg = air_chain
    files = ["--reference", str(cfg.run_dir / "prepare" / "test.h5"), "--candidate",
             str(cfg.run_dir / "generate" / "generated.h5"), "--floor", str(cfg.run_dir / "prepare" / "train.h5")]
    # a calorimeter config for footprint files: refused before any work
    assert main(["validate", "-c", str(REPO / "configs/experiment/quickstart.yaml"), *files,
                 "--out", str(tmp_path / "v1")]) == 2
    assert "holds airshower data but" in capsys.readouterr().err and not (tmp_path / "v1").exists()
    # no config: the air-shower defaults (its gate), the air-shower summary line
    main(["validate", *files, "--out", str(tmp_path / "v2")])
    out = capsys.readouterr().out
    assert "AUC observables" in out and "S1000 bias" in out
    m = json.loads((tmp_path / "v2" / "metrics.json").read_text())
    assert set(m["gate"]["checks"]) == {"auc", "separation_power_mean", "events_per_class"} and m["reference"] == files[1]


def test_bad_airshower_input_stops_prepare_with_nothing_written(tmp_path, capsys):
    from pipeline.cli import main
    fp = _fp(100)
    path = aio.write(tmp_path / "in.h5", fp)
    with h5py.File(path, "a") as f:
        f["conditions/zenith_rad"][5] = 35.0
    assert main(["run", "-c", str(AIR), "-q", f"runs_dir={tmp_path / 'runs'}", f"prepare.input={path}",
                 "--until", "prepare"]) == 2
    assert "conditions/zenith_rad' row 5: 35: looks like degrees" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "airshower_quickstart" / "prepare" / "train.h5").exists()


def test_the_gan_twin_of_the_quickstart_runs_the_chain(air_chain, tmp_path):
    """configs/experiment/airshower_quickstart_gan.yaml, shrunk, through every stage on the
    chain's simulated footprints: the WGAN-GP (hybrid: critic and likelihood terms) trains
    through the shared trainer with finite, changing losses, is validated with the quickstart's
    gate and registered under its own name; the pure WGAN-GP (likelihood_weight=0) trains too."""
    import json

    from pipeline.runner import run_chain
    from simgan.domains import load_config
    _, base = air_chain
    cfg = load_config(AIR.parent / "airshower_quickstart_gan.yaml",
                      [f"runs_dir={tmp_path}", f"register.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                       f"prepare.input={base.run_dir / 'simulate' / 'showers.h5'}",
                       *[o for o in AIR_TINY if not o.startswith(("simulate.", "model."))],
                       "model.width=16", "model.depth=2", "model.critic_width=16", "model.gp_every=1", "train.steps=8",
                       "train.val_every=4", "train.checkpoint_every=4", "train.log_every=2"])
    trace_limits = {"rise_1000_deviation_max": None, "trace_shape_deviation_max": None,
                    "rise_mass_slope_deviation_max": None}  # the twin's footprints have no traces
    assert cfg.model.family == "footprint_gan" and cfg.validate.gate == load_config(AIR).validate.gate.model_copy(
        update=trace_limits)
    assert run_chain(cfg, progress=False) == 0
    rows = [json.loads(x) for x in (cfg.run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_d", "loss_g", "gp", "likelihood", "val_sep_mean"} <= set().union(*rows)
    assert len({r["loss_d"] for r in rows if "loss_d" in r}) > 1
    assert all(np.isfinite(r["loss_g"]) for r in rows if "loss_g" in r)
    m = json.loads((cfg.run_dir / "validate" / "metrics.json").read_text())
    assert m["domain"] == "airshower" and {"auc", "s1000_bias_max"} <= set(m["gate"]["checks"])
    reg = json.loads((cfg.run_dir / "register" / "registered.json").read_text())
    assert reg["name"] == "simgan-airshower-quickstart-gan" and reg["gate"] == ("pass" if m["gate"]["pass"] else "fail")
    from simgan.domains import get_domain
    from simgan.train.trainer import Trainer
    pure = load_config(AIR.parent / "airshower_quickstart_gan.yaml",
                       [f"runs_dir={tmp_path}", "model.likelihood_weight=0", "model.width=16", "model.depth=2",
                        "model.critic_width=16", "train.steps=4", "train.val_every=2", "train.val_events=100",
                        "train.checkpoint_every=2", "train.log_every=1", "train.mlflow=false", "train.progress=false"])
    info = Trainer(pure, get_domain("airshower"), cfg.run_dir / "prepare" / "train.h5", cfg.run_dir / "prepare" / "val.h5",
                   tmp_path / "pure", progress=False).fit()
    rows = [json.loads(x) for x in (tmp_path / "pure" / "metrics.jsonl").read_text().splitlines()]
    assert info["complete"] and "likelihood" not in set().union(*rows) and all(np.isfinite(r["loss_g"]) for r in rows if "loss_g" in r)


def test_the_slurm_chain_renders_an_airshower_config(tmp_path):
    """Sharding is part of the stage contract: the simulate stage runs as a job array of the
    domain's simulator, generation (not sharded for this domain) as one job."""
    from pipeline.cli import main
    wf = tmp_path / "wf"
    assert main(["workflow", "-c", str(AIR), "--out", str(wf), "simulate.events=12000",
                 "simulate.shard_events=5000"]) == 0
    sim = (wf / "simulate_array.sbatch").read_text()
    assert "#SBATCH --array=0-2" in sim and "--shard-count 3" in sim and "simulate.workers" not in sim
    submit = (wf / "submit.sh").read_text()
    assert "generate:generate validate:validate" in submit and "generate_array" not in submit
    assert not (wf / "generate_array.sbatch").exists()
    assert "--from generate --until generate" in (wf / "generate.sbatch").read_text()


def test_a_family_of_another_domain_is_refused():
    from simgan.domains import load_config
    with pytest.raises(SimganError, match="key 'model.family': 'vae' does not fit domain 'airshower'"):
        load_config(AIR, ["model=calorimeter/vae"])
    with pytest.raises(SimganError, match="simulate.particle': a setting of the calorimeter domain; the airshower "
                                          "domain has no such key"):
        load_config(AIR, ["simulate.particle=e-"])
    for key in ("generate.ablation=true", "validate.classifier=dnn", "train.calibrate=true", "prepare.format=root"):
        with pytest.raises(SimganError, match=f"key '{key.split('=')[0]}': a setting of the calorimeter domain"):
            load_config(AIR, [key])
    with pytest.raises(SimganError, match="key 'simulate.nope': unknown key"):
        load_config(AIR, ["simulate.nope=1"])
    for override, key in (("model.width=-1", "model.width"), ("domain.spacing_m=-1", "domain.spacing_m")):
        with pytest.raises(SimganError, match=f"key '{key}'"):  # the union tag is not part of the key
            load_config(AIR, [override])


def test_a_bin_the_simulator_fills_and_the_candidate_leaves_empty_fails_its_check():
    """No verdict without evidence: an energy bin with S1000 fits in the simulator and none in the
    candidate makes the S1000 check NaN (failed), not skipped."""
    from simgan.domains.airshower.validate import compare
    from simgan.metrics.gate import gate_checks
    rng = np.random.default_rng(0)
    n = 400

    def summary(s1000):
        lg = np.repeat([18.6, 19.6], n // 2)
        feats = {"n_triggered": rng.integers(3, 30, n).astype(float), "s1000_fit_over_nominal": s1000,
                 "plane_fit_angle_deg": rng.rayleigh(1.0, n), "log10_total_signal": rng.normal(2, 0.3, n)}

        class FP:
            conditions = {"log10_energy_eV": lg}
        return {"fp": FP(), "features": feats, "conditions": rng.normal(size=(n, 3)), "stations": None,
                "footprints": rng.normal(size=(n, 5))}

    good = rng.normal(1.0, 0.1, n)
    ref = summary(good.copy())
    fine = compare(ref, summary(good.copy()), 1, 10_000)
    assert np.isfinite(fine["s1000_bias_max"]) and fine["s1000_bias_max"] < 0.05
    half = good.copy()
    half[n // 2:] = np.nan  # no fit at the higher energy
    m = compare(ref, summary(half), 1, 10_000)
    assert np.isnan(m["s1000_bias_max"]) and len(m["s1000_by_energy"]) == 2
    gate = type("G", (), {"s1000_bias_max": 0.1})()
    assert gate_checks(m, gate, {"s1000_bias_max": "s1000_bias_max"})["checks"]["s1000_bias_max"]["pass"] is False
