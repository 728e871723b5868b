"""The student answering through a served engine (`student.generation.engine: server`), with
`lion serve-student` standing in for vLLM/SGLang: the same answers as the HF path row for row,
the checkpoint's digest in the cache key, a killed task resumed without re-sending an answered
request, a server that never gets ready, and no server process left behind, however it ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import openai
import pandas as pd
import pytest
from helpers import echo_rows, echo_tasks

from lion_core.config import LionConfig
from lion_core.errors import ConfigError, GenerationError, MissingAPIKeyError
from lion_core.llm.cache import ResponseCache
from lion_core.run import layout
from lion_core.run.storage import Storage
from lion_core.run.store import RunStore
from lion_core.student import served as served_mod
from lion_core.student.answer import generate_answers
from lion_core.student.checkpoints import content_digest, mark_complete
from lion_core.student.generator import BatchedGenerator
from lion_core.student.model import load_student
from lion_core.student.served import server_command

REPO = Path(__file__).resolve().parent.parent
MARK = "LION_SERVE_TEST"


def _served(cfg: LionConfig, **server) -> LionConfig:
    overrides = {"student.generation.engine": "server", "student.generation.server.concurrency": 4}
    overrides.update({f"student.generation.server.{k}": v for k, v in server.items()})
    return cfg.with_overrides(overrides)


@pytest.fixture(autouse=True)
def mark(monkeypatch) -> str:
    """A token in the environment of every process this test starts (inherited by servers and
    their children), so `_ours()` finds what is left of them."""
    token = uuid.uuid4().hex
    monkeypatch.setenv(MARK, token)
    return token


def _ours(token: str) -> list[int]:
    """Live processes carrying `token` in their environment (the test process excluded)."""
    pids = []
    needle = f"{MARK}={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return pids


def _gone(token: str, within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while _ours(token):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class _Lines:
    """A logger that keeps its lines."""

    def __init__(self) -> None:
        import logging

        self.lines: list[str] = []
        self.logger = logging.getLogger(f"test-serve-{uuid.uuid4().hex[:6]}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        outer = self

        class Keep(logging.Handler):
            def emit(self, record):
                outer.lines.append(record.getMessage())

        self.logger.addHandler(Keep())

    def stats(self) -> dict:
        found = [line for line in self.lines if line.startswith("student server stats: ")]
        assert found, self.lines[-20:]
        return json.loads(found[-1].split(": ", 1)[1])


def _same(served: pd.DataFrame, hf: pd.DataFrame) -> None:
    assert served["request_key"].notna().all() and hf["request_key"].isna().all()
    pd.testing.assert_frame_equal(
        served.drop(columns="request_key"), hf.drop(columns="request_key")
    )


# ---- the same answers ------------------------------------------------------------------------


def test_served_answers_equal_the_hf_answers_row_for_row(echo_student, tmp_path, mark):
    cfg, _, uri = echo_student
    rows = echo_rows(16, seed=2)
    hf = generate_answers(cfg, RunStore.open(str(tmp_path / "hf")), uri, rows)
    assert (hf["finish_reason"] == "stop").sum() >= len(hf) // 2  # a student that stops

    out = _Lines()
    store = RunStore.open(str(tmp_path / "served"))
    served = generate_answers(_served(cfg), store, uri, rows, logger=out.logger)
    _same(served, hf)
    assert out.stats()["prompts"] == len(rows)  # every row went through the server
    assert any(line.startswith("[server] student server listening") for line in out.lines)
    assert _gone(mark)  # the server's process group is gone after success
    cached = ResponseCache(store.storage, "student")
    assert len(cached) == len(rows)
    assert set(served["request_key"]) == set(cached.frame()["key"])


def test_the_cache_key_carries_the_checkpoint_digest(echo_student, tmp_path):
    """A copy of the checkpoint (same content, another place) reuses the served answers; the
    same folder retrained (a new `_COMPLETE`) sends everything again."""
    cfg, _, uri = echo_student
    rows = echo_rows(6, seed=3)
    store = RunStore.open(str(tmp_path / "run"))
    served = _served(cfg)
    first = generate_answers(served, store, uri, rows)

    copy = tmp_path / "copy"
    shutil.copytree(uri, copy)
    assert content_digest(str(copy)) == content_digest(uri)
    out = _Lines()
    again = generate_answers(served, store, str(copy), rows, logger=out.logger)
    assert list(again["answer"]) == list(first["answer"])
    sent = f"0 requests sent, {len(rows)} from the response cache"
    assert any(sent in line for line in out.lines), out.lines
    assert not any("starting the student server" in line for line in out.lines)  # not needed

    mark_complete(Storage(str(tmp_path)), "copy")  # "retrained" in place
    assert content_digest(str(copy)) != content_digest(uri)
    out = _Lines()
    generate_answers(served, store, str(copy), rows, logger=out.logger)
    assert out.stats()["prompts"] == len(rows)


# ---- kill and resume ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm_server(echo_student):
    """`lion serve-student` on the student, started once from the command line (port 0), as a
    user keeps one warm."""
    _, _, uri = echo_student
    env = {k: v for k, v in os.environ.items() if k != MARK}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve-student", uri, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    first = proc.stdout.readline()  # the base URL comes first, once the model is loaded
    assert first.startswith("student server listening on http://"), first
    base_url = first.split("listening on ", 1)[1].split()[0]
    yield base_url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=15)


def _prompts_served(base_url: str) -> int:
    return httpx.get(base_url.removesuffix("/v1") + "/stats").json()["prompts"]


KILLED_CHILD = """
import json, sys
import pandas as pd
from lion_core.config import LionConfig
from lion_core.run.store import RunStore
from lion_core.student.answer import generate_answers
spec = json.load(open(sys.argv[1]))
cfg = LionConfig.model_validate(spec["config"])
generate_answers(cfg, RunStore.open(cfg.storage.root), spec["uri"],
                 pd.read_parquet(spec["rows"]))
