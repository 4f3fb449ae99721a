"""Neuron morphologies kept as trees: one neuron (Tree), many in one table (Trees), and the
files MorphIO and NeuroM open.

A Tree follows MorphIO's own layout: the points of every section concatenated, a child's
first point repeating its parent's last, per section its first point, its type (SWC codes:
2 axon, 3 basal dendrite, 4 apical dendrite) and its parent (-1 for a root section), and the
soma's contour apart. Coordinates are um in the projection's frame: the soma centre at the
origin and, for a neuron with an apical dendrite, that dendrite along +y (the simulator's
orientation), so the image of a file is the projection of its trees.

In the image files the trees of all neurons sit in one table under /trees:

    /trees/points          int32 (P, 3)  running difference of the points in units of
                                         1/256 um (the cumulative sum restores them)
    /trees/diameters       float32 (P,)  um
    /trees/structure       int32 (S, 3)  per section: first point (within its neuron),
                                         SWC type, parent section (within its neuron, -1 root)
    /trees/soma            float32 (Q, 3) soma contour points, um
    /trees/neuron_points, neuron_sections, neuron_soma   int64 (N + 1,)  offsets per neuron

Stored points are rounded to 1/256 um (under 0.002 um from NeuroTS's float32 points, a
fraction of a per mille of a 1 um step); the images are projected from the points before
rounding. A folder of SWC files, or one MorphIO container HDF5 (a group per neuron in
MorphIO's own HDF5 layout, `morphio.Collection(path).load(name)`), is how they leave the
project.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from simgan.errors import SimganError
from simgan.extras import require
from simgan.io import atomic_path, quiet_failed_hdf5

QUANTUM_UM = 1.0 / 256
AXON, BASAL, APICAL = 2, 3, 4
TYPE_NAMES = {AXON: "axon", BASAL: "basal_dendrite", APICAL: "apical_dendrite"}
FRAME = "um; soma centre at the origin; apical dendrite along +y (the projection's frame)"


@dataclass
class Tree:
    points: np.ndarray  # (P, 3) float um
    diameters: np.ndarray  # (P,) float um
    offsets: np.ndarray  # (S + 1,) int64: section i is points[offsets[i]:offsets[i + 1]]
    types: np.ndarray  # (S,) int64 SWC codes
    parents: np.ndarray  # (S,) int64, -1 for a root section
    soma: np.ndarray  # (Q, 3) float64 soma contour (may be empty)

    @property
    def n_sections(self) -> int:
        return len(self.types)

    def section(self, i: int) -> np.ndarray:
        return self.points[self.offsets[i]:self.offsets[i + 1]]

    def n_children(self) -> np.ndarray:
        return np.bincount(self.parents[self.parents >= 0], minlength=self.n_sections)

    def segments(self) -> tuple[np.ndarray, np.ndarray]:
        """Every segment's start and end (M, 3): consecutive points of a section, and the soma
        connector from the origin to each root section's first point."""
        return Trees.of([self]).segments()[:2]

    def rotated(self, r: np.ndarray) -> Tree:
        return Tree(self.points @ r.T, self.diameters, self.offsets, self.types, self.parents, self.soma @ r.T)

    def apical_direction(self) -> np.ndarray | None:
        """Mean of the apical dendrites' points, their soma connectors' origin included (the
        direction the simulator turns to +y); None without an apical dendrite."""
        idx = np.flatnonzero(self.types == APICAL)
        if not len(idx):
            return None
        pts = [self.section(i) for i in idx] + [np.zeros((1, 3))] * int((self.parents[idx] < 0).sum())
        return np.concatenate(pts).mean(0)


def from_morphio(morph, scale: float = 1.0) -> Tree:
    """A morphio Morphology (mutable or not) as a Tree, centred on its soma (or, without one,
    on the first root point) and scaled by `scale` (to um)."""
    morphio = require("morphio")
    if isinstance(morph, morphio.mut.Morphology):
        morph = morphio.Morphology(morph)
    secs = list(morph.sections)
    if not secs:
        raise SimganError("the morphology has no neurites")
    soma = np.asarray(morph.soma.points, np.float64) if morph.soma is not None else np.zeros((0, 3))
    centre = soma.mean(0) if len(soma) else np.asarray(morph.root_sections[0].points[0], np.float64)
    offsets = np.asarray(morph.section_offsets, np.int64)
    parents = np.array([-1 if s.is_root else s.parent.id for s in secs], np.int64)
    return Tree((np.asarray(morph.points, np.float64) - centre) * scale, np.asarray(morph.diameters, np.float64) * scale,
                offsets, np.asarray(morph.section_types, np.int64), parents, (soma - centre) * scale)


