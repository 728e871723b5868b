"""The LLM endpoints: teacher, referee, judge and generator, each an OpenAI-compatible chat
endpoint, and how a role's requests are sent (one by one, or through the provider's Batch API)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator
from pydantic.fields import FieldInfo

from lion_core.config.base import ADDED, OFFLINE, OPERATIONAL, Section


class BatchConfig(Section):
    """The provider's Batch API, used by a role in `mode: batch`.

    How the role's requests are split into batches, how often a batch's status is polled, and
    what becomes of failed lines and of batches in flight when the run is cancelled."""

    max_requests: int = Field(
        50_000,
        ge=1,
        description="Most requests in one batch (OpenAI: 50,000); more are split.",
    )
    max_bytes: int = Field(
        200_000_000,
        ge=1024,
        description="Largest JSONL input file of one batch in bytes (OpenAI: 200 MB); more are "
        "split.",
    )
    poll_seconds: float = Field(
        30.0,
        gt=0,
        description="Seconds between the first status polls; the interval grows by half each "
        "poll up to poll_max_seconds.",
    )
    poll_max_seconds: float = Field(
        600.0, gt=0, description="Longest interval between two status polls."
    )
    resubmits: int = Field(
        2,
        ge=0,
        le=20,
        description="Times a failed or expired line is resubmitted, alone, in a following "
        "batch (never the whole batch) before it counts as failed.",
    )
    cancel_on_cancel: bool = Field(
        True,
        description="Cancel this role's in-flight batches when the run is cancelled or "
        "interrupted (lines already answered are kept and paid; the others are not). Off: they "
        "finish at the provider, and a resumed run collects them.",
    )


class EndpointConfig(Section):
    """An OpenAI-compatible chat endpoint playing one role.

    A role's section subclasses this and changes defaults through `role_defaults` (field name
    -> default) instead of declaring the field again, so each field is declared once.
    """

    role_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.role_defaults:
            for name, value in cls.role_defaults.items():
                cls.model_fields[name] = FieldInfo.merge_field_infos(
                    cls.model_fields[name], default=value
                )
            cls.model_rebuild(force=True)

    base_url: str = Field(
        OFFLINE,
        description="OpenAI-compatible base URL (e.g. https://api.openai.com/v1 or "
        "http://vllm:8000/v1), or 'offline' for the embedded offline task world.",
        json_schema_extra=OPERATIONAL,
    )
    model: str = Field("offline-world", description="Model name sent with every request.")
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable that holds the API key (e.g. "
        "OPENAI_API_KEY). The key itself is never stored. Empty: no key (local servers).",
        json_schema_extra=OPERATIONAL,
    )
    api_key_secret: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the API key; used when running "
        "under Prefect and api_key_env is empty or unset.",
        json_schema_extra=OPERATIONAL,
    )
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling probability mass.")
    max_tokens: int = Field(1024, ge=1, description="Maximum tokens in one answer.")
    concurrency: int = Field(
        16,
        ge=1,
        le=1024,
        description="This role's requests in flight at once, over every client of the process "
        "(the referee's two orders and the generator's two kinds share it).",
        json_schema_extra=OPERATIONAL,
    )
    timeout: float = Field(
        120.0, gt=0, description="Seconds to wait for one answer.", json_schema_extra=OPERATIONAL
    )
    retries: int = Field(
        6,
        ge=0,
        le=50,
        description="Retries of a transient failure (429, 5xx, timeout).",
        json_schema_extra=OPERATIONAL,
    )
    cache_shard_size: int = Field(
        256,
        ge=1,
        description="Requests per Parquet shard of the response cache (formerly batch_size). "
        "Every answer is kept as it arrives (a journal on local storage; on object stores a "
        "flush every few seconds), so a killed process pays again only for requests in flight.",
        json_schema_extra=OPERATIONAL,
    )
    max_failed_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of a task's requests that may fail (after their retries) and the "
        "task still complete, its failures recorded in its snapshot for good. Above it the task "
        "fails, commits nothing, and the next run re-asks only the failed requests. 0: any "
        "failure fails the task.",
        json_schema_extra=OPERATIONAL,
    )

    # ---- how requests are sent: sync or the Batch API, pacing, the estimate ----------------

    mode: Literal["sync", "batch"] = Field(
        "sync",
        description="'sync': one HTTP request per answer. 'batch': the requests not in the "
        "response cache go out through the provider's Batch API (OpenAI: half the price, "
        "answers within 24 h; see `batch`); answers are the same and land in the same cache, "
        "so the two modes are interchangeable on one run root.",
        json_schema_extra=OPERATIONAL,
    )
    batch: BatchConfig = Field(
        default_factory=BatchConfig,
        description="The Batch API in mode 'batch': batch sizes, polling, resubmits, cancelling.",
        json_schema_extra=OPERATIONAL,
    )
    rpm: int | None = Field(
        None,
        ge=1,
        description="Requests per minute this role may send (a token bucket paces sending "
        "below it). Empty: no limit of our own; the provider's x-ratelimit-* headers still "
        "pace it when present.",
        json_schema_extra=OPERATIONAL,
    )
    tpm: int | None = Field(
        None,
        ge=1,
        description="Tokens per minute this role may use, counted as the provider's limiter "
        "counts them before answering: estimated prompt tokens plus max_tokens. Empty: no "
        "limit of our own; x-ratelimit-* headers still pace it when present.",
        json_schema_extra=OPERATIONAL,
    )
    expected_completion_tokens: int | None = Field(
        None,
        ge=1,
        description="Answer length assumed by `lion estimate` and the budget check, in "
        "tokens. Empty: max_tokens (an upper bound).",
        json_schema_extra=OPERATIONAL,
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip()
        if value != OFFLINE and not value.startswith(("http://", "https://")):
            raise ValueError("must be 'offline' or an http(s):// URL")
        return value

    @property
    def is_offline(self) -> bool:
        return self.base_url == OFFLINE


class TeacherConfig(EndpointConfig):
    """The teacher answers instructions (imitation stage)."""

    role_defaults: ClassVar[dict[str, Any]] = {"model": "offline-teacher"}


class RefereeConfig(EndpointConfig):
    """The referee scores teacher and student answers 1-10, in both orders."""

    role_defaults: ClassVar[dict[str, Any]] = {
        "model": "offline-referee",
        "temperature": 0.2,
        "max_tokens": 512,
    }
    json_mode: bool = Field(
        False,
        description="Ask for a JSON object (response_format=json_object) instead of score "
        "lines; only for endpoints that support structured output.",
    )
    reasks: int = Field(
        1, ge=0, le=5, description="Re-asks of a review whose scores cannot be parsed."
    )


class JudgeConfig(RefereeConfig):
    """The evaluation judge: the referee's fields and prompt, possibly a stronger model."""

    role_defaults: ClassVar[dict[str, Any]] = {"model": "offline-judge"}


