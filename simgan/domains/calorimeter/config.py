"""The calorimeter's config sections: the domain (geometry, particle, threshold), the Geant4
simulate section, the gate."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from simgan.domains.calorimeter.models.gan import GANConfig
from simgan.domains.calorimeter.models.vae import VAEConfig
from simgan.schema import DomainConfigs, Strict


class DomainConfig(Strict):
    """The calorimeter (the default domain)."""

    name: Literal["calorimeter"] = "calorimeter"
    # a shipped binning (reference, ds1-photons, ds1-pions, ds2, ds3) or a path to an XML file
    geometry: str = "reference"
    particle: str = "electron"
    # CaloChallenge evaluation threshold: 0.5 keV / 0.033 in stored (scaled) MeV
    threshold_mev: float = Field(0.01515, ge=0)


class SimulateConfig(Strict):
    events: int = Field(2000, gt=0)
    particle: Literal["e-", "gamma"] = "e-"
    energy_min_gev: float = Field(1.0, gt=0)
    energy_max_gev: float = Field(64.0, gt=0)
    energies_gev: list[Annotated[float, Field(gt=0)]] | None = None
    theta_deg: float = Field(0.0, ge=0, lt=60)
    cut_mm: float = Field(0.7, gt=0)
    physics_list: Literal["emstandard_opt1", "emstandard_opt2"] = "emstandard_opt1"
    sampling_fraction: float = Field(0.0229, gt=0, lt=1)
    shard_events: int = Field(100, gt=0)
    workers: int = Field(0, ge=0)  # 0: one per core; run-only

    @model_validator(mode="after")
    def _range(self):
        if self.energies_gev is None and self.energy_max_gev < self.energy_min_gev:
            raise ValueError("energy_max_gev must be >= energy_min_gev")
        return self


class GateConfig(Strict):
    auc_high_max: float = Field(0.9, gt=0, le=1)
    auc_low_max: float = Field(1.0, gt=0, le=1)
    separation_etot_max: float = Field(0.2, ge=0, le=1)
    separation_mean_max: float = Field(0.3, ge=0, le=1)
    # largest |<E_tot/E_inc> generated / Geant4 - 1| over the incident-energy bins
    response_deviation_max: float | None = Field(None, gt=0)
    fpd_max: float | None = None


CONFIGS = DomainConfigs(domain=DomainConfig, simulate=SimulateConfig, gate=GateConfig, models=(GANConfig, VAEConfig))
