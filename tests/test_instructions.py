"""Generation: seeds in the configured ratio, the post-filters with a status per candidate,
exact duplicates, the ROUGE-L novelty filter and exact counts per kind; deterministic."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import pytest

from lion_core.config import GeneratorConfig, PoolsConfig
from lion_core.llm.types import ChatRequest, ChatResult, request_key
from lion_core.method.generate import (
    clean,
    generate_candidates,
    n_requests,
    new_pool_rows,
    plan_seeds,
    post_filter,
    select_novel,
    wanted_counts,
)
from lion_core.method.prompts import CREATED_MARKER, EASY_MARKER, GIVEN_MARKER
from lion_core.run.schemas import GENERATED_SCHEMA, POOL_SCHEMA, conform, instruction_id, seed_row

HARD_MARKER = "the same domain and the same task type"  # what only the hard prompt asks


def status_counts(generated: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{kind: {status: count}}: where each kind's candidates went."""
    out: dict[str, dict[str, int]] = {}
    for (kind, status), n in generated.groupby(["source", "status"]).size().items():
        out.setdefault(str(kind), {})[str(status)] = int(n)
    return out


def _set(n: int, tag: str) -> pd.DataFrame:
    rows = [seed_row(f"{tag} seed instruction {i}", "" if i % 2 else f"data {i}") for i in range(n)]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------
# Seeds
# ------------------------------------------------------------------------------------------


def test_wanted_counts_follow_the_ratio_and_fall_back_to_the_other_set():
    pools = PoolsConfig(new_per_round=10, hard_share=0.3)
    assert wanted_counts(5, 5, pools) == (3, 7)
    assert wanted_counts(0, 5, pools) == (0, 10)
    assert wanted_counts(5, 0, pools) == (10, 0)
    assert wanted_counts(0, 0, pools) == (0, 0)
    assert wanted_counts(5, 5, PoolsConfig(new_per_round=7, hard_share=0.5)) == (4, 3)
    assert wanted_counts(5, 5, PoolsConfig(new_per_round=0)) == (0, 0)


def test_plan_seeds_is_deterministic_and_ignores_input_row_order():
    hard, easy = _set(8, "hard"), _set(5, "easy")
    pools = PoolsConfig(new_per_round=6, hard_share=0.5)
    plan = plan_seeds(hard, easy, pools, seed=3)
    again = plan_seeds(hard.iloc[::-1], easy.sample(frac=1, random_state=1), pools, seed=3)
    pd.testing.assert_frame_equal(plan.hard, again.hard)
    pd.testing.assert_frame_equal(plan.easy, again.easy)
    other = plan_seeds(hard, easy, pools, seed=4)
    assert plan.hard["instruction_id"].tolist() != other.hard["instruction_id"].tolist()
    assert sorted(plan.hard["instruction_id"]) == sorted(hard["instruction_id"])
    assert (plan.wanted("hard"), plan.wanted("easy")) == (3, 3)
    hard_seeds, easy_seeds = plan  # unpacks as a pair
    assert hard_seeds is plan.seeds("hard") and easy_seeds is plan.seeds("easy")

    only_easy = plan_seeds(hard.iloc[:0], easy, pools, seed=3)
    assert only_easy.wanted("hard") == 0 and only_easy.wanted("easy") == 6
    assert only_easy.hard.empty and len(only_easy.easy) == 5
    with pytest.raises(ValueError, match="kind"):
        plan.seeds("medium")


# ------------------------------------------------------------------------------------------
# Cleaning and post-filters
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("  Add 3 and 4 please.\n", "Add 3 and 4 please."),
        ("#Created Instruction#: Add 3 and 4 please.", "Add 3 and 4 please."),
        ("**Created Instruction:** Add 3 and 4 please.", "Add 3 and 4 please."),
        ('"Add 3 and 4 please."', "Add 3 and 4 please."),
        ("“Add 3 and 4 please.”", "Add 3 and 4 please."),
        ("#Created Instruction#:\n'Add 3 and 4 please.'", "Add 3 and 4 please."),
        ('"Hello" is a greeting; translate it.', '"Hello" is a greeting; translate it.'),
        ('"Hello" and "World" are two words.', '"Hello" and "World" are two words.'),
        ("'Don't stop' is a song; name its band.'", "'Don't stop' is a song; name its band.'"),
        ("'Name a song you can't forget.'", "Name a song you can't forget."),
        (None, ""),
    ],
)
def test_clean(raw, cleaned):
    assert clean(raw) == cleaned


