"""Render LionConfig's fields as a markdown reference (docs/configuration.md is generated)."""

from __future__ import annotations

import json
import re
import typing

from pydantic import BaseModel

from lion_core.config.base import section_model
from lion_core.config.legacy import ENDPOINT_RENAMES, RENAMED, ROLES
from lion_core.config.model import LionConfig

HEADER = """# Configuration reference

Generated from `lion_core/config/` by `python -m lion_core.config.doc > docs/configuration.md`
(a test keeps it in step). One model, `LionConfig`, drives the CLI (`lion run -c FILE`,
`--set a.b=c`), YAML files and the Prefect UI's run form. Unknown keys are errors; every error
names the field's dotted path.

Start from a full file: `lion demo --write-config my-run.yaml` (the embedded default) or
`lion config --write defaults.yaml` (the paper's defaults).

"""


def _type_name(annotation: object) -> str:
    text = re.sub(r"lion_core\.config\.(\w+\.)*", "", str(annotation).replace("typing.", ""))
    return text.replace("<class '", "").replace("'>", "").replace("|", "\\|")


def renamed_keys() -> str:
    """The keys renamed since configs were written, old -> new (legacy.py)."""
    pairs = [f"`<role>.{old}` → `<role>.{new}`" for old, new in ENDPOINT_RENAMES.items()]
    pairs += [f"`{old}` → `{new}`" for old, new in RENAMED.items() if old.startswith("student.")]
    return (
        "Renamed keys still load — in YAML files, `--set`, the run form's overrides and a run "
        "root's run.json — with a warning naming the new key (roles: "
        f"{', '.join(ROLES)}): {'; '.join(pairs)}.\n\n"
    )


def render() -> str:
    out = [HEADER + renamed_keys()]
    defaults = LionConfig().model_dump(mode="json")

    def section(model: type[BaseModel], path: str, values: dict, optional: bool = False) -> None:
        rows, subs = [], []
        for name, field in model.model_fields.items():
            sub = section_model(field.annotation)
            dotted = f"{path}.{name}" if path else name
            if sub is not None and typing.get_origin(field.annotation) is dict:
                # a mapping of name -> section (pricing): one section for any entry
                entry_defaults = {
                    n: None if f.is_required() else f.default for n, f in sub.model_fields.items()
                }
                subs.append((sub, f"{dotted}.<name>", entry_defaults, False))
            elif sub is not None and isinstance(values.get(name), dict):
                subs.append((sub, dotted, values[name], False))
                continue
            if sub is not None and values.get(name) is None:
                # an optional section, off by default: its own fields, with their defaults
                # when it is set (`training.lora: {}`), get a section too
                subs.append((sub, dotted, sub().model_dump(mode="json"), True))
            default = json.dumps(values.get(name))
            rows.append(
                f"| `{dotted}` | `{_type_name(field.annotation)}` | `{default}` | "
                f"{field.description} |"
            )
        if rows:
            title = f"`{path}` (when set)" if optional else f"`{path or 'top level'}`"
            out.append(f"## {title}\n")
            if model.__doc__ and path:
                out.append(model.__doc__.strip().splitlines()[0] + "\n")
            out.append("| field | type | default | description |\n|---|---|---|---|")
            out.extend(rows)
            out.append("")
        for sub, dotted, sub_values, sub_optional in subs:
            section(sub, dotted, sub_values, sub_optional)

    section(LionConfig, "", defaults)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
