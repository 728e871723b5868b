"""Discrimination: the hard/easy split at tau, unscored pairs left out and counted, and the
round statistics (mean scores, ratio, positional bias, single-order gaps)."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import numbered_answers

from lion_core.config import RefereeConfig
from lion_core.llm.types import ChatResult
from lion_core.method.discriminate import split
from lion_core.method.referee import combine, make_pairs, score_order
from lion_core.run.schemas import SPLIT_SCHEMA, conform, seed_row


def _pool(n: int) -> pd.DataFrame:
    rows = [seed_row(f"Instruction number {i}.") for i in range(n)]
    return pd.DataFrame(rows).astype({"round": "int32"})


def _order(pool, scores, status=None, error=None) -> pd.DataFrame:
    """One order's frame from (teacher, student) score tuples (None = unscored)."""
    n = len(pool)
    return pd.DataFrame(
        {
            "instruction_id": pool["instruction_id"],
            "teacher_score": [s[0] if s else None for s in scores],
            "student_score": [s[1] if s else None for s in scores],
            "review": ["review"] * n,
            "status": status or ["scored" if s else "unscored" for s in scores],
            "error": error
            or [None if s else "unparsable: nothing (after 2 attempt(s))" for s in scores],
            "attempts": [1] * n,
        }
    )


def test_split_at_tau_with_unscored_left_out():
    pool = _pool(6)
    # true (teacher, student); order 1 adds +1 to the teacher (shown first), order 2 to the student
    truth = [(9, 7), (8, 7), (8, 7.5), (6, 8), (9, 2), (7, 7)]
    one = _order(pool, [(t + 1, s) for t, s in truth[:5]] + [None])
    two = _order(pool, [(t, s + 1) for t, s in truth])
    referee = combine(one, two)
    hard, easy, stats = split(
        pool, numbered_answers(pool, "T"), numbered_answers(pool, "S"), referee, tau=1.0
    )
    conform(hard, SPLIT_SCHEMA, "hard")
    conform(easy, SPLIT_SCHEMA, "easy")
    ids = pool["instruction_id"].tolist()
    # gap exactly tau (8 - 7) is hard; largest gap first
    assert hard["instruction_id"].tolist() == [ids[4], ids[0], ids[1]]
    assert hard["gap"].tolist() == [7.0, 2.0, 1.0]
    assert easy["instruction_id"].tolist() == [ids[2], ids[3]]
    assert hard.loc[0, "teacher_answer"] == "T 4" and hard.loc[0, "student_answer"] == "S 4"
    assert stats["hard"] == 3 and stats["easy"] == 2 and stats["unscored"] == 1
    assert stats["total"] == 6 and stats["hard_share"] == pytest.approx(0.6)
    assert stats["unscored_by_reason"] == {"unparsable": 1}
    scored = truth[:5]
    # each assistant gets the +1 in one order of two: both means rise by 0.5
    mean_t = sum(t for t, _ in scored) / 5 + 0.5
    mean_s = sum(s for _, s in scored) / 5 + 0.5
    assert stats["mean_teacher_score"] == pytest.approx(mean_t)
    assert stats["mean_student_score"] == pytest.approx(mean_s)
    assert stats["score_ratio"] == pytest.approx(mean_s / mean_t)
    # a +1 bias for the first-shown answer: estimated exactly, and cancelled in the mean gap
    assert stats["positional_bias"] == pytest.approx(1.0)
    assert stats["mean_gap"] == pytest.approx(mean_t - mean_s)
    assert stats["gap_order_1"] == pytest.approx(mean_t - mean_s + 1)
    assert stats["gap_order_2"] == pytest.approx(mean_t - mean_s - 1)


def test_tau_moves_the_boundary_and_nothing_unscored_becomes_easy():
    pool = _pool(4)
    scores = [(8, 7), (8, 7.5), (9, 5), None]
    referee = combine(_order(pool, scores), _order(pool, scores))
    for tau, n_hard in ((0.0, 3), (0.5, 3), (1.0, 2), (4.0, 1), (4.5, 0)):
        hard, easy, stats = split(
            pool, numbered_answers(pool, "T"), numbered_answers(pool, "S"), referee, tau
        )
        assert len(hard) == n_hard and len(easy) == 3 - n_hard
        assert stats["unscored"] == 1 and pool["instruction_id"][3] not in set(
            easy["instruction_id"]
        )


class FixedReferee:
    """A Completer whose every review scores Assistant 1 with 9 and Assistant 2 with 9."""

    def __init__(self) -> None:
        self.asked = 0

    def run(self, requests, *, desc=""):
        self.asked += len(requests)
        text = "Score of the Assistant 1: 9\nScore of the Assistant 2: 9"
        return [
            ChatResult(key=str(i), tag=r.tag, status="ok", text=text)
            for i, r in enumerate(requests)
        ]


def test_missing_answers_and_missing_reviews_are_counted_by_reason():
    pool = _pool(4)
    teacher = numbered_answers(pool, "TEACHER", failed={0})
    student = numbered_answers(pool, "STUDENT")
    pairs = make_pairs(pool, teacher, student)
    client = FixedReferee()
    one = score_order(pairs, client, RefereeConfig(), 1)
    two = score_order(pairs, client, RefereeConfig(), 2)
    assert client.asked == 6  # the pair without a teacher answer is never sent
    referee = combine(one, two).iloc[:3]  # the last pair has no referee row at all
    hard, easy, stats = split(pool, teacher, student, referee, tau=1.0)
    assert len(hard) == 0 and len(easy) == 2
    assert stats["unscored"] == 2 and stats["total"] == 4
    assert stats["unscored_by_reason"] == {"missing_answer": 1, "missing_review": 1}


