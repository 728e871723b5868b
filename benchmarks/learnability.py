"""What the demo's student can learn from examples, family by family: its held-out score on each
offline-world family after training on seed pools of growing size (no Lion loop: examples drawn
uniformly, the families in turn).

A world where targeted practice can matter needs a gradient here — some families mastered from a
few examples, some only from many, some out of reach (docs/offline-world.md). Each size trains a
fresh tiny student with the demo preset's settings (python launcher, the demo's epochs, learning
rate and micro-batch) and answers the held-out set and as many fresh instances in the phrasings it
trained on (what a held-back Cache Pool asks); it prints, per family and size, the examples of
that family, the held-out exact match and mean correctness (the offline referee's base score,
1-10), and the exact match on the fresh instances.

    .venv/bin/python benchmarks/learnability.py --sizes 60 120 240 --families repeat capital sort
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd

from lion_core.config.presets import preset_config
from lion_core.offline.roles import correctness
from lion_core.offline.world import heldout_instances, seed_instances, world_families
from lion_core.run.schemas import instruction_id
from lion_core.run.store import RunStore
from lion_core.student.answer import generate_answers
from lion_core.student.launch import train_student
from lion_core.student.model import prepare_base_student


def measure(
    size: int, families: tuple[str, ...], seed: int, per_cell: int, root: Path, overrides: dict
) -> list:
    cfg = preset_config("demo").with_overrides(
        {
            "storage.root": str(root),
            "seed": seed,
            "offline.families": list(families),
            "training.launcher": "python",
            "training.init_from": "base",
            **overrides,
        }
    )
    store = RunStore.open(str(root))
    seeds = seed_instances(size, seed, cfg.offline.max_difficulty, families)
    train = pd.DataFrame(
        [{"instruction": i.instruction, "input": i.input, "answer": i.answer} for i in seeds]
    )
    data = root / "train.parquet"
    root.mkdir(parents=True, exist_ok=True)
    train.to_parquet(data, index=False)
    texts = [*train["instruction"], *train["input"][train["input"] != ""], *train["answer"]]
    base = prepare_base_student(cfg, store, texts)
    t0 = time.perf_counter()
    student = train_student(cfg, store, 1, str(data), base)
    trained_s = time.perf_counter() - t0
    held = heldout_instances(per_cell, cfg.offline.max_difficulty, families)
    # fresh instances in the phrasings trained on (what the referee judges on a held-back Cache
    # Pool): the same families and difficulties, none of them a training instruction
    trained = {instruction_id(i.instruction, i.input) for i in seeds}
    fresh = [
        i
        for i in seed_instances(len(held) * 2, seed + 1000, cfg.offline.max_difficulty, families)
        if instruction_id(i.instruction, i.input) not in trained
    ][: len(held)]
    held = [*held, *fresh]
    rows = pd.DataFrame(
        [
            {"instruction_id": instruction_id(i.instruction, i.input), "instruction": i.instruction,
             "input": i.input}
            for i in held
        ]
    )  # fmt: skip
    answers = generate_answers(cfg, store, student, rows)
    got = dict(zip(answers["instruction_id"], answers["answer"], strict=True))
    examples = defaultdict(int)
    for i in seeds:
        examples[i.family] += 1
    by_family, unseen = defaultdict(list), defaultdict(list)
    for i, iid in zip(held, rows["instruction_id"], strict=True):
        (by_family if i.heldout else unseen)[i.family].append(
            correctness(got.get(iid) or "", i.answer)
        )
    return [
        {"size": size, "family": f, "examples": examples[f],
         "exact": sum(s >= 10 for s in scores) / len(scores),
         "correctness": statistics.fmean(scores),
         "unseen_exact": sum(s >= 10 for s in unseen[f]) / max(1, len(unseen[f])),
         "train_s": trained_s}
        for f, scores in sorted(by_family.items())
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[60, 120, 240])
    parser.add_argument("--families", nargs="*", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-cell", type=int, default=4, help="held-out questions per cell")
    parser.add_argument(
        "--set", action="append", default=[], help="a config override, e.g. training.epochs=40"
    )
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    families = world_families(args.families)
    results = []
    with tempfile.TemporaryDirectory(prefix="lion-learnability-") as tmp:
        for size in args.sizes:
            at = Path(tmp) / str(size)
            results += measure(size, families, args.seed, args.per_cell, at, overrides)
            print(f"size {size}: trained in {results[-1]['train_s']:.0f} s", flush=True)
    frame = pd.DataFrame(results)
    print(
        "\nheld-out exact match (mean correctness 1-10) / exact match on unseen instances in "
        "the trained phrasings [examples of the family], per size:"
    )
    lines = ["| family | " + " | ".join(f"{s} seeds" for s in args.sizes) + " |",
             "|---|" + "---|" * len(args.sizes)]  # fmt: skip
    for family, group in frame.groupby("family", sort=False):
        cells = [
            f"{r.exact:.2f} ({r.correctness:.1f}) / {r.unseen_exact:.2f} [{r.examples}]"
            for r in group.sort_values("size").itertuples()
        ]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
