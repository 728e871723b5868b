"""`LionConfig`: the one configuration model behind the CLI, YAML files and the Prefect UI form.

Defaults follow the Lion paper (Jiang et al., 2023) where it says something, and otherwise give the
embedded default: the offline task world as teacher, referee and generator, a tiny student built
from config, storage in a local folder. Every field carries a description, which Prefect shows in
its run form. Unknown keys are rejected, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from lion_core.errors import ConfigError

OFFLINE = "offline"

# Fields marked operational change how work is done (where and how requests are sent, how many
# GPUs, how long to wait), never what is produced: they may differ between invocations on one
# run root and never enter a cache key. The mark sits next to each field.
OPERATIONAL: dict[str, Any] = {"operational": True}

# Fields added after run roots existed: the default reproduces what runs did before the field
# existed, and a field at its default is left out of the digest, so those roots' tasks stay
# cached (their run.json lacks the field, which loads as the default).
ADDED: dict[str, Any] = {"added": True}


def section_model(annotation: object) -> type[BaseModel] | None:
    """The config section type behind a field's annotation (`X`, `X | None`), else None."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _added_defaults(model: type[BaseModel], value: dict[str, Any]) -> dict[str, Any]:
    """`value` (a section's JSON dump) without the ADDED fields that are at their default."""
    out = {}
    for key, item in value.items():
        field = model.model_fields.get(key)
        sub = section_model(field.annotation) if field is not None else None
        extra = (field.json_schema_extra or {}) if field is not None else {}
        if extra.get("added") and item == _json_default(field):
            continue
        if (
            sub is not None
            and isinstance(item, dict)
            and typing.get_origin(field.annotation) is not dict
        ):
            item = _added_defaults(sub, item)
        out[key] = item
    return out


def _json_default(field: FieldInfo) -> Any:
    default = field.get_default(call_default_factory=True)
    return default.model_dump(mode="json") if isinstance(default, BaseModel) else default


def is_operational(path: str) -> bool:
    """Whether a dotted field path (or anything below it) is marked operational."""
    model: type[BaseModel] | None = LionConfig
    for part in path.split("."):
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return False
        if (field.json_schema_extra or {}).get("operational"):
            return True
        model = section_model(field.annotation)
    return False


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# LLM endpoints: teacher, referee, generator
# --------------------------------------------------------------------------------------------


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
        16, ge=1, le=1024, description="Requests in flight at once.", json_schema_extra=OPERATIONAL
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
    batch_size: int = Field(
        256,
        ge=1,
        description="Requests per Parquet shard of the response cache. Every answer is kept "
        "as it arrives (a journal on local storage; on object stores a flush every few "
        "seconds), so a killed process pays again only for requests in flight.",
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
        "answers within 24 h); answers are the same and land in the same cache, so the two "
        "modes are interchangeable on one run root.",
        json_schema_extra=OPERATIONAL,
    )
    batch_max_requests: int = Field(
        50_000,
        ge=1,
        description="Batch mode: most requests in one batch (OpenAI: 50,000); more are split.",
        json_schema_extra=OPERATIONAL,
    )
    batch_max_bytes: int = Field(
        200_000_000,
        ge=1024,
        description="Batch mode: largest JSONL input file of one batch in bytes (OpenAI: "
        "200 MB); more are split.",
        json_schema_extra=OPERATIONAL,
    )
    batch_poll_seconds: float = Field(
        30.0,
        gt=0,
        description="Batch mode: seconds between the first status polls; the interval grows "
        "by half each poll up to batch_poll_max_seconds.",
        json_schema_extra=OPERATIONAL,
    )
    batch_poll_max_seconds: float = Field(
        600.0,
        gt=0,
        description="Batch mode: longest interval between two status polls.",
        json_schema_extra=OPERATIONAL,
    )
    batch_resubmits: int = Field(
        2,
        ge=0,
        le=20,
        description="Batch mode: times a failed or expired line is resubmitted, alone, in a "
        "following batch (never the whole batch) before it counts as failed.",
        json_schema_extra=OPERATIONAL,
    )
    cancel_batches_on_cancel: bool = Field(
        True,
        description="Batch mode: cancel this role's in-flight batches when the run is "
        "cancelled or interrupted (lines already answered are kept and paid; the others are "
        "not). Off: they finish at the provider, and a resumed run collects them.",
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

    role_defaults = {"model": "offline-teacher"}


class RefereeConfig(EndpointConfig):
    """The referee scores teacher and student answers 1-10, in both orders."""

    role_defaults = {"model": "offline-referee", "temperature": 0.2, "max_tokens": 512}
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

    role_defaults = {"model": "offline-judge"}


class GeneratorConfig(EndpointConfig):
    """The generator writes new instructions from hard and easy seeds."""

    role_defaults = {"model": "offline-generator", "temperature": 1.0, "max_tokens": 256}
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
        "kept instructions beyond it wait until the others are exhausted. Exceeded only when "
        "the seeds have too few categories (the referee's hard set demands it). 1 = no cap.",
        json_schema_extra=ADDED,
    )


