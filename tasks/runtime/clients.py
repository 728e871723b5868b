"""A role's LLM client as a task builds it, and the usage it reports back."""

from __future__ import annotations

from lion_core.config import LionConfig
from lion_core.llm.client import LLMClient
from lion_core.llm.factory import client_for
from lion_core.run.records import Usage
from tasks.runtime.progress import batch_progress_artifact, progress_artifacts
from tasks.runtime.secrets import secret_value


def llm_client(config: LionConfig, role: str, offline_url: str | None) -> LLMClient:
    """A client for `role` (`lion_core.llm.factory.client_for`: the run's response cache,
    prices and budget), pointed at the offline world if the endpoint says 'offline', with its
    key from a Prefect Secret block if need be and Prefect progress artifacts."""
    return client_for(
        config,
        role,
        offline_url=offline_url,
        secret_loader=secret_value,
        on_batch_progress=batch_progress_artifact(),
        on_progress=progress_artifacts(),
    )


def usage_record(client: LLMClient) -> Usage:
    """The client's counters (requests sent, cache hits, failures, tokens) as a record, with
    the flow run they were spent in (see `Usage.seen_from`)."""
    from prefect.runtime import flow_run

    return Usage(**client.usage.as_dict(), run=flow_run.id)
