"""Prefect's temporary server for the `lion` CLI, tied to the CLI's life.

With no PREFECT_API_URL, Prefect starts a temporary API server (`SubprocessASGIServer`, a
uvicorn child of about 300 MB) the first time anything needs a client, and stops it only in an
`atexit` handler — which a killed CLI (`kill -9`, the OOM killer) never runs, so the server
would live on forever. `start_ephemeral_server` starts that same server first, from the main
thread, as a child that gets SIGTERM when the CLI dies (PR_SET_PDEATHSIG, Linux; the signal
follows the thread that started the child, hence the main thread). Prefect's own code then finds
it running and uses it.
"""

from __future__ import annotations

import functools
import subprocess
import threading
import types
from typing import Any

from prefect.server.api import server as prefect_server
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

from lion_core.ops.supervise import _die_with_parent


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


def start_ephemeral_server() -> str | None:
    """Start Prefect's temporary server now, dying with this process, if Prefect would use
    one (no PREFECT_API_URL, ephemeral mode allowed); its API URL, or None."""
    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return None
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("start the temporary Prefect server from the main thread")
    # Registered as the default instance: every `SubprocessASGIServer()` returns it from now on
    # (unless one was already made, which is then used as it is).
    server = DyingServer()
    server.start()
    return server.api_url
