"""LLMClient and ResponseCache against the offline world's real HTTP server (official `openai`
client underneath); the server's /stats counters prove what was sent."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import teacher_requests

from lion_core.config import EndpointConfig, RefereeConfig, TeacherConfig
from lion_core.errors import EndpointUnreachableError, LLMError, MissingAPIKeyError
from lion_core.llm import ChatRequest, LLMClient, ResponseCache
from lion_core.llm import online as online_module
from lion_core.method import prompts
from lion_core.offline import roles
from lion_core.run.storage import Storage

FAST = {"backoff_base": 0.005, "backoff_max": 0.05}


def make_client(server, root, role="teacher", endpoint=None, **kw) -> LLMClient:
    endpoint = endpoint or TeacherConfig(concurrency=8, cache_shard_size=25)
    cache = ResponseCache(Storage(str(root)), role) if root is not None else None
    return LLMClient(endpoint, role=role, cache=cache, base_url=server.base_url, **{**FAST, **kw})


def test_faults_every_request_answered_exactly_once(offline_server, tmp_path):
    server = offline_server(faults={"rate_429": 0.1, "rate_500": 0.1, "retry_after": 0.01})
    reqs, answers = teacher_requests(200)
    client = make_client(server, tmp_path)
    results = client.run(reqs)

    assert [r.tag for r in results] == [r.tag for r in reqs]
    assert all(r.ok for r in results)
    assert [r.text for r in results] == answers
    stats = server.stats()["teacher"]
    assert stats["distinct_bodies"] == stats["answered_bodies"] == stats["answered"] == 200
    assert stats["answered_twice"] == 0
    assert stats["status"]["429"] > 0 and stats["status"]["500"] > 0
    assert stats["requests"] == 200 + client.usage.retries
    assert client.usage.requests == 200 and client.usage.failures == 0
    assert client.usage.completion_tokens > 0 and client.usage.prompt_tokens > 0
    # Flushed every batch: 200 / 25 shards.
    assert len(Storage(str(tmp_path)).listdir("llm_cache/teacher")) == 8


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from lion_core.method import prompts
    from lion_core.config import TeacherConfig
    from lion_core.llm import ChatRequest, LLMClient, ResponseCache
    from lion_core.offline.world import seed_instances
    from lion_core.run.storage import Storage

    base_url, root = sys.argv[1], sys.argv[2]
    reqs = [
        ChatRequest.of(prompts.teacher_messages(i.instruction, i.input), tag=f"q{k}")
        for k, i in enumerate(seed_instances(120, seed=0, max_difficulty=6))
    ]
    endpoint = TeacherConfig(concurrency=4, cache_shard_size=10)
    client = LLMClient(endpoint, role="teacher", cache=ResponseCache(Storage(root), "teacher"),
                       base_url=base_url)
    print("started", flush=True)
    client.run(reqs)
    print("finished", flush=True)
    """
)


def test_killed_client_rerun_sends_only_missing(offline_server, tmp_path):
    server = offline_server(latency=0.05)  # 120 requests at 4 in flight: ~1.5 s
    root = tmp_path / "run"
    script = tmp_path / "client.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), server.base_url, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    shards = root / "llm_cache" / "teacher"
    deadline = time.monotonic() + 60
    while not (shards.is_dir() and len(list(shards.glob("part-*.parquet"))) >= 3):
        assert proc.poll() is None, "client finished or died before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    first = server.stats()["teacher"]
    assert first["answered_bodies"] < 120  # killed mid-run
    cached = len(ResponseCache(Storage(str(root)), "teacher"))
    assert 30 <= cached <= first["answered_bodies"]
    lost = first["answered_bodies"] - cached
    assert lost <= 10 + 4  # at most the unflushed batch plus what was in flight

    server.reset_stats()
    reqs, answers = teacher_requests(120)
    client = make_client(server, root, endpoint=TeacherConfig(concurrency=4, cache_shard_size=10))
    results = client.run(reqs)
    assert [r.text for r in results] == answers
    second = server.stats()["teacher"]
    assert second["requests"] == second["distinct_bodies"] == 120 - cached
    assert client.usage.cache_hits == cached and client.usage.requests == 120 - cached
    assert sum(r.cached for r in results) == cached


