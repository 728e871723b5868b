"""`LLMClient`: a list of chat requests through any OpenAI-compatible endpoint, never paying twice.

- Every request has a key, sha256 of (model, messages, sampling parameters). Requests already in
  the run's response cache are not sent; requests with the same key in one call, or in
  concurrent calls of one process on one cache root and role, are sent once.
- Requests go out through the official `openai.AsyncOpenAI` client (its own retries off), at
  most `endpoint.concurrency` in flight over one pooled HTTP connection set.
- Transient failures (429 honouring Retry-After, 5xx, 408/409, timeouts, connection errors) are
  retried with exponential backoff and jitter; others (400, 422, ...) fail at once. A request
  that still fails is a `ChatResult` with status "failed" and its error.
- 401, 403 and 404 (a bad key, a wrong model or URL) stop the batch at once: no new request, no
  retry; the requests in flight finish, everything answered is flushed, and
  `EndpointRejectedError` is raised.
- Every answer is recorded in the cache as it arrives, before its worker takes the next request
  (local storage: an fsynced journal line), and the cache is flushed into a Parquet shard every
  `endpoint.cache_shard_size` answers and at the end; a killed process loses only the requests in
  flight (object stores: plus at most `flush_seconds` of answers). A re-run sends only what is
  missing.
- If the endpoint cannot be reached at all, the cache is flushed and `EndpointUnreachableError`
  is raised.
- Sending is paced below the role's `rpm` / `tpm` and the provider's x-ratelimit-* headers
  (`ratelimit.RateLimiter`, shared per base URL and model in a process).
- `mode: batch` sends the uncached requests through the provider's Batch API instead
  (`batch.BatchRun`); answers land in the same cache, so the modes are interchangeable.
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
import email.utils
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

import openai
from openai._constants import RAW_RESPONSE_HEADER
from openai.types import Completion
from openai.types.chat import ChatCompletion
from tqdm.auto import tqdm

from lion_core.config import EndpointConfig, ModelPrice, default_prices
from lion_core.errors import (
    EndpointRejectedError,
    EndpointUnreachableError,
    LLMError,
    RequestsFailedError,
)
from lion_core.llm.cache import ResponseCache, SendAbandoned
from lion_core.llm.costs import Budget, cost_usd, estimate, price_of
from lion_core.llm.keys import resolve_api_key
from lion_core.llm.ratelimit import RateLimiter, limiter_tokens
from lion_core.llm.types import ChatRequest, ChatResult, RenderedRequest, render_request

log = logging.getLogger("lion_core.llm")
# The HTTP libraries log one INFO line per request; our progress line replaces them. Only
# loggers nobody configured are quietened.
for _name in ("httpx", "httpx2"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

NO_KEY = "no-key-needed"  # keyless local servers (vLLM, the offline world) ignore it
LOG_INTERVAL = 10.0  # seconds between progress log lines
_TRANSIENT_STATUS = {408, 409, 429}
# Statuses that refuse the role's requests as such, not one request: they stop the batch.
_REJECTED = {
    401: "check the API key ({role}.api_key_env or {role}.api_key_secret)",
    403: "the API key has no access to this model or endpoint",
    404: "check {role}.model and {role}.base_url",
}
_MAX_FAILURE_WARNINGS = 5
_BODY_PREVIEW = 200  # characters of an unexpected body quoted in an error
_T = TypeVar("_T")
_SENT, _CACHED, _JOINED = "sent", "cached", "joined"  # how a batch's request was answered
_RAW = {"headers": {RAW_RESPONSE_HEADER: "true"}}  # the SDK hands back headers with the body


@dataclass
class Usage:
    """What a client did, summed over its calls (one client per role). Thread-safe `add`."""

    requests: int = 0  # distinct requests sent (retries not counted)
    cache_hits: int = 0  # requests answered from the run's cache
    deduplicated: int = 0  # repeats within a call, or keys another client here was sending
    failures: int = 0  # requests that failed after their retries
    retries: int = 0  # extra HTTP attempts
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # what the answers received cost (config `pricing`)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


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
        on_batch_progress: Callable[[str, str, int, int, int], None] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        key_scope: Mapping[str, Any] | None = None,
        allow_empty: bool = False,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        """`extra_body`: fields added to every request body and key (engine extensions such
        as vLLM's `stop_token_ids`). `key_scope`: fields added to every key but never sent
        (what the answers depend on that the body does not say, e.g. the served checkpoint's
        digest). `allow_empty`: an empty answer is an answer, not a failure."""
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
        self.limiter = RateLimiter.shared(
            (self.base_url, endpoint.model), endpoint.rpm, endpoint.tpm
        )
        self.usage = Usage()
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
        own retries off (`_Batch` retries)."""
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
            with self._reserved(jobs, desc):
                if self.endpoint.mode == "batch":
                    await self._run_batch(requests, results, groups, jobs, desc)
                else:
                    await _Batch(self, requests, results, groups, jobs, desc).run()
        missing = [requests[i].tag for i, r in enumerate(results) if r is None]
        if missing:  # cannot happen: every request is answered, cached or failed
            raise LLMError(f"{self.role}: no result for request(s) {missing[:5]}")
        return results  # type: ignore[return-value]

    def estimate(self, jobs: Mapping[str, RenderedRequest]):
        """What sending `jobs` is expected to cost (lion_core.llm.costs.Estimate)."""
        bodies = [j.body for j in jobs.values()]
        return estimate(
            self.endpoint,
            self.pricing,
            (b["messages"] for b in bodies if "messages" in b),
            prompts=(b["prompt"] for b in bodies if "prompt" in b),
        )

    @contextlib.contextmanager
    def _reserved(self, jobs: Mapping[str, RenderedRequest], desc: str):
        """Check the call against the budget before anything is sent (BudgetExceeded)."""
        if self.budget is None:
            yield
            return
        if self.endpoint.mode == "batch" and self.cache is not None:
            from lion_core.llm.batch import Ledger

            # requests in batches submitted before (resumed) are paid for already
            submitted = {k for s in Ledger(self.cache.storage, self.role).open() for k in s.keys}
            jobs = {k: j for k, j in jobs.items() if k not in submitted}
        needed = self.estimate(jobs).cost(self.endpoint.mode)
        stage = f"{self.role}: {desc}" if desc else self.role
        with self.budget.reserve(f"{stage} ({len(jobs)} request(s))", needed):
            yield

    async def _run_batch(
        self,
        requests: list[ChatRequest],
        results: list[ChatResult | None],
        groups: dict[str, list[int]],
        jobs: dict[str, RenderedRequest],
        desc: str,
    ) -> None:
        """Batch mode: claim the keys process-wide, send ours as batches, wait for the ones
        another client of this process is sending."""
        from lion_core.llm.batch import BatchRun

        cache = self.cache
        if cache is None:
            raise LLMError(f"{self.role}: mode 'batch' needs a response cache to keep its batches")
        completion = next((j for j in jobs.values() if j.request.is_completion), None)
        if completion is not None:
            raise LLMError(
                f"{self.role}: mode 'batch' sends chat requests only; request "
                f"{completion.request.tag!r} is a completion (set {self.role}.mode: sync)"
            )
        todo = dict(jobs)
        while todo:
            mine: dict[str, RenderedRequest] = {}
            waits: dict[str, concurrent.futures.Future[ChatResult]] = {}
            for key, job in todo.items():
                claim = cache.claim(key)
                if claim.answer is not None:
                    self._fill(requests, results, groups[key], claim.answer)
                    self.record_outcome(key, claim.answer)
                    self.usage.add(cache_hits=1)
                elif claim.pending is not None:
                    waits[key] = claim.pending
                else:
                    mine[key] = job
            todo = {}
            answers: dict[str, ChatResult] = {}
            try:
                if mine:
                    run = BatchRun(self, mine, cache, desc, self.on_batch_progress)
                    answers = await run.run()
            finally:
                for key in mine:
                    cache.release(key, answers.get(key))
            for key in mine:
                result = answers.get(key)
                if result is None:  # cannot happen: every line is answered or failed
                    result = ChatResult(key=key, tag="", status="failed", error="no batch line")
                self._fill(requests, results, groups[key], result)
                self.record_outcome(key, result)
            for key, pending in waits.items():
                try:
                    result = await _done(pending)
                    self._fill(requests, results, groups[key], result)
                    self.record_outcome(key, result)
                    self.usage.add(deduplicated=1)
                except SendAbandoned:
                    todo[key] = jobs[key]

    @staticmethod
    def _fill(
        requests: list[ChatRequest],
        results: list[ChatResult | None],
        indexes: list[int],
        result: ChatResult,
    ) -> None:
        for i in indexes:
            results[i] = replace(result, tag=requests[i].tag)


class _Batch:
    """One `arun` call's sending: workers and their retries, recording answers in the cache,
    progress, the unreachable check. It fills `results` for every index in `groups`."""

    def __init__(
        self,
        client: LLMClient,
        requests: list[ChatRequest],
        results: list[ChatResult | None],
        groups: dict[str, list[int]],
        jobs: dict[str, RenderedRequest],
        desc: str,
    ) -> None:
        self.client = client
        self.endpoint = client.endpoint
        self.usage = client.usage
        self.requests = requests
        self.results = results
        self.groups = groups
        self.todo = list(jobs.values())
        self.cache = client.cache
        self.unflushed = 0  # answers recorded since the last flush
        self.flushes: list[concurrent.futures.Future[Any]] = []
        self.flush_error: BaseException | None = None
        self.responded = False  # any HTTP response at all in this call
        self.rejected_by: EndpointRejectedError | None = None  # set: the batch is stopping
        self.consecutive_unreachable = 0
        self.failure_warnings = 0
        waiting = sum(len(idx) for idx in groups.values())
        self.progress = _Progress(
            client.role,
            desc,
            total=len(requests),
            initial=len(requests) - waiting,
            report=client.on_progress,
        )

    async def run(self) -> None:
        concurrency = min(self.endpoint.concurrency, len(self.todo))
        jobs = iter(self.todo)
        error: BaseException | None = None
        async with self.client.open_api(concurrency) as api:

            async def worker() -> None:
                for job in jobs:  # a shared iterator: each job is taken once
                    if self.flush_error is not None:
                        raise self.flush_error
                    if self.rejected_by is not None:
                        return
                    try:
                        if self.cache is None:
                            self.collect(job, await self.send(api, job), _SENT)
                        else:
                            await self.through_cache(api, job, self.cache)
                    except EndpointRejectedError as exc:
                        # No new request, no retry; those in flight finish (paid for) and
                        # are kept.
                        self.rejected_by = self.rejected_by or exc
                        return

            workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
            try:
                done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
                error = next((t.exception() for t in done if t.exception() is not None), None)
                error = error or self.rejected_by
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                if self.cache is not None:  # into a shard, even on cancellation
                    self.flushes.append(self.cache.flush())
                    concurrent.futures.wait(self.flushes)
                self.progress.close()
        flush_errors = [f.exception() for f in self.flushes if f.exception() is not None]
        if error is None and flush_errors:
            error = flush_errors[0]
        if error is not None:
            raise error
        self.progress.log_final()

    # ---- one request --------------------------------------------------------------------

    async def through_cache(
        self, api: openai.AsyncOpenAI, job: RenderedRequest, cache: ResponseCache
    ) -> None:
        """Answer `job` once per process: from the cache if answered meanwhile, by waiting for
        another client of this process that is sending the same body, else by sending it and
        recording the answer, which is kept before this worker goes on."""
        while True:
            claim = cache.claim(job.key)
            if claim.answer is not None:
                self.collect(job, claim.answer, _CACHED)
                return
            if claim.pending is None:
                break
            try:
                self.collect(job, await _done(claim.pending), _JOINED)
                return
            except SendAbandoned:  # its sender stopped: claim it again
                continue
        result: ChatResult | None = None
        try:
            result = await self.send(api, job)
            kept = cache.record(result, job.payload)
            self.collect(job, result, _SENT)
            await _done(kept)  # on disk before this worker sends another request
        finally:
            cache.release(job.key, result)

    async def send(self, api: openai.AsyncOpenAI, job: RenderedRequest) -> ChatResult:
        """POST the job's body, retrying transient failures; never raises for an HTTP error."""
        retries = self.endpoint.retries
        error, no_answer = "", False
        tokens = limiter_tokens(job.body)
        for attempt in range(retries + 1):
            if attempt and self.rejected_by is not None:  # the batch is stopping: no retry
                return self.failed(
                    job, f"{error} (not retried: the batch stopped)", attempt, no_answer=no_answer
                )
            if attempt:
                self.usage.add(retries=1)
            delay: float | None = None
            try:
                response = await self.post(api, job, tokens)
            except openai.APIStatusError as exc:
                self.responded = True
                no_answer = False
                error = f"HTTP {exc.status_code}: {_error_message(exc)}"
                if exc.status_code in _REJECTED:
                    raise self.rejected(job, exc.status_code, _error_message(exc)) from None
                if exc.status_code == 429:
                    delay = _retry_after(exc.response.headers)
                elif exc.status_code < 500 and exc.status_code not in _TRANSIENT_STATUS:
                    return self.failed(job, error, attempt + 1)
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                no_answer = True
                error = _no_answer(exc, self.endpoint.timeout)
            except openai.OpenAIError as exc:  # e.g. an unparsable response: not transient
                self.responded = True
                return self.failed(job, f"{type(exc).__name__}: {exc}", attempt + 1)
            except json.JSONDecodeError as exc:  # a 200 saying it is JSON, but it is not
                self.responded = True
                return self.failed(job, _not_a_completion(exc.doc, job.path), attempt + 1)
            else:
                self.responded = True
                if not isinstance(getattr(response, "choices", None), list):
                    # A 200 that is no chat completion (a proxy's page, another API's JSON): the
                    # SDK hands back the text, or a model without choices.
                    return self.failed(job, _not_a_completion(response, job.path), attempt + 1)
                return self.answer(job, response, attempt + 1)
            if attempt < retries:
                if delay is None:
                    delay = min(self.client.backoff_max, self.client.backoff_base * 2**attempt)
                    delay *= random.uniform(0.5, 1.0)
                else:
                    delay += random.uniform(0, 0.1 * delay)
                await asyncio.sleep(delay)
        return self.failed(
            job,
            f"{error} (gave up after {retries + 1} attempts)",
            retries + 1,
            no_answer=no_answer,
        )

    async def post(self, api: openai.AsyncOpenAI, job: RenderedRequest, tokens: int) -> Any:
        """One HTTP attempt, paced by the role's rate limiter, whose buckets its answer's
        x-ratelimit-* headers tighten."""
        limiter = self.client.limiter
        await limiter.acquire(tokens)
        headers = None
        try:
            # `post` is the SDK's own request path without `create`'s per-call parameter
            # transform, which costs ~1 ms of CPU per request and does nothing for a plain JSON
            # body like ours; errors, timeouts and response parsing are the same. The raw
            # response gives the headers too.
            cast = Completion if job.request.is_completion else ChatCompletion
            raw = await api.post(job.path, body=job.body, cast_to=cast, options=_RAW)
            headers = raw.headers
            return raw.parse()
        except openai.APIStatusError as exc:
            headers = exc.response.headers
            raise
        finally:
            limiter.done(tokens, headers)

    def rejected(self, job: RenderedRequest, status: int, message: str) -> EndpointRejectedError:
        """The error that stops the batch: the endpoint refuses this role's requests as such."""
        c = self.client
        hint = _REJECTED[status].format(role=c.role)
        kept = (
            "answers received so far are saved in the response cache"
            if self.cache is not None
            else "no response cache was given: answers received so far are not kept"
        )
        return EndpointRejectedError(
            f"{c.role}: {c.base_url} rejected request {job.request.tag!r} for model "
            f"{c.model!r} with HTTP {status} ({message}); {hint}. No request of the batch can "
            f"succeed, so it stopped; {kept}.",
            role=c.role,
            base_url=c.base_url,
            model=c.model,
            status=status,
        )

    def answer(self, job: RenderedRequest, response: Any, attempts: int) -> ChatResult:
        """The result of a 200: ok with its text, or failed when the text is empty (unless the
        client allows empty answers)."""
        choice = response.choices[0] if response.choices else None
        text = None
        if choice is not None:
            text = choice.text if job.request.is_completion else choice.message.content
        finish = choice.finish_reason if choice is not None else None
        usage = response.usage
        prompt_tokens = (usage.prompt_tokens if usage else 0) or 0
        completion_tokens = (usage.completion_tokens if usage else 0) or 0
        cost = cost_usd(self.client.price, prompt_tokens, completion_tokens, batch=False)
        self.usage.add(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost
        )
        if text is None or (not self.client.allow_empty and not text.strip()):
            failed = self.failed(job, f"empty answer (finish_reason={finish})", attempts)
            return replace(failed, cost_usd=cost)
        return ChatResult(
            key=job.key,
            tag=job.request.tag,
            status="ok",
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            extra={"attempts": attempts},
        )

    def failed(
        self, job: RenderedRequest, error: str, attempts: int, *, no_answer: bool = False
    ) -> ChatResult:
        extra: dict[str, Any] = {"attempts": attempts}
        if no_answer:  # the endpoint never answered (connection error or timeout)
            extra["no_answer"] = True
        return ChatResult(
            key=job.key, tag=job.request.tag, status="failed", error=error, extra=extra
        )

    # ---- results ------------------------------------------------------------------------

    def collect(self, job: RenderedRequest, result: ChatResult, how: str) -> None:
        """File `result` for every request with the job's key. `how`: _SENT by this call,
        _CACHED (answered by another client since the call began), _JOINED (another client of
        this process sent it)."""
        c = self.client
        indexes = self.groups[job.key]
        for i in indexes:
            self.results[i] = replace(result, tag=self.requests[i].tag)
        c.record_outcome(job.key, result)
        self.progress.update(
            len(indexes), failed=0 if result.ok else len(indexes), sent=how == _SENT
        )
        if how == _CACHED:
            self.usage.add(cache_hits=1)
            return
        if how == _JOINED:
            self.usage.add(deduplicated=1)
            return
        self.usage.add(requests=1, failures=0 if result.ok else 1)
        if not result.ok and self.failure_warnings < _MAX_FAILURE_WARNINGS:
            self.failure_warnings += 1
            log.warning("%s: request %r failed: %s", c.role, result.tag, result.error)

        if result.extra.get("no_answer"):
            self.consecutive_unreachable += 1
        else:
            self.consecutive_unreachable = 0
        window = min(self.endpoint.cache_shard_size, len(self.todo))
        if self.consecutive_unreachable and (
            not self.responded or self.consecutive_unreachable >= window
        ):
            first_tag = self.todo[0].request.tag
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
        self.unflushed += 1
        if self.cache is not None and self.unflushed >= self.endpoint.cache_shard_size:
            self.flush_soon()

    def flush_soon(self) -> None:
        """Ask the cache to write a shard of what it recorded; sending goes on meanwhile."""
        assert self.cache is not None
        self.unflushed = 0
        future = self.cache.flush()

        def done(f: concurrent.futures.Future[Any]) -> None:
            if f.exception() is not None and self.flush_error is None:
                self.flush_error = f.exception()

        future.add_done_callback(done)
        self.flushes.append(future)


class _Progress:
    """A tqdm bar on stderr (hidden off a TTY), a log line at most every LOG_INTERVAL s, and
    `report(label, done, total)` at every update and at the end, if given."""

    def __init__(
        self,
        role: str,
        desc: str,
        *,
        total: int,
        initial: int,
        report: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.label = f"{role}: {desc}" if desc else role
        self.report = report
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

    def update(self, n: int, failed: int, sent: bool = True) -> None:
        self.done += n
        self.failed += failed
        self.sent += sent
        self.bar.update(n)
        if self.report is not None:
            self.report(self.label, self.done, self.total)
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
        if self.report is not None:
            self.report(self.label, self.done, self.total)

    def close(self) -> None:
        self.bar.close()


# ---- helpers -------------------------------------------------------------------------------


async def _done(future: concurrent.futures.Future[_T]) -> _T:
    """Wait for a future of another thread. Cancelling the waiter leaves the future alone."""
    if not future.done():
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def wake(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the waiting loop is closed: nobody waits
                loop.call_soon_threadsafe(_set_done, woken)

        future.add_done_callback(wake)
        await woken
    return future.result()


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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


def _not_a_completion(body: object, path: str = "/chat/completions") -> str:
    """The error of a 200 whose body is not a (chat) completion, with the body's first bytes."""
    if isinstance(body, openai.BaseModel):
        body = json.dumps(body.to_dict(mode="json"), ensure_ascii=False)
    text = body if isinstance(body, str) else repr(body)
    more = f"... ({len(text)} characters)" if len(text) > _BODY_PREVIEW else ""
    kind = "completion" if path == "/completions" else "chat completion"
    return f"HTTP 200 but not a {kind}: {text[:_BODY_PREVIEW]!r}{more}"


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
