"""Reliability of LLMClient under injected faults, against real servers on loopback.

- a client killed with SIGKILL mid-batch: on resume, the only bodies sent twice are those that
  were in flight at the kill or whose journal line was being written (local storage); at most
  `flush_seconds` of answers (object store); a worker sends while its answer is written;
  journals of live writers are read, those of dead ones compacted;
- two clients of one role in one process asking the same body at once: it is sent once;
- 401/403/404 (bad key, unknown model) stop the role's batch at once with EndpointRejectedError,
  keeping every answer already received;
- a 200 whose body is not a chat completion is one failed request carrying the body's first bytes.

The offline world's /stats (requests, distinct bodies, 200s per body) is what proves it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import teacher_requests

from lion_core.config import OfflineWorldConfig, RefereeConfig, TeacherConfig
from lion_core.errors import EndpointRejectedError, LLMError
from lion_core.llm import ChatRequest, ChatResult, LLMClient, ResponseCache
from lion_core.llm.cache import SendAbandoned
from lion_core.method import prompts
from lion_core.offline.server import OfflineServer
from lion_core.run.storage import Storage

FAST = {"backoff_base": 0.005, "backoff_max": 0.05}
N = 120
CONCURRENCY = 4


def sent_twice(stats: dict) -> int:
    """Bodies the server answered more than once (no faults: every request is answered)."""
    return stats["answered"] - stats["answered_bodies"]


# ---- 1. answers survive a kill ------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from lion_core.method import prompts
    from lion_core.config import TeacherConfig
    from lion_core.llm import ChatRequest, LLMClient, ResponseCache
    from lion_core.offline.world import seed_instances
    from lion_core.run.storage import Storage

    base_url, root, n, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    # On an object store: its endpoint and the cache's flush interval.
    options = {"endpoint_url": sys.argv[5]} if len(sys.argv) > 5 else None
    flush = {"flush_seconds": float(sys.argv[6])} if len(sys.argv) > 6 else {}
    reqs = [
        ChatRequest.of(prompts.teacher_messages(i.instruction, i.input), tag=f"q{k}")
        for k, i in enumerate(seed_instances(n, seed=0, max_difficulty=6))
    ]
    endpoint = TeacherConfig(concurrency=concurrency)  # cache_shard_size: the default, 256 > n
    cache = ResponseCache(Storage(root, options), "teacher", **flush)
    client = LLMClient(endpoint, role="teacher", cache=cache, base_url=base_url)
    client.run(reqs)
    print("finished", flush=True)
    """
)


