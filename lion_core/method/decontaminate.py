"""The decontamination gate: no instruction close to an evaluation question enters a pool.

The generator writes new instructions every round, and a seed file may hold copies of benchmark
questions; either inflates the relative score measured on those questions. Every seed (as it is
loaded) and every new instruction (before the novelty filter) is checked against every question
of each configured evaluation set (`evaluation.sets`, each loaded whole, not sampled) and
dropped when

- its ROUGE-L F1 with a question is above `evaluation.decontaminate.rouge_l` (0.7) — the
  novelty filter's exact computation (`novelty.near_pool`), or
- it shares a run of `evaluation.decontaminate.ngram` (13) tokens with a question (as
  open-instruct's decontamination), tokens as ROUGE-L takes them: the runs of lowercase letters
  and digits (`novelty.tokenize`).

An instruction's text is its instruction and input; a question's, its instruction and input
(the first turn of a Vicuna/MT-Bench question). What was dropped is counted per set — an
instruction close to two sets counts in both — and kept with the question it matched.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from pydantic import BaseModel, ConfigDict

from lion_core.config import DecontaminateConfig, LionConfig
from lion_core.method.novelty import near_pool, nearest_rouge_l, rouge_l_f1, tokenize


@dataclass(frozen=True)
class QuestionSet:
    """One evaluation set's questions: ids and texts (instruction and input), in file order."""

    name: str
    question_ids: list[str]
    texts: list[str]


@dataclass(frozen=True)
class Match:
    """An instruction close to a question of set `set`: the question, their ROUGE-L F1, and
    the n-gram they share (None when only ROUGE-L caught it)."""

    set: str
    question_id: str
    question: str
    rouge_l: float
    ngram: str | None


