"""The short run form (`lion-run`): at most 15 fields, each described, none a None-type switch;
presets that are coherent; the config built from preset, file, fields and overrides; and a run
started with only the form's fields."""

from __future__ import annotations

import pytest
import yaml

from flows.form import lion_run
from lion_core.config.presets import PRESETS, demo_config, form_config, preset_config
from lion_core.errors import ConfigError
from lion_core.ops.preflight import coherence_warnings


def test_the_form_is_short_and_described():
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(lion_run).model_dump_for_openapi()
    fields = schema["properties"]
    assert len(fields) <= 15
    for name, field in fields.items():
        assert field.get("description"), f"{name} has no description"
        assert "anyOf" not in field, f"{name} would show a type switch ('type None')"
    assert fields["preset"]["enum"] == list(PRESETS)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_are_coherent(preset):
    cfg = preset_config(preset)
    assert coherence_warnings(cfg) == []
    if cfg.student.tiny is not None:
        assert cfg.training.learning_rate >= 1e-4  # a tiny student never gets 7B settings
    else:
        assert cfg.training.learning_rate <= 1e-4


def test_form_fields_over_file_over_preset(tmp_path):
    assert form_config() == preset_config("demo")
    assert form_config().training == demo_config().training

    written = demo_config(root="from-file", rounds=5).with_overrides({"training.epochs": 7})
    path = tmp_path / "exp.yaml"
    written.to_yaml(path)
    cfg = form_config(
        preset="paper-7b",
        config_file=str(path),
        name="exp-2",
        storage_root=str(tmp_path / "root"),
        initial_data="seeds.jsonl",
        endpoints={"teacher": ("https://api.example.com/v1", "gpt-x"), "referee": ("", "")},
        overrides={"training.epochs": 2, "teacher.api_key_env": "EXAMPLE_KEY"},
    )
    assert cfg.rounds == 5 and cfg.student.tiny is not None  # the file wins over the preset
    assert cfg.name == "exp-2" and cfg.storage.root == str(tmp_path / "root")
    assert cfg.pools.initial_data == "seeds.jsonl"
    assert (cfg.teacher.base_url, cfg.teacher.model) == ("https://api.example.com/v1", "gpt-x")
    assert cfg.referee == written.referee  # empty fields keep the file's
    assert cfg.training.epochs == 2 and cfg.teacher.api_key_env == "EXAMPLE_KEY"

    hub = form_config(student_model="Qwen/Qwen2.5-0.5B")
    assert hub.student.model == "Qwen/Qwen2.5-0.5B" and hub.student.tiny is None


def test_form_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'big'"):
        form_config(preset="big")
    with pytest.raises(ConfigError, match=r"training\.epochs"):
        form_config(overrides={"training.epochs": -1})
    with pytest.raises(ConfigError, match="config_file: cannot read"):
        form_config(config_file=str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"trainig": {}}))
    with pytest.raises(ConfigError, match="trainig"):
        form_config(config_file=str(bad))


@pytest.mark.slow
def test_a_run_from_the_form_fields_only(prefect_harness, tmp_path):
    from helpers import TINY_STUDENT

    tiny = {"student.tiny": TINY_STUDENT, "training.max_steps": 8,
            "training.launcher": "python", "pools.offline_seeds": 24, "pools.new_per_round": 6,
            "evaluation.sample": 6, "evaluation.bootstrap": 50}  # fmt: skip
    summary = lion_run(
        name="form-run", rounds=1, storage_root=str(tmp_path / "root"), overrides=tiny
    )
    assert [r.round for r in summary.rounds] == [1]
    assert summary.rounds[0].train_pool == 24 and summary.rounds[0].relative_score is not None
    from lion_core.run.identity import recorded_config

    cfg = recorded_config(str(tmp_path / "root"))
    assert cfg.name == "form-run" and cfg.training.learning_rate == 1e-3  # the demo preset's
