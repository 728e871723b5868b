"""Evaluation tasks: a question set, the teacher's and a student's answers, the judge's scores,
and lm-evaluation-harness accuracy — the Lion paper's yardstick, per round.

Results live under `where` (a round's folder, or a model's folder for `lion eval --student`);
the questions and the teacher's answers are shared by every round of a run.
"""

from __future__ import annotations

from prefect import get_run_logger

from lion_core.config import LionConfig
from lion_core.evaluation.evaluate import (
    judge,
    load_questions,
    question_rows,
    sample_questions,
    set_name,
    summarize,
)
from lion_core.method.imitation import answer_instructions
from lion_core.run import layout
from lion_core.run.records import Benchmarks, Evaluation, TeacherAnswers
from lion_core.run.schemas import ArtifactRef
from lion_core.student.answer import generate_answers
from tasks.caching import lion_task
from tasks.placement import run_on_gpu
from tasks.runtime.clients import llm_client, usage_record
from tasks.runtime.progress import progress_artifacts
from tasks.runtime.retry import retry_unless_requests_failed
from tasks.runtime.store import run_store


@lion_task("evaluation-questions")
def evaluation_questions(config: LionConfig, path: str) -> ArtifactRef:
    """The question set at `path` (a file, or 'offline': the offline world's held-out set),
    sampled to `evaluation.sample`, committed once per run so every round answers the same."""
    ev = config.evaluation
    questions = load_questions(
        path,
        config.storage.options,
        per_cell=ev.offline_per_cell,
        max_difficulty=config.offline.max_difficulty,
        families=config.offline.families,
    )
    at = layout.evaluation("", set_name(path), "questions")
    return run_store(config).write_or_reuse(
        0, "questions", sample_questions(questions, ev.sample), at
    )


@lion_task("teacher-eval-answers", retries=2, retry_condition_fn=retry_unless_requests_failed)
def teacher_eval_answers(
    config: LionConfig, questions: ArtifactRef, offline_url: str | None = None
) -> TeacherAnswers:
    """The teacher's answer to every question (once per run; the response cache keeps them).
    More failed requests than `teacher.max_failed_share` fail the task, nothing committed."""
    store = run_store(config)
    client = llm_client(config, "teacher", offline_url)
    answers = answer_instructions(
        question_rows(store.read_ref(questions)), client, config.teacher.model
    )
    client.raise_for_failures()
    at = layout.evaluation("", _set_of(questions), "teacher_answers")
    return TeacherAnswers(
        answers=store.write_or_reuse(0, "teacher_answers", answers, at),
        failed=int((answers["status"] != "ok").sum()),
        usage=usage_record(client),
    )


@lion_task(
    "student-eval-answers",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_requests_failed,
)
def student_eval_answers(
    config: LionConfig, where: str, round: int | None, questions: ArtifactRef, student: str
) -> ArtifactRef:
    """The student's answer to every question (batched generation, resumable); on the GPU
    deployment when `placement.gpu_deployment` is set."""
    if config.placement.gpu_deployment:
        return run_on_gpu(
            config, "student-eval-answers",
            where=where, round=round, questions=questions, student=student,
        )  # fmt: skip
    store = run_store(config)
    rows = question_rows(store.read_ref(questions))
    answers = generate_answers(
        config, store, student, rows, logger=get_run_logger(), on_progress=progress_artifacts()
    )
    at = layout.evaluation(where, _set_of(questions), "student_answers")
    return store.write_or_reuse(round or 0, "student_answers", answers, at)


@lion_task("judge-scores", retries=2, retry_condition_fn=retry_unless_requests_failed)
def judge_scores(
    config: LionConfig,
    where: str,
    round: int | None,
    questions: ArtifactRef,
    teacher: ArtifactRef,
    answers: ArtifactRef,
    student: str,
    offline_url: str | None = None,
) -> Evaluation:
    """The judge's scores of both answers to every question, in both orders, and the relative
    score with its interval, wins/ties/losses and exact match, overall and per category. More
    failed requests than the judge's `max_failed_share` fail the task, nothing committed."""
    store = run_store(config)
    name = _set_of(questions)
    client = llm_client(config, "judge", offline_url)
    judged = judge(
        store.read_ref(questions),
        store.read_ref(teacher),
        store.read_ref(answers),
        client,
        config.judge_endpoint(),
    )
    client.raise_for_failures()
    summary = summarize(judged, config.evaluation.bootstrap, config.seed)
    k = round or 0
    return Evaluation(
        round=round,
        set=name,
        student=student,
        judged=store.write_or_reuse(k, "judged", judged, layout.evaluation(where, name, "judged")),
        by_category=store.write_or_reuse(
            k, "by_category", summary.to_frame(), layout.evaluation(where, name, "by_category")
        ),
        summary=summary,
        usage=usage_record(client),
    )


@lion_task("lm-eval")
def lm_eval(config: LionConfig, where: str, round: int | None, student: str) -> Benchmarks:
    """lm-evaluation-harness accuracy of the student on `evaluation.lm_eval_tasks`."""
    from lion_core.evaluation.harness import run_lm_eval

    ev = config.evaluation
    table = run_lm_eval(
        student,
        ev.lm_eval_tasks,
        include_path=ev.lm_eval_include_path,
        limit=ev.lm_eval_limit,
        num_fewshot=ev.lm_eval_num_fewshot,
        seed=config.seed,
        storage_options=config.storage.options,
    )
    at = layout.evaluation(where, None, "lm_eval")
    return Benchmarks(
        round=round,
        student=student,
        table=run_store(config).write_or_reuse(round or 0, "lm_eval", table, at),
    )


def _set_of(questions: ArtifactRef) -> str:
    """The set a committed question file belongs to (`evaluation/<set>/questions.parquet`)."""
    return questions.path.rsplit("/", 2)[-2]
