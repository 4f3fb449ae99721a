"""Typed experiment configuration: YAML (safe_load) -> validated pydantic models.

An experiment file names its groups under `defaults` (domain, model); each group is
loaded from configs/<group>/<name>.yaml (the model group per domain:
configs/model/<domain>/<family>.yaml) and the experiment's own section is merged over it.
An experiment may `extends` another experiment file (its twin with another model, say),
whose sections lie under its own.
Unknown keys and wrong types are errors naming the file and the dotted key.

This module is the core's half: the sections every domain shares and the loading
machinery. A domain's sections (its `domain`, `simulate`, gate and model configs, and its
own keys of the shared sections) come from its config module, handed over as a
{name: DomainConfigs} table in the validation context: `simgan.domains.load_config` does
that, so the core imports no domain.
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, ValidationInfo, model_validator

from simgan.errors import SimganError
from simgan.schema import BooleanNotNumber, ConfigModel, Strict

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
GROUPS = ("domain", "model")


class PrepareConfig(Strict):
    input: str | None = None  # None: the simulate stage's output
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)

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
    # power of the domain's monitor features, checked every val_every steps), or the last one
    select: Literal["best_val", "last"] = "best_val"
    mlflow: bool = True
    progress: bool = True  # run-only


class GenerateConfig(Strict):
    events: int | None = Field(None, gt=0)  # None: the held-out test split's conditions
    batch_size: int = Field(1000, gt=0)
    device: str = Field("auto", pattern=DEVICE_PATTERN)  # run-only
    # bf16: the sampling network in bfloat16 (2-3x faster on CPUs with AVX512-BF16 or AMX)
    precision: Literal["fp32", "bf16"] = "fp32"


class GateBase(Strict):
    """What every domain's gate shares: the fewest events per class in the classifier test
    for a verdict (below about a hundred the classifier cannot tell even clearly different
    samples apart, and a pass would be a verdict without evidence)."""

    min_events: int = Field(100, ge=1)


class ValidateConfig(Strict):
    """The shared validation keys; a domain's subclass adds its own and its gate."""

    classifier_seeds: int = Field(3, gt=0)
    classifier_max_events: int = Field(20000, gt=0)  # per class
    # independent samples of the model (sampler seeds seed, seed+1, ...) the verdict is judged
    # on: a check passes when it passes at every draw (simgan.metrics.draws)
    draws: int = Field(3, ge=1)
    plots: bool = True


class RegisterConfig(Strict):
    name: str = "simgan-model"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    alias: str = "champion"
    retries: int = Field(3, ge=1)
    # the export stored beside the registered model (`simgan export`) where its domain exports;
    # off by default (an ONNX export takes seconds, a neuron VAE's latent flow minutes)
    export: Literal["onnx", "torchscript", "none"] = "none"


class DomainConfigs(NamedTuple):
    """A domain's config classes: its `domain` section (tagged by `name`), the `simulate`
    section, the gate, its model configs (tagged by `family`), and its versions of the shared
    sections (a subclass adds the domain's own keys; the validate section carries its gate)."""

    domain: type
    simulate: type
    gate: type
    models: tuple
    validate: type
    prepare: type = PrepareConfig
    train: type = TrainConfig
    generate: type = GenerateConfig


warnings.filterwarnings("ignore", message='Field name "(validate|register)"', category=UserWarning)

# the sections whose class the domain chooses, in the order they are checked
DOMAIN_SECTIONS = ("domain", "model", "simulate", "prepare", "train", "generate", "validate")


class SectionError(ValueError):
    pass


def _families(dc: DomainConfigs) -> tuple[str, ...]:
    return tuple(m.model_fields["family"].default for m in dc.models)


def _section_class(dc: DomainConfigs, section: str, data: dict, domain: str) -> type:
    if section != "model":
        return getattr(dc, section)
    family = data.get("family")
    for m in dc.models:
        if m.model_fields["family"].default == family:
            return m
    raise SectionError(f"key 'model.family': {family!r} does not fit domain {domain!r} (expected one of "
                       f"{_families(dc)}; choose a model group: model={domain}/<family>)")


def _section(section: str, data: dict, domain: str, domains: dict[str, DomainConfigs]):
    """A domain-chosen section, validated by the domain's class; its errors named like the
    top-level ones, and a key that is another domain's setting said to be so."""
    cls = _section_class(domains[domain], section, data, domain)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
                owners = [n for n, dc in domains.items() if n != domain and _has_key(dc, section, key)]
                if owners:
                    lines.append(f"key '{section}.{key}': a setting of the {' and '.join(owners)} domain; the "
                                 f"{domain} domain has no such key")
                    continue
            lines.append(_format_error("", ValidationError.from_exception_data(exc.title, [err]),
                                       prefix=f"{section}.")[2:])
        raise SectionError("; ".join(lines)) from None


def _has_key(dc: DomainConfigs, section: str, key: str) -> bool:
    classes = dc.models if section == "model" else (getattr(dc, section),)
    return any(key in c.model_fields for c in classes)


