"""LionConfig: defaults, YAML round-trip, rejection of bad configs with the field's path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

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
        ({"client_kwargs": {"extra": [{"password": "hunter2"}]}}, "client_kwargs.extra"),
        ({"session_token": "hunter2"}, "session_token"),
        ({"secret_access_key": "hunter2"}, "secret_access_key"),
        # issue 22, N9: what a deny-list of names let through
        ({"s3_additional_kwargs": {"SSECustomerKey": "k"}}, "s3_additional_kwargs.SSECustomerKey"),
        ({"account_key": "hunter2"}, "account_key"),
        ({"sas_token": "hunter2"}, "sas_token"),
        ({"connection_string": "AccountKey=hunter2"}, "connection_string"),
        ({"client_secret": "hunter2"}, "client_secret"),
        ({"endpoint_url": "https://AKIA:hunter2@minio:9000"}, "endpoint_url"),
        ({"client_kwargs": {"endpoint_url": "http://u:hunter2@h"}}, "client_kwargs.endpoint_url"),
        ({"headers": {"Authorization": "Bearer hunter2"}}, "headers"),
        ({"secret-access-key": "hunter2"}, "secret-access-key"),
        ({"config_kwargs": {"proxies": {"https": "http://u:hunter2@p"}}}, "config_kwargs.proxies"),
    ],
)
def test_credentials_are_refused_at_any_depth(options, path):
    """storage.options is recorded in run.json: a secret anywhere in it would be written out."""
    with pytest.raises(ConfigError) as err:
        LionConfig.from_dict({"storage": {"options": options}})
    assert f"storage.options.{path}" in str(err.value)
    assert "hunter2" not in str(err.value)  # the value itself is never echoed
    harmless = {
        "endpoint_url": "http://minio:9000",
        "client_kwargs": {"region_name": "eu"},
        "config_kwargs": {"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 9}},
        "s3_additional_kwargs": {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/x"},
    }
    assert LionConfig.from_dict({"storage": {"options": harmless}}).storage.options == harmless


@pytest.mark.parametrize("field", ["root", "shared_llm_cache"])
def test_a_location_with_a_fsspec_chain_is_refused(tmp_path, field):
    """`a::b` is an fsspec chained URL: a root spelled so was written into `a` (issue 22, N12)."""
    where = f"{tmp_path}/a::b"
    with pytest.raises(ConfigError, match=rf"storage\.{field}.*contains '::'"):
        LionConfig.from_dict({"storage": {field: where}})
    assert not (tmp_path / "a").exists()
    assert LionConfig.from_dict({"storage": {field: f"{tmp_path}/a:b"}})  # one colon is a name


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


# ---- the digest, renamed keys, the one YAML loader ---------------------------------------------

# Golden digests: change them only deliberately. The digest is part of every task's cache key, so
# a new value re-runs every cached task of every existing run root (a renamed or moved
# non-operational field, a changed default). Operational fields (batch:, cache_shard_size, ...)
# are outside it.
GOLDEN_DIGESTS = {
    # changed deliberately (issue 21): the demo holds back half of each round's new
    # instructions and tops up and spreads generation (was 5ca2c0c3ba4c…)
    "demo": "7a6c75dcc846296b2bcfa9fa6965c1c4daea2e1474026b91cd5e5baed81af6c8",
    "paper-7b": "1bc4ec36445c7c351fce4c59b09431f4d67eb66b1d99d27f8f1a82aa2a42528d",
    "gpu-1b": "d10421e5e6630307181bf28206739acea47f97240bfa0c385f833c1f0453e248",
    None: "043f8f4b2925166ba8651ffe21a3a7a4789e8a5627d34f82650fc1e038701c24",  # LionConfig()
}
# The digest of tests/data/run-json-flat-batch-keys.json (1 round of the demo preset, root
# /tmp/oldroot/demo), as the code that wrote it computed it.
FLAT_RUN_JSON_DIGEST = "fae4cf79c066ac6de03ef8f0e24a39ab079e195b38389fbdd0d81fd8ccb716c4"
FLAT_RUN_JSON = Path(__file__).parent / "data" / "run-json-flat-batch-keys.json"


@pytest.mark.parametrize("preset", list(GOLDEN_DIGESTS))
def test_golden_digests(preset):
    from lion_core.config.presets import preset_config

    cfg = preset_config(preset) if preset else LionConfig()
    assert cfg.digest() == GOLDEN_DIGESTS[preset]


def flat_run_json(root: str) -> dict:
    """The fixture: a run.json written before the Batch API fields were nested under `batch:`
    and batch_size became cache_shard_size, with its root set to `root`."""
    return json.loads(FLAT_RUN_JSON.read_text().replace("{root}", root))


def test_a_run_json_with_flat_batch_keys_loads_with_a_warning(tmp_path):
    from lion_core.config.legacy import ENDPOINT_RENAMES
    from lion_core.config.presets import demo_config
    from lion_core.run.identity import recorded_config

    data = flat_run_json("/tmp/oldroot/demo")["config"]
    assert "batch_size" in data["teacher"] and "batch" not in data["teacher"]
    with pytest.warns(DeprecationWarning) as caught:
        cfg = LionConfig.from_dict(data, source="run.json")
    (message,) = [str(w.message) for w in caught]
    assert message.startswith("run.json: teacher.batch_size is deprecated: use ")
    for role in ("teacher", "referee", "generator"):  # the judge is empty in this run
        for old, new in ENDPOINT_RENAMES.items():
            assert f"{role}.{old} is deprecated: use {role}.{new}" in message
    assert (
        "student.generation.server.batch_size is deprecated: use "
        "student.generation.server.cache_shard_size" in message
    )
    # the same config, with the same digest as when it was written
    assert cfg.digest() == FLAT_RUN_JSON_DIGEST
    # the demo as it was then: the fields added since (issue 21) at their defaults, and the
    # offline world free (it is priced like a small commercial model since; recorded prices win)
    before = {"pools.holdback": 0.0, "generator.max_attempts": 1}
    before["generator.max_category_share"] = 1.0
    before["pricing.offline-"] = {"input": 0.0, "output": 0.0}
    # and the refusal patterns of then (issue 22, N8, changed the defaults; operational)
    before["data_health.refusal_patterns"] = data["data_health"]["refusal_patterns"]
    assert cfg == demo_config(root="/tmp/oldroot/demo", rounds=1).with_overrides(before)
    assert cfg.teacher.cache_shard_size == 256 and cfg.referee.batch.max_requests == 50_000
    assert cfg.generator.batch.cancel_on_cancel is True
    assert data["teacher"]["batch_size"] == 256  # the caller's mapping is left as it was

    # through a run root, as `lion resume` reads it
    root = tmp_path / "root"
    root.mkdir()
    (root / "run.json").write_text(json.dumps(flat_run_json(str(root))))
    with pytest.warns(DeprecationWarning, match=r"run\.json: teacher\.batch_size is deprecated"):
        recorded = recorded_config(str(root))
    assert recorded == demo_config(root=str(root), rounds=1).with_overrides(before)


def test_renamed_keys_load_from_yaml_set_form_and_flow_parameters(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    from lion_core.config.presets import form_config

    path = tmp_path / "old.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "teacher": {"batch_size": 64, "batch_poll_seconds": 5.0, "mode": "batch"},
                "judge": {"model": "gpt-x", "cancel_batches_on_cancel": False},
                "student": {"generation": {"server": {"batch_size": 8}}},
            }
        )
    )
    with pytest.warns(DeprecationWarning, match=r"judge\.cancel_batches_on_cancel is deprecated"):
        cfg = LionConfig.from_yaml(path)
    assert cfg.teacher.cache_shard_size == 64 and cfg.teacher.batch.poll_seconds == 5.0
    assert cfg.judge.batch.cancel_on_cancel is False and cfg.judge.model == "gpt-x"
    assert cfg.student.generation.server.cache_shard_size == 8
    # operational fields only: the digest is the defaults' with that judge
    assert cfg.digest() == LionConfig.from_dict({"judge": {"model": "gpt-x"}}).digest()

    # --set (what every CLI command's --set calls), here through `lion demo --set`
    with pytest.warns(DeprecationWarning, match=r"overrides: referee\.batch_max_requests"):
        assert LionConfig().with_overrides({"referee.batch_max_requests": 10}).referee == (
            LionConfig().with_overrides({"referee.batch.max_requests": 10}).referee
        )
    out = tmp_path / "demo.yaml"
    result = CliRunner().invoke(
        app, ["demo", "--write-config", str(out), "--set", "generator.batch_resubmits=7"]
    )
    assert result.exit_code == 0, result.output
    written = yaml.safe_load(out.read_text())["generator"]
    assert written["batch"]["resubmits"] == 7 and "batch_resubmits" not in written

    # the run form's overrides
    with pytest.warns(DeprecationWarning, match=r"teacher\.batch_size is deprecated"):
        form = form_config(overrides={"teacher.batch_size": 32})
    assert form.teacher.cache_shard_size == 32

    # a flow run's parameters (Prefect validates them with the model itself)
    with pytest.warns(DeprecationWarning, match=r"generator\.batch_max_bytes is deprecated"):
        param = LionConfig.model_validate({"generator": {"batch_max_bytes": 4096}})
    assert param.generator.batch.max_bytes == 4096


def test_an_old_key_and_its_new_one_must_agree():
    with pytest.raises(ConfigError, match=r"teacher\.batch_size \(deprecated\) and "
                       r"teacher\.cache_shard_size are both set"):  # fmt: skip
        LionConfig.from_dict({"teacher": {"batch_size": 1, "cache_shard_size": 2}})
    with pytest.raises(ConfigError, match=r"referee\.batch\.resubmits are both set"):
        LionConfig().with_overrides({"referee.batch.resubmits": 1, "referee.batch_resubmits": 3})
    with pytest.warns(DeprecationWarning):
        same = LionConfig.from_dict({"teacher": {"batch_size": 9, "cache_shard_size": 9}})
    assert same.teacher.cache_shard_size == 9
    # a typo is still an unknown key, not a rename
    with pytest.raises(ConfigError, match=r"teacher\.batch_sise: unknown key"):
        LionConfig.from_dict({"teacher": {"batch_sise": 9}})


def test_one_yaml_loader_reads_s3(s3_root, monkeypatch):
    """`lion run -c s3://bucket/cfg.yaml`: the CLI's -c, the run form's config_file and
    LionConfig.from_yaml are one loader, and it reads s3:// URIs (moto on loopback)."""
    import fsspec
    import s3fs
    from typer.testing import CliRunner

    from flows.cli import app
    from lion_core.config.presets import form_config

    root, options = s3_root
    uri = f"{root.rsplit('/runs/', 1)[0]}/configs/cfg.yaml"
    written = LionConfig().with_overrides({"rounds": 4, "training.epochs": 2.0})
    with fsspec.open(uri, "w", **options) as fh:
        fh.write(written.to_yaml())

    assert LionConfig.from_yaml(uri, options) == written
    with pytest.raises(ConfigError, match=r"config file: cannot read s3://.*/missing\.yaml"):
        LionConfig.from_yaml(uri.replace("cfg.yaml", "missing.yaml"), options)

    # without options, as the CLI and the form read it: the endpoint from the environment
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", options["endpoint_url"])
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        result = CliRunner().invoke(app, ["config", uri], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert LionConfig.from_dict(yaml.safe_load(result.output)) == written
        assert form_config(config_file=uri).training.epochs == 2.0
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
