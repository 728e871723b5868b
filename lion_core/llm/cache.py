"""The response cache: every LLM answer of a run, persisted as Parquet shards in its storage.

Layout: `<run root>/llm_cache/<role>/part-<UTC timestamp>-<uuid>.parquet` (`layout.llm_cache`),
one shard per flush (see docs/llm-client.md for the schema). Shards are written atomically and
never rewritten, so a crash loses at most the answers not yet flushed, and any number of
clients — threads or processes — can add shards side by side. Failed answers are written too
(with their error, for audit) but `get` returns only successful ones, so a re-run sends
failures again.
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lion_core import layout
from lion_core.errors import StorageError
from lion_core.llm.types import ChatResult
from lion_core.storage import Storage

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
        ("created_at", pa.timestamp("us", tz="UTC")),
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


def shard_name() -> str:
    """A shard's file name: sortable by time, unique across processes."""
    now = datetime.now(UTC)
    return f"part-{now:%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:12]}.parquet"


class ResponseCache:
    """The successful answers of one role, loaded from all shards; new answers add a shard.

    Thread-safe. Two instances of one role (in two threads or processes) never overwrite each
    other's shards; `refresh()` picks up shards others wrote since.
    """

    def __init__(self, storage: Storage, role: str) -> None:
        if not role or "/" in role:
            raise ValueError(f"invalid cache role {role!r}")
        self.storage = storage
        self.role = role
        self.prefix = layout.llm_cache(role)
        self._lock = threading.Lock()
        self._answers: dict[str, ChatResult] = {}
        self._loaded: set[str] = set()
        self.refresh()

    # ---- reading ------------------------------------------------------------------------

    def _shards(self) -> list[str]:
        # Object-store listings are cached per filesystem instance; other writers' new shards
        # are only visible after invalidating that cache.
        self.storage.fs.invalidate_cache(self.storage.path(self.prefix))
        return [n for n in self.storage.listdir(self.prefix) if n.endswith(".parquet")]

    def refresh(self) -> int:
        """Load shards not loaded yet (written by other clients); returns how many."""
        with self._lock:
            new = [n for n in self._shards() if n not in self._loaded]
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
        loaded: list[tuple[str, list[ChatResult]]] = []
        for name, path in zip(new, paths, strict=True):
            blob = _blob_for(blobs, path)
            try:
                rows = pq.read_table(io.BytesIO(blob), columns=_LOAD_COLUMNS).to_pylist()
            except Exception as exc:
                raise StorageError(
                    f"{self.storage.uri(f'{self.prefix}/{name}')} is not a readable cache shard: "
                    f"{exc}"
                ) from exc
            loaded.append((name, [_row_to_result(r) for r in rows if r["status"] == "ok"]))
        with self._lock:
            for name, results in loaded:
                if name in self._loaded:
                    continue
                self._loaded.add(name)
                for res in results:
                    self._answers.setdefault(res.key, res)  # first answer wins
        return len(loaded)

    def get(self, key: str) -> ChatResult | None:
        """The stored successful answer for `key` (marked cached), or None."""
        with self._lock:
            hit = self._answers.get(key)
        return replace(hit, cached=True, extra=dict(hit.extra)) if hit else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._answers)

    @property
    def uri(self) -> str:
        return self.storage.uri(self.prefix)

    def frame(self) -> pd.DataFrame:
        """Every row of every shard (failures included), for audit and reporting."""
        names = self._shards()
        if not names:
            return CACHE_SCHEMA.empty_table().to_pandas()
        tables = [self.storage.read_parquet(f"{self.prefix}/{n}") for n in names]
        return pa.concat_tables(tables).to_pandas()

    # ---- writing ------------------------------------------------------------------------

    def put_many(
        self,
        results: Iterable[ChatResult],
        requests: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> str | None:
        """Persist `results` (ok and failed) as one new shard; returns its URI (None if empty).

        `requests` maps a key to its request payload ({model, messages, params}), stored
        alongside the answer so the cache says what was asked.
        """
        results = [r for r in results if not r.cached]
        if not results:
            return None
        now = datetime.now(UTC)
        table = pa.Table.from_pylist(
            [
                {
                    "key": r.key,
                    "role": self.role,
                    "tag": r.tag,
                    "status": r.status,
                    "text": r.text,
                    "error": r.error,
                    "finish_reason": r.finish_reason,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                    "attempts": int(r.extra.get("attempts", 1)),
                    "request": _request_json(requests, r.key),
                    "created_at": now,
                }
                for r in results
            ],
            schema=CACHE_SCHEMA,
        )
        name = shard_name()
        uri = self.storage.write_parquet(f"{self.prefix}/{name}", table)
        with self._lock:
            self._loaded.add(name)
            for r in results:
                if r.ok:
                    self._answers.setdefault(r.key, replace(r, cached=False))
        return uri

    def __repr__(self) -> str:
        return f"ResponseCache({self.uri!r}, answers={len(self)})"


def _request_json(requests: Mapping[str, Mapping[str, Any]] | None, key: str) -> str | None:
    if not requests or key not in requests:
        return None
    return json.dumps(requests[key], ensure_ascii=False, sort_keys=True)


def _blob_for(blobs: Mapping[str, bytes], path: str) -> bytes:
    if path in blobs:
        return blobs[path]
    stripped = path.split("://", 1)[-1]  # some filesystems key results without the protocol
    for candidate, blob in blobs.items():
        if candidate.split("://", 1)[-1].rstrip("/") == stripped.rstrip("/"):
            return blob
    raise StorageError(f"cache shard {path} was listed but could not be read")


def _row_to_result(row: dict[str, Any]) -> ChatResult:
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
