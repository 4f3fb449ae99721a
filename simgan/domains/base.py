"""The domain interface: what the trainer, the stages, the command line and the registry ask
of a physics domain. A domain gives how to read its files, the schema (sample shape,
channels, condition names and units) that every checkpoint stores, how to build a model
from that schema, the training table, the features the validation monitor compares, its
stage bodies (simulate, prepare, generate, validate) and its reference simulator;
`pipeline/` keeps the generic parts (paths, manifests, the runner, the command line).

Hooks take typed values (configs, paths, numbers), never the command line's namespace.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from simgan.checkpoint import build_model, checkpoint_metadata, load_checkpoint, resolve_device
from simgan.errors import SimganError
from simgan.io import atomic_path, check_output_dir, same_file, write_json_atomic
from simgan.seeding import derive_seed
from simgan.splits import split_indices


@dataclass
class GenerateRequest:
    """`simgan generate`, typed: where the model comes from (a loaded checkpoint or a registered
    model's URI), where the conditions come from, and how to sample. `out` and `fmt` are
    checked already (a name that fits the format, no input overwritten)."""

    out: Path
    fmt: str = "hdf5"
    checkpoint: Path | None = None
    ckpt: dict | None = None  # the checkpoint, loaded once
    model_uri: str | None = None
    loaded: object = None  # the registered model, loaded (mlflow.pyfunc), when model_uri is given
    exported: object = None  # an export folder, opened (simgan.export.ExportedSampler), for --export
    events: int | None = None
    energies_from: Path | None = None  # a file of the domain's kind: its conditions are used
    layer_energies_from: Path | None = None
    energy_range: tuple[float, float] | None = None
    batch_size: int = 1000
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    compare_geant4: int = 0
    shard_index: int | None = None
    shard_count: int | None = None
    dask: bool = False
    scheduler: str | None = None
    dask_workers: int = 2
    shards: int | None = None
    progress: bool = True


@dataclass
class ConvertRequest:
    """`simgan convert`, typed: `input` in `format` to the domain's file `out` (checked already)."""

    input: Path
    out: Path
    format: str = "auto"
    binning: str | None = None
    labels: Path | None = None
    scale_um: float = 1.0
    cores: int = 1  # corsika: core positions per shower
    core: tuple[float, float] | None = None  # corsika: one fixed core position (m) instead of drawn ones
    seed: int = 0  # corsika: the core positions' and the tank simulation's random numbers


class Domain:
    """The interface. Data objects are domain-specific (ShowerData, Footprints); each has len()."""

    name = ""
    # stage name -> function(cfg, inputs, outputs, progress) -> {"counts", "extra"} for the manifest
    # (simulate, prepare, generate, validate; train is the shared trainer, register the registry)
    stages: dict = {}
    # stages whose body also takes shards=[files of a job array] to merge (the Slurm chain):
    # a job array of `simgan STAGE --shard-index I --shard-count K`, then `simgan merge --stage`
    sharded_stages: tuple[str, ...] = ()
    # `simgan convert --format F`: the input formats this domain's `convert` reads
    convert_formats: tuple[str, ...] = ()
    # validation figures a registered version carries as metrics and tags (those present)
    headline_keys: tuple[str, ...] = ("separation_power_mean",)

    def read(self, path, max_events: int | None = None):
        raise NotImplementedError

    def generate_outputs(self, cfg, folder: Path) -> dict[str, Path]:
        """What the generate stage writes into `folder`: the samples ("showers"), the timing, and
        any extra samples the validation reports beside them (keys it names)."""
        return {"showers": folder / "generated.h5", "timing": folder / "timing.json"}

    def model_args(self, cfg, data) -> dict:
        """What a checkpoint stores to rebuild its model: "domain" (this name), the model config,
        schema, shapes."""
        raise NotImplementedError

    def build_model(self, args: dict):
        raise NotImplementedError

    def fit_model(self, model, data) -> dict:
        """Fit the model's transform on the training data; the trainer's tables."""
        raise NotImplementedError

    def checkpoint_fields(self, data) -> dict:
        return {}

    def after_training(self, cfg, model_path, train_path) -> dict | None:
        """A fit after training on the training split (a calibration, a latent sampler), stored in
        the checkpoint at model_path (atomically); returns what to record, or None when the
        config asks for nothing."""
        return None

    def features(self, data, cfg):
        """(N, F) per-event features for the validation monitor (the first is its headline)."""
        raise NotImplementedError

    def sample_like(self, model, data, generator, precision: str = "fp32"):
        """Generated samples for the conditions of `data`, as the same kind of object."""
        raise NotImplementedError

    # -- the registered model ----------------------------------------------------------------
    def pyfunc_example(self, ckpt):
        """The registered model's input example: a DataFrame of the schema's conditions."""
        raise NotImplementedError

    # the registered model's code (MLflow models from code), logged by `register`
    pyfunc_code = Path(__file__).with_name("pyfunc.py")

    # input columns the registered model takes in more than one type (its signature says any)
    pyfunc_any_type_columns: tuple[str, ...] = ()
    # input columns a consumer may leave out (the domain's pyfunc_predict supplies the default)
    pyfunc_optional_columns: tuple[str, ...] = ()

    def pyfunc_predict(self, model, ckpt, frame, seed: int, precision: str, extrapolate: bool = False):
        """The registered model's predict: the frame's conditions checked (`frame_columns`,
        `check_inside` unless `extrapolate`), then sampled (`sample_rows`). Bad input raises
        ValueError naming the column and row."""
        raise NotImplementedError

    def pyfunc_artifacts(self, ckpt: dict, source: str, folder: Path) -> dict[str, str]:
        """Files the registered model carries besides the checkpoint (name -> path written
        under `folder`)."""
        return {}

    def pyfunc_load(self, ckpt: dict, artifacts: dict[str, str]) -> dict:
        """What the loaded pyfunc keeps of those files (its `extras`)."""
        return {}

    exports = False  # whether export_graph is implemented
    generates_from_export = False  # whether generate_to takes an export folder (GenerateRequest.exported)

    def export_graph(self, model, ckpt: dict):
        """`simgan export`: the model's sampler as one graph of the conditions and the noise
        (simgan.export.ExportGraph)."""
        raise SimganError(f"the {self.name} domain's models cannot be exported yet (`simgan export` covers the "
                          "air-shower and neuron models)")

    # -- the command line's hooks --------------------------------------------------------------
    def simulate_file(self, cfg, out, progress: bool, shard_index: int | None, shard_count: int | None,
                      dask: bool = False, scheduler: str | None = None) -> str:
        """`simgan simulate`: run the reference simulator into `out` (one shard of it if given);
        returns the line to print."""
        raise SimganError(f"the {self.name} domain has no reference simulator: bring its data with `simgan convert`")

    def simulate_shards(self, cfg) -> int:
        """How many job-array tasks the Slurm chain splits the simulate stage into."""
        return max(1, -(-cfg.simulate.events // cfg.simulate.shard_events))

    def validate_files(self, reference, candidate, floor, out_dir, vcfg, domain_cfg, dask=False, scheduler=None,
                       extra=None) -> dict:
        """`simgan validate`: the candidate (and the floor sample at the same size) against the
        reference; writes metrics.json, plots and report.html into out_dir; returns the metrics
        (with "domain": this name)."""
        raise NotImplementedError

    def summary_text(self, m: dict, report) -> str:
        """One line: the verdict and the headline figures, each with its floor in brackets."""
        raise NotImplementedError

    def generate_to(self, req: GenerateRequest) -> str:
        """`simgan generate` for this domain's model; returns what to print."""
        raise NotImplementedError

    def convert(self, req: ConvertRequest) -> None:
        """`simgan convert`: read req.input in req.format and write this domain's file to req.out."""
        raise SimganError(f"the {self.name} domain converts no input format")

    def merge_files(self, shards: list, out) -> None:
        """`simgan merge`: shard files of one run (same seed) into one file."""
        raise NotImplementedError

    def is_legacy_file(self, f) -> bool:
        """An open HDF5 file without a `domain` attribute that holds this domain's data (files
        written before domains were recorded); only the first domain, the calorimeter, has such."""
        return False


class ConditionedFileDomain(Domain):
    """A domain whose models generate for the conditions of a file of its own kind (air showers,
    neurons): `prepare` splits a file, `generate` samples for the test split's conditions row by
    row, `validate` needs an independent simulated floor. A subclass gives `unit` (what one
    sample is called), `simulator` (named in messages), `write`, `condition_matrix` (data ->
    (N, C) float32 model conditions), `with_samples` (data, generated array -> data of the same
    conditions), `simulate_data` (cfg, out, progress, shard_index, shard_count -> data written)
    and `validate_data` (reference, candidate, floor, out_dir, vcfg -> metrics)."""

    unit = "events"
    simulator = "the simulator"
    monitor_batch = 1024  # rows per sampling call in the training monitor
    floor_note = ""  # why validate needs --floor, beyond the floor itself
    generates_from_export = True

    def after_training(self, cfg, model_path, train_path):
        """model.latent_sampler=flow: the VAE's latent flow fitted to the codes of the training
        split (the model's `fit_latent_flow(data, conditions, seed)`), stored into model.pt atomically."""
        ckpt = load_checkpoint(model_path)
        if ckpt["model_args"]["config"].get("latent_sampler", "prior") != "flow":
            return None
        model = self.build_model(ckpt["model_args"])
        model.load_state_dict(ckpt["model"])
        model.eval()
        data = self.read(train_path)
        info = model.fit_latent_flow(data, self.condition_matrix(data), cfg.seed)
        ckpt["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        with atomic_path(model_path, suffix=".pt") as tmp:
            torch.save(ckpt, tmp)
        return info

    def write(self, path, data):
        raise NotImplementedError

    def read_source(self, cfg, path):
        """The prepare stage's input (a subclass may read other formats)."""
        return self.read(path)

    def condition_matrix(self, data) -> np.ndarray:
        raise NotImplementedError

    def with_samples(self, data, samples: np.ndarray):
        raise NotImplementedError

    def simulate_data(self, cfg, out, progress, shard_index=None, shard_count=None):
        raise NotImplementedError

    def validate_data(self, reference, candidate, floor, out_dir, vcfg) -> dict:
        raise NotImplementedError

    # -- what follows is shared ------------------------------------------------------------------
    def validation_inputs(self, reference, candidate, floor, out_dir):
        """The checked output folder, the reference and candidate (at least 20 each, the same
        conditions row by row) and the floor sample: as many rows of `floor` as the reference,
        drawn with a fixed seed."""
        out_dir = check_output_dir(out_dir)
        if same_file(reference, candidate):
            raise SimganError(f"--candidate {candidate} is the reference file itself: nothing would be validated")
        if same_file(reference, floor):
            raise SimganError(f"--floor {floor} is the reference file itself: the floor compares the reference with "
                              "other simulated events (e.g. the train split); against itself it says nothing")
        ref, cand = self.read(reference), self.read(candidate)
        if len(ref) < 20 or len(cand) < 20:
            raise SimganError(f"{candidate if len(cand) < 20 else reference}: {min(len(ref), len(cand))} {self.unit}; "
                              "validation needs at least 20 in each sample")
        if len(ref) != len(cand) or not np.allclose(self.condition_matrix(ref), self.condition_matrix(cand)):
            raise SimganError(f"{candidate}: its conditions are not the reference's row by row; generate from "
                              f"{reference}")
        src = self.read(floor)
        rows = np.random.default_rng(0).choice(len(src), min(len(ref), len(src)), replace=False)
        return out_dir, ref, cand, src, src.subset(np.sort(rows))

    def sample(self, model, src, batch_size: int, precision: str, generator=None, seed: int | None = None):
        """Samples for the conditions of `src`, `batch_size` at a time: drawn from `generator`, or
        with each batch seeded by (seed, its first row), so a file's samples do not depend on how
        it is cut."""
        device = next(model.parameters()).device
        c = torch.as_tensor(self.condition_matrix(src), device=device)
        parts = [model.sample(c[rows], None, g, precision=precision).cpu().numpy()
                 for rows, g in seeded_batches(len(c), batch_size, device, generator, seed)]
        return self.with_samples(src, np.concatenate(parts) if parts else None)

    def sample_like(self, model, data, generator, precision="fp32"):
        return self.sample(model, data, self.monitor_batch, precision, generator=generator)

    def generate_file(self, model, src, out, batch_size: int, seed: int, precision: str, metadata: dict) -> dict:
        """Samples for the conditions of `src`, written atomically with the checkpoint's metadata."""
        return self.write_samples(out, lambda: self.sample(model, src, batch_size, precision, seed=seed), metadata,
                                  {"device": str(next(model.parameters()).device), "precision": precision})

    def write_samples(self, out, draw, metadata: dict, info: dict) -> dict:
        """`draw()`'s samples (data of this domain), timed, written atomically with `metadata`;
        returns the timing, then `info`."""
        t0 = time.perf_counter()
        data = draw()
        seconds = time.perf_counter() - t0
        data.attrs["metadata"] = json.dumps(metadata, sort_keys=True)
        self.write(out, data)
        return {"events": len(data), "sample_seconds": seconds, "events_per_s": len(data) / max(seconds, 1e-9), **info}

    sharded_stages = ("simulate",)

    def stage_simulate(self, cfg, ins, out, progress, shards=None):
        """The simulator; with `shards` (files of `simulate --shard-index I --shard-count K` in
        RUN/simulate/shards/), those are merged into the stage's output instead."""
        t0 = time.perf_counter()
        if shards is not None:
            if not shards:
                raise SimganError(f"no simulate shards to merge (expected {out['showers'].parent}/shards/shard_*.h5)")
            for q in shards:
                attrs = self.read(q, 1).attrs
                if attrs.get("seed") != cfg.seed or attrs.get("events_total") != cfg.simulate.events:
                    raise SimganError(f"{q}: a shard of another run (seed {attrs.get('seed')}, "
                                      f"{attrs.get('events_total')} events; this config: seed {cfg.seed}, "
                                      f"{cfg.simulate.events})")
            self.merge_files(shards, out["showers"])  # checks the merged file holds events_total
            n = cfg.simulate.events
        else:
            n = len(self.simulate_data(cfg, out["showers"], progress))
        seconds = time.perf_counter() - t0
        return {"counts": {"events": n}, "extra": {"simulator_seconds": seconds, "events_per_s": n / max(seconds, 1e-9)}}

    def stage_prepare(self, cfg, ins, out, progress):
        data = self.read_source(cfg, ins["source"])
        idx = split_indices(len(data), cfg.prepare.fractions, cfg.seed)
        for name, rows in idx.items():
            part = data.subset(rows)
            part.attrs = {**part.attrs, "split": name, "prepared_from": str(ins["source"])}
            self.write(out[name], part)
        return {"counts": {k: int(len(v)) for k, v in idx.items()}}

    def stage_generate(self, cfg, ins, out, progress):
        device = resolve_device(cfg.generate.device)
        ckpt = load_checkpoint(ins["model"])
        model = build_model(ckpt, self, device)
        test = self.read(ins["test"], cfg.generate.events)
        warn_outside(ckpt.get("condition_ranges", {}), test.conditions, str(ins["test"]))
        timing = self.generate_file(model, test, out["showers"], cfg.generate.batch_size, cfg.seed,
                                    cfg.generate.precision, checkpoint_metadata(ins["model"]))
        write_json_atomic(out["timing"], timing)
        print(f"[generate] {timing['events']} {self.unit} at {timing['events_per_s']:.0f} {self.unit}/s ({device})")
        return {"counts": {"events": timing["events"]}, "extra": {"timing": timing}}

    def stage_validate(self, cfg, ins, out, progress):
        m = self.validate_data(ins["reference"], ins["candidate"], ins["floor"], out["metrics"].parent, cfg.validate)
        return {"counts": {"reference": m["n_reference"], "candidate": m["n_candidate"]},
                "extra": {"gate_pass": m["gate"]["pass"]}}

    @property
    def stages(self):
        return {"simulate": self.stage_simulate, "prepare": self.stage_prepare, "generate": self.stage_generate,
                "validate": self.stage_validate}

    def simulate_file(self, cfg, out, progress, shard_index, shard_count, dask=None, scheduler=None) -> str:
        if dask:
            raise SimganError(f"{self.simulator} runs without dask: drop --dask (split it with "
                              "--shard-index/--shard-count)")
        data = self.simulate_data(cfg, out, progress, shard_index, shard_count)
        return f"wrote {out}: {len(data)} {self.unit}" + (
            f" (shard {shard_index} of {shard_count})" if shard_count else "")

    def validate_files(self, reference, candidate, floor, out_dir, vcfg, domain_cfg, dask=None, scheduler=None,
                       extra=None):
        if not floor:
            raise SimganError(f"{self.name} validation needs --floor: an independent simulated sample{self.floor_note}")
        if dask or extra:
            raise SimganError(f"{self.name} validation takes neither --dask nor --ablation")
        return self.validate_data(reference, candidate, floor, out_dir, vcfg)

    def generate_to(self, req: GenerateRequest) -> str:
        """A checkpoint (or a registered model) of this domain: samples for the conditions of
        req.energies_from (a file of its kind)."""
        if not req.energies_from or req.layer_energies_from or req.energy_range or req.fmt != "hdf5":
            raise SimganError(f"a {self.name} model generates HDF5 {self.unit} for the conditions of a {self.name} "
                              "file: give --energies-from FILE (its conditions are used) and an .h5 --out")
        if req.shard_count is not None or req.dask or req.compare_geant4:
            raise SimganError(f"a {self.name} model generates in one process (no --shard-index, --dask or "
                              "--compare-geant4)")
        src = self.read(req.energies_from, req.events)
        if req.exported is not None:
            warn_outside(req.exported.sidecar.get("condition_ranges", {}), src.conditions, str(req.energies_from))
            timing = self.generate_from_export(req, src)
        else:
            if req.loaded is not None:  # a registered model: its pyfunc holds the built model and the checkpoint's keys
                surrogate = req.loaded.unwrap_python_model()
                model, ckpt, metadata = surrogate.model, surrogate.ckpt, {"model_uri": req.model_uri}
            else:
                model, ckpt = build_model(req.ckpt, self, resolve_device(req.device)), req.ckpt
                metadata = checkpoint_metadata(req.checkpoint)
            warn_outside(ckpt.get("condition_ranges", {}), src.conditions, str(req.energies_from))
            timing = self.generate_file(model, src, req.out, req.batch_size, req.seed, req.precision, metadata)
        return (f"wrote {req.out}: {timing['events']} {self.unit} at {timing['events_per_s']:.0f} {self.unit}/s\n"
                + json.dumps(timing))

    def samples_from_export(self, sampler, outputs: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """The samples (what `with_samples` takes) from an export's outputs for one batch: its
        first output, or where the sidecar names a post-step, the domain's reference code run
        on them (a subclass that has one overrides this)."""
        if sampler.sidecar.get("post_step"):
            raise SimganError(f"--export {sampler.folder}: the graph's outputs need a post-step this domain does not "
                              "run from an export; generate from the checkpoint")
        return outputs[0]

    def generate_from_export(self, req: GenerateRequest, src) -> dict:
        """Samples for the conditions of `src` from an export folder (its graph takes the domain's
        condition matrix and returns the samples; simgan.export.ExportedSampler draws the noise,
        each batch from (seed, its first row)); returns the timing."""
        sampler = req.exported
        c = self.condition_matrix(src)

        def draw():
            parts = []
            for lo in range(0, len(c), req.batch_size):
                rng = np.random.default_rng([req.seed, lo])
                parts.append(self.samples_from_export(sampler, sampler([c[lo:lo + req.batch_size]], rng), rng))
            return self.with_samples(src, np.concatenate(parts) if parts else None)

        where = {"export": str(sampler.folder), "export_format": sampler.fmt}
        return self.write_samples(req.out, draw, {**where, "checkpoint_sha256": sampler.sidecar.get("checkpoint_sha256")},
                                  where)


# -- the registered model's input, shared by the domains' pyfunc_predict --------------------------

def frame_columns(frame, columns: dict[str, str], where: str = "model input") -> dict[str, np.ndarray]:
    """The named columns of a pandas DataFrame as float64 arrays, checked: a DataFrame, not
    empty, every column present, numeric and finite. columns: name -> what it holds (for the
    message)."""
    import pandas as pd  # a registered model's consumer has it (mlflow needs it)

    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{where}: expected a pandas DataFrame with the columns {', '.join(columns)}, "
                         f"got {type(frame).__name__}")
    if len(frame) == 0:
        raise ValueError(f"{where}: the DataFrame has no rows; give one row per sample with the columns "
                         f"{', '.join(columns)}")
    missing = [k for k in columns if k not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing} (have {list(frame.columns)}); expected "
                         + "; ".join(f"{k}: {v}" for k, v in columns.items()))
    out = {}
    for k, what in columns.items():
        col = frame[k]
        if col.dtype == bool or not (pd.api.types.is_numeric_dtype(col.dtype)):
            raise ValueError(f"{where}: column {k!r} has dtype {col.dtype}; expected numbers ({what})")
        v = col.to_numpy(np.float64)
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{where}: column {k!r} row {i}: {v[i]}; expected a finite number ({what})")
        out[k] = v
    return out


def example_values(ranges: dict, name: str, default, log: bool = False) -> np.ndarray:
    """Three values of a condition inside the model's training range (at 20, 50 and 80% of it,
    geometrically with `log`) for the registered model's input example; `default` without one."""
    if name not in ranges:
        return np.asarray(default, np.float64)
    lo, hi = ranges[name]
    q = np.array([0.2, 0.5, 0.8])
    return lo * (hi / lo) ** q if log and lo > 0 else lo + (hi - lo) * q


def check_inside(ranges: dict, cond: dict, where: str = "model input") -> None:
    """A registered model refuses conditions outside the range it was trained on (by more than
    the margin `warn_outside` allows): a consumer would get an extrapolation without a word.
    The command line only warns (its user reads stderr); params={'extrapolate': True} lets a
    consumer through."""
    for k, (lo, hi), out in _outside(ranges, cond):
        v = np.asarray(cond[k])
        i = int(np.argmax(out))
        raise ValueError(f"{where}: column {k!r} row {i}: {v[i]:.6g} is outside the training range "
                         f"[{lo:.6g}, {hi:.6g}] ({int(out.sum())} of {len(v)} rows); the model would extrapolate. "
                         "Pass params={'extrapolate': True} to generate there anyway")


def seeded_batches(n: int, batch_size: int, device, generator=None, seed: int | None = None):
    """(rows, generator) per batch of n rows: one generator throughout, or, with `seed`, one
    seeded by (seed, the batch's first row), so that samples do not depend on how rows are cut."""
    g = generator if seed is None else torch.Generator(device=device)
    for lo in range(0, n, batch_size):
        if seed is not None:
            g.manual_seed(derive_seed(seed, lo))
        yield slice(lo, lo + batch_size), g


def sample_rows(model, c: torch.Tensor, x: torch.Tensor | None, seed: int, precision: str,
                chunk: int = 4096, where: str = "model input") -> np.ndarray:
    """`model.sample` over the rows `chunk` at a time into one preallocated array (the peak is
    the output plus one chunk, not a copy per step); refused before the allocation when the
    output would not fit in the memory available, and checked to be finite."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    n = len(c)
    out = None
    for lo in range(0, n, chunk):
        part = model.sample(c[lo:lo + chunk], None if x is None else x[lo:lo + chunk], g, precision=precision)
        part = part.float().cpu().numpy()
        if out is None:
            need = n * part[0].nbytes
            budget = output_budget()
            if need > budget:
                per = max(1, int(budget // max(part[0].nbytes, 1)))
                raise ValueError(f"{where}: {n} rows give {need / 2**30:.1f} GiB of output, more than one call's budget "
                                 f"of {budget / 2**30:.1f} GiB ({BUDGET_VARIABLE}, at most 80% of the memory "
                                 f"available); call predict on at most {per} rows at a time")
            out = np.empty((n, *part.shape[1:]), part.dtype)
        out[lo:lo + len(part)] = part
    bad = ~np.isfinite(out.reshape(n, -1)).all(1)
    if bad.any():
        raise ValueError(f"{where}: the model gave non-finite values for {int(bad.sum())} of {n} rows (first: row "
                         f"{int(np.argmax(bad))}); its conditions are beyond what it can generate")
    return out


BUDGET_VARIABLE = "SIMGAN_MAX_OUTPUT_GIB"


def output_budget() -> float:
    """Bytes one predict call may return: SIMGAN_MAX_OUTPUT_GIB (default 2 GiB), and never more
    than 80% of the memory available now (a node shared with other jobs has less than it shows
    free for long)."""
    try:
        gib = float(os.environ.get(BUDGET_VARIABLE, "2"))
    except ValueError:
        raise ValueError(f"{BUDGET_VARIABLE}={os.environ[BUDGET_VARIABLE]!r}: expected a number of GiB") from None
    if not gib > 0:
        raise ValueError(f"{BUDGET_VARIABLE}={gib:g}: expected a number of GiB above 0")
    return min(gib * 2**30, 0.8 * available_memory())


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable; the physical total where that is unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _outside(ranges: dict, cond: dict):
    """(name, (lo, hi), mask) for each condition with values outside its training range by more
    than the margin a held-out split can reach past the training extremes (5% of the span; for
    a positive quantity never below 95% of its lower bound, so a range from 1 GeV flags 0.5)."""
    for k, (lo, hi) in ranges.items():
        if k not in cond:
            continue
        v = np.asarray(cond[k], np.float64)
        span = 0.05 * (hi - lo)
        floor = lo - span if lo <= 0 else max(lo - span, 0.95 * lo)
        out = (v < floor) | (v > hi + span)
        if out.any():
            yield k, (lo, hi), out


def warn_outside(ranges: dict, cond: dict, source: str) -> None:
    """Generating outside the range a model was trained on: say which condition and the range."""
    for k, (lo, hi), out in _outside(ranges, cond):
        v = np.asarray(cond[k])
        print(f"simgan: warning: {source}: {int(out.sum())} of {len(v)} events have {k} outside the training "
              f"range [{lo:.4g}, {hi:.4g}] (e.g. {v[out][0]:.4g}); the model extrapolates there", file=sys.stderr)
