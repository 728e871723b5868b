"""The `lion` command line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from lion_core.config import LionConfig
from lion_core.errors import LionError

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="lion-distill: Lion adversarial distillation as a Prefect DAG.",
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


RootArgument = Annotated[str, typer.Argument(help="A run's root: a folder or s3://bucket/prefix.")]
EndpointOption = Annotated[str | None, typer.Option(help="S3 endpoint (MinIO, moto, ...).")]


@app.command("serve-offline")
def serve_offline(
    host: Annotated[
        str, typer.Option(help="Interface to bind (keep it on loopback).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8765,
    config: Annotated[
        Path | None, typer.Option("-c", "--config", help="Take the `offline` section from here.")
    ] = None,
) -> None:
    """Run the offline task world: an OpenAI-compatible teacher, referee and generator."""
    from lion_core.offline.server import serve

    cfg = LionConfig.from_yaml(config) if config else LionConfig()
    serve(cfg.offline, host=host, port=port)


@app.command("pools")
def pools(
    root: RootArgument,
    endpoint_url: EndpointOption = None,
) -> None:
    """Print per-round row counts of every artifact of a run."""
    from lion_core.evaluation.scoreboard import aligned
    from lion_core.run.schemas import ARTIFACT_SCHEMAS
    from lion_core.run.store import RunStore

    options = {"endpoint_url": endpoint_url} if endpoint_url else {}
    store = RunStore.open(root, options)
    counts = store.counts()
    if not counts:
        _fail(f"no rounds under {store.storage.uri()}", 1)
    names = [*ARTIFACT_SCHEMAS, "student"]
    header = ["round", *names]
    rows = [
        [str(k)] + ["-" if v[n] is None else str(v[n]) for n in names] for k, v in counts.items()
    ]
    typer.echo(aligned(header, rows))


@app.command("export")
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
    endpoint_url: EndpointOption = None,
) -> None:
    """Write what round k's student was trained on — instruction, input and the teacher's
    answer as output — for other training tools."""
    from lion_core.run.export import FORMATS, export_round
    from lion_core.run.store import RunStore

    if format not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    store = RunStore.open(root, {"endpoint_url": endpoint_url} if endpoint_url else {})
    typer.echo(export_round(store, round, format, out))  # type: ignore[arg-type]


@app.command("config")
def config_cmd(
    path: Annotated[Path | None, typer.Argument(help="Config to validate.")] = None,
    write: Annotated[
        Path | None, typer.Option("--write", help="Write the default config here.")
    ] = None,
) -> None:
    """Validate a config file (prints it with defaults filled in), or write the defaults."""
    cfg = LionConfig.from_yaml(path) if path else LionConfig()
    if write:
        cfg.to_yaml(write)
        typer.echo(f"wrote {write}")
    else:
        typer.echo(cfg.to_yaml(), nl=False)


def _parse_sets(sets: list[str] | None) -> dict[str, object]:
    import yaml

    overrides: dict[str, object] = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--set expects KEY=VALUE with a dotted key, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


class _NoLionTracebacks(logging.Formatter):
    """Wraps the console's log formatter: a record that carries a LionError is shown without
    its traceback — its message names the field, file or row at fault, and the CLI prints it
    once more as its `error:` line. Any other exception keeps its traceback; Prefect's API log
    handler (the UI's logs) is a different handler and keeps every traceback."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and isinstance(record.exc_info[1], LionError):
            quiet = {"exc_info": None, "exc_text": None, "stack_info": None}
            record = logging.makeLogRecord({**record.__dict__, **quiet})
        return self.inner.format(record)


def _use_prefect() -> None:
    """Before anything talks to Prefect: with no PREFECT_API_URL, start its temporary server
    as a child that dies with this CLI (even on kill -9; flows/ephemeral.py); and keep the
    tracebacks of LionErrors (a task's, then its flow's) off the console."""
    from prefect.logging.handlers import PrefectConsoleHandler

    from flows.ephemeral import start_ephemeral_server

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(
            handler.formatter, _NoLionTracebacks
        ):
            handler.setFormatter(_NoLionTracebacks(handler.formatter))
    start_ephemeral_server()


def _run_flow(cfg: LionConfig) -> None:
    from lion_core.ops.preflight import preflight
    from tasks.runtime import secret_value

    # keys, endpoints, storage, initial data: in seconds, before Prefect (and torch) load
    report = preflight(cfg, secret_loader=secret_value)
    for warning in report.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    report.raise_for_problems()

    from flows.distill import lion_distill
    from flows.report import summary_table
    from lion_core.run.identity import open_run

    open_run(cfg)  # a root bound to another config is refused here, before any flow starts
    _use_prefect()
    typer.echo(f"lion: {cfg.rounds} round(s), run root {cfg.storage.root}")
    result = lion_distill(cfg)
    typer.echo("")
    typer.echo(summary_table(result.rounds))
    _print_scoreboard(result.root, cfg.storage.options)
    typer.echo(f"\npools and students under {result.root} (inspect: lion pools {result.root})")


def _print_scoreboard(root: str, options: dict | None, plot: bool = False) -> bool:
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


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a field: --set training.epochs=1 (repeatable)."),
]


