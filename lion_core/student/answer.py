"""Batched generation of the student's answers.

Prompts are sorted by length (longest first, so an out-of-memory shows up in the first batch),
left-padded, and cut into batches that fit a token budget: batch size x (longest prompt +
max_new_tokens) <= `student.generation.token_budget`. Decoding is greedy or sampled, stops at
EOS, and the prompt is stripped from the output. Out of memory halves the budget and retries the
same rows; a single prompt that still does not fit is recorded as failed, and the rest go on.

Answered rows are never lost: every batch is committed to the run's storage at once, under
    <root>/generation/<key>/part-<shard>-<n>-<uuid>.parquet
where <key> hashes the student URI and content digest, the generation settings that shape an
answer (not the operational token budget, GPU count or engine), the prompt template and the seed.
A second call with the same student skips the rows already answered there. On several GPUs, one
worker process per GPU answers its shard of the rows and commits its own parts.

With `student.generation.engine: server` the same rows go instead through a served engine
(vLLM, SGLang, `lion serve-student`) over the OpenAI protocol (`lion_core.student.served`); its
answers are committed to the same folder, in the same schema.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from lion_core.config import LionConfig, StudentGenerationConfig, is_operational
from lion_core.errors import DataError, GenerationError
from lion_core.ops.supervise import (
    cpu_thread_env,
    is_deepspeed_chatter,
    run_process_groups,
    size_torch_threads,
)
from lion_core.run import layout
from lion_core.run.schemas import ANSWER_SCHEMA, conform
from lion_core.run.storage import Storage
from lion_core.run.store import RunStore
from lion_core.student.attention import sdpa_kernels
from lion_core.student.checkpoints import content_digest, materialize, scratch_for
from lion_core.student.data import encode_prompt

log = logging.getLogger(__name__)

ROW_COLUMNS = ("instruction_id", "instruction", "input")
PROGRESS_LABEL = "student: answers"  # the label generate_answers reports progress under


def progress_rel(student_uri: str, cfg: LionConfig) -> str:
    """Folder (relative to the run's root) holding the answers generated so far.

    Keyed on what the answers depend on: the student (its URI and content digest, so a
    student retrained at the same place starts afresh), the prompt template, the seed and the
    generation fields not marked operational, so a changed token budget, GPU count or engine
    resumes in the same folder."""
    generation = {
        name: value
        for name, value in cfg.student.generation.model_dump(mode="json").items()
        if not is_operational(f"student.generation.{name}")
    }
    payload = json.dumps(
        {
            "student": student_uri,
            "checkpoint": content_digest(student_uri, cfg.storage.options),
            "generation": generation,
            "template": cfg.student.prompt_template,
            "seed": cfg.seed,
        },
        sort_keys=True,
    )
    return layout.generation(hashlib.sha256(payload.encode()).hexdigest()[:16])


# ------------------------------------------------------------------------------------------
# The batched generator
# ------------------------------------------------------------------------------------------


@dataclass
class Answer:
    instruction_id: str
    answer: str | None
    status: str
    error: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    request_key: str | None = None  # the served engine's request (its response-cache key)


def fit_prompt(ids: list[int], max_positions: int | None, max_new_tokens: int) -> list[int]:
    """An over-long prompt keeps its end, where the question is, so that prompt and answer fit
    in the model's positions (both engines send the same ids)."""
    if max_positions:
        keep = max(1, max_positions - max_new_tokens)
        return ids[-keep:]
    return ids


def stop_token_ids(generation_config, tokenizer) -> list[int]:
    """The token ids that end an answer: the model's generation config's EOS (one or several),
    else the tokenizer's."""
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return sorted(set(eos if isinstance(eos, list) else [eos]))


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


class BatchedGenerator:
    """Answers prompts in length-sorted, left-padded batches that fit a token budget."""

    def __init__(
        self,
        model,
        tokenizer,
        gen: StudentGenerationConfig,
        template: str,
        seed: int = 0,
        generate_kwargs: dict | None = None,
    ):
        self.model = model.eval()
        self.generate_kwargs = dict(generate_kwargs or {})  # passed on to model.generate
        self.tok = tokenizer
        self.gen = gen
        self.template = template
        self.seed = seed
        self.budget = gen.token_budget
        self.eos_ids = set(stop_token_ids(model.generation_config, tokenizer))
        self.pad_id = tokenizer.pad_token_id
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self.oom_events = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, instruction: str, input: str | None) -> list[int]:
        ids = encode_prompt(self.tok, instruction, input or "", self.template)
        return fit_prompt(ids, self.max_positions, self.gen.max_new_tokens)

    def answer(self, rows: pd.DataFrame) -> Iterator[list[Answer]]:
        """Yield the answers batch by batch (each batch can be committed at once)."""
        prompts = [
            self.encode(i, x) for i, x in zip(rows["instruction"], rows["input"], strict=True)
        ]
        yield from self.answer_prompts(list(rows["instruction_id"]), prompts)

    def answer_prompts(self, ids: list[str], prompts: list[list[int]]) -> Iterator[list[Answer]]:
        """`answer` for prompts already encoded (token ids), labelled by `ids`."""
        order = sorted(range(len(prompts)), key=lambda j: -len(prompts[j]))
        at = 0
        while at < len(order):
            width = len(prompts[order[at]]) + self.gen.max_new_tokens
            size = max(1, self.budget // width)
            batch = order[at : at + size]
            try:
                outs = self._generate([prompts[j] for j in batch], ids[batch[0]])
            except Exception as exc:
                if not is_oom(exc):
                    raise
                self.oom_events += 1
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if len(batch) > 1:
                    self.budget = max(1, self.budget // 2)
                    log.warning("out of memory at batch %d; token budget -> %d", size, self.budget)
                    continue
                j = batch[0]
                yield [
                    Answer(
                        ids[j], None, "failed", f"out of memory: {exc}", None, len(prompts[j]), 0
                    )
                ]
                at += 1
                continue
            yield [
                Answer(ids[j], text, "ok", None, reason, len(prompts[j]), n)
                for j, (text, reason, n) in zip(batch, outs, strict=True)
            ]
            at += len(batch)

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], first_id: str) -> list[tuple[str, str, int]]:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: every prompt ends at the same column
            input_ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        kwargs = {}
        if self.gen.do_sample:
            # a fixed seed per batch: the same rows give the same answers on a retry
            torch.manual_seed(_batch_seed(self.seed, first_id))
            kwargs = {"temperature": self.gen.temperature, "top_p": self.gen.top_p}
        with sdpa_kernels():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=self.gen.max_new_tokens,
                do_sample=self.gen.do_sample,
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=self.pad_id,
                **kwargs,
                **self.generate_kwargs,
            )
        results = []
        for row in out[:, width:].tolist():  # strip the prompt
            n = len(row)
            reason = "length"
            for k, token in enumerate(row):
                if token in self.eos_ids:
                    n, reason = k + 1, "stop"
                    break
            text = self.tok.decode(row[:n], skip_special_tokens=True).strip()
            results.append((text, reason, n))
        return results