def check_tree(t: Tree, where: str) -> None:
    """The layout's invariants: offsets rise through the points, parents name earlier-or-later
    sections of the same neuron, types are neurite codes, coordinates are finite."""
    s = t.n_sections
    if s == 0:
        raise SimganError(f"{where}: a neuron without sections")
    if t.offsets[0] != 0 or t.offsets[-1] != len(t.points) or (np.diff(t.offsets) < 1).any():
        raise SimganError(f"{where}: section offsets do not run through the {len(t.points)} points in order")
    if ((t.parents < -1) | (t.parents >= s) | (t.parents == np.arange(s))).any():
        raise SimganError(f"{where}: a section's parent is not a section of the same neuron")
    if not np.isin(t.types, list(TYPE_NAMES)).all():
        raise SimganError(f"{where}: section types {sorted(set(t.types.tolist()) - set(TYPE_NAMES))} are not neurite "
                          "codes (2 axon, 3 basal, 4 apical)")
    if not (np.isfinite(t.points).all() and np.isfinite(t.diameters).all() and np.isfinite(t.soma).all()):
        raise SimganError(f"{where}: non-finite coordinates")


@dataclass
class Trees:
    """Many trees in one table (the layout of /trees, with float points)."""

    points: np.ndarray  # (P, 3) float, um
    diameters: np.ndarray  # (P,)
    structure: np.ndarray  # (S, 3) int64: first point within the neuron, type, parent within the neuron
    soma: np.ndarray  # (Q, 3)
    neuron_points: np.ndarray  # (N + 1,)
    neuron_sections: np.ndarray
    neuron_soma: np.ndarray

    def __len__(self) -> int:
        return len(self.neuron_points) - 1

    def __getitem__(self, i: int) -> Tree:
        p0, p1 = self.neuron_points[i], self.neuron_points[i + 1]
        s0, s1 = self.neuron_sections[i], self.neuron_sections[i + 1]
        st = self.structure[s0:s1]
        return Tree(self.points[p0:p1], self.diameters[p0:p1], np.append(st[:, 0], p1 - p0).astype(np.int64),
                    st[:, 1].astype(np.int64), st[:, 2].astype(np.int64),
                    self.soma[self.neuron_soma[i]:self.neuron_soma[i + 1]])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @classmethod
    def of(cls, trees: list[Tree]) -> Trees:
        def offsets(sizes):
            return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        if not trees:
            z = np.zeros((0, 3))
            return cls(z, np.zeros(0), np.zeros((0, 3), np.int64), z, *(np.zeros(1, np.int64),) * 3)
        structure = np.concatenate([np.stack([t.offsets[:-1], t.types, t.parents], 1) for t in trees]).astype(np.int64)
        return cls(np.concatenate([t.points for t in trees]), np.concatenate([t.diameters for t in trees]), structure,
                   np.concatenate([t.soma.reshape(-1, 3) for t in trees]), offsets([len(t.points) for t in trees]),
                   offsets([t.n_sections for t in trees]), offsets([len(t.soma) for t in trees]))

    def segments(self, connectors: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every segment's start and end (M, 3) and neuron: consecutive points of a section, and
        (with `connectors`) the soma connector from the origin to each root section's first point."""
        nb = np.repeat(np.arange(len(self)), np.diff(self.neuron_sections))
        first = self.neuron_points[nb] + self.structure[:, 0]  # each section's first point
        is_first = np.zeros(len(self.points) + 1, bool)
        is_first[first] = True
        is_first[self.neuron_points] = True
        inner = ~is_first[1:-1]  # the step from point j to j + 1 stays inside one section
        point_neuron = np.repeat(np.arange(len(self)), np.diff(self.neuron_points))
        roots = first[self.structure[:, 2] < 0] if connectors else np.zeros(0, np.int64)
        return (np.concatenate([np.zeros((len(roots), 3)), self.points[:-1][inner]]),
                np.concatenate([self.points[roots], self.points[1:][inner]]),
                np.concatenate([point_neuron[roots], point_neuron[:-1][inner]]))

    def subset(self, idx) -> Trees:
        return Trees.of([self[int(i)] for i in np.arange(len(self))[idx]])

    @staticmethod
    def concat(parts: list[Trees]) -> Trees:
        if not parts:
            return Trees.of([])

        def offsets(key):
            shift = np.cumsum([0] + [getattr(p, key)[-1] for p in parts[:-1]])
            return np.concatenate([[0]] + [getattr(p, key)[1:] + s for p, s in zip(parts, shift)]).astype(np.int64)
        return Trees(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("points", "diameters", "structure",
                                                                              "soma")),
                     offsets("neuron_points"), offsets("neuron_sections"), offsets("neuron_soma"))


