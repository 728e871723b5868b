"""Tasks that produce pools: the first round's pools from the seeds, each next round's pools."""

from __future__ import annotations

import pandas as pd
from prefect import get_run_logger

from lion_core.config import LionConfig
from lion_core.errors import DataError
from lion_core.method.decontaminate import decontaminate_pool, question_sets
from lion_core.method.generate import holdback, new_pool_rows
from lion_core.method.seeds import initial_pool
from lion_core.run.records import NewInstructions, Pools
from tasks.caching import lion_task
from tasks.runtime.store import run_store


@lion_task("seed-pools")
def seed_pools(config: LionConfig) -> Pools:
    """Round 1's Train and Cache Pools: the seed instructions (both pools start equal), less
    those close to a question of an evaluation set (the decontamination gate: counted per set,
    kept in `contaminated_seeds`)."""
    store = run_store(config)
    seeds = initial_pool(config)
    sets = question_sets(config)
    decontamination = contaminated = None
    if sets:
        seeds, dropped, decontamination = decontaminate_pool(
            seeds, sets, config.evaluation.decontaminate
        )
        if decontamination.dropped:
            get_run_logger().warning(
                "decontamination: left out %s seed instruction(s) close to an evaluation "
                "question: %s",
                decontamination.dropped, decontamination.line(),
            )  # fmt: skip
        if seeds.empty:
            raise DataError(
                f"every seed instruction is close to an evaluation question "
                f"({decontamination.line()}): nothing left to distil from",
                file=config.pools.initial_data,
            )
        contaminated = store.write_or_reuse(1, "contaminated_seeds", dropped)
    return Pools(
        train=store.write_or_reuse(1, "train_pool", seeds),
        cache=store.write_or_reuse(1, "cache_pool", seeds),
        decontamination=decontamination,
        contaminated=contaminated,
    )


@lion_task("next-round-pools")
def next_round_pools(
    config: LionConfig, round: int, pools: Pools, new: NewInstructions | None
) -> Pools:
    """Round k+1's pools: Train Pool ∪ new instructions; Cache Pool ← new (or all). No new
    instructions (the `seed-only` arm): the same pools again. With `pools.holdback`, that
    share of the new instructions is held back from the Train Pool (it alone makes the Cache
    Pool, with cache_pool 'new') and joins it a round later: the Cache Pool rows not yet in the
    Train Pool are added first."""
    store = run_store(config)
    old = store.read_ref(pools.train)
    if new is None:
        return Pools(
            train=store.write_or_reuse(round + 1, "train_pool", old),
            cache=store.write_or_reuse(round + 1, "cache_pool", store.read_ref(pools.cache)),
        )
    waiting = store.read_ref(pools.cache)
    old = _union(old, waiting)  # last round's held-back instructions (none without holdback)
    added = new_pool_rows(store.read_ref(new.generated))
    held = holdback(added, config.pools.holdback, config.seed + round)
    merged = _union(old, added[~added["instruction_id"].isin(held["instruction_id"])])
    if config.pools.holdback > 0:
        cache = held if config.pools.cache_pool == "new" else _union(merged, held)
    else:
        cache = added if config.pools.cache_pool == "new" else merged
    return Pools(
        train=store.write_or_reuse(round + 1, "train_pool", merged),
        cache=store.write_or_reuse(round + 1, "cache_pool", cache),
    )


def _union(pool: pd.DataFrame, more: pd.DataFrame) -> pd.DataFrame:
    """`pool` then the rows of `more` it lacks (by instruction_id)."""
    fresh = more[~more["instruction_id"].isin(pool["instruction_id"])]
    return pd.concat([pool, fresh]).reset_index(drop=True) if len(fresh) else pool