def test_empty_split_has_empty_frames_and_null_means():
    pool = _pool(2)
    referee = combine(_order(pool, [None, None]), _order(pool, [None, None]))
    hard, easy, stats = split(
        pool, numbered_answers(pool, "T"), numbered_answers(pool, "S"), referee, 1.0
    )
    assert hard.empty and easy.empty and list(hard.columns) == SPLIT_SCHEMA.names
    conform(hard, SPLIT_SCHEMA, "hard")
    assert stats["hard_share"] is None and stats["mean_teacher_score"] is None
    assert stats["positional_bias"] is None and stats["score_ratio"] is None
    assert stats["unscored"] == 2


# ------------------------------------------------------------------------------------------
# Through the real offline referee (HTTP server + LLMClient)
# ------------------------------------------------------------------------------------------


def _world_round(n: int = 40):
    """A cache pool of world instructions, teacher answers worth 8 ("The answer is X."), and
    student answers that are right-but-wordy (8) or wrong to various degrees (1-7).
    No answer can reach 10, so a +2 bias is never clipped."""
    import random

    from lion_core.offline import FAMILIES, make_instance

    # Families with open answers: a wrong "yes"/"no" shares no character with the truth and
    # scores 1, where a -2 bias would be clipped.
    families = [f for f in FAMILIES if f not in ("parity", "compare")]
    rng = random.Random(11)
    rows, teacher, student = [], [], []
    for i in range(n):
        inst = make_instance(families[i % len(families)], rng.randint(1, 4), rng)
        rows.append(seed_row(inst.instruction, inst.input, inst.answer))
        teacher.append(f"The answer is {inst.answer}.")
        if i % 3 == 0:
            student.append(f"The answer is {inst.answer}.")
        else:
            wrong = inst.answer[::-1] if i % 3 == 1 else inst.answer[: len(inst.answer) // 2]
            student.append(wrong + "x")
    pool = pd.DataFrame(rows).astype({"round": "int32"})

    def frame(texts):
        return pd.DataFrame(
            {
                "instruction_id": pool["instruction_id"],
                "answer": texts,
                "status": "ok",
                "error": None,
            }
        )

    return pool, frame(teacher), frame(student)


def _review(world_cfg, pool, teacher, student, cfg=None):
    from lion_core.llm.client import LLMClient
    from lion_core.offline import OfflineServer

    cfg = cfg or RefereeConfig(concurrency=8)
    pairs = make_pairs(pool, teacher, student)
    with OfflineServer(world_cfg) as server:
        client = LLMClient(cfg, role="referee", cache=None, base_url=server.base_url)
        one = score_order(pairs, client, cfg, 1)
        two = score_order(pairs, client, cfg, 2)
        stats = server.stats()
    return combine(one, two), stats


def test_positional_swap_cancels_an_injected_bias():
    from lion_core.config import OfflineWorldConfig

    pool, teacher, student = _world_round()
    fair, _ = _review(
        OfflineWorldConfig(positional_bias=0.0, judge_noise=0.0), pool, teacher, student
    )
    biased, served = _review(
        OfflineWorldConfig(positional_bias=2.0, judge_noise=0.0), pool, teacher, student
    )
    assert served["referee"]["requests"] == 2 * len(pool)
    assert (fair["status"] == "scored").all() and (biased["status"] == "scored").all()
    fair_gap = fair["teacher_score"] - fair["student_score"]
    biased_gap = biased["teacher_score"] - biased["student_score"]
    # per pair, the averaged gap is exactly the unbiased one; each order alone is off by 2
    assert biased_gap.to_numpy() == pytest.approx(fair_gap.to_numpy(), abs=1e-9)
    gap_1 = biased["teacher_score_1"] - biased["student_score_1"]
    gap_2 = biased["teacher_score_2"] - biased["student_score_2"]
    assert gap_1.to_numpy() == pytest.approx((fair_gap + 2).to_numpy(), abs=1e-9)
    assert gap_2.to_numpy() == pytest.approx((fair_gap - 2).to_numpy(), abs=1e-9)

    hard_f, easy_f, stats_f = split(pool, teacher, student, fair, tau=1.0)
    hard_b, easy_b, stats_b = split(pool, teacher, student, biased, tau=1.0)
    assert set(hard_b["instruction_id"]) == set(hard_f["instruction_id"])
    assert set(easy_b["instruction_id"]) == set(easy_f["instruction_id"])
    assert 0 < stats_b["hard"] < len(pool)
    assert stats_b["positional_bias"] == pytest.approx(2.0)
    assert stats_f["positional_bias"] == pytest.approx(0.0)
    assert stats_b["mean_gap"] == pytest.approx(stats_f["mean_gap"])
    assert stats_b["gap_order_1"] == pytest.approx(stats_f["mean_gap"] + 2)
    assert stats_b["gap_order_2"] == pytest.approx(stats_f["mean_gap"] - 2)
    # a single order would have misfiled pairs: order 1 alone calls every pair hard
    assert (gap_1 >= 1.0).sum() == len(pool) > stats_b["hard"]
    assert (gap_2 >= 1.0).sum() < stats_b["hard"]
