"""Batch mode, the budget and rate limits of LLMClient, against the offline world's Batch API
through the official `openai` client; the world's /stats (batches, their lines, requests and
answers per role) prove what was submitted and paid.

- batch answers equal sync answers, land in the same cache (a later sync run sends nothing),
  and a call larger than batch.max_requests is split;
- failed lines are resubmitted alone, in a following batch;
- a client killed after submitting resumes polling the same batch: no second batch;
- a cancelled call cancels its batch; a resumed call collects the rest;
- a budget smaller than a call's estimate stops it before anything is sent;
- a TPM limit learned from x-ratelimit-* headers paces sending with no 429.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import teacher_requests

from lion_core.config import ModelPrice, TeacherConfig
from lion_core.errors import BudgetExceeded
from lion_core.llm import LLMClient, ResponseCache, costs
from lion_core.llm.batch import Ledger, cancel_open_batches
from lion_core.llm.cache import spent_usd
from lion_core.llm.costs import Budget
from lion_core.llm.ratelimit import RateLimiter
from lion_core.run.storage import Storage

POLL = {"poll_seconds": 0.05, "poll_max_seconds": 0.2}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def batch_client(server, root, **batch) -> LLMClient:
    """A teacher in batch mode, with `batch` settings (fast polls unless given)."""
    cfg = TeacherConfig(mode="batch", batch={**POLL, **batch})
    cache = ResponseCache(Storage(str(root)), "teacher")
    return LLMClient(cfg, role="teacher", cache=cache, base_url=server.base_url)


def test_batch_answers_like_sync_split_and_cached(offline_server, tmp_path):
    server = offline_server(batch_delay=0.1)
    reqs, answers = teacher_requests(30)
    client = batch_client(server, tmp_path, max_requests=12)
    results = client.run(reqs)
    assert [r.text for r in results] == answers
    assert all(r.ok and r.extra["batch"] for r in results)
    stats = server.stats()["teacher"]
    assert stats["batch_sizes"] == [12, 12, 6]
    assert stats["answered"] == stats["answered_bodies"] == 30
    records = Ledger(Storage(str(tmp_path)), "teacher").all()
    assert len(records) == 3 and {r.state for r in records} == {"merged"}

    # The same requests in sync mode: every one from the cache, nothing sent.
    server.reset_stats()
    sync = LLMClient(
        TeacherConfig(), role="teacher", cache=ResponseCache(Storage(str(tmp_path)), "teacher"),
        base_url=server.base_url,
    )  # fmt: skip
    assert [r.text for r in sync.run(reqs)] == answers
    assert server.stats() == {} and sync.usage.cache_hits == 30


def test_failed_lines_are_resubmitted_alone(offline_server, tmp_path):
    server = offline_server(batch_delay=0.05, faults={"batch_fail_rate": 0.3})
    reqs, answers = teacher_requests(40)
    client = batch_client(server, tmp_path, resubmits=5)
    results = client.run(reqs)
    assert [r.text for r in results] == answers
    stats = server.stats()["teacher"]
    sizes = stats["batch_sizes"]
    assert sizes[0] == 40 and len(sizes) >= 2
    # each following batch carries exactly the lines that failed in the one before
    failed = stats["status"]["500"]
    assert sum(sizes[1:]) == failed > 0
    assert stats["answered"] == stats["answered_bodies"] == 40  # no answer paid twice
    usage = client.usage
    assert (usage.requests, usage.retries, usage.failures) == (40, failed, 0)
    frame = ResponseCache(Storage(str(tmp_path)), "teacher").frame()
    assert (frame["status"] == "failed").sum() == failed  # recorded with their error
    assert frame.loc[frame["status"] == "failed", "error"].str.contains("HTTP 500").all()


def test_a_garbled_output_line_costs_only_its_own_request(offline_server, tmp_path, caplog):
    """issue 22, N4: one non-JSON line in a batch's output file was a JSONDecodeError traceback
    that dropped every paid line of the file, on every resume. Now that line's request counts as
    unanswered and goes into the next batch alone; the other answers are kept."""
    server = offline_server(batch_delay=0.05)
    world = server.world
    close = world._close_batch

    def garble_first_output(batch, out, err, status):
        close(batch, out, err, status)
        if world.stats.snapshot()["teacher"]["batches"] == 1:  # the first batch only
            content = world.files[batch["output_file_id"]]["content"].split(b"\n", 1)
            world.files[batch["output_file_id"]]["content"] = b"{garbled\n" + content[1]

    world._close_batch = garble_first_output
    reqs, answers = teacher_requests(20)
    results = batch_client(server, tmp_path, resubmits=2).run(reqs)
    assert [r.text for r in results] == answers
    stats = server.stats()["teacher"]
    assert stats["batch_sizes"] == [20, 1]  # only the garbled line's request was sent again
    assert "are not JSON objects" in caplog.text


def test_expired_lines_are_resubmitted(offline_server, tmp_path):
    server = offline_server(batch_delay=0.05, faults={"batch_expire_rate": 0.25})
    reqs, answers = teacher_requests(20)
    results = batch_client(server, tmp_path, resubmits=6).run(reqs)
    assert [r.text for r in results] == answers
    stats = server.stats()["teacher"]
    assert stats["batch_sizes"][0] == 20 and len(stats["batch_sizes"]) >= 2
    assert stats["answered"] == stats["answered_bodies"] == 20


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
        for k, i in enumerate(seed_instances(25, seed=0, max_difficulty=6))
    ]
    endpoint = TeacherConfig(mode="batch", batch={"poll_seconds": 0.05})
    client = LLMClient(endpoint, role="teacher", cache=ResponseCache(Storage(root), "teacher"),
                       base_url=base_url)
    client.run(reqs)
    print("finished", flush=True)
    """
)


