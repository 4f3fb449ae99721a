"""The particle-level station simulation: tank geometry, light, traces and the trigger."""

import math

import numpy as np

from simgan.domains.airshower import traces as T

TANK = T.TankParams()


def test_a_vertical_muon_is_one_vem_and_inclined_chords_have_the_tank_mean():
    rng = np.random.default_rng(0)
    assert np.all(T.chord_vem(np.zeros(100), rng) == 1.0)
    chords = T.chord_vem(np.full(200_000, math.radians(60)), rng)
    assert abs(chords.mean() / T.mean_chord_vem(math.radians(60)) - 1) < 0.01
    assert abs(T.mean_chord_vem(math.radians(60)) - 1.15) < 0.01  # the spec's figure
    assert chords.max() > 1.5 and chords.min() < 0.3  # corner clips and long diagonals


def test_one_particle_light_is_conserved_and_decays():
    pe = T._light_in_bins(np.array([0]), np.array([50.0]), np.array([95.0]), 1, TANK)[0]
    assert abs(pe.sum() - 95.0) < 1e-6  # all of its light lies inside the window
    assert pe[:2].sum() == 0 and pe[2] > pe[3] > pe[4] > 0  # nothing before it arrives, then the decay
    assert abs(pe[3] / pe[2] - math.exp(-TANK.bin_ns / TANK.decay_ns)) < 1e-9  # arriving at a bin's start


def _stations(n, r, s, xmax=750.0, theta=0.0, mass=1.0, seed=1):
    rng = np.random.default_rng(seed)
    shape = (n, len(r))
    return T.station_traces(np.broadcast_to(np.asarray(s, float), shape), np.broadcast_to(np.asarray(r, float), shape),
                            np.zeros(shape), np.full(n, theta), np.full(n, xmax), np.full(n, mass), rng,
                            components=True)


def test_traces_integrate_to_the_signal_and_components_add_up():
    res = _stations(1000, [300.0, 1000.0, 1500.0], [1500.0, 52.0, 12.0])
    assert np.allclose(res["trace"].sum(-1), res["signal"], rtol=1e-5)
    ratio = res["signal"].mean(0) / np.array([1500.0, 52.0, 12.0])
    assert np.all(np.abs(ratio[:2] - 1) < 0.02), ratio  # late light lost past the window only far out
    assert 0.93 < ratio[2] < 1.0, ratio
    comp = res["muon_trace"] + res["em_trace"]
    assert np.abs(comp - res["trace"]).max() < 0.05  # the baseline noise only
    assert np.all(res["trace"] >= 0) and res["trace"].dtype == np.float32
    rise, _ = T.rise_fall_ns(res["trace"])
    med = np.median(rise, 0)
    assert med[0] < med[1] < med[2]  # the rise time grows with distance
    assert 150 < med[1] < 400, med  # a few hundred ns at 1000 m for vertical showers


def test_deeper_showers_rise_slower_and_iron_brings_more_muons():
    shallow = _stations(4000, [1000.0], [52.0], xmax=600.0)
    deep = _stations(4000, [1000.0], [52.0], xmax=860.0)
    assert np.median(T.rise_fall_ns(deep["trace"])[0]) > np.median(T.rise_fall_ns(shallow["trace"])[0])
    iron = _stations(4000, [1000.0], [52.0], mass=56.0)
    proton = _stations(4000, [1000.0], [52.0], mass=1.0)
    assert iron["n_muons"].mean() > 1.2 * proton["n_muons"].mean()
    inclined = _stations(4000, [1000.0], [52.0], theta=math.radians(55))
    assert np.median(inclined["muon_trace"].sum(-1) / inclined["signal"]) > 0.6  # muons dominate inclined showers
    assert np.median(T.rise_fall_ns(inclined["trace"])[0]) < np.median(T.rise_fall_ns(proton["trace"])[0])


