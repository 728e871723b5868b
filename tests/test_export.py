"""No data traps: `lion export` writes what the student was trained on (the teacher's answers,
not the pools' `reference`, the seed's own answer) and round-trips through pandas; the DuckDB
example of docs/storage.md keeps the files' own `round`; the student's `model` is
run-relative."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from lion_core.method.imitation import training_set
from lion_core.run.schemas import instruction_id, pool_frame, seed_row
from lion_core.run.storage import Storage
from lion_core.run.store import RunStore

DOCS = Path(__file__).resolve().parent.parent / "docs" / "storage.md"
runner = CliRunner()


def _round_1(root: Path) -> tuple[RunStore, pd.DataFrame]:
    """A round 1 as the imitation stage leaves it: a pool whose `reference` is the seed data's
    own answer (null for a generated row), the teacher's answers (one failed), the training
    data."""
    store = RunStore.open(str(root))
    generated = {**seed_row("Write a haiku about rain."), "source": "hard", "round": 1,
                 "parent_id": "p"}  # fmt: skip
    pool = pool_frame(
        [
            seed_row("Add the numbers.", "12, 30", reference="42 (reference)"),
            seed_row("Translate to French: «bonjour, ça va ?»", reference="(reference)"),
            generated,
            seed_row("This one failed."),
        ]
    )
    answers = pd.DataFrame(
        {
            "instruction_id": pool["instruction_id"],
            "answer": ["The sum is 42.", "Salut, ça va ?", "Rain on the roof…", None],
            "status": ["ok", "ok", "ok", "failed"],
        }
    )
    rows, missing = training_set(pool, answers)
    assert missing == 1
    store.write(1, "train_pool", pool)
    store.write(1, "train_data", rows)
    return store, rows


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "parquet"])
def test_export_round_trips_through_pandas(tmp_path, fmt):
    store, rows = _round_1(tmp_path / "run")
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--round", "1", "--format", fmt])
    assert result.exit_code == 0, result.output
    uri = result.output.strip()
    assert uri == store.uri(
        f"round=1/export/train.{fmt}.{'parquet' if fmt == 'parquet' else 'json'}"
    )

    expected = pd.DataFrame(
        {"instruction": rows["instruction"], "input": rows["input"], "output": rows["answer"]}
    )
    if fmt == "parquet":
        back = pd.read_parquet(uri)
    elif fmt == "alpaca":
        back = pd.read_json(uri, orient="records", dtype=False)
    else:
        conversations = pd.read_json(uri, orient="records", dtype=False)["conversations"]
        human = [c[0]["value"] for c in conversations]
        assert [c[0]["from"] for c in conversations] == ["human"] * 3
        assert human[0] == "Add the numbers.\n\n12, 30" and human[1] == rows["instruction"][1]
        back = pd.DataFrame(
            {
                "instruction": rows["instruction"],
                "input": rows["input"],
                "output": [c[1]["value"] for c in conversations],
            }
        )
    pd.testing.assert_frame_equal(back[list(expected.columns)], expected)
    assert "(reference)" not in "".join(back["output"])  # the teacher's answers only
    assert len(back) == 3  # the failed answer was never trained on


def test_export_to_a_chosen_file_and_errors(tmp_path):
    _round_1(tmp_path / "run")
    out = tmp_path / "elsewhere" / "train.json"
    result = runner.invoke(
        app, ["export", str(tmp_path / "run"), "--round", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())[0]["output"] == "The sum is 42."
    bad = runner.invoke(app, ["export", str(tmp_path / "run"), "--round", "1", "--format", "csv"])
    assert bad.exit_code == 2 and "alpaca, sharegpt, parquet" in bad.output
    from lion_core.errors import DataError

    with pytest.raises(DataError, match="round 2 has no training data"):
        runner.invoke(app, ["export", str(tmp_path / "run"), "--round", "2"],
                      catch_exceptions=False)  # fmt: skip


def test_the_duckdb_example_keeps_the_files_round(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    store = RunStore.open(str(tmp_path / "run"))
    hard = {1: [seed_row("a"), seed_row("b")], 2: [{**seed_row("c"), "round": 1}]}
    for k, rows in hard.items():
        frame = pool_frame(rows).assign(teacher_answer="t", student_answer="s", teacher_score=9.0,
                                        student_score=2.0, gap=7.0)  # fmt: skip
        store.write(k, "hard", frame)
    sql = re.search(r"```sql\n(.*?)```", DOCS.read_text(), re.S).group(1)
    sql = sql.replace("lion-runs/demo", str(tmp_path / "run"))
    got = duckdb.sql(sql).df().sort_values("instruction").reset_index(drop=True)
    assert got["split_round"].tolist() == [1, 1, 2]  # the folder's
    assert got["round"].tolist() == [0, 0, 1]  # the file's: the round that added each
    assert got["instruction_id"].tolist() == [instruction_id(i, "") for i in "abc"]


def test_student_model_is_recorded_relative_to_the_run(tmp_path):
    storage = Storage(str(tmp_path / "run"))
    assert storage.relative(str(tmp_path / "run" / "round=2" / "student")) == "round=2/student"
    assert (
        storage.relative(str(tmp_path / "run" / "round=2" / "student") + "/") == "round=2/student"
    )
    assert storage.relative(str(tmp_path / "run-other" / "round=2")) is None
    assert storage.relative("meta-llama/Llama-3.1-8B") is None
    s3 = Storage("s3://bucket/runs/exp", {"anon": True})
    assert s3.relative("s3://bucket/runs/exp/round=1/student") == "round=1/student"
    assert s3.relative("s3://bucket/runs/exp2/round=1/student") is None
