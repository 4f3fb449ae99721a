"""A neuron as a sequence of growth steps that cannot describe an invalid tree, and back.

Each neurite is a binary tree of sections, visited level by level (the stems at level 0, then
the children of every section that bifurcates). Per section, the step says:

    split      bifurcate (two children) or terminate
    log_len    log of its path length (um)
    contract   chord / path length (1: straight)
    theta      angle of its chord to the parent's chord (a stem: to +y, the apical axis)
    phi        azimuth about the parent's chord, in a frame fixed by the parent's chord and +y;
               the second child's phi is taken from its sibling's (the bifurcation's opening)

and the neuron adds its soma radius and its stems per type. Children are put in a canonical
order (more tips first, then the longer path), so the first child is the bigger subtree.

`grow` turns such steps into trees, whatever their values: lengths, contractions and angles
are clipped to physical ranges, a section at max_depth or past max_sections terminates, so
every tree is connected, rooted at the soma, and has only bifurcations and tips. A section's
points follow its chord with a Brownian bridge across it, scaled so that its path length is
exactly the step's (one point every BRIDGE_STEP_UM at most).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from simgan.domains.neuron.trees import APICAL, AXON, BASAL, Tree, Trees, order_parents_first
from simgan.errors import SimganError

TYPES = (AXON, BASAL, APICAL)  # index 0, 1, 2 in the models' one-hot
LEN_UM = (0.5, 3000.0)  # a section's path length is clipped to this range
CONTRACT_MIN = 0.05
BRIDGE_STEP_UM = 5.0
STEP_KEYS = ("split", "log_len", "contract", "theta", "phi")


def frames(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors completing the unit directions u (M, 3) to a right-handed frame: e1 along
    +y x u (x where u is along y), e2 = u x e1."""
    y = torch.zeros_like(u)
    y[:, 1] = 1.0
    e1 = torch.linalg.cross(y, u)
    norm = torch.linalg.norm(e1, dim=1, keepdim=True)
    x = torch.zeros_like(u)
    x[:, 0] = 1.0
    e1 = torch.where(norm > 1e-6, e1 / norm.clamp_min(1e-12), x)
    return e1, torch.linalg.cross(u, e1)


