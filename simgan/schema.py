"""The base of every config model: unknown keys are errors, and a boolean is no number
(pydantic would take `steps: true` as 1)."""

from __future__ import annotations

import typing

from pydantic import BaseModel, ConfigDict, model_validator


class BooleanNotNumber(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _admits_bool(annotation) -> bool:
    if annotation is bool or annotation is typing.Any:
        return True
    return any(_admits_bool(a) for a in typing.get_args(annotation))


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _a_boolean_is_no_number(cls, data):
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if field is not None and isinstance(value, bool) and not _admits_bool(field.annotation):
                    raise BooleanNotNumber(name, f"expected {_describe(field.annotation)}, not a boolean")
        return data


def _describe(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


class Strict(ConfigModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
