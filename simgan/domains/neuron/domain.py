"""The neuron domain: single-neuron projection images grown by NeuroTS (FlyCircuit-style data).

Schema: samples (64, 64), one channel (um of neurite per pixel); conditions cell_class (IN,
PC, L5_TPC; the registered model takes the names) and randomness (NeuroTS growth noise); the
reference simulator is NeuroTS + orientation + projection (simgan/domains/neuron/simulator.py).
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from simgan.domains import Domain, warn_outside
from simgan.domains.neuron import io as nio
from simgan.domains.neuron.models import CONDITIONS, FAMILIES, condition_array
from simgan.domains.neuron.simulator import CLASSES, Projection, events_per_shard, input_hashes, simulate, versions
from simgan.errors import SimganError
from simgan.seeding import derive_seed

SCHEMA = {"domain": "neuron", "sample_shape": [64, 64], "channels": ["neurite_length_um"],
          "conditions": list(CONDITIONS), "class_names": list(CLASSES),
          "units": {"cell_class": f"class name ({', '.join(CLASSES)})", "randomness": "NeuroTS randomness (0-1)"}}


def projection_of_cfg(cfg) -> Projection:
    d = cfg.domain
    return Projection(pixel_um=d.pixel_um, size=d.size, soma_row=d.soma_row, soma_col=d.soma_col)


def conditions_of(ni: nio.NeuronImages) -> np.ndarray:
    return condition_array(ni.cell_class, ni.randomness)


class Neuron(Domain):
    name = "neuron"
    headline_keys = ("auc", "auc_images", "separation_power_mean", "length_mean_deviation_max", "length_spread_deviation_max",
                     "extent_mean_deviation_max", "extent_spread_deviation_max", "class_accuracy_drop")

    def read(self, path, max_events=None):
        return nio.read(path, max_events)

    def model_args(self, cfg, data) -> dict:
        proj = nio.projection_of(data.attrs) if "projection" in data.attrs else projection_of_cfg(cfg)
        return {"domain": "neuron", "config": cfg.model.model_dump(mode="json"), "size": proj.size,
                "soma": [proj.soma_row, proj.soma_col], "projection": proj.to_dict(),
                "schema": {**SCHEMA, "sample_shape": [proj.size, proj.size]}}

    def build_model(self, args):
        family = args["config"]["family"]
        if family not in FAMILIES:
            raise SimganError(f"model family {family!r} is not a neuron model ({sorted(FAMILIES)})")
        cfg_cls, cls = FAMILIES[family]
        return cls(cfg_cls.model_validate(args["config"]), args["size"], tuple(args["soma"]))

    def fit_model(self, model, data):
        if data.images.shape[1] != model.size:
            raise SimganError(f"the training images are {data.images.shape[1]} pixels wide, the model's "
                              f"projection {model.size}")
        return model.fit(data.images, conditions_of(data))

    def checkpoint_fields(self, data):
        return {"schema": SCHEMA, "extra_conditions": [],
                "condition_ranges": {"randomness": [float(data.randomness.min()), float(data.randomness.max())]},
                "classes_seen": sorted({CLASSES[i] for i in np.unique(data.cell_class)})}

    def features(self, data, cfg):
        from simgan.domains.neuron.observables import KEY_OBSERVABLES, image_features
        f = image_features(data.images, nio.projection_of(data.attrs) if "projection" in data.attrs
                           else projection_of_cfg(cfg))
        return np.stack([np.log(np.maximum(f[k], 1.0)) if k == "total_length" else f[k] for k in KEY_OBSERVABLES], 1)

    def sample_like(self, model, data, generator, precision="fp32"):
        return sample_images(model, data, 1024, precision, generator=generator)

    # -- stage bodies ------------------------------------------------------------------------
    def stage_simulate(self, cfg, ins, out, progress):
        t0 = time.perf_counter()
        ni = simulate_file(cfg, out["showers"], progress)
        seconds = time.perf_counter() - t0
        return {"counts": {"events": len(ni)}, "extra": {"simulator_seconds": seconds,
                                                         "events_per_s": len(ni) / max(seconds, 1e-9)}}

    def stage_prepare(self, cfg, ins, out, progress):
        from simgan.data.splits import split_indices
        ni = nio.read(ins["source"])
        idx = split_indices(len(ni), cfg.prepare.fractions, cfg.seed)
        for name, rows in idx.items():
            part = ni.subset(rows)
            part.attrs = {**part.attrs, "split": name, "prepared_from": str(ins["source"])}
            nio.write(out[name], part)
        return {"counts": {k: int(len(v)) for k, v in idx.items()}}

    def stage_generate(self, cfg, ins, out, progress):
        from simgan.checkpoint import model_from_checkpoint, resolve_device
        from simgan.generate import checkpoint_metadata
        from simgan.io import write_json_atomic

        device = resolve_device(cfg.generate.device)
        model, ckpt = model_from_checkpoint(ins["model"], device)
        test = nio.read(ins["test"], cfg.generate.events)
        warn_outside(ckpt.get("condition_ranges", {}), test.conditions, str(ins["test"]))
        timing = generate_images(model, test, out["showers"], cfg.generate.batch_size, cfg.seed,
                                 cfg.generate.precision, checkpoint_metadata(ins["model"]))
        write_json_atomic(out["timing"], timing)
        print(f"[generate] {timing['events']} images at {timing['events_per_s']:.0f} images/s ({device})")
        return {"counts": {"events": timing["events"]}, "extra": {"timing": timing}}

    def stage_validate(self, cfg, ins, out, progress):
        m = validate_files(ins["reference"], ins["candidate"], ins["floor"], out["metrics"].parent, cfg.validate)
        return {"counts": {"reference": m["n_reference"], "candidate": m["n_candidate"]},
                "extra": {"gate_pass": m["gate"]["pass"]}}

    @property
    def stages(self):
        return {"simulate": self.stage_simulate, "prepare": self.stage_prepare, "generate": self.stage_generate,
                "validate": self.stage_validate}

    # -- command-line hooks --------------------------------------------------------------------
    def simulate_file(self, cfg, out, progress, shard_index, shard_count, dask=None, scheduler=None) -> str:
        if dask:
            raise SimganError("the neuron simulator runs one NeuroTS process per core: run it without --dask "
                              "(or split it with --shard-index/--shard-count)")
        ni = simulate_file(cfg, out, progress, shard_index, shard_count)
        return f"wrote {out}: {len(ni)} NeuroTS neurons" + (
            f" (shard {shard_index} of {shard_count})" if shard_count else "")

    def merge_files(self, shards, out):
        nio.merge_shards(shards, out)

    def validate_files(self, reference, candidate, floor, out_dir, vcfg, domain_cfg, dask=None, scheduler=None,
                       extra=None):
        if not floor:
            raise SimganError("neuron validation needs --floor: independent NeuroTS images (the training split), "
                              "which also train the class predictor")
        if dask or extra:
            raise SimganError("neuron validation takes neither --dask nor --ablation")
        return validate_files(reference, candidate, floor, out_dir, vcfg)

    def summary_text(self, m, report):
        from simgan.validate import verdict
        fl = m["floor"]

        def pct(k):
            return f"{100 * m[k]:.1f}% [{100 * fl[k]:.1f}%]"
        return (f"validation: {verdict(m)} (AUC observables {m['auc']:.3f} [NeuroTS floor {fl['auc']:.3f}], images "
                f"(16 x 16 blocks) {m['auc_images']:.3f} [{fl['auc_images']:.3f}]; mean "
                f"separation {m['separation_power_mean']:.4f} [{fl['separation_power_mean']:.4f}]; per class: "
                f"length mean within {pct('length_mean_deviation_max')}, spread "
                f"{pct('length_spread_deviation_max')}, extent mean {pct('extent_mean_deviation_max')}, spread "
                f"{pct('extent_spread_deviation_max')}; class accuracy {m['predictor']['candidate']['class_accuracy']:.3f}"
                f" vs {m['predictor']['reference']['class_accuracy']:.3f} on NeuroTS); report: {report}")

    def generate_cli(self, args, ckpt, out, fmt):
        return generate_cli(args, ckpt, out, fmt)

    # -- the registered model ------------------------------------------------------------------
    def pyfunc_example(self, ckpt):
        import pandas as pd
        return pd.DataFrame({"cell_class": ["IN", "PC", "L5_TPC"], "randomness": [0.1, 0.25, 0.4]})

    def pyfunc_predict(self, model, ckpt, frame, seed: int, precision: str):
        missing = [k for k in CONDITIONS if k not in frame.columns]
        if missing:
            raise ValueError(f"input needs the column(s) {missing} (have {list(frame.columns)}): cell_class "
                             f"({', '.join(CLASSES)}) and randomness (0-1)")
        cls = class_indices(frame["cell_class"], "model input")
        rnd = np.asarray(frame["randomness"], np.float64)
        if not np.isfinite(rnd).all() or (rnd < 0).any() or (rnd > 1).any():
            raise ValueError("model input: randomness must lie in [0, 1]")
        warn_outside(ckpt.get("condition_ranges", {}), {"randomness": rnd}, "model input")
        g = torch.Generator()
        g.manual_seed(int(seed))
        c = torch.as_tensor(condition_array(cls, rnd), dtype=torch.float32)
        return model.sample(c, None, g, precision=precision).numpy()


def class_indices(values, where: str) -> np.ndarray:
    """Class names (or indices) -> indices into CLASSES; an unknown label is named."""
    out = []
    for i, v in enumerate(list(values)):
        if isinstance(v, str):
            if v not in CLASSES:
                raise ValueError(f"{where}: row {i}: cell_class {v!r} unknown (known: {', '.join(CLASSES)})")
            out.append(CLASSES.index(v))
        elif float(v).is_integer() and 0 <= int(v) < len(CLASSES):
            out.append(int(v))
        else:
            raise ValueError(f"{where}: row {i}: cell_class {v!r}: expected one of {', '.join(CLASSES)}")
    return np.array(out, np.int64)


def simulate_file(cfg, out, progress: bool = True, shard_index: int | None = None,
                  shard_count: int | None = None) -> nio.NeuronImages:
    """NeuroTS neurons of the config into `out` (atomically); a shard I of K holds a contiguous
    block of the run's events (each event's class, randomness and seed fixed by its index)."""
    s = cfg.simulate
    rows = range(s.events) if not shard_count else events_per_shard(s.events, shard_index, shard_count)
    if not len(rows):
        raise SimganError(f"--shard-count {shard_count} exceeds the {s.events} events")
    proj = projection_of_cfg(cfg)
    t0 = time.perf_counter()
    ev = simulate(len(rows), cfg.seed, tuple(s.classes), (s.randomness_min, s.randomness_max), s.workers, progress,
                  rows.start, proj)
    seconds = time.perf_counter() - t0
    attrs = {**nio.projection_attrs(proj), "generator": "NeuroTS topological synthesis (simgan.domains.neuron)",
             "versions": json.dumps(versions(), sort_keys=True),
             "inputs_sha256": json.dumps(input_hashes(), sort_keys=True), "seed": cfg.seed, "events_total": s.events,
             "simulator_seconds": seconds, "classes": json.dumps(list(s.classes))}
    if shard_count:
        attrs.update({"shard_index": shard_index, "shard_count": shard_count, "first_event": rows.start})
    ni = nio.NeuronImages(ev["images"], ev["conditions"]["cell_class"].astype(np.int64),
                          ev["conditions"]["randomness"], CLASSES, ev["truth"], ev["seed"], attrs)
    nio.write(out, ni)
    return ni


def sample_images(model, src: nio.NeuronImages, batch_size: int, precision: str, generator=None,
                  seed: int | None = None) -> nio.NeuronImages:
    """Generated images for the conditions of `src`, `batch_size` at a time: drawn from
    `generator`, or with each batch seeded by (seed, its first row)."""
    device = next(model.parameters()).device
    c = torch.as_tensor(conditions_of(src), device=device)
    g = generator if seed is None else torch.Generator(device=device)
    parts = []
    for lo in range(0, len(c), batch_size):
        if seed is not None:
            g.manual_seed(derive_seed(seed, lo))
        parts.append(model.sample(c[lo:lo + batch_size], None, g, precision=precision).cpu().numpy())
    arr = np.concatenate(parts) if parts else np.zeros((0, model.size, model.size), np.float32)
    attrs = {k: v for k, v in src.attrs.items() if k in ("pixel_um", "fov_um", "soma_pixel", "projection")}
    return nio.NeuronImages(arr.astype(np.float32), src.cell_class.copy(), src.randomness.copy(), CLASSES, {}, None,
                            attrs)


def generate_images(model, test: nio.NeuronImages, out, batch_size: int, seed: int, precision: str,
                    metadata: dict) -> dict:
    t0 = time.perf_counter()
    ni = sample_images(model, test, batch_size, precision, seed=seed)
    seconds = time.perf_counter() - t0
    ni.attrs["metadata"] = json.dumps(metadata, sort_keys=True)
    nio.write(out, ni)
    return {"events": len(ni), "sample_seconds": seconds, "events_per_s": len(ni) / max(seconds, 1e-9),
            "device": str(next(model.parameters()).device), "precision": precision}


def generate_cli(args, ckpt: dict, out, fmt) -> int:
    """A neuron checkpoint: images for the conditions of --energies-from (a neuron image file)."""
    from simgan.checkpoint import model_of, resolve_device
    from simgan.generate import checkpoint_metadata

    if not args.energies_from or args.layer_energies_from or args.energy_range or fmt != "hdf5":
        raise SimganError("a neuron model generates HDF5 images for the conditions of a neuron image file: give "
                          "--energies-from FILE (its cell_class and randomness are used) and an .h5 --out")
    if args.shard_index is not None or args.shard_count is not None or args.dask or args.compare_geant4:
        raise SimganError("a neuron model generates in one process (no --shard-index, --dask or --compare-geant4)")
    model = model_of(ckpt, resolve_device(args.device))
    src = nio.read(args.energies_from, args.events)
    warn_outside(ckpt.get("condition_ranges", {}), src.conditions, str(args.energies_from))
    timing = generate_images(model, src, out, args.batch_size, args.seed, args.precision,
                             checkpoint_metadata(args.checkpoint))
    print(f"wrote {out}: {timing['events']} images at {timing['events_per_s']:.0f} images/s")
    print(json.dumps(timing))
    return 0


def validate_files(reference, candidate, floor, out_dir, vcfg) -> dict:
    """The candidate and (at the same size) independent NeuroTS images against the reference."""
    from simgan.domains.neuron import validate as nv
    from simgan.io import check_output_dir, write_json_atomic
    from simgan.validate import same_file

    out_dir = check_output_dir(out_dir)
    if same_file(reference, candidate):
        raise SimganError(f"--candidate {candidate} is the reference file itself: nothing would be validated")
    ref, cand = nio.read(reference), nio.read(candidate)
    if len(ref) < 20 or len(cand) < 20:
        raise SimganError(f"{candidate if len(cand) < 20 else reference}: {min(len(ref), len(cand))} images; "
                          "validation needs at least 20 in each sample")
    if len(ref) != len(cand) or not (np.array_equal(ref.cell_class, cand.cell_class)
                                     and np.allclose(ref.randomness, cand.randomness)):
        raise SimganError(f"{candidate}: its conditions are not the reference's row by row; generate from {reference}")
    train = nio.read(floor)
    rows = np.random.default_rng(0).choice(len(train), min(len(ref), len(train)), replace=False)
    fl_ni = train.subset(np.sort(rows))
    ref_summary = nv.summarise(ref)  # once, for the candidate and for the floor
    m = nv.compare(ref_summary, (cand_summary := nv.summarise(cand)), vcfg.classifier_seeds,
                   vcfg.classifier_max_events)
    fl = nv.compare(ref_summary, nv.summarise(fl_ni), vcfg.classifier_seeds, vcfg.classifier_max_events)
    predictor = nv.train_predictor(train)
    pred = {"reference": nv.predictor_scores(predictor, ref), "candidate": nv.predictor_scores(predictor, cand)}
    meta = json.loads(cand.attrs.get("metadata", "{}") or "{}")
    m.update({"reference": str(reference), "candidate": str(candidate), "n_reference": len(ref),
              "n_candidate": len(cand), "floor": fl, "predictor": pred,
              "class_accuracy_drop": pred["reference"]["class_accuracy"] - pred["candidate"]["class_accuracy"],
              "floor_source": f"{len(fl_ni)} NeuroTS images of {floor} (independent of the reference, the "
                              "candidate's size); the class predictor trains on all of that file",
              "candidate_checkpoint_sha256": meta.get("checkpoint_sha256"), "domain": "neuron"})
    m["gate"] = nv.gate(m, vcfg.gate)
    plots = nv.plots(ref, cand, ref_summary, cand_summary, out_dir) if vcfg.plots else []
    nv.write_report(out_dir, m, plots)
    write_json_atomic(out_dir / "metrics.json", m)
    return m


DOMAIN = Neuron()
