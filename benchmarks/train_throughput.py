"""Training throughput of the student: packed vs padded batches, measured in one run.

Both layouts train the same Llama-shaped model (built from config, same initial weights) on the
same examples, real instruction data from ../shared/data (GSM8K, GPTeacher tool use, the
Self-Instruct seeds: a realistic mix of lengths), through the same code the training job uses:
lion_core.student.data (Alpaca template, loss on answers, PackedDataset/PaddedCollator) and a
DeepSpeed ZeRO-2 engine configured by lion_core.student.ds_config. Only `training.packing`
differs:

- padded (the original Alpaca/Lion way): `micro_batch` examples per step, each padded to the
  longest one of its batch;
- packed (ours): `micro_batch` rows of up to `max_length` tokens, several examples per row,
  attention kept inside each example.

Tokens/s counts real tokens (no padding). MFU = model FLOPs per step (6 x parameters x tokens,
plus 6 x layers x hidden x n(n+1) of causal attention per example of n tokens; the embedding
lookup and padding not counted) / step time / the dense peak measured first with a large matmul
(bf16 on GPU, fp32 on CPU). Target: packed >= 1.5x padded tokens/s; MFU >= 40% on a GPU.

    .venv/bin/python benchmarks/train_throughput.py                       # CPU, tiny student
    python benchmarks/train_throughput.py --device cuda --model-size 1b   # ~1B, bf16, ZeRO-2
    ... --micro-batch 16 --grad-accum 4 --layout packed --breakdown      # MFU, time per phase
    ... --micro-batch 16 --layout packed --liger                          # + Liger's kernels
    .venv/bin/python benchmarks/train_throughput.py --repeat 3            # best of 3, busy machine

--liger applies Liger Kernel's fused Triton kernels (`apply_liger_kernel_to_llama`: RoPE,
RMSNorm, SwiGLU and the fused linear cross-entropy that never materialises the logits) to the
model, GPU only, with the `liger-kernel` package installed; training does not use them.

Each layout runs in its own process. --compile (torch.compile of each decoder layer) is an
experiment, not what training does: on an H100 it reached 45% MFU, but one batch shape in three
gave NaN gradients that eager mode does not (docs/student.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.reference_data import DATA_DIR as DATA  # noqa: E402
from lion_core.config import TinyModelSpec, TrainingConfig  # noqa: E402
from lion_core.ops.supervise import free_port  # noqa: E402
from lion_core.student.attention import (  # noqa: E402
    _segments,
    sdpa_kernels,
    training_attention,
)
from lion_core.student.data import build_dataset, tokenize_frame  # noqa: E402
from lion_core.student.ds_config import deepspeed_config  # noqa: E402
from lion_core.student.model import build_tiny, for_training, train_tokenizer  # noqa: E402

# Llama-shaped students built from config: "tiny" is the default TinyModelSpec (the offline
# demo's student), "1b" has TinyLlama-1.1B's shape.
SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4),  # the default
    "small": dict(hidden_size=256, intermediate_size=688, num_layers=4, num_heads=8),
    "base": dict(hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12),
    "1b": dict(
        hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32, num_kv_heads=4
    ),
}
VOCAB = {"tiny": 2048, "small": 8000, "base": 16000, "1b": 32000}


# ---- data ---------------------------------------------------------------------------------


def load_records(data_dir: Path = DATA, limit: int | None = None, seed: int = 0) -> pd.DataFrame:
    """(instruction, input, answer) rows from the shared instruction data, shuffled."""
    if not data_dir.is_dir():
        raise SystemExit(f"reference data folder {data_dir} is absent (set LION_SHARED_DATA)")
    rows = []
    for name in ("gsm8k_train_alpaca_format.json", "gpteacher_toolformer_alpaca_format.json"):
        for r in json.loads((data_dir / name).read_text()):
            rows.append((r["instruction"], r.get("input") or "", r["output"]))
    for line in (data_dir / "self_instruct_seed_tasks.jsonl").read_text().splitlines():
        r = json.loads(line)
        for inst in r["instances"][:1]:
            rows.append((r["instruction"], inst.get("input") or "", inst["output"]))
    random.Random(seed).shuffle(rows)
    df = pd.DataFrame(rows[:limit] if limit else rows, columns=["instruction", "input", "answer"])
    return df


def records_tokenizer(frame: pd.DataFrame, size: str):
    """A tokenizer trained here on the records' text, with the vocabulary of model `size`."""
    return train_tokenizer(
        list(frame["instruction"] + "\n" + frame["input"] + "\n" + frame["answer"]), VOCAB[size]
    )


def model_spec(size: str, max_length: int) -> TinyModelSpec:
    return TinyModelSpec(
        vocab_size=VOCAB[size], max_position_embeddings=max(max_length, 2048), **SIZES[size]
    )


def build_model(size, tok, *, device, dtype, attn, max_length, seed=0):
    spec = model_spec(size, max_length)
    with torch.device(device):
        model = build_tiny(spec, tok, seed=seed, attn_implementation=attn)
    return for_training(model.to(dtype))


# ---- measuring ------------------------------------------------------------------------------


