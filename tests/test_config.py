"""LionConfig: defaults, YAML round-trip, rejection of bad configs with the field's path."""

from __future__ import annotations

from pathlib import Path

import pytest

from lion_core.config import LionConfig
from lion_core.errors import ConfigError


def test_paper_defaults():
    cfg = LionConfig()
    assert cfg.discrimination.tau == 1.0
    assert cfg.novelty.threshold == 0.7
    assert cfg.pools.hard_share == 0.5
    assert (cfg.teacher.temperature, cfg.referee.temperature, cfg.generator.temperature) == (
        0.7,
        0.2,
        1.0,
    )
    assert cfg.training.learning_rate == 2e-5
    assert cfg.training.epochs == 3
    assert cfg.training.max_length == 1024
    assert cfg.teacher.is_offline and cfg.student.tiny is not None


def test_seed_instruction_size_limit():
    """A size limit on seed instructions exists, says why, and is part of what a run computes."""
    from lion_core.config import PoolsConfig, is_operational

    field = PoolsConfig.model_fields["max_instruction_chars"]
    assert LionConfig().pools.max_instruction_chars == field.default > 0
    assert "memory" in field.description and "referee" in field.description
    assert not is_operational("pools.max_instruction_chars")  # it changes the pools
    with pytest.raises(ConfigError, match=r"pools\.max_instruction_chars"):
        LionConfig.from_dict({"pools": {"max_instruction_chars": 0}})


def test_every_field_has_a_description():
    def walk(model_cls, prefix=""):
        for name, field in model_cls.model_fields.items():
            assert field.description, f"{prefix}{name} has no description"
            ann = field.annotation
            for sub in getattr(ann, "__args__", (ann,)):
                if isinstance(sub, type) and hasattr(sub, "model_fields"):
                    walk(sub, f"{prefix}{name}.")

    walk(LionConfig)


def test_yaml_round_trip(tmp_path):
    cfg = LionConfig().with_overrides(
        {
            "rounds": 5,
            "teacher.base_url": "https://api.example.com/v1",
            "teacher.api_key_env": "OPENAI_API_KEY",
            "storage.root": "s3://bucket/prefix",
            "storage.options": {"endpoint_url": "http://127.0.0.1:9000"},
            "training.lora": {"r": 8},
        }
    )
    path = tmp_path / "lion.yaml"
    cfg.to_yaml(path)
    back = LionConfig.from_yaml(path)
    assert back == cfg
    assert back.training.lora.r == 8


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"teacher": {"temprature": 0.5}}, "teacher.temprature"),
        ({"referee": {"temperature": 3.5}}, "referee.temperature"),
        ({"training": {"zero_stage": 4}}, "training.zero_stage"),
        ({"storage": {"options": {"secret": "x"}}}, "storage.options"),
        ({"teacher": {"base_url": "ftp://x"}}, "teacher.base_url"),
        ({"student": {"model": "x", "tiny": {}}}, "student"),
        ({"student": {"tiny": {"hidden_size": 10, "num_heads": 4}}}, "student.tiny"),
        ({"rounds": "many"}, "rounds"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_config_names_the_field(data, path):
    with pytest.raises(ConfigError) as err:
        LionConfig.from_dict(data)
    assert f"  {path}:" in str(err.value)


@pytest.mark.parametrize(
    ("options", "path"),
    [
        (
            {"client_kwargs": {"aws_secret_access_key": "hunter2"}},
            "client_kwargs.aws_secret_access_key",
        ),
        (
            {"config_kwargs": {"s3": {"AWS_SESSION_TOKEN": "hunter2"}}},
            "config_kwargs.s3.AWS_SESSION_TOKEN",
        ),
        (
            {"client_kwargs": {"extra": [{"password": "hunter2"}]}},
            "client_kwargs.extra[0].password",
        ),
        ({"session_token": "hunter2"}, "session_token"),
        ({"secret_access_key": "hunter2"}, "secret_access_key"),
    ],
)
def test_credentials_are_refused_at_any_depth(options, path):
    """storage.options is recorded in run.json: a secret anywhere in it would be written out."""
    with pytest.raises(ConfigError) as err:
        LionConfig.from_dict({"storage": {"options": options}})
    assert f"storage.options.{path}" in str(err.value)
    assert "hunter2" not in str(err.value)  # the value itself is never echoed
    harmless = {"endpoint_url": "http://minio:9000", "client_kwargs": {"region_name": "eu"}}
    assert LionConfig.from_dict({"storage": {"options": harmless}}).storage.options == harmless


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        LionConfig.from_yaml(path)
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        LionConfig.from_yaml(tmp_path / "missing.yaml")


def test_configuration_doc_is_current():
    from lion_core.config.doc import render

    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    assert doc == render(), "regenerate: python -m lion_core.config.doc > docs/configuration.md"


def test_run_root_is_bound_to_its_config(tmp_path):
    from lion_core.offline.world import seed_pool
    from lion_core.run.identity import open_run, recorded_config

    cfg = LionConfig().with_overrides({"storage.root": str(tmp_path / "run")})
    store = open_run(cfg)
    # Bound from the first committed snapshot on.
    store.write_or_reuse(1, "train_pool", seed_pool(4, cfg.seed, cfg.offline.max_difficulty))
    # operational changes are fine: more rounds, other concurrency, fault injection
    open_run(cfg.with_overrides({"rounds": 7, "teacher.concurrency": 64}))
    with pytest.raises(ConfigError, match=r"discrimination\.tau.*holds round=1"):
        open_run(cfg.with_overrides({"discrimination.tau": 2.0}))
    assert recorded_config(str(tmp_path / "run")) == cfg
