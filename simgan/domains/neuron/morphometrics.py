"""Neurons judged as trees, in the field's terms: validity (MorphIO loads every neuron, NeuroM's
checks pass), NeuroM morphometrics per class compared by Kolmogorov-Smirnov distance (Blue
Brain's MorphVal: neurom.stats.compare_two), TMD persistence images (the distance of the
population's average image to the reference's, against the spread of NeuroTS's own at the
same size), and a classifier on per-neuron morphometric summaries. NeuroM, TMD and MorphIO
compute every number; this module only gathers them.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simgan.domains.neuron import trees as nt
from simgan.domains.neuron.simulator import CLASSES
from simgan.extras import require
from simgan.metrics.classifier import classifier_test

# per section (per neurite: its extent along its first principal direction), pooled over a
# class's neurons, per neurite type
SECTION_FEATURES = ("section_lengths", "section_branch_orders", "section_path_distances", "section_radial_distances",
                    "local_bifurcation_angles", "remote_bifurcation_angles", "partition_asymmetry",
                    "section_tortuosity", "principal_direction_extents")
# one number per neuron and neurite type
NEURITE_FEATURES = ("number_of_bifurcations", "number_of_leaves", "total_length")
TYPES = ("basal_dendrite", "apical_dendrite", "axon")
SHOLL_STEP_UM = 50.0
SHOLL_RADII = 30  # the profile out to 1.5 mm
MIN_PER_CLASS = 10
CHECKS = ("has_no_jumps", "has_all_nonzero_section_lengths", "has_no_dangling_branch", "has_unifurcation")


def load(trees: nt.Trees) -> tuple[list, list, np.ndarray]:
    """Every neuron through MorphIO (a container of MorphIO's own HDF5 layout) into NeuroM, and
    per neuron whether it is valid: MorphIO loads it and NeuroM's checks pass (no jumps, no
    zero-length section, no dangling branch, no unifurcation). Returns the MorphIO morphologies,
    NeuroM's and the validity (None where a neuron did not load)."""
    morphio, neurom = require("morphio"), require("neurom")
    from neurom.check import morphology_checks as mc

    raw, out, valid = [], [], np.zeros(len(trees), bool)
    with tempfile.TemporaryDirectory(prefix="simgan-morph-") as tmp:
        path = Path(tmp) / "trees.h5"
        names = [f"n{i}" for i in range(len(trees))]
        nt.write_container(path, trees, names)
        col = morphio.Collection(str(path))
        for i, name in enumerate(names):
            try:
                mo = col.load(name)
                m = neurom.load_morphology(mo)
            except Exception:  # an unreadable neuron is invalid, not a crash of the validation
                raw.append(None)
                out.append(None)
                continue
            valid[i] = all(bool(getattr(mc, c)(m).status) for c in CHECKS)
            raw.append(mo)
            out.append(m)
    return raw, out, valid


def sholl_profiles(trees: nt.Trees) -> np.ndarray:
    """(N, SHOLL_RADII) Sholl crossings at SHOLL_STEP_UM, 2 x SHOLL_STEP_UM, ... about the soma
    centre: NeuroM's sholl_crossings rule (a neurite segment crosses r where its ends' distances
    lie on either side of r, or on it), counted over all segments at once (NeuroM's own loop
    takes 0.3 s a neuron)."""
    a, b, neuron = trees.segments(connectors=False)
    d2a, d2b = (a ** 2).sum(1), (b ** 2).sum(1)
    lo, hi = np.minimum(d2a, d2b), np.maximum(d2a, d2b)
    r2 = (SHOLL_STEP_UM * np.arange(1, SHOLL_RADII + 1)) ** 2
    out = np.zeros((len(trees), SHOLL_RADII))
    for k, r in enumerate(r2):
        out[:, k] = np.bincount(neuron, (lo <= r) & (r <= hi), minlength=len(trees))
    return out


