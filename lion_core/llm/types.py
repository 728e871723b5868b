"""Requests and results of the LLM client, and the request key that makes answers reusable.

A request's key is the sha256 of (model, messages, sampling parameters). Two requests with the
same key are the same question: asked once, answered once, cached forever in the run's storage.
`sample` tells apart deliberate repeats of one prompt (several candidates from one seed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Status = Literal["ok", "failed"]


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to make. `tag` is the caller's label (e.g. an instruction_id) and is
    not part of the key; everything that changes the answer is."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...), hashable
    tag: str = ""
    sample: int = 0
    response_format: str | None = None  # None or "json_object"

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


def request_key(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of (model, messages, params)."""
    payload = json.dumps(
        {"model": model, "messages": messages, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class Completer(Protocol):
    """What the stages need of an LLM client (LLMClient implements it): results in request
    order, one per request, failures as status "failed" rather than exceptions."""

    def run(self, requests: Sequence[ChatRequest], *, desc: str = "") -> list[ChatResult]: ...
