"""The judged evaluation on held-out questions (the paper's relative score) and lm-eval tasks."""

from __future__ import annotations

from pydantic import Field, field_validator

from lion_core.config.base import ADDED, OFFLINE, Section

# The data files a path in the config may name (seed data, question sets).
DATA_FORMATS = (".jsonl", ".json", ".parquet", ".csv")


class DecontaminateConfig(Section):
    """The decontamination gate: no instruction close to an evaluation question enters a pool.

    Seeds are checked as they are loaded, new instructions before the novelty filter
    (lion_core.method.decontaminate)."""

    rouge_l: float = Field(
        0.7,
        ge=0.0,
        le=1.0,
        description="Drop a seed or new instruction whose ROUGE-L F1 with a question of an "
        "evaluation set is above this (computed as the novelty filter computes it); 1 = off.",
    )
    ngram: int = Field(
        13,
        ge=0,
        le=1000,
        description="... or that shares a run of this many tokens with one (lowercase letters "
        "and digits, as ROUGE-L tokenises; 13 as open-instruct); 0 = off.",
    )


class EvaluationConfig(Section):
    """The Lion paper's yardstick: a judge scores the teacher's and the student's answers to
    held-out questions 1-10 in both orders; the student's relative score is the sum of its
    scores over the teacher's (1.0 = teacher level)."""

    sets: list[str] = Field(
        default_factory=list,
        description="Question sets (local paths or URIs): Vicuna/MT-Bench JSONL (question_id, "
        "category, turns: the first turn is asked), Alpaca JSON/JSONL, Parquet or CSV "
        "(instruction, input, optional question_id, category, reference). 'offline' = the "
        "offline world's held-out set, which no pool ever contains. Empty: no evaluation.",
    )
    every_round: bool = Field(
        True, description="Evaluate the student after every round; off: after the last only."
    )
    sample: int | None = Field(
        None,
        ge=1,
        description="Judge at most N questions per set: a fixed sample (chosen by a hash of "
        "question_id), the same in every round and run. Empty: every question.",
    )
    bootstrap: int = Field(
        1000,
        ge=0,
        le=100_000,
        description="Bootstrap resamples of the questions for the 95% interval of the relative "
        "score (seeded by the run's seed); 0: no interval.",
    )
    offline_per_cell: int = Field(
        2,
        ge=1,
        le=50,
        description="Questions per family and difficulty (1..offline.max_difficulty) in the "
        "'offline' held-out set; odd-numbered ones ask the family's rare variant.",
    )
    lm_eval_tasks: list[str] = Field(
        default_factory=list,
        description="lm-evaluation-harness tasks run on the student (e.g. bbh_zeroshot, "
        "agieval_en; needs the 'eval' extra); empty: none.",
    )
    lm_eval_include_path: str | None = Field(
        None,
        description="A folder of your own lm-eval task YAMLs (lm-eval's include_path), e.g. a "
        "task over a local JSON file.",
    )
    lm_eval_limit: int | None = Field(
        None, ge=1, description="Evaluate at most N documents per lm-eval task (quick checks)."
    )
    lm_eval_num_fewshot: int | None = Field(
        None, ge=0, description="Few-shot examples per lm-eval prompt; empty: each task's own."
    )

    decontaminate: DecontaminateConfig = Field(
        default_factory=DecontaminateConfig,
        description="Every seed (at load) and every new instruction is checked against every "
        "question of each set; the close ones are dropped and counted per set. No sets: no "
        "check.",
        json_schema_extra=ADDED,
    )

    @field_validator("sets")
    @classmethod
    def _check_sets(cls, value: list[str]) -> list[str]:
        value = [v.strip() for v in value]
        for v in value:
            if v != OFFLINE and not v.lower().endswith(DATA_FORMATS):
                raise ValueError(f"{v!r}: must be 'offline' or end in {', '.join(DATA_FORMATS)}")
        duplicates = sorted({v for v in value if value.count(v) > 1})
        if duplicates:
            raise ValueError(f"listed more than once: {duplicates}")
        return value
