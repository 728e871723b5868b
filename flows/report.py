"""Per-round summaries, and their Prefect artifacts: a table and a markdown sample of hard
instructions with both answers and the referee's reasons."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lion_core.config import LionConfig
from lion_core.evaluation import scoreboard
from lion_core.run.records import (
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
from lion_core.run.report import write_report
from lion_core.run.schemas import ArtifactRef
from tasks.runtime.store import run_store


def round_summary(
    round: int,
    *,
    pools: Pools,
    next_pools: Pools,
    teacher: TeacherAnswers,
    student: str,
    reviews: Sequence[RefereeReviews],
    split: Split | None,
    found: Sequence[Candidates],
    new: NewInstructions | None,
    seconds: dict[str, float],
    run: str | None = None,
) -> RoundSummary:
    """The round's summary, from the records its tasks returned (an ablation arm returns no
    reviews, and `seed-only` no split or new instructions). `run`: this round's flow run id;
    requests of task results cached from another run count as answered from cache, not
    sent."""
    stats = split.stats if split is not None else None
    return RoundSummary(
        round=round,
        train_pool=pools.train.rows,
        cache_pool=pools.cache.rows,
        teacher_failed=teacher.failed,
        hard=stats.hard if stats else 0,
        easy=stats.easy if stats else 0,
        unscored=stats.unscored if stats else 0,
        teacher_score=stats.mean_teacher_score if stats else None,
        student_score=stats.mean_student_score if stats else None,
        student_to_teacher=stats.score_ratio if stats else None,
        positional_bias=stats.positional_bias if stats else None,
        new_instructions=new.kept if new else 0,
        next_train_pool=next_pools.train.rows,
        student=student,
        diversity=new.diversity if new else None,
        teacher_health=teacher.health,
        generated_health=new.domain if new else None,
        usage={
            "teacher": teacher.usage.seen_from(run),
            "referee": sum((r.usage.seen_from(run) for r in reviews), Usage(run=run)),
            "generator": sum(
                (u.seen_from(run) for u in [*(c.usage for c in found), new and new.usage] if u),
                Usage(run=run),
            ),
        },
        hard_precision=stats.hard_precision if stats else None,
        easy_precision=stats.easy_precision if stats else None,
        new_wanted=new.wanted if new else None,
        new_shortfall=sum(new.shortfall.values()) if new and new.shortfall is not None else None,
        seeds_decontamination=pools.decontamination,
        decontamination=new.decontamination if new else None,
        seconds=seconds,
    )


def artifact_key(config: LionConfig, suffix: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""

    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")

    return f"{slug(config.name) or 'lion'}-{slug(suffix)}"


def publish_round(
    config: LionConfig,
    summary: RoundSummary,
    hard: ArtifactRef | None,
    referee: ArtifactRef | None,
    sample: int = 5,
) -> None:
    """The round's summary.json, its report (round=<k>/report.html), its table artifact and a
    markdown sample of hard instructions, both naming the report."""
    round = summary.round
    store = run_store(config)
    store.write_round_summary(round, summary.model_dump(mode="json"))
    report = write_report(store, round, config)
    table = [{"metric": k, "value": scoreboard.cell(v)} for k, v in summary.flat().items()]
    table.append({"metric": "report", "value": report})
    create_table_artifact(
        table=table,
        key=artifact_key(config, f"round-{round}"),
        description=f"Lion round {round}: pools, hard/easy split, scores, generation diversity, "
        "usage, wall time",
    )
    if hard is None or referee is None:  # an ablation arm: no referee, no hard instructions
        return
    hard_rows = store.read_ref(hard).sort_values("gap", ascending=False).head(sample)
    reviews = store.read_ref(referee).set_index("instruction_id")
    parts = [
        f"# Round {round}: hardest instructions\n",
        f"The whole round — every judged instruction, both orders, each seed's generated "
        f"children and the novelty filter's nearest neighbours: [{report}]({_file_link(report)})"
        " (one self-contained page; open it in a browser).\n",
    ]
    health = summary.teacher_health
    if health is not None:
        problems = health.problems(config.data_health.warn_share)
        parts.append(
            f"Teacher answers: {health.answers}; refusals {health.share(health.refusals):.0%}, "
            f"identical {health.share(health.identical):.0%}, empty "
            f"{health.share(health.empty):.0%}"
            + ("".join(f"\n- **warning:** {p}" for p in problems) if problems else "")
            + "\n"
        )
    domain = summary.generated_health
    if domain is not None:
        problems = domain.problems(config.data_health.far_warn_share)
        parts.append(
            f"New instructions: {domain.new}; far from every seed's domain "
            f"{domain.far_share:.0%} (ROUGE-L F1 at most {domain.threshold:g})"
            + "".join(f"\n- **warning:** {p}" for p in problems)
            + "\n"
        )
    if hard_rows.empty:
        parts.append("No hard instructions this round.\n")
    for row in hard_rows.itertuples(index=False):
        review = reviews.loc[row.instruction_id] if row.instruction_id in reviews.index else None
        given = f"> {_quote(row.input)}\n\n" if isinstance(row.input, str) and row.input else ""
        parts.append(
            f"## {_heading(row.instruction)}\n\n{given}"
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
        key=artifact_key(config, f"round-{round}-hard-sample"),
        description=f"Lion round {round}: a sample of hard instructions",
    )


def _file_link(uri: str) -> str:
    """A link to the report: a local path as a file:// URL, any other URI as it is."""
    if "://" in uri:
        return uri
    return Path(uri).resolve().as_uri()


