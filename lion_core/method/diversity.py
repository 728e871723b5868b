"""Is generation staying diverse? Statistics of one round's novelty stage.

Lion's generator writes new instructions like the hard (and easy) ones; left alone it can
stagnate (most candidates near-copies of the pool, dropped by the ROUGE-L filter) or collapse
onto one domain (every new instruction from one kind of seed). Per round we record:

- the highest ROUGE-L F1 of each judged candidate against the train pool
  (`novelty.max_rouge_l`, exact), as quantiles p10 / p50 / p90 / max, separately for the kept
  and the dropped candidates;
- the dropped share: (not_novel + duplicate) / (kept + not_novel + duplicate). Surplus candidates
  (novel, but their kind was already full) and those the post-filters dropped are not part of
  it: the novelty stage did not judge them (see lion_core.method.generate);
- the share of each seed category among the kept instructions. A generated instruction's
  category is its parent seed's: the offline world's family (`offline.world.solve`) when the
  world wrote the instructions; otherwise user data has no categories, and we use the parent's
  *seed lineage* (the original seed instruction it descends from, through `parent_id`), so one
  lineage taking over is what we can see.

`warnings` flags a dropped share above 80% (stagnating) and one category above 50% of the new
instructions (collapsing onto one domain); `log_warnings` logs them at WARNING.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from lion_core.method.novelty import max_rouge_l

log = logging.getLogger(__name__)

DROPPED_WARN = 0.8  # warn when more than this share of the judged candidates is dropped
CATEGORY_WARN = 0.5  # warn when one category has more than this share of the new instructions
JUDGED = ("kept", "not_novel", "duplicate")
FAMILY = "offline family"
LINEAGE = "seed lineage"
UNKNOWN = "unknown"


class RougeQuantiles(BaseModel):
    """Quantiles (numpy's linear interpolation) of candidates' highest ROUGE-L F1 against the
    pool; None when there are no candidates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int
    p10: float | None
    p50: float | None
    p90: float | None
    max: float | None

    @classmethod
    def of(cls, values: list[float] | np.ndarray) -> RougeQuantiles:
        values = np.asarray(values, dtype=np.float64)
        if not len(values):
            return cls(count=0, p10=None, p50=None, p90=None, max=None)
        p10, p50, p90 = (float(q) for q in np.quantile(values, (0.1, 0.5, 0.9)))
        return cls(count=len(values), p10=p10, p50=p50, p90=p90, max=float(values.max()))


class Diversity(BaseModel):
    """One round's novelty stage: what it dropped, how close the candidates were to the pool,
    and which seed categories the new instructions come from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    judged: int  # kept + not_novel + duplicate
    kept: int
    not_novel: int
    duplicate: int
    surplus: int
    dropped_share: float | None  # (not_novel + duplicate) / judged
    kept_max_rouge: RougeQuantiles
    dropped_max_rouge: RougeQuantiles
    category_basis: str  # "offline family" or "seed lineage"
    categories: dict[str, int]  # kept instructions per category, largest first
    top_category: str | None
    top_category_share: float | None

    def warnings(self) -> list[str]:
        """Why this round's generation looks stagnant or collapsed (empty when it does not)."""
        out = []
        if self.dropped_share is not None and self.dropped_share > DROPPED_WARN:
            out.append(
                f"generation is stagnating: the novelty filter dropped {self.dropped_share:.0%} "
                f"of {self.judged} judged candidates ({self.not_novel} not novel, "
                f"{self.duplicate} duplicates; warning above {DROPPED_WARN:.0%}); median highest "
                f"ROUGE-L of the dropped ones {_num(self.dropped_max_rouge.p50)}"
            )
        share = self.top_category_share
        if share is not None and share > CATEGORY_WARN:
            out.append(
                f"generation is collapsing onto one domain: {self.category_basis} "
                f"{self.top_category!r} has {share:.0%} of the {self.kept} new instructions "
                f"(warning above {CATEGORY_WARN:.0%})"
            )
        return out


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def diversity(
    generated: pd.DataFrame,
    pool: pd.DataFrame,
    *,
    offline_families: bool,
    max_rouge: list[float] | None = None,
) -> Diversity:
    """The diversity statistics of `generated` (GENERATED_SCHEMA rows after `select_novel`)
    against `pool`, the train pool it was judged against (POOL_SCHEMA: the parents are there).

    `offline_families`: categorise by the offline world's family of the parent seed (when the
    offline world wrote the instructions); otherwise by seed lineage. `max_rouge`: each judged
    candidate's highest ROUGE-L F1 against the pool, in row order, if already computed.
    """
    judged = generated[generated["status"].isin(JUDGED)]
    counts = generated["status"].value_counts()
    n = {s: int(counts.get(s, 0)) for s in (*JUDGED, "surplus")}
    if max_rouge is None:
        max_rouge = max_rouge_l(
            judged["instruction"].astype(str).tolist(), pool["instruction"].astype(str).tolist()
        )
    scores = np.asarray(max_rouge, dtype=np.float64)
    if len(scores) != len(judged):
        raise ValueError(f"max_rouge has {len(scores)} values for {len(judged)} judged candidates")
    is_kept = (judged["status"] == "kept").to_numpy()
    kept_parents = judged.loc[is_kept, "parent_id"].tolist()
    basis = FAMILY if offline_families else LINEAGE
    by_category = Counter(categorize(kept_parents, pool, basis))
    ranked = dict(sorted(by_category.items(), key=lambda kv: (-kv[1], kv[0])))
    top = next(iter(ranked), None)
    n_judged = len(judged)
    return Diversity(
        judged=n_judged,
        kept=n["kept"],
        not_novel=n["not_novel"],
        duplicate=n["duplicate"],
        surplus=n["surplus"],
        dropped_share=(n["not_novel"] + n["duplicate"]) / n_judged if n_judged else None,
        kept_max_rouge=RougeQuantiles.of(scores[is_kept]),
        dropped_max_rouge=RougeQuantiles.of(scores[~is_kept]),
        category_basis=basis,
        categories=ranked,
        top_category=top,
        top_category_share=ranked[top] / n["kept"] if top is not None and n["kept"] else None,
    )


def categorize(parent_ids: list[str | None], pool: pd.DataFrame, basis: str) -> list[str]:
    """The category of each parent: its offline-world family ("unrecognised" when the world
    does not know it), or the seed it descends from ("seed <id prefix>"); "unknown" when the
    parent is not in `pool`."""
    rows = pool.drop_duplicates("instruction_id").set_index("instruction_id")
    out = []
    if basis == FAMILY:
        from lion_core.offline.world import solve

        cache: dict[str, str] = {}
        for pid in parent_ids:
            if pid not in rows.index:
                out.append(UNKNOWN)
                continue
            if pid not in cache:
                row = rows.loc[pid]
                inp = row["input"] if isinstance(row["input"], str) else ""
                inst = solve(str(row["instruction"]), inp)
                cache[pid] = inst.family if inst is not None else "unrecognised"
            out.append(cache[pid])
        return out
    parent_of = rows["parent_id"].to_dict()
    for pid in parent_ids:
        if pid not in rows.index:
            out.append(UNKNOWN)
            continue
        root, seen = pid, {pid}
        while isinstance(parent_of.get(root), str) and parent_of[root] in rows.index:
            root = parent_of[root]
            if root in seen:  # a cycle cannot come from the flow; stop rather than loop
                break
            seen.add(root)
        out.append(f"seed {root[:12]}")
    return out


def log_warnings(stats: Diversity, round: int) -> list[str]:
    """Log each of `stats.warnings()` at WARNING, naming the round; returns them."""
    messages = stats.warnings()
    for message in messages:
        log.warning("round %d: %s", round, message)
    return messages


__all__ = [
    "CATEGORY_WARN",
    "DROPPED_WARN",
    "Diversity",
    "RougeQuantiles",
    "categorize",
    "diversity",
    "log_warnings",
]
