"""Placement (tasks/placement.py, flows/gpu_stage.py): the config field, the GPU-stage flow's
inputs and its check of the parent's lease, and, through Prefect's test harness (a real API
server), a GPU stage whose flow run crashed: the retried task re-attaches to that same flow run
and schedules it again instead of starting a second one. The whole split on two process pools
with workers is tests/test_deploy_e2e.py::test_split_run_retried_on_a_fresh_worker_repeats_nothing
"""

from __future__ import annotations

import threading
import time

import pytest
from helpers import small_config

from lion_core.config import LionConfig
from lion_core.errors import ConfigError, GpuStageError, LeaseHeldError, LeaseLostError
from lion_core.run.lease import Lease
from lion_core.run.schemas import ArtifactRef
from lion_core.run.storage import Storage


def test_placement_is_operational_and_names_a_deployment():
    base = LionConfig()
    placed = base.with_overrides({"placement.gpu_deployment": "lion-gpu-stage/gpu-pool"})
    assert base.placement.gpu_deployment is None  # the embedded default runs in-process
    assert placed.digest() == base.digest()  # same cache keys, same run root either way
    with pytest.raises(ConfigError, match=r"placement\.gpu_deployment"):
        base.with_overrides({"placement.gpu_deployment": "lion-gpu-stage"})


def test_stage_inputs_come_back_typed_and_wrong_ones_are_named():
    from flows.gpu_stage import STAGES, Stage, bind_inputs

    assert set(STAGES) == set(Stage.__args__)
    ref = ArtifactRef(uri="s3://b/r/x", path="x", name="cache_pool", round=1, rows=3, sha256="0")
    kwargs = bind_inputs(
        "student-answers", {"round": 1, "cache_pool": ref.model_dump(), "student": "s"}
    )
    assert kwargs == {"round": 1, "cache_pool": ref, "student": "s"}
    # a stage started before `cache` was renamed `cache_pool` (tasks.caching.KEYED_AS)
    kwargs = bind_inputs("student-answers", {"round": 1, "cache": ref.model_dump(), "student": "s"})
    assert kwargs == {"round": 1, "cache_pool": ref, "student": "s"}
    with pytest.raises(ConfigError, match=r"unknown rounds.*missing round"):
        bind_inputs("student-answers", {"rounds": 1, "cache": ref.model_dump(), "student": "s"})
    with pytest.raises(ConfigError, match="input 'data' of 'student'"):
        bind_inputs("student", {"round": 1, "data": {"uri": "x"}, "base": "b"})


def test_a_gpu_stage_works_only_for_the_run_holding_the_lease(tmp_path):
    from flows.gpu_stage import check_parent_lease

    cfg = LionConfig().with_overrides({"storage.root": str(tmp_path / "run")})
    with pytest.raises(LeaseLostError, match="no longer holds it"):
        check_parent_lease(cfg, "flow-run-A")
    lease = Lease(Storage(cfg.storage.root), flow_run_id="flow-run-A").acquire()
    try:
        check_parent_lease(cfg, "flow-run-A")
        with pytest.raises(LeaseHeldError, match=r"flow run flow-run-A.*not by the run flow-run-B"):
            check_parent_lease(cfg, "flow-run-B")
    finally:
        lease.release()


# ---- through Prefect ------------------------------------------------------------------------


@pytest.fixture
def gpu_deployment(prefect_harness):
    """A deployment of lion-gpu-stage on a process pool no worker serves: the test plays the
    worker. Returns its 'flow/deployment' name and id."""
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.gpu_stage import lion_gpu_stage

    pool = f"gpu-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow(lion_gpu_stage)
        dep_id = client.create_deployment(
            flow_id=flow_id,
            name=pool,
            work_pool_name=pool,
            entrypoint="flows/gpu_stage.py:lion_gpu_stage",
        )
    return f"lion-gpu-stage/{pool}", dep_id


