"""Diversity of a round's generation: ROUGE-L quantiles of kept and dropped candidates, the
dropped share, seed categories of the new instructions, and the warnings at their thresholds."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from helpers import logged
from rouge_score import rouge_scorer

from lion_core.method.diversity import (
    CATEGORY_WARN,
    DROPPED_WARN,
    FAMILY,
    LINEAGE,
    categorize,
    diversity,
    log_warnings,
)
from lion_core.run.records import NewInstructions, RoundSummary
from lion_core.run.schemas import GENERATED_SCHEMA, instruction_id, pool_frame, seed_row


def _generated_row(text: str, status: str, parent: str, source: str = "hard") -> dict:
    return {
        "instruction_id": instruction_id(text, ""),
        "instruction": text,
        "input": "",
        "reference": None,
        "source": source,
        "parent_id": parent,
        "round": 2,
        "status": status,
        "error": None,
        "request_key": f"k-{text}",
    }


def _child(text: str, parent: dict, round: int = 1) -> dict:
    row = seed_row(text)
    row.update(source="hard", parent_id=parent["instruction_id"], round=round)
    return row


S1 = seed_row("alpha beta gamma delta")
S2 = seed_row("one two three four")
G1 = _child("alpha beta gamma epsilon", S1)  # round 1's new instruction, from seed S1
POOL = pool_frame([S1, S2, G1])


def _round_two(statuses: list[tuple[str, str, dict]]) -> pd.DataFrame:
    rows = [_generated_row(t, s, p["instruction_id"]) for t, s, p in statuses]
    return pd.DataFrame(rows, columns=GENERATED_SCHEMA.names)


def test_statistics_of_a_small_round_by_hand():
    generated = _round_two(
        [
            # kept: LCS "alpha beta" with S1 and G1 -> p = r = 2/4 -> F1 0.5
            ("alpha beta zeta eta", "kept", G1),
            # kept: LCS "one two" with S2 -> 0.5
            ("one two five six", "kept", S2),
            # kept: no shared token -> 0.0
            ("seven eight nine ten", "kept", S1),
            # not novel: LCS 4 of 5 and 4 -> p = 1, r = 0.8 -> F1 2*0.8/1.8 = 0.888...
            ("alpha beta gamma delta epsilon", "not_novel", S1),
            # duplicate of S2 -> 1.0
            ("one two three four", "duplicate", S2),
            # neither kept nor dropped by novelty: left out
            ("omega psi chi phi", "surplus", S2),
            ("hi", "too_short", S1),
        ]
    )
    d = diversity(generated, POOL, offline_families=False)
    assert (d.judged, d.kept, d.not_novel, d.duplicate, d.surplus) == (5, 3, 1, 1, 1)
    assert d.dropped_share == pytest.approx(2 / 5)
    # kept max F1 [0.5, 0.5, 0.0]: sorted [0, .5, .5], linear quantiles at positions 0.2, 1, 1.8
    k = d.kept_max_rouge
    assert (k.count, k.p10, k.p50, k.p90, k.max) == (3, pytest.approx(0.1), 0.5, 0.5, 0.5)
    # dropped max F1 [8/9, 1.0]: positions 0.1, 0.5, 0.9 between the two
    r = d.dropped_max_rouge
    assert r.count == 2 and r.max == 1.0
    assert r.p10 == pytest.approx(8 / 9 + 0.1 / 9)
    assert r.p50 == pytest.approx(8 / 9 + 0.5 / 9)
    assert r.p90 == pytest.approx(8 / 9 + 0.9 / 9)
    # categories by seed lineage: G1's child descends from S1
    s1, s2 = f"seed {S1['instruction_id'][:12]}", f"seed {S2['instruction_id'][:12]}"
    assert d.category_basis == LINEAGE
    assert d.categories == {s1: 2, s2: 1} and list(d.categories) == [s1, s2]
    assert d.top_category == s1 and d.top_category_share == pytest.approx(2 / 3)
    # 2/3 of the new instructions from one lineage: over the 50% line
    assert [w.split(":")[0] for w in d.warnings()] == ["generation is collapsing onto one domain"]


def test_scores_are_rouge_score_values():
    """The recorded quantiles come from rouge_score's own F1 (checked against the scorer)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    texts = ["alpha beta zeta eta", "one two five six", "alpha gamma beta delta omega"]
    generated = _round_two([(t, "kept", S1) for t in texts])
    d = diversity(generated, POOL, offline_families=False)
    best = [max(scorer.score(p, t)["rougeL"].fmeasure for p in POOL["instruction"]) for t in texts]
    assert d.kept_max_rouge.max == max(best)
    assert d.kept_max_rouge.p50 == sorted(best)[1]