def test_same_key_twice_is_one_request_and_samples_differ(offline_server):
    server = offline_server()
    a = ChatRequest.of(prompts.teacher_messages("What is 2 + 3?"), tag="a")
    b = ChatRequest.of(prompts.teacher_messages("What is 2 + 3?"), tag="b")  # same key
    c = ChatRequest.of(prompts.teacher_messages("What is 2 + 4?"), tag="c")
    client = make_client(server, None)
    results = client.run([a, b, c, a])
    assert [r.tag for r in results] == ["a", "b", "c", "a"]
    assert [r.text for r in results] == ["5", "5", "6", "5"]
    assert server.stats()["teacher"]["requests"] == 2
    assert client.usage.requests == 2 and client.usage.deduplicated == 2

    # Samples of one prompt are distinct keys and distinct bodies (seed=sample).
    gen = prompts.generator_messages("What is 2 + 3?", "hard")
    samples = [ChatRequest.of(gen, tag=f"s{i}", sample=i) for i in range(4)]
    client = make_client(server, None, role="generator")
    results = client.run(samples)
    assert len({client.key(s) for s in samples}) == 4
    assert server.stats()["generator"]["distinct_bodies"] == 4
    assert len({r.text for r in results}) > 1


def test_garbled_referee_answers_are_kept(offline_server, tmp_path):
    server = offline_server(faults={"rate_garbled": 1.0})
    reqs = [
        ChatRequest.of(prompts.referee_messages(f"What is {i} + 1?", str(i + 1), "0"), tag=f"r{i}")
        for i in range(10)
    ]
    reqs.append(
        ChatRequest.of(
            prompts.referee_messages("What is 1 + 1?", "2", "3", json_mode=True),
            tag="json",
            response_format="json_object",
        )
    )
    client = make_client(server, tmp_path, role="referee", endpoint=RefereeConfig())
    results = client.run(reqs)
    assert all(r.ok for r in results)  # the HTTP call worked; the text is what it is
    assert {r.text for r in results[:-1]} == {roles.GARBLED_TEXT}
    assert results[-1].text == roles.GARBLED_JSON
    frame = ResponseCache(Storage(str(tmp_path)), "referee").frame()
    assert len(frame) == 11 and set(frame["status"]) == {"ok"}
    assert set(frame["text"]) == {roles.GARBLED_TEXT, roles.GARBLED_JSON}
    stored = json.loads(frame.loc[frame["tag"] == "json", "request"].iloc[0])
    assert stored["params"]["response_format"] == "json_object"
    assert stored["model"] == "offline-referee"


def test_failures_after_retries_are_recorded_and_resent(offline_server, tmp_path):
    broken = offline_server(faults={"rate_500": 1.0})
    reqs, answers = teacher_requests(6)
    endpoint = TeacherConfig(retries=2, concurrency=4)
    client = make_client(broken, tmp_path, endpoint=endpoint)
    results = client.run(reqs)
    assert all(r.status == "failed" and r.text is None for r in results)
    assert all("HTTP 500" in r.error and "3 attempts" in r.error for r in results)
    assert client.usage.failures == 6 and client.usage.retries == 12
    assert broken.stats()["teacher"]["requests"] == 18

    cache = ResponseCache(Storage(str(tmp_path)), "teacher")
    frame = cache.frame()
    assert len(frame) == 6 and set(frame["status"]) == {"failed"}
    assert frame["error"].str.contains("HTTP 500").all() and (frame["attempts"] == 3).all()
    assert len(cache) == 0  # failures are not answers: a re-run sends them again

    healthy = offline_server()
    client = make_client(healthy, tmp_path, endpoint=endpoint)
    assert [r.text for r in client.run(reqs)] == answers
    assert healthy.stats()["teacher"]["requests"] == 6


def test_non_transient_errors_fail_at_once(offline_server):
    server = offline_server()
    bad = ChatRequest(messages=(), tag="empty")  # the server answers 400
    good = ChatRequest.of(prompts.teacher_messages("What is 1 + 1?"), tag="ok")
    client = make_client(server, None)
    bad_result, good_result = client.run([bad, good])
    assert bad_result.status == "failed" and bad_result.error.startswith("HTTP 400")
    assert bad_result.extra["attempts"] == 1 and client.usage.retries == 0
    assert good_result.text == "2"


