"""The ablation table: Lion's loop against its controls, over seeds, round by round.

Each arm × seed is an ordinary run under its own root (`<root>/<arm>/seed=<i>`); this module
only reads what their evaluations committed (`lion_core.evaluation.scoreboard`) and
aggregates: per arm, round and category, the mean over seeds and a 95% interval (Student's t
over the seeds); per other arm, Lion's paired difference (same seed) with its 95% interval;
per arm, what its LLM requests cost in USD (config `pricing`) beside its score.

Arms: `lion`, `uniform` (equal data: as many new instructions, seeds drawn at random, no
referee), `uniform-cost` (equal cost: a `uniform` run whose extra new instructions per round
spend what Lion's referee cost, `equal_cost_extra`) and `seed-only`.
"""

from __future__ import annotations

import io
import math

import pandas as pd

from lion_core.config import LionConfig
from lion_core.evaluation import scoreboard
from lion_core.llm.cache import billed
from lion_core.run.storage import Storage
from lion_core.run.store import RunStore

ARMS = ("lion", "uniform", "uniform-cost", "seed-only")
ROLES = ("teacher", "referee", "generator")

# Two-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: the normal's).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


def arm_config(
    config: LionConfig, root: str, arm: str, index: int, extra_new: int = 0
) -> LionConfig:
    """Arm `arm`'s run with seed number `index`: its own root, seed and name; the response
    cache shared by every arm (identical requests are paid once). `uniform-cost` is a
    `uniform` run with `extra_new` more new instructions per round."""
    overrides = {
        "arm": "uniform" if arm == "uniform-cost" else arm,
        "seed": config.seed + index,
        "name": f"{config.name}-{arm}-s{index}",
        "storage.root": f"{root.rstrip('/')}/{arm}/seed={index}",
        "storage.shared_llm_cache": root,
    }
    if arm == "uniform-cost":
        overrides["pools.new_per_round"] = config.pools.new_per_round + extra_new
    return config.with_overrides(overrides)


def summaries(store: RunStore) -> list[dict]:
    """The run's round summaries (summary.json), in round order, up to the first missing."""
    out = []
    k = 1
    while (summary := store.read_round_summary(k)) is not None:
        out.append(summary)
        k += 1
    return out


def answered(rounds: list[dict]) -> dict[str, int]:
    """The LLM answers a run used per role, each counted once however it was obtained (sent,
    or found in the response cache another arm filled): teacher = the seeds plus the new
    instructions of every round but the last (each instruction is answered once; the last
    round's are never trained on); referee and generator = their answered requests."""
    if not rounds:
        return dict.fromkeys(ROLES, 0)
    out = {"teacher": int(rounds[0]["train_pool"]) + sum(
        int(r["new_instructions"]) for r in rounds[:-1]
    )}  # fmt: skip
    for role in ("referee", "generator"):
        out[role] = sum(
            max(0, u["requests"] - u["failures"] + u["cache_hits"])
            for r in rounds
            if (u := r["usage"].get(role))
        )
    return out


def unit_prices(storage: Storage, payer: str | None = None) -> dict[str, float]:
    """USD per answer per role: the mean cost of the billed answers in the response cache
    under `storage` (priced by the config's `pricing` when they arrived), those `payer` paid
    for when given (a run's root; all of them for a role it paid none of).

    Read from the cache, not from the runs' usage counters: a run resumed after an
    interruption answers from the cache and sends nothing, so its round summaries price
    nothing (a resumed `lion ablate` sized `uniform-cost` with no extra instructions, refused
    the root it had started, and would have reported $0 per arm)."""
    mine = billed(storage, payer)
    everyone = mine
    if payer is not None and not all(mine.get(role, (0.0, 0))[1] for role in ROLES):
        everyone = billed(storage)  # a role the payer paid none of: everyone's answers
    prices = {}
    for role in ROLES:
        usd, n = mine.get(role, (0.0, 0))
        if not n:
            usd, n = everyone.get(role, (0.0, 0))
        prices[role] = usd / n if n else 0.0
    return prices


def arm_cost(rounds: list[dict], prices: dict[str, float]) -> dict[str, float]:
    """USD per role and in all (`usd`) of one run, as if it had paid every answer it used."""
    used = answered(rounds)
    out = {f"{role}_usd": used[role] * prices[role] for role in ROLES}
    out["usd"] = sum(out.values())
    return out


