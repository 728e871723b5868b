"""The referee: score parsing (variants accepted, nonsense rejected), re-asks, the combination
of both orders (unscored is never a tie), and, through the real offline server and LLMClient,
the positional swap cancelling an injected bias and garbled reviews counted as unscored."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pandas as pd
import pytest

from lion_core.config import RefereeConfig
from lion_core.llm.types import ChatRequest, ChatResult, request_key
from lion_core.method.prompts import REFEREE_REASK, REFEREE_REASK_JSON
from lion_core.method.referee import (
    combine,
    make_pairs,
    parse_review,
    parse_scores,
    score_order,
    unscored_reason,
)
from lion_core.run.schemas import (
    REFEREE_ORDER_SCHEMA,
    REFEREE_SCHEMA,
    conform,
    instruction_id,
    seed_row,
)

# ------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------

ACCEPTED = [
    (
        "Evaluation evidence: both answer, 1 is more detailed.\n"
        "Score of the Assistant 1: 8\nScore of the Assistant 2: 7",
        (8.0, 7.0),
    ),
    ("Assistant 1: 8/10\nAssistant 2: 6.5/10", (8.0, 6.5)),
    ("Fine work.\nScore for Assistant 1 is 7.5\nScore for Assistant 2 is 9.", (7.5, 9.0)),
    ("**Assistant 1**: 8\n**Assistant 2**: 3", (8.0, 3.0)),
    ("**Score of the Assistant 1:** 8.5/10\n**Score of the Assistant 2:** 4/10", (8.5, 4.0)),
    ("Assistant 1's score: 9\nAssistant 2's score: 2", (9.0, 2.0)),
    ("Assistant 1: 8, Assistant 2: 7", (8.0, 7.0)),
    (
        "Assistant 1 receives a score of 9 out of 10, while Assistant 2 receives 4 out of 10.",
        (9, 4),
    ),
    ("Assistant #1 - 8\nAssistant #2 - 5", (8.0, 5.0)),
    # old Vicuna format: the two scores alone on a line (last line, or first)
    ("Both answers are correct but the first is clearer.\n8 7", (8.0, 7.0)),
    ("9 6\nAssistant 1 explains the steps; Assistant 2 skips them.", (9.0, 6.0)),
    ("Explanation.\n8/10, 7.5/10", (8.0, 7.5)),
    # JSON (json mode), bare or fenced, numbers or numeric strings
    ('{"evaluation_evidence": "x", "score_assistant_1": 9, "score_assistant_2": 4}', (9.0, 4.0)),
    ('Here:\n```json\n{"score_assistant_1": "8.5/10", "score_assistant_2": 4}\n```', (8.5, 4)),
    ('{"scores": [7, 3], "why": "first is better"}', (7.0, 3.0)),
    ('{"Assistant 1": 6, "Assistant 2": 10}', (6.0, 10.0)),
    # mentions of the assistants with numbers before the score lines are not scores
    (
        "Assistant 1 lists 3 reasons and Assistant 2 lists 2 reasons.\n"
        "Score of the Assistant 1: 8\nScore of the Assistant 2: 6",
        (8.0, 6.0),
    ),
    # the last score line per assistant wins (a corrected score)
    ("Assistant 1: 6\nAssistant 2: 5\nOn reflection:\nAssistant 1: 7\nAssistant 2: 5", (7, 5)),
    # free text after the number when the line says it is a score
    (
        "Score of the Assistant 1: 8 because it is detailed\nScore of the Assistant 2: 4 (vague)",
        (8, 4),
    ),
]

REJECTED = [
    ("", "empty"),
    ("I cannot decide which one is better.", "no score"),
    ("Score of the Assistant 1: 8", "no score"),  # one score only
    ("Score of the Assistant 1: 11\nScore of the Assistant 2: 7", "outside"),
    ("Score of the Assistant 1: 0\nScore of the Assistant 2: 7", "outside"),
    ("Score of the Assistant 1: -2\nScore of the Assistant 2: 7", "no score"),
    ("Assistant 1 scored 100 points. Assistant 2: 7", "no score"),
    ("Assistant 1 lists 3 reasons and Assistant 2 lists 2.", "no score"),
    ('{"score_assistant_1": 12, "score_assistant_2": 4}', "outside"),
    ('{"score_assistant_1": "good", "score_assistant_2": 4}', "not numbers"),
    ('{"score_assistant_1": true, "score_assistant_2": 4}', "not numbers"),
    ("#$%@!! ~~ <garbled> 7 3 ##", "no score"),
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED)
def test_parse_accepts_common_variants(text, expected):
    assert parse_scores(text) == (float(expected[0]), float(expected[1]))


@pytest.mark.parametrize(("text", "reason"), REJECTED)
def test_parse_rejects_what_cannot_be_trusted(text, reason):
    parsed = parse_review(text)
    assert parsed.scores is None
    assert reason in parsed.reason


# ------------------------------------------------------------------------------------------
# score_order and combine with a scripted completer
# ------------------------------------------------------------------------------------------


class Scripted:
    """A Completer that answers each request with `answer(request)` (text or a failure)."""

    def __init__(self, answer: Callable[[ChatRequest], ChatResult | str]) -> None:
        self.answer = answer
        self.requests: list[ChatRequest] = []
        self.batches: list[str] = []

    def run(self, requests: Sequence[ChatRequest], *, desc: str = "") -> list[ChatResult]:
        self.batches.append(desc)
        out = []
        for req in requests:
            self.requests.append(req)
            got = self.answer(req)
            key = request_key("m", req.message_dicts(), {"sample": req.sample})
            if isinstance(got, ChatResult):
                out.append(got)
            else:
                out.append(ChatResult(key=key, tag=req.tag, status="ok", text=got))
        return out


def _pairs(n: int = 3) -> pd.DataFrame:
    rows = []
    for i in range(n):
        instr = f"Question {i}?"
        rows.append(
            {
                "instruction_id": instruction_id(instr),
                "instruction": instr,
                "input": "",
                "teacher_answer": f"TEACHER answer {i}",
                "student_answer": f"STUDENT answer {i}",
            }
        )
    return pd.DataFrame(rows)


def _shown(req: ChatRequest) -> tuple[str, str]:
    """Who is Assistant 1 and who Assistant 2 in a referee prompt."""
    user = req.messages[1][1]
    first = user.split("[The Start of Assistant 1's Answer]\n", 1)[1].split("\n", 1)[0]
    return ("teacher", "student") if first.startswith("TEACHER") else ("student", "teacher")


def _biased_referee(bias: float, teacher: float = 8.0, student: float = 5.0):
    """Scores teacher/student, plus `bias` for whoever is shown first."""

    def answer(req: ChatRequest) -> str:
        first, second = _shown(req)
        true = {"teacher": teacher, "student": student}
        return (
            f"Evaluation evidence: fine.\nScore of the Assistant 1: {true[first] + bias}\n"
            f"Score of the Assistant 2: {true[second]}"
        )

    return answer


def test_orders_map_scores_back_to_teacher_and_student():
    client = Scripted(_biased_referee(bias=1.0))
    cfg = RefereeConfig()
    one = score_order(_pairs(), client, cfg, 1)
    two = score_order(_pairs(), client, cfg, 2)
    assert list(one.columns) == REFEREE_ORDER_SCHEMA.names
    conform(one, REFEREE_ORDER_SCHEMA, "order 1")  # storable as is
    assert (one["teacher_score"] == 9.0).all() and (one["student_score"] == 5.0).all()
    assert (two["teacher_score"] == 8.0).all() and (two["student_score"] == 6.0).all()
    assert (one["status"] == "scored").all() and (one["attempts"] == 1).all()
    both = combine(one, two)
    conform(both, REFEREE_SCHEMA, "referee")
    assert (both["teacher_score"] == 8.5).all() and (both["student_score"] == 5.5).all()
    assert both["review_1"].str.contains("Score of the Assistant 1: 9.0").all()
    # one batch per order, json mode off: no response_format
    assert client.batches == ["referee order 1", "referee order 2"]
    assert all(r.response_format is None for r in client.requests)


def test_unparsable_review_is_reasked_as_a_new_conversation():
    calls: dict[str, int] = {}

    def answer(req: ChatRequest) -> str:
        iid = req.tag
        calls[iid] = calls.get(iid, 0) + 1
        if req.tag.startswith(_pairs().instruction_id[0]) and calls[iid] == 1:
            return "I think both are good answers!"
        return "Score of the Assistant 1: 7\nScore of the Assistant 2: 3"

    client = Scripted(answer)
    out = score_order(_pairs(), client, RefereeConfig(reasks=1), 1)
    assert (out["status"] == "scored").all()
    assert out["attempts"].tolist() == [2, 1, 1]
    reask = client.requests[-1]
    assert len(client.requests) == 4 and client.batches[-1] == "referee order 1 re-ask 1"
    roles = [role for role, _ in reask.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert reask.messages[:2] == client.requests[0].messages
    assert reask.messages[2][1] == "I think both are good answers!"
    assert reask.messages[3][1] == REFEREE_REASK


def test_still_unparsable_after_reasks_is_unscored_not_a_tie():
    client = Scripted(lambda req: "no scores here, sorry")
    out = score_order(_pairs(2), client, RefereeConfig(reasks=2), 2)
    assert (out["status"] == "unscored").all() and (out["attempts"] == 3).all()
    assert out["teacher_score"].isna().all() and out["student_score"].isna().all()
    assert out["error"].str.startswith("unparsable: no score lines").all()
    assert (out["review"] == "no scores here, sorry").all()
    assert len(client.requests) == 6

    ok = score_order(_pairs(2), Scripted(_biased_referee(0.0)), RefereeConfig(), 1)
    both = combine(ok, out)
    assert (both["status"] == "unscored").all()
    assert both["teacher_score"].isna().all() and both["student_score"].isna().all()
    # the order that did score keeps its scores; the reason names the failing order
    assert (both["teacher_score_1"] == 8.0).all() and both["teacher_score_2"].isna().all()
    assert both["error"].str.startswith("unparsable: order 2:").all()
    assert {unscored_reason(e) for e in both["error"]} == {"unparsable"}


def test_failed_request_is_unscored_and_not_reasked():
    def answer(req: ChatRequest) -> ChatResult | str:
        if req.tag.startswith(_pairs().instruction_id[1]):
            return ChatResult(
                key="k", tag=req.tag, status="failed", error="HTTP 500 after 6 retries"
            )
        return "Score of the Assistant 1: 7\nScore of the Assistant 2: 3"

    client = Scripted(answer)
    out = score_order(_pairs(), client, RefereeConfig(reasks=1), 1)
    assert out["status"].tolist() == ["scored", "unscored", "scored"]
    assert out.loc[1, "error"] == "request_failed: HTTP 500 after 6 retries"
    assert len(client.requests) == 3  # the client already retried; no re-ask of a failure


def test_missing_answer_is_unscored_without_asking():
    pool = _pairs(3)[["instruction_id", "instruction", "input"]].assign(
        reference=None, source="seed", parent_id=None, round=0
    )
    ids = pool["instruction_id"].tolist()

    def answers(who: str, failed: set[int], absent: set[int]) -> pd.DataFrame:
        rows = [
            {
                "instruction_id": iid,
                "answer": None if i in failed else f"{who.upper()} answer {i}",
                "status": "failed" if i in failed else "ok",
                "error": "timeout" if i in failed else None,
            }
            for i, iid in enumerate(ids)
            if i not in absent
        ]
        return pd.DataFrame(rows)

    pairs = make_pairs(pool, answers("teacher", {1}, set()), answers("student", set(), {2}))
    assert pairs["teacher_answer"].isna().tolist() == [False, True, False]
    assert pairs["student_answer"].isna().tolist() == [False, False, True]
    client = Scripted(_biased_referee(0.0))
    one = score_order(pairs, client, RefereeConfig(), 1)
    two = score_order(pairs, client, RefereeConfig(), 2)
    assert len(client.requests) == 2  # only the complete pair, once per order
    both = combine(one, two)
    assert both["status"].tolist() == ["scored", "unscored", "unscored"]
    assert both.loc[1, "error"] == "missing_answer: teacher answer failed: timeout"
    assert both.loc[2, "error"] == "missing_answer: no student answer"


def test_json_mode_asks_for_json_and_reasks_for_json():
    seen: list[ChatRequest] = []

    def answer(req: ChatRequest) -> str:
        seen.append(req)
        if len(req.messages) == 2:
            return '{"evaluation_evidence": "the first is better", "score_assistant_1": 9}'
        return json.dumps({"score_assistant_1": 9, "score_assistant_2": 4})

    out = score_order(_pairs(1), Scripted(answer), RefereeConfig(json_mode=True), 1)
    assert out.loc[0, "status"] == "scored" and out.loc[0, "student_score"] == 4.0
    assert all(r.response_format == "json_object" for r in seen)
    assert "JSON" in seen[0].messages[1][1] and seen[-1].messages[-1][1] == REFEREE_REASK_JSON


def test_combine_keeps_order_and_flags_a_missing_order():
    client = Scripted(_biased_referee(0.0))
    one = score_order(_pairs(3), client, RefereeConfig(), 1)
    two = score_order(_pairs(3).iloc[[2, 0]], client, RefereeConfig(), 2)
    both = combine(one, two)
    assert both["instruction_id"].tolist() == one["instruction_id"].tolist()
    assert both["status"].tolist() == ["scored", "unscored", "scored"]
    assert both.loc[1, "error"] == "missing_review: order 2 has no review"


def _combine_row_by_row(order1: pd.DataFrame, order2: pd.DataFrame) -> pd.DataFrame:
    """combine's rule, one pair at a time (as it was written before it went column-wise)."""
    from lion_core.method.referee import MISSING_REVIEW, _merge_errors, _with_order

    one = order1.drop_duplicates("instruction_id").set_index("instruction_id")
    two = order2.drop_duplicates("instruction_id").set_index("instruction_id")
    rows = []
    for iid in [*one.index, *(i for i in two.index if i not in one.index)]:
        row, errors = {"instruction_id": iid}, []
        for k, df in ((1, one), (2, two)):
            side = df.loc[iid] if iid in df.index else None
            if side is None:
                row.update({f"teacher_score_{k}": None, f"student_score_{k}": None})
                row[f"review_{k}"] = None
                errors.append(f"{MISSING_REVIEW}: order {k} has no review")
                continue
            row[f"teacher_score_{k}"] = side["teacher_score"]
            row[f"student_score_{k}"] = side["student_score"]
            row[f"review_{k}"] = None if pd.isna(side["review"]) else side["review"]
            if side["status"] != "scored":
                errors.append(_with_order(side["error"], k))
        if errors:
            row.update(teacher_score=None, student_score=None, status="unscored")
            row["error"] = _merge_errors(errors)
        else:
            for who in ("teacher", "student"):
                row[f"{who}_score"] = (row[f"{who}_score_1"] + row[f"{who}_score_2"]) / 2
            row.update(status="scored", error=None)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=REFEREE_SCHEMA.names)
    floats = [f.name for f in REFEREE_SCHEMA if str(f.type) == "double"]
    return frame.astype(dict.fromkeys(floats, "float64"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_combine_column_wise_matches_pair_by_pair(seed):
    """Orders with missing pairs, duplicates, unscored rows (with and without an error text),
    null reviews and both orders missing the same answer: combine equals the pair-by-pair rule."""
    import random

    rng = random.Random(seed)
    errors = [None, "request_failed: 500", "missing_answer: the student has none", "garbled"]

    def order(ids: list[str]) -> pd.DataFrame:
        rows = []
        for iid in ids:
            ok = rng.random() < 0.7
            rows.append({
                "instruction_id": iid,
                "teacher_score": float(rng.randint(1, 10)) if ok or rng.random() < 0.3 else None,
                "student_score": float(rng.randint(1, 10)) if ok else None,
                "review": rng.choice([None, "Scores: 8 3", "x"]),
                "status": "scored" if ok else "unscored",
                "error": None if ok else rng.choice(errors),
                "attempts": 1,
            })  # fmt: skip
        return pd.DataFrame(rows)

    ids = [f"i{n}" for n in range(300)]
    one = order([i for i in ids if rng.random() < 0.9] + ["i3", "i3"])
    two = order([i for i in reversed(ids) if rng.random() < 0.9])
    both = combine(one, two)
    pd.testing.assert_frame_equal(both, _combine_row_by_row(one, two))
    # A nullable string status (pd.NA where an order lacks a pair) reads the same.
    pd.testing.assert_frame_equal(combine(one, two.astype({"status": "string"})), both)
    assert set(both["status"]) == {"scored", "unscored"}
    assert both["error"].str.contains("missing_review").any()
    empty = combine(one.iloc[:0], two.iloc[:0])
    pd.testing.assert_frame_equal(empty, _combine_row_by_row(one.iloc[:0], two.iloc[:0]))


def test_bad_order_and_bad_pairs_are_refused():
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        score_order(_pairs(1), Scripted(lambda r: ""), RefereeConfig(), 3)
    with pytest.raises(ValueError, match="student_answer"):
        score_order(
            _pairs(1).drop(columns="student_answer"), Scripted(lambda r: ""), RefereeConfig(), 1
        )


# ------------------------------------------------------------------------------------------
# Through the real offline referee (HTTP server + LLMClient): garbled reviews
# ------------------------------------------------------------------------------------------


def _world_pairs(n: int = 30) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Cache pool rows, teacher answers (right) and student answers (right or wrong)."""
    import random

    from lion_core.offline import FAMILIES, make_instance

    rng = random.Random(5)
    pool, teacher, student = [], [], []
    for i in range(n):
        inst = make_instance(FAMILIES[i % len(FAMILIES)], rng.randint(1, 3), rng)
        pool.append(seed_row(inst.instruction, inst.input))
        iid = pool[-1]["instruction_id"]
        teacher.append(
            {"instruction_id": iid, "answer": inst.answer, "status": "ok", "error": None}
        )
        wrong = inst.answer if i % 2 else inst.answer[::-1] + "0"
        student.append({"instruction_id": iid, "answer": wrong, "status": "ok", "error": None})
    return (
        pd.DataFrame(pool).astype({"round": "int32"}),
        pd.DataFrame(teacher),
        pd.DataFrame(student),
    )


def _offline_reviews(world, cfg: RefereeConfig, pairs: pd.DataFrame):
    from lion_core.llm.client import LLMClient
    from lion_core.offline import OfflineServer

    with OfflineServer(world) as server:
        client = LLMClient(cfg, role="referee", cache=None, base_url=server.base_url)
        one = score_order(pairs, client, cfg, 1)
        two = score_order(pairs, client, cfg, 2)
        return one, two, server.stats()["referee"]


def test_garbled_reviews_are_unscored_counted_and_recovered_by_a_reask():
    from lion_core.config import FaultsConfig, OfflineWorldConfig
    from lion_core.method.discriminate import split
    from lion_core.offline.roles import GARBLED_TEXT

    pool, teacher, student = _world_pairs()
    pairs = make_pairs(pool, teacher, student)
    garbling = OfflineWorldConfig(judge_noise=0.0, faults=FaultsConfig(rate_garbled=0.3))
    clean_world = OfflineWorldConfig(judge_noise=0.0)

    # no re-ask: every garbled review leaves its pair unscored, out of the split, counted
    cfg = RefereeConfig(reasks=0, concurrency=8)
    one, two, served = _offline_reviews(garbling, cfg, pairs)
    garbled = (one["review"] == GARBLED_TEXT).sum() + (two["review"] == GARBLED_TEXT).sum()
    assert served["requests"] == 2 * len(pool) and 0 < garbled < len(pool)
    both = combine(one, two)
    unscored = both[both["status"] == "unscored"]
    bad = set(one.loc[one["review"] == GARBLED_TEXT, "instruction_id"]) | set(
        two.loc[two["review"] == GARBLED_TEXT, "instruction_id"]
    )
    assert set(unscored["instruction_id"]) == bad
    assert unscored["teacher_score"].isna().all()
    assert unscored["error"].str.startswith("unparsable: order").all()
    hard, easy, stats = split(pool, teacher, student, both, tau=1.0)
    assert stats["unscored"] == len(bad) and stats["unscored_by_reason"] == {"unparsable": len(bad)}
    assert stats["hard"] + stats["easy"] == len(pool) - len(bad)
    assert not bad & (set(hard["instruction_id"]) | set(easy["instruction_id"]))

    # one re-ask: the world answers re-asks properly, so every pair is scored, exactly as
    # a referee that never garbled would score it
    cfg = RefereeConfig(reasks=1, concurrency=8)
    one, two, served = _offline_reviews(garbling, cfg, pairs)
    reasked = int((one["attempts"] == 2).sum() + (two["attempts"] == 2).sum())
    assert reasked > 0 and served["requests"] == 2 * len(pool) + reasked
    recovered = combine(one, two)
    assert (recovered["status"] == "scored").all()
    reference = combine(*_offline_reviews(clean_world, cfg, pairs)[:2])
    cols = ["teacher_score", "student_score"]
    pd.testing.assert_frame_equal(recovered[cols], reference[cols])


def test_json_mode_through_the_offline_referee():
    from lion_core.config import OfflineWorldConfig

    pool, teacher, student = _world_pairs(8)
    pairs = make_pairs(pool, teacher, student)
    world = OfflineWorldConfig(judge_noise=0.0)
    text = combine(*_offline_reviews(world, RefereeConfig(), pairs)[:2])
    as_json = combine(*_offline_reviews(world, RefereeConfig(json_mode=True), pairs)[:2])
    assert (as_json["status"] == "scored").all()
    assert as_json["review_1"].str.startswith("{").all()
    cols = ["teacher_score", "student_score"]
    pd.testing.assert_frame_equal(as_json[cols], text[cols])