def _scheduled_runs(dep_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
        )


@pytest.mark.slow
def test_a_crashed_gpu_stage_is_scheduled_again_not_started_twice(gpu_deployment, tmp_path):
    """The student's answers placed on the GPU deployment: its first flow run crashes (the pod
    died); the task's retry re-attaches to that flow run, schedules it again, and returns what
    it computed. The deployment has exactly one flow run, and the parent's logs link to it."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.flow_engine import run_flow
    from prefect.logging.handlers import APILogWorker
    from prefect.runtime import flow_run
    from prefect.states import Crashed

    from flows.common import use_run_storage
    from flows.gpu_stage import lion_gpu_stage
    from lion_core.run.lease import run_lease
    from lion_core.run.store import RunStore
    from lion_core.student.model import prepare_base_student
    from tasks.pools import seed_pools
    from tasks.student import student_answers

    name, dep_id = gpu_deployment
    cfg = small_config(
        tmp_path / "run",
        **{"pools.offline_seeds": 6, "placement.gpu_deployment": name},
        **{"placement.poll_seconds": 0.2},
    )
    store = RunStore.open(cfg.storage.root)
    cache = seed_pools.fn(cfg).cache
    base = prepare_base_student(cfg, store, list(store.read_ref(cache)["instruction"]) * 4)

    @flow(name="placement-parent")
    def parent() -> ArtifactRef:
        use_run_storage(cfg)
        with run_lease(cfg, flow_run.id):
            return student_answers.with_options(retry_delay_seconds=0)(cfg, 1, cache, base)

    stop, seen, errors = threading.Event(), [], []

    def play_the_worker() -> None:
        """Crash the first flow run of the deployment; run it when it is scheduled again."""
        try:
            while not stop.is_set():
                for run in _scheduled_runs(dep_id):
                    seen.append(run.id)
                    if len(seen) == 1:
                        with get_client(sync_client=True) as client:
                            client.set_flow_run_state(run.id, Crashed(message="pod died"), True)
                    else:
                        run_flow(lion_gpu_stage, flow_run=run)
                time.sleep(0.2)
        except Exception as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    worker = threading.Thread(target=play_the_worker, daemon=True)
    worker.start()
    try:
        state = parent(return_state=True)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not errors, errors
    answers = state.result()
    assert answers == store.ref(1, "student_answers") and answers.rows == 6

    (child_id,) = set(seen)  # one flow run, seen twice: crashed, then scheduled again
    assert len(seen) == 2
    parent_id = state.state_details.flow_run_id
    # the parent's own logs (the session's API server holds every earlier test's logs too)
    only_parent = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[parent_id]))
    with get_client(sync_client=True) as client:
        child = client.read_flow_run(child_id)
        history = [s.type.value for s in client.read_flow_run_states(child_id)]
        APILogWorker.drain_all(timeout=10)
        logs = client.read_logs(log_filter=only_parent, limit=200)
    assert child.state.is_completed() and child.parameters["stage"] == "student-answers"
    assert "CRASHED" in history and history[-1] == "COMPLETED"
    mine = [log.message for log in logs]
    assert any(str(child_id) in m and "runs on the GPU pool" in m for m in mine), mine
    assert any("scheduling it again" in m for m in mine), mine


def test_a_missing_gpu_deployment_is_named(prefect_harness, tmp_path):
    from prefect import flow

    from tasks.student import student_answers

    cfg = small_config(tmp_path / "run", **{"placement.gpu_deployment": "lion-gpu-stage/nowhere"})
    ref = ArtifactRef(uri="x", path="x", name="cache_pool", round=1, rows=1, sha256="0")

    @flow(name="placement-missing")
    def parent() -> ArtifactRef:
        return student_answers.with_options(retries=0)(cfg, 1, ref, "student")

    with pytest.raises(GpuStageError, match="no deployment 'lion-gpu-stage/nowhere'"):
        parent()
