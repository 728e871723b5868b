"""A run's lease on its root: one run at a time.

Two runs on one root would both pay every request, train into the same checkpoint folder and
delete each other's outputs. So a run holds `<root>/lease.json` (`layout.LEASE`) while it works:
who holds it (owner, host, pid, Prefect flow-run id), a unique token, and a heartbeat that a
background thread refreshes every `storage.lease_heartbeat` seconds. Another run is refused at
once with `LeaseHeldError` naming the holder, unless the lease is stale:

- its heartbeat is older than `storage.lease_timeout` (the holder died on another host, or hangs;
  the hosts' clocks must agree to well within the timeout);
- it was taken on this host (and PID namespace) by a process that is gone;
- it names the same Prefect flow run (a Retry of a run whose process died: Prefect does not
  retry a run while it is running).

A stale lease is taken over by a compare-and-swap, so of two runs taking over at once one wins.
A lease's holder that finds, at a heartbeat, that its lease was taken over (it had gone stale)
marks it lost: `Lease.check()` then raises `LeaseLostError`.

How atomic it is:

- Local root: every read-decide-write runs under an exclusive `flock` of `<root>/lease.lock`, and
  the file is replaced atomically: exact between the processes of one host (and on NFS where
  locks work).
- Object store: the lease is created with a conditional PUT (`If-None-Match: *`) and updated with
  `If-Match: <etag>` (AWS S3, MinIO and moto honour both); a store that answers 501 Not
  Implemented gets plain PUTs instead. Either way the writer then waits `SETTLE_SECONDS` and reads
  the lease back: only the run whose token it finds holds it. Where the conditions are honoured
  this is a second check; where they are ignored or rejected it is the whole guard, and it leaves
  a window: two runs that both find the lease free, one of whose write lands more than
  `SETTLE_SECONDS` after the other's read-back, both believe they hold it — until the first one's
  next heartbeat finds the other's token and marks its lease lost. Releasing is a plain delete
  after checking the token, which could delete a lease taken over in between; a live holder's
  lease is never stale, so only a holder that had already lost it can do that.
"""

from __future__ import annotations

import errno
import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from lion_core.config import LionConfig
from lion_core.errors import (
    LeaseHeldError,
    LeaseLostError,
    SnapshotExistsError,
    StorageError,
)
from lion_core.run import layout
from lion_core.run.storage import Storage, host_tag, process_is_gone

log = logging.getLogger("lion_core.run.lease")

SETTLE_SECONDS = 1.0  # object stores: wait this long after writing, then read the lease back
_ATTEMPTS = 3  # looks at a lease that keeps changing under us before giving up


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: what `lease.json` says."""

    token: str
    owner: str
    host: str
    host_tag: str  # host and PID namespace: where `pid` means a process (storage.host_tag)
    pid: int
    flow_run_id: str | None
    started_at: str
    heartbeat_at: float  # seconds since the epoch, on the holder's clock

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> Holder:
        """The holder in a lease file; anything else — not JSON, a field missing, or of the
        wrong type (a string heartbeat, a null pid) — is a StorageError naming the file."""
        try:
            raw = json.loads(data)
            holder = cls(**{f.name: raw[f.name] for f in fields(cls)})
            holder._check_types()
            return holder
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(
                f"{where} is not a lease ({type(exc).__name__}: {exc}); if no run is using this "
                "root, delete it"
            ) from None

    def _check_types(self) -> None:
        for name in ("token", "owner", "host", "host_tag", "started_at"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, got {getattr(self, name)!r}")
        if type(self.pid) is not int:
            raise TypeError(f"pid must be a whole number, got {self.pid!r}")
        if isinstance(self.heartbeat_at, bool) or not isinstance(self.heartbeat_at, int | float):
            raise TypeError(f"heartbeat_at must be a number, got {self.heartbeat_at!r}")
        if self.flow_run_id is not None and not isinstance(self.flow_run_id, str):
            raise TypeError(f"flow_run_id must be a string or null, got {self.flow_run_id!r}")

    def describe(self, now: float) -> str:
        run = f"flow run {self.flow_run_id}" if self.flow_run_id else "a run"
        age = now - self.heartbeat_at
        beat = (
            f"last heartbeat {age:.0f} s ago"
            if age >= 0
            else f"last heartbeat {-age:.0f} s in the future (its host's clock is ahead)"
        )
        return (
            f"{run} (owner {self.owner}, host {self.host}, pid {self.pid}), started "
            f"{self.started_at}, {beat}"
        )


@dataclass(frozen=True)
class _Version:
    """A lease as read or written: its bytes, and the object store's ETag (None locally)."""

    data: bytes
    etag: str | None = None


