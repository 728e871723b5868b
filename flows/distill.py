"""A Lion distillation run: `config.rounds` rounds, each a `lion_round` subflow."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import offline_world, use_run_storage
from flows.report import publish_run, summary_table
from flows.round import DEFAULT_CONFIG, lion_round
from lion_core.config import LionConfig
from lion_core.records import RunSummary
from lion_core.run import open_run
from tasks.runtime import attach_library_logging


@flow(name="lion-distill", persist_result=True)
def lion_distill(config: LionConfig = DEFAULT_CONFIG) -> RunSummary:
    """Distil the teacher into the student over `config.rounds` Lion rounds.

    One offline world (if any endpoint is 'offline') serves all rounds. Re-running with the
    same config and storage root skips every finished task. Each round's result lives in the
    run's storage, like its tasks' results: a retry of this run on a fresh machine (a new
    Kubernetes pod) reuses finished rounds by reading it there.
    """
    use_run_storage(config)
    attach_library_logging()
    log = get_run_logger()
    store = open_run(config)
    with offline_world(config) as url:
        rounds = [lion_round(config, k, offline_url=url) for k in range(1, config.rounds + 1)]
    publish_run(config, rounds)
    log.info("run finished; pools and students under %s\n%s", store.uri(), summary_table(rounds))
    return RunSummary(root=store.uri(), rounds=rounds)
