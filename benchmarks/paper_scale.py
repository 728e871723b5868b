"""A whole Lion round at the paper's scale (52K seeds, 6K new instructions) or ten times it, on
this machine, with the offline world — a rehearsal that finds what grows with the pool before a
paid run does.

    .venv/bin/python benchmarks/paper_scale.py --seeds 52000 --new-per-round 6000   # paper
    .venv/bin/python benchmarks/paper_scale.py --seeds 520000 --new-per-round 60000 # 10x
        [--rounds 1] [--faults 0.02] [--root DIR] [--max-new-tokens 16] [--max-steps 20]

What runs: `lion serve-offline` in a process of its own (latency 0; with `--faults F` it answers
a share F of requests 429 and F 500, and garbles F of the referee's answers), and `lion run` on
the demo preset pointed at it — the demo's tiny student, its training capped at `--max-steps`
optimizer steps and its answers at `--max-new-tokens` tokens (the GPU stages are measured by
benchmarks/gpu_round.py), no evaluation sets. The run's Prefect home is kept under the root, so
its task runs are read back from the temporary server's SQLite database afterwards.

Printed (and written to ROOT/paper_scale.json):
  * per stage (imitation, discrimination, generation: the round's own clock) wall seconds, and
    per task run (Prefect's database) wall seconds, slowest first;
  * per role: requests sent, cache hits, failures, retries, and requests per second of the
    stage that sends them;
  * rows in and out: Train and Cache Pool, hard / easy / unscored, new instructions, next pools;
  * peak RSS: the flow process (`lion run`; the flow and its tasks run in it), the offline
    world, the Prefect server, the trainer and generation workers (each class's largest
    simultaneous sum, polled every 0.25 s);
  * bytes written per round folder and for the response cache;
  * the whole run's wall time and the load average at start and end (the machine is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, from anywhere

from benchmarks.offline_world import serve_offline

REPO = Path(__file__).resolve().parents[1]
LION = Path(sys.executable).parent / "lion"
# The task runs that send each role's requests (req/s: requests over their wall-clock span).
ROLE_TASKS = {
    "teacher": ("teacher-answers",),
    "referee": ("referee-order",),
    "generator": ("candidates", "novel-instructions"),
}


def world_config(faults: float) -> dict:
    """The offline section of `lion serve-offline`: latency 0, and the injected faults."""
    offline = {"latency": 0.0}
    if faults:
        offline["faults"] = {
            "rate_429": faults,
            "retry_after": 0.05,
            "rate_500": faults,
            "rate_garbled": faults,
        }
    return offline


def run_config(args: argparse.Namespace, root: Path, url: str) -> dict:
    """The demo preset at scale, every endpoint on the world at `url`."""
    from lion_core.config.presets import preset_config

    overrides = {
        "name": f"paper-scale-{args.seeds}",
        "rounds": args.rounds,
        "storage.root": str(root / "run"),
        "pools.offline_seeds": args.seeds,
        "pools.new_per_round": args.new_per_round,
        "student.generation.max_new_tokens": args.max_new_tokens,
        "training.max_steps": args.max_steps,
        "training.launcher": "python",
        "training.save_steps": max(args.max_steps, 1),
        "evaluation.sets": [],
    }
    for role in ("teacher", "referee", "generator", "judge"):
        overrides[f"{role}.base_url"] = url
    cfg = preset_config("demo").with_overrides(overrides)
    return cfg.model_dump(mode="json", exclude_defaults=True)


class Peaks:
    """Peak RSS per class of process, polled: each class's largest simultaneous sum."""

    def __init__(self, world: int, flow: int) -> None:
        self.world, self.flow = world, flow
        self.peak: dict[str, int] = defaultdict(int)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _classify(self, proc: psutil.Process) -> str:
        cmd = " ".join(proc.cmdline())
        if "uvicorn" in cmd or ("prefect" in cmd and "server" in cmd):
            return "prefect server"
        if "lion_core.student" in cmd or "deepspeed" in cmd or "torchrun" in cmd:
            return "trainer / generation workers"
        return "other children"

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            now: dict[str, int] = defaultdict(int)
            for label, pid in (("offline world", self.world), ("flow process", self.flow)):
                with contextlib.suppress(psutil.Error):
                    now[label] += psutil.Process(pid).memory_info().rss
            try:
                children = psutil.Process(self.flow).children(recursive=True)
            except psutil.Error:
                children = []
            for child in children:
                with contextlib.suppress(psutil.Error):
                    now[self._classify(child)] += child.memory_info().rss
            for label, rss in now.items():
                self.peak[label] = max(self.peak[label], rss)


def task_runs(prefect_home: Path) -> list[dict]:
    """Every finished task run: its name, its flow run's name, start and end (Unix seconds)."""
    db = prefect_home / "prefect.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT t.name, f.name, (julianday(t.start_time) - 2440587.5) * 86400, "
            "(julianday(t.end_time) - 2440587.5) * 86400 FROM task_run t "
            "JOIN flow_run f ON t.flow_run_id = f.id "
            "WHERE t.end_time IS NOT NULL AND t.start_time IS NOT NULL"
        ).fetchall()
    return [{"task": t, "flow": f, "start": a, "end": b} for t, f, a, b in rows]