def _records(caplog) -> list[logging.LogRecord]:
    return logged(caplog, "lion_core.method.diversity")


def _statuses(n_kept: int, n_dropped: int, parents: list[dict]) -> pd.DataFrame:
    rows = [(f"kept instruction number {i} x{i}", "kept", parents[i]) for i in range(n_kept)]
    rows += [(f"dropped instruction number {i} y{i}", "not_novel", S1) for i in range(n_dropped)]
    return _round_two(rows)


def test_dropped_share_warning_fires_above_80_percent(caplog):
    balanced = [S1, S2]  # the two kept ones from two lineages: no category warning
    at = diversity(_statuses(2, 8, balanced), POOL, offline_families=False)
    assert at.dropped_share == pytest.approx(DROPPED_WARN) and at.warnings() == []
    above = diversity(_statuses(2, 9, balanced), POOL, offline_families=False)
    assert above.dropped_share == pytest.approx(9 / 11)
    with caplog.at_level(logging.WARNING, logger="lion_core.method.diversity"):
        messages = log_warnings(above, round=3)
    assert len(messages) == 1 and "stagnating" in messages[0] and "82%" in messages[0]
    ours = _records(caplog)
    assert [r.levelno for r in ours] == [logging.WARNING]
    assert ours[0].getMessage().startswith("round 3: generation is stagnating")


def test_category_warning_fires_above_50_percent(caplog):
    at = diversity(_statuses(4, 0, [S1, S1, S2, S2]), POOL, offline_families=False)
    assert at.top_category_share == pytest.approx(CATEGORY_WARN) and at.warnings() == []
    above = diversity(_statuses(5, 0, [S1, G1, S1, S2, S2]), POOL, offline_families=False)
    assert above.top_category_share == pytest.approx(3 / 5)
    with caplog.at_level(logging.WARNING, logger="lion_core.method.diversity"):
        messages = log_warnings(above, round=1)
    assert len(messages) == 1 and "collapsing onto one domain" in messages[0]
    assert "60%" in messages[0] and [r.levelno for r in _records(caplog)] == [logging.WARNING]


def test_no_judged_candidates():
    d = diversity(_round_two([("hi", "too_short", S1)]), POOL, offline_families=False)
    assert d.judged == 0 and d.dropped_share is None and d.top_category is None
    assert d.kept_max_rouge.count == 0 and d.kept_max_rouge.p50 is None and d.warnings() == []


def test_offline_families_name_the_categories():
    from lion_core.offline import seed_pool, solve

    pool = seed_pool(12, seed=0, max_difficulty=3)
    families = [solve(r.instruction, r.input).family for r in pool.itertuples()]
    parents = pool["instruction_id"].tolist()
    picks = [0, 0, 1, 5]
    got = categorize([parents[i] for i in picks] + ["not-in-pool"], pool, FAMILY)
    assert got == [families[i] for i in picks] + ["unknown"]


def test_summary_rows_and_records_carry_the_statistics():
    generated = _round_two([("alpha beta zeta eta", "kept", G1), ("one two", "duplicate", S2)])
    d = diversity(generated, POOL, offline_families=False)
    new = NewInstructions.model_validate(
        {
            "generated": {
                "uri": "file:///x/generated.parquet",
                "path": "generated.parquet",
                "name": "generated",
                "round": 2,
                "rows": 2,
                "sha256": "0" * 64,
            },
            "statuses": {"kept": 1, "duplicate": 1},
            "diversity": d.model_dump(),
        }
    )
    assert new.diversity == d
    summary = RoundSummary(
        round=2, train_pool=3, cache_pool=1, teacher_failed=0, hard=1, easy=0, unscored=0,
        teacher_score=None, student_score=None, student_to_teacher=None, positional_bias=None,
        new_instructions=1, next_train_pool=4, student="s", usage={}, seconds={}, diversity=d,
    )  # fmt: skip
    flat = summary.flat()
    assert flat["novelty_dropped_share"] == 0.5
    assert flat["kept_max_rouge_l"] == "p10 0.50 / p50 0.50 / p90 0.50 / max 0.50 (n=1)"
    assert flat["top_category"].endswith("(seed lineage)") and flat["top_category_share"] == 1.0
    assert "diversity" not in flat
    assert RoundSummary.model_validate_json(summary.model_dump_json()) == summary