def test_trigger_threshold_time_over_threshold_and_silent_stations():
    res = _stations(3000, [1800.0, 2600.0, 4000.0], [3.0, 1.2, 0.005])
    trig = res["triggered"].astype(bool)
    below = res["signal"] < TANK.threshold_vem
    assert np.any(trig & below)  # long, faint traces trigger by time over threshold
    assert not trig[:, 2].any()  # a station that expects nothing gets no particles
    assert np.all(res["trace"][~trig] == 0) and np.all(res["signal"][~trig] == 0) and np.all(res["time"][~trig] == 0)
    tot = (res["trace"] > TANK.tot_threshold_vem_peak * T.vem_peak(TANK)).sum(-1) >= TANK.tot_bins
    assert np.all(trig == ((res["signal"] >= TANK.threshold_vem) | tot))


def test_thinning_keeps_the_mean_signal_and_start_time_follows_the_trace():
    full = _stations(300, [300.0], [1500.0])
    rng = np.random.default_rng(1)
    thin = T.station_traces(np.full((300, 1), 1500.0), np.full((300, 1), 300.0), np.zeros((300, 1)), np.zeros(300),
                            np.full(300, 750.0), np.ones(300), rng, T.TankParams(max_particles=50))
    assert abs(thin["signal"].mean() / full["signal"].mean() - 1) < 0.02
    t10 = T.start_time_ns(full["trace"])
    assert np.allclose(full["time"], full["window_ns"] + t10, atol=1e-3)
    # a step trace: 10% of the integral is reached a tenth of the way into the first full bin
    step = np.zeros((1, 80))
    step[0, 4] = 1.0
    assert abs(T.start_time_ns(step)[0] - 4.1 * 25) < 1e-9


# -- the simulator with traces and the file format ----------------------------------------------
import h5py  # noqa: E402
import pytest  # noqa: E402

from simgan.domains.airshower import io as aio  # noqa: E402
from simgan.domains.airshower.simulator import ArrayParams, simulate  # noqa: E402
from simgan.errors import SimganError  # noqa: E402

PT = ArrayParams(traces=True, trace_components=True, mass_A=0)


def test_footprints_come_from_the_traces_and_shards_equal_one_run(tmp_path):
    a = simulate(300, 5, PT, shard_events=100)
    b = simulate(300, 5, PT, shard_events=100, shards=range(1, 3))
    np.testing.assert_array_equal(a["traces"][100:], b["traces"])
    np.testing.assert_array_equal(a["signal"][100:], b["signal"])
    trig = a["triggered"].astype(bool)
    np.testing.assert_allclose(a["traces"].sum(-1, dtype=np.float64)[trig], a["signal"][trig], rtol=1e-5)
    assert trig.reshape(300, -1).sum(1).min() >= 1 and np.all(a["traces"][~trig] == 0)
    # iron brings more muons than protons at the same energy
    mass, muons = a["conditions"]["mass_A"], a["truth"]["muons"] / 10 ** (a["conditions"]["log10_energy_eV"] - 19)
    assert np.median(muons[mass == 56]) > np.median(muons[mass == 1])
    fp = aio.from_simulation(a, PT, 5)
    back = aio.read(aio.write(tmp_path / "tr.h5", fp))
    np.testing.assert_array_equal(back.traces, fp.traces)
    np.testing.assert_array_equal(back.trace_components["muon"], a["trace_components"]["muon"])
    assert back.attrs["trace_bins"] == 80 and back.attrs["trace_bin_ns"] == 25.0
    merged = aio.merge_shards([aio.write(tmp_path / f"s{i}.h5", _shard(fp, i)) for i in range(2)], tmp_path / "m.h5")
    np.testing.assert_array_equal(aio.read(merged).traces, fp.traces)
    root = aio.read_root(aio.write_root(tmp_path / "tr.root", fp))  # ROOT: a traces branch of 81 x T per entry
    np.testing.assert_array_equal(root.traces, fp.traces)
    assert root.attrs["trace_bins"] == 80 and root.attrs["trace_bin_ns"] == 25.0


def _shard(fp, i):
    part = fp.subset(slice(i * 150, (i + 1) * 150))
    part.attrs.update({"events_total": 300, "shard_index": i, "shard_count": 2, "first_event": i * 150})
    return part


