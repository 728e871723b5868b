"""The LLM client: any OpenAI-compatible endpoint, bounded concurrency, a persistent cache."""

from lion_core.llm.cache import ResponseCache
from lion_core.llm.client import LLMClient
from lion_core.llm.keys import resolve_api_key
from lion_core.llm.sending import UsageCounter
from lion_core.llm.types import (
    ChatRequest,
    ChatResult,
    RenderedRequest,
    render_request,
    request_key,
    sampling_params,
)

__all__ = [
    "ChatRequest",
    "ChatResult",
    "LLMClient",
    "RenderedRequest",
    "ResponseCache",
    "UsageCounter",
    "render_request",
    "request_key",
    "resolve_api_key",
    "sampling_params",
]