def test_retry_after_is_honoured(offline_server):
    server = offline_server(faults={"rate_429": 1.0, "retry_after": 0.2})
    client = make_client(server, None, endpoint=TeacherConfig(retries=2))
    start = time.monotonic()
    (result,) = client.run([ChatRequest.of(prompts.teacher_messages("What is 1 + 1?"))])
    assert time.monotonic() - start >= 0.4  # two waits of Retry-After, not the 5 ms backoff
    assert result.status == "failed" and "HTTP 429" in result.error


def test_cache_on_s3(offline_server, s3_root):
    root, options = s3_root
    server = offline_server()
    reqs, answers = teacher_requests(30)
    endpoint = TeacherConfig(cache_shard_size=10)
    client = LLMClient(
        endpoint,
        role="teacher",
        cache=ResponseCache(Storage(root, options), "teacher"),
        base_url=server.base_url,
    )
    assert [r.text for r in client.run(reqs)] == answers
    storage = Storage(root, options)
    assert len(storage.listdir("llm_cache/teacher")) == 3
    reopened = ResponseCache(storage, "teacher")
    assert len(reopened) == 30
    server.reset_stats()
    client = LLMClient(endpoint, role="teacher", cache=reopened, base_url=server.base_url)
    assert [r.text for r in client.run(reqs)] == answers
    assert server.stats() == {} and client.usage.cache_hits == 30

    # A shard written by another writer (here boto3, bypassing this process's s3fs listing
    # cache) is picked up by refresh().
    import boto3

    from lion_core.llm.cache import CACHE_SCHEMA, shard_name
    from lion_core.run.storage import parquet_bytes

    row = {f.name: None for f in CACHE_SCHEMA}
    row.update(key="k-from-elsewhere", role="teacher", tag="x", status="ok", text="hello")
    bucket, prefix = root.removeprefix("s3://").split("/", 1)
    boto3.client("s3", endpoint_url=options["endpoint_url"]).put_object(
        Bucket=bucket,
        Key=f"{prefix}/llm_cache/teacher/{shard_name()}",
        Body=parquet_bytes(pa.Table.from_pylist([row], schema=CACHE_SCHEMA)),
    )
    assert reopened.refresh() == 1
    assert reopened.get("k-from-elsewhere").text == "hello" and len(reopened) == 31