@pytest.mark.parametrize(
    ("text", "finish", "status"),
    [
        ("Add 3 and 4 please.", "stop", None),
        ("Add 3 and 4 please and then", "length", "truncated"),
        ("", "stop", "empty"),
        ("Add three numbers.", "stop", "too_short"),
        ("- Add 3 and 4 please.", "stop", "punctuation"),
        ("(Add 3 and 4 please.)", "stop", "punctuation"),
        ("Ünïcode words start this instruction here.", "stop", "non_ascii"),
        ("Rewrite the given instruction in passive voice.", "stop", "echo"),
        ("Here is the #Created Instruction#: add 3 and 4.", "stop", "echo"),
        # the original's "contains 'instruction'" rule would drop these legitimate tasks
        ("Write step-by-step instructions for tying a tie.", "stop", None),
        ("Summarize the instruction manual of a washing machine.", "stop", None),
    ],
)
def test_post_filter(text, finish, status):
    assert post_filter(text, finish, GeneratorConfig()) == status


def test_post_filter_is_configurable():
    text = "Übersetze diesen Satz ins Englische bitte."
    assert post_filter(text, "stop", GeneratorConfig()) == "non_ascii"
    assert post_filter(text, "stop", GeneratorConfig(drop_non_ascii_start=False)) is None
    assert post_filter("Add three numbers.", "stop", GeneratorConfig(min_words=3)) is None


# ------------------------------------------------------------------------------------------
# Candidates with a scripted generator
# ------------------------------------------------------------------------------------------


class Scripted:
    """A Completer answering each request with `answer(request, index)`."""

    def __init__(self, answer: Callable[[ChatRequest, int], ChatResult | tuple[str, str]]):
        self.answer = answer
        self.requests: list[ChatRequest] = []

    def run(self, requests: Sequence[ChatRequest], *, desc: str = "") -> list[ChatResult]:
        out = []
        for req in requests:
            got = self.answer(req, len(self.requests))
            self.requests.append(req)
            if isinstance(got, ChatResult):
                out.append(got)
                continue
            text, finish = got
            key = request_key("m", req.message_dicts(), {"sample": req.sample})
            out.append(
                ChatResult(key=key, tag=req.tag, status="ok", text=text, finish_reason=finish)
            )
        return out


SCRIPT = [
    ("Compose a haiku about the autumn river.", "stop"),
    ("#Created Instruction#: Explain why the sky looks blue at noon.", "stop"),
    ("Too short.", "stop"),
    ("Describe the rules of chess in a long and", "length"),
    ("!!! List three prime numbers above fifty.", "stop"),
    ("Écrivez un poème sur la mer et le vent.", "stop"),
    (None, None),  # failed request
    ("Rewrite the given instruction so it is clearer.", "stop"),
    ('"Name four rivers that flow through Europe."', "stop"),
]


def _script(req: ChatRequest, i: int):
    text, finish = SCRIPT[i % len(SCRIPT)]
    if text is None:
        return ChatResult(key=f"k{i}", tag=req.tag, status="failed", error="HTTP 503 after retries")
    return text, finish


