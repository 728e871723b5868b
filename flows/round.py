"""One Lion round as a Prefect DAG: imitation → discrimination → generation."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import StageClock, bound_tasks, committed_pools, offline_world
from flows.report import publish_round, round_summary
from lion_core.config import LionConfig
from lion_core.run import open_run
from lion_core.student.launch import init_uri_for
from tasks.runtime import attach_library_logging

DEFAULT_CONFIG = LionConfig()


@flow(name="lion-round", task_runner=ThreadPoolTaskRunner(max_workers=4), persist_result=True)
def lion_round(
    config: LionConfig = DEFAULT_CONFIG, round: int = 1, offline_url: str | None = None
) -> dict[str, Any]:
    """Run round `round` of a Lion distillation and commit round `round + 1`'s pools.

    Every task is cached on the content of its inputs, so re-running a failed round skips what
    finished; inside a half-finished task the LLM response cache and the training checkpoints
    skip finished work.
    """
    attach_library_logging()
    log = get_run_logger()
    with offline_world(config, offline_url) as url:
        store = open_run(config)
        t = bound_tasks(config)
        clock = StageClock()

        # 1. Imitation: the teacher answers the pools; the student learns the answers.
        pools = t.seed_pools(config) if round == 1 else committed_pools(store, round)
        teacher = t.teacher_answers(config, round, pools["train"], pools["cache"], offline_url=url)
        data = t.training_data(config, round, pools["train"], teacher["answers"])
        base = t.base_student(config)
        previous = config.training.init_from == "previous" and round > 1
        init = init_uri_for(config, store, round) if previous else base  # base: a DAG edge
        student = t.trained_student(config, round, data["data"], init)
        clock.lap("imitation")
        log.info("round %d: imitation done, student at %s", round, student["uri"])

        # 2. Discrimination: the student answers the Cache Pool; the referee scores both
        #    answers in both orders, concurrently; the gap splits hard from easy.
        answers = t.student_answers(config, round, pools["cache"], student["uri"])
        orders = [
            t.referee_reviews.submit(
                config,
                round,
                pools["cache"],
                teacher["answers"],
                answers["answers"],
                order,
                offline_url=url,
            )
            for order in (1, 2)
        ]
        reviews = [order.result() for order in orders]
        referee = t.referee_scores(config, round, reviews[0]["reviews"], reviews[1]["reviews"])
        split = t.hard_and_easy(
            config, round, pools["cache"], teacher["answers"], answers["answers"], referee
        )
        clock.lap("discrimination")
        log.info("round %d: %s", round, split["stats"])

        # 3. Generation: new instructions from hard and easy seeds, concurrently; the novel
        #    ones join the next round's pools.
        kinds = {
            kind: t.candidates.submit(
                config, round, split["hard"], split["easy"], kind, offline_url=url
            )
            for kind in ("hard", "easy")
        }
        found = {kind: future.result() for kind, future in kinds.items()}
        generated = t.novel_instructions(
            config,
            round,
            pools["train"],
            found["hard"]["candidates"],
            found["easy"]["candidates"],
            found["hard"]["wanted"],
            found["easy"]["wanted"],
        )
        next_pools = t.next_round_pools(config, round, pools["train"], generated["generated"])
        clock.lap("generation")

        summary = round_summary(
            round,
            pools=pools,
            next_pools=next_pools,
            teacher=teacher,
            student=student,
            reviews=reviews,
            split=split,
            found=found,
            generated=generated,
            seconds=clock.seconds,
        )
        publish_round(config, round, summary, split["hard"], referee)
        return summary
