"""Discrimination tasks: the referee's reviews in each order, the scores, the hard/easy split."""

from __future__ import annotations

from lion_core.config import LionConfig
from lion_core.method import discriminate
from lion_core.method.referee import combine, make_pairs, score_order
from lion_core.offline.roles import answer_is_right
from lion_core.run.records import RefereeReviews, Split, SplitStats
from lion_core.run.schemas import ArtifactRef
from tasks.caching import lion_task
from tasks.runtime.clients import llm_client, usage_record
from tasks.runtime.retry import retry_unless_requests_failed
from tasks.runtime.store import run_store


@lion_task(
    "referee-reviews",
    task_run_name="referee-order-{order}",
    retries=2,
    retry_condition_fn=retry_unless_requests_failed,
)
def referee_reviews(
    config: LionConfig,
    round: int,
    cache_pool: ArtifactRef,
    teacher: ArtifactRef,
    student: ArtifactRef,
    order: int,
    offline_url: str | None = None,
) -> RefereeReviews:
    """The referee's reviews of every Cache Pool pair in one order (1: teacher shown first,
    2: student shown first). Unparsable reviews are re-asked, then kept as unscored; more
    failed requests than `referee.max_failed_share` fail the task with nothing committed."""
    store = run_store(config)
    pairs = make_pairs(store.read_ref(cache_pool), store.read_ref(teacher), store.read_ref(student))
    client = llm_client(config, "referee", offline_url)
    reviews = score_order(pairs, client, config.referee, order)
    client.raise_for_failures()
    return RefereeReviews(
        order=order,
        reviews=store.write_or_reuse(round, f"referee_{order}", reviews),
        usage=usage_record(client),
    )


@lion_task("referee-scores")
def referee_scores(
    config: LionConfig, round: int, order_1: RefereeReviews, order_2: RefereeReviews
) -> ArtifactRef:
    """Both orders' scores averaged per assistant; a pair unscored in either order stays
    unscored (never a tie)."""
    store = run_store(config)
    scores = combine(store.read_ref(order_1.reviews), store.read_ref(order_2.reviews))
    return store.write_or_reuse(round, "referee", scores)


@lion_task("hard-and-easy")
def hard_and_easy(
    config: LionConfig,
    round: int,
    cache_pool: ArtifactRef,
    teacher: ArtifactRef,
    student: ArtifactRef,
    referee: ArtifactRef,
) -> Split:
    """Split the scored Cache Pool: hard if teacher − student ≥ τ, easy otherwise; with the
    offline world as teacher (it knows every answer), the split's precision against the truth."""
    store = run_store(config)
    hard, easy, stats = discriminate.split(
        store.read_ref(cache_pool),
        store.read_ref(teacher),
        store.read_ref(student),
        store.read_ref(referee),
        config.discrimination.tau,
    )
    if config.teacher.is_offline:
        stats.update(discriminate.split_truth(hard, easy, answer_is_right))
    return Split(
        hard=store.write_or_reuse(round, "hard", hard),
        easy=store.write_or_reuse(round, "easy", easy),
        stats=SplitStats(**stats),
    )


@lion_task("uniform-split")
def uniform_split(config: LionConfig, round: int, cache_pool: ArtifactRef) -> Split:
    """The `uniform` arm: Cache Pool seeds split into "hard" and "easy" uniformly at random, in
    the proportions Lion's loop asks for, without the student's answers or the referee."""
    store = run_store(config)
    hard, easy, stats = discriminate.uniform_split(
        store.read_ref(cache_pool), config.pools.hard_share, config.seed + round
    )
    return Split(
        hard=store.write_or_reuse(round, "hard", hard),
        easy=store.write_or_reuse(round, "easy", easy),
        stats=SplitStats(**stats),
    )
