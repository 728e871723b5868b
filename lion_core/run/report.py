"""A round's report: `round=<k>/report.html`, one self-contained file a person opens in a browser.

It shows what the round's Parquet snapshots hold, joined up:

- the round's numbers (summary.json): pool sizes, hard / easy / unscored, the split against the
  truth where known, requests, tokens and USD per role, what the decontamination gate dropped;
- the Cache Pool as the referee judged it: instruction, the teacher's and the student's answers,
  both orders' scores and reviews, the verdict (hard / easy / unscored), whether the two orders
  disagree (one would call it hard, the other not), filterable by category, verdict and
  disagreement, sortable by any column;
- the lineage: each hard and easy seed with the candidates the generator wrote from it, kept or
  dropped, and for each one the novelty filter or the decontamination gate judged, the text it
  came nearest to and their ROUGE-L F1 (`round=<k>/nearest.parquet`);
- the diversity statistics of every round so far, as a small chart.

Tables are pandas' HTML (`DataFrame.to_html`, every text escaped here) with report.js — filter,
sort, paginate (50 rows a page) — and report.css inlined, the chart a PNG (matplotlib) as a data
URI: no network, no CDN. Large rounds stay a few MB: at most `max_rows` Cache Pool rows (the
lineage's seeds first, then every disagreement up to a quarter, then a seeded sample) and
`max_seeds` seeds with all their candidates, long texts clipped (CLIP); the report says so when
it shows a sample, and its counts are always the whole pool's. docs/report.md.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime
from functools import cached_property
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from lion_core.config import LionConfig
from lion_core.run import layout
from lion_core.run.lease import check_held
from lion_core.run.store import RunStore

MAX_ROWS = 1000  # Cache Pool rows in the judged table
MAX_SEEDS = 300  # seeds in the lineage, each with every candidate written from it
MAX_CATEGORIES = 40  # categories offered by the filter (the others: the search box)
# Characters kept of each text (the rest: " …").
CLIP = {"instruction": 500, "answer": 800, "review": 500, "seed": 300, "candidate": 300}
DROPPED = ("not_novel", "duplicate", "contaminated")
_ROLES = {"teacher": 0, "referee": 1, "generator": 2, "judge": 3}  # the usage table's order


def write_report(
    store: RunStore,
    k: int,
    config: LionConfig,
    *,
    max_rows: int = MAX_ROWS,
    max_seeds: int = MAX_SEEDS,
) -> str:
    """Render round `k`'s report and write it to `round=<k>/report.html` (replacing an earlier
    one: the report is a view of the round's snapshots, not one of them); returns its URI."""
    page = render_report(store, k, config, max_rows=max_rows, max_seeds=max_seeds)
    check_held(store.storage.uri())  # a run that lost its root's lease writes nothing
    return store.storage.write_bytes(layout.report(k), page.encode("utf-8"), overwrite=True)


def render_report(
    store: RunStore,
    k: int,
    config: LionConfig,
    *,
    max_rows: int = MAX_ROWS,
    max_seeds: int = MAX_SEEDS,
) -> str:
    """Round `k`'s report as one HTML document."""
    summary = store.read_round_summary(k) or {}
    data = _RoundData(store, k, config)
    lineage, lineage_note, children = _lineage(data, max_seeds)
    judged, judged_note = _judged(data, config, max_rows, set(children), children)
    sections = [
        _section("Numbers", "numbers", _numbers(summary, data, config)),
        _section("Decontamination", "decontamination", _decontamination(summary, data)),
        _section("Generation diversity", "diversity", _diversity(store, k, summary)),
        _section("The Cache Pool as the referee judged it", "judged", judged_note + judged),
        _section("Lineage: seeds and what the generator wrote from them", "lineage",
                 lineage_note + lineage),
    ]  # fmt: skip
    title = f"{config.name}: round {k}"
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (
        f"<p class=meta>Run root <code>{_esc(store.uri())}</code> · round {k} of "
        f"{config.rounds} · τ = {config.discrimination.tau:g} · novelty threshold "
        f"{config.novelty.threshold:g} · written {generated}</p>"
    )
    return _PAGE.format(
        title=_esc(title),
        css=_asset("report.css"),
        js=_asset("report.js"),
        head=head,
        body="\n".join(sections),
    )


