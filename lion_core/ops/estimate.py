"""`lion estimate`: requests, tokens and cost of a run per role and round, before it starts.

Round 1 is exact in requests (the Lion arm, no referee re-asks): the teacher answers every seed,
the referee reviews each in both orders, the generator is asked `ceil(wanted * oversample)`
times per kind on its first pass. Its top-up passes (`generator.max_attempts`) ask again for what
a kind is still short of, which depends on how many candidates the novelty filter drops: each
asks at most as much as the first, so `generator_max` (first pass × max_attempts per round) bounds
the generator's requests from above. The referee's and the judge's counts are upper bounds too:
a pair whose two answers are the same text has one prompt for both orders (the client sends it
once), and a pair with a missing answer is not sent — measured on a 1-round demo: teacher 244 of
244, generator 240 of 240, referee 265 of 320 (55 Cache-Pool answers of the student equal to the
teacher's), judge 334 of 336.

Prompt tokens are counted on the real prompts (tiktoken for OpenAI model names, else
characters / 4: `lion_core.llm.costs`); the referee's prompt holds a teacher answer and a
student answer, counted as `expected_completion_tokens` (or `max_tokens`) of the teacher and
`student.generation.max_new_tokens`. Completion tokens are each role's expected length.

Rounds 2.. are projected: `new_per_round` new instructions (all kept) for the teacher, the
Cache Pool (`new`: those; `all`: the growing Train Pool) twice for the referee, the generator as
in round 1, at round 1's mean prompt length per role.

The evaluation (`evaluation.sets`) is counted like round 1 (the judge an upper bound): the
teacher answers each set's questions once per run (round 0's row, with the judging of the base
student), and the judge scores every question in both orders for each evaluated round (round 0,
then every round or the last: `evaluation.every_round`). Its prompts hold the teacher's and the
student's answers, counted like the referee's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lion_core.config import PRICES_AS_OF, EndpointConfig, LionConfig
from lion_core.evaluation.evaluate import load_questions, sample_questions
from lion_core.llm.costs import Estimate, completion_tokens, priced, token_counter
from lion_core.method.generate import n_requests, wanted_counts
from lion_core.method.prompts import (
    generator_messages,
    instruction_text,
    referee_messages,
    teacher_messages,
)
from lion_core.method.seeds import initial_pool

ROLES = ("teacher", "referee", "generator")
JUDGE = "judge"


@dataclass
class RunEstimate:
    """Per round, per role: an `Estimate`; `modes`: each role's configured mode."""

    rounds: dict[int, dict[str, Estimate]]
    modes: dict[str, str]
    exact_tokens: dict[str, bool] = field(default_factory=dict)
    generator_attempts: int = 1  # generator.max_attempts: passes per round at most

    def total(self, role: str | None = None) -> Estimate:
        out = Estimate()
        for per_role in self.rounds.values():
            for name, est in per_role.items():
                if role is None or name == role:
                    out = out + est
        return out

    def configured_cost(self) -> float:
        """The cost with each role in its configured mode (sync or batch)."""
        return sum(self.total(r).cost(m) for r, m in self.modes.items())

    def generator_max(self) -> int:
        """The generator's requests if every round used all its top-up passes."""
        return self.generator_attempts * self.total("generator").requests

    def to_json(self) -> dict[str, Any]:
        first = self.rounds.get(1, {})
        first_max = self.generator_attempts * first["generator"].requests if first else 0
        return {
            "requests": {r: e.requests for r, e in first.items() if r in ROLES},
            "run_requests": {r: self.total(r).requests for r in self.modes},
            "generator_max": {"round_1": first_max, "run": self.generator_max()},
            "tokens": {
                r: {
                    "prompt": self.total(r).prompt_tokens,
                    "completion": self.total(r).completion_tokens,
                }
                for r in self.modes
            },
            "cost_usd": {
                "sync": self.total().cost_sync,
                "batch": self.total().cost_batch,
                "as_configured": self.configured_cost(),
            },
            "modes": self.modes,
            "token_count": {
                r: "tiktoken" if x else "chars/4" for r, x in self.exact_tokens.items()
            },
            "prices_as_of": PRICES_AS_OF,
            "rounds": {
                str(k): {r: e.as_dict() for r, e in per_role.items()}
                for k, per_role in self.rounds.items()
            },
        }


