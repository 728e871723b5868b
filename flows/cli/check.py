"""`lion config`, `lion referee-check` and `lion estimate`: what to check before paying for a
run — the config itself, the referee on pairs of known order, and the requests and cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.options import ConfigOption, JsonOption, SetOption, fail, load_config
from flows.cli.tables import print_referee_check


def config_cmd(
    path: Annotated[str | None, typer.Argument(help="Config to validate.")] = None,
    write: Annotated[
        Path | None, typer.Option("--write", help="Write the default config here.")
    ] = None,
) -> None:
    """Validate a config file (prints it with defaults filled in), or write the defaults."""
    cfg = load_config(path)
    if write:
        cfg.to_yaml(write)
        typer.echo(f"wrote {write}")
    else:
        typer.echo(cfg.to_yaml(), nl=False)


def referee_check(
    config: ConfigOption,
    pairs: Annotated[
        int,
        typer.Option(
            "--pairs",
            min=1,
            help="Seed instructions to check on; each gives up to 5 known-order pairs "
            "(teacher: one request each; referee: two per pair).",
        ),
    ] = 20,
    role: Annotated[
        str, typer.Option(help="Which scorer to check: 'referee' or 'judge' (evaluation).")
    ] = "referee",
    json_out: JsonOption = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Do not use the run's response cache.")
    ] = False,
    set_: SetOption = None,
) -> None:
    """Check the configured referee on answer pairs of KNOWN order before paying for a run: the
    teacher's answer against degraded copies (truncated, a wrong number, empty, another
    question's answer, a false final claim), scored in both orders. Reports agreement with the
    known order, positional consistency, the positional bias, ties and unscored pairs."""
    from lion_core.evaluation.referee_check import run_referee_check
    from tasks.runtime.secrets import api_key

    if role not in ("referee", "judge"):
        fail(f"--role must be 'referee' or 'judge', got {role!r}")
    cfg = load_config(config, set_)
    keys = {r: api_key(cfg, r) for r in ("teacher", role)}
    result = run_referee_check(cfg, pairs, role=role, cache=not no_cache, api_keys=keys)
    if json_out:
        typer.echo(json.dumps(result.to_json()))
        return
    print_referee_check(cfg, role, result)


def estimate_cmd(
    config: ConfigOption, json_out: JsonOption = False, set_: SetOption = None
) -> None:
    """Before a run: requests, tokens and cost per role and round, sync and batch (round 1
    exact in requests; later rounds projected; config `pricing`)."""
    from lion_core.ops.estimate import estimate_run, text_table

    result = estimate_run(load_config(config, set_))
    typer.echo(json.dumps(result.to_json()) if json_out else text_table(result))