# ---- the round's snapshots ------------------------------------------------------------------


class _RoundData:
    """The artifacts of round k the report reads (None where the round has none: an ablation
    arm has no referee, a round written before an artifact existed lacks it)."""

    def __init__(self, store: RunStore, k: int, config: LionConfig) -> None:
        self.store, self.k, self.config = store, k, config

        def read(name: str, at: int = k) -> pd.DataFrame | None:
            return store.read(at, name) if store.exists(at, name) else None

        self.cache = read("cache_pool")
        self.train = read("train_pool")
        self.teacher = read("teacher_answers")
        self.student = read("student_answers")
        self.referee = read("referee")
        self.hard = read("hard")
        self.easy = read("easy")
        self.generated = read("generated")
        self.nearest = read("nearest")
        self.contaminated_seeds = read("contaminated_seeds", 1) if k == 1 else None
        if self.nearest is None and self.generated is not None and self.train is not None:
            # a round written before nearest.parquet existed: computed now, as the task does
            from lion_core.method.lineage import nearest_table

            self.nearest = nearest_table(self.generated, self.known_pool)[0]

    @cached_property
    def known_pool(self) -> pd.DataFrame:
        """The Train Pool and the split's rows it lacks: what novelty judged against, and where
        every seed's parent chain is."""
        parts = [f for f in (self.train, self.cache, self.hard, self.easy) if f is not None]
        if not parts:
            return pd.DataFrame(columns=["instruction_id", "instruction", "input", "parent_id"])
        cols = ["instruction_id", "instruction", "input", "reference", "source", "parent_id",
                "round"]  # fmt: skip
        pool = pd.concat([p[cols] for p in parts], ignore_index=True)
        return pool.drop_duplicates("instruction_id").reset_index(drop=True)

    def categories(self, ids: pd.Series) -> list[str]:
        """Each instruction's category: its offline-world family when the offline world wrote
        the instructions, else the seed lineage it descends from (as the diversity statistics
        group them)."""
        from lion_core.method.diversity import FAMILY, LINEAGE, categorize

        basis = FAMILY if self.config.generator.is_offline else LINEAGE
        return categorize(ids.tolist(), self.known_pool, basis)


# ---- sections ---------------------------------------------------------------------------------


