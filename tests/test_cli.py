"""The `lion` command line: config errors, the demo's config, run, pools and resume."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from prefect_services import migrated_database
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


@pytest.fixture(scope="module")
def cli_run(prefect_harness, tmp_path_factory):
    """ONE `lion run` of a 1-round small config (new_per_round 6), shared by the tests that
    read, resume or rewrite its root: (root, config file, API URL, the finished process)."""
    from helpers import small_config
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    tmp = tmp_path_factory.mktemp("cli-run")
    root, cfg_path = tmp / "root", tmp / "run.yaml"
    small_config(root).to_yaml(cfg_path)
    run = lion("run", "-c", str(cfg_path), "--set", "pools.new_per_round=6", api_url=api_url)
    assert run.returncode == 0, run.stderr[-3000:]
    return root, cfg_path, api_url, run


@pytest.mark.slow
def test_run_then_pools_then_resume(cli_run):
    root, cfg_path, api_url, run = cli_run
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


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _temporary_server(parent: int) -> tuple[int, int] | None:
    """(pid, port) of Prefect's temporary server started by `parent`, once it answers."""
    import httpx

    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) != parent or b"prefect.server.api.server:create_app" not in cmd:
            continue
        port = int(cmd[cmd.index(b"--port") + 1])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return int(stat.parent.name), port
        except httpx.HTTPError:
            return None
    return None


def _slow_run(tmp_path: Path, **popen) -> subprocess.Popen:
    """`lion run` of a small config on a slow offline world (5 s per request), without
    PREFECT_API_URL (so with Prefect's temporary server), stderr in tmp_path/lion.err."""
    from helpers import small_config

    cfg_path = tmp_path / "slow.yaml"
    small_config(tmp_path / "root", **{"offline.latency": 5.0}).to_yaml(cfg_path)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # 2 busy cores
    migrated_database(tmp_path / "prefect-home" / "prefect.db")  # start-up without migrations
    exe = str(Path(sys.executable).parent / "lion")
    with (tmp_path / "lion.err").open("w") as err:
        return subprocess.Popen([exe, "run", "-c", str(cfg_path)], env=env, stderr=err,
                                stdout=subprocess.DEVNULL, **popen)  # fmt: skip


