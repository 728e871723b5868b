"""`LLMClient`: a list of chat requests through any OpenAI-compatible endpoint, never paying twice.

- Every request has a key, sha256 of (model, messages, sampling parameters). Requests already in
  the run's response cache are not sent; requests with the same key in one call are sent once.
- Requests go out through the official `openai.AsyncOpenAI` client (its own retries off), at
  most `endpoint.concurrency` in flight over one pooled HTTP connection set.
- Transient failures (429 honouring Retry-After, 5xx, 408/409, timeouts, connection errors) are
  retried with exponential backoff and jitter; others (400, 401, 404, ...) fail at once. A
  request that still fails is a `ChatResult` with status "failed" and its error.
- Answers are flushed to the cache every `endpoint.batch_size` completions, so a killed process
  loses at most the requests not yet flushed; a re-run sends only what is missing.
- If the endpoint cannot be reached at all, the cache is flushed and `EndpointUnreachableError`
  is raised.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import openai
from openai.types.chat import ChatCompletion
from tqdm.auto import tqdm

from lion_core.config import EndpointConfig
from lion_core.errors import (
    EndpointUnreachableError,
    LLMError,
    MissingAPIKeyError,
    RequestsFailedError,
)
from lion_core.llm.cache import ResponseCache
from lion_core.llm.types import ChatRequest, ChatResult, request_key, sampling_params

log = logging.getLogger("lion_core.llm")
# The HTTP libraries log one INFO line per request; our progress line replaces them. Only
# loggers nobody configured are quietened.
for _name in ("httpx", "httpx2"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

NO_KEY = "no-key-needed"  # keyless local servers (vLLM, the offline world) ignore it
LOG_INTERVAL = 10.0  # seconds between progress log lines
_TRANSIENT_STATUS = {408, 409, 429}
_MAX_FAILURE_WARNINGS = 5


@dataclass
class Usage:
    """What a client did, summed over its calls (one client per role)."""

    requests: int = 0  # distinct requests sent (retries not counted)
    cache_hits: int = 0  # requests answered from the run's cache
    deduplicated: int = 0  # repeats of a key within one call, answered by its first request
    failures: int = 0  # requests that failed after their retries
    retries: int = 0  # extra HTTP attempts
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class LLMClient:
    """One role's endpoint: `run(requests)` returns one `ChatResult` per request, in order."""

    def __init__(
        self,
        endpoint: EndpointConfig,
        *,
        role: str,
        cache: ResponseCache | None,
        base_url: str | None = None,
        api_key: str | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.role = role
        self.cache = cache
        self.base_url = base_url or endpoint.base_url
        if not self.base_url.startswith(("http://", "https://")):
            raise LLMError(
                f"{role}: base_url {self.base_url!r} is not an http(s) URL (an 'offline' endpoint "
                "needs the running offline server's URL passed as base_url)"
            )
        self._api_key = api_key or _key_from_env(endpoint, role, self.base_url)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.usage = Usage()
        self._usage_lock = threading.Lock()
        # Every key asked through this client -> its latest failed result, or None if answered.
        self._outcomes: dict[str, ChatResult | None] = {}

    def __repr__(self) -> str:  # never shows the key
        return f"LLMClient(role={self.role!r}, base_url={self.base_url!r}, model={self.model!r})"

    @property
    def model(self) -> str:
        return self.endpoint.model

    # ---- keys and bodies ----------------------------------------------------------------

    def params(self, request: ChatRequest) -> dict[str, Any]:
        e = self.endpoint
        return sampling_params(
            temperature=e.temperature,
            top_p=e.top_p,
            max_tokens=e.max_tokens,
            sample=request.sample,
            response_format=request.response_format,
        )

    def key(self, request: ChatRequest) -> str:
        """The request's cache key: sha256 of (model, messages, sampling parameters)."""
        return request_key(**self._payload(request))

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        e = self.endpoint
        body: dict[str, Any] = {
            "model": e.model,
            "messages": request.message_dicts(),
            "temperature": e.temperature,
            "top_p": e.top_p,
            "max_tokens": e.max_tokens,
        }
        if request.sample:
            body["seed"] = request.sample  # distinct samples of one prompt are distinct bodies
        if request.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif request.response_format:
            raise ValueError(f"unsupported response_format {request.response_format!r}")
        return body

    def _payload(self, request: ChatRequest) -> dict[str, Any]:
        """What the cache stores as the request (the key's preimage)."""
        return {
            "model": self.model,
            "messages": request.message_dicts(),
            "params": self.params(request),
        }

    # ---- running ------------------------------------------------------------------------

    def run(self, requests: Sequence[ChatRequest], *, desc: str = "") -> list[ChatResult]:
        """Answer `requests` (blocking; callable from any thread, with or without a loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(requests, desc=desc))
        # This thread already runs an event loop: run ours in a worker thread.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lion-llm") as pool:
            return pool.submit(asyncio.run, self.arun(requests, desc=desc)).result()

    async def arun(self, requests: Sequence[ChatRequest], *, desc: str = "") -> list[ChatResult]:
        """Answer `requests`: one result per request, in order."""
        requests = list(requests)
        results: list[ChatResult | None] = [None] * len(requests)
        if self.cache is not None:
            await asyncio.to_thread(self.cache.refresh)
        groups: dict[str, list[int]] = {}  # key -> indexes of the requests it answers
        hits = dups = 0
        for i, request in enumerate(requests):
            key = self.key(request)
            if key in groups:
                groups[key].append(i)
                dups += 1
                continue
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[i] = replace(hit, tag=request.tag)
                self._outcome(key, hit)
                hits += 1
            else:
                groups[key] = [i]
        self._count(cache_hits=hits, deduplicated=dups)
        if groups:
            batch = _Batch(self, requests, results, groups, desc)
            await batch.run()
        missing = [requests[i].tag for i, r in enumerate(results) if r is None]
        if missing:  # cannot happen: every request is answered, cached or failed
            raise LLMError(f"{self.role}: no result for request(s) {missing[:5]}")
        return results  # type: ignore[return-value]

    # ---- one request --------------------------------------------------------------------

    async def _send(
        self, client: openai.AsyncOpenAI, key: str, request: ChatRequest, state: _Batch
    ) -> ChatResult:
        body = self._body(request)
        retries = self.endpoint.retries
        error, no_answer = "", False
        for attempt in range(retries + 1):
            if attempt:
                self._count(retries=1)
            delay: float | None = None
            try:
                # `post` is the SDK's own request path without `create`'s per-call parameter
                # transform, which costs ~1 ms of CPU per request and does nothing for a plain
                # JSON body like ours; errors, timeouts and response parsing are the same.
                response = await client.post("/chat/completions", body=body, cast_to=ChatCompletion)
            except openai.APIStatusError as exc:
                state.responded = True
                no_answer = False
                error = f"HTTP {exc.status_code}: {_error_message(exc)}"
                if exc.status_code == 429:
                    delay = _retry_after(exc.response.headers)
                elif exc.status_code < 500 and exc.status_code not in _TRANSIENT_STATUS:
                    return self._failed(key, request, error, attempt + 1)
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                no_answer = True
                error = _no_answer(exc, self.endpoint.timeout)
            except openai.OpenAIError as exc:  # e.g. an unparsable response: not transient
                state.responded = True
                return self._failed(key, request, f"{type(exc).__name__}: {exc}", attempt + 1)
            else:
                state.responded = True
                return self._ok(key, request, response, attempt + 1)
            if attempt < retries:
                if delay is None:
                    delay = min(self.backoff_max, self.backoff_base * 2**attempt)
                    delay *= random.uniform(0.5, 1.0)
                else:
                    delay += random.uniform(0, 0.1 * delay)
                await asyncio.sleep(delay)
        return self._failed(
            key,
            request,
            f"{error} (gave up after {retries + 1} attempts)",
            retries + 1,
            no_answer=no_answer,
        )

    def _ok(self, key: str, request: ChatRequest, response: Any, attempts: int) -> ChatResult:
        choice = response.choices[0] if response.choices else None
        text = choice.message.content if choice is not None else None
        finish = choice.finish_reason if choice is not None else None
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        self._count(prompt_tokens=prompt_tokens or 0, completion_tokens=completion_tokens or 0)
        if not text or not text.strip():
            return self._failed(key, request, f"empty answer (finish_reason={finish})", attempts)
        return ChatResult(
            key=key,
            tag=request.tag,
            status="ok",
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_tokens or 0,
            completion_tokens=completion_tokens or 0,
            extra={"attempts": attempts},
        )

    def _failed(
        self,
        key: str,
        request: ChatRequest,
        error: str,
        attempts: int,
        *,
        no_answer: bool = False,
    ) -> ChatResult:
        extra: dict[str, Any] = {"attempts": attempts}
        if no_answer:  # the endpoint never answered (connection error or timeout)
            extra["no_answer"] = True
        return ChatResult(key=key, tag=request.tag, status="failed", error=error, extra=extra)

    def raise_for_failures(self) -> int:
        """Check the distinct requests asked through this client so far (a request that
        failed and was answered by a later call counts as answered): raise
        `RequestsFailedError`, naming the role, how many failed of how many and the first
        error, when the failed share exceeds `endpoint.max_failed_share`; else return how many
        failed (tolerated).

        A task calls it before committing its snapshot, so a snapshot never holds failures
        the run did not agree to keep: its successes are in the response cache and the next
        call asks only the failed requests again.
        """
        with self._usage_lock:
            failures = [r for r in self._outcomes.values() if r is not None]
            asked = len(self._outcomes)
        failed, allowed = len(failures), self.endpoint.max_failed_share
        if not failed or failed / asked <= allowed:
            return failed
        first = failures[0]
        where = f"request {first.tag!r}: {first.error}"
        raise RequestsFailedError(
            f"{self.role}: {failed} of {asked} requests failed at {self.base_url} after their "
            f"retries ({self.role}.max_failed_share allows {allowed:g}); first error: {where}. "
            "Nothing was committed; the answers received are in the response cache, so the "
            "next run asks only the failed requests again.",
            role=self.role,
            failed=failed,
            asked=asked,
            first=where,
        )

    def _outcome(self, key: str, result: ChatResult) -> None:
        with self._usage_lock:
            self._outcomes[key] = None if result.ok else result

    def _count(self, **counts: int) -> None:
        with self._usage_lock:
            for name, n in counts.items():
                setattr(self.usage, name, getattr(self.usage, name) + n)


class _Batch:
    """One `arun` call's sending: workers, the flush buffer, progress, the unreachable check."""

    def __init__(
        self,
        client: LLMClient,
        requests: list[ChatRequest],
        results: list[ChatResult | None],
        groups: dict[str, list[int]],
        desc: str,
    ) -> None:
        self.client = client
        self.requests = requests
        self.results = results
        self.groups = groups
        self.todo = [(key, requests[idx[0]]) for key, idx in groups.items()]
        self.buffer: list[ChatResult] = []
        self.flushes: list[asyncio.Future[Any]] = []
        self.flush_error: BaseException | None = None
        self.responded = False  # any HTTP response at all in this call
        self.consecutive_unreachable = 0
        self.failure_warnings = 0
        waiting = sum(len(idx) for idx in groups.values())
        self.progress = _Progress(
            client.role, desc, total=len(requests), initial=len(requests) - waiting
        )

    async def run(self) -> None:
        c = self.client
        e = c.endpoint
        concurrency = min(e.concurrency, len(self.todo))
        http = _http_client(concurrency, e.timeout)
        jobs = iter(self.todo)
        error: BaseException | None = None
        async with openai.AsyncOpenAI(
            api_key=c._api_key,
            base_url=c.base_url,
            max_retries=0,
            timeout=e.timeout,
            http_client=http,
        ) as api:

            async def worker() -> None:
                for key, request in jobs:  # a shared iterator: each job is taken once
                    if self.flush_error is not None:
                        raise self.flush_error
                    result = await c._send(api, key, request, self)
                    self.collect(key, result)

            workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
            try:
                done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
                error = next((t.exception() for t in done if t.exception() is not None), None)
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                self.flush_now()  # whatever completed is kept, even on cancellation
                flushed = await asyncio.gather(*self.flushes, return_exceptions=True)
                self.progress.close()
        flush_errors = [f for f in flushed if isinstance(f, BaseException)]
        if error is None and flush_errors:
            error = flush_errors[0]
        if error is not None:
            raise error
        self.progress.log_final()

    def collect(self, key: str, result: ChatResult) -> None:
        c = self.client
        indexes = self.groups[key]
        self.results[indexes[0]] = result
        for i in indexes[1:]:
            self.results[i] = replace(result, tag=self.requests[i].tag)
        self.buffer.append(result)
        c._count(requests=1, failures=0 if result.ok else 1)
        c._outcome(key, result)
        self.progress.update(len(indexes), failed=0 if result.ok else len(indexes))
        if not result.ok and self.failure_warnings < _MAX_FAILURE_WARNINGS:
            self.failure_warnings += 1
            log.warning("%s: request %r failed: %s", c.role, result.tag, result.error)

        if result.extra.get("no_answer"):
            self.consecutive_unreachable += 1
        else:
            self.consecutive_unreachable = 0
        window = min(c.endpoint.batch_size, len(self.todo))
        if self.consecutive_unreachable and (
            not self.responded or self.consecutive_unreachable >= window
        ):
            first_tag = self.todo[0][1].tag
            kept = (
                "Answers received so far are saved in the response cache; a re-run sends only "
                "the missing ones."
                if c.cache is not None
                else "No response cache was given: answers received so far are not kept."
            )
            raise EndpointUnreachableError(
                f"{c.role}: endpoint {c.base_url} is unreachable ({result.error}); first "
                f"request of the batch: tag {first_tag!r}. {kept}"
            )
        if len(self.buffer) >= c.endpoint.batch_size:
            self.flush_soon()

    def flush_soon(self) -> None:
        """Write the buffer as a shard in a worker thread; sending goes on meanwhile."""
        chunk, self.buffer = self.buffer, []
        if self.client.cache is None or not chunk:
            return
        task = asyncio.ensure_future(asyncio.to_thread(self._write, chunk))

        def done(t: asyncio.Future[Any]) -> None:
            if not t.cancelled() and t.exception() is not None and self.flush_error is None:
                self.flush_error = t.exception()

        task.add_done_callback(done)
        self.flushes.append(task)

    def flush_now(self) -> None:
        chunk, self.buffer = self.buffer, []
        if self.client.cache is not None and chunk:
            self._write(chunk)

    def _write(self, chunk: list[ChatResult]) -> None:
        payloads: Mapping[str, Any] = {
            r.key: self.client._payload(self.requests[self.groups[r.key][0]]) for r in chunk
        }
        assert self.client.cache is not None
        self.client.cache.put_many(chunk, payloads)


class _Progress:
    """A tqdm bar on stderr (hidden off a TTY) and a log line at most every LOG_INTERVAL s."""

    def __init__(self, role: str, desc: str, *, total: int, initial: int) -> None:
        self.label = f"{role}: {desc}" if desc else role
        self.total = total
        self.done = self.cached = initial
        self.failed = 0
        self.sent = 0
        self.start = self.last_log = time.monotonic()
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=self.label,
            unit="req",
            file=sys.stderr,
            disable=None,
            dynamic_ncols=True,
        )

    def update(self, n: int, failed: int) -> None:
        self.done += n
        self.failed += failed
        self.sent += 1
        self.bar.update(n)
        now = time.monotonic()
        if now - self.last_log >= LOG_INTERVAL:
            self.last_log = now
            log.info(self.line(now))

    def line(self, now: float) -> str:
        rate = self.sent / max(now - self.start, 1e-9)
        return (
            f"{self.label}: {self.done}/{self.total} done, {self.cached} cached, "
            f"{self.failed} failed, {rate:.1f} req/s"
        )

    def log_final(self) -> None:
        log.info(self.line(time.monotonic()))

    def close(self) -> None:
        self.bar.close()


