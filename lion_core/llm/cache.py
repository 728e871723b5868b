"""The response cache: every LLM answer of a run, persisted in its storage as soon as it arrives.

Layout under `<run root>/llm_cache/<role>/` (`layout.llm_cache`):

- `part-<UTC timestamp>-<id>.parquet`: shards (see docs/llm-client.md for the schema), written
  atomically and never rewritten;
- `journal-<UTC timestamp>-<id>.jsonl` (local storage only): one writer's append-only journal,
  one JSON line per answer, fsynced before the answer counts as kept. A flush compacts it into
  the shard `part-<same timestamp>-<same id>.parquet` and deletes it. Its writer holds an
  exclusive `flock` on it while alive, so a reader knows a journal without a lock is a dead
  writer's: it is loaded and compacted by the next cache that opens the role.

On an object store (no appends) answers are buffered and written as a shard at least every
`flush_seconds` (and on every flush): at most that many seconds of answers are at risk.

Failed answers are kept too (with their error, for audit) but `get` returns only successful
ones, so a re-run sends failures again. Any number of writers — threads or processes — add
shards and journals side by side; `refresh()` picks up what others wrote since.

In one process, every `ResponseCache` of one storage root and role shares one state: the
answers, one writer (and journal), and the map of requests being sent (`claim`/`release`), so
two clients of one role never send the same body at once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import io
import json
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lion_core.errors import LLMError, SnapshotExistsError, StorageError
from lion_core.llm.types import ChatResult
from lion_core.run import layout
from lion_core.run.storage import TMP_MARK, Storage

CACHE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # request_key(model, messages, params)
        ("role", pa.string()),  # teacher | referee | generator | ...
        ("tag", pa.string()),  # the caller's label of the first request with this key
        ("status", pa.string()),  # ok | failed
        ("text", pa.string()),  # the answer (null when failed)
        ("error", pa.string()),  # why it failed (null when ok)
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("attempts", pa.int32()),  # HTTP attempts made (1 = no retry)
        ("request", pa.string()),  # JSON {model, messages, params}: what was asked
        ("created_at", pa.timestamp("us", tz="UTC")),  # when the answer was recorded
        # USD paid for it (config `pricing`; batch answers at the batch price). Shards written
        # before this column existed read it as null.
        ("cost_usd", pa.float64()),
        # Who paid: the root of the run that sent it (a shared cache's budgets are per run);
        # null in rows written before this column existed.
        ("paid_by", pa.string()),
    ]
)

_LOAD_COLUMNS = [
    "key",
    "tag",
    "status",
    "text",
    "error",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "attempts",
]

FLUSH_SECONDS = 5.0  # object stores: the longest an answer waits in memory before its shard
_LINGER = 2.0  # seconds an idle writer thread waits for more work before it ends
SHARD, JOURNAL = ("part-", ".parquet"), ("journal-", ".jsonl")


class SendAbandoned(LLMError):
    """The client sending a request that others waited for stopped before its answer."""


@dataclass(frozen=True)
class Claim:
    """What `ResponseCache.claim` found for a key (neither field set: the caller sends it)."""

    answer: ChatResult | None = None
    pending: concurrent.futures.Future[ChatResult] | None = None


def _stamp() -> str:
    """Sortable by time, unique across processes."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:12]}"


def shard_name() -> str:
    """A new shard's file name."""
    return f"{SHARD[0]}{_stamp()}{SHARD[1]}"


def shard_of(journal: str) -> str:
    """The shard a journal is compacted into: same timestamp and id."""
    return f"{SHARD[0]}{journal[len(JOURNAL[0]) : -len(JOURNAL[1])]}{SHARD[1]}"


def _is(name: str, kind: tuple[str, str]) -> bool:
    return name.startswith(kind[0]) and name.endswith(kind[1])


