"""Online sending: a call's uncached requests as one HTTP request each, through the official
`openai.AsyncOpenAI` client (its own retries off), at most `endpoint.concurrency` in flight.

`OnlineSender` is the `Sender` of `mode: sync`. Per request it claims the key process-wide
(joining another client of this process that is sending the same body), POSTs the body paced by
the role's rate limiter, retries transient failures with backoff, hands the answer to the
response cache the moment it arrives, and delivers it; a worker sends its next request while
that answer is written, and the one after only once it is kept. It stops the call
when the endpoint rejects the role (401/403/404: `EndpointRejectedError`) or cannot be reached
(`EndpointUnreachableError`), flushing what was answered; it flushes the cache every
`endpoint.cache_shard_size` answers and at the end, and shows progress (a tqdm bar, log lines, the
context's `on_progress`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import openai
from tqdm.auto import tqdm

from lion_core.errors import EndpointGoneError, EndpointRejectedError, EndpointUnreachableError
from lion_core.llm.cache import ResponseCache, SendAbandoned
from lion_core.llm.poster import Poster
from lion_core.llm.ratelimit import limiter_tokens
from lion_core.llm.sending import CACHED, JOINED, SENT, SendContext, answer_fields, wait_for
from lion_core.llm.types import ChatResult, RenderedRequest

log = logging.getLogger("lion_core.llm")

LOG_INTERVAL = 10.0  # seconds between progress log lines
_TRANSIENT_STATUS = {408, 409, 429}
# Statuses that refuse the role's requests as such, not one request: they stop the batch.
_REJECTED = {
    401: "check the API key ({role}.api_key_env or {role}.api_key_secret)",
    403: "the API key has no access to this model or endpoint",
    404: "check {role}.model and {role}.base_url",
}
_BODY_PREVIEW = 200  # characters of an unexpected body quoted in an error


class OnlineSender:
    """`mode: sync`: every uncached request as its own HTTP request."""

    mode = "sync"

    async def send(self, jobs: Mapping[str, RenderedRequest], ctx: SendContext) -> None:
        await _OnlineCall(jobs, ctx).run()


class _OnlineCall:
    """One call's sending: workers and their retries, recording answers in the cache,
    progress, the unreachable check. Every job's result goes to `ctx.deliver`."""

    def __init__(self, jobs: Mapping[str, RenderedRequest], ctx: SendContext) -> None:
        self.ctx = ctx
        self.endpoint = ctx.endpoint
        self.usage = ctx.usage
        self.todo = list(jobs.values())
        self.cache = ctx.cache
        self.unflushed = 0  # answers recorded since the last flush
        self.flushes: list[concurrent.futures.Future[Any]] = []
        self.flush_error: BaseException | None = None
        self.responded = False  # any HTTP response at all in this call
        self.rejected_by: EndpointRejectedError | None = None  # set: the batch is stopping
        self.consecutive_unreachable = 0
        self.progress = Progress(
            ctx.label, total=ctx.total, initial=ctx.answered, report=ctx.on_progress
        )

    async def run(self) -> None:
        concurrency = min(self.endpoint.concurrency, len(self.todo))
        jobs = iter(self.todo)
        error: BaseException | None = None
        async with self.ctx.open_api(concurrency) as sdk:
            api = Poster(sdk)

            async def worker() -> None:
                # This worker's previous answer, handed to the cache and maybe still being
                # written: the request after next waits for it, the next one does not.
                keeping: concurrent.futures.Future[Any] | None = None
                for job in jobs:  # a shared iterator: each job is taken once
                    if self.flush_error is not None:
                        raise self.flush_error
                    if self.rejected_by is not None:
                        break
                    self.check_gone()
                    try:
                        if self.cache is None:
                            self.collect(job, await self.send(api, job), SENT)
                            continue
                        kept = await self.through_cache(api, job, self.cache)
                    except EndpointRejectedError as exc:
                        # No new request, no retry; those in flight finish (paid for) and
                        # are kept.
                        self.rejected_by = self.rejected_by or exc
                        break
                    if keeping is not None:
                        await wait_for(keeping)
                    keeping = kept
                if keeping is not None:  # a failed write surfaces here, rejected or not
                    await wait_for(keeping)

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
        self, api: Poster, job: RenderedRequest, cache: ResponseCache
    ) -> concurrent.futures.Future[Any] | None:
        """Answer `job` once per process: from the cache if answered meanwhile, by waiting for
        another client of this process that is sending the same body, else by sending it and
        handing the answer to the cache the moment it arrives. Returns the future of that
        answer being kept (None when nothing was sent)."""
        while True:
            claim = cache.claim(job.key)
            if claim.answer is not None:
                self.collect(job, claim.answer, CACHED)
                return None
            if claim.pending is None:
                break
            try:
                self.collect(job, await wait_for(claim.pending), JOINED)
                return None
            except SendAbandoned:  # its sender stopped: claim it again
                continue
        result: ChatResult | None = None
        try:
            result = await self.send(api, job)
            kept = cache.record(result, job.payload)
            self.collect(job, result, SENT)
            return kept
        finally:
            cache.release(job.key, result)

    def check_gone(self, last_error: str = "") -> None:
        """EndpointGoneError once the endpoint's server is known to have exited (`ctx.gone`):
        no new request and no retry goes to a dead port. Answers already received are kept
        (in the cache); the rest are asked again by the next attempt."""
        reason = self.ctx.gone() if self.ctx.gone is not None else None
        if reason:
            raise EndpointGoneError(
                f"{self.ctx.role}: {reason} ({last_error}nothing more is sent to "
                f"{self.ctx.base_url})"
            )

    async def send(self, api: Poster, job: RenderedRequest) -> ChatResult:
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
                self.check_gone(f"{error}; ")
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
                if not (isinstance(response, dict) and isinstance(response.get("choices"), list)):
                    # A 200 that is no chat completion (a proxy's page, another API's JSON).
                    return self.failed(job, _not_a_completion(response, job.path), attempt + 1)
                return self.answer(job, response, attempt + 1)
            if attempt < retries:
                if delay is None:
                    delay = min(self.ctx.backoff_max, self.ctx.backoff_base * 2**attempt)
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

    async def post(self, api: Poster, job: RenderedRequest, tokens: int) -> Any:
        """One HTTP attempt, in one of the role's in-flight slots (`endpoint.concurrency` over
        every client of the process), paced by the role's rate limiter, whose buckets its
        answer's x-ratelimit-* headers tighten."""
        async with self.ctx.inflight:
            return await self._post(api, job, tokens)

    async def _post(self, api: Poster, job: RenderedRequest, tokens: int) -> Any:
        limiter = self.ctx.limiter
        await limiter.acquire(tokens)
        headers = None
        try:
            # Not `create`: its per-call parameter transform costs ~1 ms of CPU per request and
            # does nothing for a plain JSON body like ours. `Poster` sends the body with the
            # headers the SDK builds, raising the SDK's errors (poster.py).
            response = await api(job.path, job.body)
            headers = response.headers
            return _body(response)
        except openai.APIStatusError as exc:
            headers = exc.response.headers
            raise
        finally:
            limiter.done(tokens, headers)

    def rejected(self, job: RenderedRequest, status: int, message: str) -> EndpointRejectedError:
        """The error that stops the batch: the endpoint refuses this role's requests as such."""
        c = self.ctx
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
        fields = answer_fields(response, job.request.is_completion)
        if fields is None:
            return self.failed(job, _not_a_completion(response, job.path), attempts)
        text, finish, prompt_tokens, completion_tokens = fields
        cost = self.ctx.charge(prompt_tokens, completion_tokens, batch=False)
        if text is None or (not self.ctx.allow_empty and not text.strip()):
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
        """Deliver `result` for the job's key and show it. `how`: SENT by this call, CACHED
        (answered by another client since the call began), JOINED (another client of this
        process sent it). A sent answer counts toward the unreachable check and the next
        flush."""
        c = self.ctx
        n = c.deliver(job.key, result, how)
        self.progress.update(n, failed=0 if result.ok else n, sent=how == SENT)
        if how != SENT:
            return
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


