"""Neuron image files (HDF5) with their checks, and SWC morphologies rasterised into them.

    /images                 float32 (N, 64, 64), um of neurite per pixel
    /conditions/cell_class  int8 (N,)    attrs: class_names = ["IN", "PC", "L5_TPC"]
    /conditions/randomness  float32 (N,)
    /truth/total_length, n_tips, n_bifurcations, max_radial_distance, frac_in_fov  (N,)  (optional)
    /seed                   int64 (N,)   (simulated files)
    /trees/...              the neurons' morphologies, one table (simgan.domains.neuron.trees; optional:
                            simulated and converted files have them, image-only files stay valid)
    attrs: domain=neuron, schema_version, pixel_um, fov_um, soma_pixel, projection, generator,
           versions (JSON), inputs_sha256 (JSON)
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from simgan.domains.neuron import trees as ntrees
from simgan.domains.neuron.simulator import CLASSES, TRUTH, Projection, image_and_truth, orient
from simgan.errors import SimganError
from simgan.extras import require
from simgan.io import atomic_path, open_hdf5, ordered_shards, quiet_failed_hdf5

SCHEMA_VERSION = 1
CONDITIONS = ("cell_class", "randomness")


@dataclass
class NeuronImages:
    images: np.ndarray  # (N, size, size) float32
    cell_class: np.ndarray  # (N,) int8, index into class_names
    randomness: np.ndarray  # (N,) float32
    class_names: tuple[str, ...] = CLASSES
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    seed: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    trees: ntrees.Trees | None = None  # the neurons' morphologies, where the file keeps them

    def __len__(self) -> int:
        return len(self.images)

    @property
    def conditions(self) -> dict[str, np.ndarray]:
        return {"cell_class": self.cell_class, "randomness": self.randomness}

    def subset(self, idx) -> NeuronImages:
        return NeuronImages(self.images[idx], self.cell_class[idx], self.randomness[idx], self.class_names,
                            {k: v[idx] for k, v in self.truth.items()},
                            None if self.seed is None else self.seed[idx], dict(self.attrs),
                            None if self.trees is None else self.trees.subset(idx))


def projection_attrs(proj: Projection) -> dict:
    return {"pixel_um": proj.pixel_um, "fov_um": proj.fov_um, "soma_pixel": [proj.soma_row, proj.soma_col],
            "projection": json.dumps({**proj.to_dict(), "axis": "z", "up": "+y (apical dendrite)",
                                      "substep_um": 0.5}, sort_keys=True)}


def projection_of(attrs: dict) -> Projection:
    p = json.loads(attrs.get("projection", "{}") or "{}")
    return Projection(**{k: p[k] for k in ("pixel_um", "size", "soma_row", "soma_col") if k in p})


def check(ni: NeuronImages, where: str, size: int | None = None) -> None:
    """Image shape and values (finite, >= 0), class labels, randomness; names the first bad row."""
    im = ni.images
    if im.ndim != 3 or im.shape[1] != im.shape[2]:
        raise SimganError(f"{where}: dataset 'images' has shape {im.shape}, expected (N, {size or 64}, {size or 64})")
    if size is not None and im.shape[1] != size:
        raise SimganError(f"{where}: dataset 'images' holds {im.shape[1]} x {im.shape[2]} images, expected "
                          f"{size} x {size} (the projection's size)")
    n = len(im)
    flat = im.reshape(n, -1)
    bad = ~np.isfinite(flat).all(1)
    if bad.any():
        raise SimganError(f"{where}: dataset 'images' row {int(np.argmax(bad))}: NaN or infinite pixels")
    neg = (flat < 0).any(1)
    if neg.any():
        r = int(np.argmax(neg))
        raise SimganError(f"{where}: dataset 'images' row {r}: negative pixel ({flat[r].min():g}); pixels are um of "
                          "neurite, >= 0")
    for k, v in (("cell_class", ni.cell_class), ("randomness", ni.randomness)):
        if v.shape != (n,):
            raise SimganError(f"{where}: dataset 'conditions/{k}' has shape {v.shape}, expected ({n},)")
    out = (ni.cell_class < 0) | (ni.cell_class >= len(ni.class_names))
    if out.any():
        r = int(np.argmax(out))
        raise SimganError(f"{where}: dataset 'conditions/cell_class' row {r}: {int(ni.cell_class[r])} is no index "
                          f"into class_names {list(ni.class_names)}")
    bad_r = ~np.isfinite(ni.randomness) | (ni.randomness < 0) | (ni.randomness > 1)
    if bad_r.any():
        r = int(np.argmax(bad_r))
        raise SimganError(f"{where}: dataset 'conditions/randomness' row {r}: {ni.randomness[r]:g}, expected a "
                          "value in [0, 1]")


def write(path, ni: NeuronImages) -> Path:
    path = Path(path)
    check(ni, str(path))
    with atomic_path(path, suffix=".h5") as tmp:
        quiet_failed_hdf5()
        with h5py.File(tmp, "w") as f:
            s = ni.images.shape[1]
            f.create_dataset("images", data=ni.images.astype(np.float32), compression="gzip", compression_opts=1,
                             chunks=(min(max(len(ni), 1), 1024), s, s))
            c = f.create_group("conditions")
            c.create_dataset("cell_class", data=ni.cell_class.astype(np.int8))
            c["cell_class"].attrs["class_names"] = list(ni.class_names)
            c.create_dataset("randomness", data=ni.randomness.astype(np.float32))
            if ni.truth:
                t = f.create_group("truth")
                for k, v in ni.truth.items():
                    t.create_dataset(k, data=np.asarray(v, np.float64))
            if ni.seed is not None:
                f.create_dataset("seed", data=np.asarray(ni.seed, np.int64))
            if ni.trees is not None:
                ntrees.write_group(f.create_group("trees"), ni.trees)
            for k, v in ni.attrs.items():
                if k not in ("schema_version", "domain"):
                    f.attrs[k] = v
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["domain"] = "neuron"
    return path


def read(path, max_events: int | None = None) -> NeuronImages:
    path = Path(path)
    with open_hdf5(path) as f:
        if "images" not in f:
            raise SimganError(f"{path}: missing dataset 'images' (a neuron image file has images (N, 64, 64), "
                              "conditions/cell_class and conditions/randomness)")
        for k in CONDITIONS:
            if f"conditions/{k}" not in f:
                raise SimganError(f"{path}: missing dataset 'conditions/{k}'")
        ds = f["images"]
        if ds.dtype.kind != "f":
            raise SimganError(f"{path}: dataset 'images' has dtype {ds.dtype}, expected floating point (um per pixel)")
        n = ds.shape[0]
        m = n if max_events is None else min(n, max_events)
        cc = f["conditions/cell_class"]
        if cc.dtype.kind not in "iu":
            raise SimganError(f"{path}: dataset 'conditions/cell_class' has dtype {cc.dtype}, expected integers "
                              "(indices into its class_names attribute)")
        names = tuple(str(x) for x in cc.attrs.get("class_names", CLASSES))
        unknown = [x for x in names if x not in CLASSES]
        if unknown:
            raise SimganError(f"{path}: dataset 'conditions/cell_class' attribute class_names has {unknown}; known "
                              f"classes: {list(CLASSES)}")
        truth = {k: np.asarray(v[:m], np.float64) for k, v in f["truth"].items()} if "truth" in f else {}
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if hasattr(v, "item") else v)
                 for k, v in f.attrs.items()}
        trees = ntrees.read_group(f["trees"], str(path), m) if "trees" in f else None
        if trees is not None and len(trees) != m:
            raise SimganError(f"{path}: group 'trees' holds {len(trees)} neurons, dataset 'images' {n}")
        ni = NeuronImages(np.asarray(ds[:m], np.float32), np.asarray(cc[:m]).astype(np.int64),
                          np.asarray(f["conditions/randomness"][:m], np.float32), names, truth,
                          np.asarray(f["seed"][:m], np.int64) if "seed" in f else None, attrs, trees)
    check(ni, str(path), projection_of(ni.attrs).size if "projection" in ni.attrs else None)
    if names != CLASSES:  # the file's own order -> this domain's indices
        ni.cell_class = np.array([CLASSES.index(names[i]) for i in ni.cell_class], dtype=np.int64)
        ni.class_names = CLASSES
    return ni


def merge_shards(paths, out) -> Path:
    """Shards of one simulation (same seed and size, each index once) into one file, in order."""
    parts = ordered_shards([read(q) for q in paths], list(paths))
    first = parts[0].attrs
    merged = NeuronImages(np.concatenate([p.images for p in parts]), np.concatenate([p.cell_class for p in parts]),
                          np.concatenate([p.randomness for p in parts]), CLASSES,
                          {k: np.concatenate([p.truth[k] for p in parts]) for k in parts[0].truth},
                          np.concatenate([p.seed for p in parts]) if parts[0].seed is not None else None,
                          {k: v for k, v in first.items() if k not in ("shard_index", "shard_count", "first_event")},
                          ntrees.Trees.concat([p.trees for p in parts]) if parts[0].trees is not None else None)
    if len(merged) != int(first["events_total"]):
        raise SimganError(f"merged {len(merged)} events, the simulation has {first['events_total']}")
    return write(out, merged)


def morphio_reason(exc: Exception) -> str:
    """morphio's message without its terminal colours, on one line: where (file:line) and why
    ("Unable to parse this line", "Sample id: 3 refers to non-existant parent ID: 7")."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    parts = [ln.strip() for ln in text.splitlines() if ln.strip()]
    where = parts[0] if parts and re.search(r":\d+:(error|warning)$", parts[0]) else None
    why = " ".join(p for p in parts if p != where) or type(exc).__name__
    line = re.search(r":(\d+):(?:error|warning)$", where).group(1) if where else None
    return (f"line {line}: " if line else "") + f"{why} ({type(exc).__name__})"


