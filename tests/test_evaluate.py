"""Evaluation: question sets in every format, judging in both orders through the real offline
world (the judge is answered like the referee), relative score / wins / ties / losses against
hand-computed values, unparsable reviews counted as unscored (never ties), exact match, the
bootstrap interval, and the held-out set's disjointness from every pool."""

from __future__ import annotations

import json
import random

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lion_core.config import FaultsConfig, LionConfig, OfflineWorldConfig, RefereeConfig
from lion_core.errors import ConfigError, DataError
from lion_core.evaluation.evaluate import (
    QUESTION_COLUMNS,
    exact_match,
    judge,
    judge_pairs,
    load_questions,
    per_question,
    question_rows,
    sample_questions,
    set_name,
    summarize,
)
from lion_core.llm.client import LLMClient
from lion_core.method.novelty import NoveltyStats, filter_novel
from lion_core.method.prompts import generator_messages, instruction_text
from lion_core.method.referee import score_order
from lion_core.offline import OfflineServer, heldout_instances, heldout_questions, seed_pool
from lion_core.offline.roles import GARBLED_TEXT, generator_answer
from lion_core.offline.world import DEFAULT_FAMILIES, FAMILIES, make_instance, solve
from lion_core.run.schemas import EVAL_SCHEMA, EVAL_SUMMARY_SCHEMA, conform, instruction_id

# ------------------------------------------------------------------------------------------
# Helpers: answer frames and judging through the offline world
# ------------------------------------------------------------------------------------------


def answers(by_id: dict[str, str | None]) -> pd.DataFrame:
    """An ANSWER_SCHEMA-like frame; None = a failed answer."""
    return pd.DataFrame(
        [
            {
                "instruction_id": qid,
                "answer": text,
                "status": "ok" if text is not None else "failed",
                "error": None if text is not None else "CUDA out of memory",
            }
            for qid, text in by_id.items()
        ]
    )


def judged(world: OfflineWorldConfig, questions, teacher, student, cfg: RefereeConfig):
    """The per-question frame from the real offline world over HTTP, and the server's stats."""
    with OfflineServer(world) as server:
        client = LLMClient(cfg, role="judge", cache=None, base_url=server.base_url)
        frame = judge(questions, teacher, student, client, cfg)
        return frame, server.stats()


def exact_answers(questions: pd.DataFrame) -> pd.DataFrame:
    return answers(dict(zip(questions["question_id"], questions["reference"], strict=True)))


# ------------------------------------------------------------------------------------------
# Relative score, wins/ties/losses, categories: hand-computed
# ------------------------------------------------------------------------------------------

QUESTIONS = pd.DataFrame(
    [
        ("q1", "addition", "What is 20 + 22?", "", "42"),
        ("q2", "addition", "What is 2 + 2?", "", "4"),
        ("q3", "reverse", "Reverse the word 'lion'.", "", "noil"),
        ("q4", "sort", "Sort these numbers in ascending order: 5, 2, 9.", "", "2, 5, 9"),
        ("q5", "count", "Count the letter 'a' in 'banana'.", "", "3"),
    ],
    columns=QUESTION_COLUMNS,
)
TEACHER = answers({"q1": "42", "q2": "4", "q3": "noil", "q4": "The answer is 2, 5, 9", "q5": "3"})
STUDENT = answers({"q1": "42", "q2": "The answer is 4.", "q3": "xyz", "q4": "2, 5, 9", "q5": None})


