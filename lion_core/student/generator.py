"""Batched generation of the student's answers with Hugging Face `generate` (`engine: hf`).

Prompts are sorted by length (longest first, so an out-of-memory shows up in the first batch),
left-padded, and cut into batches that fit a token budget: batch size x (longest prompt +
max_new_tokens) <= `student.generation.token_budget`. Decoding is greedy or sampled, stops at
EOS, and the prompt is stripped from the output. Out of memory halves the budget and retries the
same rows; a single prompt that still does not fit is recorded as failed, and the rest go on.

`answer_rows` answers in this process and commits every batch at once (`answer_store.commit`);
on several GPUs, `run_workers` starts one worker process per GPU (`python -m
lion_core.student.generator --spec ... --shard i`), each answering its shard of the rows and
committing its own parts. `fit_prompt`, `stop_token_ids` and `batch_seed` are shared with the
served engine, so both send and stop at the same tokens.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import torch

from lion_core.config import LionConfig, StudentGenerationConfig
from lion_core.errors import GenerationError
from lion_core.ops.supervise import (
    cpu_thread_env,
    is_deepspeed_chatter,
    run_process_groups,
    size_torch_threads,
)
from lion_core.run.storage import Storage
from lion_core.run.store import RunStore
from lion_core.student.answer_store import Answer, commit
from lion_core.student.attention import sdpa_kernels
from lion_core.student.checkpoints import materialize, scratch_for
from lion_core.student.data import encode_prompts

log = logging.getLogger(__name__)


def fit_prompt(ids: list[int], max_positions: int | None, max_new_tokens: int) -> list[int]:
    """An over-long prompt keeps its end, where the question is, so that prompt and answer fit
    in the model's positions (both engines send the same ids)."""
    if max_positions:
        keep = max(1, max_positions - max_new_tokens)
        return ids[-keep:]
    return ids


def fitted_prompts(
    tokenizer,
    instructions: list[str],
    inputs: list[str | None],
    template: str,
    max_positions: int | None,
    gen: StudentGenerationConfig,
) -> list[list[int]]:
    """Each prompt's token ids as both engines send them: `encode_prompts` (one tokenizer call
    per chunk of rows), each cut to leave room for the answer (`fit_prompt`)."""
    ids = encode_prompts(tokenizer, instructions, [x or "" for x in inputs], template)
    return [fit_prompt(p, max_positions, gen.max_new_tokens) for p in ids]


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
        return self.encode_all([instruction], [input])[0]

    def encode_all(self, instructions: list[str], inputs: list[str | None]) -> list[list[int]]:
        return fitted_prompts(
            self.tok, instructions, inputs, self.template, self.max_positions, self.gen
        )

    def answer(self, rows: pd.DataFrame) -> Iterator[list[Answer]]:
        """Yield the answers batch by batch (each batch can be committed at once)."""
        prompts = self.encode_all(rows["instruction"].tolist(), rows["input"].tolist())
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
            torch.manual_seed(batch_seed(self.seed, first_id))
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


def batch_seed(seed: int, first_id: str) -> int:
    """The run's seed plus the batch's first instruction id (hex), else the run's seed."""
    try:
        return seed + int(first_id[:8], 16)
    except ValueError:
        return seed


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


def run_workers(
    cfg: LionConfig,
    store: RunStore,
    rel: str,
    student_uri: str,
    todo: pd.DataFrame,
    n: int,
    logger: logging.Logger | logging.LoggerAdapter,
) -> None:
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
        cmd = [sys.executable, "-m", "lion_core.student.generator", "--spec", str(spec_file)]
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
    prompts = encode_prompts(
        tokenizer, rows["instruction"].tolist(), rows["input"].tolist(), template
    )
    lengths = [len(p) for p in prompts]
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