class Decontamination(BaseModel):
    """What the gate did to one batch of instructions (a round's seeds, or its new
    instructions): how many it checked, how many it dropped, and per set how many were close
    to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sets: list[str]
    rouge_l: float
    ngram: int
    checked: int
    dropped: int
    by_set: dict[str, int]

    def __add__(self, other: Decontamination) -> Decontamination:
        sets = list(dict.fromkeys([*self.sets, *other.sets]))
        return self.model_copy(
            update={
                "sets": sets,
                "checked": self.checked + other.checked,
                "dropped": self.dropped + other.dropped,
                "by_set": {s: self.by_set.get(s, 0) + other.by_set.get(s, 0) for s in sets},
            }
        )

    def line(self) -> str:
        """'0 of 160 dropped (offline 0; ROUGE-L > 0.7 or a shared 13-gram)'"""
        per_set = ", ".join(f"{s} {n}" for s, n in self.by_set.items())
        return (
            f"{self.dropped} of {self.checked} dropped ({per_set}; ROUGE-L > {self.rouge_l:g} "
            f"or a shared {self.ngram}-gram)"
        )


def question_text(instruction: str, input: str | None) -> str:
    """What is compared: the instruction, then its input when there is one."""
    return f"{instruction}\n{input}" if isinstance(input, str) and input.strip() else instruction


def question_sets(config: LionConfig) -> list[QuestionSet]:
    """Every set of `evaluation.sets`, loaded whole (a question left out of the evaluation's
    sample is still one of the set's)."""
    from lion_core.evaluation.evaluate import load_questions, set_name

    out = []
    for path in config.evaluation.sets:
        questions = load_questions(
            path,
            config.storage.options,
            per_cell=config.evaluation.offline_per_cell,
            max_difficulty=config.offline.max_difficulty,
            families=config.offline.families,
        )
        texts = [
            question_text(i, x)
            for i, x in zip(questions["instruction"], questions["input"], strict=True)
        ]
        ids = questions["question_id"].astype(str).tolist()
        out.append(QuestionSet(set_name(path), ids, texts))
    return out


def contamination(
    texts: list[str], sets: list[QuestionSet], cfg: DecontaminateConfig
) -> list[list[Match]]:
    """For each text, its matches (one per set it is close to, in the sets' order); empty
    when it is clean."""
    found: list[list[Match]] = [[] for _ in texts]
    if not texts:
        return found
    tokens = [tokenize(t) for t in texts] if cfg.ngram > 0 else []
    for qs in sets:
        if not qs.texts:
            continue
        close = near_pool(texts, qs.texts, cfg.rouge_l) if cfg.rouge_l < 1 else [False] * len(texts)
        shared = _shared_ngrams(tokens, qs, cfg.ngram) if cfg.ngram > 0 else {}
        hits = [i for i in range(len(texts)) if close[i] or i in shared]
        if not hits:
            continue
        best, where = nearest_rouge_l([texts[i] for i in hits], qs.texts)
        for i, f1, q in zip(hits, best, where, strict=True):
            gram = shared.get(i)
            if gram is not None and not close[i]:
                # caught by the n-gram alone: name the question sharing it
                q = gram[1]
                f1 = rouge_l_f1(tokenize(qs.texts[q]), tokenize(texts[i]))
            found[i].append(
                Match(
                    set=qs.name,
                    question_id=qs.question_ids[q],
                    question=qs.texts[q],
                    rouge_l=float(f1),
                    ngram=gram[0] if gram is not None else None,
                )
            )
    return found


def _shared_ngrams(tokens: list[list[str]], qs: QuestionSet, n: int) -> dict[int, tuple[str, int]]:
    """Text index -> (its first n-gram found in a question of `qs`, that question's index)."""
    grams: dict[tuple[str, ...], int] = {}
    for q, text in enumerate(qs.texts):
        toks = tokenize(text)
        for k in range(len(toks) - n + 1):
            grams.setdefault(tuple(toks[k : k + n]), q)
    if not grams:
        return {}
    out = {}
    for i, toks in enumerate(tokens):
        for k in range(len(toks) - n + 1):
            q = grams.get(tuple(toks[k : k + n]))
            if q is not None:
                out[i] = (" ".join(toks[k : k + n]), q)
                break
    return out


def summary(
    matches: list[list[Match]], sets: list[QuestionSet], cfg: DecontaminateConfig
) -> Decontamination:
    by_set = {qs.name: 0 for qs in sets}
    for found in matches:
        for m in found:
            by_set[m.set] = by_set.get(m.set, 0) + 1
    return Decontamination(
        sets=[qs.name for qs in sets],
        rouge_l=cfg.rouge_l,
        ngram=cfg.ngram,
        checked=len(matches),
        dropped=sum(bool(found) for found in matches),
        by_set=by_set,
    )


def closest(found: list[Match]) -> Match:
    """The match to show for an instruction: the highest ROUGE-L F1, the first set on a tie."""
    return max(found, key=lambda m: m.rouge_l)  # max keeps the first of equal keys


def frame_texts(frame: pd.DataFrame) -> list[str]:
    """The compared text of each row of a pool-like frame (instruction, input)."""
    inputs = frame["input"] if "input" in frame else [""] * len(frame)
    return [question_text(str(i), x) for i, x in zip(frame["instruction"], inputs, strict=True)]


def decontaminate_pool(
    pool: pd.DataFrame, sets: list[QuestionSet], cfg: DecontaminateConfig
) -> tuple[pd.DataFrame, pd.DataFrame, Decontamination]:
    """`pool` without its contaminated rows, the contaminated rows (NEAREST_SCHEMA: status
    'contaminated', the question matched as the nearest), and the counts."""
    from lion_core.run.schemas import NEAREST_SCHEMA

    matches = contamination(frame_texts(pool), sets, cfg)
    bad = [bool(found) for found in matches]
    rows = []
    for (_, row), found in zip(pool.iterrows(), matches, strict=True):
        if found:
            rows.append(nearest_row(row, "contaminated", closest(found)))
    dropped = pd.DataFrame(rows, columns=NEAREST_SCHEMA.names)
    kept = pool[[not b for b in bad]].reset_index(drop=True)
    return kept, dropped, summary(matches, sets, cfg)


class Gate:
    """The gate over a round's candidates, batch by batch (the first pass, then each top-up):
    `mark` gives the candidates (status 'candidate') close to an evaluation question the status
    'contaminated'; `matches` keeps each one's closest match by (source, request_key);
    `summary()` counts every candidate checked (None without sets)."""

    def __init__(self, sets: list[QuestionSet], cfg: DecontaminateConfig) -> None:
        self.sets, self.cfg = sets, cfg
        self.matches: dict[tuple[str, str], Match] = {}
        self._checked: list[list[Match]] = []

    def mark(self, candidates: pd.DataFrame) -> pd.DataFrame:
        if not self.sets:
            return candidates
        todo = candidates.index[candidates["status"] == "candidate"]
        found = contamination(frame_texts(candidates.loc[todo]), self.sets, self.cfg)
        self._checked += found
        out = candidates.copy()
        for i, matches in zip(todo, found, strict=True):
            if matches:
                out.at[i, "status"] = "contaminated"
                key = (out.at[i, "source"], out.at[i, "request_key"])
                self.matches[key] = closest(matches)
        return out

    def summary(self) -> Decontamination | None:
        return summary(self._checked, self.sets, self.cfg) if self.sets else None


def nearest_row(row: pd.Series | dict, status: str, match: Match) -> dict:
    """A NEAREST_SCHEMA row for an instruction the gate dropped."""
    get = row.get
    return {
        "instruction_id": get("instruction_id"),
        "instruction": get("instruction"),
        "input": get("input") or "",
        "source": get("source"),
        "parent_id": get("parent_id"),
        "request_key": get("request_key"),
        "status": status,
        "rouge_l": match.rouge_l,
        "nearest_id": match.question_id,
        "nearest": match.question,
        "nearest_in": f"evaluation {match.set}",
        "ngram": match.ngram,
    }


__all__ = [
    "Decontamination",
    "Gate",
    "Match",
    "QuestionSet",
    "closest",
    "contamination",
    "decontaminate_pool",
    "question_sets",
    "summary",
]
