"""`lion serve-offline` and `lion serve-student`: OpenAI-compatible servers for any client —
the offline task world, and a round's student."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.options import load_config


def serve_offline(
    host: Annotated[
        str, typer.Option(help="Interface to bind (keep it on loopback).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8765,
    config: Annotated[
        str | None, typer.Option("-c", "--config", help="Take the `offline` section from here.")
    ] = None,
) -> None:
    """Run the offline task world: an OpenAI-compatible teacher, referee and generator."""
    from lion_core.offline.server import serve

    serve(load_config(config).offline, host=host, port=port)


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
        str | None,
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