def run_and_kill(server, tmp_path, root: str, *extra: str, when_answered: int = 40) -> list:
    """Run KILL_SCRIPT in a subprocess and SIGKILL it once the server has answered
    `when_answered` requests; returns (seconds, answered) samples taken until the kill."""
    script = tmp_path / "client.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, str(script), server.base_url, root, str(N), str(CONCURRENCY), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    samples = []
    deadline = time.monotonic() + 120
    while True:
        answered = server.stats().get("teacher", {}).get("answered", 0)
        samples.append((time.monotonic(), answered))
        if answered >= when_answered:
            break
        if proc.poll() is not None:
            raise AssertionError(f"the client ended before the kill: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "the client never got going"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.3)  # the server finishes the requests that were in flight (latency 0.05 s)
    return samples


def resume(server, storage: Storage) -> None:
    """The re-run after the kill: every request answered, correctly."""
    reqs, answers = teacher_requests(N)
    client = LLMClient(
        TeacherConfig(concurrency=CONCURRENCY),
        role="teacher",
        cache=ResponseCache(storage, "teacher"),
        base_url=server.base_url,
        **FAST,
    )
    assert [r.text for r in client.run(reqs)] == answers


def test_kill_mid_batch_resends_only_what_was_in_flight(offline_server, tmp_path):
    server = offline_server(latency=0.05)  # 4 in flight: ~80 answers/s
    root = tmp_path / "run"
    run_and_kill(server, tmp_path, str(root))
    killed = server.stats()["teacher"]
    assert killed["answered_bodies"] < N  # killed mid-run, long before its first batch flush

    storage = Storage(str(root))
    resume(server, storage)
    total = server.stats()["teacher"]
    assert total["answered_bodies"] == N
    # Only requests in flight at the kill, and answers whose journal line was being written
    # (at most one per worker: its next answer waits for it), were paid twice.
    assert sent_twice(total) <= 2 * CONCURRENCY, total
    # The killed process's journal was read, then compacted into a shard: no journal is left.
    names = storage.listdir("llm_cache/teacher")
    assert names and all(n.startswith("part-") and n.endswith(".parquet") for n in names)
    assert len(ResponseCache(storage, "teacher")) == N


def test_uninterrupted_runs_send_every_body_once(offline_server, tmp_path):
    server = offline_server()
    reqs, answers = teacher_requests(N)
    storage = Storage(str(tmp_path))
    for _ in range(2):  # the second run is all cache hits
        client = LLMClient(
            TeacherConfig(concurrency=8, cache_shard_size=7),
            role="teacher",
            cache=ResponseCache(storage, "teacher"),
            base_url=server.base_url,
        )
        assert [r.text for r in client.run(reqs)] == answers
    stats = server.stats()["teacher"]
    assert stats["requests"] == stats["answered"] == stats["distinct_bodies"] == N
    assert client.usage.cache_hits == N and client.usage.requests == 0
    assert all(n.endswith(".parquet") for n in storage.listdir("llm_cache/teacher"))


def test_a_worker_sends_while_its_answer_is_written_but_keeps_at_most_one_waiting(
    offline_server, tmp_path, monkeypatch
):
    """A worker's next request does not wait for its previous answer's fsync (a slow disk
    costs no throughput), but the request after it does: with the journal stuck, a worker of
    concurrency 1 sends two requests, holds their two answers unkept, and sends nothing more;
    once the disk moves, every answer is written."""
    from lion_core.llm import cache as cache_module

    gate, appends = threading.Event(), []
    append = cache_module._Journal.append

    def stuck_append(journal, rows):
        gate.wait(30)  # the disk hangs until the test lets it go
        appends.append(len(rows))
        append(journal, rows)

    monkeypatch.setattr(cache_module._Journal, "append", stuck_append)
    server = offline_server()
    reqs, answers = teacher_requests(5)
    client = LLMClient(
        TeacherConfig(concurrency=1),
        role="teacher",
        cache=ResponseCache(Storage(str(tmp_path)), "teacher"),
        base_url=server.base_url,
    )
    out: list = []
    runner = threading.Thread(target=lambda: out.extend(client.run(reqs)), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while server.stats().get("teacher", {}).get("answered", 0) < 2:
            assert time.monotonic() < deadline, server.stats()
            time.sleep(0.01)
        time.sleep(0.5)  # room for a third request, which must not come
        stuck = server.stats()["teacher"]
        assert stuck["requests"] == stuck["answered"] == 2 and not appends, stuck
    finally:
        gate.set()
        runner.join(30)
    assert [r.text for r in out] == answers
    assert server.stats()["teacher"]["requests"] == 5
    assert len(ResponseCache(Storage(str(tmp_path)), "teacher").frame()) == 5  # on disk


def test_a_failed_journal_write_stops_the_run_also_when_the_endpoint_rejects(tmp_path, monkeypatch):
    """An answer whose journal line cannot be written is not lost silently: the run raises the
    storage error, also when the endpoint rejects the role meanwhile (the worker stops sending
    but still waits for its answer to be kept)."""
    from lion_core.errors import StorageError
    from lion_core.llm import cache as cache_module

    def full_disk(journal, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module._Journal, "append", full_disk)
    for revoke in (False, True):
        with offline_world() as server:
            server.world.api_key = "sk-our-key"
            cache = ResponseCache(Storage(str(tmp_path / f"revoke={revoke}")), "teacher")
            if revoke:  # the key stops working the moment the first answer reaches the cache
                record = cache.record

                def record_and_revoke(result, request=None, record=record, server=server):
                    server.world.api_key = "sk-another-key"
                    return record(result, request)

                monkeypatch.setattr(cache, "record", record_and_revoke)
            client = LLMClient(
                TeacherConfig(concurrency=1),
                role="teacher",
                cache=cache,
                base_url=server.base_url,
                api_key="sk-our-key",
                **FAST,
            )
            with pytest.raises(StorageError, match="No space left"):
                client.run(teacher_requests(4)[0])
            stats = server.stats()["teacher"]
        assert stats["requests"] == 2, stats  # the second request's answer waits for the first
        assert stats["status"].get("401", 0) == int(revoke), stats


def test_kill_on_object_store_loses_at_most_flush_seconds(offline_server, tmp_path, s3_root):
    root, options = s3_root
    server = offline_server(latency=0.05)
    samples = run_and_kill(server, tmp_path, root, options["endpoint_url"], "0.3", when_answered=60)
    killed = server.stats()["teacher"]
    storage = Storage(root, options)
    cached = len(ResponseCache(storage, "teacher"))
    # What was answered 0.3 s (flush_seconds) plus 0.4 s (a shard's PUT) before the kill is kept.
    safe = max(n for t, n in samples if t <= samples[-1][0] - 0.7)
    assert cached >= safe > 0
    resume(server, storage)
    total = server.stats()["teacher"]
    assert total["answered_bodies"] == N
    assert sent_twice(total) == killed["answered"] - cached  # only what was not flushed yet


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from lion_core.llm import ChatResult, ResponseCache
    from lion_core.run.storage import Storage

    cache = ResponseCache(Storage(sys.argv[1]), "teacher")
    results = [
        ChatResult(key="k1", tag="a", status="ok", text="one"),
        ChatResult(key="k2", tag="b", status="ok", text="two"),
        ChatResult(key="k3", tag="c", status="failed", error="HTTP 500"),
    ]
    for r in results:
        cache.record(r, {"model": "m", "messages": [], "params": {}}).result()
    print("recorded", flush=True)
    sys.stdin.read()  # alive, holding its journal, until killed
    """
)


def test_journals_of_live_writers_are_read_and_of_dead_ones_compacted(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline().strip() == "recorded"
        folder = tmp_path / "llm_cache" / "teacher"
        (journal,) = folder.glob("journal-*.jsonl")
        assert not list(folder.glob("part-*.parquet"))

        cache = ResponseCache(Storage(str(tmp_path)), "teacher")  # the writer lives: read only
        assert len(cache) == 2 and cache.get("k1").text == "one" and cache.get("k3") is None
        assert journal.exists() and len(cache.frame()) == 3
        with journal.open("ab") as fh:  # a line torn by the kill
            fh.write(b'{"key": "k4", "tag": "d", "status": "ok", "te')
    finally:
        proc.kill()
        proc.wait()

    assert cache.refresh() == 1  # the dead writer's journal: compacted into its shard
    assert not journal.exists()
    (shard,) = folder.glob("part-*.parquet")
    assert shard.name == journal.name.replace("journal-", "part-").replace(".jsonl", ".parquet")
    frame = ResponseCache(Storage(str(tmp_path)), "teacher").frame()
    assert sorted(frame["key"]) == ["k1", "k2", "k3"]  # the torn line is not an answer
    assert list(frame["status"]) == ["ok", "ok", "failed"] and len(cache) == 2


# ---- 2. one body, one request per process ---------------------------------------------------


def referee_requests(n: int) -> list[ChatRequest]:
    return [
        ChatRequest.of(prompts.referee_messages(f"What is {i} + 1?", str(i + 1), str(i + 1)))
        for i in range(n)
    ]


@pytest.mark.parametrize("shared_cache", [False, True])
def test_two_clients_of_one_role_send_each_body_once(offline_server, tmp_path, shared_cache):
    """The two referee orders ask identical prompts when teacher and student agree."""
    server = offline_server(latency=0.02)
    reqs = referee_requests(40)
    a, b = reqs[:30], reqs[10:]  # 20 identical bodies asked by both, at once
    endpoint = RefereeConfig(concurrency=4, cache_shard_size=5)
    caches = [ResponseCache(Storage(str(tmp_path)), "referee") for _ in range(2)]
    if shared_cache:
        caches[1] = caches[0]
    out: dict[int, list] = {}
    clients = [
        LLMClient(endpoint, role="referee", cache=cache, base_url=server.base_url)
        for cache in caches
    ]
    start = threading.Barrier(2)

    def work(i: int, batch: list[ChatRequest]) -> None:
        start.wait()
        out[i] = clients[i].run(batch)

    threads = [threading.Thread(target=work, args=(i, r)) for i, r in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for i in (0, 1) for r in out[i])
    assert [r.text for r in out[0][10:]] == [r.text for r in out[1][:20]]
    stats = server.stats()["referee"]
    assert stats["requests"] == stats["distinct_bodies"] == 40, stats
    usage = [c.usage for c in clients]
    assert sum(u.requests for u in usage) == 40
    # The 20 shared bodies: waited for while the other client sent them, or answered by then.
    assert sum(u.deduplicated + u.cache_hits for u in usage) == 20


def test_claims_are_per_root_and_role_and_survive_an_abandoned_sender(tmp_path):
    first = ResponseCache(Storage(str(tmp_path)), "referee")
    second = ResponseCache(Storage(str(tmp_path)), "referee")  # another task's cache, same role
    other_role = ResponseCache(Storage(str(tmp_path)), "teacher")
    assert first.claim("k") == second.claim("x") == other_role.claim("k")  # all free: send
    pending = second.claim("k").pending
    assert pending is not None and not pending.done()
    first.release("k", None)  # its sender gave up: the waiter sends it itself
    with pytest.raises(SendAbandoned):
        pending.result(timeout=1)
    assert second.claim("k").pending is None and first.claim("k").pending is not None
    waiting = first.claim("k").pending
    answer = ChatResult(key="k", tag="t", status="ok", text="yes")
    second.release("k", answer)
    assert waiting.result(timeout=1).text == "yes"
    assert first.claim("k").answer.text == "yes" and first.get("k").cached


# ---- 5. rejected keys and models stop the batch ------------------------------------------------


@contextmanager
def offline_world(**options) -> Iterator[OfflineServer]:
    server = OfflineServer(OfflineWorldConfig(latency=0.01), **options).start()
    try:
        yield server
    finally:
        server.stop()


def test_key_revoked_mid_batch_stops_it_and_keeps_the_answers(tmp_path):
    reqs, _ = teacher_requests(N)
    endpoint = TeacherConfig(concurrency=CONCURRENCY, retries=6)
    with offline_world() as server:

        def revoke() -> None:
            while server.stats().get("teacher", {}).get("answered", 0) < 30:
                time.sleep(0.002)
            server.world.api_key = "sk-another-key"  # ours no longer works

        revoker = threading.Thread(target=revoke)
        revoker.start()
        client = LLMClient(
            endpoint,
            role="teacher",
            cache=ResponseCache(Storage(str(tmp_path)), "teacher"),
            base_url=server.base_url,
            api_key="sk-our-key",
            **FAST,
        )
        started = time.monotonic()
        with pytest.raises(EndpointRejectedError) as info:
            client.run(reqs)
        elapsed = time.monotonic() - started
        revoker.join()
        stats = server.stats()["teacher"]
    error = info.value
    assert isinstance(error, LLMError)
    assert (error.role, error.base_url, error.model, error.status) == (
        "teacher",
        server.base_url,
        endpoint.model,
        401,
    )
    for part in ("teacher", server.base_url, repr(endpoint.model), "HTTP 401", "API key"):
        assert part in str(error), str(error)
    # Stopped at once: only what was in flight got a 401, nothing was retried.
    assert stats["status"]["401"] <= CONCURRENCY and client.usage.retries == 0
    assert elapsed < 3
    # Every answer received is in the cache.
    assert len(ResponseCache(Storage(str(tmp_path)), "teacher")) == stats["answered_bodies"] >= 30


@pytest.mark.parametrize(
    ("world", "fields", "status"),
    [
        ({"strict_models": True}, {"model": "gpt-no-such-model"}, 404),  # a wrong model name
        ({"api_key": "sk-right"}, {}, 401),  # no key sent
    ],
)
def test_rejection_from_the_first_request(world, fields, status):
    endpoint = TeacherConfig(concurrency=CONCURRENCY, retries=6, **fields)
    reqs, _ = teacher_requests(50)
    with offline_world(**world) as server:
        client = LLMClient(endpoint, role="teacher", cache=None, base_url=server.base_url, **FAST)
        with pytest.raises(EndpointRejectedError, match=f"HTTP {status}") as info:
            client.run(reqs)
        stats = server.stats()["teacher"]
    assert info.value.status == status and info.value.model == endpoint.model
    assert repr(endpoint.model) in str(info.value)
    assert stats["requests"] <= CONCURRENCY and client.usage.retries == 0


@contextmanager
def canned_server(status: int, content_type: str, body: bytes) -> Iterator[tuple[str, list]]:
    """A loopback HTTP server answering every POST with `status`, `content_type` and `body`;
    yields its base URL and the paths it was asked."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            paths.append(self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", paths
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_forbidden_stops_the_batch(tmp_path):
    body = b'{"error": {"message": "Project does not have access to model", "code": null}}'
    reqs, _ = teacher_requests(20)
    with canned_server(403, "application/json", body) as (base_url, paths):
        client = LLMClient(
            TeacherConfig(concurrency=2, retries=6),
            role="referee",
            cache=ResponseCache(Storage(str(tmp_path)), "referee"),
            base_url=base_url,
            **FAST,
        )
        with pytest.raises(EndpointRejectedError, match="HTTP 403") as info:
            client.run(reqs)
    assert info.value.status == 403 and info.value.role == "referee"
    assert "Project does not have access to model" in str(info.value)
    assert len(paths) <= 2  # what was in flight, no retries


# ---- 6. a 200 that is not a chat completion ---------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b"upstream proxy: service temporarily rerouted, try later " * 20),
        ("application/json", b"<html><body>502 Bad Gateway</body></html>" + b" " * 300),
        ("application/json", b'{"detail": "chat is not served here"}'),
        # chat completions in shape only: a choice, a message or a text of the wrong type
        ("application/json", b'{"choices": ["chat is not served here"]}'),
        ("application/json", b'{"choices": [{"message": "chat is not served here"}]}'),
        (
            "application/json",
            b'{"choices": [{"message": {"content": ["chat is not served here"]}}]}',
        ),
    ],
)
def test_a_200_that_is_not_a_chat_completion_is_one_failed_request(content_type, body, tmp_path):
    reqs, _ = teacher_requests(3)
    with canned_server(200, content_type, body) as (base_url, paths):
        client = LLMClient(
            TeacherConfig(concurrency=2, retries=3),
            role="teacher",
            cache=ResponseCache(Storage(str(tmp_path)), "teacher"),
            base_url=base_url,
            **FAST,
        )
        results = client.run(reqs)
    assert len(paths) == 3  # one attempt each, no retries
    for result in results:
        assert result.status == "failed" and result.text is None
        assert "HTTP 200" in result.error and body.decode()[:40] in result.error, result.error
        assert len(result.error) < 400  # the first bytes, not the whole page
        assert result.extra["attempts"] == 1
    assert client.usage.failures == 3 and client.usage.retries == 0
    frame = ResponseCache(Storage(str(tmp_path)), "teacher").frame()
    assert list(frame["status"]) == ["failed"] * 3  # kept for audit, sent again by a re-run
