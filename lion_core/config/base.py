"""What every config section shares: the `Section` base, the operational mark, `OFFLINE`."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict

OFFLINE = "offline"

# Fields marked operational change how work is done (where and how requests are sent, how many
# GPUs, how long to wait), never what is produced: they may differ between invocations on one
# run root and never enter a cache key. The mark sits next to each field.
OPERATIONAL: dict[str, Any] = {"operational": True}


def section_model(annotation: object) -> type[BaseModel] | None:
    """The config section type behind a field's annotation (`X`, `X | None`), else None."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
