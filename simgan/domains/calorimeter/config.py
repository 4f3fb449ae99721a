"""The calorimeter's config sections: the domain (geometry, particle, threshold), the Geant4
simulate section, the gate, and its own keys of the shared prepare, train, generate and
validate sections (input formats, the calibration, the ablation and Geant4 timing, dask,
the voxel and DNN classifiers)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from simgan.config import DomainConfigs, GateBase, GenerateConfig, PrepareConfig, TrainConfig, ValidateConfig
from simgan.domains.calorimeter.models.gan import GANConfig
from simgan.domains.calorimeter.models.vae import VAEConfig
from simgan.schema import Strict


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


class GateConfig(GateBase):
    auc_high_max: float = Field(0.9, gt=0, le=1)
    auc_low_max: float = Field(1.0, gt=0, le=1)
    separation_etot_max: float = Field(0.2, ge=0, le=1)
    separation_mean_max: float = Field(0.3, ge=0, le=1)
    # largest |<E_tot/E_inc> generated / Geant4 - 1| over the incident-energy bins
    response_deviation_max: float | None = Field(None, gt=0)
    fpd_max: float | None = None


class CaloPrepareConfig(PrepareConfig):
    format: Literal["auto", "calochallenge", "calogan", "root"] = "auto"
    root_tree: str = "showers"
    root_energy_branch: str = "incident_energy"
    root_shower_branch: str = "showers"
    # the input's datasets besides energies and showers that become model conditions: None
    # takes all (and says which), a list takes exactly those (a missing one is an error)
    conditions: list[str] | None = None


class CaloTrainConfig(TrainConfig):
    # two-stage models: after training, fit a per-layer map of the kept voxels' log shares
    # (quantile matching against the training split); generation then writes the showers
    # with it and, for the report, without it
    calibrate: bool = False


class CaloGenerateConfig(GenerateConfig):
    format: Literal["hdf5", "root"] = "hdf5"
    compare_geant4: int = Field(0, ge=0)
    # also write generated_ablation.h5: the shape model fed the test split's Geant4 layer
    # energies (output=layers models), validated beside the full chain
    ablation: bool = False
    dask: bool = False  # run-only: shards on a dask cluster, then one merge (same showers)
    dask_workers: int = Field(2, gt=0)  # run-only


class CaloValidateConfig(ValidateConfig):
    classifier_max_events_low: int = Field(10000, gt=0)  # per class, voxels (memory: N x n_voxels x 8 B)
    chunk_size: int = Field(2000, gt=0)
    # incident-energy bins (logarithmic, over the reference's range) for the per-bin AUC and response
    energy_bins: int = Field(3, gt=0)
    # gbdt: boosted trees only; dnn: also the CaloChallenge DNN classifier test (dnn_runs runs)
    classifier: Literal["gbdt", "dnn"] = "gbdt"
    dnn_runs: int = Field(10, gt=0)
    dnn_epochs: int = Field(50, gt=0)  # per run; the CaloChallenge's evaluation trains 50
    dask: bool = False  # run-only
    dask_workers: int = Field(2, gt=0)  # run-only
    gate: GateConfig = GateConfig()


CONFIGS = DomainConfigs(domain=DomainConfig, simulate=SimulateConfig, gate=GateConfig, models=(GANConfig, VAEConfig),
                        validate=CaloValidateConfig, prepare=CaloPrepareConfig, train=CaloTrainConfig,
                        generate=CaloGenerateConfig)
