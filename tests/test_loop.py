"""Issue 21, the loop after round 1: a held-back Cache Pool, the split against the truth, top-up
generation, the per-category cap, the ablation's costs and paired differences. Unit tests of the
pieces against the real offline world (in-process, over loopback HTTP where a client is
needed); one small round end to end."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lion_core.config import GeneratorConfig, LionConfig, PoolsConfig
from lion_core.config.presets import preset_config
from lion_core.evaluation import ablation
from lion_core.llm import LLMClient
from lion_core.method.discriminate import split_truth
from lion_core.method.generate import (
    allocate,
    fill,
    generate_candidates,
    holdback,
    plan_seeds,
    seed_categories,
    select_novel,
    shortfall,
)
from lion_core.offline.roles import answer_is_right
from lion_core.offline.world import make_instance, seed_pool
from lion_core.run.schemas import SPLIT_SCHEMA

GOLDEN = {
    "paper-7b": "1bc4ec36445c7c351fce4c59b09431f4d67eb66b1d99d27f8f1a82aa2a42528d",
    "gpu-1b": "d10421e5e6630307181bf28206739acea47f97240bfa0c385f833c1f0453e248",
}


def _split_frame(pool: pd.DataFrame, student: list[str | None]) -> pd.DataFrame:
    frame = pool.reindex(columns=SPLIT_SCHEMA.names).copy()
    frame["student_answer"] = student
    return frame


# ---- config --------------------------------------------------------------------------------


def test_added_fields_at_their_default_leave_the_digest_alone():
    for name, digest in GOLDEN.items():
        assert preset_config(name).digest() == digest
    base = LionConfig()
    assert base.with_overrides({"pools.holdback": 0.0}).digest() == base.digest()
    for field, value in (
        ("pools.holdback", 0.5),
        ("generator.max_attempts", 3),
        ("generator.max_category_share", 0.4),
    ):
        assert base.with_overrides({field: value}).digest() != base.digest(), field
    demo = preset_config("demo")
    assert demo.pools.holdback > 0 and demo.generator.max_attempts > 1
    assert demo.generator.max_category_share < 0.5


# ---- the split against the truth -------------------------------------------------------------


def test_answer_is_right_is_the_worlds_exact_answer():
    pool = seed_pool(4, seed=0, max_difficulty=3)
    row = pool.iloc[0]
    assert answer_is_right(row["instruction"], row["input"], row["reference"]) is True
    assert answer_is_right(row["instruction"], row["input"], row["reference"] + ".") is True
    assert answer_is_right(row["instruction"], row["input"], "zzz") is False
    assert answer_is_right(row["instruction"], row["input"], None) is False
    assert answer_is_right("Write a poem about the sea.", "", "waves") is None


def test_split_truth_is_the_precision_of_hard_and_easy():
    pool = seed_pool(8, seed=1, max_difficulty=4)
    right, wrong = pool["reference"].tolist(), ["zzz"] * 8
    # hard: 3 wrong + 1 right -> 0.75; easy: 2 right + 2 wrong -> 0.5
    hard = _split_frame(pool.iloc[:4], wrong[:3] + right[3:4])
    easy = _split_frame(pool.iloc[4:], right[4:6] + wrong[6:8])
    unknown = _split_frame(pool.iloc[:1].assign(instruction="Write a poem.", input=""), ["x"])
    stats = split_truth(pd.concat([hard, unknown]), easy, answer_is_right)
    assert stats == {"truth_known": 8, "hard_precision": 0.75, "easy_precision": 0.5}
    none = split_truth(unknown, unknown.iloc[:0], answer_is_right)
    assert none == {"truth_known": 0, "hard_precision": None, "easy_precision": None}


# ---- holdback ------------------------------------------------------------------------------


def test_holdback_draws_a_share_of_each_kind_whatever_the_row_order():
    pool = seed_pool(40, seed=2, max_difficulty=6)
    pool["source"] = ["hard"] * 30 + ["easy"] * 10
    held = holdback(pool, 0.5, seed=7)
    assert held["source"].value_counts().to_dict() == {"hard": 15, "easy": 5}
    again = holdback(pool.sample(frac=1, random_state=3), 0.5, seed=7)
    assert set(again["instruction_id"]) == set(held["instruction_id"])
    assert set(holdback(pool, 0.5, seed=8)["instruction_id"]) != set(held["instruction_id"])
    assert holdback(pool, 0.0, seed=7).empty


# ---- the category cap ------------------------------------------------------------------------


def test_allocate_is_proportional_capped_and_exceeds_only_when_it_must():
    assert allocate({"a": 90, "b": 5, "c": 5}, 100, dict.fromkeys("abc", 40)) == {
        "a": 40,
        "b": 30,
        "c": 30,
    }
    assert allocate({"a": 3, "b": 1}, 8, {"a": math.inf, "b": math.inf}) == {"a": 6, "b": 2}
    # two categories, each capped at 40 of 100: the seeds demand more, in proportion
    assert allocate({"a": 90, "b": 10}, 100, {"a": 40, "b": 40}) == {"a": 58, "b": 42}
    assert sum(allocate({"a": 1, "b": 1, "c": 1}, 10, {}).values()) == 10
    assert allocate({"a": 1}, 0, {}) == {}


def _seeds(families: list[str], seed: int = 0) -> pd.DataFrame:
    import random

    rng = random.Random(seed)
    rows = []
    for family in families:
        inst = make_instance(family, rng.randint(1, 4), rng, self_contained=True)
        rows.append({"instruction": inst.instruction, "input": ""})
    from lion_core.run.schemas import seed_row

    frame = pd.DataFrame([seed_row(r["instruction"], "") for r in rows])
    return frame.drop_duplicates("instruction_id").reindex(columns=SPLIT_SCHEMA.names)


def test_plan_seeds_spreads_requests_over_families_under_the_cap():
    hard = _seeds(["sort"] * 30 + ["count"] * 3 + ["addition"] * 3)
    easy = _seeds(["sort"] * 10 + ["reverse"] * 2 + ["maximum"] * 2, seed=1)
    pools = PoolsConfig(new_per_round=40, hard_share=0.5)
    gen = GeneratorConfig(oversample=2.0, max_category_share=0.4)
    cats = seed_categories(pd.concat([hard, easy]), offline=True)
    plan = plan_seeds(hard, easy, pools, 3, gen, cats)
    assert (len(plan.hard), len(plan.easy)) == (40, 40)  # one row per request
    fams = pd.Series([cats[i] for i in pd.concat([plan.hard, plan.easy])["instruction_id"]])
    assert fams.value_counts()["sort"] <= 0.4 * 80
    # without the cap, the walk is the shuffled seeds (the paper's behaviour)
    legacy = plan_seeds(hard, easy, pools, 3)
    assert len(legacy.hard) == len(hard) and legacy.categories is None
    assert plan_seeds(hard, easy, pools, 3, GeneratorConfig(), cats).hard.equals(legacy.hard)


def _candidates(parents: list[str], texts: list[str], kind: str = "hard") -> pd.DataFrame:
    from lion_core.run.schemas import instruction_id

    return pd.DataFrame(
        {
            "instruction_id": [instruction_id(t, "") for t in texts],
            "instruction": texts,
            "input": "",
            "reference": None,
            "source": kind,
            "parent_id": parents,
            "round": 1,
            "status": "candidate",
            "error": None,
            "request_key": [f"k{i}" for i in range(len(texts))],
        }
    )


def test_select_novel_caps_a_category_and_relaxes_when_nothing_else_is_left():
    texts = [
        "Sort the numbers 4, 9, 1 in ascending order please.",
        "Name three rivers that flow through Europe.",
        "Compose a haiku about an autumn morning.",
        "Explain how a rainbow forms after rain.",
        "List four prime numbers above fifty.",
    ]
    parents = ["p1", "p1", "p1", "p2", "p1"]
    cats = {"p1": "sort", "p2": "count"}
    room = {"sort": 2, "count": 2}
    out = select_novel(_candidates(parents, texts), [], 5, 0, category_of=cats, room=room,
                       relax=False)  # fmt: skip
    assert out["status"].tolist() == ["kept", "kept", "capped", "kept", "capped"]
    relaxed = select_novel(_candidates(parents, texts), [], 4, 0, category_of=cats, room=room)
    assert relaxed["status"].tolist() == ["kept", "kept", "kept", "kept", "surplus"]
    assert select_novel(_candidates(parents, texts), [], 5, 0)["status"].eq("kept").all()


def test_a_kind_whose_families_are_full_cedes_its_shortfall_to_the_other():
    from lion_core.method.generate import SeedPlan, cede

    hard = _seeds(["sort", "count", "addition"])
    easy = _seeds(["reverse", "reverse"], seed=5)
    cats = seed_categories(pd.concat([hard, easy]), offline=True)
    plan = SeedPlan(hard, easy, 5, 5, cats)
    gen = GeneratorConfig(max_category_share=0.4)  # 4 of the round's 10 per family
    parent = easy["instruction_id"].iloc[0]
    texts = [f"Reverse the word number {i} kept." for i in range(6)]
    cands = _candidates([parent] * 6, texts, kind="easy")
    cands["status"] = ["kept"] * 4 + ["capped"] * 2  # reverse is full, easy is 1 short
    ceded = cede(plan, cands, gen)
    assert (ceded.n_hard, ceded.n_easy) == (6, 4) and shortfall(cands, ceded)["easy"] == 0
    # the short kind still has room (a top-up may fill it): nothing moves
    cands["status"] = ["kept"] * 3 + ["not_novel"] * 3
    assert cede(plan, cands, gen) is plan
    # the other kind has no room either: nothing moves (the last pass relaxes the cap)
    assert (
        cede(
            SeedPlan(easy, easy, 5, 5, cats),
            cands.assign(status=["kept"] * 4 + ["capped"] * 2),
            gen,
        ).n_easy
        == 5
    )


def test_fill_cedes_only_while_another_pass_follows():
    from lion_core.method.generate import SeedPlan

    hard = _seeds(["sort", "count", "addition"])
    easy = _seeds(["reverse", "reverse"], seed=5)
    cats = seed_categories(pd.concat([hard, easy]), offline=True)
    plan = SeedPlan(hard, easy, 5, 5, cats)
    words = ["river", "castle", "orange", "planet", "violin", "garden", "copper", "winter"]
    words += ["falcon", "marble", "saddle", "pepper", "harbor", "lantern", "meadow", "tunnel"]

    def texts(k: int, at: int) -> list[str]:  # pairwise far apart: every one is novel
        return [f"{words[at + i]} {words[(at + i + 5) % 16]} number {at + i}" for i in range(k)]

    first = pd.concat(
        [_candidates([hard["instruction_id"].iloc[i % 3] for i in range(5)], texts(5, 0)),
         _candidates([easy["instruction_id"].iloc[0]] * 6, texts(6, 5), kind="easy")],
        ignore_index=True,
    )  # fmt: skip
    asked = []

    def ask(seeds, kind, start):
        asked.append((kind, len(seeds)))
        return _candidates(list(seeds["instruction_id"]), texts(len(seeds), 11), kind=kind)

    gen = GeneratorConfig(oversample=1.0, max_category_share=0.4, max_attempts=1)
    # one pass: nothing to cede to; the last pass relaxes the cap for the short kind
    once, passes, end = fill(first, [], plan, gen, 0.7, ask)
    assert passes == 1 and end is plan and not asked
    assert once.loc[once["status"] == "kept", "source"].value_counts()["easy"] == 5
    # a shortfall left after the last pass stays its own kind's (reported as easy, not hard)
    short_first = first.iloc[:9]  # easy has 4 candidates: its family full, one short
    left, _, end = fill(short_first, [], plan, gen, 0.7, ask)
    assert end is plan and shortfall(left, end) == {"hard": 0, "easy": 1}
    # two passes: easy's one family is full after the first, so hard asks for the rest
    gen = gen.model_copy(update={"max_attempts": 2})
    twice, passes, end = fill(first, [], plan, gen, 0.7, ask)
    assert passes == 2 and (end.n_hard, end.n_easy) == (6, 4) and asked == [("hard", 1)]
    kept = twice[twice["status"] == "kept"]
    assert kept["source"].value_counts().to_dict() == {"hard": 6, "easy": 4}
    assert shortfall(twice, end) == {"hard": 0, "easy": 0}
    # a hard candidate left over (surplus) in the first pass is kept instead of a new request
    spare = _candidates([hard["instruction_id"].iloc[0]], texts(1, 13))
    with_spare = pd.concat([first, spare], ignore_index=True)
    asked.clear()
    reused, passes, end = fill(with_spare, [], plan, gen, 0.7, ask)
    assert passes == 1 and not asked and (end.n_hard, end.n_easy) == (6, 4)
    assert reused.loc[reused["status"] == "kept", "instruction"].isin(spare["instruction"]).any()
    assert shortfall(reused, end) == {"hard": 0, "easy": 0}
    # ... judged against everything kept: a near copy of a kept easy one is not novel
    easy_kept = twice.loc[(twice["status"] == "kept") & (twice["source"] == "easy"), "instruction"]
    near = _candidates([hard["instruction_id"].iloc[0]], [easy_kept.iloc[0] + " again"])
    asked.clear()
    copied, passes, _ = fill(pd.concat([first, near], ignore_index=True), [], plan, gen, 0.7, ask)
    status = copied.set_index("instruction")["status"]
    assert status[near["instruction"].iloc[0]] == "not_novel"
    assert passes == 2 and asked == [("hard", 1)]


# ---- top-up generation, against the offline world --------------------------------------------


def _generator(server) -> LLMClient:
    cfg = GeneratorConfig(concurrency=8)
    return LLMClient(cfg, role="generator", cache=None, base_url=server.base_url)


@pytest.mark.parametrize("cap", [1.0, 0.4])
def test_fill_tops_up_until_the_round_has_its_instructions(offline_server, cap):
    server = offline_server()
    client = _generator(server)
    hard = _seeds(["sort", "sort", "sort", "count", "addition"])
    easy = _seeds(["reverse", "maximum"], seed=5)
    pools = PoolsConfig(new_per_round=30, hard_share=0.5)
    one = GeneratorConfig(oversample=1.0, max_attempts=1, max_category_share=cap)
    many = one.model_copy(update={"max_attempts": 6})
    cats = seed_categories(pd.concat([hard, easy]), offline=True) if cap < 1 else None
    plan = plan_seeds(hard, easy, pools, 0, many, cats)
    first = pd.concat(
        [generate_candidates(plan.seeds(k), k, plan.wanted(k), client, many, 1)
         for k in ("hard", "easy")], ignore_index=True,
    )  # fmt: skip

    def ask(seeds, kind, start):
        return generate_candidates(seeds, kind, 0, client, many, 1, start, len(seeds))

    pool = [i for i in hard["instruction"]] + [i for i in easy["instruction"]]
    once, passes, _ = fill(first, pool, plan, one, 0.7, ask)
    assert passes == 1
    topped, passes, _ = fill(first, pool, plan, many, 0.7, ask)
    short_once, short = shortfall(once, plan), shortfall(topped, plan)
    assert sum(short_once.values()) > 0, "oversample 1 on templated tasks leaves a shortfall"
    assert sum(short.values()) < sum(short_once.values()) and 1 < passes <= 6
    kept = topped[topped["status"] == "kept"]
    assert kept["instruction_id"].is_unique
    assert (kept["source"].value_counts() <= pd.Series({"hard": 15, "easy": 15})).all()
    # every request has its own sample number: no candidate came back from the cache twice
    assert topped["request_key"].is_unique
    if cap < 1:
        fams = kept["parent_id"].map(cats).value_counts()
        assert fams.max() <= math.floor(0.4 * 30) or sum(short.values()) == 0


# ---- the ablation's costs and paired differences ---------------------------------------------


def _summary(train: int, new: int, usage: dict[str, tuple[int, int, float]]) -> dict:
    return {
        "train_pool": train,
        "new_instructions": new,
        "usage": {
            role: {"requests": r, "failures": 0, "cache_hits": h, "cost_usd": usd}
            for role, (r, h, usd) in usage.items()
        },
    }


def test_costs_count_each_answer_once_and_equal_cost_buys_referee_money():
    lion = [
        _summary(100, 50, {"teacher": (100, 0, 1.0), "referee": (200, 0, 4.0),
                           "generator": (100, 0, 0.5)}),
        _summary(150, 50, {"teacher": (50, 100, 0.5), "referee": (90, 10, 1.8),
                           "generator": (100, 0, 0.5)}),
    ]  # fmt: skip
    assert ablation.answered(lion) == {"teacher": 150, "referee": 300, "generator": 200}
    prices = {"teacher": 0.01, "referee": 0.02, "generator": 0.005}
    cost = ablation.arm_cost(lion, prices)
    assert cost["usd"] == pytest.approx(1.5 + 6.0 + 1.0)
    # referee $6 over 2 rounds; a new instruction costs 2 generator requests (0.01) each round
    # plus a teacher answer in 1 of the 2 rounds: 6 / (2 * 0.01 + 1 * 0.01) = 200 per round
    assert ablation.equal_cost_extra(lion, prices, rounds=2) == 200
    cfg = ablation.arm_config(LionConfig(), "/tmp/a", "uniform-cost", 1, extra_new=200)
    assert cfg.arm == "uniform" and cfg.pools.new_per_round == 6200
    assert cfg.storage.root == "/tmp/a/uniform-cost/seed=1"


def test_unit_prices_are_what_the_cached_answers_cost_whoever_paid(tmp_path):
    """Prices come from the shared response cache, not from the runs' usage counters (a resumed
    run sends nothing and prices nothing): a payer's own answers, else everyone's."""
    from lion_core.llm import ChatResult, ResponseCache
    from lion_core.run.storage import Storage

    storage = Storage(str(tmp_path))

    def answers(role: str, payer: str, costs: list[float]) -> None:
        cache = ResponseCache(storage, role, payer=payer)
        cache.put_many(
            ChatResult(key=f"{role}-{payer}-{i}", tag="t", status="ok", text="x", cost_usd=c)
            for i, c in enumerate(costs)
        )

    answers("referee", "lion", [0.02, 0.04])
    answers("referee", "other", [0.10])
    answers("teacher", "other", [0.01, 0.0, 0.03])  # an unbilled answer (cost 0) is no price
    assert ablation.unit_prices(storage, "lion") == pytest.approx(
        {"teacher": 0.02, "referee": 0.03, "generator": 0.0}
    )
    assert ablation.unit_prices(storage)["referee"] == pytest.approx(0.16 / 3)


def test_paired_differences_have_a_t_interval_over_seeds():
    rows = pd.DataFrame(
        {
            "arm": ["lion"] * 3 + ["uniform"] * 3,
            "seed": [0, 1, 2] * 2,
            "round": [3] * 6,
            "set": "offline",
            "level": "overall",
            "category": None,
            "relative_score": [0.30, 0.35, 0.40, 0.20, 0.30, 0.30],
        }
    )
    diffs = ablation.paired(rows).set_index("arm")
    row = diffs.loc["uniform"]
    assert row["mean"] == pytest.approx(0.0833333) and row["ahead"] == 3 and row["seeds"] == 3
    sd = pd.Series([0.10, 0.05, 0.10]).std(ddof=1)
    assert row["low"] == pytest.approx(row["mean"] - 4.303 * sd / math.sqrt(3))
    text = ablation.paired_text(diffs.reset_index())
    assert "| uniform | +0.083 [" in text and "(3/3)" in text


# ---- the world stays blind to the method ------------------------------------------------------


def test_the_world_answers_a_body_the_same_whatever_the_order(offline_server):
    """An answer depends on the request body alone: two fresh worlds, the same bodies sent in
    opposite orders (as two arms would), the same answers."""
    from lion_core.llm import ChatRequest
    from lion_core.method import prompts

    seeds = seed_pool(6, seed=3, max_difficulty=5)
    requests = [
        ChatRequest.of(prompts.generator_messages(row.instruction, kind), tag=str(k), sample=k)
        for k, row in enumerate(seeds.itertuples())
        for kind in ("hard", "easy")
    ]
    forward = _generator(offline_server()).run(requests)
    backward = _generator(offline_server()).run(requests[::-1])[::-1]
    assert [r.text for r in forward] == [r.text for r in backward]
    assert len({r.text for r in forward}) == len(forward)


# ---- one small round pair end to end -------------------------------------------------------


@pytest.mark.slow
def test_two_rounds_judge_held_back_instructions(prefect_harness, tmp_path):
    """Round 2's Cache Pool is round 1's held-back share, which round 2's student has not
    trained on; it joins the Train Pool in round 3's pools; round 2's new instructions descend
    from it; each round reports the split's precision against the truth and its shortfall."""
    from test_round_flow import small_config

    from flows.round import lion_round
    from lion_core.run.store import RunStore

    cfg = small_config(
        tmp_path / "run",
        rounds=2,
        **{"pools.holdback": 0.5, "generator.max_attempts": 3,
           "generator.max_category_share": 0.4},
    )  # fmt: skip
    first = lion_round(cfg, 1)
    assert first.hard_precision is not None and first.new_wanted == 12
    assert first.new_shortfall is not None and first.hard + first.easy > 0
    store = RunStore.open(cfg.storage.root)
    train2, cache2 = store.read(2, "train_pool"), store.read(2, "cache_pool")
    assert len(cache2) == math.floor(0.5 * first.new_instructions + 0.5) or len(cache2) > 0
    assert not cache2["instruction_id"].isin(train2["instruction_id"]).any()
    assert len(train2) + len(cache2) == 24 + first.new_instructions
    second = lion_round(cfg, 2)
    assert second.cache_pool == len(cache2) and second.hard + second.easy + second.unscored > 0
    train3 = store.read(3, "train_pool")
    assert cache2["instruction_id"].isin(train3["instruction_id"]).all()
    # the new instructions' parents are the held-back Cache Pool rows: known, categorised
    assert second.diversity is not None and "unknown" not in second.diversity.categories


