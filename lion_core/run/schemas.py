"""The tables of a run: each artifact's pyarrow schema, the check a table passes before it is
written (`conform`), instruction ids, and `ArtifactRef`, the reference to a committed table.

Each artifact has a fixed schema; a table that does not match is refused before anything is
written (see docs/storage.md for every column). An `ArtifactRef` (URI, row count, content hash)
stands for a table wherever one is passed on, and is what a task's cache key counts; the records
tasks return are in records.py.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel

from lion_core.errors import SchemaError

POOL_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        # the seed data's own answer (its `output`), null for generated instructions: NOT the
        # training target, which is the teacher's answer (train_data.answer)
        ("reference", pa.string()),
        ("source", pa.string()),  # seed | hard | easy
        ("parent_id", pa.string()),  # the seed it was generated from (null for seeds)
        ("round", pa.int32()),  # the round that added it (0 for seeds)
    ]
)

ANSWER_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("answer", pa.string()),  # null when status is 'failed'
        ("status", pa.string()),  # ok | failed
        ("error", pa.string()),
        ("finish_reason", pa.string()),
        ("model", pa.string()),
        ("request_key", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
    ]
)

REFEREE_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        # order 1: teacher shown first; order 2: student shown first
        ("teacher_score_1", pa.float64()),
        ("student_score_1", pa.float64()),
        ("review_1", pa.string()),
        ("teacher_score_2", pa.float64()),
        ("student_score_2", pa.float64()),
        ("review_2", pa.string()),
        ("teacher_score", pa.float64()),  # mean over both orders
        ("student_score", pa.float64()),
        ("status", pa.string()),  # scored | unscored
        ("error", pa.string()),
    ]
)

SPLIT_SCHEMA = pa.schema(
    [
        *POOL_SCHEMA,
        ("teacher_answer", pa.string()),
        ("student_answer", pa.string()),
        ("teacher_score", pa.float64()),
        ("student_score", pa.float64()),
        ("gap", pa.float64()),
    ]
)

GENERATED_SCHEMA = pa.schema(
    [
        *POOL_SCHEMA,
        # kept | surplus | capped | not_novel | duplicate | contaminated (close to an evaluation
        # question) | candidate (passed the post-filters, not yet judged) | failed | truncated |
        # empty | echo | too_short | punctuation | non_ascii
        ("status", pa.string()),
        ("error", pa.string()),
        ("request_key", pa.string()),
    ]
)

# What the novelty filter and the decontamination gate compared an instruction with: one row
# per candidate they judged (kept, not_novel, duplicate, contaminated), or per seed the gate
# dropped; the text it came nearest to and their ROUGE-L F1 (lion_core.method.lineage).
NEAREST_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("source", pa.string()),  # seed | hard | easy
        ("parent_id", pa.string()),  # the seed it was generated from (null for seeds)
        ("request_key", pa.string()),  # its generator request (null for seeds)
        ("status", pa.string()),  # kept | not_novel | duplicate | contaminated
        ("rouge_l", pa.float64()),  # ROUGE-L F1 with the nearest text (0: nothing shared)
        ("nearest_id", pa.string()),  # its instruction_id or question_id (null: none)
        ("nearest", pa.string()),
        # train pool | new (kept this round) | candidate (an identical earlier candidate) |
        # evaluation <set>
        ("nearest_in", pa.string()),
        ("ngram", pa.string()),  # the n-gram shared with an evaluation question, if any
    ]
)

TRAIN_DATA_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("answer", pa.string()),  # the teacher's answer: the training target
    ]
)

# One referee order: 1 = teacher shown as Assistant 1, 2 = student shown first.
REFEREE_ORDER_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("teacher_score", pa.float64()),
        ("student_score", pa.float64()),
        ("review", pa.string()),  # the raw text of the last review asked for
        ("status", pa.string()),  # scored | unscored
        ("error", pa.string()),
        ("attempts", pa.int32()),  # 1 + re-asks
    ]
)

# Evaluation (lion_core.evaluation.evaluate): one row per question of a set, judged in both orders.
EVAL_SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("category", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("reference", pa.string()),  # the set's reference answer, if any
        ("teacher_answer", pa.string()),  # null when missing or failed
        ("student_answer", pa.string()),
        # both orders' scores and reviews, their means, status and error: as the referee's
        *(f for f in REFEREE_SCHEMA if f.name != "instruction_id"),
        ("teacher_exact_match", pa.bool_()),  # null without a reference
        ("student_exact_match", pa.bool_()),
    ]
)

# Evaluation summary: one 'overall' row, then one row per category (category null on 'overall').
EVAL_SUMMARY_SCHEMA = pa.schema(
    [
        ("level", pa.string()),  # overall | category
        ("category", pa.string()),
        ("questions", pa.int64()),
        ("scored", pa.int64()),
        ("unscored", pa.int64()),
        ("wins", pa.int64()),
        ("ties", pa.int64()),
        ("losses", pa.int64()),
        ("teacher_score_sum", pa.float64()),
        ("student_score_sum", pa.float64()),
        ("relative_score", pa.float64()),  # student sum / teacher sum; 1.0 = teacher level
        ("interval_low", pa.float64()),  # bootstrap 95% percentile interval
        ("interval_high", pa.float64()),
        ("with_reference", pa.int64()),
        ("teacher_exact_match", pa.float64()),  # share of questions with a reference
        ("student_exact_match", pa.float64()),
    ]
)

QUESTION_SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("category", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("reference", pa.string()),
    ]
)

# lm-evaluation-harness results (lion_core.evaluation.harness.COLUMNS): one row per task and metric.
LM_EVAL_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("group", pa.string()),
        ("is_group", pa.bool_()),
        ("metric", pa.string()),
        ("filter", pa.string()),
        ("value", pa.float64()),
        ("stderr", pa.float64()),
        ("n", pa.int64()),
        ("n_total", pa.int64()),
        ("n_shot", pa.int64()),
        ("version", pa.string()),
        ("higher_is_better", pa.bool_()),
    ]
)

# The artifacts of an evaluation (lion_core.run.layout.evaluation): per question set, the questions
# and the teacher's answers once per run, the student's answers and the judge's scores per round.
EVALUATION_SCHEMAS: dict[str, pa.Schema] = {
    "questions": QUESTION_SCHEMA,
    "teacher_answers": ANSWER_SCHEMA,
    "student_answers": ANSWER_SCHEMA,
    "judged": EVAL_SCHEMA,
    "by_category": EVAL_SUMMARY_SCHEMA,
    "lm_eval": LM_EVAL_SCHEMA,
}

# The artifacts a round writes, in the order the DAG produces them. The first eight are the
# public layout; the others are intermediate products kept for resuming and auditing.
ARTIFACT_SCHEMAS: dict[str, pa.Schema] = {
    "train_pool": POOL_SCHEMA,
    "cache_pool": POOL_SCHEMA,
    "teacher_answers": ANSWER_SCHEMA,
    "student_answers": ANSWER_SCHEMA,
    "referee": REFEREE_SCHEMA,
    "hard": SPLIT_SCHEMA,
    "easy": SPLIT_SCHEMA,
    "generated": GENERATED_SCHEMA,
    "train_data": TRAIN_DATA_SCHEMA,
    "referee_1": REFEREE_ORDER_SCHEMA,
    "referee_2": REFEREE_ORDER_SCHEMA,
    "candidates_hard": GENERATED_SCHEMA,
    "candidates_easy": GENERATED_SCHEMA,
    "nearest": NEAREST_SCHEMA,  # each judged candidate's nearest text (novel-instructions)
    "contaminated_seeds": NEAREST_SCHEMA,  # round 1: the seeds the decontamination gate dropped
}


def instruction_id(instruction: str, input: str | None = "") -> str:
    """Stable content hash of (instruction, input): the key of an instruction everywhere."""
    payload = json.dumps([instruction.strip(), (input or "").strip()], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def seed_row(instruction: str, input: str = "", reference: str | None = None) -> dict[str, Any]:
    """A Train Pool row (POOL_SCHEMA) for a seed instruction: round 0, no parent; `reference`:
    the seed data's own answer (its `output` field), if any."""
    return {
        "instruction_id": instruction_id(instruction, input),
        "instruction": instruction,
        "input": input,
        "reference": reference,
        "source": "seed",
        "parent_id": None,
        "round": 0,
    }