def test_relative_score_wins_ties_losses_and_categories_by_hand():
    # The offline judge, noise off: exact = 10, the answer inside other text = 8, no character
    # in common = 1; +1 for whichever answer is shown first; clipped to 10.
    #        order 1 (teacher first)  order 2 (student first)   mean t, s
    # q1     t 10+1->10, s 10         s 10+1->10, t 10          10, 10     tie
    # q2     t 10+1->10, s 8          s 8+1=9,    t 10          10, 8.5    loss
    # q3     t 10+1->10, s 1          s 1+1=2,    t 10          10, 1.5    loss
    # q4     t 8+1=9,    s 10         s 10+1->10, t 8           8.5, 10    win
    # q5     student answer failed: unscored, not sent to the judge
    world = OfflineWorldConfig(judge_noise=0.0, positional_bias=1.0)
    cfg = RefereeConfig(model="offline-judge")
    frame, stats = judged(world, QUESTIONS, TEACHER, STUDENT, cfg)

    assert stats["referee"]["requests"] == 8  # 4 complete pairs x both orders
    conform(frame, EVAL_SCHEMA, "per-question")
    assert frame["question_id"].tolist() == ["q1", "q2", "q3", "q4", "q5"]
    by_q = frame.set_index("question_id")
    assert by_q.loc["q4", ["teacher_score_1", "teacher_score_2", "teacher_score"]].tolist() == [
        9.0,
        8.0,
        8.5,
    ]
    assert by_q.loc["q2", ["student_score_1", "student_score_2", "student_score"]].tolist() == [
        8.0,
        9.0,
        8.5,
    ]
    assert by_q["status"].tolist() == ["scored"] * 4 + ["unscored"]
    assert by_q.loc["q5", "error"].startswith("missing_answer: student answer failed")
    assert by_q["student_exact_match"].tolist() == [True, True, False, True, False]
    assert by_q["teacher_exact_match"].tolist() == [True, True, True, False, True]

    summary = summarize(frame, bootstrap=200, seed=0)
    assert (summary.questions, summary.scored, summary.unscored) == (5, 4, 1)
    assert (summary.wins, summary.ties, summary.losses) == (1, 1, 2)
    assert summary.teacher_score_sum == 38.5 and summary.student_score_sum == 30.0
    assert summary.relative_score == pytest.approx(30.0 / 38.5)
    # first shown minus second shown, per question ((t1 - s1) + (s2 - t2)) / 2: 0, .5, .5, .5
    assert summary.positional_bias == pytest.approx(0.375)
    assert summary.teacher_exact_match == pytest.approx(4 / 5)
    assert summary.student_exact_match == pytest.approx(3 / 5)

    cats = summary.by_category
    assert list(cats) == ["addition", "count", "reverse", "sort"]
    assert cats["addition"].relative_score == pytest.approx(18.5 / 20)
    assert (cats["addition"].wins, cats["addition"].ties, cats["addition"].losses) == (0, 1, 1)
    assert cats["reverse"].relative_score == pytest.approx(1.5 / 10)
    assert cats["sort"].relative_score == pytest.approx(10 / 8.5) and cats["sort"].wins == 1
    assert cats["count"].relative_score is None and cats["count"].unscored == 1

    data = json.loads(json.dumps(summary.to_json()))
    assert data["by_category"] == {
        "addition": pytest.approx(0.925),
        "count": None,
        "reverse": pytest.approx(0.15),
        "sort": pytest.approx(10 / 8.5),
    }
    for key, value in {"wins": 1, "ties": 1, "losses": 2, "unscored": 1, "questions": 5}.items():
        assert data[key] == value
    assert data["relative_score"] == pytest.approx(30 / 38.5)
    assert data["categories"]["addition"]["ties"] == 1

    table = conform(summary.to_frame(), EVAL_SUMMARY_SCHEMA, "summary")
    rows = table.to_pylist()
    assert [(r["level"], r["category"]) for r in rows] == [
        ("overall", None),
        ("category", "addition"),
        ("category", "count"),
        ("category", "reverse"),
        ("category", "sort"),
    ]
    assert rows[0]["relative_score"] == pytest.approx(30 / 38.5) and rows[0]["losses"] == 2
    assert rows[0]["interval_low"] <= rows[0]["relative_score"] <= rows[0]["interval_high"]


def test_a_question_without_reviews_is_unscored():
    pairs = judge_pairs(QUESTIONS, TEACHER, STUDENT)
    none = score_order(pairs.iloc[:0], client=None, cfg=RefereeConfig(), order=1)  # asks nothing
    frame = per_question(pairs, none, none)
    assert (frame["status"] == "unscored").all()
    assert frame["error"].str.startswith("missing_review").all()
    assert summarize(frame).unscored == len(QUESTIONS) and summarize(frame).ties == 0


def test_the_judge_is_the_referee_unless_configured():
    cfg = LionConfig()
    assert cfg.judge_endpoint() is cfg.referee and cfg.endpoints()["judge"] is cfg.referee
    cfg = LionConfig.from_dict(
        {"judge": {"model": "gpt-4", "base_url": "https://api.openai.com/v1", "reasks": 2}}
    )
    assert cfg.judge_endpoint().model == "gpt-4" and cfg.judge_endpoint().reasks == 2
    assert cfg.endpoints()["judge"] is cfg.judge and cfg.referee.model == "offline-referee"
    assert LionConfig.from_dict({"judge": {}}).judge_endpoint().model == "offline-judge"
    assert cfg.evaluation.sets == [] and cfg.evaluation.bootstrap == 1000
    with pytest.raises(ConfigError, match=r"evaluation\.sets"):
        LionConfig.from_dict({"evaluation": {"sets": ["questions.txt"]}})
    with pytest.raises(ConfigError, match="more than once"):
        LionConfig.from_dict({"evaluation": {"sets": ["offline", "offline"]}})


