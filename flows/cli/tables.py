"""What the `lion` commands print: the tables of pools, scores and referee checks, and `--json`
objects, apart from the commands that gather them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from lion_core.config import LionConfig
    from lion_core.evaluation.referee_check import RefereeCheck
    from lion_core.run.records import StudentEvaluation
    from lion_core.run.store import RunStore


def pools_table(counts: dict[int, dict[str, int | None]]) -> str:
    """Rows per artifact (and the student's) per round, `-` where a round has none."""
    from lion_core.evaluation.scoreboard import aligned
    from lion_core.run.schemas import ARTIFACT_SCHEMAS

    names = [*ARTIFACT_SCHEMAS, "student"]
    header = ["round", *names]
    rows = [
        [str(k)] + ["-" if v[n] is None else str(v[n]) for n in names] for k, v in counts.items()
    ]
    return aligned(header, rows)


def print_scoreboard(root: str, options: dict | None, plot: bool = False) -> bool:
    """The relative score of every evaluated round (overall per set), and the last round's
    categories; with `plot`, (re)draw `<root>/evaluation.png`. False if nothing was evaluated."""
    from lion_core.evaluation import scoreboard
    from lion_core.run import layout
    from lion_core.run.store import RunStore

    store = RunStore.open(root, options)
    frame = scoreboard.evaluations(store)
    if frame.empty:
        return False
    typer.echo("\nrelative score (student ÷ teacher judge scores; 1.0 = teacher level):")
    typer.echo(scoreboard.printed(scoreboard.overall(frame)))
    loop = scoreboard.loop_table(store)
    if loop:
        typer.echo("\nthe referee's split (precision against the truth) and generation, per round:")
        typer.echo(loop)
    last = frame[(frame["round"] == frame["round"].max()) & (frame["level"] == "category")]
    columns = ("category", "relative_score", "wins", "ties", "losses", "unscored",
               "student_exact_match")  # fmt: skip
    for name, group in last.groupby("set", sort=False):
        typer.echo(f"\nround {int(group['round'].iloc[0])} by category, {name}:")
        typer.echo(scoreboard.text_table(group, columns))
    if plot:
        uri, _ = scoreboard.write_plot(store, title=root)
        typer.echo(f"\nplot: {uri}")
    else:
        typer.echo(f"\nplot: {store.uri(layout.EVALUATION_PLOT)}")
    return True


def print_model_evaluation(student: str, result: StudentEvaluation) -> None:
    """One model's relative score per set: overall, then per category, with its interval."""
    from lion_core.evaluation import scoreboard

    for evaluation in result.sets:
        typer.echo(f"{student} on {evaluation.set}:")
        frame = evaluation.summary.to_frame()
        frame["category"] = frame["category"].fillna("(overall)")
        columns = ("category", "relative_score", "interval_low", "interval_high", "wins", "ties",
                   "losses", "unscored", "questions", "student_exact_match")  # fmt: skip
        typer.echo(scoreboard.text_table(frame, columns) + "\n")


def eval_json(result: StudentEvaluation, store: RunStore) -> dict[str, Any]:
    """The first set's numbers at the top level (relative_score, by_category, wins, ties,
    losses, unscored, questions, ...), every set under `sets`, lm-eval rows under
    `benchmarks`."""
    sets = {e.set: e.summary.to_json() for e in result.sets}
    first = result.first()
    out = dict(sets[first.set]) if first else {}
    out["set"] = first.set if first else None
    out["sets"] = sets
    if result.benchmarks is not None:
        out["benchmarks"] = store.read_ref(result.benchmarks.table).to_dict(orient="records")
    return out


def print_referee_check(cfg: LionConfig, role: str, result: RefereeCheck) -> None:
    """The referee check's verdicts per degradation, its positional consistency and bias, the
    MT-Bench reference, and the requests it took."""
    from lion_core.evaluation.referee_check import MT_BENCH_REFERENCE, TABLE_HEADER, table_rows
    from lion_core.evaluation.scoreboard import aligned

    endpoint = cfg.endpoints()[role]
    typer.echo(
        f"{role} {endpoint.model} at {endpoint.base_url}: {result.instructions} instruction(s), "
        f"{result.teacher_failed} teacher answer(s) failed, {result.overall.pairs} known-order "
        "pairs, each scored in both orders"
    )
    typer.echo(aligned(TABLE_HEADER, table_rows(result)))
    skipped = {k: n for k, n in result.not_applicable.items() if n}
    if skipped:
        typer.echo("not applicable (no number, too short, ...): " + ", ".join(
            f"{k} {n}" for k, n in skipped.items()))  # fmt: skip
    overall = result.overall
    if overall.consistency is not None:
        typer.echo(
            f"\nsame verdict in both orders: {overall.consistency:.1%} of scored pairs "
            f"(flips {overall.flips:.1%}: {overall.favours_first:.1%} toward the answer shown "
            f"first, {overall.favours_second:.1%} toward the second)"
        )
    typer.echo(f"reference: {MT_BENCH_REFERENCE}")
    usage = ", ".join(
        f"{r} {u['requests']} sent / {u['cache_hits']} from cache" for r, u in result.usage.items()
    )
    typer.echo(f"requests: {usage}")
