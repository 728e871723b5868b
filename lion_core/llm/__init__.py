"""The LLM client: any OpenAI-compatible endpoint, bounded concurrency, a persistent cache."""

from lion_core.llm.cache import ResponseCache
from lion_core.llm.client import LLMClient, Usage
from lion_core.llm.keys import resolve_api_key
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
    "Usage",
    "render_request",
    "request_key",
    "resolve_api_key",
    "sampling_params",
]
