"""The GPU stages as a flow of their own, deployed to a GPU work pool (`placement.gpu_deployment`):
training the student, and the student's answers to the Cache Pool and to evaluation sets.

A lion-round or lion-evaluate run on a CPU work pool starts one flow run of it per GPU task
(`tasks.placement.run_on_gpu`) and waits for its result. It runs that one task, cached on the
same key as everywhere else, in the run's storage: a stage that finished is never run again, one
that crashed resumes from its checkpoints when run again.
"""

from __future__ import annotations

import inspect
import time
import typing
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import TypeAdapter, ValidationError

from flows.common import use_run_storage
from lion_core.config import LionConfig
from lion_core.errors import ConfigError, LeaseHeldError, LeaseLostError
from lion_core.run.lease import read_holder, run_lease
from lion_core.run.storage import Storage
from tasks.caching import KEYED_AS
from tasks.evaluation import student_eval_answers
from tasks.placement import lease_owner as owner_of
from tasks.runtime.logs import attach_library_logging
from tasks.student import student, student_answers

Stage = Literal["student", "student-answers", "student-eval-answers"]
STAGES = {t.name: t for t in (student, student_answers, student_eval_answers)}

DEFAULT_CONFIG = LionConfig()


@flow(name="lion-gpu-stage", persist_result=True)
def lion_gpu_stage(
    config: LionConfig = DEFAULT_CONFIG,
    stage: Stage = "student",
    inputs: dict[str, Any] | None = None,
    lease_owner: str | None = None,
) -> Any:
    """Run the GPU task `stage` (its name) on `inputs` (its parameters after `config`, as JSON)
    and return its result.

    Started by a run that holds the root's lease (`lease_owner`: its flow run), it checks that
    this run still holds it and shares it; started on its own, it holds the lease itself.
    """
    use_run_storage(config)
    attach_library_logging()
    task = STAGES[stage]
    kwargs = bind_inputs(stage, inputs or {})
    if config.placement.gpu_deployment:  # never place the stage again from here
        config = config.with_overrides({"placement.gpu_deployment": None})
    if lease_owner is None:
        with run_lease(config, flow_run.id):
            return task(config, **kwargs)
    check_parent_lease(config, lease_owner)
    get_run_logger().info("%s for the run %s, which holds %s", stage, lease_owner, _root(config))
    return task(config, **kwargs)


def bind_inputs(stage: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """The JSON `inputs` of `stage` as its task's typed parameters (ArtifactRef, ...). An input
    under a parameter's former name (`cache`, from a run started before the rename: KEYED_AS)
    is taken as that parameter."""
    fn = STAGES[stage].fn
    hints = typing.get_type_hints(fn)
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "config"]
    names = {p.name for p in params}
    former = {old: new for new, old in KEYED_AS.items() if new in names and old not in names}
    inputs = {former.get(name, name): value for name, value in inputs.items()}
    unknown = sorted(set(inputs) - names)
    missing = [p.name for p in params if p.name not in inputs and p.default is p.empty]
    if unknown or missing:
        raise ConfigError(
            f"lion-gpu-stage inputs of {stage!r}: "
            + "; ".join(
                part
                for part in (
                    f"unknown {', '.join(unknown)}" if unknown else "",
                    f"missing {', '.join(missing)}" if missing else "",
                )
                if part
            )
            + f" (it takes {', '.join(p.name for p in params)})"
        )
    out = {}
    for name, value in inputs.items():
        try:
            out[name] = TypeAdapter(hints[name]).validate_python(value)
        except ValidationError as exc:
            raise ConfigError(f"lion-gpu-stage input {name!r} of {stage!r}: {exc}") from None
    return out


def check_parent_lease(config: LionConfig, owner: str) -> None:
    """Refuse to work unless the run `owner` that started this stage still holds the root's
    lease: a stage started by a run that has since died, its root taken over by another run,
    must not write into that run's root."""
    holder = read_holder(Storage(config.storage.root, config.storage.options))
    if holder is None:
        raise LeaseLostError(
            f"{_root(config)} has no lease: the run {owner} that started this GPU stage no "
            "longer holds it (it finished or died). Retry that run; it re-attaches this stage."
        )
    if owner_of(holder) != owner:
        raise LeaseHeldError(
            f"{_root(config)} is in use by {holder.describe(time.time())}, not by the run "
            f"{owner} that started this GPU stage: it will not write into another run's root"
        )


def _root(config: LionConfig) -> str:
    return f"run root {config.storage.root}"
