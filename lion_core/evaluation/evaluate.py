"""Evaluation: the student's relative score on held-out questions, the Lion paper's yardstick.

A judge (GPT-4 in the paper; `LionConfig.judge_endpoint()` here) scores the teacher's and the
student's answer to each question 1-10 with the referee's prompt, in both orders, and each
assistant's two scores are averaged (`lion_core.method.referee` does the asking, parsing and
re-asking).
The relative score is the sum of the student's scores over the sum of the teacher's, over the
scored questions: 1.0 = teacher level. A question the judge could not score (unparsable after the
re-ask, failed request, missing answer) is counted as unscored and left out, never a tie.

Pure functions over DataFrames and an LLM client:

    questions = load_questions(path)                      # or "offline": the held-out set
    rows = question_rows(questions)                       # what the teacher and student answer
    per_question = judge(questions, teacher, student, client, cfg)   # EVAL_SCHEMA
    summary = summarize(per_question, bootstrap=1000, seed=0)        # EvalSummary
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from lion_core.config import DATA_FORMATS, OFFLINE, RefereeConfig
from lion_core.errors import DataError
from lion_core.llm.types import Completer
from lion_core.method.discriminate import EPS, positional_bias
from lion_core.method.referee import combine, make_pairs, score_order
from lion_core.method.seeds import read_records
from lion_core.offline.world import HELDOUT_MAX_DIFFICULTY, heldout_questions
from lion_core.run.schemas import EVAL_SCHEMA, EVAL_SUMMARY_SCHEMA, instruction_id

QUESTION_COLUMNS = ["question_id", "category", "instruction", "input", "reference"]
DEFAULT_CATEGORY = "general"

# ------------------------------------------------------------------------------------------
# Question sets
# ------------------------------------------------------------------------------------------


def load_questions(
    path: str,
    options: dict[str, Any] | None = None,
    *,
    per_cell: int = 2,
    max_difficulty: int = HELDOUT_MAX_DIFFICULTY,
    families: list[str] | None = None,
) -> pd.DataFrame:
    """A question set as QUESTION_COLUMNS: question_id (str), category ("general" if absent),
    instruction, input ("" if absent), reference (str, null if absent), in file order.

    Formats: Vicuna/MT-Bench JSONL (question_id, category, turns: the first turn is asked;
    an MT-Bench reference list gives its first item), Alpaca JSON/JSONL (instruction, input,
    optional question_id, category, reference), Parquet or CSV with the Alpaca columns. Without
    a question_id the id is `instruction_id(instruction, input)`. "offline" is the offline
    world's held-out set (`per_cell` questions per family of `families`, default the world's
    seven, and difficulty up to `max_difficulty`). `options` are fsspec storage options.
    Errors are DataErrors naming the file, row and column.
    """
    if path == OFFLINE:
        return heldout_questions(per_cell, max_difficulty, families)
    rows = []
    first_row: dict[str, int] = {}
    for rowno, record in read_records(path, options):
        row = _question(record, path, rowno)
        qid = row["question_id"]
        if qid in first_row:
            raise DataError(
                f"duplicate question_id {qid!r} (first at row {first_row[qid]})",
                file=path,
                row=rowno,
                column="question_id",
            )
        first_row[qid] = rowno
        rows.append(row)
    if not rows:
        raise DataError("no questions found", file=path)
    return pd.DataFrame(rows, columns=QUESTION_COLUMNS)


def _question(record: Any, path: str, rowno: int) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise DataError(f"expected an object, got {type(record).__name__}", file=path, row=rowno)
    column = "instruction" if "instruction" in record or "turns" not in record else "turns"
    instruction = _text(record, column, path, rowno)
    if not instruction:
        what = "missing required column" if instruction is None else "empty instruction"
        raise DataError(what, file=path, row=rowno, column=column)
    input = _text(record, "input", path, rowno) or ""
    return {
        "question_id": _text(record, "question_id", path, rowno)
        or instruction_id(instruction, input),
        "category": _text(record, "category", path, rowno) or DEFAULT_CATEGORY,
        "instruction": instruction,
        "input": input,
        "reference": _text(record, "reference", path, rowno) or None,
    }


_LISTS = ("turns", "reference")  # multi-turn sets (MT-Bench): the first turn is asked
_NUMBERS = ("question_id", "reference")  # may be numbers in JSON and Parquet


def _text(record: dict[str, Any], column: str, path: str, rowno: int) -> str | None:
    """The column's value as stripped text, None when absent or null."""
    value = record.get(column)
    if isinstance(value, list) and column in _LISTS:
        value = value[0] if value else None
    if _missing(value):
        return None
    if column in _NUMBERS and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(int(value)) if float(value).is_integer() else str(value)
    if not isinstance(value, str):
        raise DataError(
            f"expected text, got {type(value).__name__}", file=path, row=rowno, column=column
        )
    return value.strip()


