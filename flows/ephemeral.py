"""Prefect's temporary server for the `lion` CLI, tied to the CLI's life.

With no PREFECT_API_URL, Prefect starts a temporary API server (`SubprocessASGIServer`, a
uvicorn child of about 300 MB) the first time anything needs a client, and stops it only in an
`atexit` handler — which a killed CLI (`kill -9`, the OOM killer) never runs, so the server
would live on forever. `start_ephemeral_server` starts that same server first, from the main
thread, as a child that gets SIGTERM when the CLI dies (PR_SET_PDEATHSIG, Linux; the signal
follows the thread that started the child, hence the main thread). Prefect's own code then finds
it running and uses it.

Under load (two runs started at once on a fresh Prefect home both migrate its SQLite database;
a busy 2-core machine) Prefect's 20 s start-up wait and its 10 s SQLite statement timeout were
seen to fail: the server gets at least `STARTUP_TIMEOUT` seconds, one more try on a fresh port if
that is not enough, and a SQLite timeout of `DATABASE_TIMEOUT` seconds unless the user set
PREFECT_SERVER_DATABASE_TIMEOUT (Prefect already runs SQLite in WAL mode with a 60 s busy
timeout).
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import threading
import types
from typing import Any

from prefect.server.api import server as prefect_server
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_ALLOW_EPHEMERAL_MODE,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
)

from lion_core.ops.supervise import _die_with_parent

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 60  # seconds; Prefect's default is 20
DATABASE_TIMEOUT = "60"  # seconds; Prefect's default is 10


class _SubprocessDyingWithParent(types.ModuleType):
    """The `subprocess` module, except that Popen's children die with this process and run in
    a session of their own: a SIGTERM sent to the CLI's whole process group (`timeout`, a
    container's stop) must not kill the server the CLI still needs to report the run's end."""

    def __init__(self) -> None:
        super().__init__("subprocess")

    def __getattr__(self, name: str) -> Any:
        if name == "Popen":
            return functools.partial(
                subprocess.Popen, preexec_fn=_die_with_parent, start_new_session=True
            )
        return getattr(subprocess, name)


class DyingServer(prefect_server.SubprocessASGIServer):
    """Prefect's temporary server, its uvicorn process started with PR_SET_PDEATHSIG."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        saved = prefect_server.subprocess
        prefect_server.subprocess = _SubprocessDyingWithParent()
        try:
            return super()._run_uvicorn_command()
        finally:
            prefect_server.subprocess = saved


def start_ephemeral_server(timeouts: tuple[float, ...] | None = None) -> str | None:
    """Start Prefect's temporary server now, dying with this process, if Prefect would use
    one (no PREFECT_API_URL, ephemeral mode allowed); its API URL, or None. `timeouts`: the
    seconds each try may take to answer /health (default: two tries of at least
    STARTUP_TIMEOUT); a try that times out is stopped and the next starts on a fresh port."""
    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return None
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("start the temporary Prefect server from the main thread")
    os.environ.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", DATABASE_TIMEOUT)  # the child's
    if timeouts is None:
        wait = max(STARTUP_TIMEOUT, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        timeouts = (wait, wait)
    # Registered as the default instance: every `SubprocessASGIServer()` returns it from now on
    # (unless one was already made, which is then used as it is).
    server = DyingServer()
    for attempt, timeout in enumerate(timeouts, 1):
        try:
            server.start(timeout=timeout)  # type: ignore[arg-type]
        except RuntimeError as exc:
            if "Timed out" not in str(exc) or attempt == len(timeouts):
                raise
            log.warning(
                "Prefect's temporary server did not answer within %s s (try %d of %d); "
                "starting it again on another port",
                timeout, attempt, len(timeouts),
            )  # fmt: skip
            _kill(server)
        else:
            break
    return server.api_url


def _kill(server: DyingServer) -> None:
    """End a try that timed out (Prefect leaves its process running) and pick a fresh port;
    the instance stays registered as the default, unlike `stop()` would leave it."""
    process, server.server_process = server.server_process, None
    if process is not None:
        process.kill()
        process.wait()
    server.running = False
    server.port = server.find_available_port()
