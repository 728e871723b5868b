"""`LLMClient`: a list of chat requests through any OpenAI-compatible endpoint, never paying twice.

- Every request has a key, sha256 of (model, messages, sampling parameters). Requests already in
  the run's response cache are not sent; requests with the same key in one call, or in
  concurrent calls of one process on one cache root and role, are sent once.
- The client renders, de-duplicates, answers from the cache, checks the budget and counts what
  happened; the requests left go to a sender (`sending.Sender`) with a `SendContext`, never the
  client: `online.OnlineSender` (`mode: sync`) or `batch.BatchSender` (`mode: batch`).
- Online, requests go out through the official `openai.AsyncOpenAI` client (its own retries
  off), at most `endpoint.concurrency` in flight over one pooled HTTP connection set.
- Transient failures (429 honouring Retry-After, 5xx, 408/409, timeouts, connection errors) are
  retried with exponential backoff and jitter; others (400, 422, ...) fail at once. A request
  that still fails is a `ChatResult` with status "failed" and its error.
- 401, 403 and 404 (a bad key, a wrong model or URL) stop the batch at once: no new request, no
  retry; the requests in flight finish, everything answered is flushed, and
  `EndpointRejectedError` is raised.
- Every answer is handed to the cache as it arrives (local storage: an fsynced journal line);
  its worker sends its next request meanwhile, and the one after only once the answer is kept.
  The cache is flushed into a Parquet shard every `endpoint.cache_shard_size` answers and at the
  end; a killed process loses only the requests in flight and the answers whose journal line
  was being written, at most 2 × `concurrency` (object stores: plus at most `flush_seconds` of
  answers). A re-run sends only what is missing.
- If the endpoint cannot be reached at all, the cache is flushed and `EndpointUnreachableError`
  is raised.
- Sending is paced below the role's `rpm` / `tpm` and the provider's x-ratelimit-* headers
  (`ratelimit.RateLimiter`, shared per base URL and model in a process).
- `mode: batch` sends the uncached requests through the provider's Batch API instead
  (`batch.BatchSender`); answers land in the same cache, so the modes are interchangeable.
- Every answer carries its cost (config `pricing`); with a `Budget`, a call whose estimate does
  not fit what is left raises `BudgetExceeded` before anything is sent.
- A request with a `prompt` (`ChatRequest.completion`) goes to `/completions` instead: the
  served student answers its training prompt as token ids. `extra_body` adds fields to every
  body (and key), `key_scope` adds fields to every key only (e.g. the checkpoint's digest).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import openai

from lion_core.config import EndpointConfig, ModelPrice, default_prices
from lion_core.errors import LLMError, RequestsFailedError
from lion_core.llm.batch import BatchSender
from lion_core.llm.cache import ResponseCache
from lion_core.llm.costs import Budget, Estimate, estimate, price_of
from lion_core.llm.keys import resolve_api_key
from lion_core.llm.online import OnlineSender
from lion_core.llm.ratelimit import InFlightLimit, RateLimiter
from lion_core.llm.sending import (
    CACHED,
    JOINED,
    BatchProgressCallback,
    ProgressCallback,
    SendContext,
    Sender,
    UsageCounter,
)
from lion_core.llm.types import ChatRequest, ChatResult, RenderedRequest, render_request

log = logging.getLogger("lion_core.llm")
# The HTTP libraries log one INFO line per request; our progress line replaces them. Only
# loggers nobody configured are quietened.
for _name in ("httpx", "httpx2"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

NO_KEY = "no-key-needed"  # keyless local servers (vLLM, the offline world) ignore it
_MAX_FAILURE_WARNINGS = 5  # failed requests of one call logged as warnings
SENDERS: dict[str, Callable[[], Sender]] = {"sync": OnlineSender, "batch": BatchSender}


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
        pricing: Mapping[str, ModelPrice] | None = None,
        budget: Budget | None = None,
        on_batch_progress: BatchProgressCallback | None = None,
        extra_body: Mapping[str, Any] | None = None,
        key_scope: Mapping[str, Any] | None = None,
        allow_empty: bool = False,
        on_progress: ProgressCallback | None = None,
        gone: Callable[[], str | None] | None = None,
    ) -> None:
        """`extra_body`: fields added to every request body and key (engine extensions such
        as vLLM's `stop_token_ids`). `key_scope`: fields added to every key but never sent
        (what the answers depend on that the body does not say, e.g. the served checkpoint's
        digest). `allow_empty`: an empty answer is an answer, not a failure. `gone`: why the
        endpoint's server has exited, or None (a served student's process group): once it
        says so, the call stops with EndpointGoneError instead of retrying a dead port."""
        self.endpoint = endpoint
        self.extra_body = dict(extra_body or {})
        self.key_scope = dict(key_scope or {})
        self.allow_empty = allow_empty
        self.role = role
        self.cache = cache
        self.base_url = base_url or endpoint.base_url
        if not self.base_url.startswith(("http://", "https://")):
            raise LLMError(
                f"{role}: base_url {self.base_url!r} is not an http(s) URL (an 'offline' endpoint "
                "needs the running offline server's URL passed as base_url)"
            )
        self._api_key = api_key or resolve_api_key(endpoint, role) or NO_KEY
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.pricing = pricing if pricing is not None else default_prices()
        self.price = price_of(self.pricing, endpoint.model)
        self.budget = budget
        self.on_batch_progress = on_batch_progress
        # (label 'role: desc', done, total) as requests are answered, and once at the end
        self.on_progress = on_progress
        self.gone = gone
        self.limiter = RateLimiter.shared(
            (self.base_url, endpoint.model), endpoint.rpm, endpoint.tpm
        )
        self.inflight = InFlightLimit.shared(
            (role, self.base_url, endpoint.model), endpoint.concurrency
        )
        self.usage = UsageCounter()
        # Every key asked through this client -> its latest failed result, or None if answered.
        self._outcomes: dict[str, ChatResult | None] = {}
        self._outcomes_lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"LLMClient(role={self.role!r}, base_url={self.base_url!r}, model={self.model!r})"

    @property
    def model(self) -> str:
        return self.endpoint.model

    def render(self, request: ChatRequest) -> RenderedRequest:
        """The request's HTTP body, cache payload and key on this endpoint."""
        return render_request(
            self.endpoint, request, extra_body=self.extra_body, key_scope=self.key_scope
        )

    def key(self, request: ChatRequest) -> str:
        """The request's cache key: sha256 of (model, messages, sampling parameters[, prompt]
        [, key scope])."""
        return self.render(request).key

    def open_api(self, concurrency: int) -> openai.AsyncOpenAI:
        """An SDK client for this endpoint with `concurrency` pooled connections and the SDK's
        own retries off (the senders retry)."""
        e = self.endpoint
        return openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            max_retries=0,
            timeout=e.timeout,
            http_client=_http_client(concurrency, e.timeout),
        )

    def record_outcome(self, key: str, result: ChatResult) -> None:
        """Note how the request with `key` ended (what `raise_for_failures` checks)."""
        with self._outcomes_lock:
            self._outcomes[key] = None if result.ok else result

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
        with self._outcomes_lock:
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

    def send_context(self, **call: Any) -> SendContext:
        """What a sender may use of this endpoint (never the client itself); `call`: the
        call's fields (desc, total, answered, deliver)."""
        return SendContext(
            role=self.role,
            endpoint=self.endpoint,
            base_url=self.base_url,
            open_api=self.open_api,
            cache=self.cache,
            limiter=self.limiter,
            inflight=self.inflight,
            usage=self.usage,
            price=self.price,
            allow_empty=self.allow_empty,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            on_progress=self.on_progress,
            on_batch_progress=self.on_batch_progress,
            gone=self.gone,
            **call,
        )

    def sender(self) -> Sender:
        """How uncached requests go out: `endpoint.mode` sync (online) or batch."""
        return SENDERS[self.endpoint.mode]()

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
        """Answer `requests`: one result per request, in order. Rendered and de-duplicated
        here, answered from the cache where it can, the rest handed to the sender."""
        requests = list(requests)
        results: list[ChatResult | None] = [None] * len(requests)
        if self.cache is not None:
            await asyncio.to_thread(self.cache.refresh)
        groups: dict[str, list[int]] = {}  # key -> indexes of the requests it answers
        jobs: dict[str, RenderedRequest] = {}  # key -> the request to send
        hits = dups = 0
        for i, request in enumerate(requests):
            rendered = self.render(request)
            key = rendered.key
            if key in groups:
                groups[key].append(i)
                dups += 1
                continue
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[i] = replace(hit, tag=request.tag)
                self.record_outcome(key, hit)
                hits += 1
            else:
                groups[key] = [i]
                jobs[key] = rendered
        self.usage.add(cache_hits=hits, deduplicated=dups)
        if groups:
            warned = 0

            def deliver(key: str, result: ChatResult, how: str) -> int:
                """File `result` for every request with `key` and count it; returns how many
                requests it answers."""
                nonlocal warned
                indexes = groups[key]
                for i in indexes:
                    results[i] = replace(result, tag=requests[i].tag)
                self.record_outcome(key, result)
                if how == CACHED:
                    self.usage.add(cache_hits=1)
                elif how == JOINED:
                    self.usage.add(deduplicated=1)
                else:
                    self.usage.add(requests=1, failures=0 if result.ok else 1)
                    if not result.ok and warned < _MAX_FAILURE_WARNINGS:
                        warned += 1
                        log.warning(
                            "%s: request %r failed: %s", self.role, result.tag, result.error
                        )
                return len(indexes)

            waiting = sum(len(indexes) for indexes in groups.values())
            ctx = self.send_context(
                desc=desc,
                total=len(requests),
                answered=len(requests) - waiting,
                deliver=deliver,
            )
            sender = self.sender()
            with self._reserved(jobs, sender.mode, desc):
                await sender.send(jobs, ctx)
        missing = [requests[i].tag for i, r in enumerate(results) if r is None]
        if missing:  # cannot happen: every request is answered, cached or failed
            raise LLMError(f"{self.role}: no result for request(s) {missing[:5]}")
        return results  # type: ignore[return-value]

    def estimate(self, jobs: Mapping[str, RenderedRequest]) -> Estimate:
        """What sending `jobs` is expected to cost (lion_core.llm.costs.Estimate)."""
        bodies = [j.body for j in jobs.values()]
        return estimate(
            self.endpoint,
            self.pricing,
            (b["messages"] for b in bodies if "messages" in b),
            prompts=(b["prompt"] for b in bodies if "prompt" in b),
        )

    @contextlib.contextmanager
    def _reserved(
        self, jobs: Mapping[str, RenderedRequest], mode: str, desc: str
    ) -> Iterator[None]:
        """Check the call against the budget before anything is sent (BudgetExceeded)."""
        if self.budget is None:
            yield
            return
        needed = self.estimate(jobs).cost(mode)
        stage = f"{self.role}: {desc}" if desc else self.role
        with self.budget.reserve(f"{stage} ({len(jobs)} request(s))", needed):
            yield


# ---- helpers -------------------------------------------------------------------------------


def _http_client(concurrency: int, timeout: float) -> Any:
    """The SDK's aiohttp transport if available (half the CPU per request of httpx's pool at
    64 connections), else its httpx one; one connection per request in flight."""
    limits = type(openai.DEFAULT_CONNECTION_LIMITS)(
        max_connections=concurrency, max_keepalive_connections=concurrency
    )
    aio = getattr(openai, "DefaultAioHttpClient", None)
    if aio is not None:
        tls = _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        try:
            return aio(limits=limits, timeout=timeout, verify=tls)
        except RuntimeError:  # the aiohttp extra is not installed
            pass
    # httpx's own pool sets ALPN on the context for each connection: it keeps its own context.
    return openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout)


@functools.cache
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """The TLS context the SDK's HTTP client would build, built once per process (and per
    SSL_CERT_FILE / SSL_CERT_DIR, which it reads): loading the CA store costs ~50 ms of CPU,
    and every call opens a client. Shared by the aiohttp transport's connections, which only
    read it."""
    try:
        import httpx2 as http  # the SDK's HTTP library from openai 3
    except ImportError:
        import httpx as http
    return http.create_ssl_context()