# ------------------------------------------------------------------------------------------
# Unparsable judge answers: unscored, left out, never a tie
# ------------------------------------------------------------------------------------------


def test_unparsable_judge_answers_are_unscored_not_ties():
    questions = heldout_questions(per_cell=1, max_difficulty=3)
    right = exact_answers(questions)  # teacher = student: every scored question is a tie
    garbling = OfflineWorldConfig(judge_noise=0.0, faults=FaultsConfig(rate_garbled=0.4))
    frame, stats = judged(garbling, questions, right, right, RefereeConfig(reasks=0))

    garbled = (frame["review_1"] == GARBLED_TEXT) | (frame["review_2"] == GARBLED_TEXT)
    assert 0 < garbled.sum() < len(questions)
    assert (frame.loc[garbled, "status"] == "unscored").all()
    assert frame.loc[garbled, "error"].str.startswith("unparsable: order").all()
    summary = summarize(frame, bootstrap=100)
    assert summary.unscored == garbled.sum() and summary.scored == (~garbled).sum()
    assert summary.ties == summary.scored and summary.wins == summary.losses == 0
    assert summary.relative_score == 1.0
    assert sum(c.unscored for c in summary.by_category.values()) == summary.unscored

    # everything garbled: nothing to score, nothing invented
    all_garbled = OfflineWorldConfig(faults=FaultsConfig(rate_garbled=1.0))
    frame, _ = judged(all_garbled, questions, right, right, RefereeConfig(reasks=0))
    summary = summarize(frame)
    assert summary.unscored == len(questions) and summary.ties == 0
    assert summary.relative_score is None and summary.interval is None

    # one re-ask: the world answers re-asks properly, so every question is scored
    frame, stats = judged(garbling, questions, right, right, RefereeConfig(reasks=1))
    assert (frame["status"] == "scored").all()
    assert stats["referee"]["requests"] > 2 * len(questions)  # the re-asks


# ------------------------------------------------------------------------------------------
# Question sets
# ------------------------------------------------------------------------------------------


def test_vicuna_questions(shared_data):
    questions = load_questions(str(shared_data / "vicuna_bench_questions.jsonl"))
    assert list(questions.columns) == QUESTION_COLUMNS
    assert len(questions) == 80 and questions["category"].nunique() == 9
    assert questions["question_id"].tolist() == [str(i) for i in range(1, 81)]
    assert questions.loc[0, "instruction"] == "How can I improve my time management skills?"
    assert (questions["input"] == "").all() and questions["reference"].isna().all()
    assert questions["category"].value_counts()["math"] == 3


def test_mt_bench_questions_take_the_first_turn_and_reference(shared_data):
    path = shared_data / "mt_bench_questions.jsonl"
    questions = load_questions(str(path)).set_index("question_id")
    first = json.loads(path.read_text().splitlines()[0])
    assert questions.loc[str(first["question_id"]), "instruction"] == first["turns"][0].strip()
    record = next(r for r in map(json.loads, path.read_text().splitlines()) if r.get("reference"))
    assert questions.loc[str(record["question_id"]), "reference"] == record["reference"][0]


ALPACA = [
    {"instruction": "What is 2 + 2?", "input": "", "category": "math", "reference": "4"},
    {"instruction": "Summarise the text.", "input": "Lions live in prides."},
    {"question_id": 7, "instruction": "Name a colour.", "reference": 42},
]