def _numbers(summary: dict[str, Any], data: _RoundData, config: LionConfig) -> str:
    if not summary:
        return "<p>No summary.json for this round yet: the round has not finished.</p>"
    s = summary
    total = (s.get("hard") or 0) + (s.get("easy") or 0)
    rows = [
        ("Train Pool", s.get("train_pool")),
        ("Cache Pool (judged)", s.get("cache_pool")),
        ("hard / easy / unscored", f"{s.get('hard')} / {s.get('easy')} / {s.get('unscored')}"),
        (f"hard share (hard: teacher − student ≥ τ = {config.discrimination.tau:g})",
         _share(s.get("hard"), total)),
        ("mean teacher / student score", f"{_num(s.get('teacher_score'))} / "
         f"{_num(s.get('student_score'))}"),
        ("student-to-teacher score ratio", _num(s.get("student_to_teacher"))),
        ("positional bias (first shown − second shown)", _num(s.get("positional_bias"))),
        ("split against the truth: hard precision", _num(s.get("hard_precision"))),
        ("split against the truth: easy precision", _num(s.get("easy_precision"))),
        ("new instructions (wanted)", f"{s.get('new_instructions')} ({s.get('new_wanted', '-')})"),
        ("next round's Train Pool", s.get("next_train_pool")),
        ("teacher answers failed", s.get("teacher_failed")),
    ]  # fmt: skip
    if data.referee is not None:
        gaps = _order_gaps(data.referee)
        disagree = int(_disagree(gaps, config.discrimination.tau).sum())
        rows.insert(4, ("the two orders disagree (one hard, one not)", disagree))
    if s.get("relative_score") is not None:
        rows.append(("relative score (first evaluation set)", _num(s.get("relative_score"))))
    table = pd.DataFrame(rows, columns=["", "value"])
    table["value"] = [_cell(v) for v in table["value"]]
    out = [_html(table, "numbers-table")]
    usage = s.get("usage") or {}
    if usage:
        requests = pd.DataFrame(
            [
                {"role": role, "sent": u.get("requests"), "from cache": u.get("cache_hits"),
                 "failed": u.get("failures"), "prompt tokens": u.get("prompt_tokens"),
                 "completion tokens": u.get("completion_tokens"),
                 "USD": f"{u.get('cost_usd', 0.0):.4f}"}
                for role, u in sorted(usage.items(), key=lambda kv: _ROLES.get(kv[0], 9))
            ]
        )  # fmt: skip
        cost = sum((u.get("cost_usd") or 0.0) for u in usage.values())
        out.append(f"<h3>Requests and cost (USD {cost:.4f} in all)</h3>")
        out.append(_html(requests, "usage-table"))
    seconds = s.get("seconds") or {}
    if seconds:
        out.append(
            "<p>Wall time: "
            + ", ".join(f"{_esc(k)} {v:.0f} s" for k, v in seconds.items())
            + "</p>"
        )
    return "\n".join(out)


def _decontamination(summary: dict[str, Any], data: _RoundData) -> str:
    parts = []
    for label, key in (("seeds (at load)", "seeds_decontamination"),
                       ("new instructions", "decontamination")):  # fmt: skip
        d = summary.get(key)
        if d:
            per_set = ", ".join(f"{_esc(n)} {c}" for n, c in d["by_set"].items())
            parts.append(
                f"<li>{label}: <b class=contaminated>{d['dropped']}</b> of {d['checked']} dropped"
                f" ({per_set}; ROUGE-L F1 &gt; {d['rouge_l']:g} or a shared "
                f"{d['ngram']}-gram)</li>"
            )
    if not parts:
        return (
            "<p>Not checked: the run has no <code>evaluation.sets</code> (or the round was "
            "written before the gate existed).</p>"
        )
    rows = []
    for frame in (data.contaminated_seeds, data.nearest):
        if frame is not None and len(frame):
            rows.append(frame[frame["status"] == "contaminated"])
    out = "<ul>" + "".join(parts) + "</ul>"
    dropped = pd.concat(rows) if rows else pd.DataFrame()
    if len(dropped):
        table = pd.DataFrame(
            {
                "source": dropped["source"].map(_esc),
                "instruction": _texts(dropped["instruction"], CLIP["candidate"]),
                "matched question": _texts(dropped["nearest"], CLIP["candidate"]),
                "in": dropped["nearest_in"].map(_esc),
                "ROUGE-L": dropped["rouge_l"].map(_f2),
                "shared n-gram": dropped["ngram"].map(lambda g: _esc(g) if isinstance(g, str)
                                                      else ""),
            }
        ).head(500)  # fmt: skip
        out += _html(table, "contaminated-table")
    return out


