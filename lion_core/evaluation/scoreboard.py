"""The run's scoreboard: every round's evaluation read back from the run root, as a table, a
text table and a picture (relative score per round with its interval, per category, and the
share of hard instructions).

Reads only what the evaluation tasks committed (`round=<k>/evaluation/<set>/by_category.parquet`)
and the round summaries, so `lion report` works on any run root, finished or not.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import pandas as pd

from lion_core.run import layout
from lion_core.run.store import RunStore

OVERALL_COLUMNS = (
    "round",
    "set",
    "relative_score",
    "interval_low",
    "interval_high",
    "wins",
    "ties",
    "losses",
    "unscored",
    "questions",
    "student_exact_match",
    "teacher_exact_match",
)


# What a terminal shows of `overall`, one table per question set: the 95% interval in one
# column, under 100 columns wide.
PRINTED_COLUMNS = (
    "round",
    "relative_score",
    "interval",
    "wins",
    "ties",
    "losses",
    "unscored",
    "student_exact_match",
)


def printed(overall_rows: pd.DataFrame) -> str:
    """`overall(frame)` as text under 100 columns: a table per question set (headed `<set>:`),
    the interval as `low-high`; the teacher's exact match and the question count are left to
    the artifacts and `lion eval --json`."""
    rows = overall_rows.assign(
        interval=[
            "-" if pd.isna(lo) or pd.isna(hi) else f"{lo:.3f}-{hi:.3f}"
            for lo, hi in zip(overall_rows["interval_low"], overall_rows["interval_high"],
                              strict=True)
        ]
    )  # fmt: skip
    return "\n\n".join(
        f"{name}:\n{text_table(group, PRINTED_COLUMNS)}"
        for name, group in rows.groupby("set", sort=False)
    )


def evaluations(store: RunStore) -> pd.DataFrame:
    """One row per (round, set, level, category) of every committed evaluation, rounds
    ascending (EVAL_SUMMARY_SCHEMA columns plus `round` and `set`)."""
    frames = []
    for k in store.rounds():
        where = layout.round_dir(k)
        for name in store.storage.listdir(f"{where}/{layout.EVALUATION}"):
            at = layout.evaluation(where, name, "by_category")
            if store.storage.exists(at):
                frame = store.read(k, "by_category", at)
                frames.append(frame.assign(round=k, set=name))
    if not frames:
        return pd.DataFrame(columns=["round", "set", "level", "category"])
    return pd.concat(frames, ignore_index=True).sort_values(["round", "set"], kind="stable")


def hard_share(store: RunStore) -> pd.Series:
    """Share of scored Cache Pool instructions the referee found hard, per round."""
    shares = {}
    for k in store.rounds():
        summary = store.read_round_summary(k)
        if summary and (summary["hard"] + summary["easy"]):
            shares[k] = summary["hard"] / (summary["hard"] + summary["easy"])
    return pd.Series(shares, dtype=float, name="hard_share")


# What the referee's split and generation did per round (summary.json), as `lion report`
# prints it: (summary key, column header).
LOOP_COLUMNS = (
    ("round", "round"),
    ("hard", "hard"),
    ("easy", "easy"),
    ("hard_share", "hard_share"),
    ("hard_precision", "hard_prec"),
    ("easy_precision", "easy_prec"),
    ("student_to_teacher", "stud/teach"),
    ("top_category_share", "top_family"),
    ("new_shortfall", "shortfall"),
)


def loop_table(store: RunStore) -> str | None:
    """Per round: the split (hard, easy, share), its precision against the truth where known,
    the Cache Pool's student-to-teacher ratio, the largest category's share of the new
    instructions and generation's shortfall; None without round summaries."""
    rows = []
    for k in store.rounds():
        summary = store.read_round_summary(k)
        if not summary:
            continue
        scored = summary.get("hard", 0) + summary.get("easy", 0)
        diversity = summary.get("diversity") or {}
        values = {
            **summary,
            "hard_share": summary["hard"] / scored if scored else None,
            "top_category_share": diversity.get("top_category_share"),
        }
        rows.append([cell(values.get(key)) for key, _ in LOOP_COLUMNS])
    if not rows:
        return None
    return aligned([header for _, header in LOOP_COLUMNS], rows)


def overall(frame: pd.DataFrame) -> pd.DataFrame:
    """The 'overall' rows: one per round and set."""
    rows = frame[frame["level"] == "overall"] if len(frame) else frame
    return rows.reindex(columns=list(OVERALL_COLUMNS)).reset_index(drop=True)


def cell(value: object) -> str:
    """A table cell: floats to three decimals, '-' for missing."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def aligned(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: columns right-aligned, two spaces apart."""
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    )


def text_table(rows: pd.DataFrame, columns: Sequence[str]) -> str:
    """`rows`' `columns` as a plain-text table."""
    cells = [[cell(v) for v in row] for row in rows[list(columns)].itertuples(index=False)]
    return aligned(list(columns), cells)


def plot(frame: pd.DataFrame, hard: pd.Series, title: str = "") -> bytes:
    """PNG: the relative score per round (first set; overall with its 95% interval, and each
    category), and the share of hard instructions per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), width_ratios=[2, 1])
    if len(frame):
        first = frame["set"].iloc[0]
        rows = frame[frame["set"] == first]
        top = rows[rows["level"] == "overall"].sort_values("round")
        for category, group in rows[rows["level"] == "category"].groupby("category"):
            group = group.sort_values("round")
            left.plot(group["round"], group["relative_score"], marker=".", lw=1, alpha=0.6,
                      label=str(category))  # fmt: skip
        left.fill_between(
            top["round"], top["interval_low"], top["interval_high"], color="black", alpha=0.12
        )
        left.plot(top["round"], top["relative_score"], marker="o", lw=2.5, color="black",
                  label="overall (95% interval)")  # fmt: skip
        left.set_title(f"relative score on '{first}' (1.0 = teacher)")
        left.legend(fontsize=7, ncol=2, loc="best")
    left.set_xlabel("round")
    left.axhline(1.0, color="grey", ls="--", lw=0.8)
    left.set_ylim(bottom=0)
    if len(hard):
        right.bar(hard.index, hard.values, color="tab:red", alpha=0.7)
    right.set_title("hard share of the Cache Pool")
    right.set_xlabel("round")
    right.set_ylim(0, 1)
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()


def write_plot(store: RunStore, title: str = "") -> tuple[str, bytes]:
    """Draw the run's scoreboard and save it as `<root>/evaluation.png`; (its URI, the PNG)."""
    png = plot(evaluations(store), hard_share(store), title)
    return store.storage.write_bytes(layout.EVALUATION_PLOT, png, overwrite=True), png
