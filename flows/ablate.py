"""Lion against its controls at equal budget: each arm × seed a normal `lion-distill` run."""

from __future__ import annotations

import base64

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import use_run_storage
from flows.distill import lion_distill
from flows.report import artifact_key
from lion_core.config import LionConfig
from lion_core.evaluation import ablation
from lion_core.run import layout
from lion_core.run.storage import Storage
from lion_core.run.store import RunStore

DEFAULT_CONFIG = LionConfig()


@flow(name="lion-ablate", persist_result=True)
def lion_ablate(
    config: LionConfig = DEFAULT_CONFIG,
    root: str = "lion-runs/ablation",
    arms: list[str] = list(ablation.ARMS),  # noqa: B006 (Prefect parameters are copied)
    seeds: int = 3,
) -> str:
    """Run `config` as each of `arms` ('lion', 'uniform', 'uniform-cost', 'seed-only') with
    `seeds` seeds, each under `<root>/<arm>/seed=<i>`, sharing one response cache; then write
    the table (`<root>/ablation.parquet`: arm × round × category, mean and 95% interval over
    seeds of the relative score and the student's exact match), Lion's paired differences
    (`ablation_paired.parquet`), each run's USD (`ablation_costs.parquet`) and the plot
    (`<root>/ablation.png`), and publish them as an artifact. `uniform-cost` runs after the
    seed's `lion` run: its extra new instructions per round spend what Lion's referee cost.
    Returns the markdown tables."""
    use_run_storage(config.with_overrides({"storage.root": root}))
    log = get_run_logger()
    order = sorted(arms, key=lambda a: a == "uniform-cost")  # after lion, whose cost it matches
    if "uniform-cost" in arms and "lion" not in arms:
        raise ValueError("the uniform-cost arm spends what the lion arm spent: run both")
    for i in range(seeds):
        for arm in order:
            extra = 0
            if arm == "uniform-cost":
                lion = ablation.arm_config(config, root, "lion", i)
                lion_rounds = ablation.summaries(
                    RunStore.open(lion.storage.root, lion.storage.options)
                )
                payer = Storage(lion.storage.root, lion.storage.options).uri()  # as recorded
                prices = ablation.unit_prices(Storage(root, config.storage.options), payer)
                extra = ablation.equal_cost_extra(lion_rounds, prices, config.rounds)
            cfg = ablation.arm_config(config, root, arm, i, extra)
            log.info("arm %s, seed %d: %s", arm, i, cfg.storage.root)
            lion_distill(cfg)
    rows = ablation.results(config, root, arms, seeds)
    summary = pd.concat(
        [ablation.table(rows, m) for m in ("relative_score", "student_exact_match")],
        ignore_index=True,
    )
    diffs = ablation.paired(rows)
    cost = ablation.costs(config, root, arms, seeds)
    storage = Storage(root, config.storage.options)
    storage.write_bytes(layout.ABLATION_TABLE, summary.to_parquet(index=False), overwrite=True)
    storage.write_bytes(layout.ABLATION_PAIRED, diffs.to_parquet(index=False), overwrite=True)
    storage.write_bytes(layout.ABLATION_COSTS, cost.to_parquet(index=False), overwrite=True)
    png = ablation.plot(summary)
    uri = storage.write_bytes(layout.ABLATION_PLOT, png, overwrite=True)
    text = "\n\n".join(
        part
        for part in (
            ablation.overall_text(summary),
            ablation.paired_text(diffs),
            ablation.cost_text(rows, cost),
        )
        if part
    )
    create_markdown_artifact(
        markdown=(
            f"# {config.name}: Lion against its ablations\n\n"
            f"![relative score per arm](data:image/png;base64,{base64.b64encode(png).decode()})"
            f"\n\nMean relative score over {seeds} seed(s) [95% interval]:\n\n{text}\n\n"
            f"Saved under `{storage.uri()}` (`ablation.parquet`, `{uri}`).\n"
        ),
        key=artifact_key(config, "ablation"),
        description="Relative score per round for each arm, mean and 95% interval over seeds",
    )
    log.info("ablation table:\n%s", text)
    return text