def _heading(text: str, limit: int = 120) -> str:
    """`text` on one line, cut at a word boundary when longer than `limit`."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return f"{cut or text[:limit]} …"


def _quote(text: Any, limit: int = 600) -> str:
    text = "" if text is None else str(text)
    text = text if len(text) <= limit else text[:limit] + " …"
    return text.replace("\n", " ")


# The per-round summary as four tables of one row per round, each under 100 columns wide:
# pools and scores; what the round produced, the evaluation and what it cost; requests per role
# (sent to the endpoint, answered from the cache); the split's precision and generation.
SUMMARY_TABLES = (
    (
        "round",
        "train_pool",
        "cache_pool",
        "hard",
        "easy",
        "teacher_score",
        "student_score",
        "student_to_teacher",
    ),
    (
        "round",
        "unscored",
        "new_instructions",
        "next_train_pool",
        "relative_score",
        "student_exact_match",
        "cost_usd",
    ),
    (
        "round",
        "teacher_sent",
        "teacher_cached",
        "referee_sent",
        "referee_cached",
        "generator_sent",
        "generator_cached",
    ),
    # the referee's split against the truth (where known), generation's spread and shortfall,
    # and the instructions the decontamination gate dropped (seeds and new; - without sets)
    (
        "round",
        "hard_share",
        "hard_prec",
        "easy_prec",
        "shortfall",
        "largest",
        "largest_share",
        "contaminated",
    ),
)
SUMMARY_COLUMNS = tuple(dict.fromkeys(c for table in SUMMARY_TABLES for c in table))


# Short headers of the last table: header -> RoundSummary.flat() key.
SHORT = {
    "hard_prec": "hard_precision",
    "easy_prec": "easy_precision",
    "shortfall": "new_shortfall",
    "largest_share": "top_category_share",
}


def _columns(summary: RoundSummary) -> dict[str, str]:
    flat = summary.flat()
    # the largest category of the new instructions, by name alone (its basis is in the artifact)
    flat["largest"] = summary.diversity.top_category if summary.diversity else None
    return {c: scoreboard.cell(flat.get(SHORT.get(c, c))) for c in SUMMARY_COLUMNS}


def summary_table(rounds: Sequence[RoundSummary]) -> str:
    """The per-round tables the CLI prints, a blank line apart."""
    cells = [_columns(r) for r in rounds]
    return "\n\n".join(
        scoreboard.aligned(columns, [[row[c] for c in columns] for row in cells])
        for columns in SUMMARY_TABLES
    )


def requests_line(summary: RoundSummary) -> str:
    """'requests sent (answered from cache): teacher 16 (0), referee 32 (0), generator 18 (0)'"""
    usage = ", ".join(f"{role} {u.requests} ({u.cache_hits})" for role, u in summary.usage.items())
    return f"requests sent (answered from cache): {usage}"


def summary_line(rounds: Sequence[RoundSummary]) -> str:
    """The run in one line, labelled and rounded (what the flow logs; the CLI prints the
    tables)."""
    if not rounds:
        return "no rounds"
    last = rounds[-1]
    sent = {
        role: sum(r.usage[role].requests for r in rounds if role in r.usage) for role in last.usage
    }
    cell = scoreboard.cell
    parts = [
        f"{len(rounds)} round(s)",
        f"round {last.round}: student_to_teacher {cell(last.student_to_teacher)}",
        f"relative_score {cell(last.relative_score)}",
        "requests sent " + ", ".join(f"{role} {n}" for role, n in sent.items()),
    ]
    return "; ".join(parts)


def publish_run(config: LionConfig, rounds: Sequence[RoundSummary]) -> None:
    create_table_artifact(
        table=[_columns(r) for r in rounds],
        key=artifact_key(config, "summary"),
        description=f"Lion run {config.name}: one row per round",
    )


def publish_evaluation(config: LionConfig, evaluation: StudentEvaluation) -> None:
    """A table artifact per question set: the overall numbers, then each category."""
    label = "model" if evaluation.round is None else f"round-{evaluation.round}"
    for result in evaluation.sets:
        frame = result.summary.to_frame()
        create_table_artifact(
            table=[
                {c: scoreboard.cell(v) for c, v in row.items()}
                for row in frame.to_dict(orient="records")
            ],
            key=artifact_key(config, f"eval-{label}-{result.set}"),
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
        key=artifact_key(config, "scoreboard"),
        description="Relative score per round (overall, per category, 95% interval) and hard share",
    )
    return uri
