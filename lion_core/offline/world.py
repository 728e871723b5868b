"""The offline task world: procedurally generated instruction families with exact answers.

Each family (addition, reversing a word, sorting, ...) has a difficulty knob, several phrasings
(some put their data in the `input` field, as Alpaca data does) and a *rare* variant
(subtraction, sorting descending, ...) that the generator's "easy" prompt asks for. Every phrasing
is a template whose slots are turned into a regular expression, so `solve` recognises any
instruction the world wrote and computes its exact answer: the offline teacher is always right,
and the offline referee knows the truth. Answers are short, so a tiny student can learn them.

Each variant also has *held-out* phrasings, worded apart from every other phrasing, that only
`heldout_instances` writes: `make_instance` (the seed sampler and the generator role) never picks
them, so the held-out evaluation set is disjoint from every pool by construction, by text and by
ROUGE-L alike. `solve` recognises them, so the offline teacher and referee know their answers.

The families differ in what a small student can learn from examples (docs/offline-world.md,
learning curves): `repeat` is a skill (copy the word) that generalises to words never seen;
`capital` is knowledge, a fixed table of made-up countries whose tier d holds d + 1 of them, so
low tiers are learnt from a few examples and high ones only with many; the arithmetic, sorting,
counting, reversing and case families compute over fresh random operands every time and stay
out of reach of the demo's student.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from lion_core.errors import ConfigError
from lion_core.run.schemas import instruction_id, pool_frame, seed_row

MAX_DIFFICULTY = 20


@dataclass(frozen=True)
class Instance:
    """One instruction of the world with its exact answer."""

    family: str
    difficulty: int
    instruction: str
    input: str
    answer: str
    rare: bool
    heldout: bool = False  # written with a held-out phrasing (evaluation only)


# ---- slots: how a template's fields are written and read back --------------------------------

_SLOT_PATTERNS = {
    "num": r"(-?\d+)",
    "nums": r"(-?\d+(?:\s*,\s*-?\d+)+)",
    "word": r"([A-Za-z]+)",
    "letter": r"([A-Za-z])",
    "pair": r"([A-Za-z]{2})",
    "words": r"([A-Za-z]+(?:\s+[A-Za-z]+)*)",
    "divisor": r"([1-9]\d*)",  # never 0: "Is 10 divisible by 0?" is not the world's
}


@dataclass(frozen=True)
class Phrasing:
    """An instruction template and, optionally, an input template (the data goes there)."""

    instruction: str
    input: str | None = None

    @property
    def self_contained(self) -> bool:
        return self.input is None


def _compile(template: str, slots: dict[str, str]) -> re.Pattern[str]:
    """A case-insensitive full-match regex for `template`; each {field} captures its slot."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(r"\s+".join(re.escape(chunk) for chunk in literal.split(" ")))
        if name is not None:
            parts.append(_SLOT_PATTERNS[slots[name]].replace("(", f"(?P<{name}>", 1))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


@dataclass
class _Variant:
    """The normal or the rare form of a family: phrasings, how to draw values, the answer."""

    phrasings: list[Phrasing]
    slots: dict[str, str]
    draw: Callable[[int, random.Random], dict[str, str]]
    answer: Callable[[dict[str, str]], str]
    difficulty: Callable[[dict[str, str]], int]
    heldout: list[Phrasing] = field(default_factory=list)  # only heldout_instances uses these

    def __post_init__(self) -> None:
        self.patterns = [
            (
                _compile(p.instruction, self.slots),
                _compile(p.input, self.slots) if p.input else None,
                i >= len(self.phrasings),  # a held-out phrasing
            )
            for i, p in enumerate([*self.phrasings, *self.heldout])
        ]


@dataclass
class Family:
    name: str
    normal: _Variant
    rare: _Variant

    def variant(self, rare: bool) -> _Variant:
        return self.rare if rare else self.normal


# ---- value helpers --------------------------------------------------------------------------

_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def _word(n: int, rng: random.Random) -> str:
    """A pronounceable pseudo-word of exactly n letters."""
    start = rng.randrange(2)
    return "".join(rng.choice(_CONSONANTS if (i + start) % 2 == 0 else _VOWELS) for i in range(n))


