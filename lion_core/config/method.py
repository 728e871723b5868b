"""The paper's stages: the pools, the hard/easy split, the novelty filter, and the checks of the
teacher's answers and of the new instructions (data health)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from lion_core.config.base import ADDED, OPERATIONAL, Section


class PoolsConfig(Section):
    """The Train Pool and the Cache Pool."""

    initial_data: str | None = Field(
        None,
        description="Seed instructions: Alpaca-format JSON or JSONL, Parquet or CSV (local path "
        "or URI). Empty: seeds drawn from the offline task world.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N seed instructions.")
    max_instruction_chars: int = Field(
        20000,
        ge=1,
        description="Seed rows whose instruction + input exceed this many characters are left "
        "out at load time (counted and reported): one 50 MiB instruction drove peak memory to "
        "9.5 GB and was sent to the teacher and twice to the referee.",
    )
    offline_seeds: int = Field(
        120, ge=1, description="Seeds drawn from the offline world when initial_data is empty."
    )
    new_per_round: int = Field(
        6000, ge=0, description="New instructions to add per round (paper: 6,000)."
    )
    hard_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of new instructions generated from hard seeds (paper hard:easy 1:1 "
        "= 0.5).",
    )
    cache_pool: Literal["new", "all"] = Field(
        "new",
        description="Next round's Cache Pool: 'new' = only the new instructions (paper), "
        "'all' = the whole Train Pool.",
    )
    holdback: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of each round's new instructions held back from the next round's "
        "training: they alone make its Cache Pool (with cache_pool 'new'), so the referee "
        "judges instructions the student has not been trained on, and they join the Train "
        "Pool one round later. 0 = the paper (the Cache Pool is what the student just "
        "learned; a small student trained many epochs reproduces it, and the split measures "
        "memory, docs/method.md).",
        json_schema_extra=ADDED,
    )


class DiscriminationConfig(Section):
    tau: float = Field(
        1.0, ge=0.0, le=9.0, description="Hard if teacher score - student score >= tau (paper 1.0)."
    )


# Refusals of the request, matched on the answer's start after normalisation (typographic quotes
# made straight, whitespace collapsed; lion_core.method.health.normalise): an apology followed by
# "I can't / cannot / am unable / can only ...", a bare "I can't help / assist / ...", "As an AI",
# "I must decline". An apology that goes on to help ("I'm sorry to hear ...", "Sorry for the
# wait ...") is no refusal. Measured on tests/data/health_labels.jsonl (docs/dag.md).
_UNABLE = (  # "I" and a refusal: I can't / cannot / won't / can only / 'm unable / am not able ...
    r"I(?: (?:can(?:no|')?t|cannot|won'?t|will not|must (?:respectfully )?decline|can only|"
    r"do(?:n'?t| not) have the ability)|(?:'m| am) (?:unable|not able|only able|not allowed))"
)
DEFAULT_REFUSALS = [
    r"^\W*(?:I'?m|I am)(?: (?:very|so|really|truly))? sorry\W+(?:but\W+)?" + _UNABLE,
    r"^\W*(?:Sorry|Unfortunately|Apologies|I apologi[sz]e|I'?m afraid|I am afraid)\W+"
    r"(?:but\W+)?" + _UNABLE,
    r"^\W*" + _UNABLE + r"\b(?: be able)?(?: to)?\W*(?:\w+ )?"
    r"(?:help|assist|answer|do|provide|comply|fulfill?|complete|support|create|write|generate|"
    r"share|engage|respond|access|browse)\b",
    r"^\W*I (?:must|have to) (?:respectfully )?decline\b",
    r"^\W*as an AI\b",
]


class DataHealthConfig(Section):
    """Checks of the teacher's answers each round: refusals, identical answers and empty ones
    are logged as warnings, and degenerate answers stop the run before a student learns them;
    and of the new instructions: the share far from every seed's domain is a warning."""

    refusal_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSALS),
        description="Regular expressions (case-insensitive, searched in the first 300 "
        "characters of each answer, typographic quotes made straight and whitespace collapsed "
        "first) that mark a refusal of the request.",
        json_schema_extra=OPERATIONAL,
    )
    warn_share: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Warn when this share of the teacher's answers or more are degenerate: "
        "refusals, empty, or one long answer repeated (each answer counted once).",
        json_schema_extra=OPERATIONAL,
    )
    max_share: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Above this share of degenerate answers (refusals, empty, one long answer "
        "repeated; each answer counted once), the round stops before the student trains on "
        "them.",
        json_schema_extra=OPERATIONAL,
    )
    allow_degenerate: bool = Field(
        False,
        description="Go on with degenerate teacher answers (a warning instead of an error).",
        json_schema_extra=OPERATIONAL,
    )
    far_rouge_l: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        description="A new instruction whose ROUGE-L F1 with every seed instruction is at most "
        "this is far from the seeds' domain (instructions of one domain score about 0.2 and "
        "more against each other).",
        json_schema_extra=OPERATIONAL,
    )
    far_warn_share: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Warn when this share of a round's new instructions or more is far from "
        "the seeds' domain (generation drifting away from the initial data).",
        json_schema_extra=OPERATIONAL,
    )

    @field_validator("refusal_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {pattern!r} ({exc})") from None
        return patterns


class NoveltyConfig(Section):
    threshold: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="Drop a new instruction whose ROUGE-L F1 with any pool instruction exceeds "
        "this (paper 0.7).",
    )
