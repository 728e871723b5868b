"""The local end-to-end deployment path (issue 5, sections 3 and 4), on real services on loopback:
`prefect server start` on SQLite, the `lion-gpu` process pool from its template, the gpu-box
deployments from deployments/prefect.yaml, a `prefect worker` subprocess, a moto S3 server, and
the offline task world. Runs are created the way the UI's *Run* button creates them, and a
failed run is retried the way its *Retry* button (and `prefect flow-run retry`) does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import s3fs
from helpers import small_config
from prefect_services import (
    API_KEY_ENV,
    CPU_POOL_NAMES,
    POOL_NAMES,
    api,
    flow_run_logs,
    free_port,
    paged,
    prefect,
    prefect_ok,
    process,
    run_deployment,
    split_stack,
    subflow_runs,
    task_runs,
    wait_for_run,
    wait_for_url,
)
from test_round_flow import task_name

from lion_core.run.store import RunStore

pytestmark = pytest.mark.slow

# The tasks a round must redo after a failure in generation; everything before is Cached.
GENERATION_TASKS = {"candidates", "novel-instructions", "next-round-pools"}


def _params(root: str, options: dict, **overrides) -> dict:
    """A small round's config as a run form would send it: only the fields that differ from
    LionConfig's defaults."""
    cfg = small_config(root, **{"storage.options": options}, **overrides)
    return cfg.model_dump(mode="json", exclude_defaults=True)


def _task_states(stack, flow_run_id) -> dict[str, list[str]]:
    """Task name (whatever its runs are called) -> the states of its runs in one flow run."""
    states: dict[str, list[str]] = {}
    for r in task_runs(stack.env, [flow_run_id]):
        states.setdefault(task_name(r), []).append(r.state.name)
    return {name: sorted(s) for name, s in states.items()}


def _local_results(stack) -> list[Path]:
    return sorted(p for p in stack.worker_storage.rglob("*") if p.is_file())


def test_run_button_path_completes_on_the_worker_with_pools_in_s3(prefect_stack, s3_root):
    """Deployment `lion-distill/gpu-box`, run with changed parameters through the API the UI
    uses, completes on the worker; pools and task results are in the run's S3 root."""
    stack = prefect_stack
    root, options = s3_root
    params = {"config": _params(root, options, name="e2e-run-button")}
    params["config"]["teacher"] = {"api_key_env": API_KEY_ENV}  # the worker has the key

    run = run_deployment(stack.env, "lion-distill/gpu-box", parameters=params)
    assert run.state.is_scheduled()
    local_before = _local_results(stack)
    run = wait_for_run(stack.env, run.id, timeout=300, log=stack.worker_log)
    assert run.state.is_completed(), f"{run.state_name}: {run.state.message}"

    # It ran on the worker of the process pool, with exactly the parameters sent.
    assert run.work_pool_name == POOL_NAMES["process"]
    assert run.infrastructure_pid, "the worker records the flow-run process"
    assert run.parameters == params
    (round_run,) = subflow_runs(stack.env, run.id)
    assert round_run.state.is_completed()
    assert round_run.parameters["round"] == 1

    # The pools, read back from the moto bucket with pandas through s3fs.
    def read(name: str, k: int) -> pd.DataFrame:
        return pd.read_parquet(f"{root}/round={k}/{name}.parquet", storage_options=options)

    assert len(read("train_pool", 1)) == 24 and len(read("cache_pool", 1)) == 24
    assert (read("teacher_answers", 1)["status"] == "ok").all()
    assert len(read("referee", 1)) == 24
    assert len(read("hard", 1)) + len(read("easy", 1)) <= 24
    new = read("cache_pool", 2)
    assert 0 < len(new) <= 12
    assert len(read("train_pool", 2)) == 24 + len(new)
    run_info = json.loads(s3fs.S3FileSystem(**options).cat(f"{root}/run.json"))
    assert run_info["config"]["name"] == "e2e-run-button"

    # Every task result, and the round's result, is a record in the run root's prefect-results
    # in S3, written through the RemoteResults block the flow saved; the worker's local
    # folder got only the top-level flow's own return value.
    results = f"{root}/prefect-results"
    fs = s3fs.S3FileSystem(**options)
    stored = {Path(p).name for p in fs.ls(results)}
    tasks = task_runs(stack.env, [round_run.id])
    assert len(tasks) >= 14 and all(t.state.is_completed() for t in tasks)
    for t in [*tasks, round_run]:
        record = t.state.data
        assert record.storage_key in stored, (t.name, record)
        block = api(stack.env, lambda c, r=record: c.read_block_document(r.storage_block_id))
        assert block.data["basepath"] == results, block.data
        assert set(block.data["settings"]) == {"endpoint_url"}  # no credentials in the block
    new_local = [p for p in _local_results(stack) if p not in local_before]
    assert len(new_local) <= 1, new_local  # lion-distill's own return value
    for path in new_local:
        assert path.name not in stored


