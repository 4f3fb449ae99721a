"""The GAN's factorised output and critic features, checked against the data and the metrics."""

import numpy as np
import pytest
import torch

from simgan.domains.calorimeter.data import calochallenge as cc
from simgan.domains.calorimeter.features import feature_names, high_level_features
from simgan.domains.calorimeter.models.gan import ConditionalGAN, GANConfig


def _model(data, **over):
    layer_voxels = [l.n_voxels for l in data.binning.layers if l.n_voxels]
    m = ConditionalGAN(GANConfig(hidden=[16], critic_hidden=[16], **over), data.binning.n_voxels, layer_voxels,
                       threshold_mev=0.01515)
    m.fit(data.energies, data.showers, None, data.binning)
    return m, layer_voxels


def test_factorised_head_response_and_layer_shares_are_exact(g4_sample):
    data = cc.read(g4_sample)
    m, layer_voxels = _model(data, output="factorised")
    head = m.generator[1]
    raw = torch.randn(5, 1 + len(layer_voxels) + data.binning.n_voxels)
    u = head(raw)
    t = m.transform
    y = torch.exp(u.double() * t.std.double() + t.mean.double()) - t.eps  # x / E_inc, before the clamp
    response = torch.exp(raw[:, 0].double() * float(t.r_std) + float(t.r_mean))
    torch.testing.assert_close(y.sum(1), response, rtol=1e-4, atol=0)
    shares = torch.softmax(raw[:, 1:1 + len(layer_voxels)].double(), 1)
    per_layer = y.reshape(5, len(layer_voxels), -1).sum(2) / response[:, None]
    torch.testing.assert_close(per_layer, shares, rtol=1e-4, atol=1e-7)
    # the response statistics are those of the thresholded training showers
    x = np.where(data.showers >= 0.01515, data.showers, 0)
    assert abs(float(t.r_mean) - np.log(x.sum(1) / data.energies).mean()) < 1e-5


def test_critic_features_match_the_validation_features(g4_sample):
    data = cc.read(g4_sample, max_events=50)
    m, layer_voxels = _model(data, critic_features=True)
    u = m.transform.encode(torch.as_tensor(data.showers), torch.as_tensor(data.energies))
    got = m.view.raw_features(u).double().numpy()
    ref = high_level_features(data.showers, data.energies, data.binning, threshold_mev=0.01515)
    names = feature_names(data.binning)
    col = {n: ref[:, i] for i, n in enumerate(names)}
    n_layers = len(layer_voxels)
    np.testing.assert_allclose(np.exp(got[:, 0]) - 1e-7, col["etot_over_einc"], rtol=1e-4)
    for i in (0, 10, 20):
        np.testing.assert_allclose(np.exp(got[:, 1 + i]) - 1e-7, col[f"e_layer_{i:02d}"] / data.energies,
                                   rtol=1e-3, atol=1e-9)
        np.testing.assert_allclose(got[:, 1 + n_layers + i], col[f"ce_x_layer_{i:02d}"], atol=1e-2)
        np.testing.assert_allclose(got[:, 1 + 5 * n_layers + i], col[f"width_y_layer_{i:02d}"], atol=2e-2)
    # standardised on the training set, and the critic sees voxels then features
    view = m.view(u)
    assert view.shape == (50, data.binning.n_voxels + m.view.n_features)
    assert torch.isfinite(view).all()
    # gradients flow to the voxels through the features, finite also for empty layers
    uu = u[:4].clone().requires_grad_(True)
    m.view(uu)[:, data.binning.n_voxels:].sum().backward()
    assert torch.isfinite(uu.grad).all() and uu.grad.abs().sum() > 0


