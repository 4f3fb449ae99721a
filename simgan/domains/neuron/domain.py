"""The neuron domain: single-neuron projection images grown by NeuroTS (FlyCircuit-style data).

Schema: samples (64, 64), one channel (um of neurite per pixel); conditions cell_class (IN,
PC, L5_TPC; the registered model takes the names) and randomness (NeuroTS growth noise); the
reference simulator is NeuroTS + orientation + projection (simgan/domains/neuron/simulator.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from simgan.domains.base import (
    ConditionedFileDomain,
    ConvertRequest,
    check_inside,
    example_values,
    frame_columns,
    sample_rows,
    seeded_batches,
)
from simgan.domains.neuron import io as nio
from simgan.domains.neuron import morphometrics as morph
from simgan.domains.neuron import trees as ntrees
from simgan.domains.neuron import validate as nv
from simgan.domains.neuron.models import CONDITIONS, NeuronSampler, condition_array
from simgan.domains.neuron.models import FAMILIES as IMAGE_FAMILIES
from simgan.domains.neuron.observables import KEY_OBSERVABLES, image_features
from simgan.domains.neuron.simulator import (
    CLASSES,
    Projection,
    events_per_shard,
    input_hashes,
    project_trees,
    simulate,
    versions,
)
from simgan.domains.neuron.treemodels import NeuronTreeVAE, NeuronTreeVAEConfig
from simgan.errors import SimganError
from simgan.io import write_json_atomic
from simgan.metrics.gate import verdict

SCHEMA = {"domain": "neuron", "sample_shape": [64, 64], "channels": ["neurite_length_um"],
          "conditions": list(CONDITIONS), "class_names": list(CLASSES),
          "units": {"cell_class": f"class name ({', '.join(CLASSES)})", "randomness": "NeuroTS randomness (0-1)"}}


FAMILIES = {**IMAGE_FAMILIES, "neuron_tree_vae": (NeuronTreeVAEConfig, NeuronTreeVAE)}
TREE_FAMILIES = ("neuron_tree_vae",)


def projection_of_cfg(cfg) -> Projection:
    d = cfg.domain
    return Projection(pixel_um=d.pixel_um, size=d.size, soma_row=d.soma_row, soma_col=d.soma_col)


def conditions_of(ni: nio.NeuronImages) -> np.ndarray:
    return condition_array(ni.cell_class, ni.randomness)


class Neuron(ConditionedFileDomain):
    name = "neuron"
    unit = "images"
    simulator = "NeuroTS (one process per core)"
    floor_note = " (the training split), which also trains the class predictor"
    convert_formats = ("swc",)
    headline_keys = ("auc", "auc_images", "separation_power_mean", "length_mean_deviation_max", "length_spread_deviation_max",
                     "extent_mean_deviation_max", "extent_spread_deviation_max", "class_accuracy_drop",
                     "invalid_fraction", "auc_morphometrics", "ks_max")

    def read(self, path, max_events=None):
        return nio.read(path, max_events)

    def read_source(self, cfg, path):
        """The prepare stage's input, without empty images: a neuron without neurite teaches a
        surrogate nothing (the calorimeter refuses showers with no deposit the same way)."""
        data = self.read(path)
        size = data.images.shape[1]
        if "projection" in data.attrs:  # the file's own projection: the model takes its size
            if size % 16:
                raise SimganError(f"{path}: dataset 'images' holds {size} x {size} images; the networks need a multiple "
                                  "of 16 pixels (they halve the image four times)")
        elif size != cfg.domain.size:
            raise SimganError(f"{path}: dataset 'images' holds {size} x {size} images, but domain.size is "
                              f"{cfg.domain.size} and the file records no projection of its own; set domain.size={size} "
                              "(with its pixel_um, soma_row and soma_col) or give images of the configured size")
        empty = ~(data.images.reshape(len(data), -1) > 0).any(1)
        if empty.any():
            raise SimganError(f"{path}: dataset 'images' row {int(np.argmax(empty))}: an empty image ({int(empty.sum())} "
                              f"of {len(data)} hold no neurite); remove those rows (or check --scale-um where the file "
                              "came from `simgan convert`)")
        if cfg.model.family in TREE_FAMILIES and data.trees is None:
            raise SimganError(f"{path}: no group 'trees': model family {cfg.model.family} learns morphologies, and this "
                              "file holds images only (simulate again, or `simgan convert --format swc` from the "
                              "morphologies)")
        return data

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
        if family in TREE_FAMILIES:
            return cls(cfg_cls.model_validate(args["config"]), args["size"], tuple(args["soma"]), args.get("projection"))
        # channels-last convolution weights: oneDNN's convolutions on a CPU take about half the
        # time in that layout (the decoder's forward and backward at batch 32: 33 ms against 62)
        return cls(cfg_cls.model_validate(args["config"]), args["size"], tuple(args["soma"])).to(
            memory_format=torch.channels_last)

    def fit_model(self, model, data):
        if getattr(model, "grows_trees", False):
            if data.trees is None:
                raise SimganError(f"model family {model.family} learns morphologies; the training file holds images "
                                  "only (no group 'trees')")
            return model.encode_trees(data.trees, conditions_of(data))
        if data.images.shape[1] != model.size:
            raise SimganError(f"the training images are {data.images.shape[1]} pixels wide, the model's "
                              f"projection {model.size}")
        return model.fit(data.images, conditions_of(data))

    def checkpoint_fields(self, data):
        return {"schema": SCHEMA, "extra_conditions": [],
                "condition_ranges": {"randomness": [float(data.randomness.min()), float(data.randomness.max())]},
                "classes_seen": sorted({CLASSES[i] for i in np.unique(data.cell_class)})}

    def features(self, data, cfg):
        f = image_features(data.images, nio.projection_of(data.attrs) if "projection" in data.attrs
                           else projection_of_cfg(cfg))
        return np.stack([np.log(np.maximum(f[k], 1.0)) if k == "total_length" else f[k] for k in KEY_OBSERVABLES], 1)

    def sample(self, model, src, batch_size: int, precision: str, generator=None, seed: int | None = None):
        """As the shared sampler; a model that grows trees gives its neurons' trees with their images."""
        if not getattr(model, "grows_trees", False):
            return super().sample(model, src, batch_size, precision, generator, seed)
        device = next(model.parameters()).device
        c = torch.as_tensor(self.condition_matrix(src), device=device)
        trees = ntrees.Trees.concat([model.sample_trees(c[rows], g)
                                     for rows, g in seeded_batches(len(c), batch_size, device, generator, seed)])
        out = self.with_samples(src, project_trees(trees, model.projection))
        out.trees = trees
        return out

    # -- what the shared file-conditioned stages need ---------------------------------------------
    def write(self, path, data):
        return nio.write(path, data)

    def condition_matrix(self, data):
        return conditions_of(data)

    def with_samples(self, data, samples):
        size = data.images.shape[1]
        arr = samples if samples is not None else np.zeros((0, size, size), np.float32)
        attrs = {k: v for k, v in data.attrs.items() if k in ("pixel_um", "fov_um", "soma_pixel", "projection")}
        return nio.NeuronImages(arr.astype(np.float32), data.cell_class.copy(), data.randomness.copy(), CLASSES, {},
                                None, attrs)

    def simulate_data(self, cfg, out, progress, shard_index=None, shard_count=None):
        return simulate_file(cfg, out, progress, shard_index, shard_count)

    def validate_data(self, reference, candidate, floor, out_dir, vcfg):
        return validate_files(reference, candidate, floor, out_dir, vcfg)

    def convert(self, req: ConvertRequest):
        """A folder of morphologies (SWC, or what morphio reads) and a labels CSV -> an image file."""
        if not req.labels:
            raise SimganError("--format swc needs --labels CSV (columns file, cell_class, optionally randomness)")
        if req.binning:
            raise SimganError("--binning goes with calorimeter formats; --format swc takes --scale-um")
        nio.write(req.out, nio.read_swc_dir(req.input, req.labels, req.scale_um))

    def merge_files(self, shards, out):
        nio.merge_shards(shards, out)

    def summary_text(self, m, report):
        fl = m["floor"]

        def pct(k):
            return f"{100 * m[k]:.1f}% [{100 * fl[k]:.1f}%]"
        return (f"validation: {verdict(m)} (AUC observables {m['auc']:.3f} [NeuroTS floor {fl['auc']:.3f}], images "
                f"(16 x 16 blocks) {m['auc_images']:.3f} [{fl['auc_images']:.3f}]; mean "
                f"separation {m['separation_power_mean']:.4f} [{fl['separation_power_mean']:.4f}]; per class: "
                f"length mean within {pct('length_mean_deviation_max')}, spread "
                f"{pct('length_spread_deviation_max')}, extent mean {pct('extent_mean_deviation_max')}, spread "
                f"{pct('extent_spread_deviation_max')}; class accuracy {m['predictor']['candidate']['class_accuracy']:.3f}"
                f" vs {m['predictor']['reference']['class_accuracy']:.3f} on NeuroTS{self.tree_text(m)}); report: {report}")

    @staticmethod
    def tree_text(m) -> str:
        if "trees" not in m:
            return ""
        fl = m["floor"]
        return (f"; trees: valid {100 * (1 - m['invalid_fraction']):.1f}% [{100 * (1 - fl['invalid_fraction']):.1f}%], "
                f"AUC morphometrics {m['auc_morphometrics']:.3f} [{fl['auc_morphometrics']:.3f}], largest KS "
                f"{m['ks_max']:.3f} [{fl['ks_max']:.3f}]")

    # -- the registered model ------------------------------------------------------------------
    pyfunc_any_type_columns = ("cell_class",)  # a name or an index

    def pyfunc_example(self, ckpt):
        import pandas as pd
        return pd.DataFrame({"cell_class": ["IN", "PC", "L5_TPC"],
                             "randomness": example_values(ckpt.get("condition_ranges", {}), "randomness", [0.1, 0.25, 0.4])})

    exports = True

    def export_graph(self, model, ckpt):
        from simgan.export import ExportGraph, Port  # lazy: only `simgan export` and `register` need it

        if getattr(model, "grows_trees", False):
            raise SimganError(f"model family {model.family}: its export (the step network, with the growth loop as "
                              "the named post-step) is not built yet; use the checkpoint or the registered model "
                              "(register.export: none)")
        if getattr(model.cfg, "pixel_correlation", 0.0):
            raise SimganError(f"model.pixel_correlation {model.cfg.pixel_correlation}: the correlated hit noise is not "
                              "part of the export; export a model sampled with independent pixels (0)")
        s = model.size
        graph = NeuronSampler(model)
        inputs = [Port("conditions", ("N", 2), "1, 1", f"cell_class as its index ({', '.join(f'{i} {c}' for i, c in enumerate(CLASSES))}) "
                       "as a float, NeuroTS randomness (inside the training range)"),
                  Port("z", ("N", model.cfg.latent_dim), "1", "the neuron's code", noise="normal")]
        if graph.drawn:
            inputs += [Port("hit_uniform", ("N", s, s), "1", "per pixel: whether it holds neurite", noise="uniform"),
                       Port("pixel_normal", ("N", s, s), "1", "per pixel: its length's draw", noise="normal")]
        outputs = [Port("image", ("N", s, s), "um", "projected neurite length per pixel (the soma at the centre)")]
        lo, hi = ckpt.get("condition_ranges", {}).get("randomness", [0.1, 0.4])

        def example(n, generator):
            cls = torch.randint(0, len(CLASSES), (n,), generator=generator).float()
            c = torch.stack([cls, lo + (hi - lo) * torch.rand(n, generator=generator)], 1)
            noise = [torch.randn(n, model.cfg.latent_dim, generator=generator)]
            if graph.drawn:
                noise += [torch.rand(n, s, s, generator=generator), torch.randn(n, s, s, generator=generator)]
            return (c, *noise)

        return ExportGraph(graph, inputs, outputs, example)

    def pyfunc_predict(self, model, ckpt, frame, seed: int, precision: str, extrapolate: bool = False):
        rnd = frame_columns(frame, {"randomness": "NeuroTS's randomness, 0-1"})["randomness"]
        if "cell_class" not in frame.columns:
            raise ValueError(f"model input: missing column 'cell_class' (have {list(frame.columns)}); expected the "
                             f"class name ({', '.join(CLASSES)}) or its index 0-{len(CLASSES) - 1}")
        cls = class_indices(frame["cell_class"], "model input")
        if (rnd < 0).any() or (rnd > 1).any():
            i = int(np.argmax((rnd < 0) | (rnd > 1)))
            raise ValueError(f"model input: column 'randomness' row {i}: {rnd[i]:g}; expected a value in [0, 1]")
        if not extrapolate:
            check_inside(ckpt.get("condition_ranges", {}), {"randomness": rnd})
        c = torch.as_tensor(condition_array(cls, rnd), dtype=torch.float32)
        return sample_rows(model, c, None, seed, precision)


