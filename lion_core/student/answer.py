"""The student's answers to a set of rows, by the configured engine (the one entry point of
the round's `student-answers` task and the evaluation's `student-eval-answers` task).

`generate_answers` skips the rows already answered under the rows' progress folder
(`answer_store.progress_rel`), then answers the rest with `student.generation.engine`:

- `hf`: batched Hugging Face generation in this process, or one worker process per GPU
  (`generator`);
- `server`: a served engine (vLLM, SGLang, `lion serve-student`) over the OpenAI protocol
  (`served`).

Both commit to the same folder in the same schema, so the answers are read back the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pandas as pd

from lion_core.config import LionConfig
from lion_core.errors import DataError, GenerationError
from lion_core.run.schemas import ANSWER_SCHEMA, conform
from lion_core.run.store import RunStore
from lion_core.student.answer_store import answered, progress_rel

log = logging.getLogger(__name__)

ROW_COLUMNS = ("instruction_id", "instruction", "input")
PROGRESS_LABEL = "student: answers"  # the label generate_answers reports progress under


def generate_answers(
    cfg: LionConfig,
    store: RunStore,
    student_uri: str,
    rows: pd.DataFrame,
    *,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    workers: int | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> pd.DataFrame:
    """The student's answers to `rows` (instruction_id, instruction, input), in ANSWER_SCHEMA
    columns, one row per distinct instruction_id, in the order of `rows`.

    `workers`: processes to answer in parallel, one per GPU (default: student.generation.
    num_gpus, else every visible GPU; 1 on the CPU). With `student.generation.engine: server`,
    the rows go through a served engine instead (`served.answer_served`). `on_progress(label,
    done, total)`: after each batch answered in this process (with workers or a served
    engine: at the end only), and at the end.
    """
    logger = logger or log
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise DataError(f"rows to answer: missing column(s) {missing}", column=missing[0])
    rows = rows.drop_duplicates("instruction_id").reset_index(drop=True)
    rows = rows.assign(input=rows["input"].fillna(""))
    storage = store.storage
    rel = progress_rel(student_uri, cfg)
    have = answered(storage, rel)
    todo = rows[~rows["instruction_id"].isin(set(have["instruction_id"]))]
    logger.info(
        "student answers: %d rows, %d already answered under %s",
        len(rows), len(rows) - len(todo), storage.uri(rel),
    )  # fmt: skip
    if len(todo) and cfg.student.generation.engine == "server":
        from lion_core.student.served import answer_served

        answer_served(cfg, storage, rel, student_uri, todo, logger=logger)
        have = answered(storage, rel)
    elif len(todo):
        import torch  # here, not at import: the flow process imports this module, and torch

        from lion_core.student.generator import answer_rows, run_workers  # takes seconds

        n = workers or cfg.student.generation.num_gpus or max(1, torch.cuda.device_count())
        n = min(n, len(todo))
        before = len(rows) - len(todo)

        def batch_done(done: int) -> None:
            if on_progress is not None:
                on_progress(PROGRESS_LABEL, before + done, len(rows))

        if n == 1:
            answer_rows(cfg, storage, rel, student_uri, todo, logger=logger, on_batch=batch_done)
        else:
            run_workers(cfg, store, rel, student_uri, todo, n, logger)
        have = answered(storage, rel)
    if on_progress is not None:
        on_progress(PROGRESS_LABEL, len(rows), len(rows))
    out = rows[["instruction_id"]].merge(have, on="instruction_id", how="left")
    lost = out["status"].isna()
    if lost.any():
        raise GenerationError(
            f"{int(lost.sum())} rows got no answer (e.g. {out['instruction_id'][lost].iloc[0]})"
        )
    return conform(out, ANSWER_SCHEMA, "student answers").to_pandas()
