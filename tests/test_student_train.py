"""Student fine-tuning through the real `deepspeed` launcher on CPU ranks.

- ZeRO-2, one rank: a run killed after a checkpoint resumes from it (the global step proves it),
  the loss goes down, and the student answers held-out offline-world instances far better than
  the untrained one (exact match).
- ZeRO-3, two ranks, s3:// storage: checkpoints and the gathered final model land in the store.
- LoRA, failures, timeouts and the command line, with the plain python launcher.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import tiny_config

from lion_core.config import LionConfig
from lion_core.errors import DataError, TrainingError
from lion_core.offline.world import make_instance
from lion_core.run.schemas import instruction_id
from lion_core.run.store import RunStore
from lion_core.student.checkpoints import (
    COMPLETE,
    complete_checkpoints,
    is_complete,
    mark_complete,
    materialize,
    scratch_for,
)
from lion_core.student.generator import BatchedGenerator
from lion_core.student.launch import init_uri_for, train_student, training_command
from lion_core.student.model import load_student, prepare_base_student

TINY = {"vocab_size": 512, "hidden_size": 128, "intermediate_size": 384, "num_layers": 2}


def _cfg(root: str, **training) -> LionConfig:
    settings = {
        "learning_rate": 2e-3,
        "micro_batch_size": 16,
        "max_length": 256,
        "warmup_ratio": 0.05,
        "logging_steps": 10,
        # A hung rank fails the test with the log's tail long before pytest's timeout.
        "timeout": 360.0,
        **training,
    }
    return tiny_config(
        root,
        **{"student.tiny": TINY, "student.generation.max_new_tokens": 8},
        **{f"training.{name}": value for name, value in settings.items()},
    )


def _addition(n: int, seed: int, exclude: set[str] = frozenset()) -> list:
    """Offline-world addition instances at difficulty 1 (486 distinct ones: 81 digit pairs in 6
    phrasings), distinct from each other and from `exclude`."""
    rng = random.Random(seed)
    out, seen = [], set(exclude)
    for _ in range(100 * n):
        if len(out) == n:
            break
        inst = make_instance("addition", 1, rng)
        iid = instruction_id(inst.instruction, inst.input)
        if iid not in seen:
            seen.add(iid)
            out.append(inst)
    assert len(out) == n, "not enough distinct instances"
    return out


def _write_train(path: Path, instances) -> str:
    rows = [{"instruction": i.instruction, "input": i.input, "answer": i.answer} for i in instances]
    pd.DataFrame(rows).to_parquet(path, index=False)
    return str(path)


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (to prove no rank survived a kill)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(pid))
    return found


def _exact_match(uri: str, cfg: LionConfig, instances) -> float:
    model, tok = load_student(uri, cfg)
    gen = BatchedGenerator(model, tok, cfg.student.generation, cfg.student.prompt_template)
    rows = pd.DataFrame(
        [
            {"instruction_id": str(k), "instruction": i.instruction, "input": i.input}
            for k, i in enumerate(instances)
        ]
    )
    answers = {a.instruction_id: a.answer for batch in gen.answer(rows) for a in batch}
    return sum(answers[str(k)] == i.answer for k, i in enumerate(instances)) / len(instances)


# ---- ZeRO-2, one rank: kill, resume, learn ------------------------------------------------


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero2")
    cfg = _cfg(
        str(root),
        zero_stage=2,
        num_gpus=1,
        max_steps=120,
        save_steps=30,
        logging_steps=5,
        keep_checkpoints=True,
    )
    store = RunStore.open(str(root))
    train = _addition(300, seed=1)
    held_out = _addition(
        100, seed=2, exclude={instruction_id(i.instruction, i.input) for i in train}
    )
    data = _write_train(root / "train.parquet", train)
    base = prepare_base_student(
        cfg, store, [f"{i.instruction}\n{i.input}\n{i.answer}" for i in train]
    )
    assert init_uri_for(cfg, store, 1) == base

    # First attempt: killed (as a cancelled flow would kill it) once a checkpoint is committed.
    with pytest.raises(TrainingError, match="stopped"):
        train_student(
            cfg,
            store,
            1,
            data,
            base,
            should_stop=lambda: bool(complete_checkpoints(store.storage, 1)),
        )
    committed = complete_checkpoints(store.storage, 1)
    job = str(scratch_for(store.storage.uri("round=1"), "train") / "job.json")
    leftovers = _processes_mentioning(job)
    assert not store.storage.exists(f"round=1/student/{COMPLETE}")

    # Second attempt: resumes from the committed checkpoint and finishes.
    uri = train_student(cfg, store, 1, data, base)
    result = json.loads((Path(uri) / "train_result.json").read_text())
    return {
        "cfg": cfg,
        "store": store,
        "base": base,
        "uri": uri,
        "data": data,
        "committed": committed,
        "leftovers": leftovers,
        "result": result,
        "held_out": held_out,
    }


@pytest.mark.slow
def test_killed_run_resumes_from_its_latest_checkpoint(zero2_run):
    run, result = zero2_run, zero2_run["result"]
    print(f"committed before the kill: {run['committed']}; resumed: {result['resumed_from_step']}")
    assert run["leftovers"] == []  # the whole process group died with the kill
    assert run["committed"] and run["committed"][0] >= 30
    assert result["resumed_from_step"] == run["committed"][-1]
    assert result["global_step"] == 120
    assert result["steps_this_attempt"] == 120 - run["committed"][-1]  # not from step 0
    assert result["zero_stage"] == 2 and result["world_size"] == 1
    assert result["layout"] == "packed" and result["bf16"] is False  # fp32 on the CPU
    assert result["data"]["examples"] == 300 and result["data"]["truncated"] == 0
    # keep_checkpoints: the last one stays once the student is committed, the rest go
    assert run["store"].storage.listdir("round=1/checkpoints") == ["checkpoint-120"]
    assert complete_checkpoints(run["store"].storage, 1) == [120]


@pytest.mark.slow
def test_loss_goes_down(zero2_run):
    losses = [e["loss"] for e in zero2_run["result"]["log_history"] if "loss" in e]
    assert len(losses) >= 15
    print(f"losses: {[round(x, 3) for x in losses]}")
    assert sum(losses[-3:]) / 3 < 0.25 * sum(losses[:3]) / 3


@pytest.mark.slow
def test_trained_student_answers_held_out_instances_better(zero2_run):
    cfg, held_out = zero2_run["cfg"], zero2_run["held_out"]
    before = _exact_match(zero2_run["base"], cfg, held_out)
    after = _exact_match(zero2_run["uri"], cfg, held_out)
    print(f"exact match on held-out instances: untrained {before:.2f}, trained {after:.2f}")
    assert after >= before + 0.5, (before, after)


@pytest.mark.slow
def test_a_trained_round_is_not_trained_again(zero2_run):
    run = zero2_run
    logs = run["store"].storage.listdir("round=1/logs")
    again = train_student(run["cfg"], run["store"], 1, run["data"], run["base"])
    assert again == run["uri"]
    assert run["store"].storage.listdir("round=1/logs") == logs  # nothing was launched


# ---- ZeRO-3, two CPU ranks, s3 storage ------------------------------------------------------


@pytest.mark.slow
def test_zero3_two_ranks_on_s3(s3_root, tmp_path):
    root, options = s3_root
    cfg = _cfg(
        root, zero_stage=3, num_gpus=2, max_steps=12, save_steps=6, micro_batch_size=4
    ).with_overrides({"storage.options": options})
    store = RunStore.open(root, options)
    train = _addition(120, seed=3)
    base = prepare_base_student(cfg, store, [f"{i.instruction} {i.answer}" for i in train])
    data_uri = f"{root}/inputs/train.parquet"
    store.storage.write_bytes(
        "inputs/train.parquet", Path(_write_train(tmp_path / "t.parquet", train)).read_bytes()
    )

    uri = train_student(cfg, store, 1, data_uri, base)
    assert uri == f"{root}/round=1/student"
    s = store.storage
    assert s.exists(f"round=1/student/{COMPLETE}") and s.exists("round=1/student/model.safetensors")
    assert not s.exists("round=1/checkpoints")  # committed student: its checkpoints are gone
    assert s.listdir("round=1/logs")
    result = json.loads(s.read_bytes("round=1/student/train_result.json"))
    assert result["world_size"] == 2 and result["zero_stage"] == 3

    # the ZeRO-3 shards were gathered into one whole model that differs from the base
    trained, tok = load_student(uri, cfg)
    untrained, _ = load_student(base, cfg)
    assert trained.num_parameters() == untrained.num_parameters()
    assert all(p.numel() > 0 for p in trained.parameters())
    assert not torch.equal(trained.model.embed_tokens.weight, untrained.model.embed_tokens.weight)
    from lion_core.student.data import PaddedCollator, encode_example

    exs = [
        encode_example(tok, i.instruction, i.input, i.answer, "alpaca", 256)[0] for i in train[:32]
    ]
    batch = PaddedCollator(tok.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in exs]
    )
    with torch.no_grad():
        assert trained(**batch).loss < 0.8 * untrained(**batch).loss


# ---- python launcher: LoRA, failures, timeouts ----------------------------------------------


def _small(root: Path, **training):
    cfg = _cfg(str(root), launcher="python", max_steps=6, save_steps=100, micro_batch_size=4)
    cfg = cfg.with_overrides({f"training.{k}": v for k, v in training.items()})
    store = RunStore.open(str(root))
    train = _addition(40, seed=4)
    base = prepare_base_student(cfg, store, [f"{i.instruction} {i.answer}" for i in train])
    return cfg, store, base, _write_train(root / "train.parquet", train)


@pytest.fixture
def small_run(tmp_path):
    """A 6-step job with the python launcher, not started."""
    return _small(tmp_path)


@pytest.fixture(scope="module")
def small_trained(tmp_path_factory):
    """ONE 6-step job with the python launcher, trained, for the tests that read what it left:
    a checkpoint every 2 steps; the loss reported to TensorBoard every 2 steps when the
    package is installed."""
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    report = {"report_to": ["tensorboard"], "logging_steps": 2} if tensorboard else {}
    cfg, store, base, data = _small(tmp_path_factory.mktemp("small"), save_steps=2, **report)
    uri = train_student(cfg, store, 1, data, base)
    return cfg, store, base, data, uri


def test_lora_adapters_are_merged_into_a_plain_model(small_run):
    cfg, store, base, data = small_run
    cfg = cfg.with_overrides(
        {"training.lora": {"r": 4, "alpha": 8}, "training.learning_rate": 1e-2}
    )
    uri = train_student(cfg, store, 1, data, base)
    assert (Path(uri) / "adapter" / "adapter_config.json").exists()
    trained, _ = load_student(uri, cfg)
    untrained, _ = load_student(base, cfg)
    assert type(trained).__name__ == "LlamaForCausalLM"
    assert trained.num_parameters() == untrained.num_parameters()  # no adapter weights left
    layer, layer0 = trained.model.layers[0], untrained.model.layers[0]
    assert not torch.equal(layer.self_attn.q_proj.weight, layer0.self_attn.q_proj.weight)
    assert torch.equal(layer.mlp.up_proj.weight, layer0.mlp.up_proj.weight)  # not targeted


def test_checkpoints_are_deleted_once_the_student_is_committed(small_trained):
    cfg, store, base, data, uri = small_trained  # trained with save_steps 2
    (log_name,) = store.storage.listdir("round=1/logs")
    training_log = store.storage.read_bytes(f"round=1/logs/{log_name}").decode()
    assert "checkpoint checkpoint-6 committed" in training_log  # they existed while it ran
    assert is_complete(store.storage, "round=1/student")
    assert not store.storage.exists("round=1/checkpoints")
    assert Path(uri, "model.safetensors").is_file()

    # a crash between the commit and the deletion: the next call finds the student committed
    # and deletes what is left (keep_checkpoints: all but the last committed one)
    for step in (2, 4):
        mark_complete(store.storage, f"round=1/checkpoints/checkpoint-{step}")
    store.storage.write_bytes("round=1/checkpoints/checkpoint-6/partial.bin", b"x")
    kept = cfg.with_overrides({"training.keep_checkpoints": True})
    assert train_student(kept, store, 1, data, base) == uri
    assert store.storage.listdir("round=1/checkpoints") == ["checkpoint-4"]
    assert train_student(cfg, store, 1, data, base) == uri
    assert not store.storage.exists("round=1/checkpoints")


def test_report_to_tensorboard_writes_the_loss_curve(small_trained):
    """training.report_to: [tensorboard] -> event files in round=1/tensorboard of the run's
    storage holding the training loss at every logging step (read back with TensorBoard's own
    reader). Needs the tensorboard package (pip install tensorboard)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, store, *_ = small_trained
    assert cfg.training.report_to == ["tensorboard"] and cfg.training.logging_steps == 2
    events = [n for n in store.storage.listdir("round=1/tensorboard") if "tfevents" in n]
    assert events, store.storage.listdir("round=1/tensorboard")
    acc = EventAccumulator(store.storage.path("round=1/tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [2, 4, 6]  # max_steps 6, a point every 2 steps
    assert all(e.value > 0 for e in loss)


@pytest.mark.slow
def test_report_to_is_off_by_default_and_checked_before_the_run(zero2_run, monkeypatch):
    """No tracking by default (no tensorboard folder, read from the ZeRO-2 run); a report_to
    whose package is missing is a preflight warning naming the field."""
    from lion_core.ops.preflight import tracking_warnings

    cfg, store = zero2_run["cfg"], zero2_run["store"]
    assert cfg.training.report_to == [] and tracking_warnings(cfg) == []
    assert store.storage.exists("round=1/student/train_result.json")  # it was trained
    assert not store.storage.exists("round=1/tensorboard")

    wanted = cfg.with_overrides({"training.report_to": ["tensorboard", "mlflow"]})
    missing = {"tensorboard", "tensorboardX", "mlflow"}
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    warnings = tracking_warnings(wanted)
    assert len(warnings) == 2 and warnings[0].startswith("training.report_to tensorboard:")
    assert "pip install mlflow" in warnings[1]


def test_a_failing_run_raises_with_the_log_tail(small_run, tmp_path):
    cfg, store, _, data = small_run
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(TrainingError, match=r"(?s)exit code.*not-a-model"):
        train_student(cfg, store, 1, data, str(empty))


def test_timeout_kills_the_whole_group(small_run):
    cfg, store, base, data = small_run
    cfg = cfg.with_overrides({"training.timeout": 1.0, "training.max_steps": 10_000})
    start = time.monotonic()
    with pytest.raises(TrainingError, match="timed out"):
        train_student(cfg, store, 1, data, base)
    assert time.monotonic() - start < 60
    job = str(scratch_for(store.storage.uri("round=1"), "train") / "job.json")
    assert _processes_mentioning(job) == []


def test_bad_training_data_names_the_file(small_run, tmp_path):
    cfg, store, base, _ = small_run
    with pytest.raises(DataError, match=r"missing\.parquet"):
        train_student(cfg, store, 1, str(tmp_path / "missing.parquet"), base)
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"instruction": ["x"], "output": ["y"]}).to_parquet(bad)
    with pytest.raises(DataError, match="answer"):
        train_student(cfg, store, 1, str(bad), base)


