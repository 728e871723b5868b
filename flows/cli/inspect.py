"""`lion pools`, `lion export`, `lion report` and `lion eval`: what a run made — its artifacts,
its training data for other tools, and its students' scores against the teacher."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from flows.cli.bootstrap import use_prefect
from flows.cli.options import (
    EndpointOption,
    JsonOption,
    RootArgument,
    SetOption,
    fail,
    load_config,
    storage_options,
)
from flows.cli.tables import eval_json, pools_table, print_model_evaluation, print_scoreboard
from lion_core.config import LionConfig


def pools(root: RootArgument, endpoint_url: EndpointOption = None) -> None:
    """Print per-round row counts of every artifact of a run."""
    from lion_core.run.store import RunStore

    store = RunStore.open(root, storage_options(endpoint_url))
    counts = store.counts()
    if not counts:
        fail(f"no rounds under {store.storage.uri()}", 1)
    typer.echo(pools_table(counts))


def export(
    root: RootArgument,
    round: Annotated[int, typer.Option("--round", min=1, help="The round whose data to export.")],
    format: Annotated[
        str, typer.Option("--format", help="alpaca (JSON), sharegpt (JSON) or parquet.")
    ] = "alpaca",
    out: Annotated[
        str | None,
        typer.Option(help="Where to write (path or URI); default round=<k>/export/ in the run."),
    ] = None,
    card: Annotated[
        bool,
        typer.Option(
            "--card/--no-card",
            help="Write the dataset card (README.md, Hugging Face format) beside the data.",
        ),
    ] = True,
    endpoint_url: EndpointOption = None,
) -> None:
    """Write what round k's student was trained on — instruction, input and the teacher's
    answer as output — for other training tools, with its dataset card (README.md: the source
    run, models, filters and thresholds, counts, decontamination; the license left to you).
    Prints the data's URI, then the card's."""
    import posixpath

    from lion_core.run.export import CARD, FORMATS, export_round
    from lion_core.run.store import RunStore

    if format not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    store = RunStore.open(root, storage_options(endpoint_url))
    uri = export_round(store, round, format, out, card=card)  # type: ignore[arg-type]
    typer.echo(uri)
    if card:
        typer.echo(f"dataset card: {posixpath.join(posixpath.dirname(uri), CARD)}")


def report(
    root: RootArgument,
    round: Annotated[
        int | None,
        typer.Option("--round", min=1, help="Only this round's report (default: every round)."),
    ] = None,
    open_: Annotated[
        bool, typer.Option("--open", help="Open the (last) report in a web browser.")
    ] = False,
    endpoint_url: EndpointOption = None,
) -> None:
    """Write each finished round's report (`round=<k>/report.html`: what the referee judged,
    what the generator made from each seed, what the filters dropped) and print where; print
    every evaluated round's relative score and write `<root>/evaluation.png`."""
    from lion_core.errors import LionError
    from lion_core.run.identity import recorded_config
    from lion_core.run.report import write_report
    from lion_core.run.store import RunStore

    options = storage_options(endpoint_url)
    store = RunStore.open(root, options)
    finished = [k for k in store.rounds() if store.read_round_summary(k) is not None]
    if round is not None and round not in finished:
        fail(f"round {round} has not finished under {store.uri()} (no summary.json)", 1)
    written = []
    if finished:
        try:
            cfg = recorded_config(root, options)
        except LionError as exc:
            fail(str(exc), 1)
        store = RunStore.open(cfg.storage.root, cfg.storage.options)
        for k in [round] if round is not None else finished:
            written.append(write_report(store, k, cfg))
            typer.echo(f"round {k} report: {written[-1]}")
    scored = print_scoreboard(root, options, plot=True)
    if not written and not scored:
        fail(f"no finished round and no evaluation results under {root}", 1)
    if open_ and written:
        _open_in_browser(store, written[-1])


def _open_in_browser(store, uri: str) -> None:
    """Open a report: a local file as it is, a remote one (s3://) from a local copy."""
    import tempfile
    import webbrowser
    from pathlib import Path

    if "://" in uri:
        rel = uri.removeprefix(store.uri()).lstrip("/")
        local = Path(tempfile.mkdtemp(prefix="lion-report-")) / Path(rel).name
        local.write_bytes(store.storage.read_bytes(rel))
        typer.echo(f"a local copy: {local}")
        uri = str(local)
    if not webbrowser.open(Path(uri).resolve().as_uri()):
        typer.echo("no web browser found here: open the file above in one")


def eval_cmd(
    root: Annotated[
        str | None,
        typer.Argument(help="A run's root: evaluate every round's student on its sets."),
    ] = None,
    config: Annotated[
        str | None, typer.Option("-c", "--config", help="Config (endpoints, judge, storage).")
    ] = None,
    student: Annotated[
        str | None, typer.Option(help="A model folder, URI or hub id to evaluate (with -c).")
    ] = None,
    questions: Annotated[
        list[str] | None,
        typer.Option(help="Question set (file or 'offline'); repeatable. Default: the config's."),
    ] = None,
    json_out: JsonOption = False,
    endpoint_url: EndpointOption = None,
    set_: SetOption = None,
) -> None:
    """Judge students against the teacher: `lion eval ROOT` (every round of a run, round 0
    included) or `lion eval -c CONFIG --student PATH --questions FILE` (one model)."""
    if (root is None) == (config is None):
        fail("give a run root, or -c CONFIG with --student")
    if root is not None:
        _eval_run(root, questions, json_out, endpoint_url)
        return
    if not student:
        fail("--student is required with -c")
    _eval_model(load_config(config, set_), student, questions, json_out)


def _eval_run(
    root: str, questions: list[str] | None, json_out: bool, endpoint_url: str | None
) -> None:
    """`lion eval ROOT`: every round whose student finished training, on the run's sets."""
    from flows.evaluate import lion_evaluate
    from lion_core.run import layout
    from lion_core.run.identity import recorded_config
    from lion_core.run.store import RunStore
    from lion_core.student.checkpoints import is_complete

    cfg = recorded_config(root, storage_options(endpoint_url))
    store = RunStore.open(cfg.storage.root, cfg.storage.options)
    rounds = [k for k in store.rounds() if is_complete(store.storage, layout.student(k))]
    if not rounds:
        fail(f"no trained student under {store.uri()}", 1)
    if not (questions or cfg.evaluation.sets):
        fail("the run has no evaluation.sets: pass --questions FILE")
    use_prefect()
    results = {
        str(k): lion_evaluate(cfg, store.uri(layout.student(k)), k, sets=questions) for k in rounds
    }
    if json_out:
        rounds_json = {k: eval_json(r, store) for k, r in results.items()}
        typer.echo(json.dumps({"rounds": rounds_json}))
    else:
        print_scoreboard(cfg.storage.root, cfg.storage.options, plot=True)


def _eval_model(cfg: LionConfig, student: str, questions: list[str] | None, json_out: bool) -> None:
    """`lion eval -c CONFIG --student PATH`: one model, outside any run's rounds."""
    from flows.evaluate import lion_evaluate
    from lion_core.run.store import RunStore

    if not (questions or cfg.evaluation.sets):
        fail("no question set: pass --questions FILE (or set evaluation.sets)")
    use_prefect()
    result = lion_evaluate(cfg, student, None, sets=questions)
    if json_out:
        store = RunStore.open(cfg.storage.root, cfg.storage.options)
        typer.echo(json.dumps(eval_json(result, store)))
        return
    print_model_evaluation(student, result)