class Lease:
    """The lease on one run root. `acquire()` takes it (or raises `LeaseHeldError`) and starts
    the heartbeat; `release()` stops it and deletes the lease if it is still ours."""

    def __init__(
        self,
        storage: Storage,
        *,
        timeout: float = 120.0,
        heartbeat: float = 15.0,
        flow_run_id: str | None = None,
        owner: str | None = None,
        settle: float | None = None,
    ) -> None:
        self.storage = storage
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.flow_run_id = flow_run_id
        self.owner = owner or _user()
        self.settle = (
            settle if settle is not None else (0.0 if storage.is_local else SETTLE_SECONDS)
        )
        self.holder: Holder | None = None  # ours, once acquired
        self.lost = False  # a heartbeat found it taken over (or deleted)
        self.taken_by: Holder | None = None  # who took it over, if anyone
        self._backend: _Local | _ObjectStore = (
            _Local(storage) if storage.is_local else _ObjectStore(storage)
        )
        self._version: _Version | None = None  # what we last wrote
        self._lock = threading.Lock()  # one refresh or release at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return self.storage.uri(layout.LEASE)

    def __repr__(self) -> str:
        return f"Lease({self.uri!r}, held={self._version is not None})"

    # ---- taking it -----------------------------------------------------------------------

    def acquire(self) -> Lease:
        """Take the lease: create it if absent, take it over if stale, else raise
        `LeaseHeldError` naming the holder. Starts the heartbeat."""
        if self._version is not None:
            raise RuntimeError(f"{self.uri}: already held by this Lease")
        for _ in range(_ATTEMPTS):
            mine = self._new_holder()
            with self._backend.locked():
                current = self._backend.read()
                if current is None:
                    written = self._backend.create(mine.to_bytes())
                    taken_from = None
                else:
                    other = Holder.parse(current.data, self.uri)
                    reason = self._stale(other, time.time())
                    if reason is None:
                        raise LeaseHeldError(self._held_message(other))
                    written = self._backend.replace(mine.to_bytes(), current)
                    taken_from = (other, reason)
            if written is None:
                continue  # it changed between our read and our write: look again
            if self.settle:
                time.sleep(self.settle)
            back = self._backend.read()
            if back is None:
                continue  # deleted under us: look again
            found = Holder.parse(back.data, self.uri)
            if found.token != mine.token:  # another run's write landed after ours
                raise LeaseHeldError(self._held_message(found))
            self.holder, self._version = mine, back
            if taken_from is not None:
                other, reason = taken_from
                log.warning(
                    "took over the lease on %s from %s: %s",
                    self.uri,
                    other.describe(time.time()),
                    reason,
                )
            self._start_heartbeat()
            return self
        raise LeaseHeldError(
            f"{self.uri}: the lease changed under this run {_ATTEMPTS} times; another run is "
            "starting on this root"
        )

    def _new_holder(self) -> Holder:
        now = time.time()
        return Holder(
            token=uuid.uuid4().hex,
            owner=self.owner,
            host=socket.gethostname(),
            host_tag=host_tag(),
            pid=os.getpid(),
            flow_run_id=self.flow_run_id,
            started_at=datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
            heartbeat_at=now,
        )

    def _stale(self, other: Holder, now: float) -> str | None:
        """Why `other`'s lease may be taken over, or None if it may not."""
        if self.flow_run_id and other.flow_run_id == self.flow_run_id:
            return "it was taken by an earlier attempt of this same flow run"
        age = now - other.heartbeat_at
        if age > self.timeout:
            return f"no heartbeat for {age:.0f} s (storage.lease_timeout is {self.timeout:g} s)"
        if -age > self.timeout:
            # A heartbeat further ahead than the timeout is clock skew no live holder explains
            # (its clock would be off by more than the bound the hosts must agree within):
            # waiting for it would block every other host for that long.
            return (
                f"its heartbeat is {-age:.0f} s in the future: the hosts' clocks disagree by "
                f"more than storage.lease_timeout ({self.timeout:g} s)"
            )
        same_host = other.host_tag == host_tag() and other.pid != os.getpid()
        if same_host and process_is_gone(other.pid):
            return f"its process {other.pid} on this host is gone"
        return None

    def _held_message(self, other: Holder) -> str:
        return (
            f"run root {self.storage.uri()} is in use by {other.describe(time.time())} "
            f"({self.uri}). Two runs on one root would pay every request twice and overwrite "
            "each other's checkpoints: wait for that run to finish, or stop it. A lease whose "
            f"holder died is taken over after {self.timeout:g} s without a heartbeat "
            "(storage.lease_timeout), and at once on the same host once its process is gone."
        )

    # ---- keeping it ----------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"lion-lease-{self.holder.pid}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                if not self.refresh():
                    return
            except Exception as exc:  # a storage hiccup: try again at the next beat
                log.warning("lease heartbeat on %s failed: %s; trying again", self.uri, exc)

    def refresh(self) -> bool:
        """Write a new heartbeat if the lease is still ours; else mark it lost and return
        False (also when it was released)."""
        with self._lock:
            if self._version is None or self.holder is None:
                return False
            beat = replace(self.holder, heartbeat_at=time.time())
            with self._backend.locked():
                written = self._backend.replace(beat.to_bytes(), self._version)
                if written is None:
                    current = self._backend.read()
            if written is not None:
                self.holder, self._version = beat, written
                return True
            self.lost, self._version = True, None
            if current is not None:
                self.taken_by = Holder.parse(current.data, self.uri)
            log.error(
                "lost the lease on %s: %s. Another run may be writing to this root; this run's "
                "results from now on are suspect",
                self.uri,
                "it was deleted"
                if self.taken_by is None
                else f"taken over by {self.taken_by.describe(time.time())}",
            )
            return False

    def ensure_held(self) -> None:
        """Before a side effect (a request, a training attempt, a commit): raise
        `LeaseLostError` if the lease is lost. A heartbeat overdue (the process was frozen, or
        its heartbeat thread starved) is written now, so a run that thaws after another took
        its root over learns it before it does anything, not at its next heartbeat."""
        self.check()
        holder = self.holder
        if holder is None or self._version is None:
            return
        overdue = min(2 * self.heartbeat, self.timeout / 2)
        if time.time() - holder.heartbeat_at > overdue:
            self.refresh()
            self.check()

    def check(self) -> None:
        """Raise `LeaseLostError` if a heartbeat found the lease taken over."""
        if self.lost:
            by = self.taken_by.describe(time.time()) if self.taken_by else "nobody (deleted)"
            raise LeaseLostError(
                f"this run's lease on {self.storage.uri()} was lost (its heartbeat was older "
                f"than storage.lease_timeout={self.timeout:g} s, or {self.uri} was deleted); "
                f"now held by {by}. Another run may have written to the root meanwhile."
            )

    # ---- giving it back ------------------------------------------------------------------

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours. Never raises: a lease
        that cannot be deleted goes stale after `timeout` (a warning says so)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            version, self._version = self._version, None
            if version is None:
                return
            try:
                with self._backend.locked():
                    deleted = self._backend.delete(version)
            except StorageError as exc:
                log.warning(
                    "could not release the lease %s (%s); another run can take it over after "
                    "%g s (storage.lease_timeout)",
                    self.uri,
                    exc,
                    self.timeout,
                )
                return
            if not deleted:
                log.warning(
                    "the lease %s was no longer this run's at release: left as is", self.uri
                )

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(storage: Storage) -> Holder | None:
    """Who holds the lease on `storage`'s root now, or None."""
    backend = _Local(storage) if storage.is_local else _ObjectStore(storage)
    current = backend.read()
    return None if current is None else Holder.parse(current.data, storage.uri(layout.LEASE))


