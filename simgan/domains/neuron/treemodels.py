"""Neuron surrogates that grow trees: the tree VAE.

The decoder is simgan.domains.neuron.treenet.TreeDecoder: a neuron's growth steps (treecode)
given its context, the learned class embedding, the scaled randomness and a code z. The
encoder reads a real neuron's steps (every section's inputs and step through a shared network,
pooled by mean and maximum over the neuron, with its stems and soma) into q(z | tree). Codes
for generation come from the N(0, 1) prior or from a conditional flow fitted after training to
the encoder's means (as the image VAE's). The images are the trees' projections with the
simulator's own code, so every image figure and consumer reads them unchanged.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from simgan.domains.neuron import treecode as tc
from simgan.domains.neuron.models import N_CLASSES, LatentVAE, NeuronSurrogate, one_hot_vector
from simgan.domains.neuron.simulator import Projection, project_trees
from simgan.domains.neuron.treenet import IN_DIM, N_TYPES, TreeDecoder, node_features
from simgan.errors import SimganError
from simgan.models.latent import code_flow, kl_normal, kl_weight
from simgan.schema import ConfigModel

STEP_DIM = 6


class NeuronTreeVAEConfig(ConfigModel):
    family: Literal["neuron_tree_vae"] = "neuron_tree_vae"
    latent_dim: int = Field(16, gt=0)
    hidden: int = Field(128, gt=0)  # a section's state
    embed_dim: int = Field(8, gt=0)
    components: int = Field(4, gt=0)  # mixture components of every continuous part of a step
    lr: float = Field(1e-3, gt=0)
    beta: float = Field(1.0, ge=0)
    kl_warmup_steps: int = Field(500, ge=0)
    latent_sampler: Literal["prior", "flow"] = "prior"
    flow_steps: int = Field(3000, gt=0)
    # hard limits of growth: a section at max_depth, or one that would take its neuron past
    # max_sections, terminates; stems per type at most max_stems
    max_depth: int = Field(64, ge=2)
    max_sections: int = Field(2048, ge=2)
    max_stems: int = Field(24, ge=1)


def step_features(nodes: dict) -> torch.Tensor:
    return torch.stack([nodes["split"], (nodes["log_len"] - 3.5) / 1.5, nodes["contract"], nodes["theta"] / math.pi,
                        torch.cos(nodes["phi"]), torch.sin(nodes["phi"])], 1)


def gather_neurons(first: torch.Tensor, count: torch.Tensor, table: dict) -> dict:
    """The sections of a batch of neurons (their first row and count in the flat table) as one
    flat batch: 'neuron' the batch row, 'parent' a batch index (-1 for a stem)."""
    nb = torch.repeat_interleave(torch.arange(len(count), device=count.device), count)
    start = torch.cumsum(count, 0) - count
    idx = first[nb] + torch.arange(len(nb), device=count.device) - start[nb]
    out = {k: v[idx] for k, v in table.items()}
    out["parent"] = torch.where(out["parent"] >= 0, start[nb] + out["parent"], -1)
    out["neuron"] = nb
    return out


def sibling_and_parent(nodes: dict) -> tuple[torch.Tensor, torch.Tensor]:
    has_parent = nodes["parent"] >= 0
    pidx = nodes["parent"].clamp(min=0)
    parent_step = torch.stack([nodes["log_len"][pidx], nodes["contract"][pidx]], 1) * has_parent[:, None].float()
    sib = (torch.arange(len(pidx), device=pidx.device) - 1).clamp(min=0)
    return parent_step, torch.stack([nodes[k][sib] for k in tc.STEP_KEYS], 1)


class TreeEncoder(nn.Module):
    def __init__(self, hidden: int, latent: int):
        super().__init__()
        self.node = nn.Sequential(nn.Linear(IN_DIM + STEP_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Sequential(nn.Linear(2 * hidden + N_CLASSES + 1 + N_TYPES + 1, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * latent))

    def forward(self, cond, nodes, stems, soma_log_r):
        parent_step, sibling = sibling_and_parent(nodes)
        f = self.node(torch.cat([node_features(nodes["type"], nodes["slot"], nodes["depth"], nodes["start"],
                                               nodes["parent_u"], nodes["dist"], parent_step, sibling, nodes["stem"]),
                                 step_features(nodes)], 1))
        n, nb = len(cond), nodes["neuron"]
        count = torch.zeros(n, device=f.device).index_add(0, nb, torch.ones_like(nb, dtype=f.dtype)).clamp(min=1)
        mean = torch.zeros(n, f.shape[1], device=f.device).index_add(0, nb, f) / count[:, None]
        top = torch.zeros(n, f.shape[1], device=f.device).scatter_reduce(0, nb[:, None].expand_as(f), f, "amax",
                                                                         include_self=False)
        mu, logvar = self.out(torch.cat([mean, top, one_hot_vector(cond), stems.float() / 10,
                                         (soma_log_r - 2.0)[:, None]], 1)).chunk(2, dim=1)
        return mu, logvar.clamp(-20, 10)


class NeuronTreeVAE(LatentVAE, NeuronSurrogate):
    family = "neuron_tree_vae"
    grows_trees = True

    def __init__(self, cfg: NeuronTreeVAEConfig, size: int, soma: tuple[int, int], projection: dict | None = None):
        super().__init__(cfg, size, soma)
        self.projection = Projection(**projection) if projection else Projection(size=size, soma_row=soma[0],
                                                                                    soma_col=soma[1])
        self.encoder = TreeEncoder(cfg.hidden, cfg.latent_dim)
        self.decoder = TreeDecoder(cfg.embed_dim + 1 + cfg.latent_dim, cfg.hidden, cfg.components, cfg.max_stems,
                                   cfg.max_depth, cfg.max_sections)
        self.register_buffer("diameters", torch.full((N_TYPES,), 0.6, dtype=torch.float64))
        if cfg.latent_sampler == "flow":
            self.latent_flow = code_flow(cfg.latent_dim, N_CLASSES + 1)
            self.register_buffer("flow_fitted", torch.zeros((), dtype=torch.bool))

    # -- data ------------------------------------------------------------------------------------
    def encode_trees(self, trees, cond: np.ndarray) -> dict:
        """The trainer's tables: per neuron (conditions, first section, count, log soma radius,
        stems per type) and the flat section table (treecode.NODE_KEYS)."""
        cfg = self.cfg
        encoded = []
        for i, t in enumerate(trees):
            e = tc.encode(t, f"neuron {i}")
            if e.stems.max() > cfg.max_stems or int(e.nodes["depth"].max()) >= cfg.max_depth \
                    or len(e.nodes["split"]) > cfg.max_sections:
                raise SimganError(f"neuron {i}: {int(e.stems.max())} stems of a type, depth "
                                  f"{int(e.nodes['depth'].max()) + 1}, {len(e.nodes['split'])} sections: beyond "
                                  f"model.max_stems {cfg.max_stems}, max_depth {cfg.max_depth} or max_sections "
                                  f"{cfg.max_sections}")
            encoded.append(e)
        nodes, neurons = tc.node_table(encoded)
        types = np.concatenate([e.nodes["type"] for e in encoded])
        diameters = np.concatenate([e.nodes["diameter"] for e in encoded])
        diam = [float(np.median(diameters[types == t])) if (types == t).any() else 0.6 for t in range(N_TYPES)]
        self.diameters.copy_(torch.as_tensor(diam, dtype=torch.float64))
        as_t = {k: torch.as_tensor(v, dtype=torch.long if v.dtype.kind in "iub" and k not in tc.STEP_KEYS
                                   else torch.float32) for k, v in nodes.items()}
        return {"main": (torch.as_tensor(cond, dtype=torch.float32), torch.as_tensor(neurons["first"]),
                         torch.as_tensor(neurons["count"]), torch.as_tensor(neurons["soma_log_r"], dtype=torch.float32),
                         torch.as_tensor(neurons["stems"])),
                "nodes": tuple(as_t[k] for k in tc.NODE_KEYS)}

    def context_in(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cond_vector(c), z], 1)

    # -- training --------------------------------------------------------------------------------
    def batch(self, batches):
        cond, first, count, soma_log_r, stems = next(batches)
        nodes = gather_neurons(first, count, dict(zip(tc.NODE_KEYS, batches.tables["nodes"])))
        return cond, nodes, stems, soma_log_r

    def train_step(self, batches, opts, step, autocast, gens):
        cond, nodes, stems, soma_log_r = self.batch(batches)
        eps = torch.randn(len(cond), self.cfg.latent_dim, generator=gens["noise"], device=cond.device)
        with autocast():
            mu, logvar = self.encoder(cond, nodes, stems, soma_log_r)
            z = mu + torch.exp(0.5 * logvar) * eps
            ll = self.decoder(self.context_in(cond, z), nodes, stems, soma_log_r)
            rec, kl = -ll.mean(), kl_normal(mu, logvar)
        loss = rec + kl_weight(self.cfg, step) * kl
        opts["vae"].zero_grad(set_to_none=True)
        loss.backward()
        opts["vae"].step()
        return {"loss": float(loss.detach()), "recon": float(rec.detach()), "kl": float(kl.detach()),
                "recon_per_section": float(rec.detach()) * len(cond) / max(len(nodes["split"]), 1)}

    # -- codes -----------------------------------------------------------------------------------
    def fit_latent_flow(self, data, cond: np.ndarray, seed: int, batch: int = 256) -> dict:
        """The flow fitted to the encoder's means of the training trees (maximum likelihood)."""
        tables = self.encode_trees(data.trees, cond)
        c_all, first, count, soma_log_r, stems = tables["main"]
        table = dict(zip(tc.NODE_KEYS, tables["nodes"]))
        mus = []
        with torch.no_grad():
            for lo in range(0, len(c_all), batch):
                sl = slice(lo, lo + batch)
                nodes = gather_neurons(first[sl], count[sl], table)
                mus.append(self.encoder(c_all[sl], nodes, stems[sl], soma_log_r[sl])[0])
        return self.fit_flow_to(torch.cat(mus), c_all, seed, batch)

    # -- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_trees(self, conditions: torch.Tensor, generator=None):
        """Neurons (a treecode.Trees table) for conditions (N, 2): class index, randomness."""
        c = conditions.float()
        grown = self.decoder.grow(self.context_in(c, self.draw_codes(c, generator)), generator)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        g = {k: v.detach().cpu().double().numpy() if v.is_floating_point() else v.cpu().numpy()
             for k, v in grown.items()}
        return tc.assemble(g["neuron"], g["parent"], g["type"], g["end"], g["log_len"], g["soma_radius"],
                           self.diameters.cpu().numpy(), np.random.default_rng(seed))

    @torch.no_grad()
    def sample(self, conditions: torch.Tensor, extra=None, generator=None, precision: str = "fp32", **_):
        """The projections of sampled neurons (N, size, size), um per pixel."""
        images = project_trees(self.sample_trees(conditions, generator), self.projection)
        return torch.as_tensor(images, device=conditions.device)
