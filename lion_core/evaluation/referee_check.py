"""Referee calibration: check the configured referee on answer pairs of KNOWN order, before
paying for a run.

Lion's whole signal is the referee's verdict (hard = teacher − student ≥ τ); a referee that
cannot tell a right answer from a broken one, or that follows the order of presentation, makes
the hard/easy split noise. This check takes N instructions of the run's seed pool, gets the
teacher's answer to each (the same requests as the run's imitation stage, so with the run's
response cache they are paid once), and pits each answer against degraded copies of itself —
pairs whose better answer is known:

    truncated     the first third of the answer (cut at a space when there is one)
    wrong_number  one number changed (the last; +1) — only for answers with a number
    empty         an empty answer
    other_answer  the teacher's answer to another of the N instructions
    false_claim   the answer plus a confident but false final sentence (the changed number, or
                  another instruction's answer, stated as the correct final answer)

Each pair is scored by the referee in both orders with the run's own code (`referee.make_pairs`,
`referee.score_order` for order 1 and 2, `referee.combine`), the real answer in the teacher's
place. Reported per degradation kind and overall (`summarize`):

    agreement        scored pairs where the real answer's mean score (both orders) is higher
    consistency      scored pairs with the same verdict in both orders (real better, degraded
                     better or tie — each order on its own); 1 − consistency is the flip rate
    favours_first    inconsistent pairs whose verdicts lean to whichever answer was shown first
    favours_second   ... to the answer shown second (favours_first + favours_second = flips)
    ties             scored pairs with equal mean scores
    unscored         pairs without scores in both orders (over all pairs)
    positional_bias  `discriminate.positional_bias`: mean score of the first-shown answer minus
                     the second-shown, over both orders (points on the 1-10 scale)

MT-Bench's reference (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot
Arena", Table 2, Table 9, Table 11): on pairs of two similar GPT-3.5 answers to the 80 MT-bench
first-turn questions, GPT-4 with the default prompt gave the same winner in both orders in 65.0%
of them (favoured the first answer in 30.0%, the second in 5.0%); with a prompt asking for two
scores, 51.2%; on a lopsided model pair (GPT-3.5 vs LLaMA-13B), 98.8%. Known-order pairs here
are lopsided by construction, so a good referee should be near the last figure, not the first.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lion_core.config import LionConfig, RefereeConfig
from lion_core.llm.factory import client_for
from lion_core.llm.types import Completer
from lion_core.method.discriminate import positional_bias
from lion_core.method.imitation import answer_instructions
from lion_core.method.referee import combine, make_pairs, score_order
from lion_core.offline.running import offline_world
from lion_core.run.schemas import ANSWER_SCHEMA

DEGRADATIONS = ("truncated", "wrong_number", "empty", "other_answer", "false_claim")
OVERALL = "overall"
DEFAULT_INSTRUCTIONS = 20

MT_BENCH_REFERENCE = (
    "MT-Bench (Zheng et al. 2023, Tables 2, 9, 11): GPT-4 gave the same winner in both orders "
    "in 65.0% of pairs of two similar answers (default prompt; 51.2% with a two-score prompt) "
    "and in 98.8% of a lopsided pair (GPT-3.5 vs LLaMA-13B); known-order pairs are lopsided"
)

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]*\d)")


# ------------------------------------------------------------------------------------------
# Instructions and degraded answers
# ------------------------------------------------------------------------------------------


def seed_instructions(config: LionConfig) -> pd.DataFrame:
    """The run's seed pool (POOL_SCHEMA): what round 1 of the run would start from."""
    from lion_core.method.seeds import initial_pool

    return initial_pool(config)


