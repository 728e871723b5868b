"""Seed instructions from a user's file: Alpaca JSON/JSONL, Parquet or CSV, into the pool schema.

`read_records` (any of those files as numbered records) also reads evaluation question sets.
"""

from __future__ import annotations

import csv
import json
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lion_core.config import DATA_FORMATS
from lion_core.errors import DataError
from lion_core.schemas import pool_frame, seed_row


def load_initial_data(
    path: str, options: dict[str, Any] | None = None, limit: int | None = None
) -> pd.DataFrame:
    """Read seed instructions (Alpaca JSON/JSONL, Parquet or CSV) into the pool schema.

    Required column: `instruction`; optional: `input`, `output`. Errors name the file, the row
    (1-based, as an editor shows it for JSONL/CSV; the list index for JSON) and the column.
    Exact duplicates (same instruction and input) are dropped, keeping the first.
    """
    return _to_pool(read_records(path, options), path, limit)


def read_records(path: str, options: dict[str, Any] | None = None) -> list[tuple[int, Any]]:
    """The records of a JSON, JSONL, Parquet or CSV file (local path or fsspec URI), each with
    its row number for error messages: 1-based lines for JSONL and CSV (the header is line 1),
    list indices for JSON and Parquet. A JSON object with a "data" list is read as that list."""
    fmt = next((f for f in DATA_FORMATS if path.lower().endswith(f)), None)
    if fmt is None:
        raise DataError("unsupported format; use .json, .jsonl, .parquet or .csv", file=path)
    try:
        with fsspec.open(path, "rb", **(options or {})) as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except Exception as exc:
        raise DataError(f"cannot read: {exc}", file=path) from exc

    if fmt == ".parquet":
        try:
            records = pq.read_table(pa.BufferReader(raw)).to_pylist()
        except Exception as exc:
            raise DataError(f"not a readable Parquet file: {exc}", file=path) from exc
        return list(enumerate(records))
    if fmt == ".jsonl":
        numbered = []
        for lineno, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", file=path, row=lineno) from None
        return numbered
    if fmt == ".json":
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
        return list(enumerate(records))
    return list(enumerate(csv.DictReader(raw.decode("utf-8").splitlines(True)), start=2))


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
