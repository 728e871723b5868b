"""The referee: the teacher scores its own answer and the student's, 1-10, in both orders.

Each pair is reviewed twice, positions swapped (order 1: teacher shown as Assistant 1; order 2:
student shown first), and each assistant's two scores are averaged, which cancels a referee's
preference for whichever answer it reads first. The two orders are independent requests, so the
flow runs them as two concurrent tasks (`score_order`) and then joins them (`combine`).

A review whose scores cannot be parsed is re-asked (`RefereeConfig.reasks` times) as a new
conversation: the original prompt, the bad review, and `prompts.REFEREE_REASK`. A pair that still
has no scores in either order, or whose request failed, or whose teacher or student answer is
missing, is *unscored*: it keeps its reason in `error` and is left out of the hard/easy split.
It is never a tie (the original code scored such pairs -1/-1, filing every failure under "easy").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from lion_core.config import RefereeConfig
from lion_core.errors import LLMError
from lion_core.llm.types import ChatRequest, Completer
from lion_core.method.prompts import (
    REFEREE_REASK,
    REFEREE_REASK_JSON,
    instruction_text,
    referee_messages,
)
from lion_core.run.schemas import REFEREE_ORDER_SCHEMA, REFEREE_SCHEMA

Order = Literal[1, 2]
PAIR_COLUMNS = ["instruction_id", "instruction", "input", "teacher_answer", "student_answer"]
MIN_SCORE, MAX_SCORE = 1.0, 10.0

# Reason codes: the first word of `error` on an unscored pair (discriminate counts them).
MISSING_ANSWER = "missing_answer"
REQUEST_FAILED = "request_failed"
UNPARSABLE = "unparsable"
MISSING_REVIEW = "missing_review"


# ------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    """The two scores found in a review (Assistant 1, Assistant 2), or why there are none."""

    scores: tuple[float, float] | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.scores is not None


_NUMBER = r"(\d{1,2}(?:\.\d+)?)"
# "Assistant 1", "Assistant #1", "**Assistant 1**"; the number right after it is the label.
_LABEL = re.compile(r"assistant\s*#?\s*([12])(?!\d)", re.IGNORECASE)
# Between the label and its score: markdown, punctuation and a few score words only, so that
# "Assistant 1 lists 3 reasons" is not read as a score of 3.
_BRIDGE_WORDS = {
    "s",
    "score",
    "scores",
    "scored",
    "rating",
    "rated",
    "is",
    "of",
    "a",
    "an",
    "the",
    "overall",
    "final",
    "total",
    "gets",
    "get",
    "receives",
    "receive",
    "deserves",
    "earns",
    "given",
    "would",
    "be",
    "as",
    "with",
}
_AFTER_LABEL = re.compile(r"([^\d\n]{0,60}?)" + _NUMBER + r"(?!\d)")
# What may follow a score: "/10", "out of 10", "points", then punctuation or the end of line.
_SCORE_TAIL = re.compile(
    r"\s*(?:/\s*10(?:\.0+)?|out\s+of\s+10(?:\.0+)?)?\s*(?:points?)?\s*[*_`]*\s*"
    r"(?:$|[.,;:!)(\]\-–—|]|\s+(?:and|for|to|vs\.?)\b)",
    re.IGNORECASE,
)
_NEGATIVE = re.compile(r"[:=(]\s*[-−]$|\s[-−]$")
_SCORE_WORD = re.compile(r"\b(?:score[sd]?|rating|rated)\b", re.IGNORECASE)
# The old Vicuna format: a line with the two scores and nothing else, e.g. "8 7" or "8/10, 7/10".
_BARE_PAIR = re.compile(
    r"^\s*[*_`]*\s*" + _NUMBER + r"\s*(?:/\s*10)?\s*[,;\s]\s*" + _NUMBER + r"\s*(?:/\s*10)?"
    r"\s*[*_`.]*\s*$"
)
_JSON_FENCE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL | re.IGNORECASE)


def parse_scores(text: str | None) -> tuple[float, float] | None:
    """The two scores (Assistant 1, Assistant 2) of a review, or None if none can be trusted."""
    return parse_review(text).scores


def parse_review(text: str | None) -> Parsed:
    """Find the two scores in a review, trying in turn: a JSON object, labelled score lines
    ("Score of the Assistant 1: 8", "Assistant 1: 8/10", "Score for Assistant 1 is 7.5",
    "**Assistant 1**: 8"), and a bare "8 7" line (the old Vicuna format, last line first).

    Scores outside 1-10 are rejected, not clipped: they mean the referee misread the scale."""
    if text is None or not text.strip():
        return Parsed(None, "empty review")
    for strategy in (_from_json, _from_labels, _from_bare_pair):
        found = strategy(text)
        if found is not None:
            return _checked(found)
    return Parsed(None, "no score lines for Assistant 1 and Assistant 2")


def _checked(found: Parsed | tuple[float, float]) -> Parsed:
    if isinstance(found, Parsed):
        return found
    bad = [s for s in found if not (MIN_SCORE <= s <= MAX_SCORE) or math.isnan(s)]
    if bad:
        return Parsed(None, f"score(s) {bad} outside {MIN_SCORE:g}-{MAX_SCORE:g}")
    return Parsed((float(found[0]), float(found[1])))


def _from_labels(text: str) -> tuple[float, float] | None:
    """The last score given to each of 'Assistant 1' and 'Assistant 2'."""
    last: dict[str, float] = {}
    for line in text.splitlines():
        for label in _LABEL.finditer(line):
            score = _score_after(line, label.end())
            if score is not None:
                last[label.group(1)] = score
    if "1" in last and "2" in last:
        return last["1"], last["2"]
    return None


def _score_after(line: str, start: int) -> float | None:
    m = _AFTER_LABEL.match(line, start)
    if m is None:
        return None
    bridge = m.group(1).lower()
    if "assistant" in bridge or _NEGATIVE.search(bridge):
        return None
    if any(w not in _BRIDGE_WORDS for w in re.findall(r"[a-z]+", bridge)):
        return None
    # Free text may follow the number only where the line says it is a score.
    said_score = _SCORE_WORD.search(line[: m.start(2)]) is not None
    if not said_score and not _SCORE_TAIL.match(line, m.end()):
        return None
    return float(m.group(2))


def _from_bare_pair(text: str) -> tuple[float, float] | None:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for line in (lines[-1], lines[0]) if lines else ():
        m = _BARE_PAIR.match(line)
        if m:
            return float(m.group(1)), float(m.group(2))
    return None


def _from_json(text: str) -> Parsed | tuple[float, float] | None:
    obj = _first_json_object(text)
    if obj is None:
        return None
    if isinstance(obj.get("scores"), list) and len(obj["scores"]) == 2:
        values = [_as_number(v) for v in obj["scores"]]
        if None not in values:
            return values[0], values[1]
    found: dict[str, float | None] = {}
    for key, value in obj.items():
        m = re.search(r"(?:assistant|score)[\s_#-]*([12])(?!\d)", str(key), re.IGNORECASE)
        if m:
            found[m.group(1)] = _as_number(value)
    if "1" in found and "2" in found:
        if found["1"] is None or found["2"] is None:
            return Parsed(None, "JSON scores are not numbers")
        return found["1"], found["2"]
    return None


def _first_json_object(text: str) -> dict[str, Any] | None:
    candidates = [text.strip(), *(m.group(1) for m in _JSON_FENCE.finditer(text))]
    for candidate in candidates:
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*" + _NUMBER + r"\s*(?:/\s*10)?\s*", value)
        return float(m.group(1)) if m else None
    return None


# ------------------------------------------------------------------------------------------
# Pairs
# ------------------------------------------------------------------------------------------


def make_pairs(
    pool: pd.DataFrame, teacher_answers: pd.DataFrame, student_answers: pd.DataFrame
) -> pd.DataFrame:
    """Pool rows with the teacher's and the student's answer (ANSWER_SCHEMA frames), in pool
    order. A failed or absent answer is None, and `missing` says which and why."""
    pool = pool.drop_duplicates("instruction_id")
    out = pool[["instruction_id", "instruction", "input"]].reset_index(drop=True).copy()
    missing: list[list[str]] = [[] for _ in range(len(out))]
    ids = out["instruction_id"]
    for who, answers in (("teacher", teacher_answers), ("student", student_answers)):
        by_id = answers.drop_duplicates("instruction_id", keep="last").set_index("instruction_id")
        present = ids.isin(by_id.index)
        rows = zip(present, ids.map(by_id["status"]), ids.map(by_id["answer"]), strict=True)
        column = []
        for i, (found, status, answer) in enumerate(rows):
            if not found:
                column.append(None)
                missing[i].append(f"no {who} answer")
            elif status != "ok" or _isnull(answer):
                column.append(None)
                error = by_id.at[ids[i], "error"]
                missing[i].append(f"{who} answer failed: {error or 'no text'}")
            else:
                column.append(answer)
        out[f"{who}_answer"] = column
    out["missing"] = ["; ".join(m) or None for m in missing]
    return out


def _isnull(value: Any) -> bool:
    """None, NaN or pd.NA (how a missing answer arrives, depending on the column's dtype)."""
    if value is None or isinstance(value, str):
        return value is None
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------
# One order
# ------------------------------------------------------------------------------------------


def order_messages(
    instruction: str, input: str | None, teacher: str, student: str, order: Order, json_mode: bool
) -> list[dict[str, str]]:
    """The referee prompt for one order: 1 = teacher as Assistant 1, 2 = student first."""
    first, second = (teacher, student) if order == 1 else (student, teacher)
    shown = instruction_text(instruction, input if isinstance(input, str) else "")
    return referee_messages(shown, first, second, json_mode=json_mode)


def reask_messages(
    original: list[dict[str, str]], bad_review: str, json_mode: bool
) -> list[dict[str, str]]:
    """A new conversation: the original prompt, the unparsable review, and the re-ask."""
    reask = REFEREE_REASK_JSON if json_mode else REFEREE_REASK
    return [
        *original,
        {"role": "assistant", "content": bad_review},
        {"role": "user", "content": reask},
    ]


def score_order(
    pairs: pd.DataFrame,
    client: Completer,
    cfg: RefereeConfig,
    order: Order,
    *,
    who: str = "referee",
) -> pd.DataFrame:
    """Review every pair in one order; rows in REFEREE_ORDER_SCHEMA, in `pairs` order.

    `pairs` has PAIR_COLUMNS (see `make_pairs`); a pair with a missing answer is not sent to the
    referee. Scores are per assistant (teacher_score, student_score), whichever was shown first.
    `who` names the asker in progress lines ("judge" when lion_core.evaluation.evaluate asks).
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    absent = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if absent:
        raise ValueError(f"referee pairs lack column(s) {absent}")
    response_format = "json_object" if cfg.json_mode else None
    rows: list[dict[str, Any]] = []
    pending: dict[int, list[dict[str, str]]] = {}  # row index -> original prompt
    for i, pair in enumerate(pairs.itertuples(index=False)):
        row = {
            "instruction_id": pair.instruction_id,
            "teacher_score": None,
            "student_score": None,
            "review": None,
            "status": "unscored",
            "error": None,
            "attempts": 0,
        }
        rows.append(row)
        reasons = [
            f"{who} answer missing"
            for who, answer in (("teacher", pair.teacher_answer), ("student", pair.student_answer))
            if _isnull(answer)
        ]
        if reasons:
            detail = getattr(pair, "missing", None)
            detail = "; ".join(reasons) if _isnull(detail) else detail
            row["error"] = f"{MISSING_ANSWER}: {detail}"
            continue
        pending[i] = order_messages(
            pair.instruction,
            pair.input,
            pair.teacher_answer,
            pair.student_answer,
            order,
            cfg.json_mode,
        )

    # First asks, then re-asks of the reviews that could not be parsed, each round batched.
    asks = {i: msgs for i, msgs in pending.items()}
    for attempt in range(cfg.reasks + 1):
        if not asks:
            break
        index = list(asks)
        requests = [
            ChatRequest.of(
                asks[i], tag=f"{rows[i]['instruction_id']}#{order}", response_format=response_format
            )
            for i in index
        ]
        what = f"{who} order {order}" + (f" re-ask {attempt}" if attempt else "")
        results = client.run(requests, desc=what)
        if len(results) != len(requests):
            raise LLMError(f"{what}: {len(requests)} requests but {len(results)} results")
        next_asks: dict[int, list[dict[str, str]]] = {}
        for i, result in zip(index, results, strict=True):
            row = rows[i]
            row["attempts"] += 1
            if not result.ok:
                row["error"] = f"{REQUEST_FAILED}: {result.error or 'no error message'}"
                continue
            row["review"] = result.text
            parsed = parse_review(result.text)
            if parsed.ok:
                first, second = parsed.scores
                teacher, student = (first, second) if order == 1 else (second, first)
                row.update(teacher_score=teacher, student_score=student, status="scored")
                row["error"] = None
            else:
                row["error"] = f"{UNPARSABLE}: {parsed.reason} (after {row['attempts']} attempt(s))"
                next_asks[i] = reask_messages(pending[i], result.text or "", cfg.json_mode)
        asks = next_asks
    return pd.DataFrame(rows, columns=REFEREE_ORDER_SCHEMA.names).astype(
        {"teacher_score": "float64", "student_score": "float64", "attempts": "int32"}
    )


# ------------------------------------------------------------------------------------------
# Both orders
# ------------------------------------------------------------------------------------------


def combine(order1: pd.DataFrame, order2: pd.DataFrame) -> pd.DataFrame:
    """Join the two orders into REFEREE_SCHEMA rows (order-1 row order, then any pair only
    order 2 has). A pair is scored only if both orders are; otherwise it is unscored with the
    reasons of both orders in `error`, and its mean scores are null, never a tie.

    Column-wise (one reindex per order): a paper-scale Cache Pool of 52K pairs took 37 s row
    by row, most of it in `DataFrame.loc` (docs/scale.md)."""
    one, two = (_by_id(o.drop_duplicates("instruction_id")) for o in (order1, order2))
    # Membership by Python sets: pandas' `isin` on Arrow-backed strings loops in Python too,
    # and slower (2.6 s of this function's 2.9 s at 52K pairs).
    known = set(one.index)
    ids = pd.Index([*one.index, *(i for i in two.index if i not in known)], dtype=object)
    floats = [f.name for f in REFEREE_SCHEMA if str(f.type) == "double"]
    if ids.empty:  # text columns stay object: callers write error texts into them
        return pd.DataFrame(columns=REFEREE_SCHEMA.names).astype(dict.fromkeys(floats, "float64"))
    frame = pd.DataFrame({"instruction_id": ids.to_numpy(dtype=object)})
    errors: list[list[str]] = [[] for _ in range(len(ids))]
    scored = np.ones(len(ids), dtype=bool)
    for k, side in ((1, one), (2, two)):
        members = set(side.index)
        present = np.fromiter((i in members for i in ids), dtype=bool, count=len(ids))
        side = side.reindex(ids)
        for who in ("teacher", "student"):
            frame[f"{who}_score_{k}"] = pd.to_numeric(side[f"{who}_score"]).to_numpy(float)
        review = side["review"].to_numpy(dtype=object)
        frame[f"review_{k}"] = [None if _isnull(v) else v for v in review]
        failed = present & ~side["status"].eq("scored").fillna(False).to_numpy(dtype=bool)
        for at in np.flatnonzero(~present):
            errors[at].append(f"{MISSING_REVIEW}: order {k} has no review")
        for at, error in zip(np.flatnonzero(failed), side["error"].to_numpy()[failed], strict=True):
            errors[at].append(_with_order(error, k))
        scored &= present & ~failed
    for who in ("teacher", "student"):
        mean = (frame[f"{who}_score_1"] + frame[f"{who}_score_2"]) / 2
        frame[f"{who}_score"] = mean.where(scored)
    frame["status"] = np.where(scored, "scored", "unscored")
    frame["error"] = [_merge_errors(e) if e else None for e in errors]
    return frame[REFEREE_SCHEMA.names].astype(dict.fromkeys(floats, "float64"))


def _by_id(order: pd.DataFrame) -> pd.DataFrame:
    return order.set_index(pd.Index(order["instruction_id"].to_numpy(dtype=object), dtype=object))


def _with_order(error: Any, k: int) -> str:
    """'code: detail' -> 'code: order k: detail' (the code stays first for counting)."""
    text = "unscored" if _isnull(error) else str(error)
    code, sep, detail = text.partition(": ")
    return f"{code}: order {k}: {detail}" if sep else f"{text} (order {k})"


def _merge_errors(errors: Sequence[str]) -> str:
    # Both orders miss the same answer for the same reason: say it once.
    if len(errors) == 2 and all(e.startswith(MISSING_ANSWER) for e in errors):
        return errors[0].replace(": order 1: ", ": ", 1)
    return "; ".join(errors)


def unscored_reason(error: str | None) -> str:
    """The reason code of an unscored pair's error (missing_answer, request_failed, ...)."""
    if not error:
        return "unknown"
    return error.split(":", 1)[0].strip() or "unknown"


__all__ = [
    "PAIR_COLUMNS",
    "Parsed",
    "combine",
    "make_pairs",
    "order_messages",
    "parse_review",
    "parse_scores",
    "reask_messages",
    "score_order",
    "unscored_reason",
]