def kill_after_submission(server, tmp_path) -> Ledger:
    """Run KILL_SCRIPT against `server` and SIGKILL it once its batch is recorded with an id;
    return the ledger of its root (`tmp_path/run`)."""
    script = tmp_path / "client.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, str(script), server.base_url, str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    ledger = Ledger(Storage(str(tmp_path / "run")), "teacher")
    deadline = time.monotonic() + 60
    while not any(s.batch_id for s in ledger.all()):
        assert proc.poll() is None, "the client ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return ledger


def test_killed_after_submission_resumes_the_same_batch(offline_server, tmp_path):
    server = offline_server(batch_delay=2.0)
    kill_after_submission(server, tmp_path)
    assert server.stats()["teacher"]["batches"] == 1
    assert server.stats()["teacher"]["answered"] == 0  # killed before the batch ended

    reqs, answers = teacher_requests(25)
    results = batch_client(server, tmp_path / "run").run(reqs)
    assert [r.text for r in results] == answers
    stats = server.stats()["teacher"]
    assert stats["batches"] == 1 and stats["batch_lines"] == 25  # polled again, not resubmitted
    assert stats["answered"] == stats["answered_bodies"] == 25


def test_a_re_attached_batch_counts_against_the_budget(offline_server, tmp_path):
    """Issue 22, N6: the requests of a batch submitted before a kill are charged when its
    answers arrive, so on resume they count against `budget_usd` before anything is sent (they
    were left out as "paid already": $0.96 spent of a $0.72 budget). A budget below their
    estimate stops the resume, nothing collected or sent; a larger one completes it."""
    from lion_core.errors import BudgetExceeded
    from lion_core.llm.costs import Budget

    server = offline_server(batch_delay=1.0)
    kill_after_submission(server, tmp_path)
    reqs, answers = teacher_requests(25)
    probe = batch_client(server, tmp_path / "run")
    jobs = {j.key: j for j in map(probe.render, reqs)}
    needed = probe.estimate(jobs).cost("batch")
    assert needed > 0

    def resumed(limit: float) -> LLMClient:
        client = batch_client(server, tmp_path / "run")
        client.budget = Budget(limit, Storage(str(tmp_path / "run")))
        return client

    with pytest.raises(BudgetExceeded):
        resumed(needed * 0.9).run(reqs)
    assert server.stats()["teacher"]["batches"] == 1  # nothing new submitted
    assert [r.text for r in resumed(needed * 1.5).run(reqs)] == answers
    assert Budget(1, Storage(str(tmp_path / "run"))).spent() <= needed * 1.5


