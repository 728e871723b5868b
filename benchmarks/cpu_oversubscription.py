"""CPU oversubscription: the demo student's training step alone vs two trainers side by side on
the same cores, with the thread settings trainers got before and the ones they get now, measured
in one run.

Each trainer is a process of its own that builds the `demo` preset's tiny student and a
DeepSpeed ZeRO-2 engine the way a CPU rank does (benchmarks/train_throughput.py's engine, the
demo's micro-batches of 4 packed rows of 256 tokens), takes a few warm-up steps, waits until
every trainer of the measurement is ready, then trains for `--seconds` and reports seconds per
optimizer step. Settings, each alone and as a pair:

- before: what the launcher gave a CPU rank until now, OMP_NUM_THREADS = cores // ranks (2 on
  2 cores) and OpenMP's default wait policy (idle threads spin before they sleep);
- after: the environment `lion_core.student.launch.training_command` gives a CPU rank now
  (`lion_core.ops.supervise.cpu_thread_env`), as a run that knows of no other (cores // ranks
  threads, OMP_WAIT_POLICY=PASSIVE);
- after, LION_CPU_WORKERS=2: the same, told that two jobs share the cores (as the test workers
  are: tests/conftest.py), so each gets half of them.

The ratio is a pair's s/step over the same setting's s/step alone: 2.0 is what sharing the cores
costs, anything above it is lost to oversubscription.

    .venv/bin/python benchmarks/cpu_oversubscription.py             # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/cpu_oversubscription.py --seconds 30 --json out.json

Other load on the machine inflates every number: the load average is printed at the start and
the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
LION_VARS = ("LION_CPU_THREADS", "LION_CPU_WORKERS")


# ---- one trainer (a process of its own) -------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """Build the demo's student and a ZeRO-2 engine, warm up, signal ready, wait for the start
    file, train for args.seconds; print {"steps", "seconds", "threads"} as JSON."""
    import random

    import torch

    from benchmarks.train_throughput import make_engine
    from lion_core.config.presets import preset_config
    from lion_core.offline.world import seed_instances
    from lion_core.student.attention import training_attention
    from lion_core.student.data import build_dataset, encode_example
    from lion_core.student.model import build_tiny, for_training, train_tokenizer

    cfg = preset_config("demo")
    training = cfg.training
    insts = seed_instances(400, seed=0, max_difficulty=6)
    tok = train_tokenizer(
        [f"{i.instruction}\n{i.input}\n{i.answer}" for i in insts], cfg.student.tiny.vocab_size
    )
    encoded = [
        encode_example(tok, i.instruction, i.input, i.answer, "alpaca", training.max_length)[0]
        for i in insts
    ]
    examples = [e for e in encoded if e is not None]
    dataset, collate = build_dataset(
        examples,
        packing=True,
        max_length=training.max_length,
        pad_id=tok.pad_token_id,
        attn_implementation=cfg.student.attn_implementation,
        seed=0,
    )
    attn = training_attention(cfg.student.attn_implementation, True)
    model = for_training(build_tiny(cfg.student.tiny, tok, attn_implementation=attn)).train()
    engine, _ = make_engine(model, training, engine="deepspeed", device="cpu", bf16=False)
    order = list(range(len(dataset)))
    random.Random(1).shuffle(order)
    b = training.micro_batch_size
    batches = [collate([dataset[i] for i in order[s : s + b]]) for s in range(0, len(order), b)]

    def step(k: int) -> None:
        loss = engine(**batches[k % len(batches)]).loss
        engine.backward(loss)
        engine.step()

    for k in range(3):
        step(k)
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.01)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        step(steps)
        steps += 1
    seconds = time.perf_counter() - t0
    print(json.dumps({"steps": steps, "seconds": seconds, "threads": torch.get_num_threads()}))


# ---- the measurement --------------------------------------------------------------------------


def settings(cores: int) -> dict[str, dict[str, str]]:
    """The thread environment of a demo trainer (one CPU rank) under each setting."""
    from lion_core.config.presets import preset_config
    from lion_core.student.launch import training_command

    def launched(**lion: str) -> dict[str, str]:
        saved = {k: os.environ.pop(k) for k in (*THREAD_VARS, *LION_VARS) if k in os.environ}
        os.environ.update(lion)
        try:
            _, env = training_command(preset_config("demo"), Path("job.json"))
        finally:
            for k in lion:
                del os.environ[k]
            os.environ.update(saved)
        return {k: env[k] for k in (*THREAD_VARS, *LION_VARS) if k in env}

    return {
        "before": {"OMP_NUM_THREADS": str(cores)},  # cpu_count // ranks, spinning threads
        "after": launched(),
        "after, LION_CPU_WORKERS=2": launched(LION_CPU_WORKERS="2"),
    }


def measure(threads_env: dict[str, str], processes: int, seconds: float, work: Path) -> dict:
    """Start `processes` trainers with `threads_env`, release them together once all are
    ready; their mean s/step."""
    env = {k: v for k, v in os.environ.items() if k not in (*THREAD_VARS, *LION_VARS)}
    env.update(threads_env, PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONWARNINGS", "ignore")
    go = work / f"go-{time.monotonic_ns()}"
    procs, ready = [], []
    for k in range(processes):
        ready.append(work / f"{go.name}-ready-{k}")
        cmd = [sys.executable, __file__, "--worker", "--ready", str(ready[-1]), "--go", str(go),
               "--seconds", str(seconds)]  # fmt: skip
        out = subprocess.PIPE
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=out, text=True))
    deadline = time.monotonic() + 600
    while not all(r.exists() for r in ready):
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"a trainer failed:\n{p.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise SystemExit("the trainers were not ready within 600 s")
        time.sleep(0.05)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=seconds + 600)
        if p.returncode != 0:
            raise SystemExit(f"a trainer failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    per_step = [r["seconds"] / max(r["steps"], 1) for r in results]
    return {
        "s_per_step": sum(per_step) / len(per_step),
        "each": per_step,
        "steps": [r["steps"] for r in results],
        "threads": results[0]["threads"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="training time measured")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}

    from lion_core.ops.supervise import cpu_cores

    cores = cpu_cores()
    load_start = os.getloadavg()
    print(f"{cores} cores; load average at start {load_start[0]:.2f} {load_start[1]:.2f} "
          f"{load_start[2]:.2f}; {args.seconds:.0f} s of training per measurement")  # fmt: skip
    out: dict = {"cores": cores, "load_start": load_start, "settings": {}}
    header = f"{'setting':<28} {'environment':<42} {'alone s/step':>12} {'pair s/step':>12} ratio"
    print(header)
    with tempfile.TemporaryDirectory(prefix="lion-oversub-") as tmp:
        for name, env in settings(cores).items():
            alone = measure(env, 1, args.seconds, Path(tmp))
            pair = measure(env, 2, args.seconds, Path(tmp))
            ratio = pair["s_per_step"] / alone["s_per_step"]
            shown = " ".join(f"{k}={v}" for k, v in env.items() if k not in LION_VARS)
            print(f"{name:<28} {shown:<42} {alone['s_per_step']:>12.3f} "
                  f"{pair['s_per_step']:>12.3f} {ratio:5.1f}x", flush=True)  # fmt: skip
            out["settings"][name] = {"env": env, "alone": alone, "pair": pair, "ratio": ratio}
    out["load_end"] = os.getloadavg()
    print("load average at the end {:.2f} {:.2f} {:.2f}".format(*out["load_end"]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