def set_name(path: str) -> str:
    """A short name for a question set: its file name without the format suffix
    ("vicuna_bench_questions"), or "offline"."""
    if path == OFFLINE:
        return OFFLINE
    name = PurePosixPath(path.rstrip("/")).name
    suffix = next((f for f in DATA_FORMATS if name.lower().endswith(f)), "")
    name = name[: len(name) - len(suffix)]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "questions"


def sample_questions(questions: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """At most `n` questions: those whose sha256(question_id) sort first, in their original
    order. The same for a given set every time, and a question stays in the sample when other
    questions are added to or removed from the file (unless it is pushed out by one that sorts
    before it)."""
    if n is None or len(questions) <= n:
        return questions.reset_index(drop=True)
    keys = questions["question_id"].map(lambda q: hashlib.sha256(q.encode()).hexdigest())
    chosen = keys.sort_values(kind="stable").index[:n]
    return questions.loc[sorted(chosen)].reset_index(drop=True)


def question_rows(questions: pd.DataFrame) -> pd.DataFrame:
    """What the teacher and the student answer: instruction_id (= question_id), instruction,
    input. Answer frames (ANSWER_SCHEMA) made from these rows key the judging step."""
    rows = questions[["question_id", "instruction", "input"]]
    return rows.rename(columns={"question_id": "instruction_id"}).reset_index(drop=True)


# ------------------------------------------------------------------------------------------
# Judging
# ------------------------------------------------------------------------------------------


def judge_pairs(
    questions: pd.DataFrame, teacher_answers: pd.DataFrame, student_answers: pd.DataFrame
) -> pd.DataFrame:
    """`referee.make_pairs` over the questions (instruction_id = question_id), with each
    question's category and reference: what `score_order` and `per_question` take."""
    pairs = make_pairs(question_rows(questions), teacher_answers, student_answers)
    by_id = questions.drop_duplicates("question_id").set_index("question_id")
    for column in ("category", "reference"):
        pairs[column] = pairs["instruction_id"].map(by_id[column])
    return pairs


def judge(
    questions: pd.DataFrame,
    teacher_answers: pd.DataFrame,
    student_answers: pd.DataFrame,
    client: Completer,
    cfg: RefereeConfig,
) -> pd.DataFrame:
    """Judge every question in both orders (the referee's prompt, parser and re-asks) and
    return the per-question frame (EVAL_SCHEMA), in question order.

    The answers are ANSWER_SCHEMA frames keyed by question_id (see `question_rows`). A flow that
    runs the two orders as separate tasks calls `judge_pairs`, `referee.score_order(...,
    who="judge")` twice and `per_question` instead."""
    pairs = judge_pairs(questions, teacher_answers, student_answers)
    order_1, order_2 = (score_order(pairs, client, cfg, k, who="judge") for k in (1, 2))
    return per_question(pairs, order_1, order_2)


def per_question(pairs: pd.DataFrame, order_1: pd.DataFrame, order_2: pd.DataFrame) -> pd.DataFrame:
    """`judge_pairs` rows with both orders' scores (`referee.combine`: averaged, unscored when
    either order is) and exact-match columns where a reference exists, as EVAL_SCHEMA."""
    scores = combine(order_1, order_2).set_index("instruction_id")
    frame = pairs.rename(columns={"instruction_id": "question_id"})
    frame = frame.join(scores, on="question_id")
    frame["status"] = frame["status"].fillna("unscored")
    no_review = frame["error"].isna() & (frame["status"] != "scored")
    frame.loc[no_review, "error"] = "missing_review: no judge review"
    for who in ("teacher", "student"):
        frame[f"{who}_exact_match"] = [
            None if _missing(ref) else (not _missing(answer) and exact_match(answer, ref))
            for answer, ref in zip(frame[f"{who}_answer"], frame["reference"], strict=True)
        ]
    floats = [f.name for f in EVAL_SCHEMA if str(f.type) == "double"]
    return frame[EVAL_SCHEMA.names].astype(dict.fromkeys(floats, "float64"))


def _missing(value: Any) -> bool:
    """None, NaN or pd.NA: how a missing value arrives, depending on the source."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


# ------------------------------------------------------------------------------------------
# Exact match
# ------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_TRAILING = re.compile(r"[\s.,;:!?]+$")


def exact_match(prediction: str | None, reference: str | None) -> bool:
    """Whether `prediction` gives `reference`: equal after normalising case, whitespace (also
    around commas) and trailing punctuation; when the reference is a number ("1,234" is one
    number), whether the last number in the prediction equals it ("It is 1234." matches)."""
    if prediction is None or reference is None:
        return False
    bare = _TRAILING.sub("", reference.strip())
    if _NUMBER.fullmatch(bare):
        numbers = _NUMBER.findall(prediction)
        return bool(numbers) and _as_float(numbers[-1]) == _as_float(bare)
    return _normal(prediction) == _normal(reference)


def _normal(text: str) -> str:
    text = " ".join(text.lower().split())
    text = re.sub(r"\s*,\s*", ", ", text)
    return _TRAILING.sub("", text)


def _as_float(number: str) -> float:
    return float(number.replace(",", ""))


# ------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------


class Score(BaseModel):
    """The numbers of one group of questions (a whole set, or one category)."""

    model_config = ConfigDict(frozen=True)

    questions: int
    scored: int
    unscored: int  # left out of everything below; never a tie
    wins: int  # student's averaged score above the teacher's
    ties: int
    losses: int
    teacher_score_sum: float
    student_score_sum: float
    relative_score: float | None  # student sum / teacher sum over scored questions
    interval: tuple[float, float] | None  # bootstrap 95% percentile interval of relative_score
    with_reference: int  # questions with a reference answer
    teacher_exact_match: float | None  # share of those the teacher's answer matches
    student_exact_match: float | None


class EvalSummary(Score):
    """A question set's evaluation: the overall numbers, the judge's positional bias (first
    minus second shown, as discriminate reports it) and the numbers per category."""

    positional_bias: float | None
    by_category: dict[str, Score]
    bootstrap: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: every field, with `by_category` mapping category -> relative
        score and `categories` holding each category's full numbers."""
        data = self.model_dump(mode="json")
        data["categories"] = data.pop("by_category")
        data["by_category"] = {c: v["relative_score"] for c, v in data["categories"].items()}
        return data

    def to_frame(self) -> pd.DataFrame:
        """EVAL_SUMMARY_SCHEMA rows: 'overall' first, then each category."""
        groups = [
            ("overall", None, self),
            *(("category", c, s) for c, s in self.by_category.items()),
        ]
        rows = []
        for level, category, score in groups:
            low, high = score.interval or (None, None)
            numbers = score.model_dump(include=set(Score.model_fields) - {"interval"})
            rows.append({"level": level, "category": category, **numbers})
            rows[-1].update(interval_low=low, interval_high=high)
        return pd.DataFrame(rows, columns=EVAL_SUMMARY_SCHEMA.names)


def summarize(per_question: pd.DataFrame, bootstrap: int = 1000, seed: int = 0) -> EvalSummary:
    """The relative score, its bootstrap interval (`bootstrap` resamples of the scored
    questions, seeded by `seed`; 0 = none), wins/ties/losses, unscored, exact match and the
    judge's positional bias, overall and per category (categories sorted by name)."""
    scored = per_question[per_question["status"] == "scored"]
    by_category = {
        str(category): _score(group, bootstrap, [seed, zlib.crc32(str(category).encode())])
        for category, group in per_question.groupby("category", sort=True)
    }
    overall = _score(per_question, bootstrap, [seed])
    return EvalSummary(
        **overall.model_dump(),
        positional_bias=positional_bias(scored),
        by_category=by_category,
        bootstrap=bootstrap,
        seed=seed,
    )


def _score(group: pd.DataFrame, bootstrap: int, seed: list[int]) -> Score:
    scored = group[group["status"] == "scored"]
    teacher = scored["teacher_score"].to_numpy(dtype=float)
    student = scored["student_score"].to_numpy(dtype=float)
    gap = student - teacher
    with_ref = group[group["reference"].notna()]
    return Score(
        questions=len(group),
        scored=len(scored),
        unscored=len(group) - len(scored),
        wins=int((gap > EPS).sum()),
        ties=int((abs(gap) <= EPS).sum()),
        losses=int((gap < -EPS).sum()),
        teacher_score_sum=float(teacher.sum()),
        student_score_sum=float(student.sum()),
        relative_score=_ratio(student.sum(), teacher.sum()),
        interval=bootstrap_interval(teacher, student, bootstrap, seed),
        with_reference=len(with_ref),
        teacher_exact_match=_share(with_ref["teacher_exact_match"]),
        student_exact_match=_share(with_ref["student_exact_match"]),
    )


def _ratio(student: float, teacher: float) -> float | None:
    return float(student / teacher) if teacher > 0 else None


def _share(flags: pd.Series) -> float | None:
    """The share of True (null counts as not matching)."""
    return float(flags.eq(True).mean()) if len(flags) else None


def bootstrap_interval(
    teacher: np.ndarray, student: np.ndarray, resamples: int, seed: int | list[int] = 0
) -> tuple[float, float] | None:
    """The 2.5th and 97.5th percentiles of sum(student) / sum(teacher) over `resamples`
    resamples of the questions with replacement (None with no questions or no resamples)."""
    n = len(teacher)
    if n == 0 or resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    chunk = max(1, 1_000_000 // n)  # resamples drawn at once: about a million indices
    ratios = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        ratios.append(student[idx].sum(axis=1) / teacher[idx].sum(axis=1))
    low, high = np.percentile(np.concatenate(ratios), [2.5, 97.5])
    return float(low), float(high)


__all__ = [
    "DEFAULT_CATEGORY",
    "QUESTION_COLUMNS",
    "EvalSummary",
    "Score",
    "bootstrap_interval",
    "exact_match",
    "judge",
    "judge_pairs",
    "load_questions",
    "per_question",
    "question_rows",
    "sample_questions",
    "set_name",
    "summarize",
]
