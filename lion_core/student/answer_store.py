"""The student's answers in the run's storage, as they are generated: committed batch by batch
under `<root>/generation/<key>/part-<shard>-<n>-<uuid>.parquet`, so a crash loses no answered
row and a second call with the same student skips the rows answered there.

<key> (`progress_rel`) hashes the student URI and content digest, the generation settings that
shape an answer (not the operational token budget, GPU count or engine), the prompt template and
the seed. Both engines commit here, in ANSWER_SCHEMA: batched generation in this process or in
one worker per GPU (`generator`), and a served engine (`served`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass

import pandas as pd

from lion_core.config import LionConfig, is_operational
from lion_core.run import layout
from lion_core.run.lease import check_held
from lion_core.run.schemas import ANSWER_SCHEMA, conform
from lion_core.run.storage import Storage
from lion_core.student.checkpoints import content_digest


@dataclass
class Answer:
    """One instruction's answer as committed (either engine)."""

    instruction_id: str
    answer: str | None
    status: str
    error: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    request_key: str | None = None  # the served engine's request (its response-cache key)


def progress_rel(student_uri: str, cfg: LionConfig) -> str:
    """Folder (relative to the run's root) holding the answers generated so far.

    Keyed on what the answers depend on: the student (its URI and content digest, so a
    student retrained at the same place starts afresh), the prompt template, the seed and the
    generation fields not marked operational, so a changed token budget, GPU count or engine
    resumes in the same folder."""
    generation = {
        name: value
        for name, value in cfg.student.generation.model_dump(mode="json").items()
        if not is_operational(f"student.generation.{name}")
    }
    payload = json.dumps(
        {
            "student": student_uri,
            "checkpoint": content_digest(student_uri, cfg.storage.options),
            "generation": generation,
            "template": cfg.student.prompt_template,
            "seed": cfg.seed,
        },
        sort_keys=True,
    )
    return layout.generation(hashlib.sha256(payload.encode()).hexdigest()[:16])


def answered(storage: Storage, rel: str) -> pd.DataFrame:
    """Every answer committed under `rel` so far (first one wins for an id)."""
    frames = [
        storage.read_parquet(f"{rel}/{name}").to_pandas()
        for name in storage.listdir(rel)
        if name.endswith(".parquet")
    ]
    if not frames:
        return ANSWER_SCHEMA.empty_table().to_pandas()
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates("instruction_id", keep="first")


def commit(storage: Storage, rel: str, shard: int, seq: int, answers: list[Answer], model: str):
    """Commit one batch of answers under `rel`. `model`: the student's URI, recorded relative to
    the run's root when it is inside it (`round=2/student`: the same wherever the run is).
    Not when this run lost its root's lease (LeaseLostError)."""
    check_held(storage.uri())
    model = storage.relative(model) or model
    table = conform(
        pd.DataFrame(
            [
                {
                    "instruction_id": a.instruction_id,
                    "answer": a.answer,
                    "status": a.status,
                    "error": a.error,
                    "finish_reason": a.finish_reason,
                    "model": model,
                    "request_key": a.request_key,
                    "prompt_tokens": a.prompt_tokens,
                    "completion_tokens": a.completion_tokens,
                }
                for a in answers
            ]
        ),
        ANSWER_SCHEMA,
        "student answers",
    )
    storage.write_parquet(f"{rel}/part-{shard:03d}-{seq:06d}-{uuid.uuid4().hex[:8]}.parquet", table)