def test_gaussian_vae_samples_around_the_decoder_mean(g4_sample):
    from simgan.domains.calorimeter.models.vae import ConditionalVAE, VAEConfig

    data = cc.read(g4_sample, max_events=40)
    layer_voxels = [l.n_voxels for l in data.binning.layers if l.n_voxels]
    m = ConditionalVAE(VAEConfig(hidden=[16], latent_dim=4, likelihood="gaussian"), data.binning.n_voxels,
                       layer_voxels, threshold_mev=0.01515)
    m.fit(data.energies, data.showers, None, data.binning)
    assert m.noise_dim == 4 + data.binning.n_voxels
    cond = m.transform.cond(torch.full((3,), 5000.0, dtype=torch.float64))
    z = torch.randn(3, 4)
    net = m.sampling_net()
    with torch.no_grad():
        mean = m.decoder(torch.cat([z, cond], 1))[:, :data.binning.n_voxels]
        at_mean = net(torch.cat([z, torch.zeros(3, data.binning.n_voxels), cond], 1))
        drawn = net(torch.cat([z, torch.randn(3, data.binning.n_voxels), cond], 1))
    torch.testing.assert_close(at_mean, mean)
    assert (drawn - mean).abs().mean() > 0.1  # the per-voxel spread is used, not only the mean
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    e = torch.full((4,), 5000.0, dtype=torch.float64)
    assert not torch.equal(m.sample(e, None, g1), m.sample(e, None, g2))


def test_zero_inflated_vae_draws_empty_voxels_by_the_hit_probability(g4_sample):
    from simgan.domains.calorimeter.models.vae import ConditionalVAE, VAEConfig

    data = cc.read(g4_sample, max_events=40)
    layer_voxels = [l.n_voxels for l in data.binning.layers if l.n_voxels]
    V = data.binning.n_voxels
    m = ConditionalVAE(VAEConfig(hidden=[16], latent_dim=4), V, layer_voxels, threshold_mev=0.01515)
    m.fit(data.energies, data.showers, None, data.binning)
    assert m.cfg.likelihood == "zero_inflated" and m.noise_dim == 4 + 2 * V
    u = m.transform.encode(torch.as_tensor(data.showers), torch.as_tensor(data.energies))
    x = np.where(data.showers >= 0.01515, data.showers, 0)
    np.testing.assert_array_equal(m.hits(u).numpy(), x > 0)  # hits are the voxels above threshold
    with torch.no_grad():
        m.decoder[-1].bias[2 * V:] = 0.0  # p_hit = 1/2 everywhere
        m.decoder[-1].weight[2 * V:] = 0.0
        cond = m.transform.cond(torch.full((200,), 5000.0, dtype=torch.float64))
        u = m.sampling_net()(torch.cat([torch.randn(200, 4 + 2 * V), cond], 1))
    t = m.transform
    empty = (np.log(t.eps) - t.mean) / t.std
    frac = (u != empty).float().mean().item()
    assert 0.45 < frac < 0.55


# -- the two-stage models ------------------------------------------------------------------------

def _layered(data, family="vae", **over):
    from simgan.domains import load_config
    from simgan.domains.calorimeter.models.registry import build_model
    from tests.conftest import QUICKSTART

    cfg = load_config(QUICKSTART, [f"model=calorimeter/{'vae' if family == 'vae' else 'wgan_gp'}", "model.hidden=[16,16]",
                                   "model.energy.hidden=[16,16]", *[f"model.{k}={v}" for k, v in over.items()]])
    layer_voxels = [l.n_voxels for l in data.binning.layers if l.n_voxels]
    torch.manual_seed(0)
    m = build_model(cfg.model, data.binning.n_voxels, layer_voxels, 0, 0.01515)
    tables = m.fit(data.energies, data.showers, None, data.binning)
    return m, tables, layer_voxels


