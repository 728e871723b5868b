"""Novelty filter at three scales: the set-similarity join against the all-pairs product it
replaces, and a sample against the original rouge_score loop.

    .venv/bin/python benchmarks/novelty.py [--data-dir ../shared/data]
        [--sizes 6000x70000 24000x280000 60000x700000] [--old-limit 240] [--baseline REF]

Workload (per size, candidates x pool, threshold 0.7), built from the real instructions in the
shared data folder (GSM8K, GPTeacher tool-use, Self-Instruct seeds): the real instructions are
split in two halves; the pool is one half plus word-level edits of it (each word replaced,
dropped or followed by a random corpus word with probability r ~ U(0.1, 0.6)); the candidates
are edits, same scheme, of the held-out half (80%) and of the pool half (20%). Lengths stay those
of real instructions, the tool-use prompts keep their long shared templates, and many pairs land
near 0.7. The paper's round is 6K x 70K; 60K x 700K is 100 times its pairs.

Methods, each run in a child process of its own (so that its peak RSS is its own; the inputs,
loaded from a pickle, are part of it):

* new: `filter_novel` as it is (the join wherever it is estimated cheaper);
* old: `filter_novel` of the module before the join (git `--baseline`, default the last commit
  without it), or, with `--baseline product`, today's module forced onto the all-pairs product
  (`_JOIN_MODE = "never"`, same tokenizer). Skipped where the previous size's time, scaled by
  the pairs, projects past `--old-limit` seconds, and stopped there if it runs past it.

The load average is printed beside every number: the machine is shared. Before the sizes, a
sample (20 candidates x 2,000 pool texts) is run through the original Lion loop (rouge_score's
`_score_lcs` on every pair, one process) and through `filter_novel`: the decisions must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

from rouge_score import rouge_scorer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, from anywhere

from benchmarks.reference_data import DATA_DIR, REPO, instruction_texts, near_duplicate
from lion_core.method import novelty
from lion_core.method.novelty import NoveltyStats, filter_novel

# The last commit whose novelty filter had no join: the "old" path.
BASELINE = "1fff3bd7678cdf2a19eebed82b38705699388f33"


def build_workload(
    texts: list[str], n_pool: int, n_candidates: int, seed: int
) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts = list(texts)
    rng.shuffle(texts)
    words = [w for t in texts for w in t.split()]
    half = len(texts) // 2
    pool_src, held_out = texts[:half], texts[half:]
    pool = pool_src[:n_pool]
    while len(pool) < n_pool:
        pool.append(near_duplicate(rng.choice(pool_src), rng.uniform(0.1, 0.6), rng, words))
    candidates = []
    for _ in range(n_candidates):
        src = rng.choice(held_out) if rng.random() < 0.8 else rng.choice(pool_src)
        candidates.append(near_duplicate(src, rng.uniform(0.1, 0.6), rng, words))
    return candidates, pool


def original_loop(candidates: list[str], pool: list[str], threshold: float) -> list[bool]:
    """The original filter, single process: `_score_lcs` against every pool and kept text."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    all_tokens = [scorer._tokenizer.tokenize(p) for p in pool]
    keep = []
    for cand in candidates:
        tokens = scorer._tokenizer.tokenize(cand)
        scores = [rouge_scorer._score_lcs(tokens, t).fmeasure for t in all_tokens]
        keep.append(not (scores and max(scores) > threshold))
        if keep[-1]:
            all_tokens.append(tokens)
    return keep