def _diversity(store: RunStore, k: int, summary: dict[str, Any]) -> str:
    rounds = []
    for j in range(1, k + 1):
        s = summary if j == k else store.read_round_summary(j)
        if s and s.get("diversity"):
            rounds.append((j, s))
    if not rounds:
        return "<p>No diversity statistics (no generation this round).</p>"
    png = _diversity_png(rounds)
    d = rounds[-1][1]["diversity"]
    rows = [
        ("judged / kept / not novel / duplicate / surplus",
         f"{d['judged']} / {d['kept']} / {d['not_novel']} / {d['duplicate']} / {d['surplus']}"),
        ("dropped share (not novel + duplicate) / judged", _num(d.get("dropped_share"))),
        ("kept: highest ROUGE-L vs the pool", _quantiles(d["kept_max_rouge"])),
        ("dropped: highest ROUGE-L vs the pool", _quantiles(d["dropped_max_rouge"])),
        (f"largest {d['category_basis']}", f"{d.get('top_category')} "
         f"({_num(d.get('top_category_share'))})"),
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=["", f"round {k}"])
    table[f"round {k}"] = table[f"round {k}"].map(_esc)
    return f'<img alt="diversity per round" src="data:image/png;base64,{png}">' + _html(
        table, "diversity-table"
    )