def test_a_killed_attempts_log_reaches_storage_with_the_next_attempt(tmp_path, monkeypatch):
    """A caller killed with SIGKILL skips the log upload in its `finally`; the log stays in the
    round's scratch folder, and the next call (which fails at once here) uploads it."""
    monkeypatch.setenv("LION_SCRATCH", str(tmp_path / "scratch"))
    cfg = _cfg(str(tmp_path / "run"), launcher="python")
    store = RunStore.open(str(tmp_path / "run"))
    work = scratch_for(store.storage.uri("round=1"), "train")
    killed = work / "train-20250101T000000.log"
    killed.write_text("step 10: loss 2.31\n")  # what the killed attempt left behind

    with pytest.raises(DataError, match="not found"):  # the next attempt fails at once
        train_student(cfg, store, 1, str(tmp_path / "missing.parquet"), "unused")
    assert store.storage.read_bytes(f"round=1/logs/{killed.name}") == b"step 10: loss 2.31\n"

    later = work / "train-20250101T010000.log"
    later.write_text("step 20: loss 1.02\n")
    mark_complete(store.storage, "round=1/student")  # even a finished round gets its logs
    assert train_student(cfg, store, 1, "unused.parquet", "unused").endswith("round=1/student")
    assert store.storage.listdir("round=1/logs") == [killed.name, later.name]


