"""The round report (lion_core.run.report) on a paper-sized round: its size, the time to write
it, and the time Chromium takes to load it and to filter it.

The synthetic round is the paper's round 2 with `pools.cache_pool: all`: a 58,000-instruction
Cache Pool (52,000 seeds and 6,000 instructions generated in round 1), every one answered by the
teacher and the student and judged by the referee in both orders, and 12,000 candidates written
from 6,000 hard and easy seeds (kept, not novel, duplicate, surplus, contaminated, post-filter
drops), each judged one with a nearest text. Texts are real instructions and answers from
../shared/data (GSM8K, GPTeacher tool use, Self-Instruct) with word-level edits, at the lengths
of real LLM answers (teacher ~900 characters, student ~700, each review ~350); without the
shared data, random words at those lengths. Artifacts go through RunStore as a run writes them.

    .venv/bin/python benchmarks/report.py                       # the synthetic 58K round
    .venv/bin/python benchmarks/report.py --rows 2000            # a smaller one
    .venv/bin/python benchmarks/report.py --root lion-runs/demo --round 1   # a run's round

Load time: Chromium (/usr/bin/chromium, or LION_CHROMIUM) headless through Playwright, from
navigation to the load event (the page's script has run: the tables are filtered and paged),
then selecting a verdict in the judged table; skipped when Chromium or Playwright is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.reference_data import DATA_DIR, near_duplicate  # noqa: E402
from lion_core.config import LionConfig  # noqa: E402
from lion_core.run.report import write_report  # noqa: E402
from lion_core.run.schemas import instruction_id  # noqa: E402
from lion_core.run.store import RunStore  # noqa: E402

CHROMIUM = Path(os.environ.get("LION_CHROMIUM", "/usr/bin/chromium"))
STATUSES = {  # candidates' final statuses, as a round with oversample 2 ends
    "kept": 0.50, "not_novel": 0.18, "duplicate": 0.04, "surplus": 0.16, "contaminated": 0.01,
    "too_short": 0.06, "truncated": 0.03, "echo": 0.02,
}  # fmt: skip


def corpus(rng: random.Random) -> tuple[list[str], list[str]]:
    """Instructions and answers to draw texts from: the shared data's, else random words."""
    try:
        rows = []
        for name in ("gsm8k_train_alpaca_format.json", "gpteacher_toolformer_alpaca_format.json"):
            rows += json.loads((DATA_DIR / name).read_text())
        instructions = [r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
                        for r in rows]  # fmt: skip
        answers = [r["output"] for r in rows if r.get("output")]
        return instructions, answers
    except OSError:
        words = [f"w{i}" for i in range(5000)]
        make = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
        return [make(rng.randint(8, 60)) for _ in range(5000)], [make(150) for _ in range(5000)]


def text_of(pool: list[str], length: int, rng: random.Random) -> str:
    """Texts drawn from `pool` joined up to about `length` characters."""
    out = rng.choice(pool)
    while len(out) < length:
        out += "\n\n" + rng.choice(pool)
    return out[: int(length * rng.uniform(0.7, 1.3))]