def direction(parent_u: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """The unit direction at angle theta to parent_u and azimuth phi in its frame."""
    e1, e2 = frames(parent_u)
    st = torch.sin(theta)[:, None]
    return torch.cos(theta)[:, None] * parent_u + st * (torch.cos(phi)[:, None] * e1 + torch.sin(phi)[:, None] * e2)


def angles(parent_u: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    e1, e2 = frames(parent_u)
    theta = torch.arccos(((u * parent_u).sum(1)).clamp(-1.0, 1.0))
    return theta, torch.atan2((u * e2).sum(1), (u * e1).sum(1))


def wrap(a):
    return (a + math.pi) % (2 * math.pi) - math.pi


def place(parent_end: torch.Tensor, parent_u: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor,
          log_len: torch.Tensor, contract: torch.Tensor, min_chord: torch.Tensor | float = 0.0):
    """Sections grown from their parents' ends (a stem: from the soma centre, its parent_u +y):
    their chord directions and end points, from clipped steps; a chord is at least min_chord
    long (a stem's: the soma radius and LEN_UM[0], so that it leaves the soma)."""
    u = direction(parent_u, theta.clamp(0.0, math.pi), phi)
    length = log_len.clamp(math.log(LEN_UM[0]), math.log(LEN_UM[1])).exp()
    chord = torch.maximum(contract.clamp(CONTRACT_MIN, 1.0) * length, torch.as_tensor(min_chord, dtype=u.dtype))
    return u, parent_end + chord[:, None] * u


@dataclass
class Encoded:
    """One neuron's steps, level order. Per node: its step (STEP_KEYS), parent node (-1: a stem),
    slot (0 stem, 1 first child, 2 second child), type index (into TYPES), depth, and the
    geometry the networks read: start point, parent's chord direction, path distance at start."""

    nodes: dict[str, np.ndarray]
    soma_radius: float
    stems: np.ndarray  # (3,) stems per type index


def _subtree_tips(children: list[list[int]], order: list[int]) -> np.ndarray:
    tips = np.zeros(len(children))
    for i in reversed(order):
        tips[i] = 1.0 if not children[i] else sum(tips[c] for c in children[i])
    return tips


def encode(t: Tree, where: str = "neuron") -> Encoded:
    """A tree (binary: every section has two children or none) as its growth steps."""
    s = t.n_sections
    children: list[list[int]] = [[] for _ in range(s)]
    roots = []
    for i, p in enumerate(t.parents.tolist()):
        (roots if p < 0 else children[p]).append(i)
    bad = [i for i in range(s) if len(children[i]) not in (0, 2)]
    if bad:
        raise SimganError(f"{where}: section {bad[0]} has {len(children[bad[0]])} children; the tree models grow "
                          "binary trees (two children or none per section)")
    unknown = sorted(set(t.types.tolist()) - set(TYPES))
    if unknown:
        raise SimganError(f"{where}: section types {unknown}; the tree models grow types {list(TYPES)}")
    first, last = t.points[t.offsets[:-1]], t.points[t.offsets[1:] - 1]
    seg = np.linalg.norm(np.diff(t.points, axis=0), axis=1)
    inside = np.ones(len(seg), bool)
    inside[t.offsets[1:-1] - 1] = False  # the step from one section's last point to the next's first
    owner = np.repeat(np.arange(s), np.diff(t.offsets))[:-1]
    stem = t.parents < 0
    # a stem starts at the soma centre: its soma connector belongs to it
    path = np.bincount(owner[inside], seg[inside], minlength=s) + np.where(stem, np.linalg.norm(first, axis=1), 0.0)
    start = np.where(stem[:, None], 0.0, first)
    chord = last - start
    clen = np.linalg.norm(chord, axis=1)
    u = chord / np.maximum(clen, 1e-9)[:, None]
    tips = _subtree_tips(children, order_parents_first(t.parents))
    for c in children:  # canonical order of siblings: more tips, then the longer path
        c.sort(key=lambda i: (-tips[i], -path[i]))
    roots.sort(key=lambda i: (TYPES.index(int(t.types[i])), -tips[i]))
    seq, parent_node, slot, depth = [], [], [], []
    queue, d = [(r, -1, 0) for r in roots], 0
    while queue:  # level order
        nxt = []
        for sec, pnode, sl in queue:
            nxt += [(c, len(seq), k + 1) for k, c in enumerate(children[sec])]
            seq.append(sec)
            parent_node.append(pnode)
            slot.append(sl)
            depth.append(d)
        queue, d = nxt, d + 1
    seq_a, pn, sl = np.array(seq), np.array(parent_node), np.array(slot)
    parent_u = np.where((pn >= 0)[:, None], u[seq_a[np.maximum(pn, 0)]], np.array([0.0, 1.0, 0.0]))
    theta, phi = (x.numpy() for x in angles(torch.from_numpy(parent_u), torch.from_numpy(u[seq_a])))
    second = np.flatnonzero(sl == 2)  # level order puts a first child just before its sibling
    phi[second] = wrap(phi[second] - phi[second - 1])
    dist = np.zeros(len(seq))
    for j in range(len(seq)):  # path distance at each section's start (parents come first)
        if pn[j] >= 0:
            dist[j] = dist[pn[j]] + path[seq_a[pn[j]]]
    type_idx = np.array([TYPES.index(int(x)) for x in t.types[seq_a]])
    nodes = {"split": np.array([len(children[i]) == 2 for i in seq], np.float64),
             "log_len": np.log(np.clip(path[seq_a], *LEN_UM)),
             "contract": np.clip(clen[seq_a] / np.maximum(path[seq_a], 1e-9), CONTRACT_MIN, 1.0),
             "theta": theta, "phi": phi, "parent": pn, "slot": sl, "type": type_idx, "depth": np.array(depth),
             "start": start[seq_a], "parent_u": parent_u, "dist": dist,
             "diameter": np.array([np.median(t.diameters[t.offsets[i]:t.offsets[i + 1]]) for i in seq])}
    radius = np.linalg.norm(t.soma if len(t.soma) else first[stem], axis=1).mean()
    return Encoded(nodes, float(radius), np.bincount(type_idx[sl == 0], minlength=3))


def bridge(starts: np.ndarray, ends: np.ndarray, lengths: np.ndarray, rng: np.random.Generator):
    """Per section the points from start to end whose path length is `lengths` (>= the chord):
    the chord cut into ceil(length / BRIDGE_STEP_UM) pieces and displaced across it by a 2-D
    Brownian bridge, scaled by bisection to the length. Returns (points (P, 3), offsets (S + 1,))."""
    chord = ends - starts
    c = np.linalg.norm(chord, axis=1)
    k = np.clip(np.ceil(lengths / BRIDGE_STEP_UM), 1, 4096).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(k + 1)])
    sec = np.repeat(np.arange(len(k)), k + 1)
    j = np.arange(offsets[-1]) - offsets[:-1][sec]  # 0..k within a section
    frac = j / k[sec]
    walk = rng.standard_normal((offsets[-1], 2))
    walk[offsets[:-1]] = 0.0
    walk = np.cumsum(walk, axis=0)
    walk -= walk[offsets[:-1]][sec]  # each section's walk starts at 0
    walk -= frac[:, None] * walk[offsets[1:] - 1][sec]  # and ends at 0: a bridge
    u = chord / np.maximum(c, 1e-9)[:, None]
    e1, e2 = (x.numpy() for x in frames(torch.from_numpy(np.where(c[:, None] > 1e-9, u, [0.0, 1.0, 0.0]))))
    lateral = walk[:, :1] * e1[sec] + walk[:, 1:] * e2[sec]
    along = starts[sec] + frac[:, None] * chord[sec]
    step_along = (c / k)[sec]
    d_lat = np.diff(lateral, axis=0)
    last = np.zeros(len(sec), bool)
    last[offsets[1:] - 1] = True
    steps = ~last[:-1]  # a piece from point j to j + 1 of the same section
    lat2 = (d_lat ** 2).sum(1)[steps]
    owner = sec[:-1][steps]
    a2 = step_along[:-1][steps] ** 2

    def path(scale):
        return np.bincount(owner, np.sqrt(a2 + (scale[owner] ** 2) * lat2), minlength=len(k))
    lo = np.zeros(len(k))
    hi = lengths / np.maximum(np.bincount(owner, np.sqrt(lat2), minlength=len(k)), 1e-12)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        over = path(mid) > lengths
        hi, lo = np.where(over, mid, hi), np.where(over, lo, mid)
    scale = np.where(lengths > c * (1 + 1e-9), 0.5 * (lo + hi), 0.0)
    return along + scale[sec][:, None] * lateral, offsets


