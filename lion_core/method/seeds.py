"""Seed instructions from a user's file: Alpaca JSON/JSONL, Parquet or CSV, into the pool schema."""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lion_core.config import DATA_FORMATS, LionConfig, PoolsConfig
from lion_core.errors import DataError
from lion_core.run.schemas import pool_frame, seed_row

log = logging.getLogger(__name__)

DEFAULT_MAX_INSTRUCTION_CHARS: int = PoolsConfig.model_fields["max_instruction_chars"].default


@dataclass(frozen=True, eq=False)
class Seeds:
    """What `load_initial_data` read: the seed pool, and the rows it left out."""

    pool: pd.DataFrame
    duplicates: int  # exact duplicates (same instruction and input) of an earlier row
    oversize: int  # instruction + input longer than max_instruction_chars


def load_initial_data(
    path: str,
    options: dict[str, Any] | None = None,
    limit: int | None = None,
    *,
    max_instruction_chars: int | None = DEFAULT_MAX_INSTRUCTION_CHARS,
) -> Seeds:
    """Read seed instructions (Alpaca JSON/JSONL, Parquet or CSV) into the pool schema.

    Required column: `instruction`; optional: `input`, `output`. Text is UTF-8 (a leading BOM is
    allowed). Errors name the file, the row (1-based line where the record starts, as an editor
    shows it, for JSONL/CSV; the list index for JSON and Parquet) and the column. Exact
    duplicates (same instruction and input) are dropped, keeping the first; rows whose
    instruction + input exceed `max_instruction_chars` characters (None: no limit) are dropped
    before they cost memory, teacher and referee requests. Both are counted in the result and
    logged as a warning. `limit`: keep only the first N rows.
    """
    return _to_seeds(read_records(path, options), path, limit, max_instruction_chars)


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

    numbered: list[tuple[int, Any]]
    if fmt == ".parquet":
        try:
            records = pq.read_table(pa.BufferReader(raw)).to_pylist()
        except Exception as exc:
            raise DataError(f"not a readable Parquet file: {exc}", file=path) from exc
        numbered = list(enumerate(records))
    elif fmt == ".jsonl":
        numbered = []
        # Only "\n" ends a JSONL record: str.splitlines() would also split at U+2028, U+0085,
        # \x0c ..., which are valid unescaped inside a JSON string.
        for lineno, line in enumerate(_decode(raw, path, fmt).split("\n"), start=1):
            if not line.strip(" \t\r"):
                continue
            try:
                numbered.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", file=path, row=lineno) from None
    elif fmt == ".json":
        try:
            records = json.loads(_decode(raw, path, fmt))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", file=path
            ) from None
        if isinstance(records, dict) and isinstance(records.get("data"), list):
            records = records["data"]
        if not isinstance(records, list):
            raise DataError("expected a JSON list of records", file=path)
        numbered = list(enumerate(records))
    else:
        numbered = _csv_records(_decode(raw, path, fmt), path)
    return numbered


def _decode(raw: bytes, path: str, fmt: str) -> str:
    """UTF-8 text without a leading BOM; a DataError naming the line of the first bad byte."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start : exc.start + 1].hex()
        raise DataError(
            f"not UTF-8 text: byte 0x{byte} at line {line} ({exc.reason}); save the file as UTF-8",
            file=path,
            row=line if fmt in (".jsonl", ".csv") else None,
        ) from None


def _csv_records(text: str, path: str) -> list[tuple[int, dict[str, str]]]:
    """CSV records keyed by the header, each with the line it starts on (the header is line 1).

    The csv module over a stream opened with newline="" keeps quoted line breaks (and \\x0c,
    \\x85, U+2028) inside their field, and a record spanning several lines is numbered by the
    line it starts on."""
    reader = csv.reader(io.StringIO(text, newline=""))
    out: list[tuple[int, dict[str, str]]] = []
    header: list[str] | None = None
    start = 1
    try:
        for fields in reader:
            if fields:  # a blank line is no record
                if header is None:
                    header = fields
                else:
                    out.append((start, dict(zip(header, fields, strict=False))))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"invalid CSV: {exc}", file=path, row=start) from None
    return out


def _to_seeds(
    numbered: list[tuple[int, Any]], path: str, limit: int | None, max_chars: int | None
) -> Seeds:
    rows = []
    seen: set[str] = set()
    duplicates = oversize = 0
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
        instruction, inp = instruction.strip(), (rec.get("input") or "").strip()
        if max_chars is not None and len(instruction) + len(inp) > max_chars:
            oversize += 1
            continue
        row = seed_row(instruction, inp, reference=rec.get("output"))
        if row["instruction_id"] in seen:
            duplicates += 1
            continue
        seen.add(row["instruction_id"])
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError(
            "no instructions found"
            + (f" ({oversize} longer than {max_chars} characters)" if oversize else ""),
            file=path,
        )
    if duplicates or oversize:
        log.warning(
            "%s: kept %d seed instruction(s); dropped %d duplicate(s) and %d longer than "
            "pools.max_instruction_chars=%s characters",
            path, len(rows), duplicates, oversize, max_chars,
        )  # fmt: skip
    return Seeds(pool_frame(rows), duplicates, oversize)


def initial_pool(config: LionConfig) -> pd.DataFrame:
    """Round 1's pool as the run builds it: `pools.initial_data`, or the offline world's seeds
    when there is none (first `pools.limit` rows either way)."""
    if config.pools.initial_data:
        return load_initial_data(
            config.pools.initial_data,
            config.storage.options,
            limit=config.pools.limit,
            max_instruction_chars=config.pools.max_instruction_chars,
        ).pool
    from lion_core.offline.world import seed_pool

    world = config.offline
    seeds = seed_pool(config.pools.offline_seeds, config.seed, world.max_difficulty, world.families)
    return seeds.head(config.pools.limit) if config.pools.limit else seeds
