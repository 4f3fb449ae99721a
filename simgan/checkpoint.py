"""Checkpoints: the format, loading (weights_only) and rebuilding a model of any domain, the
voxel layout a calorimeter checkpoint generates, and the device rule."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from simgan.config import DEVICE_PATTERN
from simgan.errors import SimganError

CKPT_FORMAT = 3  # 3: training tables, EMA, fingerprint; 2: threshold-aware transform


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    if not re.fullmatch(DEVICE_PATTERN, spec):  # the rule the config fields use
        raise SimganError(f"device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise SimganError(f"device {spec!r} requested but CUDA is not available")
    if spec == "cuda":  # an index, so that set_device and the memory counters accept it
        return torch.device(f"cuda:{local_rank}")
    return torch.device(spec)


def checkpoint_binning(ckpt: dict, source: str = "<checkpoint>"):
    """The voxel layout a checkpoint generates: the training data's, stored in it (older
    checkpoints: the config's domain.geometry)."""
    from simgan.config import config_from_dict
    from simgan.data.binning import load_binning, parse_binning_xml

    if ckpt.get("binning_xml"):
        return parse_binning_xml(ckpt["binning_xml"], source=f"{source} (binning_xml)")
    return load_binning(config_from_dict(ckpt["config"], source).domain.geometry)


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SimganError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise SimganError(f"{path}: checkpoint is empty (0 bytes): a copy or a write that did not finish")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SimganError(f"{path}: not a readable simgan checkpoint ({reason})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT or "model_args" not in ckpt:
        raise SimganError(f"{path}: not a simgan checkpoint (format {CKPT_FORMAT})")
    return ckpt


def model_from_checkpoint(path, device="cpu"):
    ckpt = load_checkpoint(path)
    return model_of(ckpt, device), ckpt


def model_of(ckpt: dict, device="cpu"):
    """The model a loaded checkpoint holds, rebuilt by its domain, in eval mode on `device`."""
    from simgan.domains import domain_of_args
    model = domain_of_args(ckpt["model_args"]).build_model(ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
