"""Getting Prefect ready for a command that runs flows: its temporary server, when no
PREFECT_API_URL names one, and a console that shows a LionError's message without its
traceback."""

from __future__ import annotations

import logging

from lion_core.errors import LionError


class _NoLionTracebacks(logging.Formatter):
    """Wraps the console's log formatter: a record that carries a LionError is shown without
    its traceback — its message names the field, file or row at fault, and the CLI prints it
    once more as its `error:` line. Any other exception keeps its traceback; Prefect's API log
    handler (the UI's logs) is a different handler and keeps every traceback."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and isinstance(record.exc_info[1], LionError):
            quiet = {"exc_info": None, "exc_text": None, "stack_info": None}
            record = logging.makeLogRecord({**record.__dict__, **quiet})
        return self.inner.format(record)


def use_prefect() -> None:
    """Before anything talks to Prefect: with no PREFECT_API_URL, start its temporary server
    as a child that dies with this CLI (even on kill -9; flows/ephemeral.py); and keep the
    tracebacks of LionErrors (a task's, then its flow's) off the console."""
    from prefect.logging.handlers import PrefectConsoleHandler

    from flows.ephemeral import start_ephemeral_server

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(
            handler.formatter, _NoLionTracebacks
        ):
            handler.setFormatter(_NoLionTracebacks(handler.formatter))
    start_ephemeral_server()
