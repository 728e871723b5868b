"""A Lion distillation run: `config.rounds` rounds, each a `lion_round` subflow, and the
student of every round (round 0 = the base) evaluated on the same question sets."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.common import offline_world, use_run_storage
from flows.evaluate import lion_evaluate
from flows.names import descriptive, run_name
from flows.report import publish_run, publish_scoreboard, summary_line
from flows.round import DEFAULT_CONFIG, lion_round
from lion_core.config import LionConfig
from lion_core.ops.preflight import preflight
from lion_core.run import layout
from lion_core.run.identity import open_run
from lion_core.run.lease import run_lease
from lion_core.run.records import RoundSummary, RunSummary, StudentEvaluation
from tasks.runtime.cancel import cancel_batches_hook
from tasks.runtime.logs import attach_library_logging
from tasks.runtime.secrets import secret_value


@flow(
    name="lion-distill",
    flow_run_name=descriptive(run_name),
    on_cancellation=[cancel_batches_hook],
    persist_result=True,
)
def lion_distill(config: LionConfig = DEFAULT_CONFIG) -> RunSummary:
    """Distil the teacher into the student over `config.rounds` Lion rounds, evaluating round
    0's and every round's student (`evaluation.every_round`; else round 0's and the last).

    One offline world (if any endpoint is 'offline') serves all rounds. Re-running with the
    same config and storage root skips every finished task. Each round's result lives in the
    run's storage, like its tasks' results: a retry of this run on a fresh machine (a new
    Kubernetes pod) reuses finished rounds by reading it there.

    The run holds the root's lease (`lion_core.run.lease`) from start to end, its rounds and
    evaluations sharing it: a second run started on the root meanwhile fails at once.

    It starts with the preflight (`lion_core.ops.preflight`: keys, endpoints, storage, initial
    data): a problem there fails the run in seconds, before anything is built or trained.
    """
    use_run_storage(config)
    attach_library_logging()
    log = get_run_logger()
    report = preflight(config, secret_loader=secret_value)
    for warning in report.warnings:
        log.warning("preflight: %s", warning)
    report.raise_for_problems()
    with run_lease(config, flow_run.id) as lease:
        store = open_run(config)
        evaluate = bool(config.evaluation.sets or config.evaluation.lm_eval_tasks)
        rounds: list[RoundSummary] = []
        with offline_world(config) as url:
            for k in range(1, config.rounds + 1):
                lease.check()
                summary = lion_round(config, k, offline_url=url)
                if evaluate and k == 1:
                    lion_evaluate(config, store.uri(layout.student(0)), 0, offline_url=url)
                if evaluate and (config.evaluation.every_round or k == config.rounds):
                    result = lion_evaluate(config, summary.student, k, offline_url=url)
                    summary = _with_evaluation(summary, result)
                    store.write_round_summary(k, summary.model_dump(mode="json"))
                rounds.append(summary)
        publish_run(config, rounds)
        plot = publish_scoreboard(config)
    log.info("run finished: %s; pools and students under %s", summary_line(rounds), store.uri())
    if plot:
        log.info("relative score per round: %s", plot)
    return RunSummary(root=store.uri(), rounds=rounds)


def _with_evaluation(summary: RoundSummary, evaluation: StudentEvaluation) -> RoundSummary:
    first = evaluation.first()
    if first is None:
        return summary
    return summary.model_copy(
        update={
            "relative_score": first.summary.relative_score,
            "student_exact_match": first.summary.student_exact_match,
        }
    )
