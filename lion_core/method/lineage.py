"""What each judged candidate came nearest to: the round's lineage, for reports.

`generated` already records each candidate's seed (`parent_id`) and fate (`status`); this adds,
for every candidate the novelty stage judged and every one the decontamination gate dropped,
the text it came nearest to and their ROUGE-L F1 (NEAREST_SCHEMA, `round=<k>/nearest.parquet`):

- kept, not_novel, duplicate: the nearest instruction of the pool it was judged against
  (`novelty.nearest_rouge_l`: exact, the lowest pool index on a tie) — for a dropped one, the
  round's kept instructions too (`nearest_in` "new" when one of them is nearer: a candidate is
  also dropped for being too close to one kept before it), and for a duplicate of an earlier
  candidate that was not kept, that candidate ("candidate");
- contaminated: the evaluation question it matched ("evaluation <set>"), with the shared n-gram.

The pool values are also each judged candidate's highest ROUGE-L against the pool, which the
diversity statistics need (`lion_core.method.diversity`): computed once, for both.
"""

from __future__ import annotations

import pandas as pd

from lion_core.method.decontaminate import Match, nearest_row
from lion_core.method.diversity import JUDGED
from lion_core.method.novelty import nearest_rouge_l
from lion_core.run.schemas import NEAREST_SCHEMA

DROPPED = ("not_novel", "duplicate")


def nearest_table(
    generated: pd.DataFrame,
    pool: pd.DataFrame,
    contaminated: dict[tuple[str, str], Match] | None = None,
) -> tuple[pd.DataFrame, list[float]]:
    """NEAREST_SCHEMA rows for `generated` (GENERATED_SCHEMA after `select_novel`) judged
    against `pool` (POOL_SCHEMA), in `generated` order; and each judged candidate's highest
    ROUGE-L F1 against the pool (row order of the judged ones). `contaminated`: the gate's
    match per (source, request_key) of each contaminated candidate."""
    contaminated = contaminated or {}
    judged = generated[generated["status"].isin(JUDGED)]
    texts = judged["instruction"].astype(str).tolist()
    pool_texts = pool["instruction"].astype(str).tolist()
    pool_ids = pool["instruction_id"].tolist()
    best, where = nearest_rouge_l(texts, pool_texts)
    found = {
        i: (f, pool_ids[w], pool_texts[w], "train pool") if w >= 0 else (0.0, None, None, None)
        for i, f, w in zip(judged.index, best, where, strict=True)
    }

    kept = generated[generated["status"] == "kept"]
    dropped = judged[judged["status"].isin(DROPPED)]
    if len(dropped) and len(kept):
        kept_texts = kept["instruction"].astype(str).tolist()
        kept_ids = kept["instruction_id"].tolist()
        # only a kept text nearer than the pool's nearest is looked for
        above = [found[i][0] for i in dropped.index]
        f_new, w_new = nearest_rouge_l(
            dropped["instruction"].astype(str).tolist(), kept_texts, above
        )
        for i, f, w in zip(dropped.index, f_new, w_new, strict=True):
            if w >= 0:
                found[i] = (f, kept_ids[w], kept_texts[w], "new")
    # a duplicate of an earlier candidate the round did not keep (surplus, capped)
    first_of: dict[str, int] = {}
    for i, text in zip(generated.index, generated["instruction"], strict=True):
        if isinstance(text, str):
            first_of.setdefault(" ".join(text.split()), i)
    for i in dropped.index[dropped["status"] == "duplicate"]:
        j = first_of.get(" ".join(str(generated.at[i, "instruction"]).split()))
        if found[i][0] < 1.0 and j is not None and j != i:
            found[i] = (1.0, generated.at[j, "instruction_id"], generated.at[j, "instruction"],
                        "candidate")  # fmt: skip

    rows = []
    for i, row in generated.iterrows():
        status = row["status"]
        if status == "contaminated":
            match = contaminated.get((row["source"], row["request_key"]))
            if match is not None:
                rows.append(nearest_row(row, status, match))
        elif i in found:
            f, nid, text, where_in = found[i]
            rows.append(
                {
                    "instruction_id": row["instruction_id"],
                    "instruction": row["instruction"],
                    "input": row["input"] if isinstance(row["input"], str) else "",
                    "source": row["source"],
                    "parent_id": row["parent_id"],
                    "request_key": row["request_key"],
                    "status": status,
                    "rouge_l": float(f),
                    "nearest_id": nid,
                    "nearest": text,
                    "nearest_in": where_in,
                    "ngram": None,
                }
            )
    frame = pd.DataFrame(rows, columns=NEAREST_SCHEMA.names)
    return frame, [float(f) for f in best]


__all__ = ["DROPPED", "nearest_table"]
