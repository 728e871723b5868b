"""Generation tasks: candidate instructions from hard and easy seeds, then the novel ones."""

from __future__ import annotations

import time
from typing import Any

from lion_core.config import LionConfig
from lion_core.instructions import generate_candidates, plan_seeds, select_novel
from lion_core.schemas import ArtifactRef
from tasks.caching import lion_task
from tasks.runtime import llm_client, run_store, usage_record


@lion_task("candidates", "generator", "pools", "seed", retries=2)
def candidates(
    config: LionConfig,
    round: int,
    hard: ArtifactRef,
    easy: ArtifactRef,
    kind: str,
    offline_url: str | None = None,
) -> dict[str, Any]:
    """Candidate instructions written by the generator from the `kind` seeds (hard: same
    domain and task type; easy: same domain, rarer), after the paper's post-filters."""
    started = time.monotonic()
    store = run_store(config)
    plan = plan_seeds(store.read_ref(hard), store.read_ref(easy), config.pools, config.seed + round)
    client = llm_client(config, "generator", offline_url)
    found = generate_candidates(
        plan.seeds(kind), kind, plan.wanted(kind), client, config.generator, round
    )
    return {
        "candidates": store.write_or_reuse(round, f"candidates_{kind}", found),
        "wanted": plan.wanted(kind),
        "usage": usage_record(client),
        "seconds": time.monotonic() - started,
    }


@lion_task("novel-instructions", "novelty", "pools", "seed")
def novel_instructions(
    config: LionConfig,
    round: int,
    train: ArtifactRef,
    hard: ArtifactRef,
    easy: ArtifactRef,
    wanted_hard: int,
    wanted_easy: int,
) -> dict[str, Any]:
    """Candidates whose ROUGE-L F1 with every Train Pool instruction (and every candidate kept
    before them) is at most the threshold, up to the wanted number per kind."""
    import pandas as pd

    started = time.monotonic()
    store = run_store(config)
    found = pd.concat(
        [store.read_ref(hard), store.read_ref(easy)],
        ignore_index=True,
    )
    pool = store.read_ref(train)["instruction"].tolist()
    generated = select_novel(found, pool, wanted_hard, wanted_easy, config.novelty.threshold)
    counts = generated["status"].value_counts().to_dict()
    return {
        "generated": store.write_or_reuse(round, "generated", generated),
        "statuses": {str(k): int(v) for k, v in counts.items()},
        "seconds": time.monotonic() - started,
    }
