"""What a cancelled run does: cancel its in-flight provider batches (the flows'
`on_cancellation` hook)."""

from __future__ import annotations

import logging

from lion_core.config import LionConfig
from tasks.runtime.clients import llm_client


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
