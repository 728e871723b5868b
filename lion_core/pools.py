"""Pools and per-round artifacts as immutable Parquet snapshots under a run's root.

Layout (see docs/storage.md):

    <root>/run.json
    <root>/round=<k>/<artifact>.parquet      k = 1..rounds (+1 for the final pools)
    <root>/round=0/student/                   the base student (round-0 checkpoint)
    <root>/round=<k>/student/                 the student trained in round k
    <root>/llm_cache/<role>/part-*.parquet    every LLM answer, keyed by request hash

Each artifact has a fixed pyarrow schema; a table that does not match is refused before anything
is written. Tasks pass `ArtifactRef`s (URI, row count, content hash) between each other, never
the tables themselves.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from lion_core.errors import DataError, SchemaError, StorageError
from lion_core.storage import Storage, parquet_bytes

POOL_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),  # reference output from the seed data, if any
        ("source", pa.string()),  # seed | hard | easy
        ("parent_id", pa.string()),  # the seed it was generated from (null for seeds)
        ("round", pa.int32()),  # the round that added it (0 for seeds)
    ]
)

ANSWER_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("answer", pa.string()),  # null when status is 'failed'
        ("status", pa.string()),  # ok | failed
        ("error", pa.string()),
        ("finish_reason", pa.string()),
        ("model", pa.string()),
        ("request_key", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
    ]
)

REFEREE_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        # order 1: teacher shown first; order 2: student shown first
        ("teacher_score_1", pa.float64()),
        ("student_score_1", pa.float64()),
        ("review_1", pa.string()),
        ("teacher_score_2", pa.float64()),
        ("student_score_2", pa.float64()),
        ("review_2", pa.string()),
        ("teacher_score", pa.float64()),  # mean over both orders
        ("student_score", pa.float64()),
        ("status", pa.string()),  # scored | unscored
        ("error", pa.string()),
    ]
)

SPLIT_SCHEMA = pa.schema(
    [
        *POOL_SCHEMA,
        ("teacher_answer", pa.string()),
        ("student_answer", pa.string()),
        ("teacher_score", pa.float64()),
        ("student_score", pa.float64()),
        ("gap", pa.float64()),
    ]
)

GENERATED_SCHEMA = pa.schema(
    [
        *POOL_SCHEMA,
        # kept | surplus | not_novel | duplicate | candidate (passed the post-filters, not yet
        # judged) | failed | truncated | empty | echo | too_short | punctuation | non_ascii
        ("status", pa.string()),
        ("error", pa.string()),
        ("request_key", pa.string()),
    ]
)

TRAIN_DATA_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("answer", pa.string()),  # the teacher's answer: the training target
    ]
)

# One referee order: 1 = teacher shown as Assistant 1, 2 = student shown first.
REFEREE_ORDER_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("teacher_score", pa.float64()),
        ("student_score", pa.float64()),
        ("review", pa.string()),  # the raw text of the last review asked for
        ("status", pa.string()),  # scored | unscored
        ("error", pa.string()),
        ("attempts", pa.int32()),  # 1 + re-asks
    ]
)

# The artifacts a round writes, in the order the DAG produces them. The first eight are the
# public layout; the others are intermediate products kept for resuming and auditing.
ARTIFACT_SCHEMAS: dict[str, pa.Schema] = {
    "train_pool": POOL_SCHEMA,
    "cache_pool": POOL_SCHEMA,
    "teacher_answers": ANSWER_SCHEMA,
    "student_answers": ANSWER_SCHEMA,
    "referee": REFEREE_SCHEMA,
    "hard": SPLIT_SCHEMA,
    "easy": SPLIT_SCHEMA,
    "generated": GENERATED_SCHEMA,
    "train_data": TRAIN_DATA_SCHEMA,
    "referee_1": REFEREE_ORDER_SCHEMA,
    "referee_2": REFEREE_ORDER_SCHEMA,
    "candidates_hard": GENERATED_SCHEMA,
    "candidates_easy": GENERATED_SCHEMA,
}

ROUND_DIR = re.compile(r"^round=(\d+)$")


def instruction_id(instruction: str, input: str | None = "") -> str:
    """Stable content hash of (instruction, input): the key of an instruction everywhere."""
    payload = json.dumps([instruction.strip(), (input or "").strip()], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def seed_row(instruction: str, input: str = "", output: str | None = None) -> dict[str, Any]:
    """A Train Pool row (POOL_SCHEMA) for a seed instruction: round 0, no parent."""
    return {
        "instruction_id": instruction_id(instruction, input),
        "instruction": instruction,
        "input": input,
        "output": output,
        "source": "seed",
        "parent_id": None,
        "round": 0,
    }


class ArtifactRef(BaseModel, frozen=True):
    """A committed artifact: what tasks hand to each other instead of dataframes."""

    uri: str
    name: str
    round: int
    rows: int
    sha256: str


def round_dir(k: int) -> str:
    return f"round={k}"


def artifact_path(k: int, name: str) -> str:
    return f"{round_dir(k)}/{name}.parquet"


def conform(df: pd.DataFrame | pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Turn `df` into a table with exactly `schema`, or raise SchemaError naming the column."""
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise SchemaError(f"{what}: missing column(s) {missing}", column=missing[0])
    columns = []
    for field in schema:
        col = table.column(field.name)
        try:
            columns.append(col.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(
                f"{what}: cannot store as {field.type}: {exc}", column=field.name
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)


class RunStore:
    """The artifacts of one run, on top of its Storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @classmethod
    def open(cls, root: str, options: dict[str, Any] | None = None) -> RunStore:
        return cls(Storage(root, options))

    # ---- artifacts ---------------------------------------------------------------------

    def write(self, k: int, name: str, data: pd.DataFrame | pa.Table) -> ArtifactRef:
        """Commit artifact `name` of round `k`. Refuses to overwrite a committed snapshot."""
        schema = ARTIFACT_SCHEMAS.get(name)
        if schema is None:
            raise SchemaError(f"unknown artifact {name!r}; known: {sorted(ARTIFACT_SCHEMAS)}")
        table = conform(data, schema, f"round {k} {name}")
        blob = parquet_bytes(table)
        rel = artifact_path(k, name)
        uri = self.storage.write_bytes(rel, blob)
        return ArtifactRef(uri=uri, name=name, round=k, rows=table.num_rows, sha256=_sha256(blob))

    def ref(self, k: int, name: str) -> ArtifactRef | None:
        """The committed artifact, or None if it does not exist yet."""
        rel = artifact_path(k, name)
        if not self.storage.exists(rel):
            return None
        blob = self.storage.read_bytes(rel)
        rows = pq.ParquetFile(pa.BufferReader(blob)).metadata.num_rows
        return ArtifactRef(
            uri=self.storage.uri(rel), name=name, round=k, rows=rows, sha256=_sha256(blob)
        )

    def write_or_reuse(self, k: int, name: str, data: pd.DataFrame | pa.Table) -> ArtifactRef:
        """Write, or, if a snapshot is already committed (an earlier attempt got that far),
        return it: snapshots are immutable, so the committed one wins."""
        existing = self.ref(k, name)
        return existing if existing is not None else self.write(k, name, data)

    def exists(self, k: int, name: str) -> bool:
        return self.storage.exists(artifact_path(k, name))

    def read_table(self, k: int, name: str) -> pa.Table:
        return self.storage.read_parquet(artifact_path(k, name), schema=ARTIFACT_SCHEMAS[name])

    def read(self, k: int, name: str) -> pd.DataFrame:
        return self.read_table(k, name).to_pandas()

    def read_ref(self, ref: ArtifactRef) -> pd.DataFrame:
        return self.read(ref.round, ref.name)

    # ---- rounds ------------------------------------------------------------------------

    def rounds(self) -> list[int]:
        found = []
        for name in self.storage.listdir():
            m = ROUND_DIR.match(name)
            if m:
                found.append(int(m.group(1)))
        return sorted(found)

    def counts(self) -> dict[int, dict[str, int | None]]:
        """Rows per artifact per round (None where the artifact is not written)."""
        out: dict[int, dict[str, int | None]] = {}
        for k in self.rounds():
            row: dict[str, int | None] = {}
            present = set(self.storage.listdir(round_dir(k)))
            for name in ARTIFACT_SCHEMAS:
                if f"{name}.parquet" in present:
                    with self.storage.fs.open(self.storage.path(artifact_path(k, name))) as fh:
                        row[name] = pq.ParquetFile(fh).metadata.num_rows
                else:
                    row[name] = None
            row["student"] = 1 if "student" in present else None
            out[k] = row
        return out

    # ---- run.json ----------------------------------------------------------------------

    def write_run_info(self, info: dict[str, Any]) -> str:
        return self.storage.write_json("run.json", info)

    def read_run_info(self) -> dict[str, Any]:
        if not self.storage.exists("run.json"):
            raise StorageError(f"no run.json under {self.storage.uri()}: not a lion run root")
        return self.storage.read_json("run.json")


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


# ------------------------------------------------------------------------------------------
# Initial data
# ------------------------------------------------------------------------------------------


def load_initial_data(
    path: str, options: dict[str, Any] | None = None, limit: int | None = None
) -> pd.DataFrame:
    """Read seed instructions (Alpaca JSON/JSONL, Parquet or CSV) into the pool schema.

    Required column: `instruction`; optional: `input`, `output`. Errors name the file, the row
    (1-based, as an editor shows it for JSONL/CSV; the list index for JSON) and the column.
    Exact duplicates (same instruction and input) are dropped, keeping the first.
    """
    formats = (".parquet", ".jsonl", ".json", ".csv")
    fmt = next((f for f in formats if path.lower().endswith(f)), None)
    if fmt is None:
        raise DataError("unsupported format; use .json, .jsonl, .parquet or .csv", file=path)
    try:
        with fsspec.open(path, "rb", **(options or {})) as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except Exception as exc:
        raise DataError(f"cannot read: {exc}", file=path) from exc

    numbered: list[tuple[int, Any]]
    if fmt == ".parquet":
        try:
            records = pq.read_table(pa.BufferReader(raw)).to_pylist()
        except Exception as exc:
            raise DataError(f"not a readable Parquet file: {exc}", file=path) from exc
        numbered = list(enumerate(records))
    elif fmt == ".jsonl":
        numbered = []
        for lineno, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", file=path, row=lineno) from None
    elif fmt == ".json":
        try:
            records = json.loads(raw.decode("utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", file=path
            ) from None
        if isinstance(records, dict) and isinstance(records.get("data"), list):
            records = records["data"]
        if not isinstance(records, list):
            raise DataError("expected a JSON list of records", file=path)
        numbered = list(enumerate(records))
    else:  # csv; the header is line 1
        numbered = list(enumerate(csv.DictReader(raw.decode("utf-8").splitlines(True)), start=2))
    return _to_pool(numbered, path, limit)


def _to_pool(numbered: list[tuple[int, Any]], path: str, limit: int | None) -> pd.DataFrame:
    rows = []
    seen: set[str] = set()
    for rowno, rec in numbered:
        if not isinstance(rec, dict):
            raise DataError(f"expected an object, got {type(rec).__name__}", file=path, row=rowno)
        instruction = rec.get("instruction")
        if instruction is None:
            raise DataError("missing required column", file=path, row=rowno, column="instruction")
        for column in ("instruction", "input", "output"):
            value = rec.get(column)
            if value is not None and not isinstance(value, str):
                raise DataError(
                    f"expected text, got {type(value).__name__}",
                    file=path,
                    row=rowno,
                    column=column,
                )
        if not instruction.strip():
            raise DataError("empty instruction", file=path, row=rowno, column="instruction")
        row = seed_row(instruction.strip(), (rec.get("input") or "").strip(), rec.get("output"))
        if row["instruction_id"] in seen:
            continue
        seen.add(row["instruction_id"])
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError("no instructions found", file=path)
    return pool_frame(rows)


def pool_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A pool dataframe from row dicts, columns in schema order."""
    return pd.DataFrame(rows, columns=POOL_SCHEMA.names)