def _batch_seed(seed: int, first_id: str) -> int:
    """The run's seed plus the batch's first instruction id (hex), else the run's seed."""
    try:
        return seed + int(first_id[:8], 16)
    except ValueError:
        return seed


# ------------------------------------------------------------------------------------------
# Progress in storage
# ------------------------------------------------------------------------------------------


def answered(storage: Storage, rel: str) -> pd.DataFrame:
    """Every answer committed under `rel` so far (first one wins for an id)."""
    frames = [
        storage.read_parquet(f"{rel}/{name}").to_pandas()
        for name in storage.listdir(rel)
        if name.endswith(".parquet")
    ]
    if not frames:
        return ANSWER_SCHEMA.empty_table().to_pandas()
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates("instruction_id", keep="first")


def commit(storage: Storage, rel: str, shard: int, seq: int, answers: list[Answer], model: str):
    """Commit one batch of answers under `rel`. `model`: the student's URI, recorded relative to
    the run's root when it is inside it (`round=2/student`: the same wherever the run is)."""
    model = storage.relative(model) or model
    table = conform(
        pd.DataFrame(
            [
                {
                    "instruction_id": a.instruction_id,
                    "answer": a.answer,
                    "status": a.status,
                    "error": a.error,
                    "finish_reason": a.finish_reason,
                    "model": model,
                    "request_key": a.request_key,
                    "prompt_tokens": a.prompt_tokens,
                    "completion_tokens": a.completion_tokens,
                }
                for a in answers
            ]
        ),
        ANSWER_SCHEMA,
        "student answers",
    )
    storage.write_parquet(f"{rel}/part-{shard:03d}-{seq:06d}-{uuid.uuid4().hex[:8]}.parquet", table)