def test_records_from_older_runs_keep_their_task_keys():
    """A Split or NewInstructions read back from a run written before the added fields hashes
    as it did then (tasks.caching.digest), so an old root's later tasks stay Cached."""
    from lion_core.run.records import NewInstructions, Split
    from lion_core.run.schemas import ArtifactRef
    from tasks.caching import digest

    ref = {"uri": "u", "path": "p", "name": "hard", "round": 1, "rows": 3, "sha256": "ab"}
    stats = {"tau": 1.0, "total": 3, "hard": 2, "easy": 1, "unscored": 0,
             "unscored_by_reason": {}, "hard_share": 2 / 3, "mean_teacher_score": 9.0,
             "mean_student_score": 5.0, "score_ratio": 5 / 9, "mean_gap": 4.0,
             "gap_order_1": 4.5, "gap_order_2": 3.5, "positional_bias": 0.5}  # fmt: skip
    old = {"hard": ref, "easy": ref, "stats": stats}
    split = Split.model_validate(old)
    assert digest(split) == {**old, "stats": stats, "hard": ref, "easy": ref}
    newer = split.model_copy(
        update={"stats": split.stats.model_copy(update={"hard_precision": 1.0})}
    )
    assert digest(newer)["stats"]["hard_precision"] == 1.0
    new = NewInstructions(generated=ArtifactRef(**ref), statuses={"kept": 2})
    assert set(digest(new)) == {"generated", "statuses", "diversity", "domain"}


