"""`LionConfig`: the whole run's configuration — its sections, loading (YAML files, local or
s3://; mappings; dotted-path overrides), the digest of what its products depend on, and which
fields are operational."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import fsspec
import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from lion_core.config.base import OPERATIONAL, Section, added_defaults, section_model
from lion_core.config.endpoints import (
    EndpointConfig,
    GeneratorConfig,
    JudgeConfig,
    RefereeConfig,
    TeacherConfig,
)
from lion_core.config.evaluation import EvaluationConfig
from lion_core.config.legacy import upgrade_keys, upgrade_overrides
from lion_core.config.method import (
    DataHealthConfig,
    DiscriminationConfig,
    NoveltyConfig,
    PoolsConfig,
)
from lion_core.config.offline import OfflineWorldConfig
from lion_core.config.placement import PlacementConfig
from lion_core.config.pricing import PRICES_AS_OF, ModelPrice, default_prices
from lion_core.config.storage import StorageConfig
from lion_core.config.student import StudentConfig
from lion_core.config.training import TrainingConfig
from lion_core.errors import ConfigError


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
        "cache, priced by `pricing`; on a shared cache, `storage.shared_llm_cache`, those this "
        "run paid for: each arm of an ablation has this budget). Before a stage sends "
        "anything, spent + the stage's estimate is checked against it; over it, the run "
        "stops with BudgetExceeded, nothing sent. Raise it and `lion resume`. Empty: no cap.",
        json_schema_extra=OPERATIONAL,
    )
    placement: PlacementConfig = Field(
        default_factory=PlacementConfig,
        description="Where the GPU stages run (deployments on a GPU work pool).",
        json_schema_extra=OPERATIONAL,
    )

    # ---- YAML --------------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        """Keys renamed since a config was written (a flow run's parameters, say) load in their
        new places, with a warning (lion_core/config/legacy.py)."""
        return upgrade_keys(data) if isinstance(data, dict) else data

    @classmethod
    def from_yaml(
        cls,
        uri: str | Path,
        options: dict[str, Any] | None = None,
        *,
        what: str = "config file",
    ) -> LionConfig:
        """The one YAML loader: a config from a local path or a URI (s3://bucket/cfg.yaml, read
        with fsspec `options`; without them s3fs takes the endpoint from AWS_ENDPOINT_URL and
        credentials from the environment). `what` names the file in errors."""
        uri = str(uri)
        try:
            with fsspec.open(uri, "r", **(options or {})) as fh:
                text = fh.read()
        except (OSError, ValueError, ImportError) as exc:
            raise ConfigError(f"{what}: cannot read {uri}: {exc}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{what} {uri}: not valid YAML: {exc}") from exc
        return cls.from_dict(data or {}, source=uri)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "config") -> LionConfig:
        """A config from a mapping (parsed YAML, run.json); errors name `source` and each
        field's dotted path, and renamed keys load with a warning that names `source`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
        data = upgrade_keys(data, source)
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
        for dotted, value in upgrade_overrides(overrides, "overrides").items():
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
        data = _drop_operational(added_defaults(LionConfig, self.model_dump(mode="json")), "")
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