def equal_cost_extra(lion: list[dict], prices: dict[str, float], rounds: int) -> int:
    """Extra new instructions per round for `uniform-cost`: what Lion's referee cost (its
    student answers cost no USD: the student runs locally), spent on more generated
    instructions and their teacher answers — the generator's cost per kept instruction in
    Lion's run (requests per kept), plus one teacher answer for each of rounds−1 rounds."""
    used = answered(lion)
    kept = sum(int(r["new_instructions"]) for r in lion)
    if not kept or rounds < 1:
        return 0
    per_new = prices["generator"] * used["generator"] / kept
    budget = used["referee"] * prices["referee"]
    per_round = rounds * per_new + (rounds - 1) * prices["teacher"]
    return int(budget / per_round) if per_round > 0 else 0


def costs(config: LionConfig, root: str, arms: list[str], seeds: int) -> pd.DataFrame:
    """Per arm and seed: USD per role and in all (`arm_cost`, one set of unit prices for all
    arms), the new instructions kept and the rounds."""
    runs = {}
    for arm in arms:
        for i in range(seeds):
            cfg = arm_config(config, root, arm, i)
            runs[arm, i] = summaries(RunStore.open(cfg.storage.root, cfg.storage.options))
    prices = unit_prices(Storage(root, config.storage.options))
    rows = []
    for (arm, i), rounds in runs.items():
        kept = sum(int(r["new_instructions"]) for r in rounds)
        rows.append({"arm": arm, "seed": i, "rounds": len(rounds), "new_kept": kept,
                     **arm_cost(rounds, prices)})  # fmt: skip
    return pd.DataFrame(rows)


def paired(rows: pd.DataFrame, base: str = "lion", metric: str = "relative_score") -> pd.DataFrame:
    """Per other arm and round: `base` − arm on the overall `metric`, paired by seed (the same
    seed's runs share seed pool and round 1), its mean and 95% interval (Student's t over the
    seeds' differences), and in how many seeds `base` was ahead."""
    top = rows[(rows["level"] == "overall")] if "level" in rows else rows
    top = top[top["category"].isna()] if "category" in top else top
    wide = top.pivot_table(index=["round", "seed"], columns="arm", values=metric, aggfunc="first")
    out = []
    if base not in wide:
        return pd.DataFrame(out)
    for arm in [a for a in wide.columns if a != base]:
        for k, group in wide[[base, arm]].dropna().groupby(level="round"):
            diff = (group[base] - group[arm]).astype(float)
            n = len(diff)
            mean = float(diff.mean())
            half = _t95(n - 1) * float(diff.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
            out.append({"arm": arm, "round": int(k), "seeds": n, "mean": mean,
                        "low": mean - half, "high": mean + half,
                        "ahead": int((diff > 0).sum())})  # fmt: skip
    return pd.DataFrame(out)


def paired_text(diffs: pd.DataFrame, base: str = "lion") -> str:
    """'lion − arm' per round: mean [95% interval] (seeds ahead / seeds), markdown."""
    if diffs.empty:
        return ""
    rounds = sorted(diffs["round"].unique())
    lines = [f"| {base} − | " + " | ".join(f"round {k}" for k in rounds) + " |",
             "|---|" + "---|" * len(rounds)]  # fmt: skip
    for arm, group in diffs.groupby("arm", sort=False):
        by_round = group.set_index("round")
        cells = []
        for k in rounds:
            if k not in by_round.index:
                cells.append("-")
                continue
            r = by_round.loc[k]
            interval = "" if math.isnan(r["low"]) else f" [{r['low']:+.3f}, {r['high']:+.3f}]"
            cells.append(f"{r['mean']:+.3f}{interval} ({r['ahead']}/{r['seeds']})")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_text(rows: pd.DataFrame, cost: pd.DataFrame) -> str:
    """Per arm at its last round: relative score, USD (requests priced by `pricing`), score
    per dollar and gain over round 0 per dollar, means over seeds, markdown."""
    top = rows[(rows["level"] == "overall") & rows["category"].isna()]
    lines = ["| arm | last round | relative score | USD | score per $ | gain over round 0 per $ |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for arm, group in top.groupby("arm", sort=False):
        last = int(group["round"].max())
        score = float(group.loc[group["round"] == last, "relative_score"].mean())
        base = float(group.loc[group["round"] == 0, "relative_score"].mean())
        usd = float(cost.loc[cost["arm"] == arm, "usd"].mean()) if len(cost) else math.nan
        per = score / usd if usd else math.nan
        gain = (score - base) / usd if usd else math.nan
        lines.append(f"| {arm} | {last} | {score:.3f} | {usd:.4f} | {per:.1f} | {gain:.1f} |")
    return "\n".join(lines)


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