class ResponseCache:
    """The successful answers of one role, loaded from all shards and journals.

    `record` persists one answer (durable when its future is done); `flush` turns what was
    recorded into a shard. Thread-safe. `refresh()` picks up what other writers added since.
    `flush_seconds` bounds how long a recorded answer stays in memory on an object store. All
    instances of one storage root and role in a process share their state (the first one's
    `flush_seconds` holds) and `claim`/`release` the keys being sent.
    """

    def __init__(
        self,
        storage: Storage,
        role: str,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        payer: str | None = None,
    ) -> None:
        if not role or "/" in role:
            raise ValueError(f"invalid cache role {role!r}")
        if flush_seconds <= 0:
            raise ValueError(f"flush_seconds must be positive, got {flush_seconds!r}")
        self.storage = storage
        self.role = role
        self.payer = payer  # recorded as `paid_by` on every answer this cache is given
        self.prefix = layout.llm_cache(role)
        self._shared = _Shared.of(storage, self.prefix, flush_seconds)
        self._writer = self._shared.writer
        self.refresh()

    # ---- reading ------------------------------------------------------------------------

    def _names(self) -> list[str]:
        # Object-store listings are cached per filesystem instance; other writers' new shards
        # are only visible after invalidating that cache.
        self.storage.fs.invalidate_cache(self.storage.path(self.prefix))
        return self.storage.listdir(self.prefix)

    def refresh(self) -> int:
        """Load shards and journals not loaded yet (written by other writers, or left by dead
        ones, which are compacted on the way); returns how many files were read."""
        names = self._names()
        loaded = self._shared.loaded_names()
        count = self._load_shards([n for n in names if _is(n, SHARD) and n not in loaded])
        if self.storage.is_local:
            own = self._writer.journals()
            for name in names:
                if _is(name, JOURNAL) and name not in own and name not in loaded:
                    count += self._read_journal(name, compacted=shard_of(name) in names)
        return count

    def _load_shards(self, new: list[str]) -> int:
        if not new:
            return 0
        paths = [self.storage.path(f"{self.prefix}/{n}") for n in new]
        try:  # one concurrent fetch on object stores
            blobs = (
                self.storage.fs.cat(paths)
                if len(paths) > 1
                else {paths[0]: self.storage.fs.cat_file(paths[0])}
            )
        except Exception as exc:
            raise StorageError(f"cannot read the LLM cache under {self.uri}: {exc}") from exc
        for name, path in zip(new, paths, strict=True):
            blob = _blob_for(blobs, path)
            try:
                rows = pq.read_table(io.BytesIO(blob), columns=_LOAD_COLUMNS).to_pylist()
            except Exception as exc:
                raise StorageError(
                    f"{self.storage.uri(f'{self.prefix}/{name}')} is not a readable cache shard: "
                    f"{exc}"
                ) from exc
            self._shared.remember(name, rows)
        return len(new)

    def _read_journal(self, name: str, *, compacted: bool) -> int:
        """Read another writer's journal: a dead writer's (no lock held) is compacted into its
        shard and deleted; a live one's is read up to its last complete line."""
        path = self.storage.path(f"{self.prefix}/{name}")
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below, after the lock is released
        except FileNotFoundError:  # compacted meanwhile by its writer or another reader
            return self._load_shards([shard_of(name)] if not compacted else [])
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                dead = True
            except BlockingIOError:
                dead = False
            if dead and compacted:  # compacted, then its writer died before deleting it
                os.unlink(path)
                return 0
            start = 0 if dead else self._shared.offsets.get(name, 0)
            fh.seek(start)
            data = fh.read()
            rows, used = _parse_lines(data)
            if not dead:
                self._shared.offsets[name] = start + used
                self._shared.remember(None, rows)
                return 1
            if rows:
                with contextlib.suppress(SnapshotExistsError):  # another reader was first
                    self.storage.write_parquet(f"{self.prefix}/{shard_of(name)}", _table(rows))
            os.unlink(path)
        self._shared.remember(shard_of(name), rows)
        return 1

    def get(self, key: str) -> ChatResult | None:
        """The stored successful answer for `key` (marked cached), or None."""
        return self._shared.get(key)

    def __len__(self) -> int:
        with self._shared.lock:
            return len(self._shared.answers)

    @property
    def uri(self) -> str:
        return self.storage.uri(self.prefix)

    def frame(self) -> pd.DataFrame:
        """Every row of every shard and journal (failures included), for audit and reporting."""
        names = self._names()
        tables = [self.storage.read_parquet(f"{self.prefix}/{n}") for n in names if _is(n, SHARD)]
        for name in names:  # journals live on local storage only
            if _is(name, JOURNAL) and shard_of(name) not in names:
                with (
                    contextlib.suppress(FileNotFoundError),  # compacted meanwhile
                    open(self.storage.path(f"{self.prefix}/{name}"), "rb") as fh,
                ):
                    tables.append(_table(_parse_lines(fh.read())[0]))
        if not tables:
            return CACHE_SCHEMA.empty_table().to_pandas()
        return pa.concat_tables(tables, promote_options="default").to_pandas()

    # ---- writing ------------------------------------------------------------------------

    def record(
        self, result: ChatResult, request: Mapping[str, Any] | None = None
    ) -> concurrent.futures.Future[None]:
        """Persist one answer as soon as possible; the future is done when it is kept: on local
        storage once its journal line is written and fsynced, on an object store at once (it
        reaches a shard within `flush_seconds`). `request` is its {model, messages, params}."""
        return self._writer.record([_row(self.role, result, request, self.payer)])

    def flush(self) -> concurrent.futures.Future[str | None]:
        """Write everything recorded so far as one shard (compacting this writer's journal);
        the future's result is the shard's URI (None if there was nothing to write)."""
        return self._writer.flush()

    def claim(self, key: str) -> Claim:
        """Take `key` to send, process-wide. `Claim.answer`: the stored answer (send nothing);
        `Claim.pending`: the future answer of the client of this process already sending it
        (wait for it; it raises `SendAbandoned` if that client gave up); neither: the key is
        yours — send it, then `release(key, result)`, or `release(key, None)` on giving up."""
        return self._shared.claim(key)

    def release(self, key: str, result: ChatResult | None) -> None:
        """End the claim on `key`: its waiters get `result` (an ok result is an answer from now
        on, also before its record is on disk), or `SendAbandoned` when it is None."""
        self._shared.release(key, result)

    def put_many(
        self,
        results: Iterable[ChatResult],
        requests: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> str | None:
        """Persist `results` (ok and failed) as one new shard at once; returns its URI (None if
        empty). `requests` maps a key to its request payload ({model, messages, params})."""
        rows = [
            _row(self.role, r, (requests or {}).get(r.key), self.payer)
            for r in results
            if not r.cached
        ]
        if not rows:
            return None
        name = shard_name()
        uri = self.storage.write_parquet(f"{self.prefix}/{name}", _table(rows))
        self._shared.remember(name, rows)
        return uri

    def __repr__(self) -> str:
        return f"ResponseCache({self.uri!r}, answers={len(self)})"


def spent_usd(storage: Storage, payer: str | None = None) -> dict[str, float]:
    """USD paid per role for the answers in the response caches under `storage` (shards and
    journals; failed answers too, when they were billed): all of them, or those `payer` paid
    for (`paid_by`: a run's root on a shared cache). Reads only those two columns."""
    return {role: usd for role, (usd, _) in billed(storage, payer).items()}


def billed(storage: Storage, payer: str | None = None) -> dict[str, tuple[float, int]]:
    """Per role: the USD and the number of the billed answers (cost above 0) in the response
    caches under `storage`, all of them or `payer`'s (see `spent_usd`). Their ratio is what an
    answer of that role costs, whichever run or attempt paid for it."""
    out: dict[str, tuple[float, int]] = {}
    for role in storage.listdir(layout.LLM_CACHE):
        prefix = layout.llm_cache(role)
        storage.fs.invalidate_cache(storage.path(prefix))
        names = storage.listdir(prefix)
        usd, n = 0.0, 0
        for name in names:
            if _is(name, SHARD):
                blob = storage.read_bytes(f"{prefix}/{name}")
                shard_usd, shard_n = _billed(pq.ParquetFile(io.BytesIO(blob)), payer)
                usd, n = usd + shard_usd, n + shard_n
            elif _is(name, JOURNAL) and shard_of(name) not in names and storage.is_local:
                with (
                    contextlib.suppress(FileNotFoundError),  # compacted meanwhile
                    open(storage.path(f"{prefix}/{name}"), "rb") as fh,
                ):
                    rows, _ = _parse_lines(fh.read())
                    paid = [
                        cost
                        for r in rows
                        if (payer is None or r.get("paid_by") == payer)
                        and (cost := float(r.get("cost_usd") or 0.0)) > 0
                    ]
                    usd, n = usd + sum(paid), n + len(paid)
        out[role] = (usd, n)
    return out


def _billed(shard: pq.ParquetFile, payer: str | None) -> tuple[float, int]:
    """The sum and number of a shard's billed rows (`cost_usd` above 0; `payer`'s alone when
    given), computed in Arrow: no Python float per row."""
    names = shard.schema_arrow.names
    if "cost_usd" not in names or (payer is not None and "paid_by" not in names):
        return 0.0, 0
    if payer is None:
        column = shard.read(columns=["cost_usd"]).column(0)
    else:
        table = shard.read(columns=["cost_usd", "paid_by"])
        column = table.filter(pc.equal(table.column("paid_by"), payer)).column("cost_usd")
    paid = pc.filter(column, pc.greater(column, 0))
    return float(pc.sum(paid).as_py() or 0.0), len(paid)


class _Shared:
    """What every `ResponseCache` of one (storage root, role) in this process shares: the
    answers, the files read, the writer, and the requests being sent (`claim`/`release`), so
    two clients of one role never send the same body at once. One per cache URI, alive while a
    cache uses it."""

    def __init__(self, storage: Storage, prefix: str, flush_seconds: float) -> None:
        self.lock = threading.Lock()
        self.answers: dict[str, ChatResult] = {}
        self.loaded: set[str] = set()  # shards read, and journals compacted
        self.offsets: dict[str, int] = {}  # live journals of other writers: bytes read
        self.inflight: dict[str, concurrent.futures.Future[ChatResult]] = {}
        self.writer = _Writer(storage, prefix, self, flush_seconds)

    @classmethod
    def of(cls, storage: Storage, prefix: str, flush_seconds: float) -> _Shared:
        uri = storage.uri(prefix)
        with _SHARED_LOCK:
            shared = _SHARED.get(uri)
            if shared is None:  # the first cache of this root and role sets flush_seconds
                shared = _SHARED[uri] = cls(storage, prefix, flush_seconds)
            return shared

    def loaded_names(self) -> set[str]:
        with self.lock:
            return set(self.loaded)

    def remember(self, name: str | None, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add the ok rows to the answers (the first answer of a key wins); `name` is the file
        they came from, read once."""
        results = [_row_to_result(r) for r in rows if r["status"] == "ok"]
        with self.lock:
            if name is not None:
                if name in self.loaded:
                    return
                self.loaded.add(name)
            for res in results:
                self.answers.setdefault(res.key, res)

    def get(self, key: str) -> ChatResult | None:
        with self.lock:
            hit = self.answers.get(key)
        return _cached(hit) if hit else None

    def claim(self, key: str) -> Claim:
        with self.lock:  # the answer and the in-flight map under one lock: no gap between them
            hit = self.answers.get(key)
            if hit is not None:
                return Claim(answer=_cached(hit))
            pending = self.inflight.get(key)
            if pending is not None:
                return Claim(pending=pending)
            self.inflight[key] = concurrent.futures.Future()
            return Claim()

    def release(self, key: str, result: ChatResult | None) -> None:
        with self.lock:
            if result is not None and result.ok:
                self.answers.setdefault(key, replace(result, cached=False))
            pending = self.inflight.pop(key, None)
        if pending is None:
            return
        if result is None:
            pending.set_exception(SendAbandoned(f"the request with key {key} was not sent"))
        else:
            pending.set_result(result)


_SHARED: weakref.WeakValueDictionary[str, _Shared] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


class _Writer:
    """One cache's writes, in order, on a thread of their own (started when there is work, ended
    after `_LINGER` idle seconds). Local storage: each batch of recorded rows is appended to the
    journal and fsynced before their futures are done (group commit). Object store: rows wait in
    memory until a flush, or until the oldest is `flush_seconds` old."""

    def __init__(
        self, storage: Storage, prefix: str, shared: _Shared, flush_seconds: float
    ) -> None:
        self.storage, self.prefix, self.shared = storage, prefix, shared
        self.flush_seconds = flush_seconds
        self.local = storage.is_local
        self._cond = threading.Condition()
        # (rows to record, future) or (None, future) for a flush
        self._queue: list[tuple[list[dict[str, Any]] | None, concurrent.futures.Future[Any]]] = []
        self._flush_sizes: list[int] = []  # object store: rows waiting when each flush was asked
        self._thread: threading.Thread | None = None
        self._journal: _Journal | None = None  # local: the open journal, if any
        self._rows: list[dict[str, Any]] = []  # recorded since the last flush
        self._since = 0.0  # object store: when the oldest of `_rows` was recorded
        self._error: BaseException | None = None  # object store: a failed timed flush

    def journals(self) -> set[str]:
        with self._cond:
            return {self._journal.name} if self._journal is not None else set()

    def record(self, rows: list[dict[str, Any]]) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._cond:
            if not self.local:
                if self._error is not None:
                    future.set_exception(self._error)
                    return future
                if not self._rows:
                    self._since = time.monotonic()
                self._rows.extend(rows)
                self.shared.remember(None, rows)
                future.set_result(None)
            else:
                self._queue.append((rows, future))
            self._wake()
        return future

    def flush(self) -> concurrent.futures.Future[str | None]:
        future: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        with self._cond:
            if not self.local:  # a shard of what was recorded until now, not of later rows
                self._flush_sizes.append(len(self._rows))
            self._queue.append((None, future))
            self._wake()
        return future

    def _wake(self) -> None:  # with self._cond held
        self._cond.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lion-llm-cache", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            with self._cond:
                timed = False
                while not self._queue:
                    now = time.monotonic()
                    timed = not self.local and bool(self._rows)
                    deadline = self._since + self.flush_seconds if timed else idle_since + _LINGER
                    if now >= deadline:
                        break
                    self._cond.wait(deadline - now)
                work, self._queue = self._queue, []
                if not work and not timed:  # idle for _LINGER seconds
                    self._thread = None
                    return
            if not work:
                self._timed_flush()
            group: list[tuple[list[dict[str, Any]], concurrent.futures.Future[Any]]] = []
            for rows, future in work:
                if rows is not None:
                    group.append((rows, future))
                    continue
                self._append(group)
                group = []
                self._settle([future], self._flush)
            self._append(group)
            idle_since = time.monotonic()

    def _append(self, group: list[tuple[list[dict[str, Any]], concurrent.futures.Future[Any]]]):
        """Local storage: the group's rows into the journal with one write and one fsync."""
        if not group:
            return
        rows = [row for part, _ in group for row in part]

        def append() -> None:
            if self._journal is None:
                journal = _Journal.create(self.storage.path(self.prefix))
                with self._cond:
                    self._journal = journal
            self._journal.append(rows)
            self._rows.extend(rows)
            self.shared.remember(None, rows)

        self._settle([future for _, future in group], append)

    def _settle(self, futures: list[concurrent.futures.Future[Any]], work: Any) -> None:
        """Run `work` and give its result, or its error as a StorageError, to `futures`."""
        try:
            value = work()
        except BaseException as exc:
            error = (
                exc
                if isinstance(exc, StorageError)
                else StorageError(
                    f"cannot write the LLM cache under {self.storage.uri(self.prefix)}: {exc}"
                )
            )
            for future in futures:
                future.set_exception(error)
        else:
            for future in futures:
                future.set_result(value)

    def _timed_flush(self) -> None:
        try:
            self._write_shard()
        except BaseException as exc:  # kept in memory; the next record or flush reports it
            with self._cond:
                self._error = exc
                self._since = time.monotonic()

    def _flush(self) -> str | None:
        with self._cond:
            limit = None if self.local else self._flush_sizes.pop(0)
        return self._write_shard(limit)

    def _write_shard(self, limit: int | None = None) -> str | None:
        """Write the rows recorded since the last flush (at most `limit`) as one shard; the
        journal, all of whose rows these are, is then deleted."""
        with self._cond:
            rows, journal = self._rows[:limit], self._journal
        name = shard_name() if journal is None else shard_of(journal.name)
        uri = None
        if rows:
            rel = f"{self.prefix}/{name}"
            try:
                uri = self.storage.write_parquet(rel, _table(rows))
            except SnapshotExistsError:  # written by an earlier try that failed later
                if journal is None:
                    raise
                uri = self.storage.uri(rel)
        with self._cond:
            del self._rows[: len(rows)]
            # The flushes asked later counted the rows written now: they write fewer.
            self._flush_sizes = [max(0, n - len(rows)) for n in self._flush_sizes]
            self._error = None
            if self._rows:
                self._since = time.monotonic()
            self._journal = None
        if journal is not None:
            journal.retire()
        self.shared.remember(name, [])
        return uri


class _Journal:
    """An append-only JSON-lines file, created under a temporary name, locked with `flock`,
    then renamed into place, so no reader ever sees it without its writer's lock."""

    def __init__(self, folder: str, name: str, fd: int) -> None:
        self.folder, self.name, self.fd = folder, name, fd

    @classmethod
    def create(cls, folder: str) -> _Journal:
        os.makedirs(folder, exist_ok=True)
        name = f"{JOURNAL[0]}{_stamp()}{JOURNAL[1]}"
        tmp = os.path.join(folder, f".{name}{TMP_MARK}{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(tmp, os.path.join(folder, name))
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the journal's name survives a machine crash too
        finally:
            os.close(dir_fd)
        return cls(folder, name, fd)

    def append(self, rows: list[dict[str, Any]]) -> None:
        data = b"".join(_line(r) for r in rows)
        while data:
            written = os.write(self.fd, data)
            data = data[written:]
        os.fsync(self.fd)

    def retire(self) -> None:
        """Its rows are in its shard now: delete it, then let go of the lock."""
        try:
            os.unlink(os.path.join(self.folder, self.name))
        finally:
            self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:  # a journal never flushed stays for the next reader to compact
        self.close()


# ---- rows ---------------------------------------------------------------------------------------


def _row(
    role: str, r: ChatResult, request: Mapping[str, Any] | None, payer: str | None = None
) -> dict[str, Any]:
    return {
        "key": r.key,
        "role": role,
        "tag": r.tag,
        "status": r.status,
        "text": r.text,
        "error": r.error,
        "finish_reason": r.finish_reason,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "attempts": int(r.extra.get("attempts", 1)),
        "request": (
            json.dumps(request, ensure_ascii=False, sort_keys=True) if request is not None else None
        ),
        "created_at": datetime.now(UTC),
        "cost_usd": r.cost_usd,
        "paid_by": payer,
    }


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=CACHE_SCHEMA)


def _line(row: dict[str, Any]) -> bytes:
    out = {**row, "created_at": row["created_at"].isoformat()}
    return json.dumps(out, ensure_ascii=False).encode() + b"\n"


def _parse_lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The rows of complete lines, and the bytes they take. A torn last line (its writer was
    killed mid-write) has no newline and is ignored."""
    end = data.rfind(b"\n") + 1
    rows = []
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        row["created_at"] = datetime.fromisoformat(row["created_at"])
        rows.append(row)
    return rows, end


def _blob_for(blobs: Mapping[str, bytes], path: str) -> bytes:
    if path in blobs:
        return blobs[path]
    stripped = path.split("://", 1)[-1]  # some filesystems key results without the protocol
    for candidate, blob in blobs.items():
        if candidate.split("://", 1)[-1].rstrip("/") == stripped.rstrip("/"):
            return blob
    raise StorageError(f"cache shard {path} was listed but could not be read")


def _cached(hit: ChatResult) -> ChatResult:
    return replace(hit, cached=True, cost_usd=0.0, extra=dict(hit.extra))


def _row_to_result(row: Mapping[str, Any]) -> ChatResult:
    return ChatResult(
        key=row["key"],
        tag=row["tag"] or "",
        status=row["status"],
        text=row["text"],
        error=row["error"],
        finish_reason=row["finish_reason"],
        prompt_tokens=int(row["prompt_tokens"] or 0),
        completion_tokens=int(row["completion_tokens"] or 0),
        extra={"attempts": int(row["attempts"] or 1)},
    )
