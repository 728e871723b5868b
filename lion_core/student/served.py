"""The student's answers through a served engine (vLLM, SGLang, `lion serve-student`) over the
OpenAI protocol: `student.generation.engine: server`.

For one answering task (a round's Cache Pool, an evaluation set):

1. the configured command (`student.generation.server.command`, default `lion serve-student`) is
   started on the checkpoint as a supervised process group (`supervise.ProcessGroup`: its own
   session, killed on success, failure, cancellation and parent death, output streamed to the
   logger and a log file) — or an endpoint the user keeps warm (`server.base_url`) is used;
2. readiness: `GET /v1/models` must list the served name within `server.ready_timeout`, else
   `GenerationError` with the server log's last lines;
3. every prompt is rendered exactly as the `hf` engine renders it (`fitted_prompts`, the Alpaca
   or chat template, cut to the model's positions the same way) and sent as **token ids** to
   `POST /v1/completions` — no tokenizer or chat template on the server side can change it —
   greedy at temperature 0 (or sampled with a per-instruction seed), `max_tokens` =
   `max_new_tokens`, `stop_token_ids` = the model's EOS ids;
4. through `LLMClient` as role `student`: bounded concurrency, retries, progress, and the run's
   response cache keyed by (served name, prompt ids, sampling settings, the checkpoint's
   content digest) — a resumed task re-sends only what is not cached, and a retrained student
   never reuses an older one's answers;
5. the server is stopped and the answers committed to the same progress folder as the `hf`
   engine's, in `ANSWER_SCHEMA` (`request_key` = the cache key).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pandas as pd
import torch

from lion_core.config import EndpointConfig, LionConfig, StudentServerConfig
from lion_core.errors import ConfigError, GenerationError, LionError
from lion_core.llm.client import LLMClient
from lion_core.llm.costs import FREE
from lion_core.llm.factory import client_for
from lion_core.llm.keys import resolve_api_key
from lion_core.llm.types import ChatRequest
from lion_core.ops.supervise import ProcessGroup, cpu_thread_env, free_port
from lion_core.run.storage import Storage
from lion_core.student.answer_store import Answer, commit
from lion_core.student.checkpoints import content_digest, resolve_model, scratch_for
from lion_core.student.generator import batch_seed, fitted_prompts, stop_token_ids

log = logging.getLogger(__name__)

ROLE = "student"  # the response cache's role folder
FIELD = "student.generation.server"  # what errors name
NOT_STARTED = "http://server-not-started.invalid/v1"  # the client's URL until a server is up
POLL_S = 0.5


@dataclass(frozen=True)
class ServedPrompts:
    """The prompts as token ids, and what the `hf` engine would stop at."""

    ids: list[list[int]]
    stop: list[int]


def render_prompts(cfg: LionConfig, source: str, revision: str | None, rows) -> ServedPrompts:
    """Token ids of each row's prompt, exactly as `BatchedGenerator.encode` makes them, and the
    stop ids (the model's generation config), without loading the weights."""
    from transformers import AutoConfig, GenerationConfig

    from lion_core.student.model import load_tokenizer

    trust = cfg.student.trust_remote_code
    tok = load_tokenizer(source, revision=revision, trust_remote_code=trust)
    try:
        config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"student: cannot read the model config of {source!r}: {exc}") from exc
    try:
        generation = GenerationConfig.from_pretrained(source, revision=revision)
    except OSError:  # no generation_config.json: transformers derives it from the config
        generation = GenerationConfig.from_model_config(config)
    max_positions = getattr(config, "max_position_embeddings", None)
    gen = cfg.student.generation
    template = cfg.student.prompt_template
    ids = fitted_prompts(
        tok, rows["instruction"].tolist(), rows["input"].tolist(), template, max_positions, gen
    )
    return ServedPrompts(ids, stop_token_ids(generation, tok))


# ------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------


def default_command() -> str:
    """`lion serve-student` (as `python -m lion_core.student.server`: the same program, run by
    this interpreter, so it needs no `lion` on the PATH)."""
    return "{python} -m lion_core.student.server {model} --host {host} --port {port} " \
        "--served-model-name {name}"  # fmt: skip


def server_command(server: StudentServerConfig, values: dict[str, str]) -> list[str]:
    """The command's words, each with its placeholders filled in (a path with spaces stays one
    word)."""
    template = server.command or default_command()
    try:
        words = shlex.split(template)
        return [w.format(**values) for w in words]
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"student.generation.server.command {template!r}: {exc}; placeholders: "
            f"{', '.join('{' + p + '}' for p in StudentServerConfig.PLACEHOLDERS)}"
        ) from exc


