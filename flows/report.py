"""Per-round summaries, and their Prefect artifacts: a table and a markdown sample of hard
instructions with both answers and the referee's reasons."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lion_core import scoreboard
from lion_core.config import LionConfig
from lion_core.records import (
    Candidates,
    NewInstructions,
    Pools,
    RefereeReviews,
    RoundSummary,
    Split,
    StudentEvaluation,
    TeacherAnswers,
    Usage,
)
from lion_core.schemas import ArtifactRef
from tasks.runtime import run_store


def round_summary(
    round: int,
    *,
    pools: Pools,
    next_pools: Pools,
    teacher: TeacherAnswers,
    student: str,
    reviews: Sequence[RefereeReviews],
    split: Split,
    found: Sequence[Candidates],
    new: NewInstructions,
    seconds: dict[str, float],
) -> RoundSummary:
    """The round's summary, from the records its tasks returned."""
    stats = split.stats
    return RoundSummary(
        round=round,
        train_pool=pools.train.rows,
        cache_pool=pools.cache.rows,
        teacher_failed=teacher.failed,
        hard=stats.hard,
        easy=stats.easy,
        unscored=stats.unscored,
        teacher_score=stats.mean_teacher_score,
        student_score=stats.mean_student_score,
        student_to_teacher=stats.score_ratio,
        positional_bias=stats.positional_bias,
        new_instructions=new.kept,
        next_train_pool=next_pools.train.rows,
        student=student,
        diversity=new.diversity,
        usage={
            "teacher": teacher.usage,
            "referee": sum((r.usage for r in reviews), Usage()),
            "generator": sum((c.usage for c in found), Usage()),
        },
        seconds=seconds,
    )


def _key(config: LionConfig, suffix: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")

    return f"{slug(config.name) or 'lion'}-{slug(suffix)}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def publish_round(
    config: LionConfig,
    summary: RoundSummary,
    hard: ArtifactRef,
    referee: ArtifactRef,
    sample: int = 5,
) -> None:
    """The round's summary.json, its table artifact and a markdown sample of hard
    instructions."""
    round = summary.round
    store = run_store(config)
    store.write_round_summary(round, summary.model_dump(mode="json"))
    table = [{"metric": k, "value": _fmt(v)} for k, v in summary.flat().items()]
    create_table_artifact(
        table=table,
        key=_key(config, f"round-{round}"),
        description=f"Lion round {round}: pools, hard/easy split, scores, generation diversity, "
        "usage, wall time",
    )
    hard_rows = store.read_ref(hard).sort_values("gap", ascending=False).head(sample)
    reviews = store.read_ref(referee).set_index("instruction_id")
    parts = [f"# Round {round}: hardest instructions\n"]
    if hard_rows.empty:
        parts.append("No hard instructions this round.\n")
    for row in hard_rows.itertuples(index=False):
        review = reviews.loc[row.instruction_id] if row.instruction_id in reviews.index else None
        parts.append(
            f"## {row.instruction[:120]}\n\n"
            f"**Teacher** ({row.teacher_score:.1f}): {_quote(row.teacher_answer)}\n\n"
            f"**Student** ({row.student_score:.1f}): {_quote(row.student_answer)}\n\n"
        )
        if review is not None:
            parts.append(
                f"**Referee, teacher first:** {_quote(review['review_1'])}\n\n"
                f"**Referee, student first:** {_quote(review['review_2'])}\n\n"
            )
    create_markdown_artifact(
        markdown="".join(parts),
        key=_key(config, f"round-{round}-hard-sample"),
        description=f"Lion round {round}: a sample of hard instructions",
    )


def _quote(text: Any, limit: int = 600) -> str:
    text = "" if text is None else str(text)
    text = text if len(text) <= limit else text[:limit] + " …"
    return text.replace("\n", " ")


SUMMARY_COLUMNS = (
    "round",
    "train_pool",
    "cache_pool",
    "hard",
    "easy",
    "unscored",
    "teacher_score",
    "student_score",
    "student_to_teacher",
    "relative_score",
    "new_instructions",
    "teacher_requests",
    "referee_requests",
    "generator_requests",
)


def aligned(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: columns right-aligned, two spaces apart."""
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in [header, *rows]
    )


def _columns(summary: RoundSummary) -> dict[str, str]:
    flat = summary.flat()
    return {c: _fmt(flat.get(c)) for c in SUMMARY_COLUMNS}


def summary_table(rounds: Sequence[RoundSummary]) -> str:
    """The per-round table the CLI prints."""
    return aligned(SUMMARY_COLUMNS, [list(_columns(r).values()) for r in rounds])


def publish_run(config: LionConfig, rounds: Sequence[RoundSummary]) -> None:
    create_table_artifact(
        table=[_columns(r) for r in rounds],
        key=_key(config, "summary"),
        description=f"Lion run {config.name}: one row per round",
    )


def publish_evaluation(config: LionConfig, evaluation: StudentEvaluation) -> None:
    """A table artifact per question set: the overall numbers, then each category."""
    label = "model" if evaluation.round is None else f"round-{evaluation.round}"
    for result in evaluation.sets:
        frame = result.summary.to_frame()
        create_table_artifact(
            table=[{c: _fmt(v) for c, v in row.items()} for row in frame.to_dict(orient="records")],
            key=_key(config, f"eval-{label}-{result.set}"),
            description=(
                f"{label}: relative score on '{result.set}' (student ÷ teacher judge scores, "
                f"1.0 = teacher level), overall then per category; {result.summary.unscored} "
                "unscored question(s) left out"
            ),
        )


def publish_scoreboard(config: LionConfig) -> str | None:
    """The run's scoreboard as `<root>/evaluation.png` and a markdown artifact showing it (the
    image inline, so the Prefect UI needs nothing but the artifact), with the per-round table.
    Returns the PNG's URI, or None when nothing was evaluated."""
    store = run_store(config)
    frame = scoreboard.evaluations(store)
    if frame.empty:
        return None
    uri, png = scoreboard.write_plot(store, title=config.name)
    table = scoreboard.text_table(scoreboard.overall(frame), scoreboard.OVERALL_COLUMNS)
    image = base64.b64encode(png).decode()
    create_markdown_artifact(
        markdown=(
            f"# {config.name}: how close the student is to the teacher\n\n"
            f"![relative score per round](data:image/png;base64,{image})\n\n"
            f"```\n{table}\n```\n\nSaved as `{uri}`.\n"
        ),
        key=_key(config, "scoreboard"),
        description="Relative score per round (overall, per category, 95% interval) and hard share",
    )
    return uri
