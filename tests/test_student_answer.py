"""Batched generation of student answers: length-sorted left-padded batches under a token budget,
the same answers as one prompt at a time, EOS and prompt stripping, out-of-memory halving, and
answers that survive a crash."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from helpers import echo_rows

from lion_core.errors import DataError, GenerationError
from lion_core.run.schemas import ANSWER_SCHEMA
from lion_core.run.store import RunStore
from lion_core.student import answer_store
from lion_core.student.answer import generate_answers
from lion_core.student.answer_store import progress_rel
from lion_core.student.generator import BatchedGenerator
from lion_core.student.model import load_student


def _generator(cfg, uri, **gen):
    model, tok = load_student(uri, cfg)
    settings = cfg.student.generation.model_copy(update=gen)
    return BatchedGenerator(model, tok, settings, "alpaca")


def _spy(monkeypatch, generator, fail=None):
    """Record the shape of every model.generate call; optionally raise for some batches."""
    calls = []
    real = generator.model.generate

    def generate(input_ids, attention_mask, **kw):
        calls.append((tuple(input_ids.shape), attention_mask.clone()))
        if fail is not None:
            fail(input_ids)
        return real(input_ids=input_ids, attention_mask=attention_mask, **kw)

    monkeypatch.setattr(generator.model, "generate", generate)
    return calls


def test_batched_answers_equal_one_prompt_at_a_time(echo_student, monkeypatch):
    cfg, _, uri = echo_student
    rows = echo_rows(24)
    batched = _generator(cfg, uri, token_budget=600)
    calls = _spy(monkeypatch, batched)
    got = {a.instruction_id: a for b in batched.answer(rows) for a in b}
    assert len(calls) < len(rows) / 2  # really batched
    widths = [shape[1] for shape, _ in calls]
    assert widths == sorted(widths, reverse=True)  # longest prompts first
    for (size, width), mask in calls:
        assert size * (width + 12) <= 600  # within the token budget
        assert mask[:, -1].all()  # left padding: every prompt ends in the last column
    single = _generator(cfg, uri, token_budget=64)  # budget for one prompt per batch
    one = {a.instruction_id: a for b in single.answer(rows) for a in b}
    assert {k: v.answer for k, v in got.items()} == {k: v.answer for k, v in one.items()}


def test_answers_stop_at_eos_without_the_prompt(echo_student):
    cfg, store, uri = echo_student
    rows = echo_rows(16, seed=2)
    out = generate_answers(cfg, store, uri, rows)
    assert list(out.columns) == ANSWER_SCHEMA.names
    assert list(out["instruction_id"]) == list(rows["instruction_id"])
    assert set(out["status"]) == {"ok"}
    assert set(out["model"]) == {"trained"}  # the folder under the root: the root may move
    assert out["request_key"].isna().all()
    assert not out["answer"].str.contains("Response|Instruction|Echo").any()
    stopped = out[out["finish_reason"] == "stop"]
    assert len(stopped) >= len(out) // 2  # the trained student ends its answers
    assert (out["completion_tokens"] <= 12).all() and (out["prompt_tokens"] > 20).all()
    assert (out["answer"].str.len() > 0).all()


def test_out_of_memory_halves_the_batch_and_goes_on(echo_student, monkeypatch):
    cfg, _, uri = echo_student
    rows = echo_rows(12, seed=3)
    g = _generator(cfg, uri, token_budget=2000)

    def fail(input_ids):
        if input_ids.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    calls = _spy(monkeypatch, g, fail)
    answers = [a for b in g.answer(rows) for a in b]
    assert len(answers) == len(rows) and {a.status for a in answers} == {"ok"}
    assert g.oom_events >= 1 and g.budget < 2000
    assert max(shape[0] for shape, _ in calls[g.oom_events :]) <= 3

    g1 = _generator(cfg, uri)
    longest = rows["instruction_id"].iloc[
        max(range(len(rows)), key=lambda i: len(rows["instruction"].iloc[i]))
    ]
    width = max(
        len(g1.encode(i, x)) for i, x in zip(rows["instruction"], rows["input"], strict=True)
    )

    def fail_longest(input_ids):
        if input_ids.shape[1] == width:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    _spy(monkeypatch, g1, fail_longest)
    answers = {a.instruction_id: a for b in g1.answer(rows) for a in b}
    assert answers[longest].status == "failed" and "memory" in answers[longest].error
    assert sum(a.status == "ok" for a in answers.values()) >= len(rows) - 2


def test_a_crash_loses_no_answer_and_the_rerun_skips_them(echo_student, monkeypatch, tmp_path):
    cfg, _, uri = echo_student
    store = RunStore.open(str(tmp_path / "run"))  # its own answers folder, counted below
    cfg = cfg.with_overrides({"student.generation.token_budget": 200})
    rows = echo_rows(20, seed=4)
    real = BatchedGenerator._generate
    seen: list[int] = []

    def crash_after_two(self, prompts, first_id):
        if len(seen) == 2:
            raise RuntimeError("worker died")
        seen.append(len(prompts))
        return real(self, prompts, first_id)

    monkeypatch.setattr(BatchedGenerator, "_generate", crash_after_two)
    with pytest.raises(RuntimeError, match="worker died"):
        generate_answers(cfg, store, uri, rows)
    done = answer_store.answered(store.storage, progress_rel(uri, cfg))
    assert len(done) == sum(seen) > 0  # both finished batches are committed

    counted: list[int] = []

    def count(self, prompts, first_id):
        counted.append(len(prompts))
        return real(self, prompts, first_id)

    monkeypatch.setattr(BatchedGenerator, "_generate", count)
    out = generate_answers(cfg, store, uri, rows)
    assert sum(counted) == len(rows) - len(done)  # only the rest was generated
    assert list(out["instruction_id"]) == list(rows["instruction_id"])
    assert set(out["status"]) == {"ok"}


def test_a_new_token_budget_resumes_the_same_answers(echo_student, monkeypatch, tmp_path):
    """token_budget and num_gpus are operational: changing them between invocations reuses the
    answers so far; a setting that shapes the answers starts afresh."""
    cfg, _, uri = echo_student
    store = RunStore.open(str(tmp_path / "run"))
    rows = echo_rows(8, seed=6)
    first = generate_answers(cfg, store, uri, rows)
    real = BatchedGenerator._generate
    counted: list[int] = []

    def count(self, prompts, first_id):
        counted.append(len(prompts))
        return real(self, prompts, first_id)

    monkeypatch.setattr(BatchedGenerator, "_generate", count)
    operational = {"student.generation.token_budget": 300, "student.generation.num_gpus": 1}
    again = generate_answers(cfg.with_overrides(operational), store, uri, rows)
    assert counted == []  # nothing generated again
    pd.testing.assert_frame_equal(again, first)

    shorter = cfg.with_overrides({"student.generation.max_new_tokens": 4})
    generate_answers(shorter, store, uri, rows)
    assert sum(counted) == len(rows)


def test_rows_need_their_columns(echo_student):
    cfg, store, uri = echo_student
    with pytest.raises(DataError, match="input"):
        generate_answers(
            cfg, store, uri, pd.DataFrame({"instruction_id": ["a"], "instruction": ["x"]})
        )


@pytest.mark.slow
def test_one_worker_process_per_device_over_shards(echo_student, tmp_path):
    """The multi-GPU path, on CPU processes: two workers, each over its shard."""
    cfg, _, uri = echo_student
    rows = echo_rows(16, seed=5)
    single = generate_answers(cfg, RunStore.open(str(tmp_path / "a")), uri, rows)
    store = RunStore.open(str(tmp_path / "b"))
    sharded = generate_answers(cfg, store, uri, rows, workers=2)
    parts = store.storage.listdir(progress_rel(uri, cfg))
    assert {p.split("-")[1] for p in parts} == {"000", "001"}  # both shards committed answers
    pd.testing.assert_frame_equal(single, sharded)

    with pytest.raises(GenerationError, match="worker"):
        generate_answers(
            cfg, RunStore.open(str(tmp_path / "c")), str(tmp_path / "nope"), rows, workers=2
        )
