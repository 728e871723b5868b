"""The checks before a run: a missing key, an unreachable endpoint, an unwritable root and bad
initial data end the run within seconds, with one message naming each problem; a sound config
passes (the offline world over HTTP stands in for a real endpoint)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import tiny_config

from lion_core.config import LionConfig
from lion_core.errors import PreflightError
from lion_core.offline.server import MODELS
from lion_core.ops.preflight import preflight, roles_in_use

REPO = Path(__file__).resolve().parent.parent
MISSING = "LION_TEST_PREFLIGHT_NO_SUCH_KEY"
DEAD = "http://127.0.0.1:9/v1"  # the discard port: nothing listens


def _config(root: Path, **overrides) -> LionConfig:
    """A tiny student with a learning rate that suits it (no coherence warning)."""
    return tiny_config(root, **{"training.learning_rate": 1e-3, **overrides})


def _fails(cfg: LionConfig) -> str:
    start = time.monotonic()
    report = preflight(cfg)
    assert time.monotonic() - start < 10
    with pytest.raises(PreflightError) as err:
        report.raise_for_problems()
    return str(err.value)


def test_a_sound_config_passes(tmp_path, offline_server):
    world = offline_server()
    cfg = _config(
        tmp_path / "run",
        **{f"{r}.base_url": world.base_url for r in ("teacher", "referee", "generator")},
        **{"evaluation.sets": ["offline"]},
    )
    assert roles_in_use(cfg) == ["teacher", "referee", "generator", "judge"]
    report = preflight(cfg)
    report.raise_for_problems()
    assert report.problems == [] and report.warnings == []
    assert not any(p.name.startswith(".preflight") for p in (tmp_path / "run").iterdir())
    # an unknown model is worth a warning (servers may serve aliases), not a failure
    other = preflight(cfg.with_overrides({"teacher.model": "gpt-nothing"}))
    assert other.problems == []
    assert other.warnings == [
        f"teacher.model 'gpt-nothing' is not among the {len(MODELS)} model(s) "
        f"{world.base_url} lists"
    ]


def test_missing_key_fails_fast_naming_the_variable(tmp_path, offline_server, monkeypatch):
    monkeypatch.delenv(MISSING, raising=False)
    world = offline_server()
    cfg = _config(
        tmp_path / "run",
        **{"teacher.base_url": world.base_url, "teacher.api_key_env": MISSING},
    )
    message = _fails(cfg)
    assert MISSING in message and "teacher.api_key_env" in message
    assert world.stats() == {}  # nothing was asked


def test_unreachable_endpoint_fails_fast_naming_the_field(tmp_path):
    message = _fails(_config(tmp_path / "run", **{"generator.base_url": DEAD}))
    assert "generator.base_url" in message and DEAD.rstrip("/") in message
    assert "unreachable" in message


def test_unanswering_endpoint_fails_within_the_probe_timeout(tmp_path):
    import socket

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        start = time.monotonic()
        report = preflight(_config(tmp_path / "run", **{"teacher.base_url": url}), timeout=2)
        assert time.monotonic() - start < 5
    assert report.problems == [f"teacher: teacher.base_url {url} did not answer within 2 s"]


def test_a_server_without_a_model_list_gets_one_tiny_request(tmp_path, offline_server):
    world = offline_server()
    wrong = f"{world.base_url}/nothing-here"  # a wrong path: no /models, no chat either
    message = _fails(_config(tmp_path / "run", **{"teacher.base_url": wrong}))
    assert f"teacher: {wrong} answered a one-token request" in message and "404" in message
    assert "teacher.base_url and teacher.model" in message


def test_unwritable_root_fails_fast(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    message = _fails(_config(blocker / "run"))
    assert f"storage.root {blocker / 'run'} is not writable" in message


def test_bad_initial_data_names_the_file(tmp_path):
    broken = tmp_path / "seeds.jsonl"
    broken.write_text('{"instruction": "a"}\n{"instruction": \n')
    message = _fails(_config(tmp_path / "run", **{"pools.initial_data": str(broken)}))
    assert "pools.initial_data" in message and "seeds.jsonl" in message


def test_all_problems_in_one_message(tmp_path, monkeypatch):
    monkeypatch.delenv(MISSING, raising=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = _config(
        blocker / "run",
        **{"teacher.base_url": DEAD, "teacher.api_key_env": MISSING},
        **{"referee.base_url": DEAD},
    )
    message = _fails(cfg)
    assert message.startswith("preflight: 3 problem(s)")
    assert MISSING in message and "referee: referee.base_url" in message
    assert "not writable" in message


def test_coherence_warnings():
    tiny_paper = LionConfig()  # the tiny student with the paper's 7B learning rate
    assert any("tiny student" in w for w in preflight_warnings(tiny_paper))
    demo = LionConfig().with_overrides({"training.learning_rate": 1e-3})
    assert preflight_warnings(demo) == []
    offline_seeds = demo.with_overrides({"pools.initial_data": "gsm8k.jsonl"})
    assert any("refusals" in w for w in preflight_warnings(offline_seeds))


def preflight_warnings(cfg: LionConfig) -> list[str]:
    from lion_core.ops.preflight import coherence_warnings

    return coherence_warnings(cfg)


def test_lion_run_stops_before_prefect_starts(tmp_path, monkeypatch):
    """The CLI: exit code 2, one `error:` message, no traceback, nothing written."""
    monkeypatch.delenv(MISSING, raising=False)
    config = tmp_path / "run.yaml"
    _config(
        tmp_path / "root", **{"teacher.base_url": DEAD, "teacher.api_key_env": MISSING}
    ).to_yaml(config)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "-c", str(config)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and MISSING in done.stderr
    assert "preflight: 1 problem(s)" in done.stderr
    assert not (tmp_path / "root" / "run.json").exists()
    print(f"lion run failed in {elapsed:.1f} s (process start and imports included)")


def test_the_distill_flow_checks_first(prefect_harness, tmp_path, monkeypatch):
    """A deployment run (the UI, a schedule) gets the same checks: the flow fails with the
    preflight's message before any round starts."""
    from flows.distill import lion_distill

    monkeypatch.delenv(MISSING, raising=False)
    cfg = _config(tmp_path / "root", **{"teacher.base_url": DEAD, "teacher.api_key_env": MISSING})
    start = time.monotonic()
    state = lion_distill(cfg, return_state=True)
    assert time.monotonic() - start < 30  # the flow run's own start included
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, PreflightError) and MISSING in str(error)
    assert not (tmp_path / "root" / "run.json").exists()  # nothing was started