class ExperimentConfig(Strict):
    """One experiment. The domain-chosen sections are typed by their shared base here and
    validated by the domain's classes (from the validation context)."""

    name: str
    runs_dir: str = "runs"
    seed: int = Field(42, ge=0, le=2**63 - 1)
    domain: SerializeAsAny[ConfigModel]
    model: SerializeAsAny[ConfigModel]
    simulate: SerializeAsAny[ConfigModel]
    prepare: SerializeAsAny[PrepareConfig]
    train: SerializeAsAny[TrainConfig]
    generate: SerializeAsAny[GenerateConfig]
    validate: SerializeAsAny[ValidateConfig]
    register: RegisterConfig = RegisterConfig()

    @model_validator(mode="before")
    @classmethod
    def _domain_sections(cls, data, info: ValidationInfo):
        """Each domain-chosen section validated with the domain's class (the domain from
        `domain.name`, which every experiment names)."""
        if not isinstance(data, dict):
            return data
        domains = (info.context or {}).get("domains")
        if domains is None:
            raise SectionError("an experiment config is validated against the domains' config classes: load it "
                               "with simgan.domains.load_config or config_from_dict")
        dom = data.get("domain")
        name = dom.get("name") if isinstance(dom, dict) else getattr(dom, "name", None)
        if name is None:
            raise SectionError("key 'domain.name': missing: every experiment names its domain (defaults: {domain: "
                               f"NAME}}, one of {', '.join(domains)})")
        if name not in domains:
            raise SectionError(f"key 'domain.name': unknown domain {name!r} (known: {', '.join(domains)})")
        if data.get("model") is None:
            raise SectionError(f"key 'model': missing: choose a model group (model={name}/<family>, one of "
                               f"{_families(domains[name])})")
        data = dict(data)
        errors = []
        for section in DOMAIN_SECTIONS:
            value = data.get(section, {})
            if value is None:
                value = {}
            if isinstance(value, dict):
                try:
                    data[section] = _section(section, value, name, domains)
                except SectionError as exc:
                    errors.append(str(exc))
            elif not isinstance(value, _section_class(domains[name], section, value.model_dump(), name)):
                errors.append(f"key '{section}': a section of another domain than {name!r}")
        if errors:
            raise SectionError("; ".join(errors))
        return data

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
    data = _read_experiment(path)
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
        merged[group] = _read_yaml(_group_file(path, root, group, str(name), defaults.get("domain")))
    merged = _merge(merged, data)
    return apply_overrides(merged, overrides or [])


def _read_experiment(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """An experiment file with what it `extends` (another experiment file, relative to its
    folder) merged under it, its `defaults` too: a twin that changes the model keeps its base's
    data, training and gates. A twin that picks another model group starts from that group's
    file: the base's `model` section, written for the base's model, is not merged under it."""
    data = _read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise SimganError(f"{path}: key 'extends': expected the name of an experiment file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in seen or base_path == path.resolve():
        raise SimganError(f"{path}: key 'extends': {base} leads back to a file that extends it (a cycle)")
    if not base_path.is_file():
        raise SimganError(f"{path}: key 'extends': no experiment file {base_path}")
    under = _read_experiment(base_path, (*seen, path.resolve()))
    if not isinstance(data.get("defaults", {}), dict):
        raise SimganError(f"{path}: key 'defaults': expected a mapping like {{domain: calorimeter}}")
    model = (data.get("defaults") or {}).get("model")
    if model is not None and model != (under.get("defaults") or {}).get("model"):
        under.pop("model", None)  # the base's model settings are for the base's model
    return _merge(under, data)


def _group_file(path: Path, root: Path, group: str, name: str, domain) -> Path:
    """configs/<group>/<name>.yaml; the model group lives per domain (model/<domain>/<family>.yaml).
    A model named without its domain (model=vae, the names before the groups mirrored the
    packages) is found in the domain's folder, with a deprecation message: that spelling goes in
    the next release."""
    group_file = root / group / f"{name}.yaml"
    if group_file.is_file():
        return group_file
    if group == "model" and "/" not in name and domain:
        moved = root / group / str(domain) / f"{name}.yaml"
        if moved.is_file():
            print(f"simgan: deprecated: model={name} (in {path} or on the command line) is now model={domain}/{name}; "
                  "the old name works until the next release", file=sys.stderr)
            return moved
    raise SimganError(f"{path}: key 'defaults.{group}': no config {group_file}")


def validate_experiment(data: dict, domains: dict[str, DomainConfigs], source: str = "<config>") -> ExperimentConfig:
    """The validated experiment, each domain-chosen section by the classes of `domains`."""
    try:
        return ExperimentConfig.model_validate(data, context={"domains": domains})
    except ValidationError as exc:
        raise SimganError(_format_error(source, exc)) from None


def load_experiment(path: str | os.PathLike, overrides: list[str] | None, domains: dict[str, DomainConfigs]
                    ) -> ExperimentConfig:
    data = compose(path, overrides)
    data.setdefault("name", Path(path).stem)
    return validate_experiment(data, domains, str(path))


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