def baseline_module(ref: str) -> types.ModuleType:
    """lion_core/method/novelty.py as of git `ref`, loaded as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{ref}:lion_core/method/novelty.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("novelty_baseline")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{ref[:10]}:lion_core/method/novelty.py", "exec"), module.__dict__)
    return module


def load() -> float:
    return os.getloadavg()[0]


def child(workload: Path, method: str, baseline: str, threshold: float, out: Path) -> None:
    """One run in this process: print nothing, write a JSON line of its measures to `out`."""
    with workload.open("rb") as f:
        candidates, pool = pickle.load(f)
    rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if method == "new":
        run = filter_novel
    elif baseline == "product":
        novelty._JOIN_MODE = "never"
        run = filter_novel
    else:
        run = baseline_module(baseline).filter_novel
    stats = NoveltyStats()
    load_before, cpu, wall = load(), time.process_time(), time.perf_counter()
    keep = run(candidates, pool, threshold, stats=stats)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = {
        "wall": wall,
        "cpu": cpu,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_inputs_mb": rss_inputs,
        "load_before": load_before,
        "load_after": load(),
        "keep": keep,
        "stats": {k: v for k, v in vars(stats).items() if isinstance(v, int | float)},
    }
    out.write_text(json.dumps(result))


def run_child(
    workload: Path, method: str, baseline: str, threshold: float, limit: float | None
) -> dict | str:
    command = [sys.executable, __file__, "--child", str(workload), method, baseline]
    return child_json(command, ["--threshold", str(threshold)], limit)


def child_json(command: list[str], options: list[str], limit: float | None) -> dict | str:
    """Run `command` + [a JSON file's path] + `options` in a child process and return the JSON
    it wrote there, or a line saying it was stopped after `limit` seconds."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    started = load()
    try:
        subprocess.run([*command, str(out), *options], check=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return f"stopped after {limit:.0f} s (load {started:.2f} -> {load():.2f})"
    finally:
        result = out.read_text() if out.exists() else ""
        out.unlink(missing_ok=True)
    return json.loads(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument(
        "--sizes", nargs="+", default=["6000x70000", "24000x280000", "60000x700000"]
    )
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--old-limit", type=float, default=240.0, help="seconds for the old path")
    parser.add_argument(
        "--baseline", default=BASELINE, help="git ref of the old module, or product"
    )
    parser.add_argument("--sample-candidates", type=int, default=20)
    parser.add_argument("--sample-pool", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=4, metavar=("WORKLOAD", "METHOD", "BASELINE", "OUT"))
    args = parser.parse_args()
    if args.child:
        workload, method, baseline, out = args.child
        child(Path(workload), method, baseline, args.threshold, Path(out))
        return
    if not args.data_dir.is_dir():
        sys.exit(f"data folder {args.data_dir} not found (use --data-dir or LION_SHARED_DATA)")

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {cores} cores; uptime at start: {os.popen('uptime').read().strip()}")
    texts = [t for group in instruction_texts(args.data_dir).values() for t in group]

    # 1. The sample against the original loop.
    candidates, pool = build_workload(texts, 70_000, 6_000, args.seed)
    rng = random.Random(args.seed + 1)
    s_cand = rng.sample(candidates, args.sample_candidates)
    s_pool = rng.sample(pool, args.sample_pool)
    t0 = time.perf_counter()
    expected = original_loop(s_cand, s_pool, args.threshold)
    base_s = time.perf_counter() - t0
    s_stats = NoveltyStats()
    ours = filter_novel(s_cand, s_pool, args.threshold, stats=s_stats)
    rate = s_stats.pairs / base_s
    print(
        f"sample {len(s_cand)} x {len(s_pool):,}: original loop {rate:,.0f} pairs/s per core; "
        f"decisions identical: {ours == expected} (load {load():.2f})"
    )
    if ours != expected:
        sys.exit("MISMATCH between our filter and rouge_score on the sample")

    # 2. The sizes, each method in a child process.
    rows = []
    old_seconds_per_pair = None
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            n_cand, n_pool = (int(x) for x in size.lower().split("x"))
            t0 = time.perf_counter()
            candidates, pool = build_workload(texts, n_pool, n_cand, args.seed)
            workload = Path(tmp) / f"{size}.pkl"
            with workload.open("wb") as f:
                pickle.dump((candidates, pool), f)
            del candidates, pool
            print(f"\n{n_cand:,} x {n_pool:,} (built in {time.perf_counter() - t0:.0f} s)")
            new = run_child(workload, "new", args.baseline, args.threshold, None)
            assert isinstance(new, dict)
            report("new", new)
            pairs = new["stats"]["pairs"]
            projected = old_seconds_per_pair * pairs if old_seconds_per_pair else 0.0
            if projected > args.old_limit:
                old: dict | str = f"not run: projected {projected:,.0f} s from the smaller size"
            else:
                old = run_child(workload, "old", args.baseline, args.threshold, args.old_limit)
            if isinstance(old, dict):
                report("old", old)
                old_seconds_per_pair = old["wall"] / old["stats"]["pairs"]
                same = old["keep"] == new["keep"]
                print(f"  decisions identical: {same}")
                if not same:
                    sys.exit(f"MISMATCH between the join and the old path at {size}")
            else:
                print(f"  old: {old}")
            rows.append((n_cand, n_pool, new, old))
            workload.unlink()

    print(
        "\n| candidates x pool | pairs | new: wall / CPU | new: verified (LCS) | new: peak RSS"
        " | old: wall / CPU | old: verified | old: peak RSS | load (1 min) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for n_cand, n_pool, new, old in rows:
        cells = [f"{n_cand:,} x {n_pool:,}", f"{new['stats']['pairs'] / 1e9:.2f}G"]
        cells += [f"{new['wall']:.1f} s / {new['cpu']:.1f} s", f"{new['stats']['aligned']:,}"]
        cells += [f"{new['rss_mb'] / 1024:.2f} GB"]
        if isinstance(old, dict):
            cells += [f"{old['wall']:.1f} s / {old['cpu']:.1f} s", f"{old['stats']['aligned']:,}"]
            cells += [f"{old['rss_mb'] / 1024:.2f} GB"]
            loads = f"new {new['load_before']:.1f}-{new['load_after']:.1f}, "
            loads += f"old {old['load_before']:.1f}-{old['load_after']:.1f}"
        else:
            cells += [old, "", ""]
            loads = f"new {new['load_before']:.1f}-{new['load_after']:.1f}"
        print("| " + " | ".join([*cells, loads]) + " |")
    print(f"uptime at the end: {os.popen('uptime').read().strip()}")


def report(method: str, r: dict) -> None:
    s = r["stats"]
    print(
        f"  {method}: wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s (load {r['load_before']:.2f}"
        f" -> {r['load_after']:.2f}); peak RSS {r['rss_mb']:,.0f} MB"
        f" (inputs {r['rss_inputs_mb']:,.0f} MB); kept {s['kept']:,}, dropped"
        f" {s['dropped_by_pool']:,} + {s['dropped_by_candidates']:,}; bound survivors"
        f" {s['bound_survivors']:,}; LCS on {s['aligned']:,}"
        + (
            f"; join expanded {s['expanded']:,} index entries, sketched {s['sketched']:,} pairs"
            if s.get("expanded")
            else ""
        )
    )


if __name__ == "__main__":
    main()
