"""Generation: new instructions written by the generator from hard and easy seeds.

Hard seeds (the student still lags the teacher) ask for a new instruction of the same domain and
task type; easy seeds ask for one of the same domain but rarer (prompts.HARD_PROMPT /
EASY_PROMPT). Each kind is asked for `oversample` times the instructions it needs; every answer
goes through the paper's post-filters, and the survivors of both kinds through the exact-duplicate
and ROUGE-L novelty filters, until each kind has what it needs.

Every candidate keeps a status, so the round can say where its instructions went:

    failed       the request failed (after the client's retries)
    truncated    cut off at max_tokens (finish_reason "length")
    empty        nothing left after cleaning
    echo         repeats the prompt's markers ("#Given Instruction#", "created instruction", ...)
    too_short    fewer than generator.min_words words
    punctuation  starts with punctuation
    non_ascii    starts with a non-ASCII character (generator.drop_non_ascii_start)
    candidate    passed the post-filters (before select_novel)
    duplicate    exactly an instruction of the train pool or of an earlier candidate
    not_novel    ROUGE-L F1 above the threshold with the pool or an earlier kept candidate
    surplus      novel, but its kind already had enough
    kept         added to the pool

The original code also dropped any candidate containing the word "instruction"; that throws away
every legitimate "write instructions for ..." task, so we drop only echoes of the prompt's own
markers (see docs/referee-and-generation.md).

Everything is deterministic: the same hard/easy sets, seed and answers give the same rows in the
same order, which the resume test relies on.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from lion_core.config import GeneratorConfig, PoolsConfig
from lion_core.errors import LLMError
from lion_core.llm.types import ChatRequest, ChatResult, Completer
from lion_core.method.novelty import filter_novel
from lion_core.method.prompts import generator_messages, instruction_text
from lion_core.run.schemas import GENERATED_SCHEMA, POOL_SCHEMA, instruction_id

Kind = Literal["hard", "easy"]
KINDS: tuple[Kind, Kind] = ("hard", "easy")

# ------------------------------------------------------------------------------------------
# Seeds
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedPlan:
    """The seeds of each kind (a seeded shuffle of the set) and how many new instructions each
    kind must yield. Unpacks as (hard_seeds, easy_seeds)."""

    hard: pd.DataFrame
    easy: pd.DataFrame
    n_hard: int
    n_easy: int

    def seeds(self, kind: Kind) -> pd.DataFrame:
        return self.hard if _kind(kind) == "hard" else self.easy

    def wanted(self, kind: Kind) -> int:
        return self.n_hard if _kind(kind) == "hard" else self.n_easy

    def __iter__(self) -> Iterator[pd.DataFrame]:
        return iter((self.hard, self.easy))


def wanted_counts(n_hard_set: int, n_easy_set: int, pools: PoolsConfig) -> tuple[int, int]:
    """New instructions wanted per kind: hard_share of new_per_round from hard seeds, the rest
    from easy ones; all from the other kind when one set is empty, none when both are."""
    total = pools.new_per_round
    if not n_hard_set and not n_easy_set:
        return 0, 0
    if not n_hard_set:
        return 0, total
    if not n_easy_set:
        return total, 0
    n_hard = math.floor(pools.hard_share * total + 0.5)
    return n_hard, total - n_hard


def plan_seeds(hard: pd.DataFrame, easy: pd.DataFrame, pools: PoolsConfig, seed: int) -> SeedPlan:
    """Shuffle each set with a generator seeded by `seed` (after sorting by instruction_id, so
    the input's row order does not matter); generation walks the shuffle, wrapping around when
    it needs more requests than there are seeds, so every seed is used as evenly as possible."""
    n_hard, n_easy = wanted_counts(len(hard), len(easy), pools)
    rng = np.random.default_rng([seed, 0x110D])  # one stream for both kinds, fixed order
    shuffled = []
    for frame, n in ((hard, n_hard), (easy, n_easy)):
        frame = frame.drop_duplicates("instruction_id").sort_values("instruction_id", kind="stable")
        order = rng.permutation(len(frame))
        shuffled.append(frame.iloc[order].reset_index(drop=True) if n else frame.iloc[:0])
    return SeedPlan(shuffled[0], shuffled[1], n_hard, n_easy)


def n_requests(n_wanted: int, oversample: float) -> int:
    """Requests for `n_wanted` instructions: oversampled to make up for the filters."""
    return math.ceil(n_wanted * oversample - 1e-9) if n_wanted > 0 else 0


# ------------------------------------------------------------------------------------------
# Candidates and post-filters
# ------------------------------------------------------------------------------------------

_LEADING_ECHO = re.compile(
    r"^\s*(?:[*_#\s]*created\s+instruction[*_#\s]*[:：]?[*_#\s]*)+", re.IGNORECASE
)
# The prompt forbids its markers in the answer; any left after cleaning mean an echo.
_ECHO = re.compile(r"\b(?:given|created)\s+instruction\b", re.IGNORECASE)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`", "„": "“"}


def clean(text: str | None) -> str:
    """The generator's text without a leading "#Created Instruction#:" echo, surrounding
    quotes and whitespace."""
    if not text:
        return ""
    text = _LEADING_ECHO.sub("", text.strip()).strip()
    while len(text) >= 2 and _QUOTES.get(text[0]) == text[-1] and _quoted_whole(text):
        text = text[1:-1].strip()
    return text


def _quoted_whole(text: str) -> bool:
    """True if the first and last characters quote the whole text, not two separate quotes
    ('"Hello" and "World"'); apostrophes inside words ("don't") do not count."""
    inner = re.sub(r"(?<=\w)['’](?=\w)", "", text[1:-1])
    return text[0] not in inner and text[-1] not in inner


def post_filter(text: str, finish_reason: str | None, cfg: GeneratorConfig) -> str | None:
    """The status a cleaned candidate fails with, or None if it passes the paper's filters."""
    if finish_reason == "length":
        return "truncated"
    if not text:
        return "empty"
    if _ECHO.search(text):
        return "echo"
    if len(text.split()) < cfg.min_words:
        return "too_short"
    if text[0] in string.punctuation:
        return "punctuation"
    if cfg.drop_non_ascii_start and not text[0].isascii():
        return "non_ascii"
    return None


def generator_requests(seeds: pd.DataFrame, kind: Kind, count: int) -> list[ChatRequest]:
    """`count` requests walking the seeds in order (wrapping around); `sample` is the request's
    index, so a seed asked twice gets two answers, not one cached twice."""
    requests = []
    for k in range(count):
        seed = seeds.iloc[k % len(seeds)]
        seed_input = seed["input"] if isinstance(seed["input"], str) else ""
        messages = generator_messages(instruction_text(seed["instruction"], seed_input), kind)
        requests.append(ChatRequest.of(messages, tag=seed["instruction_id"], sample=k))
    return requests


def generate_candidates(
    seeds: pd.DataFrame,
    kind: Kind,
    n_wanted: int,
    client: Completer,
    cfg: GeneratorConfig,
    round: int,
) -> pd.DataFrame:
    """Ask for ceil(n_wanted * oversample) new instructions from `seeds` (walked in order) and
    post-filter them: GENERATED_SCHEMA rows in request order, status "candidate" or the filter
    that dropped them."""
    kind = _kind(kind)
    count = n_requests(n_wanted, cfg.oversample)
    if count and seeds.empty:
        raise ValueError(f"{n_wanted} {kind} instructions wanted but there are no {kind} seeds")
    requests = generator_requests(seeds, kind, count)
    results = client.run(requests, desc=f"generate {kind}") if requests else []
    if len(results) != len(requests):
        raise LLMError(f"generate {kind}: {len(requests)} requests, {len(results)} results")
    rows = [_candidate_row(r, kind, round, cfg) for r in results]
    return _frame(rows)[GENERATED_SCHEMA.names]


def _candidate_row(result: ChatResult, kind: Kind, round: int, cfg: GeneratorConfig) -> dict:
    row: dict[str, Any] = {
        "instruction_id": None,
        "instruction": None,
        "input": "",
        "reference": None,
        "source": kind,
        "parent_id": result.tag,
        "round": round,
        "status": None,
        "error": None,
        "request_key": result.key,
    }
    if not result.ok:
        row.update(status="failed", error=result.error or "request failed")
        return row
    text = clean(result.text)
    if text:
        row.update(instruction=text, instruction_id=instruction_id(text, ""))
    dropped = post_filter(text, result.finish_reason, cfg)
    row["status"] = dropped or "candidate"
    if dropped == "truncated":
        row["error"] = "finish_reason=length"
    return row


# ------------------------------------------------------------------------------------------
# Novelty
# ------------------------------------------------------------------------------------------


def select_novel(
    candidates: pd.DataFrame,
    pool_instructions: list[str],
    n_hard: int,
    n_easy: int,
    threshold: float = 0.7,
) -> pd.DataFrame:
    """Final statuses of both kinds' candidates: exact duplicates, then ROUGE-L novelty against
    the pool and every candidate kept before, then at most n_hard / n_easy kept.

    Candidates are judged in an interleaved order (hard and easy taking turns in proportion to
    their numbers), so neither kind is always compared against the other's kept ones. The result
    is exactly that of judging one candidate at a time and stopping a kind once it is full: a
    kind's novel candidates beyond its quota are "surplus" and are not compared against.
    Rows come back hard first, then easy, each in request order.
    """
    frame = _frame(candidates.to_dict("records"))
    ranked = _interleaved(frame)
    need = {"hard": int(n_hard), "easy": int(n_easy)}

    # Exact duplicates (same text as a pool instruction or an earlier candidate).
    seen_pool = {_norm(t) for t in pool_instructions}
    seen: set[str] = set()
    queue: list[int] = []
    for i in ranked:
        if frame.at[i, "status"] != "candidate":
            continue
        text = _norm(frame.at[i, "instruction"])
        if text in seen_pool or text in seen:
            frame.at[i, "status"] = "duplicate"
            continue
        seen.add(text)
        queue.append(i)

    # Novelty, one pass per change of quota state (at most three).
    kept_texts: list[str] = []
    while queue:
        queue = _drain_full(frame, queue, need)
        if not queue:
            break
        flags = filter_novel(
            [frame.at[i, "instruction"] for i in queue],
            list(pool_instructions) + kept_texts,
            threshold,
        )
        rest: list[int] = []
        for pos, (i, keep) in enumerate(zip(queue, flags, strict=True)):
            kind = frame.at[i, "source"]
            if need[kind] == 0:
                frame.at[i, "status"] = "surplus"
                if keep:
                    # Its kind filled up during this pass and the later flags took this one
                    # as kept: judge the rest again without it.
                    rest = queue[pos + 1 :]
                    break
                continue
            if keep:
                frame.at[i, "status"] = "kept"
                kept_texts.append(frame.at[i, "instruction"])
                need[kind] -= 1
            else:
                frame.at[i, "status"] = "not_novel"
        queue = rest
    frame = frame.sort_values(["_kind_rank", "_row"], kind="stable")
    return frame[GENERATED_SCHEMA.names].reset_index(drop=True)


def _drain_full(frame: pd.DataFrame, queue: list[int], need: dict[str, int]) -> list[int]:
    """Mark the queued candidates of full kinds surplus; return the others."""
    left = []
    for i in queue:
        if need[frame.at[i, "source"]] == 0:
            frame.at[i, "status"] = "surplus"
        else:
            left.append(i)
    return left


def _interleaved(frame: pd.DataFrame) -> list[int]:
    """Row indices with the kinds taking turns in proportion to their counts."""
    keys = []
    for _, group in frame.groupby("source", sort=True):
        n = len(group)
        for rank, (i, kind_rank) in enumerate(zip(group["_row"], group["_kind_rank"], strict=True)):
            keys.append(((rank + 0.5) / n, kind_rank, i))
    return [int(i) for _, _, i in sorted(keys)]


def _norm(text: Any) -> str:
    return " ".join(str(text).split()) if text is not None else ""


def new_pool_rows(generated: pd.DataFrame) -> pd.DataFrame:
    """The kept instructions as POOL_SCHEMA rows, in `generated` order."""
    kept = generated[generated["status"] == "kept"]
    return kept[POOL_SCHEMA.names].reset_index(drop=True).astype({"round": "int32"})


# ------------------------------------------------------------------------------------------


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"kind must be 'hard' or 'easy', got {kind!r}")
    return kind  # type: ignore[return-value]


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """GENERATED_SCHEMA rows plus helper columns (_row: position, _kind_rank: hard=0, easy=1)."""
    frame = pd.DataFrame(rows, columns=GENERATED_SCHEMA.names)
    frame["input"] = frame["input"].fillna("")
    frame = frame.astype({"round": "int32"}) if len(frame) else frame
    frame["_kind_rank"] = [KINDS.index(k) if k in KINDS else 2 for k in frame["source"]]
    frame["_row"] = range(len(frame))
    return frame