def assemble(neuron: np.ndarray, parent: np.ndarray, types: np.ndarray, ends: np.ndarray, log_len: np.ndarray,
             soma_radius: np.ndarray, diameters: np.ndarray, rng: np.random.Generator) -> Trees:
    """Grown sections (per node: neuron, parent node or -1, type index, end point from `place`,
    log path length; parents listed before children) as one Trees table, neurons in order. A
    stem starts on the soma's surface along its chord, its path length less the soma
    connector; every section's points bridge its start and end with its path length. The soma
    is a contour of 8 points in the z = 0 plane, as NeuroTS draws it."""
    n_neurons = len(soma_radius)
    perm = np.argsort(neuron, kind="stable")
    rank = np.empty(len(perm), np.int64)
    rank[perm] = np.arange(len(perm))
    nb, par, end = neuron[perm], parent[perm], ends[perm]
    first_node = np.searchsorted(nb, np.arange(n_neurons + 1))
    stem = par < 0
    local_parent = np.where(stem, -1, rank[np.maximum(par, 0)] - first_node[nb])
    r = soma_radius[nb]
    start = np.where(stem[:, None], r[:, None] * end / np.linalg.norm(end, axis=1, keepdims=True),
                     ends[np.maximum(par, 0)])
    chord = np.linalg.norm(end - start, axis=1)
    length = np.exp(np.clip(log_len[perm], math.log(LEN_UM[0]), math.log(LEN_UM[1])))
    pts, offsets = bridge(start, end, np.maximum(np.where(stem, length - r, length), chord), rng)
    npts = np.diff(offsets)
    neuron_points = np.concatenate([[0], np.cumsum(np.bincount(nb, npts, minlength=n_neurons))]).astype(np.int64)
    ang = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    soma = (soma_radius[:, None, None] * np.stack([np.cos(ang), np.sin(ang), np.zeros(8)], 1)[None]).reshape(-1, 3)
    return Trees(pts, np.repeat(diameters[types[perm]], npts).astype(np.float64),
                 np.stack([offsets[:-1] - neuron_points[nb], np.asarray(TYPES)[types[perm]], local_parent], 1),
                 soma, neuron_points, first_node.astype(np.int64), np.arange(n_neurons + 1, dtype=np.int64) * 8)


NODE_KEYS = ("split", "log_len", "contract", "theta", "phi", "parent", "depth", "slot", "type", "start", "parent_u",
             "dist", "stem")


def node_table(encoded: list[Encoded]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Neurons' steps as flat tables: per section (NODE_KEYS; 'parent' within its neuron, 'stem'
    a stem's index among its type's stems over their number, and that number over 10), and per
    neuron its first section, section count, log soma radius and stems per type."""
    nodes = {k: [] for k in NODE_KEYS}
    for e in encoded:
        n = e.nodes
        stem = np.zeros((len(n["slot"]), 2))
        roots = np.flatnonzero(n["slot"] == 0)
        for t in range(3):
            mine = roots[n["type"][roots] == t]
            stem[mine, 0] = np.arange(len(mine)) / max(len(mine), 1)
            stem[mine, 1] = len(mine) / 10
        for k in NODE_KEYS:
            nodes[k].append(stem if k == "stem" else n[k])
    counts = np.array([len(e.nodes["slot"]) for e in encoded], np.int64)
    neurons = {"first": np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64), "count": counts,
               "soma_log_r": np.log(np.array([max(e.soma_radius, 1e-3) for e in encoded])),
               "stems": np.stack([e.stems for e in encoded]).astype(np.int64)}
    return {k: np.concatenate(v) for k, v in nodes.items()}, neurons
