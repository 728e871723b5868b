"""What the flows share: the offline world's lifetime, tasks bound to the run's result storage,
and a stage clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

from lion_core.config import LionConfig
from lion_core.schemas import ArtifactRef
from lion_core.store import RunStore
from tasks import discrimination, generation, imitation, pools, student
from tasks.caching import result_storage

TASK_MODULES = (pools, imitation, student, discrimination, generation)


@contextmanager
def offline_world(config: LionConfig, url: str | None = None) -> Iterator[str | None]:
    """The offline task world's URL while the block runs: `url` if the caller already runs
    one, a fresh server on a free loopback port if any endpoint is 'offline', else None."""
    if url or not any(e.is_offline for e in config.endpoints().values()):
        yield url
        return
    from lion_core.offline.server import OfflineServer

    with OfflineServer(config.offline) as server:
        yield server.base_url


def bound_tasks(config: LionConfig) -> SimpleNamespace:
    """Every lion task, with results persisted in this run's storage (local or S3)."""
    storage = result_storage(config)
    found = {}
    for module in TASK_MODULES:
        for name in dir(module):
            obj = getattr(module, name)
            if hasattr(obj, "with_options") and hasattr(obj, "cache_key_fn"):
                found[name] = obj.with_options(result_storage=storage)
    return SimpleNamespace(**found)


def committed_pools(store: RunStore, round: int) -> dict[str, ArtifactRef]:
    """Round k's pools as round k-1 committed them."""
    refs = {"train": store.ref(round, "train_pool"), "cache": store.ref(round, "cache_pool")}
    missing = [f"{name}_pool" for name, ref in refs.items() if ref is None]
    if missing:
        raise FileNotFoundError(
            f"round {round} has no {' or '.join(missing)} under {store.storage.uri()}: "
            f"run round {round - 1} first"
        )
    return refs  # type: ignore[return-value]


class StageClock:
    """Wall time per stage of a round, as this invocation spent it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.seconds[stage] = round(now - self._last, 2)
        self._last = now
