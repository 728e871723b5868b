"""The `lion` command line: config errors, the demo's config, run, pools and resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from lion_core.config import LionConfig

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_bad_config_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"teacher": {"temperature": 9}, "trainig": {}}))
    from lion_core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        invoke("config", str(path))
    assert "teacher.temperature" in str(err.value) and "trainig: unknown key" in str(err.value)


def test_demo_writes_its_full_config(tmp_path):
    out = tmp_path / "demo.yaml"
    result = invoke("demo", "--write-config", str(out), "--rounds", "2", "--data-dir", "x/y")
    assert result.exit_code == 0, result.output
    cfg = LionConfig.from_yaml(out)
    assert cfg.rounds == 2 and cfg.storage.root == "x/y" and cfg.teacher.is_offline
    assert cfg.student.tiny is not None


def test_demo_written_config_has_a_root_of_its_own(tmp_path, monkeypatch):
    """Not the demo's root: that one is bound to the demo's config, so an edited copy run
    there would be refused (the README tour edits it with --set)."""
    monkeypatch.chdir(tmp_path)
    result = invoke("demo", "--write-config", "my-run.yaml")
    assert result.exit_code == 0, result.output
    assert LionConfig.from_yaml(tmp_path / "my-run.yaml").storage.root == "lion-runs/my-run"


def test_pools_on_a_missing_root_fails_clearly(tmp_path):
    result = runner.invoke(app, ["pools", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "no rounds" in result.output


def lion(*args: str, api_url: str) -> subprocess.CompletedProcess:
    """The real console script, against the test harness's Prefect server."""
    env = {**os.environ, "PREFECT_API_URL": api_url}
    exe = str(Path(sys.executable).parent / "lion")
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=600)


def table_lines(output: str, header: str) -> list[str]:
    """The last table in `output` whose header starts `round <header>`: its header and rows (up
    to the next blank line), as printed."""
    lines = output.strip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.split()[:2] == ["round", header])
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(line)
    return rows


def table_rows(output: str, header: str = "train_pool") -> list[list[str]]:
    """The per-round table `lion run` prints (first of three): its header and rows."""
    return [line.split() for line in table_lines(output, header)]


def table_dicts(output: str, header: str) -> list[dict[str, str]]:
    head, *rows = table_rows(output, header)
    return [dict(zip(head, row, strict=True)) for row in rows]


@pytest.mark.slow
def test_run_then_pools_then_resume(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL
    from test_round_flow import small_config

    api_url = PREFECT_API_URL.value()
    root = tmp_path / "root"
    cfg_path = tmp_path / "run.yaml"
    small_config(root).to_yaml(cfg_path)
    run = lion("run", "-c", str(cfg_path), "--set", "pools.new_per_round=6", api_url=api_url)
    assert run.returncode == 0, run.stderr[-3000:]
    table = table_rows(run.stdout)
    assert "student_to_teacher" in table[0] and table[1][:3] == ["1", "24", "24"]
    for header in ("train_pool", "unscored", "teacher_sent"):  # three narrow tables
        assert max(len(line) for line in table_lines(run.stdout, header)) <= 100
    (requests,) = table_dicts(run.stdout, "teacher_sent")
    assert requests["teacher_sent"] == "24" and requests["teacher_cached"] == "0"
    assert int(requests["referee_sent"]) >= 48 and int(requests["generator_sent"]) > 0
    assert "round  train_pool" not in run.stderr  # the flow logs one line, not the table

    pools = lion("pools", str(root), api_url=api_url)
    assert pools.returncode == 0, pools.stderr
    lines = [line.split() for line in pools.stdout.strip().splitlines()]
    assert lines[0][:3] == ["round", "train_pool", "cache_pool"]
    assert lines[1][:3] == ["0", "-", "-"]  # round 0: the base student only
    assert lines[2][:3] == ["1", "24", "24"]

    # resume a finished run: every task comes from cache, the same table
    resumed = lion("resume", str(root), api_url=api_url)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert table_rows(resumed.stdout) == table
    assert "Cached" in resumed.stderr + resumed.stdout
    # nothing was sent: every task's result is the first run's, every request counted cached
    (again,) = table_dicts(resumed.stdout, "teacher_sent")
    for role in ("teacher", "referee", "generator"):
        assert again[f"{role}_sent"] == "0"
        answered = int(requests[f"{role}_sent"]) + int(requests[f"{role}_cached"])
        assert int(again[f"{role}_cached"]) == answered

    # another experiment on the same root is refused, naming the field
    refused = lion("run", "-c", str(cfg_path), "--set", "discrimination.tau=3", api_url=api_url)
    assert refused.returncode == 2
    assert "discrimination.tau" in refused.stderr and "Traceback" not in refused.stderr