def test_two_threads_one_role_lose_nothing(offline_server, tmp_path):
    server = offline_server(latency=0.005)
    cache = ResponseCache(Storage(str(tmp_path)), "referee")
    a = [
        ChatRequest.of(prompts.referee_messages(f"What is {i} + 1?", str(i + 1), "0"), tag=f"a{i}")
        for i in range(60)
    ]
    b = [
        ChatRequest.of(prompts.referee_messages(f"What is {i} + 1?", "0", str(i + 1)), tag=f"b{i}")
        for i in range(60)
    ]
    endpoint = RefereeConfig(concurrency=4, cache_shard_size=7)
    out: dict[str, list] = {}

    def work(name, reqs, own_cache):
        client = LLMClient(endpoint, role="referee", cache=own_cache, base_url=server.base_url)
        out[name] = client.run(reqs)

    threads = [
        threading.Thread(target=work, args=("a", a, cache)),
        threading.Thread(target=work, args=("b", b, cache)),
        threading.Thread(  # a second cache instance of the same role, same folder
            target=work, args=("c", a[:30], ResponseCache(Storage(str(tmp_path)), "referee"))
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for name in "abc" for r in out[name])
    reopened = ResponseCache(Storage(str(tmp_path)), "referee")
    assert len(reopened) == 120


def test_missing_api_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("LION_TEST_NO_SUCH_KEY", raising=False)
    endpoint = EndpointConfig(base_url="http://127.0.0.1:9/v1", api_key_env="LION_TEST_NO_SUCH_KEY")
    with pytest.raises(MissingAPIKeyError, match="LION_TEST_NO_SUCH_KEY") as info:
        LLMClient(endpoint, role="referee", cache=None)
    assert "referee" in str(info.value)

    monkeypatch.setenv("LION_TEST_NO_SUCH_KEY", "sk-secret-value")
    client = LLMClient(endpoint, role="referee", cache=None)
    assert "sk-secret" not in repr(client) and "sk-secret" not in repr(vars(client).get("usage"))


def test_unreachable_endpoint_raises_and_keeps_what_was_done(offline_server, tmp_path):
    server = offline_server()
    reqs, answers = teacher_requests(10)
    endpoint = TeacherConfig(retries=1, concurrency=4, cache_shard_size=5)
    assert [r.text for r in make_client(server, tmp_path, endpoint=endpoint).run(reqs)] == answers
    url = server.base_url
    server.stop()

    more, _ = teacher_requests(20, seed=1)
    client = LLMClient(
        endpoint,
        role="teacher",
        cache=ResponseCache(Storage(str(tmp_path)), "teacher"),
        base_url=url,
        **FAST,
    )
    with pytest.raises(EndpointUnreachableError) as info:
        client.run(reqs + more)
    message = str(info.value)
    assert "teacher" in message and url in message and repr(more[0].tag) in message
    cache = ResponseCache(Storage(str(tmp_path)), "teacher")
    assert len(cache) == 10
    assert (cache.frame()["status"] == "failed").sum() == client.usage.failures > 0


def test_endpoint_dying_mid_run_loses_nothing_answered(offline_server, tmp_path):
    server = offline_server(latency=0.01)
    reqs, answers = teacher_requests(80)
    endpoint = TeacherConfig(retries=1, concurrency=2, cache_shard_size=5)

    def kill_when_busy():
        while server.stats().get("teacher", {}).get("answered", 0) < 25:
            time.sleep(0.005)
        server.stop()

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    client = make_client(server, tmp_path, endpoint=endpoint)
    with pytest.raises(EndpointUnreachableError):
        client.run(reqs)
    killer.join()
    answered = server.stats()["teacher"]["answered_bodies"]
    cache = ResponseCache(Storage(str(tmp_path)), "teacher")
    cached = len(cache)
    assert cached == answered  # everything answered before the death was saved
    failed = cache.frame().query("status == 'failed'")
    assert len(failed) == client.usage.failures >= 5  # and the failures, for the record
    assert failed["error"].str.startswith("no answer").all()

    again = offline_server()
    client = make_client(again, tmp_path, endpoint=endpoint)
    assert [r.text for r in client.run(reqs)] == answers
    assert again.stats()["teacher"]["requests"] == 80 - cached


def test_run_inside_an_event_loop_and_progress_log(offline_server, caplog, monkeypatch):
    server = offline_server()
    monkeypatch.setattr(online_module, "LOG_INTERVAL", 0.0)
    reqs, answers = teacher_requests(12)
    client = make_client(server, None)

    async def from_a_coroutine():
        return client.run(reqs, desc="round 1")  # sync call while a loop runs here

    with caplog.at_level(logging.INFO, logger="lion_core.llm"):
        results = asyncio.run(from_a_coroutine())
    assert [r.text for r in results] == answers
    lines = [r.getMessage() for r in caplog.records if r.name == "lion_core.llm"]
    assert any(
        line.startswith("teacher: round 1: 12/12 done, 0 cached, 0 failed,") and "req/s" in line
        for line in lines
    ), lines


def test_cache_shards_are_readable_parquet(offline_server, tmp_path):
    server = offline_server()
    reqs, _ = teacher_requests(5)
    client = make_client(server, tmp_path)
    client.run(reqs)
    import pandas as pd

    (shard,) = Path(tmp_path, "llm_cache", "teacher").glob("part-*.parquet")
    frame = pd.read_parquet(shard)
    assert list(frame.columns) == [
        "key",
        "role",
        "tag",
        "status",
        "text",
        "error",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "attempts",
        "request",
        "created_at",
        "cost_usd",
        "paid_by",
    ]
    assert set(frame["key"]) == {client.key(r) for r in reqs}
    first = json.loads(frame["request"].iloc[0])
    assert set(first) == {"model", "messages", "params"}


def test_completion_requests_render_to_completions_with_their_prompt_in_the_key(tmp_path):
    """A chat request keeps the key it always had (sha256 of model, messages and parameters);
    a completion sends `prompt` to /completions and keys it; `extra_body` goes into body and
    key, `key_scope` into the key only; completions are refused in batch mode."""
    import hashlib

    endpoint = TeacherConfig()
    chat = ChatRequest.of(prompts.teacher_messages("What is 2 + 3?"), tag="c")
    plain = LLMClient(endpoint, role="teacher", cache=None, base_url="http://127.0.0.1:9/v1")
    rendered = plain.render(chat)
    preimage = {
        "model": endpoint.model,
        "messages": chat.message_dicts(),
        "params": {
            "temperature": endpoint.temperature,
            "top_p": endpoint.top_p,
            "max_tokens": endpoint.max_tokens,
        },
    }
    canonical = json.dumps(preimage, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert rendered.key == hashlib.sha256(canonical.encode()).hexdigest()
    assert rendered.payload == preimage and rendered.path == "/chat/completions"
    assert "prompt" not in rendered.body

    scoped = LLMClient(
        endpoint,
        role="teacher",
        cache=None,
        base_url="http://127.0.0.1:9/v1",
        extra_body={"stop_token_ids": [2]},
        key_scope={"checkpoint": "abc"},
    )
    ids = ChatRequest.completion([5, 6, 7], tag="i")
    job = scoped.render(ids)
    assert job.path == "/completions"
    assert job.body["prompt"] == [5, 6, 7] and "messages" not in job.body
    assert job.body["stop_token_ids"] == [2] and "checkpoint" not in json.dumps(job.body)
    assert job.payload["scope"] == {"checkpoint": "abc"}
    assert job.payload["params"]["stop_token_ids"] == [2]
    # every part of the key matters
    text = scoped.render(ChatRequest.completion("5 6 7"))
    other_digest = LLMClient(
        endpoint,
        role="teacher",
        cache=None,
        base_url="http://127.0.0.1:9/v1",
        extra_body={"stop_token_ids": [2]},
        key_scope={"checkpoint": "abd"},
    ).render(ids)
    keys = {job.key, text.key, other_digest.key, plain.render(ids).key, scoped.render(chat).key}
    assert len(keys) == 5
    assert scoped.render(ChatRequest.completion((5, 6, 7), tag="other")).key == job.key

    batch = endpoint.model_copy(update={"mode": "batch"})
    client = LLMClient(
        batch,
        role="teacher",
        cache=ResponseCache(Storage(str(tmp_path)), "teacher"),
        base_url="http://127.0.0.1:9/v1",
    )
    with pytest.raises(LLMError, match="'ids-1' is a completion"):
        client.run([ChatRequest.completion([1, 2], tag="ids-1")])


def test_concurrency_is_per_role_over_clients_running_at_once(offline_server, tmp_path):
    """The referee's two orders (and the generator's two kinds) are two clients of one role
    running side by side in two threads: together they keep `concurrency` requests in flight,
    not twice as many (the world counts the most it held at once)."""
    server = offline_server(latency=0.2)
    endpoint = RefereeConfig(concurrency=4)
    reqs, _ = teacher_requests(24)
    clients = [make_client(server, None, role="referee", endpoint=endpoint) for _ in range(2)]
    results: list = [None, None]

    def run(k: int) -> None:
        results[k] = clients[k].run(reqs[k * 12 : (k + 1) * 12])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for rs in results for r in rs)
    assert server.stats()["teacher"]["max_in_flight"] == 4
    assert clients[0].inflight is clients[1].inflight and clients[0].inflight.count == 0


def test_in_flight_slots_survive_cancelled_waiters():
    """Waiters cancelled while queued, or after a slot was handed to them, give nothing away
    and lose nothing: every slot comes back, and no more than the limit is ever held, with
    tasks of two event loops in two threads."""
    from lion_core.llm.ratelimit import InFlightLimit

    gate = InFlightLimit(3)

    async def use(seconds: float) -> None:
        async with gate:
            await asyncio.sleep(seconds)

    async def main(seed: int) -> None:
        tasks = [asyncio.create_task(use(0.002 * (i % 5))) for i in range(60)]
        await asyncio.sleep(0.01)
        for task in tasks[seed::4]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    threads = [threading.Thread(target=asyncio.run, args=(main(k),)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gate.count == 0 and gate.peak == 3 and not gate._waiters


def test_a_raised_in_flight_limit_lets_waiters_in_at_once():
    from lion_core.llm.ratelimit import InFlightLimit

    key = ("referee", "http://raised.invalid/v1", "m")
    gate = InFlightLimit.shared(key, 1)

    async def main() -> None:
        async def second() -> None:
            async with gate:
                pass

        async with gate:
            waiter = asyncio.create_task(second())
            await asyncio.sleep(0.02)
            assert not waiter.done()  # one slot, held
            InFlightLimit.shared(key, 2)  # the next client's concurrency
            await asyncio.wait_for(waiter, 2)

    asyncio.run(main())
    assert gate.count == 0 and gate.peak == 2
