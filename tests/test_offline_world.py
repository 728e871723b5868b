"""The offline task world: families, determinism, and `lion serve-offline` driven by the official
`openai` client in all three roles."""

from __future__ import annotations

import json
import random
import re
import urllib.request

import openai
import pytest

from lion_core.method import prompts
from lion_core.offline import roles
from lion_core.offline.world import (
    DEFAULT_FAMILIES,
    FAMILIES,
    make_instance,
    seed_instances,
    seed_pool,
    solve,
)
from lion_core.run.schemas import POOL_SCHEMA, conform, instruction_id

SCORE_RE = re.compile(r"Score of the Assistant ([12]): ([0-9.]+)")


def scores(text: str) -> tuple[float, float]:
    found = dict(SCORE_RE.findall(text))
    return float(found["1"]), float(found["2"])


# ---- the world -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rare", [False, True])
def test_every_phrasing_is_solved_back_exactly(family, rare):
    rng = random.Random(f"{family}-{rare}")
    seen_phrasings = set()
    for difficulty in range(1, 21):
        for _ in range(12):
            inst = make_instance(family, difficulty, rng, rare=rare)
            seen_phrasings.add(re.sub(r"'[^']*'|\d+", "_", inst.instruction))
            assert inst.difficulty == difficulty
            got = solve(inst.instruction, inst.input)
            assert got is not None, inst
            assert (got.family, got.rare, got.difficulty, got.answer) == (
                family,
                rare,
                difficulty,
                inst.answer,
            )
            # As the teacher prompt shows it: the input folded in after a blank line.
            folded = solve(prompts.instruction_text(inst.instruction, inst.input))
            assert folded is not None and folded.answer == inst.answer
    assert len(seen_phrasings) >= 2  # several phrasings per family


def test_answers_are_exact_and_short():
    rng = random.Random(0)
    assert solve("What is 1234 + 999?").answer == "2233"
    assert solve("Subtract 7 from 30.").answer == "23"
    assert solve("Reverse the word 'lion'.").answer == "noil"
    assert solve("Sort these numbers in ascending order: 5, 2, 9.").answer == "2, 5, 9"
    assert solve("Arrange 5, 2, 9 from largest to smallest.").answer == "9, 5, 2"
    assert solve("Count the letter 'a' in 'banana'.").answer == "3"
    assert solve("Find the minimum of 8, 3, 12.").answer == "3"
    assert solve("Find the largest of the following numbers.", "4, 17, 9").answer == "17"
    assert solve("What is the capital of France?") is None
    assert solve("Find the largest of the following numbers.", "") is None
    for family in FAMILIES:
        inst = make_instance(family, 6, rng)
        assert len(inst.answer.split()) <= 10, inst


def test_closed_answer_families_answer_yes_no_and_odd_even():
    assert solve("Is 4817 even or odd?").answer == "odd"
    assert solve("Is the following number even or odd?", "120").answer == "even"
    assert solve("Is 4815 divisible by 5?").answer == "yes"
    assert solve("Is 4817 a multiple of 5?").answer == "no"
    assert solve("Is 4810 divisible by 10?").answer == "yes"
    assert solve("Is the following number divisible by 2?", "31").answer == "no"
    assert solve("Is 53 greater than 35?").answer == "yes"
    assert solve("Is the first number smaller than the second?", "53 and 35").answer == "no"
    assert solve("Tell me if 9 is an odd number or an even number.").heldout
    assert solve("Is 10 divisible by 0?") is None  # no divisor 0 in the world
    # the two answers of each variant come up about equally often, at every difficulty
    rng = random.Random(1)
    for family in ("parity", "compare"):
        for rare in (False, True):
            for difficulty in (1, 6, 20):
                answers = [
                    make_instance(family, difficulty, rng, rare=rare).answer for _ in range(400)
                ]
                top = max(answers.count(a) for a in set(answers))
                assert len(set(answers)) == 2 and top < 0.62 * len(answers), (family, rare)


