"""When Prefect retries a failed lion task: not when retrying cannot help."""

from __future__ import annotations

from typing import Any

from lion_core.errors import BatchError, BudgetExceeded, DataHealthError, RequestsFailedError


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