def test_family_examples_count_the_worlds_families():
    from lion_core.evaluation.curves import family_examples
    from lion_core.offline.world import DEFAULT_FAMILIES

    pool = seed_pool(14, seed=0, max_difficulty=6)
    extra = pd.DataFrame({"instruction": ["Write a poem about the sea."], "input": [""]})
    counts = family_examples(pd.concat([pool, extra], ignore_index=True))
    assert counts == {**dict.fromkeys(DEFAULT_FAMILIES, 2), "unrecognised": 1}


def test_lion_report_prints_the_split_and_its_precision_per_round(tmp_path):
    from lion_core.evaluation import scoreboard
    from lion_core.run.store import RunStore

    store = RunStore.open(str(tmp_path))
    assert scoreboard.loop_table(store) is None
    for k, (hard, easy, precision) in enumerate([(30, 10, 0.9), (20, 20, None)], start=1):
        store.write_round_summary(k, {
            "round": k, "hard": hard, "easy": easy, "hard_precision": precision,
            "easy_precision": 0.75, "student_to_teacher": 0.5, "new_shortfall": 0,
            "diversity": {"top_category_share": 0.4},
        })  # fmt: skip
    lines = scoreboard.loop_table(store).splitlines()
    assert lines[0].split()[:5] == ["round", "hard", "easy", "hard_share", "hard_prec"]
    assert lines[1].split() == ["1", "30", "10", "0.750", "0.900", "0.750", "0.500", "0.400", "0"]
    assert lines[2].split()[3:5] == ["0.500", "-"]
    assert max(len(line) for line in lines) < 100