def _words(n: int, rng: random.Random) -> str:
    return " ".join(_word(rng.randint(2, 6), rng) for _ in range(n))


def _number(digits: int, rng: random.Random) -> int:
    return rng.randint(1 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _numbers(text: str) -> list[int]:
    return [int(x) for x in re.split(r"\s*,\s*", text.strip())]


def _join(xs: list[int]) -> str:
    return ", ".join(str(x) for x in xs)


def _digits(*values: str) -> int:
    return max(len(v.lstrip("-")) for v in values)


def _distinct(n: int, hi: int, rng: random.Random) -> str:
    return _join(rng.sample(range(hi), n))


def _letter_string(d: int, rng: random.Random) -> tuple[str, str]:
    """A string of 3d+4 letters from a small random alphabet, and that alphabet."""
    alphabet = "".join(rng.sample(string.ascii_lowercase, 4))
    return "".join(rng.choice(alphabet) for _ in range(3 * d + 4)), alphabet


def _draw_count(d: int, rng: random.Random) -> dict[str, str]:
    s, _ = _letter_string(d, rng)
    return {"c": rng.choice(s), "s": s}


def _draw_pair(d: int, rng: random.Random) -> dict[str, str]:
    s, alphabet = _letter_string(d, rng)
    a, b = rng.sample(alphabet, 2)
    i = rng.randrange(len(s) - 1)
    s = s[:i] + a + b + s[i + 2 :]  # the pair occurs at least once
    return {"p": a + b, "s": s}


def _draw_add(d: int, rng: random.Random) -> dict[str, str]:
    a, b = _number(d, rng), _number(rng.randint(1, d), rng)
    if rng.random() < 0.5:
        a, b = b, a
    return {"a": str(a), "b": str(b)}


def _draw_sub(d: int, rng: random.Random) -> dict[str, str]:
    a, b = _number(d, rng), _number(rng.randint(1, d), rng)
    a, b = max(a, b), min(a, b)
    return {"a": str(a), "b": str(b)}


def _draw_mul(d: int, rng: random.Random) -> dict[str, str]:
    a, b = _number(d, rng), _number(rng.randint(1, max(1, (d + 1) // 2)), rng)
    if rng.random() < 0.5:
        a, b = b, a
    return {"a": str(a), "b": str(b)}


def _draw_divisor(d: int, rng: random.Random) -> dict[str, str]:
    """A d-digit number and a divisor 2, 5 or 10 (read from the last digit), divisible half the
    time, so that "yes" and "no" are equally likely."""
    k = rng.choice((2, 5, 10))
    last = {2: (0, 2, 4, 6, 8), 5: (0, 5), 10: (0,)}[k]
    if d == 1:  # a one-digit number ends in itself
        last = tuple(x for x in last if x) or (5,)
        k = k if k != 10 else 5
    if rng.random() >= 0.5:
        last = tuple(x for x in range(10) if x not in last and (x or d > 1))
    return {"a": str(_number(d, rng) // 10 * 10 + rng.choice(last)), "k": str(k)}


def _draw_compare(d: int, rng: random.Random) -> dict[str, str]:
    """Two distinct numbers of d digits each (they mostly differ in their first digit already)."""
    a = _number(d, rng)
    b = a
    while b == a:
        b = _number(d, rng)
    return {"a": str(a), "b": str(b)}


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# ---- the capital table: made-up countries and their capitals, in tiers ----------------------

CAPITAL_TIERS = MAX_DIFFICULTY


def _capital_table() -> list[list[tuple[str, str]]]:
    """Tier d (1..20) holds d + 1 (country, capital) pairs of distinct made-up names, fixed
    for ever (their own seed): a country or capital name is never a pseudo-word of another
    family's draw by design, and never repeats across the table."""
    rng = random.Random("lion-offline-capitals")
    used: set[str] = set()

    def name(n: int) -> str:
        while True:
            w = _word(n, rng).capitalize()
            if w not in used:
                used.add(w)
                return w

    return [[(name(rng.randint(5, 7)), name(rng.randint(4, 6))) for _ in range(d + 1)]
            for d in range(1, CAPITAL_TIERS + 1)]  # fmt: skip


_CAPITALS = _capital_table()
_CAPITAL_OF = {c.lower(): (t, d) for d, tier in enumerate(_CAPITALS, 1) for c, t in tier}
_COUNTRY_OF = {t.lower(): (c, d) for d, tier in enumerate(_CAPITALS, 1) for c, t in tier}


def _draw_country(d: int, rng: random.Random) -> dict[str, str]:
    return {"c": rng.choice(_CAPITALS[d - 1])[0]}


def _draw_capital(d: int, rng: random.Random) -> dict[str, str]:
    return {"t": rng.choice(_CAPITALS[d - 1])[1]}


def _lookup(table: dict[str, tuple[str, int]], key: str) -> tuple[str, int]:
    """The table's entry for `key`; KeyError for a name the world never wrote (`solve` then
    does not recognise the instruction)."""
    return table[key.lower()]


# ---- the families ---------------------------------------------------------------------------

_FAMILIES: list[Family] = [
    Family(
        "addition",
        normal=_Variant(
            [
                Phrasing("What is {a} + {b}?"),
                Phrasing("Add {a} and {b}."),
                Phrasing("Compute the sum of {a} and {b}."),
                Phrasing("Calculate {a} plus {b}."),
                Phrasing("Find the sum of the two numbers.", "{a} and {b}"),
                Phrasing("Add the following numbers.", "{a} + {b}"),
            ],
            {"a": "num", "b": "num"},
            _draw_add,
            lambda v: str(int(v["a"]) + int(v["b"])),
            lambda v: _digits(v["a"], v["b"]),
            heldout=[
                Phrasing("Tell me the total you get by adding {a} to {b}."),
                Phrasing("If you put {a} and {b} together, what total do you get?"),
                Phrasing("Work out the total of the pair of values given below.", "{a} plus {b}"),
            ],
        ),
        rare=_Variant(
            [
                Phrasing("What is {a} - {b}?"),
                Phrasing("Subtract {b} from {a}."),
                Phrasing("Compute the difference {a} minus {b}."),
                Phrasing("Find the difference between the two numbers.", "{a} - {b}"),
            ],
            {"a": "num", "b": "num"},
            _draw_sub,
            lambda v: str(int(v["a"]) - int(v["b"])),
            lambda v: _digits(v["a"], v["b"]),
            heldout=[
                Phrasing("How much is left when you take {b} away from {a}?"),
                Phrasing("Take the second value away from the first one.", "{a} then {b}"),
            ],
        ),
    ),
    Family(
        "multiplication",
        normal=_Variant(
            [
                Phrasing("What is {a} times {b}?"),
                Phrasing("Multiply {a} by {b}."),
                Phrasing("Compute the product of {a} and {b}."),
                Phrasing("What is {a} * {b}?"),
                Phrasing("Multiply the two numbers.", "{a} and {b}"),
            ],
            {"a": "num", "b": "num"},
            _draw_mul,
            lambda v: str(int(v["a"]) * int(v["b"])),
            lambda v: _digits(v["a"], v["b"]),
            heldout=[
                Phrasing("How much do you get when {a} is multiplied by {b}?"),
                Phrasing("Give the result of taking {a} lots of {b}."),
                Phrasing(
                    "Report what the pair of values below gives when multiplied.", "{a} by {b}"
                ),
            ],
        ),
        rare=_Variant(
            [
                Phrasing("What is the square of {a}?"),
                Phrasing("Compute {a} squared."),
                Phrasing("Square the number below.", "{a}"),
            ],
            {"a": "num"},
            lambda d, rng: {"a": str(_number(d, rng))},
            lambda v: str(int(v["a"]) ** 2),
            lambda v: _digits(v["a"]),
            heldout=[
                Phrasing("How much do you get when {a} is multiplied by itself?"),
                Phrasing("Give the result of raising this value to the power of two.", "{a}"),
            ],
        ),
    ),
    Family(
        "reverse",
        normal=_Variant(
            [
                Phrasing("Reverse the word '{w}'."),
                Phrasing("Write '{w}' backwards."),
                Phrasing("Spell {w} backwards."),
                Phrasing("Reverse '{w}'."),
                Phrasing("Reverse the letters of this word.", "{w}"),
            ],
            {"w": "word"},
            lambda d, rng: {"w": _word(d + 2, rng)},
            lambda v: v["w"][::-1],
            lambda v: max(1, len(v["w"]) - 2),
            heldout=[
                Phrasing("Give me the letters of '{w}' in the opposite order."),
                Phrasing("Write out this string from its final letter back to its first.", "{w}"),
            ],
        ),
        rare=_Variant(
            [
                Phrasing("Reverse the order of the words in '{s}'."),
                Phrasing("Write the words of '{s}' in reverse order."),
                Phrasing("Reverse the word order of the sentence below.", "{s}"),
            ],
            {"s": "words"},
            lambda d, rng: {"s": _words(d + 1, rng)},
            lambda v: " ".join(reversed(v["s"].split())),
            lambda v: max(1, len(v["s"].split()) - 1),
            heldout=[
                Phrasing("Give me the words of '{s}' in the opposite order."),
                Phrasing(
                    "List the words below starting with the final one and ending with the first.",
                    "{s}",
                ),
            ],
        ),
    ),
    Family(
        "sort",
        normal=_Variant(
            [
                Phrasing("Sort these numbers in ascending order: {xs}."),
                Phrasing("Arrange {xs} from smallest to largest."),
                Phrasing("Put the numbers {xs} in increasing order."),
                Phrasing("Sort the following numbers from smallest to largest.", "{xs}"),
            ],
            {"xs": "nums"},
            lambda d, rng: {"xs": _distinct(d + 2, 100, rng)},
            lambda v: _join(sorted(_numbers(v["xs"]))),
            lambda v: max(1, len(_numbers(v["xs"])) - 2),
            heldout=[
                Phrasing("List {xs} going from the lowest value up to the highest value."),
                Phrasing(
                    "Order the values below so that each one is no bigger than the next.", "{xs}"
                ),
            ],
        ),
        rare=_Variant(
            [
                Phrasing("Sort these numbers in descending order: {xs}."),
                Phrasing("Arrange {xs} from largest to smallest."),
                Phrasing("Sort the following numbers from largest to smallest.", "{xs}"),
            ],
            {"xs": "nums"},
            lambda d, rng: {"xs": _distinct(d + 2, 100, rng)},
            lambda v: _join(sorted(_numbers(v["xs"]), reverse=True)),
            lambda v: max(1, len(_numbers(v["xs"])) - 2),
            heldout=[
                Phrasing("List {xs} going from the highest value down to the lowest value."),
                Phrasing(
                    "Order the values below so that each one is no smaller than the next.", "{xs}"
                ),
            ],
        ),
    ),
    Family(
        "count",
        normal=_Variant(
            [
                Phrasing("How many times does the letter '{c}' appear in '{s}'?"),
                Phrasing("Count the letter '{c}' in '{s}'."),
                Phrasing("How many '{c}' in '{s}'?"),
                Phrasing(
                    "Count how many times the letter '{c}' occurs in the string below.", "{s}"
                ),
            ],
            {"c": "letter", "s": "word"},
            _draw_count,
            lambda v: str(v["s"].lower().count(v["c"].lower())),
            lambda v: max(1, (len(v["s"]) - 4) // 3),
            heldout=[
                Phrasing("In '{s}', how often is the character '{c}' found?"),
                Phrasing("Report how often the character '{c}' is found in the text below.", "{s}"),
            ],
        ),
        rare=_Variant(
            [
                Phrasing("How many times does '{p}' appear in '{s}'?"),
                Phrasing("Count the occurrences of the pair '{p}' in '{s}'."),
                Phrasing(
                    "Count how many times the letter pair '{p}' occurs in the string below.", "{s}"
                ),
            ],
            {"p": "pair", "s": "word"},
            _draw_pair,
            lambda v: str(v["s"].lower().count(v["p"].lower())),
            lambda v: max(1, (len(v["s"]) - 4) // 3),
            heldout=[
                Phrasing("In '{s}', how often is the two-letter sequence '{p}' found?"),
                Phrasing(
                    "Report how often the two-letter sequence '{p}' is found in the text below.",
                    "{s}",
                ),
            ],
        ),
    ),
    Family(
        "maximum",
        normal=_Variant(
            [
                Phrasing("What is the largest number in {xs}?"),
                Phrasing("Find the maximum of {xs}."),
                Phrasing("Which is the biggest of {xs}?"),
                Phrasing("Find the largest of the following numbers.", "{xs}"),
            ],
            {"xs": "nums"},
            lambda d, rng: {"xs": _distinct(d + 2, 1000, rng)},
            lambda v: str(max(_numbers(v["xs"]))),
            lambda v: max(1, len(_numbers(v["xs"])) - 2),
            heldout=[
                Phrasing("Among {xs}, which value is the greatest?"),
                Phrasing("Report the greatest value in the list below.", "{xs}"),
            ],
        ),
        rare=_Variant(
            [
                Phrasing("What is the smallest number in {xs}?"),
                Phrasing("Find the minimum of {xs}."),
                Phrasing("Find the smallest of the following numbers.", "{xs}"),
            ],
            {"xs": "nums"},
            lambda d, rng: {"xs": _distinct(d + 2, 1000, rng)},
            lambda v: str(min(_numbers(v["xs"]))),
            lambda v: max(1, len(_numbers(v["xs"])) - 2),
            heldout=[
                Phrasing("Among {xs}, which value is the least?"),
                Phrasing("Report the least value in the list below.", "{xs}"),
            ],
        ),
    ),
    Family(
        "uppercase",
        normal=_Variant(
            [
                Phrasing("Convert '{s}' to uppercase."),
                Phrasing("Write '{s}' in capital letters."),
                Phrasing("Rewrite '{s}' using only uppercase letters."),
                Phrasing("Convert the following text to uppercase.", "{s}"),
            ],
            {"s": "words"},
            lambda d, rng: {"s": _words(d, rng)},
            lambda v: " ".join(v["s"].split()).upper(),
            lambda v: len(v["s"].split()),
            heldout=[
                Phrasing("Turn every letter of '{s}' into a capital."),
                Phrasing("Make every letter of the text below a capital.", "{s}"),
            ],
        ),
        rare=_Variant(
            [
                Phrasing("Capitalize the first letter of each word in '{s}'."),
                Phrasing("Capitalize each word of the text below.", "{s}"),
            ],
            {"s": "words"},
            lambda d, rng: {"s": _words(d, rng)},
            lambda v: " ".join(w.capitalize() for w in v["s"].split()),
            lambda v: len(v["s"].split()),
            heldout=[
                Phrasing("Turn the first letter of every word in '{s}' into a capital."),
                Phrasing("Make the first letter of every word below a capital.", "{s}"),
            ],
        ),
    ),
    Family(
        "repeat",
        normal=_Variant(
            [
                Phrasing("Repeat the word '{w}'."),
                Phrasing("Say '{w}' again."),
                Phrasing("Write the word '{w}' once more."),
                Phrasing("Repeat the following word.", "{w}"),
            ],
            {"w": "word"},
            lambda d, rng: {"w": _word(d + 2, rng)},
            lambda v: v["w"],
            lambda v: max(1, len(v["w"]) - 2),
            heldout=[
                Phrasing("Give me back '{w}' exactly as it is written."),
                Phrasing("Copy out the text below without changing it.", "{w}"),
            ],
        ),
        rare=_Variant(
            [
                Phrasing("Repeat the word '{w}' twice."),
                Phrasing("Say '{w}' two times."),
                Phrasing("Write the following word twice.", "{w}"),
            ],
            {"w": "word"},
            lambda d, rng: {"w": _word(d + 2, rng)},
            lambda v: f"{v['w']} {v['w']}",
            lambda v: max(1, len(v["w"]) - 2),
            heldout=[
                Phrasing("Give me '{w}' two times in a row."),
                Phrasing("Copy out the text below two times in a row.", "{w}"),
            ],
        ),
    ),
    Family(
        "capital",
        normal=_Variant(
            [
                Phrasing("What is the capital of {c}?"),
                Phrasing("Name the capital of {c}."),
                Phrasing("Which city is the capital of {c}?"),
                Phrasing("Give the capital of the country below.", "{c}"),
            ],
            {"c": "word"},
            _draw_country,
            lambda v: _lookup(_CAPITAL_OF, v["c"])[0],
            lambda v: _lookup(_CAPITAL_OF, v["c"])[1],
            heldout=[
                Phrasing("Tell me where the government of {c} sits."),
                Phrasing("Report the seat of government of the land named below.", "{c}"),
            ],
        ),
        rare=_Variant(
            [
                Phrasing("Which country has {t} as its capital?"),
                Phrasing("{t} is the capital of which country?"),
                Phrasing("Name the country whose capital is the city below.", "{t}"),
            ],
            {"t": "word"},
            _draw_capital,
            lambda v: _lookup(_COUNTRY_OF, v["t"])[0],
            lambda v: _lookup(_COUNTRY_OF, v["t"])[1],
            heldout=[
                Phrasing("Tell me the land whose government sits in {t}."),
                Phrasing("Report the land governed from the city named below.", "{t}"),
            ],
        ),
    ),
    Family(
        "parity",
        normal=_Variant(
            [
                Phrasing("Is {a} even or odd?"),
                Phrasing("Is the number {a} odd or even?"),
                Phrasing("Say whether {a} is even or odd."),
                Phrasing("Is the following number even or odd?", "{a}"),
            ],
            {"a": "num"},
            lambda d, rng: {"a": str(_number(d, rng))},
            lambda v: "even" if int(v["a"]) % 2 == 0 else "odd",
            lambda v: _digits(v["a"]),
            heldout=[
                Phrasing("Tell me if {a} is an odd number or an even number."),
                Phrasing("Decide whether the value below is odd or even.", "{a}"),
            ],
        ),
        rare=_Variant(
            [
                Phrasing("Is {a} a multiple of {k}?"),
                Phrasing("Is {a} divisible by {k}?"),
                Phrasing("Is the following number divisible by {k}?", "{a}"),
            ],
            {"a": "num", "k": "divisor"},
            _draw_divisor,
            lambda v: _yes(int(v["a"]) % int(v["k"]) == 0),
            lambda v: _digits(v["a"]),
            heldout=[
                Phrasing("Tell me if {k} goes into {a} with nothing left over."),
                Phrasing("Decide whether {k} goes into the value below exactly.", "{a}"),
            ],
        ),
    ),
    Family(
        "compare",
        normal=_Variant(
            [
                Phrasing("Is {a} greater than {b}?"),
                Phrasing("Is {a} larger than {b}?"),
                Phrasing("Is {a} bigger than {b}?"),
                Phrasing("Is the first number greater than the second?", "{a} and {b}"),
            ],
            {"a": "num", "b": "num"},
            _draw_compare,
            lambda v: _yes(int(v["a"]) > int(v["b"])),
            lambda v: _digits(v["a"], v["b"]),
            heldout=[
                Phrasing("Tell me if {a} exceeds {b}."),
                Phrasing(
                    "Decide whether the first value below exceeds the second.", "{a} then {b}"
                ),
            ],
        ),
        rare=_Variant(
            [
                Phrasing("Is {a} less than {b}?"),
                Phrasing("Is {a} smaller than {b}?"),
                Phrasing("Is the first number smaller than the second?", "{a} and {b}"),
            ],
            {"a": "num", "b": "num"},
            _draw_compare,
            lambda v: _yes(int(v["a"]) < int(v["b"])),
            lambda v: _digits(v["a"], v["b"]),
            heldout=[
                Phrasing("Tell me if {a} falls short of {b}."),
                Phrasing(
                    "Decide whether the first value below falls short of the second.",
                    "{a} then {b}",
                ),
            ],
        ),
    ),
]

FAMILY_BY_NAME: dict[str, Family] = {f.name: f for f in _FAMILIES}
FAMILIES: tuple[str, ...] = tuple(FAMILY_BY_NAME)
# What a run draws from unless `offline.families` says otherwise: the seven families the world
# had before `repeat` and `capital` (opt-in), so every existing config's seeds, held-out set and
# numbers stay what they were.
DEFAULT_FAMILIES: tuple[str, ...] = FAMILIES[:7]


# ---- the API ------------------------------------------------------------------------------


def make_instance(
    family: str,
    difficulty: int,
    rng: random.Random,
    *,
    rare: bool = False,
    self_contained: bool = False,
) -> Instance:
    """A new instance of `family` at `difficulty` (clipped to 1..20), drawn with `rng`.

    `self_contained` picks only phrasings without an input field (what a generator writes).
    Held-out phrasings are never picked: they belong to `heldout_instances` alone.
    """
    variant = _variant(family, rare)
    phrasings = [p for p in variant.phrasings if p.self_contained or not self_contained]
    return _instance(family, variant, rng.choice(phrasings), difficulty, rng, rare, heldout=False)


def _variant(family: str, rare: bool) -> _Variant:
    if family not in FAMILY_BY_NAME:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILY_BY_NAME[family].variant(rare)


def _instance(
    family: str,
    variant: _Variant,
    phrasing: Phrasing,
    difficulty: int,
    rng: random.Random,
    rare: bool,
    *,
    heldout: bool,
) -> Instance:
    values = variant.draw(min(max(int(difficulty), 1), MAX_DIFFICULTY), rng)
    return Instance(
        family=family,
        difficulty=variant.difficulty(values),
        instruction=phrasing.instruction.format(**values),
        input=phrasing.input.format(**values) if phrasing.input else "",
        answer=variant.answer(values),
        rare=rare,
        heldout=heldout,
    )


def solve(instruction: str, input: str = "") -> Instance | None:
    """Recognise an instruction the world can write (any phrasing) and compute its answer.

    An instruction whose input was folded in after a blank line (as the teacher prompt shows it)
    is recognised too. Returns None for anything else.
    """
    instruction, input = instruction.strip(), (input or "").strip()
    candidates = [(instruction, input)]
    if not input and "\n\n" in instruction:
        head, tail = instruction.split("\n\n", 1)
        candidates.append((head.strip(), tail.strip()))
    for text, data in candidates:
        for family in _FAMILIES:
            for rare in (False, True):
                variant = family.variant(rare)
                for ins_re, inp_re, heldout in variant.patterns:
                    m = ins_re.fullmatch(text)
                    if m is None:
                        continue
                    values = m.groupdict()
                    if inp_re is None:
                        if data:
                            continue
                    else:
                        m_in = inp_re.fullmatch(data)
                        if m_in is None:
                            continue
                        values.update(m_in.groupdict())
                    try:
                        answer, difficulty = variant.answer(values), variant.difficulty(values)
                    except KeyError:  # a name of no table entry (capital): not the world's
                        continue
                    return Instance(
                        family=family.name,
                        difficulty=difficulty,
                        instruction=text,
                        input=data,
                        answer=answer,
                        rare=rare,
                        heldout=heldout,
                    )
    return None


def world_families(families: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """`families` (offline.families) checked against the world's, in the world's order;
    DEFAULT_FAMILIES when None or empty."""
    if not families:
        return DEFAULT_FAMILIES
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ConfigError(
            f"offline.families: unknown famil{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(map(repr, unknown))}; known: {', '.join(FAMILIES)}"
        )
    return tuple(f for f in FAMILIES if f in set(families))


def seed_instances(
    n: int, seed: int, max_difficulty: int, families: list[str] | tuple[str, ...] | None = None
) -> list[Instance]:
    """`n` distinct normal (not rare) instances, `families` (default DEFAULT_FAMILIES) in turn,
    difficulties uniform in 1..max_difficulty. Deterministic in its arguments."""
    rng = random.Random(f"lion-offline-seeds:{seed}")
    max_difficulty = min(max(int(max_difficulty), 1), MAX_DIFFICULTY)
    names = world_families(families)
    out: list[Instance] = []
    seen: set[str] = set()
    for i in range(n):
        family = names[i % len(names)]
        for _ in range(1000):
            inst = make_instance(family, rng.randint(1, max_difficulty), rng)
            iid = instruction_id(inst.instruction, inst.input)
            if iid not in seen:
                break
        else:  # pragma: no cover - the families' spaces are far larger than any seed count
            raise RuntimeError(f"cannot draw {n} distinct seed instructions")
        seen.add(iid)
        out.append(inst)
    return out


def seed_pool(
    n: int, seed: int, max_difficulty: int, families: list[str] | tuple[str, ...] | None = None
) -> pd.DataFrame:
    """`seed_instances` as a Train Pool (lion_core.run.schemas.POOL_SCHEMA): source 'seed', round 0,
    and the exact answer as the reference."""
    rows = [
        seed_row(inst.instruction, inst.input, reference=inst.answer)
        for inst in seed_instances(n, seed, max_difficulty, families)
    ]
    frame = pool_frame(rows)
    frame["round"] = frame["round"].astype("int32")
    return frame


# ---- the held-out evaluation set ---------------------------------------------------------

HELDOUT_MAX_DIFFICULTY = 6  # the default max_difficulty of seeds (OfflineWorldConfig)


def heldout_instances(
    per_cell: int = 2,
    max_difficulty: int = HELDOUT_MAX_DIFFICULTY,
    families: list[str] | tuple[str, ...] | None = None,
) -> list[Instance]:
    """The held-out evaluation set: `per_cell` instances of every family (of `families`,
    default DEFAULT_FAMILIES) at every difficulty 1..max_difficulty, odd-numbered ones of the
    rare variant, all in held-out phrasings.

    Fixed: instance k of (family, difficulty) is drawn from its own seed, so it never depends on
    the run's seed, and a larger `per_cell` or `max_difficulty` only adds instances.
    """
    if per_cell < 1:
        raise ValueError(f"per_cell must be at least 1, got {per_cell}")
    max_difficulty = min(max(int(max_difficulty), 1), MAX_DIFFICULTY)
    out: list[Instance] = []
    seen: set[str] = set()
    for family in world_families(families):
        for difficulty in range(1, max_difficulty + 1):
            for k in range(per_cell):
                inst = _heldout_instance(family, difficulty, k, seen)
                seen.add(instruction_id(inst.instruction, inst.input))
                out.append(inst)
    return out


def _heldout_instance(family: str, difficulty: int, k: int, seen: set[str]) -> Instance:
    rng = random.Random(f"lion-offline-heldout:{family}:{difficulty}:{k}")
    rare = k % 2 == 1
    variant = _variant(family, rare)
    for _ in range(1000):
        phrasing = rng.choice(variant.heldout)
        inst = _instance(family, variant, phrasing, difficulty, rng, rare, heldout=True)
        if instruction_id(inst.instruction, inst.input) not in seen:
            return inst
    raise RuntimeError(f"cannot draw a distinct held-out {family} instance")  # pragma: no cover


def heldout_questions(
    per_cell: int = 2,
    max_difficulty: int = HELDOUT_MAX_DIFFICULTY,
    families: list[str] | tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """`heldout_instances` as an evaluation question set (the columns of
    `lion_core.evaluation.evaluate.load_questions`): the family as category, the exact answer as
    reference, the instruction_id as question_id."""
    rows = [
        {
            "question_id": instruction_id(inst.instruction, inst.input),
            "category": inst.family,
            "instruction": inst.instruction,
            "input": inst.input,
            "reference": inst.answer,
        }
        for inst in heldout_instances(per_cell, max_difficulty, families)
    ]
    return pd.DataFrame(
        rows, columns=["question_id", "category", "instruction", "input", "reference"]
    )
