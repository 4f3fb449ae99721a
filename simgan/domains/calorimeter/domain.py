"""The calorimeter domain: CaloChallenge-style showers (incident energy, voxels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from simgan.checkpoint import load_checkpoint
from simgan.cluster import dask_client
from simgan.cpus import usable_cpus
from simgan.domains.base import (
    ConvertRequest,
    Domain,
    GenerateRequest,
    check_inside,
    example_values,
    frame_columns,
    sample_rows,
)
from simgan.domains.calorimeter import stages as calo_stages
from simgan.domains.calorimeter.data import calochallenge as cc
from simgan.domains.calorimeter.data.binning import parse_binning_xml
from simgan.domains.calorimeter.data.convert import convert
from simgan.domains.calorimeter.features import high_level_features
from simgan.domains.calorimeter.generate import ENERGY_COLUMN, calorimeter_model, checkpoint_binning
from simgan.domains.calorimeter.models.energy import layer_energies
from simgan.domains.calorimeter.models.registry import model_from_args
from simgan.domains.calorimeter.sim.geant4 import DaskGeantPool
from simgan.domains.calorimeter.sim.produce import merge_shards, settings_of, simulate_to_file
from simgan.domains.calorimeter.validate import validate
from simgan.errors import SimganError
from simgan.io import atomic_path
from simgan.metrics.gate import verdict


class Calorimeter(Domain):
    name = "calorimeter"
    sharded_stages = ("simulate", "generate")
    headline_keys = ("auc_high", "auc_low", "fpd", "kpd", "separation_power_mean")
    convert_formats = ("auto", "calochallenge", "calogan", "root")
    stages = calo_stages.STAGES

    def read(self, path, max_events=None):
        return cc.read(path, max_events=max_events)

    def generate_outputs(self, cfg, folder):
        ext = "root" if cfg.generate.format == "root" else "h5"
        out = {"showers": folder / f"generated.{ext}", "timing": folder / "timing.json"}
        if cfg.generate.ablation:
            out["ablation"] = folder / "generated_ablation.h5"
        if cfg.train.calibrate:
            out["uncalibrated"] = folder / "generated_uncalibrated.h5"
        return out

    def is_legacy_file(self, f) -> bool:
        return (cc.ENERGY_KEY in f and cc.SHOWER_KEY in f) or "layer_0" in f

    def model_args(self, cfg, data) -> dict:
        b = data.binning
        return {"domain": "calorimeter", "config": cfg.model.model_dump(mode="json"), "n_voxels": b.n_voxels,
                "layer_voxels": [l.n_voxels for l in b.layers if l.n_voxels],
                "n_extra": len(data.conditions), "threshold_mev": cfg.domain.threshold_mev}

    def build_model(self, args):
        return model_from_args(args)

    def fit_model(self, model, data):
        keys = sorted(data.conditions)
        extra = np.stack([data.conditions[k] for k in keys], 1) if keys else None
        return model.fit(data.energies, data.showers, extra, data.binning)

    def checkpoint_fields(self, data):
        # binning_xml: the training data's own layout (not always the config's geometry)
        ranges = {k: [float(np.min(v)), float(np.max(v))] for k, v in
                  {"incident_energy": data.energies, **data.conditions}.items() if len(v)}
        return {"extra_conditions": sorted(data.conditions), "binning_xml": data.binning.to_xml(),
                "condition_ranges": ranges}

    def after_training(self, cfg, model_path, train_path):
        """train.calibrate=true: fit the two-stage model's calibration on the training split."""
        if not cfg.train.calibrate:
            return None
        return calibrate_checkpoint(model_path, train_path, cfg.seed)

    def features(self, data, cfg):
        return high_level_features(data.showers, data.energies, data.binning, cfg.domain.threshold_mev)

    def sample_like(self, model, data, generator, precision="fp32"):
        device = next(model.parameters()).device
        keys = sorted(data.conditions)
        extra = torch.as_tensor(np.stack([data.conditions[k] for k in keys], 1), device=device) if keys else None
        gen = model.sample(torch.as_tensor(data.energies, device=device), extra, generator,
                           precision=precision).cpu().numpy()
        return cc.ShowerData(data.energies, gen, data.binning, data.conditions)

    def simulate_file(self, cfg, out, progress, shard_index, shard_count, dask=False, scheduler=None) -> str:
        with dask_client(dask, cfg.simulate.workers or usable_cpus(), scheduler) as client:
            pool = None
            if client is not None:
                pool = DaskGeantPool(settings_of(cfg.simulate), client)
            meta = simulate_to_file(cfg.simulate, cfg.seed, out, progress=progress,
                                    shard_index=shard_index, shard_count=shard_count, pool=pool)
        return (f"wrote {out}: {meta['events_total'] if shard_count is None else 'shard'} showers, "
                f"{meta['geant4_cpu_seconds']:.1f} Geant4 CPU-s, sampling fraction measured "
                f"{meta['sampling_fraction_measured']:.4f} (used {meta['sampling_fraction']})")

    def validate_files(self, reference, candidate, floor, out_dir, vcfg, domain_cfg, dask=False, scheduler=None,
                       extra=None):
        with dask_client(dask or vcfg.dask, vcfg.dask_workers, scheduler) as client:
            return validate(reference, candidate, out_dir, vcfg, domain_cfg.threshold_mev, client, floor=floor,
                            extra_candidates={calo_stages.ABLATION_LABEL: extra} if extra else None)

    def summary_text(self, m, report):
        fl = m["floor"]
        return (f"validation: {verdict(m)} (AUC high-level {m['auc_high']:.3f} [Geant4 floor {fl['auc_high']:.3f}], "
                f"voxels {m['auc_low']:.3f} [{fl['auc_low']:.3f}]; mean separation {m['separation_power_mean']:.4f} "
                f"[{fl['separation_power_mean']:.4f}]; E_tot/E_inc separation "
                f"{m['separation_power']['etot_over_einc']:.3f} [{fl['separation_etot_over_einc']:.3f}]; response "
                f"within {100 * m['response_deviation_max']:.1f}% [{100 * fl['response_deviation_max']:.1f}%]); "
                f"report: {report}" + ("" if "auc_high_dnn" not in m else
                f"\nCaloChallenge DNN classifier ({m['dnn_runs']} runs): AUC high-level {m['auc_high_dnn']:.3f}"
                f"±{m['auc_high_dnn_std']:.3f} [floor {fl['auc_high_dnn']:.3f}], voxels {m['auc_low_dnn']:.3f}"
                f"±{m['auc_low_dnn_std']:.3f} [floor {fl['auc_low_dnn']:.3f}]"))

    def generate_to(self, req: GenerateRequest) -> str:
        return calo_stages.generate_request(req)

    def convert(self, req: ConvertRequest):
        if req.labels is not None:
            raise SimganError("--labels goes with --format swc (a folder of neuron morphologies)")
        convert(req.input, req.out, req.format, req.binning)

    def merge_files(self, shards, out):
        merge_shards(shards, out)

    # -- the registered model ------------------------------------------------------------------
    def pyfunc_example(self, ckpt):
        import pandas as pd  # heavy; mlflow, which calls this, has it
        ranges = ckpt.get("condition_ranges", {})
        return pd.DataFrame({ENERGY_COLUMN: example_values(ranges, "incident_energy", [1000.0, 10000.0, 50000.0], log=True),
                             **{k: example_values(ranges, k, np.zeros(3)) for k in ckpt.get("extra_conditions", [])}})

    def pyfunc_predict(self, model, ckpt, frame, seed: int, precision: str, extrapolate: bool = False):
        extra = list(ckpt.get("extra_conditions", []))
        cond = frame_columns(frame, {ENERGY_COLUMN: "the incident energy in MeV, > 0",
                                     **{k: "an extra condition of the model" for k in extra}})
        e = cond[ENERGY_COLUMN]
        if (e <= 0).any():
            i = int(np.argmax(e <= 0))
            raise ValueError(f"model input: column '{ENERGY_COLUMN}' row {i}: {e[i]:g}; expected an energy > 0 MeV")
        if not extrapolate:
            check_inside(ckpt.get("condition_ranges", {}), {"incident_energy": e, **cond})
        x = torch.as_tensor(np.stack([cond[k] for k in extra], 1)) if extra else None
        return sample_rows(model, torch.tensor(e), x, seed, precision)

    exports = True
    generates_from_export = True

    def export_graph(self, model, ckpt):
        from simgan.domains.calorimeter.export import export_graph  # lazy: only `simgan export` and `register`
        return export_graph(model, ckpt)

    def pyfunc_artifacts(self, ckpt, source, folder: Path):
        """The voxel layout travels with the model (binning.xml)."""
        xml = Path(folder) / "binning.xml"
        xml.write_text(checkpoint_binning(ckpt, source).to_xml())
        return {"binning": str(xml)}

    def pyfunc_load(self, ckpt, artifacts):
        if "binning" not in artifacts:
            return {}
        text = Path(artifacts["binning"]).read_text()
        return {"binning_xml": text, "binning": parse_binning_xml(text, "model binning")}


def calibrate_checkpoint(path, train_path, seed: int) -> dict:
    """Fit a two-stage model's calibration on the training split and store it in the
    checkpoint: the model fed the training showers' own layer energies, its kept voxels'
    log shares matched to theirs layer by layer."""
    ckpt = load_checkpoint(path)
    model = calorimeter_model(ckpt)
    if not hasattr(model, "fit_calibration"):
        raise SimganError("train.calibrate=true needs a two-stage model (model.output=layers)")
    data = cc.read(train_path)
    keys = list(ckpt.get("extra_conditions", []))
    extra = torch.as_tensor(np.stack([data.conditions[k] for k in keys], 1)) if keys else None
    given = torch.as_tensor(layer_energies(data.showers, model.layer_voxels, model.threshold))
    g = torch.Generator().manual_seed(seed)
    gen = model.sample(torch.as_tensor(data.energies), extra, g, layer_energies=given, calibrated=False).numpy()
    info = model.fit_calibration(data.showers, gen)
    ckpt["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(ckpt, tmp)
    return info


DOMAIN = Calorimeter()