# --------------------------------------------------------------------------------------------
# Student and training
# --------------------------------------------------------------------------------------------


class TinyModelSpec(Section):
    """A small Llama-architecture model built from config, with a locally trained tokenizer."""

    vocab_size: int = Field(2048, ge=64, description="Tokenizer vocabulary size (BPE, trained).")
    hidden_size: int = Field(128, ge=8, description="Hidden size.")
    intermediate_size: int = Field(384, ge=8, description="MLP intermediate size.")
    num_layers: int = Field(2, ge=1, description="Transformer layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_kv_heads: int | None = Field(None, ge=1, description="KV heads (GQA); empty = num_heads.")
    max_position_embeddings: int = Field(1024, ge=16, description="Longest sequence.")

    @model_validator(mode="after")
    def _check_heads(self) -> TinyModelSpec:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.num_kv_heads and self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be divisible by num_kv_heads")
        return self


class StudentServerConfig(Section):
    """`engine: server`: the student served over the OpenAI API (vLLM, SGLang, lion
    serve-student), started on the checkpoint for the task, or kept warm by the user."""

    # The placeholders a command may use (docs/student.md).
    PLACEHOLDERS: ClassVar[tuple[str, ...]] = ("model", "port", "host", "name", "tp", "python")

    command: str | None = Field(
        None,
        description="Command that serves the student, started for each answering task as a "
        "supervised process group, with placeholders {model} (the checkpoint folder), {port}, "
        "{host}, {name} (the served model name), {tp} (tensor_parallel) and {python} (this "
        "interpreter), e.g. 'vllm serve {model} --host {host} --port {port} "
        "--served-model-name {name} --tensor-parallel-size {tp}'. Empty: lion serve-student.",
        json_schema_extra=OPERATIONAL,
    )
    base_url: str | None = Field(
        None,
        description="An endpoint that already serves this student (e.g. http://gpu-box:8000/v1), "
        "kept warm by the user: no server is started and `command` is ignored.",
        json_schema_extra=OPERATIONAL,
    )
    name: str = Field(
        "student", description="The served model name.", json_schema_extra=OPERATIONAL
    )
    tensor_parallel: int = Field(
        1, ge=1, description="GPUs per model replica ({tp}).", json_schema_extra=OPERATIONAL
    )
    host: str = Field(
        "127.0.0.1",
        description="Interface the started server binds ({host}); the task connects to it.",
        json_schema_extra=OPERATIONAL,
    )
    ready_timeout: float = Field(
        1800.0,
        gt=0,
        description="Seconds to wait for a started server to list the model at /v1/models "
        "(loading a 70B model takes minutes).",
        json_schema_extra=OPERATIONAL,
    )
    concurrency: int = Field(
        256,
        ge=1,
        le=1024,
        description="Requests in flight at once: the server batches them, so enough to fill "
        "its batches (vLLM's --max-num-seqs is 256 by default; times the data-parallel size).",
        json_schema_extra=OPERATIONAL,
    )
    timeout: float = Field(
        600.0, gt=0, description="Seconds to wait for one answer.", json_schema_extra=OPERATIONAL
    )
    batch_size: int = Field(
        256,
        ge=1,
        description="Answers per Parquet shard of the response cache. Every answer is kept as "
        "it arrives (a journal on local storage; on object stores a flush every few seconds), so "
        "a killed task re-sends only the requests that were in flight.",
        json_schema_extra=OPERATIONAL,
    )
    api_key_env: str | None = Field(
        None,
        description="Environment variable holding the server's API key (vLLM --api-key); "
        "empty: none.",
        json_schema_extra=OPERATIONAL,
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip().startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return value.strip() if value else value

    @field_validator("command")
    @classmethod
    def _check_command(cls, value: str | None) -> str | None:
        if value is None:
            return value
        import string

        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(f"not a command template: {exc}") from exc
        unknown = sorted({f for f in fields if f not in cls.PLACEHOLDERS})
        if unknown:
            raise ValueError(f"unknown placeholder(s) {unknown}; known: {list(cls.PLACEHOLDERS)}")
        return value


class StudentGenerationConfig(Section):
    """How the student answers the cache pool."""

    max_new_tokens: int = Field(512, ge=1, description="Longest answer, in tokens.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(0.7, gt=0.0, le=2.0, description="Temperature when sampling.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus mass when sampling.")
    token_budget: int = Field(
        16384,
        ge=64,
        description="Tokens per generation batch (prompt + new tokens, times batch size); "
        "halved automatically on out-of-memory.",
        json_schema_extra=OPERATIONAL,
    )
    num_gpus: int | None = Field(
        None,
        ge=1,
        description="GPUs for generation, one process each; empty = all visible.",
        json_schema_extra=OPERATIONAL,
    )
    engine: Literal["hf", "server"] = Field(
        "hf",
        description="'hf': batched Hugging Face generation in the task's process(es); "
        "'server': through an OpenAI-compatible server (vLLM, SGLang, lion serve-student), "
        "see `server`. Greedy answers through lion serve-student equal the 'hf' ones; answers "
        "already made are kept when the engine changes.",
        json_schema_extra=OPERATIONAL,
    )
    server: StudentServerConfig = Field(
        default_factory=StudentServerConfig,
        description="The served engine (engine: server).",
        json_schema_extra=OPERATIONAL,
    )


class StudentConfig(Section):
    """The student: a Hugging Face causal LM from a path or hub id, or a tiny one from config."""

    model: str | None = Field(
        None, description="Local path or hub id of the base model (e.g. meta-llama/Llama-2-7b-hf)."
    )
    tiny: TinyModelSpec | None = Field(
        None,
        description="Build a tiny Llama-style model from this spec instead (tests, offline demo).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub.")
    attn_implementation: str = Field(
        "sdpa", description="Attention kernel: sdpa, flash_attention_2 or eager."
    )
    prompt_template: Literal["alpaca", "chat_template"] = Field(
        "alpaca",
        description="Prompt format for training and inference: the Alpaca template, or the "
        "tokenizer's own chat template.",
    )
    generation: StudentGenerationConfig = Field(
        default_factory=StudentGenerationConfig, description="How the student answers."
    )

    @model_validator(mode="after")
    def _one_source(self) -> StudentConfig:
        if self.model is None and self.tiny is None:
            self.tiny = TinyModelSpec()
        if self.model is not None and self.tiny is not None:
            raise ValueError("give either 'model' or 'tiny', not both")
        return self


class LoraSpec(Section):
    """LoRA adapters through peft."""

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="Adapter scaling.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Adapter dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get adapters.",
    )


class TrainingConfig(Section):
    """Fine-tuning the student on the teacher's answers (loss on response tokens only)."""

    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate (paper: 2e-5).")
    epochs: float = Field(3.0, gt=0, description="Passes over the train pool (paper: 3).")
    max_length: int = Field(1024, ge=16, description="Tokens per example; longer are truncated.")
    micro_batch_size: int = Field(
        4,
        ge=1,
        description="Examples per GPU per step with padding; with packing, the token "
        "budget per step is micro_batch_size * max_length.",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps per optimizer update.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name.")
    packing: bool = Field(
        True,
        description="Pack examples into padding-free batches; attention never crosses an "
        "example's boundary. Off: pad each batch to its longest example.",
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    offload_optimizer: bool = Field(False, description="ZeRO: keep optimizer state on the CPU.")
    offload_param: bool = Field(False, description="ZeRO-3: keep parameters on the CPU.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    launcher: Literal["deepspeed", "python"] = Field(
        "deepspeed",
        description="'deepspeed': the deepspeed launcher (several GPUs/nodes); 'python': one "
        "plain process without DeepSpeed.",
        json_schema_extra=OPERATIONAL,
    )
    num_gpus: int | None = Field(
        None,
        ge=1,
        description="GPUs (or CPU ranks with no GPU) per node; empty = all visible.",
        json_schema_extra=OPERATIONAL,
    )
    num_nodes: int = Field(
        1, ge=1, description="Nodes to train on (needs hostfile).", json_schema_extra=OPERATIONAL
    )
    hostfile: str | None = Field(
        None, description="DeepSpeed hostfile for several nodes.", json_schema_extra=OPERATIONAL
    )
    master_port: int | None = Field(
        None, ge=1024, le=65535, description="Rendezvous port.", json_schema_extra=OPERATIONAL
    )
    init_from: Literal["base", "previous"] = Field(
        "base",
        description="'base': retrain from the base model on the whole train pool each round; "
        "'previous': continue from the last round's student.",
    )
    save_steps: int = Field(200, ge=1, description="Checkpoint every N optimizer steps.")
    keep_checkpoints: bool = Field(
        False,
        description="Keep the round's last training checkpoint (weights and optimizer state, "
        "for resuming that training) once its student is committed. Off: the round's "
        "checkpoints are deleted then (a 7B student's are ~100 GB a round).",
        json_schema_extra=OPERATIONAL,
    )
    logging_steps: int = Field(10, ge=1, description="Log the loss every N steps.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Where the Trainer also logs the loss and learning rate every "
        "logging_steps: tensorboard (event files in round=<k>/tensorboard of the run's "
        "storage; needs the tensorboard package), wandb, mlflow (configured by their own "
        "environment variables, e.g. WANDB_PROJECT, MLFLOW_TRACKING_URI). Empty: nowhere.",
        json_schema_extra=OPERATIONAL,
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after N steps (overrides epochs).")
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters instead of all weights.")
    timeout: float | None = Field(
        None, gt=0, description="Seconds before training is killed.", json_schema_extra=OPERATIONAL
    )


# --------------------------------------------------------------------------------------------
# Pools, stages, storage, offline world
# --------------------------------------------------------------------------------------------


class PoolsConfig(Section):
    """The Train Pool and the Cache Pool."""

    initial_data: str | None = Field(
        None,
        description="Seed instructions: Alpaca-format JSON or JSONL, Parquet or CSV (local path "
        "or URI). Empty: seeds drawn from the offline task world.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N seed instructions.")
    max_instruction_chars: int = Field(
        20000,
        ge=1,
        description="Seed rows whose instruction + input exceed this many characters are left "
        "out at load time (counted and reported): one 50 MiB instruction drove peak memory to "
        "9.5 GB and was sent to the teacher and twice to the referee.",
    )
    offline_seeds: int = Field(
        120, ge=1, description="Seeds drawn from the offline world when initial_data is empty."
    )
    new_per_round: int = Field(
        6000, ge=0, description="New instructions to add per round (paper: 6,000)."
    )
    hard_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of new instructions generated from hard seeds (paper hard:easy 1:1 "
        "= 0.5).",
    )
    cache_pool: Literal["new", "all"] = Field(
        "new",
        description="Next round's Cache Pool: 'new' = only the new instructions (paper), "
        "'all' = the whole Train Pool.",
    )
    holdback: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of each round's new instructions held back from the next round's "
        "training: they alone make its Cache Pool (with cache_pool 'new'), so the referee "
        "judges instructions the student has not been trained on, and they join the Train "
        "Pool one round later. 0 = the paper (the Cache Pool is what the student just "
        "learned; a small student trained many epochs reproduces it, and the split measures "
        "memory, docs/method.md).",
        json_schema_extra=ADDED,
    )


class DiscriminationConfig(Section):
    tau: float = Field(
        1.0, ge=0.0, le=9.0, description="Hard if teacher score - student score >= tau (paper 1.0)."
    )


DEFAULT_REFUSALS = [
    r"^\W*(I'?m|I am) sorry",
    r"\bI (can(no|')t|am unable to|'m unable to|won'?t be able to) (help|assist|answer|do|provide)",
    r"\bas an AI\b",
]


class DataHealthConfig(Section):
    """Checks of the teacher's answers each round: refusals, identical answers and empty ones
    are logged as warnings, and degenerate answers stop the run before a student learns them;
    and of the new instructions: the share far from every seed's domain is a warning."""

    refusal_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSALS),
        description="Regular expressions (case-insensitive, searched in the first 300 "
        "characters of each answer) that mark a refusal.",
        json_schema_extra=OPERATIONAL,
    )
    warn_share: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Warn when this share of the teacher's answers or more are refusals, "
        "identical to each other, or empty.",
        json_schema_extra=OPERATIONAL,
    )
    max_share: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Above this share of refusals, identical or empty answers, the teacher's "
        "answers are degenerate: the round stops before the student trains on them.",
        json_schema_extra=OPERATIONAL,
    )
    allow_degenerate: bool = Field(
        False,
        description="Go on with degenerate teacher answers (a warning instead of an error).",
        json_schema_extra=OPERATIONAL,
    )
    far_rouge_l: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        description="A new instruction whose ROUGE-L F1 with every seed instruction is at most "
        "this is far from the seeds' domain (instructions of one domain score about 0.2 and "
        "more against each other).",
        json_schema_extra=OPERATIONAL,
    )
    far_warn_share: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Warn when this share of a round's new instructions or more is far from "
        "the seeds' domain (generation drifting away from the initial data).",
        json_schema_extra=OPERATIONAL,
    )

    @field_validator("refusal_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {pattern!r} ({exc})") from None
        return patterns


