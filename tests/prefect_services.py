"""Real Prefect services for tests, as subprocesses on loopback: `prefect server start` on SQLite
(API and, optionally, the UI), work pools from the project's templates, `prefect deploy` from
deployments/prefect.yaml, and process workers. Every process is started in its own session and
killed with its process group when its context manager exits, with bounded waits.

Used by tests/test_infra.py, tests/test_deploy_e2e.py, tests/test_secrets.py and
tests/test_ui_browser.py (through the fixtures in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
PREFECT_YAML = REPO / "deployments/prefect.yaml"
POOL_TEMPLATES = {
    "process": REPO / "infra/work-pools/process.json",
    "kubernetes": REPO / "infra/work-pools/kubernetes.json",
}
POOL_NAMES = {"process": "lion-gpu", "kubernetes": "lion-k8s"}
# The CPU pools of the split (docs/deploy.md): the same templates under other names.
CPU_POOL_NAMES = {"process": "lion-cpu", "kubernetes": "lion-k8s-cpu"}
INSTALL_HINT = "install the dev extras: .venv/bin/pip install -e '.[dev]'"

T = TypeVar("T")


def tool(name: str) -> str:
    """Path of an executable (from the venv running the tests, else PATH); fails if missing."""
    candidate = Path(sys.executable).parent / name
    path = str(candidate) if candidate.exists() else shutil.which(name)
    if not path:
        pytest.fail(f"{name!r} is not installed: {INSTALL_HINT}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without any PREFECT_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.update(extra)
    return env


# ---- processes ------------------------------------------------------------------------------


@contextlib.contextmanager
def process(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
) -> Iterator[subprocess.Popen]:
    """Run `cmd` with stdout and stderr in `log`; on exit, SIGTERM its process group, then
    SIGKILL after 5 s (the flow-run processes a worker started are in that group too)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            stop_group(proc)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_group(proc: subprocess.Popen, timeout: float = 5) -> None:
    """SIGTERM the process group of `proc`, SIGKILL it after `timeout`; then SIGKILL any
    descendant that left the group (a flow run started in a session of its own). A test's
    servers and workers need no graceful end: a worker that had run flows took the whole
    20 s the bound once was, at the end of every file with a deployment stack."""
    family = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in family + _descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def wait_for_url(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{url} did not come up:\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.3)


# ---- server ---------------------------------------------------------------------------------


@dataclass
class PrefectServer:
    """A running `prefect server start`: `env` is a CLI/worker environment pointing at it."""

    home: Path
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return self.home / "prefect.db"


def migrated_database(dest: Path) -> Path:
    """A copy, at `dest`, of a Prefect database with every migration applied: made once per
    machine and Prefect version (`prefect server database upgrade`, under a file lock shared
    by the test workers), then copied. A server on a fresh SQLite file spends about half its
    start-up (~9 of ~20 s of CPU here) migrating it; on the copy, Prefect's own start-up
    check finds nothing to do."""
    import fcntl
    import sqlite3

    from prefect import __version__

    template = Path(os.environ.get("TMPDIR", "/tmp")) / f"lion-tests-prefect-{__version__}.db"
    with open(f"{template}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            partial = template.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            env = base_env(PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{partial}")
            subprocess.run(
                [tool("prefect"), "server", "database", "upgrade", "-y"],
                env=env, check=True, capture_output=True, timeout=600,
            )  # fmt: skip
            with contextlib.closing(sqlite3.connect(partial)) as db:  # one file, no WAL
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                db.execute("PRAGMA journal_mode=DELETE")
            partial.replace(template)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, dest)
    return dest


