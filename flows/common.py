"""What the flows share: the offline world's lifetime, the run's result storage, a stage clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.context import FlowRunContext

from lion_core.config import LionConfig
from lion_core.offline import running
from lion_core.run.records import Pools
from lion_core.run.store import RunStore
from tasks.results import run_result_store


@contextmanager
def offline_world(config: LionConfig, url: str | None = None) -> Iterator[str | None]:
    """The offline task world's URL while the block runs: `url` if the caller already runs
    one, a fresh server on a free loopback port if any endpoint is 'offline', else None
    (`lion_core.offline.running.offline_world`, which `lion referee-check` uses too)."""
    with running.offline_world(config, url) as base_url:
        yield base_url


def use_run_storage(config: LionConfig) -> None:
    """Persist this flow run's result — and, inherited, its tasks' and subflows' results — in
    the run's own storage (`<root>/prefect-results`), so a retry on another machine (a fresh
    Kubernetes pod) finds them.

    Prefect takes a flow's result storage from its decorator or `with_options`, fixed before
    the run starts; ours depends on the `config` parameter, and deployed flows are started by
    a worker from their entry point, so each lion flow sets it on its own run context as its
    first step (what `with_options(result_storage=...)` does for a subflow). Results are
    'lion-json' records, and a record lion did not write is refused (tasks/results.py).
    """
    context = FlowRunContext.get()
    if context is None:
        raise RuntimeError("use_run_storage is called from inside a flow run")
    context.result_store = run_result_store(context.result_store, config)


def committed_pools(store: RunStore, round: int) -> Pools:
    """Round k's pools as round k-1 committed them."""
    train, cache = store.ref(round, "train_pool"), store.ref(round, "cache_pool")
    if train is None or cache is None:
        missing = [n for n, ref in (("train_pool", train), ("cache_pool", cache)) if ref is None]
        raise FileNotFoundError(
            f"round {round} has no {' or '.join(missing)} under {store.uri()}: "
            f"run round {round - 1} first"
        )
    return Pools(train=train, cache=cache)


class StageClock:
    """Wall time per stage of a round, as this invocation spent it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.seconds[stage] = round(now - self._last, 2)
        self._last = now
