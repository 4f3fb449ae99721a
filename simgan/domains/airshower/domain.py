"""The air-shower domain: surface-detector footprints on a 9x9 triangular grid.

Schema: samples (9, 9) per channel (signal VEM, time ns, triggered); conditions
log10_energy_eV, zenith_rad, azimuth_rad, core_x_m, core_y_m (the condition vector and the
registered model's DataFrame columns, in this order); the reference simulator for data.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from simgan.domains.airshower import io as aio
from simgan.domains.airshower import validate as av
from simgan.domains.airshower.corsika import corsika_footprints
from simgan.domains.airshower.models import (
    CONDITIONS,
    FAMILIES,
    GRID,
    MASS,
    FootprintSampler,
    Tank,
    footprints_from_parts,
)
from simgan.domains.airshower.simulator import ArrayParams, simulate
from simgan.domains.airshower.traces import TankParams, vem_peak
from simgan.domains.base import ConditionedFileDomain, check_inside, example_values, frame_columns, sample_rows
from simgan.errors import SimganError
from simgan.io import write_json_atomic
from simgan.metrics.gate import verdict

SCHEMA = {"domain": "airshower", "sample_shape": [9, 9], "channels": ["signal_vem", "time_ns", "triggered"],
          "conditions": [*CONDITIONS, MASS],
          "units": {"log10_energy_eV": "log10(E/eV)", "zenith_rad": "rad", "azimuth_rad": "rad", "core_x_m": "m",
                    "core_y_m": "m", MASS: "mass number A"}}


def params_of_cfg(cfg) -> ArrayParams:
    d, s = cfg.domain, cfg.simulate
    return ArrayParams(spacing_m=d.spacing_m, altitude_m=d.altitude_m, trigger_vem=d.trigger_vem,
                       lg_e_min=s.lg_e_min, lg_e_max=s.lg_e_max, mass_A=s.mass_A, core_radius_m=s.core_radius_m,
                       traces=s.traces, trace_components=s.trace_components)


def condition_array(fp: aio.Footprints) -> np.ndarray:
    """(N, 6): the conditions in CONDITIONS order and the mass number."""
    return np.stack([*(fp.conditions[k] for k in CONDITIONS), aio.masses(fp.conditions)], 1).astype(np.float32)


def condition_ranges(fp: aio.Footprints) -> dict:
    """The training range of each condition; the zenith's from vertical when the sample reaches
    within 5% of its span of it (cos^2 of the zenith drawn uniformly puts few events near 0:
    a vertical shower is inside the range, not an extrapolation)."""
    cond = {**fp.conditions, MASS: aio.masses(fp.conditions)}
    ranges = {k: [float(np.min(cond[k])), float(np.max(cond[k]))] for k in (*CONDITIONS, MASS)}
    lo, hi = ranges["zenith_rad"]
    if lo <= 0.05 * (hi - lo):
        ranges["zenith_rad"][0] = 0.0
    return ranges


def schema_of(fp: aio.Footprints) -> dict:
    """The samples' layout: signal, time, trigger, and with traces one channel per FADC bin."""
    if fp.traces is None:
        return SCHEMA
    bins = int(fp.traces.shape[-1])
    return {**SCHEMA, "channels": [*SCHEMA["channels"], *(f"trace_bin{i}_vem" for i in range(bins))],
            "trace_bin_ns": float(fp.attrs.get("trace_bin_ns", 25.0))}


def trace_spec(fp: aio.Footprints) -> dict | None:
    """What a trace model needs of the data's FADC and trigger (None without traces)."""
    if fp.traces is None:
        return None
    tank = TankParams(**json.loads(fp.attrs["tank"])) if "tank" in fp.attrs else TankParams()
    return {"bins": int(fp.traces.shape[-1]), "bin_ns": float(fp.attrs.get("trace_bin_ns", tank.bin_ns)),
            "pe_per_vem": tank.pe_per_vem, "noise_vem": tank.noise_vem, "threshold_vem": tank.threshold_vem,
            "tot_threshold_vem": tank.tot_threshold_vem_peak * vem_peak(tank), "tot_bins": tank.tot_bins,
            "decay_ns": tank.decay_ns, "em_vem": tank.em_particle_vem, "tank_radius_m": tank.radius_m,
            "tank_height_m": tank.height_m}


