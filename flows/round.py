"""One Lion round as a Prefect DAG: imitation → discrimination → generation."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import StageClock, committed_pools, offline_world, use_run_storage
from flows.names import descriptive, round_name
from flows.report import publish_round, requests_line, round_summary
from lion_core.config import LionConfig
from lion_core.run.identity import open_run
from lion_core.run.lease import run_lease
from lion_core.run.records import RoundSummary
from tasks.discrimination import hard_and_easy, referee_reviews, referee_scores, uniform_split
from tasks.generation import candidates, novel_instructions
from tasks.imitation import teacher_answers, training_data
from tasks.pools import next_round_pools, seed_pools
from tasks.runtime.cancel import cancel_batches_hook
from tasks.runtime.logs import attach_library_logging
from tasks.student import base_student, student, student_answers

DEFAULT_CONFIG = LionConfig()


@flow(
    name="lion-round",
    flow_run_name=descriptive(round_name),
    on_cancellation=[cancel_batches_hook],
    task_runner=ThreadPoolTaskRunner(max_workers=4),
    persist_result=True,
)
def lion_round(
    config: LionConfig = DEFAULT_CONFIG, round: int = 1, offline_url: str | None = None
) -> RoundSummary:
    """Run round `round` of a Lion distillation and commit round `round + 1`'s pools.

    Every task is cached on the content of its inputs, so re-running a failed round skips what
    finished; inside a half-finished task the LLM response cache and the training checkpoints
    skip finished work. Task results live in the run's storage (`use_run_storage`).

    The round holds the root's lease (`lion_core.run.lease`) while it runs: started while another
    run holds it, it fails at once; run by lion-distill, it shares lion-distill's.
    """
    use_run_storage(config)
    attach_library_logging()
    log = get_run_logger()
    with run_lease(config, flow_run.id), offline_world(config, offline_url) as url:
        store = open_run(config)
        clock = StageClock()

        # 1. Imitation: the teacher answers the pools; the student learns the answers.
        pools = seed_pools(config) if round == 1 else committed_pools(store, round)
        teacher = teacher_answers(config, round, pools, offline_url=url)
        data = training_data(config, round, pools, teacher)
        base = base_student(config, data if round == 1 else store.ref(1, "train_data"))
        trained = student(config, round, data, base)
        clock.lap("imitation")
        log.info("round %d: imitation done, student at %s", round, trained)

        # 2. Discrimination: the student answers the Cache Pool; the referee scores both
        #    answers in both orders, concurrently; the gap splits hard from easy. (The
        #    `uniform` ablation draws the split at random instead; `seed-only` has none.)
        reviews, referee, split = [], None, None
        if config.arm == "lion":
            answers = student_answers(config, round, pools.cache, trained)
            orders = [
                referee_reviews.submit(
                    config, round, pools.cache, teacher.answers, answers, order, offline_url=url
                )
                for order in (1, 2)
            ]
            reviews = [order.result() for order in orders]
            referee = referee_scores(config, round, *reviews)
            split = hard_and_easy(config, round, pools.cache, teacher.answers, answers, referee)
        elif config.arm == "uniform":
            split = uniform_split(config, round, pools.cache)
        clock.lap("discrimination")
        if split is not None:
            log.info(
                "round %d: %d hard, %d easy, %d unscored; mean teacher %s, student %s",
                round, split.stats.hard, split.stats.easy, split.stats.unscored,
                _score(split.stats.mean_teacher_score), _score(split.stats.mean_student_score),
            )  # fmt: skip

        # 3. Generation: new instructions from hard and easy seeds, concurrently; the novel
        #    ones join the next round's pools.
        found, new = [], None
        if split is not None:
            kinds = [
                candidates.submit(config, round, split, kind, offline_url=url)
                for kind in ("hard", "easy")
            ]
            found = [kind.result() for kind in kinds]
            new = novel_instructions(config, round, pools.train, split, *found, offline_url=url)
        next_pools = next_round_pools(config, round, pools, new)
        clock.lap("generation")

        summary = round_summary(
            round,
            pools=pools,
            next_pools=next_pools,
            teacher=teacher,
            student=trained,
            reviews=reviews,
            split=split,
            found=found,
            new=new,
            seconds=clock.seconds,
            run=flow_run.id,
        )
        log.info("round %d: %s", round, requests_line(summary))
        publish_round(config, summary, split.hard if referee else None, referee)
        return summary


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