def write_group(group: h5py.Group, trees: Trees) -> None:
    q = np.round(trees.points / QUANTUM_UM).astype(np.int64)
    steps = np.diff(q, axis=0, prepend=np.zeros((1, 3), np.int64))
    if len(steps) and np.abs(steps).max() >= 2**31:
        raise SimganError("a tree's points lie more than 8 km apart: not a neuron in um")
    kw = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    group.create_dataset("points", data=steps.astype(np.int32), chunks=(max(1, min(len(q), 1 << 16)), 3), **kw)
    group["points"].attrs.update({"unit": "um", "quantum_um": QUANTUM_UM, "frame": FRAME,
                                  "coding": "running difference; the cumulative sum times quantum_um gives the points"})
    group.create_dataset("diameters", data=trees.diameters.astype(np.float32), chunks=(max(1, min(len(q), 1 << 16)),),
                         **kw)
    group.create_dataset("structure", data=trees.structure.astype(np.int32), **kw)
    group["structure"].attrs["columns"] = ["first_point", "swc_type", "parent"]
    group.create_dataset("soma", data=trees.soma.astype(np.float32))
    for k in ("neuron_points", "neuron_sections", "neuron_soma"):
        group.create_dataset(k, data=getattr(trees, k).astype(np.int64))


def read_group(group: h5py.Group, where: str, max_neurons: int | None = None) -> Trees:
    """The first max_neurons trees of a /trees group, checked."""
    need = ("points", "diameters", "structure", "soma", "neuron_points", "neuron_sections", "neuron_soma")
    missing = [k for k in need if k not in group]
    if missing:
        raise SimganError(f"{where}: group 'trees' lacks {missing} (expected {list(need)})")
    off = {k: np.asarray(group[k], np.int64) for k in need[4:]}
    n = len(off["neuron_points"]) - 1
    m = n if max_neurons is None else min(n, max_neurons)
    for k, v in off.items():
        if len(v) != n + 1 or v[0] != 0 or (np.diff(v) < 0).any():
            raise SimganError(f"{where}: dataset 'trees/{k}' is not {n + 1} rising offsets from 0")
    p, s, q = off["neuron_points"][m], off["neuron_sections"][m], off["neuron_soma"][m]
    steps = np.asarray(group["points"][:p], np.int64)
    quantum = float(group["points"].attrs.get("quantum_um", QUANTUM_UM))
    # float32 in memory (exact for the 1/256 um grid out to 65 mm): a NeuroTS neuron's 12,000
    # points take 190 KB
    trees = Trees((np.cumsum(steps, axis=0) * quantum).astype(np.float32), np.asarray(group["diameters"][:p], np.float32),
                  np.asarray(group["structure"][:s], np.int64), np.asarray(group["soma"][:q], np.float64),
                  off["neuron_points"][:m + 1], off["neuron_sections"][:m + 1], off["neuron_soma"][:m + 1])
    if trees.points.shape != (p, 3) or trees.structure.shape != (s, 3) or len(trees.diameters) != p:
        raise SimganError(f"{where}: datasets of group 'trees' are shorter than its offsets")
    # per section, vectorised: its neuron's sizes bound its first point and its parent
    neuron = np.repeat(np.arange(m), np.diff(trees.neuron_sections))
    n_pts, n_sec = np.diff(trees.neuron_points)[neuron], np.diff(trees.neuron_sections)[neuron]
    first, kind, parent = trees.structure.T
    bad = ((first < 0) | (first >= n_pts) | ~np.isin(kind, list(TYPE_NAMES)) | (parent < -1) | (parent >= n_sec)
           | (parent == np.arange(s) - trees.neuron_sections[neuron]))
    if bad.any():
        i = int(np.argmax(bad))
        raise SimganError(f"{where}: dataset 'trees/structure' row {i} (neuron {int(neuron[i])}): {trees.structure[i].tolist()}"
                          " is not [first point within the neuron, SWC type 2-4, parent section within the neuron or -1]")
    return trees


