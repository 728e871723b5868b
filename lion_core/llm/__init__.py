"""The LLM client: any OpenAI-compatible endpoint, bounded concurrency, a persistent cache."""

from lion_core.llm.cache import ResponseCache
from lion_core.llm.client import LLMClient, Usage
from lion_core.llm.types import ChatRequest, ChatResult, request_key, sampling_params

__all__ = [
    "ChatRequest",
    "ChatResult",
    "LLMClient",
    "ResponseCache",
    "Usage",
    "request_key",
    "sampling_params",
]
