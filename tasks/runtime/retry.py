"""When Prefect retries a failed lion task (every task that retries uses this condition): not
when retrying cannot help."""

from __future__ import annotations

from typing import Any

from lion_core.errors import (
    BatchError,
    BudgetExceeded,
    DataHealthError,
    EndpointRejectedError,
    LeaseLostError,
    RequestsFailedError,
)

# What a task retry cannot fix: the same failure would come back at once.
NOT_RETRIED = (
    RequestsFailedError,
    DataHealthError,
    BudgetExceeded,
    BatchError,
    EndpointRejectedError,  # 401/403/404: the key, the model or the URL
    LeaseLostError,  # another run holds the root now
)


def retry_unless_requests_failed(task: Any, task_run: Any, state: Any) -> bool:
    """A retry_condition_fn: retry a failed task, except when its requests failed
    (`RequestsFailedError`), its answers are degenerate (`DataHealthError`: the same answers
    would come back from the response cache), the budget stopped it (`BudgetExceeded`), the
    provider refused a batch (`BatchError`) or the role's requests as such
    (`EndpointRejectedError`), or another run took the root (`LeaseLostError`): retrying
    cannot help those. The client already
    retried each transient failure with backoff; a task retry would only send the permanent ones
    (401, 400) again. The next run re-asks them, after the endpoint is fixed."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception:  # the result cannot be read: retry, as without a condition
        return True
    return not isinstance(error, NOT_RETRIED)