# -- leaving the project: MorphIO's HDF5 layout, containers, SWC ------------------------------------

def _morphio_arrays(t: Tree) -> tuple[np.ndarray, np.ndarray]:
    """MorphIO HDF5 v1 'points' (x, y, z, d; the soma's first) and 'structure' (first point,
    type, parent; the soma is section 0)."""
    soma = t.soma if len(t.soma) else np.zeros((1, 3))
    pts = np.concatenate([np.c_[soma, np.zeros(len(soma))], np.c_[t.points, t.diameters]]).astype(np.float32)
    st = np.stack([t.offsets[:-1] + len(soma), t.types, np.where(t.parents < 0, 0, t.parents + 1)], 1)
    return pts, np.concatenate([[[0, 1, -1]], st]).astype(np.int32)


def write_container(path, trees: Trees, names: list[str]) -> Path:
    """One HDF5 holding a group per neuron in MorphIO's own layout: morphio.Collection(path)
    .load(name) gives a morphio Morphology (neurom.load_morphology takes it)."""
    path = Path(path)
    with atomic_path(path, suffix=".h5") as tmp:
        quiet_failed_hdf5()
        with h5py.File(tmp, "w") as f:
            for name, t in zip(names, trees):
                pts, st = _morphio_arrays(t)
                g = f.create_group(name)
                g.create_dataset("points", data=pts)
                g.create_dataset("structure", data=st)
                meta = g.create_group("metadata")
                meta.attrs["version"] = np.array([1, 3], np.uint32)
                meta.attrs["cell_family"] = np.array([0], np.uint32)
            f.attrs["frame"] = FRAME
    return path


def to_morphio(t: Tree):
    """A Tree as an immutable morphio Morphology (through a container in memory's stead: a
    mutable morphology built section by section)."""
    morphio = require("morphio")
    m = morphio.mut.Morphology()
    if len(t.soma):
        m.soma.points = t.soma.astype(np.float32)
        m.soma.diameters = np.zeros(len(t.soma), np.float32)
        m.soma.type = morphio.SomaType.SOMA_SIMPLE_CONTOUR
    built = {}
    for i in order_parents_first(t.parents):
        pl = morphio.PointLevel(t.section(i).astype(np.float32).tolist(),
                                t.diameters[t.offsets[i]:t.offsets[i + 1]].astype(np.float32).tolist())
        st = morphio.SectionType(int(t.types[i]))
        p = t.parents[i]
        built[i] = m.append_root_section(pl, st) if p < 0 else built[p].append_section(pl, st)
    return morphio.Morphology(m)


def order_parents_first(parents: np.ndarray) -> list[int]:
    """Sections depth first from each root, in the order of the roots and of the children."""
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents.tolist()):
        children.setdefault(p, []).append(i)
    out, stack = [], list(reversed(children.get(-1, [])))
    while stack:
        i = stack.pop()
        out.append(i)
        stack.extend(reversed(children.get(i, [])))
    return out


def write_swc(path, t: Tree) -> Path:
    """One SWC file, written atomically: the soma as one point whose radius is the contour's mean
    distance from the centre, then every section's points without the repeated first point."""
    radius = float(np.linalg.norm(t.soma, axis=1).mean()) if len(t.soma) else 0.0
    rows, last = [(1, 1, 0.0, 0.0, 0.0, radius, -1)], {}
    for i in order_parents_first(t.parents):
        pts = t.section(i)
        d = t.diameters[t.offsets[i]:t.offsets[i + 1]]
        par = 1 if t.parents[i] < 0 else last[int(t.parents[i])]
        for k in range(0 if t.parents[i] < 0 else 1, len(pts)):  # a child's first point is its parent's last
            rows.append((len(rows) + 1, int(t.types[i]), *pts[k], d[k] / 2, par))
            par = len(rows)
        last[i] = par
    with atomic_path(path, suffix=".swc") as tmp:
        with open(tmp, "w") as fh:
            fh.write(f"# simgan neuron tree; {FRAME}\n")
            fh.writelines(f"{r[0]} {r[1]} {r[2]:.4f} {r[3]:.4f} {r[4]:.4f} {r[5]:.4f} {r[6]}\n" for r in rows)
    return Path(path)
