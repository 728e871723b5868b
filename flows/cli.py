"""The `lion` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from lion_core.config import LionConfig
from lion_core.errors import LionError

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="lion-distill: Lion adversarial distillation as a Prefect DAG.",
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command("serve-offline")
def serve_offline(
    host: Annotated[
        str, typer.Option(help="Interface to bind (keep it on loopback).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8765,
    config: Annotated[
        Path | None, typer.Option("-c", "--config", help="Take the `offline` section from here.")
    ] = None,
) -> None:
    """Run the offline task world: an OpenAI-compatible teacher, referee and generator."""
    from lion_core.offline.server import serve

    cfg = LionConfig.from_yaml(config) if config else LionConfig()
    serve(cfg.offline, host=host, port=port)


@app.command("pools")
def pools(
    root: Annotated[str, typer.Argument(help="A run's root: a folder or s3://bucket/prefix.")],
    endpoint_url: Annotated[
        str | None, typer.Option(help="S3 endpoint (MinIO, moto, ...).")
    ] = None,
) -> None:
    """Print per-round row counts of every artifact of a run."""
    from lion_core.pools import ARTIFACT_SCHEMAS, RunStore

    options = {"endpoint_url": endpoint_url} if endpoint_url else {}
    store = RunStore.open(root, options)
    counts = store.counts()
    if not counts:
        _fail(f"no rounds under {store.storage.uri()}", 1)
    names = [*ARTIFACT_SCHEMAS, "student"]
    header = ["round", *names]
    rows = [
        [str(k)] + ["-" if v[n] is None else str(v[n]) for n in names] for k, v in counts.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        typer.echo("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)))


@app.command("config")
def config_cmd(
    path: Annotated[Path | None, typer.Argument(help="Config to validate.")] = None,
    write: Annotated[
        Path | None, typer.Option("--write", help="Write the default config here.")
    ] = None,
) -> None:
    """Validate a config file (prints it with defaults filled in), or write the defaults."""
    cfg = LionConfig.from_yaml(path) if path else LionConfig()
    if write:
        cfg.to_yaml(write)
        typer.echo(f"wrote {write}")
    else:
        typer.echo(cfg.to_yaml(), nl=False)


@app.command("run")
def run(
    config: Annotated[Path, typer.Option("-c", "--config", help="The run's YAML config.")],
) -> None:
    """Run `rounds` Lion rounds as a Prefect flow."""
    _fail("`lion run` needs the round flow (flows/distill.py), which is not built yet", 3)


@app.command("demo")
def demo() -> None:
    """Run the embedded default end to end: offline world, tiny student, local storage."""
    _fail("`lion demo` needs the round flow (flows/distill.py), which is not built yet", 3)


def main() -> None:
    try:
        app()
    except LionError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
