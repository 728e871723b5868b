"""The embedded offline task world (served when an endpoint is 'offline') and its faults."""

from __future__ import annotations

from pydantic import Field

from lion_core.config.base import ADDED, OPERATIONAL, Section


class FaultsConfig(Section):
    """Fault injection in the offline world (tests)."""

    rate_429: float = Field(0.0, ge=0, le=1, description="Share of requests answered 429.")
    retry_after: float = Field(0.05, ge=0, description="Retry-After seconds sent with a 429.")
    rate_500: float = Field(0.0, ge=0, le=1, description="Share of requests answered 500.")
    rate_slow: float = Field(0.0, ge=0, le=1, description="Share of requests answered slowly.")
    slow_seconds: float = Field(2.0, ge=0, description="Delay of a slow answer.")
    batch_fail_rate: float = Field(
        0.0, ge=0, le=1, description="Batch API: share of lines answered with a 500 error."
    )
    batch_expire_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Batch API: share of lines left undone when the window closes; a batch "
        "with any such line ends 'expired'.",
    )
    rate_garbled: float = Field(
        0.0, ge=0, le=1, description="Share of referee answers with no parsable scores."
    )


class OfflineWorldConfig(Section):
    """The embedded offline task world, served when an endpoint is 'offline'."""

    seed: int = Field(0, description="Seed of every random choice the world makes.")
    latency: float = Field(
        0.0, ge=0, description="Seconds added to every answer.", json_schema_extra=OPERATIONAL
    )
    judge_noise: float = Field(0.5, ge=0, description="Std-dev of noise on referee scores.")
    positional_bias: float = Field(
        1.0, description="Points the referee adds to whichever answer is shown first."
    )
    max_difficulty: int = Field(6, ge=1, le=20, description="Hardest difficulty level of seeds.")
    families: list[str] = Field(
        default_factory=list,
        description="The world's families the seeds and the held-out set are drawn from, in "
        "turn (lion_core.offline.world.FAMILIES). Empty: the seven arithmetic, sorting, "
        "counting, reversing and case families; `repeat`, `capital`, `parity` and `compare` "
        "are opt-in.",
        json_schema_extra=ADDED,
    )
    faults: FaultsConfig = Field(
        default_factory=FaultsConfig, description="Fault injection.", json_schema_extra=OPERATIONAL
    )
    batch_delay: float = Field(
        0.2,
        ge=0,
        description="Batch API: seconds from a batch's creation to its end.",
        json_schema_extra=OPERATIONAL,
    )
    rpm: int | None = Field(
        None,
        ge=1,
        description="Requests per minute the world accepts before answering 429 (with "
        "x-ratelimit-* headers). Empty: no limit.",
        json_schema_extra=OPERATIONAL,
    )
    tpm: int | None = Field(
        None,
        ge=1,
        description="Tokens per minute the world accepts before answering 429, counted as "
        "OpenAI's limiter does: prompt characters / 4 plus max_tokens. Empty: no limit.",
        json_schema_extra=OPERATIONAL,
    )
