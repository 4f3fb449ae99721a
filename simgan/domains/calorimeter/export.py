"""A calorimeter model's sampler as one graph of the conditions and the noise (`simgan export`).

Two-stage models (model.output=layers): the energy flow's inverse maps its normal draws to the
response and the layer energies; every layer of every shower then gets the shape network's
head, and its voxels are drawn on the dense (layers, voxels) grid from the hit uniforms and
the log-share normals (LayeredSurrogate.draw_dense, the same values as the sparse draw that
`simgan generate` runs, to float32 rounding), cut at the readout threshold, calibrated when the
model was, and scaled to the layer energy. Empty layers stay empty. One-stage models: the
sampling network and the inverse preprocessing.

The C++ caller draws the noise: for a two-stage model per shower L normals for the energy flow,
L x latent_dim normals for the layer codes, (GAN with a shower code) its normals, L x v_max
uniforms for the hits (unless the model decides hits without noise) and L x v_max normals
for the log shares.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from simgan.domains.calorimeter.models.layered import LayeredGAN, LayeredSurrogate
from simgan.export import ExportGraph, Port


class LayeredShowerSampler(nn.Module):
    """(incident_energy (N,) MeV[, extra (N, k)], z_energy (N, L), z_layer (N, L, d)[, z_shower
    (N, ds)][, hit_uniform (N, L, v_max)], share_normal (N, L, v_max)) -> showers (N, V) MeV."""

    def __init__(self, model: LayeredSurrogate):
        super().__init__()
        self.model = model
        self.n_extra = model.transform.cond_dim - 1
        self.shower_code = isinstance(model, LayeredGAN) and bool(model.cfg.shower_latent_dim)
        self.hits_drawn = model.hit_uniforms_drawn()
        self.calibrate = bool(model.calibrated)
        # the voxels of the (L, v_max) grid that exist, in the file's order
        self.register_buffer("voxels", model.valid.reshape(-1).nonzero().squeeze(1), persistent=False)

    def forward(self, energy, a, b=None, c=None, d=None, e=None, f=None):
        # (named positions, not *args: torch.export binds each input to a parameter)
        m = self.model
        noise = [x for x in (a, b, c, d, e, f) if x is not None]
        extra = noise.pop(0) if self.n_extra else None
        z_energy, z_layer = noise.pop(0), noise.pop(0)
        zs = noise.pop(0) if self.shower_code else None
        u = noise.pop(0) if self.hits_drawn else None
        eps = noise.pop(0)
        n, L, V = energy.shape[0], m.n_layers, m.v_max  # (len() would fix the batch size in the graph)
        cond = m.transform.cond(energy, extra)
        v = m.energy.flow(cond).transform.inv(z_energy)
        e_layers = m.energy.from_v(v, energy)  # (N, L) MeV, zero below the readout threshold
        lcond = m.all_layer_conds(cond, e_layers).reshape(n * L, -1)
        sid = torch.arange(n, device=energy.device)[:, None].expand(n, L).reshape(-1)
        lid = torch.arange(L, device=energy.device)[None].expand(n, L).reshape(-1)
        raw = m.raw_shape(lcond, None, sid, n, z=z_layer.reshape(n * L, -1), zs=zs)
        x = m.draw_dense(raw, lid, e_layers.reshape(-1).float(), None if u is None else u.reshape(n * L, V),
                         eps.reshape(n * L, V), self.calibrate)
        x = x.reshape(n, L * V)
        return x if m.uniform else x.index_select(1, self.voxels)


class VoxelShowerSampler(nn.Module):
    """One-stage models: (incident_energy (N,) MeV[, extra (N, k)], noise (N, noise_dim)) ->
    showers (N, V) MeV."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.n_extra = model.transform.cond_dim - 1
        self.net = model.sampling_net()

    def forward(self, energy, a, b=None):
        m = self.model
        extra, noise = (a, b) if self.n_extra else (None, a)
        u = self.net(torch.cat([noise, m.transform.cond(energy, extra)], 1))
        return m.transform.decode(u, energy)


def export_graph(model, ckpt: dict):
    """The ExportGraph of a calorimeter model (simgan.export)."""
    extra = list(ckpt.get("extra_conditions", []))
    ranges = ckpt.get("condition_ranges", {})
    lo, hi = ranges.get("incident_energy", [1000.0, 64000.0])
    inputs = [Port("incident_energy", ("N",), "MeV", f"the particle's energy (training range {lo:g}-{hi:g} MeV)",
                   dtype="float64")]
    if extra:
        inputs.append(Port("extra_conditions", ("N", len(extra)), "as in the training file",
                           f"the model's other conditions, in this order: {', '.join(extra)}", dtype="float64",
                           columns=extra))
    n_vox = int(model.transform.mean.numel())
    outputs = [Port("showers", ("N", n_vox), "MeV", "the energy of every voxel, in the order of the binning XML "
                    "(binning.xml beside the registered model; zero below the readout threshold)",
                    cut_by_comparison=True)]
    notes = []
    if isinstance(model, LayeredSurrogate):
        L, V = model.n_layers, model.v_max
        graph = LayeredShowerSampler(model)
        inputs += [Port("z_energy", ("N", L), "1", "the energy flow's base draw: the response and the layer "
                        "energies", noise="normal"),
                   Port("z_layer", ("N", L, model.cfg.latent_dim), "1", "each layer's shape code", noise="normal")]
        if graph.shower_code:
            inputs.append(Port("z_shower", ("N", model.cfg.shower_latent_dim), "1", "the shower's code, shared by "
                               "its layers", noise="normal"))
        if graph.hits_drawn:
            inputs.append(Port("hit_uniform", ("N", L, V), "1", "per layer and voxel (padded to the widest "
                               "layer): whether the voxel is hit", noise="uniform"))
        inputs.append(Port("share_normal", ("N", L, V), "1", "per layer and voxel: the draw of its log share "
                           "when hit", noise="normal"))
        notes.append("every layer of every shower passes the shape network (the sparse sampler of `simgan generate` "
                     "skips empty layers: the same showers, more arithmetic)")
        if graph.calibrate:
            notes.append("the model's per-layer calibration of the kept voxels' shares is inside the graph")
    else:
        graph = VoxelShowerSampler(model)
        inputs.append(Port("noise", ("N", model.noise_dim), "1", _noise_meaning(model), noise="normal"))

    def example(n, generator):
        e = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(np.log(lo), np.log(hi), generator=generator))
        out = [e]
        if extra:
            bounds = torch.tensor([ranges.get(k, [0.0, 1.0]) for k in extra], dtype=torch.float64)
            out.append(bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * torch.rand(n, len(extra), generator=generator,
                                                                                   dtype=torch.float64))
        for p in inputs[len(out):]:
            shape = (n, *p.shape[1:])
            out.append(torch.rand(shape, generator=generator) if p.noise == "uniform"
                       else torch.randn(shape, generator=generator))
        return tuple(out)

    return ExportGraph(graph, inputs, outputs, example, notes=notes)


def _noise_meaning(model) -> str:
    likelihood = getattr(model.cfg, "likelihood", None)
    if likelihood == "zero_inflated":
        return (f"the code ({model.cfg.latent_dim}), then per voxel the draw of its value and the draw deciding "
                "whether it is hit (hit where Phi(draw) < the hit probability)")
    if likelihood == "gaussian":
        return f"the code ({model.cfg.latent_dim}), then per voxel the draw of its value"
    return "the generator's input"