@app.command("run")
def run(
    config: Annotated[Path, typer.Option("-c", "--config", help="The run's YAML config.")],
    set_: SetOption = None,
) -> None:
    """Run `rounds` Lion rounds as a Prefect flow, with any config."""
    cfg = LionConfig.from_yaml(config)
    if set_:
        cfg = cfg.with_overrides(_parse_sets(set_))
    _run_flow(cfg)


@app.command("demo")
def demo(
    rounds: Annotated[int, typer.Option(help="Lion rounds to run.")] = 3,
    data_dir: Annotated[
        str | None,
        typer.Option(
            help="The run's root (a folder, or s3://bucket/prefix). Default: lion-runs/demo; "
            "with --write-config, lion-runs/<the file's name>, a root of its own."
        ),
    ] = None,
    write_config: Annotated[
        Path | None,
        typer.Option(help="Only write the demo's full config as YAML here, to start from."),
    ] = None,
    set_: SetOption = None,
) -> None:
    """Run the embedded default end to end: offline world, tiny student, local storage,
    ephemeral Prefect."""
    from lion_core.config.presets import demo_config

    if data_dir is None:
        # a written config is for a new experiment: it must not reuse the demo's root (bound to
        # the demo's config by run.json, so any edit would be refused there)
        data_dir = f"lion-runs/{write_config.stem}" if write_config else "lion-runs/demo"
    cfg = demo_config(root=data_dir, rounds=rounds)
    if set_:
        cfg = cfg.with_overrides(_parse_sets(set_))
    if write_config:
        cfg.to_yaml(write_config)
        typer.echo(
            f"wrote {write_config} (storage.root {cfg.storage.root}); run it with: "
            f"lion run -c {write_config}"
        )
        return
    _run_flow(cfg)


@app.command("resume")
def resume(
    target: Annotated[
        str, typer.Argument(help="A run's root (folder or s3:// URI), or a Prefect flow-run id.")
    ],
    endpoint_url: EndpointOption = None,
) -> None:
    """Re-run a failed run with its recorded config: every finished task comes from cache,
    every answered LLM request from the response cache, training from its checkpoint."""
    cfg = _resume_config(target, {"endpoint_url": endpoint_url} if endpoint_url else None)
    _run_flow(cfg)


@app.command("report")
def report(
    root: RootArgument,
    endpoint_url: EndpointOption = None,
) -> None:
    """Print every evaluated round's relative score and write `<root>/evaluation.png`."""
    options = {"endpoint_url": endpoint_url} if endpoint_url else {}
    if not _print_scoreboard(root, options, plot=True):
        _fail(f"no evaluation results under {root}: set evaluation.sets, or run lion eval", 1)