def test_a_batch_the_provider_no_longer_knows_is_submitted_again(offline_server, tmp_path, caplog):
    """issue 22, N5: a run killed with its batch open, resumed against a provider that no
    longer knows the batch (here: a restarted world) was a NotFoundError on every resume, for
    good. Now the batch is closed as lost and its requests are submitted again."""
    first = offline_server(batch_delay=60.0)
    ledger = kill_after_submission(first, tmp_path)
    (lost_id,) = [s.batch_id for s in ledger.all()]

    restarted = offline_server(batch_delay=0.05)  # knows no batch
    reqs, answers = teacher_requests(25)
    results = batch_client(restarted, tmp_path / "run").run(reqs)
    assert [r.text for r in results] == answers
    assert restarted.stats()["teacher"]["batch_sizes"] == [25]
    assert f"batch {lost_id} is unknown to the provider" in caplog.text
    (lost,) = [s for s in ledger.all() if s.status == "lost"]  # (a new world reuses its ids)
    assert (lost.batch_id, lost.state) == (lost_id, "abandoned")


def test_cancelling_the_run_cancels_its_batch(offline_server, tmp_path):
    server = offline_server(batch_delay=60.0)
    reqs, answers = teacher_requests(12)
    client = batch_client(server, tmp_path)

    async def cancel_after_submission() -> None:
        task = asyncio.create_task(client.arun(reqs))
        while not server.stats().get("teacher", {}).get("batches"):
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_after_submission())
    assert server.stats()["teacher"]["cancelled_batches"] == 1
    (record,) = Ledger(Storage(str(tmp_path)), "teacher").all()
    assert record.cancel_requested and record.state == "open"

    # Resumed: the cancelled batch is collected (nothing ran) and its lines sent again once.
    server.world.cfg.batch_delay = 0.05
    results = batch_client(server, tmp_path, resubmits=0).run(reqs)
    assert [r.text for r in results] == answers
    assert server.stats()["teacher"]["batch_sizes"] == [12, 12]


def test_open_batches_cancelled_from_outside(offline_server, tmp_path):
    """What a flow's cancellation hook does: cancel every open batch recorded for the role."""
    server = offline_server(batch_delay=60.0)
    reqs, _ = teacher_requests(6)
    client = batch_client(server, tmp_path, cancel_on_cancel=False)

    async def interrupt_after_submission() -> None:
        task = asyncio.create_task(client.arun(reqs))
        while not any(s.batch_id for s in Ledger(Storage(str(tmp_path)), "teacher").all()):
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupt_after_submission())
    assert server.stats()["teacher"]["cancelled_batches"] == 0  # left running, as configured
    (batch_id,) = cancel_open_batches(batch_client(server, tmp_path))
    assert server.world.batches[batch_id]["status"] == "cancelled"
    assert server.stats()["teacher"]["cancelled_batches"] == 1


def test_budget_stops_a_call_before_it_sends(offline_server, tmp_path):
    server = offline_server()
    pricing = {"offline-": ModelPrice(input=100.0, output=200.0)}  # USD per million tokens
    reqs, answers = teacher_requests(20)
    storage = Storage(str(tmp_path))
    cfg = TeacherConfig(max_tokens=100)
    needed = costs.estimate(cfg, pricing, (r.message_dicts() for r in reqs)).cost_sync

    def client(budget: float) -> LLMClient:
        return LLMClient(
            cfg, role="teacher", cache=ResponseCache(storage, "teacher"),
            base_url=server.base_url, pricing=pricing, budget=Budget(budget, storage),
        )  # fmt: skip

    with pytest.raises(BudgetExceeded, match=r"teacher: answers \(20 request\(s\)\)") as info:
        client(needed * 0.9).run(reqs, desc="answers")
    assert info.value.needed == pytest.approx(needed) and info.value.spent == 0
    assert server.stats() == {}  # nothing sent

    rich = client(needed * 1.1)
    assert [r.text for r in rich.run(reqs, desc="answers")] == answers
    spent = spent_usd(storage)["teacher"]
    assert 0 < spent == pytest.approx(rich.usage.cost_usd)
    assert spent <= needed  # max_tokens bounds the answers
    # A second call over the same budget fits only what is left.
    more, _ = teacher_requests(40)
    with pytest.raises(BudgetExceeded):
        client(needed * 1.1).run(more[20:], desc="more")