@pytest.mark.parametrize("case, match", [
    ("negative", "footprint/traces' row 3: negative value"),
    ("integral", "footprint/traces' row 5: station .* sums to .* but its signal is"),
    ("bins", "attribute 'trace_bins' = 60, but 'footprint/traces' has 80 bins"),
    ("nan", "footprint/traces_muon' row 2: not finite"),
])
def test_bad_traces_are_named_with_their_row(tmp_path, case, match):
    fp = aio.from_simulation(simulate(20, 3, PT, shard_events=20), PT, 3)
    good = aio.write(tmp_path / "good.h5", fp)
    with h5py.File(good, "a") as f:
        if case == "negative":
            t = f["footprint/traces"][3]
            t[fp.triggered[3]] = -t[fp.triggered[3]]
            f["footprint/traces"][3] = t
        elif case == "integral":
            t = f["footprint/traces"][5]
            t[fp.triggered[5]] *= 1.5
            f["footprint/traces"][5] = t
        elif case == "bins":
            f.attrs["trace_bins"] = 60
        else:
            t = f["footprint/traces_muon"][2]
            t[0, 0, 0] = np.nan
            f["footprint/traces_muon"][2] = t
    with pytest.raises(SimganError, match=match):
        aio.read(good)


def test_the_mass_number_is_a_model_condition_when_the_training_data_mix_masses():
    import torch

    from simgan.domains import get_domain, load_config
    from tests.conftest import REPO

    dom = get_domain("airshower")
    cfg = load_config(REPO / "configs" / "experiment" / "airshower_quickstart.yaml", ["model.width=8", "model.depth=1"])
    mixed = aio.from_simulation(simulate(200, 4, ArrayParams(mass_A=0)), ArrayParams(mass_A=0), 4)
    protons = aio.from_simulation(simulate(200, 4, ArrayParams()), ArrayParams(), 4)
    assert dom.model_args(cfg, mixed)["conditions"][-1] == "mass_A"
    assert "mass_A" not in dom.model_args(cfg, protons)["conditions"]
    c = torch.as_tensor(dom.condition_matrix(mixed)[:4])
    iron, proton = c.clone(), c.clone()
    iron[:, 5], proton[:, 5] = 56.0, 1.0
    for data, depends in ((mixed, True), (protons, False)):
        torch.manual_seed(0)
        model = dom.build_model(dom.model_args(cfg, data)).eval()
        model.fit(data.signal, data.time, data.triggered, dom.condition_matrix(data))
        outs = [model.sample(x, generator=torch.Generator().manual_seed(1)) for x in (iron, proton)]
        assert (not torch.equal(*outs)) == depends


# -- CORSIKA input --------------------------------------------------------------------------------
from simgan.domains.airshower import corsika as ck  # noqa: E402


def _sector(rng, n, r, psi, half=150.0):
    """n positions uniform in the sampling region of a station at distance r, azimuth psi."""
    rr = rng.uniform(r - half, r + half, n)
    aa = psi + rng.uniform(-half / r, half / r, n)
    return rr * np.cos(aa), rr * np.sin(aa)


def _vertical_iron(rng, thin=True):
    """A vertical 10 EeV iron shower: 2,000 muons of 1 GeV about the station at (1500, 0) m and
    3,000 electrons of 50 MeV about the one at (750, 1299) m (core at the array centre)."""
    region = 4 * 0.1 * 1500.0 * 150.0  # the converter's sampling region at 1500 m
    tank = math.pi * 1.8**2
    xm, ym = _sector(rng, 2000, 1500.0, 0.0)
    xe, ye = _sector(rng, 3000, 1500.0, math.radians(60))
    n = 5000
    ids = np.r_[np.full(2000, 6), np.full(3000, 3)]
    p_down = np.r_[np.full(2000, 1.0), np.full(3000, 0.05)]
    weight = np.r_[np.full(2000, 50 * region / tank / 2000), np.full(3000, 300 * region / tank / 3000)]
    parts = {"id": ids, "px": np.zeros(n), "py": np.zeros(n), "pz_down": p_down, "x_m": np.r_[xm, xe],
             "y_m": np.r_[ym, ye], "t_ns": 5000.0 + rng.exponential(100.0, n), "weight": weight if thin else np.ones(n)}
    return ck.Shower(5626, 1e10, 0.0, 0.0, 1400.0, 745.0, parts)


