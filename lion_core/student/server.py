"""`lion serve-student`: an OpenAI-compatible server over the student's batched HF generation.

For tests and CPU users, as the default command of `student.generation.engine: server`, and for
chatting with a round's student from any OpenAI client. Endpoints (starlette on uvicorn):

- `GET /v1/models`: the served name (the readiness check waits for it);
- `POST /v1/completions`: `prompt` as text, token ids, or a list of either; greedy at
  `temperature: 0`, else sampled (`top_p`, `seed`); `stop_token_ids` (vLLM's extension) end an
  answer besides the model's EOS;
- `POST /v1/chat/completions`: messages rendered with the student's prompt template (the
  tokenizer's chat template, or Alpaca with the last user message as the instruction);
- `GET /stats`: requests, prompts and batches answered so far; `GET /health`.

Requests that arrive together are answered together: one worker thread takes every waiting
prompt (after waiting up to 0.1 s while more keep arriving), groups them by sampling settings and
answers each group with `BatchedGenerator` (length-sorted batches under the token budget);
requests arriving meanwhile wait for the next round. With greedy decoding an answer does not
depend on its batch, so the answers equal the `hf` engine's. Token ids sent as the prompt are
used as they are: `student.served` sends the exact ids training rendered.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lion_core.config import LionConfig, StudentGenerationConfig
from lion_core.ops.http_server import bind, url_of, uvicorn_server
from lion_core.student.answer_store import Answer
from lion_core.student.data import encode_prompt
from lion_core.student.generator import BatchedGenerator, fit_prompt

log = logging.getLogger(__name__)

DEFAULT_NAME = "student"
# After the first waiting request, wait for its companions while they keep arriving: in steps of
# LINGER_S, as long as the queue grew in the last step, at most LINGER_MAX_S in all.
LINGER_S = 0.005
LINGER_MAX_S = 0.1
LOG_INTERVAL_S = 10.0


class RequestError(Exception):
    """A request the server refuses (HTTP `status`, OpenAI error body)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass(frozen=True)
class Sampling:
    """What an answer depends on besides its prompt; prompts with equal settings share a batch."""

    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class _Job:
    prompts: list[list[int]]
    sampling: Sampling
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    answers: dict[int, Answer] = field(default_factory=dict)


