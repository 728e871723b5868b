"""What LLM requests cost: USD per million tokens per model, and the Batch API's discount."""

from __future__ import annotations

from pydantic import Field

from lion_core.config.base import Section


class ModelPrice(Section):
    """What one model costs, in USD per million tokens."""

    input: float = Field(..., ge=0, description="USD per million prompt tokens.")
    output: float = Field(..., ge=0, description="USD per million completion tokens.")
    batch_discount: float = Field(
        0.5, ge=0, le=1, description="Share of the price the Batch API takes off (OpenAI: 0.5)."
    )


# List prices of common models (standard tier, USD per million tokens) as of PRICES_AS_OF.
# Check the provider's pricing page before trusting an estimate; override or extend them in
# the config's `pricing` section. A model name matches its longest listed prefix
# (gpt-4o-2024-08-06 -> gpt-4o); an unlisted model costs 0, with a warning.
PRICES_AS_OF = "2025-08"
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-5": {"input": 1.25, "output": 10.00},
    "gpt-5-mini": {"input": 0.25, "output": 2.00},
    "gpt-5-nano": {"input": 0.05, "output": 0.40},
    "gpt-4.1": {"input": 2.00, "output": 8.00},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60},
    "gpt-4.1-nano": {"input": 0.10, "output": 0.40},
    "gpt-4o": {"input": 2.50, "output": 10.00},
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "o4-mini": {"input": 1.10, "output": 4.40},
    "o3": {"input": 2.00, "output": 8.00},
    "gpt-4-turbo": {"input": 10.00, "output": 30.00},
    "gpt-4": {"input": 30.00, "output": 60.00},
    "gpt-3.5-turbo": {"input": 0.50, "output": 1.50},
    # The offline world's models, priced as a small commercial model (gpt-4o-mini) so that
    # dollars mean something offline (`lion ablate`'s cost per arm); set 0 for free.
    "offline-": {"input": 0.15, "output": 0.60},
}


def default_prices() -> dict[str, ModelPrice]:
    return {name: ModelPrice(**price) for name, price in DEFAULT_PRICES.items()}
