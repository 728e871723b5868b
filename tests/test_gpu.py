"""Checks that need a CUDA GPU (marker `gpu`; skipped where torch sees none, as on CI).

On a GPU machine: `python -m pytest -m gpu tests/test_gpu.py -s`. Each runs a benchmark's own
code, smaller: a Lion round end to end (benchmarks/gpu_round.py) and the 1B training
throughput, packed against padded and with Liger's kernels (benchmarks/train_throughput.py).
The 1B throughput measured earlier on an H100 is in docs/student.md (Results).
"""

from __future__ import annotations

import importlib.util
import shlex

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# A few steps of the 1B model at micro batch 16 (where the H100 is busy enough to measure).
SMALL_1B = shlex.split("--device cuda --model-size 1b --micro-batch 16 --steps 4 --records 2000")


def test_gpu_1b_round_end_to_end(tmp_path):
    """The gpu-1b preset (TinyLlama's shape, built from config) on the offline world: round 1
    trains in bf16 under DeepSpeed ZeRO-2, the student answers through HF batched generation,
    and round 0's and round 1's students are evaluated; every flow and task run completes."""
    from benchmarks.gpu_round import main

    result = main(["--max-steps", "4", "--root", str(tmp_path / "run")])
    assert all(r["state"] in ("Completed", "Cached") for r in result["runs"]), result["runs"]
    names = {r["name"] for r in result["runs"]}
    assert {"round-1", "evaluate-round-0", "evaluate-round-1"} <= names, names
    assert {"student-round-1", "student-answers-round-1"} <= names, names
    train = result["train"]
    assert train["bf16"] is True and train["zero_stage"] == 2
    assert 0 < train["global_step"] <= 4
    assert result["relative_score_round_1"] is not None
    assert set(result["round_stage_seconds"]) == {"imitation", "discrimination", "generation"}


def test_1b_training_throughput_packed_over_padded(tmp_path, shared_data):
    """Packed rows train the 1B model faster than padded batches of the same examples."""
    from benchmarks.train_throughput import main

    summary = main([*SMALL_1B, "--json", str(tmp_path / "throughput.json")])
    packed, padded = summary["results"]["packed"], summary["results"]["padded"]
    assert packed["tokens_per_s"] > 1.5 * padded["tokens_per_s"], summary
    assert 0 < padded["mfu"] < packed["mfu"] < 1, summary


@pytest.mark.skipif(
    importlib.util.find_spec("liger_kernel") is None, reason="needs liger-kernel installed"
)
def test_1b_training_with_liger_kernels(tmp_path, shared_data):
    """Liger's fused kernels on the packed 1B layout: training runs, the loss is finite."""
    from benchmarks.train_throughput import main

    result = main([*SMALL_1B, "--layout", "packed", "--liger"])
    assert result["liger"] is True and result["mfu"] > 0
    assert torch.isfinite(torch.tensor(result["final_loss"])), result