def test_seed_instances_are_deterministic_distinct_and_balanced():
    a = seed_instances(70, seed=3, max_difficulty=6)
    assert a == seed_instances(70, seed=3, max_difficulty=6)
    assert a != seed_instances(70, seed=4, max_difficulty=6)
    assert {i.family for i in a} == set(DEFAULT_FAMILIES)
    assert all(1 <= i.difficulty <= 6 and not i.rare for i in a)
    every = seed_instances(90, seed=3, max_difficulty=6, families=FAMILIES)
    assert {i.family for i in every} == set(FAMILIES)
    assert len({instruction_id(i.instruction, i.input) for i in a}) == 70


def test_seed_pool_has_the_pool_schema():
    pool = seed_pool(30, seed=1, max_difficulty=4)
    table = conform(pool, POOL_SCHEMA, "seed pool")  # raises if the schema does not fit
    assert table.num_rows == 30
    assert set(pool["source"]) == {"seed"} and set(pool["round"]) == {0}
    assert pool["parent_id"].isna().all()
    for row in pool.itertuples():
        assert row.instruction_id == instruction_id(row.instruction, row.input)
        assert solve(row.instruction, row.input).answer == row.reference
    assert pool.equals(seed_pool(30, seed=1, max_difficulty=4))


def test_referee_scores_correctness_noise_and_bias():
    rng = random.Random(0)
    kw = {"judge_noise": 0.0, "positional_bias": 0.0}
    s1, s2, _ = roles.referee_scores("What is 20 + 22?", "42", "41", rng, **kw)
    assert (s1, s2) == (10.0, 4.0)  # partial credit: half the characters right
    s1, s2, _ = roles.referee_scores("What is 20 + 22?", "42", "7", rng, **kw)
    assert (s1, s2) == (10.0, 1.0)
    s1, s2, _ = roles.referee_scores("What is 2 + 2?", "The answer is 4.", "", rng, **kw)
    assert (s1, s2) == (8.0, 1.0)
    # The same answer in both places: the first gets exactly the positional bias more.
    s1, s2, _ = roles.referee_scores(
        "What is 20 + 22?", "40", "40", rng, judge_noise=0.0, positional_bias=1.5
    )
    assert s1 - s2 == pytest.approx(1.5)
    # The instruction shown with its input, as the teacher saw it.
    folded = prompts.instruction_text("Find the largest of the following numbers.", "4, 17, 9")
    s1, s2, _ = roles.referee_scores(folded, "9", "17", rng, **kw)
    assert (s1, s2) == (1.0, 10.0)
    noisy = {
        roles.referee_scores(
            "What is 20 + 22?",
            "40",
            "41",
            random.Random(i),
            **{"judge_noise": 1.0, "positional_bias": 0.0},
        )[0]
        for i in range(20)
    }
    assert len(noisy) > 5 and all(1.0 <= s <= 10.0 for s in noisy)


# ---- `lion serve-offline` and the official openai client -------------------------------------


def test_an_announced_address_accepts_connections_before_the_server_runs():
    """The socket `lion serve-offline` (and the student server) announce is already listening:
    a client connecting at once is queued, not refused (it was refused under load, between the
    printed URL and uvicorn's start)."""
    import socket

    from lion_core.ops.http_server import bind

    sock = bind("127.0.0.1", 0)
    try:
        client = socket.create_connection(sock.getsockname(), timeout=5)
        client.close()
    finally:
        sock.close()


