"""A round's training data as a file other tools train on: what the student of round k imitated.

The training target is the teacher's answer (`round=<k>/train_data.parquet`, column `answer`),
never the pools' `reference` column (the seed data's own answer, null for generated
instructions). Formats:

- `alpaca`: a JSON list of `{"instruction", "input", "output"}` (output = the teacher's answer);
- `sharegpt`: a JSON list of `{"conversations": [{"from": "human", ...}, {"from": "gpt", ...}]}`
  (the human turn is the instruction, then a blank line and the input when there is one);
- `parquet`: the columns `instruction`, `input`, `output`.
"""

from __future__ import annotations

import io
import json
from typing import Literal

import pandas as pd

from lion_core.errors import DataError
from lion_core.run import layout
from lion_core.run.storage import Storage
from lion_core.run.store import RunStore

Format = Literal["alpaca", "sharegpt", "parquet"]
FORMATS: tuple[str, ...] = ("alpaca", "sharegpt", "parquet")


def training_records(store: RunStore, round: int) -> pd.DataFrame:
    """Round `round`'s training examples: `instruction`, `input` ('' when none), `output`
    (the teacher's answer), in training order."""
    ref = store.ref(round, "train_data")
    if ref is None:
        raise DataError(
            f"round {round} has no training data under {store.uri()} (run the round's imitation "
            "stage first; `lion pools` lists what each round has)",
            file=store.uri(layout.artifact(round, "train_data")),
        )
    rows = store.read_ref(ref)
    return pd.DataFrame(
        {
            "instruction": rows["instruction"],
            "input": rows["input"].fillna(""),
            "output": rows["answer"],
        }
    ).reset_index(drop=True)


def render(records: pd.DataFrame, fmt: Format) -> bytes:
    """`records` (from `training_records`) as the bytes of a file in format `fmt`."""
    if fmt == "parquet":
        buffer = io.BytesIO()
        records.to_parquet(buffer, index=False)
        return buffer.getvalue()
    rows = records.to_dict(orient="records")
    if fmt == "alpaca":
        data: list[dict] = rows
    elif fmt == "sharegpt":
        data = [
            {
                "conversations": [
                    {"from": "human", "value": _prompt(r["instruction"], r["input"])},
                    {"from": "gpt", "value": r["output"]},
                ]
            }
            for r in rows
        ]
    else:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode()


def _prompt(instruction: str, input: str) -> str:
    return f"{instruction}\n\n{input}" if input else instruction


def export_round(store: RunStore, round: int, fmt: Format, out: str | None = None) -> str:
    """Write round `round`'s training data in format `fmt` to `out` (a local path or URI; by
    default `round=<k>/export/train.<format>.<ext>` in the run's storage); returns its URI."""
    blob = render(training_records(store, round), fmt)
    if out is None:
        return store.storage.write_bytes(layout.export(round, fmt), blob, overwrite=True)
    parent, _, name = out.rstrip("/").rpartition("/")
    options = store.storage.options if "://" in out else None
    return Storage(parent or ".", options).write_bytes(name, blob, overwrite=True)
