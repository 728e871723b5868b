"""Shared fixtures: a real S3 API on loopback (moto server), the shared reference data, the
offline world, the trained echo student, Prefect's test harness and the deployment stack.
Plain helpers (configs, rows, frames) are in tests/helpers.py."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest
from helpers import EchoStudent, chromium, train_echo_student

from benchmarks.reference_data import DATA_DIR
from lion_core.ops.supervise import CPU_WORKERS_ENV, cpu_thread_env

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A private PREFECT_HOME for the whole session: never the user's ~/.prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="lion-prefect-home-")
# moto accepts any credentials; set fake ones so botocore never looks elsewhere.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# make test runs test files in PYTEST_XDIST_WORKER_COUNT processes side by side: each process,
# and every trainer, generation worker and server it starts, gets its share of the cores, with
# idle OpenMP threads asleep, not spinning on cores the other worker needs
# (benchmarks/cpu_oversubscription.py). Set here, before anything imports torch.
os.environ.setdefault(CPU_WORKERS_ENV, os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
cpu_thread_env(1, os.environ)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on a free loopback port, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_root(s3_endpoint):
    """A fresh bucket; yields (root URI, storage options)."""
    import boto3

    bucket = f"lion-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/runs/test", {"endpoint_url": s3_endpoint}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real instruction data); tests that need it skip when it is absent."""
    if not DATA_DIR.is_dir():  # benchmarks/reference_data.py: ../shared/data or LION_SHARED_DATA
        pytest.skip(f"reference data folder {DATA_DIR} is absent")
    return DATA_DIR


# ---- the offline world ------------------------------------------------------------------------


@pytest.fixture
def offline_server():
    """Start in-process offline worlds (real HTTP on loopback), stopped after the test:
    `srv = offline_server(latency=0.01, faults={"rate_500": 0.2})`; then `srv.base_url`,
    `srv.stats()`, `srv.reset_stats()`, `srv.stop()`."""
    from lion_core.config import OfflineWorldConfig
    from lion_core.offline.server import OfflineServer

    started = []

    def start(cfg=None, **fields):
        server = OfflineServer(cfg or OfflineWorldConfig.model_validate(fields)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def offline_process(tmp_path):
    """Start `lion serve-offline --port 0` as a subprocess: `base_url = offline_process({...})`
    with an optional `offline` config section; the process is terminated after the test."""
    import re
    import subprocess
    import sys

    import yaml

    procs = []

    def start(offline: dict | None = None) -> str:
        cmd = [str(Path(sys.executable).parent / "lion"), "serve-offline", "--port", "0"]
        if offline is not None:
            cfg = tmp_path / f"offline-{len(procs)}.yaml"
            cfg.write_text(yaml.safe_dump({"offline": offline}))
            cmd += ["-c", str(cfg)]
        err = tmp_path / f"serve-offline-{len(procs)}.err"
        with err.open("w") as err_fh:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_fh, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        match = re.search(r"(http://\S+/v1)", line)
        if not match:
            proc.kill()
            raise RuntimeError(f"lion serve-offline did not start: {line!r} {err.read_text()}")
        return match.group(1)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---- the student ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def echo_student(tmp_path_factory) -> EchoStudent:
    """ONE tiny student trained on echo tasks for the whole session (helpers.echo_tasks): the
    first pytest-xdist worker that asks trains it, under a file lock in the folder the workers
    share; the others find it complete."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp is under a common one
        shared = shared.parent
    root = shared / "echo-student"
    with FileLock(str(shared / "echo-student.lock")):
        return train_echo_student(root)


# ---- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """One Chromium for a test file (`helpers.chromium`)."""
    with chromium() as opened:
        yield opened


# ---- Prefect ---------------------------------------------------------------------------------


# Seconds the harness's teardown waits for Prefect's log and event workers to drain. Prefect
# 3.8 waits without a bound, and now and then a drain never completes (the worker thread idle on
# an empty queue): a test process then sat 270 s, or until pytest's timeout, at its end.
HARNESS_DRAIN_SECONDS = 20.0


def _bounded_drains(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect's service drains (`APILogWorker.drain`, `EventsWorker.drain_all`) with a bound."""
    import asyncio
    import concurrent.futures

    from prefect._internal.concurrency.event_loop import get_running_loop
    from prefect._internal.concurrency.services import _QueueServiceBase
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    def drain(self, at_exit: bool = False):
        future = self._drain(at_exit=at_exit)
        if get_running_loop() is not None:
            return asyncio.wait([asyncio.wrap_future(future)], timeout=HARNESS_DRAIN_SECONDS)
        return concurrent.futures.wait([future], timeout=HARNESS_DRAIN_SECONDS)

    drain_all = _QueueServiceBase.drain_all.__func__

    def bounded_all(cls, timeout: float | None = None, at_exit: bool = True):
        return drain_all(cls, HARNESS_DRAIN_SECONDS if timeout is None else timeout, at_exit)

    monkeypatch.setattr(APILogWorker, "drain", drain)
    monkeypatch.setattr(EventsWorker, "drain_all", classmethod(bounded_all))


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness: a real API server on a temporary SQLite database, one per test
    process (a second harness in the same process hung in its teardown), given time to start
    on a busy machine; its teardown's drains are bounded (HARNESS_DRAIN_SECONDS)."""
    from prefect.testing.utilities import prefect_test_harness

    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        prefect_test_harness(server_startup_timeout=300),
    ):
        yield
        # Only for the harness's own teardown: bounded during the session, the drains
        # Prefect's engine does left its events worker failing to send task-run events.
        _bounded_drains(monkeypatch)


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory):
    """The local end-to-end deployment path on loopback, built once per test file: a real
    `prefect server start` (SQLite, UI on), the `lion-gpu` process pool, the gpu-box deployments
    of deployments/prefect.yaml and a process worker (tests/prefect_services.py). Every process
    is killed when the file's last test is done, not left polling the database on the cores
    the rest of the session needs; a file sees only its own runs."""
    from prefect_services import deployment_stack

    with deployment_stack(tmp_path_factory.mktemp("prefect-stack")) as stack:
        yield stack


# ---- scheduling --------------------------------------------------------------------------------

# make test spreads test files over 2 workers (pytest-xdist --dist loadfile), handing out files
# in collection order. The files that take longest go first, so that what is left at the end
# is short files on both workers, not one worker alone on a 7-minute file. Seconds: each file
# alone on the shared 2-core machine (load 3-5) when this list was written; test_novelty and
# test_infra were not measured alone (minutes under load). The rest follow in their order.
LONGEST_FIRST = (
    "test_deploy_e2e.py",  # 514 s
    "test_readme.py",  # 439 s, one test: the last file xdist would otherwise hand out
    "test_ui_browser.py",  # 260 s alone (its own CI step until it joined the suite)
    "test_student_train.py",  # 367 s
    "test_novelty.py",
    "test_cli.py",  # 277 s
    "test_evaluation_flow.py",  # 232 s
    "test_infra.py",
    "test_secrets.py",  # 196 s
    "test_student_serve.py",  # 195 s
    "test_failed_requests.py",  # 168 s
    "test_ablation.py",  # 164 s
    "test_round_flow.py",  # 137 s
)


def pytest_configure(config):
    # xdist otherwise orders the files by their number of tests, which puts long files with
    # few tests (the README tour) last.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable for the rest
