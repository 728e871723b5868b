"""A Lion distillation run: `config.rounds` rounds, each a `lion_round` subflow."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.common import offline_world
from flows.report import publish_run, summary_table
from flows.round import DEFAULT_CONFIG, lion_round
from lion_core.config import LionConfig
from lion_core.run import open_run
from tasks.caching import result_storage
from tasks.runtime import attach_library_logging


@flow(name="lion-distill", persist_result=True)
def lion_distill(config: LionConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Distil the teacher into the student over `config.rounds` Lion rounds.

    One offline world (if any endpoint is 'offline') serves all rounds. Re-running with the
    same config and storage root skips every finished task.
    """
    attach_library_logging()
    log = get_run_logger()
    store = open_run(config)
    # Each round's result lives in the run's storage, like its tasks' results: a retry of this
    # run on a fresh machine (a new Kubernetes pod) reuses finished rounds by reading it there.
    one_round = lion_round.with_options(result_storage=result_storage(config))
    with offline_world(config) as url:
        rounds = [one_round(config, k, offline_url=url) for k in range(1, config.rounds + 1)]
    publish_run(config, rounds)
    log.info(
        "run finished; pools and students under %s\n%s", store.storage.uri(), summary_table(rounds)
    )
    return {"root": store.storage.uri(), "rounds": rounds}
