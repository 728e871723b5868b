"""Evaluation through Prefect and the CLI: `lion eval` on the Vicuna questions with the offline
world as teacher and judge, resuming a killed evaluation without a repeated request, the
held-out evaluation of every round in `lion-distill`, and lm-eval on a local task."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import tiny_config

from lion_core.config import LionConfig
from lion_core.run.store import RunStore

pytestmark = pytest.mark.slow


def eval_config(root: Path, url: str, **overrides) -> LionConfig:
    base = {
        "name": "eval-test",
        "student.tiny.max_position_embeddings": 256,
        "student.generation.max_new_tokens": 8,
        **{f"{role}.base_url": url for role in ("teacher", "referee", "generator")},
        "judge": {"base_url": url, "model": "offline-judge", "max_tokens": 200},
        "evaluation.bootstrap": 200,
    }
    return tiny_config(root, **{**base, **overrides})


def tiny_student(cfg: LionConfig) -> str:
    """A round-0 student: a tiny Llama with a tokenizer trained on a few texts."""
    from lion_core.student.model import prepare_base_student

    texts = ["Add 12 and 30.", "42", "Reverse the word cat.", "tac"] * 20
    return prepare_base_student(cfg, RunStore.open(cfg.storage.root), texts)


def lion(*args: str, api_url: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api_url}
    exe = str(Path(sys.executable).parent / "lion")
    return subprocess.Popen(
        [exe, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def test_lion_eval_on_the_vicuna_questions(prefect_harness, tmp_path, offline_server, shared_data):
    from prefect.settings import PREFECT_API_URL

    world = offline_server(judge_noise=0.0)
    cfg = eval_config(tmp_path / "root", world.base_url)
    student = tiny_student(cfg)
    cfg_path = tmp_path / "eval.yaml"
    cfg.to_yaml(cfg_path)
    questions = str(shared_data / "vicuna_bench_questions.jsonl")

    proc = lion(
        "eval", "-c", str(cfg_path), "--student", student, "--questions", questions, "--json",
        api_url=PREFECT_API_URL.value(),
    )  # fmt: skip
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["questions"] == 80
    assert result["wins"] + result["ties"] + result["losses"] + result["unscored"] == 80
    assert result["relative_score"] >= 0
    categories = set(result["by_category"])
    assert len(categories) == 9 and {"writing", "math", "coding"} <= categories
    stats = world.stats()
    # Every question: one teacher answer, the judge in both orders (plus re-asks, if any).
    assert stats["teacher"]["requests"] == 80
    assert stats["referee"]["requests"] >= 160
    assert stats["referee"]["requests"] == stats["referee"]["distinct_bodies"]


def test_a_killed_evaluation_resumes_without_repeating_a_request(
    prefect_harness, tmp_path, offline_server
):
    """Killed (SIGKILL, whole process group) once the teacher's answers are committed and the
    student is generating; the re-run asks the teacher nothing again and the judge once."""
    from prefect.settings import PREFECT_API_URL

    world = offline_server(judge_noise=0.0)
    root = tmp_path / "root"
    cfg = eval_config(root, world.base_url, **{"student.generation.max_new_tokens": 48})
    student = tiny_student(cfg)
    cfg_path = tmp_path / "eval.yaml"
    cfg.to_yaml(cfg_path)
    args = ("eval", "-c", str(cfg_path), "--student", student, "--questions", "offline")
    api_url = PREFECT_API_URL.value()

    first = lion(*args, api_url=api_url, start_new_session=True)
    teacher_file = root / "evaluation" / "offline" / "teacher_answers.parquet"
    deadline = time.monotonic() + 300
    while not teacher_file.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[1][-3000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    asked = world.stats()["teacher"]["requests"]
    assert asked > 0 and "referee" not in world.stats()  # killed before any judge request

    second = lion(*args, "--json", api_url=api_url)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    stats = world.stats()
    for role in ("teacher", "referee"):
        assert stats[role]["answered_twice"] == 0, (role, stats[role])
        assert stats[role]["requests"] == stats[role]["distinct_bodies"], (role, stats[role])
    assert stats["teacher"]["requests"] == asked == result["questions"]


def test_distill_evaluates_round_0_and_every_round_on_the_held_out_set(
    prefect_harness, tmp_path, offline_server
):
    """... and sends per role exactly the requests `lion estimate` predicted, evaluation
    included (the judge on a world of its own, so that its requests are counted apart)."""
    from helpers import small_config
    from prefect.client.orchestration import get_client
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.distill import lion_distill
    from lion_core.evaluation import scoreboard

    world, judge_world = offline_server(judge_noise=0.0), offline_server(judge_noise=0.0)
    cfg = small_config(
        tmp_path / "run",
        rounds=1,
        **{f"{r}.base_url": world.base_url for r in ("teacher", "referee", "generator")},
        judge={"base_url": judge_world.base_url, "model": "offline-judge", "max_tokens": 200},
        **{"evaluation.sets": ["offline"], "evaluation.sample": 24, "evaluation.bootstrap": 100},
    )
    cfg.to_yaml(tmp_path / "run.yaml")
    out = CliRunner().invoke(app, ["estimate", "-c", str(tmp_path / "run.yaml"), "--json"])
    assert out.exit_code == 0, out.output
    full = json.loads(out.output)
    estimate = full["run_requests"]
    assert full["generator_max"]["run"] == 18 * cfg.generator.max_attempts  # top-ups, at most
    # the teacher: 24 seeds + 24 questions; the judge: 24 questions x 2 orders x rounds 0, 1
    assert estimate == {"teacher": 48, "referee": 48, "generator": 18, "judge": 96}
    run = lion_distill(cfg)
    sent = {**world.stats(), "judge": judge_world.stats().pop("referee")}
    assert set(judge_world.stats()) == {"referee"}
    for role, expected in estimate.items():
        assert sent[role]["answered_bodies"] == expected, (role, sent[role])
        assert sent[role]["answered_twice"] == 0, (role, sent[role])
    store = RunStore.open(cfg.storage.root)
    frame = scoreboard.overall(scoreboard.evaluations(store))
    assert list(frame["round"]) == [0, 1] and set(frame["set"]) == {"offline"}
    assert (frame["questions"] == 24).all()
    assert [r.relative_score for r in run.rounds] == list(frame["relative_score"][1:])
    questions = store.read(0, "questions", "evaluation/offline/questions.parquet")
    pools = pd.concat([store.read(k, "train_pool") for k in (1, 2)])
    assert not set(questions["question_id"]) & set(pools["instruction_id"])
    assert (tmp_path / "run" / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {"flow-test-scoreboard", "flow-test-eval-round-1-offline"} <= keys

    # `lion eval ROOT --json` on the finished run: every round, from cache.
    from typer.testing import CliRunner

    from flows.cli import app

    out = CliRunner().invoke(app, ["eval", str(tmp_path / "run"), "--json"])
    assert out.exit_code == 0, out.output
    rounds = json.loads(out.stdout.strip().splitlines()[-1])["rounds"]
    assert sorted(rounds) == ["0", "1"]
    assert [rounds[k]["relative_score"] for k in "01"] == list(frame["relative_score"])
    assert all(rounds[k]["questions"] == 24 and rounds[k]["set"] == "offline" for k in "01")


def test_lm_eval_runs_on_a_round_student(prefect_harness, tmp_path, offline_server):
    pytest.importorskip("lm_eval")
    from flows.evaluate import lion_evaluate

    rows = [
        {"question": f"Is {i} even?", "choices": ["yes", "no"], "label": i % 2} for i in range(6)
    ]
    data = tmp_path / "tasks" / "parity.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "task": "lion_parity",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc"}],
    }
    (data.parent / "parity.yaml").write_text(yaml.safe_dump(task))
    world = offline_server()
    cfg = eval_config(
        tmp_path / "root",
        world.base_url,
        **{"evaluation.lm_eval_tasks": ["lion_parity"]},
        **{"evaluation.lm_eval_include_path": str(data.parent)},
    )
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = lion_evaluate(cfg, tiny_student(cfg), 0, sets=[])
    table = RunStore.open(cfg.storage.root).read_ref(result.benchmarks.table)
    row = table[(table["task"] == "lion_parity") & (table["metric"] == "acc")].iloc[0]
    assert row["n"] == 6 and 0.0 <= row["value"] <= 1.0
