"""The offline world's OpenAI-compatible HTTP server (starlette on uvicorn, loopback only).

Endpoints: `GET /v1/models`, `POST /v1/chat/completions`, `GET /stats`, `POST /stats/reset`,
and the Batch API: `POST /v1/files` (purpose "batch"), `GET /v1/files/{id}[/content]`,
`POST /v1/batches`, `GET /v1/batches[/{id}]`, `POST /v1/batches/{id}/cancel`. A batch ends
`batch_delay` seconds after its creation, its lines answered exactly as the same bodies sent one
by one (a share can fail, `faults.batch_fail_rate`, or be left undone so that the batch ends
expired, `faults.batch_expire_rate`), in four steps, so `request_counts` shows progress.

With `rpm` / `tpm` set, the world accepts at most that many requests / tokens per minute (token
buckets holding a minute's allowance; tokens counted as OpenAI's limiter counts them before
answering, `limiter_tokens`) and answers 429 beyond, with OpenAI's `x-ratelimit-*` headers, which
it also sends with every answer.

Two rejections a real provider makes can be switched on (off by default, changeable while the
server runs): `api_key` — a request without `Authorization: Bearer <api_key>` is a 401 — and
`strict_models` — a model not in `MODELS` is a 404 — with OpenAI's error bodies.

Answers are a function of (world seed, request body) — the body includes the `seed` field the
client sends for distinct samples of one prompt — so a run against the offline world is
reproducible. Fault decisions (429, 500, slow, garbled) draw from a counter-based RNG instead,
so a retried request can succeed. `/stats` counts requests, distinct bodies and status codes per
role, and batches and their lines per role, which is how tests prove that every request was
answered exactly once.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hashlib
import json
import math
import random
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lion_core.config import OfflineWorldConfig
from lion_core.llm.ratelimit import RateLimiter, limiter_tokens
from lion_core.method.prompts import role_of
from lion_core.offline import roles
from lion_core.ops.http_server import bind, url_of, uvicorn_server

# Listed by /v1/models; any name is accepted, since the role comes from the prompt: the judge
# ("offline-judge") sends the referee's prompt and is answered exactly like the referee.
MODELS = (
    "offline-world",
    "offline-teacher",
    "offline-referee",
    "offline-judge",
    "offline-generator",
)


# ---- counters ------------------------------------------------------------------------------


@dataclass
class _RoleStats:
    requests: int = 0
    bodies: set[str] = field(default_factory=set)
    status: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    answered: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # body -> 200s
    batch_sizes: list[int] = field(default_factory=list)  # lines of each batch, in order
    cancelled_batches: int = 0
    limited_tokens: int = 0  # tokens of requests let through the world's rpm/tpm limits
    in_flight: int = 0  # chat requests received and not answered yet
    max_in_flight: int = 0  # the most at once

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": len(self.batch_sizes),
            "batch_lines": sum(self.batch_sizes),
            "batch_sizes": list(self.batch_sizes),
            "cancelled_batches": self.cancelled_batches,
            "limited_tokens": self.limited_tokens,
            "max_in_flight": self.max_in_flight,
            "requests": self.requests,
            "distinct_bodies": len(self.bodies),
            "status": {str(code): n for code, n in sorted(self.status.items())},
            "answered": sum(self.answered.values()),
            "answered_bodies": len(self.answered),
            "answered_twice": sum(1 for n in self.answered.values() if n > 1),
        }


class Stats:
    """Per-role request counters (thread-safe: read from other threads by tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roles: dict[str, _RoleStats] = defaultdict(_RoleStats)

    def request(self, role: str, body: str) -> None:
        with self._lock:
            entry = self._roles[role]
            entry.requests += 1
            entry.bodies.add(body)
            entry.in_flight += 1
            entry.max_in_flight = max(entry.max_in_flight, entry.in_flight)

    def status(self, role: str, body: str, code: int) -> None:
        with self._lock:
            entry = self._roles[role]
            entry.status[code] += 1
            if code == 200:
                entry.answered[body] += 1
            self._answered(entry)

    def abandoned(self, role: str) -> None:
        """A request whose client went away before its answer (no status sent)."""
        with self._lock:
            self._answered(self._roles[role])

    @staticmethod
    def _answered(entry: _RoleStats) -> None:
        entry.in_flight = max(0, entry.in_flight - 1)

    def limited(self, role: str, tokens: int) -> None:
        with self._lock:
            self._roles[role].limited_tokens += tokens

    def batch(self, role: str, lines: int) -> None:
        with self._lock:
            self._roles[role].batch_sizes.append(lines)

    def batch_cancelled(self, role: str) -> None:
        with self._lock:
            self._roles[role].cancelled_batches += 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {role: entry.as_dict() for role, entry in sorted(self._roles.items())}

    def reset(self) -> None:
        with self._lock:
            self._roles.clear()


# ---- faults --------------------------------------------------------------------------------


class FaultDice:
    """Counter-based uniform draws: draw k of request n is a hash of (seed, n, k)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._counter = 0
        self._lock = threading.Lock()

    def roll(self) -> tuple[float, float, float, float]:
        with self._lock:
            self._counter += 1
            n = self._counter
        digest = hashlib.sha256(f"faults:{self.seed}:{n}".encode()).digest()
        return tuple(int.from_bytes(digest[8 * i : 8 * i + 8], "big") / 2**64 for i in range(4))


# ---- the app -------------------------------------------------------------------------------


def _error(
    status: int,
    message: str,
    kind: str,
    headers: dict[str, str] | None = None,
    code: str | None = None,
):
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _multipart(content_type: str, data: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, bytes)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + data)
    fields: dict[str, tuple[str | None, bytes]] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


def _words(text: str) -> int:
    return len(text.split())


def _truncate(text: str, max_tokens: int | None) -> tuple[str, str]:
    """Tokens approximated by whitespace words: an answer longer than max_tokens is cut."""
    words = text.split()
    if max_tokens is not None and len(words) > max_tokens:
        return " ".join(words[:max_tokens]), "length"
    return text, "stop"


def _content_text(content: Any) -> str | None:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "".join(parts)
    return None


class OfflineWorld:
    """The server's state and request handling; `app` is the ASGI application.

    `api_key` (None: any key) and `strict_models` (False: any model name) are the rejection
    faults; tests may change them while the server runs.
    """

    def __init__(
        self,
        cfg: OfflineWorldConfig | None = None,
        *,
        api_key: str | None = None,
        strict_models: bool = False,
    ) -> None:
        self.cfg = cfg or OfflineWorldConfig()
        self.api_key = api_key
        self.strict_models = strict_models
        self.stats = Stats()
        self.dice = FaultDice(self.cfg.seed)
        self.batch_dice = FaultDice(self.cfg.seed + 1)
        self.limits = RateLimiter(self.cfg.rpm, self.cfg.tpm)
        self.files: dict[str, dict[str, Any]] = {}  # id -> FileObject fields + "content"
        self.batches: dict[str, dict[str, Any]] = {}  # id -> Batch fields
        self._batch_tasks: dict[str, asyncio.Task[None]] = {}
        routes = [
            Route("/models", self.models, methods=["GET"]),
            Route("/chat/completions", self.chat, methods=["POST"]),
            Route("/files", self.create_file, methods=["POST"]),
            Route("/files/{file_id}", self.get_file, methods=["GET"]),
            Route("/files/{file_id}/content", self.file_content, methods=["GET"]),
            Route("/batches", self.create_batch, methods=["POST"]),
            Route("/batches", self.list_batches, methods=["GET"]),
            Route("/batches/{batch_id}", self.get_batch, methods=["GET"]),
            Route("/batches/{batch_id}/cancel", self.cancel_batch, methods=["POST"]),
        ]
        self.app = Starlette(
            routes=[
                *(Route(f"/v1{r.path}", r.endpoint, methods=r.methods) for r in routes),
                *routes,
                Route("/stats", self.get_stats, methods=["GET"]),
                Route("/stats/reset", self.reset_stats, methods=["POST"]),
                Route("/health", self.health, methods=["GET"]),
            ]
        )

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> JSONResponse:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "lion"} for m in MODELS]
        return JSONResponse({"object": "list", "data": data})

    async def get_stats(self, request: Request) -> JSONResponse:
        return JSONResponse(self.stats.snapshot())

    async def reset_stats(self, request: Request) -> JSONResponse:
        self.stats.reset()
        return JSONResponse({"status": "reset"})

    async def chat(self, request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.stats.status("invalid", "", 400)
            return _error(400, f"request body is not valid JSON: {exc}", "invalid_request_error")
        problem, messages = self._validate(body)
        if problem:
            self.stats.status("invalid", "", 400)
            return _error(400, problem, "invalid_request_error")

        role = role_of(messages)
        body_hash = _hash(body)
        self.stats.request(role, body_hash)
        rejected = self._rejection(request, body)
        if rejected is not None:
            self.stats.status(role, body_hash, rejected.status_code)
            return rejected
        tokens = limiter_tokens(body)
        wait = self.limits.try_acquire(tokens) if self.limits.active else 0.0
        if self.limits.active and wait <= 0:
            self.limits.done(tokens)  # the world's own buckets: nothing is "in flight"
            self.stats.limited(role, tokens)
        limit_headers = self._limit_headers()
        if wait > 0:
            self.stats.status(role, body_hash, 429)
            headers = {
                **limit_headers,
                "retry-after": f"{math.ceil(wait)}",
                "retry-after-ms": f"{wait * 1000:.0f}",
            }
            return _error(
                429,
                "Rate limit reached for requests or tokens per minute; please try again in "
                f"{wait:.3f}s.",
                "requests" if self.limits.requests.wait(1) > 0 else "tokens",
                headers,
                code="rate_limit_exceeded",
            )

        faults = self.cfg.faults
        u429, u500, uslow, ugarble = self.dice.roll()
        delay = self.cfg.latency + (faults.slow_seconds if uslow < faults.rate_slow else 0.0)
        if delay > 0:
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:  # the client hung up (its timeout)
                self.stats.abandoned(role)
                raise
        if u429 < faults.rate_429:
            self.stats.status(role, body_hash, 429)
            ms = faults.retry_after * 1000
            headers = {"retry-after": f"{faults.retry_after:g}", "retry-after-ms": f"{ms:g}"}
            return _error(429, "injected fault: rate limit reached", "rate_limit_error", headers)
        if u500 < faults.rate_500:
            self.stats.status(role, body_hash, 500)
            return _error(500, "injected fault: internal server error", "server_error")

        garbled = role == "referee" and ugarble < faults.rate_garbled
        self.stats.status(role, body_hash, 200)
        completion = self._completion(role, messages, body, body_hash, garbled=garbled)
        return JSONResponse(completion, headers=limit_headers or None)

    def _completion(
        self,
        role: str,
        messages: list[dict[str, str]],
        body: dict[str, Any],
        body_hash: str,
        *,
        garbled: bool = False,
    ) -> dict[str, Any]:
        """The chat.completion object answering `body`: a function of (seed, body)."""
        rng = random.Random(f"{self.cfg.seed}:{body_hash}")
        n = int(body.get("n") or 1)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        choices, completion_tokens = [], 0
        for i in range(n):
            text = self._answer(role, messages, body, rng, garbled=garbled)
            text, finish = _truncate(text, max_tokens)
            completion_tokens += _words(text)
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            )
        prompt_tokens = sum(_words(m["content"]) for m in messages)
        return {
            "id": f"chatcmpl-{body_hash[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "offline-world"),
            "system_fingerprint": f"lion-offline-{self.cfg.seed}",
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _limit_headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for the limits the world enforces."""
        headers: dict[str, str] = {}
        now = time.monotonic()
        for name, bucket in (("requests", self.limits.requests), ("tokens", self.limits.tokens)):
            if bucket.capacity is None:
                continue
            bucket.refill(now)
            level = max(0.0, bucket.level)
            headers[f"x-ratelimit-limit-{name}"] = f"{bucket.capacity:.0f}"
            headers[f"x-ratelimit-remaining-{name}"] = f"{math.floor(level)}"
            reset = (bucket.capacity - level) * 60 / bucket.capacity
            headers[f"x-ratelimit-reset-{name}"] = f"{reset:.3f}s"
        return headers

    # ---- the Batch API ------------------------------------------------------------------

    async def create_file(self, request: Request) -> JSONResponse:
        fields = _multipart(request.headers.get("content-type", ""), await request.body())
        upload = fields.get("file")
        if upload is None:
            return _error(400, "missing 'file' in the multipart body", "invalid_request_error")
        purpose = (fields.get("purpose") or (None, b"batch"))[1].decode()
        file_id = f"file-{len(self.files) + 1:06d}{hashlib.sha256(upload[1]).hexdigest()[:12]}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(upload[1]),
            "created_at": int(time.time()),
            "filename": upload[0] or "upload.jsonl",
            "purpose": purpose,
            "status": "processed",
            "content": upload[1],
        }
        return JSONResponse(self._file(file_id))

    def _file(self, file_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.files[file_id].items() if k != "content"}

    async def get_file(self, request: Request) -> JSONResponse:
        file_id = request.path_params["file_id"]
        if file_id not in self.files:
            return _error(404, f"No such File object: {file_id}", "invalid_request_error")
        return JSONResponse(self._file(file_id))

    async def file_content(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if file_id not in self.files:
            return _error(404, f"No such File object: {file_id}", "invalid_request_error")
        return Response(self.files[file_id]["content"], media_type="application/jsonl")

    async def create_batch(self, request: Request) -> JSONResponse:
        rejected = self._rejection(request, {})
        if rejected is not None:
            return rejected
        try:
            spec = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}", "invalid_request_error")
        file_id = spec.get("input_file_id")
        if file_id not in self.files:
            return _error(404, f"No such File object: {file_id}", "invalid_request_error")
        if spec.get("endpoint") != "/v1/chat/completions":
            return _error(400, "only /v1/chat/completions batches", "invalid_request_error")
        lines, errors = [], []
        for n, raw in enumerate(self.files[file_id]["content"].splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                body = line["body"]
                problem, messages = self._validate(body)
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                problem, messages = f"not a batch request line: {exc}", []
            if problem:
                errors.append({"code": "invalid_request", "line": n, "message": problem})
            else:
                lines.append((line.get("custom_id"), body, messages))
        batch_id = f"batch_{len(self.batches) + 1:06d}{file_id[-8:]}"
        now = int(time.time())
        batch: dict[str, Any] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": spec["endpoint"],
            "errors": None,
            "input_file_id": file_id,
            "completion_window": spec.get("completion_window", "24h"),
            "status": "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": now,
            "expires_at": now + 86400,
            "metadata": spec.get("metadata"),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
        }
        self.batches[batch_id] = batch
        role = role_of(lines[0][2]) if lines else "invalid"
        batch["_role"] = role
        self.stats.batch(role, len(lines) + len(errors))
        if errors or not lines:
            batch.update(
                status="failed",
                failed_at=now,
                errors={"object": "list", "data": errors or [{"message": "empty input file"}]},
            )
        else:
            task = asyncio.create_task(self._run_batch(batch, lines))
            self._batch_tasks[batch_id] = task
        return JSONResponse(_public(batch))

    async def _run_batch(self, batch: dict[str, Any], lines: list[tuple[Any, ...]]) -> None:
        """Answer the batch's lines in four steps over `batch_delay` seconds."""
        faults = self.cfg.faults
        out: list[dict[str, Any]] = []
        err: list[dict[str, Any]] = []
        expired = []
        steps = min(4, len(lines))
        counts = batch["request_counts"]
        for step in range(steps):
            await asyncio.sleep(self.cfg.batch_delay / steps)
            for custom_id, body, messages in lines[step::steps]:
                u_fail, u_expire, _, _ = self.batch_dice.roll()
                if u_expire < faults.batch_expire_rate:
                    expired.append(custom_id)
                    continue
                role, body_hash = role_of(messages), _hash(body)
                self.stats.request(role, body_hash)
                request_id = f"req_{body_hash[:16]}"
                if u_fail < faults.batch_fail_rate:
                    self.stats.status(role, body_hash, 500)
                    error = {"message": "injected fault: batch line failed", "type": "server_error"}
                    response = {
                        "status_code": 500,
                        "request_id": request_id,
                        "body": {"error": error},
                    }
                    err.append({"id": f"batch_req_{len(out) + len(err)}", "custom_id": custom_id,
                                "response": response, "error": None})  # fmt: skip
                    counts["failed"] += 1
                    continue
                self.stats.status(role, body_hash, 200)
                completion = self._completion(role, messages, body, body_hash)
                response = {"status_code": 200, "request_id": request_id, "body": completion}
                out.append({"id": f"batch_req_{len(out) + len(err)}", "custom_id": custom_id,
                            "response": response, "error": None})  # fmt: skip
                counts["completed"] += 1
        for custom_id in expired:
            error = {
                "code": "batch_expired",
                "message": "This request could not be executed before the completion window "
                "expired.",
            }
            err.append({"id": f"batch_req_{len(out) + len(err)}", "custom_id": custom_id,
                        "response": None, "error": error})  # fmt: skip
            counts["failed"] += 1
        self._close_batch(batch, out, err, "expired" if expired else "completed")

    def _close_batch(
        self,
        batch: dict[str, Any],
        out: list[dict[str, Any]],
        err: list[dict[str, Any]],
        status: str,
    ) -> None:
        now = int(time.time())
        for rows, field_name in ((out, "output_file_id"), (err, "error_file_id")):
            if rows:
                content = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
                file_id = f"file-{len(self.files) + 1:06d}{batch['id'][-12:]}"
                self.files[file_id] = {
                    "id": file_id, "object": "file", "bytes": len(content), "created_at": now,
                    "filename": f"{batch['id']}_{field_name[:-8]}.jsonl",
                    "purpose": "batch_output", "status": "processed", "content": content,
                }  # fmt: skip
                batch[field_name] = file_id
        batch["status"] = status
        batch[f"{status}_at"] = now
        self._batch_tasks.pop(batch["id"], None)

    async def list_batches(self, request: Request) -> JSONResponse:
        limit = int(request.query_params.get("limit", 20))
        after = request.query_params.get("after")
        ordered = sorted(self.batches.values(), key=lambda b: b["id"], reverse=True)
        if after:
            ordered = [b for b in ordered if b["id"] < after]
        page = [_public(b) for b in ordered[:limit]]
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(ordered) > limit,
            }
        )

    async def get_batch(self, request: Request) -> JSONResponse:
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _error(404, "No such batch", "invalid_request_error")
        return JSONResponse(_public(batch))

    async def cancel_batch(self, request: Request) -> JSONResponse:
        """Stop the batch where it is: lines answered so far stay in its output."""
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _error(404, "No such batch", "invalid_request_error")
        task = self._batch_tasks.pop(batch["id"], None)
        if task is None:  # finished already
            return JSONResponse(_public(batch))
        task.cancel()
        batch["cancelling_at"] = int(time.time())
        batch["status"] = "cancelling"
        answer = _public(batch)
        self.stats.batch_cancelled(batch["_role"])
        self._close_batch(batch, [], [], "cancelled")
        return JSONResponse(answer)

    def _rejection(self, request: Request, body: dict[str, Any]) -> JSONResponse | None:
        """OpenAI's 401 for a wrong key and 404 for an unknown model, when switched on."""
        if self.api_key is not None:
            sent = request.headers.get("authorization", "")
            if sent != f"Bearer {self.api_key}":
                return _error(
                    401,
                    "Incorrect API key provided. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    code="invalid_api_key",
                )
        model = body.get("model")
        if self.strict_models and model not in MODELS:
            return _error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                code="model_not_found",
            )
        return None

    @staticmethod
    def _validate(body: Any) -> tuple[str | None, list[dict[str, str]]]:
        if not isinstance(body, dict):
            return "request body must be a JSON object", []
        if body.get("stream"):
            return "stream=true is not supported by the offline world", []
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return "'messages' must be a non-empty list", []
        messages = []
        for i, m in enumerate(msgs):
            content = _content_text(m.get("content")) if isinstance(m, dict) else None
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or content is None:
                return f"messages[{i}] must be an object with a 'role' and a text 'content'", []
            messages.append({"role": m["role"], "content": content})
        n = body.get("n") or 1
        if not isinstance(n, int) or not 1 <= n <= 16:
            return "'n' must be an integer in 1..16", []
        mt = body.get("max_completion_tokens") or body.get("max_tokens")
        if mt is not None and (not isinstance(mt, int) or mt < 1):
            return "'max_tokens' must be a positive integer", []
        return None, messages

    def _answer(
        self,
        role: str,
        messages: list[dict[str, str]],
        body: dict[str, Any],
        rng: random.Random,
        *,
        garbled: bool,
    ) -> str:
        if role == "teacher":
            return roles.teacher_answer(messages)
        if role == "generator":
            return roles.generator_answer(messages, rng)
        json_mode = roles.wants_json(messages, body.get("response_format"))
        if garbled and not roles.is_reask(messages):  # a re-ask is answered properly
            return roles.GARBLED_JSON if json_mode else roles.GARBLED_TEXT
        return roles.referee_answer(
            messages,
            rng,
            judge_noise=self.cfg.judge_noise,
            positional_bias=self.cfg.positional_bias,
            json_mode=json_mode,
        )


