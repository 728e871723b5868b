"""lion_core's log records in the Prefect run logs (and on the console, as before)."""

from __future__ import annotations

import logging


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
