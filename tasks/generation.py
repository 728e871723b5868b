"""Generation tasks: candidate instructions from hard and easy seeds, then the novel ones."""

from __future__ import annotations

import pandas as pd
from prefect import get_run_logger

from lion_core.config import LionConfig
from lion_core.method.decontaminate import Gate, question_sets
from lion_core.method.diversity import diversity, log_warnings
from lion_core.method.generate import (
    SeedPlan,
    fill,
    generate_candidates,
    plan_seeds,
    seed_categories,
    shortfall,
)
from lion_core.method.health import check_domain, domain_health
from lion_core.method.lineage import nearest_table
from lion_core.run.records import Candidates, NewInstructions, Split
from lion_core.run.schemas import ArtifactRef
from lion_core.run.store import RunStore
from tasks.caching import lion_task
from tasks.runtime.clients import llm_client, usage_record
from tasks.runtime.retry import retry_unless_requests_failed
from tasks.runtime.store import run_store


@lion_task(
    "candidates",
    task_run_name="candidates-{kind}",
    retries=2,
    retry_condition_fn=retry_unless_requests_failed,
)
def candidates(
    config: LionConfig,
    round: int,
    split: Split,
    kind: str,
    offline_url: str | None = None,
) -> Candidates:
    """Candidate instructions written by the generator from the `kind` seeds (hard: same
    domain and task type; easy: same domain, rarer), after the paper's post-filters. More
    failed requests than `generator.max_failed_share` fail the task with nothing committed."""
    store = run_store(config)
    plan = seed_plan(config, round, store, split)
    client = llm_client(config, "generator", offline_url)
    found = generate_candidates(
        plan.seeds(kind), kind, plan.wanted(kind), client, config.generator, round
    )
    client.raise_for_failures()
    return Candidates(
        kind=kind,
        candidates=store.write_or_reuse(round, f"candidates_{kind}", found),
        usage=usage_record(client),
    )


def seed_plan(config: LionConfig, round: int, store: RunStore, split: Split) -> SeedPlan:
    """The round's seeds per kind (`plan_seeds`), with their categories when the generator
    spreads requests over them (generator.max_category_share)."""
    hard, easy = store.read_ref(split.hard), store.read_ref(split.easy)
    categories = None
    if config.generator.max_category_share < 1:
        both = pd.concat([hard, easy], ignore_index=True)
        categories = seed_categories(both, offline=config.generator.is_offline)
    return plan_seeds(hard, easy, config.pools, config.seed + round, config.generator, categories)


def known_pool(train: pd.DataFrame, store: RunStore, split: Split) -> pd.DataFrame:
    """The Train Pool, then the split's Cache Pool rows it lacks (POOL_SCHEMA columns)."""
    cache = pd.concat([store.read_ref(split.hard), store.read_ref(split.easy)])
    fresh = cache[~cache["instruction_id"].isin(train["instruction_id"])]
    if fresh.empty:
        return train
    fresh = fresh.drop_duplicates("instruction_id")[list(train.columns)]
    return pd.concat([train, fresh], ignore_index=True)


@lion_task("novel-instructions")
def novel_instructions(
    config: LionConfig,
    round: int,
    train: ArtifactRef,
    split: Split,
    hard: Candidates,
    easy: Candidates,
    offline_url: str | None = None,
) -> NewInstructions:
    """Candidates whose ROUGE-L F1 with every Train Pool instruction (and every candidate kept
    before them) is at most the threshold, up to the number wanted per kind (derived from the
    split's hard and easy sets, as the candidates were). A kind still short asks the generator
    again, up to `generator.max_attempts` passes in all (the shortfall left is reported); with
    `generator.max_category_share`, no seed category keeps more than its share unless the
    seeds leave no other way."""
    store = run_store(config)
    found = pd.concat([store.read_ref(hard.candidates), store.read_ref(easy.candidates)])
    found = found.reset_index(drop=True)
    # The decontamination gate, before the novelty filter: a candidate close to an evaluation
    # question never takes a kept instruction's place (top-ups are checked as they come).
    gate = Gate(question_sets(config), config.evaluation.decontaminate)
    found = gate.mark(found)
    # What the new instructions must be novel against, and where their parents are: the Train
    # Pool and the round's Cache Pool (with pools.holdback its rows are not in the Train Pool
    # yet; without, this is the Train Pool itself).
    train_pool = known_pool(store.read_ref(train), store, split)
    pool = train_pool["instruction"].tolist()
    plan = seed_plan(config, round, store, split)
    gen = config.generator
    client = None

    def ask(seeds: pd.DataFrame, kind: str, start: int) -> pd.DataFrame:
        nonlocal client
        client = client or llm_client(config, "generator", offline_url)
        return gate.mark(generate_candidates(seeds, kind, 0, client, gen, round, start, len(seeds)))

    wanted = {"hard": plan.n_hard, "easy": plan.n_easy}
    generated, attempts, plan = fill(found, pool, plan, gen, config.novelty.threshold, ask)
    if moved := plan.n_hard - wanted["hard"]:
        full, other = ("easy", "hard") if moved > 0 else ("hard", "easy")
        get_run_logger().info(
            "round %d: every family of the %s seeds is at generator.max_category_share: %d of "
            "the round's new instructions come from %s seeds instead",
            round, full, abs(moved), other,
        )  # fmt: skip
    usage = None
    if client is not None:
        client.raise_for_failures()
        usage = usage_record(client)
    counts = generated["status"].value_counts().to_dict()
    short = shortfall(generated, plan)
    # Each judged candidate's nearest text (the round's lineage); the pool values are also
    # the diversity statistics' highest ROUGE-L per candidate.
    nearest, max_rouge = nearest_table(generated, train_pool, gate.matches)
    # Stagnating or collapsing onto one domain? (the offline world's families name categories)
    stats = diversity(
        generated, train_pool, offline_families=config.generator.is_offline, max_rouge=max_rouge
    )
    log_warnings(stats, round)
    decontamination = gate.summary()
    if decontamination is not None and decontamination.dropped:
        get_run_logger().warning(
            "round %d: decontamination dropped new instruction(s) close to an evaluation "
            "question: %s",
            round, decontamination.line(),
        )  # fmt: skip
    if any(short.values()):
        get_run_logger().warning(
            "round %d: generation is short of %d hard and %d easy new instructions after %d "
            "pass(es) (generator.max_attempts %d)",
            round, short["hard"], short["easy"], attempts, gen.max_attempts,
        )  # fmt: skip
    # Drifting off the user's domain? (the kept instructions against the seed instructions)
    seeds = train_pool.loc[train_pool["source"] == "seed", "instruction"].tolist()
    kept = generated.loc[generated["status"] == "kept", "instruction"].tolist()
    domain = domain_health(kept, seeds, config.data_health.far_rouge_l)
    check_domain(domain, config.data_health, round)
    return NewInstructions(
        generated=store.write_or_reuse(round, "generated", generated),
        statuses={str(k): int(v) for k, v in counts.items()},
        diversity=stats,
        domain=domain,
        wanted=plan.n_hard + plan.n_easy,
        shortfall=short,
        attempts=attempts,
        usage=usage,
        nearest=store.write_or_reuse(round, "nearest", nearest),
        decontamination=decontamination,
    )