# ---- the lease a flow holds ----------------------------------------------------------------

_HELD: ContextVar[tuple[Lease, ...]] = ContextVar("lion_leases", default=())


@contextmanager
def run_lease(config: LionConfig, flow_run_id: str | None = None) -> Iterator[Lease]:
    """Hold the lease on the run's root (`storage.lease_timeout`, `storage.lease_heartbeat`)
    while the block runs; release it at the end, also on failure. On a normal end, raise
    `LeaseLostError` if it was lost meanwhile.

    Code inside a block that already holds the same root's lease (a subflow that lion-distill
    runs in its own process: context variables follow it) shares that lease instead of being
    refused by it; code outside (another thread, another process) is refused."""
    storage = Storage(config.storage.root, config.storage.options)
    for held in _HELD.get():
        if held.storage.uri() == storage.uri():
            yield held
            return
    lease = Lease(
        storage,
        timeout=config.storage.lease_timeout,
        heartbeat=config.storage.lease_heartbeat,
        flow_run_id=flow_run_id,
    )
    lease.acquire()
    token = _HELD.set((*_HELD.get(), lease))
    try:
        yield lease
        lease.check()
    finally:
        _HELD.reset(token)
        lease.release()


def check_held(root: str | None = None) -> None:
    """`Lease.ensure_held` for every lease this context holds (on `root` only, when given):
    called before every side effect of a run, so a run that lost its root's lease stops at
    once instead of at the end of its round."""
    for held in _HELD.get():
        if root is None or held.storage.uri() == root:
            held.ensure_held()


def held_guard() -> Callable[[], None] | None:
    """A check of the leases held where this is called (a task's context), usable from any
    thread later (an LLM client's sending thread does not inherit context variables); None
    when no lease is held."""
    leases = _HELD.get()
    if not leases:
        return None

    def check() -> None:
        for held in leases:
            held.ensure_held()

    return check


