"""The run's layout: every path under a run's root, relative to it, in one place.

    <root>/run.json                                 the config the root is bound to
    <root>/.preflight-<token>                       the preflight's write probe, deleted at once
    <root>/lease.json                               the run holding the root (lion_core.run.lease)
    <root>/lease.lock                               local roots: serializes lease updates (flock)
    <root>/round=<k>/<artifact>.parquet             k = 1..rounds (+1 for the final pools)
    <root>/round=<k>/summary.json                   what round k reports (RoundSummary)
    <root>/round=<k>/report.html                    round k's report, one self-contained page
    <root>/round=0/student/                         the base student (round-0 checkpoint)
    <root>/round=<k>/student/                       the student trained in round k
    <root>/round=<k>/checkpoints/checkpoint-<step>/ mid-run training checkpoints (until committed)
    <root>/round=<k>/logs/                          training logs, one file per attempt
    <root>/round=<k>/export/train.<format>.<ext>    training data for other tools (lion export)
    <root>/evaluation/<set>/{questions,teacher_answers}.parquet   a question set, once per run
    <root>/round=<k>/evaluation/<set>/{student_answers,judged,by_category}.parquet
    <root>/round=<k>/evaluation/lm_eval.parquet     lm-evaluation-harness accuracy
    <root>/models/<key>/evaluation/...              `lion eval --student`: one model's results
    <root>/evaluation.png                           relative score per round (lion report)
    <root>/generation/<key>/part-*.parquet          student answers generated so far
    <root>/llm_cache/<role>/part-*.parquet          every LLM answer, keyed by request hash
    <root>/llm_cache/<role>/journal-*.jsonl         answers not yet in a shard (local storage)
    <root>/llm_batches/<role>/<submission>.json     a Batch API submission: batch id, file, keys
    <root>/prefect-results/                         Prefect task results (resume, UI Retry)

No other module spells these paths out; docs/storage.md describes each one.
"""

from __future__ import annotations

import re

RUN_INFO = "run.json"
PREFLIGHT_PREFIX = ".preflight-"
LEASE = "lease.json"
LEASE_LOCK = "lease.lock"
RESULTS = "prefect-results"
LLM_CACHE = "llm_cache"
LLM_BATCHES = "llm_batches"
GENERATION = "generation"

_ROUND_DIR = re.compile(r"^round=(\d+)$")


def preflight_probe(token: str) -> str:
    """The file the preflight writes and deletes at once, to prove the root takes writes."""
    return f"{PREFLIGHT_PREFIX}{token}"


def round_dir(k: int) -> str:
    return f"round={k}"


def round_of(name: str) -> int | None:
    """The round a top-level folder name stands for (`round=3` -> 3), else None."""
    m = _ROUND_DIR.match(name)
    return int(m.group(1)) if m else None


def artifact(k: int, name: str) -> str:
    return f"{round_dir(k)}/{name}.parquet"


def round_summary(k: int) -> str:
    """Round k's summary (lion_core.run.records.RoundSummary as JSON), rewritten by each run."""
    return f"{round_dir(k)}/summary.json"


def report(k: int) -> str:
    """Round k's report (lion_core.run.report), rewritten whenever it is rendered."""
    return f"{round_dir(k)}/report.html"


def student(k: int) -> str:
    """Round k's student (round 0: the base student)."""
    return f"{round_dir(k)}/student"


def checkpoints(k: int) -> str:
    return f"{round_dir(k)}/checkpoints"


def logs(k: int) -> str:
    return f"{round_dir(k)}/logs"


def tensorboard(k: int) -> str:
    """Round k's TensorBoard event files (`training.report_to: [tensorboard]`)."""
    return f"{round_dir(k)}/tensorboard"


EXPORT_EXTENSIONS = {"alpaca": "json", "sharegpt": "json", "parquet": "parquet"}


def export(k: int, fmt: str) -> str:
    """Round k's training data exported for other tools (`lion export`)."""
    return f"{round_dir(k)}/export/train.{fmt}.{EXPORT_EXTENSIONS[fmt]}"


EVALUATION = "evaluation"
EVALUATION_PLOT = "evaluation.png"
# `lion ablate`'s root: <root>/<arm>/seed=<i>/ (a run each), the shared llm_cache/, and these.
ABLATION_TABLE = "ablation.parquet"
ABLATION_PLOT = "ablation.png"
ABLATION_PAIRED = "ablation_paired.parquet"  # lion − each arm per round, paired by seed
ABLATION_COSTS = "ablation_costs.parquet"  # USD per arm and seed


def model_dir(key: str) -> str:
    """Where `lion eval --student` keeps one model's results (key: a digest of its URI)."""
    return f"models/{key}"


def evaluation(where: str, set_name: str | None, name: str) -> str:
    """An evaluation artifact: under `where` (a round's folder, a model's folder, or "" for
    what a run's rounds share), for question set `set_name` (None: not set-specific)."""
    parts = [p for p in (where, EVALUATION, set_name, f"{name}.parquet") if p]
    return "/".join(parts)


def generation(key: str) -> str:
    """Student answers generated so far for one (student, generation settings) key."""
    return f"{GENERATION}/{key}"


def llm_cache(role: str) -> str:
    return f"{LLM_CACHE}/{role}"


def llm_batches(role: str) -> str:
    """One role's Batch API submissions (lion_core.llm.batch), beside its response cache."""
    return f"{LLM_BATCHES}/{role}"


def llm_batch(role: str, submission: str) -> str:
    return f"{llm_batches(role)}/{submission}.json"