class ArtifactRef(BaseModel, frozen=True):
    """A committed artifact: what tasks hand to each other instead of dataframes."""

    uri: str
    path: str  # relative to the run's root (lion_core.run.layout)
    name: str  # the artifact's name: its schema in ARTIFACT_SCHEMAS or EVALUATION_SCHEMAS
    round: int
    rows: int
    sha256: str


# Columns renamed since runs were first written: old name -> new name. Artifacts written before
# the rename are read with the new names (`renamed`), so old runs still resume and report.
RENAMED_COLUMNS = {"output": "reference"}  # pools: the seed's answer is not the training target


def renamed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with the old names of `schema`'s columns (RENAMED_COLUMNS) replaced by the new
    ones, where the table has the old column and not the new one."""
    names = table.column_names
    mapping = {
        old: new
        for old, new in RENAMED_COLUMNS.items()
        if old in names and new not in names and new in schema.names
    }
    return table.rename_columns([mapping.get(n, n) for n in names]) if mapping else table


def conform(df: pd.DataFrame | pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Turn `df` into a table with exactly `schema`, or raise SchemaError naming the column."""
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise SchemaError(f"{what}: missing column(s) {missing}", column=missing[0])
    columns = []
    for field in schema:
        col = table.column(field.name)
        try:
            columns.append(col.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(
                f"{what}: cannot store as {field.type}: {exc}", column=field.name
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)


def pool_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A pool dataframe from row dicts, columns in schema order."""
    return pd.DataFrame(rows, columns=POOL_SCHEMA.names)