def role_span(runs: list[dict], round_: int, prefixes: tuple[str, ...]) -> float | None:
    """Wall seconds from the first start to the last end of round `round_`'s task runs whose
    names start with one of `prefixes`."""
    mine = [
        r for r in runs
        if r["task"].startswith(prefixes) and re.search(rf"\bround-{round_}\b", r["flow"])
    ]  # fmt: skip
    if not mine:
        return None
    return max(r["end"] for r in mine) - min(r["start"] for r in mine)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=52000)
    p.add_argument("--new-per-round", type=int, default=6000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--faults", type=float, default=0.0, help="share of 429s, 500s, garbled")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--root", type=Path, default=None, help="kept; default a temporary folder")
    args = p.parse_args()

    root = args.root or Path(tempfile.mkdtemp(prefix="paper-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
          f"load average at start {load_start[0]:.2f}; root {root}", flush=True)  # fmt: skip

    world, url = serve_offline(world_config(args.faults), root)
    cfg_path = root / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(run_config(args, root, url), sort_keys=False))
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect"), "PYTHONUNBUFFERED": "1"}
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    t0 = time.monotonic()
    try:
        with (root / "run.log").open("w") as log:
            flow = subprocess.Popen(
                [str(LION), "run", "-c", str(cfg_path)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            with Peaks(world.pid, flow.pid) as peaks:
                rc = flow.wait()
    finally:
        world.terminate()
        world.wait(timeout=30)
    wall = time.monotonic() - t0
    if rc != 0:
        tail = (root / "run.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"lion run exited {rc} after {wall:.0f} s:\n{tail}")

    out = {
        "seeds": args.seeds,
        "new_per_round": args.new_per_round,
        "faults": args.faults,
        "wall_seconds": round(wall, 1),
        "load_average": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "peak_rss_mb": {k: round(v / 2**20) for k, v in sorted(peaks.peak.items())},
        "rounds": [],
        "tasks": [],
        "bytes": {},
    }
    run = root / "run"
    runs = task_runs(root / "prefect")
    slowest = sorted(runs, key=lambda r: r["start"] - r["end"])[:25]
    out["tasks"] = [(f"{r['flow']}/{r['task']}", round(r["end"] - r["start"], 1)) for r in slowest]
    for k in range(1, args.rounds + 1):
        summary = json.loads((run / f"round={k}" / "summary.json").read_text())
        rates = {}
        for role, usage in summary["usage"].items():
            span = role_span(runs, k, ROLE_TASKS.get(role, (role,)))
            rates[role] = {
                **{f: usage[f] for f in ("requests", "cache_hits", "failures", "retries")},
                "seconds": round(span, 1) if span else None,
                "req_per_s": round(usage["requests"] / span, 1) if span else None,
            }
        rows = ("train_pool", "cache_pool", "hard", "easy", "unscored", "new_instructions",
                "next_train_pool", "new_wanted", "new_shortfall")  # fmt: skip
        out["rounds"].append(
            {
                "round": k,
                "seconds": summary["seconds"],
                "roles": rates,
                "rows": {r: summary.get(r) for r in rows},
            }
        )
    for folder in sorted(run.iterdir()):
        if folder.is_dir():
            out["bytes"][folder.name] = folder_bytes(folder)
    (root / "paper_scale.json").write_text(json.dumps(out, indent=1))
    report(out)


def report(out: dict) -> None:
    print(f"\n{out['seeds']:,} seeds, {out['new_per_round']:,} new per round, faults "
          f"{out['faults']}: {out['wall_seconds']:.0f} s wall (load {out['load_average'][0]} → "
          f"{out['load_average'][1]})")  # fmt: skip
    for r in out["rounds"]:
        print(
            f"round {r['round']}: " + ", ".join(f"{s} {v:.0f} s" for s, v in r["seconds"].items())
        )
        print("  rows: " + ", ".join(f"{k} {v}" for k, v in r["rows"].items()))
        for role, u in r["roles"].items():
            print(f"  {role:<10} {u['requests']:>8,} sent  {u['cache_hits']:>7,} cached  "
                  f"{u['failures']:>5} failed  {u['retries']:>6} retries  in "
                  f"{u['seconds'] or '-':>6} s: {u['req_per_s'] or '-':>7} req/s")  # fmt: skip
    print("peak RSS (MB): " + ", ".join(f"{k} {v:,}" for k, v in out["peak_rss_mb"].items()))
    print(
        "bytes written: " + ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in out["bytes"].items())
    )
    print("slowest task runs (s): " + ", ".join(f"{n} {s}" for n, s in out["tasks"][:12]))


if __name__ == "__main__":
    main()
