"""Evaluating students: the judge's relative score on question sets, lm-eval accuracy."""

from __future__ import annotations

import hashlib

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import offline_world, use_run_storage
from flows.names import descriptive, evaluation_name
from flows.report import publish_evaluation
from lion_core.config import LionConfig
from lion_core.evaluation.evaluate import set_name
from lion_core.run import layout
from lion_core.run.identity import open_run
from lion_core.run.lease import run_lease
from lion_core.run.records import StudentEvaluation
from tasks.evaluation import (
    evaluation_questions,
    judge_scores,
    lm_eval,
    student_eval_answers,
    teacher_eval_answers,
)
from tasks.runtime.cancel import cancel_batches_hook
from tasks.runtime.logs import attach_library_logging

DEFAULT_CONFIG = LionConfig()


@flow(
    name="lion-evaluate",
    flow_run_name=descriptive(evaluation_name),
    on_cancellation=[cancel_batches_hook],
    task_runner=ThreadPoolTaskRunner(max_workers=4),
    persist_result=True,
)
def lion_evaluate(
    config: LionConfig = DEFAULT_CONFIG,
    student: str = "",
    round: int | None = None,
    sets: list[str] | None = None,
    offline_url: str | None = None,
) -> StudentEvaluation:
    """Judge `student` (a model folder or URI; round `round`'s student of the run) against the
    teacher on each question set (default: `evaluation.sets`), and run lm-eval's tasks on it.

    Every task is cached like the round's: a re-run asks the judge nothing it already answered.
    It holds the root's lease like a round (shared with lion-distill when run by it).
    """
    use_run_storage(config)
    attach_library_logging()
    log = get_run_logger()
    with run_lease(config, flow_run.id):
        open_run(config)
        where = layout.round_dir(round) if round is not None else layout.model_dir(_key(student))
        results = []
        with offline_world(config, offline_url) as url:
            for path in config.evaluation.sets if sets is None else sets:
                questions = evaluation_questions(config, path)
                teacher = teacher_eval_answers(config, questions, offline_url=url)
                answers = student_eval_answers(config, where, round, questions, student)
                result = judge_scores(
                    config, where, round, questions, teacher.answers, answers, student,
                    offline_url=url,
                )  # fmt: skip
                results.append(result)
                log.info(
                    "%s on %s: relative score %s over %d questions (%d unscored)",
                    where, set_name(path), _fmt(result.summary.relative_score),
                    result.summary.scored, result.summary.unscored,
                )  # fmt: skip
        benchmarks = None
        if config.evaluation.lm_eval_tasks:
            benchmarks = lm_eval(config, where, round, student)
        evaluation = StudentEvaluation(
            round=round, student=student, sets=results, benchmarks=benchmarks
        )
        publish_evaluation(config, evaluation)
        return evaluation


def _key(student: str) -> str:
    return hashlib.sha256(student.encode()).hexdigest()[:16]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
