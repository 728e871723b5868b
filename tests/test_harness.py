"""Standard benchmarks through lm-evaluation-harness: a tiny student folder evaluated on local
task YAMLs (a JSONL file, no hub download), flattened into the accuracy table.

The multiple-choice items pair a one-token answer with a long repetitive one. `acc` picks the
choice of highest summed log-likelihood, and an untrained model gives every extra token a
log-probability near -log(vocab), so the short choice always wins: the accuracy is known from the
labels alone, and a wrong row count, `limit` or task/value mapping shows up in the value.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import tiny_config

from lion_core.errors import EvaluationError
from lion_core.evaluation.harness import COLUMNS, _task_manager, include_signature, run_lm_eval
from lion_core.run.store import RunStore
from lion_core.student.model import prepare_base_student

needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="needs the eval extra: pip install 'lion-distill[eval]'",
)

TEXTS = [f"Add {a} and {b}. The sum is {a + b}." for a in range(20) for b in range(10)]
PAIRS = [(1, 2), (3, 4), (5, 6), (7, 1), (2, 2), (9, 0), (4, 4), (6, 3)]
LABELS = [0, 0, 1, 0, 0, 1, 0, 1]  # index of the right choice in task "short_first"
LONG = " ".join(["1"] * 24)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing may reach the hub: the tasks read a local file, the model a local folder."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> str:
    return prepare_base_student(
        tiny_config(), RunStore.open(str(tmp_path_factory.mktemp("run"))), TEXTS
    )


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Two multiple-choice tasks over the same rows (the short, always-picked choice first in
    one, second in the other), a group of both, and an exact-match generation task."""
    root = tmp_path_factory.mktemp("tasks")
    data = root / "sums.jsonl"
    rows = [
        {"question": f"Add {a} and {b}.", "answer": str(a + b), "label": label}
        for (a, b), label in zip(PAIRS, LABELS, strict=True)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(root / "cache")},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}} The sum is",
        "doc_to_target": "label",
        "metadata": {"version": 1.0},
    }
    short_first = {
        **common,
        "task": "lion_short_first",
        "doc_to_choice": f"{{{{[answer, '{LONG}']}}}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    short_second = {
        **common,
        "task": "lion_short_second",
        "doc_to_choice": f"{{{{['{LONG}', answer]}}}}",
        "metric_list": [{"metric": "acc"}],
    }
    group = {
        "group": "lion_sums",
        "task": ["lion_short_first", "lion_short_second"],
        "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
        "metadata": {"version": 2},
    }
    generation = {
        **common,
        "task": "lion_sum_generation",
        "output_type": "generate_until",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4, "do_sample": False},
        "metric_list": [{"metric": "exact_match"}],
    }
    for name, spec in [
        ("short_first", short_first),
        ("short_second", short_second),
        ("group", group),
        ("generation", generation),
    ]:
        (root / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return root


def _row(table, task, metric="acc"):
    rows = table[(table.task == task) & (table.metric == metric)]
    assert len(rows) == 1, f"{task}/{metric}: {len(rows)} rows in\n{table}"
    return next(rows.itertuples(index=False))  # attributes, not Series methods (`filter`)


def _expected_acc(labels, short_index):
    return sum(label == short_index for label in labels) / len(labels)


@needs_lm_eval
def test_accuracy_table_of_a_local_group_and_a_generation_task(student, task_dir):
    table = run_lm_eval(
        student,
        ["lion_sums", "lion_sum_generation"],
        include_path=str(task_dir),
        device="cpu",
        batch_size=4,
    )
    assert list(table.columns) == COLUMNS
    first, second = _row(table, "lion_short_first"), _row(table, "lion_short_second")
    assert first.value == pytest.approx(_expected_acc(LABELS, 0))  # 5/8
    assert second.value == pytest.approx(_expected_acc(LABELS, 1))  # 3/8
    for row in (first, second):
        assert (row.n, row.n_total, row.n_shot) == (len(PAIRS), len(PAIRS), 0)
        assert row.group == "lion_sums" and not row.is_group and row.filter == "none"
        assert row.version == "1.0" and row.higher_is_better
        assert 0 < row.stderr < 1

    group = _row(table, "lion_sums")
    assert group.is_group and pd.isna(group.group) and group.version == "2"
    assert (group.n, group.n_total) == (2 * len(PAIRS), 2 * len(PAIRS))
    assert group.value == pytest.approx((first.value + second.value) / 2)

    norm = _row(table, "lion_short_first", "acc_norm")
    assert 0 <= norm.value <= 1 and norm.n == len(PAIRS)
    assert table[table.task == "lion_short_second"].metric.tolist() == ["acc"]

    generated = _row(table, "lion_sum_generation", "exact_match")
    assert 0 <= generated.value <= 1 and generated.n == len(PAIRS)
    assert pd.isna(generated.group) and generated.filter == "none"


@needs_lm_eval
def test_limit_evaluates_only_the_first_documents(student, task_dir):
    table = run_lm_eval(
        student, ["lion_short_first"], include_path=str(task_dir), limit=3, device="cpu"
    )
    row = _row(table, "lion_short_first")
    assert (row.n, row.n_total) == (3, len(PAIRS))
    assert row.value == pytest.approx(_expected_acc(LABELS[:3], 0))  # 2/3, not 5/8
    assert pd.isna(row.group)


@needs_lm_eval
def test_the_task_index_is_built_once_per_include_folder(task_dir, tmp_path):
    """Indexing lm-eval's task YAMLs takes tens of seconds: one TaskManager per include
    folder serves every evaluation, until a YAML in it is added or changed."""
    manager = _task_manager(str(task_dir))
    assert _task_manager(str(task_dir)) is manager
    copy = tmp_path / "tasks"
    copy.mkdir()
    (copy / "one.yaml").write_text((task_dir / "generation.yaml").read_text())
    before = include_signature(str(copy))
    assert [Path(name).name for name, _ in before] == ["one.yaml"]
    (copy / "two.yaml").write_text("task: other\n")
    assert include_signature(str(copy)) != before
    os.utime(copy / "one.yaml", ns=(1, 1))
    assert include_signature(str(copy))[0] == (str(copy / "one.yaml"), 1)
    assert include_signature(None) == ()


@needs_lm_eval
def test_unknown_task_is_named_before_the_model_loads(task_dir, tmp_path):
    # tmp_path holds no model: loading it would fail with another error
    with pytest.raises(EvaluationError, match=r"'lion_short_frist'.*close: lion_short_first"):
        run_lm_eval(str(tmp_path), ["lion_short_frist"], include_path=str(task_dir))


@needs_lm_eval
def test_missing_model_folder_and_include_path_are_named(task_dir, tmp_path):
    with pytest.raises(EvaluationError, match=r"model folder .*no-model"):
        run_lm_eval(str(tmp_path / "no-model"), ["lion_short_first"], include_path=str(task_dir))
    (tmp_path / "run" / "round=0" / "student").mkdir(parents=True)  # recorded, not copied
    (tmp_path / "run" / "round=0" / "student" / "source.json").write_text(
        json.dumps({"model": str(tmp_path / "gone"), "revision": None})
    )
    with pytest.raises(EvaluationError, match=r"model folder .*gone"):
        run_lm_eval(
            str(tmp_path / "run" / "round=0" / "student"),
            ["lion_short_first"],
            include_path=str(task_dir),
        )
    with pytest.raises(EvaluationError, match=r"include_path .*no-tasks"):
        run_lm_eval("x", ["lion_short_first"], include_path=str(tmp_path / "no-tasks"))


def test_missing_lm_eval_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import` sees without the extra
    with pytest.raises(EvaluationError, match=r"pip install 'lion-distill\[eval\]'"):
        run_lm_eval("x", ["lion_short_first"])