class LoopbackGenerator:
    """`lion serve-offline` on a fixed loopback port that a test starts and stops: the
    generator endpoint going down and coming back at the same address."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._running: contextlib.ExitStack | None = None

    def start(self, offline: dict | None = None) -> None:
        """Serve; `offline` is an `offline` config section (e.g. faults) for this start only."""
        cmd = [str(Path(sys.executable).parent / "lion"), "serve-offline"]
        if offline is not None:
            config = self.log.with_suffix(".yaml")
            config.write_text(json.dumps({"offline": offline}))  # JSON is YAML
            cmd += ["-c", str(config)]
        self._running = contextlib.ExitStack()
        proc = self._running.enter_context(
            process([*cmd, "--port", str(self.port)], dict(os.environ), self.log)
        )
        wait_for_url(f"http://127.0.0.1:{self.port}/stats", proc, self.log, timeout=60)

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as r:
            return json.load(r)

    def stop(self) -> None:
        if self._running is not None:
            self._running.close()
            self._running = None


@pytest.fixture
def generator(tmp_path):
    gen = LoopbackGenerator(tmp_path / "serve-offline.log")
    yield gen
    gen.stop()


def _wait_for_round(stack, run_id, k: int, timeout: float = 240):
    """Poll until the `lion-round` subflow of round k under flow run `run_id` has completed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sub in subflow_runs(stack.env, run_id):
            if sub.parameters.get("round") == k and sub.state and sub.state.is_completed():
                return sub
        time.sleep(0.5)
    pytest.fail(f"round {k} of {run_id} did not complete in {timeout} s")


def test_retry_cli_refuses_a_run_that_is_not_finished(prefect_stack):
    """Only a finished run can be retried: a scheduled one is refused with a clear message."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    stack = prefect_stack
    later = {"config": {"name": "not-yet"}, "round": 1}
    when = datetime.now(UTC) + timedelta(days=1)
    run = run_deployment(stack.env, "lion-round/gpu-box", parameters=later, scheduled_time=when)
    try:
        proc = prefect(stack.env, "flow-run", "retry", str(run.id))
        assert proc.returncode != 0
        assert "cannot be retried" in proc.stdout + proc.stderr
    finally:
        api(stack.env, lambda c: c.set_flow_run_state(run.id, Cancelled(), force=True))
    state = api(stack.env, lambda c: c.read_flow_run(run.id)).state
    assert state.type == StateType.CANCELLED


def _flow_runs_of(stack, deployment: str) -> list:
    """Every flow run of deployment `deployment` ("flow/deployment")."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    dep = api(stack.env, lambda c: c.read_deployment_by_name(deployment))
    return paged(
        stack.env,
        "read_flow_runs",
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
    )


