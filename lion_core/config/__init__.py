"""`LionConfig`: the one configuration model behind the CLI, YAML files and the Prefect UI form.

Defaults follow the Lion paper (Jiang et al., 2023) where it says something, and otherwise give the
embedded default: the offline task world as teacher, referee and generator, a tiny student built
from config, storage in a local folder. Every field carries a description, which Prefect shows in
its run form. Unknown keys are rejected, so a typo never silently falls back to a default; keys
that were renamed still load, with a warning (legacy.py).

One module per concern, every public name re-exported here:

- base.py: `Section` (the base of every section), the operational mark, `OFFLINE`;
- endpoints.py: the LLM endpoints (teacher, referee, judge, generator) and their Batch API;
- student.py: the student, how it answers, the served engine;
- training.py: fine-tuning the student;
- method.py: the paper's stages: pools, hard/easy split, novelty, data health;
- evaluation.py: the judged evaluation and lm-eval;
- storage.py: where a run's data lives, and its lease;
- offline.py: the offline task world and its fault injection;
- pricing.py: what requests cost;
- placement.py: where the GPU stages run;
- model.py: `LionConfig` itself: loading, overrides, the digest, operational paths;
- legacy.py: renamed keys, and how a config that still has them loads;
- presets.py, doc.py: the ready-made configs, the generated reference.
"""

from __future__ import annotations

from lion_core.config.base import OFFLINE, OPERATIONAL, Section, section_model
from lion_core.config.endpoints import (
    BatchConfig,
    EndpointConfig,
    GeneratorConfig,
    JudgeConfig,
    RefereeConfig,
    TeacherConfig,
)
from lion_core.config.evaluation import DATA_FORMATS, DecontaminateConfig, EvaluationConfig
from lion_core.config.method import (
    DEFAULT_REFUSALS,
    DataHealthConfig,
    DiscriminationConfig,
    NoveltyConfig,
    PoolsConfig,
)
from lion_core.config.model import LionConfig, format_validation_error, is_operational
from lion_core.config.offline import FaultsConfig, OfflineWorldConfig
from lion_core.config.placement import PlacementConfig
from lion_core.config.pricing import DEFAULT_PRICES, PRICES_AS_OF, ModelPrice, default_prices
from lion_core.config.storage import StorageConfig
from lion_core.config.student import (
    StudentConfig,
    StudentGenerationConfig,
    StudentServerConfig,
    TinyModelSpec,
)
from lion_core.config.training import LoraSpec, TrainingConfig

__all__ = [
    "DATA_FORMATS",
    "DEFAULT_PRICES",
    "DEFAULT_REFUSALS",
    "OFFLINE",
    "OPERATIONAL",
    "PRICES_AS_OF",
    "BatchConfig",
    "DataHealthConfig",
    "DecontaminateConfig",
    "DiscriminationConfig",
    "EndpointConfig",
    "EvaluationConfig",
    "FaultsConfig",
    "GeneratorConfig",
    "JudgeConfig",
    "LionConfig",
    "LoraSpec",
    "ModelPrice",
    "NoveltyConfig",
    "OfflineWorldConfig",
    "PlacementConfig",
    "PoolsConfig",
    "RefereeConfig",
    "Section",
    "StorageConfig",
    "StudentConfig",
    "StudentGenerationConfig",
    "StudentServerConfig",
    "TeacherConfig",
    "TinyModelSpec",
    "TrainingConfig",
    "default_prices",
    "format_validation_error",
    "is_operational",
    "section_model",
]