def _diversity_png(rounds: list[tuple[int, dict[str, Any]]]) -> str:
    """Per round, the dropped share, the largest category's share of the new instructions and
    the kept candidates' median highest ROUGE-L; and the last round's new instructions per
    category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [j for j, _ in rounds]
    ds = [s["diversity"] for _, s in rounds]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 2.8), dpi=80)
    for label, values in (
        ("dropped share", [d.get("dropped_share") for d in ds]),
        ("largest category's share", [d.get("top_category_share") for d in ds]),
        ("kept: median highest ROUGE-L", [d["kept_max_rouge"].get("p50") for d in ds]),
    ):
        ys = [np.nan if v is None else v for v in values]
        left.plot(ks, ys, marker="o", label=label)
    left.set_ylim(0, 1)
    left.set_xticks(ks)
    left.set_xlabel("round")
    left.set_title("per round", fontsize=10)
    left.legend(fontsize=7, loc="upper left")
    # summary.json sorts its keys: largest first again, the largest at the top
    counts = ds[-1].get("categories", {}).items()
    cats = sorted(counts, key=lambda kv: (-kv[1], kv[0]))[:8][::-1]
    if cats:
        right.barh([str(c)[:24] for c, _ in cats], [n for _, n in cats], color="#4c72b0")
    right.set_title(f"round {ks[-1]}: new instructions per category", fontsize=10)
    right.tick_params(labelsize=7)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return base64.b64encode(out.getvalue()).decode()


def _judged(
    data: _RoundData, config: LionConfig, max_rows: int, lineage: set[str], children: dict
) -> tuple[str, str]:
    """The judged Cache Pool table (with its filters) and its note (what is shown of how
    many)."""
    if data.cache is None:
        return "<p>No Cache Pool.</p>", ""
    frame = data.cache[["instruction_id", "instruction", "input"]].copy()
    answers = {}
    for who, src in (("teacher", data.teacher), ("student", data.student)):
        if src is not None:
            answers[who] = src.drop_duplicates("instruction_id").set_index("instruction_id")
            frame[f"{who}_answer"] = frame["instruction_id"].map(answers[who]["answer"])
        else:
            frame[f"{who}_answer"] = None
    verdict = pd.Series("unscored", index=frame.index)
    for name, split in (("hard", data.hard), ("easy", data.easy)):
        if split is not None:
            verdict[frame["instruction_id"].isin(split["instruction_id"])] = name
    if data.hard is None and data.easy is None:
        verdict[:] = "not judged"
    frame["verdict"] = verdict
    score_cols = ["teacher_score_1", "student_score_1", "teacher_score_2", "student_score_2"]
    if data.referee is not None:
        ref = data.referee.drop_duplicates("instruction_id").set_index("instruction_id")
        for c in [*score_cols, "review_1", "review_2", "teacher_score", "student_score"]:
            frame[c] = frame["instruction_id"].map(ref[c])
    else:
        for c in [*score_cols, "review_1", "review_2", "teacher_score", "student_score"]:
            frame[c] = np.nan if "score" in c else None
    frame["gap"] = frame["teacher_score"] - frame["student_score"]
    gaps = _order_gaps(frame)
    frame["disagree"] = _disagree(gaps, config.discrimination.tau)
    frame["orders_delta"] = gaps["gap_1"] - gaps["gap_2"]
    frame["category"] = data.categories(frame["instruction_id"])
    counts = frame["category"].value_counts()
    categories = sorted(counts.index[:MAX_CATEGORIES].tolist())

    shown = _sample(frame, max_rows, lineage, config.seed + data.k)
    shown = shown.sort_values("gap", ascending=False, na_position="last", kind="stable")
    n = children
    table = pd.DataFrame(
        {
            "id": shown["instruction_id"].map(lambda i: f"<code>{_esc(i)}</code>"),
            "category": shown["category"].map(_esc),
            "verdict": shown["verdict"],
            "orders": np.where(shown["disagree"], "disagree", ""),
            "instruction": [
                _text(_joined(i, x), CLIP["instruction"])
                for i, x in zip(shown["instruction"], shown["input"], strict=True)
            ],
            "teacher answer": _texts(shown["teacher_answer"], CLIP["answer"]),
            "student answer": _texts(shown["student_answer"], CLIP["answer"]),
            "order 1: teacher": shown["teacher_score_1"].map(_f1),
            "order 1: student": shown["student_score_1"].map(_f1),
            "order 2: teacher": shown["teacher_score_2"].map(_f1),
            "order 2: student": shown["student_score_2"].map(_f1),
            "gap": shown["gap"].map(_f2),
            "Δ orders": shown["orders_delta"].map(_f2),
            "referee": [
                _reviews(a, b) for a, b in zip(shown["review_1"], shown["review_2"], strict=True)
            ],
            "children": [
                f'<a class=children href="#lineage" data-seed="{_esc(i)}">{n[i]} →</a>'
                if i in n else ""
                for i in shown["instruction_id"]
            ],
        }
    )  # fmt: skip
    note = (
        f"<p class=note>All {len(frame):,} instructions of the Cache Pool."
        if len(shown) == len(frame)
        else f"<p class=note>Showing {len(shown):,} of {len(frame):,} instructions: the "
        "lineage's seeds first, then disagreements between the orders (up to a quarter), then "
        "a seeded sample; filters and sorting apply to these rows, the counts below to all."
    )
    note += (
        " Order 1 shows the referee the teacher's answer first, order 2 the student's; gap = "
        "mean teacher − mean student score; the orders disagree when one order's gap reaches τ "
        "and the other's does not. Click a column to sort.</p>"
    )
    by = frame.groupby("category")
    crosstab = frame.groupby(["category", "verdict"]).size().unstack(fill_value=0)
    crosstab["orders disagree"] = by["disagree"].sum()
    crosstab["all"] = by.size()
    crosstab = crosstab.sort_values("all", ascending=False, kind="stable").head(200)
    crosstab = crosstab.astype(int).reset_index()
    crosstab["category"] = crosstab["category"].map(_esc)
    shown_of = f"the {len(crosstab)} largest of {len(counts)}" if len(counts) > 200 else "all"
    counts_html = f"<details><summary>Counts per category ({shown_of}; whole pool)</summary>"
    counts_html += _html(crosstab, "category-counts") + "</details>"
    controls = (
        '<div class=controls data-table="judged">'
        '<label>category <select id=category><option value="">all</option>'
        + "".join(f"<option>{_esc(c)}</option>" for c in categories)
        + "</select></label>"
        '<label>verdict <select id=verdict><option value="">all</option><option>hard</option>'
        "<option>easy</option><option>unscored</option></select></label>"
        "<label><input type=checkbox id=disagree> orders disagree</label>"
        '<label>search <input id=search type=search placeholder="instruction text"></label>'
        "<span class=pager><button class=prev>‹</button><span class=count></span>"
        "<button class=next>›</button></span></div>"
    )
    return counts_html + controls + _html(table, "judged"), note


def _lineage(data: _RoundData, max_seeds: int) -> tuple[str, str, dict[str, int]]:
    """The lineage table, its note, and each seed's number of candidates (for the links)."""
    gen = data.generated
    if gen is None or gen.empty:
        return "<p>No generation this round.</p>", "", {}
    gen = gen[gen["parent_id"].notna()].copy()
    children = gen.groupby("parent_id").size().to_dict()
    seeds = pd.concat([f for f in (data.hard, data.easy) if f is not None], ignore_index=True)
    seed_text = seeds.drop_duplicates("instruction_id").set_index("instruction_id")
    all_seeds = sorted(children)
    chosen = all_seeds
    if len(all_seeds) > max_seeds:
        rng = np.random.default_rng([data.config.seed + data.k, 0x11E])
        chosen = sorted(np.asarray(all_seeds)[rng.permutation(len(all_seeds))[:max_seeds]])
    gen = gen[gen["parent_id"].isin(set(chosen))]
    near = data.nearest
    if near is not None and len(near):
        near = near.drop_duplicates(["source", "request_key"]).set_index(["source", "request_key"])
        keys = pd.MultiIndex.from_arrays([gen["source"], gen["request_key"]])
        for c in ("rouge_l", "nearest", "nearest_in"):
            gen[c] = near[c].reindex(keys).to_numpy()
    else:
        gen["rouge_l"], gen["nearest"], gen["nearest_in"] = np.nan, None, None
    gen = gen.sort_values(["parent_id", "source"], kind="stable")
    seed_instr = pd.Series(None, index=gen.index, dtype=object)
    if len(seed_text):
        joined = pd.Series(
            [_joined(i, x) for i, x in zip(seed_text["instruction"], seed_text["input"],
                                           strict=True)],
            index=seed_text.index,
        )  # fmt: skip
        seed_instr = gen["parent_id"].map(joined)
    table = pd.DataFrame(
        {
            "seed": gen["parent_id"].map(lambda i: f"<code>{_esc(i)}</code>"),
            "seed kind": gen["source"],
            "seed instruction": _texts(seed_instr, CLIP["seed"]),
            "candidate": _texts(gen["instruction"], CLIP["candidate"]),
            "status": gen["status"],
            "ROUGE-L": gen["rouge_l"].map(_f2),
            "nearest": _texts(gen["nearest"], CLIP["candidate"]),
            "nearest in": gen["nearest_in"].map(lambda v: _esc(v) if isinstance(v, str) else ""),
        }
    )  # fmt: skip
    statuses = gen["status"].value_counts()
    note = (
        f"<p class=note>{len(all_seeds):,} seeds had candidates this round"
        + (f"; showing a seeded sample of {len(chosen):,} of them" if len(chosen) < len(all_seeds)
           else "")
        + f", {len(gen):,} candidates shown ("
        + ", ".join(f"{_esc(s)} {n}" for s, n in statuses.items())
        + "). For each candidate the novelty filter or the decontamination gate judged: the text "
        "it came nearest to (the Train Pool, the round's kept instructions — 'new' — or an "
        "evaluation question) and their ROUGE-L F1. Dropped = not_novel, duplicate or "
        "contaminated.</p>"
    )  # fmt: skip
    controls = (
        '<div class=controls data-table="lineage">'
        '<label>seed <input id=seed-filter placeholder="a seed id"></label>'
        "<button id=seed-clear>all seeds</button>"
        '<label>status <select id=status><option value="">all</option>'
        '<option value="dropped">dropped</option><option>kept</option>'
        "<option>not_novel</option><option>duplicate</option><option>contaminated</option>"
        "<option>surplus</option><option>capped</option></select></label>"
        '<label>seed kind <select id=kind><option value="">all</option><option>hard</option>'
        "<option>easy</option></select></label>"
        "<span class=pager><button class=prev>‹</button><span class=count></span>"
        "<button class=next>›</button></span></div>"
    )
    return controls + _html(table, "lineage"), note, children


