"""A role's LLM client as a task builds it, and the usage it reports back."""

from __future__ import annotations

from lion_core.config import LionConfig
from lion_core.errors import LLMError
from lion_core.llm.cache import ResponseCache
from lion_core.llm.client import LLMClient
from lion_core.llm.costs import Budget
from lion_core.run.records import Usage
from tasks.runtime.progress import batch_progress_artifact, progress_artifacts
from tasks.runtime.secrets import api_key
from tasks.runtime.store import cache_storage


def llm_client(config: LionConfig, role: str, offline_url: str | None) -> LLMClient:
    """A client for `role` with the run's response cache, pointed at the offline world if the
    endpoint says 'offline'."""
    endpoint = config.endpoints()[role]
    if endpoint.is_offline and not offline_url:
        raise LLMError(f"{role}.base_url is 'offline' but no offline world is running")
    storage = cache_storage(config)
    return LLMClient(
        endpoint,
        role=role,
        cache=ResponseCache(storage, role),
        base_url=offline_url if endpoint.is_offline else None,
        api_key=api_key(config, role),
        pricing=config.pricing,
        budget=Budget(config.budget_usd, storage) if config.budget_usd else None,
        on_batch_progress=batch_progress_artifact(),
        on_progress=progress_artifacts(),
    )


def usage_record(client: LLMClient) -> Usage:
    """The client's counters (requests sent, cache hits, failures, tokens) as a record, with
    the flow run they were spent in (see `Usage.seen_from`)."""
    from prefect.runtime import flow_run

    return Usage(**client.usage.as_dict(), run=flow_run.id)
