"""The run root's lease (lion_core.run.lease) on a local folder and on S3 (a moto server): a second
run is refused naming the holder, a stale lease (old heartbeat, dead process, the same flow run)
is taken over, release frees it, racing runs get exactly one winner, and through Prefect a
second lion-round on a held root fails at once while a subflow shares its parent's lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace

import pytest

from lion_core.errors import LeaseHeldError, LeaseLostError, StorageError
from lion_core.run import layout
from lion_core.run.lease import Holder, Lease, read_holder
from lion_core.run.storage import Storage

FAST = {"settle": 0.05}  # the object store's read-back wait, shortened


@pytest.fixture(params=["local", "s3", "s3-unconditional"])
def storage(request, tmp_path) -> Storage:
    """A run root: a local folder, an S3 bucket, or an S3 bucket whose conditional writes the
    lease does not use (the write-then-read-back fallback)."""
    if request.param == "local":
        return Storage(str(tmp_path / "run"))
    root, options = request.getfixturevalue("s3_root")
    store = Storage(root, options)
    store.unconditional = request.param == "s3-unconditional"
    return store


def lease(storage: Storage, **kw) -> Lease:
    out = Lease(storage, **{**FAST, **kw})
    if getattr(storage, "unconditional", False):
        out._backend.conditional = False
    return out


def test_a_second_run_is_refused_naming_the_holder_and_release_frees_it(storage):
    first = lease(storage, flow_run_id="flow-run-A", owner="alice").acquire()
    try:
        held = read_holder(storage)
        assert held == first.holder and held.pid == os.getpid()
        with pytest.raises(LeaseHeldError) as refused:
            lease(storage, flow_run_id="flow-run-B").acquire()
        message = str(refused.value)
        for part in ("flow run flow-run-A", "owner alice", f"pid {os.getpid()}", held.host):
            assert part in message
        assert storage.uri() in message and "storage.lease_timeout" in message
        assert read_holder(storage) == held  # the refused run changed nothing
    finally:
        first.release()
    assert read_holder(storage) is None and not storage.exists(layout.LEASE)

    second = lease(storage, flow_run_id="flow-run-B").acquire()
    assert read_holder(storage).flow_run_id == "flow-run-B"
    second.release()
    assert read_holder(storage) is None


def test_the_heartbeat_keeps_a_lease_fresh(storage):
    held = lease(storage, heartbeat=0.25, timeout=2.0).acquire()
    try:
        start = read_holder(storage).heartbeat_at
        time.sleep(4.5)  # two timeouts: without heartbeats the lease would be stale
        assert read_holder(storage).heartbeat_at > start
        with pytest.raises(LeaseHeldError):
            lease(storage, timeout=2.0).acquire()
    finally:
        held.release()


def test_a_stale_heartbeat_is_taken_over_and_the_old_holder_learns_it(storage, caplog):
    old = lease(storage, heartbeat=3600, flow_run_id="flow-run-A").acquire()  # never beats
    time.sleep(0.6)
    new = lease(storage, timeout=0.5, flow_run_id="flow-run-B").acquire()
    try:
        assert read_holder(storage).token == new.holder.token
        assert "took over the lease" in caplog.text and "no heartbeat for" in caplog.text

        assert old.refresh() is False  # its next heartbeat finds the other run's token
        assert old.lost and old.taken_by.token == new.holder.token
        with pytest.raises(LeaseLostError, match="flow run flow-run-B"):
            old.check()
        old.release()  # leaves the new holder's lease alone
        assert read_holder(storage).token == new.holder.token
    finally:
        new.release()
    assert read_holder(storage) is None


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(storage, tmp_path):
    """A run killed with SIGKILL leaves a fresh-looking lease; on its host, its dead pid makes
    it stale at once (a live one is refused)."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from lion_core.run.lease import Lease
        from lion_core.run.storage import Storage
        lease = Lease(Storage({storage.uri()!r}, {storage.options!r}), settle=0.05)
        lease._backend.conditional = {not getattr(storage, "unconditional", False)!r}
        lease.acquire()
        print("held", flush=True)
        time.sleep(120)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"held"
        with pytest.raises(LeaseHeldError, match=f"pid {child.pid}"):
            lease(storage).acquire()  # alive: refused
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    held = read_holder(storage)
    assert held.pid == child.pid and time.time() - held.heartbeat_at < 60  # fresh, but dead
    taken = lease(storage, timeout=3600).acquire()
    assert read_holder(storage).pid == os.getpid()
    taken.release()


def test_a_retry_of_the_same_flow_run_takes_its_lease_over(storage):
    """A Prefect Retry of a run whose pod died: the same flow-run id, another host."""
    mine = lease(storage, flow_run_id="flow-run-A")
    ghost = replace(
        mine._new_holder(), host="gone-pod", host_tag="elsewhere", pid=1, token="ghost"
    )  # fresh heartbeat, another host: only the flow-run id makes it stale
    storage.write_bytes(layout.LEASE, ghost.to_bytes())
    with pytest.raises(LeaseHeldError, match="gone-pod"):
        lease(storage, flow_run_id="flow-run-B").acquire()
    mine.acquire()
    assert read_holder(storage).token == mine.holder.token
    mine.release()