class GeneratorConfig(EndpointConfig):
    """The generator writes new instructions from hard and easy seeds."""

    role_defaults: ClassVar[dict[str, Any]] = {
        "model": "offline-generator",
        "temperature": 1.0,
        "max_tokens": 256,
    }
    min_words: int = Field(
        4, ge=1, description="Drop candidates with fewer words (paper: more than 3)."
    )
    drop_non_ascii_start: bool = Field(
        True,
        description="Drop candidates starting with a non-ASCII character (the paper's rule; "
        "turn off for non-English data, which it would all throw away).",
    )
    oversample: float = Field(
        1.5,
        ge=1.0,
        le=10.0,
        description="Candidates requested per wanted instruction, to make up for filtering.",
    )
    max_attempts: int = Field(
        1,
        ge=1,
        le=20,
        description="Generation passes per round: a kind still short of novel instructions "
        "after a pass asks again for (shortfall × oversample) candidates, as the paper's "
        "generator loops until it has its instructions; the shortfall left is reported. "
        "1 = one pass.",
        json_schema_extra=ADDED,
    )
    max_category_share: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Most share of a round's new instructions one seed category (the offline "
        "world's family; for other data the seed's parent) may take: requests are spread "
        "over the categories of the hard/easy seeds in proportion, capped at this share, and "
        "kept instructions beyond it wait until the others are exhausted; a kind whose "
        "categories are all full cedes its shortfall to the other kind. Exceeded only when "
        "the seeds of both kinds have too few categories. 1 = no cap.",
        json_schema_extra=ADDED,
    )
