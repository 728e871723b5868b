"""A round's training data as a file other tools train on: what the student of round k imitated.

The training target is the teacher's answer (`round=<k>/train_data.parquet`, column `answer`),
never the pools' `reference` column (the seed data's own answer, null for generated
instructions). Formats:

- `alpaca`: a JSON list of `{"instruction", "input", "output"}` (output = the teacher's answer);
- `sharegpt`: a JSON list of `{"conversations": [{"from": "human", ...}, {"from": "gpt", ...}]}`
  (the human turn is the instruction, then a blank line and the input when there is one);
- `parquet`: the columns `instruction`, `input`, `output`.

Beside the data goes its dataset card, `README.md` in the Hugging Face dataset-card format (a
YAML header, then markdown): the source run, the teacher, referee, generator and judge models,
the rounds, the filters and their thresholds, the counts, the decontamination result, and a
`license` field left for the user to fill in (`dataset_card`). A README.md there that lion did
not write is never replaced: the export is refused before anything is written.
"""

from __future__ import annotations

import io
import json
import posixpath
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
import yaml

from lion_core.errors import DataError, StorageError
from lion_core.run import layout
from lion_core.run.storage import Storage
from lion_core.run.store import RunStore

Format = Literal["alpaca", "sharegpt", "parquet"]
FORMATS: tuple[str, ...] = ("alpaca", "sharegpt", "parquet")


def training_records(store: RunStore, round: int) -> pd.DataFrame:
    """Round `round`'s training examples: `instruction`, `input` ('' when none), `output`
    (the teacher's answer), in training order."""
    ref = store.ref(round, "train_data")
    if ref is None:
        raise DataError(
            f"round {round} has no training data under {store.uri()} (run the round's imitation "
            "stage first; `lion pools` lists what each round has)",
            file=store.uri(layout.artifact(round, "train_data")),
        )
    rows = store.read_ref(ref)
    return pd.DataFrame(
        {
            "instruction": rows["instruction"],
            "input": rows["input"].fillna(""),
            "output": rows["answer"],
        }
    ).reset_index(drop=True)


def render(records: pd.DataFrame, fmt: Format) -> bytes:
    """`records` (from `training_records`) as the bytes of a file in format `fmt`."""
    if fmt == "parquet":
        buffer = io.BytesIO()
        records.to_parquet(buffer, index=False)
        return buffer.getvalue()
    rows = records.to_dict(orient="records")
    if fmt == "alpaca":
        data: list[dict] = rows
    elif fmt == "sharegpt":
        data = [
            {
                "conversations": [
                    {"from": "human", "value": _prompt(r["instruction"], r["input"])},
                    {"from": "gpt", "value": r["output"]},
                ]
            }
            for r in rows
        ]
    else:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode()


def _prompt(instruction: str, input: str) -> str:
    return f"{instruction}\n\n{input}" if input else instruction


def export_round(
    store: RunStore, round: int, fmt: Format, out: str | None = None, *, card: bool = True
) -> str:
    """Write round `round`'s training data in format `fmt` to `out` (a local path or URI; by
    default `round=<k>/export/train.<format>.<ext>` in the run's storage), and beside it its
    dataset card `README.md` (unless `card` is False); returns the data's URI."""
    records = training_records(store, round)
    blob = render(records, fmt)
    if out is None:
        folder, name = store.storage, layout.export(round, fmt)
    else:
        parent, _, name = out.rstrip("/").rpartition("/")
        folder = Storage(parent or ".", store.storage.options if "://" in out else None)
    card_rel = posixpath.join(posixpath.dirname(name), CARD)
    if (
        card
        and folder.exists(card_rel)
        and CARD_MARK not in folder.read_bytes(card_rel).decode("utf-8", "replace")
    ):
        raise StorageError(
            f"{folder.uri(card_rel)} exists and is not a dataset card lion wrote: export "
            "elsewhere (--out), or without the card (--no-card)"
        )
    uri = folder.write_bytes(name, blob, overwrite=True)
    if card:
        text = dataset_card(store, round, fmt, records, posixpath.basename(name))
        folder.write_bytes(card_rel, text.encode("utf-8"), overwrite=True)
    return uri


# ---- the dataset card -------------------------------------------------------------------------

CARD = "README.md"
CARD_MARK = "<!-- dataset card written by lion-distill's `lion export` -->"
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
          (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))  # fmt: skip


