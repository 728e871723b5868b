"""The student: a Hugging Face causal LM (or a tiny one built from config), and how it answers:
batched HF generation or a served engine (vLLM, SGLang, lion serve-student)."""

from __future__ import annotations

import string
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from lion_core.config.base import ADDED, OPERATIONAL, Section


class TinyModelSpec(Section):
    """A small Llama-architecture model built from config, with a locally trained tokenizer."""

    vocab_size: int = Field(2048, ge=64, description="Tokenizer vocabulary size (BPE, trained).")
    hidden_size: int = Field(128, ge=8, description="Hidden size.")
    intermediate_size: int = Field(384, ge=8, description="MLP intermediate size.")
    num_layers: int = Field(2, ge=1, description="Transformer layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_kv_heads: int | None = Field(None, ge=1, description="KV heads (GQA); empty = num_heads.")
    max_position_embeddings: int = Field(1024, ge=16, description="Longest sequence.")
    split_digits: bool = Field(
        False,
        description="Split numbers into single digits before BPE, as Llama's tokenizer does "
        "(docs/offline-world.md: what it changes for the demo's student).",
        json_schema_extra=ADDED,
    )

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
    cache_shard_size: int = Field(
        256,
        ge=1,
        description="Answers per Parquet shard of the response cache (formerly batch_size). "
        "Every answer is kept as it arrives (a journal on local storage; on object stores a "
        "flush every few seconds), so a killed task re-sends only the requests that were in "
        "flight.",
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
