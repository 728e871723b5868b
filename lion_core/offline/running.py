"""The offline world's lifetime around a block of work: one helper for every caller (the flows,
`lion referee-check`) that may need the world in-process."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from lion_core.config import LionConfig


@contextmanager
def offline_world(
    config: LionConfig, url: str | None = None, *, roles: Iterable[str] | None = None
) -> Iterator[str | None]:
    """The offline world's base URL while the block runs: `url` if the caller already runs one,
    else a fresh in-process server on a free loopback port if the base_url of any of `roles`
    (default: every endpoint of the config) is 'offline', else None."""
    endpoints = config.endpoints()
    named = endpoints.values() if roles is None else [endpoints[r] for r in roles]
    if url or not any(e.is_offline for e in named):
        yield url
        return
    from lion_core.offline.server import OfflineServer

    with OfflineServer(config.offline) as server:
        yield server.base_url