# ---- where the lease lives -----------------------------------------------------------------


class _Local:
    """A local root: updates serialized by flock on `lease.lock`, files replaced atomically."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @contextmanager
    def locked(self) -> Iterator[None]:
        import fcntl

        path = self.storage.path(layout.LEASE_LOCK)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fh = open(path, "a+b")  # noqa: SIM115 - held for the block
        except OSError as exc:
            raise StorageError(f"cannot open the lease lock {path}: {exc}") from exc
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def read(self) -> _Version | None:
        if not self.storage.exists(layout.LEASE):
            return None
        try:
            return _Version(self.storage.read_bytes(layout.LEASE))
        except StorageError:
            if not self.storage.exists(layout.LEASE):  # released meanwhile
                return None
            raise

    def create(self, data: bytes) -> _Version | None:
        try:
            self.storage.write_bytes(layout.LEASE, data)  # a hard link: fails if it exists
        except SnapshotExistsError:
            return None
        return _Version(data)

    def replace(self, data: bytes, expected: _Version) -> _Version | None:
        current = self.read()
        if current is None or current.data != expected.data:
            return None
        self.storage.write_bytes(layout.LEASE, data, overwrite=True)
        return _Version(data)

    def delete(self, expected: _Version) -> bool:
        current = self.read()
        if current is None or current.data != expected.data:
            return False
        self.storage.delete(layout.LEASE)
        return True


class _ObjectStore:
    """An object store (s3fs): conditional PUTs where the store supports them."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.fs = storage.fs
        self.path = storage.path(layout.LEASE)
        self.uri = storage.uri(layout.LEASE)
        self.conditional = True  # until the store says it does not support it

    def locked(self) -> nullcontext[None]:
        return nullcontext()

    def read(self) -> _Version | None:
        self.fs.invalidate_cache(self.path)
        try:
            # The ETag first: if the object changes before the read, the bytes are newer than
            # the ETag, and a swap against it fails, as it should.
            etag = self.fs.info(self.path).get("ETag")
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageError(f"cannot read {self.uri}: {exc}") from exc
        return _Version(data, etag)

    def create(self, data: bytes) -> _Version | None:
        if self.conditional:
            try:
                return self._put(data, mode="create")
            except FileExistsError:
                return None
            except OSError as exc:
                if _precondition_failed(exc):
                    return None
                self._give_up_conditions(exc)
        if self.read() is not None:
            return None
        return self._put(data)

    def replace(self, data: bytes, expected: _Version) -> _Version | None:
        if self.conditional and expected.etag:
            try:
                return self._put(data, IfMatch=expected.etag)
            except OSError as exc:
                if _precondition_failed(exc):
                    return None
                self._give_up_conditions(exc)
        current = self.read()
        if current is None or current.data != expected.data:
            return None
        return self._put(data)

    def delete(self, expected: _Version) -> bool:
        current = self.read()
        if current is None or current.data != expected.data:
            return False
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise StorageError(f"cannot delete {self.uri}: {exc}") from exc
        self.fs.invalidate_cache(self.path)
        return True

    def _put(self, data: bytes, **conditions: Any) -> _Version:
        try:
            out = self.fs.pipe_file(self.path, data, **conditions)
        except OSError:
            raise  # FileExistsError, a failed precondition, an unsupported one: the caller's
        except Exception as exc:
            raise StorageError(f"cannot write {self.uri}: {exc}") from exc
        finally:
            self.fs.invalidate_cache(self.path)
        etag = out.get("ETag") if isinstance(out, dict) else None
        return _Version(data, etag) if etag else (self.read() or _Version(data))

    def _give_up_conditions(self, exc: OSError) -> None:
        if not _unsupported(exc):
            raise StorageError(f"cannot write {self.uri}: {exc}") from exc
        self.conditional = False
        log.warning(
            "%s: the object store does not support conditional writes (%s); the lease falls "
            "back to write-then-read-back, which has a small race window (see lion_core.run.lease)",
            self.uri,
            exc,
        )


def _error_codes(exc: BaseException) -> set[str]:
    """The S3 error codes and HTTP statuses behind an exception (s3fs keeps the botocore error
    as its cause)."""
    codes: set[str] = set()
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            codes.add(str(response.get("Error", {}).get("Code", "")))
            codes.add(str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")))
        seen = seen.__cause__ or seen.__context__
    return codes - {""}


def _precondition_failed(exc: OSError) -> bool:
    return isinstance(exc, FileExistsError) or bool(
        {"PreconditionFailed", "412"} & _error_codes(exc)
    )


def _unsupported(exc: OSError) -> bool:
    return exc.errno == errno.ENOSYS or bool({"NotImplemented", "501"} & _error_codes(exc))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return f"uid {os.getuid()}"