def test_candidates_statuses_samples_and_oversampling():
    seeds = _set(4, "hard")
    client = Scripted(_script)
    cfg = GeneratorConfig(oversample=1.5)
    out = generate_candidates(seeds, "hard", 6, client, cfg, round=2)
    conform(out, GENERATED_SCHEMA, "candidates")
    assert list(out.columns) == GENERATED_SCHEMA.names
    assert len(out) == n_requests(6, 1.5) == 9
    assert out["status"].tolist() == [
        "candidate",
        "candidate",
        "too_short",
        "truncated",
        "punctuation",
        "non_ascii",
        "failed",
        "echo",
        "candidate",
    ]
    assert out.loc[1, "instruction"] == "Explain why the sky looks blue at noon."
    assert out.loc[8, "instruction"] == "Name four rivers that flow through Europe."
    assert out.loc[6, "error"] == "HTTP 503 after retries" and pd.isna(out.loc[6, "instruction"])
    assert (out["source"] == "hard").all() and (out["round"] == 2).all()
    assert (out["input"] == "").all()
    ok = out["instruction"].notna()
    assert (out.loc[ok, "instruction_id"] == out.loc[ok, "instruction"].map(instruction_id)).all()
    # requests walk the seeds in order, wrapping around, each with its own sample index
    assert [r.sample for r in client.requests] == list(range(9))
    expected_parents = [seeds["instruction_id"][k % 4] for k in range(9)]
    assert out["parent_id"].tolist() == expected_parents
    first = client.requests[0].messages[1][1]
    assert HARD_MARKER in first and GIVEN_MARKER in first and first.endswith(CREATED_MARKER)
    # the seed's input is shown with its instruction
    assert "hard seed instruction 0\n\ndata 0" in first

    easy = generate_candidates(seeds, "easy", 2, Scripted(_script), cfg, round=2)
    assert len(easy) == 3 and (easy["source"] == "easy").all()
    none = generate_candidates(seeds.iloc[:0], "easy", 0, client, cfg, round=2)
    assert none.empty and list(none.columns) == GENERATED_SCHEMA.names
    with pytest.raises(ValueError, match="no easy seeds"):
        generate_candidates(seeds.iloc[:0], "easy", 3, client, cfg, round=2)


def test_easy_prompt_for_easy_kind():
    client = Scripted(_script)
    generate_candidates(_set(2, "easy"), "easy", 1, client, GeneratorConfig(oversample=1.0), 1)
    assert EASY_MARKER in client.requests[0].messages[1][1]


# ------------------------------------------------------------------------------------------
# Duplicates, novelty and quotas (the real ROUGE-L filter)
# ------------------------------------------------------------------------------------------


def _candidates(texts: dict[str, list[str | None]]) -> pd.DataFrame:
    """Candidate rows per kind; None is a candidate that failed a post-filter."""
    rows = []
    for kind, items in texts.items():
        for k, text in enumerate(items):
            rows.append(
                {
                    "instruction_id": instruction_id(text) if text else None,
                    "instruction": text,
                    "input": "",
                    "reference": None,
                    "source": kind,
                    "parent_id": f"{kind}-seed-{k % 2}",
                    "round": 1,
                    "status": "candidate" if text else "too_short",
                    "error": None,
                    "request_key": f"{kind}-{k}",
                }
            )
    return pd.DataFrame(rows, columns=GENERATED_SCHEMA.names)


POOL = [
    "Write a short poem about the sea at night.",
    "List three uses of copper in modern electronics.",
]


def test_duplicates_novelty_and_exact_counts():
    cands = _candidates(
        {
            "hard": [
                "Write a short poem about the sea at night.",  # exactly a pool instruction
                "Write a short poem about the sea at dawn.",  # near-copy of the pool
                "Explain how a refrigerator keeps food cold.",
                None,
                "Explain how a refrigerator keeps food cold.",  # exact duplicate of a candidate
                "Describe the life cycle of a monarch butterfly.",
                "Name five famous bridges and their cities.",
            ],
            "easy": [
                "Translate a medieval recipe into modern measurements.",
                "Translate a medieval recipe into modern measurements please.",  # near-copy
                "Invent a board game played with seashells.",
                "Summarize the plot of an imaginary opera.",
            ],
        }
    )
    out = select_novel(cands, POOL, n_hard=2, n_easy=2, threshold=0.7)
    conform(out, GENERATED_SCHEMA, "generated")
    assert out["source"].tolist() == ["hard"] * 7 + ["easy"] * 4
    assert out["request_key"].tolist() == cands["request_key"].tolist()
    assert out["status"].tolist() == [
        "duplicate",
        "not_novel",
        "kept",
        "too_short",
        "duplicate",
        "kept",
        "surplus",
        "kept",
        "not_novel",
        "kept",
        "surplus",
    ]
    rows = new_pool_rows(out)
    conform(rows, POOL_SCHEMA, "new rows")
    assert len(rows) == 4 and rows["source"].tolist() == ["hard", "hard", "easy", "easy"]
    assert status_counts(out)["hard"] == {
        "duplicate": 2,
        "kept": 2,
        "not_novel": 1,
        "surplus": 1,
        "too_short": 1,
    }
    # the kinds' concatenation order does not matter
    swapped = pd.concat([cands[cands.source == "easy"], cands[cands.source == "hard"]])
    pd.testing.assert_frame_equal(select_novel(swapped, POOL, 2, 2, 0.7), out)


