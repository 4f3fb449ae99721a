"""The neuron reference simulator: NeuroTS topological synthesis, oriented and projected.

NeuroTS (Kanari et al., Cell Reports 2022) grows interneurons (IN), pyramidal cells (PC) and
rat L5 thick-tufted pyramidal cells (L5_TPC) from the shipped input distributions
(simgan/domains/neuron/inputs, pinned by sha256), 0.16-0.8 s per neuron on one core. The
growth noise `randomness` of every grown neurite type is the continuous condition. Each
neuron is oriented (apical dendrite up, +y; IN unrotated) and its neurite length summed along
z into 64 x 64 pixels of 32 um, the soma at pixel (row 44, col 32): segments are cut into
pieces of at most 0.5 um whose midpoints pick the pixel, so an image's sum is the neurite
length inside the field of view (soma connectors included). Per event i the class,
randomness and NeuroTS seed come from derive_seed(seed, i): shards of a run merge into the
same events as one run, whatever the number of processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from simgan.cpus import usable_cpus
from simgan.domains.neuron.trees import Tree, Trees, from_morphio
from simgan.errors import SimganError
from simgan.extras import require
from simgan.seeding import derive_seed

CLASSES = ("IN", "PC", "L5_TPC")
INPUT_DIR = Path(__file__).resolve().parent / "inputs"
INPUTS = {"IN": ("IN_params.json", "IN_distr.json"), "PC": ("PC_params.json", "PC_distr.json"),
          "L5_TPC": ("L5_TPC_params.json", "bio_rat_L5_TPC_B_distribution.json")}
SHA256 = {
    "IN_distr.json": "d86607c0b406f134c2f2b2ed93b63a87459e97429226e883417949a90130c1ba",
    "IN_params.json": "21bdd9da6ff6aede62c79d4e4efa4ab23c4699cacf83384fe968a4df1b377f45",
    "L5_TPC_params.json": "e87c238fe08f4958bbc3498e571c580cf97d1feddb6f87b86c20a69e25e69b96",
    "PC_distr.json": "dfa30a9de888aca374b31e031937b324e9fa2ca6af57d19c5f9f73e898f7f2da",
    "PC_params.json": "d57771d1b03b688087686833287cad6f2216859d45ec74db7351a20f39b16aad",
    "bio_rat_L5_TPC_B_distribution.json": "25452f11e0ea9ff0c55c73fe3f695728f31725bd43efcf21fb1640ca965f5264",
}
UNIFORM_DIAMETER_UM = 0.6
SUBSTEP_UM = 0.5
TRUTH = ("total_length", "n_tips", "n_bifurcations", "max_radial_distance", "frac_in_fov")


@dataclass(frozen=True)
class Projection:
    """Pixels of pixel_um, size x size, the soma at pixel (soma_row, soma_col); +y is up (row 0)."""

    pixel_um: float = 32.0
    size: int = 64
    soma_row: int = 44
    soma_col: int = 32

    @property
    def fov_um(self) -> float:
        return self.pixel_um * self.size

    def to_dict(self) -> dict:
        return asdict(self)


def input_hashes() -> dict[str, str]:
    return dict(SHA256)


def load_inputs(cls: str) -> tuple[dict, dict]:
    """NeuroTS parameters and distributions of a class, checked against their sha256."""
    if cls not in INPUTS:
        raise SimganError(f"cell class {cls!r}: unknown (known: {', '.join(CLASSES)})")
    out = []
    for name in INPUTS[cls]:
        raw = (INPUT_DIR / name).read_bytes()
        if hashlib.sha256(raw).hexdigest() != SHA256[name]:
            raise SimganError(f"{INPUT_DIR / name}: sha256 differs from the pinned NeuroTS 3.7.0 input")
        out.append(json.loads(raw))
    params, distr = out
    if cls in ("IN", "PC"):  # their own diameter method needs an extra model
        params["diameter_params"] = {"method": "uniform", **{t: UNIFORM_DIAMETER_UM for t in
                                                              ("basal_dendrite", "apical_dendrite", "axon")}}
        distr["diameter"] = {"method": "uniform"}
    return params, distr


def grow(cls: str, randomness: float, seed: int, inputs: tuple[dict, dict] | None = None):
    """One NeuroTS neuron (a morphio mutable Morphology); deterministic for (cls, randomness, seed)."""
    import copy

    neurots = require("neurots")
    params, distr = copy.deepcopy(inputs or load_inputs(cls))
    for t in params["grow_types"]:
        params[t]["randomness"] = float(randomness)
    logging.getLogger("neurots").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return neurots.NeuronGrower(params, distr, rng_or_seed=int(seed)).grow()


def rotation_to_up(v: np.ndarray) -> np.ndarray:
    """The rotation taking direction v onto +y (Rodrigues)."""
    a = v / np.linalg.norm(v)
    e = np.array([0.0, 1.0, 0.0])
    c = float(a @ e)
    if c < -1 + 1e-9:  # pointing down: half a turn about z
        return np.diag([-1.0, -1.0, 1.0])
    w = np.cross(a, e)
    k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


def orient(tree: Tree) -> Tree:
    """Apical dendrite up (+y); a neuron without one stays as grown."""
    v = tree.apical_direction()
    if v is None or np.linalg.norm(v) == 0:
        return tree
    return tree.rotated(rotation_to_up(v))


def project(starts: np.ndarray, ends: np.ndarray, proj: Projection = Projection()) -> tuple[np.ndarray, float]:
    """(size, size) float32 image of neurite length per pixel (um), and the total length (um).
    Each segment is cut into ceil(L / 0.5 um) equal pieces placed at their midpoints."""
    img, total = project_groups(starts, ends, np.zeros(len(starts), np.int64), 1, proj)
    return img[0], float(total[0])


def project_trees(trees: Trees, proj: Projection = Projection()) -> np.ndarray:
    """The images (N, size, size) float32 of many trees at once."""
    starts, ends, neuron = trees.segments()
    return project_groups(starts, ends, neuron, len(trees), proj)[0]


def project_groups(starts: np.ndarray, ends: np.ndarray, group: np.ndarray, n: int,
                   proj: Projection = Projection()) -> tuple[np.ndarray, np.ndarray]:
    """Segments of n images (each segment's image in `group`): the images (n, size, size)
    float32 and each image's total length (um)."""
    d = ends - starts
    length = np.linalg.norm(d, axis=1)
    k = np.maximum(np.ceil(length / SUBSTEP_UM).astype(np.int64), 1)
    seg = np.repeat(np.arange(len(starts)), k)
    first = np.repeat(np.cumsum(k) - k, k)
    frac = (np.arange(len(seg)) - first + 0.5) / k[seg]
    pts = starts[seg, :2] + frac[:, None] * d[seg, :2]
    w = (length / k)[seg]
    col = np.floor(proj.soma_col + 0.5 + pts[:, 0] / proj.pixel_um).astype(np.int64)
    row = np.floor(proj.soma_row + 0.5 - pts[:, 1] / proj.pixel_um).astype(np.int64)
    inside = (row >= 0) & (row < proj.size) & (col >= 0) & (col < proj.size)
    pix = (group[seg] * proj.size + row) * proj.size + col
    img = np.bincount(pix[inside], weights=w[inside], minlength=n * proj.size**2)
    return (img.reshape(n, proj.size, proj.size).astype(np.float32),
            np.bincount(group, weights=length, minlength=n))


def image_and_truth(tree: Tree, proj: Projection = Projection()) -> tuple[np.ndarray, dict]:
    """The projection of a tree (in the projection's frame) and its truth numbers."""
    starts, ends = tree.segments()
    img, total = project(starts, ends, proj)
    n_children = tree.n_children()
    radial = float(np.sqrt((tree.points ** 2).sum(1).max()))
    return img, {"total_length": total, "n_tips": int((n_children == 0).sum()),
                 "n_bifurcations": int((n_children >= 2).sum()), "max_radial_distance": radial,
                 "frac_in_fov": float(img.sum(dtype=np.float64) / total)}


def event_plan(n: int, seed: int, classes: tuple[str, ...], randomness: tuple[float, float],
               start: int = 0) -> dict[str, np.ndarray]:
    """Class index (into CLASSES), randomness and NeuroTS seed of events start..start+n-1."""
    idx = np.array([CLASSES.index(c) for c in classes])
    cls, rnd, seeds = np.empty(n, np.int8), np.empty(n, np.float32), np.empty(n, np.int64)
    for j in range(n):
        rng = np.random.default_rng(derive_seed(seed, start + j))
        cls[j] = idx[rng.integers(len(idx))]
        rnd[j] = rng.uniform(*randomness)
        seeds[j] = rng.integers(2**31 - 1)
    return {"cell_class": cls, "randomness": rnd, "seed": seeds}


_WORKER_INPUTS: dict = {}


def grown_tree(cls: str, randomness: float, seed: int, inputs: tuple[dict, dict] | None = None) -> Tree:
    """One NeuroTS neuron as a Tree in the projection's frame (oriented)."""
    return orient(from_morphio(grow(cls, randomness, seed, inputs)))


def _one(job) -> tuple[np.ndarray, dict, Tree]:
    cls_i, rnd, seed, proj = job
    cls = CLASSES[cls_i]
    if cls not in _WORKER_INPUTS:
        _WORKER_INPUTS[cls] = load_inputs(cls)
    tree = grown_tree(cls, rnd, seed, _WORKER_INPUTS[cls])
    return (*image_and_truth(tree, proj), tree)


def simulate(n: int, seed: int, classes: tuple[str, ...] = CLASSES, randomness: tuple[float, float] = (0.1, 0.4),
             workers: int = 0, progress: bool = False, start: int = 0, proj: Projection = Projection()) -> dict:
    """Events start..start+n-1 of the run `seed`: images (n, size, size), conditions, truth,
    seeds and the grown trees (oriented). One process per core (workers=0), or `workers` processes; 1 runs here."""
    from tqdm import tqdm

    plan = event_plan(n, seed, classes, randomness, start)
    jobs = [(int(c), float(r), int(s), proj) for c, r, s in zip(plan["cell_class"], plan["randomness"], plan["seed"])]
    workers = workers or usable_cpus()
    bar = tqdm(total=n, desc="NeuroTS", unit="neuron", disable=not progress)
    results = []
    if workers == 1 or n < 4:
        for job in jobs:
            results.append(_one(job))
            bar.update()
    else:
        import multiprocessing as mp
        # spawn: NeuroTS in fresh interpreters (a fork of a process that ran torch can hang in OpenMP)
        with mp.get_context("spawn").Pool(min(workers, n)) as pool:
            for r in pool.imap(_one, jobs, chunksize=max(1, min(16, n // (4 * workers)))):
                results.append(r)
                bar.update()
    bar.close()
    images = np.stack([r[0] for r in results]) if results else np.zeros((0, proj.size, proj.size), np.float32)
    truth = {k: np.array([r[1][k] for r in results], dtype=np.float64) for k in TRUTH}
    return {"images": images, "conditions": {"cell_class": plan["cell_class"], "randomness": plan["randomness"]},
            "truth": truth, "seed": plan["seed"], "trees": Trees.of([r[2] for r in results])}


def versions() -> dict[str, str]:
    from importlib.metadata import version
    return {p: version(p) for p in ("neurots", "morphio")}


def events_per_shard(n: int, shard_index: int, shard_count: int) -> range:
    return range(shard_index * n // shard_count, (shard_index + 1) * n // shard_count)
