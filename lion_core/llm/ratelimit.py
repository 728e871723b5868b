"""Pacing requests below a provider's requests- and tokens-per-minute limits.

A `RateLimiter` holds two token buckets, one of requests and one of tokens, each holding at
most a minute's allowance and refilling at allowance / 60 per second. A request takes one
request and its `limiter_tokens` (estimated prompt tokens plus max_tokens: OpenAI's limiter
counts max_tokens before answering) and waits, in arrival order, until both buckets hold
enough. Limits come from the config (`rpm`, `tpm`) and from OpenAI's response headers:

    x-ratelimit-limit-requests / -tokens        the allowance (adopted if none is configured;
                                                a lower one than configured tightens it)
    x-ratelimit-remaining-requests / -tokens    what was left when the provider answered,
                                                less what we sent that it had not counted yet
                                                (a lower level than ours tightens it: others
                                                may share the key)

so a role with no configured limit still slows down as soon as the provider says how much it
allows. Limiters are shared by every client of one (base URL, model) in a process, since a
provider limits an organisation per model, not per client.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

from lion_core.llm.costs import CHARS_PER_TOKEN


def limiter_tokens(body: Mapping[str, Any]) -> int:
    """Tokens a request counts against a TPM limit before it is answered: its messages'
    characters / 4 (a completion's prompt: its token ids, or its characters / 4) plus
    max_tokens (the offline world counts them the same way)."""
    chars = ids = 0
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        ids += len(prompt)
    for m in body.get("messages") or ():
        content = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p.get("text", "")) for p in content if isinstance(p, Mapping))
    tokens = ids + math.ceil(chars / CHARS_PER_TOKEN)
    return tokens + int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)


class _Bucket:
    """At most `capacity` units (a minute's allowance), refilled at capacity / 60 per second;
    no capacity: unlimited."""

    def __init__(self, capacity: float | None, now: float) -> None:
        self.configured = capacity
        self.capacity = capacity
        self.level = capacity or 0.0
        self.stamp = now

    def refill(self, now: float) -> None:
        if self.capacity is not None:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.capacity / 60)
        self.stamp = now

    def wait(self, n: float) -> float:
        """Seconds until `n` units are there (a request larger than the whole bucket waits
        for a full bucket)."""
        if self.capacity is None:
            return 0.0
        need = min(n, self.capacity) - self.level
        return max(0.0, need * 60 / self.capacity)

    def take(self, n: float) -> None:
        if self.capacity is not None:
            self.level -= n

    def observe(self, limit: float | None, remaining: float | None, now: float) -> None:
        self.refill(now)
        if limit is not None and limit > 0:
            capacity = limit if self.configured is None else min(self.configured, limit)
            if self.capacity is None:
                self.level = capacity  # first sight of the provider's limit
            self.capacity = capacity
            self.level = min(self.level, capacity)
        if remaining is not None and self.capacity is not None:
            self.level = min(self.level, remaining)


class RateLimiter:
    """Requests and tokens per minute for one (base URL, model): `await acquire(tokens)`
    before sending, `observe(headers)` on every response (a 429's too)."""

    _shared: ClassVar[dict[tuple[str, str], RateLimiter]] = {}
    _shared_lock = threading.Lock()

    def __init__(self, rpm: int | None = None, tpm: int | None = None, clock=time.monotonic):
        self.clock = clock
        now = clock()
        self.requests = _Bucket(rpm, now)
        self.tokens = _Bucket(tpm, now)
        self._lock = threading.Lock()  # buckets are shared by event loops of several threads
        self.waited = 0.0  # seconds spent waiting, summed over requests
        self.inflight_requests = 0  # acquired, not answered yet
        self.inflight_tokens = 0

    @classmethod
    def shared(cls, key: tuple[str, str], rpm: int | None, tpm: int | None) -> RateLimiter:
        """The process's limiter for `key` (base URL, model); configured limits of a later
        client tighten it, never loosen it."""
        with cls._shared_lock:
            limiter = cls._shared.get(key)
            if limiter is None:
                limiter = cls._shared[key] = cls(rpm, tpm)
            else:
                limiter.configure(rpm, tpm)
            return limiter

    def configure(self, rpm: int | None, tpm: int | None) -> None:
        with self._lock:
            now = self.clock()
            for bucket, limit in ((self.requests, rpm), (self.tokens, tpm)):
                if limit is None:
                    continue
                bucket.refill(now)
                if bucket.configured is None or limit < bucket.configured:
                    bucket.configured = limit
                    if bucket.capacity is None:
                        bucket.level = limit
                    bucket.capacity = min(limit, bucket.capacity or limit)
                    bucket.level = min(bucket.level, bucket.capacity)

    @property
    def active(self) -> bool:
        return self.requests.capacity is not None or self.tokens.capacity is not None

    def try_acquire(self, tokens: int) -> float:
        """Take one request and `tokens` if both are there (returns 0), else the seconds to
        wait before trying again."""
        with self._lock:
            now = self.clock()
            self.requests.refill(now)
            self.tokens.refill(now)
            wait = max(self.requests.wait(1), self.tokens.wait(tokens))
            if wait <= 0:
                self.requests.take(1)
                self.tokens.take(tokens)
                self.inflight_requests += 1
                self.inflight_tokens += tokens
            return wait

    async def acquire(self, tokens: int) -> None:
        """Wait until one request and `tokens` fit under both limits, and take them."""
        start = None
        while True:
            wait = self.try_acquire(tokens)
            if wait <= 0:
                if start is not None:
                    self.waited += time.monotonic() - start
                return
            start = start if start is not None else time.monotonic()
            await asyncio.sleep(min(wait, 5.0) + 0.001)

    def done(self, tokens: int, headers: Mapping[str, str] | None = None) -> None:
        """A request taken with `acquire(tokens)` got its answer (`headers`: the answer's,
        None when there was none)."""
        with self._lock:
            self.inflight_requests -= 1
            self.inflight_tokens -= tokens
        if headers is not None:
            self.observe(headers)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Tighten the buckets with the provider's x-ratelimit-* headers, if any. The remaining
        counts exclude requests still in flight, which the provider may not have counted."""
        values = {
            name: _number(headers.get(f"x-ratelimit-{name}"))
            for name in (
                "limit-requests",
                "limit-tokens",
                "remaining-requests",
                "remaining-tokens",
            )
        }
        if all(v is None for v in values.values()):
            return
        with self._lock:
            now = self.clock()
            left_requests, left_tokens = values["remaining-requests"], values["remaining-tokens"]
            if left_requests is not None:
                left_requests -= self.inflight_requests
            if left_tokens is not None:
                left_tokens -= self.inflight_tokens
            self.requests.observe(values["limit-requests"], left_requests, now)
            self.tokens.observe(values["limit-tokens"], left_tokens, now)

    def __repr__(self) -> str:
        return f"RateLimiter(rpm={self.requests.capacity}, tpm={self.tokens.capacity})"


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


class InFlightLimit:
    """At most `limit` requests of one role in flight at once in this process, however many
    clients send them: the referee's two orders and the generator's two kinds run side by
    side, each client with `concurrency` workers, and without this a role's `concurrency`
    meant twice as many requests at the endpoint. Shared by every client of one (role, base
    URL, model), across threads and their event loops; a freed slot goes to the longest
    waiter (woken in its own loop)."""

    _shared: ClassVar[dict[tuple[str, str, str], InFlightLimit]] = {}
    _shared_lock = threading.Lock()

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0  # slots held
        self.peak = 0  # most slots held at once
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @classmethod
    def shared(cls, key: tuple[str, str, str], limit: int) -> InFlightLimit:
        """The process's gate for `key` (role, base URL, model), at the `limit` of the
        client made last (a config's concurrency, unlike a provider's rate limit, is a choice
        each run makes: a worker process running one flow after another follows each)."""
        with cls._shared_lock:
            gate = cls._shared.get(key)
            if gate is None:
                gate = cls._shared[key] = cls(limit)
        with gate._lock:
            gate.limit = limit
            gate._hand_out()  # a raised limit frees slots for those waiting now
        return gate

    async def __aenter__(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.count < self.limit and not self._waiters:
                self._take()
                return
            waiter = (loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await waiter[1]  # the slot was handed over, already counted
        except asyncio.CancelledError:
            with self._lock:
                queued = waiter in self._waiters
                if queued:
                    self._waiters.remove(waiter)
            if not queued and waiter[1].done() and not waiter[1].cancelled():
                self._release()  # handed over, then cancelled before it resumed: pass it on
            raise  # (handed over but not delivered yet: _deliver passes it on)

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _take(self) -> None:
        self.count += 1
        self.peak = max(self.peak, self.count)

    def _release(self) -> None:
        with self._lock:
            self.count -= 1
            self._hand_out()

    def _hand_out(self) -> None:  # with self._lock held
        while self._waiters and self.count < self.limit:
            loop, future = self._waiters.popleft()
            try:
                loop.call_soon_threadsafe(self._deliver, future)
            except RuntimeError:  # its loop is closed: nobody waits there any more
                continue
            self._take()

    def _deliver(self, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            self._release()
        else:
            future.set_result(None)
