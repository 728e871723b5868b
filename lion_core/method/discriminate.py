"""Discrimination: split the Cache Pool into hard and easy instructions by the referee's scores.

gap = teacher score - student score (each the mean over both orders); hard if gap >= tau, easy
otherwise. Unscored pairs are in neither set: they are counted, by reason, in the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from lion_core.method.referee import unscored_reason
from lion_core.run.schemas import POOL_SCHEMA, REFEREE_SCHEMA, SPLIT_SCHEMA

REFEREE_COLUMNS = REFEREE_SCHEMA.names

# Scores are means of halves and quarters; tolerate float noise at the threshold so that a gap
# of exactly tau (say 8.5 - 7.5) is hard, as the paper's ">= 1" intends.
EPS = 1e-9


def split(
    pool: pd.DataFrame,
    teacher_answers: pd.DataFrame,
    student_answers: pd.DataFrame,
    referee: pd.DataFrame,
    tau: float,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Hard and easy instructions (SPLIT_SCHEMA, largest gap first) and the round's statistics.

    `pool` is the Cache Pool (POOL_SCHEMA), the answers are ANSWER_SCHEMA frames and `referee`
    is `referee.combine`'s REFEREE_SCHEMA frame. A pool instruction without a referee row counts
    as unscored (reason missing_review).
    """
    pool = pool.drop_duplicates("instruction_id")[POOL_SCHEMA.names].reset_index(drop=True)
    ref = referee.drop_duplicates("instruction_id").set_index("instruction_id")
    joined = pool.join(ref, on="instruction_id", how="left")
    joined["status"] = joined["status"].fillna("unscored")
    joined.loc[joined["error"].isna() & (joined["status"] != "scored"), "error"] = (
        "missing_review: no referee row"
    )
    for who, answers in (("teacher", teacher_answers), ("student", student_answers)):
        ok = answers[answers["status"] == "ok"].drop_duplicates("instruction_id", keep="last")
        joined[f"{who}_answer"] = joined["instruction_id"].map(
            ok.set_index("instruction_id")["answer"]
        )

    scored = joined[joined["status"] == "scored"].copy()
    unscored = joined[joined["status"] != "scored"]
    scored["gap"] = scored["teacher_score"] - scored["student_score"]
    scored = scored.sort_values(
        ["gap", "teacher_score", "instruction_id"], ascending=[False, False, True], kind="stable"
    )
    is_hard = scored["gap"] >= tau - EPS
    hard = scored[is_hard][SPLIT_SCHEMA.names].reset_index(drop=True)
    easy = scored[~is_hard][SPLIT_SCHEMA.names].reset_index(drop=True)
    stats = split_stats(scored, unscored, tau, n_hard=len(hard))
    return hard, easy, stats


def split_stats(
    scored: pd.DataFrame, unscored: pd.DataFrame, tau: float, *, n_hard: int
) -> dict[str, Any]:
    """Counts, mean scores, the student-to-teacher ratio and the referee's positional bias.

    positional_bias: mean score of the answer shown first minus the one shown second, over both
    orders (order 1 shows the teacher first, order 2 the student), i.e.
    mean((t1 - s1) + (s2 - t2)) / 2. gap_order_1 and gap_order_2 are the teacher-minus-student
    gaps each order alone would give: a bias b shifts them by +b and -b, and their mean, the
    gap the split uses, by nothing.
    """
    n_scored = len(scored)
    t1, s1 = scored["teacher_score_1"], scored["student_score_1"]
    t2, s2 = scored["teacher_score_2"], scored["student_score_2"]
    mean_teacher = _mean(scored["teacher_score"])
    mean_student = _mean(scored["student_score"])
    reasons = unscored["error"].map(unscored_reason).value_counts().sort_index()
    return {
        "tau": float(tau),
        "total": n_scored + len(unscored),
        "hard": n_hard,
        "easy": n_scored - n_hard,
        "unscored": len(unscored),
        "unscored_by_reason": {str(k): int(v) for k, v in reasons.items()},
        "hard_share": n_hard / n_scored if n_scored else None,
        "mean_teacher_score": mean_teacher,
        "mean_student_score": mean_student,
        "score_ratio": (
            mean_student / mean_teacher if mean_teacher and mean_student is not None else None
        ),
        "mean_gap": _mean(scored["teacher_score"] - scored["student_score"]),
        "gap_order_1": _mean(t1 - s1),
        "gap_order_2": _mean(t2 - s2),
        "positional_bias": positional_bias(scored),
    }


def positional_bias(scored: pd.DataFrame) -> float | None:
    """Mean score of the answer shown first minus the one shown second, over both orders:
    mean((t1 - s1) + (s2 - t2)) / 2 over scored REFEREE_SCHEMA rows (None if there are none)."""
    t1, s1 = scored["teacher_score_1"], scored["student_score_1"]
    t2, s2 = scored["teacher_score_2"], scored["student_score_2"]
    return _mean(((t1 - s1) + (s2 - t2)) / 2)


def _mean(values: pd.Series) -> float | None:
    if len(values) == 0:
        return None
    m = float(values.mean())
    return None if math.isnan(m) else m


# (instruction, input, student answer) -> is the answer right? None where nobody knows.
Truth = Callable[[str, str, str | None], bool | None]


def split_truth(hard: pd.DataFrame, easy: pd.DataFrame, truth: Truth) -> dict[str, Any]:
    """The split against the truth, where it is known (the offline world knows every answer):
    `hard_precision` = share of the hard instructions whose student answer is actually wrong,
    `easy_precision` = share of the easy ones whose student answer is actually right, and
    `truth_known` = how many of the split's instructions the truth covered. A referee that
    measures the student's ability has both near 1."""
    counts = {}
    for name, frame, want in (("hard", hard, False), ("easy", easy, True)):
        known = agree = 0
        for row in frame.itertuples(index=False):
            inp = row.input if isinstance(row.input, str) else ""
            right = truth(str(row.instruction), inp, row.student_answer)
            if right is None:
                continue
            known += 1
            agree += right is want
        counts[name] = (known, agree)
    (kh, ah), (ke, ae) = counts["hard"], counts["easy"]
    return {
        "truth_known": kh + ke,
        "hard_precision": ah / kh if kh else None,
        "easy_precision": ae / ke if ke else None,
    }


def uniform_split(
    pool: pd.DataFrame, hard_share: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The paper's "remove the referee" ablation: the Cache Pool split into "hard" and "easy"
    seeds uniformly at random (`hard_share` of them "hard"), with no answer compared and no
    referee asked, so generation gets the same prompts in the same numbers as Lion's loop but
    none of the referee's information. SPLIT_SCHEMA frames with empty scores."""
    pool = pool.drop_duplicates("instruction_id")[POOL_SCHEMA.names]
    pool = pool.sort_values("instruction_id", kind="stable").reset_index(drop=True)
    order = np.random.default_rng([seed, 0x0A1F]).permutation(len(pool))
    n_hard = math.floor(hard_share * len(pool) + 0.5)
    frame = pool.iloc[order].reindex(columns=SPLIT_SCHEMA.names).reset_index(drop=True)
    hard, easy = frame.iloc[:n_hard].reset_index(drop=True), frame.iloc[n_hard:]
    empty = pd.DataFrame(columns=REFEREE_COLUMNS)
    stats = split_stats(empty, empty.assign(error=pd.Series(dtype=str)), 0.0, n_hard=len(hard))
    return hard, easy.reset_index(drop=True), {**stats, "easy": len(easy), "total": len(pool)}
