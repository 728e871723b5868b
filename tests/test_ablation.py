"""Lion against its ablations: the `uniform` arm asks no referee and gets Lion's generation
budget, `seed-only` adds nothing, the ablation table's arithmetic, and `lion-ablate` end to end."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lion_core.config import LionConfig
from lion_core.evaluation import ablation
from lion_core.run.store import RunStore


def test_the_table_averages_seeds_with_a_t_interval():
    rows = pd.DataFrame(
        {
            "arm": ["lion"] * 3 + ["uniform"] * 3,
            "seed": [0, 1, 2] * 2,
            "round": [1] * 6,
            "set": ["offline"] * 6,
            "level": ["overall"] * 6,
            "category": [None] * 6,
            "relative_score": [0.30, 0.40, 0.50, 0.20, 0.20, 0.20],
        }
    )
    table = ablation.table(rows).set_index("arm")
    lion = table.loc["lion"]
    assert lion["seeds"] == 3 and lion["mean"] == pytest.approx(0.40)
    half = 4.303 * 0.1 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert lion["low"] == pytest.approx(0.40 - half) and lion["high"] == pytest.approx(0.40 + half)
    uniform = table.loc["uniform"]
    assert uniform["low"] == pytest.approx(0.20) == uniform["high"]
    text = ablation.overall_text(table.reset_index())
    assert "| lion | 0.400 [" in text and "| uniform | 0.200 [0.200, 0.200] |" in text


def test_arm_configs_differ_only_in_arm_seed_name_and_root():
    cfg = LionConfig().with_overrides({"name": "x", "seed": 5})
    one = ablation.arm_config(cfg, "/tmp/abl", "uniform", 2)
    assert (one.arm, one.seed, one.name) == ("uniform", 7, "x-uniform-s2")
    assert one.storage.root == "/tmp/abl/uniform/seed=2"
    assert one.storage.shared_llm_cache == "/tmp/abl"
    same = one.with_overrides({"arm": "lion", "seed": 5, "name": "x", "storage.root": "r"})
    assert same.digest() == cfg.with_overrides({"storage.root": "r"}).digest()


@pytest.mark.slow
def test_uniform_asks_no_referee_and_gets_lions_budget(prefect_harness, tmp_path, offline_server):
    from helpers import small_config

    from flows.round import lion_round

    requests = {}
    for arm in ("lion", "uniform"):
        world = offline_server(judge_noise=0.0)
        urls = {f"{r}.base_url": world.base_url for r in ("teacher", "referee", "generator")}
        cfg = small_config(tmp_path / arm, arm=arm, **urls)
        summary = lion_round(cfg, 1)
        requests[arm] = {role: s["requests"] for role, s in world.stats().items()}
        store = RunStore.open(cfg.storage.root)
        assert 0 < summary.new_instructions <= cfg.pools.new_per_round
        assert store.ref(2, "train_pool").rows == 24 + summary.new_instructions
    assert "referee" not in requests["uniform"]
    assert requests["lion"]["referee"] >= 48
    # Equal budget: the same number of generator requests, and of teacher answers.
    assert requests["uniform"]["generator"] == requests["lion"]["generator"]
    assert requests["uniform"]["teacher"] == requests["lion"]["teacher"]


@pytest.mark.slow
def test_lion_ablate_writes_the_table(prefect_harness, tmp_path):
    from helpers import small_config

    from flows.ablate import lion_ablate

    cfg = small_config(
        tmp_path / "unused",
        **{"evaluation.sets": ["offline"], "evaluation.sample": 12, "evaluation.bootstrap": 0},
    )
    root = str(tmp_path / "ablation")
    text = lion_ablate(cfg, root, ["lion", "seed-only"], 1)
    assert "| lion |" in text and "| seed-only |" in text
    table = pd.read_parquet(f"{root}/ablation.parquet")
    overall = table[(table["level"] == "overall") & (table["metric"] == "relative_score")]
    assert sorted(overall["arm"].unique()) == ["lion", "seed-only"]
    assert sorted(overall["round"].unique()) == [0, 1]
    assert (overall["seeds"] == 1).all()
    # Round 0 is the same untrained base for every arm: the same questions, the same score.
    base = overall[overall["round"] == 0].set_index("arm")["mean"]
    assert base["lion"] == pytest.approx(base["seed-only"])
    assert (tmp_path / "ablation" / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "ablation" / "llm_cache" / "teacher").is_dir()  # one shared cache
    # seed-only: no new instructions, no referee, no generator; the pools stay the seeds.
    seed_only = RunStore.open(f"{root}/seed-only/seed=0")
    assert seed_only.read(2, "train_pool").equals(seed_only.read(1, "train_pool"))
    assert not seed_only.exists(1, "referee") and not seed_only.exists(1, "generated")
