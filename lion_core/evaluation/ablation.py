"""The ablation table: Lion's loop against its controls, over seeds, round by round.

Each arm × seed is an ordinary run under its own root (`<root>/<arm>/seed=<i>`); this module
only reads what their evaluations committed (`lion_core.evaluation.scoreboard`) and
aggregates: per arm, round and category, the mean over seeds and a 95% interval (Student's t
over the seeds).
"""

from __future__ import annotations

import io
import math

import pandas as pd

from lion_core.config import LionConfig
from lion_core.evaluation import scoreboard
from lion_core.run.store import RunStore

ARMS = ("lion", "uniform", "seed-only")

# Two-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: the normal's).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


def arm_config(config: LionConfig, root: str, arm: str, index: int) -> LionConfig:
    """Arm `arm`'s run with seed number `index`: its own root, seed and name; the response
    cache shared by every arm (identical requests are paid once)."""
    return config.with_overrides(
        {
            "arm": arm,
            "seed": config.seed + index,
            "name": f"{config.name}-{arm}-s{index}",
            "storage.root": f"{root.rstrip('/')}/{arm}/seed={index}",
            "storage.shared_llm_cache": root,
        }
    )


def results(config: LionConfig, root: str, arms: list[str], seeds: int) -> pd.DataFrame:
    """Every evaluated round of every arm and seed: scoreboard rows plus `arm` and `seed`."""
    frames = []
    for arm in arms:
        for i in range(seeds):
            cfg = arm_config(config, root, arm, i)
            frame = scoreboard.evaluations(RunStore.open(cfg.storage.root, cfg.storage.options))
            frames.append(frame.assign(arm=arm, seed=i))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _t95(df: int) -> float:
    keys = [k for k in _T95 if k <= df]
    return _T95[max(keys)] if df <= 30 else 1.96


def table(rows: pd.DataFrame, metric: str = "relative_score") -> pd.DataFrame:
    """Mean and 95% interval over seeds of `metric`, per arm, round, level and category."""
    keys = ["arm", "round", "set", "level", "category"]
    rows = rows.assign(category=rows["category"].fillna("(overall)"))
    out = []
    for key, group in rows.groupby(keys, sort=False, dropna=False):
        values = group[metric].dropna().astype(float)
        n = len(values)
        mean = float(values.mean()) if n else math.nan
        half = _t95(n - 1) * float(values.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
        out.append({**dict(zip(keys, key, strict=True)), "metric": metric, "seeds": n,
                    "mean": mean, "low": mean - half, "high": mean + half})  # fmt: skip
    return pd.DataFrame(out)


def overall_text(summary: pd.DataFrame) -> str:
    """Arm × round: mean relative score [95% interval] over seeds, as a markdown table."""
    top = summary[(summary["level"] == "overall") & (summary["metric"] == "relative_score")]
    rounds = sorted(top["round"].unique())
    lines = ["| arm | " + " | ".join(f"round {k}" for k in rounds) + " |",
             "|---|" + "---|" * len(rounds)]  # fmt: skip
    for arm, group in top.groupby("arm", sort=False):
        by_round = group.set_index("round")
        cells = []
        for k in rounds:
            if k not in by_round.index:
                cells.append("-")
                continue
            r = by_round.loc[k]
            interval = "" if math.isnan(r["low"]) else f" [{r['low']:.3f}, {r['high']:.3f}]"
            cells.append(f"{r['mean']:.3f}{interval}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: pd.DataFrame, title: str = "") -> bytes:
    """PNG: mean relative score per round for each arm, with its 95% interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = summary[(summary["level"] == "overall") & (summary["metric"] == "relative_score")]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm, group in top.groupby("arm", sort=False):
        group = group.sort_values("round")
        ax.plot(group["round"], group["mean"], marker="o", label=arm)
        ax.fill_between(group["round"], group["low"], group["high"], alpha=0.15)
    ax.set_xlabel("round")
    ax.set_ylabel("relative score (1.0 = teacher)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title or "Lion against its ablations (mean and 95% interval over seeds)")
    ax.legend()
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()
