"""The GAN's factorised output and critic features, checked against the data and the metrics."""

import numpy as np
import torch

from simgan.data import calochallenge as cc
from simgan.metrics.features import feature_names, high_level_features
from simgan.models.gan import ConditionalGAN, GANConfig


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
    from simgan.models.vae import ConditionalVAE, VAEConfig

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
    from simgan.models.vae import ConditionalVAE, VAEConfig

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