def test_a_surplus_candidate_does_not_block_the_other_kind():
    """Hard fills up first; its next (novel) candidate is surplus, and an easy candidate much
    like that surplus one is still kept: it is judged as if the surplus one never existed."""
    cands = _candidates(
        {
            "hard": ["alpha beta gamma delta epsilon", "zeta eta theta iota kappa"],
            "easy": ["one two three four five", "zeta eta theta iota kappa lambda"],
        }
    )
    out = select_novel(cands, [], n_hard=1, n_easy=2, threshold=0.7)
    assert out["status"].tolist() == ["kept", "surplus", "kept", "kept"]
    both_free = select_novel(cands, [], n_hard=2, n_easy=2, threshold=0.7)
    assert both_free["status"].tolist() == ["kept", "kept", "kept", "not_novel"]


def _sequential(cands: pd.DataFrame, pool: list[str], need: dict[str, int]) -> list[str]:
    """Reference: judge one candidate at a time in the interleaved order, with rouge_score."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    order = []
    for kind in ("hard", "easy"):
        group = cands[cands.source == kind]
        order += [
            ((r + 0.5) / len(group), k, i)
            for r, i in enumerate(group.index)
            for k in [("hard", "easy").index(kind)]
        ]
    status = dict.fromkeys(cands.index, "")
    kept: list[str] = list(pool)
    seen: set[str] = {" ".join(p.split()) for p in pool}
    for _, _, i in sorted(order):
        text, kind = cands.at[i, "instruction"], cands.at[i, "source"]
        norm = " ".join(text.split())
        if norm in seen:
            status[i] = "duplicate"
            continue
        seen.add(norm)
        if need[kind] == 0:
            status[i] = "surplus"
        elif any(scorer.score(k, text)["rougeL"].fmeasure > 0.7 for k in kept):
            status[i] = "not_novel"
        else:
            status[i] = "kept"
            kept.append(text)
            need[kind] -= 1
    return [status[i] for i in cands.index]


def test_select_novel_equals_judging_one_candidate_at_a_time():
    import random

    rng = random.Random(7)
    vocab = ["red", "green", "blue", "cat", "dog", "fish"]
    vocab += ["run", "jump", "swim", "fast", "slow", "big"]
    seen: set[str] = set()
    for trial in range(20):
        texts: dict[str, list[str | None]] = {"hard": [], "easy": []}
        for _ in range(rng.randint(0, 24)):
            made = [t for ts in texts.values() for t in ts]
            if made and rng.random() < 0.1:
                text = rng.choice(made)  # an exact duplicate
            else:
                text = " ".join(rng.choices(vocab, k=rng.randint(3, 6)))
            texts[rng.choice(("hard", "easy"))].append(text)
        cands = _candidates(texts)
        pool = [" ".join(rng.choices(vocab, k=5)) for _ in range(5)]
        need = {"hard": rng.randint(0, 5), "easy": rng.randint(0, 5)}
        out = select_novel(cands, pool, need["hard"], need["easy"], 0.7)
        assert out["status"].tolist() == _sequential(cands, pool, dict(need)), trial
        seen.update(out["status"])
        kept = out[out.status == "kept"].source.value_counts()
        assert kept.get("hard", 0) <= need["hard"] and kept.get("easy", 0) <= need["easy"]
    assert {"kept", "not_novel", "duplicate", "surplus"} <= seen  # every path was exercised


# ------------------------------------------------------------------------------------------
# Through the real offline generator (HTTP server + LLMClient)
# ------------------------------------------------------------------------------------------


def _offline_generation(pools_cfg: PoolsConfig, gen_cfg: GeneratorConfig, seed: int = 0):
    from lion_core.config import OfflineWorldConfig
    from lion_core.llm.client import LLMClient
    from lion_core.offline import OfflineServer, seed_pool

    train = seed_pool(60, seed=3, max_difficulty=4)
    hard, easy = train.iloc[:20], train.iloc[20:45]
    plan = plan_seeds(hard, easy, pools_cfg, seed)
    with OfflineServer(OfflineWorldConfig(seed=1)) as server:
        client = LLMClient(gen_cfg, role="generator", cache=None, base_url=server.base_url)
        found = [
            generate_candidates(plan.seeds(k), k, plan.wanted(k), client, gen_cfg, round=1)
            for k in ("hard", "easy")
        ]
        served = server.stats()["generator"]
    candidates = pd.concat(found, ignore_index=True)
    generated = select_novel(
        candidates, train["instruction"].tolist(), plan.wanted("hard"), plan.wanted("easy"), 0.7
    )
    return train, plan, candidates, generated, served


def test_generation_through_the_offline_world():
    from lion_core.offline import solve

    pools_cfg = PoolsConfig(new_per_round=16, hard_share=0.25)
    gen_cfg = GeneratorConfig(oversample=4.0, max_tokens=9, concurrency=8)
    train, plan, candidates, generated, served = _offline_generation(pools_cfg, gen_cfg)
    assert (plan.wanted("hard"), plan.wanted("easy")) == (4, 12)
    assert served["requests"] == served["distinct_bodies"] == 16 + 48 == len(candidates)
    conform(generated, GENERATED_SCHEMA, "generated")

    # the post-filters and the novelty filter all had work to do, and every kind got exactly
    # what it wanted
    counts = status_counts(generated)
    assert counts["hard"]["kept"] == 4 and counts["easy"]["kept"] == 12
    statuses = set(generated["status"])
    assert {"kept", "too_short", "truncated", "not_novel", "surplus"} <= statuses, counts

    # right family: hard = the seed's family and variant, easy = the seed's family, rare variant
    seeds = train.set_index("instruction_id")
    for row in generated[generated["status"] != "truncated"].itertuples():
        made = solve(row.instruction)
        parent = seeds.loc[row.parent_id]
        seed_inst = solve(parent["instruction"], parent["input"])
        assert made is not None and made.family == seed_inst.family, row.instruction
        assert made.rare == (row.source == "easy"), row.instruction
    new = new_pool_rows(generated)
    conform(new, POOL_SCHEMA, "new rows")
    assert len(new) == 16 and new["instruction_id"].is_unique
    assert not set(new["instruction"]) & set(train["instruction"])
    assert (new["round"] == 1).all() and new["input"].eq("").all()

    # diversity: the new instructions' categories are the offline families they belong to
    from collections import Counter

    from lion_core.method.diversity import diversity

    stats = diversity(generated, train, offline_families=True)
    kept = generated[generated["status"] == "kept"]
    assert stats.kept == 16 and stats.category_basis == "offline family"
    assert stats.categories == dict(Counter(solve(t).family for t in kept["instruction"]))
    not_novel = counts["hard"].get("not_novel", 0) + counts["easy"].get("not_novel", 0)
    assert stats.not_novel == not_novel and stats.judged == 16 + not_novel + stats.duplicate
    # kept ones are at most the threshold from every pool instruction; a dropped one may be
    # below it against the pool (dropped for an earlier candidate of this round)
    assert 0 < stats.kept_max_rouge.max <= 0.7 and stats.dropped_max_rouge.count == not_novel

    # deterministic: a second run (fresh server, no cache) gives the same rows
    again = _offline_generation(pools_cfg, gen_cfg)[3]
    pd.testing.assert_frame_equal(again, generated)