# ---- the same seed gives the same student ----------------------------------------------------


@pytest.mark.slow
def test_the_same_seed_trains_the_same_student_twice(tmp_path):
    """Two runs of one config (own roots, own scratch): the same tokenizer, bit-identical
    weights after training, the same greedy answers — what makes a demo's scores repeat."""
    import torch

    from lion_core.run.store import RunStore
    from lion_core.student.generator import BatchedGenerator
    from lion_core.student.launch import train_student
    from lion_core.student.model import load_student, prepare_base_student

    pool = seed_pool(24, seed=5, max_difficulty=3)
    texts = [f"{r.instruction} {r.input} {r.reference}" for r in pool.itertuples()]
    data = tmp_path / "train.parquet"
    pool.rename(columns={"reference": "answer"})[["instruction", "input", "answer"]].to_parquet(
        data, index=False
    )
    models = []
    for name in ("one", "two"):
        cfg = LionConfig.from_dict({
            "storage": {"root": str(tmp_path / name)},
            "student": {"tiny": {"vocab_size": 320, "hidden_size": 32, "intermediate_size": 64,
                                 "num_layers": 1, "num_heads": 2},
                        "generation": {"max_new_tokens": 6}},
            "training": {"launcher": "python", "max_steps": 6, "micro_batch_size": 4,
                         "learning_rate": 2e-3, "max_length": 128, "save_steps": 100},
        })  # fmt: skip
        store = RunStore.open(cfg.storage.root)
        base = prepare_base_student(cfg, store, texts)
        models.append((cfg, load_student(train_student(cfg, store, 1, str(data), base), cfg)))
    (cfg, (a, tok_a)), (_, (b, tok_b)) = models
    assert tok_a.get_vocab() == tok_b.get_vocab()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    rows = pool[["instruction_id", "instruction", "input"]].head(8)
    answers = [
        {a.instruction_id: a.answer for batch in BatchedGenerator(
            m, t, cfg.student.generation, "alpaca").answer(rows) for a in batch}
        for m, t in ((a, tok_a), (b, tok_b))
    ]  # fmt: skip
    assert answers[0] == answers[1] and len(answers[0]) == 8


