"""`lion-run`: a Lion distillation run from a short form — the fields a person changes per run,
a preset, and the full config reachable as a YAML file and an `overrides` mapping — for the
Prefect UI's run form (a `lion-distill` deployment's form shows every field of LionConfig).
It builds the config (`lion_core.config.presets.form_config`) and runs `lion-distill` as a
subflow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.distill import lion_distill
from flows.names import descriptive
from lion_core.config.presets import Preset, form_config
from lion_core.run.records import RunSummary


def _form_run_name(parameters: dict[str, Any]) -> str:
    return str(parameters.get("name") or f"lion-{parameters.get('preset', 'demo')}")


@flow(name="lion-run", flow_run_name=descriptive(_form_run_name), persist_result=True)
def lion_run(
    preset: Preset = "demo",
    name: str = "",
    rounds: int = 0,
    storage_root: str = "",
    initial_data: str = "",
    teacher_base_url: str = "",
    teacher_model: str = "",
    referee_base_url: str = "",
    referee_model: str = "",
    generator_base_url: str = "",
    generator_model: str = "",
    student_model: str = "",
    config_file: str = "",
    overrides: dict[str, Any] = {},  # noqa: B006 (Prefect copies parameters)
) -> RunSummary:
    """Run Lion distillation from a preset and the few fields below; an empty field keeps the
    preset's (or the config file's) value.

    Args:
        preset: A coherent starting point. demo: the offline world and a tiny student (learning
            rate 1e-3, 20 epochs). paper-7b: the paper's setting, a Llama-2-7b student (2e-5,
            3 epochs, ZeRO-3). gpu-1b: a 1.1B TinyLlama student on one GPU (2e-5, 3 epochs).
        name: The run's name (artifact keys, the run's title). Empty: the preset's.
        rounds: Lion rounds to run. 0: the preset's (3).
        storage_root: Where the run's data lives: a folder or s3://bucket/prefix. A root is
            bound to its config; another experiment needs another root.
        initial_data: Seed instructions (Alpaca JSON/JSONL, Parquet or CSV; path or URI).
            Empty: the offline world's seeds.
        teacher_base_url: The teacher's OpenAI-compatible base URL, or 'offline'.
        teacher_model: The teacher's model name (e.g. gpt-4o-mini).
        referee_base_url: The referee's base URL, or 'offline'.
        referee_model: The referee's model name.
        generator_base_url: The generator's base URL, or 'offline'.
        generator_model: The generator's model name.
        student_model: A hub id or path of the student's base model (replaces the preset's).
        config_file: A full YAML config (path or s3:// URI, e.g. from `lion config --write`);
            it wins over the preset, the fields above win over it.
        overrides: Any other field by its dotted path, e.g. {"training.epochs": 1,
            "teacher.api_key_env": "OPENAI_API_KEY"}. See docs/configuration.md.
    """
    config = form_config(
        preset=preset,
        config_file=config_file,
        name=name,
        rounds=rounds,
        storage_root=storage_root,
        initial_data=initial_data,
        endpoints={
            "teacher": (teacher_base_url, teacher_model),
            "referee": (referee_base_url, referee_model),
            "generator": (generator_base_url, generator_model),
        },
        student_model=student_model,
        overrides=overrides,
    )
    return lion_distill(config)
