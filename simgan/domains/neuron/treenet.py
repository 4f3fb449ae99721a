"""The tree decoder: a network that grows neurons level by level through the growth steps of
simgan.domains.neuron.treecode, and gives the likelihood of a real neuron's steps.

Every section carries a state h = GRU(inputs, h of its parent); the stems' parent state comes
from the neuron's context (its code z, class and randomness). The inputs are what a grower
knows when the section starts: its type, whether it is a stem or the first or second child,
its depth, where it starts (um / 500) and its path distance from the soma, its parent's
chord and step, and, for a second child, its sibling's step. From h the section's step is
drawn one part after the other: split (Bernoulli), log path length, contraction, theta and
phi (mixtures of Gaussians on unbounded transforms; phi a mixture of von Mises), each given
the parts before it. The neuron's soma radius and stems per type come from its context.

Growth is a frontier: all open sections of a level at once (first children, then their
siblings), vectorised over the neurons of a batch; a section at max_depth or one that would
take its neuron past max_sections terminates. Any weights give connected binary trees.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from simgan.domains.neuron import treecode as tc

N_TYPES = 3
IN_DIM = 3 + 3 + 1 + 3 + 3 + 1 + 2 + 5 + 2  # type, slot, depth, start, parent chord, distance, parent step, sibling, stem


def logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p) - torch.log1p(-p)


def contract_to_y(c):
    return logit((c - tc.CONTRACT_MIN) / (1 - tc.CONTRACT_MIN))


def y_to_contract(y):
    return tc.CONTRACT_MIN + (1 - tc.CONTRACT_MIN) * torch.sigmoid(y)


def theta_to_y(t):
    return logit(t / math.pi)


def y_to_theta(y):
    return math.pi * torch.sigmoid(y)


def rank_within(keys: torch.Tensor) -> torch.Tensor:
    """Each element's rank among the elements with its key, in their order."""
    if not len(keys):
        return keys.clone()
    order = torch.argsort(keys, stable=True)
    sk = keys[order]
    start = torch.ones_like(sk, dtype=torch.bool)
    start[1:] = sk[1:] != sk[:-1]
    group_first = torch.cummax(torch.where(start, torch.arange(len(sk), device=keys.device), 0), 0).values
    out = torch.empty_like(keys)
    out[order] = torch.arange(len(sk), device=keys.device) - group_first
    return out


def clipped_length(log_len: torch.Tensor) -> torch.Tensor:
    return log_len.clamp(math.log(tc.LEN_UM[0]), math.log(tc.LEN_UM[1])).exp()


def node_features(types, slot, depth, start, parent_u, dist, parent_step, sibling, stem) -> torch.Tensor:
    """A section's inputs (M, IN_DIM). parent_step (M, 2): log path length and contraction of
    the parent (0 for a stem); sibling (M, 5): a second child's sibling's split, log length,
    contraction, theta and phi (0 otherwise); stem (M, 2): a stem's index among its type's
    stems over their number, and that number over 10."""
    oh_t = nn.functional.one_hot(types.long(), N_TYPES).float()
    oh_s = nn.functional.one_hot(slot.long(), 3).float()
    sib = torch.stack([sibling[:, 0], (sibling[:, 1] - 3.5) / 1.5, sibling[:, 2], sibling[:, 3] / math.pi,
                       sibling[:, 4] / math.pi], 1)
    par = torch.stack([(parent_step[:, 0] - 3.5) / 1.5, parent_step[:, 1]], 1)
    return torch.cat([oh_t, oh_s, (depth.float() / 16)[:, None], start / 500.0, parent_u,
                      torch.log1p(dist / 100.0)[:, None], par, sib * (slot == 2).float()[:, None], stem], 1)


