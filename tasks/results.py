"""Task results in the run's storage: JSON records of our own types, and nothing else is loaded.

Prefect persists each task's (and flow's) result as a record — `{"metadata": {"serializer":
...}, "result": ...}` — and loads it with the serializer the record itself names. Its default is
pickle, so anyone who can write `<root>/prefect-results` (a shared bucket prefix) could plant a
record that runs code on the machine that resumes the run. Here:

- `LionJSONSerializer` ('lion-json', no settings) writes `lion_core.run.records.dump_result` JSON:
  our records, ArtifactRef, EvalSummary and plain JSON values only.
- `LocalResults` / `RemoteResults` (a folder / an fsspec URI such as s3://) are the result
  storage: their `read_path` refuses, with a `ResultRecordError` naming the file, any record that
  is not exactly a 'lion-json' record of those types — before Prefect looks at the serializer it
  names. Every read Prefect does goes through them: the cache lookup, a task's or a subflow's
  result (`ResultStore._from_metadata` loads the saved block by its id).
- `LionResultStore` makes the cache lookup loud: Prefect's `exists` treats any read error as
  "not there" (and would silently recompute over the planted file); ours re-raises the refusal.
"""

from __future__ import annotations

import hashlib
import json
import os
import types
import typing
import uuid
from pathlib import Path
from typing import Any, ClassVar, Literal

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem
from prefect.results import ResultStore
from prefect.serializers import Serializer
from pydantic import Field

from lion_core.config import LionConfig
from lion_core.errors import ResultRecordError
from lion_core.run import layout
from lion_core.run.records import dump_result, load_result
from tasks.runtime.store import run_store

SERIALIZER = "lion-json"
METADATA_FIELDS = frozenset(
    {"storage_key", "expiration", "serializer", "prefect_version", "storage_block_id"}
)
DELETE_HINT = (
    "lion wrote no such record (someone who can write the run's storage did, or it is "
    "damaged); delete the file to recompute that task"
)


class LionJSONSerializer(Serializer):
    """Results as `lion_core.run.records.dump_result` JSON; loading refuses any other type."""

    type: Literal["lion-json"] = Field(default=SERIALIZER, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return dump_result(obj)

    def loads(self, blob: bytes) -> Any:
        return load_result(blob, "a task result")


def checked_record(content: bytes, where: str) -> bytes:
    """`content` if it is a 'lion-json' result record of our types, else ResultRecordError
    naming `where` and what is wrong."""
    try:
        record = json.loads(content)
    except ValueError as exc:
        raise ResultRecordError(f"{where}: refused: not JSON ({exc}); {DELETE_HINT}") from None
    if not (
        isinstance(record, dict)
        and set(record) == {"metadata", "result"}
        and isinstance(record["metadata"], dict)
        and set(record["metadata"]) <= METADATA_FIELDS
        and isinstance(record["result"], str)
    ):
        raise ResultRecordError(f"{where}: refused: not a task result record; {DELETE_HINT}")
    serializer = record["metadata"].get("serializer")
    if serializer != {"type": SERIALIZER}:
        named = serializer.get("type") if isinstance(serializer, dict) else serializer
        raise ResultRecordError(
            f"{where}: refused: written with serializer {named!r}, not {SERIALIZER!r} "
            f"(loading it could run code); {DELETE_HINT}"
        )
    try:
        load_result(record["result"].encode(), where)
    except ResultRecordError as exc:
        raise ResultRecordError(f"{exc}; {DELETE_HINT}") from None
    return content


class LocalResults(LocalFileSystem):
    """Result storage in a local folder: reads checked (`checked_record`), writes atomic (a
    killed writer leaves no half record that a resume would then refuse)."""

    _block_type_name: ClassVar[str] = "Lion Results Folder"

    async def aread_path(self, path: str) -> bytes:
        return checked_record(await super().aread_path(path), str(self._resolve_path(path)))

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return checked_record(super().read_path(path, _sync=True), str(self._resolve_path(path)))

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content, _sync=True)

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:
        target = self._resolve_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(content)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return str(target)


class RemoteResults(RemoteFileSystem):
    """Result storage under an fsspec URI (s3://...): reads checked (`checked_record`)."""

    _block_type_name: ClassVar[str] = "Lion Results Remote"

    async def aread_path(self, path: str) -> bytes:
        return checked_record(await super().aread_path(path), self._resolve_path(path))

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return checked_record(super().read_path(path, _sync=True), self._resolve_path(path))