def test_racing_runs_get_exactly_one_lease(storage):
    start = threading.Barrier(4)
    winners, refused = [], []

    def run(i: int) -> None:
        # Without conditional writes the read-back is the only guard: give it the default wait.
        candidate = lease(storage, flow_run_id=f"flow-run-{i}", settle=1.0)
        start.wait()
        try:
            winners.append(candidate.acquire())
        except LeaseHeldError:
            refused.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(refused) == 3, (winners, refused)
    assert read_holder(storage).token == winners[0].holder.token
    winners[0].release()


def test_an_unreadable_lease_is_an_error_naming_the_file(tmp_path):
    storage = Storage(str(tmp_path / "run"))
    storage.write_bytes(layout.LEASE, b"{not json")
    with pytest.raises(StorageError, match=r"lease\.json is not a lease"):
        lease(storage).acquire()


def _planted(storage: Storage, **fields) -> Holder:
    """A lease file written by hand: a live-looking holder on this host, with `fields` changed
    (types are not checked: that is what the tests below are about)."""
    import json

    holder = lease(storage)._new_holder()
    raw = {**json.loads(holder.to_bytes()), "pid": os.getppid(), **fields}
    storage.write_bytes(layout.LEASE, json.dumps(raw).encode(), overwrite=True)
    return holder


@pytest.mark.parametrize(
    "fields",
    [{"heartbeat_at": "yesterday"}, {"heartbeat_at": None}, {"pid": "1234"}, {"pid": None},
     {"pid": True}, {"token": 7}, {"flow_run_id": 12}],
)  # fmt: skip
def test_a_lease_with_a_field_of_the_wrong_type_is_an_error_naming_the_file(tmp_path, fields):
    """issue 22, N11: was a raw TypeError from comparing a string heartbeat or pid."""
    storage = Storage(str(tmp_path / "run"))
    _planted(storage, **fields)
    (name,) = fields
    with pytest.raises(StorageError, match=rf"lease\.json is not a lease .*{name}"):
        lease(storage).acquire()


@pytest.mark.parametrize("pid", [0, -1])
def test_a_non_positive_pid_is_a_dead_holder(tmp_path, pid):
    """os.kill(0 or -1, 0) signals a group, so such a pid looked alive for ever (N11)."""
    storage = Storage(str(tmp_path / "run"))
    _planted(storage, pid=pid)
    took = lease(storage).acquire()
    try:
        assert read_holder(storage).token == took.holder.token
    finally:
        took.release()


def test_a_heartbeat_from_the_future_is_skew_with_a_bound(tmp_path, caplog):
    """Within storage.lease_timeout ahead the holder is live and the refusal says its clock is
    ahead (it said "last heartbeat -86400 s ago"); further ahead, the lease is taken over with
    the reason (it blocked every other host for that long)."""
    storage = Storage(str(tmp_path / "run"))
    _planted(storage, heartbeat_at=time.time() + 30)
    with pytest.raises(LeaseHeldError, match=r"s in the future \(its host's clock is ahead\)"):
        lease(storage, timeout=120).acquire()
    _planted(storage, heartbeat_at=time.time() + 86400)
    took = lease(storage, timeout=120).acquire()
    try:
        assert read_holder(storage).token == took.holder.token
        assert "clocks disagree by more than storage.lease_timeout" in caplog.text
    finally:
        took.release()


def test_a_run_that_lost_its_lease_sends_and_commits_nothing(tmp_path, offline_server):
    """Issue 22, N1: a run frozen past `storage.lease_timeout` (its heartbeat stopped, as in a
    SIGSTOPped process) whose root another run took over learns it at its next side effect, not
    at the end of its round: its LLM client sends no request and its store commits nothing,
    each with a LeaseLostError naming the new holder."""
    from helpers import answer_frame, teacher_requests, tiny_config

    from lion_core.llm.factory import client_for
    from lion_core.run.lease import run_lease
    from lion_core.run.store import RunStore
    from lion_core.student.answer_store import commit

    world = offline_server()
    root = tmp_path / "run"
    cfg = tiny_config(root, **{"storage.lease_timeout": 1.5, "storage.lease_heartbeat": 0.5})
    requests, _ = teacher_requests(4)
    with pytest.raises(LeaseLostError), run_lease(cfg) as held:
        held._stop.set()  # frozen: no heartbeat from now on
        held._thread.join()
        time.sleep(2.0)  # longer than lease_timeout
        other = lease(held.storage, timeout=1.5, flow_run_id="flow-run-B").acquire()
        try:
            client = client_for(cfg, "teacher", offline_url=world.base_url)
            with pytest.raises(LeaseLostError, match="flow run flow-run-B"):
                client.run(requests)
            assert world.stats().get("teacher", {}).get("requests", 0) == 0  # none arrived
            store = RunStore.open(str(root))
            with pytest.raises(LeaseLostError):
                store.write(1, "teacher_answers", answer_frame(["x"]))
            with pytest.raises(LeaseLostError):
                commit(store.storage, "generation/k", 0, 0, [], "m")
            assert not store.exists(1, "teacher_answers")
        finally:
            other.release()


