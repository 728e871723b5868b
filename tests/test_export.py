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
    uri, card = result.output.strip().splitlines()
    assert card == "dataset card: " + store.uri("round=1/export/README.md")
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


def test_the_dataset_card_beside_the_data(tmp_path):
    """README.md in the Hugging Face dataset-card format: a YAML header (license left for the
    user, the data file as the train split), the source run, models, filters and thresholds,
    counts and the decontamination result; a README.md lion did not write is never replaced."""
    import yaml
    from helpers import tiny_config

    from lion_core.errors import StorageError

    store, _ = _round_1(tmp_path / "run")
    cfg = tiny_config(tmp_path / "run", **{"evaluation.sets": ["offline", "vicuna.jsonl"]})
    store.write_run_info({"config": cfg.model_dump(mode="json"), "started_at": "2025-01-01"})
    counts = {"sets": ["offline", "vicuna"], "rouge_l": 0.7, "ngram": 13, "checked": 5,
              "dropped": 1, "by_set": {"offline": 0, "vicuna": 1}}  # fmt: skip
    store.write_round_summary(1, {"round": 1, "seeds_decontamination": counts})
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--round", "1"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "run" / "round=1" / "export" / "README.md").read_text()
    _, head, body = text.split("---\n", 2)
    meta = yaml.safe_load(head)
    assert "license" in meta and meta["license"] is None  # the user's to fill in
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "train.alpaca.json"}]}
    ]
    assert meta["size_categories"] == ["n<1K"] and "lion-distill" in meta["tags"]
    assert "examples: 3" in body and "seed instructions 2, generated from hard seeds 1" in body
    assert "left out (the teacher's answer failed): 1" in body
    assert "| teacher (wrote every answer) | offline-teacher | the offline task world |" in body
    assert f"ROUGE-L F1 > {cfg.novelty.threshold:g}" in body and "τ = 1" in body
    assert "**1 dropped**" in body and "| seeds at load | 5 | 1 | 0 | 1 |" in body
    assert f"`{cfg.digest()[:16]}`" in body

    # another README.md where the data goes: refused, nothing written; --no-card writes none
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("# my notes\n")
    with pytest.raises(StorageError, match="not a dataset card lion wrote"):
        runner.invoke(app, ["export", str(tmp_path / "run"), "--round", "1", "--out",
                            str(out / "train.json")], catch_exceptions=False)  # fmt: skip
    assert not (out / "train.json").exists() and (out / "README.md").read_text() == "# my notes\n"
    done = runner.invoke(app, ["export", str(tmp_path / "run"), "--round", "1", "--out",
                               str(out / "train.json"), "--no-card"])  # fmt: skip
    assert done.exit_code == 0 and (out / "train.json").exists()
    assert done.output.strip() == str(out / "train.json")
