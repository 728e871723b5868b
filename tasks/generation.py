"""Generation tasks: candidate instructions from hard and easy seeds, then the novel ones."""

from __future__ import annotations

import pandas as pd

from lion_core.config import LionConfig
from lion_core.method.diversity import diversity, log_warnings
from lion_core.method.generate import generate_candidates, plan_seeds, select_novel, wanted_counts
from lion_core.method.health import check_domain, domain_health
from lion_core.run.records import Candidates, NewInstructions, Split
from lion_core.run.schemas import ArtifactRef
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
    plan = plan_seeds(
        store.read_ref(split.hard), store.read_ref(split.easy), config.pools, config.seed + round
    )
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


@lion_task("novel-instructions")
def novel_instructions(
    config: LionConfig,
    round: int,
    train: ArtifactRef,
    split: Split,
    hard: Candidates,
    easy: Candidates,
) -> NewInstructions:
    """Candidates whose ROUGE-L F1 with every Train Pool instruction (and every candidate kept
    before them) is at most the threshold, up to the number wanted per kind (derived from the
    split's hard and easy sets, as the candidates were)."""
    store = run_store(config)
    found = pd.concat([store.read_ref(hard.candidates), store.read_ref(easy.candidates)])
    train_pool = store.read_ref(train)
    pool = train_pool["instruction"].tolist()
    n_hard, n_easy = wanted_counts(split.hard.rows, split.easy.rows, config.pools)
    generated = select_novel(
        found.reset_index(drop=True), pool, n_hard, n_easy, config.novelty.threshold
    )
    counts = generated["status"].value_counts().to_dict()
    # Stagnating or collapsing onto one domain? (the offline world's families name categories)
    stats = diversity(generated, train_pool, offline_families=config.generator.is_offline)
    log_warnings(stats, round)
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
    )