def test_the_temporary_prefect_server_gets_a_second_try_when_the_first_times_out(tmp_path):
    """A first try that does not answer in time (here 0.05 s: never) is killed and the server
    started again on another port; the CLI gets one server, with a 60 s SQLite timeout."""
    script = textwrap.dedent(
        """
        import json, os, sys
        import httpx
        from flows.ephemeral import start_ephemeral_server
        url = start_ephemeral_server(timeouts=(0.05, 180))
        children = [p for p in os.listdir("/proc") if p.isdigit()
                    and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]
                    == str(os.getpid())
                    and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        health = httpx.get(f"{url}/health", timeout=10).status_code
        print(json.dumps({"url": url, "health": health, "children": len(children),
                          "db_timeout": os.environ["PREFECT_SERVER_DATABASE_TIMEOUT"]}))
        sys.stdout.flush()
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.pop("PREFECT_SERVER_DATABASE_TIMEOUT", None)
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    migrated_database(tmp_path / "prefect-home" / "prefect.db")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["health"] == 200 and result["children"] == 1, result
    assert result["db_timeout"] == "60"
    assert "did not answer within 0.05 s (try 1 of 2)" in out.stderr


@pytest.mark.slow
def test_a_killed_cli_takes_its_temporary_prefect_server_with_it(tmp_path):
    """`lion run` without PREFECT_API_URL starts Prefect's temporary server; kill -9 on the CLI
    (no atexit handler runs) must not leave that server running."""
    import signal
    import time

    cli = _slow_run(tmp_path)
    server = None
    try:
        deadline = time.monotonic() + 180
        while server is None and time.monotonic() < deadline and cli.poll() is None:
            server = _temporary_server(cli.pid)
            time.sleep(0.5)
        assert server is not None, (tmp_path / "lion.err").read_text()[-3000:]
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        deadline = time.monotonic() + 15
        while _alive(server[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server[0]), f"the temporary server {server} outlived the CLI"
    finally:
        cli.kill()
        if server and _alive(server[0]):
            os.kill(server[0], signal.SIGKILL)


@pytest.mark.slow
def test_sigterm_to_the_cli_ends_it_within_seconds(tmp_path):
    """Issue 22, N15: SIGTERM to the process group of `lion run` (what `timeout`, `docker stop`
    and Kubernetes send) ends it like Ctrl-C: it exits 143 within seconds and leaves neither
    Prefect's temporary server nor any other process behind (the server died with the group
    and the CLI hung for minutes on its own dead API)."""
    import signal
    import time

    cli = _slow_run(tmp_path, start_new_session=True)
    server = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and cli.poll() is None:
            server = server or _temporary_server(cli.pid)
            if server and "teacher" in (tmp_path / "lion.err").read_text():
                break  # the round is sending its first requests
            time.sleep(0.5)
        assert server is not None, (tmp_path / "lion.err").read_text()[-3000:]
        os.killpg(cli.pid, signal.SIGTERM)
        try:
            code = cli.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(
                "lion run still alive 60 s after SIGTERM: "
                + (tmp_path / "lion.err").read_text()[-2000:]
            )
        assert code == 143, (tmp_path / "lion.err").read_text()[-3000:]
        deadline = time.monotonic() + 15
        while _alive(server[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server[0]), f"the temporary server {server} outlived the CLI"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(cli.pid, signal.SIGKILL)
        if server and _alive(server[0]):
            os.kill(server[0], signal.SIGKILL)


def _seed_file(path: Path, rows: int = 24) -> Path:
    lines = [
        {"instruction": f"Add {i} and {i + 1}.", "output": str(2 * i + 1)} for i in range(rows)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.slow
def test_a_run_that_committed_nothing_takes_a_corrected_config(prefect_harness, tmp_path):
    """A run whose initial data is missing stops at the preflight, naming the file, before it
    records anything; one that got further (run.json written) but committed nothing leaves the
    root free: pointed at the corrected file, it runs. Once a snapshot is committed, the root
    is bound to its config."""
    from helpers import small_config
    from prefect.settings import PREFECT_API_URL

    from lion_core.errors import ConfigError
    from lion_core.method.seeds import load_initial_data
    from lion_core.run.identity import open_run, recorded_config
    from lion_core.run.store import RunStore

    root, missing = tmp_path / "root", tmp_path / "seeds.jsonl"
    cfg_path = tmp_path / "run.yaml"
    small_config(root, **{"pools.initial_data": str(missing)}).to_yaml(cfg_path)
    failed = lion("run", "-c", str(cfg_path), api_url=PREFECT_API_URL.value())
    assert failed.returncode == 2 and str(missing) in failed.stderr, failed.stderr[-3000:]
    assert "preflight" in failed.stderr and not (root / "run.json").exists()
    open_run(small_config(root, **{"pools.initial_data": str(missing)}))  # a run past its checks
    assert (root / "run.json").exists()

    fixed = _seed_file(tmp_path / "fixed.jsonl")
    open_run(small_config(root, **{"pools.initial_data": str(fixed)}))
    assert recorded_config(str(root)).pools.initial_data == str(fixed)

    RunStore.open(str(root)).write_or_reuse(1, "train_pool", load_initial_data(str(fixed)).pool)
    with pytest.raises(ConfigError, match=r"differ: pools\.initial_data"):
        open_run(small_config(root, **{"pools.initial_data": str(missing)}))


@pytest.mark.slow
def test_a_data_error_inside_a_flow_is_one_line_and_exit_2(prefect_harness, tmp_path, shared_data):
    """A LionError inside a flow (degenerate teacher answers: GSM8K seeds, the offline world
    as teacher, DataHealthError in the teacher-answers task) fails the run: the CLI prints one
    `error:` line naming the cause, no traceback (Prefect's included), and exits 2. A malformed
    initial data file is caught earlier, by the preflight: the file and row, exit 2, no
    traceback."""
    from helpers import small_config
    from prefect.settings import PREFECT_API_URL

    bad = _seed_file(tmp_path / "seeds.jsonl", rows=3)
    with bad.open("a") as fh:
        fh.write('{"instruction": "Add 3 and 4.", "output": \n')  # line 4: cut short
    cfg_path = tmp_path / "run.yaml"
    small_config(tmp_path / "root", **{"pools.initial_data": str(bad)}).to_yaml(cfg_path)
    result = lion("run", "-c", str(cfg_path), api_url=PREFECT_API_URL.value())
    output = result.stdout + result.stderr
    assert result.returncode == 2 and f"file {bad}, row 4" in result.stderr, output[-3000:]
    assert "preflight" in result.stderr and "Traceback" not in output, output[-3000:]

    gsm8k = str(shared_data / "gsm8k_train_alpaca_format.json")
    small_config(tmp_path / "root-2", **{"pools.initial_data": gsm8k, "pools.limit": 12}).to_yaml(
        cfg_path
    )
    result = lion("run", "-c", str(cfg_path), api_url=PREFECT_API_URL.value())
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    assert "the teacher's answers are degenerate" in errors[0], errors
    assert "Traceback" not in output, output[-3000:]

    # The run's logs in Prefect (what the UI shows) keep the traceback.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterLevel

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(level=LogFilterLevel(ge_=40)), limit=200)
    assert any("Traceback" in log.message and "DataHealthError" in log.message for log in logs)


def flat_batch_keys(config: dict) -> dict:
    """A config as run.json recorded it before the Batch API fields were nested under `batch:`
    and batch_size became cache_shard_size (every renamed key back in its old place)."""
    from lion_core.config.legacy import RENAMED

    config = json.loads(json.dumps(config))
    for old, new in RENAMED.items():
        *parents, leaf = new.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue  # an empty section (the judge)
        value = node.pop(leaf)
        *old_parents, old_leaf = old.split(".")
        target = config
        for part in old_parents:
            target = target[part]
        target[old_leaf] = value
    for section in config.values():
        if isinstance(section, dict) and section.get("batch") == {}:
            del section["batch"]
    return config


@pytest.mark.slow
def test_resume_of_a_copied_root_works_on_the_copy(cli_run, tmp_path):
    """Issue 22, N2: `lion resume COPY` of a copied run root works on COPY (its run.json records
    the original's root): the original is not written to, and nothing is sent again (every
    answer comes from the copy's response cache)."""
    import shutil

    root, _, api_url, _ = cli_run
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, copy)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    resumed = lion("resume", str(copy), api_url=api_url)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"working on {copy}" in resumed.stderr + resumed.stdout
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # untouched
    (again,) = table_dicts(resumed.stdout, "teacher_sent")
    for role in ("teacher", "referee", "generator"):
        assert again[f"{role}_sent"] == "0", again


@pytest.mark.slow
def test_a_root_recorded_with_flat_batch_keys_resumes_fully_cached(cli_run):
    """A run root whose run.json has the keys of before the Batch API fields were nested: `lion
    resume` loads it (with the deprecation warning), every task is Cached, nothing is sent.
    (The module's one run; its run.json is rewritten here, so this test comes after the others
    that use it.)"""
    root, _, api_url, run = cli_run
    (first,) = table_dicts(run.stdout, "teacher_sent")
    assert int(first["teacher_sent"]) > 0

    info_path = root / "run.json"
    info = json.loads(info_path.read_text())
    info["config"] = flat_batch_keys(info["config"])
    teacher = info["config"]["teacher"]
    assert teacher["batch_size"] == 256 and teacher["batch_poll_seconds"] == 30.0
    assert "batch" not in teacher and "cache_shard_size" not in teacher
    info_path.write_text(json.dumps(info))

    resumed = lion("resume", str(root), api_url=api_url)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stderr + resumed.stdout
    assert "teacher.batch_size is deprecated: use teacher.cache_shard_size" in output
    assert "referee.batch_poll_seconds is deprecated: use referee.batch.poll_seconds" in output
    tasks = re.findall(r"Task run '([^']+)' - Finished in state (\w+)", output)
    assert len(tasks) >= 10, output[-3000:]
    assert [name for name, state in tasks if state != "Cached"] == []
    (again,) = table_dicts(resumed.stdout, "teacher_sent")
    for role in ("teacher", "referee", "generator"):
        assert again[f"{role}_sent"] == "0"
        assert int(again[f"{role}_cached"]) == int(first[f"{role}_sent"]) + int(
            first[f"{role}_cached"]
        )
