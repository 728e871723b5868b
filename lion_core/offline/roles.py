"""What the offline world answers in each role, recognised from the project's prompt templates.

- teacher: the exact answer of a recognised instruction, a fixed polite fallback otherwise;
- referee: scores from correctness (exact = 10, partial credit below), plus judge noise and a
  positional bias for whichever answer is shown first, in the format the real prompt asks for;
- generator: a new instance of the seed's family (hard prompt) or its rare variant (easy prompt).

Pure functions of (messages, rng, knobs): the server seeds `rng` from the request body.
"""

from __future__ import annotations

import json
import random
import re
from difflib import SequenceMatcher

from lion_core.method import prompts
from lion_core.offline.world import DEFAULT_FAMILIES, make_instance, solve

TEACHER_FALLBACK = (
    "I'm sorry, but I can only help with the tasks of the offline world: arithmetic, reversing "
    "words, sorting and counting, maxima and minima, and changing letter case."
)

_REFEREE_RE = re.compile(
    r"\[Instruction\]\n(?P<instruction>.*?)\n\n"
    r"\[The Start of Assistant 1's Answer\]\n(?P<a1>.*?)\n\[The End of Assistant 1's Answer\]"
    r"\n\n"
    r"\[The Start of Assistant 2's Answer\]\n(?P<a2>.*?)\n\[The End of Assistant 2's Answer\]",
    re.DOTALL,
)

# No digits, no score lines: nothing a score parser could take for a score.
GARBLED_TEXT = (
    "Both assistants respond to the instruction. The first answer reads well and the second one "
    "is also reasonable; overall I find them fairly similar in quality."
)
GARBLED_JSON = '{"evaluation_evidence": "both answers look reasonable", "score_assistant_'


# ---- teacher -------------------------------------------------------------------------------


def teacher_answer(messages: list[dict[str, str]]) -> str:
    users = prompts.user_texts(messages)
    inst = solve(users[-1]) if users else None
    return inst.answer if inst else TEACHER_FALLBACK


# ---- referee -------------------------------------------------------------------------------


def _norm(text: str) -> str:
    text = " ".join(text.split())
    text = re.sub(r"\s*,\s*", ", ", text)
    return text.rstrip(".").strip()


def correctness(answer: str, truth: str) -> float:
    """Base score 1-10: exact = 10, the exact answer inside other text = 8, else 1-7 by
    character similarity."""
    a, t = _norm(answer), _norm(truth)
    if not a:
        return 1.0
    if a == t:
        return 10.0
    if re.search(rf"(?<![\w-]){re.escape(t)}(?!\w)", a):
        return 8.0
    return 1.0 + 6.0 * SequenceMatcher(None, a, t, autojunk=False).ratio()


def answer_is_right(instruction: str, input: str, answer: str | None) -> bool | None:
    """The truth about a student's answer: exactly the world's answer (after whitespace and
    trailing-period normalisation), or not; None for an instruction the world cannot solve.
    What `lion_core.method.discriminate.split_truth` checks the referee's split against."""
    inst = solve(instruction, input or "")
    if inst is None:
        return None
    return correctness(answer or "", inst.answer) >= 10.0


def _verdict(base: float, known: bool) -> str:
    if not known:
        return "answers a task I cannot check exactly" if base > 1 else "gives no answer"
    if base >= 10:
        return "gives the correct answer"
    if base >= 8:
        return "states the correct answer among other text"
    if base > 1:
        return "gives an incorrect answer"
    return "gives no answer"


def parse_referee_prompt(messages: list[dict[str, str]]) -> tuple[str, str, str] | None:
    """(instruction, answer 1, answer 2) from the referee template, or None."""
    for text in prompts.user_texts(messages):
        if prompts.REFEREE_MARKER in text:
            m = _REFEREE_RE.search(text)
            if m:
                return m.group("instruction"), m.group("a1"), m.group("a2")
    return None


def referee_scores(
    instruction: str,
    answer_1: str,
    answer_2: str,
    rng: random.Random,
    *,
    judge_noise: float,
    positional_bias: float,
) -> tuple[float, float, str]:
    """(score 1, score 2, evidence): correctness + noise, +bias for Assistant 1, in [1, 10]."""
    inst = solve(instruction)
    if inst is not None:
        base = [correctness(answer_1, inst.answer), correctness(answer_2, inst.answer)]
    else:  # nothing to check against: any answer is a middling one
        base = [7.0 if a.strip() else 1.0 for a in (answer_1, answer_2)]
    scores = []
    for i, b in enumerate(base):
        s = b + (rng.gauss(0.0, judge_noise) if judge_noise > 0 else 0.0)
        s += positional_bias if i == 0 else 0.0
        scores.append(round(min(10.0, max(1.0, s)), 1))
    known = inst is not None
    evidence = f"Assistant 1 {_verdict(base[0], known)}. Assistant 2 {_verdict(base[1], known)}."
    return scores[0], scores[1], evidence


def referee_answer(
    messages: list[dict[str, str]],
    rng: random.Random,
    *,
    judge_noise: float,
    positional_bias: float,
    json_mode: bool,
) -> str:
    parsed = parse_referee_prompt(messages)
    if parsed is None:
        s1 = s2 = 5.0
        evidence = "I cannot find the two answers to compare."
    else:
        s1, s2, evidence = referee_scores(
            *parsed, rng, judge_noise=judge_noise, positional_bias=positional_bias
        )
    if json_mode:
        return json.dumps(
            {"evaluation_evidence": evidence, "score_assistant_1": s1, "score_assistant_2": s2}
        )
    return (
        f"Evaluation evidence: {evidence}\n"
        f"Score of the Assistant 1: {s1:g}\n"
        f"Score of the Assistant 2: {s2:g}"
    )


def is_reask(messages: list[dict[str, str]]) -> bool:
    """A referee re-ask: the original prompt, the referee's unusable answer, and the re-ask
    (REFEREE_REASK, or REFEREE_REASK_JSON in JSON mode)."""
    reasks = (prompts.REFEREE_REASK, prompts.REFEREE_REASK_JSON)
    return any(m.get("role") == "assistant" for m in messages) and any(
        r in t for t in prompts.user_texts(messages) for r in reasks
    )


def wants_json(messages: list[dict[str, str]], response_format: object) -> bool:
    if isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    ):
        return True
    return any('"score_assistant_1"' in t for t in prompts.user_texts(messages))


# ---- generator -----------------------------------------------------------------------------


def parse_generator_prompt(messages: list[dict[str, str]]) -> tuple[str, str] | None:
    """(seed instruction, 'hard' | 'easy') from the generator template, or None."""
    for text in prompts.user_texts(messages):
        if prompts.GIVEN_MARKER in text and prompts.CREATED_MARKER in text:
            seed = text.split(prompts.GIVEN_MARKER, 1)[1].rsplit(prompts.CREATED_MARKER, 1)[0]
            kind = "easy" if prompts.EASY_MARKER in text else "hard"
            return seed.strip(), kind
    return None


def generator_answer(messages: list[dict[str, str]], rng: random.Random) -> str:
    parsed = parse_generator_prompt(messages)
    seed, kind = parsed if parsed else ("", "hard")
    inst = solve(seed) if seed else None
    if inst is None:  # unrecognised seed: some plausible instruction of the world
        family, difficulty, rare = rng.choice(DEFAULT_FAMILIES), rng.randint(1, 3), kind == "easy"
    else:
        family = inst.family
        difficulty = inst.difficulty + rng.choice((-1, 0, 0, 1))
        rare = True if kind == "easy" else inst.rare
    return make_instance(family, difficulty, rng, rare=rare, self_contained=True).instruction