def mixed_masses(fp: aio.Footprints) -> bool:
    return len(np.unique(aio.masses(fp.conditions))) > 1


class Airshower(ConditionedFileDomain):
    name = "airshower"
    unit = "footprints"
    simulator = "the air-shower simulator (vectorised numpy)"
    monitor_batch = 4096
    pyfunc_optional_columns = (MASS,)  # protons when left out
    pyfunc_any_type_columns = (MASS,)  # a mass number given as an integer or a float
    convert_formats = ("corsika",)
    headline_keys = ("auc", "auc_footprints", "separation_power_mean", "angular_resolution_deviation_max",
                     "station_count_deviation_max", "s1000_bias_max")

    def read(self, path, max_events=None):
        return aio.read(path, max_events)

    def model_args(self, cfg, data) -> dict:
        p = {"spacing_m": float(data.attrs.get("spacing_m", cfg.domain.spacing_m)),
             "altitude_m": float(data.attrs.get("altitude_m", cfg.domain.altitude_m))}
        return {"domain": "airshower", "config": cfg.model.model_dump(mode="json"), "params": p,
                "threshold_vem": float(data.attrs.get("trigger_vem", cfg.domain.trigger_vem)), "schema": schema_of(data),
                # the mass number is a model condition when the training data hold more than one
                "conditions": [*CONDITIONS, *([MASS] if mixed_masses(data) else [])],
                # with traces in the training data the model generates them (their FADC and trigger)
                "traces": trace_spec(data)}

    def build_model(self, args):
        family = args["config"]["family"]
        if family not in FAMILIES:
            raise SimganError(f"model family {family!r} is not an air-shower model ({sorted(FAMILIES)})")
        cfg_cls, cls = FAMILIES[family]
        extra = {"traces": args["traces"]} if args.get("traces") else {}
        try:
            return cls(cfg_cls.model_validate(args["config"]), args["params"], args["threshold_vem"],
                       MASS in args.get("conditions", CONDITIONS), **extra)
        except ValueError as exc:
            raise SimganError(f"{family}: {exc}") from None

    def fit_model(self, model, data):
        return model.fit(data.signal, data.time, data.triggered, condition_array(data), data.traces)

    def checkpoint_fields(self, data):
        return {"schema": schema_of(data), "condition_ranges": condition_ranges(data), "extra_conditions": []}

    def features(self, data, cfg):
        f = av.features(data)
        keys = ("n_triggered", "log10_total_signal", "log10_max_signal", "s1000_fit_over_nominal",
                "barycentre_dx_m", "barycentre_dy_m", "plane_fit_angle_deg", "mean_time_residual_ns")
        return np.nan_to_num(np.stack([f[k] for k in keys], 1), nan=0.0)

    # -- what the shared file-conditioned stages need ---------------------------------------------
    def write(self, path, data):
        return aio.write(path, data)

    def read_source(self, cfg, path):
        if str(path).endswith(".root"):
            return aio.read_root(path, cfg.prepare.root_tree, cfg.prepare.root_branches, cfg.prepare.root_trace_bin_ns)
        return aio.read(path)

    def condition_matrix(self, data):
        return condition_array(data)

    def with_samples(self, data, samples):
        arr = samples if samples is not None else np.zeros((0, 3, 9, 9), np.float32)
        keep = ("spacing_m", "altitude_m", "trigger_vem", *(("trace_bin_ns", "trace_bins", "tank")
                                                           if arr.shape[1] > 3 else ()))
        traces = np.ascontiguousarray(np.moveaxis(arr[:, 3:], 1, -1)) if arr.shape[1] > 3 else None
        return aio.Footprints(arr[:, 0], arr[:, 1], arr[:, 2] > 0, dict(data.conditions), data.xyz, {},
                              {k: v for k, v in data.attrs.items() if k in keep}, traces)

    def simulate_data(self, cfg, out, progress, shard_index=None, shard_count=None):
        return simulate_file(cfg, out, progress, shard_index, shard_count)

    def validate_data(self, reference, candidate, floor, out_dir, vcfg):
        return validate_files(reference, candidate, floor, out_dir, vcfg)

    def summary_text(self, m, report):
        fl = m["floor"]

        def pct(k):
            return f"{100 * m[k]:.1f}% [{100 * fl[k]:.1f}%]"
        return (f"validation: {verdict(m)} (AUC observables {m['auc']:.3f} [simulator floor {fl['auc']:.3f}], "
                f"footprints {m['auc_footprints']:.3f} [{fl['auc_footprints']:.3f}]; mean separation "
                f"{m['separation_power_mean']:.4f} [{fl['separation_power_mean']:.4f}]; stations within "
                f"{pct('station_count_deviation_max')}, angular resolution within "
                f"{pct('angular_resolution_deviation_max')}, S1000 bias {pct('s1000_bias_max')}); report: {report}")

    def merge_files(self, shards, out):
        aio.merge_shards(shards, out)

    def convert(self, req):
        """A CORSIKA 7 particle file -> footprints with traces (simgan/domains/airshower/corsika.py)."""
        if req.binning or req.labels:
            raise SimganError("--format corsika takes --cores, --core and --seed (not --binning or --labels)")
        aio.write(req.out, corsika_footprints(req.input, ArrayParams(), req.seed, req.cores, req.core))

    def pyfunc_example(self, ckpt):
        import pandas as pd
        defaults = {"log10_energy_eV": [18.7, 19.3, 19.8], "zenith_rad": [0.2, 0.5, 0.9], "azimuth_rad": [0.0, 2.0, 4.0],
                    "core_x_m": [0.0, 300.0, -200.0], "core_y_m": [0.0, -100.0, 400.0], MASS: [1.0, 1.0, 1.0]}
        ranges = ckpt.get("condition_ranges", {})
        frame = pd.DataFrame({k: example_values(ranges, k, v) for k, v in defaults.items()})
        frame[MASS] = np.round(frame[MASS])  # a mass number is whole
        return frame

    exports = True

    def export_graph(self, model, ckpt):
        from simgan.export import ExportGraph, Port  # lazy: only `simgan export` and `register` need it

        cfg, n_st = model.cfg, GRID * GRID
        hybrid = getattr(model, "hybrid", True)
        decoder = model._modules.get("decoder") or model.g_run
        kind = "traces" if model.n_bins else ("heads" if hybrid else "gan")
        cond = Port("conditions", ("N", 6), "log10(E/eV), rad, rad, m, m, 1",
                    "log10_energy_eV, zenith_rad, azimuth_rad, core_x_m, core_y_m, mass_A (the mass number; 1 for "
                    "protons, used only by models trained on mixed masses), inside the training ranges")
        z = Port("z", ("N", cfg.latent_dim), "1", "the event's code" + (
            " (mapped to the code by the fitted latent flow inside the graph)" if getattr(model, "uses_flow", False)
            else ""), noise="normal")
        eps = Port("eps", ("N", 2, n_st), "1", "per station (row-major 9 x 9): the signal's and the time "
                   "residual's draw", noise="normal")
        if kind == "gan":
            inputs = [cond, z, Port("station_noise", ("N", cfg.station_noise, GRID, GRID), "1", "per station",
                                    noise="normal")]
        elif kind == "heads":
            inputs = [cond, z, eps]
        else:
            inputs = [cond, z, Port("station_latent", ("N", cfg.station_latent_dim, GRID, GRID), "1",
                                    "per station: its trace's latent", noise="normal"), eps]
        footprint = Port("footprint", ("N", 3, GRID, GRID), "VEM, ns, 1",
                         "signal, start time (ns, the core's front crossing at 0), triggered (0/1)")
        post = None
        if kind == "traces":
            t = model.n_bins
            outputs = [Port("signal", ("N", n_st), "VEM", "each station's integral before its trace is drawn"),
                       Port("window_ns", ("N", n_st), "ns", "each station's trace window start on the front's clock",
                            relative_to="range"),
                       Port("arrival", ("N", n_st, t), "1", "the light's arrival distribution over the FADC bins "
                            "(unit sum), before the tank's decay"),
                       Port("muon_share", ("N", n_st), "1", "the share of the light in muon quanta"),
                       Port("muon_quantum", ("N", n_st), "VEM", "one muon's mean signal along the axis"),
                       Port("tot_probability", ("N", n_st), "1", "the probability that a station whose trace "
                            "integrates below the threshold triggers by time over threshold")]
            post = ("draw each station's trace in quanta and derive the footprint from it: "
                    "simgan.domains.airshower.models.draw_traces (Poisson muons of muon_quantum and Poisson EM "
                    f"particles of exponential deposits, mean {model.trace['em_vem']} VEM, per bin at the arrival "
                    f"distribution, their sum scaled to the signal, decayed over the bins with the tank's "
                    f"{model.trace['decay_ns']} ns, Poisson photoelectrons at {model.trace['pe_per_vem']} per VEM, "
                    f"baseline noise {model.trace['noise_vem']} VEM), then finish_traces (below the threshold a "
                    "time-over-threshold trigger is drawn with tot_probability and the trace redrawn until it agrees; "
                    f"trigger: integral >= "
                    f"{model.trace['threshold_vem']} VEM or {model.trace['tot_bins']} bins above "
                    f"{model.trace['tot_threshold_vem']:.4g} VEM; signal: the integral; time: window_ns + t10)")
        else:
            outputs = [footprint]
        ranges = ckpt.get("condition_ranges", {})

        def example(n, generator):
            lo = torch.tensor([ranges.get(k, [0.0, 0.0])[0] for k in (*CONDITIONS, MASS)])
            hi = torch.tensor([ranges.get(k, [1.0, 1.0])[1] for k in (*CONDITIONS, MASS)])
            c = lo + (hi - lo) * torch.rand(n, 6, generator=generator)
            if not model.with_mass:
                c[:, 5] = 1.0
            return (c, *(torch.randn(n, *p.shape[1:], generator=generator) for p in inputs[1:]))

        return ExportGraph(FootprintSampler(model, decoder, kind), inputs, outputs, example, post,
                           {"trace": model.trace} if kind == "traces" else None)

    def samples_from_export(self, sampler, outputs, rng):
        """A trace model's post-step from its export folder alone: the quanta drawn by the
        reference code (models.footprints_from_parts) with the tank of the sidecar."""
        if not sampler.sidecar.get("post_step"):
            return outputs[0]
        params = sampler.sidecar.get("post_step_parameters") or {}
        if "trace" not in params:
            raise SimganError(f"--export {sampler.folder}: the sidecar has no post_step_parameters.trace (exported by "
                              "an earlier version: export the checkpoint again)")
        g = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        parts = [torch.from_numpy(np.asarray(x)) for x in outputs]
        return footprints_from_parts(Tank(params["trace"]), *parts, g).numpy()

    def pyfunc_predict(self, model, ckpt, frame, seed: int, precision: str, extrapolate: bool = False):
        # mass_A may be left out: protons (models trained before it was a column take none)
        have_mass = hasattr(frame, "columns") and MASS in frame.columns
        cond = frame_columns(frame, {**COLUMN_MEANING, **({MASS: MASS_MEANING} if have_mass else {})})
        cond[MASS] = cond[MASS] if have_mass else np.ones(len(frame))
        try:
            aio.check_condition_units(cond, "model input")
        except SimganError as exc:
            raise ValueError(str(exc).replace("dataset 'conditions/", "column '")) from None
        whole = np.round(cond[MASS])
        if (cond[MASS] != whole).any():
            i = int(np.argmax(cond[MASS] != whole))
            raise ValueError(f"model input: column '{MASS}' row {i}: {cond[MASS][i]:g}; expected a whole mass number "
                             f"({MASS_MEANING})")
        ranges = ckpt.get("condition_ranges", {})
        lo, hi = ranges.get(MASS, (1.0, 1.0))
        if lo == hi and (cond[MASS] != lo).any():  # no mass dependence learnt: nothing to extrapolate
            i = int(np.argmax(cond[MASS] != lo))
            raise ValueError(f"model input: column '{MASS}' row {i}: {cond[MASS][i]:g}; the model was trained on "
                             f"primaries of mass number {lo:g} only, so it cannot tell masses apart (even with "
                             f"extrapolate): leave the column out or give {lo:g}")
        if not extrapolate:  # (the azimuth is periodic: any value is inside)
            check_inside({k: v for k, v in ranges.items() if k != "azimuth_rad"}, cond)
        c = torch.as_tensor(np.stack([cond[k] for k in (*CONDITIONS, MASS)], 1), dtype=torch.float32)
        return sample_rows(model, c, None, seed, precision)