def test_serve_offline_all_roles_through_openai(offline_process):
    base_url = offline_process({"seed": 5, "judge_noise": 0.0, "positional_bias": 1.5})
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)

    assert {m.id for m in client.models.list()} >= {"offline-teacher", "offline-referee"}

    # teacher: exact answers, a polite fallback for anything else
    for inst in seed_instances(21, seed=0, max_difficulty=5):
        r = client.chat.completions.create(
            model="offline-teacher", messages=prompts.teacher_messages(inst.instruction, inst.input)
        )
        assert r.choices[0].message.content == inst.answer
        assert r.choices[0].finish_reason == "stop"
        assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    r = client.chat.completions.create(
        model="offline-teacher", messages=prompts.teacher_messages("Write a poem about lions.")
    )
    assert r.choices[0].message.content == roles.TEACHER_FALLBACK

    # referee: the real prompt's format, correctness scores, positional bias visible
    instruction = "What is 123 + 456?"
    both = []
    for a1, a2 in (("579", "578"), ("578", "579")):
        r = client.chat.completions.create(
            model="offline-referee",
            messages=prompts.referee_messages(instruction, a1, a2),
            temperature=0.2,
        )
        text = r.choices[0].message.content
        assert text.startswith("Evaluation evidence: ")
        both.append(scores(text))
    (c1, w2), (w1, c2) = both
    assert c1 == c2 == 10.0  # the correct answer is exact in either place (clipped at 10)
    assert w1 - w2 == pytest.approx(1.5)  # the wrong one gains the bias when shown first

    # referee in JSON mode
    r = client.chat.completions.create(
        model="offline-referee",
        messages=prompts.referee_messages(instruction, "579", "12", json_mode=True),
        response_format={"type": "json_object"},
    )
    obj = json.loads(r.choices[0].message.content)
    assert obj["score_assistant_1"] == 10.0 and obj["score_assistant_2"] < 5
    assert obj["evaluation_evidence"]

    # referee re-ask: the conversation holds the bad answer and the re-ask
    reask = [
        *prompts.referee_messages(instruction, "579", "578"),
        {"role": "assistant", "content": "Both are fine."},
        {"role": "user", "content": prompts.REFEREE_REASK},
    ]
    r = client.chat.completions.create(model="offline-referee", messages=reask)
    assert scores(r.choices[0].message.content)[0] == 10.0

    # generator: hard -> same family and variant; easy -> the family's rare variant
    seed = make_instance("sort", 4, random.Random(1))
    hard, easy = [], []
    for sample in range(1, 7):
        for kind, out in (("hard", hard), ("easy", easy)):
            r = client.chat.completions.create(
                model="offline-generator",
                messages=prompts.generator_messages(seed.instruction, kind),
                temperature=1.0,
                seed=sample,
            )
            out.append(solve(r.choices[0].message.content))
    assert all(i is not None and i.family == "sort" and not i.rare for i in hard)
    assert all(i is not None and i.family == "sort" and i.rare for i in easy)
    assert all(abs(i.difficulty - seed.difficulty) <= 1 for i in hard + easy)
    assert len({i.instruction for i in hard}) > 1  # samples differ

    # deterministic: the same body gets the same answer
    def generate(sample: int) -> str:
        r = client.chat.completions.create(
            model="offline-generator",
            messages=prompts.generator_messages(seed.instruction, "hard"),
            temperature=1.0,
            seed=sample,
        )
        return r.choices[0].message.content

    assert generate(3) == generate(3)

    # max_tokens: a longer answer is cut, finish_reason "length"
    long_one = make_instance("sort", 8, random.Random(2))
    r = client.chat.completions.create(
        model="offline-teacher",
        messages=prompts.teacher_messages(long_one.instruction, long_one.input),
        max_tokens=3,
    )
    assert r.choices[0].finish_reason == "length"
    assert len(r.choices[0].message.content.split()) == 3

    stats = json.loads(urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats").read())
    assert stats["teacher"]["requests"] == 23
    assert stats["referee"]["requests"] == 4
    assert stats["generator"]["requests"] == 14
    assert stats["generator"]["distinct_bodies"] == 12  # the hard sample-3 body, thrice
    assert stats["teacher"]["status"] == {"200": 23}

    req = urllib.request.Request(base_url.removesuffix("/v1") + "/stats/reset", method="POST")
    urllib.request.urlopen(req).read()
    stats = json.loads(urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats").read())
    assert stats == {}


def test_faults_are_injected_and_counted(offline_server):
    server = offline_server(
        faults={"rate_429": 0.3, "rate_500": 0.3, "rate_garbled": 1.0, "retry_after": 0.25}
    )
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    codes, garbled = [], 0
    for i in range(40):
        try:
            r = client.chat.completions.create(
                model="offline-referee",
                messages=prompts.referee_messages(f"What is {i} + 1?", str(i + 1), "0"),
            )
        except openai.RateLimitError as exc:
            assert float(exc.response.headers["retry-after"]) == 0.25
            assert exc.response.headers["retry-after-ms"] == "250"
            codes.append(429)
        except openai.InternalServerError:
            codes.append(500)
        else:
            codes.append(200)
            text = r.choices[0].message.content
            assert not SCORE_RE.search(text) and not re.search(r"\d", text)
            garbled += 1
    stats = server.stats()["referee"]
    assert stats["requests"] == 40 and stats["distinct_bodies"] == 40
    assert stats["status"] == {str(c): codes.count(c) for c in sorted(set(codes))}
    assert codes.count(429) > 3 and codes.count(500) > 3 and garbled > 3


def test_reasks_are_answered_properly_even_when_garbling(offline_server):
    server = offline_server(faults={"rate_garbled": 1.0}, judge_noise=0.0, positional_bias=0.0)
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    first = prompts.referee_messages("What is 20 + 7?", "27", "28")
    r = client.chat.completions.create(model="offline-referee", messages=first)
    bad = r.choices[0].message.content
    assert bad == roles.GARBLED_TEXT
    again = [
        *first,
        {"role": "assistant", "content": bad},
        {"role": "user", "content": prompts.REFEREE_REASK},
    ]
    r = client.chat.completions.create(model="offline-referee", messages=again)
    assert scores(r.choices[0].message.content) == (10.0, 4.0)

    first = prompts.referee_messages("What is 20 + 7?", "28", "27", json_mode=True)
    fmt = {"type": "json_object"}
    r = client.chat.completions.create(model="m", messages=first, response_format=fmt)
    bad = r.choices[0].message.content
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad)
    again = [
        *first,
        {"role": "assistant", "content": bad},
        {"role": "user", "content": prompts.REFEREE_REASK_JSON},
    ]
    r = client.chat.completions.create(model="m", messages=again, response_format=fmt)
    obj = json.loads(r.choices[0].message.content)
    assert (obj["score_assistant_1"], obj["score_assistant_2"]) == (4.0, 10.0)


def test_an_embedded_world_leaves_the_process_logging_alone(offline_server):
    """Started inside a flow run, the world must not reconfigure logging: uvicorn's own
    dictConfig would flush and close every handler of the process (Prefect's API log handler
    among them, which deadlocked a flow run that started a world)."""
    import logging

    class Recorder(logging.Handler):
        closed = flushed = False

        def emit(self, record: logging.LogRecord) -> None:
            pass

        def flush(self) -> None:
            self.flushed = True

        def close(self) -> None:
            self.closed = True
            super().close()

    handler = Recorder()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        server = offline_server(judge_noise=0.0)
        server.stop()
        assert handler in root.handlers
        assert not handler.closed and not handler.flushed
    finally:
        root.removeHandler(handler)


# ---- the learnability gradient: a skill, a tiered table, and families out of reach ---------


def test_repeat_and_capital_answers_and_the_capital_table():
    from lion_core.offline.world import _CAPITALS

    assert solve("Repeat the word 'lion'.").answer == "lion"
    assert solve("Say 'lion' two times.").answer == "lion lion"
    assert [len(tier) for tier in _CAPITALS] == [d + 1 for d in range(1, 21)]
    names = [name for tier in _CAPITALS for pair in tier for name in pair]
    assert len(names) == len(set(names))  # no name twice: every answer is unique
    (country, capital), *_ = _CAPITALS[2]
    got = solve(f"What is the capital of {country}?")
    assert (got.family, got.answer, got.difficulty, got.rare) == ("capital", capital, 3, False)
    back = solve(f"Which country has {capital} as its capital?")
    assert (back.answer, back.rare) == (country, True)
    # a country the world never wrote is not the world's: no answer is made up for it
    assert solve("What is the capital of Atlantis?") is None


def test_families_knob_restricts_seeds_and_the_heldout_set():
    from lion_core.errors import ConfigError
    from lion_core.offline.world import heldout_instances

    seeds = seed_instances(30, seed=0, max_difficulty=6, families=["capital", "repeat"])
    assert [i.family for i in seeds[:4]] == ["repeat", "capital", "repeat", "capital"]
    held = heldout_instances(families=["capital"])
    assert {i.family for i in held} == {"capital"} and len(held) == 6 * 2
    # empty: the seven families of before, in the order they had (runs' seeds unchanged)
    assert seed_instances(20, 0, 6) == seed_instances(20, 0, 6, families=[])
    assert {i.family for i in seed_instances(20, 0, 6)} == set(DEFAULT_FAMILIES)
    assert DEFAULT_FAMILIES == (
        "addition", "multiplication", "reverse", "sort", "count", "maximum", "uppercase"
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"offline.families: unknown family 'poetry'"):
        seed_instances(5, 0, 6, families=["capital", "poetry"])