def sample_instructions(pool: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` instructions of `pool` (all if fewer), a seeded shuffle of the pool sorted by id."""
    if n < 1:
        raise ValueError(f"the check needs at least one instruction, got {n}")
    pool = pool.drop_duplicates("instruction_id").sort_values("instruction_id", kind="stable")
    order = np.random.default_rng([seed, 0x4EF]).permutation(len(pool))[:n]
    return pool.iloc[order].reset_index(drop=True)


def change_number(text: str) -> str | None:
    """`text` with its last number increased by one (same decimals), or None without one."""
    found = list(_NUMBER.finditer(text))
    if not found:
        return None
    m = found[-1]
    digits = m.group(0)
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    changed = f"{float(digits) + 1:.{decimals}f}" if decimals else str(int(digits) + 1)
    return text[: m.start()] + changed + text[m.end() :]


def degrade(answer: str, kind: str, other: str | None = None) -> str | None:
    """A worse copy of `answer` of the given kind, or None where the kind does not apply (no
    number to change, no other answer, or a copy that would equal the answer)."""
    text = answer.strip()
    if kind == "truncated":
        head = text[: len(text) // 3]
        if " " in head and not text[len(head) : len(head) + 1].isspace():
            head = head.rsplit(" ", 1)[0]
        out = head.rstrip()
        out = out or None
    elif kind == "wrong_number":
        out = change_number(text)
    elif kind == "empty":
        out = ""
    elif kind == "other_answer":
        out = other.strip() if other else None
    elif kind == "false_claim":
        wrong = _number_of(change_number(text), text)
        if wrong is None and other:
            wrong = f'"{_first_line(other)}"'
        if wrong is None:
            return None
        out = (
            f"{text}\n\nI have double-checked this carefully: the correct final answer is {wrong}."
        )
    else:
        raise ValueError(f"unknown degradation {kind!r}; known: {', '.join(DEGRADATIONS)}")
    return None if out is None or out == text else out


def _number_of(changed: str | None, original: str) -> str | None:
    """The changed number itself (the token that differs), from `change_number`'s output."""
    if changed is None:
        return None
    a, b = list(_NUMBER.finditer(original)), list(_NUMBER.finditer(changed))
    return b[-1].group(0) if a and b else None


def _first_line(text: str, limit: int = 80) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit].rstrip() + "…"


def known_order_pairs(instructions: pd.DataFrame, answers: pd.DataFrame) -> pd.DataFrame:
    """Referee pairs (`referee.PAIR_COLUMNS` plus `kind` and `source_id`): the teacher's answer
    (`teacher_answer`) against each applicable degradation of it (`student_answer`), with
    pair ids `<instruction_id>:<kind>`. Instructions whose answer failed or is empty give none.
    `answers` is the teacher's ANSWER_SCHEMA frame."""
    ok = answers[answers["status"] == "ok"].drop_duplicates("instruction_id", keep="last")
    text = ok.set_index("instruction_id")["answer"]
    usable = instructions[
        instructions["instruction_id"].map(
            lambda i: isinstance(text.get(i), str) and bool(text[i].strip())
        )
    ].reset_index(drop=True)
    pool_rows, real, worse, meta = [], [], [], []
    n = len(usable)
    for i, row in enumerate(usable.itertuples(index=False)):
        answer = text[row.instruction_id]
        other = _other_answer(usable, text, i) if n > 1 else None
        for kind in DEGRADATIONS:
            degraded = degrade(answer, kind, other)
            if degraded is None:
                continue
            pair_id = f"{row.instruction_id}:{kind}"
            pool_rows.append({"instruction_id": pair_id, "instruction": row.instruction,
                              "input": row.input})  # fmt: skip
            real.append(_answer_row(pair_id, answer))
            worse.append(_answer_row(pair_id, degraded))
            meta.append({"kind": kind, "source_id": row.instruction_id})
    pool = pd.DataFrame(pool_rows, columns=["instruction_id", "instruction", "input"])
    pairs = make_pairs(
        pool,
        pd.DataFrame(real, columns=ANSWER_SCHEMA.names),
        pd.DataFrame(worse, columns=ANSWER_SCHEMA.names),
    )
    return pd.concat([pairs, pd.DataFrame(meta, columns=["kind", "source_id"])], axis=1)


def _other_answer(usable: pd.DataFrame, text: pd.Series, i: int) -> str | None:
    """The answer of the next instruction (cyclically) whose answer differs from this one's."""
    mine = text[usable.at[i, "instruction_id"]].strip()
    for k in range(1, len(usable)):
        theirs = text[usable.at[(i + k) % len(usable), "instruction_id"]]
        if theirs.strip() != mine:
            return theirs
    return None


def _answer_row(pair_id: str, answer: str) -> dict[str, Any]:
    return {"instruction_id": pair_id, "answer": answer, "status": "ok", "error": None,
            "finish_reason": "stop", "model": "referee-check", "request_key": None,
            "prompt_tokens": 0, "completion_tokens": 0}  # fmt: skip


# ------------------------------------------------------------------------------------------
# Scoring and the report
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """How the referee did on one kind of known-order pair (or on all of them)."""

    pairs: int
    scored: int
    agreement: float | None  # real answer's mean score higher, over scored pairs
    consistency: float | None  # same verdict in both orders, over scored pairs
    favours_first: float | None  # flips leaning to the first-shown answer, over scored pairs
    favours_second: float | None
    ties: float | None  # equal mean scores, over scored pairs
    unscored: float | None  # over all pairs
    positional_bias: float | None  # points for being shown first (discriminate)
    first_lift_real: float | None  # the real answer's score shown first minus shown second
    first_lift_degraded: float | None  # the same for the degraded answer
    agreement_real_first: float | None  # order 1 alone: real shown first and scored higher
    agreement_real_second: float | None  # order 2 alone: real shown second and scored higher
    mean_real: float | None
    mean_degraded: float | None

    @property
    def flips(self) -> float | None:
        return None if self.consistency is None else 1.0 - self.consistency


@dataclass
class RefereeCheck:
    """The check's result: per degradation kind and overall, and the scored pairs."""

    referee: str  # model name
    instructions: int
    teacher_failed: int
    by_kind: dict[str, Calibration]
    overall: Calibration
    not_applicable: dict[str, int]  # instructions a kind could not be built for
    pairs: pd.DataFrame = field(repr=False)  # known-order pairs with both orders' scores
    usage: dict[str, dict[str, int]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One row per kind, then the overall row (for a table)."""
        out = []
        for kind, cal in [*self.by_kind.items(), (OVERALL, self.overall)]:
            out.append({"kind": kind, **asdict(cal), "flips": cal.flips})
        return out

    def to_json(self) -> dict[str, Any]:
        """One JSON-ready object."""
        return {
            "referee": self.referee,
            "instructions": self.instructions,
            "teacher_failed": self.teacher_failed,
            "pairs": self.overall.pairs,
            "overall": {**asdict(self.overall), "flips": self.overall.flips},
            "by_kind": {k: {**asdict(c), "flips": c.flips} for k, c in self.by_kind.items()},
            "not_applicable": self.not_applicable,
            "usage": self.usage,
            "reference": MT_BENCH_REFERENCE,
        }


def check_referee(
    instructions: pd.DataFrame,
    teacher: Completer,
    referee: Completer,
    cfg: RefereeConfig,
    *,
    referee_model: str = "",
    teacher_model: str = "",
) -> RefereeCheck:
    """Answer `instructions` (POOL_SCHEMA rows) with the teacher, build the known-order pairs,
    score each in both orders with the referee and summarise."""
    answers = answer_instructions(instructions, teacher, teacher_model)
    ok = answers["status"].eq("ok") & answers["answer"].map(lambda a: isinstance(a, str))
    pairs = known_order_pairs(instructions, answers)
    if pairs.empty:
        scored = combine(_empty_order(), _empty_order())
    else:
        order1 = score_order(pairs, referee, cfg, 1, who="referee check")
        order2 = score_order(pairs, referee, cfg, 2, who="referee check")
        scored = combine(order1, order2)
    joined = pairs.merge(scored, on="instruction_id", how="left")
    n_usable = joined["source_id"].nunique()
    built = joined["kind"].value_counts()
    by_kind = {k: summarize(joined[joined["kind"] == k]) for k in DEGRADATIONS if built.get(k)}
    return RefereeCheck(
        referee=referee_model,
        instructions=len(instructions),
        teacher_failed=int((~ok).sum()),
        by_kind=by_kind,
        overall=summarize(joined),
        not_applicable={k: n_usable - int(built.get(k, 0)) for k in DEGRADATIONS},
        pairs=joined,
    )


def _empty_order() -> pd.DataFrame:
    from lion_core.run.schemas import REFEREE_ORDER_SCHEMA

    return pd.DataFrame(columns=REFEREE_ORDER_SCHEMA.names)


def summarize(pairs: pd.DataFrame) -> Calibration:
    """The calibration figures of known-order pairs joined with their REFEREE_SCHEMA scores
    (`teacher_*` = the real answer, `student_*` = the degraded one)."""
    total = len(pairs)
    scored = pairs[pairs["status"] == "scored"]
    n = len(scored)
    if not n:
        return Calibration(total, 0, *([None] * 5), 1.0 if total else None, *([None] * 7))
    v1 = np.sign(scored["teacher_score_1"] - scored["student_score_1"]).to_numpy()
    v2 = np.sign(scored["teacher_score_2"] - scored["student_score_2"]).to_numpy()
    # Order 1 shows the real answer first, order 2 the degraded one: a verdict better in order 1
    # than in order 2 leans to whichever answer came first.
    real, worse = scored["teacher_score"].to_numpy(), scored["student_score"].to_numpy()
    return Calibration(
        pairs=total,
        scored=n,
        agreement=float(np.mean(real > worse)),
        consistency=float(np.mean(v1 == v2)),
        favours_first=float(np.mean(v1 > v2)),
        favours_second=float(np.mean(v1 < v2)),
        ties=float(np.mean(real == worse)),
        unscored=(total - n) / total,
        positional_bias=positional_bias(scored),
        first_lift_real=float(np.mean(scored["teacher_score_1"] - scored["teacher_score_2"])),
        first_lift_degraded=float(np.mean(scored["student_score_2"] - scored["student_score_1"])),
        agreement_real_first=float(np.mean(v1 > 0)),
        agreement_real_second=float(np.mean(v2 > 0)),
        mean_real=float(np.mean(real)),
        mean_degraded=float(np.mean(worse)),
    )


# ------------------------------------------------------------------------------------------
# Running it for a config (the CLI's entry point)
# ------------------------------------------------------------------------------------------


def run_referee_check(
    config: LionConfig,
    n: int = DEFAULT_INSTRUCTIONS,
    *,
    role: str = "referee",
    cache: bool = True,
    api_keys: dict[str, str | None] | None = None,
) -> RefereeCheck:
    """Check the config's referee (or, with role="judge", its evaluation judge) on `n` seed
    instructions. The clients are the run's own (`llm.factory.client_for`): answers go
    through the run's response cache (`storage.shared_llm_cache` when set, as in an ablation,
    else `<root>/llm_cache/<role>`), so the teacher's answers are reused by the run — except
    for an 'offline' endpoint, whose answers depend on `offline` settings that are not part of a
    request's key, and with `cache=False`; they are priced by the config's `pricing` and count
    against its `budget_usd` (`BudgetExceeded` before a stage that would overrun it sends
    anything). `api_keys`: keys by role (e.g. from a Prefect Secret block); by default each
    endpoint's `api_key_env` is read."""
    if role not in ("referee", "judge"):
        raise ValueError(f"role must be 'referee' or 'judge', got {role!r}")
    endpoints = config.endpoints()
    cfg: RefereeConfig = endpoints[role]  # type: ignore[assignment]
    instructions = sample_instructions(seed_instructions(config), n, config.seed)
    with offline_world(config, roles=("teacher", role)) as url:
        clients = {
            r: client_for(
                config,
                r,
                offline_url=url,
                cache=cache and not endpoints[r].is_offline,
                api_key=(api_keys or {}).get(r),
            )
            for r in ("teacher", role)
        }
        result = check_referee(
            instructions,
            clients["teacher"],
            clients[role],
            cfg,
            referee_model=cfg.model,
            teacher_model=endpoints["teacher"].model,
        )
    result.usage = {r: c.usage.as_dict() for r, c in clients.items()}
    return result


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


# (field, column header) of the text table.
TABLE_COLUMNS = (
    ("kind", "kind"),
    ("pairs", "pairs"),
    ("scored", "scored"),
    ("agreement", "agree"),
    ("consistency", "consistent"),
    ("favours_first", "flip→1st"),
    ("favours_second", "flip→2nd"),
    ("ties", "ties"),
    ("unscored", "unscored"),
    ("positional_bias", "pos_bias"),
    ("first_lift_real", "lift_real"),
    ("first_lift_degraded", "lift_degr"),
    ("mean_real", "real"),
    ("mean_degraded", "degraded"),
)
TABLE_HEADER = tuple(header for _, header in TABLE_COLUMNS)


def table_rows(result: RefereeCheck) -> list[list[str]]:
    """The rows of `result` as strings, in TABLE_COLUMNS order (headers: TABLE_HEADER)."""
    return [[_fmt(row[key]) for key, _ in TABLE_COLUMNS] for row in result.rows()]


__all__ = [
    "DEGRADATIONS",
    "MT_BENCH_REFERENCE",
    "TABLE_COLUMNS",
    "TABLE_HEADER",
    "Calibration",
    "RefereeCheck",
    "change_number",
    "check_referee",
    "degrade",
    "known_order_pairs",
    "run_referee_check",
    "sample_instructions",
    "seed_instructions",
    "summarize",
    "table_rows",
]
