"""The local HTTP servers' shared plumbing (the offline world, `lion serve-student`): a TCP
socket bound before serving (port 0 picks a free one, known before the first request), its base
URL, and a quiet uvicorn server over it."""

from __future__ import annotations

import socket

import uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), inheritable by a child process. It listens
    before the server runs: a client that connects as soon as the address is announced waits in
    the backlog instead of being refused (under load, `lion serve-offline` printed its URL
    seconds before uvicorn started listening, and a test's first request was refused)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every keep-alive answer waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # uvicorn's own backlog
    sock.set_inheritable(True)
    return sock


def url_of(host: str, port: int) -> str:
    """http://host:port, an IPv6 host in brackets."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def uvicorn_server(app, host: str, port: int) -> uvicorn.Server:
    """A uvicorn server for `app` that leaves the process's logging alone."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # No logging config of uvicorn's own: its dictConfig would close every handler of the
        # process (Prefect's API log handler too, which can deadlock mid-flow-run).
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config)