def test_corsika_particle_files_round_trip_and_particles_land_where_written(tmp_path):
    from pipeline.cli import main

    rng = np.random.default_rng(0)
    shower = _vertical_iron(rng)
    for thin in (True, False):
        path = ck.write_particle_file(tmp_path / f"DAT{int(thin)}", [shower, shower], thinning=thin)
        back = ck.read_particle_file(path)
        assert len(back) == 2 and back[1].particle_id == 5626 and back[0].xmax_gcm2 == 745.0
        np.testing.assert_array_equal(back[0].particles["id"], shower.particles["id"])
        np.testing.assert_allclose(back[0].particles["x_m"], shower.particles["x_m"], rtol=1e-6)
        np.testing.assert_allclose(back[0].particles["weight"], shower.particles["weight"] if thin else 1.0, rtol=1e-6)
    dat = ck.write_particle_file(tmp_path / "DAT000001", [shower], thinning=True)
    assert main(["convert", str(dat), "--format", "corsika", "--core", "0", "0", "--seed", "3",
                 "--out", str(tmp_path / "fp.h5")]) == 0
    fp = aio.read(tmp_path / "fp.h5")  # the reader's checks: traces sum to the signals
    assert fp.conditions["mass_A"][0] == 56 and abs(fp.conditions["log10_energy_eV"][0] - 19.0) < 1e-6
    assert fp.truth["xmax_gcm2"][0] == 745.0
    mu, em = fp.trace_components["muon"][0].sum(-1), fp.trace_components["em"][0].sum(-1)
    assert 30 < mu[5, 4] < 70 and em[5, 4] == 0  # the muons' station: about 50 muons of 1 VEM
    assert 35 < em[4, 5] < 85 and mu[4, 5] == 0  # 300 electrons of 0.2 VEM each
    others = np.ones((9, 9), bool)
    others[5, 4] = others[4, 5] = False
    assert not fp.triggered[0][others].any() and fp.triggered[0][5, 4] and fp.triggered[0][4, 5]
    # the front reaches both stations together (a vertical shower): start times within the spread
    assert abs(fp.time[0][5, 4] - fp.time[0][4, 5]) < 150
    # drawn cores: one footprint per core position, stations without particles silent
    moved = ck.corsika_footprints(dat, seed=3, cores=3)
    assert len(moved) == 3 and len(set(moved.conditions["core_x_m"])) == 3
    assert moved.signal.sum() < fp.signal.sum()  # the two lit sectors are about the centre, not these cores


def test_bad_corsika_input_is_named(tmp_path):
    from pipeline.cli import main

    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x00" * 4000)
    with pytest.raises(SimganError, match="junk.dat: not a CORSIKA particle file"):
        ck.read_particle_file(junk)
    gamma = _vertical_iron(np.random.default_rng(1))
    gamma.particle_id = 1
    path = ck.write_particle_file(tmp_path / "gamma", [gamma], thinning=True)
    with pytest.raises(SimganError, match="event 1: primary particle id 1 is not a proton or a nucleus"):
        ck.corsika_footprints(path)
    high = _vertical_iron(np.random.default_rng(1))
    high.observation_height_m = 0.0
    path = ck.write_particle_file(tmp_path / "sea", [high], thinning=True)
    assert main(["convert", str(path), "--format", "corsika", "--out", str(tmp_path / "x.h5")]) == 2
    assert not (tmp_path / "x.h5").exists()