def _check_alpaca(questions: pd.DataFrame) -> None:
    assert list(questions.columns) == QUESTION_COLUMNS
    assert questions["question_id"].tolist() == [
        instruction_id("What is 2 + 2?"),
        instruction_id("Summarise the text.", "Lions live in prides."),
        "7",
    ]
    assert questions["category"].tolist() == ["math", "general", "general"]
    assert questions["input"].tolist() == ["", "Lions live in prides.", ""]
    assert questions["reference"].fillna("<null>").tolist() == ["4", "<null>", "42"]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_alpaca_questions_in_every_format(tmp_path, fmt):
    path = tmp_path / f"questions.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(ALPACA))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ALPACA) + "\n")
    else:
        frame = pd.DataFrame(ALPACA).astype({"question_id": "Int64"})
        frame["reference"] = [None if pd.isna(r) else str(r) for r in frame["reference"]]
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    _check_alpaca(load_questions(str(path)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"instruction": "a"}\n{"input": "x"}\n', "row 2, column 'instruction': missing"),
        (
            '{"instruction": "a"}\n{"instruction": 5}\n',
            "row 2, column 'instruction': expected text",
        ),
        ('{"instruction": "  "}\n', "row 1, column 'instruction': empty instruction"),
        ('{"turns": []}\n', "row 1, column 'turns': missing"),
        ('{"instruction": "a", "category": ["x"]}\n', "column 'category': expected text"),
        (
            '{"question_id": 1, "instruction": "a"}\n{"question_id": "1", "instruction": "b"}\n',
            "row 2, column 'question_id': duplicate question_id '1' (first at row 1)",
        ),
        ('{"instruction": "a"}\n{"instruction": "a"}\n', "row 2, column 'question_id': duplicate"),
        ('{"instruction": "a"}\nnot json\n', "row 2: invalid JSON"),
        ("\n", "no questions found"),
        ('["a"]\n', "row 1: expected an object"),
    ],
)
def test_bad_question_files_name_file_row_and_column(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_questions(str(path))
    assert str(path) in str(err.value) and message in str(err.value)


def test_unreadable_question_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_questions(str(tmp_path / "absent.jsonl"))
    (tmp_path / "q.txt").write_text("What?")
    with pytest.raises(DataError, match="unsupported format"):
        load_questions(str(tmp_path / "q.txt"))


def test_set_names_rows_and_a_fixed_sample(tmp_path):
    assert set_name("s3://bucket/sets/vicuna_bench_questions.jsonl") == "vicuna_bench_questions"
    assert set_name("offline") == "offline" and set_name("/x/My Set.CSV") == "My_Set"
    questions = heldout_questions()
    rows = question_rows(questions)
    assert list(rows.columns) == ["instruction_id", "instruction", "input"]
    assert rows["instruction_id"].tolist() == questions["question_id"].tolist()

    sample = sample_questions(questions, 20)
    assert len(sample) == 20 and sample.equals(sample_questions(questions, 20))
    positions = [questions.index[questions["question_id"] == q][0] for q in sample["question_id"]]
    assert positions == sorted(positions)  # original order kept
    # dropping a question outside the sample leaves the sample as it was
    outside = questions[~questions["question_id"].isin(sample["question_id"])].index[0]
    assert sample.equals(sample_questions(questions.drop(index=outside), 20))
    assert sample_questions(questions, None).equals(questions)


# ------------------------------------------------------------------------------------------
# Exact match
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("42", "42", True),
        ("The answer is 42.", "42", True),
        ("It costs 1,234 dollars", "1234", True),
        ("1234", "1,234", True),
        ("42", "42.", True),
        ("42.0", "42", True),
        ("-7", "-7", True),
        ("Between 41 and 42, I pick 41", "42", False),
        ("no number here", "42", False),
        ("  NOIL. ", "noil", True),
        ("noil!", "noil", True),
        ("nool", "noil", False),
        ("2,5,9", "2, 5, 9", True),
        ("2, 9, 5", "2, 5, 9", False),
        ("OG  UP", "OG UP", True),
        ("the noil", "noil", False),
        (None, "42", False),
        ("42", None, False),
    ],
)
def test_exact_match(prediction, reference, expected):
    assert exact_match(prediction, reference) is expected


# ------------------------------------------------------------------------------------------
# Bootstrap interval
# ------------------------------------------------------------------------------------------


def _scored_frame(teacher: list[float], student: list[float]) -> pd.DataFrame:
    n = len(teacher)
    return pd.DataFrame(
        {
            "question_id": [f"q{i}" for i in range(n)],
            "category": ["general"] * n,
            "reference": [None] * n,
            "teacher_score_1": teacher,
            "student_score_1": student,
            "teacher_score_2": teacher,
            "student_score_2": student,
            "teacher_score": teacher,
            "student_score": student,
            "status": ["scored"] * n,
            "teacher_exact_match": [None] * n,
            "student_exact_match": [None] * n,
        }
    )


