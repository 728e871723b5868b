"""The decontamination gate (lion_core.method.decontaminate): a planted near-copy of a Vicuna-80
question among the seeds is dropped and counted, through the seed-pools task; an instruction
sharing a 13-gram with a question is dropped too; the offline world's held-out set passes every
seed and generated instruction untouched."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import tiny_config

from lion_core.config import DecontaminateConfig
from lion_core.method.decontaminate import (
    Gate,
    QuestionSet,
    contamination,
    decontaminate_pool,
    question_sets,
)
from lion_core.offline.world import seed_instances, seed_pool
from lion_core.run.schemas import GENERATED_SCHEMA, NEAREST_SCHEMA

VICUNA = "vicuna_bench_questions.jsonl"
PLANTED = "How can I increase my productivity when working from home?"  # Vicuna question 4


def _seed_file(shared_data, tmp_path, n: int = 40) -> str:
    """The first `n` Self-Instruct seed tasks as Alpaca JSONL, with the planted near-copy of a
    Vicuna question among them (row 11)."""
    rows = []
    with (shared_data / "self_instruct_seed_tasks.jsonl").open() as fh:
        for line in list(fh)[:n]:
            task = json.loads(line)
            first = task["instances"][0]
            rows.append(
                {"instruction": task["instruction"], "input": first["input"],
                 "output": first["output"]}
            )  # fmt: skip
    rows.insert(10, {"instruction": PLANTED, "input": "", "output": "Keep a schedule."})
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_planted_near_copy_of_a_vicuna_question_is_dropped(shared_data, tmp_path):
    from lion_core.method.seeds import initial_pool

    cfg = tiny_config(
        tmp_path / "run",
        **{"pools.initial_data": _seed_file(shared_data, tmp_path),
           "evaluation.sets": [str(shared_data / VICUNA), "offline"]},
    )  # fmt: skip
    sets = question_sets(cfg)
    assert [s.name for s in sets] == ["vicuna_bench_questions", "offline"]
    assert len(sets[0].texts) == 80
    seeds = initial_pool(cfg)
    kept, dropped, counts = decontaminate_pool(seeds, sets, cfg.evaluation.decontaminate)
    assert len(seeds) == 41 and len(kept) == 40 and PLANTED not in kept["instruction"].tolist()
    assert counts.dropped == 1 and counts.checked == 41
    assert counts.by_set == {"vicuna_bench_questions": 1, "offline": 0}
    (row,) = dropped.to_dict(orient="records")
    assert list(dropped.columns) == NEAREST_SCHEMA.names
    assert row["instruction"] == PLANTED and row["status"] == "contaminated"
    assert row["nearest_id"] == "4" and row["nearest_in"] == "evaluation vicuna_bench_questions"
    assert row["nearest"] == "How can I increase my productivity while working from home?"
    assert row["rouge_l"] == pytest.approx(0.9) and row["ngram"] is None  # 10 tokens: ROUGE-L
    # the gate off (ROUGE-L threshold 1, no n-grams): nothing is dropped
    off = DecontaminateConfig(rouge_l=1.0, ngram=0)
    assert decontaminate_pool(seeds, sets, off)[2].dropped == 0


def test_a_shared_13_gram_is_contamination_even_with_a_low_rouge_l():
    question = (
        "Imagine you are a time traveler from the year 3000. What technological advancements "
        "would you tell people about?"
    )
    sets = [QuestionSet("vicuna", ["q1"], [question])]
    inside = (
        "Write a long essay on the history of the printing press and its effect on literacy in "
        "Europe, on the reformation, on science and on the rise of newspapers; then answer: "
        "imagine you are a time traveler from the year 3000, what technological advancements "
        "would you tell people about, and why? Discuss every point with care and with examples."
    )
    clean = "Summarise the plot of a novel about a lighthouse keeper in three sentences."
    found = contamination([inside, clean], sets, DecontaminateConfig())
    (match,) = found[0]
    assert match.rouge_l < 0.7 and match.question_id == "q1"
    assert match.ngram == (
        "imagine you are a time traveler from the year 3000 what technological advancements"
    )
    assert found[1] == []
    assert contamination([inside], sets, DecontaminateConfig(ngram=14))[0][0].ngram is not None
    assert contamination([inside], sets, DecontaminateConfig(ngram=0)) == [[]]


def test_the_gate_marks_candidates_and_counts_each_batch():
    sets = [QuestionSet("vicuna", ["4"], ["How can I increase my productivity while working "
                                          "from home?"])]  # fmt: skip
    rows = [
        {"instruction": PLANTED, "status": "candidate", "source": "hard", "request_key": "k1"},
        {"instruction": "Name three rivers of Africa.", "status": "candidate", "source": "easy",
         "request_key": "k2"},
        {"instruction": PLANTED, "status": "too_short", "source": "easy", "request_key": "k3"},
    ]  # fmt: skip
    frame = pd.DataFrame(rows).reindex(columns=GENERATED_SCHEMA.names)
    frame["input"] = ""
    gate = Gate(sets, DecontaminateConfig())
    marked = gate.mark(frame)
    assert marked["status"].tolist() == ["contaminated", "candidate", "too_short"]
    assert set(gate.matches) == {("hard", "k1")}
    gate.mark(frame.iloc[1:2])  # a top-up batch
    summary = gate.summary()
    assert (summary.checked, summary.dropped, summary.by_set) == (3, 1, {"vicuna": 1})
    assert Gate([], DecontaminateConfig()).summary() is None


def test_the_offline_held_out_set_passes_every_seed_and_generated_instruction():
    """The demo's evaluation set against the demo's seeds and 3,000 more instances of every
    normal and rare phrasing the generator writes (make_instance is behind both)."""
    cfg = tiny_config(**{"evaluation.sets": ["offline"]})
    (heldout,) = question_sets(cfg)
    assert len(heldout.texts) == 84
    pool = seed_pool(160, 0, 6, None)
    more = seed_instances(3000, seed=1, max_difficulty=12)
    more = pd.DataFrame([{"instruction": i.instruction, "input": i.input} for i in more])
    for frame in (pool, more):
        kept, dropped, counts = decontaminate_pool(frame, [heldout], cfg.evaluation.decontaminate)
        assert counts.dropped == 0 and dropped.empty and len(kept) == len(frame)


@pytest.mark.slow
def test_seed_pools_drops_the_planted_copy_and_the_round_table_shows_it(
    prefect_harness, shared_data, tmp_path
):
    """Through the seed-pools task (in a flow): the pools lack the planted copy, round 1's
    `contaminated_seeds` holds it, and the round's table shows 1 contaminated."""
    from prefect import flow

    from flows.report import summary_table
    from lion_core.run.records import RoundSummary
    from lion_core.run.store import RunStore
    from tasks.pools import seed_pools

    cfg = tiny_config(
        tmp_path / "run",
        **{"pools.initial_data": _seed_file(shared_data, tmp_path),
           "evaluation.sets": [str(shared_data / VICUNA)]},
    )  # fmt: skip

    @flow
    def pools_only():
        return seed_pools(cfg)

    pools = pools_only()
    store = RunStore.open(cfg.storage.root)
    assert pools.train.rows == pools.cache.rows == 40
    assert PLANTED not in store.read(1, "train_pool")["instruction"].tolist()
    assert store.read(1, "contaminated_seeds")["instruction"].tolist() == [PLANTED]
    assert pools.decontamination.by_set == {"vicuna_bench_questions": 1}
    summary = RoundSummary(
        round=1, train_pool=40, cache_pool=40, teacher_failed=0, hard=0, easy=0, unscored=0,
        teacher_score=None, student_score=None, student_to_teacher=None, positional_bias=None,
        new_instructions=0, next_train_pool=40, student="s", usage={}, seconds={},
        seeds_decontamination=pools.decontamination,
    )  # fmt: skip
    assert summary.flat()["contaminated_vicuna_bench_questions"] == 1
    head, row = summary_table([summary]).split("\n\n")[-1].splitlines()
    assert dict(zip(head.split(), row.split(), strict=True))["contaminated"] == "1"
