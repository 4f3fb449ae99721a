"""Stage prepare: read any supported input, check it, split train/val/test by seed.

The held-out test split is written to its own file and never read by training.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline import simulate
from pipeline.contract import Context, run_domain_stage, stage_dir, write_manifest
from simgan.config import ExperimentConfig
from simgan.data import calochallenge as cc
from simgan.data.convert import read_any
from simgan.data.splits import split_indices
from simgan.errors import SimganError

SPLITS = ("train", "val", "test")


def inputs(cfg: ExperimentConfig) -> dict[str, Path]:
    src = Path(cfg.prepare.input) if cfg.prepare.input else simulate.outputs(cfg)["showers"]
    return {"source": src}


def outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    d = stage_dir(cfg, "prepare")
    return {s: d / f"{s}.h5" for s in SPLITS}


def run(cfg: ExperimentConfig, ctx: Context) -> dict[str, Path]:
    t0 = time.time()
    done = run_domain_stage("prepare", cfg, ctx, inputs(cfg), outputs(cfg))
    if done is not None:
        return done
    src = inputs(cfg)["source"]
    p = cfg.prepare
    # the domain's geometry is checked against the file's own (or given to files without one)
    data = read_any(src, p.format, cfg.domain.geometry, p.root_tree, p.root_energy_branch, p.root_shower_branch)
    data.metadata = {**data.metadata, "prepared_from": str(src)}
    thr = cfg.domain.threshold_mev
    empty = ~(data.showers >= thr).any(axis=1) if thr > 0 else ~(data.showers > 0).any(axis=1)
    if empty.any():
        raise SimganError(f"{src}: {int(empty.sum())} of {len(data)} showers deposit nothing above the "
                          f"{thr:g} MeV readout threshold (first: row {int(np.argmax(empty))}); a surrogate cannot "
                          "learn a response of 0: remove them, or check the file and domain.threshold_mev")
    if p.conditions is not None:
        missing = [k for k in p.conditions if k not in data.conditions]
        if missing:
            why = "; ".join(cc.why_not_condition(src, k) for k in missing) if str(src).endswith((".h5", ".hdf5")) \
                else f"no branch {missing}"
            raise SimganError(f"{src}: {why} for prepare.conditions {p.conditions} "
                              f"(conditions found: {sorted(data.conditions) or 'none'})")
        data.conditions = {k: data.conditions[k] for k in p.conditions}
    if data.conditions:
        print(f"[prepare] model conditions besides the incident energy: {', '.join(sorted(data.conditions))}"
              + (" (all extra datasets of the input; prepare.conditions chooses)" if p.conditions is None else ""))
    idx = split_indices(len(data), p.fractions, cfg.seed)
    out = outputs(cfg)
    for name in SPLITS:
        part = data.subset(idx[name])
        part.metadata = {**part.metadata, "split": name}
        cc.write(out[name], part)
    write_manifest(cfg, "prepare", {"source": src}, out, t0,
                   counts={k: int(len(v)) for k, v in idx.items()},
                   extra={"n_voxels": data.binning.n_voxels, "geometry": data.binning.digest()})
    return out