@pytest.mark.slow
def test_lion_ablate_prices_the_arms_and_matches_lions_cost(prefect_harness, tmp_path):
    """`uniform-cost` gets more new instructions per round than Lion, bought with what Lion's
    referee cost; the ablation writes the paired differences and USD per arm."""
    from test_round_flow import small_config

    from flows.ablate import lion_ablate
    from lion_core.run.identity import recorded_config

    cfg = small_config(
        tmp_path / "unused",
        **{"evaluation.sets": ["offline"], "evaluation.sample": 12, "evaluation.bootstrap": 0},
    )
    root = str(tmp_path / "ablation")
    text = lion_ablate(cfg, root, ["uniform-cost", "lion"], 1)
    assert "| lion |" in text and "| uniform-cost |" in text and "score per $" in text
    costs = pd.read_parquet(f"{root}/ablation_costs.parquet").set_index("arm")
    assert costs.loc["lion", "referee_usd"] > 0 and costs.loc["uniform-cost", "referee_usd"] == 0
    extra = recorded_config(f"{root}/uniform-cost/seed=0").pools.new_per_round - 12
    assert extra > 0
    paired = pd.read_parquet(f"{root}/ablation_paired.parquet")
    assert set(paired["arm"]) == {"uniform-cost"} and set(paired["round"]) == {0, 1}

    # Again on the same root, as after an interruption: every run resumes from the cache and
    # sends nothing, yet uniform-cost gets the same extra instructions (its root is accepted)
    # and the arms the same USD (before: a ConfigError naming pools.new_per_round, and $0).
    lion_ablate(cfg, root, ["uniform-cost", "lion"], 1)
    assert recorded_config(f"{root}/uniform-cost/seed=0").pools.new_per_round - 12 == extra
    again = pd.read_parquet(f"{root}/ablation_costs.parquet").set_index("arm")
    pd.testing.assert_frame_equal(again, costs)


