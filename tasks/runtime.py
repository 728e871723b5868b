"""What tasks build from a config at run time: the run's store and LLM clients.

Tasks receive configs and URIs (hashable, cacheable) and build live objects (clients, file
systems) here, inside the task, so nothing unhashable ever becomes a task input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lion_core.config import LionConfig
from lion_core.errors import (
    BatchError,
    BudgetExceeded,
    DataHealthError,
    RequestsFailedError,
)
from lion_core.llm.client import LLMClient
from lion_core.llm.factory import client_for
from lion_core.llm.keys import resolve_api_key
from lion_core.run.records import Usage
from lion_core.run.store import RunStore


def run_store(config: LionConfig) -> RunStore:
    return RunStore.open(config.storage.root, config.storage.options)


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


def cancel_run_batches(config: LionConfig) -> list[str]:
    """Cancel the open batches of every role of the run in batch mode with
    `batch.cancel_on_cancel` (offline endpoints are skipped: their world dies with the run).
    Returns the batch ids asked to cancel."""
    from lion_core.llm.batch import cancel_open_batches

    cancelled: list[str] = []
    for role, endpoint in config.endpoints().items():
        if endpoint.mode == "batch" and endpoint.batch.cancel_on_cancel and not endpoint.is_offline:
            cancelled += cancel_open_batches(llm_client(config, role, None))
    return cancelled


def cancel_batches_hook(flow: object, flow_run: object, state: object) -> None:
    """A flow `on_cancellation` hook: cancel the run's in-flight provider batches (Prefect runs
    it outside the cancelled process, which cannot do it itself once killed)."""
    params = getattr(flow_run, "parameters", None) or {}
    if "config" in params:
        config = params["config"]
        config = config if isinstance(config, LionConfig) else LionConfig.model_validate(config)
        ids = cancel_run_batches(config)
        logging.getLogger("lion_core.llm").warning("cancelled batches %s", ids or "(none open)")


def batch_progress_artifact() -> Callable[[str, str, int, int, int], None]:
    """A batch-mode progress callback: one Prefect progress artifact per (role, call),
    updated at every poll with the share of lines done (inside a run only)."""
    ids: dict[str, object] = {}

    def report(role: str, desc: str, done: int, failed: int, total: int) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        label = f"{role}: {desc}" if desc else role
        percent = 100.0 * (done + failed) / max(total, 1)
        if label not in ids:
            ids[label] = create_progress_artifact(
                percent,
                description=f"{label}: batch lines answered ({total} requests)",
                _sync=True,
            )
        else:
            update_progress_artifact(ids[label], percent, _sync=True)

    return report


PROGRESS_INTERVAL = 2.0  # seconds between updates of one progress artifact (and at 100%)
FINAL = float("inf")  # a label whose artifact shows 100%


def progress_artifacts() -> Callable[[str, int, int], None] | None:
    """A progress callback `(label, done, total)` for long stages (the teacher's, referee's and
    generator's answers, the student's answers): one Prefect progress artifact per label in the
    task run that made the callback, created at the first report, updated at most every
    PROGRESS_INTERVAL seconds and when done reaches total. None outside a run. Reports may come
    from any thread (the client's event loop): they run in the task's captured context."""
    import contextvars
    import threading
    import time

    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return None
    context = contextvars.copy_context()
    ids: dict[str, Any] = {}
    last: dict[str, float] = {}
    lock = threading.Lock()

    def publish(label: str, percent: float, total: int) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        if label not in ids:
            ids[label] = create_progress_artifact(
                percent, description=f"{label}: {total} to answer", _sync=True
            )
        else:
            update_progress_artifact(ids[label], percent, _sync=True)

    def report(label: str, done: int, total: int) -> None:
        now = time.monotonic()
        with lock:
            final, shown = done >= total, last.get(label)
            if final and shown == FINAL:
                return  # 100% already shown
            if not final and shown not in (None, FINAL) and now - shown < PROGRESS_INTERVAL:
                return
            last[label] = FINAL if final else now
            percent = 100.0 * min(done, total) / max(total, 1)
            try:
                context.copy().run(publish, label, percent, total)
            except Exception as exc:  # progress is a courtesy: never fail the stage for it
                logging.getLogger("lion_core").debug("progress artifact %s: %s", label, exc)

    return report


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
    (`RequestsFailedError`), its answers are degenerate (`DataHealthError`: the same answers
    would come back from the response cache), the budget stopped it (`BudgetExceeded`) or the
    provider refused a batch (`BatchError`): retrying cannot help those. The client already
    retried each transient failure with backoff; a task retry would only send the permanent ones
    (401, 400) again. The next run re-asks them, after the endpoint is fixed."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception:  # the result cannot be read: retry, as without a condition
        return True
    return not isinstance(
        error, RequestsFailedError | DataHealthError | BudgetExceeded | BatchError
    )
