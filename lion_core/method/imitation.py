"""Imitation stage: the teacher answers instructions, and its answers become training data."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from lion_core.llm.types import ChatRequest, ChatResult, Completer
from lion_core.method.prompts import teacher_messages
from lion_core.run.schemas import ANSWER_SCHEMA, TRAIN_DATA_SCHEMA


def teacher_requests(pool: pd.DataFrame) -> list[ChatRequest]:
    """One request per instruction, tagged with its instruction_id."""
    return [
        ChatRequest.of(teacher_messages(row.instruction, row.input), tag=row.instruction_id)
        for row in pool.itertuples(index=False)
    ]


def answers_frame(results: Sequence[ChatResult], model: str) -> pd.DataFrame:
    """ChatResults as rows of the answers artifact (ANSWER_SCHEMA), failures kept."""
    rows = [
        {
            "instruction_id": r.tag,
            "answer": r.text if r.ok else None,
            "status": r.status,
            "error": r.error,
            "finish_reason": r.finish_reason,
            "model": model,
            "request_key": r.key,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
        }
        for r in results
    ]
    return pd.DataFrame(rows, columns=ANSWER_SCHEMA.names)


def answer_instructions(pool: pd.DataFrame, client: Completer, model: str) -> pd.DataFrame:
    """The teacher's answer to every instruction of `pool` (deduplicated by instruction_id)."""
    unique = pool.drop_duplicates("instruction_id")
    results = client.run(teacher_requests(unique), desc="teacher answers")
    return answers_frame(results, model)


def training_set(pool: pd.DataFrame, answers: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Pool rows joined with the teacher's successful answers, in pool order.

    Returns the training rows and how many instructions had no usable answer (failed requests
    are left out of training, not trained on as empty strings).
    """
    ok = answers[answers["status"] == "ok"][["instruction_id", "answer"]]
    merged = pool.merge(ok, on="instruction_id", how="left")
    missing = int(merged["answer"].isna().sum())
    merged = merged[merged["answer"].notna()]
    return merged[TRAIN_DATA_SCHEMA.names].reset_index(drop=True), missing
