"""Flow run names that say what a run does (`round-2`, `evaluate-round-2`, the run's `name`),
given at the start of the run (Prefect's `flow_run_name`).

A run started from a deployment keeps the name it was started with — typed into the UI's run
form, or given by the scheduler —, since the user chose it or may look it up by it; subflows
and runs started from Python or the CLI get the descriptive name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.context import FlowRunContext


def descriptive(name_of: Callable[[dict[str, Any]], str]) -> Callable[[], str]:
    """A `flow_run_name` callable: `name_of(parameters)`, except for a deployment's run."""

    def name() -> str:
        context = FlowRunContext.get()
        if context is None or context.flow_run is None:
            raise RuntimeError("a flow run name is resolved inside the flow run")
        run = context.flow_run
        if run.deployment_id is not None and run.parent_task_run_id is None:
            return run.name
        return name_of(context.parameters or {})

    return name


def round_name(parameters: dict[str, Any]) -> str:
    return f"round-{parameters.get('round', 1)}"


def evaluation_name(parameters: dict[str, Any]) -> str:
    """`evaluate-round-2`, or `evaluate-model` for a model outside the run's rounds."""
    round = parameters.get("round")
    return "evaluate-model" if round is None else f"evaluate-round-{round}"


def run_name(parameters: dict[str, Any]) -> str:
    """The config's `name` (an ablation arm's: `<name>-<arm>-s<seed>`)."""
    config = parameters.get("config")
    name = config.get("name") if isinstance(config, dict) else getattr(config, "name", None)
    return str(name or "lion")
