"""The round's lineage table: what each judged candidate came nearest to."""

from __future__ import annotations

import pandas as pd
import pytest

from lion_core.method.lineage import nearest_table
from lion_core.method.novelty import rouge_l_f1, tokenize
from lion_core.run.schemas import NEAREST_SCHEMA


def _pool(texts: list[str], prefix: str = "p") -> pd.DataFrame:
    """POOL_SCHEMA rows of seeds, ids `prefix`0, `prefix`1, ..."""
    return pd.DataFrame(
        {
            "instruction_id": [f"{prefix}{i}" for i in range(len(texts))],
            "instruction": texts,
            "input": "",
            "reference": None,
            "source": "seed",
            "parent_id": None,
            "round": 0,
        }
    )


def _generated(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """GENERATED_SCHEMA rows of round 1's hard candidates: (instruction, status) each."""
    return _pool([text for text, _ in rows], prefix="g").assign(
        source="hard",
        parent_id="s0",
        round=1,
        status=[status for _, status in rows],
        error=None,
        request_key=[f"k{i}" for i in range(len(rows))],
    )


def f1(a: str, b: str) -> float:
    return rouge_l_f1(tokenize(a), tokenize(b))


def test_a_dropped_candidate_names_a_kept_one_only_when_it_is_strictly_nearer():
    pool = _pool(["sort the list of numbers", "reverse this word now", "name three red fruits"])
    generated = _generated(
        [
            ("name three big red fruits please", "kept"),  # F1 0.8 with p2
            ("name three big red fruits now", "not_novel"),  # 0.83 to the kept one, 0.8 to p2
            ("sort the list of numbers", "not_novel"),  # 1.0 with p0: the pool wins
            ("reverse this word now please", "not_novel"),  # 0.89 with p1, 0.18 to the kept
            ("sort the list of numbers", "duplicate"),  # the pool's 1.0 stands
            ("write a poem", "too_short"),  # not judged: no row
        ]
    )
    frame, best = nearest_table(generated, pool)
    assert list(frame.columns) == NEAREST_SCHEMA.names
    got = {r.instruction_id: (r.nearest_id, r.nearest_in, r.rouge_l) for r in frame.itertuples()}
    kept = generated.at[0, "instruction"]
    assert got["g0"] == ("p2", "train pool", pytest.approx(f1(kept, "name three red fruits")))
    assert got["g1"] == ("g0", "new", pytest.approx(f1(generated.at[1, "instruction"], kept)))
    assert got["g2"][:2] == ("p0", "train pool") and got["g2"][2] == 1.0
    assert got["g3"][:2] == ("p1", "train pool")
    assert got["g4"][:2] == ("p0", "train pool")
    assert "g5" not in got
    # the diversity statistics' values: each judged candidate's highest F1 against the pool
    pool_texts = pool["instruction"].tolist()
    judged = generated[generated["status"] != "too_short"]["instruction"]
    assert best == [pytest.approx(max(f1(t, p) for p in pool_texts)) for t in judged]


def test_a_tie_with_the_pool_keeps_the_pool_text():
    """A kept candidate exactly as near as the pool's nearest does not replace it."""
    pool = _pool(["a b c d"])
    generated = _generated([("a b c e", "kept"), ("a b c f", "not_novel")])
    frame, _ = nearest_table(generated, pool)
    row = frame.set_index("instruction_id").loc["g1"]
    assert (row["nearest_id"], row["nearest_in"]) == ("p0", "train pool")
    assert row["rouge_l"] == pytest.approx(0.75)