def _fits(value: Any, annotation: Any) -> bool:
    """Whether `value` can be what a function annotated `-> annotation` returned (classes
    and their unions, containers by their outer type; anything else is not checked)."""
    if annotation is Any:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, member) for member in typing.get_args(annotation))
    target = origin or annotation
    return isinstance(value, target) if isinstance(target, type) else True


def check_task_result(record: Any, where: str) -> Any:
    """`record`, read inside a task run, if its result is of the type the task returns; else
    ResultRecordError naming `where`, the task and both types. (A valid record of another
    type at a task's key was shown Cached and then failed the flow with an AttributeError.)"""
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    if context is None or not hasattr(record, "result"):
        return record
    try:
        expected = typing.get_type_hints(context.task.fn).get("return", Any)
    except Exception:  # an annotation that does not resolve: nothing to check against
        return record
    if not _fits(record.result, expected):
        found = type(record.result).__name__
        wanted = getattr(expected, "__name__", str(expected))
        raise ResultRecordError(
            f"{where}: refused: a {found} record where task {context.task.name!r} returns "
            f"{wanted}; {DELETE_HINT}"
        )
    return record


class LionResultStore(ResultStore):
    """Prefect's result store, except that a refused record fails the cache lookup loudly
    instead of reading as a miss, and a task's record must hold the type the task returns."""

    def _read(self, key: str, holder: str) -> Any:
        return check_task_result(super()._read(key, holder), self._where(key))

    async def _aread(self, key: str, holder: str) -> Any:
        return check_task_result(await super()._aread(key, holder), self._where(key))

    def _where(self, key: str) -> str:
        storage = self.result_storage
        if isinstance(storage, LocalResults | RemoteResults):
            return str(storage._resolve_path(key))
        return key

    def exists(self, key: str) -> bool:
        if super().exists(key):
            return True
        self._raise_if_refused(key)
        return False

    async def aexists(self, key: str) -> bool:
        if await super().aexists(key):
            return True
        self._raise_if_refused(key)
        return False

    def _raise_if_refused(self, key: str) -> None:
        storage = self.result_storage
        if not isinstance(storage, LocalResults | RemoteResults):
            return
        try:
            storage.read_path(key, _sync=True)
        except ResultRecordError:
            raise
        except Exception:  # missing (the usual miss) or unreadable: Prefect's answer stands
            return


def result_storage(config: LionConfig) -> WritableFileSystem:
    """Where task results live: `<root>/prefect-results`, in the run's own storage, as a block
    saved on the Prefect server (under a name derived from the URI), so that Prefect records
    its id with each result and loads any of them — a subflow's result on a UI Retry included
    — through the same checked storage. A remote block's settings hold only the storage
    options (endpoint URL etc.); credentials come from the worker's environment."""
    store = run_store(config)
    uri = store.uri(layout.RESULTS)
    block: LocalResults | RemoteResults
    if store.storage.is_local:
        Path(uri).mkdir(parents=True, exist_ok=True)
        block, settings = LocalResults(basepath=uri), {}
    else:
        settings = dict(config.storage.options)
        block = RemoteResults(basepath=uri, settings=settings)
    digest = hashlib.sha256(json.dumps([uri, settings], sort_keys=True).encode()).hexdigest()
    name = f"lion-results-{digest[:16]}"
    block.save(name, overwrite=True)
    return type(block).load(name)


def run_result_store(store: ResultStore, config: LionConfig) -> LionResultStore:
    """`store` (a flow run's) writing to and reading from the run's storage, as 'lion-json'.

    Prefect gives a flow's store a NullFileSystem as metadata storage, so it writes a flow's
    own result (its return value, or its exception) as the bare serialized value, and loads it
    with the serializer recorded in the API. Ours has none: every file under prefect-results is
    a whole record, so the storage can refuse anything else, bare values included."""
    fields = {name: getattr(store, name) for name in ResultStore.model_fields}
    fields.update(
        result_storage=result_storage(config),
        serializer=LionJSONSerializer(),
        metadata_storage=None,
    )
    return LionResultStore(**fields)
