"""Conditional GANs: WGAN-GP (default), and the seed baselines as configs of the same code.

loss=wgan_gp     gradient penalty on interpolates, n_critic critic steps, Adam
loss=bce         non-saturating GAN with binary cross-entropy
loss=wgan_clip   WGAN with weight clipping (RMSProp, c=0.01, n_critic=5)

output=layers      two stages (simgan.domains.calorimeter.models.layered): an energy flow for the response and
                   the layer energies, then a generator of each layer's voxel shares
                   conditioned on them, against a critic per layer
output=voxel       the generator writes every voxel's normalised log energy
output=factorised  the generator writes the response log(E_tot/E_inc), a share per layer
                   (softmax over layers) and a share per voxel within its layer (softmax
                   per layer); their product is the shower, so the total energy is one
                   output rather than a sum over 6480 of them; the critic then sees
                   log voxel energies on one global scale
critic_features    the critic also sees the high-level features computed
                   differentiably from it (log response, log layer energies, centres and
                   widths of energy per layer), standardised on the training set and
                   passed through asinh so that far-off features stay bounded
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from simgan.domains.calorimeter.models.energy import EnergyFlowConfig
from simgan.schema import ConfigModel


class GANConfig(ConfigModel):

    family: Literal["gan"] = "gan"
    loss: Literal["wgan_gp", "bce", "wgan_clip"] = "wgan_gp"
    arch: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = Field(64, gt=0)
    hidden: list[int] = [256, 512]
    critic_hidden: list[int] = [512, 256]
    gp_lambda: float = Field(10.0, ge=0)
    # the gradient penalty on every gp_every-th critic step only, weighted gp_every times (lazy
    # regularisation, as StyleGAN2's): its double backward is most of a critic step's cost on a CPU
    gp_every: int = Field(1, gt=0)
    n_critic: int = Field(5, gt=0)
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.9)
    clip_value: float = Field(0.01, gt=0)
    energy_aux_weight: float = Field(0.0, ge=0)
    output: Literal["voxel", "factorised", "layers"] = "voxel"
    critic_features: bool = False
    # output=layers: how much the critic's standardised layer features weigh against the
    # voxels (the gradient penalty bounds the critic's slope in this space)
    critic_feature_weight: float = Field(1.0, gt=0)
    # output=layers: what the critic judges. layer: one layer at a time (its log shares and
    # features). shower: every layer of a shower at once (each layer's log shares and features,
    # embedded by one network, then convolutions along the depth), conditioned on E_inc and the
    # layer energies, so the longitudinal correlations of centres, widths and sparsity count
    critic: Literal["layer", "shower"] = "layer"
    shower_batch: int = Field(64, gt=0)  # critic=shower: showers per critic and generator step
    shower_channels: int = Field(64, gt=0)  # critic=shower: width of the per-layer embedding and convolutions
    # a latent shared by the layers of one shower (0: none), beside each layer's own latent_dim
    shower_latent_dim: int = Field(0, ge=0)
    # output=layers: weight of the hit-spectrum term beside the critic in the generator's loss
    # (0: none): the squared distance between the Gaussian-smoothed histograms of log hit energy
    # per layer of the real batch and of the fake drawn for its conditions, in four groups of
    # layer energy: an MMD with a Gaussian kernel on the hit energies, as the BIB-AE's
    # post-processor matched its hit-energy spectrum
    spectrum_weight: float = Field(0.0, ge=0)
    # output=layers: whether each voxel has randomness of its own given the latent, as the VAE's
    # likelihood has (hits drawn by Bernoulli, log shares by a Gaussian whose width the
    # generator writes); false: a voxel is hit where the generator's hit probability is above
    # one half and its log share is the generator's mean, so a layer's randomness is its
    # latent alone
    voxel_noise: bool = True
    # output=layers: weight of a likelihood term beside the critic (0: none). An encoder reads a
    # real layer, the generator decodes its code, and the term is the zero-inflated log-normal
    # negative log-likelihood of the real shares plus the code's KL divergence from the prior
    # (the VAE's loss), so the generator is the decoder of a VAE that the critic also trains: a
    # VAE-GAN hybrid in the manner of the BIB-AE; sampling draws the code from the prior
    likelihood_weight: float = Field(0.0, ge=0)
    energy: EnergyFlowConfig = EnergyFlowConfig()  # output=layers: the energy stage


import math  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from simgan.domains.calorimeter.features import layer_moments  # noqa: E402
from simgan.domains.calorimeter.models.base import ConditionalSurrogate  # noqa: E402
from simgan.domains.calorimeter.models.blocks import body  # noqa: E402
from simgan.domains.calorimeter.models.preprocess import ShowerTransform  # noqa: E402
from simgan.models.adversarial import adversarial_step, gan_optimizers  # noqa: E402


class FactorisedHead(nn.Module):
    """raw (B, 1 + L + V) -> u: log(x/E_inc) = log response + log layer share + log voxel share."""

    def __init__(self, transform: ShowerTransform, layer_voxels: list[int]):
        super().__init__()
        self.layer_voxels = list(layer_voxels)
        self.register_buffer("layer_index", torch.repeat_interleave(torch.arange(len(layer_voxels)),
                                                                    torch.as_tensor(layer_voxels)))
        object.__setattr__(self, "transform", transform)  # shared, registered by the model

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        # not clamped to the training range here (decoding does that): a clamp would drop the
        # energy sent to a voxel Geant4 never hit, and with it the gradient that moves it back
        t = self.transform
        with torch.autocast(device_type=raw.device.type, enabled=False):
            raw = raw.float()
            n_layers = len(self.layer_voxels)
            log_r = raw[:, :1] * t.r_std + t.r_mean
            log_layer = torch.log_softmax(raw[:, 1:1 + n_layers], 1)
            vox = raw[:, 1 + n_layers:]
            if len(set(self.layer_voxels)) == 1:
                log_vox = torch.log_softmax(vox.reshape(len(raw), n_layers, -1), 2).reshape(len(raw), -1)
            else:
                log_vox = torch.cat([torch.log_softmax(v, 1) for v in torch.split(vox, self.layer_voxels, 1)], 1)
            log_x = log_r + log_layer[:, self.layer_index] + log_vox
            return t.from_log_fraction(torch.logaddexp(log_x, torch.tensor(math.log(t.eps), device=raw.device)))


class CriticView(nn.Module):
    """u -> what the critic sees, differentiable and in fp32: every voxel's log(x/E_inc + eps)
    on one global scale to [-1, 1] (per-voxel standardisation would magnify the generator's
    deviations in voxels that Geant4 rarely hits by 1/spread), then, with `features`, the
    shower's standardised high-level features."""

    def __init__(self, transform: ShowerTransform, layer_voxels: list[int], features: bool = True):
        super().__init__()
        self.layer_voxels = list(layer_voxels)
        n_feat = 1 + 7 * len(layer_voxels) if features else 0
        self.register_buffer("coords", torch.zeros(3, sum(layer_voxels)))
        self.register_buffer("feat_mean", torch.zeros(n_feat))
        self.register_buffer("feat_std", torch.ones(n_feat))
        object.__setattr__(self, "transform", transform)

    @property
    def n_features(self) -> int:
        return self.feat_mean.numel()

    def raw_features(self, u: torch.Tensor) -> torch.Tensor:
        t = self.transform
        y = t.fraction(u)  # x / E_inc
        # a layer below 1e-8 E_inc holds no voxel above any realistic threshold: empty
        e, mean, width = layer_moments(y, self.layer_voxels, self.coords, width_eps=1e-4, empty_below=1e-8)
        log_r = torch.log(y.sum(1, keepdim=True) + 1e-7)
        return torch.cat([log_r, torch.log(e + 1e-7), *mean, *width], 1)

    def fit(self, u: torch.Tensor, coords: torch.Tensor, block: int = 4096) -> None:
        self.coords.copy_(coords)
        if not self.n_features:
            return
        f = torch.cat([self.raw_features(u[i:i + block]) for i in range(0, len(u), block)]).double()
        self.feat_mean.copy_(f.mean(0))
        # a floor on the spread: features nearly constant in Geant4 (a deep layer's centre at
        # low energy) must not turn the generator's small deviations into huge critic inputs
        self.feat_std.copy_(f.std(0).clamp_min(0.05))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        t = self.transform
        with torch.autocast(device_type=u.device.type, enabled=False):
            log_eps = math.log(t.eps)
            voxels = 2 * (t.log_fraction(u) - log_eps) / -log_eps - 1
            if not self.n_features:
                return voxels
            # asinh: linear near the training distribution, logarithmic far from it
            f = torch.asinh((self.raw_features(u) - self.feat_mean) / self.feat_std)
            return torch.cat([voxels, f], 1)


