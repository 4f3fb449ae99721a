"""The air-shower config sections: the array (spacing, altitude, trigger), the reference
simulator's section, the gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from simgan.config import DomainConfigs, GateBase, PrepareConfig, ValidateConfig
from simgan.domains.airshower.models import FootprintGANConfig, FootprintVAEConfig
from simgan.schema import Strict


class AirshowerDomainConfig(Strict):
    """Surface-detector footprints (9x9 triangular grid): ../configs/domain/airshower.yaml."""

    name: Literal["airshower"] = "airshower"
    spacing_m: float = Field(1500.0, gt=0)
    altitude_m: float = Field(1400.0, ge=0)
    trigger_vem: float = Field(3.0, gt=0)


class AirshowerSimulateConfig(Strict):
    """The reference air-shower simulator (a fast stand-in for CORSIKA + detector)."""

    events: int = Field(20000, gt=0)
    shard_events: int = Field(5000, gt=0)
    lg_e_min: float = Field(18.5, ge=17, le=21)
    lg_e_max: float = Field(20.0, ge=17, le=21)
    mass_A: Literal[0, 1, 4, 14, 56] = 1  # 0: each event's mass drawn from 1, 4, 14, 56
    core_radius_m: float = Field(750.0, gt=0)
    # the particle-level station simulation (traces.py): FADC traces per station, and the signal,
    # start time and trigger from them; trace_components also keeps the muon and EM traces
    traces: bool = False
    trace_components: bool = False

    @model_validator(mode="after")
    def _range(self):
        if self.lg_e_max <= self.lg_e_min:
            raise ValueError("lg_e_max must be > lg_e_min")
        if self.trace_components and not self.traces:
            raise ValueError("trace_components needs traces: true")
        return self


class AirshowerGateConfig(GateBase):
    """Air-shower gate: classifier AUC on the observables, mean separation power, mean
    triggered stations and angular resolution per station-count bin relative to the
    simulator's, and the fitted-S1000 bias per energy bin."""

    auc_max: float = Field(0.9, gt=0, le=1)
    separation_mean_max: float = Field(0.3, ge=0, le=1)
    station_count_deviation_max: float | None = Field(None, gt=0)
    angular_resolution_deviation_max: float | None = Field(None, gt=0)
    s1000_bias_max: float | None = Field(None, gt=0)
    # with traces (simulate.traces): the median rise time at 900-1100 m per zenith bin, the mean
    # trace shape per distance bin (half the L1 distance of the unit-sum shapes), the slope of
    # the rise time in ln A (where the reference mixes masses)
    rise_1000_deviation_max: float | None = Field(None, gt=0)
    trace_shape_deviation_max: float | None = Field(None, gt=0)
    rise_mass_slope_deviation_max: float | None = Field(None, gt=0)


class AirshowerPrepareConfig(PrepareConfig):
    root_tree: str = "footprints"  # the TTree of a ROOT input (simgan/domains/airshower/io.py)
    # this format's names (signal, time, triggered, the conditions) -> the tree's branch names
    root_branches: dict[str, str] = {}
    root_trace_bin_ns: float = Field(25.0, gt=0)  # the FADC bin width of a ROOT input's traces branch


class AirshowerValidateConfig(ValidateConfig):
    gate: AirshowerGateConfig = AirshowerGateConfig()


CONFIGS = DomainConfigs(domain=AirshowerDomainConfig, simulate=AirshowerSimulateConfig, gate=AirshowerGateConfig,
                        models=(FootprintGANConfig, FootprintVAEConfig), validate=AirshowerValidateConfig,
                        prepare=AirshowerPrepareConfig)