def measure_peak(device: str) -> float:
    """Dense matmul FLOP/s of the device (bf16 on GPU, fp32 on CPU), median of repeats."""
    if device == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 20
    else:
        n, dtype, reps = 2048, torch.float32, 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times)  # the best repeat: the rate when nothing else competes


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def example_lengths(batch: dict[str, torch.Tensor], pad_id: int) -> list[int]:
    """Lengths of the real examples in a batch (padding excluded), either layout."""
    if "attention_mask" in batch:
        return batch["attention_mask"].sum(1).tolist()
    lengths = []
    for ids, row in zip(batch["input_ids"].tolist(), _segments(batch["position_ids"]), strict=True):
        lengths += [end - start for start, end in row if ids[start] != pad_id]
    return lengths


def step_flops(lengths: list[int], n_params: int, layers: int, hidden: int) -> float:
    tokens = sum(lengths)
    attention = sum(6 * layers * hidden * n * (n + 1) for n in lengths)
    return 6 * n_params * tokens + attention


def init_single_process() -> None:
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())


def make_engine(model, training: TrainingConfig, *, engine: str, device: str, bf16: bool):
    """A DeepSpeed engine with the config training would use (the "auto" values filled in as
    the Trainer fills them), or a plain torch loop for --engine torch."""
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-5, weight_decay=0.0, fused=device == "cuda" or None
    )
    if engine == "torch":
        return None, opt
    import deepspeed

    from lion_core.student.train import skip_cpu_shm_op

    init_single_process()
    skip_cpu_shm_op()  # as the training job does on CPU ranks (no-op on a GPU)
    config = deepspeed_config(training, bf16=bf16)
    hidden = model.config.hidden_size
    config.update(
        train_micro_batch_size_per_gpu=training.micro_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        train_batch_size=training.micro_batch_size * training.gradient_accumulation_steps,
        gradient_clipping=1.0,
        zero_allow_untested_optimizer=True,
    )
    # "auto" is what the Trainer fills in (hidden^2); --ds-bucket tries another size
    bucket = int(os.environ.get("LION_BENCH_DS_BUCKET", 0)) or hidden * hidden
    config["zero_optimization"]["reduce_bucket_size"] = bucket
    config["zero_optimization"]["allgather_bucket_size"] = max(bucket, 50_000_000)
    eng, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    return eng, opt


