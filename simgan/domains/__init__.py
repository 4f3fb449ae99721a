"""Physics domains behind one interface (a plain registry by name).

A domain gives the trainer, the stages and the registry what they must not guess: how to
read its files, the schema (sample shape, channels, condition names and units) that every
checkpoint stores, how to build a model from that schema, the training table, the
features the validation monitor compares, a condition sampler and an optional reference
simulator, and its stage bodies (simulate, prepare, generate, validate); `pipeline/` keeps
the generic parts (paths, manifests, the runner).
"""

from __future__ import annotations

import importlib
import sys

import numpy as np

from simgan.errors import SimganError

NAMES = ("calorimeter", "airshower", "neuron")


class Domain:
    """The interface. Data objects are domain-specific (ShowerData, Footprints); each has len()."""

    name = ""
    # stage name -> function(cfg, inputs, outputs, progress) -> {"counts", "extra"} for the manifest
    # (simulate, prepare, generate, validate; train is the shared trainer, register the registry)
    stages: dict = {}
    # stages whose body also takes shards=[files of a job array] to merge (the Slurm chain)
    sharded_stages: tuple[str, ...] = ()
    # validation figures a registered version carries as metrics and tags (those present)
    headline_keys: tuple[str, ...] = ("separation_power_mean",)

    def read(self, path, max_events: int | None = None):
        raise NotImplementedError

    def model_args(self, cfg, data) -> dict:
        """What a checkpoint stores to rebuild its model: config, schema, shapes."""
        raise NotImplementedError

    def build_model(self, args: dict):
        raise NotImplementedError

    def fit_model(self, model, data) -> dict:
        """Fit the model's transform on the training data; the trainer's tables."""
        raise NotImplementedError

    def checkpoint_fields(self, data) -> dict:
        return {}

    def features(self, data, cfg):
        """(N, F) per-event features for the validation monitor."""
        raise NotImplementedError

    def sample_like(self, model, data, generator, precision: str = "fp32"):
        """Generated samples for the conditions of `data`, as the same kind of object."""
        raise NotImplementedError

    def pyfunc_example(self, ckpt):
        """The registered model's input example: a DataFrame of the schema's conditions."""
        raise NotImplementedError

    def pyfunc_predict(self, model, ckpt, frame, seed: int, precision: str):
        """The registered model's predict: the frame's conditions checked, then sampled."""
        raise NotImplementedError

    def simulate_file(self, cfg, out, progress: bool, shard_index: int | None, shard_count: int | None,
                      dask: str | None = None, scheduler: str | None = None) -> str:
        """`simgan simulate`: run the reference simulator into `out` (one shard of it if given);
        returns the line to print."""
        raise SimganError(f"the {self.name} domain has no reference simulator: bring its data with `simgan convert`")

    def validate_files(self, reference, candidate, floor, out_dir, vcfg, domain_cfg, dask=None, scheduler=None,
                       extra=None) -> dict:
        """`simgan validate`: the candidate (and the floor sample at the same size) against the
        reference; writes metrics.json, plots and report.html into out_dir; returns the metrics."""
        raise NotImplementedError

    def summary_text(self, m: dict, report) -> str:
        """One line: the verdict and the headline figures, each with its floor in brackets."""
        raise NotImplementedError

    def generate_cli(self, args, ckpt: dict | None, out, fmt: str) -> int:
        """`simgan generate` for this domain's checkpoint (its conditions from the arguments);
        out and fmt are checked already."""
        raise NotImplementedError

    def merge_files(self, shards: list, out) -> None:
        """`simgan merge`: shard files of one run (same seed) into one file."""
        raise NotImplementedError


def warn_outside(ranges: dict, cond: dict, source: str) -> None:
    """Generating outside the range a model was trained on: say which condition and the range."""
    for k, (lo, hi) in ranges.items():
        if k not in cond:
            continue
        v = np.asarray(cond[k])
        span = (hi - lo) * 0.05  # a held-out split reaches a little past the training extremes
        out = (v < lo - span) | (v > hi + span)
        if out.any():
            print(f"simgan: warning: {source}: {int(out.sum())} of {len(v)} events have {k} outside the training "
                  f"range [{lo:.4g}, {hi:.4g}] (e.g. {v[out][0]:.4g}); the model extrapolates there",
                  file=sys.stderr)


def file_domain(path) -> str:
    """The domain a data file declares (footprint files carry domain=airshower; others: calorimeter)."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("domain", "calorimeter"))
    except OSError:
        return "calorimeter"  # the calorimeter reader names the problem


_CACHE: dict[str, Domain] = {}


def get_domain(name: str) -> Domain:
    if name not in NAMES:
        raise SimganError(f"domain {name!r}: unknown (known: {', '.join(NAMES)})")
    if name not in _CACHE:
        _CACHE[name] = importlib.import_module(f"simgan.domains.{name}.domain").DOMAIN
    return _CACHE[name]


def domain_of_args(args: dict) -> Domain:
    """The domain a checkpoint's model_args belong to (calorimeter before domains were stored)."""
    return get_domain(args.get("domain", "calorimeter"))
