"""Plain dict registry: family name -> (config class, model class); and rebuild from checkpoints."""

from __future__ import annotations

from simgan.domains.calorimeter.models.gan import ConditionalGAN, GANConfig
from simgan.domains.calorimeter.models.layered import LayeredGAN, LayeredVAE
from simgan.domains.calorimeter.models.vae import ConditionalVAE, VAEConfig

FAMILIES = {"gan": (GANConfig, ConditionalGAN), "vae": (VAEConfig, ConditionalVAE)}


def build_model(model_cfg, n_voxels: int, layer_voxels: list[int], n_extra: int, threshold_mev: float):
    if model_cfg.output == "layers":
        cls = {"gan": LayeredGAN, "vae": LayeredVAE}[model_cfg.family]
        return cls(model_cfg, n_voxels, layer_voxels, n_extra, threshold_mev)
    _, cls = FAMILIES[model_cfg.family]
    return cls(model_cfg, n_voxels, layer_voxels, n_extra, threshold_mev)


def model_from_args(args: dict):
    """Rebuild a model from the `model_args` a checkpoint carries."""
    cfg_cls, _ = FAMILIES[args["config"]["family"]]
    return build_model(cfg_cls.model_validate(args["config"]), args["n_voxels"], args["layer_voxels"],
                       args["n_extra"], args["threshold_mev"])