def test_trace_validation_passes_equal_samples_and_fails_stretched_traces(tmp_path):
    from simgan.domains.airshower import validate as av

    p = ArrayParams(traces=True, trace_components=True, mass_A=0)
    ref = aio.from_simulation(simulate(600, 1, p, 300), p, 1)
    same = aio.from_simulation(simulate(600, 2, p, 300), p, 2)
    rs = av.summarise(ref)
    m = av.compare(rs, av.summarise(same), 1, 20000)
    assert m["rise_1000_deviation_max"] < 0.05 and m["trace_shape_deviation_max"] < 0.03, m
    assert "trace_rise_ns_weighted" in m["separation_power"] and m["auc"] < 0.6
    assert m["traces"]["rise_mass_slope_ns_per_ln_a"]["reference"] < 0  # iron's traces rise faster
    assert 0.4 < m["traces"]["by_distance"][3]["muon_fraction_reference"] < 0.8  # 1000-1250 m
    stretched = same.subset(np.arange(len(same)))
    pos = np.arange(stretched.traces.shape[-1]) / 1.2  # each bin reads the trace 1/1.2 of the way in
    lo, frac = np.floor(pos).astype(int), pos - np.floor(pos)
    y = stretched.traces.astype(np.float64)
    tr = y[..., lo] * (1 - frac) + y[..., np.minimum(lo + 1, y.shape[-1] - 1)] * frac
    total = tr.sum(-1, keepdims=True)
    stretched.traces = np.where(total > 0, tr * stretched.traces.sum(-1, keepdims=True) / np.maximum(total, 1e-12), 0)
    stretched.trace_components = {}
    bad = av.compare(rs, av.summarise(stretched), 1, 20000)
    assert bad["rise_1000_deviation_max"] > 0.1 and bad["trace_shape_deviation_max"] > 0.1 and bad["auc"] > 0.8
    assert np.isnan(bad["traces"]["by_distance"][3]["muon_fraction_candidate"])  # no components: no figure
    same_s = av.summarise(same)
    assert av.trace_plot(rs["stations"], same_s["stations"], rs["stations"], tmp_path, 25.0).is_file()
    no_traces = av.trace_figures(rs["stations"], None)  # a candidate without traces: no trace figures
    assert np.isnan(no_traces["rise_1000_deviation_max"]) and no_traces["traces"] is None


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_the_footprint_models_generate_traces_that_decide_signal_time_and_trigger(tmp_path, family):
    """The VAE and the hybrid WGAN-GP trained a few steps on trace files: finite, changing
    losses with the trace term; the generated traces are what the signal (their integral), the
    trigger (threshold or time over threshold) and the start time (window + t10) come from; a
    generated file passes the reader. The pure WGAN-GP refuses trace data."""
    import json

    import torch

    from simgan.domains import get_domain, load_config
    from simgan.train.trainer import Trainer
    from tests.conftest import REPO

    p = ArrayParams(traces=True, mass_A=0)
    data = aio.from_simulation(simulate(600, 8, p, 300), p, 8)
    train, val = aio.write(tmp_path / "train.h5", data.subset(slice(0, 500))), aio.write(tmp_path / "val.h5",
                                                                                        data.subset(slice(500, 600)))
    gan = ["model.likelihood_weight=1", "model.critic_width=8", "model.n_critic=1", "model.gp_every=2"]
    exp = REPO / "configs" / "experiment"
    cfg = load_config(exp / ("airshower_quickstart_gan.yaml" if family == "gan" else "airshower_quickstart.yaml"),
                      [f"runs_dir={tmp_path}", *(gan if family == "gan" else ["model.flow_steps=20"]), "model.width=8",
                       "model.depth=1",
                       "train.steps=6", "train.batch_size=32", "train.val_every=6", "train.val_events=50",
                       "train.checkpoint_every=6", "train.log_every=2", "train.mlflow=false", "train.progress=false"])
    dom = get_domain("airshower")
    info = Trainer(cfg, dom, train, val, tmp_path / "train", progress=False).fit()
    rows = [json.loads(x) for x in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    key = "loss" if family == "vae" else "likelihood"
    assert info["complete"] and all(np.isfinite(r[key]) for r in rows if key in r)
    assert len({r[key] for r in rows if key in r}) > 1
    if family == "gan":
        pure = dom.model_args(load_config(exp / "airshower_quickstart_gan.yaml", ["model.likelihood_weight=0"]), data)
        with pytest.raises(SimganError, match="pure footprint WGAN-GP .* does not generate traces"):
            dom.build_model(pure)
    from simgan.domains import model_from_checkpoint
    model, ckpt = model_from_checkpoint(tmp_path / "train" / "model.pt")
    assert ckpt["model_args"]["traces"]["bins"] == 80 and "mass_A" in ckpt["model_args"]["conditions"]
    assert len(ckpt["schema"]["channels"]) == 83 and ckpt["schema"]["channels"][3] == "trace_bin0_vem"
    test = data.subset(slice(500, 600))
    out = model.sample(torch.as_tensor(dom.condition_matrix(test)), generator=torch.Generator().manual_seed(0)).numpy()
    assert out.shape == (100, 83, 9, 9)
    gen = dom.with_samples(test, out)
    trig = gen.triggered
    np.testing.assert_allclose(gen.traces.sum(-1)[trig], gen.signal[trig], rtol=1e-4)
    spec = ckpt["model_args"]["traces"]
    tot = (gen.traces > spec["tot_threshold_vem"]).sum(-1) >= spec["tot_bins"]
    assert np.all(((gen.traces.sum(-1) >= spec["threshold_vem"]) | tot)[trig]) and trig.any()
    assert np.all(gen.traces[~trig] == 0) and np.all(gen.time[~trig] == 0)
    back = aio.read(aio.write(tmp_path / "gen.h5", gen))  # the reader's trace checks
    assert back.traces.shape == (100, 9, 9, 80)


def test_surrogate_traces_are_drawn_in_quanta_whose_spikiness_the_training_term_predicts():
    """The trace surrogates' sampler: the decay matrix is the simulator's light in bins (one
    particle per bin, its place in the bin averaged); the drawn traces integrate to the signal;
    muon-sized quanta give spikier traces than EM ones, and the spikiness the training term
    expects is what the sampler draws (a metric that could fail: it ignores the sampler's
    normalisation to the signal, which matters only at a few quanta)."""
    from types import SimpleNamespace

    import torch

    from simgan.domains.airshower.models import decay_matrix, draw_traces, expected_shape, spikiness

    tank = T.TankParams()
    spec = {"bins": 80, "bin_ns": 25.0, "pe_per_vem": 95.0, "noise_vem": 0.002, "em_vem": 0.05, "decay_ns": 65.0}
    model = SimpleNamespace(trace=spec, decay=decay_matrix(80, 25.0, 65.0))
    n = 20000
    t = 3 * 25.0 + np.random.default_rng(0).uniform(0, 25.0, n)
    light = T._light_in_bins(np.zeros(n, int), t, np.ones(n), 1, tank)[0] / n
    np.testing.assert_allclose(model.decay[3].numpy(), light, atol=3e-3)
    bins = torch.arange(80.0)
    arrival = torch.exp(-0.5 * ((bins - 10) / 4.0) ** 2)
    arrival = (arrival / arrival.sum()).expand(3000, 1, 80).contiguous()
    g = torch.Generator().manual_seed(1)
    spikes = {}
    for signal, share in ((5.0, 0.5), (30.0, 0.9), (30.0, 0.05)):
        s, f, q = torch.full((3000, 1), signal), torch.full((3000, 1), share), torch.full((3000, 1), 1.1)
        drawn = draw_traces(model, s, arrival, f, q, g)
        assert (drawn >= 0).all() and abs(float(drawn.sum(-1).mean()) / signal - 1) < 0.01
        observed = float((drawn / drawn.sum(-1, keepdim=True)).square().sum(-1).mean())
        expected = float(spikiness(model, arrival[:1], f[:1], s[:1], q[:1]))
        assert abs(observed / expected - 1) < 0.05, (signal, share, observed, expected)
        spikes[share] = observed
    smooth = float(expected_shape(model, arrival[:1])[0].square().sum())  # the expected shape's own
    assert spikes[0.9] - smooth > 5 * (spikes[0.05] - smooth) > 0
