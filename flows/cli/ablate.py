"""`lion ablate`: Lion against its ablation arms at equal budget (flows/ablate.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.options import ConfigOption, SetOption, fail, load_config


def ablate(
    config: ConfigOption,
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

    cfg = load_config(config, set_)
    chosen = [a.strip() for a in arms.split(",") if a.strip()]
    unknown = sorted(set(chosen) - set(ARMS))
    if unknown or not chosen:
        fail(f"--arms: unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    if not cfg.evaluation.sets:
        fail("the ablation compares evaluations: set evaluation.sets (e.g. [offline])")
    root = root or f"{cfg.storage.root.rstrip('/')}-ablation"
    typer.echo(f"lion ablate: arms {', '.join(chosen)}, {seeds} seed(s), under {root}")
    typer.echo(lion_ablate(cfg, root, chosen, seeds))