# ---- helpers ----------------------------------------------------------------------------------


def _sample(frame: pd.DataFrame, max_rows: int, first: set[str], seed: int) -> pd.DataFrame:
    """All rows when they fit; else the rows of `first` (up to half), then disagreements (up to
    a quarter), then a seeded sample of the rest, `max_rows` in all."""
    if len(frame) <= max_rows:
        return frame
    rng = np.random.default_rng([seed, 0x5EED])
    order = rng.permutation(len(frame))
    in_first = frame["instruction_id"].isin(first).to_numpy()[order]
    disagree = frame["disagree"].to_numpy()[order]
    picked = np.concatenate(
        [order[in_first][: max_rows // 2], order[disagree & ~in_first][: max_rows // 4], order]
    )
    _, first_at = np.unique(picked, return_index=True)
    keep = picked[np.sort(first_at)][:max_rows]
    return frame.iloc[np.sort(keep)]


def _order_gaps(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "gap_1": frame["teacher_score_1"] - frame["student_score_1"],
            "gap_2": frame["teacher_score_2"] - frame["student_score_2"],
        }
    )


def _disagree(gaps: pd.DataFrame, tau: float) -> pd.Series:
    """Both orders scored, and one order's gap reaches τ while the other's does not."""
    both = gaps["gap_1"].notna() & gaps["gap_2"].notna()
    return both & ((gaps["gap_1"] >= tau) != (gaps["gap_2"] >= tau))


def _html(frame: pd.DataFrame, table_id: str) -> str:
    """pandas' HTML table; cells are already escaped (or are markup built here)."""
    return frame.to_html(
        table_id=table_id, classes="report", index=False, escape=False, na_rep="", border=0
    )


def _section(title: str, anchor: str, body: str) -> str:
    return f'<section id="{anchor}-section"><h2>{_esc(title)}</h2>\n{body}\n</section>'


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _clip(text: Any, limit: int) -> str:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + " …"


def _text(text: Any, limit: int) -> str:
    """A clipped, escaped text in a scrolling box; line breaks as <br> (pandas' HTML would
    print a newline in a cell as a literal backslash-n)."""
    clipped = _clip(text, limit)
    if not clipped:
        return ""
    body = _esc(clipped).replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    return "<div class=t>" + body.replace("\n", "<br>") + "</div>"


def _texts(values: pd.Series, limit: int) -> list[str]:
    return [_text(v, limit) for v in values]


def _joined(instruction: Any, input: Any) -> str:
    inp = input if isinstance(input, str) else ""
    return f"{instruction}\n\n{inp}" if inp.strip() else str(instruction)


def _reviews(first: Any, second: Any) -> str:
    if not isinstance(first, str) and not isinstance(second, str):
        return ""
    return (
        "<details><summary>both reviews</summary><b>teacher first</b>"
        f"{_text(first, CLIP['review'])}<b>student first</b>{_text(second, CLIP['review'])}"
        "</details>"
    )


def _f1(value: Any) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.1f}"


def _f2(value: Any) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.2f}"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _share(part: Any, total: int) -> str:
    return "-" if not total or part is None else f"{part / total:.3f}"


def _cell(value: Any) -> str:
    return _esc(_num(value) if isinstance(value, float) or value is None else value)


def _quantiles(q: dict[str, Any]) -> str:
    if not q or not q.get("count"):
        return "-"
    return " / ".join(f"{k} {q[k]:.2f}" for k in ("p10", "p50", "p90", "max")) + (
        f" (n={q['count']})"
    )


def _asset(name: str) -> str:
    return resources.files("lion_core.run").joinpath(name).read_text(encoding="utf-8")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
{css}
</style></head>
<body>
<h1>{title}</h1>
{head}
<nav><a href="#numbers-section">numbers</a> · <a href="#decontamination-section">decontamination</a>
· <a href="#diversity-section">diversity</a> · <a href="#judged-section">judged Cache Pool</a>
· <a href="#lineage-section">lineage</a></nav>
{body}
<script>
{js}
</script>
</body></html>
"""