class NoveltyConfig(Section):
    threshold: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="Drop a new instruction whose ROUGE-L F1 with any pool instruction exceeds "
        "this (paper 0.7).",
    )


# The data files a path in the config may name (seed data, question sets).
DATA_FORMATS = (".jsonl", ".json", ".parquet", ".csv")


class EvaluationConfig(Section):
    """The Lion paper's yardstick: a judge scores the teacher's and the student's answers to
    held-out questions 1-10 in both orders; the student's relative score is the sum of its
    scores over the teacher's (1.0 = teacher level)."""

    sets: list[str] = Field(
        default_factory=list,
        description="Question sets (local paths or URIs): Vicuna/MT-Bench JSONL (question_id, "
        "category, turns: the first turn is asked), Alpaca JSON/JSONL, Parquet or CSV "
        "(instruction, input, optional question_id, category, reference). 'offline' = the "
        "offline world's held-out set, which no pool ever contains. Empty: no evaluation.",
    )
    every_round: bool = Field(
        True, description="Evaluate the student after every round; off: after the last only."
    )
    sample: int | None = Field(
        None,
        ge=1,
        description="Judge at most N questions per set: a fixed sample (chosen by a hash of "
        "question_id), the same in every round and run. Empty: every question.",
    )
    bootstrap: int = Field(
        1000,
        ge=0,
        le=100_000,
        description="Bootstrap resamples of the questions for the 95% interval of the relative "
        "score (seeded by the run's seed); 0: no interval.",
    )
    offline_per_cell: int = Field(
        2,
        ge=1,
        le=50,
        description="Questions per family and difficulty (1..offline.max_difficulty) in the "
        "'offline' held-out set; odd-numbered ones ask the family's rare variant.",
    )
    lm_eval_tasks: list[str] = Field(
        default_factory=list,
        description="lm-evaluation-harness tasks run on the student (e.g. bbh_zeroshot, "
        "agieval_en; needs the 'eval' extra); empty: none.",
    )
    lm_eval_include_path: str | None = Field(
        None,
        description="A folder of your own lm-eval task YAMLs (lm-eval's include_path), e.g. a "
        "task over a local JSON file.",
    )
    lm_eval_limit: int | None = Field(
        None, ge=1, description="Evaluate at most N documents per lm-eval task (quick checks)."
    )
    lm_eval_num_fewshot: int | None = Field(
        None, ge=0, description="Few-shot examples per lm-eval prompt; empty: each task's own."
    )

    @field_validator("sets")
    @classmethod
    def _check_sets(cls, value: list[str]) -> list[str]:
        value = [v.strip() for v in value]
        for v in value:
            if v != OFFLINE and not v.lower().endswith(DATA_FORMATS):
                raise ValueError(f"{v!r}: must be 'offline' or end in {', '.join(DATA_FORMATS)}")
        duplicates = sorted({v for v in value if value.count(v) > 1})
        if duplicates:
            raise ValueError(f"listed more than once: {duplicates}")
        return value