@pytest.mark.parametrize("order", ["cumulative", "remaining"])
def test_u_parametrisation_inverts_exactly(g4_sample, order):
    from simgan.domains.calorimeter.models.energy import layer_energies
    data = cc.read(g4_sample, max_events=80)
    m, _, lv = _layered(data, **{"energy.order": order})
    e = torch.as_tensor(layer_energies(data.showers, lv, 0.01515))
    e_inc = torch.as_tensor(data.energies)
    v = m.energy.to_v(e, e_inc, torch.zeros_like(e)).double()
    back = m.energy.from_v(v, e_inc)
    assert (e == 0).any()  # deep layers of low-energy showers are empty and must stay so
    torch.testing.assert_close(back, e, rtol=1e-5, atol=1e-6)
    # with the dequantisation noise (below 1e-3 x threshold per layer) empty layers stay empty too
    noisy = m.energy.from_v(m.energy.to_v(e, e_inc, torch.rand(e.shape, dtype=torch.float64)).double(), e_inc)
    assert torch.equal(noisy == 0, e == 0)


def test_fast_coupling_sampler_equals_zuko(g4_sample):
    from simgan.domains.calorimeter.models.energy import CouplingSampler
    data = cc.read(g4_sample, max_events=50)
    m, _, _ = _layered(data, **{"energy.transforms": 3})
    with torch.no_grad():
        for p in m.energy.flow.parameters():  # away from the near-identity initialisation
            p.add_(0.05 * torch.randn_like(p))
        c, z = torch.randn(500, m.transform.cond_dim), torch.randn(500, m.n_layers)
        ref = m.energy.flow(c).transform.inv(z)
        got = CouplingSampler.of(m.energy)(c, z)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_shape_model_fed_geant4_layer_energies_returns_them_exactly(g4_sample, family):
    from simgan.domains.calorimeter.models.energy import layer_energies
    data = cc.read(g4_sample, max_events=60)
    m, _, lv = _layered(data, family)
    e = layer_energies(data.showers, lv, 0.01515)
    g = torch.Generator().manual_seed(1)
    x = m.sample(torch.as_tensor(data.energies), None, g, layer_energies=torch.as_tensor(e)).numpy()
    assert x.shape == data.showers.shape
    assert ((x == 0) | (x >= 0.01515)).all()  # nothing below the readout threshold
    np.testing.assert_allclose(layer_energies(x, lv, 0.01515), e, rtol=1e-4, atol=1e-4)
    # the full chain: layer energies from the flow, every one kept by the shapes
    y = m.sample(torch.as_tensor(data.energies), None, g).numpy()
    assert np.isfinite(y).all() and ((y == 0) | (y >= 0.01515)).all()


def test_layered_tables_hold_shares_and_conditions(g4_sample):
    data = cc.read(g4_sample, max_events=40)
    m, tables, lv = _layered(data)
    shares, lcond = tables["layers"]
    torch.testing.assert_close(shares.sum(1), torch.ones(len(shares)), rtol=1e-5, atol=1e-5)
    assert lcond.shape == (len(shares), m.lcond_dim)
    e_layers, e_inc, cond = tables["showers"]
    assert e_layers.shape == (40, len(lv)) and int((e_layers >= 0.01515).sum()) == len(shares)
    # the layer index and energy are recoverable from the condition the shape network sees
    sid, lid = torch.nonzero(e_layers >= 0.01515, as_tuple=True)
    assert torch.equal(m.layer_index_of(lcond), lid)
    torch.testing.assert_close(m.layer_energy_of(lcond).double(), e_layers[sid, lid], rtol=1e-4, atol=1e-4)


