"""The run's storage as tasks open it (the response cache: llm.factory.cache_storage)."""

from __future__ import annotations

from lion_core.config import LionConfig
from lion_core.run.store import RunStore


def run_store(config: LionConfig) -> RunStore:
    """The run root of `config` (`storage.root` with `storage.options`)."""
    return RunStore.open(config.storage.root, config.storage.options)
