"""Prefect progress artifacts for long stages: one per (role, call) of a Batch API call, and
one per label of a stage that answers many requests (teacher, referee, generator, student)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any


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
