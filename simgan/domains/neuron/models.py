"""Conditional surrogates of neuron projection images: a VAE and a WGAN-GP, convolutional.

Model view: v = log1p(x / 1 um) per pixel (0 where empty), one channel of 64 x 64. Conditions:
the cell class (a learned embedding in the generator/decoder, one-hot where a network only
reads it) and the growth randomness ((r - 0.25) / 0.15). Every network also sees two
coordinate channels (row, column relative to the soma pixel): the images are anchored at the
soma, so where a pixel lies matters.

The VAE's decoder gives each pixel the probability that it holds neurite and, if it does, a
Gaussian for v (zero-inflated, as the calorimeter's voxels); the GAN's generator ends in a
ReLU, so empty pixels are exactly empty. With model.likelihood_weight > 0 the GAN is a VAE-GAN
hybrid (Larsen et al. 2016): its generator is the VAE's decoder, trained by the critic, which
sees the pixels as drawn (straight-through gradients of the hit probabilities), and by the
VAE's likelihood through an encoder; it samples as the VAE does.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from simgan.models.adversarial import AdversarialModel
from simgan.models.latent import code_flow, codes_from_noise, fit_code_flow, kl_normal, kl_weight
from simgan.schema import ConfigModel

CONDITIONS = ("cell_class", "randomness")
N_CLASSES = 3
SCALE_UM = 1.0


class NeuronVAEConfig(ConfigModel):
    family: Literal["neuron_vae"] = "neuron_vae"
    latent_dim: int = Field(32, gt=0)
    width: int = Field(16, gt=0)  # channels at 1/4 of the image size (half at 1/2; 2x, 4x at 1/8, 1/16)
    embed_dim: int = Field(8, gt=0)
    lr: float = Field(1e-3, gt=0)
    beta: float = Field(1.0, ge=0)
    kl_warmup_steps: int = Field(500, ge=0)
    # where generation draws the code: the N(0, 1) prior, or a conditional flow fitted after
    # training to the encoder's means on the training split (for a small beta, whose codes
    # leave the prior's holes; ex-post density estimation)
    latent_sampler: Literal["prior", "flow"] = "prior"
    flow_steps: int = Field(3000, gt=0)
    # > 0: hits drawn with noise correlated over this many pixels (same per-pixel probabilities)
    pixel_correlation: float = Field(0.0, ge=0, le=8)


class NeuronGANConfig(ConfigModel):
    family: Literal["neuron_gan"] = "neuron_gan"
    loss: Literal["wgan_gp"] = "wgan_gp"  # read by the shared adversarial step and optimisers
    latent_dim: int = Field(64, gt=0)
    width: int = Field(32, gt=0)
    critic_width: int = Field(32, gt=0)
    embed_dim: int = Field(8, gt=0)
    gp_lambda: float = Field(10.0, ge=0)
    # the gradient penalty on every gp_every-th critic step only, weighted gp_every times (lazy
    # regularisation, as StyleGAN2's): its double backward is most of a critic step's cost on a CPU
    gp_every: int = Field(1, gt=0)
    n_critic: int = Field(5, gt=0)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.9)
    # > 0: the VAE-GAN hybrid; the weight of the VAE's loss (per-pixel likelihood + beta KL,
    # ramped over kl_warmup_steps) beside the critic's in the generator's loss
    likelihood_weight: float = Field(0.0, ge=0)
    beta: float = Field(1.0, ge=0)
    kl_warmup_steps: int = Field(500, ge=0)
    # the hybrid: hits drawn with noise correlated over this many pixels (as the VAE's)
    pixel_correlation: float = Field(0.0, ge=0, le=8)


def to_view(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) um per pixel -> (N, 1, H, W) log1p(x / 1 um)."""
    return torch.log1p(images.clamp(min=0) / SCALE_UM)[:, None]


def from_view(v: torch.Tensor) -> torch.Tensor:
    return torch.expm1(v.clamp(min=0))[:, 0] * SCALE_UM


def condition_array(cell_class: np.ndarray, randomness: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(cell_class, np.float32), np.asarray(randomness, np.float32)], 1)


def one_hot_vector(c: torch.Tensor) -> torch.Tensor:
    """(N, 2) (class index, randomness) -> (N, 4) one-hot class and scaled randomness."""
    oh = nn.functional.one_hot(c[:, 0].long().clamp(0, N_CLASSES - 1), N_CLASSES).to(c.dtype)
    return torch.cat([oh, ((c[:, 1] - 0.25) / 0.15)[:, None]], 1)


