"""Data health of the teacher's answers (refusals, identical answers, empty answers) and of the
generated instructions (how many are far from every seed's domain).

A teacher that cannot answer the instructions — the offline world asked GSM8K questions, a
provider's safety filter, a wrong model — still returns `status: ok`; the student would learn
its refusals, the referee would score refusal against copied refusal, and the run's numbers would
look fine. Each round counts them; a share at or above `data_health.warn_share` is a warning,
one above `data_health.max_share` is degenerate and stops the round (`DataHealthError`) unless
`data_health.allow_degenerate`.

Generation can drift too: new instructions that share almost nothing with any seed instruction
(ROUGE-L F1 with every seed at most `data_health.far_rouge_l`) are off the domain the user gave;
at `data_health.far_warn_share` of a round's new instructions or more, that is a warning.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence

import pandas as pd
from pydantic import BaseModel, ConfigDict

from lion_core.config import DataHealthConfig
from lion_core.errors import DataHealthError
from lion_core.method.novelty import near_pool

log = logging.getLogger(__name__)

SEARCHED_CHARS = 300  # refusal patterns are searched at the start of an answer
QUOTE_CHARS = 100
# Short answers repeat by nature ("14", "yes", a classifier's "The sentiment is positive."):
# identical answers count from this length and this many words, and from this many copies.
IDENTICAL_MIN_CHARS = 10
IDENTICAL_MIN_WORDS = 6
IDENTICAL_MIN_COPIES = 3
# Typographic quotes and apostrophes, made straight before matching.
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'",
                         "\u201c": '"', "\u201d": '"'})  # fmt: skip


def normalise(text: str) -> str:
    """`text` as the refusal patterns and the identical count see it: Unicode NFKC, straight
    quotes, whitespace collapsed and trimmed ("I’m sorry" is "I'm sorry")."""
    return " ".join(unicodedata.normalize("NFKC", text).translate(_QUOTES).split())


class AnswerHealth(BaseModel):
    """Counts over the teacher's successful answers of one round."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    answers: int  # status ok
    refusals: int
    empty: int  # empty or whitespace only
    identical: int  # copies of the most frequent answer (long enough and repeated enough; else 0)
    top_answer: str | None  # the most frequent answer (its start), when repeated
    refusal_example: str | None
    # answers of any of the three kinds, each counted once (None: a record from before)
    degenerate: int | None = None

    def share(self, count: int) -> float:
        return count / self.answers if self.answers else 0.0

    def problems(self, threshold: float) -> list[str]:
        """What reaches `threshold`, worded for a person: one line per kind."""
        found = []
        n = self.answers
        if n and self.share(self.refusals) >= threshold:
            found.append(
                f"{self.refusals} of {n} teacher answers ({self.share(self.refusals):.0%}) are "
                f"refusals, e.g. {self.refusal_example!r}"
            )
        if n and self.identical and self.share(self.identical) >= threshold:
            found.append(
                f"{self.identical} of {n} teacher answers ({self.share(self.identical):.0%}) are "
                f"the same text: {self.top_answer!r}"
            )
        if n and self.share(self.empty) >= threshold:
            found.append(
                f"{self.empty} of {n} teacher answers ({self.share(self.empty):.0%}) are empty"
            )
        union = self.degenerate or 0
        if n and not found and self.share(union) >= threshold:  # no kind alone, together yes
            found.append(
                f"{union} of {n} teacher answers ({self.share(union):.0%}) are refusals, empty "
                f"or the same text ({self.refusals} refusals, {self.empty} empty, "
                f"{self.identical} identical)"
            )
        return found


def answer_health(answers: pd.DataFrame, refusal_patterns: Sequence[str]) -> AnswerHealth:
    """Count refusals, empty and identical answers among `answers` (ANSWER_SCHEMA) with status
    ok."""
    ok = answers.loc[answers["status"] == "ok", "answer"].fillna("").astype(str)
    stripped = ok.map(normalise)
    empty = stripped == ""
    pattern = re.compile("|".join(f"(?:{p})" for p in refusal_patterns), re.IGNORECASE)
    refused = (
        stripped.str.slice(0, SEARCHED_CHARS).map(lambda t: bool(pattern.search(t)))
        if refusal_patterns
        else pd.Series(False, index=stripped.index)
    )
    long_enough = (stripped.str.len() >= IDENTICAL_MIN_CHARS) & (
        stripped.str.split().str.len() >= IDENTICAL_MIN_WORDS
    )
    counts = stripped[long_enough].value_counts()
    top_count = int(counts.iloc[0]) if len(counts) else 0
    identical = top_count if top_count >= IDENTICAL_MIN_COPIES else 0
    repeated = (stripped == counts.index[0]) if identical else pd.Series(False, index=ok.index)
    return AnswerHealth(
        answers=len(ok),
        refusals=int(refused.sum()),
        empty=int(empty.sum()),
        identical=identical,
        top_answer=_quote(counts.index[0]) if identical else None,
        refusal_example=_quote(stripped[refused].iloc[0]) if refused.any() else None,
        degenerate=int((refused | empty | repeated).sum()),
    )


def check_answers(health: AnswerHealth, config: DataHealthConfig, round: int) -> list[str]:
    """Log the warnings of `health`; raise DataHealthError when it is degenerate (unless
    allowed). Returns the warnings."""
    degenerate = health.problems(config.max_share)
    if degenerate and not config.allow_degenerate:
        raise DataHealthError(
            f"round {round}: the teacher's answers are degenerate — "
            + "; ".join(degenerate)
            + ". The student would learn them. Check the teacher (teacher.base_url, "
            "teacher.model: the offline world answers only its own task families) against the "
            "initial data (pools.initial_data); set data_health.allow_degenerate: true to go on "
            "anyway."
        )
    warnings = [f"round {round}: {p}" for p in health.problems(config.warn_share)]
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


class DomainHealth(BaseModel):
    """How many of a round's new instructions are far from every seed instruction."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    new: int  # new instructions checked (the round's kept ones)
    seeds: int  # seed instructions they were compared with
    far: int  # ROUGE-L F1 with every seed at most `threshold`
    threshold: float
    far_example: str | None

    @property
    def far_share(self) -> float:
        return self.far / self.new if self.new else 0.0

    def problems(self, threshold: float) -> list[str]:
        """The drift warning when the far share reaches `threshold` (empty otherwise)."""
        if not self.new or not self.far or self.far_share < threshold:
            return []
        return [
            f"{self.far} of {self.new} new instructions ({self.far_share:.0%}) are far from "
            f"every seed's domain (ROUGE-L F1 at most {self.threshold:g} with each of the "
            f"{self.seeds} seed instructions), e.g. {self.far_example!r}"
        ]


def domain_health(new: Sequence[str], seeds: Sequence[str], threshold: float) -> DomainHealth:
    """Count the instructions of `new` whose ROUGE-L F1 with every instruction of `seeds` is at
    most `threshold` (lion_core.method.novelty's exact ROUGE-L)."""
    new, seeds = [str(t) for t in new], [str(t) for t in seeds]
    near = near_pool(new, seeds, threshold)
    far = [t for t, is_near in zip(new, near, strict=True) if not is_near]
    return DomainHealth(
        new=len(new),
        seeds=len(seeds),
        far=len(far) if seeds else 0,
        threshold=threshold,
        far_example=_quote(far[0]) if far and seeds else None,
    )


def check_domain(health: DomainHealth, config: DataHealthConfig, round: int) -> list[str]:
    """Log the drift warning of `health`, if any; returns the warnings."""
    warnings = [f"round {round}: {p}" for p in health.problems(config.far_warn_share)]
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "…"
