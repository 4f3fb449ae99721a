"""The domain registry: names, lookup, the domain of a file, a checkpoint or a metrics file, and
the experiment config validated with every domain's config classes.

A plain dict maps each name to its package; `get_domain` imports the package's `domain`
module (its `DOMAIN`), `domain_configs` its `config` module (its `CONFIGS`). Those two
imports by name are the one place where the layers meet: the core never imports a domain,
and a domain never imports another. A domain outside simgan (a test's, a lab's) joins with
`register_domain(name, package)`. The interface every domain implements is in `base.py`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import h5py

from simgan.checkpoint import build_model, load_checkpoint
from simgan.config import DomainConfigs, ExperimentConfig, load_experiment, validate_experiment
from simgan.domains.base import Domain
from simgan.errors import SimganError

# name -> package holding its `domain` and `config` modules
_PACKAGES: dict[str, str] = {n: f"simgan.domains.{n}" for n in ("calorimeter", "airshower", "neuron")}
_CACHE: dict[str, Domain] = {}


def register_domain(name: str, package: str) -> None:
    """Add a domain (or point a name at another package): `package.domain.DOMAIN` and
    `package.config.CONFIGS` must exist."""
    if not name.isidentifier():
        raise SimganError(f"domain name {name!r}: expected an identifier")
    _PACKAGES[name] = package
    _CACHE.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered domain, the shipped ones first."""
    return tuple(_PACKAGES)


def _module(name: str, part: str):
    if name not in _PACKAGES:
        raise SimganError(f"domain {name!r}: unknown (known: {', '.join(_PACKAGES)})")
    # the registry's import by name: the domains sit above this layer
    return importlib.import_module(f"{_PACKAGES[name]}.{part}")


def get_domain(name: str) -> Domain:
    if name not in _CACHE:
        _CACHE[name] = _module(name, "domain").DOMAIN
    return _CACHE[name]


def domain_configs(name: str) -> DomainConfigs:
    return _module(name, "config").CONFIGS


def all_configs() -> dict[str, DomainConfigs]:
    return {n: domain_configs(n) for n in _PACKAGES}


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    """An experiment file (with its groups and key=value overrides), validated."""
    return load_experiment(path, overrides, all_configs())


def config_from_dict(data: dict, source: str = "<config>") -> ExperimentConfig:
    """An experiment from a plain dict (e.g. a checkpoint's), validated."""
    return validate_experiment(data, all_configs(), source)


def file_domain(path) -> str:
    """The domain a data file declares in its `domain` attribute. A file without one is a
    calorimeter file only if its content says so (files written before domains were recorded);
    anything else is an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise SimganError(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise SimganError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]}); every domain's data "
                          "is HDF5 (convert other formats with `simgan convert`)") from None
    with f:
        name = f.attrs.get("domain")
        if name is not None:
            name = name.decode() if isinstance(name, bytes) else str(name)
            if name not in _PACKAGES:
                raise SimganError(f"{path}: attribute domain={name!r} names no known domain ({', '.join(_PACKAGES)})")
            return name
        legacy = [n for n in _PACKAGES if get_domain(n).is_legacy_file(f)]
        keys = list(f.keys())
    if len(legacy) != 1:
        found = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "") if keys else "none"
        raise SimganError(f"{path}: no 'domain' attribute, and its datasets ({found}) are not "
                          "those of a calorimeter file (incident_energies and showers); say which domain wrote it "
                          "(h5 attribute 'domain')")
    return legacy[0]


def domain_of_args(args: dict, source: str = "checkpoint") -> Domain:
    """The domain a checkpoint's model_args belong to: its "domain" entry; without one, a
    calorimeter checkpoint of the first format is recognised by its voxel count."""
    name = args.get("domain")
    if name is None:
        if "n_voxels" in args and "layer_voxels" in args:
            name = "calorimeter"
        else:
            raise SimganError(f"{source}: its model_args name no domain and are not a calorimeter model's "
                              f"(keys: {', '.join(sorted(args))})")
    return get_domain(name)


def domain_of_checkpoint(ckpt: dict, source: str = "checkpoint") -> Domain:
    return domain_of_args(ckpt["model_args"], source)


def domain_of_metrics(m: dict, source: str = "metrics.json") -> Domain:
    """The domain a validation's metrics belong to (calorimeter metrics before domains were
    recorded have voxel AUCs)."""
    name = m.get("domain")
    if name is None:
        if "auc_low" not in m:
            raise SimganError(f"{source}: names no domain and holds no calorimeter metrics; run `simgan validate` "
                              "again")
        name = "calorimeter"
    return get_domain(name)


def model_of(ckpt: dict, device="cpu", source: str = "checkpoint"):
    """The model a loaded checkpoint holds, rebuilt by its domain, in eval mode on `device`."""
    return build_model(ckpt, domain_of_checkpoint(ckpt, source), device)


def model_from_checkpoint(path, device="cpu"):
    ckpt = load_checkpoint(path)
    return model_of(ckpt, device, str(path)), ckpt
