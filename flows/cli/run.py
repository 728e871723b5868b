"""`lion run`, `lion demo` and `lion resume`: a Lion distillation as a Prefect flow, from a
config file, from the embedded default, or from what a run recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.bootstrap import use_prefect
from flows.cli.options import (
    ConfigOption,
    EndpointOption,
    SetOption,
    fail,
    load_config,
    storage_options,
    with_sets,
)
from flows.cli.tables import print_scoreboard
from lion_core.config import LionConfig


def run(config: ConfigOption, set_: SetOption = None) -> None:
    """Run `rounds` Lion rounds as a Prefect flow, with any config."""
    run_flow(load_config(config, set_))


def demo(
    rounds: Annotated[int, typer.Option(help="Lion rounds to run.")] = 3,
    data_dir: Annotated[
        str | None,
        typer.Option(
            help="The run's root (a folder, or s3://bucket/prefix). Default: lion-runs/demo; "
            "with --write-config, lion-runs/<the file's name>, a root of its own."
        ),
    ] = None,
    write_config: Annotated[
        Path | None,
        typer.Option(help="Only write the demo's full config as YAML here, to start from."),
    ] = None,
    set_: SetOption = None,
) -> None:
    """Run the embedded default end to end: offline world, tiny student, local storage,
    ephemeral Prefect."""
    from lion_core.config.presets import demo_config

    if data_dir is None:
        # a written config is for a new experiment: it must not reuse the demo's root (bound to
        # the demo's config by run.json, so any edit would be refused there)
        data_dir = f"lion-runs/{write_config.stem}" if write_config else "lion-runs/demo"
    cfg = with_sets(demo_config(root=data_dir, rounds=rounds), set_)
    if write_config:
        cfg.to_yaml(write_config)
        typer.echo(
            f"wrote {write_config} (storage.root {cfg.storage.root}); run it with: "
            f"lion run -c {write_config}"
        )
        return
    run_flow(cfg)


def resume(
    target: Annotated[
        str, typer.Argument(help="A run's root (folder or s3:// URI), or a Prefect flow-run id.")
    ],
    endpoint_url: EndpointOption = None,
) -> None:
    """Re-run a failed run with its recorded config: every finished task comes from cache,
    every answered LLM request from the response cache, training from its checkpoint."""
    run_flow(resume_config(target, storage_options(endpoint_url)))


def run_flow(cfg: LionConfig) -> None:
    """Check the config's keys, endpoints and storage (preflight), bind the root to it, then run
    lion-distill and print each round's table and the scores."""
    from lion_core.ops.preflight import preflight
    from tasks.runtime.secrets import secret_value

    # keys, endpoints, storage, initial data: in seconds, before Prefect (and torch) load
    report = preflight(cfg, secret_loader=secret_value)
    for warning in report.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    report.raise_for_problems()

    from flows.distill import lion_distill
    from flows.report import summary_table
    from lion_core.run.identity import check_run

    # A root bound to another config is refused here, before any flow starts; run.json is
    # written by the flow once it holds the root's lease (a run the lease refuses writes none).
    check_run(cfg)
    use_prefect()
    typer.echo(f"lion: {cfg.rounds} round(s), run root {cfg.storage.root}")
    result = lion_distill(cfg)
    typer.echo("")
    typer.echo(summary_table(result.rounds))
    print_scoreboard(result.root, cfg.storage.options)
    typer.echo(f"\npools and students under {result.root} (inspect: lion pools {result.root})")


def resume_config(target: str, options: dict[str, str]) -> LionConfig:
    """The config a run recorded: a root's run.json, or a Prefect flow run's `config`
    parameter when `target` is a flow-run id."""
    import uuid

    from lion_core.run.identity import recorded_config

    try:
        run_id = uuid.UUID(target)
    except ValueError:
        return recorded_config(target, options)
    from prefect.client.orchestration import get_client

    use_prefect()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
    params = flow_run.parameters or {}
    if "config" not in params:
        fail(f"flow run {run_id} has no 'config' parameter: not a lion run")
    return LionConfig.from_dict(params["config"], source=f"flow run {run_id}")