def test_the_printed_split_table_stays_under_100_columns():
    from flows.report import summary_table
    from lion_core.method.decontaminate import Decontamination
    from lion_core.method.diversity import Diversity, RougeQuantiles
    from lion_core.run.records import RoundSummary, Usage

    none = RougeQuantiles.of([])
    diversity = Diversity(
        judged=80, kept=80, not_novel=0, duplicate=0, surplus=0, dropped_share=0.0,
        kept_max_rouge=none, dropped_max_rouge=none, category_basis="seed lineage",
        categories={"seed 0123456789ab": 32}, top_category="seed 0123456789ab",
        top_category_share=0.4,
    )  # fmt: skip
    summary = RoundSummary(
        round=12, train_pool=52_002, cache_pool=3_000, teacher_failed=0, hard=1_234, easy=1_766,
        unscored=0, teacher_score=9.9, student_score=6.1, student_to_teacher=0.61,
        positional_bias=0.2, new_instructions=6_000, next_train_pool=58_002, student="s",
        usage={"teacher": Usage(requests=104_004)}, seconds={}, diversity=diversity,
        hard_precision=0.987, easy_precision=0.912, new_wanted=6_000, new_shortfall=1_234,
        decontamination=Decontamination(
            sets=["vicuna_bench_questions", "mt_bench_questions"], rouge_l=0.7, ngram=13,
            checked=12_000, dropped=12_345, by_set={"vicuna_bench_questions": 12_345},
        ),
    )  # fmt: skip
    text = summary_table([summary])
    assert max(len(line) for line in text.splitlines()) <= 100
    last = text.split("\n\n")[-1].splitlines()
    assert last[0].split() == [
        "round", "hard_share", "hard_prec", "easy_prec", "shortfall", "largest", "largest_share",
        "contaminated",
    ]  # fmt: skip
    assert last[1].split() == ["12", "0.411", "0.987", "0.912", "1234", "seed", "0123456789ab",
                               "0.400", "12345"]  # fmt: skip