class Progress:
    """A tqdm bar on stderr (hidden off a TTY), a log line at most every LOG_INTERVAL s, and
    `report(label, done, total)` at every update and at the end, if given."""

    def __init__(
        self,
        label: str,
        *,
        total: int,
        initial: int,
        report: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.label = label
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


def _no_answer(exc: openai.APIConnectionError, timeout: float) -> str:
    """Describe a request that got no HTTP answer, from the innermost cause."""
    root: BaseException = exc
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(root).strip()
    if isinstance(root, TimeoutError) or not text:
        return f"no answer: timed out after {timeout:g}s ({type(root).__name__})"
    return f"no answer: {type(root).__name__}: {text}"


def _body(response: Any) -> Any:
    """A 200's body: its JSON as plain Python (no SDK models: building a `ChatCompletion` cost
    ~9% of the client's CPU per request at high concurrency, docs/llm-client.md), or its text
    when it is not JSON. A body that says it is JSON and is not raises `JSONDecodeError`."""
    if "json" not in response.headers.get("content-type", ""):
        return response.text
    return json.loads(response.content)


def _not_a_completion(body: object, path: str = "/chat/completions") -> str:
    """The error of a 200 whose body is not a (chat) completion, with the body's first bytes."""
    if isinstance(body, dict | list):
        body = json.dumps(body, ensure_ascii=False)
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
