"""Student tasks: the base model, the fine-tuned student of a round, and its answers."""

from __future__ import annotations

from prefect import get_run_logger

from lion_core.config import LionConfig
from lion_core.run.schemas import ArtifactRef
from lion_core.student.answer import generate_answers
from lion_core.student.launch import init_uri_for, train_student
from tasks.caching import lion_task
from tasks.placement import run_on_gpu
from tasks.runtime.progress import progress_artifacts
from tasks.runtime.retry import retry_unless_requests_failed
from tasks.runtime.store import run_store


@lion_task("base-student")
def base_student(config: LionConfig, data: ArtifactRef) -> str:
    """The round-0 checkpoint: the base model, or a tiny one with a tokenizer trained on
    `data` (round 1's training data: instructions, inputs and the teacher's answers)."""
    from lion_core.student.model import prepare_base_student  # torch and transformers: only here

    store = run_store(config)
    rows = store.read_ref(data)
    texts = [*rows["instruction"], *rows["input"][rows["input"] != ""], *rows["answer"]]
    return prepare_base_student(config, store, texts)


@lion_task(
    "student",
    task_run_name="student-round-{round}",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_requests_failed,
)
def student(config: LionConfig, round: int, data: ArtifactRef, base: str) -> str:
    """The round's student, fine-tuned on the teacher's answers under DeepSpeed, from `base`
    (`training.init_from: base`) or from the previous round's student (`previous`). A retry
    resumes from the latest checkpoint; a finished student is never retrained. With
    `placement.gpu_deployment` set it runs there (`tasks.placement`)."""
    if config.placement.gpu_deployment:
        return run_on_gpu(config, "student", round=round, data=data, base=base)
    store = run_store(config)
    init = init_uri_for(config, store, round) if config.training.init_from == "previous" else base
    if config.arm == "seed-only":  # as many examples as lion's pool would hold this round
        seeds = data.rows
        epochs = config.training.epochs * (seeds + (round - 1) * config.pools.new_per_round) / seeds
        config = config.with_overrides({"training.epochs": epochs})
    return train_student(config, store, round, data.uri, init, logger=get_run_logger())


@lion_task(
    "student-answers",
    task_run_name="student-answers-round-{round}",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_requests_failed,
)
def student_answers(
    config: LionConfig, round: int, cache_pool: ArtifactRef, student: str
) -> ArtifactRef:
    """The student's answers to the Cache Pool (batched generation); on the GPU deployment
    when `placement.gpu_deployment` is set."""
    if config.placement.gpu_deployment:
        return run_on_gpu(
            config, "student-answers", round=round, cache_pool=cache_pool, student=student
        )
    store = run_store(config)
    rows = store.read_ref(cache_pool)[["instruction_id", "instruction", "input"]]
    answers = generate_answers(
        config, store, student, rows, logger=get_run_logger(), on_progress=progress_artifacts()
    )
    return store.write_or_reuse(round, "student_answers", answers)
