"""Per-family learning curves on the offline world: the held-out relative score of each family
against the training examples of that family the student had seen by then.

Reads only what a run committed: each round's Train Pool (`round=k/train_pool`, what round k's
student trained on, cumulatively when each round continues from the last) and each round's
evaluation by category (`lion_core.evaluation.scoreboard`). A family's examples are the Train
Pool rows the offline world recognises as that family (`offline.world.solve`). Round 0 is the
untrained base (0 examples).
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from lion_core.evaluation import scoreboard
from lion_core.offline.world import solve
from lion_core.run.store import RunStore


def family_examples(pool: pd.DataFrame) -> Counter[str]:
    """Train Pool rows per offline family ("unrecognised" for anything else)."""
    out: Counter[str] = Counter()
    for row in pool.itertuples(index=False):
        inp = row.input if isinstance(row.input, str) else ""
        inst = solve(str(row.instruction), inp)
        out[inst.family if inst is not None else "unrecognised"] += 1
    return out


def learning_curves(store: RunStore, evaluation_set: str = "offline") -> pd.DataFrame:
    """One row per (round, family): `examples` (the family's distinct Train Pool rows the
    round's student trained on: round k's pool holds every earlier round's) and the
    held-out `relative_score` and `student_exact_match` of that family at that round."""
    frame = scoreboard.evaluations(store)
    if frame.empty:
        return pd.DataFrame(columns=["round", "family", "examples", "relative_score"])
    cats = frame[(frame["level"] == "category") & (frame["set"] == evaluation_set)]
    seen: Counter[str] = Counter()
    rows = []
    for k in sorted(cats["round"].unique()):
        if k > 0 and store.exists(int(k), "train_pool"):
            # round k trains on its whole Train Pool, which holds every earlier round's
            seen = family_examples(store.read(int(k), "train_pool"))
        for row in cats[cats["round"] == k].itertuples(index=False):
            rows.append({"round": int(k), "family": row.category, "examples": seen[row.category],
                         "relative_score": row.relative_score,
                         "student_exact_match": row.student_exact_match})  # fmt: skip
    return pd.DataFrame(rows)


def curves_text(curves: pd.DataFrame) -> str:
    """Family × round: 'score (examples)', markdown."""
    rounds = sorted(curves["round"].unique())
    lines = ["| family | " + " | ".join(f"round {k}" for k in rounds) + " |",
             "|---|" + "---|" * len(rounds)]  # fmt: skip
    for family, group in curves.groupby("family", sort=True):
        by_round = group.set_index("round")
        cells = [
            f"{by_round.loc[k, 'relative_score']:.3f} ({by_round.loc[k, 'examples']})"
            if k in by_round.index
            else "-"
            for k in rounds
        ]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
