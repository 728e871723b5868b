"""The LLM client: any OpenAI-compatible endpoint, bounded concurrency, a persistent cache."""

from lion_core.llm.types import ChatRequest, ChatResult, Completer, request_key, sampling_params

__all__ = ["ChatRequest", "ChatResult", "Completer", "request_key", "sampling_params"]
