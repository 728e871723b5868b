"""`RunStore`: a run's artifacts as immutable Parquet snapshots under its root.

Where each file lives is `lion_core.run.layout`'s business; the store commits and reads them, checks
every table against its schema, and hands out `ArtifactRef`s.
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Any

import pandas as pd
import pyarrow as pa

from lion_core.errors import SchemaError, StorageError
from lion_core.run import layout
from lion_core.run.lease import check_held
from lion_core.run.schemas import (
    ARTIFACT_SCHEMAS,
    EVALUATION_SCHEMAS,
    ArtifactRef,
    conform,
    renamed,
)
from lion_core.run.storage import Storage, parquet_bytes


class RunStore:
    """The artifacts of one run, on top of its Storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @classmethod
    def open(cls, root: str, options: dict[str, Any] | None = None) -> RunStore:
        return cls(Storage(root, options))

    # ---- artifacts ---------------------------------------------------------------------

    def write(
        self, k: int, name: str, data: pd.DataFrame | pa.Table, at: str | None = None
    ) -> ArtifactRef:
        """Commit artifact `name` of round `k` (at `at`, default the round's own file).
        Refuses to overwrite a committed snapshot."""
        check_held(self.storage.uri())  # a run that lost its root's lease commits nothing
        schema = _schema(name, at)
        table = conform(data, schema, f"round {k} {name}")
        blob = parquet_bytes(table)
        rel = at or layout.artifact(k, name)
        uri = self.storage.write_bytes(rel, blob)
        return ArtifactRef(
            uri=uri, path=rel, name=name, round=k, rows=table.num_rows, sha256=_sha256(blob)
        )

    def ref(self, k: int, name: str, at: str | None = None) -> ArtifactRef | None:
        """The committed artifact, or None if it does not exist yet."""
        rel = at or layout.artifact(k, name)
        if not self.storage.exists(rel):
            return None
        blob = self.storage.read_bytes(rel)
        rows = self.storage.parquet_rows(rel, blob)
        return ArtifactRef(
            uri=self.storage.uri(rel), path=rel, name=name, round=k, rows=rows, sha256=_sha256(blob)
        )

    def write_or_reuse(
        self, k: int, name: str, data: pd.DataFrame | pa.Table, at: str | None = None
    ) -> ArtifactRef:
        """Write, or, if a snapshot is already committed (an earlier attempt got that far),
        return it: snapshots are immutable, so the committed one wins."""
        existing = self.ref(k, name, at)
        return existing if existing is not None else self.write(k, name, data, at)

    def exists(self, k: int, name: str) -> bool:
        return self.storage.exists(layout.artifact(k, name))

    def read_table(self, k: int, name: str, at: str | None = None) -> pa.Table:
        """The artifact with its schema's columns; one written before a column was renamed
        (`schemas.RENAMED_COLUMNS`: pools' `output` is now `reference`) reads with the new
        name, and one written before a nullable column was added reads it as nulls (a run
        written by an older version still resumes), as pyarrow's schema-driven read did."""
        rel = at or layout.artifact(k, name)
        schema = _schema(name, at)
        table = renamed(self.storage.read_parquet(rel), schema)
        for field in schema:
            if field.nullable and field.name not in table.column_names:
                table = table.append_column(field, pa.nulls(len(table), field.type))
        return conform(table, schema, self.storage.uri(rel))

    def read(self, k: int, name: str, at: str | None = None) -> pd.DataFrame:
        return self.read_table(k, name, at).to_pandas()

    def read_ref(self, ref: ArtifactRef) -> pd.DataFrame:
        return self.read(ref.round, ref.name, ref.path)

    # ---- rounds ------------------------------------------------------------------------

    def rounds(self) -> list[int]:
        found = (layout.round_of(name) for name in self.storage.listdir())
        return sorted(k for k in found if k is not None)

    def counts(self) -> dict[int, dict[str, int | None]]:
        """Rows per artifact per round (None where the artifact is not written)."""
        out: dict[int, dict[str, int | None]] = {}
        for k in self.rounds():
            row: dict[str, int | None] = {}
            present = set(self.storage.listdir(layout.round_dir(k)))
            for name in ARTIFACT_SCHEMAS:
                if posixpath.basename(layout.artifact(k, name)) in present:
                    row[name] = self.storage.parquet_rows(layout.artifact(k, name))
                else:
                    row[name] = None
            row["student"] = 1 if posixpath.basename(layout.student(k)) in present else None
            out[k] = row
        return out

    # ---- round summaries ---------------------------------------------------------------

    def write_round_summary(self, k: int, summary: dict[str, Any]) -> str:
        check_held(self.storage.uri())
        return self.storage.write_json(layout.round_summary(k), summary, overwrite=True)

    def read_round_summary(self, k: int) -> dict[str, Any] | None:
        rel = layout.round_summary(k)
        return self.storage.read_json(rel) if self.storage.exists(rel) else None

    # ---- run.json ----------------------------------------------------------------------

    def write_run_info(self, info: dict[str, Any], *, overwrite: bool = False) -> str:
        return self.storage.write_json(layout.RUN_INFO, info, overwrite=overwrite)

    def has_run_info(self) -> bool:
        return self.storage.exists(layout.RUN_INFO)

    def committed(self) -> list[str]:
        """What the root holds that a configuration produced: every top-level name except
        run.json and what is keyed by content, not by the config (the LLM response cache,
        Prefect's task results). Empty: nothing committed yet."""
        free = {layout.RUN_INFO, layout.LLM_CACHE, layout.RESULTS, layout.LEASE, layout.LEASE_LOCK}
        return [name for name in self.storage.listdir() if name not in free]

    def read_run_info(self) -> dict[str, Any]:
        if not self.has_run_info():
            raise StorageError(f"no run.json under {self.storage.uri()}: not a lion run root")
        return self.storage.read_json(layout.RUN_INFO)

    # ---- everything else under the root ------------------------------------------------

    def uri(self, rel: str = "") -> str:
        return self.storage.uri(rel)


def _schema(name: str, at: str | None) -> pa.Schema:
    """A round artifact's schema, or (stored `at` an evaluation path) an evaluation artifact's."""
    known = EVALUATION_SCHEMAS if at and f"/{layout.EVALUATION}/" in f"/{at}" else ARTIFACT_SCHEMAS
    schema = known.get(name)
    if schema is None:
        raise SchemaError(f"unknown artifact {name!r}; known: {sorted(known)}")
    return schema


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()