@app.command("eval")
def eval_cmd(
    root: Annotated[
        str | None,
        typer.Argument(help="A run's root: evaluate every round's student on its sets."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("-c", "--config", help="Config (endpoints, judge, storage).")
    ] = None,
    student: Annotated[
        str | None, typer.Option(help="A model folder, URI or hub id to evaluate (with -c).")
    ] = None,
    questions: Annotated[
        list[str] | None,
        typer.Option(help="Question set (file or 'offline'); repeatable. Default: the config's."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    endpoint_url: EndpointOption = None,
    set_: SetOption = None,
) -> None:
    """Judge students against the teacher: `lion eval ROOT` (every round of a run, round 0
    included) or `lion eval -c CONFIG --student PATH --questions FILE` (one model)."""
    import json

    from flows.evaluate import lion_evaluate
    from lion_core.run import layout
    from lion_core.run.identity import recorded_config
    from lion_core.run.store import RunStore
    from lion_core.student.checkpoints import is_complete

    if (root is None) == (config is None):
        _fail("give a run root, or -c CONFIG with --student")
    if root is not None:
        cfg = recorded_config(root, {"endpoint_url": endpoint_url} if endpoint_url else None)
        store = RunStore.open(cfg.storage.root, cfg.storage.options)
        rounds = [k for k in store.rounds() if is_complete(store.storage, layout.student(k))]
        if not rounds:
            _fail(f"no trained student under {store.uri()}", 1)
        if not (questions or cfg.evaluation.sets):
            _fail("the run has no evaluation.sets: pass --questions FILE")
        _use_prefect()
        results = {
            str(k): lion_evaluate(cfg, store.uri(layout.student(k)), k, sets=questions)
            for k in rounds
        }
        if json_out:
            rounds_json = {k: _eval_json(r, store) for k, r in results.items()}
            typer.echo(json.dumps({"rounds": rounds_json}))
        else:
            _print_scoreboard(cfg.storage.root, cfg.storage.options, plot=True)
        return
    if not student:
        _fail("--student is required with -c")
    cfg = LionConfig.from_yaml(config)
    if set_:
        cfg = cfg.with_overrides(_parse_sets(set_))
    if not (questions or cfg.evaluation.sets):
        _fail("no question set: pass --questions FILE (or set evaluation.sets)")
    _use_prefect()
    result = lion_evaluate(cfg, student, None, sets=questions)
    if json_out:
        store = RunStore.open(cfg.storage.root, cfg.storage.options)
        typer.echo(json.dumps(_eval_json(result, store)))
        return
    from lion_core.evaluation import scoreboard

    for evaluation in result.sets:
        typer.echo(f"{student} on {evaluation.set}:")
        frame = evaluation.summary.to_frame()
        frame["category"] = frame["category"].fillna("(overall)")
        columns = ("category", "relative_score", "interval_low", "interval_high", "wins", "ties",
                   "losses", "unscored", "questions", "student_exact_match")  # fmt: skip
        typer.echo(scoreboard.text_table(frame, columns) + "\n")


def _eval_json(result, store) -> dict:
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


@app.command("ablate")
def ablate(
    config: Annotated[Path, typer.Option("-c", "--config", help="The run's YAML config.")],
    arms: Annotated[
        str, typer.Option(help="Comma-separated arms: lion, uniform, uniform-cost, seed-only.")
    ] = "lion,uniform,uniform-cost,seed-only",
    seeds: Annotated[int, typer.Option(help="Seeds per arm (seed, seed+1, ...).")] = 3,
    root: Annotated[
        str | None, typer.Option(help="Where the arms' runs go; default <storage.root>-ablation.")
    ] = None,
    set_: SetOption = None,
) -> None:
    """Lion against its ablations at equal budget: each arm and seed a normal run (sharing one
    response cache), then the table of relative score per arm and round over seeds."""
    from flows.ablate import lion_ablate
    from lion_core.evaluation.ablation import ARMS

    cfg = LionConfig.from_yaml(config)
    if set_:
        cfg = cfg.with_overrides(_parse_sets(set_))
    chosen = [a.strip() for a in arms.split(",") if a.strip()]
    unknown = sorted(set(chosen) - set(ARMS))
    if unknown or not chosen:
        _fail(f"--arms: unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    if not cfg.evaluation.sets:
        _fail("the ablation compares evaluations: set evaluation.sets (e.g. [offline])")
    root = root or f"{cfg.storage.root.rstrip('/')}-ablation"
    typer.echo(f"lion ablate: arms {', '.join(chosen)}, {seeds} seed(s), under {root}")
    typer.echo(lion_ablate(cfg, root, chosen, seeds))


def _resume_config(target: str, options: dict[str, str] | None) -> LionConfig:
    import uuid

    from lion_core.run.identity import recorded_config

    try:
        run_id = uuid.UUID(target)
    except ValueError:
        return recorded_config(target, options)
    from prefect.client.orchestration import get_client

    _use_prefect()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
    params = flow_run.parameters or {}
    if "config" not in params:
        _fail(f"flow run {run_id} has no 'config' parameter: not a lion run")
    return LionConfig.from_dict(params["config"], source=f"flow run {run_id}")


@app.command("referee-check")
def referee_check(
    config: Annotated[Path, typer.Option("-c", "--config", help="The run's YAML config.")],
    pairs: Annotated[
        int,
        typer.Option(
            "--pairs",
            min=1,
            help="Seed instructions to check on; each gives up to 5 known-order pairs "
            "(teacher: one request each; referee: two per pair).",
        ),
    ] = 20,
    role: Annotated[
        str, typer.Option(help="Which scorer to check: 'referee' or 'judge' (evaluation).")
    ] = "referee",
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Do not use the run's response cache.")
    ] = False,
    set_: SetOption = None,
) -> None:
    """Check the configured referee on answer pairs of KNOWN order before paying for a run: the
    teacher's answer against degraded copies (truncated, a wrong number, empty, another
    question's answer, a false final claim), scored in both orders. Reports agreement with the
    known order, positional consistency, the positional bias, ties and unscored pairs."""
    import json

    from lion_core.evaluation.referee_check import (
        MT_BENCH_REFERENCE,
        TABLE_HEADER,
        run_referee_check,
        table_rows,
    )
    from lion_core.evaluation.scoreboard import aligned
    from tasks.runtime import api_key

    if role not in ("referee", "judge"):
        _fail(f"--role must be 'referee' or 'judge', got {role!r}")
    cfg = LionConfig.from_yaml(config)
    if set_:
        cfg = cfg.with_overrides(_parse_sets(set_))
    keys = {r: api_key(cfg, r) for r in ("teacher", role)}
    result = run_referee_check(cfg, pairs, role=role, cache=not no_cache, api_keys=keys)
    if json_out:
        typer.echo(json.dumps(result.to_json()))
        return
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


@app.command("estimate")
def estimate_cmd(
    config: Annotated[Path, typer.Option("-c", "--config", help="The run's YAML config.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    set_: SetOption = None,
) -> None:
    """Before a run: requests, tokens and cost per role and round, sync and batch (round 1
    exact in requests; later rounds projected; config `pricing`)."""
    import json

    from lion_core.ops.estimate import estimate_run, text_table

    cfg = LionConfig.from_yaml(config)
    if set_:
        cfg = cfg.with_overrides(_parse_sets(set_))
    result = estimate_run(cfg)
    typer.echo(json.dumps(result.to_json()) if json_out else text_table(result))


@app.command("serve-student")
def serve_student(
    model: Annotated[
        str, typer.Argument(help="A model folder (a round's student/), URI or hub id.")
    ],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8000,
    served_model_name: Annotated[
        str, typer.Option(help="The model name clients send.")
    ] = "student",
    config: Annotated[
        Path | None,
        typer.Option("-c", "--config", help="Take the student and storage sections from here."),
    ] = None,
    template: Annotated[
        str | None, typer.Option(help="Prompt template of chat requests: alpaca or chat_template.")
    ] = None,
    token_budget: Annotated[int | None, typer.Option(help="Tokens per generation batch.")] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 (default: a GPU if any).")
    ] = None,
) -> None:
    """Serve a student over the OpenAI API (completions, chat, models) with batched HF
    generation: for CPU users, tests, and chatting with a round's student from any client."""
    from lion_core.student import server

    argv = [model, "--host", host, "--port", str(port), "--served-model-name", served_model_name]
    for flag, value in (("--config", config), ("--template", template),
                        ("--token-budget", token_budget), ("--device", device)):  # fmt: skip
        if value is not None:
            argv += [flag, str(value)]
    server.main(argv)


def main() -> None:
    try:
        app()
    except LionError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
