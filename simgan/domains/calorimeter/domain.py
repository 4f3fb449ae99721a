"""The calorimeter domain: CaloChallenge-style showers (incident energy, voxels)."""

from __future__ import annotations

import numpy as np
import torch

from simgan.data import calochallenge as cc
from simgan.domains import Domain
from simgan.domains.calorimeter.features import high_level_features
from simgan.errors import SimganError

ENERGY_COLUMN = "incident_energy"  # the registered model's input column, MeV


class Calorimeter(Domain):
    name = "calorimeter"
    sharded_stages = ("simulate", "generate")
    headline_keys = ("auc_high", "auc_low", "fpd", "kpd", "separation_power_mean")
    convert_formats = ("auto", "calochallenge", "calogan", "root")

    @property
    def stages(self):
        from simgan.domains.calorimeter.stages import STAGES
        return STAGES

    def read(self, path, max_events=None):
        return cc.read(path, max_events=max_events)

    def model_args(self, cfg, data) -> dict:
        b = data.binning
        return {"config": cfg.model.model_dump(mode="json"), "n_voxels": b.n_voxels,
                "layer_voxels": [l.n_voxels for l in b.layers if l.n_voxels],
                "n_extra": len(data.conditions), "threshold_mev": cfg.domain.threshold_mev}

    def build_model(self, args):
        from simgan.domains.calorimeter.models.registry import model_from_args
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

    def features(self, data, cfg):
        return high_level_features(data.showers, data.energies, data.binning, cfg.domain.threshold_mev)

    def sample_like(self, model, data, generator, precision="fp32"):
        device = next(model.parameters()).device
        keys = sorted(data.conditions)
        extra = torch.as_tensor(np.stack([data.conditions[k] for k in keys], 1), device=device) if keys else None
        gen = model.sample(torch.as_tensor(data.energies, device=device), extra, generator,
                           precision=precision).cpu().numpy()
        return cc.ShowerData(data.energies, gen, data.binning, data.conditions)

    def simulate_file(self, cfg, out, progress, shard_index, shard_count, dask=None, scheduler=None) -> str:
        import os

        from simgan.cluster import dask_client
        from simgan.sim.produce import settings_of, simulate_to_file

        with dask_client(dask, cfg.simulate.workers or os.cpu_count() or 1, scheduler) as client:
            pool = None
            if client is not None:
                from simgan.sim.calorimeter import DaskGeantPool
                pool = DaskGeantPool(settings_of(cfg.simulate), client)
            meta = simulate_to_file(cfg.simulate, cfg.seed, out, progress=progress,
                                    shard_index=shard_index, shard_count=shard_count, pool=pool)
        return (f"wrote {out}: {meta['events_total'] if shard_count is None else 'shard'} showers, "
                f"{meta['geant4_cpu_seconds']:.1f} Geant4 CPU-s, sampling fraction measured "
                f"{meta['sampling_fraction_measured']:.4f} (used {meta['sampling_fraction']})")

    def validate_files(self, reference, candidate, floor, out_dir, vcfg, domain_cfg, dask=None, scheduler=None,
                       extra=None):
        from simgan.cluster import dask_client
        from simgan.domains.calorimeter.stages import ABLATION_LABEL
        from simgan.validate import validate

        with dask_client(dask or vcfg.dask, vcfg.dask_workers, scheduler) as client:
            return validate(reference, candidate, out_dir, vcfg, domain_cfg.threshold_mev, client, floor=floor,
                            extra_candidates={ABLATION_LABEL: extra} if extra else None)

    def summary_text(self, m, report):
        from simgan.validate import verdict
        fl = m["floor"]
        return (f"validation: {verdict(m)} (AUC high-level {m['auc_high']:.3f} [Geant4 floor {fl['auc_high']:.3f}], "
                f"voxels {m['auc_low']:.3f} [{fl['auc_low']:.3f}]; mean separation {m['separation_power_mean']:.4f} "
                f"[{fl['separation_power_mean']:.4f}]; E_tot/E_inc separation "
                f"{m['separation_power']['etot_over_einc']:.3f} [{fl['separation_etot_over_einc']:.3f}]; response "
                f"within {100 * m['response_deviation_max']:.1f}% [{100 * fl['response_deviation_max']:.1f}%]); "
                f"report: {report}")

    def generate_cli(self, args, ckpt, out, fmt):
        from simgan.domains.calorimeter.stages import generate_cli
        return generate_cli(args, ckpt, out, fmt)

    def convert(self, args):
        from simgan.data.convert import convert
        if getattr(args, "labels", None):
            raise SimganError("--labels goes with --format swc (a folder of neuron morphologies)")
        convert(args.input, args.out, args.format, args.binning)

    def merge_files(self, shards, out):
        from simgan.sim.produce import merge_shards
        merge_shards(shards, out)

    # -- the registered model ------------------------------------------------------------------
    def pyfunc_example(self, ckpt):
        import pandas as pd
        return pd.DataFrame({ENERGY_COLUMN: np.array([1000.0, 10000.0, 50000.0], dtype=np.float64),
                             **{k: np.zeros(3, dtype=np.float64) for k in ckpt.get("extra_conditions", [])}})

    def pyfunc_predict(self, model, ckpt, frame, seed: int, precision: str):
        cols = getattr(frame, "columns", None)
        if cols is None or ENERGY_COLUMN not in cols:
            raise ValueError(f"input needs a float64 column '{ENERGY_COLUMN}' (MeV)")
        e = np.asarray(frame[ENERGY_COLUMN], dtype=np.float64)
        if not np.all(np.isfinite(e)) or np.any(e <= 0):
            raise ValueError(f"'{ENERGY_COLUMN}' must be finite and > 0 MeV")
        extra = list(ckpt.get("extra_conditions", []))
        x = torch.as_tensor(np.stack([np.asarray(frame[k], np.float64) for k in extra], 1)) if extra else None
        g = torch.Generator()
        g.manual_seed(int(seed))
        # a copy: the input may be read-only
        return model.sample(torch.tensor(e), x, g, precision=precision).numpy()


DOMAIN = Calorimeter()