def estimate_run(config: LionConfig, pool: pd.DataFrame | None = None) -> RunEstimate:
    """The estimate of `config`'s run (`pool`: round 1's pool, default `initial_pool`)."""
    pool = (initial_pool(config) if pool is None else pool).drop_duplicates("instruction_id")
    ends = {"teacher": config.teacher, "referee": config.referee, "generator": config.generator}
    texts = [
        (row.instruction, row.input if isinstance(row.input, str) else "")
        for row in pool.itertuples(index=False)
    ]
    n = len(texts)
    lion = config.arm == "lion"
    generates = config.arm in ("lion", "uniform")

    # round 1, on the real prompts
    teacher_prompts = [_count(config.teacher, teacher_messages(i, x)) for i, x in texts]
    answers = completion_tokens(config.teacher) + config.student.generation.max_new_tokens
    referee_prompts = (
        [
            _count(config.referee, referee_messages(instruction_text(i, x), "", "")) + answers
            for i, x in texts
        ]
        if lion
        else []
    )
    n_hard, n_easy = wanted_counts(n, n, config.pools) if n >= 2 and generates else (0, 0)
    asks = {
        "hard": n_requests(n_hard, config.generator.oversample),
        "easy": n_requests(n_easy, config.generator.oversample),
    }
    generator_mean = {
        kind: _mean(
            _count(config.generator, generator_messages(instruction_text(i, x), kind))
            for i, x in texts
        )
        for kind in ("hard", "easy")
    }
    first = {
        "teacher": _priced(config, "teacher", n, sum(teacher_prompts)),
        "referee": _priced(config, "referee", 2 * len(referee_prompts), 2 * sum(referee_prompts)),
        "generator": _priced(
            config,
            "generator",
            sum(asks.values()),
            round(sum(asks[k] * generator_mean[k] for k in asks)),
        ),
    }
    rounds = {1: first}

    # later rounds, projected from round 1's means
    teacher_mean = _mean(teacher_prompts)
    referee_mean = _mean(referee_prompts)
    train = n
    for k in range(2, config.rounds + 1):
        new = config.pools.new_per_round if generates else 0
        train += new
        cache = new if config.pools.cache_pool == "new" else train
        reviews = 2 * cache if lion else 0
        rounds[k] = {
            "teacher": _priced(config, "teacher", new, round(new * teacher_mean)),
            "referee": _priced(config, "referee", reviews, round(reviews * referee_mean)),
            "generator": first["generator"],
        }
    if config.evaluation.sets:
        ends[JUDGE] = config.judge_endpoint()
        _add_evaluation(config, rounds)
    return RunEstimate(
        rounds=dict(sorted(rounds.items())),
        modes={r: e.mode for r, e in ends.items()},
        exact_tokens={r: token_counter(e.model).exact for r, e in ends.items()},
        generator_attempts=config.generator.max_attempts,
    )


def _add_evaluation(config: LionConfig, rounds: dict[int, dict[str, Estimate]]) -> None:
    """The evaluation's requests: the teacher's answers to every set once (round 0), the
    judge's two orders per question in each evaluated round (lion_distill's schedule)."""
    ev = config.evaluation
    judge = config.judge_endpoint()
    answers = completion_tokens(config.teacher) + config.student.generation.max_new_tokens
    teacher = Estimate()
    judged = Estimate()
    for path in ev.sets:
        questions = sample_questions(
            load_questions(
                path,
                config.storage.options,
                per_cell=ev.offline_per_cell,
                max_difficulty=config.offline.max_difficulty,
                families=config.offline.families,
            ),
            ev.sample,
        )
        texts = [(row.instruction, row.input or "") for row in questions.itertuples(index=False)]
        teacher_prompts = sum(_count(config.teacher, teacher_messages(i, x)) for i, x in texts)
        teacher = teacher + _priced(config, "teacher", len(texts), teacher_prompts)
        judge_prompts = sum(
            _count(judge, referee_messages(instruction_text(i, x), "", "")) + answers
            for i, x in texts
        )
        judged = judged + priced(
            judge,
            config.pricing,
            2 * len(texts),
            2 * judge_prompts,
            2 * len(texts) * completion_tokens(judge),
        )
    evaluated = range(1, config.rounds + 1) if ev.every_round else [config.rounds]
    rounds[0] = {"teacher": teacher, JUDGE: judged}
    for k in evaluated:
        rounds[k][JUDGE] = judged


def _count(endpoint: EndpointConfig, messages: list[dict[str, str]]) -> int:
    return token_counter(endpoint.model).messages(messages)


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _priced(config: LionConfig, role: str, requests: int, prompt_tokens: int) -> Estimate:
    endpoint: EndpointConfig = getattr(config, role)
    completion = requests * completion_tokens(endpoint)
    return priced(endpoint, config.pricing, requests, prompt_tokens, completion)


def text_table(est: RunEstimate) -> str:
    """The estimate as an aligned table: one line per round and role, then the totals."""
    head = [
        "round",
        "role",
        "mode",
        "requests",
        "prompt tok",
        "completion tok",
        "sync $",
        "batch $",
    ]
    rows = []

    def row(k: str, role: str, mode: str, e: Estimate) -> list[str]:
        return [k, role, mode, f"{e.requests:,}", f"{e.prompt_tokens:,}",
                f"{e.completion_tokens:,}", _usd(e.cost_sync), _usd(e.cost_batch)]  # fmt: skip

    for k, per_role in est.rounds.items():
        rows += [row(str(k), role, est.modes[role], e) for role, e in per_role.items()]
    rows.append(row("all", "all", "", est.total()))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.rjust(w) if i >= 3 else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, *rows]
    ]
    lines.append(
        f"\nas configured (each role's mode): ${_usd(est.configured_cost())}; prices as of "
        f"{PRICES_AS_OF} (config `pricing`)"
    )
    if est.generator_attempts > 1:
        lines.append(
            f"generator: first passes shown; with every top-up pass (generator.max_attempts="
            f"{est.generator_attempts}) at most {est.generator_max():,} requests"
        )
    return "\n".join(lines)


def _usd(value: float) -> str:
    return f"{value:.4f}" if 0 < value < 0.01 else f"{value:,.2f}"


__all__ = ["ROLES", "RunEstimate", "estimate_run", "initial_pool", "text_table"]
