"""Each candidate's nearest pool text (`nearest_rouge_l`: the round's lineage table and the
diversity statistics' maxima), today's search beside an earlier one, on the novelty benchmark's
workload.

    .venv/bin/python benchmarks/nearest.py [--data-dir ../shared/data]
        [--sizes 6000x70000 24000x280000] [--baseline REF] [--old-limit 600]

Workload: `benchmarks/novelty.py`'s (real instructions of the shared data folder and word-level
edits of them; many pairs near 0.7). Methods, each in a child process of its own (its peak RSS is
its own, the inputs included):

* new: `nearest_rouge_l` as it is;
* old: `nearest_rouge_l` of lion_core/method/novelty.py at git `--baseline` (default: the last
  commit whose search ran the all-pairs product over levels 0.5 / 0.25 / 0), stopped after
  `--old-limit` seconds.

Printed per size: wall and CPU seconds, peak RSS, whether both give the same maxima and indices,
and the ratio old / new; the load average beside each (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, from anywhere

from benchmarks.novelty import baseline_module, build_workload, child_json
from benchmarks.reference_data import DATA_DIR, instruction_texts
from lion_core.method.novelty import nearest_rouge_l

# The last commit whose nearest-text search ran the all-pairs product at levels 0.5 / 0.25 / 0.
BASELINE = "5f317dab1cb36b429747457c405589bcd9e6677f"


def child(workload: Path, method: str, baseline: str, out: Path) -> None:
    """One search in this process; its measures and answers as JSON in `out`."""
    with workload.open("rb") as f:
        candidates, pool = pickle.load(f)
    run = nearest_rouge_l if method == "new" else baseline_module(baseline).nearest_rouge_l
    load_before, cpu, wall = os.getloadavg()[0], time.process_time(), time.perf_counter()
    best, where = run(candidates, pool)
    result = {
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load": [load_before, os.getloadavg()[0]],
        "best": best,
        "where": where,
    }
    out.write_text(json.dumps(result))


def run_child(workload: Path, method: str, baseline: str, limit: float | None) -> dict | str:
    command = [sys.executable, __file__, "--child", str(workload), method, baseline]
    return child_json(command, [], limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--sizes", nargs="+", default=["6000x70000", "24000x280000"])
    parser.add_argument("--baseline", default=BASELINE, help="git ref of the old module")
    parser.add_argument("--old-limit", type=float, default=600.0, help="seconds for the old one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=4, metavar=("WORKLOAD", "METHOD", "BASELINE", "OUT"))
    args = parser.parse_args()
    if args.child:
        workload, method, baseline, out = args.child
        child(Path(workload), method, baseline, Path(out))
        return
    if not args.data_dir.is_dir():
        sys.exit(f"data folder {args.data_dir} not found (use --data-dir or LION_SHARED_DATA)")
    print(f"machine: {os.cpu_count()} cores; uptime at start: {os.popen('uptime').read().strip()}")
    texts = [t for group in instruction_texts(args.data_dir).values() for t in group]
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            n_cand, n_pool = (int(x) for x in size.lower().split("x"))
            workload = Path(tmp) / f"{size}.pkl"
            with workload.open("wb") as f:
                pickle.dump(build_workload(texts, n_pool, n_cand, args.seed), f)
            new = run_child(workload, "new", args.baseline, None)
            old = run_child(workload, "old", args.baseline, args.old_limit)
            assert isinstance(new, dict)
            line = f"{n_cand:,} x {n_pool:,}: new {measures(new)}"
            if isinstance(old, dict):
                same = (old["best"], old["where"]) == (new["best"], new["where"])
                line += f"; old {measures(old)}; old / new {old['wall'] / new['wall']:.2f}"
                line += f"; same answers: {same}"
                if not same:
                    sys.exit(f"{line}\nMISMATCH between the new search and the old one")
            else:
                line += f"; old {old}"
            print(line, flush=True)
    print(f"uptime at the end: {os.popen('uptime').read().strip()}")


def measures(r: dict) -> str:
    return (
        f"{r['wall']:.1f} s (CPU {r['cpu']:.1f} s, {r['rss_mb'] / 1024:.2f} GB, "
        f"load {r['load'][0]:.1f}-{r['load'][1]:.1f})"
    )


if __name__ == "__main__":
    main()