def test_holder_round_trips():
    holder = lease(Storage("/tmp/unused"))._new_holder()
    assert Holder.parse(holder.to_bytes(), "x") == holder


# ---- through Prefect -------------------------------------------------------------------------


def test_a_subflow_shares_its_parents_lease(prefect_harness, tmp_path):
    from prefect import flow

    from lion_core.config import LionConfig
    from lion_core.run.lease import run_lease

    cfg = LionConfig().with_overrides({"storage.root": str(tmp_path / "run")})

    @flow
    def child() -> str:
        with run_lease(cfg, "child") as held:
            return held.holder.token

    @flow
    def parent() -> tuple[str, str]:
        with run_lease(cfg, "parent") as held:
            return held.holder.token, child()

    mine, childs = parent()
    assert mine == childs  # the child ran inside the parent's lease
    assert read_holder(Storage(cfg.storage.root)) is None  # released at the end

    outside = Lease(Storage(cfg.storage.root), flow_run_id="elsewhere").acquire()
    try:
        state = child(return_state=True)  # a top-level child is not a subflow: refused
        assert state.is_failed()
        with pytest.raises(LeaseHeldError, match="flow run elsewhere"):
            state.result()
    finally:
        outside.release()


@pytest.mark.slow
def test_a_second_round_on_a_held_root_fails_at_once(prefect_harness, tmp_path, offline_server):
    """Two lion-round runs on one root: while the first works (its teacher answers slowly,
    then fails), the second is refused at once, naming the first's flow run, and sends
    nothing."""
    from helpers import small_config

    from flows.round import lion_round

    slow = offline_server(latency=8.0, faults={"rate_500": 1.0})
    cfg = small_config(
        tmp_path / "run",
        **{f"{r}.base_url": slow.base_url for r in ("teacher", "referee", "generator")},
        **{"teacher.retries": 0},
    )
    first: dict = {}
    worker = threading.Thread(
        target=lambda: first.update(state=lion_round(cfg, 1, return_state=True))
    )
    worker.start()
    deadline = time.monotonic() + 60
    while "teacher" not in slow.stats() and time.monotonic() < deadline:
        time.sleep(0.1)  # the first run is asking its teacher: it holds the lease
    assert "teacher" in slow.stats()
    holder = read_holder(Storage(cfg.storage.root))

    started = time.monotonic()
    second = lion_round(cfg, 1, return_state=True)
    assert second.is_failed() and worker.is_alive()  # refused while the first still works
    assert time.monotonic() - started < 8.0
    with pytest.raises(LeaseHeldError) as refused:
        second.result()
    assert f"flow run {holder.flow_run_id}" in str(refused.value)
    assert f"pid {os.getpid()}" in str(refused.value)

    worker.join()
    assert first["state"].is_failed()  # its teacher failed: RequestsFailedError
    assert slow.stats()["teacher"]["requests"] == 24  # the first run's only
    assert read_holder(Storage(cfg.storage.root)) is None  # released, also on failure


@pytest.mark.slow
def test_a_run_refused_by_the_lease_leaves_the_holders_run_json_alone(prefect_harness, tmp_path):
    """issue 22, N7: `lion run` with another config on a root whose run holds the lease and has
    committed nothing yet is refused (exit 2) — and run.json still records the holder's config
    (it was rewritten before the lease was checked, so a later resume ran the wrong seed)."""
    import json

    from helpers import small_config
    from prefect.settings import PREFECT_API_URL

    from lion_core.run.identity import open_run

    root = tmp_path / "run"
    holder_cfg = small_config(root)
    held = Lease(Storage(str(root)), flow_run_id="the-holder").acquire()
    try:
        open_run(holder_cfg)  # the holder recorded its config, committed nothing yet
        other = tmp_path / "other.yaml"
        holder_cfg.with_overrides({"seed": 1}).to_yaml(other)
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
        lion = [str(os.path.join(os.path.dirname(sys.executable), "lion")), "run", "-c", str(other)]
        done = subprocess.run(lion, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 2, done.stderr[-3000:]
        assert "flow run the-holder" in done.stderr + done.stdout
        recorded = json.loads((root / "run.json").read_text())["config"]
        assert recorded["seed"] == holder_cfg.seed == 0
    finally:
        held.release()