def read_labels(csv_path) -> dict[str, tuple[int, float]]:
    """CSV with columns file, cell_class (a class name) and optionally randomness (NeuroTS's growth
    randomness, 0 to 1) -> {file: (class, r)}."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise SimganError(f"{csv_path}: labels file not found")
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        rows = list(reader)
    if not header or not {"file", "cell_class"} <= set(header):
        raise SimganError(f"{csv_path}: expected a header with columns file, cell_class (and optionally randomness)"
                          + (f"; found {header}" if header else ": the file is empty"))
    if not rows:
        raise SimganError(f"{csv_path}: a header ({', '.join(header)}) and no rows: label at least one morphology")
    out, lines = {}, {}
    for i, r in enumerate(rows, start=2):
        if r["cell_class"] not in CLASSES:
            raise SimganError(f"{csv_path} line {i}: cell_class {r['cell_class']!r} unknown (known: "
                              f"{', '.join(CLASSES)})")
        try:
            rnd = float(r.get("randomness") or 0.0)
        except ValueError:
            raise SimganError(f"{csv_path} line {i}: randomness {r.get('randomness')!r} is not a number") from None
        if not 0.0 <= rnd <= 1.0:
            raise SimganError(f"{csv_path} line {i}: randomness {rnd:g} is outside [0, 1] (NeuroTS's growth "
                              "randomness)")
        if r["file"] in out:
            raise SimganError(f"{csv_path} line {i}: {r['file']} is labelled again (first on line {lines[r['file']]}); "
                              "give each morphology one row")
        lines[r["file"]] = i
        out[r["file"]] = (CLASSES.index(r["cell_class"]), rnd)
    return out


# a morphology whose neurites lie less than this fraction inside the image, or that spans fewer
# than MIN_SPAN_PIXELS pixels, was read with the wrong --scale-um (the simulator's reach over 99%)
MIN_FRACTION_IN_IMAGE = 0.5
MIN_SPAN_PIXELS = 2.0


def check_scale(path, truth: dict, proj: Projection, scale_um: float) -> None:
    """The file's units, as `scale_um` converts them, put the neuron on the image: most of its
    neurite inside, and more than a couple of pixels across."""
    reach = truth["max_radial_distance"]
    if truth["frac_in_fov"] < MIN_FRACTION_IN_IMAGE:
        raise SimganError(f"{path}: with --scale-um {scale_um:g} only {100 * truth['frac_in_fov']:.2g}% of its "
                          f"{truth['total_length']:.4g} um of neurite falls inside the {proj.fov_um:g} um image "
                          f"(reach {reach:.4g} um): --scale-um converts the file's units to um (1 for files in um, "
                          "1000 for files in mm)")
    if reach < MIN_SPAN_PIXELS * proj.pixel_um:
        raise SimganError(f"{path}: with --scale-um {scale_um:g} the neuron reaches only {reach:.3g} um from the soma, "
                          f"under {MIN_SPAN_PIXELS:g} pixels of {proj.pixel_um:g} um: --scale-um converts the file's "
                          "units to um (1 for files in um)")


def read_swc_dir(folder, labels_csv, scale_um: float = 1.0, proj: Projection = Projection()) -> NeuronImages:
    """Every morphology of the labels CSV in `folder` (SWC, or any format morphio reads), oriented
    and rasterised like the simulator's, its tree kept; `scale_um` converts the file's units to um."""
    morphio = require("morphio")

    folder = Path(folder)
    if not folder.is_dir():
        raise SimganError(f"{folder}: not a folder of morphologies")
    labels = read_labels(labels_csv)
    images, cls, rnd, truth, kept = [], [], [], {k: [] for k in TRUTH}, []
    for name, (c, r) in labels.items():
        path = folder / name
        if not path.is_file():
            raise SimganError(f"{labels_csv}: {name}: no such file in {folder}")
        if path.stat().st_size == 0:
            raise SimganError(f"{path}: empty morphology file")
        try:
            morph = morphio.Morphology(str(path))
        except Exception as exc:  # morphio's own errors name the line, in colour
            raise SimganError(f"{path}: not a readable morphology: {morphio_reason(exc)}") from None
        try:
            tree = orient(ntrees.from_morphio(morph, scale_um))
        except SimganError as exc:
            raise SimganError(f"{path}: {exc}") from None
        ntrees.check_tree(tree, str(path))
        img, tr = image_and_truth(tree, proj)
        kept.append(tree)
        check_scale(path, tr, proj, scale_um)
        images.append(img)
        cls.append(c)
        rnd.append(r)
        for k in TRUTH:
            truth[k].append(tr[k])
    if not images:
        raise SimganError(f"{labels_csv}: no rows")
    return NeuronImages(np.stack(images), np.array(cls, np.int64), np.array(rnd, np.float32), CLASSES,
                        {k: np.array(v, np.float64) for k, v in truth.items()}, None,
                        {**projection_attrs(proj), "source": str(folder), "scale_um": scale_um}, ntrees.Trees.of(kept))
