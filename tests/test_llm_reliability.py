"""Reliability of LLMClient under injected faults, against real servers on loopback.

- a client killed with SIGKILL mid-batch: on resume, the only bodies sent twice are those that
  were in flight at the kill (local storage); at most `flush_seconds` of answers (object store);
  journals of live writers are read, those of dead ones compacted;
- two clients of one role in one process asking the same body at once: it is sent once.

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

import pytest

from lion_core import prompts
from lion_core.config import RefereeConfig, TeacherConfig
from lion_core.llm import ChatRequest, ChatResult, LLMClient, ResponseCache
from lion_core.llm.cache import SendAbandoned
from lion_core.offline.world import seed_instances
from lion_core.storage import Storage

FAST = {"backoff_base": 0.005, "backoff_max": 0.05}
N = 120
CONCURRENCY = 4


def teacher_requests(n: int, seed: int = 0) -> tuple[list[ChatRequest], list[str]]:
    insts = seed_instances(n, seed=seed, max_difficulty=6)
    reqs = [
        ChatRequest.of(prompts.teacher_messages(i.instruction, i.input), tag=f"q{k}")
        for k, i in enumerate(insts)
    ]
    return reqs, [i.answer for i in insts]


def sent_twice(stats: dict) -> int:
    """Bodies the server answered more than once (no faults: every request is answered)."""
    return stats["answered"] - stats["answered_bodies"]


# ---- 1. answers survive a kill ------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from lion_core import prompts
    from lion_core.config import TeacherConfig
    from lion_core.llm import ChatRequest, LLMClient, ResponseCache
    from lion_core.offline.world import seed_instances
    from lion_core.storage import Storage

    base_url, root, n, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    # On an object store: its endpoint and the cache's flush interval.
    options = {"endpoint_url": sys.argv[5]} if len(sys.argv) > 5 else None
    flush = {"flush_seconds": float(sys.argv[6])} if len(sys.argv) > 6 else {}
    reqs = [
        ChatRequest.of(prompts.teacher_messages(i.instruction, i.input), tag=f"q{k}")
        for k, i in enumerate(seed_instances(n, seed=0, max_difficulty=6))
    ]
    endpoint = TeacherConfig(concurrency=concurrency)  # batch_size: the default, 256 > n
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
    # Only requests in flight at the kill were paid twice.
    assert sent_twice(total) <= CONCURRENCY, total
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
            TeacherConfig(concurrency=8, batch_size=7),
            role="teacher",
            cache=ResponseCache(storage, "teacher"),
            base_url=server.base_url,
        )
        assert [r.text for r in client.run(reqs)] == answers
    stats = server.stats()["teacher"]
    assert stats["requests"] == stats["answered"] == stats["distinct_bodies"] == N
    assert client.usage.cache_hits == N and client.usage.requests == 0
    assert all(n.endswith(".parquet") for n in storage.listdir("llm_cache/teacher"))


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
    from lion_core.storage import Storage

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
    endpoint = RefereeConfig(concurrency=4, batch_size=5)
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