def test_launch_command_and_init_choice(tmp_path):
    cfg = _cfg(str(tmp_path), num_gpus=8, master_port=29511)
    cmd, env = training_command(cfg, tmp_path / "job.json")
    assert cmd[1:4] == ["-u", "-m", "deepspeed.launcher.runner"]
    assert cmd[cmd.index("--num_gpus") + 1] == "8" and "--master_port" in cmd
    assert cmd[-4:] == ["--module", "lion_core.student.train", "--spec", str(tmp_path / "job.json")]
    assert env["PYTHONUNBUFFERED"] == "1"

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-0 slots=8\nnode-1 slots=8\n")
    cmd, _ = training_command(
        cfg.with_overrides({"training.hostfile": str(hostfile), "training.num_nodes": 2}), tmp_path
    )
    assert cmd[cmd.index("--hostfile") + 1] == str(hostfile)
    assert cmd[cmd.index("--num_nodes") + 1] == "2"
    with pytest.raises(TrainingError, match="hostfile"):
        training_command(cfg.with_overrides({"training.num_nodes": 2}), tmp_path)
    with pytest.raises(TrainingError, match="does not exist"):
        training_command(cfg.with_overrides({"training.hostfile": str(tmp_path / "no")}), tmp_path)
    cmd, _ = training_command(cfg.with_overrides({"training.launcher": "python"}), tmp_path)
    assert "deepspeed.launcher.runner" not in cmd

    store = RunStore.open(str(tmp_path))
    assert init_uri_for(cfg, store, 3) == store.storage.uri("round=0/student")
    previous = cfg.with_overrides({"training.init_from": "previous"})
    assert init_uri_for(previous, store, 3) == store.storage.uri("round=2/student")
    assert init_uri_for(previous, store, 1) == store.storage.uri("round=0/student")
    assert materialize("some-org/some-model") == "some-org/some-model"


def test_activation_checkpointing_under_the_name_transformers_knows():
    """transformers 5.2x calls it `activation_checkpointing` (the old name an alias); 5.17, the
    GPU machines' release, knows only `gradient_checkpointing`, and refused the new name with a
    TypeError before any step (found preparing the GPU round of issue 25)."""
    import dataclasses

    from transformers import TrainingArguments

    from lion_core.student.train import checkpointing_argument

    @dataclasses.dataclass
    class Old:  # transformers 5.17's TrainingArguments, as far as this goes
        gradient_checkpointing: bool = False

    @dataclasses.dataclass
    class New(Old):
        activation_checkpointing: bool = False

    assert checkpointing_argument(Old) == "gradient_checkpointing"
    assert checkpointing_argument(New) == "activation_checkpointing"
    name = checkpointing_argument(TrainingArguments)  # the installed one takes its own name
    args = TrainingArguments(output_dir="unused", use_cpu=True, **{name: True})
    assert getattr(args, name) is True