def test_split_run_retried_on_a_fresh_worker_repeats_nothing(
    prefect_stack, s3_root, offline_server, generator, tmp_path
):
    """The split of docs/deploy.md with two process pools, a worker each: `lion-distill/cpu-pool`
    runs two rounds on the `lion-cpu` pool; training the student and its answers to the Cache
    Pool run as flow runs of `lion-gpu-stage/gpu-pool` on the `lion-gpu` pool, linked from the
    parent's logs. The generator goes down once round 1 is done, so round 2 fails in generation,
    after its GPU stages. The CPU worker's local folder is wiped (a retry on Kubernetes starts a
    fresh pod), the generator comes back, and the UI's Retry (`prefect flow-run retry`) finishes
    the run: round 1 is not run again (its result is read from the run's S3 storage), round 2
    repeats no finished task and trains nothing again (the GPU deployment has exactly one run
    per stage and round), and no request is sent twice. (One test for what were two, a retried
    multi-round run and the split: each ran two rounds and a retry, minutes of CI.)"""
    stack = prefect_stack
    root, options = s3_root
    world = offline_server(judge_noise=0.0)
    config = _params(
        root,
        options,
        name="e2e-split",
        rounds=2,
        **{"teacher.base_url": world.base_url, "referee.base_url": world.base_url},
        **{"generator.base_url": generator.base_url, "generator.retries": 0},
        **{"evaluation.sets": [], "placement.gpu_deployment": "lion-gpu-stage/gpu-pool"},
        **{"placement.poll_seconds": 1, "training.max_steps": 4},  # one checkpoint, less time
    )
    generator.start()
    cpu_home = tmp_path / "cpu-worker"
    with split_stack(stack, cpu_home) as cpu_log:
        run = run_deployment(stack.env, "lion-distill/cpu-pool", parameters={"config": config})
        round_1 = _wait_for_round(stack, run.id, 1)
        gen_round_1 = generator.stats()["generator"]
        generator.stop()
        run = wait_for_run(stack.env, run.id, timeout=300, log=cpu_log)
        assert run.state.is_failed(), f"{run.state_name}: {run.state.message}"
        store = RunStore.open(root, options)
        assert store.exists(2, "referee") and not store.exists(2, "generated")
        (failed,) = [s for s in subflow_runs(stack.env, run.id) if s.parameters["round"] == 2]
        assert failed.state.is_failed()
        states = _task_states(stack, failed.id)
        assert states["student"] == ["Completed"] and states["student-answers"] == ["Completed"]
        assert "Failed" in states["candidates"]  # generation, after the GPU stages
        gpu_before = _flow_runs_of(stack, "lion-gpu-stage/gpu-pool")
        assert sorted(
            (r.parameters["stage"], r.parameters["inputs"]["round"]) for r in gpu_before
        ) == [
            ("student", 1),
            ("student", 2),
            ("student-answers", 1),
            ("student-answers", 2),
        ]
        before = world.stats()

        # A fresh pod: nothing the CPU worker or its flow runs wrote locally survives.
        shutil.rmtree(cpu_home / "prefect-home" / "storage", ignore_errors=True)
        generator.start()
        out = prefect_ok(stack.env, "flow-run", "retry", str(run.id))
        assert "scheduled for retry" in out, out
        run = wait_for_run(stack.env, run.id, timeout=400, log=cpu_log)
        assert run.state.is_completed(), f"{run.state_name}: {run.state.message}"
        assert run.run_count == 2

    # The parent ran on the CPU pool; every GPU stage on the GPU pool, once per stage and round:
    # the retry started none.
    assert run.work_pool_name == CPU_POOL_NAMES["process"]
    gpu = _flow_runs_of(stack, "lion-gpu-stage/gpu-pool")
    assert {r.id for r in gpu} == {r.id for r in gpu_before}
    for r in gpu:
        assert r.state.is_completed() and r.run_count == 1, (r.name, r.state_name, r.run_count)
        assert r.work_pool_name == POOL_NAMES["process"]
        assert r.parameters["lease_owner"] == str(run.id)
        # The work itself happened there: its task ran (not a cache hit).
        assert _task_states(stack, r.id) == {r.parameters["stage"]: ["Completed"]}

    # Round 1 was not run again; round 2 again repeated only generation, its GPU tasks found
    # Cached (the links to the GPU runs, not started again).
    subs = subflow_runs(stack.env, run.id)
    assert [s.id for s in subs if s.parameters["round"] == 1] == [round_1.id]
    assert api(stack.env, lambda c: c.read_flow_run(round_1.id)).run_count == 1
    (again,) = [s for s in subs if s.parameters["round"] == 2 and s.id != failed.id]
    assert again.state.is_completed()
    states = _task_states(stack, again.id)
    cached = {name for name, runs in states.items() if set(runs) == {"Cached"}}
    assert set(states) - cached <= GENERATION_TASKS, states
    assert {"teacher-answers", "student", "student-answers", "referee-reviews"} <= cached
    children = {c.id for s in (round_1, failed) for c in subflow_runs(stack.env, s.id)}
    assert children == {r.id for r in gpu}
    logs = " ".join(line.message for line in flow_run_logs(stack.env, [round_1.id, failed.id]))
    for r in gpu:
        assert str(r.id) in logs, f"the parent's logs do not link to {r.name}"

    # No request was answered twice, across the failure, the fresh worker and the split.
    after = world.stats()
    for role in ("teacher", "referee"):
        assert after[role] == before[role], (role, before[role], after[role])
        assert after[role]["requests"] > 0 and after[role]["answered_twice"] == 0, after[role]
    for gen in (gen_round_1, generator.stats()["generator"]):
        assert gen["requests"] > 0 and gen["answered_twice"] == 0, gen
        assert gen["requests"] == gen["distinct_bodies"], gen
    assert store.exists(3, "train_pool") and store.exists(2, "student_answers")
