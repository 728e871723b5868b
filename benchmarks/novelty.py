"""Novelty filter: our exact ROUGE-L filter against the original rouge_score loop, side by side.

    .venv/bin/python benchmarks/novelty.py [--data-dir ../shared/data] [--skip-full]

Workload: the paper's round, 6K generated candidates against a 70K train pool, threshold 0.7.
The pool and the candidates are built from the real instructions in the shared data folder
(GSM8K, GPTeacher tool-use, Self-Instruct seeds): the real instructions are split in two halves;
the pool is one half plus word-level edits of it (each word replaced, dropped or followed by a
random corpus word with probability r ~ U(0.1, 0.6)) up to 70K; the candidates are edits, same
scheme, of the held-out half (80%) and of the pool half (20%). Lengths stay those of real
instructions, the tool-use prompts keep their long shared templates, and many pairs land near 0.7.

Baseline: the original Lion code (YJiangcm/Lion, src/generate_hard_instruction.py) tokenises the
pool once, then for every candidate maps `rouge_scorer._score_lcs` over all of it in a process
pool. It is timed here single-process on a sample (pairs/s per core); its projected time on the
full workload assumes perfect scaling over the cores, no process-pool overhead.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from rouge_score import rouge_scorer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, from anywhere

from benchmarks.reference_data import DATA_DIR, instruction_texts, near_duplicate
from lion_core.method.novelty import NoveltyStats, filter_novel


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


def hours(seconds: float) -> str:
    return f"{seconds:,.1f} s" if seconds < 3600 else f"{seconds / 3600:,.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--pool", type=int, default=70_000)
    parser.add_argument("--candidates", type=int, default=6_000)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--sample-candidates", type=int, default=20)
    parser.add_argument("--sample-pool", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3, help="full runs of our filter")
    parser.add_argument("--skip-full", action="store_true", help="sample only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        sys.exit(f"data folder {args.data_dir} not found (use --data-dir or LION_SHARED_DATA)")

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {cores} cores, load average {os.getloadavg()[0]:.2f} (1 min) at start")
    texts = [t for group in instruction_texts(args.data_dir).values() for t in group]
    t0 = time.perf_counter()
    candidates, pool = build_workload(texts, args.pool, args.candidates, args.seed)
    print(
        f"workload: {len(candidates):,} candidates x {len(pool):,} pool, threshold "
        f"{args.threshold}, from {len(texts):,} real instructions "
        f"(built in {time.perf_counter() - t0:.1f} s)"
    )
    print(
        "  pool = half of the real instructions + word-level edits of them (rate ~ U(0.1, 0.6));"
        " candidates = edits of the held-out half (80%) and of the pool half (20%)"
    )
    lengths = np.array([len(t.split()) for t in pool])
    print(f"  pool words per instruction: mean {lengths.mean():.1f}, median {np.median(lengths)}")

    # 1. The sample, both ways.
    rng = random.Random(args.seed + 1)
    s_cand = rng.sample(candidates, args.sample_candidates)
    s_pool = rng.sample(pool, args.sample_pool)
    t0 = time.perf_counter()
    expected = original_loop(s_cand, s_pool, args.threshold)
    base_s = time.perf_counter() - t0
    s_stats = NoveltyStats()
    ours_sample = filter_novel(s_cand, s_pool, args.threshold, stats=s_stats)
    base_rate = s_stats.pairs / base_s
    print(f"\nsample: {len(s_cand)} candidates x {len(s_pool):,} pool = {s_stats.pairs:,} pairs")
    print(f"  original (rouge_score per pair, 1 process): {base_rate:,.0f} pairs/s per core")
    print(
        f"  ours: {s_stats.pairs / s_stats.seconds:,.0f} pairs/s "
        f"({s_stats.seconds * 1000:.0f} ms, fixed costs dominate at this size); "
        f"ratio {s_stats.pairs / s_stats.seconds / base_rate:,.0f}x"
    )
    print(f"  decisions identical: {ours_sample == expected}")
    if ours_sample != expected:
        sys.exit("MISMATCH between our filter and rouge_score on the sample")

    # 2. The full workload.
    full_pairs = args.candidates * args.pool  # lower bound: plus the kept-before comparisons
    print(f"\nprojected {args.candidates:,} x {args.pool:,} (>= {full_pairs:,} pairs):")
    for n in (1, 2):
        print(f"  original on {n} core(s): {hours(full_pairs / (base_rate * n))}")
    if args.skip_full:
        return
    runs = []
    for _ in range(args.repeats):
        stats = NoveltyStats()
        cpu = time.process_time()
        filter_novel(candidates, pool, args.threshold, stats=stats)
        runs.append((stats.seconds, time.process_time() - cpu, stats))
    wall = [r[0] for r in runs]
    best_wall, best_cpu, stats = min(runs, key=lambda r: r[0])
    print(
        f"\nours, real run of the full workload ({args.repeats} runs): wall best "
        f"{best_wall:.1f} s, median {statistics.median(wall):.1f} s (CPU {best_cpu:.1f} s)"
    )
    print(
        f"  {stats.pairs:,} pairs -> {stats.pairs / best_wall:,.0f} pairs/s; "
        f"overlap bound left {stats.bound_survivors:,} pairs, exact LCS on {stats.aligned:,}"
    )
    print(
        f"  kept {stats.kept:,}, dropped {stats.dropped_by_pool:,} by the pool and "
        f"{stats.dropped_by_candidates:,} by earlier candidates"
    )
    orig_2 = stats.pairs / (base_rate * min(2, cores or 1))
    print(
        f"  original on the same pairs, {min(2, cores or 1)} cores: {hours(orig_2)} -> "
        f"speed-up {orig_2 / best_wall:,.0f}x; target < 60 s: "
        f"{'met' if best_wall < 60 else 'NOT met'}"
    )
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")


if __name__ == "__main__":
    main()
