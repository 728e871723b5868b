"""What LLM requests cost: prices, token counts, estimates, what a run spent, and its budget.

- `price_of(pricing, model)`: the config's price of a model (its longest listed prefix); an
  unlisted model costs 0, with one warning per model.
- `TokenCounter`: prompt tokens of chat messages with `tiktoken` for OpenAI model names when it
  is installed and its encoding loads (it downloads the encoding once; set TIKTOKEN_CACHE_DIR
  to keep it), else `CHARS_PER_TOKEN` characters per token (English text averages about 4
  characters per token in OpenAI's encodings), plus OpenAI's chat overhead per message.
- `Estimate`: requests, tokens and cost, sync and batch, of a list of requests; completion
  tokens are `expected_completion_tokens` or `max_tokens`.
- `Budget`: before a stage sends anything, what the run's response cache says was spent, plus
  what stages of this process have reserved, plus the stage's estimate, must stay within
  `budget_usd`; else `BudgetExceeded`, nothing sent.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from lion_core.config import EndpointConfig, ModelPrice
from lion_core.errors import BudgetExceeded

log = logging.getLogger("lion_core.llm.costs")

CHARS_PER_TOKEN = 4.0  # the fallback token count: characters / 4
TOKENS_PER_MESSAGE = 3  # OpenAI's chat format: <|start|>role ... <|end|> per message
TOKENS_PER_REPLY = 3  # every reply is primed with <|start|>assistant<|message|>
FREE = ModelPrice(input=0.0, output=0.0)

_warned: set[str] = set()
_warned_lock = threading.Lock()


def price_of(pricing: Mapping[str, ModelPrice], model: str) -> ModelPrice:
    """The price of `model`: the entry whose name is its longest prefix; FREE (with a warning,
    once per model) when none is."""
    matches = [name for name in pricing if model.startswith(name)]
    if matches:
        return pricing[max(matches, key=len)]
    with _warned_lock:
        if model not in _warned:
            _warned.add(model)
            log.warning(
                "no price for model %r in the config's `pricing`: its requests count as free "
                "in estimates, the live cost and budget_usd",
                model,
            )
    return FREE


def cost_usd(
    price: ModelPrice, prompt_tokens: int, completion_tokens: int, *, batch: bool
) -> float:
    """USD for one request's tokens (batch: with the batch discount)."""
    usd = (prompt_tokens * price.input + completion_tokens * price.output) / 1e6
    return usd * (1.0 - price.batch_discount) if batch else usd


# ---- counting tokens ------------------------------------------------------------------------


class TokenCounter:
    """Prompt tokens of chat messages for one model: exact with tiktoken, else estimated."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.encoding = _tiktoken_encoding(model)

    @property
    def exact(self) -> bool:
        return self.encoding is not None

    def text(self, text: str) -> int:
        if self.encoding is not None:
            return len(self.encoding.encode(text, disallowed_special=()))
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def messages(self, messages: Iterable[Mapping[str, str]]) -> int:
        """Prompt tokens of a chat request, as OpenAI bills them."""
        total = TOKENS_PER_REPLY
        for m in messages:
            total += TOKENS_PER_MESSAGE + self.text(m["content"]) + self.text(m["role"])
        return total

    def prompt(self, prompt: Sequence[int] | str) -> int:
        """Prompt tokens of a completion request: its token ids, or its text's tokens."""
        return self.text(prompt) if isinstance(prompt, str) else len(prompt)


@functools.cache
def token_counter(model: str) -> TokenCounter:
    return TokenCounter(model)


def _tiktoken_encoding(model: str) -> Any | None:
    """tiktoken's encoding for an OpenAI model name, or None (not installed, not an OpenAI
    name, or its encoding file cannot be had)."""
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        return tiktoken.encoding_for_model(model)
    except KeyError:  # not a model tiktoken knows
        return None
    except Exception as exc:  # the encoding download failed (no network)
        log.warning("tiktoken cannot load the encoding of %r (%s): estimating tokens", model, exc)
        return None