@dataclass
class Stats:
    requests: int = 0  # completion and chat requests received (valid ones)
    prompts: int = 0  # prompts answered
    batches: int = 0  # model.generate batches run
    failed: int = 0  # prompts that could not be answered (out of memory alone)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class StudentService:
    """The model, its tokenizer and the batching worker; `app` is the ASGI application."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str = DEFAULT_NAME,
        template: str = "alpaca",
        token_budget: int = StudentGenerationConfig().token_budget,
        max_new_tokens: int = StudentGenerationConfig().max_new_tokens,
        generate_kwargs: dict | None = None,
    ) -> None:
        self.model = model.eval()
        self.tok = tokenizer
        self.name = name
        self.template = template
        self.budget = token_budget
        self.max_new_tokens = max_new_tokens
        self.generate_kwargs = generate_kwargs
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self.stats = Stats()
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="lion-student-gen", daemon=True)
        self._worker.start()
        self._last_log = time.monotonic()
        self._started = time.monotonic()
        self.app = Starlette(
            routes=[
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/stats", self.get_stats, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
            ]
        )

    def close(self) -> None:
        self._queue.put(None)

    # ---- the batching worker ------------------------------------------------------------

    def answer(self, prompts: list[list[int]], sampling: Sampling) -> concurrent.futures.Future:
        """Queue `prompts`; the future resolves to their answers, in order."""
        job = _Job(prompts, sampling)
        self._queue.put(job)
        return job.future

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            waited, seen = 0.0, -1
            while waited < LINGER_MAX_S and self._queue.qsize() != seen:
                seen = self._queue.qsize()
                time.sleep(LINGER_S)
                waited += LINGER_S
            jobs = [job]
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this round
                    break
                jobs.append(more)
            groups: dict[Sampling, list[_Job]] = {}
            for j in jobs:
                groups.setdefault(j.sampling, []).append(j)
            for sampling, members in groups.items():
                try:
                    self._answer_group(sampling, members)
                except Exception as exc:  # the requests fail, the server goes on
                    log.exception("generation failed")
                    for j in members:
                        if not j.future.done():
                            j.future.set_exception(exc)

    def _answer_group(self, sampling: Sampling, jobs: list[_Job]) -> None:
        sampled = sampling.temperature > 0
        gen = StudentGenerationConfig(
            max_new_tokens=sampling.max_tokens,
            do_sample=sampled,
            temperature=sampling.temperature if sampled else 0.7,
            top_p=sampling.top_p if sampled else 1.0,
            token_budget=self.budget,
        )
        generator = BatchedGenerator(
            self.model, self.tok, gen, self.template, sampling.seed, self.generate_kwargs
        )
        generator.eos_ids |= set(sampling.stop_token_ids)
        labels, prompts, owner = [], [], {}
        for j, job in enumerate(jobs):
            for k, p in enumerate(job.prompts):
                label = f"{j:08x}{k:08x}"  # hex, so a sampled batch's seed is reproducible
                labels.append(label)
                prompts.append(p)
                owner[label] = (job, k)
        for batch in generator.answer_prompts(labels, prompts):
            with self._lock:
                self.stats.batches += 1
                for a in batch:
                    self.stats.prompts += a.status == "ok"
                    self.stats.failed += a.status != "ok"
                    self.stats.prompt_tokens += a.prompt_tokens
                    self.stats.completion_tokens += a.completion_tokens
            for a in batch:
                job, k = owner[a.instruction_id]
                job.answers[k] = a
                if len(job.answers) == len(job.prompts):
                    job.future.set_result([job.answers[i] for i in range(len(job.prompts))])
            self._maybe_log()
        self.budget = min(self.budget, generator.budget)  # an out-of-memory halving sticks

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_INTERVAL_S:
            self._last_log = now
            s = self.stats
            print(
                f"served {s.prompts} prompts in {s.batches} batches "
                f"({s.prompts / max(now - self._started, 1e-9):.1f}/s)",
                flush=True,
            )

    # ---- requests -----------------------------------------------------------------------

    def _sampling(self, body: dict[str, Any]) -> Sampling:
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        max_tokens = self.max_new_tokens if max_tokens is None else max_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(400, "'max_tokens' must be a positive integer")
        temperature = body.get("temperature")
        temperature = 1.0 if temperature is None else temperature
        top_p = body.get("top_p")
        top_p = 1.0 if top_p is None else top_p
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise RequestError(400, "'temperature' must be a number in [0, 2]")
        if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
            raise RequestError(400, "'top_p' must be a number in (0, 1]")
        if (body.get("n") or 1) != 1:
            raise RequestError(400, "'n' must be 1 (send one request per sample)")
        if body.get("stream"):
            raise RequestError(400, "stream=true is not supported by lion serve-student")
        if body.get("stop"):
            raise RequestError(400, "'stop' strings are not supported; use 'stop_token_ids'")
        stop = body.get("stop_token_ids") or []
        if not isinstance(stop, list) or not all(isinstance(t, int) for t in stop):
            raise RequestError(400, "'stop_token_ids' must be a list of integers")
        seed = body.get("seed") or 0
        if not isinstance(seed, int):
            raise RequestError(400, "'seed' must be an integer")
        return Sampling(
            max_tokens=max_tokens,
            temperature=float(temperature),
            top_p=float(top_p),
            seed=seed if temperature > 0 else 0,
            stop_token_ids=tuple(sorted(set(stop))),
        )

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is not None and model != self.name:
            raise RequestError(404, f"The model `{model}` does not exist.", "NotFoundError")

    def _fits(self, ids: list[int], sampling: Sampling, index: int) -> list[int]:
        if not ids:
            raise RequestError(400, f"prompt {index} is empty")
        vocab = len(self.tok)
        if any(not isinstance(t, int) or t < 0 or t >= vocab for t in ids):
            raise RequestError(400, f"prompt {index}: token ids must be integers in [0, {vocab})")
        if self.max_positions and len(ids) + sampling.max_tokens > self.max_positions:
            raise RequestError(
                400,
                f"prompt {index}: {len(ids)} prompt tokens + max_tokens {sampling.max_tokens} "
                f"exceed the model's {self.max_positions} positions",
            )
        return ids

    def _prompts(self, body: dict[str, Any], sampling: Sampling) -> list[list[int]]:
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (
            isinstance(prompt, list) and prompt and isinstance(prompt[0], int)
        ):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise RequestError(400, "'prompt' must be text, token ids, or a non-empty list of them")
        special = body.get("add_special_tokens", True)
        out = []
        for i, p in enumerate(prompt):
            if isinstance(p, str):
                p = self.tok(p, add_special_tokens=bool(special))["input_ids"]
            if not isinstance(p, list):
                raise RequestError(400, f"prompt {i} must be text or a list of token ids")
            out.append(self._fits(p, sampling, i))
        return out

    def chat_prompt(self, messages: Any, max_tokens: int) -> list[int]:
        """Token ids of a conversation in the student's prompt template (an over-long one keeps
        its end)."""
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "'messages' must be a non-empty list")
        turns = []
        for i, m in enumerate(messages):
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or content is None:
                raise RequestError(400, f"messages[{i}] needs a 'role' and a text 'content'")
            turns.append({"role": m["role"], "content": content})
        if self.template == "chat_template":
            text = self.tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
            ids = self.tok.encode(text, add_special_tokens=False)
        else:  # the Alpaca format is one instruction: the last user turn
            users = [t["content"] for t in turns if t["role"] == "user"]
            if not users:
                raise RequestError(400, "no user message to answer")
            ids = encode_prompt(self.tok, users[-1], "", "alpaca")
        return fit_prompt(ids, self.max_positions, max_tokens)

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise RequestError(400, "request body must be a JSON object")
        self._check_model(body)
        return body

    async def _run(self, prompts: list[list[int]], sampling: Sampling) -> list[Answer]:
        with self._lock:
            self.stats.requests += 1
        answers = await asyncio.wrap_future(self.answer(prompts, sampling))
        failed = [a for a in answers if a.status != "ok"]
        if failed:
            raise RequestError(400, f"prompt does not fit in memory: {failed[0].error}")
        return answers

    @staticmethod
    def _usage(answers: list[Answer]) -> dict[str, int]:
        p = sum(a.prompt_tokens for a in answers)
        c = sum(a.completion_tokens for a in answers)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    async def completions(self, request: Request) -> JSONResponse:
        try:
            body = await self._body(request)
            sampling = self._sampling(body)
            answers = await self._run(self._prompts(body, sampling), sampling)
        except RequestError as exc:
            return _error(exc)
        choices = [
            {"index": i, "text": a.answer, "finish_reason": a.finish_reason, "logprobs": None}
            for i, a in enumerate(answers)
        ]
        return JSONResponse(
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.name,
                "choices": choices,
                "usage": self._usage(answers),
            }
        )

    async def chat(self, request: Request) -> JSONResponse:
        try:
            body = await self._body(request)
            sampling = self._sampling(body)
            ids = self.chat_prompt(body.get("messages"), sampling.max_tokens)
            answers = await self._run([self._fits(ids, sampling, 0)], sampling)
        except RequestError as exc:
            return _error(exc)
        a = answers[0]
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": a.answer},
                        "finish_reason": a.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": self._usage(answers),
            }
        )

    async def models(self, request: Request) -> JSONResponse:
        card = {"id": self.name, "object": "model", "created": 0, "owned_by": "lion"}
        if self.max_positions:
            card["max_model_len"] = self.max_positions
        return JSONResponse({"object": "list", "data": [card]})

    async def get_stats(self, request: Request) -> JSONResponse:
        with self._lock:
            return JSONResponse(dict(vars(self.stats)))

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})


def _error(exc: RequestError) -> JSONResponse:
    body = {"error": {"message": str(exc), "type": exc.kind, "param": None, "code": exc.status}}
    return JSONResponse(body, status_code=exc.status)


# ---- running it ----------------------------------------------------------------------------


def load_service(
    model: str,
    cfg: LionConfig | None = None,
    *,
    name: str = DEFAULT_NAME,
    device: str | None = None,
) -> StudentService:
    """Load model folder (or URI, or hub id) `model` as `engine: hf` loads it (bf16 on a GPU
    that supports it, fp32 on the CPU), with `cfg`'s student settings."""
    import torch

    from lion_core.ops.supervise import size_torch_threads
    from lion_core.student.model import load_student

    cfg = cfg or LionConfig()
    on_gpu = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    if not on_gpu:
        size_torch_threads()  # this job's share of the cores
    m, tok = load_student(model, cfg, dtype=dtype, device=device or ("cuda" if on_gpu else "cpu"))
    gen = cfg.student.generation
    return StudentService(
        m,
        tok,
        name=name,
        template=cfg.student.prompt_template,
        token_budget=gen.token_budget,
        max_new_tokens=gen.max_new_tokens,
    )


