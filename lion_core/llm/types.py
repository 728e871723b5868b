"""Requests and results of the LLM client, and the request key that makes answers reusable.

A request's key is the sha256 of (model, messages, sampling parameters). Two requests with the
same key are the same question: asked once, answered once, cached forever in the run's storage.
`sample` tells apart deliberate repeats of one prompt (several candidates from one seed).

A request with a `prompt` (token ids or text) is a plain completion (`POST /completions`)
instead of a chat: the served student gets exactly the prompt its training rendered. The prompt
is part of its key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from lion_core.config import EndpointConfig

Status = Literal["ok", "failed"]


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to make. `tag` is the caller's label (e.g. an instruction_id) and is
    not part of the key; everything that changes the answer is."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...), hashable
    tag: str = ""
    sample: int = 0
    response_format: str | None = None  # None or "json_object"
    prompt: tuple[int, ...] | str | None = None  # set: a completion, not a chat (no messages)

    @classmethod
    def of(
        cls,
        messages: list[dict[str, str]],
        tag: str = "",
        sample: int = 0,
        response_format: str | None = None,
    ) -> ChatRequest:
        return cls(
            messages=tuple((m["role"], m["content"]) for m in messages),
            tag=tag,
            sample=sample,
            response_format=response_format,
        )

    @classmethod
    def completion(
        cls, prompt: list[int] | tuple[int, ...] | str, tag: str = "", sample: int = 0
    ) -> ChatRequest:
        """A completion request: `prompt` as token ids (sent as is, no tokenizer in between)
        or text."""
        return cls(
            messages=(),
            tag=tag,
            sample=sample,
            prompt=prompt if isinstance(prompt, str) else tuple(int(t) for t in prompt),
        )

    @property
    def is_completion(self) -> bool:
        return self.prompt is not None

    def prompt_value(self) -> list[int] | str | None:
        """The prompt as sent (a list of token ids, or text)."""
        if self.prompt is None or isinstance(self.prompt, str):
            return self.prompt
        return list(self.prompt)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class ChatResult:
    """The outcome of one request. A failure keeps its error; it is never an empty answer."""

    key: str
    tag: str
    status: Status
    text: str | None = None
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # what this answer cost (0 when cached: paid before)
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def sampling_params(
    *,
    temperature: float,
    top_p: float,
    max_tokens: int,
    sample: int = 0,
    response_format: str | None = None,
) -> dict[str, Any]:
    """The parameters that enter the key (and the request)."""
    params: dict[str, Any] = {
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
    }
    if sample:
        params["sample"] = sample
    if response_format:
        params["response_format"] = response_format
    return params


def request_key(
    model: str,
    messages: list[dict[str, str]],
    params: dict[str, Any],
    prompt: list[int] | str | None = None,
    scope: dict[str, Any] | None = None,
) -> str:
    """sha256 over the canonical JSON of (model, messages, params), plus the completion
    `prompt` and the client's key `scope` when given (a chat request without them keeps its
    key)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "params": params}
    if prompt is not None:
        body["prompt"] = prompt
    if scope:
        body["scope"] = scope
    payload = json.dumps(
        body,
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RenderedRequest:
    """One request as it goes out and as it is remembered, rendered together by
    `render_request` so the two can never disagree."""

    request: ChatRequest
    body: dict[str, Any]  # the HTTP body of POST /chat/completions (or /completions)
    # {model, messages, params[, prompt][, scope]}: the key's preimage, stored in the cache
    payload: dict[str, Any]
    key: str  # request_key(**payload)

    @property
    def path(self) -> str:
        """Where the body is POSTed, relative to the base URL."""
        return "/completions" if self.request.is_completion else "/chat/completions"


def render_request(
    endpoint: EndpointConfig,
    request: ChatRequest,
    *,
    extra_body: Mapping[str, Any] | None = None,
    key_scope: Mapping[str, Any] | None = None,
) -> RenderedRequest:
    """The body, the cache payload and the key of `request` on `endpoint`.

    A sample k != 0 is `seed=k` in the body (distinct samples are distinct bodies) and
    `sample=k` in the key's parameters; `response_format="json_object"` is
    `{"type": "json_object"}` in the body. A completion request sends `prompt` (token ids or
    text) instead of `messages`, and its prompt is in the key. `extra_body`: fields added to
    the body and to the key's parameters (engine extensions such as vLLM's `stop_token_ids`).
    `key_scope`: fields in the key only, never sent (what the answers depend on that the body
    does not say, e.g. the served checkpoint's digest). A chat request without either keeps
    the key it always had.
    """
    params = sampling_params(
        temperature=endpoint.temperature,
        top_p=endpoint.top_p,
        max_tokens=endpoint.max_tokens,
        sample=request.sample,
        response_format=request.response_format,
    )
    if extra_body:
        params.update(extra_body)
    body: dict[str, Any] = {"model": endpoint.model}
    if request.is_completion:
        body["prompt"] = request.prompt_value()
    else:
        body["messages"] = request.message_dicts()
    body.update(
        temperature=endpoint.temperature, top_p=endpoint.top_p, max_tokens=endpoint.max_tokens
    )
    if extra_body:
        body.update(extra_body)
    if request.sample:
        body["seed"] = request.sample
    if request.response_format == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif request.response_format:
        raise ValueError(f"unsupported response_format {request.response_format!r}")
    payload: dict[str, Any] = {
        "model": endpoint.model,
        "messages": request.message_dicts(),
        "params": params,
    }
    if request.is_completion:
        payload["prompt"] = request.prompt_value()
    if key_scope:
        payload["scope"] = dict(key_scope)
    return RenderedRequest(request=request, body=body, payload=payload, key=request_key(**payload))


class Completer(Protocol):
    """What the stages need of an LLM client (LLMClient implements it): results in request
    order, one per request, failures as status "failed" rather than exceptions."""

    def run(self, requests: Sequence[ChatRequest], *, desc: str = "") -> list[ChatResult]: ...