def test_the_whole_shower_critic_sees_every_layer(g4_sample):
    """critic=shower judges every layer of a shower at once: moving energy between two voxels of
    one deep layer of one shower changes that shower's score and no other's; the generator's
    fake showers are empty exactly where the layer energies are."""
    data = cc.read(g4_sample, max_events=24)
    m, tables, lv = _layered(data, "gan", critic="shower", critic_hidden="[16]", shower_channels=8,
                             shower_latent_dim=4)
    whole, scond = tables["whole"]
    assert whole.shape == (24, len(lv) * max(lv)) and scond.shape == (24, m.transform.cond_dim + len(lv))
    e_layers = tables["showers"][0]
    x = whole.reshape(24, len(lv), -1)
    assert torch.equal(x.sum(2) > 0, e_layers >= m.floor)  # every full layer's shares, nothing else

    def score(w):
        with torch.no_grad():
            return m.critic(torch.cat([m.critic_view(w, scond), scond], 1))[:, 0]

    deep = int(torch.nonzero(e_layers[0] >= m.floor)[-1])  # the deepest layer of shower 0 with energy
    assert deep >= 25
    moved = x.clone()
    hit = torch.nonzero(moved[0, deep] > 0)[:, 0]
    a, b = int(hit[0]), int(moved[0, deep].argmin())  # half of one hit voxel's share moves to an empty one
    moved[0, deep, b] += moved[0, deep, a] / 2
    moved[0, deep, a] /= 2
    before, after = score(whole), score(moved.reshape(24, -1))
    assert abs(float(after[0] - before[0])) > 1e-6
    torch.testing.assert_close(after[1:], before[1:])
    g = torch.Generator().manual_seed(0)
    fake = m.fake(scond, g).reshape(24, len(lv), -1)
    assert torch.equal(fake.sum(2) > 0.5, e_layers >= m.floor)
    torch.testing.assert_close(fake.sum(2)[e_layers >= m.floor], torch.ones(int((e_layers >= m.floor).sum())))


@pytest.fixture(scope="module")
def hybrid(g4_sample):
    """A two-stage GAN with the hit-spectrum and likelihood terms, fitted on 60 Geant4 showers."""
    data = cc.read(g4_sample, max_events=60)
    m, tables, _ = _layered(data, "gan", spectrum_weight=1.0, likelihood_weight=1.0)
    return m, tables


def test_hit_spectrum_term_is_zero_for_the_real_layers_and_sees_a_distorted_spectrum(hybrid):
    """The GAN's hit-spectrum term (model.spectrum_weight): near zero for real against real,
    large when the hits' energies are spread (shares squared: faint hits fainter) or half the
    hits are missing, with gradients."""
    m, tables = hybrid
    shares, lcond = tables["layers"]
    assert float(m.spectrum_distance(shares, shares, lcond)) < 1e-4  # (the fake side weighs hits by the soft threshold)
    spread = (shares**2).requires_grad_(True)
    d = m.spectrum_distance(spread / spread.sum(1, keepdim=True), shares, lcond)
    assert float(d.detach()) > 0.1
    d.backward()
    assert torch.isfinite(spread.grad).all() and spread.grad.abs().sum() > 0
    fewer = torch.where(torch.rand(shares.shape, generator=torch.Generator().manual_seed(0)) < 0.5, shares, 0.0)
    assert float(m.spectrum_distance(fewer / fewer.sum(1, keepdim=True).clamp_min(1e-30), shares, lcond)) > 0.1


def test_the_critic_sees_a_voxel_below_the_threshold_as_empty(hybrid):
    m, tables = hybrid
    shares, lcond = tables["layers"]
    e = m.layer_energy_of(lcond)
    row = int(e.argmax())
    empty = int(torch.nonzero(shares[row] == 0)[0, 0])
    view = {}
    for name, mev in (("faint", 0.1 * 0.01515), ("hit", 10 * 0.01515), ("none", 0.0)):
        s = shares[row:row + 1].clone()
        s[0, empty] = mev / e[row]
        view[name] = float(m.critic_view(s / s.sum(), lcond[row:row + 1])[0, empty])
    assert view["none"] == -1.0 and abs(view["faint"] + 1) < 0.01 and view["hit"] > -0.5


