"""The prompts of the three roles, as in the Lion paper's code (github.com/YJiangcm/Lion).

The offline task world recognises each role by the markers defined here, so these templates are
the contract between the real pipeline and the embedded teacher.
"""

from __future__ import annotations

Message = dict[str, str]

# ---- teacher ---------------------------------------------------------------------------------

TEACHER_SYSTEM = (
    "You are a helpful assistant that generates a response to a given task instruction."
)


def instruction_text(instruction: str, input: str | None = "") -> str:
    """The instruction as a user sees it: the instruction, then its input if any."""
    return f"{instruction}\n\n{input}" if input else instruction


def teacher_messages(instruction: str, input: str | None = "") -> list[Message]:
    return [
        {"role": "system", "content": TEACHER_SYSTEM},
        {"role": "user", "content": instruction_text(instruction, input)},
    ]


# ---- referee -----------------------------------------------------------------------------

REFEREE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."

REFEREE_MARKER = "[The Start of Assistant 1's Answer]"

REFEREE_TEMPLATE = (
    "[Instruction]\n{instruction}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{system}\n"
)

REFEREE_INSTRUCTIONS = (
    "We would like to request your feedback on the performance of two AI assistants in response "
    "to the user instruction displayed above.\n\n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. "
    "Each assistant receives an overall score on a scale of 1 to 10, where a higher score "
    "indicates better overall performance.\n\n"
    "Please first provide a comprehensive explanation of your evaluation, avoiding any potential "
    "bias and ensuring that the order in which the responses were presented does not affect "
    "your judgment. Then, output two lines indicating the scores for Assistant 1 and 2, "
    "respectively.\n\n"
)

REFEREE_TEXT_FORMAT = (
    "Output with the following format:\n"
    "Evaluation evidence: <your evaluation explanation here>\n"
    "Score of the Assistant 1: <score>\n"
    "Score of the Assistant 2: <score>"
)

REFEREE_JSON_FORMAT = (
    "Output a JSON object with the following keys:\n"
    '{"evaluation_evidence": "<your evaluation explanation here>", '
    '"score_assistant_1": <score>, "score_assistant_2": <score>}'
)

REFEREE_REASK = (
    "Your previous answer did not end with the two score lines. Reply again, ending with exactly:"
    "\nScore of the Assistant 1: <score>\nScore of the Assistant 2: <score>"
)

REFEREE_REASK_JSON = (
    "Your previous answer was not a JSON object with the two scores. Reply again with exactly "
    'one JSON object: {"evaluation_evidence": "<your evaluation explanation here>", '
    '"score_assistant_1": <score>, "score_assistant_2": <score>}'
)


def referee_messages(
    instruction: str, answer_1: str, answer_2: str, *, json_mode: bool = False
) -> list[Message]:
    """Ask the referee to score answer 1 and answer 2 (shown in that order)."""
    system = REFEREE_INSTRUCTIONS + (REFEREE_JSON_FORMAT if json_mode else REFEREE_TEXT_FORMAT)
    return [
        {"role": "system", "content": REFEREE_SYSTEM},
        {
            "role": "user",
            "content": REFEREE_TEMPLATE.format(
                instruction=instruction, answer_1=answer_1, answer_2=answer_2, system=system
            ),
        },
    ]


# ---- generator ---------------------------------------------------------------------------

GENERATOR_SYSTEM = "You are a helpful assistant."

GIVEN_MARKER = "#Given Instruction#:"
CREATED_MARKER = "#Created Instruction#:"

_GENERATOR_HEAD = (
    "I want you to act as an Instruction Creator.\n"
    "Your goal is to draw inspiration from the #Given Instruction# to create a brand new "
    "instruction.\n"
)
_GENERATOR_TAIL = (
    "The LENGTH and difficulty level of the #Created Instruction# should be similar to that of "
    "the #Given Instruction#.\n"
    "The #Created Instruction# must be reasonable and must be understood and responded to by "
    "humans.\n"
    "'#Given Instruction#', '#Created Instruction#', 'given instruction' and 'created "
    "instruction' are not allowed to appear in #Created Instruction#.\n\n"
)

HARD_PROMPT = (
    _GENERATOR_HEAD
    + "This new instruction should belong to the same domain and the same task type as the "
    "#Given Instruction#.\n" + _GENERATOR_TAIL
)

EASY_PROMPT = (
    _GENERATOR_HEAD
    + "This new instruction should belong to the same domain as the #Given Instruction# but be "
    "even more rare.\n" + _GENERATOR_TAIL
)

EASY_MARKER = "but be even more rare"


def generator_messages(seed_instruction: str, kind: str) -> list[Message]:
    """Ask for one new instruction inspired by `seed_instruction`; kind is 'hard' or 'easy'."""
    if kind not in ("hard", "easy"):
        raise ValueError(f"kind must be 'hard' or 'easy', got {kind!r}")
    head = HARD_PROMPT if kind == "hard" else EASY_PROMPT
    return [
        {"role": "system", "content": GENERATOR_SYSTEM},
        {
            "role": "user",
            "content": f"{head}{GIVEN_MARKER}\n{seed_instruction}\n\n{CREATED_MARKER}",
        },
    ]


def user_texts(messages: list[Message]) -> list[str]:
    """The contents of a request's user messages, in order."""
    return [m.get("content") or "" for m in messages if m.get("role") == "user"]


def role_of(messages: list[Message]) -> str:
    """Which role a request plays, from the templates above: teacher, referee or generator."""
    user = "\n".join(user_texts(messages))
    if REFEREE_MARKER in user:
        return "referee"
    if GIVEN_MARKER in user and CREATED_MARKER in user:
        return "generator"
    return "teacher"
