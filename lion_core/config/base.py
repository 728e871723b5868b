"""What every config section shares: the `Section` base, the operational mark, `OFFLINE`."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo

OFFLINE = "offline"

# Fields marked operational change how work is done (where and how requests are sent, how many
# GPUs, how long to wait), never what is produced: they may differ between invocations on one
# run root and never enter a cache key. The mark sits next to each field.
OPERATIONAL: dict[str, Any] = {"operational": True}

# Fields added after run roots existed: the default reproduces what runs did before the field
# existed, and a field at its default is left out of the digest, so those roots' tasks stay
# cached (their run.json lacks the field, which loads as the default).
ADDED: dict[str, Any] = {"added": True}


def section_model(annotation: object) -> type[BaseModel] | None:
    """The config section type behind a field's annotation (`X`, `X | None`), else None."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def added_defaults(model: type[BaseModel], value: dict[str, Any]) -> dict[str, Any]:
    """`value` (a section's JSON dump) without the ADDED fields that are at their default."""
    out = {}
    for key, item in value.items():
        field = model.model_fields.get(key)
        sub = section_model(field.annotation) if field is not None else None
        extra = (field.json_schema_extra or {}) if field is not None else {}
        if extra.get("added") and item == _json_default(field):
            continue
        if (
            sub is not None
            and isinstance(item, dict)
            and typing.get_origin(field.annotation) is not dict
        ):
            item = added_defaults(sub, item)
        out[key] = item
    return out


def _json_default(field: FieldInfo) -> Any:
    default = field.get_default(call_default_factory=True)
    return default.model_dump(mode="json") if isinstance(default, BaseModel) else default
