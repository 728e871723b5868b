"""Data health: refusals, identical and empty teacher answers are counted; degenerate answers stop
the round before the student learns them (GSM8K seeds with the offline world as the teacher);
the offline world's own tasks are healthy; new instructions far from every seed's domain are a
warning (offline-world instructions against GSM8K seeds), those of the seeds' own domain are
not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import answer_frame, logged

from lion_core.config import DataHealthConfig, LionConfig
from lion_core.errors import DataHealthError
from lion_core.method.health import answer_health, check_answers, check_domain, domain_health

PATTERNS = DataHealthConfig().refusal_patterns


def test_counts():
    texts = [
        "I'm sorry, but I can only help with arithmetic.",
        "I'm sorry, but I can only help with arithmetic.",
        "I'm sorry, but I can only help with arithmetic.",
        "As an AI language model, I have no opinion.",
        "Sure. I can't stress this enough: 4.",  # "I can't" + not help/assist: an answer
        "  ",
        "42",
        "The capital of France is Paris.",
        "I cannot answer that question.",
    ]
    health = answer_health(answer_frame(texts + [None] * 3), PATTERNS)
    assert health.answers == 9 and health.empty == 1
    assert health.refusals == 5 and health.identical == 3
    assert health.top_answer == "I'm sorry, but I can only help with arithmetic."
    assert health.refusal_example.startswith("I'm sorry")
    assert health.share(health.refusals) == 5 / 9
    problems = health.problems(0.5)
    assert len(problems) == 1 and problems[0].startswith(
        "5 of 9 teacher answers (56%) are refusals"
    )
    # short answers repeat by nature, and two copies are no pattern
    assert answer_health(answer_frame(["14", "14", "14", "9"]), PATTERNS).identical == 0
    twice = "The answer is forty-two."
    assert answer_health(answer_frame([twice, twice, "x" * 12]), PATTERNS).identical == 0


def test_degenerate_stops_unless_allowed(caplog):
    refusal = "I'm sorry, but I can only help with the tasks of the offline world."
    health = answer_health(answer_frame([refusal] * 9 + ["7"]), PATTERNS)
    with pytest.raises(DataHealthError) as err:
        check_answers(health, DataHealthConfig(), 3)
    message = str(err.value)
    assert message.startswith("round 3: the teacher's answers are degenerate")
    assert "9 of 10 teacher answers (90%) are refusals" in message
    assert "9 of 10 teacher answers (90%) are the same text" in message
    assert "data_health.allow_degenerate" in message and "pools.initial_data" in message

    with caplog.at_level("WARNING", logger="lion_core.method.health"):
        warnings = check_answers(health, DataHealthConfig(allow_degenerate=True), 3)
    assert len(warnings) == 2 and all(w.startswith("round 3: 9 of 10") for w in warnings)
    assert _messages(caplog) == warnings


def test_new_instructions_far_from_the_seeds_domain_are_a_warning(caplog, shared_data):
    """The drift of the issue: GSM8K seeds, the offline world as generator. Its templated
    arithmetic shares almost nothing with the word problems: most are far from every seed and
    the round warns. The offline world's own seeds, and GSM8K against GSM8K, do not warn."""
    import json
    import random

    from lion_core.method.novelty import max_rouge_l
    from lion_core.offline.world import seed_pool

    cfg = DataHealthConfig()
    rows = json.loads((shared_data / "gsm8k_train_alpaca_format.json").read_text())
    sample = random.Random(0).sample([r["instruction"] for r in rows], 240)
    gsm8k_seeds, gsm8k_new = sample[:160], sample[160:]
    world_seeds = seed_pool(160, 0, 4)["instruction"].tolist()
    world_new = seed_pool(80, 7, 4)["instruction"].tolist()

    drift = domain_health(world_new, gsm8k_seeds, cfg.far_rouge_l)
    assert drift.new == 80 and drift.seeds == 160
    best = max_rouge_l(world_new, gsm8k_seeds)  # the exact maxima agree with the count
    assert drift.far == sum(b <= cfg.far_rouge_l for b in best)
    assert drift.far_share >= 0.5 and drift.far_example in world_new
    with caplog.at_level("WARNING", logger="lion_core.method.health"):
        warnings = check_domain(drift, cfg, 2)
    (warning,) = warnings
    assert warning.startswith(f"round 2: {drift.far} of 80 new instructions")
    assert "far from every seed's domain" in warning and "160 seed instructions" in warning
    assert _messages(caplog) == warnings

    for new, seeds in ((world_new, world_seeds), (gsm8k_new, gsm8k_seeds)):
        health = domain_health(new, seeds, cfg.far_rouge_l)
        assert health.far_share < cfg.far_warn_share / 2, health
        assert check_domain(health, cfg, 2) == []
    assert domain_health(world_new, [], cfg.far_rouge_l).far == 0  # no seeds: nothing to say


