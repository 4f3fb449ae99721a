"""The adversarial training step shared by every domain's GAN: WGAN-GP (or BCE, or weight
clipping) critic steps, then one generator step, for any model that provides
real_batch, fake, critic_view, critic and d_run."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gan_optimizers(c, generator: nn.Module, critic: nn.Module) -> dict[str, torch.optim.Optimizer]:
    if c.loss == "wgan_clip":
        return {"g": torch.optim.RMSprop(generator.parameters(), lr=c.lr_g),
                "d": torch.optim.RMSprop(critic.parameters(), lr=c.lr_d)}
    return {"g": torch.optim.Adam(generator.parameters(), lr=c.lr_g, betas=tuple(c.betas)),
            "d": torch.optim.Adam(critic.parameters(), lr=c.lr_d, betas=tuple(c.betas))}


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor,
                     gen: torch.Generator | None) -> torch.Tensor:
    """In fp32, out of autocast; out-of-place autograd.grad so it is correct under DDP."""
    with torch.autocast(device_type=real.device.type, enabled=False):
        # one mixing weight per sample, for (N, F) rows as for (N, C, H, W) grids
        eps = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=gen, device=real.device)
        inter = (eps * real.float() + (1 - eps) * fake.float()).requires_grad_(True)
        out = critic(torch.cat([inter, cond.float()], 1))
        (grad,) = torch.autograd.grad(out.sum(), inter, create_graph=True)
        return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def adversarial_step(model, batches, opts, autocast, gens, step: int = 0) -> dict[str, float]:
    """One generator step after n_critic critic steps, for any GAN that provides
    real_batch(batches) -> (real, cond), fake(cond, generator), critic_view(x, cond),
    `critic` and its run wrapper `d_run`; optionally generator_aux(fake, real, cond, generator, step) ->
    {name: weighted loss}, terms added to the generator's loss (the fake is drawn for the
    real batch's conditions). `step` (the generator step) places the lazy gradient penalty
    (gp_every) so that a resumed run penalises the same critic steps."""
    c = model.cfg
    logs: dict[str, float] = {}
    model.critic.requires_grad_(True)
    for i in range(c.n_critic):
        real, cond = model.real_batch(batches)
        with torch.no_grad(), autocast():
            fake = model.fake(cond, gens["noise"])
        with torch.no_grad():
            real, fake = model.critic_view(real, cond), model.critic_view(fake.to(real.dtype), cond)
        with autocast():
            d_out = model.d_run(torch.cat([torch.cat([real, fake.to(real.dtype)]), torch.cat([cond, cond])], 1)).float()
        d_real, d_fake = d_out[: len(real)], d_out[len(real):]
        if c.loss == "bce":
            loss_d = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + \
                F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        else:
            wdist = d_real.mean() - d_fake.mean()
            loss_d = -wdist
            logs["wasserstein"] = float(wdist.detach())
            if c.loss == "wgan_gp" and (step * c.n_critic + i) % c.gp_every == 0:
                gp = gradient_penalty(model.critic, real, fake.detach(), cond, gens["noise"])
                loss_d = loss_d + c.gp_lambda * c.gp_every * gp
                logs["gp"] = float(gp.detach())
        opts["d"].zero_grad(set_to_none=True)
        loss_d.backward()
        opts["d"].step()
        if c.loss == "wgan_clip":
            with torch.no_grad():
                for p in model.critic.parameters():
                    p.clamp_(-c.clip_value, c.clip_value)
    logs["loss_d"] = float(loss_d.detach())
    model.critic.requires_grad_(False)
    real, cond = model.real_batch(batches)
    with autocast():
        fake = model.fake(cond, gens["noise"])
        v = model.critic_view(fake, cond)
        d_fake = model.critic(torch.cat([v, cond.to(v.dtype)], 1)).float()
    if c.loss == "bce":
        loss_g = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
    else:
        loss_g = -d_fake.mean()
    # a model's own terms beside the critic's (weighted already), named in its config
    for name, aux in (model.generator_aux(fake, real, cond, gens["noise"], step) if hasattr(model, "generator_aux") else {}).items():
        loss_g = loss_g + aux
        logs[name] = float(aux.detach())
    opts["g"].zero_grad(set_to_none=True)
    loss_g.backward()
    opts["g"].step()
    model.critic.requires_grad_(True)
    logs["loss_g"] = float(loss_g.detach())
    return logs



class AdversarialModel:
    """What a GAN needs to train through the shared trainer and step, for models whose critic
    sees samples as they are (put it before the nn.Module base): `set_networks` registers the
    generator and critic and the handles the trainer runs (DDP wrappers under torchrun)."""

    def set_networks(self, generator: nn.Module, critic: nn.Module) -> None:
        self.generator, self.critic = generator, critic
        object.__setattr__(self, "g_run", generator)
        object.__setattr__(self, "d_run", critic)

    def run_modules(self) -> dict[str, nn.Module]:
        return {"g_run": self.generator, "d_run": self.critic}

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return gan_optimizers(self.cfg, self.generator, self.critic)

    def critic_view(self, x, cond=None):
        return x

    def train_step(self, batches, opts, step, autocast, gens) -> dict[str, float]:
        return adversarial_step(self, batches, opts, autocast, gens, step)