class ConditionalGAN(ConditionalSurrogate):
    """Generator G(z, c) and critic D(x, c); x lives in the transform's normalised space."""

    family = "gan"

    def __init__(self, cfg: GANConfig, n_voxels: int, layer_voxels: list[int], n_extra: int = 0,
                 threshold_mev: float = 0.0):
        super().__init__(cfg, n_voxels, n_extra, threshold_mev)
        c = self.transform.cond_dim
        if cfg.output == "factorised":
            net = body(cfg.arch, cfg.latent_dim + c, cfg.hidden, 1 + len(layer_voxels) + n_voxels, layer_voxels)
            self.generator = nn.Sequential(net, FactorisedHead(self.transform, layer_voxels))
        else:
            self.generator = body(cfg.arch, cfg.latent_dim + c, cfg.hidden, n_voxels, layer_voxels)
        use_view = cfg.critic_features or cfg.output == "factorised"
        self.view = CriticView(self.transform, layer_voxels, cfg.critic_features) if use_view else None
        n_view = n_voxels + (self.view.n_features if self.view is not None else 0)
        self.critic = body(cfg.arch, n_view + c, cfg.critic_hidden, 1, layer_voxels)
        # what the trainer runs (DDP wrappers under torchrun); kept out of the module registry
        # so that state_dict keys do not depend on how the model is run
        object.__setattr__(self, "g_run", self.generator)
        object.__setattr__(self, "d_run", self.critic)

    def generate_u(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(len(cond), self.cfg.latent_dim, generator=generator, device=cond.device)
        return self.g_run(torch.cat([z, cond], 1))

    def run_modules(self) -> dict[str, nn.Module]:
        return {"g_run": self.generator, "d_run": self.critic}

    # what the adversarial step needs
    def real_batch(self, batches):
        return next(batches)

    def fake(self, cond: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.generate_u(cond, generator)

    def sampling_net(self) -> nn.Module:
        return self.generator

    def fit(self, energies, showers, extra, binning) -> dict:
        tables = super().fit(energies, showers, extra, binning)
        if self.view is not None:
            self.view.fit(tables["main"][0], torch.as_tensor(np.stack(binning.voxel_xy), dtype=torch.float32))
        return tables

    def critic_view(self, u: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """What the critic sees of a shower; the gradient penalty lives in this space too."""
        return self.view(u) if self.view is not None else u

    def generator_aux(self, fake: torch.Tensor, real: torch.Tensor, cond: torch.Tensor, generator=None,
                      step: int = 0) -> dict[str, torch.Tensor]:
        """The energy aid (model.energy_aux_weight) beside the critic."""
        if self.cfg.energy_aux_weight <= 0:
            return {}
        return {"energy_aux": self.cfg.energy_aux_weight * self.energy_aux(fake, real)}

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return gan_optimizers(self.cfg, self.generator, self.critic)

    def train_step(self, batches, opts, step: int, autocast, gens) -> dict[str, float]:
        return adversarial_step(self, batches, opts, autocast, gens, step)