class MixtureHead(nn.Module):
    """p(y | x) for one scalar: a mixture of k Gaussians (kind 'normal') or von Mises (kind
    'angle'), parameters from a two-layer network of x."""

    def __init__(self, d_in: int, hidden: int, k: int, kind: str):
        super().__init__()
        self.k, self.kind = k, kind
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, 3 * k))

    def params(self, x):
        logits, loc, s = self.net(x).chunk(3, dim=1)
        return torch.log_softmax(logits, 1), loc, s

    def log_prob(self, x, y):
        logw, loc, s = self.params(x)
        y = y[:, None]
        if self.kind == "normal":
            log_scale = s.clamp(-7, 5)
            lp = -0.5 * ((y - loc) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)
        else:  # von Mises: kappa cos(y - mu) - log(2 pi I0(kappa))
            kappa = nn.functional.softplus(s) + 1e-3
            lp = kappa * torch.cos(y - loc) - (torch.log(torch.special.i0e(kappa)) + kappa) - math.log(2 * math.pi)
        return torch.logsumexp(logw + lp, 1)

    def sample(self, x, generator=None):
        logw, loc, s = self.params(x)
        comp = torch.multinomial(logw.exp(), 1, generator=generator)
        loc, s = loc.gather(1, comp)[:, 0], s.gather(1, comp)[:, 0]
        if self.kind == "normal":
            return loc + torch.exp(s.clamp(-7, 5)) * torch.randn(loc.shape, generator=generator, device=x.device)
        return von_mises(loc, nn.functional.softplus(s) + 1e-3, generator)


def von_mises(mu: torch.Tensor, kappa: torch.Tensor, generator=None, rounds: int = 64) -> torch.Tensor:
    """Draws of von Mises(mu, kappa) by Best and Fisher's rejection (1979), from `generator`; a
    draw still rejected after `rounds` rounds (rare) takes the last proposal."""
    tau = 1 + torch.sqrt(1 + 4 * kappa**2)
    rho = (tau - torch.sqrt(2 * tau)) / (2 * kappa)
    r = (1 + rho**2) / (2 * rho)
    out = torch.zeros_like(mu)
    todo = torch.ones_like(mu, dtype=torch.bool)
    for _ in range(rounds):
        u1, u2, u3 = (torch.rand(mu.shape, generator=generator, device=mu.device) for _ in range(3))
        z = torch.cos(math.pi * u1)
        f = (1 + r * z) / (r + z)
        c = kappa * (r - f)
        ok = (c * (2 - c) - u2 > 0) | (torch.log(c / u2) + 1 - c >= 0)
        theta = torch.sign(u3 - 0.5) * torch.acos(f.clamp(-1, 1))
        take = todo & (ok | (_ == rounds - 1))
        out = torch.where(take, theta, out)
        todo = todo & ~take
        if not bool(todo.any()):
            break
    return tc.wrap(out + mu)


class StepHeads(nn.Module):
    """A section's step from its state: split, then log length, contraction, theta, phi, each
    given the state, the context and the parts before it."""

    def __init__(self, d: int, hidden: int, k: int):
        super().__init__()
        self.split = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.log_len = MixtureHead(d + 1, hidden, k, "normal")
        self.contract = MixtureHead(d + 2, hidden, k, "normal")
        self.theta = MixtureHead(d + 3, hidden, k, "normal")
        self.phi = MixtureHead(d + 4, hidden, k, "angle")

    @staticmethod
    def _ctx(x, *parts):
        return torch.cat([x, *(p[:, None] for p in parts)], 1)

    def log_prob(self, x, split, log_len, contract, theta, phi, split_free):
        """Per section log p(step); split_free: whether the split was the model's to choose."""
        s = split.float()
        logit_s = self.split(x)[:, 0]
        ll = -nn.functional.binary_cross_entropy_with_logits(logit_s, s, reduction="none") * split_free.float()
        yl, yc, yt = (log_len - 3.5) / 1.5, contract_to_y(contract), theta_to_y(theta)
        ll = ll + self.log_len.log_prob(self._ctx(x, s), yl)
        ll = ll + self.contract.log_prob(self._ctx(x, s, yl), yc)
        ll = ll + self.theta.log_prob(self._ctx(x, s, yl, yc / 4), yt)
        return ll + self.phi.log_prob(self._ctx(x, s, yl, yc / 4, yt / 4), phi)

    def sample(self, x, split_free, generator=None):
        p = torch.sigmoid(self.split(x)[:, 0])
        s = (torch.rand(p.shape, generator=generator, device=x.device) < p).float() * split_free.float()
        yl = self.log_len.sample(self._ctx(x, s), generator)
        yc = self.contract.sample(self._ctx(x, s, yl), generator)
        yt = self.theta.sample(self._ctx(x, s, yl, yc / 4), generator)
        phi = self.phi.sample(self._ctx(x, s, yl, yc / 4, yt / 4), generator)
        return s, yl * 1.5 + 3.5, y_to_contract(yc), y_to_theta(yt), phi