def measure(morphs: list, trees: nt.Trees) -> list[dict]:
    """Per neuron: {feature@type: values} for the section and neurite features, the Sholl
    profile; None where the neuron did not load."""
    neurom = require("neurom")
    out = []
    sholl = sholl_profiles(trees)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m, prof in zip(morphs, sholl):
            if m is None:
                out.append(None)
                continue
            row = {}
            present = {n.type.name for n in m.neurites}
            for t in TYPES:
                if t not in present:
                    continue
                nty = getattr(neurom.NeuriteType, t)
                for f in SECTION_FEATURES:
                    row[f"{f}@{t}"] = np.asarray(neurom.features.get(f, m, neurite_type=nty), np.float64).ravel()
                for f in NEURITE_FEATURES:
                    row[f"{f}@{t}"] = np.atleast_1d(np.asarray(neurom.features.get(f, m, neurite_type=nty),
                                                               np.float64).sum())
            row["sholl_profile"] = prof
            row["sholl_max_crossings"] = np.array([prof.max()])
            row["sholl_critical_radius"] = np.array([SHOLL_STEP_UM * float(np.argmax(prof))])
            out.append(row)
    return out


def summary_vector(row: dict, keys: list[str]) -> np.ndarray:
    """A neuron's morphometrics as numbers for the classifier: per key, the mean (and for
    pooled section features the 90th percentile) of its values, 0 where it has none."""
    out = []
    for k in keys:
        v = row.get(k, np.zeros(0)) if row is not None else np.zeros(0)
        v = v[np.isfinite(v)]
        pooled = k.split("@")[0] in SECTION_FEATURES
        out += [float(v.mean()) if len(v) else 0.0] + ([float(np.percentile(v, 90)) if len(v) else 0.0] if pooled else [])
    return np.asarray(out)