def test_bootstrap_interval_is_seeded_and_contains_the_estimate():
    rng = random.Random(3)
    teacher = [rng.choice([7.0, 8.5, 9.0, 10.0]) for _ in range(60)]
    student = [rng.choice([1.0, 4.5, 6.0, 8.0, 10.0]) for _ in range(60)]
    frame = _scored_frame(teacher, student)
    one = summarize(frame, bootstrap=500, seed=1)
    low, high = one.interval
    assert low < one.relative_score < high
    assert summarize(frame, bootstrap=500, seed=1).interval == one.interval
    assert summarize(frame, bootstrap=500, seed=2).interval != one.interval
    # more questions of the same kind: a narrower interval
    wide = summarize(_scored_frame(teacher[:15], student[:15]), bootstrap=500, seed=1).interval
    assert wide[1] - wide[0] > high - low
    assert summarize(frame, bootstrap=0).interval is None

    # every question at the same student/teacher ratio: every resample gives that ratio
    same = summarize(_scored_frame([8.0, 10.0, 4.0], [4.0, 5.0, 2.0]), bootstrap=100)
    assert same.relative_score == 0.5 and same.interval == pytest.approx((0.5, 0.5))


# ------------------------------------------------------------------------------------------
# The offline world's held-out set
# ------------------------------------------------------------------------------------------


def test_heldout_set_is_fixed_complete_and_answered_by_the_world():
    questions = load_questions("offline")
    assert questions.equals(heldout_questions()) and list(questions.columns) == QUESTION_COLUMNS
    assert len(questions) == len(DEFAULT_FAMILIES) * 6 * 2 and questions["question_id"].is_unique
    assert set(questions["category"]) == set(DEFAULT_FAMILIES)
    insts = heldout_instances(per_cell=3, max_difficulty=8)
    assert {(i.family, i.difficulty) for i in insts} == {
        (f, d) for f in DEFAULT_FAMILIES for d in range(1, 9)
    }
    assert sum(i.rare for i in insts) == len(DEFAULT_FAMILIES) * 8  # instance k=1 of each cell
    # a bigger set only adds questions
    small = set(heldout_questions(2, 4)["question_id"])
    assert small < set(heldout_questions(3, 6)["question_id"])
    for row in questions.itertuples():
        solved = solve(row.instruction, row.input)
        assert solved is not None and solved.heldout and solved.family == row.category
        assert solved.answer == row.reference
        assert solve(instruction_text(row.instruction, row.input)).answer == row.reference


def _generated(n: int, seed: int) -> list[str]:
    """Instructions the offline generator role writes from seeds and from its own output."""
    rng = random.Random(seed)
    seeds = [make_instance(FAMILIES[i % len(FAMILIES)], rng.randint(1, 20), rng) for i in range(n)]
    out = []
    for i, inst in enumerate(seeds):
        text = instruction_text(inst.instruction, inst.input)
        for _ in range(3):  # three generations deep
            kind = "easy" if rng.random() < 0.5 else "hard"
            text = generator_answer(generator_messages(text, kind), random.Random(f"{seed}:{i}"))
            out.append(text)
    return out


def test_heldout_set_is_disjoint_from_every_pool_by_id_and_by_rouge():
    heldout = heldout_questions(per_cell=2, max_difficulty=20, families=FAMILIES)  # every one
    held_ids = set(heldout["question_id"])
    held_texts = [
        instruction_text(i, x) for i, x in zip(heldout.instruction, heldout.input, strict=True)
    ]
    pools = [
        seed_pool(300, seed=s, max_difficulty=d, families=FAMILIES)
        for s, d in ((0, 6), (1, 20), (2, 3))
    ]
    generated = _generated(300, seed=5)
    pool_ids = {iid for p in pools for iid in p["instruction_id"]}
    pool_ids |= {instruction_id(text) for text in generated}
    assert not held_ids & pool_ids
    assert not any(solve(text).heldout for text in generated)

    pool_texts = [
        instruction_text(i, x) for p in pools for i, x in zip(p.instruction, p.input, strict=True)
    ]
    pool_texts += generated
    # the novelty filter the pipeline uses: no held-out question is a near-duplicate of a pool
    # instruction, with or without the input field (generation compares instructions only)
    pool_instructions = [i for p in pools for i in p.instruction] + generated
    for candidates, pool in (
        (held_texts, pool_texts),
        (list(heldout.instruction), pool_instructions),
    ):
        stats = NoveltyStats()
        filter_novel(candidates, pool, 0.7, stats=stats)
        assert stats.candidates == len(heldout) and stats.dropped_by_pool == 0