class StorageConfig(Section):
    root: str = Field(
        "lion-runs/default",
        description="The run's root: a local folder, or s3://bucket/prefix (any S3-compatible "
        "store). Pools, caches, checkpoints and task results all live under it.",
    )
    shared_llm_cache: str | None = Field(
        None,
        description="A response cache shared by several runs (a folder or s3:// URI), e.g. the "
        "arms of `lion ablate`: an identical request answered for one run is not paid again "
        "for another. Empty: the run's own llm_cache/.",
        json_schema_extra=OPERATIONAL,
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec/s3fs options, e.g. {endpoint_url: http://minio:9000}. Credentials "
        "come from the environment (AWS_ACCESS_KEY_ID, ...), never from here.",
        json_schema_extra=OPERATIONAL,
    )

    lease_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds without a heartbeat after which another run may take over the "
        "root's lease (lease.json) from a run that died; the hosts' clocks must agree to well "
        "within it. On the same host a lease whose process is gone is taken over at once.",
        json_schema_extra=OPERATIONAL,
    )
    lease_heartbeat: float = Field(
        15.0,
        gt=0,
        description="Seconds between two refreshes of the lease by the run holding it; at most "
        "a third of lease_timeout.",
        json_schema_extra=OPERATIONAL,
    )

    # Option names that carry a credential (s3fs, botocore, fsspec), at any depth: options are
    # recorded in run.json, so a secret here would be written to storage.
    SECRET_OPTION_KEYS: ClassVar[frozenset[str]] = frozenset(
        {
            "key",
            "secret",
            "token",
            "password",
            "access_key_id",
            "secret_access_key",
            "session_token",
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
        }
    )

    @field_validator("options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        found: list[str] = []

        def walk(node: Any, path: str) -> None:
            if isinstance(node, dict):
                for key, child in node.items():
                    dotted = f"{path}.{key}"
                    if str(key).lower() in cls.SECRET_OPTION_KEYS:
                        found.append(dotted)
                    walk(child, dotted)
            elif isinstance(node, list | tuple):
                for i, child in enumerate(node):
                    walk(child, f"{path}[{i}]")

        walk(value, "storage.options")
        if found:
            raise ValueError(
                f"credentials must come from the environment (AWS_ACCESS_KEY_ID, ...), never from "
                f"the config, which is recorded in run.json: remove {', '.join(found)}"
            )
        return value

    @model_validator(mode="after")
    def _heartbeat_within_timeout(self) -> StorageConfig:
        if self.lease_heartbeat * 3 > self.lease_timeout:
            raise ValueError(
                f"lease_heartbeat ({self.lease_heartbeat:g} s) must be at most a third of "
                f"lease_timeout ({self.lease_timeout:g} s), or a live run's lease looks stale"
            )
        return self


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


class PlacementConfig(Section):
    """Where the GPU stages run. Empty: in the flow run itself (one machine, as `lion run`)."""

    gpu_deployment: str | None = Field(
        None,
        pattern=r"^[^/\s]+/[^/\s]+$",
        description="A Prefect deployment of the `lion-gpu-stage` flow ('flow/deployment', e.g. "
        "lion-gpu-stage/gpu-pool) on a GPU work pool. Set: training the student and the "
        "student's answers (Cache Pool, evaluation sets) run as flow runs of it, and this run "
        "(teacher, referee, generator, Parquet) only waits for them, on a CPU work pool; the "
        "results travel through the run's storage, so it must be shared (s3://). Empty: "
        "everything runs in this flow run.",
        json_schema_extra=OPERATIONAL,
    )
    poll_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Seconds between two looks at a GPU-stage flow run this run waits for.",
        json_schema_extra=OPERATIONAL,
    )


