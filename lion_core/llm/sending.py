"""What a sender needs and promises: the seam between `LLMClient` and the ways requests go out.

`LLMClient` renders a call's requests, de-duplicates them, answers what the response cache
holds, checks the budget, and hands the rest to a `Sender` — `online.OnlineSender` (one HTTP
request each) or `batch.BatchSender` (the provider's Batch API) — together with a `SendContext`:
everything the sender may use (the SDK factory, the cache, the rate limiter, the price and the
usage counters) and the one way back, `deliver`, which files a result for every request with
its key. A sender never sees the client, so the senders are siblings behind one interface (as
Curator's request processors are) and neither imports the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from lion_core.llm.costs import cost_usd

if TYPE_CHECKING:
    import openai

    from lion_core.config import EndpointConfig, ModelPrice
    from lion_core.llm.cache import ResponseCache
    from lion_core.llm.ratelimit import InFlightLimit, RateLimiter
    from lion_core.llm.types import ChatResult, RenderedRequest

# How a request of a call was answered (`SendContext.deliver`).
SENT = "sent"  # sent by this call
CACHED = "cached"  # in the cache by the time the sender looked again
JOINED = "joined"  # another client of this process sent the same body

_T = TypeVar("_T")

# (label 'role: desc', done, total) as a call's requests are answered, and once at the end
ProgressCallback = Callable[[str, int, int], None]
# (role, desc, completed, failed, total): the lines of a call's batches
BatchProgressCallback = Callable[[str, str, int, int, int], None]
# (key, result, how) -> how many requests of the call the result answers
Deliver = Callable[[str, "ChatResult", str], int]


@dataclass
class UsageCounter:
    """What a client did, summed over its calls (one client per role). Thread-safe `add`.
    A task returns it as a record: `lion_core.run.records.Usage`."""

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


def _nowhere(key: str, result: ChatResult, how: str) -> int:
    raise RuntimeError("this context belongs to no call: it cannot deliver results")


@dataclass(frozen=True)
class SendContext:
    """One role's endpoint as a sender sees it, and (for a call) where its results go."""

    role: str
    endpoint: EndpointConfig
    base_url: str
    open_api: Callable[[int], openai.AsyncOpenAI]  # an SDK client with n pooled connections
    cache: ResponseCache | None
    limiter: RateLimiter
    inflight: InFlightLimit  # the role's requests in flight, over every client of the process
    usage: UsageCounter
    price: ModelPrice
    allow_empty: bool = False  # an empty answer is an answer, not a failure
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    on_progress: ProgressCallback | None = None
    on_batch_progress: BatchProgressCallback | None = None
    # Why the endpoint's server is gone (it exited), or None while it may answer: checked
    # before each request and each retry, so a dead server costs no retries.
    gone: Callable[[], str | None] | None = None
    # ---- the call's
    desc: str = ""
    total: int = 0  # requests in the call
    answered: int = 0  # of them, answered before sending (cache hits and their repeats)
    deliver: Deliver = _nowhere

    @property
    def model(self) -> str:
        return self.endpoint.model

    @property
    def label(self) -> str:
        return f"{self.role}: {self.desc}" if self.desc else self.role

    def charge(self, prompt_tokens: int, completion_tokens: int, *, batch: bool) -> float:
        """Count an answer's tokens and return its cost (batch: at the batch price)."""
        cost = cost_usd(self.price, prompt_tokens, completion_tokens, batch=batch)
        self.usage.add(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost
        )
        return cost


class Sender(Protocol):
    """Sends a call's uncached requests: `send` delivers exactly one result per job through
    `ctx.deliver` (ok or failed) or raises. Every job counts against the budget at the price
    of `mode` ("sync" or "batch") before anything is sent — a resumed run's requests in a
    batch submitted before included: their answers are charged when they arrive."""

    mode: str

    async def send(self, jobs: Mapping[str, RenderedRequest], ctx: SendContext) -> None: ...


class HasSendContext(Protocol):
    """What owns an endpoint outside any call (`LLMClient`): e.g. to cancel its batches."""

    def send_context(self) -> SendContext: ...


async def wait_for(future: concurrent.futures.Future[_T]) -> _T:
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


# ---- what an answer's body says (online answers and Batch API output lines alike) ----------


class AnswerFields(NamedTuple):
    text: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


def answer_fields(body: Mapping[str, Any], is_completion: bool = False) -> AnswerFields | None:
    """The text, finish reason and token counts of a (chat) completion's JSON body, read as
    plain JSON; None when its `choices`, a choice, the message or the text has the wrong type.
    No choice, or no text in it: text None."""
    choices = body.get("choices") or []
    if not isinstance(choices, list):
        return None
    choice = choices[0] if choices else {}
    if not isinstance(choice, Mapping):
        return None
    if is_completion:
        text = choice.get("text")
    else:
        message = choice.get("message") or {}
        if not isinstance(message, Mapping):
            return None
        text = message.get("content")
    if text is not None and not isinstance(text, str):
        return None
    usage = body.get("usage")
    usage = usage if isinstance(usage, Mapping) else {}
    return AnswerFields(
        text,
        choice.get("finish_reason"),
        _count(usage.get("prompt_tokens")),
        _count(usage.get("completion_tokens")),
    )


def _count(value: Any) -> int:
    """A token count from an answer's usage: 0 when missing or not a number."""
    if isinstance(value, bool):
        return 0
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
