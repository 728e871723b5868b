"""What tasks build from a config at run time: the run's store and LLM clients.

Tasks receive configs and URIs (hashable, cacheable) and build live objects (clients, file
systems) here, inside the task, so nothing unhashable ever becomes a task input.
"""

from __future__ import annotations

import logging
from typing import Any

from lion_core.config import LionConfig
from lion_core.errors import DataHealthError, LLMError, RequestsFailedError
from lion_core.llm.cache import ResponseCache
from lion_core.llm.client import LLMClient
from lion_core.llm.keys import resolve_api_key
from lion_core.records import Usage
from lion_core.storage import Storage
from lion_core.store import RunStore


def run_store(config: LionConfig) -> RunStore:
    return RunStore.open(config.storage.root, config.storage.options)


def cache_storage(config: LionConfig) -> Storage:
    """Where the response cache lives: the run's storage, or `storage.shared_llm_cache`."""
    shared = config.storage.shared_llm_cache
    return Storage(shared, config.storage.options) if shared else run_store(config).storage


def llm_client(config: LionConfig, role: str, offline_url: str | None) -> LLMClient:
    """A client for `role` with the run's response cache, pointed at the offline world if the
    endpoint says 'offline'."""
    endpoint = config.endpoints()[role]
    if endpoint.is_offline and not offline_url:
        raise LLMError(f"{role}.base_url is 'offline' but no offline world is running")
    return LLMClient(
        endpoint,
        role=role,
        cache=ResponseCache(cache_storage(config), role),
        base_url=offline_url if endpoint.is_offline else None,
        api_key=api_key(config, role),
    )


def api_key(config: LionConfig, role: str) -> str | None:
    """`role`'s API key: its environment variable, else its Prefect Secret block, else None."""
    return resolve_api_key(config.endpoints()[role], role, secret_loader=secret_value)


def secret_value(name: str) -> str:
    """The value of Prefect Secret block `name` (endpoints' `api_key_secret`)."""
    from prefect.blocks.system import Secret

    return Secret.load(name).get()


class _InRunOnly(logging.Filter):
    """Pass records to the Prefect API only inside a flow or task run (elsewhere the API
    handler would warn about a missing flow run id)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext, TaskRunContext

        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def attach_library_logging() -> None:
    """Send lion_core's log records to the Prefect run logs; they reach the console through the
    root logger as before (what PREFECT_LOGGING_EXTRA_LOGGERS=lion_core does, without needing
    the variable, and without warnings when the library logs outside a run)."""
    from prefect.logging.handlers import APILogHandler

    lib = logging.getLogger("lion_core")
    lib.setLevel(logging.INFO)
    if not any(isinstance(h, APILogHandler) for h in lib.handlers):
        handler = APILogHandler()
        handler.addFilter(_InRunOnly())
        lib.addHandler(handler)


def usage_record(client: LLMClient) -> Usage:
    """The client's counters (requests sent, cache hits, failures, tokens) as a record, with
    the flow run they were spent in (see `Usage.seen_from`)."""
    from prefect.runtime import flow_run

    return Usage(**client.usage.as_dict(), run=flow_run.id)


def retry_unless_requests_failed(task: Any, task_run: Any, state: Any) -> bool:
    """A retry_condition_fn: retry a failed task, except when its requests failed
    (`RequestsFailedError`) or its answers are degenerate (`DataHealthError`: the same answers
    would come back from the response cache). The client already retried each transient
    failure with backoff; a task retry would only send the permanent ones (401, 400) again.
    The next run re-asks them, after the endpoint is fixed."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception:  # the result cannot be read: retry, as without a condition
        return True
    return not isinstance(error, RequestsFailedError | DataHealthError)