def coords(n: int, size: int, soma: tuple[int, int], device, dtype) -> torch.Tensor:
    r = (torch.arange(size, device=device, dtype=dtype) - soma[0]) / (size / 2)
    c = (torch.arange(size, device=device, dtype=dtype) - soma[1]) / (size / 2)
    grid = torch.stack(torch.meshgrid(r, c, indexing="ij"))
    return grid[None].expand(n, -1, -1, -1)


def down(c_in: int, c_out: int, refine: bool) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
    if refine:
        layers += [nn.Conv2d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


class Up(nn.Module):
    """x2 upsampling; the coordinate channels and the condition are appended before the
    convolution(s) (two at the coarse scales, one at the fine: the cost is at 64 x 64)."""

    def __init__(self, c_in: int, c_out: int, k: int, refine: bool, full: int):
        super().__init__()
        self.full = full  # the image size, to place the soma at this scale
        layers = [nn.Conv2d(c_in + 2 + k, c_out, 3, padding=1), nn.LeakyReLU(0.2)]
        if refine:
            layers += [nn.Conv2d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.2)]
        self.conv = nn.Sequential(*layers)

    def forward(self, h, cond_vec, soma):
        h = nn.functional.interpolate(h, scale_factor=2, mode="nearest")
        n, _, s, _ = h.shape
        extra = torch.cat([coords(n, s, (soma[0] * s // self.full, soma[1] * s // self.full), h.device, h.dtype),
                           cond_vec[:, :, None, None].expand(-1, -1, s, s).to(h.dtype)], 1)
        return self.conv(torch.cat([h, extra], 1))


def widths(width: int) -> list[int]:
    """Channels at 1/2, 1/4, 1/8 and 1/16 of the image size."""
    return [max(width // 2, 4), width, 2 * width, 4 * width]


class Encoder(nn.Module):
    """(N, c_in, S, S) -> (N, n_out) through four halvings to S/16."""

    def __init__(self, c_in: int, width: int, n_out: int, soma: tuple[int, int], size: int):
        super().__init__()
        w = widths(width)
        self.soma = soma
        self.net = nn.Sequential(down(c_in + 2, w[0], False), down(w[0], w[1], False), down(w[1], w[2], True),
                                 down(w[2], w[3], True), nn.Flatten(), nn.Linear(w[3] * (size // 16) ** 2, n_out))

    def forward(self, x):
        return self.net(torch.cat([x, coords(len(x), x.shape[-1], self.soma, x.device, x.dtype)], 1))


class Decoder(nn.Module):
    """(N, d) code + (N, k) condition -> (N, n_out, S, S) from S/16 through four doublings."""

    def __init__(self, d: int, k: int, width: int, n_out: int, soma: tuple[int, int], size: int):
        super().__init__()
        w = widths(width)
        self.soma, self.s0 = soma, size // 16
        self.fc = nn.Sequential(nn.Linear(d + k, w[3] * self.s0**2), nn.LeakyReLU(0.2))
        self.w0 = w[3]
        self.ups = nn.ModuleList([Up(w[3], w[2], k, True, size), Up(w[2], w[1], k, True, size),
                                  Up(w[1], w[0], k, False, size), Up(w[0], w[0], k, False, size)])
        self.out = nn.Conv2d(w[0], n_out, 1)

    def forward(self, z, cond_vec):
        h = self.fc(torch.cat([z, cond_vec.to(z.dtype)], 1)).view(-1, self.w0, self.s0, self.s0)
        for up in self.ups:
            h = up(h, cond_vec, self.soma)
        return self.out(h)


def correlated_uniform(shape, length: float, generator=None, device=None) -> torch.Tensor:
    """Uniform(0, 1) noise (N, S, S) whose neighbouring pixels are correlated over `length`
    pixels: white Gaussian noise smoothed by a Gaussian kernel of that width (computed on a
    margin, so every pixel has unit variance), through the normal CDF (a Gaussian copula).
    Each pixel stays exactly uniform, so a pixel's hit probability is unchanged; only
    neighbouring hits come together, along the ridges of the probability map, instead of
    as independent speckles. length 0: white noise."""
    if length <= 0:
        return torch.rand(shape, generator=generator, device=device)
    r = max(1, math.ceil(3 * length))
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / length) ** 2)
    k = k / k.square().sum().sqrt()  # unit variance after the two passes
    n, h, w = shape
    z = torch.randn((n, 1, h + 2 * r, w + 2 * r), generator=generator, device=device)
    z = nn.functional.conv2d(z, k.view(1, 1, 1, -1))
    z = nn.functional.conv2d(z, k.view(1, 1, -1, 1))
    return 0.5 * (1 + torch.erf(z[:, 0] / math.sqrt(2.0)))


def draw_pixels(out: torch.Tensor, generator=None, straight_through: bool = False,
                correlation: float = 0.0) -> torch.Tensor:
    """Decoder heads (N, 3, S, S) (hit logit, mean and log sd of v) -> drawn view (N, S, S):
    a pixel holds neurite with its probability, then v from its Gaussian (>= 0). With
    straight_through, the forward pass is the same draw and the hits' gradient is their
    probability's (for a critic that judges drawn images). `correlation` > 0: the hits are
    drawn with spatially correlated noise of that length in pixels (`correlated_uniform`)."""
    p = torch.sigmoid(out[:, 0].float())
    noise = correlated_uniform(p.shape, correlation, generator, p.device)
    gauss = torch.randn(p.shape, generator=generator, device=p.device)
    return pixels_from_noise(out, noise, gauss, straight_through)


def pixels_from_noise(out: torch.Tensor, uniform: torch.Tensor, gauss: torch.Tensor,
                      straight_through: bool = False) -> torch.Tensor:
    """`draw_pixels` with its draws given: a hit where uniform < the hit probability, v = mean +
    sd x gauss (>= 0) where hit."""
    p = torch.sigmoid(out[:, 0].float())
    hit = (uniform < p).to(p.dtype)
    if straight_through:
        hit = hit + p - p.detach()
    v = (out[:, 1].float() + torch.exp(out[:, 2].float().clamp(-5, 2)) * gauss).clamp(min=0)
    return hit * v


def condition_channels(c: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 2) conditions -> (N, 4, size, size): the one-hot class and scaled randomness on every
    pixel (what the encoders and the critic read beside an image)."""
    return one_hot_vector(c)[:, :, None, None].expand(-1, -1, size, size)


def encode(encoder: nn.Module, view: torch.Tensor, c: torch.Tensor):
    """q(z | image, class, randomness): (mean, clamped log variance) of the code, in float32."""
    x = torch.cat([view, condition_channels(c, view.shape[-1]).to(view.dtype)], 1)
    mu, logvar = encoder(x).float().chunk(2, 1)
    return mu, logvar.clamp(-12, 6)


def likelihood_terms(model, encoder, decoder, view, c, eps):
    """The VAE's loss terms for real views (N, 1, S, S) under conditions c (N, 2): the per-pixel
    zero-inflated likelihood (hit or not; v Gaussian where hit), summed over pixels, and the KL
    of the code, both batch means."""
    mu, logvar = encode(encoder, view, c)
    z = mu + torch.exp(0.5 * logvar) * eps
    out = decoder(z, model.cond_vector(c)).float()
    hit_logit, mean, log_sd = out[:, 0], out[:, 1], out[:, 2].clamp(-5, 2)
    v = view[:, 0].float()
    hit = v > 0
    bce = nn.functional.binary_cross_entropy_with_logits(hit_logit, hit.float(), reduction="none")
    nll = 0.5 * ((v - mean) / torch.exp(log_sd)) ** 2 + log_sd + 0.5 * math.log(2 * math.pi)
    rec = (bce + torch.where(hit, nll, torch.zeros_like(nll))).flatten(1).sum(1).mean()
    return rec, kl_normal(mu, logvar)


class NeuronSurrogate(nn.Module):
    """What both families share: the class embedding, the soma pixel, fit() and the sample()
    the pipeline calls with (N, 2) conditions (class index, randomness)."""

    domain = "neuron"

    def __init__(self, cfg, size: int, soma: tuple[int, int]):
        super().__init__()
        self.cfg, self.size, self.soma = cfg, int(size), (int(soma[0]), int(soma[1]))
        self.embed = nn.Embedding(N_CLASSES, cfg.embed_dim)

    def cond_vector(self, c: torch.Tensor) -> torch.Tensor:
        """(N, 2) -> (N, embed_dim + 1): the learned class embedding and the scaled randomness."""
        return torch.cat([self.embed(c[:, 0].long().clamp(0, N_CLASSES - 1)), ((c[:, 1] - 0.25) / 0.15)[:, None]], 1)

    def fit(self, images: np.ndarray, cond: np.ndarray) -> dict:
        return {"main": (to_view(torch.as_tensor(images, dtype=torch.float32)), torch.as_tensor(cond))}

    def run_modules(self) -> dict[str, nn.Module]:
        return {}

    def phases(self):
        return [(None, None)]


class LatentVAE:
    """What the neuron VAEs (images, trees) share: an encoder and a decoder under one Adam, EMA
    weights for the decoder and the class embedding, codes from the prior or from the latent
    flow fitted after training to the encoder's means."""

    def run_modules(self):
        return {"encoder": self._modules["encoder"], "decoder": self._modules["decoder"]}

    def ema_modules(self):
        return [self._modules["decoder"], self._modules["embed"]]

    def make_optimizers(self):
        return {"vae": torch.optim.Adam(self.parameters(), lr=self.cfg.lr)}

    @property
    def uses_flow(self) -> bool:
        """Whether codes come from the latent flow: asked for and fitted (it is fitted when training
        completes; until then, as in the training monitor, the prior)."""
        return self.cfg.latent_sampler == "flow" and bool(self.flow_fitted)

    def draw_codes(self, c: torch.Tensor, generator=None) -> torch.Tensor:
        """Latent codes for conditions c: the prior, or the fitted flow (its base noise drawn
        from `generator`, so a seed gives the same codes)."""
        eps = torch.randn(len(c), self.cfg.latent_dim, generator=generator, device=c.device)
        return codes_from_noise(self.latent_flow, one_hot_vector(c), eps) if self.uses_flow else eps

    def fit_flow_to(self, mu: torch.Tensor, c: torch.Tensor, seed: int, batch: int) -> dict:
        """The flow fitted to the codes mu (N, latent) of the training rows' conditions c."""
        nll = fit_code_flow(self.latent_flow, mu, one_hot_vector(c), self.cfg.flow_steps, seed, batch)
        self.flow_fitted.fill_(True)
        return {"latent_flow_nll": nll, "latent_flow_steps": self.cfg.flow_steps, "latent_flow_rows": len(mu)}


class NeuronVAE(LatentVAE, NeuronSurrogate):
    family = "neuron_vae"

    def __init__(self, cfg: NeuronVAEConfig, size: int, soma: tuple[int, int]):
        super().__init__(cfg, size, soma)
        k = cfg.embed_dim + 1
        self.encoder = Encoder(1 + N_CLASSES + 1, cfg.width, 2 * cfg.latent_dim, self.soma, self.size)
        self.decoder = Decoder(cfg.latent_dim, k, cfg.width, 3, self.soma, self.size)  # hit logit, mean, log sd of v
        if cfg.latent_sampler == "flow":
            self.latent_flow = code_flow(cfg.latent_dim, N_CLASSES + 1)
            self.register_buffer("flow_fitted", torch.zeros((), dtype=torch.bool))

    def fit_latent_flow(self, data, cond: np.ndarray, seed: int, batch: int = 256) -> dict:
        """The flow fitted to the encoder's means of the training images (maximum likelihood)."""
        images, c = data.images, torch.as_tensor(cond, dtype=torch.float32)
        with torch.no_grad():
            mu = torch.cat([encode(self.encoder, to_view(torch.as_tensor(images[i:i + 512])), c[i:i + 512])[0]
                            for i in range(0, len(images), 512)])
        return self.fit_flow_to(mu, c, seed, batch)

    def train_step(self, batches, opts, step, autocast, gens):
        view, c = next(batches)
        eps = torch.randn(len(c), self.cfg.latent_dim, generator=gens["noise"], device=c.device)
        with autocast():
            rec, kl = likelihood_terms(self, self.encoder, self.decoder, view, c, eps)
        loss = rec + kl_weight(self.cfg, step) * kl
        opts["vae"].zero_grad(set_to_none=True)
        loss.backward()
        opts["vae"].step()
        return {"loss": float(loss.detach()), "recon": float(rec.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def sample(self, conditions: torch.Tensor, extra=None, generator=None, precision: str = "fp32", **_):
        c = conditions.float()
        z = self.draw_codes(c, generator)
        with torch.autocast(device_type=c.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = self.decoder(z, self.cond_vector(c)).float()
        return from_view(draw_pixels(out, generator, correlation=self.cfg.pixel_correlation)[:, None])


class NeuronGAN(AdversarialModel, NeuronSurrogate):
    family = "neuron_gan"

    def __init__(self, cfg: NeuronGANConfig, size: int, soma: tuple[int, int]):
        super().__init__(cfg, size, soma)
        self.hybrid = cfg.likelihood_weight > 0
        # the hybrid's generator is the VAE's decoder (three heads per pixel), with its encoder
        self.set_networks(Decoder(cfg.latent_dim, cfg.embed_dim + 1, cfg.width, 3 if self.hybrid else 1,
                                  self.soma, self.size),
                          Encoder(1 + N_CLASSES + 1, cfg.critic_width, 1, self.soma, self.size))
        if self.hybrid:
            self.encoder = Encoder(1 + N_CLASSES + 1, cfg.width, 2 * cfg.latent_dim, self.soma, self.size)
            object.__setattr__(self, "e_run", self.encoder)

    def run_modules(self):
        return {**super().run_modules(), **({"e_run": self._modules["encoder"]} if self.hybrid else {})}

    def ema_modules(self):
        return [self._modules["generator"], self._modules["embed"]]

    def make_optimizers(self):
        opts = super().make_optimizers()
        extra = list(self.embed.parameters()) + (list(self._modules["encoder"].parameters()) if self.hybrid else [])
        opts["g"].add_param_group({"params": extra})
        return opts

    # the shared adversarial step's "cond" is the one-hot condition broadcast over the image
    def real_batch(self, batches):
        view, c = next(batches)
        return view, condition_channels(c, self.size)

    def _conditions(self, cond_channels):
        v = cond_channels[:, :, 0, 0]
        return torch.stack([v[:, :N_CLASSES].argmax(1).to(v.dtype), v[:, N_CLASSES] * 0.15 + 0.25], 1)

    def _draw(self, network, c, generator, straight_through: bool):
        z = torch.randn(len(c), self.cfg.latent_dim, generator=generator, device=c.device)
        out = network(z, self.cond_vector(c))
        if self.hybrid:
            return draw_pixels(out, generator, straight_through, self.cfg.pixel_correlation)[:, None]
        return torch.relu(out)

    def fake(self, cond_channels, generator):
        return self._draw(self.g_run, self._conditions(cond_channels), generator, straight_through=True)

    def generator_aux(self, fake, real, cond, generator=None, step: int = 0):
        """The VAE's loss (model.likelihood_weight) beside the critic's, for the hybrid."""
        if not self.hybrid:
            return {}
        c = self._conditions(cond)
        eps = torch.randn(len(c), self.cfg.latent_dim, generator=generator, device=c.device)
        rec, kl = likelihood_terms(self, self.e_run, self.g_run, real, c, eps)
        return {"likelihood": self.cfg.likelihood_weight * (rec + kl_weight(self.cfg, step) * kl)}

    @torch.no_grad()
    def sample(self, conditions: torch.Tensor, extra=None, generator=None, precision: str = "fp32", **_):
        c = conditions.float()
        with torch.autocast(device_type=c.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            v = self._draw(self.generator, c, generator, straight_through=False).float()
        return from_view(v)


FAMILIES = {"neuron_vae": (NeuronVAEConfig, NeuronVAE), "neuron_gan": (NeuronGANConfig, NeuronGAN)}


class NeuronSampler(nn.Module):
    """A neuron model's sampler as one graph of the conditions and the noise (`simgan export`):
    (conditions (N, 2), z (N, latent) normal[, hit_uniform (N, S, S) uniform, pixel_normal (N, S,
    S) normal]) -> image (N, S, S) um per pixel; the VAE's latent flow (when fitted) maps z to the
    code inside the graph. The pure WGAN-GP takes z alone."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.network = model.decoder if isinstance(model, NeuronVAE) else model.generator
        self.drawn = isinstance(model, NeuronVAE) or model.hybrid
        # (decided here, not in forward: the graph holds the flow or not)
        self.flow = getattr(model, "uses_flow", False)

    def forward(self, conditions, z, uniform=None, gauss=None):
        c = conditions.float()
        if self.flow:
            z = codes_from_noise(self.model.latent_flow, one_hot_vector(c), z)
        out = self.network(z, self.model.cond_vector(c)).float()
        v = pixels_from_noise(out, uniform, gauss)[:, None] if self.drawn else torch.relu(out)
        return from_view(v)