COLUMN_MEANING = {"log10_energy_eV": "log10 of the primary energy in eV, 15-22",
                  "zenith_rad": "zenith angle in radians, 0 to pi/2", "azimuth_rad": "azimuth in radians",
                  "core_x_m": "shower core x in metres from the array centre",
                  "core_y_m": "shower core y in metres from the array centre"}
MASS_MEANING = "mass number A of the primary (1 proton, 4 helium, 14 nitrogen, 56 iron); 1 if left out"


def simulate_file(cfg, out, progress: bool = True, shard_index: int | None = None,
                  shard_count: int | None = None) -> aio.Footprints:
    """The reference simulator's events for the config into `out` (atomically). A shard I of K
    holds a contiguous block of the simulator's seeded shards, so merged shards equal one run."""
    p = params_of_cfg(cfg)
    s = cfg.simulate
    n_sim = math.ceil(s.events / s.shard_events)
    shards = None
    if shard_count:
        shards = range(shard_index * n_sim // shard_count, (shard_index + 1) * n_sim // shard_count)
        if not len(shards):
            raise SimganError(f"--shard-count {shard_count} exceeds the simulator's {n_sim} shards of "
                              f"{s.shard_events} events: lower it or simulate.shard_events")
    ev = simulate(s.events, cfg.seed, p, s.shard_events, progress, shards)
    fp = aio.from_simulation(ev, p, cfg.seed)
    fp.attrs.update({"simulator": "simgan reference surface-detector simulator (a parametric stand-in for CORSIKA)",
                     "events_total": s.events, "shard_events": s.shard_events})
    if shard_count:
        fp.attrs.update({"shard_index": shard_index, "shard_count": shard_count,
                         "first_event": shards.start * s.shard_events})
    aio.write(out, fp)
    return fp


def validate_files(reference, candidate, floor, out_dir, vcfg) -> dict:
    """The candidate and (at the same size) an independent simulated sample against the reference."""
    out_dir, ref, cand, _, fl_fp = DOMAIN.validation_inputs(reference, candidate, floor, out_dir)
    meta = json.loads(cand.attrs.get("metadata", "{}") or "{}")
    ref_summary = av.summarise(ref)  # once, for the candidate and for the floor
    cand_summary, fl_summary = av.summarise(cand), av.summarise(fl_fp)
    m = av.compare(ref_summary, cand_summary, vcfg.classifier_seeds, vcfg.classifier_max_events)
    fl = av.compare(ref_summary, fl_summary, vcfg.classifier_seeds, vcfg.classifier_max_events)
    m.update({"reference": str(reference), "candidate": str(candidate), "n_reference": len(ref),
              "n_candidate": len(cand), "floor": fl,
              "floor_source": f"{len(fl_fp)} simulated events of {floor} (independent of the reference, "
                              "the candidate's size)",
              "candidate_checkpoint_sha256": meta.get("checkpoint_sha256"), "domain": "airshower"})
    m["gate"] = av.gate(m, vcfg.gate)
    plots = av.plots(ref_summary, cand_summary, fl_summary, m, out_dir) if vcfg.plots else []
    av.write_report(out_dir, m, plots)
    write_json_atomic(out_dir / "metrics.json", m)
    return m


DOMAIN = Airshower()
