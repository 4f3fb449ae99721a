"""Typed experiment configuration: YAML (safe_load) -> validated pydantic models.

An experiment file names its groups under `defaults` (domain, model); each group is
loaded from configs/<group>/<name>.yaml and the experiment's own section is merged over
it. Unknown keys and wrong types are errors naming the file and the dotted key.
"""

from __future__ import annotations

import copy
import importlib
import os
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from simgan.domains import NAMES
from simgan.domains.calorimeter.config import DomainConfig, GateConfig, SimulateConfig
from simgan.domains.calorimeter.models.gan import GANConfig
from simgan.errors import SimganError
from simgan.schema import BooleanNotNumber, DomainConfigs, Strict

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
GROUPS = ("domain", "model")

# each domain's config classes (simgan/domains/<name>/config.py): its `domain` section, the
# simulate section and gate it validates, its model families
DOMAIN_CONFIGS: dict[str, DomainConfigs] = {n: importlib.import_module(f"simgan.domains.{n}.config").CONFIGS
                                            for n in NAMES}
AnyDomainConfig = Annotated[Union[tuple(d.domain for d in DOMAIN_CONFIGS.values())], Field(discriminator="name")]

class PrepareConfig(Strict):
    input: str | None = None  # None: the simulate stage's output
    format: Literal["auto", "calochallenge", "calogan", "root"] = "auto"
    root_tree: str = "showers"
    root_energy_branch: str = "incident_energy"
    root_shower_branch: str = "showers"
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    # the input's datasets besides energies and showers that become model conditions: None
    # takes all (and says which), a list takes exactly those (a missing one is an error)
    conditions: list[str] | None = None

    @model_validator(mode="after")
    def _fractions(self):
        if any(f <= 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
            raise ValueError("fractions (train, val, test) must be positive and sum to 1")
        return self


class TrainConfig(Strict):
    steps: int = Field(2000, gt=0)
    batch_size: int = Field(128, gt=0)
    checkpoint_every: int = Field(200, gt=0)
    log_every: int = Field(50, gt=0)
    val_every: int = Field(500, gt=0)
    val_events: int = Field(2000, gt=0)
    device: str = Field("auto", pattern=DEVICE_PATTERN)  # run-only
    precision: Literal["fp32", "bf16"] = "fp32"
    # wall-clock budget: stop at the first checkpoint boundary past it (a Slurm time limit);
    # the run then holds fewer than `steps` steps and says so, and a rerun resumes
    max_seconds: float | None = Field(None, gt=0)
    # an exponential moving average of the sampling network's weights is what samples
    # (0: the raw weights)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    # learning rate per training phase: linear warm-up, then constant or cosine decay to
    # lr_min_factor x the base rate at the phase's last step
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    lr_min_factor: float = Field(0.05, ge=0, le=1)
    # the model kept: the checkpoint with the best validation-split score (mean separation
    # power of the high-level features, checked every val_every steps), or the last one
    select: Literal["best_val", "last"] = "best_val"
    # two-stage models: after training, fit a per-layer map of the kept voxels' log shares
    # (quantile matching against the training split); generation then writes the showers
    # with it and, for the report, without it
    calibrate: bool = False
    mlflow: bool = True
    progress: bool = True  # run-only


class GenerateConfig(Strict):
    events: int | None = Field(None, gt=0)  # None: the held-out test energies
    batch_size: int = Field(1000, gt=0)
    format: Literal["hdf5", "root"] = "hdf5"
    device: str = Field("auto", pattern=DEVICE_PATTERN)  # run-only
    compare_geant4: int = Field(0, ge=0)
    # bf16: the sampling network in bfloat16 (2-3x faster on CPUs with AVX512-BF16 or AMX)
    precision: Literal["fp32", "bf16"] = "fp32"
    # also write generated_ablation.h5: the shape model fed the test split's Geant4 layer
    # energies (output=layers models), validated beside the full chain
    ablation: bool = False
    dask: bool = False  # run-only: shards on a dask cluster, then one merge (same showers)
    dask_workers: int = Field(2, gt=0)  # run-only


class ValidateConfig(Strict):
    classifier_seeds: int = Field(3, gt=0)
    classifier_max_events: int = Field(20000, gt=0)  # per class, high-level features
    classifier_max_events_low: int = Field(10000, gt=0)  # per class, voxels (memory: N x n_voxels x 8 B)
    chunk_size: int = Field(2000, gt=0)
    # incident-energy bins (logarithmic, over the reference's range) for the per-bin AUC and response
    energy_bins: int = Field(3, gt=0)
    # gbdt: boosted trees only; dnn: also the CaloChallenge DNN classifier test (dnn_runs runs)
    classifier: Literal["gbdt", "dnn"] = "gbdt"
    dnn_runs: int = Field(10, gt=0)
    dask: bool = False  # run-only
    dask_workers: int = Field(2, gt=0)  # run-only
    plots: bool = True
    gate: Union[tuple(d.gate for d in DOMAIN_CONFIGS.values())] = GateConfig()


class RegisterConfig(Strict):
    name: str = "simgan-calorimeter"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    alias: str = "champion"
    retries: int = Field(3, ge=1)


ModelConfig = Annotated[Union[tuple(m for d in DOMAIN_CONFIGS.values() for m in d.models)],
                        Field(discriminator="family")]
DOMAIN_FAMILIES = {n: tuple(m.model_fields["family"].default for m in d.models) for n, d in DOMAIN_CONFIGS.items()}
DOMAIN_SECTIONS = {n: (d.simulate, d.gate) for n, d in DOMAIN_CONFIGS.items()}
# discriminated unions put their tag in an error's location (model.vae.lr): dropped when reported
UNION_TAGS = {"model": {f for fams in DOMAIN_FAMILIES.values() for f in fams}, "domain": set(DOMAIN_FAMILIES)}


warnings.filterwarnings("ignore", message='Field name "(validate|register)"', category=UserWarning)


class SectionError(ValueError):
    pass


def _section(cls, data: dict, where: str):
    """Validate a domain-chosen section, its errors named like the top-level ones."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise SectionError(_format_error("", exc, prefix=f"{where}.")[2:]) from None


class ExperimentConfig(Strict):
    name: str
    runs_dir: str = "runs"
    seed: int = 42
    domain: AnyDomainConfig = DomainConfig()
    model: ModelConfig = GANConfig()
    simulate: Union[tuple(d.simulate for d in DOMAIN_CONFIGS.values())] = SimulateConfig()
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    generate: GenerateConfig = GenerateConfig()
    validate: ValidateConfig = ValidateConfig()
    register: RegisterConfig = RegisterConfig()

    @model_validator(mode="before")
    @classmethod
    def _domain_sections(cls, data):
        """The simulate section and the gate are the domain's: validate them with its classes."""
        if not isinstance(data, dict):
            return data
        dom = data.get("domain") or {}
        name = dom.get("name", "calorimeter") if isinstance(dom, dict) else getattr(dom, "name", "calorimeter")
        sim_cls, gate_cls = DOMAIN_SECTIONS.get(name, DOMAIN_SECTIONS["calorimeter"])
        data = dict(data)
        sim = data.get("simulate", {})
        if isinstance(sim, dict):
            data["simulate"] = _section(sim_cls, sim, "simulate")
        val = data.get("validate") or {}
        if isinstance(val, dict) and isinstance(val.get("gate", {}), dict):
            data["validate"] = {**val, "gate": _section(gate_cls, val.get("gate", {}), "validate.gate")}
        return data

    @model_validator(mode="after")
    def _family_fits_domain(self):
        families = DOMAIN_FAMILIES[self.domain.name]
        if self.model.family not in families:
            raise ValueError(f"model.family {self.model.family!r} does not fit domain {self.domain.name!r} "
                             f"(expected one of {families})")
        if not isinstance(self.simulate, DOMAIN_SECTIONS[self.domain.name][0]):
            raise ValueError(f"simulate: keys of another domain than {self.domain.name!r}")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


# Keys that change how a stage runs, not what it produces: never in the stage hash.
RUN_ONLY = {
    "simulate.workers",
    "train.device",
    "train.progress",
    "train.max_seconds",
    "generate.device",
    "generate.dask",
    "generate.dask_workers",
    "validate.dask",
    "validate.dask_workers",
}


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SimganError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SimganError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SimganError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise SimganError(f"override {text!r}: expected key=value (e.g. train.steps=100)")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SimganError(f"override {text!r}: empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise SimganError(f"override {text!r}: '{p}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def _format_error(source: str, exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        inner = err.get("ctx", {}).get("error")
        if isinstance(inner, SectionError):  # a domain section, already formatted
            lines.append(str(inner))
            continue
        parts = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        if len(parts) > 1 and parts[1] in UNION_TAGS.get(parts[0], ()):
            del parts[1]
        loc = prefix + ".".join(parts)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        field = err.get("ctx", {}).get("error")
        if isinstance(field, BooleanNotNumber):  # raised for the model: name the field
            loc, msg = f"{loc.rstrip('.')}.{field.field}" if loc.rstrip(".") else field.field, str(field)
        got = err.get("input")
        got_s = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {got!r})"
        lines.append(f"key '{loc}': {msg}{got_s}")
    return f"{source}: " + "; ".join(lines)


def compose(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Experiment file + its groups + overrides, as a plain dict (not yet validated)."""
    path = Path(path)
    data = _read_yaml(path)
    defaults = data.pop("defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise SimganError(f"{path}: key 'defaults': expected a mapping like {{domain: calorimeter}}")
    rest = []
    for text in overrides or []:  # `model=vae` picks a group file, as in Hydra
        key, _, val = text.partition("=")
        if key.strip() in GROUPS and val.strip() and "." not in key:
            defaults = {**defaults, key.strip(): val.strip()}
        else:
            rest.append(text)
    overrides = rest
    root = path.resolve().parent.parent
    if not (root / "domain").is_dir():
        root = REPO_CONFIGS
    merged: dict = {}
    for group, name in defaults.items():
        if group not in GROUPS:
            raise SimganError(f"{path}: key 'defaults.{group}': unknown group (expected one of {GROUPS})")
        group_file = root / group / f"{name}.yaml"
        if not group_file.is_file():
            raise SimganError(f"{path}: key 'defaults.{group}': no config {group_file}")
        merged[group] = _read_yaml(group_file)
    merged = _merge(merged, data)
    return apply_overrides(merged, overrides or [])


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    data = compose(path, overrides)
    data.setdefault("name", Path(path).stem)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise SimganError(_format_error(str(path), exc)) from None


def config_from_dict(data: dict, source: str = "<config>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise SimganError(_format_error(source, exc)) from None


def hashable_view(cfg: ExperimentConfig, sections: tuple[str, ...]) -> dict:
    """The config sections a stage depends on, without run-only keys."""
    dump = cfg.model_dump(mode="json")
    out = {}
    for s in sections:
        sec = copy.deepcopy(dump[s]) if s in dump else None
        if isinstance(sec, dict):
            for key in RUN_ONLY:
                head, _, tail = key.partition(".")
                if head == s:
                    sec.pop(tail, None)
        out[s] = sec
    return out