# --------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------


class LionConfig(Section):
    """One Lion distillation run."""

    name: str = Field(
        "lion",
        description="Name of the run (shown in Prefect and run.json).",
        json_schema_extra=OPERATIONAL,
    )
    rounds: int = Field(
        3, ge=1, le=100, description="Lion rounds (paper: 3).", json_schema_extra=OPERATIONAL
    )
    seed: int = Field(0, description="Seed for sampling, training and the offline world.")
    arm: Literal["lion", "uniform", "seed-only"] = Field(
        "lion",
        description="The method. 'lion': the paper's loop (the referee picks hard and easy "
        "seeds). 'uniform': the paper's remove-the-referee ablation: as many new instructions, "
        "from Cache Pool seeds drawn uniformly at random, no referee asked. 'seed-only': no new "
        "instructions; each round trains on the seeds for as many epochs as lion's growing "
        "pool would take. `lion ablate` runs them side by side.",
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Where data lives.")
    pools: PoolsConfig = Field(default_factory=PoolsConfig, description="Train and Cache Pools.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Teacher endpoint.")
    referee: RefereeConfig = Field(default_factory=RefereeConfig, description="Referee endpoint.")
    judge: JudgeConfig | None = Field(
        None,
        description="Evaluation judge endpoint, asked the referee's prompt in both orders. "
        "Empty: the referee's settings. The paper refereed with ChatGPT (also the teacher) but "
        "judged with GPT-4, so that the yardstick does not grade its own answers; e.g. "
        "{base_url: https://api.openai.com/v1, model: gpt-4, api_key_env: OPENAI_API_KEY}. "
        "The offline world answers any model name here (offline-judge) as the referee.",
    )
    generator: GeneratorConfig = Field(
        default_factory=GeneratorConfig, description="Generator endpoint."
    )
    student: StudentConfig = Field(default_factory=StudentConfig, description="The student.")
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="Student fine-tuning."
    )
    discrimination: DiscriminationConfig = Field(
        default_factory=DiscriminationConfig, description="Hard/easy split."
    )
    data_health: DataHealthConfig = Field(
        default_factory=DataHealthConfig,
        description="Refusals, identical and empty teacher answers: warnings, and a stop.",
        json_schema_extra=OPERATIONAL,  # checks what is produced; changes none of it
    )
    novelty: NoveltyConfig = Field(
        default_factory=NoveltyConfig, description="ROUGE-L novelty filter."
    )
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig, description="Judged evaluation on held-out questions."
    )
    offline: OfflineWorldConfig = Field(
        default_factory=OfflineWorldConfig, description="The offline task world."
    )
    pricing: dict[str, ModelPrice] = Field(
        default_factory=default_prices,
        description=f"USD per million input and output tokens, and the batch discount, per "
        f"model name (its longest listed prefix matches). Default: list prices as of "
        f"{PRICES_AS_OF} for common OpenAI models; an unlisted model costs 0 (with a "
        f"warning). Used by `lion estimate`, the live cost and budget_usd.",
        json_schema_extra=OPERATIONAL,
    )
    budget_usd: float | None = Field(
        None,
        gt=0,
        description="Most USD the run may spend on LLM requests (the answers in its response "
        "cache, priced by `pricing`). Before a stage sends anything, spent + the stage's "
        "estimate is checked against it; over it, the run stops with BudgetExceeded, nothing "
        "sent. Raise it and `lion resume`. Empty: no cap.",
        json_schema_extra=OPERATIONAL,
    )
    placement: PlacementConfig = Field(
        default_factory=PlacementConfig,
        description="Where the GPU stages run (deployments on a GPU work pool).",
        json_schema_extra=OPERATIONAL,
    )

    # ---- YAML --------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path) -> LionConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(data or {}, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "config") -> LionConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source)) from None

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def with_overrides(self, overrides: dict[str, Any]) -> LionConfig:
        """A copy with dotted-path overrides applied, e.g. {"training.epochs": 1}."""
        data = self.model_dump(mode="json")
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            node[leaf] = value
        return LionConfig.from_dict(data, source="overrides")

    def digest(self) -> str:
        """sha256 of every non-operational field: what the run's products depend on (part of
        every task's cache key)."""
        data = _drop_operational(_added_defaults(LionConfig, self.model_dump(mode="json")), "")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def judge_endpoint(self) -> RefereeConfig:
        """The evaluation judge: the `judge` section, or the referee's when it is empty."""
        return self.judge if self.judge is not None else self.referee

    def endpoints(self) -> dict[str, EndpointConfig]:
        return {
            "teacher": self.teacher,
            "referee": self.referee,
            "judge": self.judge_endpoint(),
            "generator": self.generator,
        }


def _drop_operational(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        dotted = {k: f"{path}.{k}" if path else k for k in value}
        return {
            k: _drop_operational(v, dotted[k])
            for k, v in value.items()
            if not is_operational(dotted[k])
        }
    return value


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each starting with the dotted path of the field."""
    lines = [f"{source}: invalid configuration ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)