def _tail(group: ProcessGroup | None) -> str:
    lines = group.tail() if group is not None else []
    return "\n".join(lines) if lines else "(no output)"


def wait_ready(
    base_url: str,
    name: str,
    timeout: float,
    *,
    group: ProcessGroup | None = None,
    headers: dict[str, str] | None = None,
    where: str = "",
) -> None:
    """Until `GET {base_url}/models` lists `name`; GenerationError (with the server log's last
    lines) when the server exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    seen = "no answer yet"
    with httpx.Client(timeout=5.0, headers=headers) as http:
        while True:
            if group is not None and not group.alive():
                raise GenerationError(
                    f"the student server exited with code {group.returncode} before it was "
                    f"ready ({shlex.join(group.cmd)}){where}; last lines:\n{_tail(group)}"
                )
            try:
                r = http.get(f"{base_url}/models")
                if r.status_code == 200:
                    names = [m.get("id") for m in r.json().get("data", [])]
                    if name in names:
                        return
                    seen = f"/v1/models lists {names}, not {name!r}"
                else:
                    seen = f"/v1/models answered HTTP {r.status_code}"
            except (httpx.HTTPError, ValueError) as exc:
                seen = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                what = shlex.join(group.cmd) if group is not None else base_url
                raise GenerationError(
                    f"the student server ({what}) was not ready within {timeout:g} s "
                    f"(student.generation.server.ready_timeout): {seen}{where}; last lines:\n"
                    f"{_tail(group)}"
                )
            time.sleep(POLL_S)


@contextlib.contextmanager
def served_student(
    cfg: LionConfig,
    source: str,
    *,
    log_dir: os.PathLike | str | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> Iterator[tuple[str, ProcessGroup | None]]:
    """(base URL, the server's process group or None) of the student `source` (a folder or hub
    id) served for the duration: the configured command started and awaited, or the warm
    `base_url`. The group is gone when the block ends, however it ends."""
    logger = logger or log
    server = cfg.student.generation.server
    key = server_api_key(server)
    headers = {"Authorization": f"Bearer {key}"} if key else None
    if server.base_url:
        base = server.base_url.rstrip("/")
        wait_ready(base, server.name, min(server.ready_timeout, 60.0), headers=headers)
        yield base, None
        return
    port = free_port()
    values = {
        "model": source,
        "port": str(port),
        "host": server.host,
        "name": server.name,
        "tp": str(server.tensor_parallel),
        "python": sys.executable,
    }
    cmd = server_command(server, values)
    log_file = None
    where = ""
    if log_dir is not None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        log_file = os.path.join(log_dir, f"server-{stamp}-{os.getpid()}.log")
        where = f"; log {log_file}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    if not torch.cuda.is_available():
        cpu_thread_env(1, env)  # a CPU server: this job's share of the cores
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
    logger.info("starting the student server: %s", shlex.join(cmd))
    with ProcessGroup(cmd, env=env, log_file=log_file, logger=logger, prefix="[server] ") as group:
        started = time.monotonic()
        wait_ready(base, server.name, server.ready_timeout, group=group, headers=headers,
                   where=where)  # fmt: skip
        logger.info("student server ready at %s after %.1f s", base, time.monotonic() - started)
        try:
            yield base, group
        except LionError as exc:
            if not group.alive():  # say why: the server died under the requests
                raise GenerationError(
                    f"the student server exited with code {group.returncode} while answering "
                    f"({exc}){where}; last lines:\n{_tail(group)}"
                ) from exc
            raise
        _log_stats(base, headers, logger)


def server_api_key(server: StudentServerConfig) -> str | None:
    """The served student's API key (vLLM --api-key) from `server.api_key_env`, or None,
    through the one key resolver of every endpoint (`MissingAPIKeyError` naming the field when
    the variable is not set)."""
    host = f"[{server.host}]" if ":" in server.host else server.host
    endpoint = EndpointConfig(
        base_url=server.base_url or f"http://{host}", api_key_env=server.api_key_env
    )
    return resolve_api_key(endpoint, FIELD)


def _log_stats(base: str, headers: dict[str, str] | None, logger) -> None:
    """The server's own counters, when it has them (`lion serve-student`'s /stats)."""
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    try:
        r = httpx.get(f"{root}/stats", timeout=5.0, headers=headers)
        if r.status_code == 200:
            logger.info("student server stats: %s", r.text.strip())
    except httpx.HTTPError:
        pass


# ------------------------------------------------------------------------------------------
# Answering
# ------------------------------------------------------------------------------------------


def student_client(
    cfg: LionConfig,
    storage: Storage,
    base_url: str,
    *,
    digest: str,
    stop: list[int],
    group: ProcessGroup | None = None,
) -> LLMClient:
    """The LLM client of the served student (`llm.factory.client_for`, role `student`): the
    generation settings as sampling parameters, the model's stop ids as `stop_token_ids`, the
    checkpoint's digest in every cache key (the base URL is not in the key: a client on a
    placeholder URL computes the same keys), the response cache in the run's own `storage`
    and the key from `server.api_key_env`. Its answers cost nothing (our own server), so they
    are priced free and never stopped by the run's budget. With the server's process `group`,
    a server that exits stops the requests at once (no retries against its dead port)."""
    gen = cfg.student.generation
    server = gen.server
    endpoint = EndpointConfig(
        base_url=base_url,
        model=server.name,
        temperature=gen.temperature if gen.do_sample else 0.0,
        top_p=gen.top_p if gen.do_sample else 1.0,
        max_tokens=gen.max_new_tokens,
        concurrency=server.concurrency,
        timeout=server.timeout,
        cache_shard_size=server.cache_shard_size,
    )
    return client_for(
        cfg,
        ROLE,
        endpoint=endpoint,
        storage=storage,
        api_key=server_api_key(server) if base_url != NOT_STARTED else None,
        pricing={server.name: FREE},
        budget=False,
        extra_body={"stop_token_ids": stop, "skip_special_tokens": True},
        key_scope={"checkpoint": digest},
        allow_empty=True,  # a student that stops at once answered "", as with engine: hf
        gone=None if group is None else lambda: _exited(group),
    )


def _exited(group: ProcessGroup) -> str | None:
    """Why the server is gone, or None while it runs."""
    if group.alive():
        return None
    return f"the student server exited with code {group.returncode}"


def answer_served(
    cfg: LionConfig,
    storage: Storage,
    rel: str,
    student_uri: str,
    rows: pd.DataFrame,
    *,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> int:
    """Answer `rows` (instruction_id, instruction, input) through the served student and
    commit the answers under `rel`; returns how many were committed."""
    logger = logger or log
    gen = cfg.student.generation
    source, revision = resolve_model(student_uri, cfg.storage.options)
    prompts = render_prompts(cfg, source, revision, rows)
    digest = content_digest(student_uri, cfg.storage.options)
    ids = list(rows["instruction_id"])
    requests = [
        ChatRequest.completion(p, tag=iid, sample=batch_seed(cfg.seed, iid) if gen.do_sample else 0)
        for iid, p in zip(ids, prompts.ids, strict=True)
    ]
    client = student_client(cfg, storage, NOT_STARTED, digest=digest, stop=prompts.stop)
    cache = client.cache
    if cache is not None and all(cache.get(client.key(r)) is not None for r in requests):
        return _commit(storage, rel, student_uri, ids, client.run(requests), client, logger)
    log_dir = scratch_for(storage.uri(rel), "server")
    with served_student(cfg, source, log_dir=log_dir, logger=logger) as (base_url, group):
        client = student_client(
            cfg, storage, base_url, digest=digest, stop=prompts.stop, group=group
        )
        results = client.run(requests, desc="student answers")
        return _commit(storage, rel, student_uri, ids, results, client, logger)


def _commit(
    storage: Storage,
    rel: str,
    student_uri: str,
    ids: list[str],
    results: list,
    client: LLMClient,
    logger: logging.Logger | logging.LoggerAdapter,
) -> int:
    """Commit the answered rows; GenerationError if any request failed. Nothing the server
    returned that is not an answer is committed (a 4xx included: a committed failure would be
    reused by every resume, even once the server works), so a re-run asks those again."""
    usage = client.usage
    logger.info(
        "student answers through %s: %d requests sent, %d from the response cache, %d failed",
        client.base_url, usage.requests, usage.cache_hits, usage.failures,
    )  # fmt: skip
    answers = [
        Answer(
            instruction_id=iid,
            answer=r.text.strip() if r.text is not None else None,
            status="ok",
            error=None,
            finish_reason=r.finish_reason,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            request_key=r.key,
        )
        for iid, r in zip(ids, results, strict=True)
        if r.ok
    ]
    if answers:
        commit(storage, rel, 0, 0, answers, student_uri)
    lost = [r for r in results if not r.ok]
    if lost:
        raise GenerationError(
            f"{len(lost)} of {len(results)} student requests failed after their retries (e.g. "
            f"instruction {lost[0].tag}: {lost[0].error}); the {len(answers)} answers received "
            "are kept and a re-run sends only the rest"
        )
    return len(answers)