# ---- helpers -------------------------------------------------------------------------------


def _key_from_env(endpoint: EndpointConfig, role: str, base_url: str) -> str:
    name = endpoint.api_key_env
    if not name:
        return NO_KEY
    value = os.environ.get(name)
    if not value:
        raise MissingAPIKeyError(
            f"{role}: the environment variable {name} (named by {role}.api_key_env) is not set; "
            f"export it with the API key for {base_url}"
        )
    return value


def _http_client(concurrency: int, timeout: float) -> Any:
    """The SDK's aiohttp transport if available (half the CPU per request of httpx's pool at
    64 connections), else its httpx one; one connection per request in flight."""
    limits = type(openai.DEFAULT_CONNECTION_LIMITS)(
        max_connections=concurrency, max_keepalive_connections=concurrency
    )
    aio = getattr(openai, "DefaultAioHttpClient", None)
    if aio is not None:
        try:
            return aio(limits=limits, timeout=timeout)
        except RuntimeError:  # the aiohttp extra is not installed
            pass
    return openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout)


def _no_answer(exc: openai.APIConnectionError, timeout: float) -> str:
    """Describe a request that got no HTTP answer, from the innermost cause."""
    root: BaseException = exc
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(root).strip()
    if isinstance(root, TimeoutError) or not text:
        return f"no answer: timed out after {timeout:g}s ({type(root).__name__})"
    return f"no answer: {type(root).__name__}: {text}"


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(exc.message)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                return None
    return None