def serve(service: StudentService, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (SIGINT/SIGTERM). Port 0 = a free port; the first line printed
    is the base URL."""
    sock = bind(host, port)
    port = sock.getsockname()[1]
    print(f"student server listening on {url_of(host, port)}/v1 (model {service.name!r})",
          flush=True)  # fmt: skip
    try:
        uvicorn_server(service.app, host, port).run(sockets=[sock])
    finally:
        service.close()
        s = service.stats
        print(f"student server stopped: {s.prompts} prompts in {s.requests} requests, "
              f"{s.batches} batches", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """`python -m lion_core.student.server MODEL ...`: the same as `lion serve-student`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model folder, URI or hub id (a round's student/)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free one")
    parser.add_argument("--served-model-name", default=DEFAULT_NAME)
    parser.add_argument("-c", "--config", default=None, help="take student and storage from here")
    parser.add_argument("--template", choices=["alpaca", "chat_template"], default=None)
    parser.add_argument("--token-budget", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="when a request omits it")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: a GPU if any)")
    args = parser.parse_args(argv)
    cfg = LionConfig.from_yaml(args.config) if args.config else LionConfig()
    overrides: dict[str, Any] = {}
    if args.template:
        overrides["student.prompt_template"] = args.template
    if args.token_budget:
        overrides["student.generation.token_budget"] = args.token_budget
    if args.max_new_tokens:
        overrides["student.generation.max_new_tokens"] = args.max_new_tokens
    if overrides:
        cfg = cfg.with_overrides(overrides)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar: the first line is the URL
    service = load_service(args.model, cfg, name=args.served_model_name, device=args.device)
    serve(service, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
