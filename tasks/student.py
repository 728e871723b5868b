"""Student tasks: the base model, the fine-tuned student of a round, and its answers."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger

from lion_core.config import LionConfig
from lion_core.schemas import ArtifactRef
from lion_core.student.answer import generate_answers
from lion_core.student.launch import train_student
from lion_core.student.model import prepare_base_student
from tasks.caching import lion_task
from tasks.runtime import run_store


@lion_task("base-student", "student", "seed")
def base_student(config: LionConfig) -> str:
    """The round-0 checkpoint: the base model, or a tiny one with a tokenizer trained on round
    1's training data (instructions, inputs and the teacher's answers)."""
    store = run_store(config)
    data = store.read(1, "train_data")
    texts = [*data["instruction"], *data["input"][data["input"] != ""], *data["answer"]]
    return prepare_base_student(config, store, texts)


@lion_task("student", "student", "training", "seed", retries=1, retry_delay_seconds=5)
def trained_student(config: LionConfig, round: int, data: ArtifactRef, init: str) -> dict[str, Any]:
    """The round's student, fine-tuned on the teacher's answers under DeepSpeed. A retry resumes
    from the latest checkpoint; a finished student is never retrained."""
    started = time.monotonic()
    log = get_run_logger()
    uri = train_student(config, run_store(config), round, data.uri, init, logger=log)
    return {"uri": uri, "seconds": time.monotonic() - started}


@lion_task("student-answers", "student", retries=1, retry_delay_seconds=5)
def student_answers(
    config: LionConfig, round: int, cache: ArtifactRef, student: str
) -> dict[str, Any]:
    """The student's answers to the Cache Pool (batched generation)."""
    started = time.monotonic()
    store = run_store(config)
    rows = store.read_ref(cache)[["instruction_id", "instruction", "input"]]
    answers = generate_answers(config, store, student, rows, logger=get_run_logger())
    return {
        "answers": store.write_or_reuse(round, "student_answers", answers),
        "seconds": time.monotonic() - started,
    }