def test_the_likelihood_term_trains_the_encoder_and_the_generator(hybrid):
    m, tables = hybrid
    shares, lcond = tables["layers"]
    m.zero_grad()
    loss = m.likelihood(shares[:200], lcond[:200], torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    for net in (m.encoder, m.generator):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    opts = m.make_optimizers()
    assert set(opts) == {"energy", "g", "d"}
    assert sum(p.numel() for g in opts["g"].param_groups for p in g["params"]) == \
        sum(p.numel() for net in (m.encoder, m.generator) for p in net.parameters())


def test_layered_config_errors():
    from simgan.domains import load_config
    from simgan.domains.calorimeter.models.layered import LayeredVAE
    from simgan.errors import SimganError
    from tests.conftest import QUICKSTART
    cfg = load_config(QUICKSTART, ["model.likelihood=mse"])
    with pytest.raises(SimganError, match="zero-inflated"):
        LayeredVAE(cfg.model, 6480, [144] * 45, 0, 0.01515)
    with pytest.raises(SimganError, match="at least 2 layers"):
        LayeredVAE(load_config(QUICKSTART).model, 144, [144], 0, 0.01515)


def test_calibration_maps_kept_shares_and_keeps_layer_energies(g4_sample):
    """Fitted on one sample against a distorted copy of itself, the per-layer calibration pulls
    the shares back; layer energies stay exact and nothing falls below the threshold."""
    from simgan.domains.calorimeter.models.energy import layer_energies
    from simgan.domains.calorimeter.models.layered import _log_shares
    data = cc.read(g4_sample, max_events=120)
    m, _, lv = _layered(data)
    e = torch.as_tensor(layer_energies(data.showers, lv, 0.01515))
    g = torch.Generator().manual_seed(3)
    gen = m.sample(torch.as_tensor(data.energies), None, g, layer_energies=e, calibrated=False).numpy()
    info = m.fit_calibration(data.showers, gen, min_hits=50)
    assert info["layers_fitted"] > 10 and bool(m.calibrated)
    g = torch.Generator().manual_seed(3)
    cal = m.sample(torch.as_tensor(data.energies), None, g, layer_energies=e).numpy()
    np.testing.assert_allclose(layer_energies(cal, lv, 0.01515), e.numpy(), rtol=1e-4, atol=1e-4)
    assert ((cal == 0) | (cal >= 0.01515)).all()
    # the calibrated shares follow the simulation's in a well-populated layer
    layer = 5
    sim, raw, fixed = (np.sort(_log_shares(x, lv, 0.01515)[layer]) for x in (data.showers, gen, cal))
    q = np.linspace(0.1, 0.9, 9)
    assert np.abs(np.quantile(fixed, q) - np.quantile(sim, q)).mean() < np.abs(np.quantile(raw, q) - np.quantile(sim, q)).mean()


def test_sampling_into_a_reused_buffer_and_the_threshold_rule(g4_sample):
    """`out` receives exactly what a fresh call returns (a dirty buffer is cleared); a wrong
    buffer is refused by name; a layer whose every hit would fall below the readout threshold
    keeps only its largest."""
    from simgan.errors import SimganError
    data = cc.read(g4_sample, max_events=40)
    m, _, lv = _layered(data)
    e = torch.as_tensor(data.energies)
    fresh = m.sample(e, None, torch.Generator().manual_seed(5))
    buf = torch.full_like(fresh, 7.0)
    again = m.sample(e, None, torch.Generator().manual_seed(5), out=buf)
    assert again.data_ptr() == buf.data_ptr() and torch.equal(again, fresh)
    with pytest.raises(SimganError, match=r"out: expected a float32 tensor of shape \(40, 6480\)"):
        m.sample(e, None, out=torch.zeros(39, 6480))
    # three layers of 10 hits, weights 0.5 but one of 1 (the largest, as draw_voxels scales them)
    row = torch.arange(3).repeat_interleave(10)
    idx = torch.arange(30)
    w = torch.where(idx % 10 == torch.tensor([3, 4, 7]).repeat_interleave(10), 1.0, 0.5)
    e_layer = torch.tensor([0.1, 10.0, 0.05])  # MeV; the threshold is 0.01515 MeV
    r, i, _ = m._above_threshold(row, idx, w, e_layer)
    assert i[r == 0].tolist() == [3]  # 0.1 MeV over weights 5.5: 0.018 MeV for the largest, 0.009 for the rest
    assert (r == 1).sum() == 10  # 10 MeV: every hit far above the threshold
    assert i[r == 2].tolist() == [27]  # 0.05 MeV: even the largest (0.009 MeV) is below; it alone stays