class TreeDecoder(nn.Module):
    """Context (class, randomness, code) -> neurons, and the log-likelihood of real ones."""

    def __init__(self, d_context: int, hidden: int, k: int, max_stems: int, max_depth: int, max_sections: int):
        super().__init__()
        self.hidden, self.max_stems, self.max_depth, self.max_sections = hidden, max_stems, max_depth, max_sections
        self.context = nn.Sequential(nn.Linear(d_context, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.root = nn.Linear(hidden, hidden)
        self.inp = nn.Sequential(nn.Linear(IN_DIM + hidden, hidden), nn.SiLU())
        self.cell = nn.GRUCell(hidden, hidden)
        self.heads = StepHeads(2 * hidden, hidden, k)
        self.stems = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, N_TYPES * (max_stems + 1)))
        self.soma = MixtureHead(hidden, hidden, k, "normal")

    def neuron_terms(self, ctx):
        return self.stems(ctx).view(len(ctx), N_TYPES, self.max_stems + 1)

    def forward(self, ctx_in: torch.Tensor, nodes: dict, stems: torch.Tensor, soma_log_r: torch.Tensor):
        """Per neuron log p(tree | context). nodes: flat tensors over the batch's sections in level
        order per neuron with 'neuron', 'parent' (batch index, -1), 'depth', 'slot', 'type',
        'start', 'parent_u', 'dist', 'stem' (M, 2) and the steps (treecode.STEP_KEYS)."""
        ctx = self.context(ctx_in)
        n = len(ctx)
        ll = torch.log_softmax(self.neuron_terms(ctx), 2).gather(2, stems.long()[:, :, None])[:, :, 0].sum(1)
        ll = ll + self.soma.log_prob(ctx, (soma_log_r - 2.0))
        nb, par, depth = nodes["neuron"], nodes["parent"], nodes["depth"]
        has_parent = par >= 0
        pidx = par.clamp(min=0)
        parent_step = torch.stack([nodes["log_len"][pidx], nodes["contract"][pidx]], 1) * has_parent[:, None].float()
        sib_i = (torch.arange(len(nb), device=nb.device) - 1).clamp(min=0)
        sibling = torch.stack([nodes[k][sib_i] for k in tc.STEP_KEYS], 1)
        x = self.inp(torch.cat([node_features(nodes["type"], nodes["slot"], depth, nodes["start"], nodes["parent_u"],
                                              nodes["dist"], parent_step, sibling, nodes["stem"]), ctx[nb]], 1))
        # level by level; a node's state sits at its rank within its level
        pos = rank_within(depth)
        root_h = torch.tanh(self.root(ctx))
        levels = []
        for d in range(int(depth.max()) + 1 if len(depth) else 0):
            idx = torch.nonzero(depth == d)[:, 0]
            hp = root_h[nb[idx]] if d == 0 else levels[-1][pos[pidx[idx]]]
            levels.append(self.cell(x[idx], hp))
        order = torch.argsort(depth, stable=True)
        h = torch.empty(len(nb), self.hidden, device=ctx.device, dtype=ctx.dtype).index_copy(0, order, torch.cat(levels))
        free = depth < self.max_depth - 1
        per = self.heads.log_prob(torch.cat([h, ctx[nb]], 1), nodes["split"], nodes["log_len"], nodes["contract"],
                                  nodes["theta"], nodes["phi"], free)
        return ll + torch.zeros(n, device=ctx.device, dtype=per.dtype).index_add(0, nb, per)

    @torch.no_grad()
    def grow(self, ctx_in: torch.Tensor, generator=None) -> dict:
        """Neurons for the contexts: flat node arrays (neuron, parent, type, end, log_len, ...)
        in growth order (parents first), and per neuron the soma radius."""
        ctx = self.context(ctx_in)
        n, dev = len(ctx), ctx.device
        counts = torch.multinomial(torch.softmax(self.neuron_terms(ctx), 2).view(-1, self.max_stems + 1), 1,
                                   generator=generator).view(n, N_TYPES)
        counts[counts.sum(1) == 0, 1] = 1  # a neuron has at least one neurite (a basal dendrite)
        soma_r = torch.exp(self.soma.sample(ctx, generator) + 2.0).clamp(1.0, 50.0)
        # the stems: per neuron and type, indices 0..count-1
        nb = torch.repeat_interleave(torch.arange(n, device=dev).repeat_interleave(N_TYPES), counts.view(-1))
        ty = torch.repeat_interleave(torch.arange(N_TYPES, device=dev).repeat(n), counts.view(-1))
        first = torch.cumsum(counts.view(-1), 0) - counts.view(-1)
        j = torch.arange(len(nb), device=dev) - torch.repeat_interleave(first, counts.view(-1))
        cnt = counts.view(-1)[nb * N_TYPES + ty].float()
        level = {"neuron": nb, "type": ty, "slot": torch.zeros_like(nb), "parent": torch.full_like(nb, -1),
                 "h_parent": torch.tanh(self.root(ctx))[nb], "parent_end": torch.zeros(len(nb), 3, device=dev),
                 "parent_u": torch.tensor([0.0, 1.0, 0.0], device=dev).expand(len(nb), 3),
                 "dist": torch.zeros(len(nb), device=dev), "parent_step": torch.zeros(len(nb), 2, device=dev),
                 "stem": torch.stack([j.float() / cnt, cnt / 10], 1)}
        out = {k: [] for k in ("neuron", "parent", "type", "end", "log_len", "split")}
        n_nodes, sections = 0, torch.zeros(n, dtype=torch.long, device=dev)
        sections.index_add_(0, nb, torch.ones_like(nb))
        for d in range(self.max_depth):
            m = len(level["neuron"])
            if m == 0:
                break
            grown = {k: torch.zeros(m, device=dev) for k in tc.STEP_KEYS}
            ends, us = torch.zeros(m, 3, device=dev), torch.zeros(m, 3, device=dev)
            phi_abs, hs = torch.zeros(m, device=dev), torch.zeros(m, self.hidden, device=dev)
            for slots in ((0, 1), (2,)):  # first children (and stems), then their siblings
                idx = torch.nonzero(torch.isin(level["slot"], torch.tensor(slots, device=dev)))[:, 0]
                if not len(idx):
                    continue
                sib_i = (idx - 1).clamp(min=0)
                sibling = torch.stack([grown[k][sib_i] for k in tc.STEP_KEYS], 1)
                x = self.inp(torch.cat([node_features(level["type"][idx], level["slot"][idx], torch.full_like(idx, d),
                                                      level["parent_end"][idx], level["parent_u"][idx],
                                                      level["dist"][idx], level["parent_step"][idx], sibling,
                                                      level["stem"][idx]), ctx[level["neuron"][idx]]], 1))
                h = self.cell(x, level["h_parent"][idx])
                free = torch.full((len(idx),), d < self.max_depth - 1, device=dev)
                s, ll, c, th, ph = self.heads.sample(torch.cat([h, ctx[level["neuron"][idx]]], 1), free, generator)
                phi_a = ph if slots != (2,) else tc.wrap(ph + phi_abs[sib_i])
                stem = level["parent"][idx] < 0
                min_chord = torch.where(stem, soma_r[level["neuron"][idx]] + tc.LEN_UM[0], torch.zeros_like(th))
                u, e = tc.place(level["parent_end"][idx], level["parent_u"][idx], th, phi_a, ll, c, min_chord)
                for k, v in zip(tc.STEP_KEYS, (s, ll, c, th, ph)):
                    grown[k][idx] = v
                ends[idx], us[idx], phi_abs[idx], hs[idx] = e, u, phi_a, h
            # the section limit: splits past a neuron's room terminate (the lowest-ranked first)
            split = grown["split"] > 0
            nbl = level["neuron"]
            room = (self.max_sections - sections[nbl]) // 2
            rank = torch.zeros_like(nbl)
            rank[split] = rank_within(nbl[split])
            split = split & (rank < room)
            grown["split"] = split.float()
            ids = n_nodes + torch.arange(m, device=dev)
            for k, v in (("neuron", nbl), ("parent", level["parent"]), ("type", level["type"]), ("end", ends),
                         ("log_len", grown["log_len"]), ("split", grown["split"])):
                out[k].append(v)
            n_nodes += m
            par = torch.nonzero(split)[:, 0]
            sections.index_add_(0, nbl[par], torch.full_like(par, 2))
            kids = par.repeat_interleave(2)
            slot = torch.tensor([1, 2], device=dev).repeat(len(par))
            level = {"neuron": nbl[kids], "type": level["type"][kids], "slot": slot, "parent": ids[kids],
                     "h_parent": hs[kids], "parent_end": ends[kids], "parent_u": us[kids],
                     "dist": level["dist"][kids] + clipped_length(grown["log_len"][kids]),
                     "parent_step": torch.stack([grown["log_len"][kids], grown["contract"][kids]], 1),
                     "stem": torch.zeros(len(kids), 2, device=dev)}
        return {**{k: torch.cat(v) for k, v in out.items()}, "soma_radius": soma_r}