def test_budgets_on_a_shared_cache_are_per_run_root(offline_server, tmp_path):
    """Two runs on one `storage.shared_llm_cache`: each run's budget counts what it paid for
    (`paid_by`), not what the other run paid; answers are still shared."""
    from helpers import tiny_config

    from lion_core.llm.factory import client_for

    server = offline_server()
    shared = tmp_path / "shared"
    reqs, answers = teacher_requests(40)
    pricing = {"offline-": ModelPrice(input=100.0, output=200.0)}
    cfg = TeacherConfig(max_tokens=100)
    needed = costs.estimate(cfg, pricing, (r.message_dicts() for r in reqs[:20])).cost_sync

    def client(run: str) -> LLMClient:
        config = tiny_config(
            tmp_path / run,
            **{"storage.shared_llm_cache": str(shared), "teacher.base_url": server.base_url},
            **{"teacher.max_tokens": 100, "budget_usd": needed * 1.1},
        ).with_overrides({"pricing": {"offline-": pricing["offline-"].model_dump()}})
        return client_for(config, "teacher")

    a = client("a")
    assert [r.text for r in a.run(reqs[:20], desc="a")] == answers[:20]
    # B's first 20 are other requests: A's spend does not count against B's budget.
    b = client("b")
    assert [r.text for r in b.run(reqs[20:], desc="b")] == answers[20:]
    storage = Storage(str(shared))
    paid = {run: sum(spent_usd(storage, str(tmp_path / run)).values()) for run in "ab"}
    assert paid["a"] == pytest.approx(a.usage.cost_usd) and paid["b"] == pytest.approx(
        b.usage.cost_usd
    )
    assert sum(spent_usd(storage).values()) == pytest.approx(paid["a"] + paid["b"])
    # A's answers serve B from the shared cache, free; B's own spend stops B's next stage.
    again = client("b")
    assert [r.text for r in again.run(reqs[:20], desc="shared")] == answers[:20]
    assert again.usage.requests == 0
    more, _ = teacher_requests(60)
    with pytest.raises(BudgetExceeded) as info:
        client("b").run(more[40:], desc="more")
    assert info.value.spent == pytest.approx(paid["b"])


def test_limiter_buckets_and_headers():
    now = [0.0]
    limiter = RateLimiter(rpm=60, tpm=None, clock=lambda: now[0])
    for _ in range(60):
        assert limiter.try_acquire(10) == 0
        limiter.done(10)
    assert limiter.try_acquire(10) == pytest.approx(1.0)  # one request a second from now on
    now[0] += 1.0
    assert limiter.try_acquire(10) == 0  # in flight until done()
    # The provider's headers: its token limit is adopted, its remaining level tightens ours.
    limiter.observe({"x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "100"})
    assert limiter.tokens.capacity == 6000
    # 100 left, less the 10 of the request in flight: 310 more at 100 a second
    assert limiter.try_acquire(400) == pytest.approx(3.1)


def test_tpm_from_headers_paces_without_429(offline_server, tmp_path):
    # 1,010 tokens a request against 30,000 a minute: 29 at once, then one every ~2 s.
    server = offline_server(tpm=30_000)
    reqs, answers = teacher_requests(33)
    cfg = TeacherConfig(max_tokens=1000, concurrency=8)  # no tpm of its own
    client = LLMClient(cfg, role="teacher", cache=None, base_url=server.base_url)
    start = time.monotonic()
    assert [r.text for r in client.run(reqs)] == answers
    elapsed = time.monotonic() - start
    stats = server.stats()["teacher"]
    assert "429" not in stats["status"], stats
    assert elapsed > 5.0  # paced: the last four waited for the bucket to refill
