"""The neuron config sections: the projection, the NeuroTS simulate section, the gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from simgan.config import DomainConfigs, GateBase, ValidateConfig
from simgan.domains.neuron.models import NeuronGANConfig, NeuronVAEConfig
from simgan.domains.neuron.treemodels import NeuronTreeVAEConfig
from simgan.schema import Strict


class NeuronDomainConfig(Strict):
    """Single-neuron projection images: ../configs/domain/neuron.yaml."""

    name: Literal["neuron"] = "neuron"
    pixel_um: float = Field(32.0, gt=0)
    size: int = Field(64, ge=16)  # a multiple of 16 (the networks halve it four times)
    soma_row: int = Field(44, ge=0)
    soma_col: int = Field(32, ge=0)

    @model_validator(mode="after")
    def _geometry(self):
        if self.size % 16:
            raise ValueError("size must be a multiple of 16")
        if self.soma_row >= self.size or self.soma_col >= self.size:
            raise ValueError("the soma pixel must lie inside the image")
        return self


class NeuronSimulateConfig(Strict):
    """NeuroTS growth: classes drawn uniformly, randomness uniform in [randomness_min, randomness_max]."""

    events: int = Field(3000, gt=0)
    shard_events: int = Field(300, gt=0)  # neurons per job-array task in the Slurm chain
    classes: list[Literal["IN", "PC", "L5_TPC"]] = ["IN", "PC", "L5_TPC"]
    randomness_min: float = Field(0.1, ge=0, le=1)
    randomness_max: float = Field(0.4, ge=0, le=1)
    workers: int = Field(0, ge=0)  # 0: one process per core; run-only

    @model_validator(mode="after")
    def _range(self):
        if self.randomness_max < self.randomness_min:
            raise ValueError("randomness_max must be >= randomness_min")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError("classes: give each class once, at least one")
        return self


class NeuronGateConfig(GateBase):
    """Neuron gate: classifier AUC on the observables, mean separation power, per class the
    relative deviation of the mean and spread of projected length and extent, and the drop of
    the class predictor's accuracy (held-out NeuroTS minus generated); for trees, validity,
    the morphometric classifier and the largest KS distance."""

    auc_max: float = Field(0.9, gt=0, le=1)
    separation_mean_max: float = Field(0.3, ge=0, le=1)
    length_mean_deviation_max: float | None = Field(None, gt=0)
    length_spread_deviation_max: float | None = Field(None, gt=0)
    extent_mean_deviation_max: float | None = Field(None, gt=0)
    extent_spread_deviation_max: float | None = Field(None, gt=0)
    class_accuracy_drop_max: float | None = Field(None, gt=0)
    # the trees (tree families, and files that keep trees on every side): the share of generated
    # neurons MorphIO or NeuroM's checks refuse, the classifier AUC on per-neuron morphometrics,
    # the largest KS distance of a NeuroM feature in a class
    invalid_fraction_max: float | None = Field(None, ge=0, le=1)
    auc_morphometrics_max: float | None = Field(None, gt=0, le=1)
    ks_max: float | None = Field(None, gt=0, le=1)


class NeuronValidateConfig(ValidateConfig):
    # the class predictor (a small CNN on the floor file's images): Adam steps of 64 images
    predictor_steps: int = Field(600, gt=0)
    gate: NeuronGateConfig = NeuronGateConfig()


CONFIGS = DomainConfigs(domain=NeuronDomainConfig, simulate=NeuronSimulateConfig, gate=NeuronGateConfig,
                        models=(NeuronGANConfig, NeuronVAEConfig, NeuronTreeVAEConfig), validate=NeuronValidateConfig)
