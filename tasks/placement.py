"""Placement: a GPU task run as a flow run of the GPU-stage deployment.

With `placement.gpu_deployment` set, a GPU task (training the student, the student's answers to
the Cache Pool and to evaluation sets) does not do its work in the flow run that calls it, which
sits on a CPU work pool and otherwise only talks to APIs and writes Parquet: `run_on_gpu` starts
a flow run of that deployment (`flows.gpu_stage.lion_gpu_stage`, on a GPU work pool), linked as
a subflow of the calling task, logs the link, waits for it, and returns its result. The GPU pool
is held only while there is GPU work.

The child runs the very same task with the same cache key (placement is operational: not in the
key), so the guarantees of one flow run hold across the split:

- A finished stage is never run again: its result is cached under the task's key in the run's
  storage, by the child and by the calling task; a retried parent finds the calling task Cached
  and starts no flow run at all.
- A stage still running, or failed, when the parent is retried is re-attached, not duplicated:
  the child is created with an idempotency key (the run that holds the root's lease + the
  task's cache key), so a second call gets the same flow run; one that failed, crashed or was
  cancelled is scheduled again (what the UI's *Retry* does), and training resumes from its
  latest checkpoint.
- The child is part of the parent's run: it takes no lease of its own, it checks that the run
  that started it still holds the root's lease (`lease_owner`).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext, TaskRunContext
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Scheduled
from prefect.utilities.urls import url_for
from pydantic_core import to_jsonable_python

from lion_core.config import LionConfig
from lion_core.errors import GpuStageError
from lion_core.run.lease import Holder, Lease, run_lease
from tasks.caching import task_key


def lease_owner(holder: Holder) -> str:
    """Who a GPU stage works for: the Prefect flow run holding the root's lease (the same over
    that run's retries), else the lease's token."""
    return holder.flow_run_id or holder.token


def run_on_gpu(config: LionConfig, stage: str, **inputs: Any) -> Any:
    """Run the calling lion task (`stage`, its name) with `inputs` as a flow run of
    `placement.gpu_deployment`, wait for it, and return its result. Called from inside the task,
    which returns what this returns."""
    context = TaskRunContext.get()
    if context is None or context.task.name != stage:
        raise RuntimeError(f"run_on_gpu({stage!r}) must be called from inside the task {stage!r}")
    deployment = config.placement.gpu_deployment
    if not deployment:
        raise RuntimeError("run_on_gpu needs placement.gpu_deployment")
    log = get_run_logger()
    flow_context = FlowRunContext.get()
    flow_run_id = str(flow_context.flow_run.id) if flow_context and flow_context.flow_run else None
    with run_lease(config, flow_run_id) as lease:
        owner = lease_owner(lease.holder)
        key = task_key(context, context.parameters)
        parameters = {
            # The child must run the stage itself, not place it again.
            "config": config.with_overrides({"placement.gpu_deployment": None}).model_dump(
                mode="json"
            ),
            "stage": stage,
            "inputs": to_jsonable_python(inputs),
            "lease_owner": owner,
        }
        k = inputs.get("round")
        where = f", round {k}" if k is not None else ""
        try:
            child = run_deployment(
                deployment,
                parameters=parameters,
                flow_run_name=f"{config.name}-{stage}" + (f"-r{k}" if k is not None else ""),
                idempotency_key=hashlib.sha256(f"{owner}/{key}".encode()).hexdigest(),
                timeout=0,
                as_subflow=True,
            )
        except ObjectNotFound:
            raise GpuStageError(
                f"placement.gpu_deployment: no deployment {deployment!r} on the Prefect server "
                f"({stage}{where}); deploy it (deployments/prefect.yaml) or empty the field "
                "to run GPU stages in this flow run"
            ) from None
        link = url_for("flow-run", obj_id=child.id) or f"flow run id {child.id}"
        log.info(
            "%s%s runs on the GPU pool as %s flow run %r: %s",
            stage, where, deployment, child.name, link,
        )  # fmt: skip
        child = _wait(child, config.placement.poll_seconds, lease, log)
        if not child.state or not child.state.is_completed():
            state = child.state.name if child.state else "no state"
            message = child.state.message if child.state else ""
            raise GpuStageError(
                f"GPU stage {stage}{where}: flow run {child.name!r} ({child.id}) of "
                f"{deployment} ended {state}: {message} — its logs: {link}. Retrying this run "
                "re-runs it from its checkpoints."
            )
        log.info("%s%s finished on the GPU pool (flow run %r)", stage, where, child.name)
        return child.state.result()


def _wait(child: FlowRun, poll: float, lease: Lease, log: Any) -> FlowRun:
    """Poll the child until it is final; a child found already final and not completed (a
    re-attached failed stage) is scheduled again first. Logs every change of its state."""
    with get_client(sync_client=True) as client:
        child = client.read_flow_run(child.id)
        if child.state and child.state.is_final() and not child.state.is_completed():
            log.warning(
                "GPU stage flow run %r had ended %s; scheduling it again (it resumes from its "
                "checkpoints)", child.name, child.state.name,
            )  # fmt: skip
            client.set_flow_run_state(
                child.id, Scheduled(message="Retried by the run that placed it"), force=True
            )
            child = client.read_flow_run(child.id)
        seen = child.state.name if child.state else None
        while not (child.state and child.state.is_final()):
            lease.check()
            time.sleep(poll)
            child = client.read_flow_run(child.id)
            name = child.state.name if child.state else None
            if name != seen:
                log.info("GPU stage flow run %r: %s", child.name, name)
                seen = name
    return child