print("finished", flush=True)
"""


def test_a_killed_task_resumes_without_resending_an_answered_request(
    echo_student, warm_server, tmp_path, mark
):
    """The task is killed (SIGKILL) mid-way while its own server answers; its server dies with
    it. The re-run, through a warm server, sends exactly the requests not in the response
    cache, and the answers are the HF path's."""
    cfg, _, uri = echo_student
    rows = echo_rows(48, seed=4)
    root = tmp_path / "run"
    cfg = _served(
        cfg.with_overrides({"storage.root": str(root)}), concurrency=1, cache_shard_size=4
    )
    spec = tmp_path / "spec.json"
    rows.to_parquet(tmp_path / "rows.parquet")
    spec.write_text(
        json.dumps(
            {
                "config": cfg.model_dump(mode="json"),
                "uri": uri,
                "rows": str(tmp_path / "rows.parquet"),
            }
        )
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(spec)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cache_dir = root / layout.llm_cache("student")
    deadline = time.monotonic() + 120
    while not (cache_dir.is_dir() and any(cache_dir.glob("*.parquet"))):
        assert child.poll() is None, "the task ended before it was killed"
        assert time.monotonic() < deadline, "no answer was flushed within 120 s"
        time.sleep(0.02)
    child.kill()
    child.wait()
    assert _gone(mark)  # its server followed it (PR_SET_PDEATHSIG), however it was started

    store = RunStore.open(str(root))
    cached = len(ResponseCache(store.storage, "student"))
    assert 0 < cached < len(rows), cached
    print(f"killed with {cached}/{len(rows)} answers in the response cache")
    before = _prompts_served(warm_server)
    warm = {"student.generation.server.base_url": warm_server,
            "student.generation.server.concurrency": 8}  # fmt: skip
    resumed = generate_answers(cfg.with_overrides(warm), store, uri, rows)
    assert _prompts_served(warm_server) - before == len(rows) - cached  # only the unanswered
    hf = generate_answers(
        echo_student.cfg.with_overrides({"storage.root": str(tmp_path / "hf")}),
        RunStore.open(str(tmp_path / "hf")),
        uri,
        rows,
    )
    _same(resumed, hf)


# ---- failure and cancellation ------------------------------------------------------------------

NEVER_READY = (
    '{python} -c "import subprocess, sys, time; '
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "print('loading weights on port {port}', flush=True); time.sleep(120)\""
)


def test_a_server_that_never_gets_ready_fails_in_time_with_its_log(echo_student, tmp_path, mark):
    cfg, _, uri = echo_student
    rows = echo_rows(4, seed=5)
    store = RunStore.open(str(tmp_path / "run"))
    started = time.monotonic()
    with pytest.raises(GenerationError, match=r"not ready within 3 s") as err:
        generate_answers(_served(cfg, command=NEVER_READY, ready_timeout=3), store, uri, rows)
    assert time.monotonic() - started < 3 + 12  # the timeout, then the kill
    assert "loading weights on port" in str(err.value)  # the server log's tail
    assert _gone(mark)  # the server and the child it started

    crash = "{python} -c \"print('unknown flag --tp {tp}'); raise SystemExit(3)\""
    with pytest.raises(GenerationError, match=r"exited with code 3 .*unknown flag --tp 1"):
        generate_answers(_served(cfg, command=crash), store, uri, rows)


def test_the_server_is_gone_after_cancellation(echo_student, tmp_path, mark, monkeypatch):
    """The caller is interrupted (Ctrl-C, a cancelled task) while the server answers."""
    cfg, _, uri = echo_student
    rows = echo_rows(8, seed=6)
    running: list[int] = []

    def interrupted(self, requests, *, desc=""):
        running.extend(_ours(mark))
        raise KeyboardInterrupt("cancelled mid-way")

    monkeypatch.setattr(served_mod.LLMClient, "run", interrupted)
    with pytest.raises(KeyboardInterrupt, match="cancelled mid-way"):
        generate_answers(_served(cfg), RunStore.open(str(tmp_path / "run")), uri, rows)
    assert running  # the server was up when the caller gave up
    assert _gone(mark)


FAKE = f"{{python}} {REPO / 'tests' / 'fake_student_server.py'} --port {{port}} --name {{name}}"


def test_http_errors_from_the_server_are_asked_again_not_committed(echo_student, tmp_path):
    """Issue 22, N3: a server that answers every request HTTP 400 fails the task, naming the
    error, and commits none of those failures as answers; the next attempt, with a working
    server, answers every row (a committed failure was reused by every resume)."""
    cfg, _, uri = echo_student
    rows = echo_rows(6, seed=8)
    store = RunStore.open(str(tmp_path / "run"))
    broken = _served(cfg.with_overrides({"storage.root": str(tmp_path / "run")}), command=FAKE)
    with pytest.raises(GenerationError, match=r"6 of 6 student requests failed .*HTTP 400"):
        generate_answers(broken, store, uri, rows)
    answers = generate_answers(_served(broken, command=None), store, uri, rows)
    assert (answers["status"] == "ok").all() and answers["answer"].notna().all()


def test_a_server_that_dies_mid_run_is_named_with_its_exit_code(echo_student, tmp_path, mark):
    """Issue 22, N14: the server answers two requests, then exits (code 7): the task fails at
    once with "exited with code 7" and the server's last lines, not after every retry against
    its dead port with a bare ConnectionRefusedError."""
    cfg, _, uri = echo_student
    rows = echo_rows(12, seed=9)
    dying = _served(cfg, command=FAKE + " --answer-first 2 --exit-code 7", concurrency=1)
    started = time.monotonic()
    with pytest.raises(GenerationError, match=r"exited with code 7 while answering") as err:
        generate_answers(dying, RunStore.open(str(tmp_path / "run")), uri, rows)
    assert "fake student server: exiting with code 7" in str(err.value)
    assert time.monotonic() - started < 60, "retried against a dead port"
    assert _gone(mark)


# ---- lion serve-student ------------------------------------------------------------------------


def test_lion_serve_student_answers_any_openai_client(echo_student, warm_server):
    cfg, _, uri = echo_student
    client = openai.OpenAI(base_url=warm_server, api_key="none", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["student"]

    model, tok = load_student(uri, cfg)
    gen = BatchedGenerator(model, tok, cfg.student.generation, "alpaca")
    instruction, words, _ = echo_tasks(1, seed=9)[0]
    expected = next(gen.answer_prompts(["x"], [gen.encode(f"{instruction}\n{words}", "")]))[0]
    chat = client.chat.completions.create(
        model="student",
        messages=[{"role": "user", "content": f"{instruction}\n{words}"}],
        temperature=0,
        max_tokens=12,
    )
    assert chat.choices[0].message.content == expected.answer
    assert chat.choices[0].finish_reason == expected.finish_reason
    assert chat.usage.completion_tokens == expected.completion_tokens

    ids = gen.encode(instruction, words)
    done = client.completions.create(model="student", prompt=ids, temperature=0, max_tokens=12)
    assert done.choices[0].text == next(gen.answer_prompts(["y"], [ids]))[0].answer
    assert done.usage.prompt_tokens == len(ids)

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt=ids, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="positions"):
        client.completions.create(model="student", prompt=ids * 200, max_tokens=4)


def test_server_command_placeholders():
    server = LionConfig().student.generation.server.model_copy(
        update={"command": "vllm serve {model} --port {port} --served-model-name {name} "
                "--tensor-parallel-size {tp}"}
    )  # fmt: skip
    values = {"model": "/runs/my run/round=1/student", "port": "8011", "host": "127.0.0.1",
              "name": "student", "tp": "4", "python": sys.executable}  # fmt: skip
    assert server_command(server, values) == [
        "vllm", "serve", "/runs/my run/round=1/student", "--port", "8011",
        "--served-model-name", "student", "--tensor-parallel-size", "4",
    ]  # fmt: skip
    default = server_command(LionConfig().student.generation.server, values)
    assert default[:3] == [sys.executable, "-m", "lion_core.student.server"]
    with pytest.raises(ConfigError, match="modle"):
        LionConfig.from_dict({"student": {"generation": {"server": {"command": "x {modle}"}}}})


def test_server_api_key_through_the_endpoint_key_resolver(monkeypatch):
    server = LionConfig().student.generation.server
    assert served_mod.server_api_key(server) is None  # lion serve-student, vLLM without a key
    keyed = server.model_copy(update={"api_key_env": "LION_TEST_SERVED_KEY"})
    monkeypatch.delenv("LION_TEST_SERVED_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match=r"student\.generation\.server\.api_key_env"):
        served_mod.server_api_key(keyed)
    monkeypatch.setenv("LION_TEST_SERVED_KEY", "k-123")
    assert served_mod.server_api_key(keyed) == "k-123"
