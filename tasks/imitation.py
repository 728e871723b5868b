"""Imitation tasks: the teacher's answers, and the training set built from them."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from lion_core.config import LionConfig
from lion_core.imitation import answer_instructions, training_set
from lion_core.schemas import ArtifactRef
from tasks.caching import lion_task
from tasks.runtime import llm_client, run_store, usage_record


@lion_task("teacher-answers", "teacher", retries=2)
def teacher_answers(
    config: LionConfig,
    round: int,
    train: ArtifactRef,
    cache: ArtifactRef,
    offline_url: str | None = None,
) -> dict[str, Any]:
    """The teacher's answer to every instruction of the Train and Cache Pools.

    Answers already in the run's response cache are reused, so only new instructions cost
    requests; the cache is flushed batch by batch, so a crash loses at most one batch.
    """
    started = time.monotonic()
    store = run_store(config)
    pool = pd.concat([store.read_ref(train), store.read_ref(cache)])
    client = llm_client(config, "teacher", offline_url)
    answers = answer_instructions(pool, client, config.teacher.model)
    return {
        "answers": store.write_or_reuse(round, "teacher_answers", answers),
        "failed": int((answers["status"] != "ok").sum()),
        "usage": usage_record(client),
        "seconds": time.monotonic() - started,
    }


@lion_task("training-data")
def training_data(
    config: LionConfig, round: int, train: ArtifactRef, teacher: ArtifactRef
) -> dict[str, Any]:
    """Train Pool × teacher answers: what the student imitates (failed answers left out)."""
    store = run_store(config)
    rows, missing = training_set(store.read_ref(train), store.read_ref(teacher))
    if rows.empty:
        raise ValueError(f"round {round}: the teacher answered none of the Train Pool")
    return {"data": store.write_or_reuse(round, "train_data", rows), "missing": missing}