def synthetic_round(root: Path, rows: int, seed: int = 0) -> tuple[RunStore, LionConfig, int]:
    """Write round 2 of a synthetic run under `root`: a Cache Pool of `rows` instructions."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    instructions, answers = corpus(rng)
    words = [w for t in instructions[:2000] for w in t.split()]
    n_new = max(1, rows * 6 // 58)  # the round-1 instructions among the Cache Pool
    n_seed = rows - n_new
    texts = [near_duplicate(rng.choice(instructions), 0.3, rng, words) for _ in range(rows)]
    ids = [instruction_id(t, f"#{i}") for i, t in enumerate(texts)]
    seeds = pd.DataFrame({
        "instruction_id": ids, "instruction": texts, "input": "", "reference": None,
        "source": ["seed"] * n_seed + list(nrng.choice(["hard", "easy"], n_new)),
        "parent_id": [None] * n_seed + [ids[int(j)] for j in nrng.integers(0, n_seed, n_new)],
        "round": [0] * n_seed + [1] * n_new,
    })  # fmt: skip
    cfg = LionConfig().with_overrides({
        "name": "synthetic-58k", "rounds": 2, "storage.root": str(root),
        "generator.base_url": "https://api.example.com/v1", "generator.model": "gpt-4o-mini",
        "pools.cache_pool": "all", "pools.new_per_round": rows * 6 // 58,
    })  # fmt: skip
    store = RunStore.open(str(root))
    store.write_run_info({"config": cfg.model_dump(mode="json")})
    k = 2
    store.write(k, "train_pool", seeds)
    store.write(k, "cache_pool", seeds)

    def answer_frame(length: int) -> pd.DataFrame:
        return pd.DataFrame({
            "instruction_id": ids, "answer": [text_of(answers, length, rng) for _ in ids],
            "status": "ok", "error": None, "finish_reason": "stop", "model": "m",
            "request_key": ids, "prompt_tokens": 100, "completion_tokens": 200,
        })  # fmt: skip

    teacher, student = answer_frame(900), answer_frame(700)
    store.write(k, "teacher_answers", teacher)
    store.write(k, "student_answers", student)
    t1, t2 = nrng.integers(6, 11, rows).astype(float), nrng.integers(6, 11, rows).astype(float)
    s1, s2 = nrng.integers(2, 10, rows).astype(float), nrng.integers(2, 10, rows).astype(float)
    unscored = nrng.random(rows) < 0.01
    for arr in (t1, t2, s1, s2):
        arr[unscored] = np.nan
    review = lambda: text_of(answers, 350, rng)  # noqa: E731
    referee = pd.DataFrame({
        "instruction_id": ids, "teacher_score_1": t1, "student_score_1": s1,
        "review_1": [review() for _ in ids], "teacher_score_2": t2, "student_score_2": s2,
        "review_2": [review() for _ in ids], "teacher_score": (t1 + t2) / 2,
        "student_score": (s1 + s2) / 2, "status": np.where(unscored, "unscored", "scored"),
        "error": None,
    })  # fmt: skip
    store.write(k, "referee", referee)
    gap = referee["teacher_score"] - referee["student_score"]
    split = seeds.assign(
        teacher_answer=teacher["answer"], student_answer=student["answer"],
        teacher_score=referee["teacher_score"], student_score=referee["student_score"], gap=gap,
    )  # fmt: skip
    hard, easy = split[gap >= 1.0], split[gap < 1.0]
    store.write(k, "hard", hard)
    store.write(k, "easy", easy)

    # 12,000 candidates (58K rows) from hard and easy seeds, 2 each
    n_cand = 2 * (rows * 6 // 58)
    parents = pd.concat([hard.sample(n_cand // 4, random_state=seed),
                         easy.sample(n_cand // 4, random_state=seed)])  # fmt: skip
    parent_rows = parents.loc[parents.index.repeat(2)]
    n_cand = len(parent_rows)
    cand_text = [near_duplicate(t, 0.5, rng, words) for t in parent_rows["instruction"]]
    status = nrng.choice(list(STATUSES), n_cand, p=np.array(list(STATUSES.values())))
    generated = pd.DataFrame({
        "instruction_id": [instruction_id(t, "") for t in cand_text], "instruction": cand_text,
        "input": "", "reference": None,
        "source": ["hard"] * (n_cand // 2) + ["easy"] * (n_cand - n_cand // 2),
        "parent_id": parent_rows["instruction_id"].to_numpy(), "round": k, "status": status,
        "error": None, "request_key": [f"r{i}" for i in range(n_cand)],
    })  # fmt: skip
    store.write(k, "generated", generated)
    judged = generated[generated["status"].isin(["kept", "not_novel", "duplicate",
                                                  "contaminated"])]  # fmt: skip
    near = nrng.integers(0, rows, len(judged))
    dropped = judged["status"] != "kept"
    nearest = judged.assign(
        rouge_l=np.where(dropped, nrng.uniform(0.71, 1.0, len(judged)),
                         nrng.uniform(0.1, 0.7, len(judged))),
        nearest_id=[ids[j] for j in near], nearest=[texts[j] for j in near],
        nearest_in=np.where(judged["status"] == "contaminated", "evaluation vicuna", "train pool"),
        ngram=None,
    )  # fmt: skip
    store.write(k, "nearest", nearest.drop(columns=["reference", "round", "error"]))
    kept = int((status == "kept").sum())
    usage = {
        role: {
            "requests": n,
            "cache_hits": 0,
            "failures": 0,
            "prompt_tokens": 100 * n,
            "completion_tokens": 200 * n,
            "cost_usd": 0.0003 * n,
        }
        for role, n in (("teacher", rows), ("referee", 2 * rows), ("generator", n_cand))
    }
    quant = {"count": kept, "p10": 0.2, "p50": 0.4, "p90": 0.6, "max": 0.7}
    diversity = {
        "judged": len(judged), "kept": kept, "not_novel": int((status == "not_novel").sum()),
        "duplicate": int((status == "duplicate").sum()), "surplus": 0, "dropped_share": 0.3,
        "kept_max_rouge": quant, "dropped_max_rouge": quant, "category_basis": "seed lineage",
        "categories": {"seed a": kept}, "top_category": "seed a", "top_category_share": 0.01,
    }  # fmt: skip
    for j in (1, 2):
        store.write_round_summary(j, {
            "round": j, "train_pool": rows, "cache_pool": rows, "teacher_failed": 0,
            "hard": len(hard), "easy": len(easy), "unscored": int(unscored.sum()),
            "teacher_score": 8.0, "student_score": 6.0, "student_to_teacher": 0.75,
            "positional_bias": 0.1, "new_instructions": kept, "next_train_pool": rows + kept,
            "student": "s", "usage": usage, "seconds": {"imitation": 3600.0},
            "diversity": diversity, "new_wanted": rows * 6 // 58, "new_shortfall": 0,
        })  # fmt: skip
    return store, cfg, k


def load_in_chromium(path: Path) -> dict[str, float] | None:
    """Seconds from navigation to the load event, and to filter the judged table by verdict."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not CHROMIUM.exists():
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:")
                   else r.abort())  # fmt: skip
        started = time.perf_counter()
        page.goto(path.resolve().as_uri(), wait_until="load", timeout=300_000)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        page.select_option("#verdict", "hard")
        page.wait_for_function("document.querySelector('#judged-section .count').textContent")
        filtered = time.perf_counter() - started
        browser.close()
    return {"load_s": loaded, "filter_s": filtered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=58_000, help="Cache Pool rows (synthetic)")
    parser.add_argument("--root", help="a run's root: time the report of its --round instead")
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="best of N writes")
    args = parser.parse_args()
    if args.root:
        from lion_core.run.identity import recorded_config

        cfg = recorded_config(args.root)
        store, k = RunStore.open(cfg.storage.root, cfg.storage.options), args.round
        what = f"{args.root} round {k}"
    else:
        tmp = Path(tempfile.mkdtemp(prefix="lion-report-bench-"))
        started = time.perf_counter()
        store, cfg, k = synthetic_round(tmp / "run", args.rows)
        print(f"synthetic round built in {time.perf_counter() - started:.1f} s under {tmp}")
        what = f"synthetic round of {args.rows:,} Cache Pool rows"
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        uri = write_report(store, k, cfg)
        times.append(time.perf_counter() - started)
    size = Path(uri).stat().st_size
    result = {"what": what, "report": uri, "bytes": size, "mb": round(size / 2**20, 2),
              "write_s": round(min(times), 2)}  # fmt: skip
    loaded = load_in_chromium(Path(uri))
    if loaded:
        result.update({k: round(v, 2) for k, v in loaded.items()})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