def class_indices(values, where: str) -> np.ndarray:
    """Class names (or indices) -> indices into CLASSES; an unknown label is named."""
    out = []
    for i, v in enumerate(list(values)):
        if isinstance(v, str):
            if v not in CLASSES:
                raise ValueError(f"{where}: row {i}: cell_class {v!r} unknown (known: {', '.join(CLASSES)})")
            out.append(CLASSES.index(v))
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
                and float(v).is_integer() and 0 <= int(v) < len(CLASSES):
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
                          ev["conditions"]["randomness"], CLASSES, ev["truth"], ev["seed"], attrs, ev["trees"])
    nio.write(out, ni)
    return ni


_MEASURED: dict = {}


def measured_once(path, ni: nio.NeuronImages) -> morph.Sample:
    """The trees of a reference or floor file measured once per process (the draws of one
    validation share them), keyed by the file's identity and the rows taken."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, len(ni), hash(ni.cell_class.tobytes()))
    if key not in _MEASURED:
        _MEASURED.clear()
        _MEASURED[key] = morph.sample(ni.trees, ni.cell_class)
    return _MEASURED[key]


def validate_files(reference, candidate, floor, out_dir, vcfg) -> dict:
    """The candidate and (at the same size) independent NeuroTS images against the reference."""
    out_dir, ref, cand, train, fl_ni = DOMAIN.validation_inputs(reference, candidate, floor, out_dir)
    ref_summary = nv.summarise(ref)  # once, for the candidate and for the floor
    m = nv.compare(ref_summary, (cand_summary := nv.summarise(cand)), vcfg.classifier_seeds,
                   vcfg.classifier_max_events)
    fl = nv.compare(ref_summary, (fl_summary := nv.summarise(fl_ni)), vcfg.classifier_seeds,
                    vcfg.classifier_max_events)
    predictor = nv.train_predictor(train, vcfg.predictor_steps)
    pred = {"reference": nv.predictor_scores(predictor, ref), "candidate": nv.predictor_scores(predictor, cand)}
    meta = json.loads(cand.attrs.get("metadata", "{}") or "{}")
    m.update({"reference": str(reference), "candidate": str(candidate), "n_reference": len(ref),
              "n_candidate": len(cand), "floor": fl, "predictor": pred,
              "class_accuracy_drop": pred["reference"]["class_accuracy"] - pred["candidate"]["class_accuracy"],
              "floor_source": f"{len(fl_ni)} NeuroTS images of {floor} (independent of the reference, the "
                              "candidate's size); the class predictor trains on all of that file",
              "candidate_checkpoint_sha256": meta.get("checkpoint_sha256"), "domain": "neuron"})
    if all(x.trees is not None for x in (ref, cand, fl_ni)):  # trees on every side: judged as trees too
        m["trees"] = morph.compare(measured_once(reference, ref), morph.sample(cand.trees, cand.cell_class),
                                   measured_once(floor, fl_ni), vcfg.classifier_seeds, vcfg.classifier_max_events)
        figures, floor_figures = nv.tree_figures(m["trees"])
        m.update(figures)
        m["floor"].update(floor_figures)
    m["gate"] = nv.gate(m, vcfg.gate)
    plots = nv.plots(ref_summary, cand_summary, fl_summary, out_dir) if vcfg.plots else []
    if vcfg.plots and "trees" in m:
        plots.append(nv.tree_plot(ref, cand, out_dir))
    nv.write_report(out_dir, m, plots)
    write_json_atomic(out_dir / "metrics.json", m)
    return m


DOMAIN = Neuron()
