"""Checkpoints: the format, loading (weights_only), rebuilding a model with the domain that
owns it, what a generated file records of its checkpoint, and the device rule."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from simgan.config import DEVICE_PATTERN
from simgan.errors import SimganError
from simgan.io import file_sha256

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


def build_model(ckpt: dict, domain, device="cpu"):
    """The model a loaded checkpoint holds, rebuilt by its domain (simgan.domains.domain_of_checkpoint
    finds it), in eval mode on `device`."""
    model = domain.build_model(ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def checkpoint_metadata(checkpoint, **extra) -> dict:
    """What a generated file records of its checkpoint: the path and its SHA-256, which binds a
    validation to the checkpoint that `register` may promote."""
    return {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint), **extra}