def run_layout(args, tok, examples, *, packing: bool, peak: float) -> dict:
    device = args.device
    bf16 = device == "cuda"
    dtype = torch.bfloat16 if bf16 and args.engine == "torch" else torch.float32
    training = TrainingConfig(
        micro_batch_size=args.micro_batch,
        max_length=args.max_length,
        packing=packing,
        gradient_accumulation_steps=args.grad_accum,
    )
    dataset, collate = build_dataset(
        examples,
        packing=packing,
        max_length=args.max_length,
        pad_id=tok.pad_token_id,
        attn_implementation=args.attn,
        seed=0,
    )
    attn = training_attention(args.attn, packing)  # what the training job uses
    model = build_model(
        args.model_size, tok, device=device, dtype=dtype, attn=attn, max_length=args.max_length
    )
    model.train()
    if args.liger:  # Liger's Triton kernels: RoPE, RMSNorm, SwiGLU, fused linear cross-entropy
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(model=model)
    if args.compile:  # regional compilation: each decoder layer, shapes dynamic
        for layer in model.model.layers:
            layer.compile(dynamic=True)
    n_params = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    eng, opt = make_engine(model, training, engine=args.engine, device=device, bf16=bf16)
    order = list(range(len(dataset)))
    random.Random(1).shuffle(order)
    b = args.micro_batch
    batches = [collate([dataset[i] for i in order[s : s + b]]) for s in range(0, len(order), b)]
    need = args.warmup + args.steps
    if len(batches) < need:
        raise SystemExit(f"only {len(batches)} batches for {need} steps; use more --records")

    phases = {"forward": 0.0, "backward": 0.0, "step": 0.0}

    def mark(name, t):
        if args.breakdown:
            _sync(device)
            now = time.perf_counter()
            phases[name] += now - t
            return now
        return t

    def step(batch):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if eng is not None:
            t = mark("step", time.perf_counter())
            loss = eng(**batch).loss
            t = mark("forward", t)
            eng.backward(loss)
            t = mark("backward", t)
            eng.step()
            mark("step", t)
        else:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss

    for batch in batches[: args.warmup]:
        step(batch)
    _sync(device)
    phases.update(forward=0.0, backward=0.0, step=0.0)
    timed = batches[args.warmup : need]
    lengths = [example_lengths(bt, tok.pad_token_id) for bt in timed]
    slots = sum(bt["input_ids"].numel() for bt in timed)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for batch in timed:
        loss = step(batch)
    _sync(device)
    seconds = time.perf_counter() - t0
    if args.breakdown:
        print(
            "per step: "
            + ", ".join(f"{k} {v / len(timed) * 1e3:.1f} ms" for k, v in phases.items())
        )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=acts) as prof:
            for batch in timed[: args.profile]:
                step(batch)
            _sync(device)
        key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
        print(
            prof.key_averages().table(
                sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60
            )
        )
    tokens = sum(sum(ls) for ls in lengths)
    flops = sum(step_flops(ls, n_params, layers, hidden) for ls in lengths)
    result = {
        "layout": "packed" if packing else "padded",
        "attention": attn,
        "liger": args.liger,
        "steps": len(timed),
        "seconds": seconds,
        "tokens": tokens,
        "examples": sum(len(ls) for ls in lengths),
        "tokens_per_s": tokens / seconds,
        "examples_per_s": sum(len(ls) for ls in lengths) / seconds,
        "padding_share": 1 - tokens / slots,
        "model_tflops_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / peak,
        "final_loss": float(loss.detach()),
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "parameters": n_params + model.model.embed_tokens.weight.numel(),
    }
    return result


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model-size", default=None, choices=list(SIZES))
    parser.add_argument("--records", type=int, default=None, help="examples to tokenize")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per layout")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--attn", default="sdpa", help="sdpa, eager or flash_attention_2")
    parser.add_argument("--engine", default="deepspeed", choices=["deepspeed", "torch"])
    parser.add_argument("--layout", default="both", choices=["both", "padded", "packed"])
    parser.add_argument("--peak", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--breakdown", action="store_true", help="time forward/backward/step")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per update")
    parser.add_argument("--repeat", type=int, default=1, help="best of N (a busy machine)")
    parser.add_argument("--compile", action="store_true", help="experimental, see above")
    parser.add_argument(
        "--liger", action="store_true", help="Liger kernels (liger-kernel, GPU only), see above"
    )
    parser.add_argument("--profile", type=int, default=0, help="profile N steps, print top ops")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.model_size = args.model_size or ("1b" if gpu else "tiny")
    args.steps = args.steps or (30 if gpu else 8)
    args.records = args.records or (6000 if gpu else 1500)
    torch.manual_seed(0)

    if args.layout == "both":
        return run_both(args, argv)
    if args.peak is None:  # one layout run on its own
        args.peak = measure_peak(args.device)
    frame = load_records(limit=args.records)
    t = time.perf_counter()
    tok = records_tokenizer(frame, args.model_size)
    data = tokenize_frame(frame, tok, "alpaca", args.max_length)
    lengths = sorted(data.lengths)
    print(
        f"{len(data.examples)} examples from {DATA.name}: tokens per example median "
        f"{lengths[len(lengths) // 2]}, p90 {lengths[int(len(lengths) * 0.9)]}, max "
        f"{lengths[-1]}; {data.truncated} truncated at {args.max_length} "
        f"(tokenizer {len(tok)} tokens, {time.perf_counter() - t:.1f}s)",
        flush=True,
    )
    with sdpa_kernels():  # as the training job runs
        r = run_layout(args, tok, data.examples, packing=args.layout == "packed", peak=args.peak)
    print(
        f"{r['layout']:>7}: {r['tokens_per_s']:10.0f} tokens/s {r['examples_per_s']:8.1f} "
        f"examples/s  padding {r['padding_share']:5.1%}  MFU {r['mfu']:6.1%} "
        f"({r['model_tflops_per_s']:.1f} TFLOP/s)  loss {r['final_loss']:.3f}"
        + (f"  memory {r['max_memory_gib']:.1f} GiB" if r["max_memory_gib"] else ""),
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return r


def run_both(args, argv: list[str]) -> dict:
    """Each layout in a fresh process (nothing of one run's memory or engine state leaks into
    the other); the ratio is printed here."""
    import subprocess
    import tempfile

    peak = measure_peak(args.device)
    print(f"device {args.device}: measured dense peak {peak / 1e12:.1f} TFLOP/s", flush=True)
    results: dict[str, dict] = {}
    base = list(argv)
    for flag in ("--json", "--repeat"):  # drop these and their values
        if flag in base:
            i = base.index(flag)
            del base[i : i + 2]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):  # alternate the layouts; keep the best run of each
            for layout in ("padded", "packed"):
                out = Path(tmp) / f"{layout}-{r}.json"
                cmd = [sys.executable, __file__, *base, "--layout", layout]
                cmd += ["--peak", str(peak), "--json", str(out)]
                subprocess.run(cmd, check=True)
                run = json.loads(out.read_text())
                if layout not in results or run["tokens_per_s"] > results[layout]["tokens_per_s"]:
                    results[layout] = run
    ratio = results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"]
    summary = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "model_size": args.model_size,
        "parameters": results["packed"]["parameters"],
        "engine": args.engine,
        "liger": args.liger,
        "attn": {k: v["attention"] for k, v in results.items()},
        "max_length": args.max_length,
        "micro_batch": args.micro_batch,
        "peak_tflops": peak / 1e12,
        "results": results,
        "packed_over_padded": ratio,
    }
    print(
        f"model {args.model_size} ({summary['parameters'] / 1e6:.0f}M parameters), "
        f"{args.engine}{' + liger' if args.liger else ''}, micro batch {args.micro_batch}, "
        f"gradient accumulation {args.grad_accum}, max length {args.max_length}"
    )
    print(f"packed / padded tokens/s: {ratio:.2f}x (target >= 1.5x)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
