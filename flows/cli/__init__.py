"""The `lion` command line: one module per group of commands, registered here in the order
`lion --help` lists them.

- run.py: run, demo, resume (a distillation as a Prefect flow)
- inspect.py: pools, export, report, eval (what a run made)
- check.py: config, referee-check, estimate (before paying for a run)
- ablate.py: ablate; serve.py: serve-offline, serve-student
- options.py: the shared options, `load_config` (a YAML file, then `--set`), `storage_options`
- tables.py: what the commands print; bootstrap.py: Prefect's temporary server and console
"""

from __future__ import annotations

import os
import sys

import typer

from flows.cli import ablate, check, inspect, run, serve
from lion_core.errors import LionError

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="lion-distill: Lion adversarial distillation as a Prefect DAG.",
)

COMMANDS = {
    "serve-offline": serve.serve_offline,
    "pools": inspect.pools,
    "export": inspect.export,
    "config": check.config_cmd,
    "run": run.run,
    "demo": run.demo,
    "resume": run.resume,
    "report": inspect.report,
    "eval": inspect.eval_cmd,
    "ablate": ablate.ablate,
    "referee-check": check.referee_check,
    "estimate": check.estimate_cmd,
    "serve-student": serve.serve_student,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)


# The exit code of a command ended by SIGTERM (128 + 15, what a shell reports for it).
TERMINATED = 143


class _Terminated:
    """SIGTERM (`timeout`, `docker stop`, Kubernetes) takes Ctrl-C's graceful path: a
    KeyboardInterrupt in the main thread, so requests in flight finish into the response cache,
    children (trainer, student server) are stopped, Prefect marks the run, and Prefect's
    temporary server — in a session of its own, so a SIGTERM to the whole process group does
    not reach it — stops last, with the CLI."""

    received = False

    def __call__(self, signum: int, frame: object) -> None:
        if not _Terminated.received:
            _Terminated.received = True
            typer.secho("lion: SIGTERM received, stopping", err=True)
        raise KeyboardInterrupt("SIGTERM")


def main() -> None:
    """The console script `lion`: a LionError ends the command with its message, exit code 2;
    SIGTERM ends it like Ctrl-C, exit code 143."""
    import signal

    signal.signal(signal.SIGTERM, _Terminated())
    try:
        app()
    except LionError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except BaseException as exc:  # inside a flow, Prefect's own SIGTERM bridge raises its
        # TerminationSignal (the run is marked crashed); outside, ours a KeyboardInterrupt
        if _Terminated.received or type(exc).__name__ == "TerminationSignal":
            sys.exit(TERMINATED)
        raise