def test_a_bad_pattern_is_a_config_error():
    from lion_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data_health\.refusal_patterns"):
        LionConfig().with_overrides({"data_health.refusal_patterns": ["(unclosed"]})


def test_the_offline_worlds_own_tasks_are_healthy(offline_server):
    from lion_core.llm.client import LLMClient
    from lion_core.method.imitation import answer_instructions
    from lion_core.offline.world import seed_pool

    cfg = LionConfig()
    world = offline_server()
    client = LLMClient(cfg.teacher, role="teacher", cache=None, base_url=world.base_url)
    answers = answer_instructions(seed_pool(160, 0, cfg.offline.max_difficulty), client, "t")
    health = answer_health(answers, PATTERNS)
    assert health.answers == 160
    assert health.problems(cfg.data_health.warn_share) == [], health


@pytest.mark.slow
def test_gsm8k_with_the_offline_teacher_stops_at_teacher_answers(
    prefect_harness, tmp_path, shared_data
):
    """The case from the issue: GSM8K seeds, the offline world as teacher. It refuses every
    question with the same sentence, all `status: ok`; the round stops there, naming it."""
    from helpers import small_config

    from flows.round import lion_round

    cfg = small_config(
        tmp_path / "run",
        **{"pools.initial_data": str(shared_data / "gsm8k_train_alpaca_format.json")},
        **{"pools.limit": 24},
    )
    state = lion_round(cfg, 1, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, DataHealthError), error
    assert "24 of 24 teacher answers (100%) are refusals" in str(error)
    assert "are the same text: \"I'm sorry" in str(error)
    root = tmp_path / "run"
    assert not (root / "round=1" / "teacher_answers.parquet").exists()  # nothing committed
    assert not (root / "round=0").exists()  # no student was built


# ---- issue 22, N8: patterns of a refusal of the request, measured -------------------------------

LABELS = Path(__file__).parent / "data" / "health_labels.jsonl"


def _scores(rows: list[dict]) -> tuple[float, float]:
    """Precision and recall of the default patterns' refusals on labelled `rows`."""
    found = [answer_health(answer_frame([r["text"]]), PATTERNS).refusals == 1 for r in rows]
    tp = sum(f and r["refusal"] for f, r in zip(found, rows, strict=True))
    fp = sum(f and not r["refusal"] for f, r in zip(found, rows, strict=True))
    fn = sum(r["refusal"] and not f for f, r in zip(found, rows, strict=True))
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1)


def test_refusal_patterns_on_the_labelled_answers():
    """tests/data/health_labels.jsonl (tests/data/make_health_labels.py): 222 answers the
    patterns were written against — refusals in 8 openers x 12 phrasings and 20 bare ones,
    typographic apostrophes included; apologies that go on to help; classifier labels — and
    24 written afterwards, never tuned on. docs/dag.md reports both."""
    rows = [json.loads(line) for line in LABELS.read_text().splitlines()]
    assert len(rows) >= 200 and sum(r["refusal"] for r in rows) >= 100
    tuned = [r for r in rows if not r.get("held_out")]
    held_out = [r for r in rows if r.get("held_out")]
    precision, recall = _scores(tuned)
    print(f"tuned: precision {precision:.3f} recall {recall:.3f} (n={len(tuned)})")
    assert precision >= 0.95 and recall >= 0.95
    precision, recall = _scores(held_out)
    print(f"held out: precision {precision:.3f} recall {recall:.3f} (n={len(held_out)})")


def test_degenerate_answers_are_counted_once_across_kinds():
    """45 % empty + 45 % refusals stopped nothing (each kind below max_share alone); a refusal
    with a typographic apostrophe was no refusal; a classifier's repeated label stopped the run,
    and "I'm sorry to hear ..." counted as a refusal."""
    refusal = "I’m sorry, but I can’t assist with that."  # U+2019, as providers write it
    mixed = answer_health(answer_frame([""] * 45 + [refusal] * 45 + ["fine"] * 10), PATTERNS)
    assert (mixed.empty, mixed.refusals, mixed.degenerate) == (45, 45, 90)
    with pytest.raises(DataHealthError, match=r"90 of 100 teacher answers \(90%\)"):
        check_answers(mixed, DataHealthConfig(), 1)

    curly = answer_health(answer_frame([refusal] * 120), PATTERNS)
    assert curly.refusals == 120
    with pytest.raises(DataHealthError):
        check_answers(curly, DataHealthConfig(), 1)

    labels = ["The sentiment is positive."] * 60 + [
        f"Answer {i} is long enough." for i in range(40)
    ]
    label_health = answer_health(answer_frame(labels), PATTERNS)
    assert label_health.identical == 0 and label_health.degenerate == 0
    assert check_answers(label_health, DataHealthConfig(), 1) == []

    sorry = "I'm sorry to hear that your order arrived late. A replacement is on its way."
    assert answer_health(answer_frame([sorry] * 2 + ["ok"]), PATTERNS).refusals == 0


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in logged(caplog, "lion_core.method.health")]