# ---- running it ----------------------------------------------------------------------------


def serve(cfg: OfflineWorldConfig, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the offline world until interrupted (`lion serve-offline`). Port 0 = a free port;
    the first line printed is the base URL."""
    world = OfflineWorld(cfg)
    sock = bind(host, port)
    port = sock.getsockname()[1]
    print(f"offline world listening on {url_of(host, port)}/v1", flush=True)
    print(
        f"  seed={cfg.seed} latency={cfg.latency}s judge_noise={cfg.judge_noise} "
        f"positional_bias={cfg.positional_bias}; stats at {url_of(host, port)}/stats",
        file=sys.stderr,
        flush=True,
    )
    uvicorn_server(world.app, host, port).run(sockets=[sock])


class OfflineServer:
    """The offline world in a background thread of this process, for runs and tests.

    >>> with OfflineServer(cfg) as server:
    ...     client = LLMClient(endpoint, role="teacher", cache=None, base_url=server.base_url)
    """

    def __init__(
        self,
        cfg: OfflineWorldConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **world_options: Any,
    ) -> None:
        self.world = OfflineWorld(cfg, **world_options)  # api_key=, strict_models=
        self.host, self.port = host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The server's root URL (stats live here)."""
        return url_of(self.host, self.port)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, `http://127.0.0.1:<port>/v1`."""
        return f"{self.url}/v1"

    def start(self, timeout: float = 15.0) -> OfflineServer:
        if self._thread is not None:
            return self
        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = uvicorn_server(self.world.app, self.host, self.port)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="lion-offline", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the offline world did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._server = self._thread = None

    def stats(self) -> dict[str, dict[str, Any]]:
        return self.world.stats.snapshot()

    def reset_stats(self) -> None:
        self.world.stats.reset()

    def __enter__(self) -> OfflineServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
