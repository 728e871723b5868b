"""The run's storage as tasks open it: its RunStore, and where the response cache lives."""

from __future__ import annotations

from lion_core.config import LionConfig
from lion_core.run.storage import Storage
from lion_core.run.store import RunStore


def run_store(config: LionConfig) -> RunStore:
    """The run root of `config` (`storage.root` with `storage.options`)."""
    return RunStore.open(config.storage.root, config.storage.options)


def cache_storage(config: LionConfig) -> Storage:
    """Where the response cache lives: the run's storage, or `storage.shared_llm_cache`."""
    shared = config.storage.shared_llm_cache
    return Storage(shared, config.storage.options) if shared else run_store(config).storage