def summaries(rows: list, cls: np.ndarray, keys: list[str]) -> np.ndarray:
    """The classifier's inputs: each neuron's summary_vector and its one-hot class."""
    return np.concatenate([np.stack([summary_vector(x, keys) for x in rows]), np.eye(len(CLASSES))[cls]], 1)


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Kolmogorov-Smirnov statistic of two samples (neurom.stats.compare_two, MorphVal's test)."""
    from neurom.stats import StatTests, compare_two
    with warnings.catch_warnings():  # scipy falls back from the exact p-value on ties; the distance is exact
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(compare_two(a, b, StatTests.ks).dist)


def per_class_ks(ref_rows, ref_cls, cand_rows, cand_cls) -> dict:
    """{class: {feature@type: KS distance}} for the classes with MIN_PER_CLASS neurons in both."""
    out = {}
    for i, name in enumerate(CLASSES):
        r = [x for x, c in zip(ref_rows, ref_cls) if c == i and x is not None]
        c = [x for x, k in zip(cand_rows, cand_cls) if k == i and x is not None]
        if len(r) < MIN_PER_CLASS or len(c) < MIN_PER_CLASS:
            continue
        keys = sorted({k for x in r for k in x} - {"sholl_profile"})
        row = {}
        for k in keys:
            a = np.concatenate([x[k] for x in r if k in x])
            b = np.concatenate([x[k] for x in c if k in x] or [np.zeros(0)])
            a, b = a[np.isfinite(a)], b[np.isfinite(b)]
            if len(a) and len(b):
                row[k] = ks_distance(a, b)
            elif len(a):
                row[k] = 1.0  # the candidate lacks what the reference has
        out[name] = row
    return out


def persistence(morphs: list, cls: np.ndarray, neurite_type: str) -> dict[int, list]:
    """Per class index the TMD persistence diagrams (radial distances) of one neurite type, from
    MorphIO morphologies."""
    tmd_io = require("tmd").io
    from tmd.Topology import methods

    out: dict[int, list] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m, c in zip(morphs, cls):
            if m is None:
                continue
            try:
                n = tmd_io.load_neuron_from_morphio(m)
                ph = methods.get_ph_neuron(n, neurite_type=neurite_type)
            except Exception:  # a neuron without that type has no diagram
                continue
            if len(ph):
                out.setdefault(int(c), []).append(ph)
    return out


def tmd_distances(ref: dict, cand: dict, floor: dict, bootstrap: int = 20, seed: int = 0) -> dict:
    """Per class: L1 distance of the candidate's average persistence image to the reference's,
    and of bootstrap resamples of the NeuroTS floor sample (the floor's spread: median and 95th
    percentile)."""
    rng = np.random.default_rng(seed)
    out = {}
    for c, ref_ph in ref.items():
        cand_ph, floor_ph = cand.get(c, []), floor.get(c, [])
        if len(ref_ph) < MIN_PER_CLASS or len(cand_ph) < MIN_PER_CLASS or len(floor_ph) < MIN_PER_CLASS:
            continue
        allp = np.concatenate([np.asarray(p) for p in ref_ph + cand_ph + floor_ph])
        lim = (float(allp.min()), float(allp.max()))
        r = _average_image(ref_ph, lim)
        boots = [_image_distance(_average_image([floor_ph[j] for j in rng.integers(len(floor_ph), size=len(floor_ph))],
                                                lim), r) for _ in range(bootstrap)]
        out[CLASSES[c]] = {"distance": _image_distance(_average_image(cand_ph, lim), r),
                           "floor_median": float(np.median(boots)), "floor_p95": float(np.percentile(boots, 95)),
                           "n_candidate": len(cand_ph)}
    return out


def _average_image(phs: list, lim: tuple[float, float]) -> np.ndarray:
    from tmd.Topology import analysis
    return np.asarray(analysis.get_average_persistence_image(phs, xlim=lim, ylim=lim))


def _image_distance(a: np.ndarray, ref: np.ndarray) -> float:
    """L1 distance of two persistence images, relative to the reference's mass."""
    return float(np.abs(a - ref).sum() / max(np.abs(ref).sum(), 1e-12))


@dataclass
class Sample:
    """One sample of neurons as the comparison reads it, measured once: per neuron NeuroM's
    features, validity and class; per neurite type and class the TMD diagrams."""

    rows: list
    valid: np.ndarray
    cls: np.ndarray
    diagrams: dict

    def __len__(self) -> int:
        return len(self.cls)


def sample(trees: nt.Trees, cls) -> Sample:
    raw, morphs, valid = load(trees)
    cls = np.asarray(cls)
    return Sample(measure(morphs, trees), valid, cls,
                  {t: persistence(raw, cls, t) for t in ("basal_dendrite", "apical_dendrite")})


def compare(ref: Sample, cand: Sample, floor: Sample, seeds: int = 3, max_events: int = 20000) -> dict:
    """The figures of the trees' validation, each beside NeuroTS's floor at the same size (the
    samples from `sample`: a validation over several draws measures the reference and the
    floor once)."""
    ks = per_class_ks(ref.rows, ref.cls, cand.rows, cand.cls)
    ks_floor = per_class_ks(ref.rows, ref.cls, floor.rows, floor.cls)
    excess = {c: {k: v - ks_floor.get(c, {}).get(k, 0.0) for k, v in row.items()} for c, row in ks.items()}
    keys = sorted({k for x in ref.rows if x is not None for k in x} - {"sholl_profile"})
    ref_s = summaries(ref.rows, ref.cls, keys)
    clf = classifier_test(ref_s, summaries(cand.rows, cand.cls, keys), seeds=seeds, max_events=max_events)
    clf_floor = classifier_test(ref_s, summaries(floor.rows, floor.cls, keys), seeds=seeds, max_events=max_events)
    tmd = {}
    for t in ("basal_dendrite", "apical_dendrite"):
        for c, row in tmd_distances(ref.diagrams[t], cand.diagrams[t], floor.diagrams[t]).items():
            tmd[f"{c}@{t}"] = row
    worst = max((v for row in excess.values() for v in row.values()), default=math.nan)
    ks_max = max((v for row in ks.values() for v in row.values()), default=math.nan)
    return {"validity": float(cand.valid.mean()) if len(cand) else math.nan,
            "validity_floor": float(floor.valid.mean()) if len(floor) else math.nan,
            "ks": ks, "ks_floor": ks_floor, "ks_max": ks_max,
            "ks_floor_max": max((v for row in ks_floor.values() for v in row.values()), default=math.nan),
            "ks_excess_max": worst, "auc_morphometrics": clf["auc"], "auc_morphometrics_floor": clf_floor["auc"],
            "tmd": tmd, "tmd_over_p95": sum(r["distance"] > r["floor_p95"] for r in tmd.values()),
            "sholl": {k: np.mean([x["sholl_profile"] for x in v.rows if x is not None], 0).tolist()
                      for k, v in (("reference", ref), ("candidate", cand), ("floor", floor))}}