def dataset_card(
    store: RunStore, round: int, fmt: Format, records: pd.DataFrame, data_file: str
) -> str:
    """The dataset card of round `round`'s training data (`records`, written as `data_file`):
    a Hugging Face dataset card, YAML header then markdown. Reads run.json for the models and
    filters and each round's summary.json for the counts (either may be missing: said so)."""
    info = store.read_run_info() if store.has_run_info() else {}
    cfg = _config(info)
    summaries = {k: store.read_round_summary(k) for k in range(1, round + 1)}
    name = cfg.name if cfg else store.uri().rstrip("/").rsplit("/", 1)[-1]
    size = next((label for bound, label in _SIZES if len(records) < bound), "n>10M")
    header = {
        "pretty_name": f"{name}: Lion round {round} training data",
        "task_categories": ["text-generation"],
        "tags": ["lion-distill", "distillation", "synthetic", "instruction-tuning"],
        "size_categories": [size],
        "configs": [
            {"config_name": "default",
             "data_files": [{"split": "train", "path": data_file}]}
        ],
    }  # fmt: skip
    lines = [
        "---",
        "license:  # fill in (e.g. apache-2.0, cc-by-4.0, other): your seed data's license and "
        "the teacher's terms of use decide what you may do with this data",
        yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        CARD_MARK,
        "",
        f"# {name}: what round {round}'s student was trained on",
        "",
        f"{len(records):,} instruction–answer pairs, each answer written by the teacher: the "
        f"Train Pool of round {round} of a [Lion](https://arxiv.org/abs/2305.12870) "
        "adversarial distillation run by lion-distill — the seed "
        "instructions and those the generator wrote, round after round, from the instructions "
        "the student still got wrong (hard) or right (easy).",
        "",
        "## Source run",
        "",
        *_table(
            ["", ""],
            [
                ("run root", f"`{store.uri()}`"),
                ("run name", name),
                ("round exported", f"{round} of {cfg.rounds if cfg else '?'}"),
                ("config digest", f"`{cfg.digest()[:16]}`" if cfg else "unknown (no run.json)"),
                ("lion-distill", (info.get("versions") or {}).get("lion-distill") or "unknown"),
                ("run started", info.get("started_at", "unknown")),
                ("exported", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
                ("file", f"`{data_file}` ({fmt}: {_FORMAT_NOTE[fmt]})"),
            ],
        ),
        "",
        "## Models",
        "",
        *(_models(cfg) if cfg else ["Unknown: the run root has no run.json."]),
        "",
        "## Filters and thresholds",
        "",
        *(_filters(cfg) if cfg else ["Unknown: the run root has no run.json."]),
        "",
        "## Counts",
        "",
        *_counts(store, round, records, summaries),
        "",
        "## Decontamination",
        "",
        *_decontamination(cfg, summaries, round),
        "",
        "## License",
        "",
        "Left for you to fill in (`license` above): the seed data's license and the teacher's "
        "terms of use (some API providers restrict training competing models on their outputs) "
        "decide what may be done with this data.",
        "",
    ]
    return "\n".join(lines)


_FORMAT_NOTE = {
    "alpaca": "a JSON list of {instruction, input, output}; output is the teacher's answer",
    "sharegpt": "a JSON list of {conversations: [human, gpt]}; gpt is the teacher's answer",
    "parquet": "columns instruction, input, output; output is the teacher's answer",
}


def _config(info: dict[str, Any]) -> Any:
    from lion_core.config import LionConfig

    data = info.get("config")
    if not isinstance(data, dict):
        return None
    try:
        return LionConfig.from_dict(data, source="run.json")
    except Exception:  # an unreadable run.json: the card says "unknown"
        return None


def _table(header: list[str], rows: list[tuple[Any, ...]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def _models(cfg: Any) -> list[str]:
    from lion_core.config import OFFLINE

    def where(endpoint: Any) -> str:
        return "the offline task world" if endpoint.base_url == OFFLINE else "an API endpoint"

    judge = cfg.judge_endpoint()
    student = cfg.student.model or "a tiny model built from config (student.tiny)"
    return _table(["role", "model", "served by"], [
        ("teacher (wrote every answer)", cfg.teacher.model, where(cfg.teacher)),
        ("referee (scored teacher vs student)", cfg.referee.model, where(cfg.referee)),
        ("generator (wrote new instructions)", cfg.generator.model, where(cfg.generator)),
        ("judge (evaluation only)", judge.model, where(judge)),
        ("student (trained on it)", student, "-"),
    ])  # fmt: skip


def _filters(cfg: Any) -> list[str]:
    gen, pools = cfg.generator, cfg.pools
    return _table(["stage", "rule"], [
        ("seeds", f"{f'the first {pools.limit} of' if pools.limit else 'all of'} "
                  f"`{pools.initial_data or 'the offline world'}`"
                  f"; exact duplicates and those over {pools.max_instruction_chars} characters "
                  "dropped"),
        ("hard / easy", f"hard when the referee's mean teacher − student score (both answer "
                        f"orders) ≥ τ = {cfg.discrimination.tau:g}; new instructions per round "
                        f"{pools.new_per_round}, {pools.hard_share:g} of them from hard seeds"),
        ("generator post-filters", f"dropped when cut off, empty, echoing the prompt, under "
                                   f"{gen.min_words} words, starting with punctuation"
                                   + (" or a non-ASCII character" if gen.drop_non_ascii_start
                                      else "")),
        ("novelty", f"dropped when ROUGE-L F1 > {cfg.novelty.threshold:g} with a Train Pool "
                    "instruction or one kept before it (exact duplicates too)"),
        ("spread", f"oversample {gen.oversample:g}, up to {gen.max_attempts} pass(es), no seed "
                   f"category above {gen.max_category_share:g} of a round"),
        ("teacher answers", "failed requests left out; refusal / identical / empty answers "
                            f"fail the round above {cfg.data_health.max_share:g} of them"),
        ("decontamination", (f"dropped when ROUGE-L F1 > {cfg.evaluation.decontaminate.rouge_l:g}"
                             f" with, or a shared {cfg.evaluation.decontaminate.ngram}-token run "
                             "with, a question of the evaluation sets") if cfg.evaluation.sets
                            else "not checked (no evaluation.sets)"),
    ])  # fmt: skip


def _counts(
    store: RunStore, round: int, records: pd.DataFrame, summaries: dict[int, Any]
) -> list[str]:
    out = [f"- examples: {len(records):,}"]
    if store.exists(round, "train_pool"):
        pool = store.read(round, "train_pool")
        ids = store.read(round, "train_data")["instruction_id"]
        by_source = pool[pool["instruction_id"].isin(ids)]["source"].value_counts()
        out.append("- by origin: " + ", ".join(
            f"{_ORIGIN.get(s, s)} {n:,}" for s, n in by_source.items()
        ))  # fmt: skip
        left_out = len(pool) - len(records)
        if left_out:
            out.append(f"- Train Pool instructions left out (the teacher's answer failed): "
                       f"{left_out:,}")  # fmt: skip
    for k, s in summaries.items():
        if s and k < round:
            out.append(f"- round {k}: {s.get('hard')} hard, {s.get('easy')} easy of "
                       f"{s.get('cache_pool')} judged; {s.get('new_instructions')} new "
                       "instructions kept")  # fmt: skip
    return out


_ORIGIN = {"seed": "seed instructions", "hard": "generated from hard seeds",
           "easy": "generated from easy seeds"}  # fmt: skip


def _decontamination(cfg: Any, summaries: dict[int, Any], round: int) -> list[str]:
    if cfg is not None and not cfg.evaluation.sets:
        return ["Not checked: the run had no evaluation sets (`evaluation.sets`)."]
    parts: list[tuple[str, dict[str, Any]]] = []
    first = summaries.get(1) or {}
    if first.get("seeds_decontamination"):
        parts.append(("seeds at load", first["seeds_decontamination"]))
    for k in range(1, round):
        d = (summaries.get(k) or {}).get("decontamination")
        if d:
            parts.append((f"round {k}'s new instructions", d))
    if not parts:
        return ["Unknown: no round of this data recorded a decontamination check."]
    sets = list(dict.fromkeys(s for _, d in parts for s in d["sets"]))
    rows = [
        (label, d["checked"], d["dropped"], *(d["by_set"].get(s, 0) for s in sets))
        for label, d in parts
    ]
    total = sum(d["dropped"] for _, d in parts)
    d0 = parts[0][1]
    return [
        f"Every seed and new instruction was checked against every question of "
        f"{', '.join(f'`{s}`' for s in sets)}: dropped when its ROUGE-L F1 with one is above "
        f"{d0['rouge_l']:g} or it shares a run of {d0['ngram']} tokens with one. "
        f"**{total} dropped** in all; none of them is in this data.",
        "",
        *_table(["instructions", "checked", "dropped", *sets], rows),
    ]