@contextlib.contextmanager
def prefect_server(home: Path, *, ui: bool = False) -> Iterator[PrefectServer]:
    """`prefect server start` on SQLite in `home`, on a free loopback port, analytics off. SQLite
    waits up to 60 s for a locked database (Prefect's default, 10 s, answered a form submitted
    while two test workers loaded the machine with "database is locked"); Prefect already
    writes through a write-ahead log."""
    home.mkdir(parents=True, exist_ok=True)
    server = PrefectServer(home=home, port=free_port(), log=home / "server.log")
    migrated_database(server.database)
    env = base_env(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{server.database}",
        PREFECT_SERVER_DATABASE_TIMEOUT="60",
        PREFECT_UI_ENABLED="true" if ui else "false",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(server.port),
        PREFECT_UI_API_URL=server.api_url,
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    cmd = [tool("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(server.port)]
    with process(cmd, env, server.log) as proc:
        wait_for_url(f"{server.api_url}/health", proc, server.log)
        if ui:
            wait_for_url(server.ui_url + "/", proc, server.log)
        server.env = base_env(
            PREFECT_HOME=str(home),
            PREFECT_API_URL=server.api_url,
            PREFECT_LOGGING_LEVEL="WARNING",
        )
        yield server


def prefect(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the `prefect` CLI (never prompting) from the repository root."""
    return subprocess.run(
        [tool("prefect"), "--no-prompt", *args],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def prefect_ok(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    proc = prefect(env, *args, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def create_pool(env: dict[str, str], kind: str, name: str | None = None) -> str:
    """The documented `prefect work-pool create` of POOL_NAMES[kind] (or `name`) from the
    template of `kind`."""
    name = name or POOL_NAMES[kind]
    template = str(POOL_TEMPLATES[kind].relative_to(REPO))
    prefect_ok(env, "work-pool", "create", name, "--type", kind, "--base-job-template", template)
    return name


def deploy(
    env: dict[str, str], *names: str, params: dict[str, Any] | None = None, **extra_env: str
) -> None:
    """`prefect deploy` of the named deployments (all when none) from deployments/prefect.yaml;
    `params` replaces their parameters (`--params`), as an operator's own defaults would."""
    which = [a for n in names for a in ("-n", n)] or ["--all"]
    args = ["deploy", *which, "--prefect-file", str(PREFECT_YAML.relative_to(REPO))]
    if params is not None:
        args += ["--params", json.dumps(params)]
    prefect_ok(dict(env, **extra_env), *args)


@contextlib.contextmanager
def worker(
    env: dict[str, str], pool: str, home: Path, **extra_env: str
) -> Iterator[subprocess.Popen]:
    """`prefect worker start --pool <pool>` with its own PREFECT_HOME and TMPDIR under `home`
    (so everything it and its flow runs write locally can be inspected), polling every second.
    Its output and its flow runs' output go to `home/worker.log`."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    wenv = dict(
        env,
        PREFECT_HOME=str(home / "prefect-home"),
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_HEARTBEAT_SECONDS="5",
        TMPDIR=str(home / "tmp"),
        HF_HOME=str(home / "hf"),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        **extra_env,
    )
    cmd = [tool("prefect"), "worker", "start", "--pool", pool, "--name", f"test-{pool}"]
    with process(cmd, wenv, home / "worker.log") as proc:
        yield proc


# ---- the whole stack: server, pool, deployments, worker ------------------------------------

# Recognisable fake secrets, fresh per test session: the worker's environment holds them (as an
# operator's would), and tests/test_secrets.py searches everything written for them.
API_KEY_ENV = "LION_TEST_API_KEY"
FAKE_API_KEY = "sk-lion-env-" + secrets.token_hex(12)
FAKE_AWS_SECRET = "lion-aws-secret-" + secrets.token_hex(12)
GPU_BOX = ("lion-run/gpu-box", "lion-distill/gpu-box", "lion-round/gpu-box")
SPLIT = ("lion-distill/cpu-pool", "lion-gpu-stage/gpu-pool")


def worker_env() -> dict[str, str]:
    """What an operator puts in a worker's environment: LION_HOME, S3 credentials, an API key."""
    return {
        "LION_HOME": str(REPO),
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": FAKE_AWS_SECRET,
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        API_KEY_ENV: FAKE_API_KEY,
    }


@dataclass
class Stack:
    """A Prefect server with the process pool, the gpu-box deployments and one worker."""

    server: PrefectServer
    worker_home: Path

    @property
    def env(self) -> dict[str, str]:
        return self.server.env

    @property
    def worker_log(self) -> Path:
        return self.worker_home / "worker.log"

    @property
    def worker_storage(self) -> Path:
        """The worker's local result folder (PREFECT_LOCAL_STORAGE_PATH's default)."""
        return self.worker_home / "prefect-home" / "storage"


@contextlib.contextmanager
def deployment_stack(root: Path) -> Iterator[Stack]:
    """The local end-to-end path of docs/deploy.md: `prefect server start` (SQLite, UI on), the
    `lion-gpu` pool created from its template, `prefect deploy` of the gpu-box deployments with
    LION_HOME set to this checkout, and `prefect worker start --pool lion-gpu` with S3
    credentials and an API key in its environment."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    with prefect_server(root / "server", ui=True) as server:
        pool = create_pool(server.env, "process")
        deploy(server.env, *GPU_BOX, LION_HOME=str(REPO))
        stack = Stack(server=server, worker_home=root / "worker")
        with worker(server.env, pool, stack.worker_home, **worker_env()):
            yield stack


@contextlib.contextmanager
def split_stack(stack: Stack, home: Path) -> Iterator[Path]:
    """The split of docs/deploy.md on `stack`: the `lion-cpu` process pool from the same
    template, `prefect deploy` of lion-distill/cpu-pool (on it) and lion-gpu-stage/gpu-pool (on
    the stack's `lion-gpu` pool, whose worker runs the GPU stages), and a worker on `lion-cpu`
    with the same environment. Yields the CPU worker's log."""
    pool = create_pool(stack.env, "process", CPU_POOL_NAMES["process"])
    deploy(stack.env, *SPLIT, LION_HOME=str(REPO))
    with worker(stack.env, pool, home, **worker_env()):
        yield home / "worker.log"


# ---- the API --------------------------------------------------------------------------------


@contextlib.contextmanager
def settings(env: dict[str, str]) -> Iterator[None]:
    """This process's Prefect client settings pointed at the server of `env`."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED
    from prefect.settings.context import temporary_settings

    updates = {PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_SERVER_ANALYTICS_ENABLED: False}
    with temporary_settings(updates=updates):
        yield


def api(env: dict[str, str], fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run `fn(client)` against the server of `env` (in a thread of its own when this one
    already runs an event loop, as under Playwright's sync API)."""
    from prefect.client.orchestration import get_client

    async def main():
        async with get_client() as client:
            return await fn(client)

    def call() -> T:
        with settings(env):
            return asyncio.run(main())

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return call()
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def run_deployment(env: dict[str, str], name: str, **kwargs: Any):
    """Create a flow run of deployment `name` ("flow/deployment") the way the UI's *Run* button
    does (POST /deployments/{id}/create_flow_run, scheduled now); returns the FlowRun at once."""
    from prefect.deployments import run_deployment as _run

    with settings(env):
        return _run(name, timeout=0, **kwargs)


def wait_for_run(env: dict[str, str], run_id: Any, timeout: float = 240, log: Path | None = None):
    """Poll flow run `run_id` until it is final; on timeout cancel it (so a deployment's
    concurrency slot is freed for the next test) and fail with the worker's log tail."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    deadline = time.monotonic() + timeout
    while True:
        run = api(env, lambda c: c.read_flow_run(run_id))
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > deadline:
            if run.state is None or run.state.type != StateType.CANCELLED:
                api(env, lambda c: c.set_flow_run_state(run_id, Cancelled(), force=True))
            tail = log.read_text(errors="replace")[-6000:] if log else ""
            pytest.fail(f"flow run {run.name} still {run.state_name} after {timeout} s\n{tail}")
        time.sleep(1)


def task_runs(env: dict[str, str], flow_run_ids: list[Any]) -> list[Any]:
    """Every task run of the given flow runs."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read(client):
        return await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids)))
        )

    return api(env, read)


def subflow_runs(env: dict[str, str], parent_id: Any) -> list[Any]:
    """The subflow runs (e.g. `lion-round`) started by flow run `parent_id`."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async def read(client):
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
            )
        )

    return api(env, read)


def flow_run_logs(env: dict[str, str], flow_run_ids: list[Any]) -> list[Any]:
    """Every log line of the given flow runs (and their tasks), page by page."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(flow_run_ids)))

    async def read(client):
        out: list[Any] = []
        while True:
            page = await client.read_logs(log_filter=log_filter, limit=200, offset=len(out))
            out += page
            if len(page) < 200:
                return out

    return api(env, read)


def paged(env: dict[str, str], method: str, **kwargs: Any) -> list[Any]:
    """All results of a client `read_*` method that takes limit/offset (flow runs, artifacts)."""

    async def read(client):
        out: list[Any] = []
        while True:
            page = await getattr(client, method)(limit=200, offset=len(out), **kwargs)
            out += page
            if len(page) < 200:
                return out

    return api(env, read)
