"""Plain helpers shared by the test files (the fixtures built from them are in conftest.py):
configs with a tiny student, the echo tasks the shared test student is trained on, the offline
world's teacher requests, answer frames in the answer schema, and Chromium for the browser
tests."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pytest

from lion_core.config import LionConfig
from lion_core.llm import ChatRequest
from lion_core.method import prompts
from lion_core.offline.world import seed_instances
from lion_core.run.schemas import ANSWER_SCHEMA, instruction_id
from lion_core.run.store import RunStore

# ---- configs ----------------------------------------------------------------------------------

# A Llama of ~100K parameters: built in a second, trained in milliseconds per step on a CPU.
TINY_STUDENT: dict[str, int] = {
    "vocab_size": 320,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 1,
    "num_heads": 2,
    "max_position_embeddings": 128,
}

# One round that does real work in well under a minute on 2 cores.
SMALL_ROUND: dict[str, Any] = {
    "name": "flow-test",
    "rounds": 1,
    "pools.offline_seeds": 24,
    "pools.new_per_round": 12,
    "student.generation.max_new_tokens": 12,
    "training.launcher": "python",
    "training.learning_rate": 1e-3,
    "training.max_steps": 8,
    "training.max_length": 128,
    "training.micro_batch_size": 8,
    "training.save_steps": 4,
    "referee.max_tokens": 200,
    "offline.judge_noise": 0.0,
}


def tiny_config(root: str | Path | None = None, /, **overrides: Any) -> LionConfig:
    """LionConfig's defaults with the tiny student (TINY_STUDENT) and, when given, `root` as
    storage.root; `overrides` are dotted paths applied last, e.g.
    `tiny_config(**{"student.tiny.vocab_size": 300})`."""
    base: dict[str, Any] = {"student.tiny": TINY_STUDENT}
    if root is not None:
        base["storage.root"] = str(root)
    return LionConfig().with_overrides({**base, **overrides})


def small_config(root: str | Path, **overrides: Any) -> LionConfig:
    """A whole round on the offline world with the tiny student (SMALL_ROUND), under `root`."""
    return tiny_config(root, **{**SMALL_ROUND, **overrides})


# ---- the echo student's tasks -----------------------------------------------------------------

ECHO_WORDS = ["apple", "river", "stone", "green", "quick", "seven", "house", "light"]


def echo_tasks(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(instruction, input, answer) echo tasks: the answer is the input's words, so a tiny
    model learns it (and to stop) within seconds."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = " ".join(rng.choice(ECHO_WORDS) for _ in range(rng.randint(1, 8)))
        pad = " ".join(rng.choice(ECHO_WORDS) for _ in range(rng.randint(0, 10)))
        rows.append((f"Echo the last line. {pad}".strip(), words, words))
    return rows


def echo_rows(n: int, seed: int = 1) -> pd.DataFrame:
    """Echo tasks as rows to answer (instruction_id, instruction, input), ids distinct."""
    return pd.DataFrame(
        [
            {"instruction_id": instruction_id(i, x), "instruction": i, "input": x}
            for i, x, _ in echo_tasks(n, seed)
        ]
    ).drop_duplicates("instruction_id")


class EchoStudent(NamedTuple):
    """The trained echo student: its config, the run store it was built in, its folder."""

    cfg: LionConfig
    store: RunStore
    uri: str


def train_echo_student(root: Path) -> EchoStudent:
    """A tiny student trained in-process for a few seconds on echo tasks (it learns to stop),
    saved for generation (KV cache on) in `root`/trained with its completion marker; one
    already completed there is returned as it is."""
    import torch

    from lion_core.student.checkpoints import is_complete, mark_complete
    from lion_core.student.data import PackedCollator, PackedDataset, encode_example
    from lion_core.student.model import for_training, load_student, prepare_base_student

    cfg = tiny_config(
        root,
        **{
            "student.tiny": {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 128},
            "student.generation": {"max_new_tokens": 12, "token_budget": 600},
        },
    )
    store = RunStore.open(str(root))
    trained = root / "trained"
    if is_complete(store.storage, "trained"):
        return EchoStudent(cfg, store, str(trained))
    train = echo_tasks(300, 0)
    uri = prepare_base_student(cfg, store, [" ".join(r) for r in train])
    model, tok = load_student(uri, cfg)
    for_training(model).train()
    exs = [encode_example(tok, *r, "alpaca", 256)[0] for r in train]
    ds = PackedDataset(exs, 256)
    collate = PackedCollator(tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(60):
        batch = collate([ds[(step * 4 + i) % len(ds)] for i in range(4)])
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.config.use_cache = True  # as training saves a student: for generation
    model.save_pretrained(trained)
    tok.save_pretrained(trained)
    mark_complete(store.storage, "trained")
    return EchoStudent(cfg, store, str(trained))


# ---- LLM requests and answers -----------------------------------------------------------------


def teacher_requests(n: int, seed: int = 0) -> tuple[list[ChatRequest], list[str]]:
    """Teacher requests for `n` offline-world seed instances (tags q0, q1, ...), and the
    answers the offline teacher gives them."""
    insts = seed_instances(n, seed=seed, max_difficulty=6)
    reqs = [
        ChatRequest.of(prompts.teacher_messages(i.instruction, i.input), tag=f"q{k}")
        for k, i in enumerate(insts)
    ]
    return reqs, [i.answer for i in insts]


def answer_frame(
    texts: Mapping[str, str | None] | Sequence[str | None], *, ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """Answers in the answer schema's columns: `texts` by instruction id (a mapping), or in the
    order of `ids` (default a0, a1, ...); None is a failed request."""
    if isinstance(texts, Mapping):
        ids, texts = list(texts), list(texts.values())
    ids = list(ids) if ids is not None else [f"a{k}" for k in range(len(texts))]
    rows = [
        {"instruction_id": i, "answer": t, "status": "ok" if t is not None else "failed",
         "error": None if t is not None else "HTTP 500", "finish_reason": "stop", "model": "m",
         "request_key": i, "prompt_tokens": 1, "completion_tokens": 1}
        for i, t in zip(ids, texts, strict=True)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=ANSWER_SCHEMA.names)


def numbered_answers(pool: pd.DataFrame, who: str, failed: set[int] = frozenset()) -> pd.DataFrame:
    """`who`'s answers to every instruction of `pool`: "<who> 0", "<who> 1", ... in pool
    order; the positions in `failed` are failed requests."""
    texts = [None if k in failed else f"{who} {k}" for k in range(len(pool))]
    return answer_frame(texts, ids=pool["instruction_id"])


# ---- the browser ------------------------------------------------------------------------------

CHROMIUM = Path(os.environ.get("LION_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def chromium():
    """Debian's Chromium, headless, driven by Playwright (never a browser Playwright
    downloads), for the tests marked `browser`. Playwright's sync API runs an event loop in
    the calling thread while it is open, where Prefect's sync calls (`State.result()`) would
    hand back coroutines: a test file that also runs flows opens it only inside its browser
    test (the round report); tests/test_ui_browser.py keeps one for the file (`browser`)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run `make test` or `make test-browser` (they install "
            "Debian's `chromium` with apt-get) or set LION_CHROMIUM"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"playwright is not installed ({exc}): .venv/bin/pip install -e '.[dev]'")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def logged(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    """The records `logger` wrote: other loggers may write into caplog too (a Prefect service
    left behind by an earlier test in the same worker logs its failures late)."""
    return [r for r in caplog.records if r.name == logger]
