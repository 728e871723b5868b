"""Imitation tasks: the teacher's answers, and the training set built from them."""

from __future__ import annotations

import pandas as pd

from lion_core.config import LionConfig
from lion_core.errors import DataError
from lion_core.method.health import answer_health, check_answers
from lion_core.method.imitation import answer_instructions, training_set
from lion_core.run.records import Pools, TeacherAnswers
from lion_core.run.schemas import ArtifactRef
from tasks.caching import lion_task
from tasks.runtime.clients import llm_client, usage_record
from tasks.runtime.retry import retry_unless_requests_failed
from tasks.runtime.store import run_store


@lion_task(
    "teacher-answers",
    task_run_name="teacher-answers-round-{round}",
    retries=2,
    retry_condition_fn=retry_unless_requests_failed,
)
def teacher_answers(
    config: LionConfig, round: int, pools: Pools, offline_url: str | None = None
) -> TeacherAnswers:
    """The teacher's answer to every instruction of the Train and Cache Pools.

    Answers already in the run's response cache are reused, so only new instructions cost
    requests; the cache is flushed batch by batch, so a crash loses at most one batch. More
    failed requests than `teacher.max_failed_share` fail the task with nothing committed.
    Degenerate answers (refusals, one repeated answer, empty ones: `data_health`) fail it too,
    before they are committed (`DataHealthError`).
    """
    store = run_store(config)
    pool = pd.concat([store.read_ref(pools.train), store.read_ref(pools.cache)])
    client = llm_client(config, "teacher", offline_url)
    answers = answer_instructions(pool, client, config.teacher.model)
    client.raise_for_failures()
    health = answer_health(answers, config.data_health.refusal_patterns)
    check_answers(health, config.data_health, round)
    return TeacherAnswers(
        answers=store.write_or_reuse(round, "teacher_answers", answers),
        failed=int((answers["status"] != "ok").sum()),
        usage=usage_record(client),
        health=health,
    )


@lion_task("training-data")
def training_data(
    config: LionConfig, round: int, pools: Pools, teacher: TeacherAnswers
) -> ArtifactRef:
    """Train Pool × teacher answers: what the student imitates (failed answers left out)."""
    store = run_store(config)
    rows, _ = training_set(store.read_ref(pools.train), store.read_ref(teacher.answers))
    if rows.empty:
        raise DataError(f"round {round}: the teacher answered none of the Train Pool")
    return store.write_or_reuse(round, "train_data", rows)
