"""One Lion round end to end on a GPU: the `gpu-1b` preset, the offline world as teacher, referee
and generator, the round-0 and round-1 students evaluated, and the wall time of every stage.

What `lion run -c <config>` does (preflight, Prefect's temporary server, lion-distill: round 1,
then lion-evaluate of round 0's and round 1's students), run in this process so that the task
runs' times can be read back from the Prefect API at the end. The config is `gpu-1b` with:

- the student built from config in TinyLlama-1.1B's shape (`student.tiny`, the shape of
  benchmarks/train_throughput.py's `1b`; a GPU box without network cannot fetch the preset's
  hub model `TinyLlama/TinyLlama_v1.1`; `--hub` keeps it), its tokenizer trained on the pools;
- `rounds: 1`, `training.max_steps` small (`--max-steps`), the offline held-out set as the
  evaluation set, shorter student answers (`--max-new-tokens`) and fewer new instructions
  (`--new-per-round`) so the whole run fits in a few minutes.

    python benchmarks/gpu_round.py --json round.json                      # on a GPU
    .venv/bin/python benchmarks/gpu_round.py --size tiny --max-steps 4    # the same path on CPU

The student answers through HF batched generation (`student.generation.engine: hf`). Printed:
per-stage seconds (the round's own clock: imitation, discrimination, generation), every flow
and task run's seconds from the Prefect API, the relative score of round 0 and round 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lion_core.config import LionConfig  # noqa: E402
from lion_core.config.presets import preset_config  # noqa: E402

# TinyLlama-1.1B's shape (benchmarks/train_throughput.py "1b"); "tiny" checks the path on a CPU.
SHAPES: dict[str, dict[str, Any]] = {
    "1b": dict(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_layers=22,
        num_heads=32,
        num_kv_heads=4,
        max_position_embeddings=2048,
    ),
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        max_position_embeddings=1024,
    ),
}


def round_config(args: argparse.Namespace, root: str) -> LionConfig:
    """The gpu-1b preset, with what makes one round fit in minutes (module docstring)."""
    overrides: dict[str, Any] = {
        "name": "gpu-round",
        "rounds": 1,
        "storage.root": root,
        "training.max_steps": args.max_steps,
        "training.save_steps": max(args.max_steps, 1),
        "training.logging_steps": max(args.max_steps // 4, 1),
        "evaluation.sets": ["offline"],
        "student.generation.max_new_tokens": args.max_new_tokens,
        "student.generation.token_budget": args.token_budget,
        "pools.new_per_round": args.new_per_round,
    }
    if not args.hub:
        overrides["student.model"] = None
        overrides["student.tiny"] = SHAPES[args.size]
    return preset_config("gpu-1b").with_overrides(overrides)


def llama_parameters(config: dict[str, Any]) -> int:
    """Parameters of a Llama model from its config.json (untied embeddings)."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = h * config["num_key_value_heads"] // config["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return 2 * config["vocab_size"] * h + layers * per_layer + h


def run_times() -> list[dict[str, Any]]:
    """Every flow run and task run the (temporary) Prefect server recorded, with its seconds."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    rows = []
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while True:  # task states reach the API as events, after the flow returned
            tasks = client.read_task_runs()
            if all(t.state and t.state.is_final() for t in tasks) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for kind, runs in (("flow", client.read_flow_runs()), ("task", tasks)):
            for r in runs:
                seconds = (
                    (r.end_time - r.start_time).total_seconds()
                    if r.start_time and r.end_time
                    else None
                )
                rows.append(
                    {
                        "kind": kind,
                        "name": r.name,
                        "state": r.state.name if r.state else None,
                        "start": r.start_time.isoformat() if r.start_time else None,
                        "seconds": seconds,
                    }
                )
    return sorted(rows, key=lambda r: r["start"] or "")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1b", choices=list(SHAPES))
    parser.add_argument("--hub", action="store_true", help="the preset's hub student instead")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--token-budget", type=int, default=131072)
    parser.add_argument("--new-per-round", type=int, default=240)
    parser.add_argument("--root", default=None, help="the run's root (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="lion-prefect-home-"))
    root = args.root or tempfile.mkdtemp(prefix="lion-gpu-round-")
    cfg = round_config(args, root)

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device {device}; run root {root}", flush=True)
    print(
        "student: "
        + (cfg.student.model or f"built from config {cfg.student.tiny.model_dump()}")
        + f"; training.max_steps {cfg.training.max_steps}, micro batch "
        f"{cfg.training.micro_batch_size}, ZeRO-{cfg.training.zero_stage}, "
        f"launcher {cfg.training.launcher}",
        flush=True,
    )

    from flows.cli.run import run_flow

    t0 = time.perf_counter()
    run_flow(cfg)  # what `lion run -c` does
    total = time.perf_counter() - t0

    from lion_core.run.store import RunStore

    store = RunStore.open(root, cfg.storage.options)
    summary = store.storage.read_json("round=1/summary.json")
    runs = run_times()
    model = store.storage.read_json("round=1/student/config.json")
    train = store.storage.read_json("round=1/student/train_result.json")
    result = {
        "device": device,
        "student_parameters": llama_parameters(model),
        "student_vocab_size": model["vocab_size"],
        "student_dtype": model.get("dtype") or model.get("torch_dtype"),
        "total_seconds": total,
        "round_stage_seconds": summary.get("seconds"),
        "relative_score_round_1": summary.get("relative_score"),
        "runs": runs,
        "train": {
            k: train.get(k)
            for k in ("global_step", "train_loss", "data", "layout", "zero_stage", "bf16")
        },
        "summary": summary,
    }
    print(
        f"\nstudent: {result['student_parameters'] / 1e6:.1f}M parameters (vocabulary "
        f"{model['vocab_size']}), saved as {result['student_dtype']}"
    )
    print(f"whole run (lion-distill, 1 round + 2 evaluations): {total:.1f} s")
    print("round 1 stages (the round's clock):", summary.get("seconds"))
    print(f"{'kind':<5} {'run':<44} {'state':<10} {'seconds':>8}")
    for r in runs:
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        print(f"{r['kind']:<5} {r['name'][:44]:<44} {r['state'] or '-':<10} {secs:>8}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
