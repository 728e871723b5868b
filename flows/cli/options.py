"""What the `lion` commands share: their common options, the one way a command gets its config
(a YAML file, then `--set` overrides), the storage options of `--endpoint-url`, and `fail`."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

from lion_core.config import LionConfig

RootArgument = Annotated[str, typer.Argument(help="A run's root: a folder or s3://bucket/prefix.")]
EndpointOption = Annotated[str | None, typer.Option(help="S3 endpoint (MinIO, moto, ...).")]
ConfigOption = Annotated[str, typer.Option("-c", "--config", help="The run's YAML config.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a field: --set training.epochs=1 (repeatable)."),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` in red on stderr and exit with `code` (2: usage, 1: nothing
    there)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def load_config(path: str | None, sets: list[str] | None = None) -> LionConfig:
    """The config a command runs with: the YAML file at `path` (LionConfig's defaults without
    one), then every `--set KEY=VALUE` applied on top (`with_sets`)."""
    cfg = LionConfig.from_yaml(path) if path else LionConfig()
    return with_sets(cfg, sets)


def with_sets(cfg: LionConfig, sets: list[str] | None) -> LionConfig:
    """`cfg` with the `--set KEY=VALUE` overrides applied (VALUE read as YAML: `rounds=5` is an
    int, `evaluation.sets=[offline]` a list); a field's own checks name what is wrong."""
    return cfg.with_overrides(parse_sets(sets)) if sets else cfg


def parse_sets(sets: list[str] | None) -> dict[str, object]:
    """`--set` items as {dotted key: value}; an item without `=` fails as a usage error."""
    import yaml

    overrides: dict[str, object] = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--set expects KEY=VALUE with a dotted key, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def storage_options(endpoint_url: str | None) -> dict[str, str]:
    """The fsspec options `--endpoint-url` stands for (none without it)."""
    return {"endpoint_url": endpoint_url} if endpoint_url else {}
