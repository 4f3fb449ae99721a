"""The toy domain's config sections: the domain, its simulator's section, its gate, its model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from simgan.config import DomainConfigs, ValidateConfig
from simgan.schema import ConfigModel, Strict


class ToyDomainConfig(Strict):
    name: Literal["toy"] = "toy"
    slope: float = 2.0  # the simulator: x_j = slope * w_j * mu + noise_j


class ToySimulateConfig(Strict):
    events: int = Field(2000, gt=0)
    shard_events: int = Field(500, gt=0)


class ToyGateConfig(Strict):
    w1_mean_max: float = Field(0.25, gt=0)
    auc_max: float = Field(0.75, gt=0, le=1)


class ToyValidateConfig(ValidateConfig):
    gate: ToyGateConfig = ToyGateConfig()


class ToyGaussConfig(ConfigModel):
    family: Literal["toy_gauss"] = "toy_gauss"
    hidden: int = Field(32, gt=0)
    lr: float = Field(1e-2, gt=0)
    # a model built to be judged by its draw: each sampling call shifts all its samples by this
    # much with probability 1/2 (the generator decides), so one seed passes and another fails
    flaky_shift: float = 0.0


CONFIGS = DomainConfigs(domain=ToyDomainConfig, simulate=ToySimulateConfig, gate=ToyGateConfig,
                        models=(ToyGaussConfig,), validate=ToyValidateConfig)