def answer_rows(
    cfg: LionConfig,
    storage: Storage,
    rel: str,
    student_uri: str,
    rows: pd.DataFrame,
    *,
    shard: int = 0,
    shards: int = 1,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Answer `rows` in this process, committing each batch; return the number answered.
    With `shards` > 1, only this worker's share of them (`shard_rows`). `on_batch(done)`:
    after each committed batch."""
    from lion_core.student.model import load_student

    logger = logger or log
    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    if not on_gpu:
        size_torch_threads(shards)  # this process's share of the cores
    model, tok = load_student(student_uri, cfg, dtype=dtype, device="cuda" if on_gpu else "cpu")
    if shards > 1:
        rows = shard_rows(rows, shard, shards, tok, cfg.student.prompt_template)
    gen = BatchedGenerator(
        model, tok, cfg.student.generation, cfg.student.prompt_template, cfg.seed
    )
    done, t0 = 0, time.time()
    for seq, answers in enumerate(gen.answer(rows)):
        commit(storage, rel, shard, seq, answers, student_uri)
        done += len(answers)
        if on_batch is not None:
            on_batch(done)
        logger.info(
            "shard %d: %d/%d answered (batch of %d, %.1f answers/s)",
            shard, done, len(rows), len(answers), done / max(time.time() - t0, 1e-9),
        )  # fmt: skip
    return done


# ------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------


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
        n = workers or cfg.student.generation.num_gpus or max(1, torch.cuda.device_count())
        n = min(n, len(todo))
        before = len(rows) - len(todo)

        def batch_done(done: int) -> None:
            if on_progress is not None:
                on_progress(PROGRESS_LABEL, before + done, len(rows))

        if n == 1:
            answer_rows(cfg, storage, rel, student_uri, todo, logger=logger, on_batch=batch_done)
        else:
            _run_workers(cfg, store, rel, student_uri, todo, n, logger)
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


def _run_workers(cfg, store, rel, student_uri, todo, n, logger) -> None:
    """One worker process per GPU, each over every n-th row of the length-sorted rows (so
    each gets a similar mix of long and short prompts)."""
    storage = store.storage
    materialize(student_uri, cfg.storage.options)  # download once, not once per worker
    work = scratch_for(storage.uri(rel), "workers")
    todo_file = work / "rows.parquet"
    todo.to_parquet(todo_file, index=False)
    spec = {
        "config": cfg.model_dump(mode="json"),
        "rows": str(todo_file),
        "student": student_uri,
        "storage_root": storage.uri(),
        "storage_options": cfg.storage.options,
        "rel": rel,
        "shards": n,
    }
    spec_file = work / "job.json"
    spec_file.write_text(json.dumps(spec))
    jobs = []
    gpus = torch.cuda.device_count()
    for shard in range(n):
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(shard % gpus)
        else:
            cpu_thread_env(n, env)
        cmd = [sys.executable, "-m", "lion_core.student.answer", "--spec", str(spec_file)]
        jobs.append(([*cmd, "--shard", str(shard)], env))
    codes, tail = run_process_groups(
        jobs, logger=logger, prefix=True, error=GenerationError, quiet=is_deepspeed_chatter
    )
    failed = [i for i, rc in enumerate(codes) if rc != 0]
    if failed:
        raise GenerationError(
            f"generation worker(s) {failed} failed; answers committed so far are kept under "
            f"{storage.uri(rel)}; last lines:\n" + "\n".join(tail)
        )


def shard_rows(rows: pd.DataFrame, shard: int, shards: int, tokenizer, template: str):
    lengths = [
        len(encode_prompt(tokenizer, i, x, template))
        for i, x in zip(rows["instruction"], rows["input"], strict=True)
    ]
    order = sorted(range(len(rows)), key=lambda j: -lengths[j])
    return rows.iloc[order[shard::shards]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one generation worker (one GPU)")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--shard", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    spec = json.loads(Path(args.spec).read_text())
    cfg = LionConfig.model_validate(spec["config"])
    storage = Storage(spec["storage_root"], spec["storage_options"])
    rows = pd.read_parquet(spec["rows"])
    answer_rows(
        cfg, storage, spec["rel"], spec["student"], rows, shard=args.shard, shards=spec["shards"]
    )


if __name__ == "__main__":
    main()