# ---- estimates ------------------------------------------------------------------------------


@dataclass
class Estimate:
    """Requests, tokens and cost of some requests, sync and batch."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_sync: float = 0.0
    cost_batch: float = 0.0

    def __add__(self, other: Estimate) -> Estimate:
        sums = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        return Estimate(**sums)

    def cost(self, mode: str) -> float:
        return self.cost_batch if mode == "batch" else self.cost_sync

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def completion_tokens(endpoint: EndpointConfig) -> int:
    """Tokens assumed per answer: expected_completion_tokens, else max_tokens."""
    return endpoint.expected_completion_tokens or endpoint.max_tokens


def estimate(
    endpoint: EndpointConfig,
    pricing: Mapping[str, ModelPrice],
    requests: Iterable[list[dict[str, str]]],
    prompts: Iterable[Sequence[int] | str] = (),
) -> Estimate:
    """The estimate of `requests` (each a list of chat messages) and of completion `prompts`
    (token ids or text) on `endpoint`."""
    counter = token_counter(endpoint.model)
    n = prompt = 0
    for messages in requests:
        n += 1
        prompt += counter.messages(messages)
    for completion in prompts:
        n += 1
        prompt += counter.prompt(completion)
    return priced(endpoint, pricing, n, prompt, n * completion_tokens(endpoint))


def priced(
    endpoint: EndpointConfig,
    pricing: Mapping[str, ModelPrice],
    requests: int,
    prompt_tokens: int,
    completion: int,
) -> Estimate:
    price = price_of(pricing, endpoint.model)
    return Estimate(
        requests=requests,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        cost_sync=cost_usd(price, prompt_tokens, completion, batch=False),
        cost_batch=cost_usd(price, prompt_tokens, completion, batch=True),
    )


# ---- the budget -----------------------------------------------------------------------------


class Budget:
    """`budget_usd` for the response cache in `storage` (all roles). `reserve` checks a stage
    before it sends anything and holds its estimate while it runs, so that stages running at
    once in this process cannot each pass alone and overrun together. `payer`: on a cache
    shared by several runs, the run whose answers count (`paid_by`); None: every answer."""

    # (cache URI, payer) -> USD reserved by running stages
    _reserved: ClassVar[dict[tuple[str, str | None], float]] = {}
    _lock = threading.Lock()

    def __init__(self, limit_usd: float, storage: Any, payer: str | None = None) -> None:
        self.limit = limit_usd
        self.storage = storage
        self.payer = payer

    def spent(self) -> float:
        from lion_core.llm.cache import spent_usd

        return sum(spent_usd(self.storage, self.payer).values())

    @contextlib.contextmanager
    def reserve(self, stage: str, needed: float) -> Iterator[None]:
        """Hold `needed` USD for `stage`, or raise BudgetExceeded if it does not fit."""
        from lion_core.run import layout

        key = (self.storage.uri(layout.LLM_CACHE), self.payer)
        spent = self.spent()
        with self._lock:
            held = self._reserved.get(key, 0.0)
            if spent + held + needed > self.limit:
                running = f" + ${held:.4f} reserved by stages running now" if held else ""
                raise BudgetExceeded(
                    f"{stage}: needs an estimated ${needed:.4f} but the run has spent "
                    f"${spent:.4f}{running} of its budget_usd ${self.limit:.4f}; nothing of "
                    f"this stage was sent. Raise budget_usd (an operational field) and resume "
                    f"the run (`lion resume`): every answer already paid for is reused.",
                    stage=stage,
                    spent=spent,
                    needed=needed,
                    budget=self.limit,
                )
            self._reserved[key] = held + needed
        try:
            yield
        finally:
            with self._lock:
                self._reserved[key] = self._reserved.get(key, 0.0) - needed
